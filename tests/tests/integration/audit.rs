//! The audit log end to end: a real agent with `--log-format json`, pods asking through the
//! redirect. Each credentials answer and each refusal is one JSON line under the target
//! `iamlet::audit`; a polling pod's answers collapse into a count; no secret is ever logged.
//! Run as root through `cargo xtask test` (serially).

use std::path::PathBuf;

use anyhow::Result;
use iamlet_tests::{skip_unless_privileged, Agent, FakePod, TestNode};
use serde_json::Value;

const UID_A: &str = "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d";
const UID_B: &str = "6f7a8b9c-0d1e-4f2a-b3c4-d5e6f7a8b9c0";
const ROLE_A: &str = "arn:aws:iam::123456789012:role/audited";
const KEY_A: &str = "ASIAAUDITEXAMPLE0001";
const SECRET_A: &str = "secret-never-in-the-log";
const TOKEN_A: &str = "session-token-never-in-the-log";

/// A bindings file binding pod A to [`ROLE_A`], and static credentials for it.
struct Files {
    dir: PathBuf,
}

impl Files {
    fn write() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("iamlet-audit-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("bindings.yaml"),
            format!(
                "bindings:\n  - cgroup: \"{}\"\n    role: {ROLE_A}\n",
                iamlet_tests::besteffort_pod_slice(UID_A)
            ),
        )?;
        std::fs::write(
            dir.join("creds.yaml"),
            format!(
                "credentials:\n  {ROLE_A}:\n    access_key_id: {KEY_A}\n    secret_access_key: {SECRET_A}\n    session_token: {TOKEN_A}\n    expiration: 2099-01-01T00:00:00Z\n"
            ),
        )?;
        Ok(Files { dir })
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn creds(pod: &FakePod, role: &str, headers: &[(&str, &str)]) -> u16 {
    let path = format!("/latest/meta-data/iam/security-credentials/{role}");
    pod.imds("GET", &path, headers)
        .unwrap_or_else(|e| panic!("GET {path}: {e:#}"))
        .status
}

/// The audit lines of the agent's JSON log.
fn audit_lines(log: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "iamlet::audit")
        .collect()
}

#[test]
fn every_credentials_answer_and_refusal_is_audited_once_per_key_and_no_secret_is_logged() {
    skip_unless_privileged!();
    let node = TestNode::new().expect("creating the test node");
    let a = node
        .add_pod(&iamlet_tests::besteffort_container_cgroup(UID_A, 1))
        .expect("adding pod a");
    let b = node
        .add_pod(&iamlet_tests::besteffort_container_cgroup(UID_B, 2))
        .expect("adding pod b");
    let files = Files::write().expect("writing the agent's files");
    let (bindings, static_creds) = (files.path("bindings.yaml"), files.path("creds.yaml"));
    let mut agent = Agent::start(
        &node,
        &[
            "--bindings",
            &bindings,
            "--static-credentials",
            &static_creds,
            "--upstream",
            "off",
            "--log-format",
            "json",
            "--log",
            "info",
        ],
    )
    .expect("starting the agent");

    // A polls its credentials five times: one line at once, the other four counted.
    for _ in 0..5 {
        assert_eq!(creds(&a, "audited", &[]), 200);
    }
    // B asks for A's role (no role of its own), and with a token it never got.
    assert_eq!(creds(&b, "audited", &[]), 404);
    assert_eq!(
        creds(&b, "audited", &[("X-aws-ec2-metadata-token", "forged")]),
        401
    );
    let before_stop = audit_lines(&agent.log_text());
    let served: Vec<&Value> = before_stop
        .iter()
        .filter(|l| l["message"] == "credentials served")
        .collect();
    assert_eq!(
        served.len(),
        1,
        "one line for five answers: {before_stop:#?}"
    );
    let line = served[0];
    eprintln!("the audit line of pod A's first answer: {line}");
    assert_eq!(line["access_key_id"], KEY_A);
    assert_eq!(line["role_arn"], ROLE_A);
    assert_eq!(line["expiration"], "2099-01-01T00:00:00Z");
    assert_eq!(line["status"], 200);
    assert_eq!(line["route"], "role_credentials");
    assert_eq!(line["repeated"], 0);
    assert!(line["pod_uid"] == UID_A, "{line}");
    assert!(
        line["cgroup_id"].as_u64().is_some_and(|id| id > 0),
        "{line}"
    );
    assert!(
        line["cgroup"]
            .as_str()
            .is_some_and(|c| c.contains(&UID_A.replace('-', "_"))),
        "{line}"
    );
    assert!(line["latency_us"].as_u64().is_some(), "{line}");
    let refused: Vec<(u64, String)> = before_stop
        .iter()
        .filter(|l| l["message"] == "request refused")
        .map(|l| {
            assert!(l["pod_uid"] == UID_B, "{l}");
            (
                l["status"].as_u64().unwrap_or(0),
                l["reason"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(refused.len(), 2, "{before_stop:#?}");
    assert_eq!(refused[0], (404, "no role for this pod".to_owned()));
    assert_eq!(refused[1].0, 401);
    assert!(
        refused[1].1.starts_with("IMDSv2 token refused"),
        "{refused:?}"
    );

    // `iamlet inspect` (standalone): the bound pod with what it was served, and the pod that
    // was only refused.
    let out = node
        .run_timeout(
            &[
                iamlet_tests::agent::agent_bin()
                    .display()
                    .to_string()
                    .as_str(),
                "inspect",
                "-o",
                "json",
            ],
            std::time::Duration::from_secs(20),
        )
        .expect("running iamlet inspect");
    assert!(out.success(), "{out:?}");
    let report: Value = serde_json::from_str(&out.stdout).expect("inspect's JSON");
    assert_eq!(report["mode"], "standalone", "{report:#}");
    let row = |uid: &str| {
        report["pods"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["uid"] == uid))
            .unwrap_or_else(|| panic!("no row for {uid}: {report:#}"))
            .clone()
    };
    let (row_a, row_b) = (row(UID_A), row(UID_B));
    assert_eq!(row_a["role"], ROLE_A, "{row_a:#}");
    assert_eq!(row_a["access_key_id"], KEY_A, "{row_a:#}");
    assert_eq!(row_a["expiration"], "2099-01-01T00:00:00Z", "{row_a:#}");
    assert_eq!(row_a["served"], 5, "{row_a:#}");
    assert!(
        row_a["cgroup"]
            .as_str()
            .is_some_and(|c| c.ends_with(&iamlet_tests::besteffort_pod_slice(UID_A))),
        "the bound cgroup is the pod's slice: {row_a:#}"
    );
    assert_eq!(row_b["refused"], 2, "{row_b:#}");
    assert_eq!(row_b["served"], 0, "{row_b:#}");
    assert!(row_b.get("role").is_none(), "{row_b:#}");

    // Stopping flushes the count of the answers that were only counted.
    agent.stop().expect("stopping the agent");
    let log = agent.log_text();
    let counted: Vec<Value> = audit_lines(&log)
        .into_iter()
        .filter(|l| l["message"] == "credentials served" && l["repeated"] == 4)
        .collect();
    assert_eq!(
        counted.len(),
        1,
        "the four counted answers, at exit:\n{log}"
    );
    assert!(
        !log.contains(SECRET_A) && !log.contains(TOKEN_A),
        "a secret reached the log:\n{log}"
    );
}

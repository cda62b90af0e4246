//! `iamlet doctor` on a test node: nothing wrong with a running agent (standalone with moto's
//! STS), the same verdicts from its flags alone, from the agent's command line, and as JSON;
//! an unreachable STS; a stopped agent (programs left attached, fail closed) and a detached
//! one, each named with what to do; Kubernetes mode against the fake API server, whose
//! `SelfSubjectAccessReview` then takes permissions away. Run as root through
//! `cargo xtask test`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use iamlet_tests::agent::{agent_bin, ADMIN_ADDR};
use iamlet_tests::{
    scaled, skip_unless_privileged, sts_available, Agent, KubeControl, MotoSts, RunOutput,
    TestNode, NODE_PROXY_V4, NODE_PROXY_V6, PROXY_PORT,
};
use serde_json::Value;

use crate::kube::{setup, NODE};

const ROLE: &str = "arn:aws:iam::123456789012:role/doctor";
const SSAR_PATH: &str = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews";

/// Runs `iamlet doctor ARGS` in the node's network namespace, with the dummy AWS credentials
/// the tests' agents use and no instance metadata for the SDK.
fn doctor(node: &TestNode, args: &[&str]) -> RunOutput {
    let bin = agent_bin().display().to_string();
    let timeout = format!("{}ms", scaled(Duration::from_secs(2)).as_millis());
    let mut argv = vec![
        "env",
        "-u",
        "KUBERNETES_SERVICE_HOST",
        "AWS_ACCESS_KEY_ID=testing",
        "AWS_SECRET_ACCESS_KEY=testing",
        "AWS_EC2_METADATA_DISABLED=true",
        bin.as_str(),
        "doctor",
        "--timeout",
        &timeout,
    ];
    argv.extend_from_slice(args);
    node.run_timeout(&argv, scaled(Duration::from_secs(60)))
        .unwrap_or_else(|e| panic!("running iamlet doctor {args:?}: {e:#}"))
}

/// `iamlet doctor ARGS -o json`, parsed.
fn doctor_json(node: &TestNode, args: &[&str]) -> (RunOutput, Value) {
    let mut with_json = args.to_vec();
    with_json.extend(["-o", "json"]);
    let out = doctor(node, &with_json);
    let report = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("doctor -o json is not JSON ({e}): {out:?}"));
    (out, report)
}

/// The check named `name`.
fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .and_then(|checks| checks.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no check {name:?} in {report:#}"))
}

/// Check name → status.
fn verdicts(report: &Value) -> BTreeMap<String, String> {
    report["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default().to_owned(),
                c["status"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// The text report says what the JSON one says: a line `MARK  NAME  FINDING` per check
/// (padded), a `fix:` line under each warning and problem.
fn assert_text_matches(text: &str, report: &Value) {
    for c in report["checks"].as_array().into_iter().flatten() {
        let mark = match c["status"].as_str() {
            Some("ok") => "ok",
            Some("warn") => "WARN",
            Some("fail") => "FAIL",
            _ => "skip",
        };
        let name = c["name"].as_str().unwrap_or_default();
        let finding = c["finding"].as_str().unwrap_or_default();
        // Two runs: connect times (`(5 ms)`) may differ between them.
        let finding = without_times(finding);
        let line = text
            .lines()
            .find(|l| {
                l.starts_with(&format!("{mark:<4}  {name} "))
                    && without_times(l.trim_end()).ends_with(&finding)
            })
            .unwrap_or_else(|| panic!("no line for {name} ({mark}) in:\n{text}"));
        if let Some(action) = c["action"].as_str() {
            let at = text.find(line).unwrap_or_default() + line.len();
            let next = text[at..].lines().nth(1).unwrap_or_default();
            assert_eq!(next.trim(), format!("fix: {action}"), "under {line}");
        }
    }
}

/// `text` with every `(N ms)` written `(ms)`.
fn without_times(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('(') {
        out.push_str(&rest[..=open]);
        rest = &rest[open + 1..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && rest[digits..].starts_with(" ms)") {
            rest = &rest[digits + 1..];
        }
    }
    out.push_str(rest);
    out
}

fn assert_status(report: &Value, name: &str, status: &str) {
    let c = check(report, name);
    assert_eq!(c["status"], status, "{name}: {c:#}");
}

/// The node's listeners and admin address, as the test agents use them.
fn listen_flags() -> Vec<String> {
    [
        "--listen-v4".to_owned(),
        format!("{NODE_PROXY_V4}:{PROXY_PORT}"),
        "--listen-v6".to_owned(),
        format!("[{NODE_PROXY_V6}]:{PROXY_PORT}"),
        "--admin".to_owned(),
        ADMIN_ADDR.to_owned(),
    ]
    .into()
}

/// A temp directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("iamlet-doctor-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("creating a temp directory");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn doctor_finds_nothing_wrong_with_a_running_agent() {
    skip_unless_privileged!();
    let node = TestNode::new().expect("creating the test node");
    let moto = match sts_available() {
        Ok(()) => Some(MotoSts::start(&node).expect("starting moto")),
        Err(why) => {
            eprintln!("moto unavailable ({why}): the STS checks must fail instead");
            None
        }
    };
    // Port 1 in the node's namespace: nothing listens there.
    let endpoint = moto
        .as_ref()
        .map_or_else(|| "http://127.0.0.1:1".to_owned(), MotoSts::endpoint);
    let dir = TempDir::new("sts");
    let bindings = dir.0.join("bindings.yaml");
    std::fs::write(
        &bindings,
        format!("bindings:\n  - cgroup: \"app.slice\"\n    role: {ROLE}\n"),
    )
    .expect("writing the bindings");
    let bindings = bindings.display().to_string();
    let agent_flags = [
        "--bindings",
        &bindings,
        "--sts-endpoint",
        &endpoint,
        "--region",
        "us-east-1",
        "--upstream",
        "off",
    ];
    let agent = Agent::start(&node, &agent_flags).expect("starting the agent");
    let bpffs = agent.bpffs_dir().display().to_string();
    let pods = node.pods_cgroup().display().to_string();

    // Everything given to doctor, the agent's flags ignored.
    let mut given: Vec<String> = ["--cgroup", &pods, "--bpffs-dir", &bpffs]
        .iter()
        .map(|s| (*s).to_owned())
        .chain(listen_flags())
        .chain(agent_flags.iter().take(6).map(|s| (*s).to_owned()))
        .collect();
    given.push("--ignore-agent-flags".to_owned());
    let given: Vec<&str> = given.iter().map(String::as_str).collect();
    let (out, report) = doctor_json(&node, &given);
    let healthy = moto.is_some();
    let expected_exit = i32::from(!healthy);
    assert_eq!(out.status.code(), Some(expected_exit), "{out:?}");
    assert_eq!(report["summary"]["healthy"], healthy, "{report:#}");
    for name in [
        "kernel",
        "bpf features",
        "btf",
        "capabilities",
        "cgroup v2",
        "pods cgroup",
        "bpffs",
        "cgroup_skb/egress",
        "cgroup/connect4",
        "cgroup/connect6",
        "sock_ops",
        "pins",
        "forward guard",
        "agent",
        "ready",
        "listener v4",
        "listener v6",
        "roles",
        "region",
    ] {
        assert_status(&report, name, "ok");
    }
    if healthy {
        assert_status(&report, "sts endpoint", "ok");
        assert_status(&report, "aws identity", "ok");
        let identity = check(&report, "aws identity")["finding"].to_string();
        assert!(identity.contains("account 123456789012"), "{identity}");
    } else {
        assert_status(&report, "sts endpoint", "fail");
    }
    assert_status(&report, "kubernetes", "skip");
    let connect4 = check(&report, "cgroup/connect4")["finding"].to_string();
    assert!(connect4.contains("iamlet_connect4 (prog "), "{connect4}");
    assert!(connect4.contains(&pods), "{connect4}");
    let pid = agent.pid().expect("the agent's pid");
    let agent_check = check(&report, "agent")["finding"].to_string();
    assert!(agent_check.contains(&format!("pid {pid}")), "{agent_check}");

    // The text report says the same.
    let text = doctor(&node, &given);
    assert_eq!(text.status.code(), out.status.code(), "{text:?}");
    assert_text_matches(&text.stdout, &report);
    eprintln!("iamlet doctor (standalone, STS):\n{}", text.stdout);

    // Given only the pin directory, doctor takes the rest from the agent's command line.
    let (out, from_agent) = doctor_json(&node, &["--bpffs-dir", &bpffs]);
    assert_eq!(verdicts(&from_agent), verdicts(&report), "{from_agent:#}");
    assert_eq!(out.status.code(), Some(expected_exit));
    let note = from_agent["notes"][0].to_string();
    assert!(
        note.contains(&format!("pid {pid}")) && note.contains("command line"),
        "{note}"
    );

    // An STS that does not answer is a problem, named with what to do.
    let (out, down) = doctor_json(
        &node,
        &[
            "--bpffs-dir",
            &bpffs,
            "--sts-endpoint",
            "http://127.0.0.1:1",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let sts = check(&down, "sts endpoint");
    assert_eq!(sts["status"], "fail", "{sts:#}");
    assert!(
        sts["finding"]
            .to_string()
            .contains("http://127.0.0.1:1 is not reachable"),
        "{sts:#}"
    );
    assert!(
        sts["action"]
            .to_string()
            .contains("the node must reach STS"),
        "{sts:#}"
    );
    assert_status(&down, "aws identity", "skip");
    drop(agent);
}

#[test]
fn doctor_names_a_stopped_agent_and_what_it_left_behind() {
    skip_unless_privileged!();
    let node = TestNode::new().expect("creating the test node");
    let pods = node.pods_cgroup().display().to_string();
    let run = |agent: &Agent| {
        let bpffs = agent.bpffs_dir().display().to_string();
        let mut args: Vec<String> =
            vec!["--cgroup".into(), pods.clone(), "--bpffs-dir".into(), bpffs];
        args.extend(listen_flags());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (out, report) = doctor_json(&node, &args);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert_eq!(report["summary"]["healthy"], false);
        let text = doctor(&node, &args);
        assert_eq!(text.status.code(), Some(1));
        assert_text_matches(&text.stdout, &report);
        (report, text.stdout)
    };

    // Stopped with --on-exit keep (the default): the programs stay attached, fail closed.
    let mut kept = Agent::start(&node, &[]).expect("starting the agent");
    kept.stop().expect("stopping the agent");
    let (report, _) = run(&kept);
    let agent = check(&report, "agent");
    assert_eq!(agent["status"], "fail", "{agent:#}");
    assert!(
        agent["finding"]
            .to_string()
            .contains("refused (fail closed)"),
        "{agent:#}"
    );
    assert!(
        agent["action"].to_string().contains("start the agent"),
        "{agent:#}"
    );
    let ready = check(&report, "ready");
    assert_eq!(ready["status"], "fail", "{ready:#}");
    assert!(
        ready["finding"]
            .to_string()
            .starts_with("\"not ready: nothing answers at 127.0.0.1:9809"),
        "{ready:#}"
    );
    for name in [
        "cgroup/connect4",
        "cgroup/connect6",
        "sock_ops",
        "cgroup_skb/egress",
        "pins",
        "forward guard",
    ] {
        assert_status(&report, name, "ok");
    }
    assert_status(&report, "listener v4", "fail");
    drop(kept); // removes the pins, which detaches the programs

    // Stopped with --on-exit detach: nothing attached any more.
    let mut detached = Agent::start(&node, &["--on-exit", "detach"]).expect("starting the agent");
    detached.stop().expect("stopping the agent");
    let (report, text) = run(&detached);
    for name in [
        "cgroup/connect4",
        "cgroup/connect6",
        "sock_ops",
        "cgroup_skb/egress",
    ] {
        let c = check(&report, name);
        assert_eq!(c["status"], "fail", "{c:#}");
        assert!(
            c["finding"].to_string().contains("is not attached to"),
            "{c:#}"
        );
        assert!(
            c["action"].to_string().starts_with("\"start the agent"),
            "{c:#}"
        );
    }
    let connect4 = check(&report, "cgroup/connect4")["finding"].to_string();
    assert!(connect4.contains("not redirected to iamlet"), "{connect4}");
    assert_status(&report, "pins", "fail");
    assert_status(&report, "ready", "fail");
    assert_status(&report, "agent", "fail");
    assert!(text.contains("\nFAIL  cgroup/connect4 "), "{text}");
    eprintln!("iamlet doctor (agent stopped, --on-exit detach):\n{text}");
}

#[test]
fn doctor_checks_the_kubernetes_api_and_the_agents_permissions() {
    skip_unless_privileged!();
    let node = TestNode::new().expect("creating the test node");
    let (s, agent) = setup(&node, &["app-doctor"]).expect("the API server and the agent");
    let bpffs = agent.bpffs_dir().display().to_string();
    // Only the pin directory: the kubeconfig, node name and the rest come from the agent.
    let (out, report) = doctor_json(&node, &["--bpffs-dir", &bpffs]);
    assert_eq!(out.status.code(), Some(0), "{out:?}\n{report:#}");
    assert_status(&report, "roles", "ok");
    assert_status(&report, "credentials", "ok");
    let node_name = check(&report, "node name");
    assert_eq!(node_name["status"], "ok", "{node_name:#}");
    assert!(
        node_name["finding"].to_string().contains(NODE),
        "{node_name:#}"
    );
    let api = check(&report, "kubernetes api");
    assert_eq!(api["status"], "ok", "{api:#}");
    assert!(
        api["finding"].to_string().contains("v1.33.0-fake"),
        "{api:#}"
    );
    assert_status(&report, "rbac", "ok");
    let asked = s
        .api
        .request_count("create", Some(SSAR_PATH))
        .expect("the API's request log");
    assert_eq!(asked, 8, "one review per permission the agent needs");

    // Take two permissions away: doctor names them and what to do.
    s.api
        .deny(&[("watch", "", "pods"), ("create", "events.k8s.io", "events")])
        .expect("denying permissions");
    let (out, report) = doctor_json(&node, &["--bpffs-dir", &bpffs]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let rbac = check(&report, "rbac");
    assert_eq!(rbac["status"], "fail", "{rbac:#}");
    let finding = rbac["finding"].as_str().unwrap_or_default();
    assert_eq!(
        finding, "the agent's account may not: watch pods, create events.k8s.io/events",
        "{rbac:#}"
    );
    assert!(
        rbac["action"].to_string().contains("ClusterRole"),
        "{rbac:#}"
    );
    let text = doctor(&node, &["--bpffs-dir", &bpffs]);
    assert_eq!(text.status.code(), Some(1));
    assert_text_matches(&text.stdout, &report);
    eprintln!(
        "iamlet doctor (Kubernetes mode, two permissions denied):\n{}",
        text.stdout
    );

    s.api.deny(&[]).expect("allowing everything again");
    let (out, _) = doctor_json(&node, &["--bpffs-dir", &bpffs]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    drop(agent);
}

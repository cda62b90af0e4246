//! Agent upgrades and exits, end to end: a DaemonSet rollout with `maxSurge: 1` runs the new
//! agent next to the old one; the new one takes the listening sockets, token key and pinned
//! links over, and a pod asking all the while loses no request (kiam and kube2iam dropped
//! credentials during agent upgrades). An agent that exits or is killed with no successor
//! leaves the programs attached: pods get connection refused, never the node's credentials
//! (kube2iam leaked them whenever its iptables rule was missing); the next agent adopts the
//! links. Run as root through `cargo xtask test`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{ensure, Result};
use iamlet_tests::fake_imds::{INSTANCE_ID, NODE_ACCESS_KEY, NODE_ACCOUNT};
use iamlet_tests::process::ChildGuard;
use iamlet_tests::{skip_unless_privileged, Agent, FakeImds, FakePod, TestNode};
use serde_json::Value;

const UID: &str = "7a7a7a7a-1b1b-4c2c-8d3d-4e4e4e4e4e4e";
/// The pod's role, bound by its bare name: each agent expands it with the node's account,
/// which it reads from the metadata service's `iam/info` as it starts. During a handover
/// that read goes out under the predecessor's programs, so the predecessor's config must
/// exempt the successor by then (or the read is redirected to the proxy and refused).
const ROLE_NAME: &str = "upgrade-app";
/// The role ARN `ROLE_NAME` expands to (the fake node's account).
fn role_arn() -> String {
    format!("arn:aws:iam::{NODE_ACCOUNT}:role/{ROLE_NAME}")
}
const KEY: &str = "ASIAUPGRADEEXAMPLE01";

/// A pod process that fetches one IMDSv2 token, then, like an SDK that caches it, asks for
/// its role, its credentials and the instance id over fresh connections until its stdin
/// closes (or `argv[1]` seconds pass), and prints a JSON summary.
const ASKER: &str = r#"
import http.client, json, select, sys, time
seconds = float(sys.argv[1])
out = {"ok": 0, "errors": [], "keys": {}, "max_ms": 0.0}
def call(method, path, headers):
    c = http.client.HTTPConnection("169.254.169.254", 80, timeout=5)
    try:
        c.request(method, path, headers=headers)
        r = c.getresponse()
        return r.status, r.read().decode()
    finally:
        c.close()
status, token = call("PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "21600"})
if status != 200:
    out["errors"].append("token: %d %s" % (status, token[:100]))
h = {"X-aws-ec2-metadata-token": token}
end = time.time() + seconds
while time.time() < end and not select.select([sys.stdin], [], [], 0)[0]:
    t = time.time()
    try:
        status, role = call("GET", "/latest/meta-data/iam/security-credentials/", h)
        if status != 200:
            raise Exception("role list: %d %s" % (status, role[:100]))
        status, doc = call("GET", "/latest/meta-data/iam/security-credentials/" + role, h)
        if status != 200:
            raise Exception("credentials: %d %s" % (status, doc[:100]))
        key = json.loads(doc)["AccessKeyId"]
        # Passed through to the node's metadata service by whichever agent accepted: that
        # agent's own connect must not be redirected back to the proxy.
        status, iid = call("GET", "/latest/meta-data/instance-id", h)
        if status != 200 or iid != sys.argv[2]:
            raise Exception("instance-id: %d %s" % (status, iid[:100]))
        out["keys"][key] = out["keys"].get(key, 0) + 1
        out["ok"] += 1
    except Exception as e:
        out["errors"].append(repr(e)[:200])
    out["max_ms"] = max(out["max_ms"], (time.time() - t) * 1000)
    # About 30 requests/s: below the agent's per-pod rate limit (50/s).
    time.sleep(0.05)
out["error_count"] = len(out["errors"])
out["errors"] = out["errors"][:20]
print(json.dumps(out))
"#;

fn pod_cgroup() -> String {
    iamlet_tests::besteffort_container_cgroup(UID, 1)
}

/// Bindings and static credentials for the one pod.
struct Files {
    dir: PathBuf,
}

impl Files {
    fn write() -> Result<Self> {
        // One directory per test (tests of one process may run at once; each removes its own).
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("iamlet-upgrade-test-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("bindings.yaml"),
            format!(
                "bindings:\n  - cgroup: \"**/kubepods-besteffort-pod{}.slice\"\n    role: {ROLE_NAME}\n",
                UID.replace('-', "_")
            ),
        )?;
        std::fs::write(
            dir.join("creds.yaml"),
            format!("credentials:\n  {}:\n    access_key_id: {KEY}\n    secret_access_key: s\n    session_token: t\n", role_arn()),
        )?;
        Ok(Files { dir })
    }

    fn args<'a>(&'a self, extra: &[&'a str]) -> Vec<String> {
        let mut args = vec![
            "--bindings".to_string(),
            self.dir.join("bindings.yaml").display().to_string(),
            "--static-credentials".into(),
            self.dir.join("creds.yaml").display().to_string(),
            "--log".into(),
            "info".into(),
        ];
        args.extend(extra.iter().map(std::string::ToString::to_string));
        args
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn refs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// The credentials document the pod gets with IMDSv2 (what the real service requires too);
/// an error when it cannot connect or is refused.
fn fetch_credentials(pod: &FakePod) -> Result<String> {
    const BASE: &str = "/latest/meta-data/iam/security-credentials/";
    let token = pod.imds(
        "PUT",
        "/latest/api/token",
        &[("X-aws-ec2-metadata-token-ttl-seconds", "60")],
    )?;
    ensure!(
        token.status == 200,
        "token: {} {}",
        token.status,
        token.body
    );
    let header = [("X-aws-ec2-metadata-token", token.body.trim())];
    let roles = pod.imds("GET", BASE, &header)?;
    ensure!(
        roles.status == 200,
        "role list: {} {}",
        roles.status,
        roles.body
    );
    let doc = pod.imds("GET", &format!("{BASE}{}", roles.body.trim()), &header)?;
    ensure!(
        doc.status == 200,
        "credentials: {} {}",
        doc.status,
        doc.body
    );
    Ok(doc.body)
}

/// Three host-network pods below the attached cgroup, one per agent, as DaemonSet pods are.
fn agent_pods(node: &TestNode) -> Vec<FakePod> {
    (1..=3)
        .map(|i| {
            node.add_host_network_pod(&format!("kubepods-burstable.slice/iamlet-agent-{i}.scope"))
        })
        .collect::<Result<_>>()
        .expect("adding the agents' host-network pods")
}

/// How many programs an agent attaches (connect4, connect6, `sock_ops`, `cgroup_skb` egress).
const PROGRAMS: usize = 4;

/// Ids of the programs attached to the node's pods cgroup.
fn attached_programs(node: &TestNode) -> Result<Vec<u64>> {
    Ok(iamlet_tests::bpftool::cgroup_programs(node.pods_cgroup())?
        .into_iter()
        .map(|p| p.id)
        .collect())
}

#[test]
fn upgrade_hands_over_without_losing_a_request() {
    skip_unless_privileged!();
    let node = TestNode::new().expect("creating the test node");
    let _imds = FakeImds::start(&node).expect("starting the fake IMDS");
    let files = Files::write().expect("writing the agent config files");
    let pod = node.add_pod(&pod_cgroup()).expect("adding the pod");
    // Each agent runs in its own host-network pod below the attached cgroup, as DaemonSet
    // pods do, so each must be exempt from the redirect (and its predecessor too).
    let agent_pods = agent_pods(&node);
    let mut first = Agent::start_in_pod(&node, &agent_pods[0], &refs(&files.args(&[])))
        .expect("starting the first agent");
    let programs_first = attached_programs(&node).expect("the attached programs");
    assert!(
        programs_first.len() == PROGRAMS,
        "attached: {programs_first:?}"
    );

    let mut cmd = pod.command("python3");
    // It asks until the test closes its stdin, after the second handover (however long the
    // agents take to start, under emulation too).
    cmd.args(["-c", ASKER, "300", INSTANCE_ID])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let asker = ChildGuard::spawn(&mut cmd).expect("spawning the asking pod");
    std::thread::sleep(Duration::from_millis(1500));

    // Rollout, twice: the new agent starts next to the old one, then the old one is stopped.
    let mut second =
        Agent::start_successor_in_pod(&node, &agent_pods[1], &first, &refs(&files.args(&[])))
            .expect("starting the second agent");
    std::thread::sleep(Duration::from_millis(1000));
    let status = first.stop().expect("stopping the first agent");
    assert!(status.success(), "first agent exit: {status}");
    let programs_second = attached_programs(&node).expect("the attached programs");
    assert!(
        programs_second.len() == PROGRAMS && programs_second != programs_first,
        "the successor's programs were not swapped in: {programs_first:?} -> {programs_second:?}"
    );
    std::thread::sleep(Duration::from_millis(1500));
    let third =
        Agent::start_successor_in_pod(&node, &agent_pods[2], &second, &refs(&files.args(&[])))
            .expect("starting the third agent");
    std::thread::sleep(Duration::from_millis(1000));
    let status = second.stop().expect("stopping the second agent");
    assert!(status.success(), "second agent exit: {status}");
    std::thread::sleep(Duration::from_millis(1000));

    let mut asker = asker.into_inner();
    drop(asker.stdin.take());
    let out = asker
        .wait_with_output()
        .expect("waiting for the asking pod");
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "asker output: {}{}: {e}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    println!("pod asking through two handovers: {summary}");
    let ok = summary["ok"].as_u64().unwrap_or(0);
    assert!(
        summary["errors"].as_array().is_some_and(Vec::is_empty),
        "requests failed during the handovers: {summary}"
    );
    assert!(ok >= 50, "too few requests to mean anything: {summary}");
    assert!(
        summary["keys"].as_object().is_some_and(|k| k.len() == 1)
            && summary["keys"][KEY].as_u64() == Some(ok),
        "wrong credentials: {summary}"
    );
    for (name, log) in [("first", first.log_text()), ("second", second.log_text())] {
        assert!(
            log.contains("handed over to the successor"),
            "{name} agent did not hand over:\n{log}"
        );
    }
    assert!(
        third
            .log_text()
            .contains("taking over from the running agent"),
        "third agent did not take over:\n{}",
        third.log_text()
    );
}

#[test]
fn exit_or_crash_without_successor_fails_closed_and_the_next_agent_adopts() {
    skip_unless_privileged!();
    let node = TestNode::new().expect("creating the test node");
    let _imds = FakeImds::start(&node).expect("starting the fake IMDS");
    let files = Files::write().expect("writing the agent config files");
    let pod = node.add_pod(&pod_cgroup()).expect("adding the pod");
    let served = |what: &str| {
        let creds =
            fetch_credentials(&pod).unwrap_or_else(|e| panic!("{what}: no credentials: {e:#}"));
        assert!(creds.contains(KEY), "{what}: {creds}");
    };
    let refused = |what: &str| match fetch_credentials(&pod) {
        Ok(answer) => panic!("{what}: the pod was answered: {answer}"),
        Err(e) => {
            let text = format!("{e:#}");
            assert!(
                !text.contains(NODE_ACCESS_KEY) && !text.contains(NODE_ACCOUNT),
                "{what}: node credentials: {text}"
            );
            assert!(
                text.contains("ConnectionRefused"),
                "{what}: expected connection refused, got: {text}"
            );
        }
    };

    // Each agent runs in a host-network pod of its own below the attached cgroup, as a
    // restarted DaemonSet pod does: an adopting agent's own start-up requests (the node's
    // `iam/info`) go out under the programs it is about to adopt.
    let agent_pods = agent_pods(&node);
    let mut agent = Agent::start_in_pod(&node, &agent_pods[0], &refs(&files.args(&[])))
        .expect("starting the agent");
    served("first agent");
    let status = agent.stop().expect("stopping the first agent");
    assert!(status.success(), "exit status {status}");
    assert!(
        attached_programs(&node)
            .expect("the attached programs")
            .len()
            == PROGRAMS,
        "programs detached on exit with --on-exit keep"
    );
    refused("after a clean exit");

    // The next agent adopts the pinned links (no handover partner: the first one is gone).
    let mut next =
        Agent::start_successor_in_pod(&node, &agent_pods[1], &agent, &refs(&files.args(&[])))
            .expect("starting the adopting agent");
    assert!(
        next.log_text().contains("Adopted"),
        "links not adopted:\n{}",
        next.log_text()
    );
    served("adopting agent");

    // A crash (SIGKILL: no clean-up runs at all) fails closed too.
    let pid = next.pid().expect("pid").to_string();
    std::process::Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .expect("running kill -KILL");
    let _ = next.stop();
    assert!(
        attached_programs(&node)
            .expect("the attached programs")
            .len()
            == PROGRAMS,
        "programs gone after a crash"
    );
    refused("after a crash");
    let mut last = Agent::start_successor_in_pod(
        &node,
        &agent_pods[2],
        &next,
        &refs(&files.args(&["--on-exit", "detach"])),
    )
    .expect("starting the agent after the crash");
    served("agent after the crash");

    // Control: --on-exit detach removes everything, and then the pod does reach the metadata
    // service of the node (here the fake one with node credentials) — which is what `keep`
    // prevents.
    let status = last.stop().expect("stopping the last agent");
    assert!(status.success(), "exit status {status}");
    assert!(
        attached_programs(&node)
            .expect("the attached programs")
            .is_empty(),
        "programs left after --on-exit detach"
    );
    let leaked = fetch_credentials(&pod).expect("credentials after --on-exit detach (the control)");
    assert!(
        leaked.contains(NODE_ACCESS_KEY),
        "the control did not reach the fake IMDS: {leaked}"
    );
}

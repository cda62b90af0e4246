//! The second line: a pod that reaches for the metadata service without a `connect()` the
//! hooks see (its own DNAT rule, a raw socket, a frame written below IP) gets nothing from the
//! node's service, while SDK flows through the redirect keep working. Each attempt is first
//! made from the same kind of pod before iamlet runs, as a control that it does reach the
//! (fake) node service there. Run as root through `cargo xtask test` (serially).

use anyhow::{Context, Result};
use iamlet_tests::fake_imds::{NODE_ACCESS_KEY, NODE_SECRET};
use iamlet_tests::{
    fetch_credentials, sdk_available, skip_unless_privileged, Agent, FakeImds, FakePod, PodRole,
    Sdk, StaticRoles, TestNode,
};
use serde_json::Value;

const BYPASS: &str = include_str!("../../python/imds_bypass.py");

const A: PodRole = PodRole {
    uid: "7c0f5e3a-2b1d-4e8f-9a6b-3d2c1e0f9a8b",
    role: "arn:aws:iam::123456789012:role/app-a",
    access_key: "ASIAPODAEXAMPLE00001",
};

/// One attempt: what the script reported.
fn attempt(mut cmd: std::process::Command, mode: &str, family: &str) -> Result<Value> {
    cmd.args(["-c", BYPASS, mode, family])
        .env("NODE_KEY", NODE_ACCESS_KEY);
    let out = iamlet_tests::run_with_timeout(&mut cmd, std::time::Duration::from_secs(30))?
        .ensure_success()?;
    let line = out.stdout.lines().last().context("no output")?;
    serde_json::from_str(line).with_context(|| format!("bypass output: {}", out.stdout))
}

/// (mode, family) pairs tried.
const ATTEMPTS: &[(&str, &str)] = &[
    ("dnat", "v4"),
    ("dnat", "v6"),
    ("dnat", "mapped"),
    ("raw", "v4"),
    ("raw", "v6"),
    ("packet", "v4"),
    ("packet", "v6"),
];

fn pod(node: &TestNode) -> Result<FakePod> {
    node.add_pod(&iamlet_tests::besteffort_container_cgroup(A.uid, 1))
}

#[test]
fn no_packet_of_the_node_service_reaches_a_pod_that_bypasses_connect() {
    skip_unless_privileged!();
    let node = TestNode::new().expect("creating the test node");
    let _imds = FakeImds::start(&node).expect("starting the fake IMDS");
    let mut report = Vec::new();
    // Control: without iamlet, each attempt reaches the node's service from the same pod (a
    // fresh pod each time: each starts without NAT rules).
    for (mode, family) in ATTEMPTS {
        let control = attempt(
            pod(&node).expect("adding a pod").command("python3"),
            mode,
            family,
        )
        .unwrap_or_else(|e| panic!("control {mode}/{family}: {e:#}"));
        report.push(format!("without iamlet {mode}/{family}: {control}"));
        assert!(
            control["capture_bytes"].as_u64() > Some(0),
            "control: {mode}/{family} does not reach the node service without iamlet: {control}"
        );
        if *mode == "dnat" {
            assert!(
                control["node_key_seen"] == true,
                "control: DNAT without iamlet did not fetch the node's key: {control}"
            );
        }
    }
    let roles = StaticRoles::write(&[A]).expect("writing the static roles");
    let args = roles.args();
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = Agent::start(&node, &refs).expect("starting the agent");
    for (mode, family) in ATTEMPTS {
        let pod = pod(&node).expect("adding a pod");
        let tried = attempt(pod.command("python3"), mode, family)
            .unwrap_or_else(|e| panic!("{mode}/{family}: {e:#}"));
        report.push(format!("with iamlet {mode}/{family}: {tried}"));
        assert!(
            tried["capture_bytes"] == 0 && tried["socket_bytes"] == 0,
            "{mode}/{family}: bytes of the node's service reached the pod: {tried}"
        );
        assert!(tried["node_key_seen"] == false, "{mode}/{family}: {tried}");
        // The same pod still gets its own credentials through the redirect.
        let answer = pod
            .imds(
                "GET",
                "/latest/meta-data/iam/security-credentials/app-a",
                &[],
            )
            .expect("GET app-a's credentials from the pod");
        assert!(
            answer.status == 200 && answer.body.contains(A.access_key),
            "{mode}/{family}: the redirect broke: {answer:?}"
        );
        assert!(!answer.body.contains(NODE_SECRET));
    }
    eprintln!("bypass attempts:\n{}", report.join("\n"));
    // (Packets to the v4-in-v6 forms are dropped and counted as `imds_v4_in_v6`; no stack
    // here sends them anywhere, so the unit tests of the decision cover them.)
    for reason in ["imds_v4", "imds_v6"] {
        let drops = agent
            .metric(
                &node,
                &format!("iamlet_ebpf_egress_dropped_total{{reason=\"{reason}\"}}"),
            )
            .unwrap_or_else(|e| {
                panic!(
                    "reading metric iamlet_ebpf_egress_dropped_total{{reason=\"{reason}\"}}: {e:#}"
                )
            });
        assert!(drops > 0.0, "no egress drop counted for {reason}");
    }
    // The frames written below IP were refused by the node's forwarding guard.
    let mut rules = node
        .run(&["ip", "-4", "rule", "show"])
        .expect("running `ip -4 rule show` in the node")
        .ensure_success()
        .expect("`ip -4 rule show` in the node")
        .stdout;
    rules += &node
        .run(&["ip", "-6", "rule", "show"])
        .expect("running `ip -6 rule show` in the node")
        .ensure_success()
        .expect("`ip -6 rule show` in the node")
        .stdout;
    let ours = rules.lines().filter(|l| l.contains("proto 195")).count();
    assert!(ours == 4, "forwarding guard rules:\n{rules}");
    // And an SDK in a pod still gets its own credentials.
    if sdk_available(Sdk::Boto3).is_ok() {
        let pod = node
            .add_pod(&iamlet_tests::besteffort_container_cgroup(A.uid, 2))
            .expect("adding the pod");
        let creds = fetch_credentials(&pod, Sdk::Boto3).expect("credentials through boto3 in pod");
        assert!(creds.access_key_id == A.access_key, "{creds:?}");
    }
}

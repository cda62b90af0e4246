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

/// Attempts the kernel itself stops: raw IP sockets, whose packets the egress program drops
/// (`EPERM`). Kernel-sensitive, so the kernel matrix runs them on every kernel.
const RAW_SOCKETS: &[(&str, &str)] = &[("raw", "v4"), ("raw", "v6")];

/// Attempts past the pod's own netfilter (DNAT to a decoy, also over v4-mapped) and below IP
/// (frames the node must refuse to forward).
const DNAT_AND_FRAMES: &[(&str, &str)] = &[
    ("dnat", "v4"),
    ("dnat", "v6"),
    ("dnat", "mapped"),
    ("packet", "v4"),
    ("packet", "v6"),
];

fn pod(node: &TestNode) -> Result<FakePod> {
    node.add_pod(&iamlet_tests::besteffort_container_cgroup(A.uid, 1))
}

/// Makes each of `attempts` from a fresh pod, first without iamlet (the control: it must
/// reach the node's service) and then with it (not one byte of the service may come back, and
/// the pod's own credentials still come through the redirect). Gives the running agent.
fn attempts_without_and_with_iamlet(node: &TestNode, attempts: &[(&str, &str)]) -> Agent {
    let mut report = Vec::new();
    // Control: without iamlet, each attempt reaches the node's service from the same pod (a
    // fresh pod each time: each starts without NAT rules).
    for (mode, family) in attempts {
        let control = attempt(
            pod(node).expect("adding a pod").command("python3"),
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
    let agent = Agent::start(node, &refs).expect("starting the agent");
    for (mode, family) in attempts {
        let pod = pod(node).expect("adding a pod");
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
    agent
}

#[test]
fn raw_sockets_get_nothing_from_the_node_service() {
    skip_unless_privileged!();
    let node = TestNode::new().expect("creating the test node");
    let _imds = FakeImds::start(&node).expect("starting the fake IMDS");
    let agent = attempts_without_and_with_iamlet(&node, RAW_SOCKETS);
    assert_egress_drops_counted(&node, &agent);
}

#[test]
fn no_packet_of_the_node_service_reaches_a_pod_that_bypasses_connect() {
    skip_unless_privileged!();
    let node = TestNode::new().expect("creating the test node");
    let _imds = FakeImds::start(&node).expect("starting the fake IMDS");
    let agent = attempts_without_and_with_iamlet(&node, DNAT_AND_FRAMES);
    assert_egress_drops_counted(&node, &agent);
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
    // And an SDK in a pod still gets its own credentials (the AWS SDK for Rust).
    if sdk_available(Sdk::Rust).is_ok() {
        let pod = node
            .add_pod(&iamlet_tests::besteffort_container_cgroup(A.uid, 2))
            .expect("adding the pod");
        let creds =
            fetch_credentials(&pod, Sdk::Rust).expect("credentials through the Rust SDK in pod");
        assert!(creds.access_key_id == A.access_key, "{creds:?}");
    }
}

/// The egress program counted drops of packets to both metadata addresses.
fn assert_egress_drops_counted(node: &TestNode, agent: &Agent) {
    // (Packets to the v4-in-v6 forms are dropped and counted as `imds_v4_in_v6`; no stack
    // here sends them anywhere, so the unit tests of the decision cover them.)
    for reason in ["imds_v4", "imds_v6"] {
        let drops = agent
            .metric(
                node,
                &format!("iamlet_ebpf_egress_dropped_total{{reason=\"{reason}\"}}"),
            )
            .unwrap_or_else(|e| {
                panic!(
                    "reading metric iamlet_ebpf_egress_dropped_total{{reason=\"{reason}\"}}: {e:#}"
                )
            });
        assert!(drops > 0.0, "no egress drop counted for {reason}");
    }
}

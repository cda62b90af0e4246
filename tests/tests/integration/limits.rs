//! Limits of the metadata proxy end to end, against the real agent: connections per pod (one
//! pod cannot lock the others out), header size, slow clients, rate limits that close the
//! connection, HTTP/2 prior knowledge, and numeric flags out of range. Run as root through
//! `cargo xtask test` (serially). The abuse benchmark (`cargo xtask bench abuse`) measures what
//! these limits are worth under attack; these tests prove the behaviour.

use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Result;
use iamlet_tests::{
    http, skip_unless_privileged, Agent, ChildGuard, FakePod, Family, PodRole, StaticRoles,
    TestNode, NODE_PROXY_V4, PROXY_PORT,
};

const A: PodRole = PodRole {
    uid: "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
    role: "arn:aws:iam::123456789012:role/app-a",
    access_key: "ASIAPODAEXAMPLE00001",
};
const B: PodRole = PodRole {
    uid: "5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f7a8b9",
    role: "arn:aws:iam::123456789012:role/app-b",
    access_key: "ASIAPODBEXAMPLE00002",
};
const ROLE_LIST: &str = "/latest/meta-data/iam/security-credentials/";

fn pods(node: &TestNode) -> Result<(FakePod, FakePod)> {
    Ok((
        node.add_pod(&iamlet_tests::besteffort_container_cgroup(A.uid, 1))?,
        node.add_pod(&iamlet_tests::besteffort_container_cgroup(B.uid, 2))?,
    ))
}

fn start(node: &TestNode, roles: &StaticRoles, extra: &[&str]) -> Result<Agent> {
    let args = roles.args_with(extra);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Agent::start(node, &refs)
}

/// Pod A (limit 2): two idle connections take its turns; a third request waits; a fourth
/// connection waits too; a fifth is closed at once. Then the first two close and the waiting
/// request is served (which of the two waiters goes first is up to the scheduler).
const OVER_THE_LIMIT: &str = r#"
import socket, sys, time
req = b"GET /latest/meta-data/iam/security-credentials/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
held = [socket.create_connection(("169.254.169.254", 80)) for _ in range(2)]
time.sleep(0.3)
third = socket.create_connection(("169.254.169.254", 80))
third.sendall(req)
fourth = socket.create_connection(("169.254.169.254", 80))
time.sleep(0.3)
fifth = socket.create_connection(("169.254.169.254", 80))
fifth.settimeout(2.0)
try:
    print("fifth-closed" if fifth.recv(100) == b"" else "fifth-answered")
except ConnectionResetError:
    print("fifth-closed")
except socket.timeout:
    print("fifth-held")
third.settimeout(1.5)
try:
    third.recv(100)
    print("served-early")
except socket.timeout:
    print("waiting")
sys.stdout.flush()
held[0].close()
held[1].close()
third.settimeout(5.0)
print("served" if b" 200 " in third.recv(1000) else "not-served")
"#;

#[test]
fn a_pod_over_its_connection_limit_waits_and_other_pods_are_served() {
    skip_unless_privileged!();
    let node = TestNode::new().expect("creating the test node");
    let (a, b) = pods(&node).expect("adding the pods");
    let roles = StaticRoles::write(&[A, B]).expect("writing the static roles");
    let agent = start(
        &node,
        &roles,
        &[
            "--upstream",
            "off",
            "--max-connections-per-pod",
            "2",
            "--max-waiting-per-pod",
            "2",
        ],
    )
    .expect("starting the agent");
    let mut cmd = a.command("python3");
    cmd.args(["-c", OVER_THE_LIMIT]).stdout(Stdio::piped());
    let mut script = ChildGuard::spawn(&mut cmd).expect("spawning the script in pod A");
    // While pod A's connections wait, pod B is served at once.
    std::thread::sleep(Duration::from_millis(1200));
    let started = Instant::now();
    let answer = b
        .imds("GET", ROLE_LIST, &[])
        .expect("GET the role list from pod B");
    assert!(answer.status == 200, "pod B: {answer:?}");
    let b_took = started.elapsed();
    let status = script
        .wait_timeout(Duration::from_secs(20))
        .expect("waiting for pod A's script")
        .expect("pod A's script did not finish");
    let mut out = String::new();
    script
        .stdout
        .take()
        .expect("the script's stdout")
        .read_to_string(&mut out)
        .expect("reading the script's stdout");
    assert!(status.success(), "pod A's script failed: {out}");
    assert!(
        out.split_whitespace().collect::<Vec<_>>() == ["fifth-closed", "waiting", "served"],
        "pod A: {out}"
    );
    assert!(
        b_took < Duration::from_secs(3),
        "pod B waited {b_took:?} behind pod A"
    );
    let refused = agent
        .metric(
            &node,
            "iamlet_proxy_connections_total{result=\"over_pod_limit\"}",
        )
        .expect("reading metric iamlet_proxy_connections_total{result=\"over_pod_limit\"}");
    assert!(refused >= 1.0, "over_pod_limit = {refused}");
}

#[test]
fn limits_header_size_slow_clients_and_rate() {
    skip_unless_privileged!();
    let node = TestNode::new().expect("creating the test node");
    let (a, b) = pods(&node).expect("adding the pods");
    let roles = StaticRoles::write(&[A, B]).expect("writing the static roles");
    let _agent = start(
        &node,
        &roles,
        &[
            "--upstream",
            "off",
            "--header-timeout",
            "1s",
            // 0.2/s: the eight requests below get at least one 429 unless they take
            // over 15 s, however slow the machine.
            "--rate-limit",
            "0.2",
            "--rate-burst",
            "5",
        ],
    )
    .expect("starting the agent");
    let huge = "x".repeat(20_000);
    let answer = a
        .imds("GET", "/iamlet/whoami", &[("X-Padding", &huge)])
        .expect("GET /iamlet/whoami with 20 kB of headers from pod A");
    assert!(answer.status == 431, "oversized headers: {}", answer.status);

    // A client that never finishes its headers is cut off after --header-timeout.
    let slow = a
        .run(&[
            "python3",
            "-c",
            "import socket,time\ns=socket.create_connection(('169.254.169.254',80))\ns.sendall(b'GET /iamlet/whoami HTTP/1.1\\r\\nHost: x\\r\\n')\nt=time.time()\ns.settimeout(10)\nd=s.recv(100)\nprint(round(time.time()-t,1), len(d))",
        ])
        .expect("running the slow client in pod A")
        .ensure_success()
        .expect("the slow client in pod A");
    let waited: f64 = slow
        .stdout
        .split_whitespace()
        .next()
        .expect("slow client output")
        .parse()
        .expect("the slow client's seconds");
    assert!(
        waited < 5.0,
        "slow client held its connection for {waited} s"
    );

    // Rate limit per pod: the burst passes, then 429, which closes the connection (a
    // keep-alive client over its rate does not keep its connection); the other pod is
    // unaffected.
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let answer = a
            .imds("GET", ROLE_LIST, &[])
            .expect("GET the role list from pod A");
        if answer.status == 429 {
            assert!(
                answer.header("connection") == Some("close"),
                "429 without Connection: close: {answer:?}"
            );
        }
        statuses.push(answer.status);
    }
    assert!(statuses.contains(&429), "no 429 in {statuses:?}");
    assert!(
        statuses.iter().filter(|s| **s == 200).count() >= 5,
        "{statuses:?}"
    );
    assert!(
        b.imds("GET", ROLE_LIST, &[])
            .expect("GET the role list from pod B")
            .status
            == 200
    );
    // A keep-alive connection that goes over the rate is closed by the 429 answer.
    let keep_alive = r#"
import socket
s = socket.create_connection(("169.254.169.254", 80))
s.settimeout(5)
req = b"GET /iamlet/whoami HTTP/1.1\r\nHost: x\r\n\r\n"
for _ in range(20):
    try:
        s.sendall(req)
        data = s.recv(65536)
    except (BrokenPipeError, ConnectionResetError):
        print("closed")
        break
    if not data:
        print("closed")
        break
    if data.startswith(b"HTTP/1.1 429"):
        print("429")
        print("closed" if s.recv(100) == b"" else "kept-open")
        break
"#;
    let out = a
        .run(&["python3", "-c", keep_alive])
        .expect("running the keep-alive client in pod A")
        .ensure_success()
        .expect("the keep-alive client in pod A");
    assert!(
        out.stdout.split_whitespace().collect::<Vec<_>>() == ["429", "closed"],
        "keep-alive over the rate: {}",
        out.stdout
    );
    // A direct connect from outside the cgroup is still refused.
    let outside = node
        .add_outside_netns("outside")
        .expect("adding the outside host");
    let answer = http(
        outside.command("python3"),
        Family::V4,
        &NODE_PROXY_V4.to_string(),
        PROXY_PORT,
        "GET",
        ROLE_LIST,
    )
    .expect("GET from outside the cgroup");
    assert!(answer.status == 403, "{answer:?}");
}

#[test]
fn http2_prior_knowledge_gets_505() {
    skip_unless_privileged!();
    let node = TestNode::new().expect("creating the test node");
    let (a, _) = pods(&node).expect("adding the pods");
    let roles = StaticRoles::write(&[A]).expect("writing the static roles");
    let _agent = start(&node, &roles, &["--upstream", "off"]).expect("starting the agent");
    let script = r#"
import socket
s = socket.create_connection(("169.254.169.254", 80))
s.settimeout(5)
s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))
data = b""
while True:
    chunk = s.recv(4096)
    if not chunk:
        break
    data += chunk
print(data.split(b"\r\n")[0].decode())
"#;
    let out = a
        .run(&["python3", "-c", script])
        .expect("running the HTTP/2 preface in pod A")
        .ensure_success()
        .expect("the HTTP/2 preface in pod A");
    assert!(
        out.stdout.trim() == "HTTP/1.1 505 HTTP Version Not Supported",
        "{}",
        out.stdout
    );
    // curl's own HTTP/2 prior-knowledge client gets the same answer, not a hang.
    let curl = a
        .run(&[
            "curl",
            "-s",
            "-m",
            "5",
            "--http2-prior-knowledge",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        ])
        .expect("running curl --http2-prior-knowledge in pod A");
    assert!(
        curl.stdout.trim() != "000" || curl.status.code() != Some(28),
        "curl timed out: {curl:?}"
    );
    // The connection after it is plain HTTP/1.1 and served.
    assert!(
        a.imds("GET", ROLE_LIST, &[])
            .expect("GET the role list from pod A")
            .status
            == 200
    );
}

#[test]
fn numeric_flags_out_of_range_exit_64_with_a_message() {
    for (flag, value) in [
        ("--max-connections", "2305843009213693952"),
        ("--max-connections-per-pod", "0"),
        ("--rate-limit", "1e300"),
        ("--header-timeout", "10000s"),
        ("--sts-concurrency", "99999999"),
    ] {
        let out = std::process::Command::new(iamlet_tests::agent::agent_bin())
            .args(["--listen-v4", "198.18.0.1:8181", "--cgroup", "/nonexistent"])
            .args([flag, value])
            .output()
            .expect("running iamlet");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.code() == Some(64),
            "{flag} {value}: exit {:?}: {err}",
            out.status
        );
        assert!(
            err.contains(flag) && err.contains("must be between"),
            "{flag} {value}: {err}"
        );
    }
}

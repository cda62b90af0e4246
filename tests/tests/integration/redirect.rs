//! The foundation end to end: the real agent attached to a fake node's pods cgroup, fake pods
//! connecting to the metadata service, and the kernel telling the proxy which cgroup each
//! connection came from. Run as root through `cargo xtask test` (serially).

use iamlet_tests::scaled;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use iamlet_tests::{
    http, skip_unless_privileged, udp_probe, Agent, FakePod, FakeUpstream, Family, TestNode,
    IMDS_V4, IMDS_V6, NODE_PROXY_V4, NODE_PROXY_V6, PROXY_PORT,
};
use serde_json::Value;

const WHOAMI: &str = "/iamlet/whoami";

fn whoami(pod: &FakePod, family: Family, host: &str) -> Result<Value> {
    let answer = http(pod.command("python3"), family, host, 80, "GET", WHOAMI)?;
    ensure!(
        answer.status == 200,
        "whoami via {host} ({family:?}): {answer:?}"
    );
    answer.json()
}

#[track_caller]
fn assert_is(pod: &FakePod, who: &Value, dest: &str) {
    assert!(
        who["cgroup_id"].as_u64() == Some(pod.cgroup_id()),
        "{}: cgroup_id {} != inode {} of {}",
        pod.name(),
        who["cgroup_id"],
        pod.cgroup_id(),
        pod.cgroup_path().display()
    );
    let expected_path = format!("/{}", pod.cgroup_relative().trim_start_matches('/'));
    assert!(
        who["cgroup_path"].as_str() == Some(expected_path.as_str()),
        "{}: cgroup_path {} != {expected_path}",
        pod.name(),
        who["cgroup_path"]
    );
    assert!(
        who["original_destination"].as_str() == Some(dest),
        "{}: original_destination {} != {dest}",
        pod.name(),
        who["original_destination"]
    );
    assert!(
        who["kind"] == "redirected",
        "{}: kind {}",
        pod.name(),
        who["kind"]
    );
}

fn map_entries(agent: &Agent, map: &str) -> Result<Vec<Value>> {
    let path = agent.pinned_map(map);
    let dump = iamlet_tests::bpftool::json(&[
        "map",
        "dump",
        "pinned",
        path.to_str().context("utf-8 path")?,
    ])?;
    Ok(dump.as_array().cloned().unwrap_or_default())
}

#[test]
fn pods_sharing_one_netns_are_told_apart_by_cgroup() {
    skip_unless_privileged!();
    let node = TestNode::new().expect("creating the test node");
    let a = node.add_pod("pod-a").expect("adding pod pod-a");
    let b = node
        .add_pod_in_netns("pod-b", &a)
        .expect("adding pod pod-b in the network namespace of a");
    assert!(a.ipv4() == b.ipv4(), "the two pods must share one IP");
    let agent = Agent::start(&node, &[]).expect("starting the agent");

    let who_a =
        whoami(&a, Family::V4, "169.254.169.254").expect("whoami from a to 169.254.169.254");
    let who_b =
        whoami(&b, Family::V4, "169.254.169.254").expect("whoami from b to 169.254.169.254");
    assert_is(&a, &who_a, "169.254.169.254:80");
    assert_is(&b, &who_b, "169.254.169.254:80");
    assert!(who_a["cgroup_id"] != who_b["cgroup_id"]);
    drop(agent);
}

#[test]
fn pods_in_separate_netns_over_v4_v6_and_v4_mapped() {
    skip_unless_privileged!();
    let node = TestNode::new().expect("creating the test node");
    let a = node.add_pod("pod-a").expect("adding pod pod-a");
    let c = node.add_pod("pod-c").expect("adding pod pod-c");
    let agent = Agent::start(&node, &[]).expect("starting the agent");
    for pod in [&a, &c] {
        let v4 = whoami(pod, Family::V4, "169.254.169.254")
            .unwrap_or_else(|e| panic!("whoami from {} to 169.254.169.254: {e:#}", pod.name()));
        assert_is(pod, &v4, "169.254.169.254:80");
        let v6 = whoami(pod, Family::V6, "fd00:ec2::254")
            .unwrap_or_else(|e| panic!("whoami from {} to fd00:ec2::254: {e:#}", pod.name()));
        assert_is(pod, &v6, "[fd00:ec2::254]:80");
        let mapped = whoami(pod, Family::Mapped, "::ffff:169.254.169.254").unwrap_or_else(|e| {
            panic!(
                "whoami from {} to ::ffff:169.254.169.254: {e:#}",
                pod.name()
            )
        });
        assert_is(pod, &mapped, "[::ffff:169.254.169.254]:80");
    }
    // curl, as a real client would use it.
    let out = a
        .run(&[
            "curl",
            "-s",
            "-m",
            "5",
            "http://169.254.169.254/iamlet/whoami",
        ])
        .expect("running `curl -s -m 5 http://169.254.169.254/iamlet/whoami` in a")
        .ensure_success()
        .expect("`curl -s -m 5 http://169.254.169.254/iamlet/whoami` in a");
    let who: Value = serde_json::from_str(&out.stdout).expect("parsing the JSON output");
    assert_is(&a, &who, "169.254.169.254:80");
    drop(agent);
}

#[test]
fn host_network_pod_is_identified_by_its_cgroup() {
    skip_unless_privileged!();
    let node = TestNode::new().expect("creating the test node");
    let h = node
        .add_host_network_pod("hostnet")
        .expect("adding host-network pod hostnet");
    let agent = Agent::start(&node, &[]).expect("starting the agent");
    let who = whoami(&h, Family::V4, "169.254.169.254").expect("whoami from h to 169.254.169.254");
    assert_is(&h, &who, "169.254.169.254:80");
    drop(agent);
}

/// Whether a TCP connect (and a byte back) or a UDP echo to `host:port` gets through from a
/// process made by `cmd`: `open`, or `blocked:<error>`.
const REACH: &str = r#"
import socket, sys
proto, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
s = socket.socket(socket.AF_INET, kind)
s.settimeout(2)
try:
    if proto == "tcp":
        s.connect((host, port))
        s.sendall(b"GET /probe HTTP/1.0\r\n\r\n")
        ok = len(s.recv(100)) > 0
    else:
        s.sendto(b"probe", (host, port))
        ok = len(s.recvfrom(100)[0]) > 0
    print("open" if ok else "blocked:empty")
except OSError as e:
    print("blocked:" + type(e).__name__)
"#;

fn reach_with(
    mut cmd: std::process::Command,
    proto: &str,
    host: &str,
    port: u16,
) -> Result<String> {
    cmd.args(["-c", REACH, proto, host, &port.to_string()]);
    let out = iamlet_tests::run_with_timeout(&mut cmd, std::time::Duration::from_secs(10))?
        .ensure_success()?;
    Ok(out.stdout.trim().to_owned())
}

fn reach(pod: &FakePod, proto: &str, host: &str, port: u16) -> Result<String> {
    reach_with(pod.command("python3"), proto, host, port)
}

/// From the node itself (outside the pods' cgroup, like the kubelet) to the metadata address.
fn reach_from_node(node: &TestNode, proto: &str, port: u16) -> Result<String> {
    reach_with(node.command("python3"), proto, "169.254.169.254", port)
}

#[test]
fn other_traffic_and_outside_processes_are_untouched() {
    skip_unless_privileged!();
    let node = TestNode::new().expect("creating the test node");
    let pod = node.add_pod("pod-a").expect("adding pod pod-a");
    let outside = node
        .add_outside_netns("outside")
        .expect("adding the outside host");
    let imds4 = SocketAddr::new(IMDS_V4.into(), 80);
    let imds4_81 = SocketAddr::new(IMDS_V4.into(), 81);
    let imds6 = SocketAddr::new(IMDS_V6.into(), 80);
    let other = SocketAddr::new(NODE_PROXY_V4.into(), 9000);
    let _upstream = FakeUpstream::start(&node, &[imds4, imds4_81, imds6, other], &[imds4, other])
        .expect("starting the fake upstreams");
    let agent = Agent::start(&node, &[]).expect("starting the agent");

    // From the pod: other addresses reach their real servers, over TCP and UDP.
    let a = http(
        pod.command("python3"),
        Family::V4,
        "198.18.255.1",
        9000,
        "GET",
        "/y",
    )
    .expect("GET /y from the pod to another address");
    assert!(
        a.body == "upstream 198.18.255.1 9000 /y",
        "other address: {a:?}"
    );
    let reply = udp_probe(pod.command("python3"), "198.18.255.1", 9000, "ping")
        .expect("UDP probe to 198.18.255.1:9000");
    assert!(reply == "upstream-udp ping", "udp elsewhere: {reply:?}");
    // UDP and other ports of the metadata address are not redirected, and the egress filter
    // lets nothing of them out: whatever reaches the metadata address goes through iamlet.
    let tcp_81 =
        reach(&pod, "tcp", "169.254.169.254", 81).expect("tcp to 169.254.169.254:81 from pod");
    assert!(tcp_81.starts_with("blocked"), "tcp port 81: {tcp_81}");
    let udp_80 =
        reach(&pod, "udp", "169.254.169.254", 80).expect("udp to 169.254.169.254:80 from pod");
    assert!(udp_80.starts_with("blocked"), "udp port 80: {udp_80}");
    let dropped = agent
        .metric(
            &node,
            "iamlet_ebpf_egress_dropped_total{reason=\"imds_v4\"}",
        )
        .expect("reading metric iamlet_ebpf_egress_dropped_total{reason=\"imds_v4\"}");
    assert!(dropped >= 2.0, "egress drops counted: {dropped}");
    // From outside the pods' cgroup (the node's own processes), both reach the (fake)
    // metadata service; a host in another namespace is forwarded by the node, which the
    // forwarding guard refuses.
    assert!(reach_from_node(&node, "tcp", 81).expect("tcp to port 81 from the node") == "open");
    assert!(reach_from_node(&node, "udp", 80).expect("udp to port 80 from the node") == "open");
    let forwarded = reach_with(outside.command("python3"), "tcp", "169.254.169.254", 80)
        .expect("tcp to 169.254.169.254:80 from the outside host");
    assert!(forwarded.starts_with("blocked"), "forwarded: {forwarded}");
    // The pod itself is redirected (sanity check on the same setup).
    let who =
        whoami(&pod, Family::V4, "169.254.169.254").expect("whoami from pod to 169.254.169.254");
    assert_is(&pod, &who, "169.254.169.254:80");

    // A process outside the attached cgroup reaches the real (here: fake) metadata service.
    let a = http(
        node.command("python3"),
        Family::V4,
        "169.254.169.254",
        80,
        "GET",
        WHOAMI,
    )
    .expect("GET whoami over v4 from the node");
    assert!(
        a.body == format!("upstream 169.254.169.254 80 {WHOAMI}"),
        "outside v4: {a:?}"
    );
    let a = http(
        node.command("python3"),
        Family::V6,
        "fd00:ec2::254",
        80,
        "GET",
        WHOAMI,
    )
    .expect("GET whoami over v6 from the node");
    assert!(
        a.body == format!("upstream fd00:ec2::254 80 {WHOAMI}"),
        "outside v6: {a:?}"
    );

    // A direct connect to the proxy from outside the cgroup cannot be attributed: 403.
    for (family, host) in [
        (Family::V4, NODE_PROXY_V4.to_string()),
        (Family::V6, NODE_PROXY_V6.to_string()),
    ] {
        let a = http(
            outside.command("python3"),
            family,
            &host,
            PROXY_PORT,
            "GET",
            WHOAMI,
        )
        .unwrap_or_else(|e| panic!("outside direct {host}: {e:#}"));
        assert!(a.status == 403, "outside direct {host}: {a:?}");
        assert!(
            a.body
                .contains("not made from a cgroup iamlet is attached to"),
            "{a:?}"
        );
        let a = http(
            node.command("python3"),
            family,
            &host,
            PROXY_PORT,
            "GET",
            WHOAMI,
        )
        .unwrap_or_else(|e| panic!("node direct {host}: {e:#}"));
        assert!(a.status == 403, "node direct {host}: {a:?}");
    }
    // A direct connect from inside the cgroup is recorded and attributed.
    let a = http(
        pod.command("python3"),
        Family::V4,
        "198.18.255.1",
        PROXY_PORT,
        "GET",
        WHOAMI,
    )
    .expect("GET whoami directly at the proxy from the pod");
    let who = a.json().expect("the direct answer as JSON");
    assert!(
        a.status == 200 && who["kind"] == "direct",
        "pod direct: {a:?}"
    );
    assert!(who["cgroup_id"].as_u64() == Some(pod.cgroup_id()));
    drop(agent);
}

#[test]
fn maps_pretty_print_and_empty_after_close() {
    skip_unless_privileged!();
    let node = TestNode::new().expect("creating the test node");
    let pod = node.add_pod("pod-a").expect("adding pod pod-a");
    let agent = Agent::start(&node, &[]).expect("starting the agent");

    // Hold one connection open and look at the peers map with bpftool.
    let mut holder = pod.command("python3");
    holder.args([
        "-c",
        "import socket,time\ns=socket.create_connection(('169.254.169.254',80))\nprint('up',flush=True)\ntime.sleep(30)",
    ]);
    holder.stdout(std::process::Stdio::piped());
    let mut holder =
        iamlet_tests::ChildGuard::spawn(&mut holder).expect("spawning the connection holder");
    let deadline = Instant::now() + scaled(Duration::from_secs(10));
    let entry = loop {
        let peers = map_entries(&agent, "PEERS_V1").expect("reading map PEERS_V1");
        if let Some(e) = peers.into_iter().next() {
            break e;
        }
        assert!(
            Instant::now() < deadline,
            "no PEERS_V1 entry while a connection is open"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    // BTF makes bpftool print field names.
    let value = &entry["formatted"]["value"];
    assert!(
        value["cgroup_id"].as_u64() == Some(pod.cgroup_id()),
        "PEERS_V1 entry lacks a named cgroup_id field: {entry}"
    );
    assert!(
        entry["formatted"]["key"]["port"].is_u64(),
        "key fields: {entry}"
    );
    holder
        .kill_and_wait()
        .expect("killing the connection holder");

    // Many short connections, v4, v6 and v4-mapped; then nothing may be left behind.
    for _ in 0..5 {
        whoami(&pod, Family::V4, "169.254.169.254").expect("whoami from pod to 169.254.169.254");
        whoami(&pod, Family::V6, "fd00:ec2::254").expect("whoami from pod to fd00:ec2::254");
        whoami(&pod, Family::Mapped, "::ffff:169.254.169.254")
            .expect("whoami from pod to ::ffff:169.254.169.254");
    }
    let deadline = Instant::now() + scaled(Duration::from_secs(10));
    loop {
        let peers = map_entries(&agent, "PEERS_V1").expect("reading map PEERS_V1");
        let cookies = map_entries(&agent, "COOKIES_V1").expect("reading map COOKIES_V1");
        if peers.is_empty() && cookies.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "entries left after close: PEERS_V1 {peers:?} COOKIES_V1 {cookies:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(agent);
}

#[test]
fn bpftool_lists_programs_and_exit_detaches_them() {
    skip_unless_privileged!();
    let node = TestNode::new().expect("creating the test node");
    let pod = node.add_pod("pod-a").expect("adding pod pod-a");
    let cgroup = node.pods_cgroup().to_str().expect("utf-8 path").to_string();
    let mut agent = Agent::start(&node, &["--on-exit", "detach"]).expect("starting the agent");
    let pin_dir = agent.bpffs_dir().to_path_buf();

    let expected = [
        "iamlet_connect4",
        "iamlet_connect6",
        "iamlet_egress",
        "iamlet_sock_ops",
    ];
    let linked =
        iamlet_tests::bpftool::cgroup_programs(node.pods_cgroup()).expect("bpftool link show");
    let mut names: Vec<&str> = linked.iter().map(|p| p.name.as_str()).collect();
    names.sort_unstable();
    assert!(names == expected, "attached through links: {linked:?}");
    // The operator's views, where this machine's bpftool can give them on this kernel.
    if iamlet_tests::bpftool::cgroup_show_works() {
        let attached =
            iamlet_tests::bpftool::json(&["cgroup", "show", &cgroup]).expect("bpftool cgroup show");
        let mut names: Vec<String> = attached
            .as_array()
            .expect("bpftool cgroup show: not a list")
            .iter()
            .filter_map(|p| p["name"].as_str().map(str::to_string))
            .collect();
        names.sort();
        assert!(names == expected, "attached programs: {attached}");
        // The tree view shows them too, and only on the test cgroup.
        let tree = std::process::Command::new("bpftool")
            .args(["cgroup", "tree", &cgroup])
            .output()
            .expect("running bpftool cgroup tree");
        let tree = String::from_utf8_lossy(&tree.stdout);
        for name in expected {
            assert!(
                tree.contains(name),
                "bpftool cgroup tree lacks {name}:\n{tree}"
            );
        }
    }
    whoami(&pod, Family::V4, "169.254.169.254").expect("whoami from pod to 169.254.169.254");

    let status = agent.stop().expect("stopping the agent");
    assert!(status.success(), "agent exit status {status}");
    let linked =
        iamlet_tests::bpftool::cgroup_programs(node.pods_cgroup()).expect("bpftool link show");
    assert!(
        linked.is_empty(),
        "programs still attached after exit: {linked:?}"
    );
    if iamlet_tests::bpftool::cgroup_show_works() {
        let attached =
            iamlet_tests::bpftool::json(&["cgroup", "show", &cgroup]).expect("bpftool cgroup show");
        assert!(
            attached.as_array().is_none_or(Vec::is_empty),
            "programs still attached after exit: {attached}"
        );
    }
    assert!(!pin_dir.exists(), "pins left at {}", pin_dir.display());
    // With the agent gone, the pod's connect is no longer rewritten (it reaches whatever
    // serves 169.254.169.254 in the node; nothing does here, so it fails rather than hangs).
    let a = http(
        pod.command("python3"),
        Family::V4,
        "169.254.169.254",
        80,
        "GET",
        WHOAMI,
    );
    assert!(a.is_err(), "connect after exit was still answered: {a:?}");
}

#[test]
fn bad_configuration_exits_64_with_a_clear_message() {
    skip_unless_privileged!();
    let bin = iamlet_tests::agent::agent_bin();
    let run = |args: &[&str]| -> (i32, String) {
        let out = std::process::Command::new(&bin)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running iamlet {args:?}: {e}"));
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["--cgroup", "/tmp"]);
    assert!(
        code == 64 && err.contains("listen"),
        "no listener: {code} {err}"
    );
    let (code, err) = run(&["--listen-v4", "127.0.0.1:8181", "--cgroup", "/"]);
    assert!(
        code == 64 && err.contains("root"),
        "root cgroup: {code} {err}"
    );
    let (code, err) = run(&[
        "--listen-v4",
        "127.0.0.1:8181",
        "--cgroup",
        "/no/such/cgroup",
    ]);
    assert!(code == 64, "missing cgroup: {code} {err}");
    let (code, err) = run(&["--listen-v4", "nonsense"]);
    assert!(
        code == 64 && err.contains("nonsense"),
        "bad address: {code} {err}"
    );
    let (code, _) = run(&["--help"]);
    assert!(code == 0, "--help exits 0");
}

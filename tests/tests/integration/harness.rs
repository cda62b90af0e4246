//! Self-tests of the privileged harness: topology, connectivity, command plumbing and
//! cleanup (normal drop, drop during a panic, stale leftovers). Run as root, e.g.
//! `cargo test -p iamlet-tests --test integration -- --test-threads=1 harness::`.

use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use iamlet_tests::cgroup::{cgroup2_root, cgroup_of};
use iamlet_tests::{
    cleanup_stale, netns, skip_unless_privileged, ChildGuard, FakePod, TestNode, IMDS_V4, IMDS_V6,
    NODE_PROXY_V4, NODE_PROXY_V6,
};

/// Tiny HTTP server: answers every request with `<label> <peer address>`.
const SERVER_PY: &str = r#"
import socket, sys
host, port, label = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host, port))
s.listen(64)
while True:
    c, a = s.accept()
    try:
        c.settimeout(5)
        c.recv(65536)
        body = ("%s %s" % (label, a[0])).encode()
        c.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
    except Exception:
        pass
    finally:
        c.close()
"#;

/// Starts [`SERVER_PY`] in the node namespace on `addr` and waits until it listens.
fn spawn_server(node: &TestNode, addr: SocketAddr, label: &str) -> Result<ChildGuard> {
    let server = ChildGuard::spawn(
        node.netns_of(addr)
            .command("python3")
            .args(["-c", SERVER_PY])
            .arg(addr.ip().to_string())
            .arg(addr.port().to_string())
            .arg(label),
    )?;
    node.wait_listening(addr, Duration::from_secs(10))?;
    Ok(server)
}

/// `curl`s `http://<addr>/` with `run` and returns the body.
fn curl(
    run: impl FnOnce(&[String]) -> Result<iamlet_tests::RunOutput>,
    addr: SocketAddr,
) -> Result<String> {
    let args: Vec<String> = ["curl", "-gsS", "--max-time", "5"]
        .iter()
        .map(std::string::ToString::to_string)
        .chain([format!("http://{addr}/")])
        .collect();
    Ok(run(&args)?.ensure_success()?.stdout)
}

/// The `0::` cgroup line of a process started by `cmd` (it runs `cat /proc/self/cgroup`).
fn cgroup_line(mut cmd: Command) -> Result<String> {
    let out =
        iamlet_tests::run_with_timeout(cmd.arg("/proc/self/cgroup"), Duration::from_secs(20))?
            .ensure_success()?;
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
        .context("no 0:: line")
}

/// Network namespace inode of a process inside `pod`.
fn netns_inode_in(pod: &FakePod) -> Result<u64> {
    let link = pod
        .run(&["readlink", "/proc/self/ns/net"])?
        .ensure_success()?
        .stdout;
    // "net:[4026532345]"
    link.trim()
        .trim_start_matches("net:[")
        .trim_end_matches(']')
        .parse()
        .with_context(|| format!("parsing {link:?}"))
}

#[track_caller]
fn assert_in_pod(pod: &FakePod) {
    let line = cgroup_line(pod.command("cat"))
        .unwrap_or_else(|e| panic!("pod {}: the cgroup of a process: {e:#}", pod.name()));
    assert!(
        line == format!("/{}", pod.cgroup_relative()),
        "pod {}: process is in cgroup {line}, expected /{}",
        pod.name(),
        pod.cgroup_relative()
    );
    assert!(line.ends_with(pod.cgroup_relative()));
    let ns = netns_inode_in(pod)
        .unwrap_or_else(|e| panic!("pod {}: the netns of a process: {e:#}", pod.name()));
    let want = fs::metadata(pod.netns_path())
        .expect("the pod's netns")
        .ino();
    assert!(
        ns == want,
        "pod {}: netns inode {ns}, expected {want}",
        pod.name()
    );
    assert!(
        pod.cgroup_id()
            == fs::metadata(pod.cgroup_path())
                .expect("the pod's cgroup")
                .ino()
    );
}

fn addresses_in(pod: &FakePod) -> Result<String> {
    Ok(pod
        .run(&["ip", "-o", "addr", "show"])?
        .ensure_success()?
        .stdout)
}

#[test]
fn topology_cgroups_and_namespaces() {
    skip_unless_privileged!();
    let node = TestNode::new().expect("creating the test node");
    let root = cgroup2_root().expect("the cgroup2 root");
    assert_eq!(node.pods_cgroup(), root.join(node.pods_cgroup_relative()));
    assert!(node.pods_cgroup().is_dir());
    assert_eq!(
        node.netns_path(),
        PathBuf::from("/run/netns").join(node.netns_name())
    );

    let pod1 = node.add_pod("pod-a").expect("adding pod pod-a");
    let pod2 = node
        .add_pod("kubepods-burstable.slice/kubepods-burstable-pod1234.slice")
        .expect("adding pod kubepods-burstable.slice/kubepods-burstable-pod1234.slice");
    let shared = node
        .add_pod_in_netns("pod-a-sidecar", &pod1)
        .expect("adding pod pod-a-sidecar in the network namespace of pod1");
    let host = node
        .add_host_network_pod("hostnet")
        .expect("adding host-network pod hostnet");

    for pod in [&pod1, &pod2, &shared, &host] {
        assert_in_pod(pod);
        assert!(pod.cgroup_path().starts_with(node.pods_cgroup()));
    }
    let ids = [
        pod1.cgroup_id(),
        pod2.cgroup_id(),
        shared.cgroup_id(),
        host.cgroup_id(),
    ];
    for (i, a) in ids.iter().enumerate() {
        assert!(
            ids[i + 1..].iter().all(|b| a != b),
            "cgroup ids not distinct: {ids:?}"
        );
    }

    // Addresses.
    assert_eq!(
        pod1.ipv4(),
        Some("198.18.1.2".parse().expect("an IP address"))
    );
    assert_eq!(
        pod1.ipv6(),
        Some("fd00:1a3e:1::2".parse().expect("an IP address"))
    );
    assert_eq!(
        pod2.ipv4(),
        Some("198.18.2.2".parse().expect("an IP address"))
    );
    assert_eq!(shared.ipv4(), pod1.ipv4());
    assert_eq!(shared.netns_name(), pod1.netns_name());
    assert_eq!(host.ipv4(), None);
    assert_eq!(host.netns_name(), node.netns_name());
    let a1 = addresses_in(&pod1).expect("addresses in pod1");
    assert!(a1.contains("eth0    inet 198.18.1.2/24"), "{a1}");
    assert!(a1.contains("eth0    inet6 fd00:1a3e:1::2/64"), "{a1}");
    assert!(!a1.contains("198.18.255.1"), "{a1}");
    assert_eq!(addresses_in(&shared).expect("addresses in shared"), a1);
    let a2 = addresses_in(&pod2).expect("addresses in pod2");
    assert!(a2.contains("inet 198.18.2.2/24"), "{a2}");
    assert!(a2.contains("inet6 fd00:1a3e:2::2/64"), "{a2}");
    let ah = addresses_in(&host).expect("addresses in host");
    for want in [
        "lo    inet 198.18.255.1/32",
        "inet6 fd00:1a3e:ffff::1/128",
        "cloud0    inet 198.18.0.1/30",
        "veth1    inet 198.18.1.1/24",
        "veth2    inet6 fd00:1a3e:2::1/64",
    ] {
        assert!(ah.contains(want), "missing {want:?} in node netns:\n{ah}");
    }
    // The metadata addresses live in the cloud namespace, routed from the node.
    assert!(!ah.contains("169.254.169.254"), "{ah}");
    let cloud = node
        .cloud_command("ip")
        .args(["-o", "addr", "show"])
        .output()
        .expect("running `ip -o addr show` in the cloud namespace");
    let cloud = String::from_utf8_lossy(&cloud.stdout);
    for want in ["inet 169.254.169.254/32", "inet6 fd00:ec2::254/128"] {
        assert!(
            cloud.contains(want),
            "missing {want:?} in the cloud netns:\n{cloud}"
        );
    }
    let route = host
        .run(&["ip", "route", "get", "169.254.169.254"])
        .expect("running `ip route get 169.254.169.254` in host")
        .stdout;
    assert!(route.contains("via 198.18.0.2 dev cloud0"), "{route}");
    let routes = pod1
        .run(&["ip", "-6", "route", "show", "default"])
        .expect("running `ip -6 route show default` in pod1")
        .stdout;
    assert!(routes.contains("via fd00:1a3e:1::1 dev eth0"), "{routes}");

    // The node's commands and the test process itself stay in the caller's cgroup.
    let own = cgroup_of(std::process::id()).expect("the own cgroup");
    assert_eq!(
        cgroup_line(node.command("cat")).expect("the cgroup of a node command"),
        own
    );
    let outside = node
        .add_outside_netns("outside")
        .expect("adding the outside host");
    assert_eq!(
        cgroup_line(outside.command("cat")).expect("the cgroup of an outside-host command"),
        own
    );
    let ao = outside
        .run(&["ip", "-o", "addr", "show", "dev", "eth0"])
        .expect("running `ip -o addr show dev …` in outside")
        .stdout;
    assert!(ao.contains(&format!("inet {}/24", outside.ipv4())), "{ao}");
    assert!(ao.contains(&format!("inet6 {}/64", outside.ipv6())), "{ao}");
}

#[test]
fn pods_reach_servers_in_the_node_namespace() {
    skip_unless_privileged!();
    let node = TestNode::new().expect("creating the test node");
    let pod1 = node.add_pod("pod-a").expect("adding pod pod-a");
    let pod2 = node.add_pod("pod-b").expect("adding pod pod-b");
    let shared = node
        .add_pod_in_netns("pod-a-sidecar", &pod1)
        .expect("adding pod pod-a-sidecar in the network namespace of pod1");
    let host = node
        .add_host_network_pod("hostnet")
        .expect("adding host-network pod hostnet");
    let outside = node
        .add_outside_netns("outside")
        .expect("adding the outside host");

    let proxy4 = SocketAddr::new(NODE_PROXY_V4.into(), 8080);
    let proxy6 = SocketAddr::new(NODE_PROXY_V6.into(), 8080);
    let imds4 = SocketAddr::new(IMDS_V4.into(), 80);
    let imds6 = SocketAddr::new(IMDS_V6.into(), 80);
    let _servers = [
        spawn_server(&node, proxy4, "proxy").expect("starting server proxy on proxy4"),
        spawn_server(&node, proxy6, "proxy").expect("starting server proxy on proxy6"),
        spawn_server(&node, imds4, "imds").expect("starting server imds on imds4"),
        spawn_server(&node, imds6, "imds").expect("starting server imds on imds6"),
    ];

    for pod in [&pod1, &pod2, &shared] {
        let (v4, v6): (IpAddr, IpAddr) = (pod.ipv4().unwrap().into(), pod.ipv6().unwrap().into());
        for (addr, server, from) in [
            (proxy4, "proxy", v4),
            (proxy6, "proxy", v6),
            (imds4, "imds", v4),
            (imds6, "imds", v6),
        ] {
            assert_eq!(
                curl(|a| pod.run(a), addr)
                    .unwrap_or_else(|e| panic!("curl {addr} from {}: {e:#}", pod.name())),
                format!("{server} {from}")
            );
        }
    }
    // Host network: connects from the node namespace itself.
    assert_eq!(
        curl(|a| host.run(a), proxy4).expect("curl the proxy over v4 from the host-network pod"),
        format!("proxy {NODE_PROXY_V4}")
    );
    // The node reaches the metadata service by routing, from its end of the cloud link.
    assert_eq!(
        curl(|a| host.run(a), imds6).expect("curl the IMDS over v6 from the host-network pod"),
        format!("imds {}", iamlet_tests::node::CLOUD_LINK_NODE_V6)
    );
    assert_eq!(
        curl(|a| node.run(a), imds4).expect("curl the IMDS over v4 from the node"),
        format!("imds {}", iamlet_tests::node::CLOUD_LINK_NODE_V4)
    );
    assert_eq!(
        curl(|a| outside.run(a), proxy4).expect("curl the proxy over v4 from the outside host"),
        format!("proxy {}", outside.ipv4())
    );
    assert_eq!(
        curl(|a| outside.run(a), proxy6).expect("curl the proxy over v6 from the outside host"),
        format!("proxy {}", outside.ipv6())
    );
}

#[test]
fn arguments_pass_through_unmodified() {
    skip_unless_privileged!();
    let node = TestNode::new().expect("creating the test node");
    let pod = node.add_pod("args").expect("adding pod args");
    let args = [
        "a b", "$HOME", "'q'\"", "", "*", "--net=x", "-c", "; exit 3", "\\n",
    ];
    let mut all = vec!["printf", "[%s]"];
    all.extend(args);
    let want: String = args.iter().flat_map(|a| ["[", a, "]"]).collect();
    assert_eq!(
        pod.run(&all)
            .expect("running printf in the pod")
            .ensure_success()
            .expect("printf in the pod")
            .stdout,
        want
    );
    assert_eq!(
        node.run(&all)
            .expect("running printf in the node")
            .ensure_success()
            .expect("printf in the node")
            .stdout,
        want
    );
    let out = pod
        .run(&["sh", "-c", "echo out; echo err >&2; exit 7"])
        .expect("running `sh -c echo out; echo err >&2; exit 7` in pod");
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(
        (out.stdout.as_str(), out.stderr.as_str()),
        ("out\n", "err\n")
    );
}

#[test]
fn run_kills_a_hung_command() {
    skip_unless_privileged!();
    let node = TestNode::new().expect("creating the test node");
    let pod = node.add_pod("hang").expect("adding pod hang");
    let start = Instant::now();
    let err = pod
        .run_timeout(&["sleep", "60"], Duration::from_millis(500))
        .expect_err("sleep 60 must time out");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
    assert!(format!("{err:#}").contains("timed out"), "{err:#}");
    assert_eq!(
        pod.procs().expect("the processes left in the pod"),
        Vec::<u32>::new(),
        "hung command not killed"
    );
}

/// What must be gone once a node and its pods are dropped.
#[derive(Default, Debug)]
struct Footprint {
    netns: Vec<String>,
    cgroups: Vec<PathBuf>,
    children: Vec<Child>,
}

impl Footprint {
    fn record(&mut self, node: &TestNode, pods: &[&FakePod]) {
        self.netns.push(node.netns_name().to_owned());
        self.netns.push(node.cloud_netns_name().to_owned());
        self.cgroups.push(node.pods_cgroup().to_owned());
        for pod in pods {
            self.netns.push(pod.netns_name().to_owned());
            self.cgroups.push(pod.cgroup_path().to_owned());
        }
    }

    fn assert_gone(self) -> Result<()> {
        let left = netns::list()?;
        for name in &self.netns {
            ensure!(!left.contains(name), "netns {name} left behind");
        }
        for dir in &self.cgroups {
            ensure!(!dir.exists(), "cgroup {} left behind", dir.display());
        }
        for child in self.children {
            let mut guard = ChildGuard::new(child);
            let status = guard
                .wait_timeout(Duration::from_secs(5))?
                .context("process in a dropped pod still runs")?;
            ensure!(status.signal() == Some(9), "expected SIGKILL, got {status}");
        }
        Ok(())
    }
}

/// Spawns `cmd` (a `sleep` command of some pod/namespace) for 1000 s, not guarded: the
/// harness must kill it.
fn spawn_sleeper(mut cmd: Command) -> Result<Child> {
    Ok(cmd
        .arg("1000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?)
}

#[test]
fn drop_removes_everything_in_any_order() {
    skip_unless_privileged!();
    let mut fp = Footprint::default();
    let node = TestNode::new().expect("creating the test node");
    let pod1 = node
        .add_pod("kubepods.slice/pod-a")
        .expect("adding pod kubepods.slice/pod-a");
    let pod2 = node
        .add_pod("kubepods.slice/pod-b")
        .expect("adding pod kubepods.slice/pod-b");
    let shared = node
        .add_pod_in_netns("sidecar", &pod1)
        .expect("adding pod sidecar in the network namespace of pod1");
    let host = node
        .add_host_network_pod("hostnet")
        .expect("adding host-network pod hostnet");
    let outside = node
        .add_outside_netns("outside")
        .expect("adding the outside host");
    fp.record(&node, &[&pod1, &pod2, &shared, &host]);
    fp.netns.push(outside.netns_name().to_owned());
    for cmd in [
        pod1.command("sleep"),
        pod2.command("sleep"),
        shared.command("sleep"),
        host.command("sleep"),
        outside.command("sleep"),
        node.command("sleep"),
    ] {
        fp.children
            .push(spawn_sleeper(cmd).expect("spawning a sleeper"));
    }
    let slice = node.pods_cgroup().join("kubepods.slice");
    let (node_netns, pod1_netns) = (node.netns_name().to_owned(), pod1.netns_name().to_owned());

    // The node handle goes first: its namespace and cgroup must outlive its pods.
    drop(node);
    assert!(netns::list()
        .expect("listing the network namespaces")
        .contains(&node_netns));
    assert!(host
        .run(&["true"])
        .expect("running `true` in host")
        .success());
    // Shared namespace survives the pod that created it.
    drop(pod1);
    assert!(netns::list()
        .expect("listing the network namespaces")
        .contains(&pod1_netns));
    assert!(addresses_in(&shared)
        .expect("addresses in shared")
        .contains("198.18.1.2/24"));
    drop(shared);
    assert!(!netns::list()
        .expect("listing the network namespaces")
        .contains(&pod1_netns));
    // Intermediate cgroups go with their last pod.
    assert!(slice.is_dir());
    drop(pod2);
    assert!(!slice.exists());
    drop(host);
    drop(outside);
    fp.assert_gone()
        .expect("after dropping the node and its pods");
}

#[test]
fn drop_during_panic_removes_everything() {
    skip_unless_privileged!();
    let fp = Mutex::new(Footprint::default());
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        let node = TestNode::new().unwrap();
        let pod1 = node.add_pod("pod-a").unwrap();
        let shared = node.add_pod_in_netns("sidecar", &pod1).unwrap();
        let pod2 = node.add_pod("nested.slice/pod-b").unwrap();
        let _outside = node.add_outside_netns("outside").unwrap();
        let mut fp = fp.lock().unwrap();
        fp.record(&node, &[&pod1, &shared, &pod2]);
        fp.children
            .push(spawn_sleeper(pod1.command("sleep")).unwrap());
        fp.children
            .push(spawn_sleeper(shared.command("sleep")).unwrap());
        let _server = ChildGuard::spawn(node.command("sleep").arg("1000")).unwrap();
        drop(fp);
        panic!("deliberate panic inside a test");
    }));
    assert!(result.is_err());
    fp.into_inner()
        .unwrap()
        .assert_gone()
        .expect("after a panic dropped the node and its pods");
}

#[test]
fn cleanup_stale_removes_only_dead_runs() {
    skip_unless_privileged!();
    let live = TestNode::new().expect("creating the test node");
    let live_pod = live.add_pod("live").expect("adding pod live");
    // A pid that is certainly not running any more.
    let mut child = Command::new("true").spawn().expect("spawning true");
    let dead = child.id();
    child.wait().expect("waiting for true");
    let stale_ns = format!("iml-{dead}-999-1");
    let stale_cg = cgroup2_root()
        .expect("the cgroup2 root")
        .join(format!("iamlet-test-{dead}-999"));
    let status = Command::new("ip")
        .args(["netns", "add", &stale_ns])
        .status()
        .expect("running ip netns add");
    assert!(status.success());
    fs::create_dir_all(stale_cg.join("x.slice/pod")).expect("creating the stale cgroup");
    // A leftover process inside the stale cgroup must not stop the cleanup.
    let leftover = Command::new("/bin/sh")
        .arg("-c")
        .arg(r#"echo $$ > "$0/cgroup.procs" && exec sleep 1000"#)
        .arg(stale_cg.join("x.slice/pod"))
        .spawn()
        .expect("spawning the leftover process");
    let mut leftover = ChildGuard::new(leftover);
    let deadline = Instant::now() + Duration::from_secs(5);
    while fs::read_to_string(stale_cg.join("x.slice/pod/cgroup.procs"))
        .expect("reading the stale cgroup's cgroup.procs")
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "leftover never joined its cgroup"
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    let removed = cleanup_stale();
    assert!(
        removed.iter().any(|r| r.ends_with(&stale_ns)),
        "{removed:?}"
    );
    assert!(!netns::list()
        .expect("listing the network namespaces")
        .contains(&stale_ns));
    assert!(!stale_cg.exists());
    let status = leftover
        .wait_timeout(Duration::from_secs(5))
        .expect("waiting for the leftover process")
        .expect("leftover alive");
    assert_eq!(status.signal(), Some(9));
    // The live node of this process is untouched.
    assert!(netns::list()
        .expect("listing the network namespaces")
        .contains(&live.netns_name().to_owned()));
    assert!(live_pod.cgroup_path().is_dir());
    assert!(live_pod
        .run(&["true"])
        .expect("running `true` in live_pod")
        .success());
}

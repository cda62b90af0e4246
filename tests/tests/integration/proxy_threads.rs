//! The proxy's serving threads against the real agent: `--proxy-threads` sets how many there
//! are, by default one per CPU the agent may use; the connections made from one CPU are all
//! served by one thread, and those from another CPU by another; with `--proxy-busy-poll` a
//! thread on a CPU of its own does not sleep between a client's requests.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use iamlet_tests::agent::agent_bin;
use iamlet_tests::{skip_unless_privileged, Agent, FakePod, PodRole, StaticRoles, TestNode};

const A: PodRole = PodRole {
    uid: "2c4e6a8b-0d1f-4a3b-9c5d-7e9f1a3b5c7d",
    role: "arn:aws:iam::123456789012:role/app-threads",
    access_key: "ASIATHREADSEXAMPLE01",
};

/// The agent's serving threads (`iamlet-proxy`, `iamlet-proxy-N`; not the runtimes' blocking
/// threads): thread id → its `/proc` directory.
fn proxy_threads(pid: u32) -> BTreeMap<u32, std::path::PathBuf> {
    let tasks = std::path::PathBuf::from(format!("/proc/{pid}/task"));
    std::fs::read_dir(&tasks)
        .expect("listing the agent's threads")
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
            let comm = comm.trim();
            let serving = comm == "iamlet-proxy"
                || comm
                    .strip_prefix("iamlet-proxy-")
                    .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()));
            let tid = entry.file_name().to_str()?.parse().ok()?;
            serving.then(|| (tid, entry.path()))
        })
        .collect()
}

/// How many times the thread at `task` has been put on a CPU (`schedstat`'s third field).
fn times_scheduled(task: &std::path::Path) -> u64 {
    let text = std::fs::read_to_string(task.join("schedstat")).expect("reading schedstat");
    text.split_whitespace()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .expect("schedstat's third field")
}

/// The agent started through `taskset -c {cpu}` (which execs it: the pid stays the agent's),
/// with `roles` and `extra`.
fn pinned_agent(node: &TestNode, roles: &StaticRoles, cpu: u32, extra: &[&str]) -> Agent {
    let launcher = roles.dir().join(format!("iamlet-on-cpu-{cpu}"));
    std::fs::write(
        &launcher,
        format!(
            "#!/bin/sh\nexec taskset -c {cpu} '{}' \"$@\"\n",
            agent_bin().display()
        ),
    )
    .expect("writing the launcher");
    let made_executable = std::process::Command::new("chmod")
        .arg("+x")
        .arg(&launcher)
        .status()
        .expect("chmod");
    assert!(made_executable.success());
    let args = roles.args_with(extra);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Agent::start_with_bin(node, &launcher, &refs).expect("starting the agent")
}

/// A test node with pod [`A`] and its static role.
fn node_with_pod() -> (TestNode, FakePod, StaticRoles) {
    let node = TestNode::new().expect("creating the test node");
    let pod = node
        .add_pod(&iamlet_tests::besteffort_container_cgroup(A.uid, 1))
        .expect("adding the pod");
    let roles = StaticRoles::write(&[A]).expect("writing the static roles");
    (node, pod, roles)
}

/// Runs [`CONNECTIONS_FROM_CPU`] in `pod` on `cpu`: every answer must be 200.
fn connections_answered(pod: &FakePod, cpu: u32) {
    let out = pod
        .command("python3")
        .args(["-c", CONNECTIONS_FROM_CPU, &cpu.to_string()])
        .stdout(Stdio::piped())
        .output()
        .expect("running the client in the pod");
    let answers = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{answers}");
    assert_eq!(
        answers.split_whitespace().collect::<Vec<_>>(),
        ["ok"; 6],
        "{answers}"
    );
}

/// On CPU `sys.argv[1]` only, opens 3 connections at once, keeps them open, and asks for the
/// role list on each, twice.
const CONNECTIONS_FROM_CPU: &str = r#"
import os, socket, sys
os.sched_setaffinity(0, {int(sys.argv[1])})
req = b"GET /latest/meta-data/iam/security-credentials/ HTTP/1.1\r\nHost: x\r\n\r\n"
conns = [socket.create_connection(("169.254.169.254", 80), timeout=5) for _ in range(3)]
for _ in range(2):
    for c in conns:
        c.sendall(req)
        answer = c.recv(4096)
        print("ok" if answer.startswith(b"HTTP/1.1 200 ") else repr(answer))
"#;

#[test]
fn the_connections_from_one_cpu_share_a_thread() {
    skip_unless_privileged!();
    if std::thread::available_parallelism().map_or(1, std::num::NonZero::get) < 2 {
        eprintln!("skipped: needs 2 CPUs for the client to connect from");
        return;
    }
    let (node, pod, roles) = node_with_pod();
    let args = roles.args_with(&["--upstream", "off", "--proxy-threads", "2"]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = Agent::start(&node, &refs).expect("starting the agent");
    let pid = agent.pid().expect("the agent's pid");
    let threads = proxy_threads(pid);
    assert_eq!(threads.len(), 2, "serving threads: {threads:?}");
    // The thread that does not accept: it runs only for the connections given to it.
    let other = threads
        .values()
        .find(|task| {
            std::fs::read_to_string(task.join("comm")).is_ok_and(|c| c.trim() == "iamlet-proxy-1")
        })
        .expect("a serving thread besides the accepting one (iamlet-proxy-1)");

    // Whether the other thread ran while a client on `cpu` was served.
    let other_served_cpu = |cpu: u32| {
        // The last client's connections are closed by now, and their thread idle.
        std::thread::sleep(Duration::from_millis(200));
        let before = times_scheduled(other);
        connections_answered(&pod, cpu);
        times_scheduled(other) > before
    };
    let first = [other_served_cpu(0), other_served_cpu(1)];
    let again = [other_served_cpu(0), other_served_cpu(1)];
    // Each CPU's connections went to one thread, the same both times, and the two CPUs to
    // different threads.
    assert_eq!(
        first, again,
        "thread of CPU 0's and CPU 1's connections changed"
    );
    assert_ne!(
        first[0], first[1],
        "both CPUs' connections on one thread: {first:?}"
    );
}

#[test]
fn by_default_one_thread_per_cpu_the_agent_may_use() {
    skip_unless_privileged!();
    let (node, pod, roles) = node_with_pod();
    let agent = pinned_agent(&node, &roles, 0, &["--upstream", "off"]);
    let pid = agent.pid().expect("the agent's pid");

    let threads = proxy_threads(pid);
    assert_eq!(threads.len(), 1, "serving threads on one CPU: {threads:?}");
    connections_answered(&pod, 0);
}

/// Sends `sys.argv[1]` requests one after the other on one keep-alive connection, each as
/// soon as the last answer is in, and prints how many got 200.
const BACK_TO_BACK: &str = r#"
import socket, sys
req = b"GET /latest/meta-data/iam/security-credentials/ HTTP/1.1\r\nHost: x\r\n\r\n"
c = socket.create_connection(("169.254.169.254", 80), timeout=5)
ok = 0
for _ in range(int(sys.argv[1])):
    c.sendall(req)
    buf = b""
    while b"\r\n\r\n" not in buf:
        more = c.recv(4096)
        if not more:
            sys.exit(f"closed after {ok} answers: {buf!r}")
        buf += more
    head, body = buf.split(b"\r\n\r\n", 1)
    length = [int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")][0]
    while len(body) < length:
        more = c.recv(4096)
        if not more:
            sys.exit(f"closed in an answer's body after {ok} answers")
        body += more
    ok += head.startswith(b"HTTP/1.1 200 ")
print(ok)
"#;

/// Requests [`BACK_TO_BACK`] sends.
const REQUESTS: u32 = 2000;

/// How many times the agent's one serving thread went to sleep (`voluntary_ctxt_switches`)
/// while a pod on CPU 0 sent it [`REQUESTS`] requests back to back, the agent on CPU 1
/// with `--proxy-busy-poll window`.
fn sleeps_serving_back_to_back(window: &str) -> Option<u64> {
    if std::thread::available_parallelism().map_or(1, std::num::NonZero::get) < 2 {
        eprintln!("skipped: needs 2 CPUs, one for the client and one for the agent");
        return None;
    }
    let (node, pod, roles) = node_with_pod();
    // No rate limit: the client asks as fast as it can.
    let extra = [
        "--upstream",
        "off",
        "--rate-limit",
        "0",
        "--proxy-threads",
        "1",
        "--proxy-busy-poll",
        window,
    ];
    let agent = pinned_agent(&node, &roles, 1, &extra);
    let pid = agent.pid().expect("the agent's pid");
    let threads = proxy_threads(pid);
    let [task] = threads.values().collect::<Vec<_>>()[..] else {
        panic!("one serving thread: {threads:?}");
    };
    let sleeps = |task: &std::path::Path| -> u64 {
        let status = std::fs::read_to_string(task.join("status")).expect("reading status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|n| n.trim().parse().ok())
            .expect("voluntary_ctxt_switches")
    };
    let before = sleeps(task);
    let out = pod
        .command("taskset")
        .args([
            "-c",
            "0",
            "python3",
            "-c",
            BACK_TO_BACK,
            &REQUESTS.to_string(),
        ])
        .stdout(Stdio::piped())
        .output()
        .expect("running the client in the pod");
    let answers = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{answers}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(answers.trim(), REQUESTS.to_string(), "every answer 200");
    let slept = sleeps(task) - before;
    eprintln!("--proxy-busy-poll {window}: {slept} sleeps over {REQUESTS} requests");
    Some(slept)
}

#[test]
fn with_busy_polling_a_thread_sleeps_far_less_between_back_to_back_requests() {
    skip_unless_privileged!();
    let Some(without) = sleeps_serving_back_to_back("0") else {
        return;
    };
    let Some(with) = sleeps_serving_back_to_back("1ms") else {
        return;
    };
    // Without it the thread sleeps between most requests (not all: a request may come in
    // before the thread is done with the last one). With it, a sleep now and then (another
    // thread wanted CPU 1 and the agent held off). Compared within the test, as a slower
    // machine shifts both.
    assert!(
        without >= u64::from(REQUESTS / 4),
        "without busy polling: {without} sleeps over {REQUESTS} requests"
    );
    assert!(
        with * 3 < without,
        "{with} sleeps with busy polling, {without} without, over {REQUESTS} requests"
    );
}

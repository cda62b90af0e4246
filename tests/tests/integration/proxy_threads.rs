//! The proxy's serving threads against the real agent: `--proxy-threads` sets how many there
//! are, by default one per CPU the agent may use, and a pod's connections are spread over
//! all of them.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use iamlet_tests::agent::agent_bin;
use iamlet_tests::{skip_unless_privileged, Agent, PodRole, StaticRoles, TestNode};

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

/// Opens 6 connections at once, keeps them open, and asks for the role list on each, twice.
const SIX_CONNECTIONS: &str = r#"
import socket
req = b"GET /latest/meta-data/iam/security-credentials/ HTTP/1.1\r\nHost: x\r\n\r\n"
conns = [socket.create_connection(("169.254.169.254", 80), timeout=5) for _ in range(6)]
for _ in range(2):
    for c in conns:
        c.sendall(req)
        answer = c.recv(4096)
        print("ok" if answer.startswith(b"HTTP/1.1 200 ") else repr(answer))
"#;

#[test]
fn connections_are_spread_over_the_threads_asked_for() {
    skip_unless_privileged!();
    let node = TestNode::new().expect("creating the test node");
    let pod = node
        .add_pod(&iamlet_tests::besteffort_container_cgroup(A.uid, 1))
        .expect("adding the pod");
    let roles = StaticRoles::write(&[A]).expect("writing the static roles");
    let args = roles.args_with(&["--upstream", "off", "--proxy-threads", "3"]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = Agent::start(&node, &refs).expect("starting the agent");
    let pid = agent.pid().expect("the agent's pid");

    let threads = proxy_threads(pid);
    assert_eq!(threads.len(), 3, "serving threads: {threads:?}");
    let before: Vec<u64> = threads.values().map(|t| times_scheduled(t)).collect();
    let out = pod
        .command("python3")
        .args(["-c", SIX_CONNECTIONS])
        .stdout(Stdio::piped())
        .output()
        .expect("running the client in the pod");
    let answers = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{answers}");
    assert_eq!(
        answers.split_whitespace().collect::<Vec<_>>(),
        ["ok"; 12],
        "{answers}"
    );
    // Each thread served some of the six (in turn: two each); an idle thread is not woken.
    std::thread::sleep(Duration::from_millis(100));
    let after: Vec<u64> = threads.values().map(|t| times_scheduled(t)).collect();
    for ((tid, before), after) in threads.keys().zip(&before).zip(&after) {
        assert!(
            after > before,
            "thread {tid} did not run: {before} -> {after}"
        );
    }
}

#[test]
fn by_default_one_thread_per_cpu_the_agent_may_use() {
    skip_unless_privileged!();
    let node = TestNode::new().expect("creating the test node");
    let pod = node
        .add_pod(&iamlet_tests::besteffort_container_cgroup(A.uid, 1))
        .expect("adding the pod");
    let roles = StaticRoles::write(&[A]).expect("writing the static roles");
    // The agent on CPU 0 only (taskset execs it: the pid stays the agent's).
    let pinned = roles.dir().join("iamlet-on-cpu-0");
    std::fs::write(
        &pinned,
        format!(
            "#!/bin/sh\nexec taskset -c 0 '{}' \"$@\"\n",
            agent_bin().display()
        ),
    )
    .expect("writing the launcher");
    std::process::Command::new("chmod")
        .args(["+x", &pinned.display().to_string()])
        .status()
        .expect("chmod");
    let args = roles.args_with(&["--upstream", "off"]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = Agent::start_with_bin(&node, &pinned, &refs).expect("starting the agent");
    let pid = agent.pid().expect("the agent's pid");

    let threads = proxy_threads(pid);
    assert_eq!(threads.len(), 1, "serving threads on one CPU: {threads:?}");
    let out = pod
        .command("python3")
        .args(["-c", SIX_CONNECTIONS])
        .stdout(Stdio::piped())
        .output()
        .expect("running the client in the pod");
    let answers = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{answers}");
    assert_eq!(
        answers.split_whitespace().collect::<Vec<_>>(),
        ["ok"; 12],
        "{answers}"
    );
}

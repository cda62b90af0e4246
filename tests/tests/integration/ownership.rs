//! The agent owns its attachment: removing its pins detaches nothing and they come back; a
//! program detached behind its back is put back; what cannot be put back makes it not ready;
//! a second agent on the same pins refuses to start unless it takes over through the
//! handover. Run as root through `cargo xtask test` (serially).

use iamlet_tests::scaled;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use iamlet_tests::agent::ADMIN_ADDR;
use iamlet_tests::{
    skip_unless_privileged, Agent, FakePod, PodRole, StaticRoles, TestNode, NODE_PROXY_V4,
    PROXY_PORT,
};
use serde_json::Value;

const A: PodRole = PodRole {
    uid: "3f2e1d0c-9b8a-4766-8554-433221100fed",
    role: "arn:aws:iam::123456789012:role/app-a",
    access_key: "ASIAPODAEXAMPLE00001",
};
const PIN_NAMES: [&str; 8] = [
    "link_iamlet_egress",
    "link_iamlet_connect4",
    "link_iamlet_connect6",
    "link_iamlet_sock_ops",
    "CONFIG_V1",
    "COOKIES_V1",
    "PEERS_V1",
    "COUNTERS_V2",
];

/// A node with pod A and an agent serving it (dropped in reverse: agent first).
fn node_with_agent() -> (TestNode, FakePod, StaticRoles, Agent) {
    let node = TestNode::new().expect("creating the test node");
    let pod = node
        .add_pod(&iamlet_tests::besteffort_container_cgroup(A.uid, 1))
        .expect("adding the pod");
    let roles = StaticRoles::write(&[A]).expect("writing the static roles");
    let args = roles.args_with(&["--log", "info"]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = Agent::start(&node, &refs).expect("starting the agent");
    (node, pod, roles, agent)
}

/// The pod's own credentials through the redirect (so: the programs are attached).
fn redirected(pod: &FakePod) -> bool {
    let answer = pod.imds(
        "GET",
        "/latest/meta-data/iam/security-credentials/app-a",
        &[],
    );
    matches!(answer, Ok(a) if a.status == 200 && a.body.contains(A.access_key))
}

fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + scaled(timeout);
    loop {
        if check()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what}: not within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ready(node: &TestNode) -> Result<bool> {
    let url = format!("http://{ADMIN_ADDR}/ready");
    Ok(node
        .run_timeout(&["curl", "-sf", "-m", "1", &url], Duration::from_secs(3))?
        .success())
}

fn pins_present(agent: &Agent) -> bool {
    PIN_NAMES.iter().all(|n| agent.bpffs_dir().join(n).exists())
}

#[test]
fn removing_the_pins_detaches_nothing_and_they_come_back() {
    skip_unless_privileged!();
    let (node, pod, _roles, agent) = node_with_agent();
    assert!(pins_present(&agent), "pins after start");
    std::fs::remove_dir_all(agent.bpffs_dir()).expect("removing the pin directory");
    // No gap: the agent holds its links, so the pod stays redirected at once.
    assert!(
        redirected(&pod),
        "the pod lost the redirect when the pins went"
    );
    wait_for("pins back", Duration::from_secs(5), || {
        Ok(pins_present(&agent))
    })
    .expect("waiting for pins back");
    assert!(redirected(&pod));
    let repinned = agent
        .metric(&node, "iamlet_datapath_repairs_total{what=\"link_pin\"}")
        .expect("reading metric iamlet_datapath_repairs_total{what=\"link_pin\"}");
    assert!(repinned >= 4.0, "link_pin repairs: {repinned}");
    assert!(
        agent.log_text().contains("pinned it again"),
        "no log line:\n{}",
        agent.log_text()
    );
    assert!(
        ready(&node).expect("asking /ready"),
        "not ready after the repair"
    );
}

/// The id of the link pinned at `pin`.
fn link_id(pin: &std::path::Path) -> Result<u64> {
    let out = std::process::Command::new("bpftool")
        .args(["-j", "link", "show", "pinned"])
        .arg(pin)
        .output()?;
    let v: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("bpftool: {}", String::from_utf8_lossy(&out.stderr)))?;
    v["id"].as_u64().context("link id")
}

#[test]
fn a_program_detached_behind_its_back_is_put_back() {
    skip_unless_privileged!();
    let (node, pod, _roles, agent) = node_with_agent();
    for hook in ["connect4", "egress"] {
        let id =
            link_id(&agent.bpffs_dir().join(format!("link_iamlet_{hook}"))).expect("the link id");
        let out = std::process::Command::new("bpftool")
            .args(["link", "detach", "id", &id.to_string()])
            .output()
            .expect("running bpftool link detach");
        assert!(
            out.status.success(),
            "bpftool link detach: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    wait_for("the programs back", Duration::from_secs(5), || {
        Ok(agent.metric(&node, "iamlet_datapath_repairs_total{what=\"program\"}")? >= 2.0)
    })
    .expect("waiting for the programs back");
    assert!(redirected(&pod), "not redirected after the repair");
    let log = agent.log_text();
    assert!(log.contains("no longer attached"), "no log line:\n{log}");
    assert!(ready(&node).expect("asking /ready"));
}

#[test]
fn what_cannot_be_put_back_makes_the_agent_not_ready() {
    skip_unless_privileged!();
    let (node, pod, _roles, agent) = node_with_agent();
    let dir = agent.bpffs_dir().to_owned();
    // The pin directory replaced by a dangling symlink: nothing can be pinned there.
    std::fs::remove_dir_all(&dir).expect("removing the pin directory");
    std::os::unix::fs::symlink("/nonexistent/iamlet-pins", &dir)
        .expect("replacing the pin directory with a dangling symlink");
    wait_for("not ready", Duration::from_secs(5), || Ok(!ready(&node)?))
        .expect("waiting for not ready");
    // Pods are still served meanwhile: the links are held by the agent.
    assert!(redirected(&pod));
    let failed = agent
        .metric(&node, "iamlet_datapath_repairs_total{what=\"failed\"}")
        .expect("reading metric iamlet_datapath_repairs_total{what=\"failed\"}");
    assert!(failed >= 1.0, "failed checks: {failed}");
    assert!(
        agent.log_text().contains("not ready"),
        "{}",
        agent.log_text()
    );
    std::fs::remove_file(&dir).expect("removing the dangling symlink");
    wait_for("ready again", Duration::from_secs(5), || ready(&node))
        .expect("waiting for ready again");
    assert!(pins_present(&agent));
}

#[test]
fn a_second_agent_on_the_same_pins_refuses_to_start() {
    skip_unless_privileged!();
    let (node, pod, roles, agent) = node_with_agent();
    let mut second = node.command(iamlet_tests::agent::agent_bin());
    second
        .arg("--cgroup")
        .arg(node.pods_cgroup())
        .args([
            "--listen-v4",
            &format!("{NODE_PROXY_V4}:{}", PROXY_PORT + 1),
        ])
        .args([
            "--admin-listen",
            "127.0.0.1:9819",
            "--handover-socket",
            "off",
        ])
        .arg("--bpffs-dir")
        .arg(agent.bpffs_dir())
        .args(roles.args())
        .env("AWS_EC2_METADATA_DISABLED", "true");
    let out = iamlet_tests::run_with_timeout(&mut second, Duration::from_secs(20))
        .expect("running the second agent");
    let err = out.stderr.clone() + &out.stdout;
    assert!(!out.success(), "a second agent started: {err}");
    let pid = agent.pid().expect("the first agent's pid");
    assert!(
        err.contains(&format!(
            "another iamlet agent (pid {pid}) holds the pin directory"
        )),
        "{err}"
    );
    // The first one was not disturbed.
    assert!(redirected(&pod));
    assert!(pins_present(&agent));
    assert!(ready(&node).expect("asking /ready"));
}

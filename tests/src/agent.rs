//! The real `iamlet` binary, run inside a [`TestNode`]'s network namespace and attached to its
//! pods cgroup. Stopped with SIGTERM (and killed if it does not stop) on drop; its pin
//! directory (maps and links) and handover socket are removed once the last agent sharing
//! them is gone, which detaches whatever it left attached.

use crate::time_scale::scaled;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::node::{TestNode, NODE_PROXY_V4, NODE_PROXY_V6};
use crate::pod::FakePod;
use crate::process::ChildGuard;

/// Port of the agent's metadata listeners in tests.
pub const PROXY_PORT: u16 = 8181;
/// Admin address of the agent in tests (inside the node netns).
pub const ADMIN_ADDR: &str = "127.0.0.1:9809";

static AGENT_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Path of the agent binary: `$IAMLET_BIN`, else the workspace's `target/debug/iamlet`.
pub fn agent_bin() -> PathBuf {
    crate::process::workspace_binary("iamlet", "IAMLET_BIN")
}

/// The pin directory and handover socket of a line of agents (an agent and its successors).
#[derive(Debug)]
struct Shared {
    bpffs_dir: PathBuf,
    handover_socket: PathBuf,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Removing the pinned links detaches the programs an agent kept attached on exit.
        if self.bpffs_dir.exists() {
            let _ = std::fs::remove_dir_all(&self.bpffs_dir);
        }
        let _ = std::fs::remove_file(&self.handover_socket);
    }
}

/// A running agent.
#[derive(Debug)]
pub struct Agent {
    child: Option<ChildGuard>,
    log: PathBuf,
    shared: Arc<Shared>,
}

impl Agent {
    /// Starts the agent in `node`'s netns, attached to its pods cgroup, with both listeners,
    /// plus `extra` flags; waits until `/ready` answers.
    pub fn start(node: &TestNode, extra: &[&str]) -> Result<Agent> {
        Self::spawn(node, node.command(agent_bin()), extra, None)
    }

    /// Like [`Agent::start`] with another agent binary (e.g. an older build, for a benchmark
    /// side by side).
    pub fn start_with_bin(node: &TestNode, bin: &Path, extra: &[&str]) -> Result<Agent> {
        if !bin.is_file() {
            bail!("agent binary {} not found", bin.display());
        }
        Self::spawn(node, node.command(bin), extra, None)
    }

    /// Starts a second agent with the same pin directory and handover socket as `running`,
    /// as a DaemonSet rollout with `maxSurge: 1` does; waits until it says it is ready.
    pub fn start_successor(node: &TestNode, running: &Agent, extra: &[&str]) -> Result<Agent> {
        Self::spawn(
            node,
            node.command(agent_bin()),
            extra,
            Some(running.shared.clone()),
        )
    }

    /// Like [`Agent::start`], but the agent runs inside `pod`'s cgroup (below the cgroup it
    /// attaches to, as a hostNetwork DaemonSet pod does); `pod` must be a host-network pod.
    pub fn start_in_pod(node: &TestNode, pod: &FakePod, extra: &[&str]) -> Result<Agent> {
        if !pod.is_host_network() {
            bail!("the agent must run in a host-network pod to listen on the node's address");
        }
        Self::spawn(node, pod.command(agent_bin()), extra, None)
    }

    /// Like [`Agent::start_successor`], but the new agent runs inside `pod`'s cgroup (a
    /// host-network pod), as the surge pod of a DaemonSet update does.
    pub fn start_successor_in_pod(
        node: &TestNode,
        pod: &FakePod,
        running: &Agent,
        extra: &[&str],
    ) -> Result<Agent> {
        if !pod.is_host_network() {
            bail!("the agent must run in a host-network pod to listen on the node's address");
        }
        Self::spawn(
            node,
            pod.command(agent_bin()),
            extra,
            Some(running.shared.clone()),
        )
    }

    /// Like [`Agent::start_in_pod`], but in a private cgroup namespace (`unshare --cgroup`),
    /// as containerd and CRI-O run non-privileged containers on cgroup v2: the agent's
    /// `/proc/self/cgroup` then says only `0::/`.
    pub fn start_in_pod_cgroupns(node: &TestNode, pod: &FakePod, extra: &[&str]) -> Result<Agent> {
        if !pod.is_host_network() {
            bail!("the agent must run in a host-network pod to listen on the node's address");
        }
        let mut cmd = pod.command("unshare");
        cmd.arg("--cgroup").arg(agent_bin());
        Self::spawn(node, cmd, extra, None)
    }

    fn spawn(
        node: &TestNode,
        mut cmd: Command,
        extra: &[&str],
        shared: Option<Arc<Shared>>,
    ) -> Result<Agent> {
        let successor = shared.is_some();
        let tag = format!(
            "{}-{}",
            std::process::id(),
            AGENT_COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let shared = shared.unwrap_or_else(|| {
            Arc::new(Shared {
                bpffs_dir: PathBuf::from(format!("/sys/fs/bpf/iamlet-test-{tag}")),
                handover_socket: std::env::temp_dir()
                    .join(format!("iamlet-test-{tag}"))
                    .join("handover.sock"),
            })
        });
        let log = std::env::temp_dir().join(format!("iamlet-test-agent-{tag}.log"));
        let log_file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let bin = agent_bin();
        if !bin.is_file() {
            bail!(
                "agent binary {} not found: build it (cargo xtask test does) or set IAMLET_BIN",
                bin.display()
            );
        }
        cmd.arg("--cgroup")
            .arg(node.pods_cgroup())
            .arg("--listen-v4")
            .arg(format!("{NODE_PROXY_V4}:{PROXY_PORT}"))
            .arg("--listen-v6")
            .arg(format!("[{NODE_PROXY_V6}]:{PROXY_PORT}"))
            .arg("--admin-listen")
            .arg(ADMIN_ADDR)
            .arg("--bpffs-dir")
            .arg(&shared.bpffs_dir)
            .arg("--handover-socket")
            .arg(&shared.handover_socket)
            .args(if extra.contains(&"--log") {
                &[][..]
            } else {
                &["--log", "debug"][..]
            })
            .args(extra)
            // The node's own AWS identity (used only for STS calls, against moto in tests); the
            // SDK's IMDS probing is off so nothing reaches for a metadata service.
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        let child = ChildGuard::spawn(&mut cmd).context("starting iamlet")?;
        let mut agent = Agent {
            child: Some(child),
            log,
            shared,
        };
        agent.wait_ready(node, successor, Duration::from_secs(20))?;
        Ok(agent)
    }

    fn wait_ready(&mut self, node: &TestNode, successor: bool, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + scaled(timeout);
        let url = format!("http://{ADMIN_ADDR}/ready");
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "iamlet exited with {status} before becoming ready:\n{}",
                        self.log_text()
                    );
                }
            }
            // A successor's readiness is told apart from its predecessor's, which answers on
            // the same (handed-over) admin socket, by its log line (so successors need
            // `--log info` or more).
            if !successor || self.log_text().contains("iamlet ready") {
                let out =
                    node.run_timeout(&["curl", "-sf", "-m", "1", &url], Duration::from_secs(3))?;
                if out.success() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("iamlet not ready after {timeout:?}:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The agent's `/metrics` text, scraped from inside `node`.
    pub fn metrics(&self, node: &TestNode) -> Result<String> {
        let url = format!("http://{ADMIN_ADDR}/metrics");
        let out = node.run_timeout(&["curl", "-sf", "-m", "5", &url], Duration::from_secs(8))?;
        Ok(out.ensure_success()?.stdout)
    }

    /// The value of one sample (`name{labels}` exactly as exposed) of the agent's metrics;
    /// 0 when the sample is absent.
    pub fn metric(&self, node: &TestNode, sample: &str) -> Result<f64> {
        let text = self.metrics(node)?;
        Ok(metric_value(&text, sample).unwrap_or(0.0))
    }

    /// The agent's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Directory where its maps and links are pinned.
    pub fn bpffs_dir(&self) -> &Path {
        &self.shared.bpffs_dir
    }

    /// Path of a pinned map.
    pub fn pinned_map(&self, name: &str) -> PathBuf {
        self.shared.bpffs_dir.join(name)
    }

    /// Everything the agent logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits (up to 15 s) for the exit status. The pin directory stays
    /// until this value (and any successor) is dropped, so what the agent left can be checked.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("agent already stopped");
        };
        let pid = child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        match child.wait_timeout(Duration::from_secs(15))? {
            Some(status) => Ok(status),
            None => bail!(
                "iamlet did not exit within 15 s of SIGTERM:\n{}",
                self.log_text()
            ),
        }
    }
}

/// The value of the sample `sample` (`name{labels}` as exposed) in Prometheus text.
pub fn metric_value(text: &str, sample: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(sample)?;
        rest.strip_prefix(' ')?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            let pid = child.id().to_string();
            let _ = Command::new("kill")
                .args(["-TERM", &pid])
                .stderr(Stdio::null())
                .status();
            let mut child = child;
            if !matches!(child.wait_timeout(Duration::from_secs(10)), Ok(Some(_))) {
                eprintln!("iamlet {pid} ignored SIGTERM; killing it");
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "--- iamlet log ({}) ---\n{}",
                self.log.display(),
                self.log_text()
            );
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

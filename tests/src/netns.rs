//! Named network namespaces (`ip netns`), owned and removed on drop.
//!
//! Commands enter a namespace with `nsenter --net=/run/netns/NAME`, which (unlike
//! `ip netns exec`) does not remount `/sys` and leaves the cgroup alone.

use crate::time_scale::scaled;
use std::ffi::OsStr;
use std::fs;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::process::{run_with_timeout, tool, DEFAULT_TIMEOUT};

/// Where `ip netns` keeps its namespace bind mounts.
pub const NETNS_DIR: &str = "/run/netns";

/// Serialises `ip netns add/del` within this process: the first `ip netns add` on a
/// machine sets up the `/run/netns` mount, which must not race with itself.
static NETNS_LOCK: Mutex<()> = Mutex::new(());

/// Names of all named network namespaces (entries of [`NETNS_DIR`]).
pub fn list() -> Result<Vec<String>> {
    match fs::read_dir(NETNS_DIR) {
        Ok(entries) => {
            let mut names = Vec::new();
            for entry in entries {
                names.push(entry?.file_name().to_string_lossy().into_owned());
            }
            names.sort();
            Ok(names)
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).context(format!("listing {NETNS_DIR}")),
    }
}

/// Pids of the processes whose network namespace is the named one (`ip netns pids`).
pub fn pids_in(name: &str) -> Result<Vec<u32>> {
    let out = tool("ip", &["netns", "pids", name])?;
    Ok(out.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// Kills (SIGKILL) the processes left in the named namespace and deletes it
/// (`ip netns del`, which also destroys veth pairs with an end in it once it is gone).
/// A namespace that does not exist is not an error.
pub fn delete(name: &str) -> Result<()> {
    let path = Path::new(NETNS_DIR).join(name);
    if !path.exists() {
        return Ok(());
    }
    let pids: Vec<String> = pids_in(name)
        .unwrap_or_default()
        .iter()
        .map(u32::to_string)
        .collect();
    if !pids.is_empty() {
        let mut args = vec!["-9".to_owned()];
        args.extend(pids);
        // Processes may exit meanwhile: ignore kill's failure.
        let _ = tool("kill", &args);
    }
    let _lock = NETNS_LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match tool("ip", &["netns", "del", name]) {
        Ok(_) => Ok(()),
        Err(_) if !path.exists() => Ok(()),
        Err(e) => Err(e),
    }
}

/// A named network namespace this crate created; deleted on drop (after `SIGKILLing` any
/// process still in it).
#[derive(Debug)]
pub struct Netns {
    name: String,
    path: PathBuf,
}

impl Netns {
    /// Creates the namespace `name` (`ip netns add`) and brings its `lo` up.
    pub fn create(name: &str) -> Result<Netns> {
        {
            let _lock = NETNS_LOCK
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            tool("ip", &["netns", "add", name])
                .with_context(|| format!("creating network namespace {name}"))?;
        }
        let ns = Netns {
            name: name.to_owned(),
            path: Path::new(NETNS_DIR).join(name),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `ip -n <name> <args>`; returns its stdout, or an error with its stderr.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        tool("ip", &full)
    }

    /// A command running `program` in this namespace, in the caller's cgroup:
    /// `nsenter --net=<path> -- <program>`. Add arguments with `.arg()`/`.args()`.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        netns_command(&self.path, program.as_ref())
    }

    /// Pids of the processes in this namespace.
    pub fn pids(&self) -> Result<Vec<u32>> {
        pids_in(&self.name)
    }

    /// Waits until something in this namespace listens on TCP `addr` (checked with
    /// `ss -Hltn`; a wildcard listener on the same port and family counts).
    pub fn wait_listening(&self, addr: SocketAddr, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + scaled(timeout);
        loop {
            let out = run_with_timeout(self.command("ss").arg("-Hltn"), DEFAULT_TIMEOUT)?
                .ensure_success()?;
            if out
                .stdout
                .lines()
                .filter_map(|l| l.split_whitespace().nth(3))
                .filter_map(parse_ss_addr)
                .any(|l| listener_matches(l, addr))
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "nothing listens on {addr} in netns {} after {timeout:?}; listeners:\n{}",
                    self.name,
                    out.stdout
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = delete(&self.name) {
            eprintln!("iamlet-tests: cannot delete netns {}: {e:#}", self.name);
        }
    }
}

/// `nsenter --net=<path> -- <program>`.
pub(crate) fn netns_command(path: &Path, program: &OsStr) -> Command {
    let mut net = std::ffi::OsString::from("--net=");
    net.push(path);
    let mut cmd = Command::new("nsenter");
    cmd.arg(net).arg("--").arg(program);
    cmd
}

/// Parses `ss` local-address forms: `1.2.3.4:80`, `[::1]:80`, `*:80`, `0.0.0.0%lo:80`,
/// `[fe80::1]%eth0:80`.
fn parse_ss_addr(s: &str) -> Option<SocketAddr> {
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = host.split('%').next()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = if host == "*" {
        IpAddr::from([0u8; 16])
    } else {
        host.parse().ok()?
    };
    Some(SocketAddr::new(ip, port))
}

fn listener_matches(listener: SocketAddr, want: SocketAddr) -> bool {
    listener.port() == want.port()
        && (listener.ip() == want.ip()
            || (listener.ip().is_unspecified()
                && (listener.is_ipv6() || want.is_ipv4() == listener.is_ipv4())))
}

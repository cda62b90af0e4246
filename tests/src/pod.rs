//! Fake pods (a cgroup under the node's pods cgroup plus a network namespace) and
//! "outside" hosts (a pod-like network namespace, but no pod cgroup).

use std::ffi::OsStr;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::cgroup::{self, CgroupDir};
use crate::cleanup::NETNS_PREFIX;
use crate::netns::{netns_command, Netns};
use crate::node::NodeInner;
use crate::process::{run_args, RunOutput, DEFAULT_TIMEOUT};

/// Joins the cgroup given as `$0`, then execs `nsenter --net=$1 -- "$@"` (after `shift`).
/// The shell's pid (`$$`) is the pid of the final program: `exec` keeps it, and `nsenter`
/// only `setns()`es before exec'ing (no fork for a network namespace). Arguments are
/// passed as separate argv entries, never re-parsed by the shell.
const ENTER_SCRIPT: &str =
    r#"echo $$ > "$0/cgroup.procs" && ns="$1" && shift && exec nsenter --net="$ns" -- "$@""#;

/// A pod's network namespace wired to the node: veth `veth<k>` (node side,
/// `198.18.k.1/24`, `fd00:1a3e:k::1/64`) ↔ `eth0` (pod side, `198.18.k.2/24`,
/// `fd00:1a3e:k::2/64`), default routes via the node side. The IPv6 group `k` is written
/// with the same digits as the IPv4 octet (pod 12 is `198.18.12.2` and `fd00:1a3e:12::2`).
#[derive(Debug)]
pub struct PodNetwork {
    netns: Netns,
    k: u32,
    ipv4: Ipv4Addr,
    ipv6: Ipv6Addr,
}

impl PodNetwork {
    pub(crate) fn create(node: &NodeInner) -> Result<PodNetwork> {
        let k = node.next_k()?;
        let name = format!("{NETNS_PREFIX}{}-{k}", node.tag);
        let netns = Netns::create(&name)?;
        let veth = format!("veth{k}");
        let (node_v4, node_v6) = (format!("198.18.{k}.1"), format!("fd00:1a3e:{k}::1"));
        let (pod_v4, pod_v6) = (format!("198.18.{k}.2"), format!("fd00:1a3e:{k}::2"));
        // Created inside the node namespace with the peer placed straight into the pod's,
        // already named eth0: nothing ever appears in the machine's own namespace.
        let n = &node.netns;
        n.ip(&[
            "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &name,
        ])
        .with_context(|| format!("creating veth pair for {name}"))?;
        n.ip(&["addr", "add", &format!("{node_v4}/24"), "dev", &veth])?;
        n.ip(&[
            "addr",
            "add",
            &format!("{node_v6}/64"),
            "dev",
            &veth,
            "nodad",
        ])?;
        n.ip(&["link", "set", &veth, "up"])?;
        netns.ip(&["addr", "add", &format!("{pod_v4}/24"), "dev", "eth0"])?;
        netns.ip(&[
            "addr",
            "add",
            &format!("{pod_v6}/64"),
            "dev",
            "eth0",
            "nodad",
        ])?;
        netns.ip(&["link", "set", "eth0", "up"])?;
        netns.ip(&["route", "add", "default", "via", &node_v4, "dev", "eth0"])?;
        netns.ip(&[
            "-6", "route", "add", "default", "via", &node_v6, "dev", "eth0",
        ])?;
        Ok(PodNetwork {
            k,
            ipv4: pod_v4.parse()?,
            ipv6: pod_v6.parse()?,
            netns,
        })
    }

    /// The network namespace.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// Subnet index `k`.
    pub fn index(&self) -> u32 {
        self.k
    }

    /// Name of the node-side veth (`veth<k>`, in the node namespace).
    pub fn node_veth(&self) -> String {
        format!("veth{}", self.k)
    }

    /// Pod-side IPv4 address `198.18.k.2`.
    pub fn ipv4(&self) -> Ipv4Addr {
        self.ipv4
    }

    /// Pod-side IPv6 address `fd00:1a3e:k::2`.
    pub fn ipv6(&self) -> Ipv6Addr {
        self.ipv6
    }
}

/// A fake pod: cgroup `<pods cgroup>/<name>` and a network namespace (its own, one shared
/// with another pod, or the node's for host-network pods).
///
/// On drop: every process in the pod cgroup is killed (`cgroup.kill`, else `kill -9`), the
/// cgroup directories are removed bottom-up, then the network namespace is deleted if no
/// other pod shares it (processes left in it are killed; its veth goes with it).
#[derive(Debug)]
pub struct FakePod {
    // Field order is drop order: cgroup (kills processes), network, then the node handle.
    cgroup: CgroupDir,
    /// `None` for host-network pods.
    net: Option<Arc<PodNetwork>>,
    node: Arc<NodeInner>,
    name: String,
}

/// The kubelet's (systemd driver) cgroup of a BestEffort pod, relative to the pods cgroup:
/// `kubepods-besteffort.slice/kubepods-besteffort-pod<uid with _>.slice`.
pub fn besteffort_pod_slice(uid: &str) -> String {
    format!(
        "kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice",
        uid.replace('-', "_")
    )
}

/// The cgroup of container number `container` of that pod (containerd's scope naming).
pub fn besteffort_container_cgroup(uid: &str, container: u64) -> String {
    format!(
        "{}/cri-containerd-{container:064x}.scope",
        besteffort_pod_slice(uid)
    )
}

impl FakePod {
    /// One HTTP request from this pod to the metadata address `169.254.169.254:80` (IPv4),
    /// with `headers`; redirected to the agent while its programs are attached.
    pub fn imds(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<crate::net::HttpAnswer> {
        crate::net::http_with(
            self.command("python3"),
            crate::net::Family::V4,
            "169.254.169.254",
            80,
            method,
            path,
            headers,
        )
    }

    pub(crate) fn create(
        node: &Arc<NodeInner>,
        name: &str,
        net: Option<Arc<PodNetwork>>,
    ) -> Result<FakePod> {
        let cgroup = CgroupDir::create_nested(&node.pods_cgroup, name)
            .with_context(|| format!("creating cgroup of pod {name}"))?;
        Ok(FakePod {
            cgroup,
            net,
            node: Arc::clone(node),
            name: name.to_owned(),
        })
    }

    pub(crate) fn node(&self) -> &Arc<NodeInner> {
        &self.node
    }

    /// The pod's network, `None` for a host-network pod.
    pub fn network(&self) -> Option<&Arc<PodNetwork>> {
        self.net.as_ref()
    }

    /// The name given at creation (the cgroup path below the pods cgroup).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the pod uses the node's network namespace.
    pub fn is_host_network(&self) -> bool {
        self.net.is_none()
    }

    /// The pod's IPv4 address (`198.18.k.2`); `None` for a host-network pod.
    pub fn ipv4(&self) -> Option<Ipv4Addr> {
        self.net.as_ref().map(|n| n.ipv4())
    }

    /// The pod's IPv6 address (`fd00:1a3e:k::2`); `None` for a host-network pod.
    pub fn ipv6(&self) -> Option<Ipv6Addr> {
        self.net.as_ref().map(|n| n.ipv6())
    }

    /// Absolute path of the pod cgroup.
    pub fn cgroup_path(&self) -> &Path {
        self.cgroup.path()
    }

    /// Path of the pod cgroup relative to the cgroup2 root, without leading `/`; the
    /// `0::` line of `/proc/<pid>/cgroup` of a process in the pod is `0::/` + this.
    pub fn cgroup_relative(&self) -> &str {
        self.cgroup.relative()
    }

    /// The pod's cgroup id (inode of its cgroup directory).
    pub fn cgroup_id(&self) -> u64 {
        self.cgroup.id()
    }

    /// The pod's network namespace.
    fn netns(&self) -> &Netns {
        match &self.net {
            Some(net) => net.netns(),
            None => &self.node.netns,
        }
    }

    /// Name of the pod's network namespace (the node's for a host-network pod).
    pub fn netns_name(&self) -> &str {
        self.netns().name()
    }

    /// Path of the pod's network namespace (`/run/netns/...`).
    pub fn netns_path(&self) -> &Path {
        self.netns().path()
    }

    /// Pids currently in the pod cgroup (and below).
    pub fn procs(&self) -> Result<Vec<u32>> {
        cgroup::procs_recursive(self.cgroup.path())
    }

    /// Kills every process in the pod cgroup and waits until it is empty.
    pub fn kill_all(&self) -> Result<()> {
        cgroup::kill_all(self.cgroup.path())
    }

    /// A command running `program` inside the pod: `/bin/sh` writes its own pid to the pod's
    /// `cgroup.procs`, then execs `nsenter --net=<pod netns> -- program args...`. Add
    /// arguments with `.arg()`/`.args()`; they reach `program` unmodified.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(ENTER_SCRIPT)
            .arg(self.cgroup.path())
            .arg(self.netns_path())
            .arg(program.as_ref());
        cmd
    }

    /// Runs `args` (`args[0]` is the program) inside the pod, killed after
    /// [`DEFAULT_TIMEOUT`]. A non-zero exit is not an error (see
    /// [`RunOutput::ensure_success`]); a timeout is.
    pub fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<RunOutput> {
        self.run_timeout(args, DEFAULT_TIMEOUT)
    }

    /// Like [`FakePod::run`] with an explicit timeout.
    pub fn run_timeout<S: AsRef<OsStr>>(&self, args: &[S], timeout: Duration) -> Result<RunOutput> {
        run_args(|p| self.command(p), args, timeout)
    }
}

/// A host outside the pods cgroup: a network namespace wired like a pod's (veth,
/// `198.18.k.2/24`, `fd00:1a3e:k::2/64`), but its commands run in the caller's own cgroup.
/// The namespace (and any process left in it) goes on drop.
#[derive(Debug)]
pub struct OutsideHost {
    net: PodNetwork,
    _node: Arc<NodeInner>,
    name: String,
}

impl OutsideHost {
    pub(crate) fn new(node: &Arc<NodeInner>, name: &str, net: PodNetwork) -> OutsideHost {
        OutsideHost {
            net,
            _node: Arc::clone(node),
            name: name.to_owned(),
        }
    }

    /// The label given at creation.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host's network.
    pub fn network(&self) -> &PodNetwork {
        &self.net
    }

    /// IPv4 address (`198.18.k.2`).
    pub fn ipv4(&self) -> Ipv4Addr {
        self.net.ipv4()
    }

    /// IPv6 address (`fd00:1a3e:k::2`).
    pub fn ipv6(&self) -> Ipv6Addr {
        self.net.ipv6()
    }

    /// Name of the network namespace.
    pub fn netns_name(&self) -> &str {
        self.net.netns().name()
    }

    /// Path of the network namespace.
    pub fn netns_path(&self) -> &Path {
        self.net.netns().path()
    }

    /// A command running `program` in this namespace, in the caller's cgroup.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        netns_command(self.netns_path(), program.as_ref())
    }

    /// Runs `args` (`args[0]` is the program) here, killed after [`DEFAULT_TIMEOUT`].
    pub fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<RunOutput> {
        self.run_timeout(args, DEFAULT_TIMEOUT)
    }

    /// Like [`OutsideHost::run`] with an explicit timeout.
    pub fn run_timeout<S: AsRef<OsStr>>(&self, args: &[S], timeout: Duration) -> Result<RunOutput> {
        run_args(|p| self.command(p), args, timeout)
    }
}

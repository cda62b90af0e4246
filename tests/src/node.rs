//! The fake Kubernetes node: a network namespace holding the agent's listener addresses, a
//! "cloud" namespace behind it holding the metadata addresses (so that, as on EC2, the node
//! reaches the metadata service by routing and a pod's packets to it are forwarded by the
//! node), plus the parent "pods cgroup" the agent attaches to.

use std::ffi::OsStr;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::cgroup::CgroupDir;
use crate::cleanup::{cleanup_stale, CGROUP_PREFIX, NETNS_PREFIX};
use crate::netns::Netns;
use crate::pod::{FakePod, OutsideHost, PodNetwork};
use crate::process::{run_args, RunOutput, DEFAULT_TIMEOUT};

/// The agent's IPv4 listener address, on `lo` of the node namespace (`/32`).
pub const NODE_PROXY_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 255, 1);
/// The agent's IPv6 listener address, on `lo` of the node namespace (`/128`).
pub const NODE_PROXY_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x1a3e, 0xffff, 0, 0, 0, 0, 1);
/// The IPv4 instance metadata address; on `lo` of the node's cloud namespace (`/32`), routed
/// from the node, so a connect that is not redirected reaches a fake IMDS there, never the
/// real network.
pub const IMDS_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// The IPv6 instance metadata address (`fd00:ec2::254`), on `lo` of the cloud namespace.
pub const IMDS_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);
/// The node's end of the link to the cloud namespace (`cloud0`).
pub const CLOUD_LINK_NODE_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The cloud's end of that link (`eth0` there): the node's next hop to the metadata service.
pub const CLOUD_LINK_CLOUD_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// The node's IPv6 end of the link to the cloud namespace.
pub const CLOUD_LINK_NODE_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x1a3e, 0, 0, 0, 0, 0, 1);
/// The cloud's IPv6 end of that link.
pub const CLOUD_LINK_CLOUD_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x1a3e, 0, 0, 0, 0, 0, 2);

/// Whether `ip` lives in the cloud namespace (the metadata addresses).
pub fn is_cloud_address(ip: std::net::IpAddr) -> bool {
    ip == std::net::IpAddr::V4(IMDS_V4) || ip == std::net::IpAddr::V6(IMDS_V6)
}

/// Distinguishes nodes created by this process (names carry pid and this counter).
static NODE_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Shared by a [`TestNode`] and every pod created from it, so the node's resources outlive
/// its pods whatever order the handles are dropped in.
#[derive(Debug)]
pub(crate) struct NodeInner {
    // Field order is drop order: the pods cgroup first, then the namespaces.
    pub(crate) pods_cgroup: CgroupDir,
    pub(crate) cloud: Netns,
    pub(crate) netns: Netns,
    /// `<pid>-<n>`, the unique part of this node's names.
    pub(crate) tag: String,
    /// Last pod/outside index handed out (the `k` in `198.18.k.0/24`).
    pub(crate) next_k: AtomicU32,
}

impl NodeInner {
    /// Hands out the next subnet index `k` (1..=254).
    pub(crate) fn next_k(&self) -> Result<u32> {
        let k = self.next_k.fetch_add(1, Ordering::SeqCst) + 1;
        if k > 254 {
            bail!("at most 254 pod networks per node");
        }
        Ok(k)
    }
}

/// A fake Kubernetes node.
///
/// * network namespace `iml-node-<pid>-<n>`, `lo` up, holding on `lo`
///   [`NODE_PROXY_V4`]`/32` and [`NODE_PROXY_V6`]`/128`, forwarding on;
/// * network namespace `iml-cloud-<pid>-<n>` (the "cloud" the node runs in), holding
///   [`IMDS_V4`]`/32` and [`IMDS_V6`]`/128` on `lo`, linked to the node by a veth
///   (`cloud0` [`CLOUD_LINK_NODE_V4`] ↔ `eth0` [`CLOUD_LINK_CLOUD_V4`], and the IPv6
///   pair); the node routes the metadata addresses there, the cloud routes everything back;
/// * pods cgroup `<cgroup2 root>/iamlet-test-<pid>-<n>` (the agent attaches there).
///
/// Pods are attached with a veth each (node side `veth<k>`, `198.18.k.1/24`,
/// `fd00:1a3e:k::1/64`). Everything is removed when the node and all its pods are dropped
/// (pods first, whatever order the handles go in), also during a panic.
#[derive(Debug)]
pub struct TestNode {
    inner: Arc<NodeInner>,
}

impl TestNode {
    /// Creates the node. Removes leftovers of crashed earlier runs first
    /// ([`cleanup_stale`]).
    pub fn new() -> Result<TestNode> {
        cleanup_stale();
        let tag = format!(
            "{}-{}",
            std::process::id(),
            NODE_COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let netns = Netns::create(&format!("{NETNS_PREFIX}node-{tag}"))?;
        for (addr, extra) in [
            (format!("{NODE_PROXY_V4}/32"), None),
            (format!("{NODE_PROXY_V6}/128"), Some("nodad")),
        ] {
            let mut args = vec!["addr", "add", addr.as_str(), "dev", "lo"];
            args.extend(extra);
            netns
                .ip(&args)
                .with_context(|| format!("adding {addr} to lo in {}", netns.name()))?;
        }
        let cloud = Netns::create(&format!("{NETNS_PREFIX}cloud-{tag}"))?;
        link_cloud(&netns, &cloud).context("linking the node to its cloud namespace")?;
        let pods_cgroup = CgroupDir::create_top_level(&format!("{CGROUP_PREFIX}{tag}"))?;
        Ok(TestNode {
            inner: Arc::new(NodeInner {
                pods_cgroup,
                cloud,
                netns,
                tag,
                next_k: AtomicU32::new(0),
            }),
        })
    }

    /// A command running `program` in the cloud namespace (where the metadata addresses
    /// live), in the caller's own cgroup. Use it for fake metadata services.
    pub fn cloud_command(&self, program: impl AsRef<OsStr>) -> Command {
        self.inner.cloud.command(program)
    }

    /// The namespace where `addr` lives: the cloud one for the metadata addresses, else the
    /// node's.
    pub fn netns_of(&self, addr: SocketAddr) -> &Netns {
        if is_cloud_address(addr.ip()) {
            &self.inner.cloud
        } else {
            &self.inner.netns
        }
    }

    /// Name of the cloud network namespace (`iml-cloud-<pid>-<n>`).
    pub fn cloud_netns_name(&self) -> &str {
        self.inner.cloud.name()
    }

    /// Name of the node network namespace (`iml-node-<pid>-<n>`).
    pub fn netns_name(&self) -> &str {
        self.inner.netns.name()
    }

    /// Path of the node network namespace (`/run/netns/iml-node-<pid>-<n>`).
    pub fn netns_path(&self) -> &Path {
        self.inner.netns.path()
    }

    /// The node network namespace (for `ip()`, `pids()`, `wait_listening()`).
    pub fn netns(&self) -> &Netns {
        &self.inner.netns
    }

    /// Absolute path of the pods cgroup (`<cgroup2 root>/iamlet-test-<pid>-<n>`).
    pub fn pods_cgroup(&self) -> &Path {
        self.inner.pods_cgroup.path()
    }

    /// Path of the pods cgroup relative to the cgroup2 root, without leading `/`
    /// (`iamlet-test-<pid>-<n>`).
    pub fn pods_cgroup_relative(&self) -> &str {
        self.inner.pods_cgroup.relative()
    }

    /// Cgroup id of the pods cgroup.
    pub fn pods_cgroup_id(&self) -> u64 {
        self.inner.pods_cgroup.id()
    }

    /// A command running `program` in the node network namespace, in the caller's own
    /// cgroup (`nsenter --net=<node netns> -- program`). Use it for the agent and upstream
    /// servers (hold those in a [`crate::ChildGuard`]).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        self.inner.netns.command(program)
    }

    /// Runs `args` (`args[0]` is the program) like [`TestNode::command`], killed after
    /// [`DEFAULT_TIMEOUT`].
    pub fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<RunOutput> {
        self.run_timeout(args, DEFAULT_TIMEOUT)
    }

    /// Like [`TestNode::run`] with an explicit timeout.
    pub fn run_timeout<S: AsRef<OsStr>>(&self, args: &[S], timeout: Duration) -> Result<RunOutput> {
        run_args(|p| self.command(p), args, timeout)
    }

    /// Waits until something listens on TCP `addr` in the namespace `addr` lives in (the
    /// cloud one for the metadata addresses, else the node's).
    pub fn wait_listening(&self, addr: SocketAddr, timeout: Duration) -> Result<()> {
        self.netns_of(addr).wait_listening(addr, timeout)
    }

    /// Adds a pod: cgroup `<pods cgroup>/<name>` (`name` may be nested, e.g.
    /// `kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice`; missing intermediate
    /// cgroups are created) and its own network namespace `iml-<pid>-<n>-<k>` wired to the
    /// node by a veth (`eth0`, `198.18.k.2/24`, `fd00:1a3e:k::2/64`, default routes via the
    /// node side).
    pub fn add_pod(&self, name: &str) -> Result<FakePod> {
        let net = PodNetwork::create(&self.inner)?;
        FakePod::create(&self.inner, name, Some(Arc::new(net)))
    }

    /// Adds a pod with its own cgroup that shares `other`'s network namespace (and so its
    /// addresses). The namespace lives until the last pod using it is dropped. If `other`
    /// is a host-network pod, the new pod is one too.
    pub fn add_pod_in_netns(&self, name: &str, other: &FakePod) -> Result<FakePod> {
        if !Arc::ptr_eq(&self.inner, other.node()) {
            bail!("add_pod_in_netns: {} belongs to another node", other.name());
        }
        FakePod::create(&self.inner, name, other.network().cloned())
    }

    /// Adds a host-network pod: its own cgroup, but the node's network namespace.
    pub fn add_host_network_pod(&self, name: &str) -> Result<FakePod> {
        FakePod::create(&self.inner, name, None)
    }

    /// Adds a network namespace wired like a pod (veth, `198.18.k.2/24`, ...) whose
    /// commands run in the caller's own cgroup, outside the pods cgroup. `name` is a label.
    pub fn add_outside_netns(&self, name: &str) -> Result<OutsideHost> {
        let net = PodNetwork::create(&self.inner)?;
        Ok(OutsideHost::new(&self.inner, name, net))
    }
}

/// The veth between the node and its cloud namespace, their addresses and routes, and
/// forwarding in the node (pods' packets to the metadata service are forwarded, as on EC2).
fn link_cloud(node: &Netns, cloud: &Netns) -> Result<()> {
    node.ip(&[
        "link",
        "add",
        "cloud0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        cloud.name(),
    ])?;
    let (nv4, cv4) = (
        format!("{CLOUD_LINK_NODE_V4}/30"),
        format!("{CLOUD_LINK_CLOUD_V4}/30"),
    );
    let (nv6, cv6) = (
        format!("{CLOUD_LINK_NODE_V6}/64"),
        format!("{CLOUD_LINK_CLOUD_V6}/64"),
    );
    node.ip(&["addr", "add", &nv4, "dev", "cloud0"])?;
    node.ip(&["addr", "add", &nv6, "dev", "cloud0", "nodad"])?;
    node.ip(&["link", "set", "cloud0", "up"])?;
    cloud.ip(&["addr", "add", &cv4, "dev", "eth0"])?;
    cloud.ip(&["addr", "add", &cv6, "dev", "eth0", "nodad"])?;
    cloud.ip(&["addr", "add", &format!("{IMDS_V4}/32"), "dev", "lo"])?;
    cloud.ip(&[
        "addr",
        "add",
        &format!("{IMDS_V6}/128"),
        "dev",
        "lo",
        "nodad",
    ])?;
    cloud.ip(&["link", "set", "eth0", "up"])?;
    cloud.ip(&[
        "route",
        "add",
        "default",
        "via",
        &CLOUD_LINK_NODE_V4.to_string(),
    ])?;
    cloud.ip(&[
        "-6",
        "route",
        "add",
        "default",
        "via",
        &CLOUD_LINK_NODE_V6.to_string(),
    ])?;
    node.ip(&[
        "route",
        "add",
        &format!("{IMDS_V4}/32"),
        "via",
        &CLOUD_LINK_CLOUD_V4.to_string(),
    ])?;
    node.ip(&[
        "-6",
        "route",
        "add",
        &format!("{IMDS_V6}/128"),
        "via",
        &CLOUD_LINK_CLOUD_V6.to_string(),
    ])?;
    for key in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
        crate::process::run_with_timeout(
            node.command("sysctl").args(["-q", "-w", key]),
            DEFAULT_TIMEOUT,
        )?
        .ensure_success()?;
    }
    Ok(())
}

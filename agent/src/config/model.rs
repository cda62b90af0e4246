//! What `Args::validate` produces: the validated configuration the agent runs with.

use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper::Uri;

use crate::credentials::static_file::StaticCredentials;
use crate::credentials::sts_cache::StsCacheSettings;
use crate::imds::ImdsSettings;
use crate::role::bindings::StaticBindings;

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// cgroup2 mount point.
    pub(crate) cgroup_root: PathBuf,
    /// Absolute path of the cgroup the programs attach to.
    pub(crate) cgroup: PathBuf,
    /// IPv4 listener.
    pub listen_v4: Option<SocketAddrV4>,
    /// IPv6 listener.
    pub listen_v6: Option<SocketAddrV6>,
    /// Admin listener.
    pub(crate) admin_listen: SocketAddr,
    /// bpffs pin directory.
    pub(crate) bpffs_dir: PathBuf,
    /// What to leave in the kernel on exit without a successor.
    pub(crate) on_exit: crate::datapath::OnExit,
    /// Install the node's forwarding guard.
    pub(crate) forward_guard: bool,
    /// Handover socket, unless off.
    pub(crate) handover_socket: Option<PathBuf>,
    /// Drain time on shutdown.
    pub(crate) shutdown_grace: Duration,
    /// Metadata API settings.
    pub(crate) imds: ImdsSettings,
    /// Real metadata service, if passthrough is on.
    pub(crate) upstream: Option<Uri>,
    /// Bound on upstream requests.
    pub(crate) upstream_timeout: Duration,
    /// Standalone role bindings, if given.
    pub(crate) bindings: Option<Arc<StaticBindings>>,
    /// A bindings file with bare role names whose base ARN is detected at start-up.
    pub(crate) deferred_bindings: Option<PathBuf>,
    /// The attached cgroup relative to the cgroup2 root.
    pub(crate) attached_relative: String,
    /// Node name for session tags, when `--session-tags` is on.
    pub(crate) session_tags_node: Option<String>,
    /// The Kubernetes role source, when there are no bindings and Kubernetes is reachable.
    pub(crate) kubernetes: Option<KubeConfig>,
    /// Static credentials, if given.
    pub(crate) static_credentials: Option<Arc<StaticCredentials>>,
    /// Proxy connection limits: all pods.
    pub(crate) max_connections: usize,
    /// Proxy connection limits: one pod, served.
    pub(crate) max_connections_per_pod: usize,
    /// Proxy connection limits: one pod, waiting.
    pub(crate) max_waiting_per_pod: usize,
    /// Header read timeout.
    pub(crate) header_timeout: Duration,
    /// STS and STS cache settings.
    pub(crate) sts: StsConfig,
}

/// The Kubernetes role source.
#[derive(Clone, Debug)]
pub(crate) struct KubeConfig {
    /// Kubeconfig file; `None`: in-cluster.
    pub(crate) kubeconfig: Option<PathBuf>,
    /// This node's name (pods are watched with `spec.nodeName=<node>`).
    pub(crate) node: String,
    /// Namespace gate.
    pub(crate) namespace_policy: crate::role::kubernetes::policy::NamespacePolicy,
    /// Honour IRSA annotations.
    pub(crate) service_account_roles: bool,
    /// Default role.
    pub(crate) default_role: Option<String>,
    /// Wait for pods not seen yet.
    pub(crate) pod_wait: Duration,
    /// Session tags on.
    pub(crate) session_tags: bool,
    /// `--base-role-arn`, if given.
    pub(crate) base_role_arn: Option<String>,
}

/// Where credentials come from when no static file is given.
#[derive(Clone, Debug)]
pub(crate) struct StsConfig {
    /// Region, if given.
    pub(crate) region: Option<String>,
    /// Endpoint override.
    pub(crate) endpoint: Option<String>,
    /// Session duration.
    pub(crate) session_duration: Duration,
    /// Attempt timeout.
    pub(crate) attempt_timeout: Duration,
    /// Attempts per call.
    pub(crate) max_attempts: u32,
    /// STS cache tuning (including whether to prefetch).
    pub(crate) sts_cache: StsCacheSettings,
}

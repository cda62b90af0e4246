//! What `Args::validate` produces: the validated configuration the agent runs with.

use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper::Uri;

use crate::credentials::StaticCredentials;
use crate::engine::EngineSettings;
use crate::imds::ImdsSettings;
use crate::roles::StaticBindings;

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// cgroup2 mount point.
    pub cgroup_root: PathBuf,
    /// Absolute path of the cgroup the programs attach to.
    pub cgroup: PathBuf,
    /// IPv4 listener.
    pub listen_v4: Option<SocketAddrV4>,
    /// IPv6 listener.
    pub listen_v6: Option<SocketAddrV6>,
    /// Admin listener.
    pub admin_listen: SocketAddr,
    /// bpffs pin directory.
    pub bpffs_dir: PathBuf,
    /// What to leave in the kernel on exit without a successor.
    pub on_exit: crate::datapath::OnExit,
    /// Install the node's forwarding guard.
    pub forward_guard: bool,
    /// Handover socket, unless off.
    pub handover_socket: Option<PathBuf>,
    /// Drain time on shutdown.
    pub shutdown_grace: Duration,
    /// Metadata API settings.
    pub imds: ImdsSettings,
    /// Real metadata service, if passthrough is on.
    pub upstream: Option<Uri>,
    /// Bound on upstream requests.
    pub upstream_timeout: Duration,
    /// Standalone role bindings, if given.
    pub bindings: Option<Arc<StaticBindings>>,
    /// A bindings file with bare role names whose base ARN is detected at start-up.
    pub deferred_bindings: Option<PathBuf>,
    /// The attached cgroup relative to the cgroup2 root.
    pub attached_relative: String,
    /// Node name for session tags, when `--session-tags` is on.
    pub session_tags_node: Option<String>,
    /// The Kubernetes role source, when there are no bindings and Kubernetes is reachable.
    pub kubernetes: Option<KubeConfig>,
    /// Static credentials, if given.
    pub static_credentials: Option<Arc<StaticCredentials>>,
    /// Proxy connection limits: all pods.
    pub max_connections: usize,
    /// Proxy connection limits: one pod, served.
    pub max_connections_per_pod: usize,
    /// Proxy connection limits: one pod, waiting.
    pub max_waiting_per_pod: usize,
    /// Header read timeout.
    pub header_timeout: Duration,
    /// STS and engine settings.
    pub sts: StsConfig,
}

/// The Kubernetes role source.
#[derive(Clone, Debug)]
pub struct KubeConfig {
    /// Kubeconfig file; `None`: in-cluster.
    pub kubeconfig: Option<PathBuf>,
    /// This node's name (pods are watched with `spec.nodeName=<node>`).
    pub node: String,
    /// Namespace gate.
    pub namespace_policy: crate::k8s::resolve::NamespacePolicy,
    /// Honour IRSA annotations.
    pub service_account_roles: bool,
    /// Default role.
    pub default_role: Option<String>,
    /// Wait for pods not seen yet.
    pub pod_wait: Duration,
    /// Session tags on.
    pub session_tags: bool,
    /// `--base-role-arn`, if given.
    pub base_role_arn: Option<String>,
}

/// Where credentials come from when no static file is given.
#[derive(Clone, Debug)]
pub struct StsConfig {
    /// Region, if given.
    pub region: Option<String>,
    /// Endpoint override.
    pub endpoint: Option<String>,
    /// Session duration.
    pub session_duration: Duration,
    /// Attempt timeout.
    pub attempt_timeout: Duration,
    /// Attempts per call.
    pub max_attempts: u32,
    /// Engine tuning (including whether to prefetch).
    pub engine: EngineSettings,
}

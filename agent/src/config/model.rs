//! What the flags become: the [`Plan`] that [`Args::validate`](super::Args::validate) makes
//! without touching the system, and the [`Config`] that [`Plan::load`] makes of it by reading
//! what it names. The run mode is explicit in [`Config`]: where roles come from
//! ([`RoleSource`]) and where credentials come from ([`CredentialsConfig`]).

use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper::Uri;

use crate::credentials::static_file::StaticCredentials;
use crate::credentials::sts_cache::StsCacheSettings;
use crate::imds::ImdsSettings;
use crate::role::bindings::StaticBindings;
use crate::role::kubernetes::policy::NamespacePolicy;

/// What the flags fix without reading anything: listeners, limits, the metadata API.
#[derive(Clone, Debug)]
pub(crate) struct Runtime {
    /// IPv4 listener.
    pub(crate) listen_v4: Option<SocketAddrV4>,
    /// IPv6 listener.
    pub(crate) listen_v6: Option<SocketAddrV6>,
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
    /// Proxy connection limits: all pods.
    pub(crate) max_connections: usize,
    /// Proxy connection limits: one pod, served.
    pub(crate) max_connections_per_pod: usize,
    /// Proxy connection limits: one pod, waiting.
    pub(crate) max_waiting_per_pod: usize,
    /// Header read timeout.
    pub(crate) header_timeout: Duration,
    /// Threads the proxy serves on; `None`: one per CPU, at most a few.
    pub(crate) proxy_threads: Option<std::num::NonZeroUsize>,
    /// How long a proxy thread polls after a response before it sleeps; `None`: not at all.
    pub(crate) proxy_busy_poll: Option<Duration>,
}

/// The checked flags: everything [`Plan::load`] needs, nothing read yet.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Listeners, limits, the metadata API.
    pub(crate) runtime: Runtime,
    /// `--cgroup`; `None`: find the kubelet's pods cgroup.
    pub(crate) cgroup: Option<PathBuf>,
    /// `--bindings`.
    pub(crate) bindings: Option<PathBuf>,
    /// `--static-credentials`.
    pub(crate) static_credentials: Option<PathBuf>,
    /// `--base-role-arn`.
    pub(crate) base_role_arn: Option<String>,
    /// `--node-name`.
    pub(crate) node_name: Option<String>,
    /// `--session-tags`.
    pub(crate) session_tags: bool,
    /// The Kubernetes flags, used when there are no bindings and Kubernetes is reachable.
    pub(crate) kubernetes: KubeFlags,
    /// STS, when no static credentials are given.
    pub(crate) sts: StsConfig,
}

/// The Kubernetes flags.
#[derive(Clone, Debug)]
pub(crate) struct KubeFlags {
    /// `--kubeconfig`; `None`: in-cluster, if running in a cluster.
    pub(crate) kubeconfig: Option<PathBuf>,
    /// Namespace gate.
    pub(crate) namespace_policy: NamespacePolicy,
    /// Honour IRSA annotations.
    pub(crate) service_account_roles: bool,
    /// Default role.
    pub(crate) default_role: Option<String>,
    /// Wait for pods not seen yet.
    pub(crate) pod_wait: Duration,
}

/// The configuration the agent runs with.
#[derive(Clone, Debug)]
pub struct Config {
    /// Listeners, limits, the metadata API.
    pub(crate) runtime: Runtime,
    /// cgroup2 mount point.
    pub(crate) cgroup_root: PathBuf,
    /// Absolute path of the cgroup the programs attach to.
    pub(crate) cgroup: PathBuf,
    /// Where roles come from.
    pub(crate) roles: RoleSource,
    /// Where credentials come from.
    pub(crate) credentials: CredentialsConfig,
}

/// Where roles come from.
#[derive(Clone, Debug)]
pub(crate) enum RoleSource {
    /// Standalone bindings, loaded.
    Bindings(Arc<StaticBindings>),
    /// Standalone bindings naming roles by bare name with no `--base-role-arn`: the base is
    /// the node's own account, read from the metadata service (`iam/info`) when the agent
    /// starts, and the file is loaded with it then (it was checked to be readable here).
    BindingsInNodeAccount(NodeAccountBindings),
    /// The Kubernetes watch and pod annotations.
    Kubernetes(KubeConfig),
    /// Neither: nobody has a role (the agent still redirects and answers).
    None,
}

/// A bindings file to load with the node's account as its base.
#[derive(Clone, Debug)]
pub(crate) struct NodeAccountBindings {
    /// The file.
    pub(crate) path: PathBuf,
    /// The attached cgroup relative to the cgroup2 root.
    pub(crate) attached_relative: String,
    /// Node name for session tags, when `--session-tags` is on.
    pub(crate) tag_node: Option<String>,
}

/// Where credentials come from.
#[derive(Clone, Debug)]
pub(crate) enum CredentialsConfig {
    /// `--static-credentials`, loaded.
    Static(Arc<StaticCredentials>),
    /// AssumeRole through STS.
    Sts(StsConfig),
}

/// The Kubernetes role source.
#[derive(Clone, Debug)]
pub(crate) struct KubeConfig {
    /// Kubeconfig file; `None`: in-cluster.
    pub(crate) kubeconfig: Option<PathBuf>,
    /// This node's name (pods are watched with `spec.nodeName=<node>`).
    pub(crate) node: String,
    /// Namespace gate.
    pub(crate) namespace_policy: NamespacePolicy,
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

/// AssumeRole through STS.
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

//! Command-line flags and `IAMLET_*` environment variables, parsed and validated once.
//!
//! Two steps: [`Args::validate`] checks the flags without reading anything and gives a
//! [`Plan`]; [`Plan::load`] reads what it names (the cgroup2 mount, files, the environment)
//! and gives the [`Config`], whose run mode is explicit. `main` exits with status 64
//! (`EX_USAGE`) when either fails.

use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// A feature switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// iamlet: per-pod AWS IAM credentials through an eBPF-redirected instance metadata service.
#[derive(Clone, Debug, Parser)]
#[command(name = "iamlet", version = env!("IAMLET_VERSION_TEXT"), about)]
#[allow(
    clippy::struct_excessive_bools,
    reason = "command-line switches: each bool is one flag"
)]
pub struct Args {
    /// Cgroup to attach to, absolute or relative to the cgroup2 mount. Default: the kubelet's
    /// pods cgroup (kubepods.slice or kubepods). The root cgroup is refused.
    #[arg(long, env = "IAMLET_CGROUP")]
    pub cgroup: Option<PathBuf>,

    /// IPv4 address:port of the metadata proxy; pods' connects to 169.254.169.254:80 are
    /// rewritten to it, so it must be reachable from pods (the node's host IP).
    #[arg(long, env = "IAMLET_LISTEN_V4")]
    pub listen_v4: Option<SocketAddrV4>,

    /// IPv6 [address]:port of the metadata proxy for connects to [`fd00:ec2::254`]:80. Without
    /// it, those connects go to the IPv4 listener (v4-mapped).
    #[arg(long, env = "IAMLET_LISTEN_V6")]
    pub listen_v6: Option<SocketAddrV6>,

    /// Address of the admin server (/live, /ready, /metrics).
    #[arg(long, env = "IAMLET_ADMIN_LISTEN", default_value = "127.0.0.1:9809")]
    pub admin_listen: SocketAddr,

    /// Directory on a bpffs where the maps are pinned.
    #[arg(long, env = "IAMLET_BPFFS_DIR", default_value = "/sys/fs/bpf/iamlet")]
    pub bpffs_dir: PathBuf,

    /// What stays in the kernel when the agent exits with no successor: `keep` leaves the
    /// programs attached so pods' metadata connects are refused (fail closed) until an agent
    /// runs again; `detach` removes them, and pods reach the real metadata service.
    #[arg(long, env = "IAMLET_ON_EXIT", value_enum, default_value = "keep")]
    pub on_exit: crate::datapath::OnExit,

    /// The node's forwarding guard: policy routing rules (`ip rule`, pref 5 and 6) that route
    /// the node's own metadata traffic as before and refuse to forward any to a metadata
    /// address, so a pod cannot reach it below IP (an `AF_PACKET` socket) either. `off` leaves
    /// the node's routing alone.
    #[arg(long, env = "IAMLET_FORWARD_GUARD", value_enum, default_value = "on")]
    pub forward_guard: Switch,

    /// Unix socket through which a new agent takes over from the running one (upgrades with
    /// no gap); `off` disables it.
    #[arg(
        long,
        env = "IAMLET_HANDOVER_SOCKET",
        default_value = "/run/iamlet/handover.sock"
    )]
    pub handover_socket: PathBuf,

    /// How long in-flight requests may take to finish after SIGTERM/SIGINT.
    #[arg(long, env = "IAMLET_SHUTDOWN_GRACE", default_value = "5s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Log format.
    #[arg(long, env = "IAMLET_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `iamlet=debug`.
    #[arg(long, env = "IAMLET_LOG", default_value = "info")]
    pub log: String,

    /// Standalone role bindings (YAML: cgroup globs relative to the attached cgroup → role).
    #[arg(long, env = "IAMLET_BINDINGS")]
    pub bindings: Option<PathBuf>,

    /// Fixed credentials per role ARN (YAML), for development and tests.
    #[arg(long, env = "IAMLET_STATIC_CREDENTIALS")]
    pub static_credentials: Option<PathBuf>,

    /// Prefix that turns a bare role name into an ARN, e.g. `arn:aws:iam::123456789012:role/`.
    #[arg(long, env = "IAMLET_BASE_ROLE_ARN")]
    pub base_role_arn: Option<String>,

    /// Refuse tokenless (IMDSv1) requests with 401.
    #[arg(long, env = "IAMLET_REQUIRE_IMDSV2")]
    pub require_imdsv2: bool,

    /// The real metadata service, for allowed non-credential paths; `off` disables passthrough.
    #[arg(
        long,
        env = "IAMLET_UPSTREAM",
        default_value = "http://169.254.169.254"
    )]
    pub upstream: String,

    /// Bound on each upstream request.
    #[arg(long, env = "IAMLET_UPSTREAM_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub upstream_timeout: Duration,

    /// Regex (anchored, matched against the path below the version, e.g.
    /// `meta-data/placement/region`) of paths forwarded upstream; repeat for more. Replaces the
    /// default list (instance identity basics). Credential paths are never forwarded.
    #[arg(long = "allow-path", value_name = "REGEX")]
    pub allow_paths: Vec<String>,

    /// Forward `user-data` to pods. Off by default (user data often carries bootstrap
    /// secrets); no --allow-path pattern ever matches it.
    #[arg(long, env = "IAMLET_ALLOW_USER_DATA")]
    pub allow_user_data: bool,

    /// Requests per second each pod may make (0: unlimited).
    #[arg(long, env = "IAMLET_RATE_LIMIT", default_value_t = 50.0)]
    pub rate_limit: f64,

    /// Burst of requests each pod may make above its rate.
    #[arg(long, env = "IAMLET_RATE_BURST", default_value_t = 100.0)]
    pub rate_burst: f64,

    /// Longest a credentials request waits for credentials before failing with an error the
    /// SDK can report.
    #[arg(long, env = "IAMLET_CREDENTIALS_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub credentials_timeout: Duration,

    /// AWS region whose regional STS endpoint is used. Default: `AWS_REGION` / the profile / the
    /// instance's placement from the metadata service.
    #[arg(long, env = "IAMLET_REGION")]
    pub region: Option<String>,

    /// STS endpoint override, e.g. `https://sts.amazonaws.com` to use the global endpoint.
    #[arg(long, env = "IAMLET_STS_ENDPOINT")]
    pub sts_endpoint: Option<String>,

    /// DurationSeconds of each role session (role chaining caps it at 1 h).
    #[arg(long, env = "IAMLET_SESSION_DURATION", default_value = "1h", value_parser = parse_duration)]
    pub session_duration: Duration,

    /// Tag each role session with where it is used (cgroup or namespace/pod/service account,
    /// and node). The role's trust policy must allow sts:TagSession.
    #[arg(long, env = "IAMLET_SESSION_TAGS")]
    pub session_tags: bool,

    /// This node's name, for session tags.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,

    /// Refresh credentials in the background once less than this fraction of their lifetime
    /// is left; the old ones are served until then.
    #[arg(long, env = "IAMLET_REFRESH_FRACTION", default_value_t = 0.5)]
    pub refresh_fraction: f64,

    /// AssumeRole calls in flight at once (prefetch and refresh).
    #[arg(long, env = "IAMLET_STS_CONCURRENCY", default_value_t = 8)]
    pub sts_concurrency: usize,

    /// Bound on one AssumeRole attempt (the SDK retries up to --sts-max-attempts).
    #[arg(long, env = "IAMLET_STS_ATTEMPT_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub sts_attempt_timeout: Duration,

    /// Attempts per AssumeRole call, with backoff and jitter.
    #[arg(long, env = "IAMLET_STS_MAX_ATTEMPTS", default_value_t = 3)]
    pub sts_max_attempts: u32,

    /// Longest wait before AssumeRole is retried after failures (the wait starts at 1 s and
    /// doubles, with jitter). Meanwhile requests without valid credentials fail at once.
    #[arg(long, env = "IAMLET_STS_BACKOFF_MAX", default_value = "60s", value_parser = parse_duration)]
    pub sts_backoff_max: Duration,

    /// Do not fetch credentials when a bound cgroup or pod appears; only when it asks.
    #[arg(long, env = "IAMLET_NO_PREFETCH")]
    pub no_prefetch: bool,

    /// Credentials no pod uses any more are dropped after this long.
    #[arg(long, env = "IAMLET_UNUSED_GRACE", default_value = "15m", value_parser = parse_duration)]
    pub unused_grace: Duration,

    /// Kubeconfig for the pod watch. Default: in-cluster (the service account token) when
    /// running in a pod; no Kubernetes otherwise. Ignored with --bindings.
    #[arg(long, env = "IAMLET_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Which namespace annotation permits a pod's role: kiam's `iam.amazonaws.com/permitted`
    /// regex, kube2iam's `iam.amazonaws.com/allowed-roles` globs, either, or off.
    #[arg(
        long,
        env = "IAMLET_NAMESPACE_POLICY",
        value_enum,
        default_value = "kiam"
    )]
    pub namespace_policy: crate::role::kubernetes::policy::NamespacePolicy,

    /// Honour the service account annotation `eks.amazonaws.com/role-arn` (IRSA pods already
    /// get web identity, so this is opt-in).
    #[arg(long, env = "IAMLET_SERVICE_ACCOUNT_ROLES")]
    pub service_account_roles: bool,

    /// Role for pods that name none (off by default).
    #[arg(long, env = "IAMLET_DEFAULT_ROLE")]
    pub default_role: Option<String>,

    /// How long a request from a pod the watch has not delivered yet waits for it.
    #[arg(long, env = "IAMLET_POD_WAIT", default_value = "3s", value_parser = parse_duration)]
    pub pod_wait: Duration,

    /// Connections the proxy holds at once, over all pods (served and waiting); beyond it, a
    /// new connection is closed at once.
    #[arg(long, env = "IAMLET_MAX_CONNECTIONS", default_value_t = 16384)]
    pub max_connections: usize,

    /// Connections one pod is served on at once. More wait their turn (accepted, nothing
    /// read, no buffers) until one of the pod's connections closes, up to
    /// --max-waiting-per-pod; beyond that a new connection of that pod is closed at once.
    /// Other pods are never held up by it.
    #[arg(long, env = "IAMLET_MAX_CONNECTIONS_PER_POD", default_value_t = 64)]
    pub max_connections_per_pod: usize,

    /// Connections one pod may have waiting for their turn (see --max-connections-per-pod),
    /// each for at most --header-timeout.
    #[arg(long, env = "IAMLET_MAX_WAITING_PER_POD", default_value_t = 1024)]
    pub max_waiting_per_pod: usize,

    /// Threads the proxy serves on; `0`: one per CPU the agent may use (its CPU affinity and
    /// its cgroup's CPU quota), at most 4. Each connection stays on the thread it is given.
    /// `1` suits nodes whose pods keep all CPUs but one busy: under load, more serving
    /// threads there wait for each other's CPU.
    #[arg(long, env = "IAMLET_PROXY_THREADS", default_value_t = 0)]
    pub proxy_threads: usize,

    /// How long a proxy thread keeps polling its connections after a response before it
    /// sleeps, e.g. `50us` (at most 1ms; `0`, the default, turns it off). A client's next
    /// request within it is read without a trip through the scheduler. Only on a CPU no
    /// other thread wants: once one does, the thread sleeps between requests for a while, as
    /// with `0`. Not for nodes whose vCPUs are shared with other guests or metered
    /// (burstable instances): there the spinning is paid for.
    #[arg(long, env = "IAMLET_PROXY_BUSY_POLL", default_value = "0", value_parser = parse_duration)]
    pub proxy_busy_poll: Duration,

    /// Time a client has to send a request's headers; also closes idle keep-alive connections.
    #[arg(long, env = "IAMLET_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "no listener: set --listen-v4 (IAMLET_LISTEN_V4) and/or --listen-v6 (IAMLET_LISTEN_V6)"
    )]
    NoListener,
    #[error("--listen-v4 {addr}: {reason}")]
    ListenV4 {
        addr: SocketAddrV4,
        reason: &'static str,
    },
    #[error("--listen-v6 {addr}: {reason}")]
    ListenV6 {
        addr: SocketAddrV6,
        reason: &'static str,
    },
    #[error("--bpffs-dir {}: must be an absolute path below a bpffs mount", path.display())]
    BpffsDir { path: PathBuf },
    #[error("--handover-socket {}: must be an absolute path, or off", path.display())]
    HandoverSocket { path: PathBuf },
    #[error("--log {filter:?}: {reason}")]
    LogFilter { filter: String, reason: String },
    #[error("--upstream {value:?}: {reason}")]
    Upstream { value: String, reason: String },
    #[error("--allow-path: {0}")]
    AllowPath(#[source] regex::Error),
    #[error("--base-role-arn {value:?}: must look like arn:aws:iam::123456789012:role/")]
    BaseRoleArn { value: String },
    #[error("--sts-endpoint {value:?}: must be an http(s):// URL")]
    StsEndpoint { value: String },
    #[error("--{flag} {value}: {reason}")]
    Limit {
        flag: &'static str,
        value: String,
        reason: String,
    },
}

pub(crate) use limits::parse_duration;
pub(crate) use load::load_bindings;
pub use load::LoadError;
pub use model::{Config, Plan};
pub(crate) use model::{CredentialsConfig, NodeAccountBindings, RoleSource, StsConfig};

mod limits;
mod load;
mod model;
#[cfg(test)]
mod tests;
mod validate;

//! Command-line flags and `IAMLET_*` environment variables, parsed and validated once.
//!
//! `main` exits with status 64 (EX_USAGE) when [`Args::validate`] fails.

use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::path::PathBuf;
use std::time::Duration;

use std::sync::Arc;

use clap::Parser;
use hyper::Uri;

use crate::caller::cgroup;
use crate::credentials::static_file::{self, StaticCredentials};
use crate::credentials::sts_cache::StsCacheSettings;
use crate::imds::paths::{AllowList, DEFAULT_ALLOW};
use crate::imds::ImdsSettings;
use crate::role;
use crate::role::bindings::{self, StaticBindings};

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
#[command(name = "iamlet", version, about)]
pub struct Args {
    /// Cgroup to attach to, absolute or relative to the cgroup2 mount. Default: the kubelet's
    /// pods cgroup (kubepods.slice or kubepods). The root cgroup is refused.
    #[arg(long, env = "IAMLET_CGROUP")]
    pub cgroup: Option<PathBuf>,

    /// IPv4 address:port of the metadata proxy; pods' connects to 169.254.169.254:80 are
    /// rewritten to it, so it must be reachable from pods (the node's host IP).
    #[arg(long, env = "IAMLET_LISTEN_V4")]
    pub listen_v4: Option<SocketAddrV4>,

    /// IPv6 [address]:port of the metadata proxy for connects to [fd00:ec2::254]:80. Without
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
    /// address, so a pod cannot reach it below IP (an AF_PACKET socket) either. `off` leaves
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

    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `iamlet=debug`.
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

    /// AWS region whose regional STS endpoint is used. Default: AWS_REGION / the profile / the
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
    #[error(transparent)]
    Cgroup(#[from] cgroup::Error),
    #[error("--upstream {value:?}: {reason}")]
    Upstream { value: String, reason: String },
    #[error("--allow-path: {0}")]
    AllowPath(#[source] regex::Error),
    #[error("--base-role-arn {value:?}: must look like arn:aws:iam::123456789012:role/")]
    BaseRoleArn { value: String },
    #[error("bindings file {} names roles by bare name: set --base-role-arn, or leave --upstream on so the node's account is detected", path.display())]
    NeedsBaseArn { path: PathBuf },
    #[error("--{flag} {value}: {reason}")]
    Limit {
        flag: &'static str,
        value: String,
        reason: String,
    },
    #[error(transparent)]
    Bindings(#[from] bindings::ConfigError),
    #[error(transparent)]
    StaticCredentials(#[from] static_file::ConfigError),
}

impl Args {
    /// Checks everything that can be checked before touching the kernel.
    pub fn validate(&self) -> Result<Config, Error> {
        if self.listen_v4.is_none() && self.listen_v6.is_none() {
            return Err(Error::NoListener);
        }
        if let Some(addr) = self.listen_v4 {
            if addr.ip().is_unspecified() {
                return Err(Error::ListenV4 {
                    addr,
                    reason: "must be a concrete address pods can reach, not 0.0.0.0",
                });
            }
            if addr.port() == 0 {
                return Err(Error::ListenV4 {
                    addr,
                    reason: "port 0 is not allowed",
                });
            }
            if *addr.ip() == std::net::Ipv4Addr::new(169, 254, 169, 254) {
                return Err(Error::ListenV4 {
                    addr,
                    reason: "must not be the metadata service address itself",
                });
            }
        }
        if let Some(addr) = self.listen_v6 {
            if addr.ip().is_unspecified() || addr.port() == 0 {
                return Err(Error::ListenV6 {
                    addr,
                    reason: "must be a concrete address and port pods can reach",
                });
            }
        }
        // Pure checks first: a bad number is reported before anything is read from the system.
        self.check_limits()?;
        if !self.bpffs_dir.is_absolute() || self.bpffs_dir.parent().is_none() {
            return Err(Error::BpffsDir {
                path: self.bpffs_dir.clone(),
            });
        }
        let handover_socket = match &self.handover_socket {
            p if p.as_os_str() == "off" => None,
            p if p.is_absolute() && p.file_name().is_some() => Some(p.clone()),
            p => return Err(Error::HandoverSocket { path: p.clone() }),
        };
        if let Err(e) = self.log.parse::<tracing_subscriber::EnvFilter>() {
            return Err(Error::LogFilter {
                filter: self.log.clone(),
                reason: e.to_string(),
            });
        }
        let cgroup_root = cgroup::cgroup2_mount()?;
        let cgroup = match &self.cgroup {
            Some(path) => cgroup::validate_attach_cgroup(&cgroup_root, path)?,
            None => {
                let found = cgroup::autodetect_pods_cgroup(&cgroup_root)?;
                cgroup::validate_attach_cgroup(&cgroup_root, &found)?
            }
        };
        let upstream = self.upstream_uri()?;
        let allow = if self.allow_paths.is_empty() {
            AllowList::new(DEFAULT_ALLOW)
        } else {
            AllowList::new(&self.allow_paths)
        }
        .map_err(Error::AllowPath)?
        .with_user_data(self.allow_user_data);
        if let Some(base) = &self.base_role_arn {
            let probe = format!("{}{}x", base, if base.ends_with('/') { "" } else { "/" });
            if role::validate_role_arn(&probe).is_err() {
                return Err(Error::BaseRoleArn {
                    value: base.clone(),
                });
            }
        }
        let attached_rel = cgroup
            .strip_prefix(&cgroup_root)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        // Bare role names without --base-role-arn: the base is the node's own account, read
        // from the metadata service at start-up (app.rs).
        let (bindings, deferred_bindings) = match &self.bindings {
            Some(path) if self.base_role_arn.is_none() && StaticBindings::has_bare_roles(path)? => {
                if self.upstream == "off" {
                    return Err(Error::NeedsBaseArn { path: path.clone() });
                }
                (None, Some(path.clone()))
            }
            Some(path) => (
                Some(Arc::new(load_bindings(
                    path,
                    &attached_rel,
                    self.base_role_arn.as_deref(),
                    self.session_tags.then(|| self.node()).as_deref(),
                )?)),
                None,
            ),
            None => (None, None),
        };
        if let Some(ep) = &self.sts_endpoint {
            let ok = ep.parse::<Uri>().is_ok_and(|u| {
                matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()
            });
            if !ok {
                return Err(Error::Limit {
                    flag: "sts-endpoint",
                    value: ep.clone(),
                    reason: "must be an http(s):// URL".into(),
                });
            }
        }
        let static_credentials = match &self.static_credentials {
            Some(path) => Some(Arc::new(StaticCredentials::load(path)?)),
            None => None,
        };
        Ok(Config {
            imds: ImdsSettings {
                require_imdsv2: self.require_imdsv2,
                allow,
                rate_limit: self.rate_limit,
                rate_burst: self.rate_burst,
                credentials_timeout: self.credentials_timeout,
            },
            upstream,
            upstream_timeout: self.upstream_timeout,
            bindings,
            deferred_bindings,
            attached_relative: attached_rel,
            session_tags_node: self.session_tags.then(|| self.node()),
            kubernetes: self.kubernetes()?,
            static_credentials,
            max_connections: self.max_connections,
            max_connections_per_pod: self.max_connections_per_pod,
            max_waiting_per_pod: self.max_waiting_per_pod,
            header_timeout: self.header_timeout,
            sts: StsConfig {
                region: self.region.clone(),
                endpoint: self.sts_endpoint.clone(),
                session_duration: self.session_duration,
                attempt_timeout: self.sts_attempt_timeout,
                max_attempts: self.sts_max_attempts,
                sts_cache: StsCacheSettings {
                    refresh_fraction: self.refresh_fraction,
                    grace: self.unused_grace,
                    max_concurrency: self.sts_concurrency,
                    // Never serve credentials with less than 5 min (or a fifth of a short
                    // session) left.
                    min_remaining: Duration::from_secs(300).min(self.session_duration / 5),
                    retry_base: Duration::from_secs(1).min(self.sts_backoff_max),
                    retry_max: self.sts_backoff_max,
                    prefetch: !self.no_prefetch,
                    ..StsCacheSettings::default()
                },
            },
            cgroup_root,
            cgroup,
            listen_v4: self.listen_v4,
            listen_v6: self.listen_v6,
            admin_listen: self.admin_listen,
            bpffs_dir: self.bpffs_dir.clone(),
            on_exit: self.on_exit,
            forward_guard: self.forward_guard == Switch::On,
            handover_socket,
            shutdown_grace: self.shutdown_grace,
        })
    }
}

impl Args {
    fn kubernetes(&self) -> Result<Option<KubeConfig>, Error> {
        if self.bindings.is_some() {
            return Ok(None);
        }
        let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
        if self.kubeconfig.is_none() && !in_cluster {
            return Ok(None);
        }
        if let Some(path) = &self.kubeconfig {
            if !path.is_file() {
                return Err(Error::Limit {
                    flag: "kubeconfig",
                    value: path.display().to_string(),
                    reason: "no such file".into(),
                });
            }
        }
        let Some(node) = self.node_name.clone() else {
            return Err(Error::Limit {
                flag: "node-name",
                value: "(unset)".into(),
                reason: "the pod watch needs this node's name (NODE_NAME from the downward API)"
                    .into(),
            });
        };
        Ok(Some(KubeConfig {
            kubeconfig: self.kubeconfig.clone(),
            node,
            namespace_policy: self.namespace_policy,
            service_account_roles: self.service_account_roles,
            default_role: self.default_role.clone(),
            pod_wait: self.pod_wait,
            session_tags: self.session_tags,
            base_role_arn: self.base_role_arn.clone(),
        }))
    }

    /// This node's name: `--node-name`, else the host name.
    pub fn node(&self) -> String {
        self.node_name.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "unknown".to_owned())
        })
    }

    fn upstream_uri(&self) -> Result<Option<Uri>, Error> {
        if self.upstream == "off" {
            return Ok(None);
        }
        let err = |reason: String| Error::Upstream {
            value: self.upstream.clone(),
            reason,
        };
        let uri: Uri = self.upstream.parse().map_err(|e| err(format!("{e}")))?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(err(
                "must be an http:// URL like http://169.254.169.254, or off".into(),
            ));
        }
        if uri.path() != "/" && !uri.path().is_empty() {
            return Err(err("must not have a path".into()));
        }
        Ok(Some(uri))
    }
}

/// Loads a bindings file with the given base ARN, with session tags naming `tag_node` if set.
pub(crate) fn load_bindings(
    path: &std::path::Path,
    attached_rel: &str,
    base: Option<&str>,
    tag_node: Option<&str>,
) -> Result<StaticBindings, bindings::ConfigError> {
    let b = StaticBindings::load(path, attached_rel, base)?;
    Ok(match tag_node {
        Some(node) => b.with_session_tags(node),
        None => b,
    })
}

pub(crate) use limits::parse_duration;
pub use model::Config;
pub(crate) use model::{KubeConfig, StsConfig};

mod limits;
mod model;
#[cfg(test)]
mod tests;

//! What doctor checks against: its own flags (the agent's flag names, environment variables
//! and defaults), and, for what they leave out, the flags of the agent running on this node
//! (read from its command line), so that `kubectl exec ... -- iamlet doctor` checks what the
//! agent really uses.

use std::net::{SocketAddrV4, SocketAddrV6};
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{parse_duration, Args, Switch};

/// The agent's default `--bpffs-dir` (see [`Args`]).
pub(crate) const DEFAULT_BPFFS_DIR: &str = "/sys/fs/bpf/iamlet";
/// The agent's default `--admin-listen` (see [`Args`]).
pub(crate) const DEFAULT_ADMIN: &str = "127.0.0.1:9809";
/// Set by Kubernetes in every container: the agent runs in a cluster (as in `config::load`).
const IN_CLUSTER_ENV: &str = "KUBERNETES_SERVICE_HOST";

/// The flags doctor shares with the agent (same names and environment variables). Unset
/// ones are taken from the running agent's command line, else the agent's defaults.
#[derive(Clone, Debug, Default, clap::Args)]
pub(crate) struct Flags {
    /// The pods cgroup (the agent's --cgroup). Default: the agent's, else the kubelet's.
    #[arg(long, env = "IAMLET_CGROUP")]
    pub(crate) cgroup: Option<PathBuf>,
    /// The agent's pin directory. Default: /sys/fs/bpf/iamlet.
    #[arg(long, env = "IAMLET_BPFFS_DIR")]
    pub(crate) bpffs_dir: Option<PathBuf>,
    /// The agent's IPv4 metadata listener (ADDRESS:PORT).
    #[arg(long, env = "IAMLET_LISTEN_V4")]
    pub(crate) listen_v4: Option<SocketAddrV4>,
    /// The agent's IPv6 metadata listener (`[ADDRESS]:PORT`).
    #[arg(long, env = "IAMLET_LISTEN_V6")]
    pub(crate) listen_v6: Option<SocketAddrV6>,
    /// The agent's admin server (its --admin-listen). Default: 127.0.0.1:9809.
    #[arg(long, visible_alias = "admin-listen", env = "IAMLET_ADMIN_LISTEN")]
    pub(crate) admin: Option<String>,
    /// Whether the agent keeps the node's forwarding guard (on/off).
    #[arg(long, env = "IAMLET_FORWARD_GUARD", value_enum)]
    pub(crate) forward_guard: Option<Switch>,
    /// The agent's standalone bindings file (standalone mode).
    #[arg(long, env = "IAMLET_BINDINGS")]
    pub(crate) bindings: Option<PathBuf>,
    /// The agent's static credentials file (then STS is not used).
    #[arg(long, env = "IAMLET_STATIC_CREDENTIALS")]
    pub(crate) static_credentials: Option<PathBuf>,
    /// The region of the STS endpoint. Default: the agent's, else the AWS SDK's chain.
    #[arg(long, env = "IAMLET_REGION")]
    pub(crate) region: Option<String>,
    /// The STS endpoint. Default: the agent's, else `https://sts.REGION.amazonaws.com`.
    #[arg(long, env = "IAMLET_STS_ENDPOINT", value_parser = parse_endpoint)]
    pub(crate) sts_endpoint: Option<String>,
    /// Kubeconfig of the agent's pod watch. Default: the agent's, else in-cluster in a pod.
    #[arg(long, env = "IAMLET_KUBECONFIG")]
    pub(crate) kubeconfig: Option<PathBuf>,
    /// This node's name, for Kubernetes mode.
    #[arg(long, env = "NODE_NAME")]
    pub(crate) node_name: Option<String>,
    /// Bound on each network check (100ms..30s).
    #[arg(long, default_value = "2s", value_parser = parse_timeout)]
    pub(crate) timeout: Duration,
    /// Do not read the running agent's flags; check only what is given here (and defaults).
    #[arg(long)]
    #[allow(
        clippy::struct_field_names,
        reason = "the field is the flag --ignore-agent-flags"
    )]
    pub(crate) ignore_agent_flags: bool,
}

/// Where pods' roles come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Roles {
    /// Standalone bindings.
    Bindings(PathBuf),
    /// The Kubernetes pod watch: a kubeconfig, or in-cluster; this node's name.
    Kubernetes {
        /// `--kubeconfig`; `None`: in-cluster.
        kubeconfig: Option<PathBuf>,
        /// `--node-name`.
        node: Option<String>,
    },
    /// Neither: no pod gets a role.
    Nothing,
}

/// Where credentials come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Credentials {
    /// A static credentials file.
    Static(PathBuf),
    /// AssumeRole through STS.
    Sts {
        /// `--region`, if known.
        region: Option<String>,
        /// `--sts-endpoint`, if given.
        endpoint: Option<String>,
    },
}

/// What doctor checks against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Settings {
    /// `--cgroup`; `None`: the kubelet's, found as the agent finds it.
    pub(crate) cgroup: Option<PathBuf>,
    /// The pin directory.
    pub(crate) bpffs_dir: PathBuf,
    /// The IPv4 listener.
    pub(crate) listen_v4: Option<SocketAddrV4>,
    /// The IPv6 listener.
    pub(crate) listen_v6: Option<SocketAddrV6>,
    /// The admin server, `HOST:PORT`.
    pub(crate) admin: String,
    /// The forwarding guard is on.
    pub(crate) forward_guard: bool,
    /// Where roles come from.
    pub(crate) roles: Roles,
    /// Where credentials come from.
    pub(crate) credentials: Credentials,
    /// Bound on each network check.
    pub(crate) timeout: Duration,
}

impl Flags {
    /// The pin directory to look for the agent at: `--bpffs-dir`, else the default.
    pub(crate) fn pin_dir(&self) -> PathBuf {
        self.bpffs_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_BPFFS_DIR))
    }
}

impl Settings {
    /// Doctor's flags, completed by the agent's (`agent`) and the agent's defaults;
    /// `in_cluster`: this runs in a Kubernetes pod.
    pub(crate) fn resolve(flags: &Flags, agent: Option<&Args>, in_cluster: bool) -> Settings {
        let bindings = flags
            .bindings
            .clone()
            .or_else(|| agent.and_then(|a: &Args| a.bindings.clone()));
        let kubeconfig = flags
            .kubeconfig
            .clone()
            .or_else(|| agent.and_then(|a: &Args| a.kubeconfig.clone()));
        let roles = match bindings {
            Some(path) => Roles::Bindings(path),
            None if kubeconfig.is_some() || in_cluster => Roles::Kubernetes {
                kubeconfig,
                node: flags
                    .node_name
                    .clone()
                    .or_else(|| agent.and_then(|a: &Args| a.node_name.clone())),
            },
            None => Roles::Nothing,
        };
        let credentials = match flags
            .static_credentials
            .clone()
            .or_else(|| agent.and_then(|a: &Args| a.static_credentials.clone()))
        {
            Some(path) => Credentials::Static(path),
            None => Credentials::Sts {
                region: flags
                    .region
                    .clone()
                    .or_else(|| agent.and_then(|a: &Args| a.region.clone())),
                endpoint: flags
                    .sts_endpoint
                    .clone()
                    .or_else(|| agent.and_then(|a: &Args| a.sts_endpoint.clone())),
            },
        };
        Settings {
            cgroup: flags
                .cgroup
                .clone()
                .or_else(|| agent.and_then(|a: &Args| a.cgroup.clone())),
            bpffs_dir: flags
                .bpffs_dir
                .clone()
                .or_else(|| agent.map(|a: &Args| a.bpffs_dir.clone()))
                .unwrap_or_else(|| PathBuf::from(DEFAULT_BPFFS_DIR)),
            listen_v4: flags
                .listen_v4
                .or_else(|| agent.and_then(|a: &Args| a.listen_v4)),
            listen_v6: flags
                .listen_v6
                .or_else(|| agent.and_then(|a: &Args| a.listen_v6)),
            admin: flags
                .admin
                .clone()
                .or_else(|| agent.map(|a: &Args| a.admin_listen.to_string()))
                .unwrap_or_else(|| DEFAULT_ADMIN.to_owned()),
            forward_guard: flags
                .forward_guard
                .or_else(|| agent.map(|a: &Args| a.forward_guard))
                .is_none_or(|s| s == Switch::On),
            roles,
            credentials,
            timeout: flags.timeout,
        }
    }

    /// Whether this runs in a Kubernetes pod.
    pub(crate) fn in_cluster() -> bool {
        std::env::var_os(IN_CLUSTER_ENV).is_some()
    }
}

/// `--timeout`: a duration from 100 ms to 30 s.
fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(100) || d > Duration::from_secs(30) {
        return Err(format!("{s:?} is outside 100ms..30s"));
    }
    Ok(d)
}

/// `--sts-endpoint`: an `http(s)://` URL with a host (as the agent requires).
fn parse_endpoint(s: &str) -> Result<String, String> {
    let ok = s
        .parse::<hyper::Uri>()
        .is_ok_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some());
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!("{s:?} is not an http(s):// URL"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn the_defaults_are_the_agents() {
        let args = Args::try_parse_from(["iamlet"]).expect("defaults parse");
        assert_eq!(args.bpffs_dir, PathBuf::from(DEFAULT_BPFFS_DIR));
        assert_eq!(args.admin_listen.to_string(), DEFAULT_ADMIN);
    }

    #[test]
    fn given_flags_win_over_the_agents_and_the_agents_over_defaults() {
        let agent = Args::try_parse_from([
            "iamlet",
            "--listen-v4",
            "10.0.0.5:8181",
            "--admin-listen",
            "10.0.0.5:9809",
            "--cgroup",
            "kubepods.slice",
            "--kubeconfig",
            "/etc/kc",
            "--node-name",
            "node-a",
            "--region",
            "eu-west-1",
            "--forward-guard",
            "off",
        ])
        .expect("agent flags");
        let flags = Flags {
            cgroup: Some(PathBuf::from("other.slice")),
            timeout: Duration::from_secs(2),
            ..Flags::default()
        };
        let s = Settings::resolve(&flags, Some(&agent), false);
        assert_eq!(s.cgroup, Some(PathBuf::from("other.slice")));
        assert_eq!(
            s.listen_v4.map(|a| a.to_string()).as_deref(),
            Some("10.0.0.5:8181")
        );
        assert_eq!(s.admin, "10.0.0.5:9809");
        assert!(!s.forward_guard);
        assert_eq!(
            s.roles,
            Roles::Kubernetes {
                kubeconfig: Some(PathBuf::from("/etc/kc")),
                node: Some("node-a".to_owned())
            }
        );
        assert_eq!(
            s.credentials,
            Credentials::Sts {
                region: Some("eu-west-1".to_owned()),
                endpoint: None
            }
        );
        let alone = Settings::resolve(&flags, None, false);
        assert_eq!(alone.admin, DEFAULT_ADMIN);
        assert_eq!(alone.bpffs_dir, PathBuf::from(DEFAULT_BPFFS_DIR));
        assert!(alone.forward_guard);
        assert_eq!(alone.roles, Roles::Nothing);
        let in_pod = Settings::resolve(&flags, None, true);
        assert_eq!(
            in_pod.roles,
            Roles::Kubernetes {
                kubeconfig: None,
                node: None
            }
        );
        let standalone = Flags {
            bindings: Some(PathBuf::from("/b.yaml")),
            static_credentials: Some(PathBuf::from("/c.yaml")),
            ..flags
        };
        let s = Settings::resolve(&standalone, Some(&agent), true);
        assert_eq!(s.roles, Roles::Bindings(PathBuf::from("/b.yaml")));
        assert_eq!(s.credentials, Credentials::Static(PathBuf::from("/c.yaml")));
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(parse_timeout("50ms").is_err());
        assert!(parse_timeout("1m").is_err());
        assert_eq!(parse_timeout("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_endpoint("sts.amazonaws.com").is_err());
        assert!(parse_endpoint("https://sts.amazonaws.com").is_ok());
    }
}

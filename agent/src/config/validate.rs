//! [`Args::validate`]: every check the flags allow without reading the system, into a
//! [`Plan`]. Nothing here touches the file system or the environment (beyond what clap read).

use std::time::Duration;

use hyper::Uri;

use super::model::{KubeFlags, Plan, Runtime, StsConfig};
use super::{Args, Error, Switch};
use crate::credentials::sts_cache::StsCacheSettings;
use crate::imds::paths::{AllowList, DEFAULT_ALLOW};
use crate::imds::ImdsSettings;
use crate::role;

impl Args {
    /// Checks the flags, in order: listeners, numbers, paths, filters, URLs, ARNs. Reads
    /// nothing; [`Plan::load`] does.
    pub fn validate(&self) -> Result<Plan, Error> {
        self.check_listeners()?;
        // Numbers first: a bad number is reported before anything else.
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
        if let Some(ep) = &self.sts_endpoint {
            let ok = ep.parse::<Uri>().is_ok_and(|u| {
                matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()
            });
            if !ok {
                return Err(Error::StsEndpoint { value: ep.clone() });
            }
        }
        Ok(Plan {
            runtime: Runtime {
                listen_v4: self.listen_v4,
                listen_v6: self.listen_v6,
                admin_listen: self.admin_listen,
                bpffs_dir: self.bpffs_dir.clone(),
                on_exit: self.on_exit,
                forward_guard: self.forward_guard == Switch::On,
                handover_socket,
                shutdown_grace: self.shutdown_grace,
                imds: ImdsSettings {
                    require_imdsv2: self.require_imdsv2,
                    allow,
                    rate_limit: self.rate_limit,
                    rate_burst: self.rate_burst,
                    credentials_timeout: self.credentials_timeout,
                },
                upstream,
                upstream_timeout: self.upstream_timeout,
                max_connections: self.max_connections,
                max_connections_per_pod: self.max_connections_per_pod,
                max_waiting_per_pod: self.max_waiting_per_pod,
                header_timeout: self.header_timeout,
                proxy_threads: std::num::NonZeroUsize::new(self.proxy_threads),
                proxy_busy_poll: (!self.proxy_busy_poll.is_zero()).then_some(self.proxy_busy_poll),
            },
            cgroup: self.cgroup.clone(),
            bindings: self.bindings.clone(),
            static_credentials: self.static_credentials.clone(),
            base_role_arn: self.base_role_arn.clone(),
            node_name: self.node_name.clone(),
            session_tags: self.session_tags,
            kubernetes: KubeFlags {
                kubeconfig: self.kubeconfig.clone(),
                namespace_policy: self.namespace_policy,
                service_account_roles: self.service_account_roles,
                default_role: self.default_role.clone(),
                pod_wait: self.pod_wait,
            },
            sts: self.sts_config(),
        })
    }

    fn check_listeners(&self) -> Result<(), Error> {
        if self.listen_v4.is_none() && self.listen_v6.is_none() {
            return Err(Error::NoListener);
        }
        if let Some(addr) = self.listen_v4 {
            let reason = if addr.ip().is_unspecified() {
                Some("must be a concrete address pods can reach, not 0.0.0.0")
            } else if addr.port() == 0 {
                Some("port 0 is not allowed")
            } else if *addr.ip() == std::net::Ipv4Addr::new(169, 254, 169, 254) {
                Some("must not be the metadata service address itself")
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(Error::ListenV4 { addr, reason });
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
        Ok(())
    }

    fn sts_config(&self) -> StsConfig {
        StsConfig {
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
        }
    }

    pub(super) fn upstream_uri(&self) -> Result<Option<Uri>, Error> {
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

//! [`Plan::load`]: the one step that reads what the flags name — the cgroup2 mount and the
//! attach cgroup, the bindings and static credentials files, whether this runs in a
//! Kubernetes cluster, the host name — and decides the run mode.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::model::{Config, CredentialsConfig, KubeConfig, NodeAccountBindings, Plan, RoleSource};
use crate::caller::cgroup;
use crate::credentials::static_file::{self, StaticCredentials};
use crate::role::bindings::{self, StaticBindings};

/// What reading the configuration's files and the system found wrong; each names its flag.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The cgroup2 mount or the `--cgroup` directory could not be found or used.
    #[error("--cgroup: {0}")]
    Cgroup(#[source] cgroup::Error),
    /// The `--bindings` file could not be read or is invalid.
    #[error("--bindings: {0}")]
    Bindings(#[source] bindings::ConfigError),
    /// The `--bindings` file names bare roles and nothing can supply the account.
    #[error("--bindings {}: names roles by bare name: set --base-role-arn, or leave --upstream on so the node's account is detected", path.display())]
    NeedsBaseArn {
        /// The bindings file.
        path: PathBuf,
    },
    /// The `--static-credentials` file could not be read or is invalid.
    #[error("--static-credentials: {0}")]
    StaticCredentials(#[source] static_file::ConfigError),
    /// The `--kubeconfig` file does not exist.
    #[error("--kubeconfig {}: no such file", path.display())]
    Kubeconfig {
        /// The kubeconfig asked for.
        path: PathBuf,
    },
    /// Kubernetes mode without `--node-name`.
    #[error("--node-name (unset): the pod watch needs this node's name (NODE_NAME from the downward API)")]
    NodeName,
}

/// Set by Kubernetes in every container: the agent runs in a cluster.
const IN_CLUSTER_ENV: &str = "KUBERNETES_SERVICE_HOST";

impl Plan {
    /// Reads what the plan names and decides the run mode.
    pub fn load(self) -> Result<Config, LoadError> {
        let in_cluster = std::env::var_os(IN_CLUSTER_ENV).is_some();
        self.load_with(in_cluster)
    }

    /// [`Plan::load`], with whether this runs in a cluster given.
    pub(crate) fn load_with(self, in_cluster: bool) -> Result<Config, LoadError> {
        let cgroup_root = cgroup::cgroup2_mount().map_err(LoadError::Cgroup)?;
        let cgroup = match &self.cgroup {
            Some(path) => cgroup::validate_attach_cgroup(&cgroup_root, path),
            None => cgroup::autodetect_pods_cgroup(&cgroup_root)
                .and_then(|found| cgroup::validate_attach_cgroup(&cgroup_root, &found)),
        }
        .map_err(LoadError::Cgroup)?;
        let attached_relative = cgroup
            .strip_prefix(&cgroup_root)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let roles = self.role_source(&attached_relative, in_cluster)?;
        let credentials = match &self.static_credentials {
            Some(path) => CredentialsConfig::Static(Arc::new(
                StaticCredentials::load(path).map_err(LoadError::StaticCredentials)?,
            )),
            None => CredentialsConfig::Sts(self.sts.clone()),
        };
        Ok(Config {
            runtime: self.runtime,
            cgroup_root,
            cgroup,
            roles,
            credentials,
        })
    }

    fn role_source(
        &self,
        attached_relative: &str,
        in_cluster: bool,
    ) -> Result<RoleSource, LoadError> {
        let tag_node = self.session_tags.then(|| self.node());
        if let Some(path) = &self.bindings {
            let bare = StaticBindings::has_bare_roles(path).map_err(LoadError::Bindings)?;
            if bare && self.base_role_arn.is_none() {
                // The base is the node's own account, read from the metadata service at start.
                if self.runtime.upstream.is_none() {
                    return Err(LoadError::NeedsBaseArn { path: path.clone() });
                }
                return Ok(RoleSource::BindingsInNodeAccount(NodeAccountBindings {
                    path: path.clone(),
                    attached_relative: attached_relative.to_owned(),
                    tag_node,
                }));
            }
            let b = load_bindings(
                path,
                attached_relative,
                self.base_role_arn.as_deref(),
                tag_node.as_deref(),
            )
            .map_err(LoadError::Bindings)?;
            return Ok(RoleSource::Bindings(Arc::new(b)));
        }
        let k = &self.kubernetes;
        if k.kubeconfig.is_none() && !in_cluster {
            return Ok(RoleSource::None);
        }
        if let Some(path) = &k.kubeconfig {
            if !path.is_file() {
                return Err(LoadError::Kubeconfig { path: path.clone() });
            }
        }
        let node = self.node_name.clone().ok_or(LoadError::NodeName)?;
        Ok(RoleSource::Kubernetes(KubeConfig {
            kubeconfig: k.kubeconfig.clone(),
            node,
            namespace_policy: k.namespace_policy,
            service_account_roles: k.service_account_roles,
            default_role: k.default_role.clone(),
            pod_wait: k.pod_wait,
            session_tags: self.session_tags,
            base_role_arn: self.base_role_arn.clone(),
        }))
    }

    /// This node's name: `--node-name`, else the host name.
    fn node(&self) -> String {
        self.node_name.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map_or_else(|_| "unknown".to_owned(), |h| h.trim().to_owned())
        })
    }
}

/// Loads a bindings file with the given base ARN, with session tags naming `tag_node` if set.
pub(crate) fn load_bindings(
    path: &Path,
    attached_relative: &str,
    base: Option<&str>,
    tag_node: Option<&str>,
) -> Result<StaticBindings, bindings::ConfigError> {
    let b = StaticBindings::load(path, attached_relative, base)?;
    Ok(match tag_node {
        Some(node) => b.with_session_tags(node),
        None => b,
    })
}

//! Where roles and credentials come from, built from the [`Config`]'s run mode: standalone
//! bindings (with the node's account detected when they name roles by bare name), the
//! Kubernetes watch, the STS cache or static credentials; and the metadata API over them.

use std::sync::Arc;

use super::Error;
use crate::config::{
    load_bindings, Config, CredentialsConfig, NodeAccountBindings, RoleSource, StsConfig,
};
use crate::credentials::sts_cache::StsCache;
use crate::credentials::sts_client::{Sts, StsSettings};
use crate::credentials::{CredentialSource, NoCredentials};
use crate::imds::passthrough::Upstream;
use crate::imds::token::TokenKey;
use crate::imds::Imds;
use crate::role::bindings::StaticBindings;
use crate::role::kubernetes::cluster_state::ClusterState;
use crate::role::kubernetes::pod_index::PodIndex;
use crate::role::kubernetes::policy::PolicySettings;
use crate::role::kubernetes::resolver::KubeRoles;
use crate::role::kubernetes::watch_health::WatchHealth;
use crate::role::{self, RoleResolver};

/// Why the node's account could not be learned from the metadata service.
#[derive(Debug, thiserror::Error)]
pub enum BaseArnError {
    #[error("passthrough is off")]
    NoUpstream,
    #[error("{0}")]
    Upstream(#[source] crate::imds::passthrough::PassthroughError),
    #[error("iam/info answered {0}")]
    Status(hyper::StatusCode),
    #[error("iam/info is not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    #[error("no usable InstanceProfileArn in iam/info: {0}")]
    NoInstanceProfile(serde_json::Value),
}

/// Why the Kubernetes client could not be made.
#[derive(Debug, thiserror::Error)]
pub enum KubeClientError {
    #[error("cannot read kubeconfig {path}: {source}")]
    ReadKubeconfig {
        path: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("in-cluster configuration: {0}")]
    InCluster(#[source] kube::config::InClusterError),
    #[error("{0}")]
    Client(#[source] kube::Error),
}

/// The region for STS: `--region`, else the SDK's chain (`AWS_REGION`, profile, the metadata
/// service's placement).
pub(super) async fn region(sts: &StsConfig) -> Option<String> {
    if let Some(r) = &sts.region {
        return Some(r.clone());
    }
    aws_config::default_provider::region::DefaultRegionChain::builder()
        .build()
        .region()
        .await
        .map(|r| r.to_string())
}

/// The bindings: loaded with the configuration, or, for a file with bare role names and no
/// `--base-role-arn`, now, with the node's own account read from the metadata service's
/// `iam/info`.
pub(super) async fn bindings(config: &Config) -> Result<Option<Arc<StaticBindings>>, Error> {
    match &config.roles {
        RoleSource::Bindings(b) => Ok(Some(b.clone())),
        RoleSource::BindingsInNodeAccount(NodeAccountBindings {
            path,
            attached_relative,
            tag_node,
        }) => {
            let base = detect_base_arn(config).await?;
            let b = load_bindings(path, attached_relative, Some(&base), tag_node.as_deref())?;
            Ok(Some(Arc::new(b)))
        }
        RoleSource::Kubernetes(_) | RoleSource::None => Ok(None),
    }
}

/// `arn:<partition>:iam::<account>:role/` of the node's own account, from the metadata
/// service's `iam/info` (the node's instance profile).
pub(super) async fn detect_base_arn(config: &Config) -> Result<String, Error> {
    let uri = config
        .runtime
        .upstream
        .clone()
        .ok_or(Error::BaseArn(BaseArnError::NoUpstream))?;
    let upstream = Upstream::new(uri, config.runtime.upstream_timeout);
    let answer = upstream
        .get_for_agent("/latest/meta-data/iam/info")
        .await
        .map_err(|e| Error::BaseArn(BaseArnError::Upstream(e)))?;
    if answer.status != 200 {
        return Err(Error::BaseArn(BaseArnError::Status(answer.status)));
    }
    let doc: serde_json::Value = serde_json::from_slice(&answer.body)
        .map_err(|e| Error::BaseArn(BaseArnError::NotJson(e)))?;
    let base = doc["InstanceProfileArn"]
        .as_str()
        .and_then(role::base_arn_from_instance_profile)
        .ok_or_else(|| Error::BaseArn(BaseArnError::NoInstanceProfile(doc.clone())))?;
    tracing::info!(%base, "bare role names are expanded with the node's account");
    Ok(base)
}

/// The Kubernetes role source: the resolver requests use, and the watch to run.
pub(super) struct KubeSource {
    pub(super) roles: Arc<KubeRoles>,
    pub(super) index: Arc<PodIndex>,
    pub(super) client: kube::Client,
    pub(super) state: ClusterState,
    pub(super) node: String,
    /// The watch's health (for the metrics).
    pub(super) health: Arc<WatchHealth>,
}

pub(super) async fn kube_source(config: &Config) -> Result<Option<KubeSource>, Error> {
    let RoleSource::Kubernetes(k) = &config.roles else {
        return Ok(None);
    };
    let kcfg = match &k.kubeconfig {
        Some(path) => {
            let shown = || path.display().to_string();
            let file = kube::config::Kubeconfig::read_from(path).map_err(|source| {
                Error::Kube(KubeClientError::ReadKubeconfig {
                    path: shown(),
                    source,
                })
            })?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|source| {
                    Error::Kube(KubeClientError::Kubeconfig {
                        path: shown(),
                        source,
                    })
                })?
        }
        None => {
            kube::Config::incluster().map_err(|e| Error::Kube(KubeClientError::InCluster(e)))?
        }
    };
    let client =
        kube::Client::try_from(kcfg).map_err(|e| Error::Kube(KubeClientError::Client(e)))?;
    let base_arn = match &k.base_role_arn {
        Some(b) => Some(b.clone()),
        None => match detect_base_arn(config).await {
            Ok(b) => Some(b),
            Err(e) => {
                tracing::warn!(error = %e, "bare role names in annotations will be refused");
                None
            }
        },
    };
    let settings = PolicySettings {
        base_arn,
        use_service_account_annotation: k.service_account_roles,
        default_role: k.default_role.clone(),
        namespace_policy: k.namespace_policy,
        session_tags: k.session_tags,
        node: k.node.clone(),
    };
    let index = Arc::new(PodIndex::new());
    Ok(Some(KubeSource {
        roles: Arc::new(KubeRoles::new(index.clone(), k.pod_wait)),
        index: index.clone(),
        client,
        state: ClusterState::new(settings, index),
        node: k.node.clone(),
        health: Arc::new(WatchHealth::default()),
    }))
}

/// The STS cache, when roles can be served and credentials come from STS.
pub(super) async fn build_sts_cache(
    config: &Config,
    has_roles: bool,
) -> Result<Option<StsCache>, Error> {
    let CredentialsConfig::Sts(sts) = &config.credentials else {
        return Ok(None);
    };
    if !has_roles {
        return Ok(None);
    }
    let region = region(sts).await.ok_or(Error::NoRegion)?;
    let mut settings = StsSettings::new(region.clone(), sts.session_duration);
    settings.endpoint = sts.endpoint.clone();
    settings.attempt_timeout = sts.attempt_timeout;
    settings.read_timeout = sts.attempt_timeout;
    settings.max_attempts = sts.max_attempts;
    tracing::info!(%region, endpoint = ?settings.endpoint, "STS credentials cache");
    let client = Sts::new(settings).await;
    Ok(Some(StsCache::new(Arc::new(client), sts.sts_cache.clone())))
}

pub(super) fn build_imds(
    config: &Config,
    tokens: TokenKey,
    roles: Arc<dyn RoleResolver>,
    sts_cache: Option<&StsCache>,
) -> Imds {
    let credentials: Arc<dyn CredentialSource> = match (&config.credentials, sts_cache) {
        (CredentialsConfig::Static(c), _) => c.clone(),
        (CredentialsConfig::Sts(_), Some(cache)) => Arc::new(cache.clone()),
        (CredentialsConfig::Sts(_), None) => Arc::new(NoCredentials),
    };
    let upstream = config
        .runtime
        .upstream
        .clone()
        .map(|uri| Upstream::new(uri, config.runtime.upstream_timeout));
    Imds::new(
        config.runtime.imds.clone(),
        tokens,
        roles,
        credentials,
        upstream,
    )
}

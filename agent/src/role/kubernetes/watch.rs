//! The Kubernetes watch: namespaces and service accounts (metadata only), then the pods on this
//! node (`spec.nodeName` field selector), fed into [`ClusterState`], whose effects (prefetch,
//! release, Events) it carries out.
//!
//! kube-rs's watcher relists on 410 and retries with the default backoff; during an API outage
//! the index keeps serving the pods it knows.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, ObjectReference, Pod, ServiceAccount};
use kube::core::PartialObjectMeta;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::watch as signal;

use crate::credentials::sts_cache::StsCache;
use crate::role::kubernetes::cluster_state::{ClusterState, Effect};
use crate::role::kubernetes::policy::PodInfo;
use crate::role::kubernetes::watch_health::{WatchHealth, Watched};
use crate::server::heap_trim::TrimRequests;

/// The pod metadata the rules need.
pub(crate) fn pod_info(pod: &Pod) -> Option<PodInfo> {
    let uid = pod.metadata.uid.clone()?;
    Some(PodInfo {
        namespace: pod.namespace().unwrap_or_default(),
        name: pod.name_any(),
        uid,
        service_account: pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".to_owned()),
        annotations: pod.annotations().clone(),
    })
}

/// Carries out effects: prefetch and release with the STS cache, Events on pods.
struct Effects {
    sts_cache: Option<StsCache>,
    recorder: Recorder,
}

impl Effects {
    /// Effects of the watch of `node`, with Events reported as iamlet on that node.
    fn new(client: Client, node: &str, sts_cache: Option<StsCache>) -> Self {
        let recorder = Recorder::new(
            client,
            Reporter {
                controller: "iamlet".into(),
                instance: Some(node.to_owned()),
            },
        );
        Effects {
            sts_cache,
            recorder,
        }
    }

    async fn apply(&self, effects: Vec<Effect>) {
        for e in effects {
            match e {
                Effect::Prefetch(b) => {
                    if let Some(sts_cache) = &self.sts_cache {
                        sts_cache.register(&b);
                    }
                }
                Effect::Release(b) => {
                    if let Some(sts_cache) = &self.sts_cache {
                        sts_cache.unregister(&b);
                    }
                }
                Effect::Forbidden { pod, role, reason } => {
                    tracing::warn!(namespace = %pod.namespace, pod = %pod.name, %role, %reason, "role forbidden");
                    let reference = ObjectReference {
                        api_version: Some("v1".into()),
                        kind: Some("Pod".into()),
                        name: Some(pod.name.clone()),
                        namespace: Some(pod.namespace.clone()),
                        uid: Some(pod.uid.clone()),
                        ..ObjectReference::default()
                    };
                    let event = KubeEvent {
                        type_: EventType::Warning,
                        reason: "IamletRoleForbidden".into(),
                        note: Some(format!("role {role} refused: {reason}")),
                        action: "AssumeRole".into(),
                        secondary: None,
                    };
                    if let Err(e) = self.recorder.publish(&event, &reference).await {
                        tracing::warn!(error = %e, "could not record the Event");
                    }
                }
            }
        }
    }
}

fn annotations_of<K: Resource>(obj: &K) -> BTreeMap<String, String> {
    obj.meta().annotations.clone().unwrap_or_default()
}

/// Records each item of `watched`'s stream in `health`.
fn observer<T>(
    health: &Arc<WatchHealth>,
    watched: Watched,
) -> impl FnMut(&Result<T, watcher::Error>) {
    let health = health.clone();
    move |item| health.observe(watched, item.is_ok())
}

/// Runs the watch until `stop`: namespaces and service accounts first (so no pod is judged
/// without its namespace's policy), then pods.
pub(crate) async fn run(
    client: Client,
    node: String,
    mut state: ClusterState,
    sts_cache: Option<StsCache>,
    trims: TrimRequests,
    health: Arc<WatchHealth>,
    mut stop: signal::Receiver<bool>,
) {
    let effects = Effects::new(client.clone(), &node, sts_cache);
    let cfg = watcher::Config::default();
    // Metadata only: annotations are all the rules read.
    let mut namespaces = kube::runtime::watcher(
        Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
        cfg.clone(),
    )
    .default_backoff()
    .inspect(observer(&health, Watched::Namespaces))
    .boxed();
    let mut accounts = kube::runtime::watcher(
        Api::<PartialObjectMeta<ServiceAccount>>::all(client.clone()),
        cfg,
    )
    .default_backoff()
    .inspect(observer(&health, Watched::ServiceAccounts))
    .boxed();
    let pod_cfg = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut pods = None;
    let (mut ns_synced, mut sa_synced) = (false, false);
    let mut ns_buf: Option<HashMap<String, BTreeMap<String, String>>> = None;
    let mut sa_buf: Option<HashMap<(String, String), BTreeMap<String, String>>> = None;
    let mut pod_buf: Option<Vec<PodInfo>> = None;
    loop {
        if pods.is_none() && ns_synced && sa_synced {
            tracing::info!(%node, "namespaces and service accounts synced; watching pods");
            pods = Some(
                kube::runtime::watcher(Api::<Pod>::all(client.clone()), pod_cfg.clone())
                    .default_backoff()
                    .inspect(observer(&health, Watched::Pods))
                    .boxed(),
            );
        }
        let out = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            Some(ev) = namespaces.next() => match ev {
                Ok(Event::Apply(o) | Event::InitApply(o)) if ns_buf.is_some() => {
                    if let Some(buf) = ns_buf.as_mut() { buf.insert(o.name_any(), annotations_of(&o)); }
                    Vec::new()
                }
                Ok(Event::Apply(o) | Event::InitApply(o)) => state.apply_namespace(&o.name_any(), Some(annotations_of(&o))),
                Ok(Event::Delete(o)) => state.apply_namespace(&o.name_any(), None),
                Ok(Event::Init) => { ns_buf = Some(HashMap::new()); Vec::new() }
                Ok(Event::InitDone) => {
                    ns_synced = true;
                    trims.request();
                    state.replace_namespaces(ns_buf.take().unwrap_or_default())
                }
                Err(e) => { tracing::warn!(error = %e, "namespace watch"); Vec::new() }
            },
            Some(ev) = accounts.next() => match ev {
                Ok(Event::Apply(o) | Event::InitApply(o)) if sa_buf.is_some() => {
                    if let Some(buf) = sa_buf.as_mut() {
                        buf.insert((o.namespace().unwrap_or_default(), o.name_any()), annotations_of(&o));
                    }
                    Vec::new()
                }
                Ok(Event::Apply(o) | Event::InitApply(o)) => state.apply_service_account(&o.namespace().unwrap_or_default(), &o.name_any(), Some(annotations_of(&o))),
                Ok(Event::Delete(o)) => state.apply_service_account(&o.namespace().unwrap_or_default(), &o.name_any(), None),
                Ok(Event::Init) => { sa_buf = Some(HashMap::new()); Vec::new() }
                Ok(Event::InitDone) => {
                    sa_synced = true;
                    trims.request();
                    state.replace_service_accounts(sa_buf.take().unwrap_or_default())
                }
                Err(e) => { tracing::warn!(error = %e, "service account watch"); Vec::new() }
            },
            Some(ev) = async { match pods.as_mut() { Some(p) => p.next().await, None => std::future::pending().await } } => match ev {
                Ok(Event::Apply(p) | Event::InitApply(p)) if pod_buf.is_some() => {
                    if let (Some(buf), Some(info)) = (pod_buf.as_mut(), pod_info(&p)) { buf.push(info); }
                    Vec::new()
                }
                Ok(Event::Apply(p) | Event::InitApply(p)) => match pod_info(&p) {
                    Some(info) => state.apply_pod(info),
                    None => Vec::new(),
                },
                Ok(Event::Delete(p)) => match &p.metadata.uid {
                    Some(uid) => state.delete_pod(uid),
                    None => Vec::new(),
                },
                Ok(Event::Init) => { pod_buf = Some(Vec::new()); Vec::new() }
                Ok(Event::InitDone) => {
                    // The list was decoded whole and is dropped now (see heap_trim).
                    trims.request();
                    state.replace_pods(pod_buf.take().unwrap_or_default())
                }
                Err(e) => { tracing::warn!(error = %e, "pod watch"); Vec::new() }
            },
        };
        effects.apply(out).await;
    }
}

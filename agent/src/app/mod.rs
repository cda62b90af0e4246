//! Wires the agent together: datapath, cgroup index, proxy listeners, admin server, signals.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;

use crate::caller::attribution::Attributor;
use crate::caller::cgroup::{self, CgroupIndex};
use crate::clock;
use crate::config::{Config, CredentialsConfig};
use crate::credentials::prefetch;
use crate::credentials::sts_cache::StsCache;
use crate::datapath::{self, Datapath, DatapathConfig};
use crate::handover::{self, Offer, Predecessor, Retire};
use crate::imds::token::TokenKey;
use crate::inspect::inventory::{CredentialSourceView, Inventory, RoleSourceView};
use crate::role::bindings::{self};
use crate::role::kubernetes as k8s;
use crate::role::kubernetes::pod_index::PodIndex;
use crate::role::{NoRoles, RoleResolver};
use crate::server::admin::Admin;
use crate::server::heap_trim::TrimRequests;
use crate::server::proxy::Proxy;
use crate::server::proxy_thread::{self, ProxyListener, ThreadSettings};
use crate::server::{self, AcceptControl, ServerLimits};
use crate::telemetry::metrics::{self, Metrics};

mod sockets;
mod sources;

use sockets::{listen, offered, raise_open_file_limit};
use sources::{bindings, build_imds, build_sts_cache, kube_source};
pub(crate) use sources::{BaseArnError, KubeClientError};

/// Errors that stop the agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listener (metadata proxy, admin, admission) could not bind.
    #[error("could not listen on {addr}: {source}")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// Why the bind failed.
        #[source]
        source: std::io::Error,
    },
    /// Loading or attaching the eBPF programs, or the forwarding guard, failed.
    #[error(transparent)]
    Datapath(#[from] datapath::Error),
    /// Taking over from a running agent, or handing over to a successor, failed.
    #[error(transparent)]
    Handover(#[from] handover::Error),
    /// The cgroup index could not be built.
    #[error(transparent)]
    Cgroup(#[from] cgroup::Error),
    /// SIGTERM / SIGINT handlers could not be installed.
    #[error("could not install signal handler: {0}")]
    Signal(#[source] std::io::Error),
    /// The kernel gave no randomness for the IMDSv2 token key.
    #[error("no randomness for the token key: {0}")]
    Random(getrandom::Error),
    /// STS needs a region and none was given or found.
    #[error("cannot determine the AWS region for STS: set --region (or AWS_REGION)")]
    NoRegion,
    /// Bare role names need an account, and the node's could not be found.
    #[error("bare role names need --base-role-arn; detecting the node's account from the metadata service failed: {0}")]
    BaseArn(#[source] BaseArnError),
    /// The standalone bindings file is invalid.
    #[error(transparent)]
    Bindings(#[from] bindings::ConfigError),
    /// No Kubernetes client could be built (kubeconfig, in-cluster config).
    #[error("Kubernetes client: {0}")]
    Kube(#[source] KubeClientError),
    /// The proxy's threads could not start.
    #[error(transparent)]
    ProxyThread(#[from] proxy_thread::ProxyThreadError),
    /// The pin directory's lock could not be passed to a successor.
    #[error("could not share the pin directory's lock for a handover: {0}")]
    ShareLock(#[source] std::io::Error),
}

/// How this agent steps aside when a successor takes over.
struct AgentRetire {
    datapath: Arc<Datapath>,
    accept: AcceptControl,
    admin: Arc<Admin>,
}

impl Retire for AgentRetire {
    fn offered(&self) {
        self.datapath.set_handed_over(true);
    }

    fn withdrawn(&self) {
        self.datapath.set_handed_over(false);
    }

    async fn stop_accepting(&self) {
        self.admin.set_ready(false);
        self.accept.stop();
        self.accept.stopped().await;
    }
}

/// Longest a successor waits for its caches before taking over.
const WARM_UP_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Waits (at most [`WARM_UP_LIMIT`]) until the pod watch has listed this node's pods and the
/// credentials of the pods known so far are fetched.
async fn warm_up(pods: Option<&PodIndex>, sts_cache: Option<&StsCache>) {
    let started = clock::now();
    let mut listed_at = None;
    loop {
        let listed = pods.is_none_or(PodIndex::is_listed);
        if listed && listed_at.is_none() {
            listed_at = Some(clock::now());
        }
        // Prefetches start just after the list is applied (and, standalone, at the first
        // cgroup poll): count them once that has had a moment.
        let settled =
            listed_at.is_some_and(|t| clock::since(t) >= std::time::Duration::from_millis(200));
        let prefetching = sts_cache.map_or(0, StsCache::prefetching);
        if settled && prefetching == 0 {
            tracing::info!(took = ?clock::since(started), "caches warm; taking over");
            return;
        }
        if clock::since(started) >= WARM_UP_LIMIT {
            tracing::warn!(listed, prefetching, limit = ?WARM_UP_LIMIT, "taking over with caches still cold");
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Connects to a running agent's handover socket, if there is one.
async fn find_predecessor(config: &Config) -> Option<Predecessor> {
    let path = config.runtime.handover_socket.as_ref()?;
    match handover::connect(path).await {
        Ok(Some(p)) => {
            tracing::info!(pid = p.pid(), "taking over from the running agent");
            Some(p)
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(error = %e, "could not take over from a running agent; starting afresh");
            None
        }
    }
}

/// The agent's own cgroup id when it runs inside the attached cgroup (as a hostNetwork
/// DaemonSet pod does): its own connects to the metadata service must reach the real one.
fn own_exemption(config: &Config) -> Result<u64, Error> {
    let mut own = cgroup::own_cgroup(&config.cgroup_root)?;
    if own == config.cgroup_root {
        // A private cgroup namespace shows `0::/`: find ourselves in the host's hierarchy.
        if let Some(found) = cgroup::find_pid_cgroup(&config.cgroup, std::process::id()) {
            tracing::info!(cgroup = %found.display(), "found the agent's cgroup behind its cgroup namespace");
            own = found;
        }
    }
    if !own.starts_with(&config.cgroup) {
        return Ok(0);
    }
    let id = cgroup::cgroup_id(&own)?;
    tracing::info!(cgroup = %own.display(), id, "the agent runs inside the attached cgroup; its own connects are exempt");
    Ok(id)
}

/// How often the cgroup index is rebuilt so that removed cgroups leave it (new ones are found
/// at once, on a miss).
const INDEX_REFRESH: std::time::Duration = std::time::Duration::from_secs(60);

async fn refresh_index(index: Arc<CgroupIndex>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(INDEX_REFRESH) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let index = index.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || index.refresh()).await {
            tracing::warn!(error = %e, "cgroup index refresh failed");
        }
    }
}

/// How often the datapath is checked (and repaired) while the agent runs.
const DATAPATH_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs [`Datapath::check`] every [`DATAPATH_CHECK`]: repairs are logged and counted; a check
/// that fails makes the agent not ready until one succeeds again.
async fn watch_datapath(
    datapath: Arc<Datapath>,
    admin: Arc<Admin>,
    metrics: Metrics,
    mut stop: watch::Receiver<bool>,
) {
    let mut failing = false;
    loop {
        tokio::select! {
            () = tokio::time::sleep(DATAPATH_CHECK) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let dp = datapath.clone();
        let result = tokio::task::spawn_blocking(move || dp.check()).await;
        match result {
            Ok(Ok(repairs)) => {
                for r in &repairs {
                    metrics.datapath_repair(r.kind());
                }
                if failing {
                    tracing::info!("the datapath is in place again");
                }
                failing = false;
                admin.set_datapath_ok(true);
            }
            Ok(Err(e)) => {
                if !failing {
                    tracing::error!(error = %e, "the datapath is not in place and could not be put back; not ready");
                }
                failing = true;
                metrics.datapath_repair("failed");
                admin.set_datapath_ok(false);
            }
            Err(e) => tracing::error!(error = %e, "datapath check panicked"),
        }
    }
}

/// Runs the agent until SIGTERM or SIGINT, then drains and detaches.
#[allow(
    clippy::too_many_lines,
    reason = "the agent's start-up and shutdown, step by step in the order they happen"
)]
pub async fn run(config: Config) -> Result<(), Error> {
    use tokio::signal::unix::{signal, SignalKind};
    raise_open_file_limit();
    let mut sigterm = signal(SignalKind::terminate()).map_err(Error::Signal)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(Error::Signal)?;

    // A running agent (an upgrade in progress) hands its sockets and its pin directory over;
    // otherwise another live agent on the same pins makes this one stop here.
    let mut predecessor = find_predecessor(&config).await;
    let index = Arc::new(CgroupIndex::new(&config.cgroup_root, &config.cgroup)?);
    let own_cgroup = own_exemption(&config)?;
    let predecessor_cgroup = predecessor.as_ref().map_or(0, Predecessor::cgroup_id);
    let datapath = Arc::new(Datapath::load(
        &DatapathConfig {
            cgroup: config.cgroup.clone(),
            pin_dir: config.runtime.bpffs_dir.clone(),
            listen_v4: config.runtime.listen_v4,
            listen_v6: config.runtime.listen_v6,
            exempt_cgroup_ids: [own_cgroup, predecessor_cgroup],
            on_exit: config.runtime.on_exit,
            forward_guard: config.runtime.forward_guard,
        },
        predecessor.as_mut().and_then(Predecessor::take_pin_lock),
    )?);
    // Listen before the programs are attached: redirected connects must find a socket.
    let mut listeners = Vec::new();
    if let Some(v4) = config.runtime.listen_v4 {
        listeners.push(listen(SocketAddr::V4(v4), predecessor.as_mut()).await?);
    }
    if let Some(v6) = config.runtime.listen_v6 {
        listeners.push(listen(SocketAddr::V6(v6), predecessor.as_mut()).await?);
    }
    let admin_listener = listen(config.runtime.admin_listen, predecessor.as_mut()).await?;
    // The predecessor's token key keeps the tokens SDKs cached valid.
    let tokens = match &predecessor {
        Some(p) => TokenKey::from_bytes(p.token_key()),
        None => TokenKey::random().map_err(Error::Random)?,
    };
    let mut offer = Offer {
        listeners: Vec::new(),
        cgroup_id: own_cgroup,
        token_key: tokens.to_bytes(),
        pin_lock: datapath.share_lock().map_err(Error::ShareLock)?,
    };
    for listener in listeners.iter().chain([&admin_listener]) {
        offer.listeners.push(offered(listener)?);
    }

    let bindings = bindings(&config).await?;
    let kube = kube_source(&config).await?;
    let sts_cache = build_sts_cache(&config, bindings.is_some() || kube.is_some()).await?;
    let roles: Arc<dyn RoleResolver> = match (&bindings, &kube) {
        (Some(b), _) => b.clone(),
        (None, Some(k)) => k.roles.clone(),
        (None, None) => Arc::new(NoRoles),
    };
    let metrics = Metrics::default();
    // Connections the proxy holds (its listeners share one count and one limit).
    let held = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut registry = metrics::registry(
        &metrics,
        Some(datapath.clone()),
        sts_cache.clone(),
        Some(held.clone()),
    );
    if let Some(k) = &kube {
        metrics::kube::register(&mut registry, k.index.clone(), k.health.clone());
    }
    let imds = build_imds(&config, tokens, roles, sts_cache.as_ref());
    let audit = imds.audit().clone();
    let inventory = Inventory {
        roles: match (&bindings, &kube) {
            (Some(b), _) => RoleSourceView::Standalone(b.clone()),
            (None, Some(k)) => RoleSourceView::Kubernetes {
                node: k.node.clone(),
                pods: k.index.clone(),
            },
            (None, None) => RoleSourceView::None,
        },
        credentials: match (&config.credentials, &sts_cache) {
            (_, Some(cache)) => CredentialSourceView::Sts(cache.clone()),
            (CredentialsConfig::Static(_), None) => CredentialSourceView::Static,
            (CredentialsConfig::Sts(_), None) => CredentialSourceView::None,
        },
        cgroups: index.clone(),
        audit: audit.clone(),
    };
    let admin = Admin::new(registry, Some(inventory), config.runtime.admin_listen);
    let proxy = Proxy::new(
        Attributor::new(datapath.clone(), index.clone()),
        imds,
        metrics.clone(),
    );
    let limits = ServerLimits {
        shutdown_grace: config.runtime.shutdown_grace,
        max_connections: config.runtime.max_connections,
        max_connections_per_client: config.runtime.max_connections_per_pod,
        max_waiting_per_client: config.runtime.max_waiting_per_pod,
        header_read_timeout: config.runtime.header_timeout,
        ..ServerLimits::default()
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let accept = AcceptControl::default();
    let mut tasks = Vec::new();
    let trims = TrimRequests::default();
    tasks.push(tokio::spawn(refresh_index(index.clone(), stop_rx.clone())));
    tasks.push(tokio::spawn(audit.run(stop_rx.clone())));
    let pods = kube.as_ref().map(|k| k.index.clone());
    if let Some(k) = kube {
        tracing::info!(node = %k.node, "watching Kubernetes for this node's pods");
        tasks.push(tokio::spawn(k8s::watch::run(
            k.client,
            k.node,
            k.state,
            sts_cache.clone(),
            trims.clone(),
            k.health,
            stop_rx.clone(),
        )));
    }
    if let Some(sts_cache) = &sts_cache {
        tasks.push(tokio::spawn(sts_cache.clone().run(stop_rx.clone())));
        let prefetch =
            matches!(&config.credentials, CredentialsConfig::Sts(s) if s.sts_cache.prefetch);
        if let (Some(bindings), true) = (&bindings, prefetch) {
            tasks.push(tokio::spawn(prefetch::run(
                bindings.clone(),
                index.clone(),
                sts_cache.clone(),
                stop_rx.clone(),
            )));
        }
    }
    // Taking over: let the running agent serve until this one's pod list and prefetches
    // are in, so requests after the switch find warm caches.
    if predecessor.is_some() {
        warm_up(pods.as_deref(), sts_cache.as_ref()).await;
    }
    let mut proxy_listeners = Vec::new();
    for listener in listeners {
        let local = listener.local_addr().ok();
        tracing::info!(listen = ?local, "metadata proxy listening");
        proxy_listeners.push(ProxyListener {
            listener,
            gate: accept.gate(),
        });
    }
    let proxy_thread = proxy_thread::start(
        proxy_listeners,
        proxy.clone(),
        (
            limits,
            ThreadSettings {
                threads: config.runtime.proxy_threads,
                busy_poll: config.runtime.proxy_busy_poll,
            },
        ),
        held.clone(),
    )?;
    tasks.push(tokio::task::spawn_blocking(move || {
        if proxy_thread.join().is_err() {
            tracing::error!("the proxy's first thread panicked");
        }
    }));
    // Start-up is done: what it freed goes back (see heap_trim).
    trims.request();
    tasks.push(tokio::spawn(crate::server::heap_trim::run(
        held.clone(),
        trims,
        stop_rx.clone(),
    )));
    tracing::info!(listen = %config.runtime.admin_listen, "admin server listening");
    tasks.push(tokio::spawn(server::serve(
        "admin",
        admin_listener,
        admin.clone(),
        limits,
        (accept.gate(), server::Workers::default()),
        Arc::new(std::sync::atomic::AtomicUsize::new(0)),
    )));
    // Serving now: the running agent may stop accepting, and the programs switch over.
    if let Some(p) = predecessor {
        match p.stop_accepting().await {
            Ok(()) => tracing::info!("the running agent stopped accepting"),
            Err(e) => {
                tracing::warn!(error = %e, "the running agent did not confirm it stopped accepting");
            }
        }
    }
    datapath.attach()?;
    if let Some(path) = &config.runtime.handover_socket {
        let socket = handover::bind(path)?;
        let retire = AgentRetire {
            datapath: datapath.clone(),
            accept: accept.clone(),
            admin: admin.clone(),
        };
        let stop = stop_rx.clone();
        let path = path.clone();
        tasks.push(tokio::spawn(async move {
            handover::serve(path, socket, offer, retire, stop).await;
        }));
    }
    tasks.push(tokio::spawn(watch_datapath(
        datapath.clone(),
        admin.clone(),
        metrics.clone(),
        stop_rx.clone(),
    )));
    admin.set_ready(true);
    tracing::info!(cgroup = %config.cgroup.display(), "iamlet ready");

    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = sigint.recv() => tracing::info!("SIGINT: shutting down"),
    }
    admin.set_ready(false);
    accept.stop();
    let _ = stop_tx.send(true);
    for task in tasks {
        let _ = task.await;
    }
    drop(proxy);
    drop(admin);
    if let Ok(datapath) = Arc::try_unwrap(datapath) {
        drop(datapath);
    } else {
        tracing::warn!(
            "datapath still referenced at exit; the kernel detaches it when the process ends"
        );
    }
    tracing::info!("stopped");
    Ok(())
}

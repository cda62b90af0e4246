//! The proxy's own threads: its accept loops and connections run on current-thread runtimes,
//! apart from the agent's other work (the Kubernetes watch, STS calls, the datapath checks,
//! the admin server), which stays on the main runtime. The first thread accepts; each
//! connection is served on one of the threads, chosen by the CPU its client connected from
//! (see `workers`), and stays there. There are as many threads as `--proxy-threads` says, or
//! one per CPU the agent may use (its affinity and its cgroup's CPU quota), up to
//! [`MAX_THREADS`].
//!
//! Why: a request is a few microseconds of work between two system calls. On a multi-thread
//! runtime, workers wake each other for it (`futex`, a second `epoll_wait`) and a connection's
//! task can move between them; on a thread of its own nothing is handed over. And with one
//! thread only, a node whose CPUs are busy (pods, the load generator) leaves the proxy waiting
//! for a CPU that a second thread would find. Measured with
//! `cargo xtask bench imds --cpus split` (README, "Where the tail comes from"). What could
//! stall the thread is kept off it: a cgroup walk on an attribution miss runs on a blocking
//! thread, and an AssumeRole call started by a request runs on the main runtime (the request
//! only waits for it).

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use super::proxy::Proxy;
use super::{busy_poll, serve, AcceptGate, ServerLimits, Workers};

/// How long a thread's runtime waits for blocking lookups still running when it stops.
const BLOCKING_GRACE: Duration = Duration::from_secs(1);

/// The most threads the proxy serves on unless `--proxy-threads` says otherwise: a node's
/// metadata traffic is a few requests a second per pod, and one thread serves tens of
/// thousands.
pub(crate) const MAX_THREADS: usize = 4;

/// How many threads the proxy serves on: `configured`, or one per CPU it may use, at most
/// [`MAX_THREADS`].
fn thread_count(configured: Option<NonZeroUsize>) -> usize {
    configured.map_or_else(
        || {
            std::thread::available_parallelism()
                .map_or(1, NonZeroUsize::get)
                .clamp(1, MAX_THREADS)
        },
        NonZeroUsize::get,
    )
}

/// How the proxy's threads serve (`--proxy-threads`, `--proxy-busy-poll`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ThreadSettings {
    /// How many threads; `None`: one per CPU the agent may use, at most [`MAX_THREADS`].
    pub(crate) threads: Option<NonZeroUsize>,
    /// How long a thread keeps polling after a response before it sleeps (see `busy_poll`);
    /// `None`: it sleeps at once.
    pub(crate) busy_poll: Option<Duration>,
}

/// Starts this runtime's busy polling, if asked for.
fn start_busy_poll(window: Option<Duration>) {
    if let Some(window) = window {
        busy_poll::start(window);
    }
}

/// A current-thread runtime for one of the proxy's threads.
fn runtime() -> Result<tokio::runtime::Runtime, ProxyThreadError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("iamlet-proxy-blocking")
        .build()
        .map_err(ProxyThreadError::Start)
}

/// Starts the threads that only serve the connections given them: their runtimes' handles,
/// and the threads (each ends once `stop` is sent or dropped).
fn start_workers(
    (count, busy_poll): (usize, Option<Duration>),
    stop: &tokio::sync::watch::Sender<bool>,
) -> Result<
    (
        Vec<tokio::runtime::Handle>,
        Vec<std::thread::JoinHandle<()>>,
    ),
    ProxyThreadError,
> {
    let mut handles = Vec::new();
    let mut threads = Vec::new();
    for i in 1..count {
        let runtime = runtime()?;
        handles.push(runtime.handle().clone());
        let mut stop = stop.subscribe();
        let thread = std::thread::Builder::new()
            .name(format!("iamlet-proxy-{i}"))
            .spawn(move || {
                runtime.block_on(async move {
                    start_busy_poll(busy_poll);
                    let _ = stop.wait_for(|stop| *stop).await;
                });
                runtime.shutdown_timeout(BLOCKING_GRACE);
            })
            .map_err(ProxyThreadError::Start)?;
        threads.push(thread);
    }
    Ok((handles, threads))
}

/// Why the proxy's thread could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyThreadError {
    /// A listener could not leave the main runtime.
    #[error("handing the listener on {addr:?} to the proxy thread")]
    Listener {
        addr: Option<SocketAddr>,
        #[source]
        source: std::io::Error,
    },
    /// The runtime or the thread could not be made, or a listener not registered on it.
    #[error("starting the proxy thread")]
    Start(#[source] std::io::Error),
}

/// One listener of the proxy with its accept gate.
pub(crate) struct ProxyListener {
    /// The listening socket (made on the main runtime; moved over).
    pub listener: TcpListener,
    /// Its gate on the agent's accept control.
    pub gate: AcceptGate,
}

/// Serves `listeners` with `proxy` on threads of their own, as `settings` say, until their
/// gates stop and the connections drain; the returned handle ends with the threads.
pub(crate) fn start(
    listeners: Vec<ProxyListener>,
    proxy: Arc<Proxy>,
    (limits, settings): (ServerLimits, ThreadSettings),
    held: Arc<AtomicUsize>,
) -> Result<std::thread::JoinHandle<()>, ProxyThreadError> {
    // A socket is registered with the reactor of the runtime that polls it: take each one
    // out of the main runtime here and register it on the proxy's.
    let mut sockets = Vec::new();
    for ProxyListener { listener, gate } in listeners {
        let addr = listener.local_addr().ok();
        let socket = listener
            .into_std()
            .map_err(|source| ProxyThreadError::Listener { addr, source })?;
        sockets.push((socket, gate));
    }
    let runtime = runtime()?;
    // Told to stop once the accept loops have drained their connections (a worker that
    // cannot start drops it, and the ones started end).
    let workers_stop = tokio::sync::watch::Sender::new(false);
    let (others, worker_threads) = start_workers(
        (thread_count(settings.threads), settings.busy_poll),
        &workers_stop,
    )?;
    let workers = Workers::new(others);
    // The thread says whether its listeners are registered before anything is served.
    let (started_tx, started_rx) = std::sync::mpsc::sync_channel(1);
    let thread = std::thread::Builder::new()
        .name("iamlet-proxy".into())
        .spawn(move || {
            runtime.block_on(async move {
                let mut ready = Vec::new();
                for (socket, gate) in sockets {
                    match TcpListener::from_std(socket) {
                        Ok(listener) => ready.push((listener, gate)),
                        Err(e) => {
                            let _ = started_tx.send(Err(e));
                            return;
                        }
                    }
                }
                let _ = started_tx.send(Ok(()));
                start_busy_poll(settings.busy_poll);
                let loops: Vec<_> = ready
                    .into_iter()
                    .map(|(listener, gate)| {
                        tokio::spawn(serve(
                            "proxy",
                            listener,
                            proxy.clone(),
                            limits,
                            (gate, workers.clone()),
                            held.clone(),
                        ))
                    })
                    .collect();
                for serving in loops {
                    let _ = serving.await;
                }
            });
            workers_stop.send_replace(true);
            for worker in worker_threads {
                if worker.join().is_err() {
                    tracing::error!("a proxy thread panicked");
                }
            }
            runtime.shutdown_timeout(BLOCKING_GRACE);
        })
        .map_err(ProxyThreadError::Start)?;
    // Registering takes microseconds; the thread answers before it serves anything.
    match started_rx.recv() {
        Ok(Ok(())) => Ok(thread),
        Ok(Err(e)) => Err(ProxyThreadError::Start(e)),
        Err(_) => Err(ProxyThreadError::Start(std::io::Error::other(
            "the proxy thread ended before serving",
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configured_count_wins_over_the_cpus() {
        assert_eq!(thread_count(NonZeroUsize::new(1)), 1);
        assert_eq!(
            thread_count(NonZeroUsize::new(MAX_THREADS + 3)),
            MAX_THREADS + 3
        );
    }
}

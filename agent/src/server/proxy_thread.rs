//! The proxy's own thread: its accept loops and connections run on a current-thread runtime,
//! apart from the agent's other work (the Kubernetes watch, STS calls, the datapath checks,
//! the admin server), which stays on the main runtime.
//!
//! Why: a request is a few microseconds of work between two system calls. On a multi-thread
//! runtime, workers wake each other for it (`futex`, a second `epoll_wait`) and a connection's
//! task can move between them; on one thread nothing is handed over. Measured with
//! `cargo xtask bench imds --cpus split` (README, "Where the tail comes from"). What could
//! stall the thread is kept off it: a cgroup walk on an attribution miss runs on a blocking
//! thread, and an AssumeRole call started by a request runs on the main runtime (the request
//! only waits for it).

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use super::proxy::Proxy;
use super::{serve, AcceptGate, ServerLimits};

/// How long the thread's runtime waits for blocking lookups still running when it stops.
const BLOCKING_GRACE: Duration = Duration::from_secs(1);

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

/// Serves `listeners` with `proxy` on a thread of their own until their gates stop and the
/// connections drain; the returned handle ends with the thread.
pub(crate) fn start(
    listeners: Vec<ProxyListener>,
    proxy: Arc<Proxy>,
    limits: ServerLimits,
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
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("iamlet-proxy-blocking")
        .build()
        .map_err(ProxyThreadError::Start)?;
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
                let loops: Vec<_> = ready
                    .into_iter()
                    .map(|(listener, gate)| {
                        tokio::spawn(serve(
                            "proxy",
                            listener,
                            proxy.clone(),
                            limits,
                            gate,
                            held.clone(),
                        ))
                    })
                    .collect();
                for serving in loops {
                    let _ = serving.await;
                }
            });
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

//! The HTTP/1.1 accept loop shared by the metadata proxy and the admin server: keep-alive,
//! per-connection state, and graceful drain on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// The response type of every route.
pub type Resp = Response<Full<Bytes>>;

/// What a server does with its connections.
pub trait ConnHandler: Send + Sync + 'static {
    /// State computed once per accepted connection (e.g. who the client is).
    type Conn: Send + Sync + 'static;
    /// Called once when a connection is accepted, before its first request is read.
    fn on_connect(&self, peer: SocketAddr) -> Self::Conn;
    /// Answers one request of that connection.
    fn handle(
        &self,
        conn: &Self::Conn,
        req: Request<Incoming>,
    ) -> impl Future<Output = Resp> + Send;
}

/// Limits of one server.
#[derive(Clone, Copy, Debug)]
pub struct ServerLimits {
    /// Time allowed for a client to send a request's headers (also bounds how long an idle
    /// keep-alive connection is kept: hyper arms it while waiting for the next request).
    pub header_read_timeout: Duration,
    /// Longest drain on shutdown.
    pub shutdown_grace: Duration,
    /// Connections served at once; further clients wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Largest request head (request line and headers) in bytes; larger gets 431.
    pub max_header_bytes: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            header_read_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
            max_connections: 4096,
            max_header_bytes: 16 * 1024,
        }
    }
}

/// Stops the accept loops of several servers at once and tells when all have stopped (an
/// agent handing over to its successor must not accept once the successor's programs run).
#[derive(Clone, Debug)]
pub struct AcceptControl {
    stop: watch::Sender<bool>,
    running: Arc<watch::Sender<usize>>,
}

impl Default for AcceptControl {
    fn default() -> Self {
        AcceptControl {
            stop: watch::Sender::new(false),
            running: Arc::new(watch::Sender::new(0)),
        }
    }
}

impl AcceptControl {
    /// A gate for one more accept loop; counted as running from now until it is dropped.
    pub fn gate(&self) -> AcceptGate {
        self.running.send_modify(|n| *n += 1);
        AcceptGate {
            stop: self.stop.subscribe(),
            running: self.running.clone(),
        }
    }

    /// Tells every accept loop to stop (they then drain their connections).
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Resolves once no accept loop runs.
    pub async fn stopped(&self) {
        let mut running = self.running.subscribe();
        let _ = running.wait_for(|n| *n == 0).await;
    }
}

/// One server's handle on an [`AcceptControl`].
#[derive(Debug)]
pub struct AcceptGate {
    stop: watch::Receiver<bool>,
    running: Arc<watch::Sender<usize>>,
}

impl Drop for AcceptGate {
    fn drop(&mut self) {
        self.running.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Serves `listener` until the gate is told to stop, then drains open connections for at
/// most `limits.shutdown_grace`.
pub async fn serve<H: ConnHandler>(
    name: &'static str,
    listener: TcpListener,
    handler: Arc<H>,
    limits: ServerLimits,
    gate: AcceptGate,
) {
    let mut shutdown = gate.stop.clone();
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // hyper's floor is 8 KiB; a head that does not fit gets 431.
        .max_buf_size(limits.max_header_bytes.max(8192));
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(server = name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            // Per-connection setup (attribution may walk the cgroup tree on a miss) runs here,
            // off the accept loop.
            let conn_state = Arc::new(handler.on_connect(peer));
            let service = service_fn(move |req| {
                let handler = handler.clone();
                let conn_state = conn_state.clone();
                async move { Ok::<_, Infallible>(handler.handle(&conn_state, req).await) }
            });
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(server = name, %peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    drop(gate);
    tracing::info!(server = name, "stopped accepting; draining connections");
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!(server = name, "all connections closed"),
        _ = tokio::time::sleep(limits.shutdown_grace) => {
            tracing::warn!(server = name, grace = ?limits.shutdown_grace, "drain timed out; closing the rest");
        }
    }
}

/// A response with a body and content type.
pub fn response(status: u16, content_type: &'static str, body: impl Into<Bytes>) -> Resp {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    resp
}

/// A JSON response.
pub fn json(status: u16, value: &impl serde::Serialize) -> Resp {
    match serde_json::to_vec(value) {
        Ok(body) => response(status, "application/json", body),
        Err(e) => response(500, "text/plain", format!("could not encode response: {e}")),
    }
}

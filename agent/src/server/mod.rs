//! The HTTP/1.1 accept loop shared by the metadata proxy and the admin server: keep-alive,
//! per-connection state, admission (no client can lock the others out: see [`admission`]),
//! bounded request buffers (see [`io`]), a deadline for each request's head (see
//! [`activity`]), and graceful drain on shutdown (see [`drain`]: a connection accepted before
//! it gets its first request answered).
//!
//! A handler that answers from request heads alone (the metadata proxy) has its connections
//! served by the fast path first (see [`heads`]): bodiless `GET`s and `PUT`s without hyper's
//! per-request machinery, hyper for everything else.
//!
//! The accept loop only accepts: it never waits for a free slot, so the kernel's accept
//! queue drains for every pod whatever one of them does. Each connection is then attributed
//! (the handler's [`ConnHandler::on_connect`], before any byte is read), admitted under its
//! pod's limit, and served.

mod activity;
pub(crate) mod admin;
pub(crate) mod admission;
mod busy_poll;
mod drain;
mod heads;
pub(crate) mod heap_trim;
pub(crate) mod io;
pub(crate) mod proxy;
pub(crate) mod proxy_thread;
mod workers;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderName};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use activity::ConnActivity;
use admission::{Admission, AdmissionLimits, Refusal, TotalGuard};
use drain::{ConnEnd, Drain, DrainWatch};
pub(crate) use heads::RequestHead;
use io::{MeteredStream, RequestBudget};
pub(crate) use workers::Workers;

/// The response type of every route.
pub(crate) type Resp = Response<Full<Bytes>>;

/// The headers of a request, as handlers read them (hyper's map, or the fast path's parse).
pub(crate) trait RequestHeaders: Sync {
    /// The first value of the header `name`, if the request has it.
    fn first(&self, name: &HeaderName) -> Option<&[u8]>;
}

impl RequestHeaders for HeaderMap {
    fn first(&self, name: &HeaderName) -> Option<&[u8]> {
        self.get(name).map(hyper::header::HeaderValue::as_bytes)
    }
}

/// What a server does with its connections.
pub(crate) trait ConnHandler: Send + Sync + 'static {
    /// Whether this handler answers bodiless requests from their heads (`handle_head`): its
    /// connections are then served by the fast path (`heads`) until one request is not.
    const ANSWERS_HEADS: bool = false;
    /// State computed once per accepted connection (e.g. who the client is).
    type Conn: Send + Sync + 'static;
    /// Whose connections a connection counts with for the per-client limit (the pod).
    type Key: std::hash::Hash + Eq + Clone + Send + Sync + 'static;
    /// Called once when a connection is accepted, before its first request is read.
    fn on_connect(&self, peer: SocketAddr) -> impl Future<Output = Self::Conn> + Send;
    /// The per-client limit key of a connection; `None`: only the server's total limit.
    fn admission_key(&self, conn: &Self::Conn) -> Option<Self::Key>;
    /// A connection was closed unserved.
    fn on_refused(&self, peer: SocketAddr, refusal: Refusal);
    /// Answers one request of that connection.
    fn handle(
        &self,
        conn: &Self::Conn,
        req: Request<Incoming>,
    ) -> impl Future<Output = Resp> + Send;
    /// Answers one bodiless request of that connection from its head, as `handle` would;
    /// `None`: hyper is to serve it (and the rest of the connection) through `handle`.
    fn handle_head<'a>(
        &'a self,
        conn: &'a Self::Conn,
        head: RequestHead<'a>,
    ) -> Option<impl Future<Output = Resp> + Send + 'a> {
        let _ = (conn, head);
        None::<std::future::Ready<Resp>>
    }
}

/// Limits of one server.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ServerLimits {
    /// Time allowed for a client to send a request's headers, from the accept or the previous
    /// answer (so it also bounds how long an idle keep-alive connection is kept).
    pub header_read_timeout: Duration,
    /// Longest drain on shutdown.
    pub shutdown_grace: Duration,
    /// Connections held at once (served or waiting); beyond it a new one is closed at once.
    pub max_connections: usize,
    /// Connections of one client (pod) served at once.
    pub max_connections_per_client: usize,
    /// Connections of one client waiting for a turn (each at most `header_read_timeout`).
    pub max_waiting_per_client: usize,
    /// Largest request head (request line and headers) in bytes; larger gets 431.
    pub max_header_bytes: usize,
    /// Request bytes read and not yet answered, over all connections.
    pub max_pending_bytes: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            header_read_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
            max_connections: 16384,
            max_connections_per_client: 64,
            max_waiting_per_client: 1024,
            max_header_bytes: 16 * 1024,
            max_pending_bytes: 16 * 1024 * 1024,
        }
    }
}

/// Stops the accept loops of several servers at once and tells when all have stopped (an
/// agent handing over to its successor must not accept once the successor's programs run).
#[derive(Clone, Debug)]
pub(crate) struct AcceptControl {
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
    pub(crate) fn gate(&self) -> AcceptGate {
        self.running.send_modify(|n| *n += 1);
        AcceptGate {
            stop: self.stop.subscribe(),
            running: self.running.clone(),
        }
    }

    /// Tells every accept loop to stop (they then drain their connections).
    pub(crate) fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Resolves once no accept loop runs.
    pub(crate) async fn stopped(&self) {
        let mut running = self.running.subscribe();
        let _ = running.wait_for(|n| *n == 0).await;
    }
}

/// One server's handle on an [`AcceptControl`].
#[derive(Debug)]
pub(crate) struct AcceptGate {
    stop: watch::Receiver<bool>,
    running: Arc<watch::Sender<usize>>,
}

impl Drop for AcceptGate {
    fn drop(&mut self) {
        self.running.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// What each request of a connection reaches: the server's handler, the connection's state
/// and its activity.
struct ServedConn<H: ConnHandler> {
    handler: Arc<H>,
    state: H::Conn,
    activity: ConnActivity,
}

/// A connection accepted and admitted under the server's total limit, with what serving it
/// takes.
struct Accepted<H: ConnHandler> {
    name: &'static str,
    peer: SocketAddr,
    held: TotalGuard<H::Key>,
    handler: Arc<H>,
    builder: http1::Builder,
    watcher: DrainWatch,
    admission: Arc<Admission<H::Key>>,
    budget: Arc<RequestBudget>,
    head_timeout: Duration,
    /// Largest request head, in bytes.
    max_head: usize,
}

impl<H: ConnHandler> Accepted<H> {
    /// Attributes the connection, waits for its client's turn, and serves it until it ends.
    async fn serve(self, stream: tokio::net::TcpStream) {
        let Accepted {
            name,
            peer,
            held,
            handler,
            builder,
            watcher,
            admission,
            budget,
            head_timeout,
            max_head,
        } = self;
        let _held = held;
        // Attribution and the wait for a turn run here, off the accept loop.
        let state = handler.on_connect(peer).await;
        let _turn = match handler.admission_key(&state) {
            Some(key) => match admission.enter_key(key).await {
                Ok(turn) => Some(turn),
                Err(refusal) => {
                    handler.on_refused(peer, refusal);
                    return;
                }
            },
            None => None,
        };
        let served = Arc::new(ServedConn {
            handler,
            state,
            activity: ConnActivity::new(),
        });
        let io = MeteredStream::new(stream, budget);
        if H::ANSWERS_HEADS {
            let conn = heads::HeadsFirst::new(served.clone(), io, builder, max_head);
            let end = watcher.serve(conn, &served.activity, head_timeout).await;
            log_end(name, peer, head_timeout, end);
        } else {
            let conn = builder.serve_connection(TokioIo::new(io), hyper_service(served.clone()));
            let end = watcher.serve(conn, &served.activity, head_timeout).await;
            log_end(name, peer, head_timeout, end);
        }
    }
}

/// hyper's service for one connection: each request is marked begun and answered (for the
/// head deadline and the drain) around the handler's answer.
fn hyper_service<H: ConnHandler>(
    served: Arc<ServedConn<H>>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Resp,
    Error = Infallible,
    Future = impl Future<Output = Result<Resp, Infallible>> + Send,
> + Send
       + 'static {
    service_fn(move |req| {
        served.activity.request_began();
        let conn = served.clone();
        async move {
            let resp = conn.handler.handle(&conn.state, req).await;
            conn.activity.request_answered();
            Ok::<_, Infallible>(resp)
        }
    })
}

/// Logs how a connection ended.
fn log_end<E: std::fmt::Display>(
    name: &'static str,
    peer: SocketAddr,
    timeout: Duration,
    end: ConnEnd<E>,
) {
    match end {
        ConnEnd::Closed(Ok(())) => {}
        ConnEnd::Closed(Err(e)) => {
            tracing::debug!(server = name, %peer, error = %e, "connection ended with an error");
        }
        ConnEnd::HeadTimedOut => {
            tracing::debug!(server = name, %peer, ?timeout, "closed a connection that sent no request head in time");
        }
    }
}

/// Serves `listener` until the gate is told to stop, then drains open connections for at
/// most `limits.shutdown_grace`. `held` counts the connections held now. Connections are
/// served on this runtime and on `workers`, by the CPU their client connected from.
pub(crate) async fn serve<H: ConnHandler>(
    name: &'static str,
    listener: TcpListener,
    handler: Arc<H>,
    limits: ServerLimits,
    (gate, workers): (AcceptGate, Workers),
    held: Arc<std::sync::atomic::AtomicUsize>,
) {
    let mut shutdown = gate.stop.clone();
    let drain = Drain::new();
    let mut builder = http1::Builder::new();
    builder
        .keep_alive(true)
        // The head deadline is `activity`'s: hyper's allocates and registers a timer per
        // request.
        .header_read_timeout(None)
        // One buffer, one send(2) per response: cheaper in the kernel than writev(2) with the
        // head and body apart (the bodies are small).
        .writev(false)
        // hyper's floor is 8 KiB; a head that does not fit gets 431.
        .max_buf_size(limits.max_header_bytes.max(8192));
    let admission: Arc<Admission<H::Key>> = Admission::new(
        AdmissionLimits {
            max_total: limits.max_connections,
            per_key: limits.max_connections_per_client,
            waiting_per_key: limits.max_waiting_per_client,
            wait_limit: limits.header_read_timeout,
        },
        held,
    );
    let budget = RequestBudget::new(limits.max_pending_bytes);
    loop {
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
        let held = match admission.enter_total() {
            Ok(held) => held,
            Err(refusal) => {
                handler.on_refused(peer, refusal);
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let conn = Accepted {
            name,
            peer,
            held,
            handler: handler.clone(),
            builder: builder.clone(),
            watcher: drain.watch(),
            admission: admission.clone(),
            budget: budget.clone(),
            head_timeout: limits.header_read_timeout,
            max_head: limits.max_header_bytes.max(8192),
        };
        match workers.for_connection(&stream) {
            None => {
                tokio::spawn(conn.serve(stream));
            }
            // The stream leaves this runtime's reactor and joins the other's there.
            Some(other) => match stream.into_std() {
                Ok(stream) => {
                    other.spawn(async move {
                        match tokio::net::TcpStream::from_std(stream) {
                            Ok(stream) => conn.serve(stream).await,
                            Err(e) => {
                                tracing::warn!(server = name, %peer, error = %e, "could not move a connection to another thread; closed");
                            }
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(server = name, %peer, error = %e, "could not move a connection to another thread; closed");
                }
            },
        }
    }
    drop(listener);
    drop(gate);
    tracing::info!(server = name, "stopped accepting; draining connections");
    tokio::select! {
        () = drain.run() => tracing::info!(server = name, "all connections closed"),
        () = tokio::time::sleep(limits.shutdown_grace) => {
            tracing::warn!(server = name, grace = ?limits.shutdown_grace, "drain timed out; closing the rest");
        }
    }
}

/// A response with a body and content type.
pub(crate) fn response(status: u16, content_type: &'static str, body: impl Into<Bytes>) -> Resp {
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
pub(crate) fn json(status: u16, value: &impl serde::Serialize) -> Resp {
    match serde_json::to_vec(value) {
        Ok(body) => response(status, "application/json", body),
        Err(e) => response(500, "text/plain", format!("could not encode response: {e}")),
    }
}

#[cfg(test)]
mod tests;

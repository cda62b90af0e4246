//! The metadata proxy: the listener pods' metadata connects are redirected to.
//!
//! Every connection is attributed once, when it is accepted, from the kernel's record of the
//! connecting socket (see `attribution`). A connection the kernel did not record gets 403 on
//! every request, with the reason; all others are answered by the metadata API (`imds`, whose
//! module doc lists the routes).
//!
//! Connections are admitted per pod (see `server::admission`): the attribution names the
//! pod before any byte is read, so a pod over its limit waits or is closed without costing
//! any other pod a thing. Connections nobody can be named for (no kernel record) share one
//! limit.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use hyper::body::Incoming;
use hyper::{Method, Request};

use crate::caller::attribution::{Attributor, Caller, Unattributed};
use crate::clock;
use crate::imds::audit;
use crate::imds::session::Session;
use crate::imds::{Imds, Subject};
use crate::server::admission::Refusal;
use crate::server::{self, ConnHandler, RequestHead, RequestHeaders, Resp};
use crate::telemetry::metrics::{ConnResult, Metrics};

/// Whose limit a connection counts against.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum ClientKey {
    /// A pod (or a cgroup that is no pod's).
    Subject(Subject),
    /// Connections without a kernel record (all share one limit).
    Unattributed,
}

/// The proxy's shared state.
#[derive(Debug)]
pub(crate) struct Proxy {
    attributor: Attributor,
    imds: Imds,
    metrics: Metrics,
    /// Second of the last warning about refused connections (one per second at most).
    refused_warned_at: AtomicU64,
}

impl Proxy {
    /// A proxy attributing connections with `attributor` and answering with `imds`.
    pub(crate) fn new(attributor: Attributor, imds: Imds, metrics: Metrics) -> Arc<Self> {
        Arc::new(Proxy {
            attributor,
            imds,
            metrics,
            refused_warned_at: AtomicU64::new(0),
        })
    }
}

/// What the proxy keeps per connection: who made it (from the kernel's record) and the
/// metadata API's state for it, or why nobody can be named.
#[derive(Debug)]
pub(crate) struct ProxyConn(Result<(Caller, Session), Unattributed>);

impl ConnHandler for Proxy {
    type Conn = ProxyConn;
    type Key = ClientKey;

    fn admission_key(&self, conn: &Self::Conn) -> Option<ClientKey> {
        Some(match &conn.0 {
            Ok((_, session)) => ClientKey::Subject(session.subject().clone()),
            Err(_) => ClientKey::Unattributed,
        })
    }

    fn on_refused(&self, peer: SocketAddr, refusal: Refusal) {
        self.metrics.connection(match refusal {
            Refusal::Total => ConnResult::OverTotalLimit,
            Refusal::PerKey => ConnResult::OverPodLimit,
            Refusal::WaitTimedOut => ConnResult::WaitTimedOut,
        });
        // A flood must not turn into a flood of log lines: one warning a second at most.
        let now = clock::wall()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if self.refused_warned_at.swap(now, Ordering::Relaxed) == now {
            tracing::debug!(%peer, reason = refusal.as_str(), "closing a connection unserved");
        } else {
            tracing::warn!(%peer, reason = refusal.as_str(), "closing a connection unserved (see iamlet_proxy_connections_total for how many)");
        }
    }

    async fn on_connect(&self, peer: SocketAddr) -> Self::Conn {
        let caller = self.attributor.attribute(peer).await;
        match &caller {
            Ok(c) => {
                self.metrics.connection(ConnResult::Attributed);
                tracing::debug!(%peer, cgroup_id = c.cgroup_id, pod_uid = ?c.pod_uid, "connection attributed");
            }
            Err(reason) => {
                self.metrics.connection(ConnResult::Unattributed);
                tracing::info!(%peer, %reason, "refusing unattributed connection");
            }
        }
        ProxyConn(caller.map(|c| {
            let session = Session::new(&c);
            (c, session)
        }))
    }

    async fn handle(&self, conn: &Self::Conn, req: Request<Incoming>) -> Resp {
        self.answer(conn, req.method(), req.uri().path(), req.headers())
            .await
    }

    // Every request the fast path takes is the metadata API's: it reads no body.
    const ANSWERS_HEADS: bool = true;

    fn handle_head<'a>(
        &'a self,
        conn: &'a Self::Conn,
        head: RequestHead<'a>,
    ) -> Option<impl std::future::Future<Output = Resp> + Send + 'a> {
        Some(self.answer(conn, head.method, head.path, head.headers))
    }
}

impl Proxy {
    /// Answers one request of `conn`, whichever way it was read.
    async fn answer(
        &self,
        conn: &ProxyConn,
        method: &Method,
        path: &str,
        headers: &dyn RequestHeaders,
    ) -> Resp {
        let started = clock::now();
        let (caller, session) = match &conn.0 {
            Ok(attributed) => attributed,
            Err(reason) => {
                let resp = server::response(403, "text/plain", format!("{reason}\n"));
                self.metrics
                    .request("unattributed", 403, clock::since(started));
                return resp;
            }
        };
        let answer = self
            .imds
            .handle(caller, session, (method, path, headers), started)
            .await;
        let now = clock::now();
        let latency = now.saturating_duration_since(started);
        let status = answer.resp.status().as_u16();
        self.metrics.request(answer.route, status, latency);
        if let Some(outcome) = &answer.audit {
            self.imds.audit().record(
                &audit::Entry {
                    caller,
                    subject: session.subject(),
                    route: answer.route,
                    status,
                    latency,
                    outcome,
                },
                now,
            );
        }
        answer.resp
    }
}

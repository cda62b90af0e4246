//! The admin server (on `--admin-listen`, default 127.0.0.1:9809). Routes:
//!
//! | route | answer |
//! |---|---|
//! | `GET /live` | 200 `ok` while the process runs |
//! | `GET /ready` | 200 `ready` once the eBPF programs are attached and the proxy listens; 503 while shutting down, or while the datapath is missing and cannot be put back |
//! | `GET /metrics` | the metrics (see `telemetry::metrics`): OpenMetrics to a client that accepts it (Prometheus), else the text format 0.0.4 |
//! | anything else | 404 |

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Method, Request};
use prometheus_client::registry::Registry;

use crate::server::admission::Refusal;
use crate::server::{self, ConnHandler, Resp};
use crate::telemetry::metrics::exposition::{self, Format};

/// The admin server's state.
#[derive(Debug)]
pub(crate) struct Admin {
    registry: Registry,
    ready: AtomicBool,
    datapath_ok: AtomicBool,
}

impl Admin {
    /// An admin server exposing `registry`; not ready until [`Admin::set_ready`].
    pub(crate) fn new(registry: Registry) -> Arc<Self> {
        Arc::new(Admin {
            registry,
            ready: AtomicBool::new(false),
            datapath_ok: AtomicBool::new(true),
        })
    }

    /// Flips readiness.
    pub(crate) fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Whether the datapath's last check found it in place (or put it back).
    pub(crate) fn set_datapath_ok(&self, ok: bool) {
        self.datapath_ok.store(ok, Ordering::SeqCst);
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && self.datapath_ok.load(Ordering::SeqCst)
    }

    fn route(&self, method: &Method, path: &str, accept: Option<&[u8]>) -> Resp {
        match (method, path) {
            (&Method::GET, "/live") => server::response(200, "text/plain", "ok\n"),
            (&Method::GET, "/ready") if self.is_ready() => {
                server::response(200, "text/plain", "ready\n")
            }
            (&Method::GET, "/ready") => server::response(503, "text/plain", "not ready\n"),
            (&Method::GET, "/metrics") => {
                let format = Format::negotiate(accept);
                match exposition::encode(&self.registry, format) {
                    Ok(out) => server::response(200, format.content_type(), out),
                    Err(e) => {
                        server::response(500, "text/plain", format!("encoding failed: {e}\n"))
                    }
                }
            }
            _ => server::response(404, "text/plain", "Not Found\n"),
        }
    }
}

impl ConnHandler for Admin {
    type Conn = ();
    type Key = ();

    async fn on_connect(&self, _peer: SocketAddr) {}

    fn admission_key(&self, _conn: &()) -> Option<()> {
        None
    }

    fn on_refused(&self, peer: SocketAddr, refusal: Refusal) {
        tracing::debug!(%peer, refusal = refusal.as_str(), "admin connection refused");
    }

    async fn handle(&self, _conn: &(), req: Request<Incoming>) -> Resp {
        let accept = req
            .headers()
            .get(hyper::header::ACCEPT)
            .map(hyper::header::HeaderValue::as_bytes);
        self.route(req.method(), req.uri().path(), accept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let admin = Admin::new(Registry::default());
        assert_eq!(admin.route(&Method::GET, "/live", None).status(), 200);
        assert_eq!(admin.route(&Method::GET, "/ready", None).status(), 503);
        admin.set_ready(true);
        assert_eq!(admin.route(&Method::GET, "/ready", None).status(), 200);
        admin.set_datapath_ok(false);
        assert_eq!(admin.route(&Method::GET, "/ready", None).status(), 503);
        admin.set_datapath_ok(true);
        let text = admin.route(&Method::GET, "/metrics", None);
        assert_eq!(text.status(), 200);
        assert!(text.headers()["content-type"]
            .to_str()
            .is_ok_and(|t| t.starts_with("text/plain; version=0.0.4")));
        let om = admin.route(
            &Method::GET,
            "/metrics",
            Some(b"application/openmetrics-text;version=1.0.0,*/*;q=0.1"),
        );
        assert!(om.headers()["content-type"]
            .to_str()
            .is_ok_and(|t| t.starts_with("application/openmetrics-text")));
        assert_eq!(admin.route(&Method::GET, "/x", None).status(), 404);
    }
}

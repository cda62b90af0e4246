//! The admin server (on `--admin-listen`, default 127.0.0.1:9809). Routes:
//!
//! | route | answer |
//! |---|---|
//! | `GET /live` | 200 `ok` while the process runs |
//! | `GET /ready` | 200 `ready` once the eBPF programs are attached and the proxy listens; 503 while shutting down, or while the datapath is missing and cannot be put back |
//! | `GET /metrics` | the metrics (see `telemetry::metrics`): OpenMetrics to a client that accepts it (Prometheus), else the text format 0.0.4 |
//! | `GET /debug/pods` | node-local only: the pods the agent knows, their roles, credentials (key id and expiry, never secrets) and what they were served, as JSON (`iamlet inspect` reads it; see `inspect::report`) |
//! | `GET /log-filter` | node-local only: the log filter in force (`--log` syntax) |
//! | `PUT /log-filter` | node-local only: replaces it with the body (e.g. `info,iamlet::audit=off`); 400 if it does not parse. Not kept across restarts |
//! | anything else | 404 |
//!
//! "Node-local": the client connected from loopback or from the admin listener's own address
//! (the node itself, as `kubectl exec` into the agent's hostNetwork pod does); anyone else gets
//! 403. The chart listens on the host IP so that the kubelet can probe it, which pods can
//! reach: they may see `/metrics`, never the pod list nor change the logging.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request};
use prometheus_client::registry::Registry;

use crate::inspect::inventory::Inventory;
use crate::server::admission::Refusal;
use crate::server::{self, ConnHandler, Resp};
use crate::telemetry::metrics::exposition::{self, Format};
use crate::telemetry::metrics::kube::ReadyGauge;
use crate::telemetry::{self as telemetry, LogFilterError};

/// Largest `PUT /log-filter` body.
const MAX_FILTER_BYTES: usize = 4096;

/// Readiness, shared with the `iamlet_ready` gauge.
#[derive(Debug)]
struct Readiness {
    ready: AtomicBool,
    datapath_ok: AtomicBool,
}

impl Readiness {
    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && self.datapath_ok.load(Ordering::SeqCst)
    }
}

/// The admin server's state.
#[derive(Debug)]
pub(crate) struct Admin {
    registry: Registry,
    readiness: Arc<Readiness>,
    inventory: Option<Inventory>,
    /// The listener's own address, when it is a specific one (clients from it are the node).
    own_ip: Option<IpAddr>,
}

impl Admin {
    /// An admin server exposing `registry` (plus `iamlet_ready`) and, to node-local clients,
    /// `inventory`; listening on `listen`. Not ready until [`Admin::set_ready`].
    pub(crate) fn new(
        mut registry: Registry,
        inventory: Option<Inventory>,
        listen: SocketAddr,
    ) -> Arc<Self> {
        let readiness = Arc::new(Readiness {
            ready: AtomicBool::new(false),
            datapath_ok: AtomicBool::new(true),
        });
        let gauge = readiness.clone();
        registry.register_collector(Box::new(ReadyGauge(Box::new(move || gauge.is_ready()))));
        Arc::new(Admin {
            registry,
            readiness,
            inventory,
            own_ip: Some(listen.ip()).filter(|ip| !ip.is_unspecified()),
        })
    }

    /// Flips readiness.
    pub(crate) fn set_ready(&self, ready: bool) {
        self.readiness.ready.store(ready, Ordering::SeqCst);
    }

    /// Whether the datapath's last check found it in place (or put it back).
    pub(crate) fn set_datapath_ok(&self, ok: bool) {
        self.readiness.datapath_ok.store(ok, Ordering::SeqCst);
    }

    /// Whether a client at `peer` is the node itself.
    fn is_local(&self, peer: IpAddr) -> bool {
        let peer = match peer {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 @ IpAddr::V4(_) => v4,
        };
        peer.is_loopback() || Some(peer) == self.own_ip
    }

    /// Answers a request without a body.
    fn route(&self, method: &Method, path: &str, accept: Option<&[u8]>, local: bool) -> Resp {
        match (method, path) {
            (&Method::GET, "/live") => server::response(200, "text/plain", "ok\n"),
            (&Method::GET, "/ready") if self.readiness.is_ready() => {
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
            (_, "/debug/pods" | "/log-filter") if !local => server::response(
                403,
                "text/plain",
                "Forbidden: only from this node (loopback or the admin listener's own address)\n",
            ),
            (&Method::GET, "/debug/pods") => self.pods(),
            (&Method::GET, "/log-filter") => match telemetry::log_filter() {
                Some(filter) => server::response(200, "text/plain", format!("{filter}\n")),
                None => server::response(503, "text/plain", "logging is not set up by iamlet\n"),
            },
            (_, "/debug/pods" | "/log-filter") => {
                server::response(405, "text/plain", "Method Not Allowed\n")
            }
            _ => server::response(404, "text/plain", "Not Found\n"),
        }
    }

    fn pods(&self) -> Resp {
        let Some(inventory) = &self.inventory else {
            return server::response(404, "text/plain", "no pod inventory in this agent\n");
        };
        match serde_json::to_vec(&inventory.report()) {
            Ok(json) => server::response(200, "application/json", json),
            Err(e) => server::response(500, "text/plain", format!("encoding failed: {e}\n")),
        }
    }

    /// `PUT /log-filter` with `body`.
    fn set_log_filter(body: &[u8]) -> Resp {
        let Ok(text) = std::str::from_utf8(body) else {
            return server::response(400, "text/plain", "the log filter is not UTF-8\n");
        };
        match telemetry::set_log_filter(text) {
            Ok(old) => {
                let new = text.trim();
                tracing::info!(filter = new, previous = %old, "log filter changed through the admin server");
                server::response(200, "text/plain", format!("{new}\n"))
            }
            Err(e @ (LogFilterError::Invalid { .. } | LogFilterError::Empty)) => {
                server::response(400, "text/plain", format!("{e}\n"))
            }
            Err(e) => server::response(503, "text/plain", format!("{e}\n")),
        }
    }
}

impl ConnHandler for Admin {
    /// Whether the client is the node itself.
    type Conn = bool;
    type Key = ();

    async fn on_connect(&self, peer: SocketAddr) -> bool {
        self.is_local(peer.ip())
    }

    fn admission_key(&self, _conn: &bool) -> Option<()> {
        None
    }

    fn on_refused(&self, peer: SocketAddr, refusal: Refusal) {
        tracing::debug!(%peer, refusal = refusal.as_str(), "admin connection refused");
    }

    async fn handle(&self, local: &bool, req: Request<Incoming>) -> Resp {
        if *local && req.method() == Method::PUT && req.uri().path() == "/log-filter" {
            return match Limited::new(req.into_body(), MAX_FILTER_BYTES)
                .collect()
                .await
            {
                Ok(body) => Self::set_log_filter(&body.to_bytes()),
                Err(e) => server::response(
                    400,
                    "text/plain",
                    format!(
                        "could not read the log filter (at most {MAX_FILTER_BYTES} bytes): {e}\n"
                    ),
                ),
            };
        }
        let accept = req
            .headers()
            .get(hyper::header::ACCEPT)
            .map(hyper::header::HeaderValue::as_bytes);
        self.route(req.method(), req.uri().path(), accept, *local)
    }
}

#[cfg(test)]
mod tests;

//! The metadata proxy: the listener pods' metadata connects are redirected to.
//!
//! Every connection is attributed once, when it is accepted, from the kernel's record of the
//! connecting socket (see `attribution`). Routes:
//!
//! | route | answer |
//! |---|---|
//! | `GET /iamlet/whoami` | JSON `{cgroup_id, cgroup_path, pod_uid, original_destination, kind}` of the caller (a debugging aid) |
//! | anything, from a connection the kernel did not record | 403 with the reason |
//! | anything else | 404 |

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Method, Request};

use crate::attribution::{Attributor, Caller, Unattributed};
use crate::metrics::{ConnResult, Metrics};
use crate::server::{self, ConnHandler, Resp};

/// The proxy's shared state.
#[derive(Debug)]
pub struct Proxy {
    attributor: Attributor,
    metrics: Metrics,
}

impl Proxy {
    /// A proxy attributing connections with `attributor`.
    pub fn new(attributor: Attributor, metrics: Metrics) -> Arc<Self> {
        Arc::new(Proxy {
            attributor,
            metrics,
        })
    }
}

impl ConnHandler for Proxy {
    type Conn = Result<Caller, Unattributed>;

    fn on_connect(&self, peer: SocketAddr) -> Self::Conn {
        let caller = self.attributor.attribute(peer);
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
        caller
    }

    async fn handle(&self, caller: &Self::Conn, req: Request<Incoming>) -> Resp {
        let (route, resp) = route(caller, req.method(), req.uri().path());
        self.metrics.request(route, resp.status().as_u16());
        resp
    }
}

/// Picks the answer for one request; returns the route name for metrics.
fn route(
    caller: &Result<Caller, Unattributed>,
    method: &Method,
    path: &str,
) -> (&'static str, Resp) {
    let caller = match caller {
        Ok(c) => c,
        Err(reason) => {
            return (
                "unattributed",
                server::response(403, "text/plain", format!("{reason}\n")),
            )
        }
    };
    match (method, path) {
        (&Method::GET, "/iamlet/whoami") => ("whoami", server::json(200, caller)),
        (_, "/iamlet/whoami") => (
            "whoami",
            server::response(405, "text/plain", "only GET is allowed\n"),
        ),
        _ => (
            "not_found",
            server::response(404, "text/plain", "Not Found\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attribution::ConnKind;

    fn caller() -> Caller {
        Caller {
            cgroup_id: 42,
            cgroup_path: Some("/pods/a".into()),
            pod_uid: None,
            original_destination: "169.254.169.254:80".parse().expect("addr"),
            kind: ConnKind::Redirected,
        }
    }

    #[test]
    fn whoami_answers_json() {
        let (name, resp) = route(&Ok(caller()), &Method::GET, "/iamlet/whoami");
        assert_eq!((name, resp.status().as_u16()), ("whoami", 200));
        assert_eq!(resp.headers()["content-type"], "application/json");
    }

    #[test]
    fn unattributed_is_forbidden_everywhere() {
        let peer: SocketAddr = "198.18.255.1:5".parse().expect("addr");
        let err = Err(Unattributed::NoRecord { peer });
        for path in ["/iamlet/whoami", "/latest/meta-data/", "/"] {
            let (_, resp) = route(&err, &Method::GET, path);
            assert_eq!(resp.status().as_u16(), 403, "{path}");
        }
    }

    #[test]
    fn other_routes() {
        let (_, resp) = route(&Ok(caller()), &Method::POST, "/iamlet/whoami");
        assert_eq!(resp.status().as_u16(), 405);
        let (_, resp) = route(&Ok(caller()), &Method::GET, "/nope");
        assert_eq!(resp.status().as_u16(), 404);
    }
}

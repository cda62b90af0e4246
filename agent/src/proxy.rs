//! The metadata proxy: the listener pods' metadata connects are redirected to.
//!
//! Every connection is attributed once, when it is accepted, from the kernel's record of the
//! connecting socket (see `attribution`). A connection the kernel did not record gets 403 on
//! every request, with the reason; all others are answered by the metadata API (`imds`, whose
//! module doc lists the routes).

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::Request;

use crate::attribution::{Attributor, Caller, Unattributed};
use crate::imds::Imds;
use crate::metrics::{ConnResult, Metrics};
use crate::server::{self, ConnHandler, Resp};

/// The proxy's shared state.
#[derive(Debug)]
pub struct Proxy {
    attributor: Attributor,
    imds: Imds,
    metrics: Metrics,
}

impl Proxy {
    /// A proxy attributing connections with `attributor` and answering with `imds`.
    pub fn new(attributor: Attributor, imds: Imds, metrics: Metrics) -> Arc<Self> {
        Arc::new(Proxy {
            attributor,
            imds,
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
        let (route, resp) = match caller {
            Err(reason) => (
                "unattributed",
                server::response(403, "text/plain", format!("{reason}\n")),
            ),
            Ok(caller) => {
                self.imds
                    .handle(caller, req.method(), req.uri().path(), req.headers())
                    .await
            }
        };
        self.metrics.request(route, resp.status().as_u16());
        resp
    }
}

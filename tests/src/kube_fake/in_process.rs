//! [`FakeApiServer`]: the fake API server in this process, on a tokio runtime of its own.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::node::TestNode;

use super::server::{self, Shared};
use super::{binary, serve, ControlOp, KubeControl, Options, RemoteApiServer};

/// An in-process fake API server on `127.0.0.1:<free port>`, on its own tokio runtime (so it
/// works from sync tests and from any async runtime). Stopped on drop.
pub struct FakeApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for FakeApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeApiServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl FakeApiServer {
    /// Starts one with default [`Options`].
    pub fn start() -> Result<FakeApiServer> {
        Self::start_with(Options::default())
    }

    /// Starts one.
    pub fn start_with(options: Options) -> Result<FakeApiServer> {
        Self::start_on("127.0.0.1:0".parse()?, options)
    }

    /// Starts one listening on `addr`.
    pub fn start_on(addr: SocketAddr, options: Options) -> Result<FakeApiServer> {
        let listener =
            std::net::TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fake-kube-apiserver")
            .enable_all()
            .build()?;
        let shared = Shared::new(options.history, options.bookmark_interval);
        let s = shared.clone();
        runtime.spawn(async move {
            match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => serve(s, l, None).await,
                Err(e) => eprintln!("fake-kube-apiserver: {e}"),
            }
        });
        Ok(FakeApiServer {
            shared,
            addr,
            runtime: Some(runtime),
        })
    }

    /// Starts the `fake-kube-apiserver` binary in `node`'s network namespace, listening on
    /// `127.0.0.1:<free port>` there, controlled over a unix socket in the temp directory.
    pub fn start_in_node(node: &TestNode) -> Result<RemoteApiServer> {
        RemoteApiServer::start(
            node.command(binary()),
            "127.0.0.1:0".parse()?,
            Options::default(),
        )
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A kube-rs config for this server (no auth, plain HTTP).
    pub fn kube_config(&self) -> Result<kube::Config> {
        Ok(kube::Config::new(self.url().parse()?))
    }

    /// A kube-rs client; must be called inside a tokio runtime.
    pub fn client(&self) -> Result<kube::Client> {
        Ok(kube::Client::try_from(self.kube_config()?)?)
    }
}

impl KubeControl for FakeApiServer {
    fn control(&self, op: ControlOp) -> Result<Value> {
        server::control(&self.shared, op).map_err(anyhow::Error::msg)
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

//! The HTTP side: the Kubernetes API on TCP, and the control protocol on its own connection
//! (the operations themselves are in `control.rs`).

mod access;
mod dispatch;
mod list_watch;
mod route;

use dispatch::dispatch;
use route::{route, verb_of};

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::store::{status_json, ApiError, Store};

pub use super::control::{control, ControlOp, ObjRef};
pub use access::AccessRule;

/// Response body: whole or streamed.
pub type Body = BoxBody<Bytes, io::Error>;

/// Default number of changes kept for watch replay.
pub const DEFAULT_HISTORY: usize = 10_000;
/// Default interval of `BOOKMARK` events on watches that allow them.
pub const DEFAULT_BOOKMARK_INTERVAL: Duration = Duration::from_secs(1);

/// One API request the fake saw.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// HTTP method.
    pub method: String,
    /// Kubernetes verb: `list`, `watch`, `get`, `create`, `update`, `patch`, `delete`,
    /// `discovery` (also `/version`), `unknown`.
    pub verb: String,
    /// Path without the query.
    pub path: String,
    /// Query string (`""` if none).
    pub query: String,
    /// Status answered (200 for watches that started).
    pub status: u16,
}

/// Faults and knobs.
#[derive(Debug, Default)]
pub(super) struct Faults {
    pub(super) fail_next: u64,
    pub(super) fail_status: u16,
    pub(super) latency: Duration,
}

/// State shared by the HTTP handlers and the control handle.
pub struct Shared {
    store: Mutex<Store>,
    pub(super) faults: Mutex<Faults>,
    pub(super) requests: Mutex<Vec<RequestRecord>>,
    pub(super) bookmark_ms: AtomicU64,
    /// Permissions `SelfSubjectAccessReview` denies (everything else is allowed).
    denied: Mutex<Vec<AccessRule>>,
}

impl Shared {
    /// Fresh state.
    pub fn new(history: usize, bookmark_interval: Duration) -> Arc<Shared> {
        Arc::new(Shared {
            store: Mutex::new(Store::new(history)),
            faults: Mutex::new(Faults::default()),
            requests: Mutex::new(Vec::new()),
            bookmark_ms: AtomicU64::new(bookmark_interval.as_millis() as u64),
            denied: Mutex::new(Vec::new()),
        })
    }

    /// Replaces the permissions `SelfSubjectAccessReview` denies; answers `null`.
    pub(crate) fn set_denied(&self, rules: Vec<AccessRule>) -> Value {
        *self
            .denied
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = rules;
        Value::Null
    }

    /// The permissions `SelfSubjectAccessReview` denies.
    pub(super) fn denied(&self) -> Vec<AccessRule> {
        self.denied
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub(super) fn store(&self) -> MutexGuard<'_, Store> {
        self.store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn full(status: u16, body: Vec<u8>) -> Response<Body> {
    let mut resp = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|e: Infallible| match e {})
            .boxed(),
    );
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn json_resp(status: u16, v: &Value) -> Response<Body> {
    full(status, serde_json::to_vec(v).unwrap_or_default())
}

fn err_resp(e: &ApiError) -> Response<Body> {
    json_resp(e.code, &e.status())
}

/// Serves the control protocol on one connection (`POST /control` with a [`ControlOp`]
/// body; answers `{"ok":..}` or `{"error":".."}`).
pub async fn serve_control<IO>(shared: Arc<Shared>, io: IO)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req: Request<Incoming>| {
        let shared = shared.clone();
        async move {
            let body = req
                .into_body()
                .collect()
                .await
                .map(http_body_util::Collected::to_bytes);
            let answer = match body {
                Err(e) => json!({ "error": format!("reading body: {e}") }),
                Ok(b) => match serde_json::from_slice::<ControlOp>(&b) {
                    Err(e) => json!({ "error": format!("bad control op: {e}") }),
                    Ok(op) => match control(&shared, op) {
                        Ok(v) => json!({ "ok": v }),
                        Err(e) => json!({ "error": e }),
                    },
                },
            };
            Ok::<_, Infallible>(json_resp(200, &answer))
        }
    });
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(io), svc)
        .await;
}

/// Serves the Kubernetes API on one connection.
pub async fn serve_api<IO>(shared: Arc<Shared>, io: IO)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req: Request<Incoming>| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(handle(shared, req).await) }
    });
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(io), svc)
        .await;
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query_str = req.uri().query().unwrap_or("").to_string();
    let query: BTreeMap<String, String> = form_urlencoded::parse(query_str.as_bytes())
        .into_owned()
        .collect();
    let content_type = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let r = route(&path);
    let verb = verb_of(&method, &r, &query);
    let (latency, fail) = {
        let mut f = shared
            .faults
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let fail = if f.fail_next > 0 {
            f.fail_next -= 1;
            Some(f.fail_status)
        } else {
            None
        };
        (f.latency, fail)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(http_body_util::Collected::to_bytes)
        .unwrap_or_default();
    let resp = match fail {
        Some(code) => json_resp(
            code,
            &status_json(
                code,
                "InternalError",
                "Internal error occurred: injected fault",
            ),
        ),
        None => dispatch(&shared, &method, r, &query, &content_type, &body),
    };
    shared
        .requests
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(RequestRecord {
            method: method.to_string(),
            verb: verb.into(),
            path,
            query: query_str,
            status: resp.status().as_u16(),
        });
    resp
}

//! The HTTP side: the Kubernetes API on TCP, and the control protocol on its own connection
//! (the operations themselves are in `control.rs`).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::selector::{FieldSelector, LabelSelector};
use super::store::{
    not_found, resource_by_path, status_json, ApiError, Filter, ObjKey, Store, WatchMsg, RESOURCES,
};

pub use super::control::{control, ControlOp, ObjRef};

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
}

impl Shared {
    /// Fresh state.
    pub fn new(history: usize, bookmark_interval: Duration) -> Arc<Shared> {
        Arc::new(Shared {
            store: Mutex::new(Store::new(history)),
            faults: Mutex::new(Faults::default()),
            requests: Mutex::new(Vec::new()),
            bookmark_ms: AtomicU64::new(bookmark_interval.as_millis() as u64),
        })
    }

    pub(super) fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
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
            let body = req.into_body().collect().await.map(|b| b.to_bytes());
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

/// A parsed API path.
enum Route {
    Version,
    Discovery(Value),
    Collection {
        res: usize,
        ns: Option<String>,
    },
    Object {
        res: usize,
        ns: Option<String>,
        name: String,
    },
    NotFound,
}

fn route(path: &str) -> Route {
    let parts: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let (group, version, rest): (&str, &str, &[&str]) = match parts.as_slice() {
        ["version"] => return Route::Version,
        ["api"] => {
            return Route::Discovery(json!({
                "kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
            }))
        }
        ["apis"] => {
            return Route::Discovery(json!({
                "kind": "APIGroupList", "apiVersion": "v1",
                "groups": [{
                    "name": "events.k8s.io",
                    "versions": [{"groupVersion": "events.k8s.io/v1", "version": "v1"}],
                    "preferredVersion": {"groupVersion": "events.k8s.io/v1", "version": "v1"},
                }],
            }))
        }
        ["api", v] => return discovery("", v),
        ["apis", g, v] => return discovery(g, v),
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Route::NotFound,
    };
    let (ns, rest) = match rest {
        ["namespaces", ns, tail @ ..] if !tail.is_empty() => (Some(ns.to_string()), tail),
        _ => (None, rest),
    };
    match rest {
        [plural] => match resource_by_path(group, version, plural) {
            Some(res) if ns.is_none() || RESOURCES[res].namespaced => Route::Collection { res, ns },
            _ => Route::NotFound,
        },
        [plural, name] => match resource_by_path(group, version, plural) {
            Some(res) if RESOURCES[res].namespaced == ns.is_some() => Route::Object {
                res,
                ns,
                name: name.to_string(),
            },
            _ => Route::NotFound,
        },
        _ => Route::NotFound,
    }
}

fn discovery(group: &str, version: &str) -> Route {
    let resources: Vec<Value> = RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .map(|r| {
            json!({
                "name": r.plural, "singularName": r.singular, "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["create","delete","get","list","patch","update","watch"],
                "shortNames": r.short_names,
            })
        })
        .collect();
    if resources.is_empty() {
        return Route::NotFound;
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Route::Discovery(json!({
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources,
    }))
}

fn verb_of(method: &Method, route: &Route, query: &BTreeMap<String, String>) -> &'static str {
    let watch = query.get("watch").is_some_and(|w| w == "true" || w == "1");
    match (route, method) {
        (Route::Version | Route::Discovery(_), _) => "discovery",
        (Route::Collection { .. }, &Method::GET) if watch => "watch",
        (Route::Collection { .. }, &Method::GET) => "list",
        (Route::Collection { .. }, &Method::POST) => "create",
        (Route::Object { .. }, &Method::GET) if watch => "watch",
        (Route::Object { .. }, &Method::GET) => "get",
        (Route::Object { .. }, &Method::PUT) => "update",
        (Route::Object { .. }, &Method::PATCH) => "patch",
        (Route::Object { .. }, &Method::DELETE) => "delete",
        _ => "unknown",
    }
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
        let mut f = shared.faults.lock().unwrap_or_else(|e| e.into_inner());
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
        .map(|b| b.to_bytes())
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
        .unwrap_or_else(|e| e.into_inner())
        .push(RequestRecord {
            method: method.to_string(),
            verb: verb.into(),
            path,
            query: query_str,
            status: resp.status().as_u16(),
        });
    resp
}

fn parse_rv(s: Option<&String>) -> Result<Option<u64>, ApiError> {
    match s.map(String::as_str) {
        None | Some("") | Some("0") => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| {
            ApiError::new(
                400,
                "BadRequest",
                format!("invalid resource version: {v:?}"),
            )
        }),
    }
}

fn filter_of(
    res: usize,
    ns: Option<String>,
    query: &BTreeMap<String, String>,
) -> Result<Filter, ApiError> {
    let bad = |m: String| ApiError::new(400, "BadRequest", m);
    Ok(Filter {
        namespace: ns,
        fields: FieldSelector::parse(
            query.get("fieldSelector").map(String::as_str).unwrap_or(""),
            RESOURCES[res].fields,
        )
        .map_err(bad)?,
        labels: LabelSelector::parse(query.get("labelSelector").map(String::as_str).unwrap_or(""))
            .map_err(bad)?,
    })
}

fn dispatch(
    shared: &Arc<Shared>,
    method: &Method,
    r: Route,
    query: &BTreeMap<String, String>,
    content_type: &str,
    body: &[u8],
) -> Response<Body> {
    let watch = query.get("watch").is_some_and(|w| w == "true" || w == "1");
    let result = match (r, method) {
        (Route::Version, &Method::GET) => Ok(json_resp(
            200,
            &json!({
                "major": "1", "minor": "33", "gitVersion": "v1.33.0-fake",
                "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
                "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.24.0", "compiler": "gc",
                "platform": "linux/amd64",
            }),
        )),
        (Route::Discovery(v), &Method::GET) => Ok(json_resp(200, &v)),
        (Route::Collection { res, ns }, &Method::GET) if watch => {
            filter_of(res, ns, query).and_then(|f| start_watch(shared, res, f, query))
        }
        (Route::Object { res, ns, name }, &Method::GET) if watch => {
            let mut q = query.clone();
            let sel = match q.get("fieldSelector") {
                Some(s) if !s.is_empty() => format!("{s},metadata.name={name}"),
                _ => format!("metadata.name={name}"),
            };
            q.insert("fieldSelector".into(), sel);
            filter_of(res, ns, &q).and_then(|f| start_watch(shared, res, f, &q))
        }
        (Route::Collection { res, ns }, &Method::GET) => list(shared, res, ns, query),
        (Route::Object { res, ns, name }, &Method::GET) => {
            let key = (ns.unwrap_or_default(), name.clone());
            shared
                .store()
                .get(res, &key)
                .map(|o| json_resp(200, &o))
                .ok_or_else(|| not_found(res, &name))
        }
        (Route::Collection { res, ns }, &Method::POST) => parse_body(body).and_then(|mut obj| {
            if let Some(ns) = &ns {
                obj["metadata"]["namespace"] = json!(ns);
            }
            let o = shared.store().create(res, obj)?;
            Ok(json_resp(201, &o))
        }),
        (Route::Object { res, ns, name }, &Method::PUT) => parse_body(body).and_then(|mut obj| {
            if obj.pointer("/metadata/name").and_then(Value::as_str) != Some(name.as_str()) {
                return Err(ApiError::new(
                    400,
                    "BadRequest",
                    "the name of the object does not match the name on the URL",
                ));
            }
            if let Some(ns) = &ns {
                obj["metadata"]["namespace"] = json!(ns);
            }
            let o = shared.store().replace(res, obj)?;
            Ok(json_resp(200, &o))
        }),
        (Route::Object { res, ns, name }, &Method::PATCH) => {
            let key = (ns.unwrap_or_default(), name);
            let ct = content_type.split(';').next().unwrap_or("").trim();
            match ct {
                "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                    parse_body(body).and_then(|p| {
                        let o = shared.store().patch(res, &key, &p, false)?;
                        Ok(json_resp(200, &o))
                    })
                }
                "application/apply-patch+yaml" => parse_body(body).and_then(|p| {
                    let o = shared.store().patch(res, &key, &p, true)?;
                    Ok(json_resp(200, &o))
                }),
                other => Err(ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    format!("the body of the request was in an unknown format - accepted media types include: application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml (got {other:?})"),
                )),
            }
        }
        (Route::Object { res, ns, name }, &Method::DELETE) => {
            let key = (ns.unwrap_or_default(), name);
            shared.store().delete(res, &key).map(|o| json_resp(200, &o))
        }
        (Route::NotFound, _) => Err(ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )),
        _ => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )),
    };
    result.unwrap_or_else(|e| err_resp(&e))
}

fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::new(400, "BadRequest", format!("invalid JSON body: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::new(400, "BadRequest", "body is not an object"));
    }
    Ok(v)
}

#[derive(Serialize, Deserialize)]
struct Continue {
    rv: u64,
    start: ObjKey,
}

fn list(
    shared: &Arc<Shared>,
    res: usize,
    ns: Option<String>,
    query: &BTreeMap<String, String>,
) -> Result<Response<Body>, ApiError> {
    let filter = filter_of(res, ns, query)?;
    let limit: usize = match query.get("limit") {
        Some(l) => l
            .parse::<i64>()
            .map_err(|_| ApiError::new(400, "BadRequest", format!("invalid limit {l:?}")))?
            .max(0) as usize,
        None => 0,
    };
    let store = shared.store();
    let (at, start) = match query.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let c: Continue = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(token)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .ok_or_else(|| ApiError::new(400, "BadRequest", "continue key is not valid"))?;
            if c.rv < store.compacted() {
                return Err(ApiError::new(
                    410,
                    "Expired",
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                ));
            }
            (c.rv, Some(c.start))
        }
        None => {
            let rv = parse_rv(query.get("resourceVersion"))?;
            let exact = query.get("resourceVersionMatch").map(String::as_str) == Some("Exact");
            match rv {
                Some(rv) if rv > store.rv() => {
                    return Err(ApiError::new(
                        504,
                        "Timeout",
                        format!("Too large resource version: {rv}, current: {}", store.rv()),
                    ));
                }
                Some(rv) if exact => (rv, None),
                _ => (store.rv(), None),
            }
        }
    };
    let snap = store.snapshot(res, Some(at))?;
    drop(store);
    let mut items = Vec::new();
    let mut next = None;
    let mut remaining = 0usize;
    let iter = snap
        .iter()
        .filter(|(k, _)| start.as_ref().is_none_or(|s| *k > s))
        .filter(|(_, o)| filter.matches(o));
    for (k, o) in iter {
        if limit > 0 && items.len() >= limit {
            remaining += 1;
            continue;
        }
        let mut item = (**o).clone();
        if let Some(m) = item.as_object_mut() {
            m.remove("apiVersion");
            m.remove("kind");
        }
        items.push(item);
        if limit > 0 && items.len() == limit {
            next = Some(k.clone());
        }
    }
    let r = &RESOURCES[res];
    let mut meta = json!({ "resourceVersion": at.to_string() });
    if remaining > 0 {
        let token = serde_json::to_vec(&Continue {
            rv: at,
            start: next.unwrap_or_default(),
        })
        .unwrap_or_default();
        meta["continue"] = json!(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token));
        if filter.fields.is_empty() && query.get("labelSelector").is_none_or(|s| s.is_empty()) {
            meta["remainingItemCount"] = json!(remaining);
        }
    }
    Ok(json_resp(
        200,
        &json!({
            "kind": format!("{}List", r.kind),
            "apiVersion": r.api_version(),
            "metadata": meta,
            "items": items,
        }),
    ))
}

fn start_watch(
    shared: &Arc<Shared>,
    res: usize,
    filter: Filter,
    query: &BTreeMap<String, String>,
) -> Result<Response<Body>, ApiError> {
    let rv = parse_rv(query.get("resourceVersion"))?;
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true" || v == "1");
    let initial = query
        .get("sendInitialEvents")
        .is_some_and(|v| v == "true" || v == "1");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (out_tx, out_rx) = mpsc::channel::<Result<Frame<Bytes>, io::Error>>(16);
    let registered = {
        let mut store = shared.store();
        // sendInitialEvents: the state first, whatever the resource version says.
        let from = if initial { None } else { rv };
        store.watch(res, from, filter, initial && bookmarks, tx.clone())
    };
    let id = match registered {
        Ok(id) => Some(id),
        Err(e) => {
            // Like the watch cache: 200, one ERROR event with the Status, end.
            let _ = tx.send(WatchMsg::Line(super::store::line("ERROR", &e.status())));
            let _ = tx.send(WatchMsg::End);
            None
        }
    };
    let shared2 = shared.clone();
    tokio::spawn(async move {
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let interval = Duration::from_millis(shared2.bookmark_ms.load(Ordering::SeqCst).max(1));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(WatchMsg::Line(l)) => {
                        if out_tx.send(Ok(Frame::data(Bytes::from(l)))).await.is_err() {
                            break;
                        }
                    }
                    Some(WatchMsg::End) | None => break,
                    Some(WatchMsg::Abort) => {
                        let _ = out_tx.send(Err(io::Error::new(io::ErrorKind::ConnectionAborted, "watch aborted by the test"))).await;
                        break;
                    }
                },
                _ = tick.tick(), if bookmarks && id.is_some() => {
                    if let Some(id) = id {
                        shared2.store().send_bookmark(id);
                    }
                }
                _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => break,
                _ = out_tx.closed() => break,
            }
        }
        if let Some(id) = id {
            shared2.store().unregister(id);
        }
    });
    let stream = futures_util::stream::unfold(out_rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp.headers_mut().insert(
        hyper::header::TRANSFER_ENCODING,
        hyper::header::HeaderValue::from_static("chunked"),
    );
    Ok(resp)
}

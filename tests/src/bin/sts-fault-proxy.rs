//! `sts-fault-proxy`: an HTTP/1.1 reverse proxy in front of an STS (moto in the tests) that
//! counts the STS calls it sees and injects faults on demand.
//!
//! ```text
//! sts-fault-proxy --listen 127.0.0.1:P --upstream 127.0.0.1:M --control 127.0.0.1:C
//! ```
//!
//! Port 0 picks a free port. Once both listeners are bound it prints one JSON line to stdout,
//! `{"listen":"127.0.0.1:P","control":"127.0.0.1:C","upstream":"127.0.0.1:M"}`, and nothing
//! else there; a line per request goes to stderr.
//!
//! Every request on `--listen` (method, path, query, headers minus hop-by-hop ones, body) is
//! forwarded to `--upstream` and the answer relayed, unless a fault applies. The STS `Action`
//! and parameters are read from the query string and from a form-encoded body.
//!
//! Control API on `--control` (JSON):
//!
//! | request | effect |
//! |---|---|
//! | `PUT /fault` `{"mode":"none"}` | forward everything (the default) |
//! | `{"mode":"latency","ms":1500}` | wait `ms`, then forward |
//! | `{"mode":"throttle"}` | 400, STS error `Throttling` / `Rate exceeded` |
//! | `{"mode":"status","code":500}` | that status with an STS error (500 `InternalFailure`, 503 `ServiceUnavailable`, other 5xx `InternalFailure`, 4xx `InvalidRequest`); optional `"error_code"`, `"message"` override |
//! | `{"mode":"deny"}` | 403, STS error `AccessDenied` |
//! | `{"mode":"reset"}` | close the client connection without answering, with a TCP RST |
//! | `{"mode":"hang"}` | never answer; when the fault is changed, the held connections are reset |
//! | any of them plus `"only_action":"AssumeRole"` | the fault applies to that action only; others are forwarded |
//! | `GET /fault` | the fault in force |
//! | `GET /stats` | `{"total","faulted","by_action":{..},"assume_role_by_role":{..},"assume_role_log":[..]}` |
//! | `POST /reset-stats` | zero the counters and the log |
//!
//! A fault applies to requests whose head arrives after it is set. Every request is counted,
//! faulted or not; each `assume_role_log` entry says which fault it got (`"fault"`).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Largest request or response body relayed (STS messages are a few KiB).
const MAX_BODY: usize = 1 << 20;

/// What the proxy does to a request.
#[derive(Clone, Debug, PartialEq)]
enum Mode {
    None,
    Latency(Duration),
    Throttle,
    Status {
        code: StatusCode,
        error_code: Option<String>,
        message: Option<String>,
    },
    Deny,
    Reset,
    Hang,
}

impl Mode {
    fn name(&self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Latency(_) => "latency",
            Mode::Throttle => "throttle",
            Mode::Status { .. } => "status",
            Mode::Deny => "deny",
            Mode::Reset => "reset",
            Mode::Hang => "hang",
        }
    }
}

/// The fault in force: a mode, optionally limited to one STS action.
#[derive(Clone, Debug, PartialEq)]
struct Fault {
    mode: Mode,
    only_action: Option<String>,
}

impl Fault {
    fn parse(body: &[u8]) -> Result<Fault> {
        let v: Value = serde_json::from_slice(body).context("fault body is not JSON")?;
        let mode = v
            .get("mode")
            .and_then(Value::as_str)
            .context("fault needs \"mode\"")?;
        let str_field = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        let mode = match mode {
            "none" => Mode::None,
            "latency" => Mode::Latency(Duration::from_millis(
                v.get("ms")
                    .and_then(Value::as_u64)
                    .context("latency needs \"ms\"")?,
            )),
            "throttle" => Mode::Throttle,
            "status" => {
                let code = v
                    .get("code")
                    .and_then(Value::as_u64)
                    .context("status needs \"code\"")?;
                let code = u16::try_from(code)
                    .ok()
                    .and_then(|c| StatusCode::from_u16(c).ok())
                    .filter(|c| c.as_u16() >= 400)
                    .with_context(|| format!("status code {code} is not 400..=999"))?;
                Mode::Status {
                    code,
                    error_code: str_field("error_code"),
                    message: str_field("message"),
                }
            }
            "deny" => Mode::Deny,
            "reset" => Mode::Reset,
            "hang" => Mode::Hang,
            other => bail!("unknown mode {other:?}"),
        };
        Ok(Fault {
            mode,
            only_action: str_field("only_action"),
        })
    }

    fn to_json(&self) -> Value {
        let mut v = json!({ "mode": self.mode.name() });
        match &self.mode {
            Mode::Latency(d) => v["ms"] = json!(d.as_millis() as u64),
            Mode::Status {
                code,
                error_code,
                message,
            } => {
                v["code"] = json!(code.as_u16());
                if let Some(c) = error_code {
                    v["error_code"] = json!(c);
                }
                if let Some(m) = message {
                    v["message"] = json!(m);
                }
            }
            _ => {}
        }
        if let Some(a) = &self.only_action {
            v["only_action"] = json!(a);
        }
        v
    }
}

/// Counters and the AssumeRole log.
#[derive(Default)]
struct Stats {
    total: u64,
    faulted: u64,
    by_action: BTreeMap<String, u64>,
    assume_role_by_role: BTreeMap<String, u64>,
    assume_role_log: Vec<Value>,
}

struct State {
    upstream: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
    /// The fault in force, and a generation bumped on every change (held requests watch it).
    fault: watch::Sender<(u64, Fault)>,
    stats: Mutex<Stats>,
    request_ids: AtomicU64,
}

/// A client connection that can be told to end with a TCP RST: once `reset` is set, writes
/// fail and dropping it closes the socket with `SO_LINGER` 0.
struct ResettableStream {
    inner: TcpStream,
    reset: Arc<AtomicBool>,
}

impl ResettableStream {
    fn check(&self) -> io::Result<()> {
        if self.reset.load(Ordering::SeqCst) {
            Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "fault: reset",
            ))
        } else {
            Ok(())
        }
    }
}

impl AsyncRead for ResettableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ResettableStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check()?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        self.check()?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        self.check()?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Drop for ResettableStream {
    fn drop(&mut self) {
        if self.reset.load(Ordering::SeqCst) {
            // Closing with SO_LINGER 0 sends RST instead of FIN and never blocks.
            if let Err(e) = self.inner.set_zero_linger() {
                eprintln!("sts-fault-proxy: SO_LINGER 0: {e}");
            }
        }
    }
}

/// The error a request that is answered by closing the connection returns to hyper.
#[derive(Debug)]
struct ResetConnection;

impl std::fmt::Display for ResetConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection reset by fault")
    }
}

impl std::error::Error for ResetConnection {}

type Answer = Response<Full<Bytes>>;

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// An STS (awsQuery) error answer:
/// `<ErrorResponse><Error><Type/><Code/><Message/></Error><RequestId/></ErrorResponse>`.
fn sts_error(status: StatusCode, code: &str, message: &str, request_id: &str) -> Answer {
    let kind = if status.is_server_error() {
        "Receiver"
    } else {
        "Sender"
    };
    let body = format!(
        "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\n  <Error>\n    <Type>{kind}</Type>\n    <Code>{}</Code>\n    <Message>{}</Message>\n  </Error>\n  <RequestId>{request_id}</RequestId>\n</ErrorResponse>\n",
        xml_escape(code),
        xml_escape(message)
    );
    let mut answer = Response::new(Full::new(Bytes::from(body)));
    *answer.status_mut() = status;
    let h = answer.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/xml"));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert(HeaderName::from_static("x-amzn-requestid"), v);
    }
    answer
}

fn json_answer(status: StatusCode, v: &Value) -> Answer {
    let mut answer = Response::new(Full::new(Bytes::from(v.to_string())));
    *answer.status_mut() = status;
    answer.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    answer
}

/// Headers that belong to one hop and are not relayed.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "content-length"
    )
}

fn copy_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        if !is_hop_by_hop(name) {
            to.append(name.clone(), value.clone());
        }
    }
}

/// The request's parameters: the query string, then a form-encoded body.
fn params(uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = uri
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|ct| ct.starts_with("application/x-www-form-urlencoded"));
    if is_form && !body.is_empty() {
        out.extend(form_urlencoded::parse(body).into_owned());
    }
    out
}

fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// `Prefix.member.N.<field>` lists (`Tags.member.1.Key`, `TransitiveTagKeys.member.2`), in
/// index order, as (index, field, value).
fn members<'a>(params: &'a [(String, String)], prefix: &str) -> Vec<(u32, &'a str, &'a str)> {
    let head = format!("{prefix}.member.");
    let mut out: Vec<(u32, &str, &str)> = params
        .iter()
        .filter_map(|(k, v)| {
            let rest = k.strip_prefix(&head)?;
            let (index, field) = rest.split_once('.').unwrap_or((rest, ""));
            Some((index.parse().ok()?, field, v.as_str()))
        })
        .collect();
    out.sort_by_key(|(i, f, _)| (*i, f.to_string()));
    out
}

/// `(access key id, region)` from a SigV4 `Authorization` header
/// (`AWS4-HMAC-SHA256 Credential=AKID/20260101/us-east-1/sts/aws4_request, ...`).
fn sigv4_scope(headers: &HeaderMap) -> (Option<String>, Option<String>) {
    let Some(auth) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return (None, None);
    };
    let Some(cred) = auth
        .split(['\u{20}', ','])
        .find_map(|part| part.strip_prefix("Credential="))
    else {
        return (None, None);
    };
    let mut parts = cred.split('/');
    let key = parts.next().map(str::to_owned);
    let region = parts.nth(1).map(str::to_owned);
    (key, region)
}

fn assume_role_entry(
    params: &[(String, String)],
    headers: &HeaderMap,
    fault: &str,
    request_id: &str,
) -> Value {
    let mut tags: Vec<Value> = Vec::new();
    let mut by_index: BTreeMap<u32, (Option<&str>, Option<&str>)> = BTreeMap::new();
    for (i, field, value) in members(params, "Tags") {
        let e = by_index.entry(i).or_default();
        match field {
            "Key" => e.0 = Some(value),
            "Value" => e.1 = Some(value),
            _ => {}
        }
    }
    for (_, (k, v)) in by_index {
        tags.push(json!({ "key": k.unwrap_or(""), "value": v.unwrap_or("") }));
    }
    let transitive: Vec<&str> = members(params, "TransitiveTagKeys")
        .into_iter()
        .map(|(_, _, v)| v)
        .collect();
    let policy_arns: Vec<&str> = members(params, "PolicyArns")
        .into_iter()
        .filter(|(_, f, _)| *f == "arn")
        .map(|(_, _, v)| v)
        .collect();
    let (key, region) = sigv4_scope(headers);
    json!({
        "role_arn": param(params, "RoleArn"),
        "role_session_name": param(params, "RoleSessionName"),
        "external_id": param(params, "ExternalId"),
        "duration_seconds": param(params, "DurationSeconds").and_then(|d| d.parse::<u64>().ok()),
        "source_identity": param(params, "SourceIdentity"),
        "tags": tags,
        "transitive_tag_keys": transitive,
        "policy_arns": policy_arns,
        "signing_access_key_id": key,
        "signing_region": region,
        "fault": fault,
        "request_id": request_id,
        "at_unix_ms": now_unix_ms(),
    })
}

async fn forward(
    state: &State,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Answer {
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let target: Uri = match format!("http://{}{path}", state.upstream).parse() {
        Ok(u) => u,
        Err(e) => {
            return json_answer(
                StatusCode::BAD_GATEWAY,
                &json!({ "error": format!("bad upstream uri: {e}") }),
            )
        }
    };
    let mut req = Request::new(Full::new(body));
    *req.method_mut() = method;
    *req.uri_mut() = target;
    copy_headers(headers, req.headers_mut());
    let result = async {
        let resp = state.client.request(req).await?;
        let (parts, body) = resp.into_parts();
        let body = http_body_util::Limited::new(body, MAX_BODY)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("upstream body: {e}"))?
            .to_bytes();
        anyhow::Ok((parts, body))
    }
    .await;
    match result {
        Ok((parts, body)) => {
            let mut answer = Response::new(Full::new(body));
            *answer.status_mut() = parts.status;
            copy_headers(&parts.headers, answer.headers_mut());
            answer
        }
        Err(e) => {
            eprintln!("sts-fault-proxy: upstream {}: {e:#}", state.upstream);
            json_answer(
                StatusCode::BAD_GATEWAY,
                &json!({ "error": format!("upstream {}: {e:#}", state.upstream) }),
            )
        }
    }
}

async fn handle(
    state: Arc<State>,
    reset: Arc<AtomicBool>,
    req: Request<Incoming>,
) -> Result<Answer, ResetConnection> {
    // The fault is taken when the request head arrives.
    let mut fault_rx = state.fault.subscribe();
    let (generation, fault) = fault_rx.borrow_and_update().clone();
    let (parts, body) = req.into_parts();
    let body = match http_body_util::Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            eprintln!("sts-fault-proxy: reading request body: {e}");
            return Err(ResetConnection);
        }
    };
    let params = params(&parts.uri, &parts.headers, &body);
    let action = param(&params, "Action").unwrap_or("(none)").to_owned();
    let applies = fault.mode != Mode::None
        && fault
            .only_action
            .as_deref()
            .is_none_or(|only| only == action);
    let mode = if applies {
        fault.mode.clone()
    } else {
        Mode::None
    };
    let n = state.request_ids.fetch_add(1, Ordering::SeqCst) + 1;
    let request_id = format!("5e5f0000-0000-4000-8000-{n:012x}");
    {
        let mut stats = state.stats.lock().unwrap_or_else(|p| p.into_inner());
        stats.total += 1;
        if applies {
            stats.faulted += 1;
        }
        *stats.by_action.entry(action.clone()).or_default() += 1;
        if action == "AssumeRole" {
            let role = param(&params, "RoleArn").unwrap_or("(none)").to_owned();
            *stats.assume_role_by_role.entry(role).or_default() += 1;
            let entry = assume_role_entry(&params, &parts.headers, mode.name(), &request_id);
            stats.assume_role_log.push(entry);
        }
    }
    eprintln!(
        "sts-fault-proxy: {} {} Action={action} fault={}",
        parts.method,
        parts.uri,
        mode.name()
    );
    match mode {
        Mode::None => Ok(forward(&state, parts.method, &parts.uri, &parts.headers, body).await),
        Mode::Latency(d) => {
            tokio::time::sleep(d).await;
            Ok(forward(&state, parts.method, &parts.uri, &parts.headers, body).await)
        }
        Mode::Throttle => Ok(sts_error(
            StatusCode::BAD_REQUEST,
            "Throttling",
            "Rate exceeded",
            &request_id,
        )),
        Mode::Status {
            code,
            error_code,
            message,
        } => {
            let (default_code, default_message) = match code.as_u16() {
                503 => (
                    "ServiceUnavailable",
                    "Service is unavailable. Please try again later.",
                ),
                500..=599 => (
                    "InternalFailure",
                    "An internal error occurred. Please try again.",
                ),
                _ => ("InvalidRequest", "The request was rejected."),
            };
            Ok(sts_error(
                code,
                error_code.as_deref().unwrap_or(default_code),
                message.as_deref().unwrap_or(default_message),
                &request_id,
            ))
        }
        Mode::Deny => {
            let role = param(&params, "RoleArn").unwrap_or("*");
            let (key, _) = sigv4_scope(&parts.headers);
            let message = format!(
                "User: {} is not authorized to perform: sts:{action} on resource: {role}",
                key.as_deref().unwrap_or("anonymous")
            );
            Ok(sts_error(
                StatusCode::FORBIDDEN,
                "AccessDenied",
                &message,
                &request_id,
            ))
        }
        Mode::Reset => {
            reset.store(true, Ordering::SeqCst);
            Err(ResetConnection)
        }
        Mode::Hang => {
            // Held until the fault changes; then the connection is reset, never answered.
            while fault_rx.borrow_and_update().0 == generation {
                if fault_rx.changed().await.is_err() {
                    break;
                }
            }
            reset.store(true, Ordering::SeqCst);
            Err(ResetConnection)
        }
    }
}

async fn control(state: Arc<State>, req: Request<Incoming>) -> Result<Answer, Infallible> {
    let (parts, body) = req.into_parts();
    let body = match http_body_util::Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return Ok(json_answer(
                StatusCode::BAD_REQUEST,
                &json!({ "error": format!("body: {e}") }),
            ))
        }
    };
    let answer = match (&parts.method, parts.uri.path()) {
        (&Method::PUT, "/fault") | (&Method::POST, "/fault") => match Fault::parse(&body) {
            Ok(fault) => {
                let v = fault.to_json();
                eprintln!("sts-fault-proxy: fault set to {v}");
                state.fault.send_modify(|(generation, f)| {
                    *generation += 1;
                    *f = fault;
                });
                json_answer(StatusCode::OK, &v)
            }
            Err(e) => json_answer(
                StatusCode::BAD_REQUEST,
                &json!({ "error": format!("{e:#}") }),
            ),
        },
        (&Method::GET, "/fault") => json_answer(StatusCode::OK, &state.fault.borrow().1.to_json()),
        (&Method::GET, "/stats") => {
            let stats = state.stats.lock().unwrap_or_else(|p| p.into_inner());
            json_answer(
                StatusCode::OK,
                &json!({
                    "total": stats.total,
                    "faulted": stats.faulted,
                    "by_action": stats.by_action,
                    "assume_role_by_role": stats.assume_role_by_role,
                    "assume_role_log": stats.assume_role_log,
                }),
            )
        }
        (&Method::POST, "/reset-stats") => {
            *state.stats.lock().unwrap_or_else(|p| p.into_inner()) = Stats::default();
            json_answer(StatusCode::OK, &json!({ "ok": true }))
        }
        (_, path) => json_answer(
            StatusCode::NOT_FOUND,
            &json!({ "error": format!("no {} {path}", parts.method) }),
        ),
    };
    Ok(answer)
}

async fn serve_proxy(listener: TcpListener, state: Arc<State>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("sts-fault-proxy: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let reset = Arc::new(AtomicBool::new(false));
        let io = TokioIo::new(ResettableStream {
            inner: stream,
            reset: Arc::clone(&reset),
        });
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let service =
                service_fn(move |req| handle(Arc::clone(&state), Arc::clone(&reset), req));
            if let Err(e) = http1::Builder::new().serve_connection(io, service).await {
                eprintln!("sts-fault-proxy: connection from {peer}: {e}");
            }
        });
    }
}

async fn serve_control(listener: TcpListener, state: Arc<State>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("sts-fault-proxy: accept (control): {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let service = service_fn(move |req| control(Arc::clone(&state), req));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

struct Args {
    listen: SocketAddr,
    upstream: SocketAddr,
    control: SocketAddr,
}

fn parse_args() -> Result<Args> {
    const USAGE: &str =
        "usage: sts-fault-proxy --listen ADDR:PORT --upstream ADDR:PORT --control ADDR:PORT";
    let (mut listen, mut upstream, mut control) = (None, None, None);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let slot = match flag.as_str() {
            "--listen" => &mut listen,
            "--upstream" => &mut upstream,
            "--control" => &mut control,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        };
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        *slot = Some(
            value
                .parse::<SocketAddr>()
                .with_context(|| format!("{flag} {value:?}"))?,
        );
    }
    Ok(Args {
        listen: listen.context(USAGE)?,
        upstream: upstream.context(USAGE)?,
        control: control.context(USAGE)?,
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let control_listener = TcpListener::bind(args.control)
        .await
        .with_context(|| format!("binding {}", args.control))?;
    let (fault, _) = watch::channel((
        0,
        Fault {
            mode: Mode::None,
            only_action: None,
        },
    ));
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    let state = Arc::new(State {
        upstream: args.upstream,
        client: Client::builder(TokioExecutor::new()).build(connector),
        fault,
        stats: Mutex::new(Stats::default()),
        request_ids: AtomicU64::new(0),
    });
    println!(
        "{}",
        json!({
            "listen": listener.local_addr()?.to_string(),
            "control": control_listener.local_addr()?.to_string(),
            "upstream": args.upstream.to_string(),
        })
    );
    tokio::spawn(serve_control(control_listener, Arc::clone(&state)));
    serve_proxy(listener, state).await;
    Ok(())
}

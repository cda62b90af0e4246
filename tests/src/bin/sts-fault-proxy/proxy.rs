//! The proxy listener: each request counted, then forwarded to the upstream STS or faulted.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::HeaderMap;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;

use http_body_util::BodyExt;

use crate::reset::{ResetConnection, ResettableStream};
use crate::state::{Mode, State};
use crate::sts::{
    assume_role_entry, copy_headers, json_answer, param, params, sigv4_scope, sts_error, Answer,
};
use crate::MAX_BODY;

pub(crate) async fn forward(
    state: &State,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Answer {
    let path = uri
        .path_and_query()
        .map_or("/", hyper::http::uri::PathAndQuery::as_str);
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

pub(crate) async fn handle(
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
        let mut stats = state
            .stats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
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

pub(crate) async fn serve_proxy(listener: TcpListener, state: Arc<State>) {
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

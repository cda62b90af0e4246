//! The control listener: set and read the fault, read and reset the counters.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;

use http_body_util::BodyExt;

use crate::state::{Fault, State, Stats};
use crate::sts::{json_answer, Answer};
use crate::MAX_BODY;

pub(crate) async fn control(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Answer, Infallible> {
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
        (&Method::PUT | &Method::POST, "/fault") => match Fault::parse(&body) {
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
            let stats = state
                .stats
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
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
            *state
                .stats
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Stats::default();
            json_answer(StatusCode::OK, &json!({ "ok": true }))
        }
        (_, path) => json_answer(
            StatusCode::NOT_FOUND,
            &json!({ "error": format!("no {} {path}", parts.method) }),
        ),
    };
    Ok(answer)
}

pub(crate) async fn serve_control(listener: TcpListener, state: Arc<State>) {
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

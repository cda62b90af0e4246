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
#![allow(
    clippy::too_many_lines,
    reason = "a test scenario or bench driver reads top to bottom, step by step"
)]

mod control;
mod proxy;
mod reset;
mod state;
mod sts;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use control::serve_control;
use proxy::serve_proxy;
use state::{Fault, Mode, State, Stats};

/// Largest request or response body relayed (STS messages are a few KiB).
const MAX_BODY: usize = 1 << 20;

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

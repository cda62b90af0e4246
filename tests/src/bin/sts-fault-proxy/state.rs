//! What the proxy holds: the fault in force ([`Fault`], its [`Mode`]), the counters and the
//! AssumeRole log ([`Stats`]), shared by both listeners ([`State`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::StatusCode;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use serde_json::{json, Value};
use tokio::sync::watch;

/// What the proxy does to a request.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Mode {
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
    pub(crate) fn name(&self) -> &'static str {
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
pub(crate) struct Fault {
    pub(crate) mode: Mode,
    pub(crate) only_action: Option<String>,
}

impl Fault {
    pub(crate) fn parse(body: &[u8]) -> Result<Fault> {
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

    pub(crate) fn to_json(&self) -> Value {
        let mut v = json!({ "mode": self.mode.name() });
        match &self.mode {
            Mode::Latency(d) => v["ms"] = json!(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
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
pub(crate) struct Stats {
    pub(crate) total: u64,
    pub(crate) faulted: u64,
    pub(crate) by_action: BTreeMap<String, u64>,
    pub(crate) assume_role_by_role: BTreeMap<String, u64>,
    pub(crate) assume_role_log: Vec<Value>,
}

pub(crate) struct State {
    pub(crate) upstream: SocketAddr,
    pub(crate) client: Client<HttpConnector, Full<Bytes>>,
    /// The fault in force, and a generation bumped on every change (held requests watch it).
    pub(crate) fault: watch::Sender<(u64, Fault)>,
    pub(crate) stats: Mutex<Stats>,
    pub(crate) request_ids: AtomicU64,
}

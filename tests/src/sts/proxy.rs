//! [`FaultProxy`]: `sts-fault-proxy` in a node's namespace, its [`Fault`]s and its [`Stats`].

use crate::time_scale::scaled;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::netns::netns_command;
use crate::node::TestNode;
use crate::process::{run_with_timeout, ChildGuard, RunOutput, DEFAULT_TIMEOUT};

use super::{proxy_bin, LogFile, PATH, PROXY_START_TIMEOUT};

/// A fault [`FaultProxy`] injects. Each applies to requests whose head arrives after it is
/// set; every request is still counted in [`Stats`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything (the default).
    None,
    /// Wait this long, then forward.
    Latency(Duration),
    /// 400 with the STS error `Throttling` / `Rate exceeded` (the SDKs retry it).
    Throttle,
    /// This status with an STS error: 500 `InternalFailure`, 503 `ServiceUnavailable`,
    /// other 5xx `InternalFailure`, 4xx `InvalidRequest`.
    Status(u16),
    /// Close the client connection without answering, with a TCP RST.
    Reset,
    /// Never answer; when the fault is changed the held connections are reset.
    Hang,
    /// 403 with the STS error `AccessDenied`.
    Deny,
}

impl Fault {
    /// The control API's JSON for this fault.
    pub fn to_json(self) -> Value {
        match self {
            Fault::None => json!({ "mode": "none" }),
            Fault::Latency(d) => json!({ "mode": "latency", "ms": d.as_millis() as u64 }),
            Fault::Throttle => json!({ "mode": "throttle" }),
            Fault::Status(code) => json!({ "mode": "status", "code": code }),
            Fault::Reset => json!({ "mode": "reset" }),
            Fault::Hang => json!({ "mode": "hang" }),
            Fault::Deny => json!({ "mode": "deny" }),
        }
    }
}

/// One `AssumeRole` the proxy saw.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct AssumeRoleCall {
    /// `RoleArn`.
    pub role_arn: Option<String>,
    /// `RoleSessionName`.
    pub role_session_name: Option<String>,
    /// `ExternalId`.
    pub external_id: Option<String>,
    /// `DurationSeconds`.
    pub duration_seconds: Option<u64>,
    /// `SourceIdentity`.
    pub source_identity: Option<String>,
    /// `Tags.member.N.Key/Value`, in order.
    pub tags: Vec<Tag>,
    /// `TransitiveTagKeys.member.N`.
    pub transitive_tag_keys: Vec<String>,
    /// `PolicyArns.member.N.arn`.
    pub policy_arns: Vec<String>,
    /// Access key id of the SigV4 `Authorization` header (who signed the call).
    pub signing_access_key_id: Option<String>,
    /// Region of the SigV4 credential scope.
    pub signing_region: Option<String>,
    /// The fault the call got (`none`, `latency`, `throttle`, `status`, `deny`, `reset`,
    /// `hang`).
    pub fault: String,
    /// Request id the proxy gave the call (also in its error bodies).
    pub request_id: String,
    /// When the call arrived, in milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
}

/// A session tag.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Tag {
    /// `Key` (empty if missing).
    pub key: String,
    /// `Value` (empty if missing).
    pub value: String,
}

/// The proxy's counters (`GET /stats`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Stats {
    /// Requests received.
    pub total: u64,
    /// Requests a fault applied to.
    pub faulted: u64,
    /// Requests by STS `Action` (`(none)` when missing).
    pub by_action: BTreeMap<String, u64>,
    /// `AssumeRole` requests by `RoleArn`.
    pub assume_role_by_role: BTreeMap<String, u64>,
    /// Every `AssumeRole`, in arrival order.
    pub assume_role_log: Vec<AssumeRoleCall>,
}

impl Stats {
    /// `AssumeRole` requests (faulted ones included).
    pub fn assume_role_calls(&self) -> u64 {
        self.by_action.get("AssumeRole").copied().unwrap_or(0)
    }

    /// `AssumeRole` requests for `role_arn`.
    pub fn assume_role_calls_for(&self, role_arn: &str) -> u64 {
        self.assume_role_by_role.get(role_arn).copied().unwrap_or(0)
    }
}

/// `sts-fault-proxy` in a node's namespace, in front of an upstream STS. Killed on drop.
#[derive(Debug)]
pub struct FaultProxy {
    // Field order is drop order: the process first, then its log.
    _child: ChildGuard,
    listen: SocketAddr,
    control: SocketAddr,
    netns: PathBuf,
    log: LogFile,
}

#[derive(Deserialize)]
struct Ready {
    listen: SocketAddr,
    control: SocketAddr,
}

impl FaultProxy {
    /// Starts the proxy in `node`'s namespace on free ports of `127.0.0.1`, forwarding to
    /// `upstream` (an address in that namespace, e.g. [`MotoSts::addr`](super::MotoSts::addr)).
    pub fn start(node: &TestNode, upstream: SocketAddr) -> Result<FaultProxy> {
        let bin = proxy_bin();
        if !bin.is_file() {
            bail!(
                "{} is missing (run `cargo build -p iamlet-tests --bins` or set IAMLET_STS_PROXY)",
                bin.display()
            );
        }
        let (log, file) = LogFile::create("sts-proxy")?;
        let mut cmd = node.command(&bin);
        cmd.args(["--listen", "127.0.0.1:0", "--control", "127.0.0.1:0"])
            .arg("--upstream")
            .arg(upstream.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(file);
        let mut child = ChildGuard::spawn(&mut cmd)?;
        let stdout = child.stdout.take().context("proxy stdout")?;
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let Ok(line) = rx.recv_timeout(scaled(PROXY_START_TIMEOUT)) else {
            bail!(
                "{} printed no ready line after {PROXY_START_TIMEOUT:?}:\n{}",
                bin.display(),
                log.read()
            );
        };
        let ready: Ready = serde_json::from_str(line.trim()).with_context(|| {
            format!(
                "{} did not start (ready line {line:?}):\n{}",
                bin.display(),
                log.read()
            )
        })?;
        Ok(FaultProxy {
            _child: child,
            listen: ready.listen,
            control: ready.control,
            netns: node.netns_path().to_path_buf(),
            log,
        })
    }

    /// The address STS clients use (`127.0.0.1:<port>` in the node namespace).
    pub fn addr(&self) -> SocketAddr {
        self.listen
    }

    /// `http://127.0.0.1:<port>`: what the agent gets as `--sts-endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.listen)
    }

    /// The control API's address (in the node namespace).
    pub fn control_addr(&self) -> SocketAddr {
        self.control
    }

    /// The proxy's stderr so far (a line per request and per fault change).
    pub fn log(&self) -> String {
        self.log.read()
    }

    /// Calls the control API with curl in the node namespace; returns the JSON answer.
    fn control_call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let mut cmd = netns_command(&self.netns, "curl".as_ref());
        cmd.args([
            "-sS",
            "--noproxy",
            "*",
            "-m",
            "10",
            "--fail-with-body",
            "-X",
            method,
        ])
        .env_clear()
        .env("PATH", PATH);
        if let Some(body) = body {
            cmd.args(["-H", "content-type: application/json", "--data-binary"])
                .arg(body.to_string());
        }
        cmd.arg(format!("http://{}{path}", self.control));
        let out: RunOutput = run_with_timeout(&mut cmd, DEFAULT_TIMEOUT)?;
        if !out.success() {
            bail!("sts-fault-proxy control {method} {path} failed:\n{out}");
        }
        serde_json::from_str(&out.stdout)
            .with_context(|| format!("sts-fault-proxy control {method} {path}: {}", out.stdout))
    }

    /// Sets the fault for every request.
    pub fn set_fault(&self, fault: Fault) -> Result<()> {
        self.control_call("PUT", "/fault", Some(&fault.to_json()))
            .map(drop)
    }

    /// Sets the fault for requests with STS `Action` `action` only (e.g. `AssumeRole`); others
    /// are forwarded.
    pub fn set_fault_only(&self, fault: Fault, action: &str) -> Result<()> {
        let mut v = fault.to_json();
        v["only_action"] = json!(action);
        self.control_call("PUT", "/fault", Some(&v)).map(drop)
    }

    /// Sets a raw control-API fault, e.g. `{"mode":"status","code":400,"error_code":
    /// "ExpiredToken","message":"..."}`.
    pub fn set_fault_json(&self, fault: &Value) -> Result<()> {
        self.control_call("PUT", "/fault", Some(fault)).map(drop)
    }

    /// Back to forwarding everything ([`Fault::None`]); held ([`Fault::Hang`]) connections
    /// are reset.
    pub fn clear(&self) -> Result<()> {
        self.set_fault(Fault::None)
    }

    /// The counters and the `AssumeRole` log.
    pub fn stats(&self) -> Result<Stats> {
        let v = self.control_call("GET", "/stats", None)?;
        serde_json::from_value(v).context("parsing sts-fault-proxy stats")
    }

    /// `AssumeRole` requests seen so far (faulted ones included).
    ///
    /// # Panics
    ///
    /// If the control API cannot be reached (use [`FaultProxy::stats`] to handle that).
    pub fn assume_role_calls(&self) -> u64 {
        match self.stats() {
            Ok(s) => s.assume_role_calls(),
            Err(e) => panic!("sts-fault-proxy stats: {e:#}"),
        }
    }

    /// Waits until at least `n` `AssumeRole` requests were seen; returns the count.
    pub fn wait_assume_role_calls(&self, n: u64, timeout: Duration) -> Result<u64> {
        let deadline = Instant::now() + scaled(timeout);
        loop {
            let seen = self.stats()?.assume_role_calls();
            if seen >= n {
                return Ok(seen);
            }
            if Instant::now() >= deadline {
                bail!("{seen} AssumeRole calls after {timeout:?}, expected at least {n}");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Zeroes the counters and the log.
    pub fn reset_stats(&self) -> Result<()> {
        self.control_call("POST", "/reset-stats", None).map(drop)
    }
}

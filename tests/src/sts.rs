//! A real STS for tests: moto's server behind `sts-fault-proxy`, both in a [`TestNode`]'s
//! network namespace, on `127.0.0.1`. The agent runs there too and is pointed at
//! [`FaultProxy::endpoint`] with `--sts-endpoint`.
//!
//! * [`MotoSts`]: `python -m moto.server -H 127.0.0.1 -p <port>` from the SDK venv
//!   (`target/sdk/venv`, installed by `cargo xtask setup` from `tests/python/requirements.txt`).
//!   moto's STS answers `AssumeRole` for any role ARN (no IAM role needs to exist, nothing is
//!   authorised or signature-checked), and `GetCallerIdentity` with the returned credentials
//!   answers `arn:aws:sts::<account>:assumed-role/<role name>/<session name>`.
//! * [`FaultProxy`]: the `sts-fault-proxy` binary between the agent and moto. It counts calls
//!   by STS action and role, logs every `AssumeRole`'s parameters ([`Stats`]), and injects a
//!   [`Fault`] on demand. The test process is not in the node namespace, so the control API is
//!   driven with `curl` run there.
//! * [`boto3_sts`], [`assume_role`], [`caller_identity`]: boto3 calls from the venv, run in
//!   the node namespace with dummy credentials (`testing`/`testing`, `us-east-1`) unless
//!   others are given.
//!
//! Everything started here is killed on drop ([`ChildGuard`]).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::clients::{python, ClientCreds};
use crate::netns::netns_command;
use crate::node::TestNode;
use crate::process::{run_with_timeout, ChildGuard, RunOutput, DEFAULT_TIMEOUT};

/// Access key id of the dummy credentials boto3 calls use by default.
pub const DUMMY_ACCESS_KEY: &str = "testing";
/// Secret of the dummy credentials.
pub const DUMMY_SECRET: &str = "testing";
/// Region of the boto3 calls.
pub const REGION: &str = "us-east-1";
/// The account moto uses for callers it does not know (and for the dummy credentials).
pub const MOTO_ACCOUNT: &str = "123456789012";

/// How long moto may take to listen (it imports Flask and moto: about 2 s here).
const MOTO_START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the proxy may take to print its ready line.
const PROXY_START_TIMEOUT: Duration = Duration::from_secs(10);
/// `PATH` of the commands run here.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Next port tried for moto (ports are per network namespace; the node namespace only holds
/// what the test starts, so a counter plus an `ss` check suffices).
static NEXT_PORT: AtomicU16 = AtomicU16::new(15_000);
/// Distinguishes log files of this process.
static LOG_COUNTER: AtomicU32 = AtomicU32::new(0);

/// The `sts-fault-proxy` binary: `$IAMLET_STS_PROXY`, else next to the running executable
/// (a test binary lives in `target/<profile>/deps`, a bin in `target/<profile>`), else
/// `<workspace>/target/debug/sts-fault-proxy`.
pub fn proxy_bin() -> PathBuf {
    crate::process::workspace_binary("sts-fault-proxy", "IAMLET_STS_PROXY")
}

/// `Ok(())` if moto and the proxy can run here, else what is missing and how to get it.
pub fn sts_available() -> std::result::Result<(), String> {
    let py = python();
    if !py.is_file() {
        return Err(format!(
            "moto unavailable: {} is missing (run `cargo xtask setup` or set IAMLET_PYTHON)",
            py.display()
        ));
    }
    let mut cmd = Command::new(&py);
    cmd.args(["-c", "import moto, flask, flask_cors, boto3"]);
    match run_with_timeout(&mut cmd, DEFAULT_TIMEOUT) {
        Ok(out) if out.success() => {}
        Ok(out) => {
            return Err(format!(
                "moto unavailable: {} cannot import moto[server] (run `cargo xtask setup`):\n{}",
                py.display(),
                out.stderr
            ))
        }
        Err(e) => return Err(format!("moto unavailable: {e:#}")),
    }
    let bin = proxy_bin();
    if !bin.is_file() {
        return Err(format!(
            "{} is missing (run `cargo build -p iamlet-tests --bins` or set IAMLET_STS_PROXY)",
            bin.display()
        ));
    }
    Ok(())
}

/// A log file in the temp directory, removed on drop.
#[derive(Debug)]
struct LogFile(PathBuf);

impl LogFile {
    fn create(what: &str) -> Result<(LogFile, File)> {
        let path = std::env::temp_dir().join(format!(
            "iamlet-test-{what}-{}-{}.log",
            std::process::id(),
            LOG_COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok((LogFile(path), file))
    }

    fn read(&self) -> String {
        std::fs::read(&self.0)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|e| format!("(cannot read {}: {e})", self.0.display()))
    }
}

impl Drop for LogFile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.0) {
            eprintln!("iamlet-tests: cannot remove {}: {e}", self.0.display());
        }
    }
}

/// Whether anything in `node`'s namespace listens on TCP `port` (any address).
fn port_in_use(node: &TestNode, port: u16) -> Result<bool> {
    let out = node.run(&["ss", "-Hltn"])?.ensure_success()?;
    Ok(out
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .filter_map(|local| local.rsplit_once(':'))
        .any(|(_, p)| p.parse() == Ok(port)))
}

/// moto's server (all services; the tests use STS) on `127.0.0.1:<port>` in a node's
/// namespace. Killed on drop.
#[derive(Debug)]
pub struct MotoSts {
    // Field order is drop order: the process first, then its log.
    _child: ChildGuard,
    addr: SocketAddr,
    startup: Duration,
    log: LogFile,
}

impl MotoSts {
    /// Starts moto in `node`'s namespace on a free port and waits until it listens and has
    /// answered one STS call (so its STS backend is loaded before the test's first call).
    pub fn start(node: &TestNode) -> Result<MotoSts> {
        if let Err(why) = sts_available() {
            bail!("{why}");
        }
        let mut last_err = None;
        for _ in 0..5 {
            let port = NEXT_PORT.fetch_add(1, Ordering::SeqCst);
            if port_in_use(node, port)? {
                continue;
            }
            match Self::start_on(node, port) {
                Ok(moto) => return Ok(moto),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("no free port for moto")))
    }

    fn start_on(node: &TestNode, port: u16) -> Result<MotoSts> {
        let started = Instant::now();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let (log, file) = LogFile::create("moto")?;
        let mut cmd = node.command(python());
        // All addresses of the node namespace, so pods can reach it at the node's address too
        // (the demo's GetCallerIdentity); nothing outside the test's namespaces can.
        cmd.args(["-m", "moto.server", "-H", "0.0.0.0", "-p"])
            .arg(port.to_string())
            .env_clear()
            .env("PATH", PATH)
            .env("HOME", "/nonexistent")
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        let mut child = ChildGuard::spawn(&mut cmd)?;
        let deadline = started + MOTO_START_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "moto on {addr} exited with {status} while starting:\n{}",
                    log.read()
                );
            }
            if node
                .wait_listening(addr, Duration::from_millis(100))
                .is_ok()
            {
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "moto does not listen on {addr} after {MOTO_START_TIMEOUT:?}:\n{}",
                    log.read()
                );
            }
        }
        let moto = MotoSts {
            _child: child,
            addr,
            startup: Duration::ZERO,
            log,
        };
        // One unsigned-looking but STS-scoped call loads moto's STS backend (moto routes by
        // the service in the SigV4 scope; without one it would answer as S3).
        let out = node.run(&[
            "curl",
            "-sS",
            "--noproxy",
            "*",
            "-m",
            "30",
            "--fail-with-body",
            "-H",
            "Authorization: AWS4-HMAC-SHA256 Credential=AKIAWARMUP/20260101/us-east-1/sts/aws4_request, SignedHeaders=host, Signature=0",
            "--data",
            "Action=GetCallerIdentity&Version=2011-06-15",
            &format!("{}/", moto.endpoint()),
        ])?;
        if !out.success() || !out.stdout.contains("GetCallerIdentityResult") {
            bail!(
                "moto on {addr} does not answer STS:\n{out}\n--- moto log ---\n{}",
                moto.log()
            );
        }
        Ok(MotoSts {
            startup: started.elapsed(),
            ..moto
        })
    }

    /// `127.0.0.1:<port>` (in the node namespace).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The endpoint as pods reach it (the node's address).
    pub fn pod_endpoint(&self) -> String {
        format!("http://{}:{}", crate::node::NODE_PROXY_V4, self.addr.port())
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How long [`MotoSts::start`] took until moto answered STS.
    pub fn startup(&self) -> Duration {
        self.startup
    }

    /// moto's output so far (a line per request).
    pub fn log(&self) -> String {
        self.log.read()
    }
}

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
    /// `upstream` (an address in that namespace, e.g. [`MotoSts::addr`]).
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
        let line = match rx.recv_timeout(PROXY_START_TIMEOUT) {
            Ok(line) => line,
            Err(_) => bail!(
                "{} printed no ready line after {PROXY_START_TIMEOUT:?}:\n{}",
                bin.display(),
                log.read()
            ),
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
        let deadline = Instant::now() + timeout;
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

/// boto3 settings for [`boto3_sts`].
#[derive(Clone, Debug)]
pub struct Boto3Options {
    /// Credentials to sign with; `None`: the dummy [`DUMMY_ACCESS_KEY`] / [`DUMMY_SECRET`].
    pub creds: Option<ClientCreds>,
    /// botocore `connect_timeout`.
    pub connect_timeout: Duration,
    /// botocore `read_timeout`.
    pub read_timeout: Duration,
    /// botocore `total_max_attempts` (standard retry mode); 1 means no retry.
    pub max_attempts: u32,
}

impl Default for Boto3Options {
    /// Dummy credentials, 5 s connect and read timeouts, no retry.
    fn default() -> Self {
        Boto3Options {
            creds: None,
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(5),
            max_attempts: 1,
        }
    }
}

/// How a boto3 call ended.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Boto3Outcome {
    /// The operation's result, `ResponseMetadata` removed, datetimes as ISO 8601 strings.
    Ok {
        /// The result.
        result: Value,
        /// Time the call took.
        elapsed_ms: f64,
    },
    /// `botocore.exceptions.ClientError`: the service answered with an error.
    ClientError {
        /// The error code (`Throttling`, `AccessDenied`, ...).
        code: String,
        /// The error message.
        message: String,
        /// HTTP status of the answer.
        http_status: u16,
        /// Time the call took.
        elapsed_ms: f64,
    },
    /// A transport error (`ConnectionClosedError`, `ReadTimeoutError`,
    /// `EndpointConnectionError`, ...).
    ConnectionError {
        /// The botocore exception's class name.
        kind: String,
        /// Its message.
        message: String,
        /// Time the call took.
        elapsed_ms: f64,
    },
}

impl Boto3Outcome {
    /// Time the call took, measured around the call alone.
    pub fn elapsed(&self) -> Duration {
        let ms = match self {
            Boto3Outcome::Ok { elapsed_ms, .. }
            | Boto3Outcome::ClientError { elapsed_ms, .. }
            | Boto3Outcome::ConnectionError { elapsed_ms, .. } => *elapsed_ms,
        };
        Duration::from_secs_f64(ms.max(0.0) / 1000.0)
    }

    /// The result, or an error describing the failure.
    pub fn into_result(self) -> Result<Value> {
        match self {
            Boto3Outcome::Ok { result, .. } => Ok(result),
            other => bail!("boto3 call failed: {other:?}"),
        }
    }
}

const BOTO3_SCRIPT: &str = r#"
import json, sys, time
import boto3, botocore.config, botocore.exceptions as be
endpoint, op, params, opts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
cfg = botocore.config.Config(connect_timeout=opts["connect_timeout"], read_timeout=opts["read_timeout"],
                             retries={"mode": "standard", "total_max_attempts": opts["max_attempts"]})
kw = {}
if opts.get("creds"):
    c = opts["creds"]
    kw = dict(aws_access_key_id=c["access_key_id"], aws_secret_access_key=c["secret_access_key"],
              aws_session_token=c.get("session_token"))
client = boto3.client("sts", endpoint_url=endpoint, region_name=opts["region"], config=cfg, **kw)
start = time.monotonic()
def out(d):
    d["elapsed_ms"] = (time.monotonic() - start) * 1000.0
    print(json.dumps(d, default=lambda o: o.isoformat() if hasattr(o, "isoformat") else str(o)))
try:
    r = getattr(client, op)(**params)
    r.pop("ResponseMetadata", None)
    out({"outcome": "ok", "result": r})
except be.ClientError as e:
    err = e.response.get("Error", {})
    out({"outcome": "client_error", "code": err.get("Code", ""), "message": err.get("Message", ""),
         "http_status": e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)})
except (be.ConnectionError, be.HTTPClientError) as e:
    out({"outcome": "connection_error", "kind": type(e).__name__, "message": str(e)})
"#;

/// Calls STS operation `op` (boto3's name, e.g. `assume_role`) with `params` (boto3's keyword
/// arguments) at `endpoint`, from the venv's boto3 run in `node`'s namespace with a clean
/// environment (`PATH`, `HOME=/nonexistent`, no config files, IMDS disabled).
pub fn boto3_sts(
    node: &TestNode,
    endpoint: &str,
    op: &str,
    params: &Value,
    opts: &Boto3Options,
) -> Result<Boto3Outcome> {
    let creds = opts.creds.as_ref().map(|c| {
        json!({
            "access_key_id": c.access_key_id,
            "secret_access_key": c.secret_access_key,
            "session_token": c.session_token,
        })
    });
    let opts_json = json!({
        "creds": creds,
        "connect_timeout": opts.connect_timeout.as_secs_f64(),
        "read_timeout": opts.read_timeout.as_secs_f64(),
        "max_attempts": opts.max_attempts,
        "region": REGION,
    });
    let mut cmd = node.command(python());
    cmd.args(["-c", BOTO3_SCRIPT, endpoint, op])
        .arg(params.to_string())
        .arg(opts_json.to_string())
        .env_clear()
        .env("PATH", PATH)
        .env("HOME", "/nonexistent")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ACCESS_KEY_ID", DUMMY_ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", DUMMY_SECRET)
        .env("AWS_DEFAULT_REGION", REGION);
    let budget = opts.connect_timeout + opts.read_timeout;
    let timeout = DEFAULT_TIMEOUT + budget * opts.max_attempts.max(1);
    let out = run_with_timeout(&mut cmd, timeout)?;
    let line = out.stdout.lines().rev().find(|l| !l.trim().is_empty());
    line.and_then(|l| serde_json::from_str(l).ok())
        .with_context(|| format!("boto3 sts {op} printed no outcome:\n{out}"))
}

/// Credentials and identity an `AssumeRole` returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AssumedRole {
    /// The credentials (`expiration` as boto3 prints it, e.g. `2026-01-02T03:04:05.123456+00:00`).
    pub creds: ClientCreds,
    /// `AssumedRoleUser.Arn` (`arn:aws:sts::<account>:assumed-role/<role>/<session>`).
    pub arn: String,
}

/// `AssumeRole` of `role_arn` as session `session_name`, with the dummy credentials.
pub fn assume_role(
    node: &TestNode,
    endpoint: &str,
    role_arn: &str,
    session_name: &str,
) -> Result<AssumedRole> {
    let params = json!({ "RoleArn": role_arn, "RoleSessionName": session_name });
    let r = boto3_sts(
        node,
        endpoint,
        "assume_role",
        &params,
        &Boto3Options::default(),
    )?
    .into_result()?;
    let s = |v: &Value| v.as_str().map(str::to_owned);
    let c = &r["Credentials"];
    Ok(AssumedRole {
        creds: ClientCreds {
            access_key_id: s(&c["AccessKeyId"]).context("no AccessKeyId")?,
            secret_access_key: s(&c["SecretAccessKey"]).context("no SecretAccessKey")?,
            session_token: s(&c["SessionToken"]),
            expiration: s(&c["Expiration"]),
        },
        arn: s(&r["AssumedRoleUser"]["Arn"]).context("no AssumedRoleUser.Arn")?,
    })
}

/// What `GetCallerIdentity` answered.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CallerIdentity {
    /// `UserId` (`AROA...:<session>` for an assumed role).
    pub user_id: String,
    /// `Account`.
    pub account: String,
    /// `Arn` (`arn:aws:sts::<account>:assumed-role/<role>/<session>` for an assumed role).
    pub arn: String,
}

/// `GetCallerIdentity` at `endpoint` signed with `creds` (e.g. what a pod's SDK got from the
/// agent), from the node namespace.
pub fn caller_identity(
    node: &TestNode,
    endpoint: &str,
    creds: &ClientCreds,
) -> Result<CallerIdentity> {
    let opts = Boto3Options {
        creds: Some(creds.clone()),
        ..Boto3Options::default()
    };
    let r = boto3_sts(node, endpoint, "get_caller_identity", &json!({}), &opts)?.into_result()?;
    serde_json::from_value(r).context("parsing GetCallerIdentity")
}

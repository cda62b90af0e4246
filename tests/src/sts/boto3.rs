//! boto3 calls to STS from the SDK venv, run in a node's namespace.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::clients::{python, ClientCreds};
use crate::node::TestNode;
use crate::process::{run_with_timeout, DEFAULT_TIMEOUT};

use super::{DUMMY_ACCESS_KEY, DUMMY_SECRET, PATH, REGION};

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

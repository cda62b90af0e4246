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
//! Everything started here is killed on drop ([`ChildGuard`](crate::ChildGuard)). The parts:
//! `moto.rs`, `proxy.rs` (the proxy, its faults and stats), `boto3.rs`.

mod boto3;
mod moto;
mod proxy;

pub use boto3::{
    assume_role, boto3_sts, caller_identity, AssumedRole, Boto3Options, Boto3Outcome,
    CallerIdentity,
};
pub use moto::MotoSts;
pub use proxy::{AssumeRoleCall, Fault, FaultProxy, Stats, Tag};

use std::fs::File;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::clients::python;
use crate::node::TestNode;
use crate::process::{run_with_timeout, DEFAULT_TIMEOUT};

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
        std::fs::read(&self.0).map_or_else(
            |e| format!("(cannot read {}: {e})", self.0.display()),
            |b| String::from_utf8_lossy(&b).into_owned(),
        )
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

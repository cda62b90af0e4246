//! Real AWS SDK clients, run inside a [`FakePod`], fetching credentials from the instance
//! metadata service at the SDKs' default endpoint (`http://169.254.169.254`).
//!
//! Each client runs with a cleared environment: only `PATH` and `HOME` (a fresh empty
//! directory, also the working directory) are set, so no `AWS_*` variable and no `~/.aws`
//! file can change what the SDK does; IMDS is the only credential source left.
//!
//! | [`Sdk`] | program | installed by `cargo xtask setup` |
//! |---|---|---|
//! | [`Sdk::Boto3`] | `$IAMLET_PYTHON tests/python/imds_client.py` | venv `target/sdk/venv` from `tests/python/requirements.txt` |
//! | [`Sdk::Boto3ImdsV1`] | the same with `--imds-v1` | the same |
//! | [`Sdk::JsV3`] | `node $IAMLET_JS_DIR/imds-client.js` | `npm ci` in `tests/js` |
//! | [`Sdk::Rust`] | `$IAMLET_RUST_CLIENT` (`imds-client-rs`) | `cargo build -p iamlet-tests --bins` |
//!
//! Every client prints one JSON line (see [`ClientCreds`]) or exits non-zero with the SDK's
//! debug log on stderr.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::pod::FakePod;
use crate::process::{run_with_timeout, workspace_binary, workspace_root};

/// How long a client may take before it is killed and the fetch fails.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// `PATH` the clients get.
const CLIENT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// An AWS SDK whose default IMDS credential provider a test can run in a pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Sdk {
    /// boto3/botocore: `boto3.Session().get_credentials()` through the default chain
    /// (IMDSv2: `PUT /latest/api/token`, then GETs with the token).
    Boto3,
    /// boto3 with the IMDSv2 token fetch patched to return `None`, as botocore does when the
    /// PUT is refused or times out: tokenless IMDSv1 GETs.
    Boto3ImdsV1,
    /// AWS SDK for JavaScript v3: `fromInstanceMetadata()` from
    /// `@aws-sdk/credential-providers`.
    JsV3,
    /// AWS SDK for Rust: `aws_config::imds::credentials::ImdsCredentialsProvider`.
    Rust,
}

impl Sdk {
    /// Every SDK.
    pub const ALL: [Sdk; 4] = [Sdk::Boto3, Sdk::Boto3ImdsV1, Sdk::JsV3, Sdk::Rust];

    /// Short name (`boto3`, `boto3-imdsv1`, `js-v3`, `rust`).
    pub fn name(self) -> &'static str {
        match self {
            Sdk::Boto3 => "boto3",
            Sdk::Boto3ImdsV1 => "boto3-imdsv1",
            Sdk::JsV3 => "js-v3",
            Sdk::Rust => "rust",
        }
    }
}

impl fmt::Display for Sdk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Credentials as a client printed them.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ClientCreds {
    /// `AccessKeyId`.
    pub access_key_id: String,
    /// `SecretAccessKey`.
    pub secret_access_key: String,
    /// `Token`.
    pub session_token: Option<String>,
    /// When the SDK thinks the credentials expire, as an ISO 8601 / RFC 3339 string in the
    /// SDK's own format (boto3: `2026-01-02T03:04:05+00:00`, JS: `2026-01-02T03:04:05.000Z`,
    /// Rust: `2026-01-02T03:04:05Z`); `None` if the SDK exposes none.
    pub expiration: Option<String>,
}

/// What a client prints: the credentials plus how long the SDK call took.
#[derive(Deserialize)]
struct ClientOutput {
    #[serde(flatten)]
    creds: ClientCreds,
    fetch_ms: f64,
}

/// The venv's Python: `$IAMLET_PYTHON`, else `<workspace>/target/sdk/venv/bin/python`.
pub fn python() -> PathBuf {
    match std::env::var_os("IAMLET_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => workspace_root().join("target/sdk/venv/bin/python"),
    }
}

/// The boto3 client script (`tests/python/imds_client.py`).
pub fn python_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python/imds_client.py")
}

/// The JS package directory (with `node_modules`): `$IAMLET_JS_DIR`, else
/// `<workspace>/tests/js`.
pub fn js_dir() -> PathBuf {
    match std::env::var_os("IAMLET_JS_DIR") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("js"),
    }
}

/// The `node` binary: `$IAMLET_NODE`, else the first `node` on the caller's `PATH`, else
/// `/usr/bin/node`.
pub fn node() -> PathBuf {
    if let Some(p) = std::env::var_os("IAMLET_NODE") {
        return PathBuf::from(p);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("node"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("/usr/bin/node"))
}

/// The `imds-client-rs` binary: `$IAMLET_RUST_CLIENT`, else next to the running executable
/// (a test binary lives in `target/<profile>/deps`, a bin in `target/<profile>`), else
/// `<workspace>/target/debug/imds-client-rs`.
pub fn rust_client() -> PathBuf {
    workspace_binary("imds-client-rs", "IAMLET_RUST_CLIENT")
}

/// `Ok(())` if `sdk`'s client can run here, else what is missing and how to get it.
pub fn sdk_available(sdk: Sdk) -> std::result::Result<(), String> {
    let missing = |what: &Path, fix: &str| {
        Err(format!(
            "{sdk} client unavailable: {} is missing ({fix})",
            what.display()
        ))
    };
    match sdk {
        Sdk::Boto3 | Sdk::Boto3ImdsV1 => {
            let py = python();
            if !py.is_file() {
                return missing(&py, "run `cargo xtask setup` or set IAMLET_PYTHON");
            }
            let script = python_script();
            if !script.is_file() {
                return missing(&script, "part of the source tree");
            }
            let mut cmd = Command::new(&py);
            cmd.args(["-c", "import boto3, botocore; print(boto3.__version__)"]);
            match run_with_timeout(&mut cmd, Duration::from_secs(20)) {
                Ok(out) if out.success() => Ok(()),
                Ok(out) => Err(format!(
                    "{sdk} client unavailable: {} cannot import boto3 (run `cargo xtask setup`):\n{}",
                    py.display(),
                    out.stderr
                )),
                Err(e) => Err(format!("{sdk} client unavailable: {e:#}")),
            }
        }
        Sdk::JsV3 => {
            let node = node();
            if !node.is_file() {
                return missing(&node, "install Node.js >= 20 or set IAMLET_NODE");
            }
            let dir = js_dir();
            let script = dir.join("imds-client.js");
            if !script.is_file() {
                return missing(&script, "part of the source tree, or fix IAMLET_JS_DIR");
            }
            let pkg = dir.join("node_modules/@aws-sdk/credential-providers/package.json");
            if !pkg.is_file() {
                return missing(&pkg, "run `cargo xtask setup` (npm ci in tests/js)");
            }
            Ok(())
        }
        Sdk::Rust => {
            let bin = rust_client();
            if !bin.is_file() {
                return missing(
                    &bin,
                    "run `cargo build -p iamlet-tests --bins` or set IAMLET_RUST_CLIENT",
                );
            }
            Ok(())
        }
    }
}

/// An empty directory used as `HOME` and working directory of one client run; removed on
/// drop.
struct TempHome(PathBuf);

static HOME_COUNTER: AtomicU32 = AtomicU32::new(0);

impl TempHome {
    fn new() -> Result<TempHome> {
        let path = std::env::temp_dir().join(format!(
            "iamlet-sdk-home-{}-{}",
            std::process::id(),
            HOME_COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        if path.exists() {
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("removing stale {}", path.display()))?;
        }
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TempHome(path))
    }
}

impl Drop for TempHome {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("iamlet-tests: cannot remove {}: {e}", self.0.display());
        }
    }
}

/// The command running `sdk`'s client in `pod` with only `PATH` and `HOME=home` set and
/// `home` as working directory.
pub fn client_command(pod: &FakePod, sdk: Sdk, home: &Path) -> Command {
    let mut cmd = match sdk {
        Sdk::Boto3 | Sdk::Boto3ImdsV1 => {
            let mut cmd = pod.command(python());
            cmd.arg(python_script());
            if sdk == Sdk::Boto3ImdsV1 {
                cmd.arg("--imds-v1");
            }
            cmd
        }
        Sdk::JsV3 => {
            let mut cmd = pod.command(node());
            cmd.arg(js_dir().join("imds-client.js"));
            cmd
        }
        Sdk::Rust => pod.command(rust_client()),
    };
    cmd.env_clear()
        .env("PATH", CLIENT_PATH)
        .env("HOME", home)
        .current_dir(home);
    if sdk == Sdk::Rust && crate::time_scale() > 1 {
        // Under emulation only: the Rust client stretches the SDK's own timeouts by the same
        // factor (see `imds-client-rs`). On the host it runs with the SDK's defaults.
        cmd.env(
            crate::time_scale::TIME_SCALE_ENV,
            crate::time_scale().to_string(),
        );
    }
    cmd
}

/// Runs `sdk`'s client in `pod` (killed after [`CLIENT_TIMEOUT`]) and returns the
/// credentials it got.
pub fn fetch_credentials(pod: &FakePod, sdk: Sdk) -> Result<ClientCreds> {
    fetch_credentials_timed(pod, sdk).map(|(creds, _)| creds)
}

/// Like [`fetch_credentials`], also returning how long the SDK's credential call took, as
/// measured by the client around that call alone (interpreter start-up and imports are not
/// included).
pub fn fetch_credentials_timed(pod: &FakePod, sdk: Sdk) -> Result<(ClientCreds, Duration)> {
    if let Err(why) = sdk_available(sdk) {
        bail!("{why}");
    }
    let home = TempHome::new()?;
    let mut cmd = client_command(pod, sdk, &home.0);
    let out = run_with_timeout(&mut cmd, CLIENT_TIMEOUT)
        .with_context(|| format!("{sdk} client in pod {}", pod.name()))?;
    if !out.success() {
        bail!(
            "{sdk} client in pod {} failed ({}):\n--- stderr ---\n{}\n--- stdout ---\n{}",
            pod.name(),
            out.status,
            out.stderr.trim_end(),
            out.stdout.trim_end()
        );
    }
    let line = out.stdout.lines().rev().find(|l| !l.trim().is_empty());
    let parsed: ClientOutput = line
        .and_then(|l| serde_json::from_str(l).ok())
        .with_context(|| {
            format!(
                "{sdk} client in pod {} printed no credentials JSON:\n--- stdout ---\n{}\n--- stderr ---\n{}",
                pod.name(),
                out.stdout.trim_end(),
                out.stderr.trim_end()
            )
        })?;
    let took = Duration::from_secs_f64(parsed.fetch_ms.max(0.0) / 1000.0);
    Ok((parsed.creds, took))
}

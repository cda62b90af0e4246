//! [`MotoSts`]: moto's server in a node's namespace.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::clients::python;
use crate::node::TestNode;
use crate::process::ChildGuard;

use super::{port_in_use, sts_available, LogFile, MOTO_START_TIMEOUT, NEXT_PORT, PATH};

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
        // Its first call imports botocore's models: seconds here, more than 30 in a slow
        // emulated guest, so the wait follows the time scale.
        let wait = crate::time_scale::scaled(Duration::from_secs(30));
        let out = node.run_timeout(
            &[
            "curl",
            "-sS",
            "--noproxy",
            "*",
            "-m",
            &wait.as_secs().to_string(),
            "--fail-with-body",
            "-H",
            "Authorization: AWS4-HMAC-SHA256 Credential=AKIAWARMUP/20260101/us-east-1/sts/aws4_request, SignedHeaders=host, Signature=0",
            "--data",
            "Action=GetCallerIdentity&Version=2011-06-15",
            &format!("{}/", moto.endpoint()),
            ],
            wait + Duration::from_secs(10),
        )?;
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

//! [`RemoteApiServer`]: the `fake-kube-apiserver` binary as a child process, controlled over
//! its unix socket; and the binary's `main`.

use crate::time_scale::scaled;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc as std_mpsc;
use std::thread;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::process::ChildGuard;

use super::server::Shared;
use super::{serve, ControlOp, KubeControl, Options};

/// The `fake-kube-apiserver` binary: `$IAMLET_FAKE_KUBE_APISERVER`, else next to the
/// running executable (or one directory up, for test binaries in `deps/`), else
/// `<workspace>/target/debug/fake-kube-apiserver`.
pub fn binary() -> PathBuf {
    crate::process::workspace_binary("fake-kube-apiserver", "IAMLET_FAKE_KUBE_APISERVER")
}

static SOCKET_COUNTER: AtomicU32 = AtomicU32::new(0);

/// The ready line the binary prints.
#[derive(Debug, Deserialize, Serialize)]
pub struct Ready {
    /// API address.
    pub listen: SocketAddr,
    /// Control socket.
    pub control: PathBuf,
}

/// A `fake-kube-apiserver` process (possibly in another network namespace), controlled over
/// its unix socket. Killed on drop; the socket is removed.
#[derive(Debug)]
pub struct RemoteApiServer {
    child: ChildGuard,
    addr: SocketAddr,
    socket: PathBuf,
    log: PathBuf,
}

impl RemoteApiServer {
    /// Runs `cmd` (the binary, e.g. wrapped by `nsenter`) with `--listen listen --control
    /// <socket>` and waits for its ready line.
    pub fn start(
        mut cmd: Command,
        listen: SocketAddr,
        options: Options,
    ) -> Result<RemoteApiServer> {
        let n = SOCKET_COUNTER.fetch_add(1, Ordering::SeqCst);
        let tmp = std::env::temp_dir();
        let socket = tmp.join(format!("iamlet-kube-{}-{n}.sock", std::process::id()));
        let log = tmp.join(format!(
            "iamlet-test-kube-apiserver-{}-{n}.log",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&socket);
        let logf =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        cmd.arg("--listen")
            .arg(listen.to_string())
            .arg("--control")
            .arg(&socket)
            .arg("--history")
            .arg(options.history.to_string())
            .arg("--bookmark-interval-ms")
            .arg(options.bookmark_interval.as_millis().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(logf);
        let mut child = ChildGuard::spawn(&mut cmd)?;
        let stdout = child.stdout.take().context("fake-kube-apiserver stdout")?;
        let (tx, rx) = std_mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let read_log = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        let line = rx
            .recv_timeout(scaled(Duration::from_secs(10)))
            .map_err(|_| {
                anyhow::anyhow!(
                    "fake-kube-apiserver printed no ready line:\n{}",
                    read_log(&log)
                )
            })?;
        let ready: Ready = serde_json::from_str(line.trim()).with_context(|| {
            format!(
                "fake-kube-apiserver did not start ({line:?}):\n{}",
                read_log(&log)
            )
        })?;
        Ok(RemoteApiServer {
            child,
            addr: ready.listen,
            socket: ready.control,
            log,
        })
    }

    /// Starts the binary in this process's network namespace (no privileges needed).
    pub fn start_local(options: Options) -> Result<RemoteApiServer> {
        Self::start(Command::new(binary()), "127.0.0.1:0".parse()?, options)
    }

    /// The API address (in the namespace the process runs in).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The control socket.
    pub fn control_socket(&self) -> &Path {
        &self.socket
    }

    /// The process's stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl KubeControl for RemoteApiServer {
    fn control(&self, op: ControlOp) -> Result<Value> {
        let body = serde_json::to_vec(&op)?;
        let mut s = StdUnixStream::connect(&self.socket)
            .with_context(|| format!("connecting {}", self.socket.display()))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        write!(
            s,
            "POST /control HTTP/1.1\r\nhost: control\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )?;
        s.write_all(&body)?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp)?;
        let text = String::from_utf8_lossy(&resp);
        let (_, body) = text
            .split_once("\r\n\r\n")
            .with_context(|| format!("bad control answer {text:?}"))?;
        let v: Value =
            serde_json::from_str(body).with_context(|| format!("bad control answer {text:?}"))?;
        if let Some(e) = v.get("error") {
            bail!("control: {}", e.as_str().unwrap_or(&e.to_string()));
        }
        Ok(v.get("ok").cloned().unwrap_or(Value::Null))
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for RemoteApiServer {
    fn drop(&mut self) {
        let _ = self.child.kill_and_wait();
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_file(&self.log);
    }
}

/// The binary's main: `fake-kube-apiserver --listen ADDR --control SOCKET [--history N]
/// [--bookmark-interval-ms MS]`. Prints `{"listen":..,"control":..}` once ready.
pub fn run_binary(args: Vec<String>) -> Result<()> {
    let mut listen: SocketAddr = "127.0.0.1:0".parse()?;
    let mut control: Option<PathBuf> = None;
    let mut options = Options::default();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--listen" => listen = val()?.parse()?,
            "--control" => control = Some(PathBuf::from(val()?)),
            "--history" => options.history = val()?.parse()?,
            "--bookmark-interval-ms" => {
                options.bookmark_interval = Duration::from_millis(val()?.parse()?);
            }
            "-h" | "--help" => {
                println!("fake-kube-apiserver --listen ADDR --control SOCKET [--history N] [--bookmark-interval-ms MS]");
                return Ok(());
            }
            other => bail!("unknown argument {other:?}"),
        }
    }
    let control = control.context("--control SOCKET is required")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let api = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        let _ = std::fs::remove_file(&control);
        let ctl = tokio::net::UnixListener::bind(&control)
            .with_context(|| format!("binding {}", control.display()))?;
        let ready = json!({ "listen": api.local_addr()?, "control": control });
        println!("{ready}");
        std::io::stdout().flush()?;
        let shared = Shared::new(options.history, options.bookmark_interval);
        serve(shared, api, Some(ctl)).await;
        Ok(())
    })
}

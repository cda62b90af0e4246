//! A fake Kubernetes API server faithful enough for kube-rs's `watcher` and `reflector`.
//!
//! * Resources: core/v1 `pods`, `namespaces`, `serviceaccounts`, `events`, and
//!   `events.k8s.io/v1` `events` (every event written is recorded, [`KubeControl::events`]).
//!   List, watch, get, create (`generateName` too), update, merge/strategic/apply patch,
//!   delete; `/version`, `/api`, `/api/v1`, `/apis`, `/apis/events.k8s.io/v1` discovery.
//! * One global resource version, incremented by every write (like etcd). Objects get
//!   `metadata.uid` (unless given), `resourceVersion`, `creationTimestamp`, `generation`.
//! * list: `limit` + `continue` pagination with consistent snapshots (past states are rebuilt
//!   from the history), `resourceVersion` / `resourceVersionMatch` (`Exact` serves that past
//!   state, `NotOlderThan`/unset the current one, a future version answers 504), 410 Expired
//!   for compacted versions and continue tokens.
//! * watch (`watch=true|1`): newline-delimited JSON events, chunked. From `resourceVersion=N`
//!   the history after N is replayed; `""`/`"0"` (or `sendInitialEvents=true`) starts with
//!   `ADDED` for the current state (`sendInitialEvents` then sends the
//!   `k8s.io/initial-events-end` bookmark). `allowWatchBookmarks=true`: a `BOOKMARK` every
//!   [`Options::bookmark_interval`]. `timeoutSeconds` ends the stream. A compacted version
//!   gets HTTP 200 with one `ERROR` event carrying a 410 `Expired` Status, then the end.
//! * `fieldSelector` and `labelSelector` apply to list and watch; a change moving an object
//!   out of a watch's selection is sent as `DELETED` (previous state, new resource version),
//!   into it as `ADDED`, as the API server's watch cache does.
//! * Control ([`KubeControl`]): write objects, inject 5xx, latency, end/abort watches,
//!   compact, read recorded events and the request log. In process ([`FakeApiServer`]) or in
//!   another process / network namespace ([`RemoteApiServer`], the `fake-kube-apiserver`
//!   binary, controlled over a unix socket: `POST /control` with a [`ControlOp`] JSON body).

pub mod control;
pub mod resources;
pub mod selector;
pub mod server;
pub mod store;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use server::Shared;
pub use server::{ControlOp, ObjRef, RequestRecord, DEFAULT_BOOKMARK_INTERVAL, DEFAULT_HISTORY};

use crate::node::TestNode;
use crate::process::ChildGuard;

/// Settings of a fake API server.
#[derive(Clone, Debug)]
pub struct Options {
    /// Changes kept for watch replay (older resource versions get 410).
    pub history: usize,
    /// Interval of `BOOKMARK` events on watches with `allowWatchBookmarks=true`.
    pub bookmark_interval: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            history: DEFAULT_HISTORY,
            bookmark_interval: DEFAULT_BOOKMARK_INTERVAL,
        }
    }
}

/// Global state of a fake API server (from [`KubeControl::state`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub struct ServerState {
    /// The current resource version.
    pub resource_version: u64,
    /// Oldest resource version a watch may start from.
    pub compacted: u64,
    /// Open watch streams.
    pub watches: usize,
}

/// The `apiVersion`, `kind` and scope of a k8s-openapi type, for the typed helpers.
fn obj_ref<K: k8s_openapi::Resource>(namespace: Option<&str>, name: &str) -> ObjRef {
    ObjRef {
        api_version: K::API_VERSION.to_string(),
        kind: K::KIND.to_string(),
        namespace: namespace.map(str::to_string),
        name: name.to_string(),
    }
}

/// The control operations, the same for [`FakeApiServer`] and [`RemoteApiServer`].
/// Objects are anything serializable to a Kubernetes object with `apiVersion` and `kind`:
/// `serde_json::Value` or k8s-openapi types.
pub trait KubeControl {
    /// Runs one control operation.
    fn control(&self, op: ControlOp) -> Result<Value>;

    /// `http://<addr>`: the API server URL.
    fn url(&self) -> String;

    /// Creates an object (error if it exists); returns it as stored.
    fn create<T: Serialize>(&self, obj: &T) -> Result<Value> {
        self.control(ControlOp::Create {
            object: serde_json::to_value(obj)?,
        })
    }

    /// Creates or replaces an object; returns it as stored. Replacing with another
    /// `metadata.uid` deletes the old object and adds the new one.
    fn apply<T: Serialize>(&self, obj: &T) -> Result<Value> {
        self.control(ControlOp::Apply {
            object: serde_json::to_value(obj)?,
        })
    }

    /// [`KubeControl::apply`] answering the stored object as `K`.
    fn apply_typed<K: Serialize + DeserializeOwned>(&self, obj: &K) -> Result<K> {
        Ok(serde_json::from_value(self.apply(obj)?)?)
    }

    /// JSON merge patch of an existing object.
    fn patch(&self, target: ObjRef, patch: Value) -> Result<Value> {
        self.control(ControlOp::Patch { target, patch })
    }

    /// Typed [`KubeControl::patch`]: `patch_obj::<Pod>(Some("ns"), "name", json!(..))`.
    fn patch_obj<K: k8s_openapi::Resource>(
        &self,
        namespace: Option<&str>,
        name: &str,
        patch: Value,
    ) -> Result<Value> {
        self.patch(obj_ref::<K>(namespace, name), patch)
    }

    /// Removes an object now; returns its last state.
    fn delete(&self, target: ObjRef) -> Result<Value> {
        self.control(ControlOp::Delete { target })
    }

    /// Typed [`KubeControl::delete`].
    fn delete_obj<K: k8s_openapi::Resource>(
        &self,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value> {
        self.delete(obj_ref::<K>(namespace, name))
    }

    /// Sets `metadata.deletionTimestamp` (now + `grace`) and `deletionGracePeriodSeconds`
    /// (a `MODIFIED`, like the start of a pod's graceful deletion).
    fn begin_delete_obj<K: k8s_openapi::Resource>(
        &self,
        namespace: Option<&str>,
        name: &str,
        grace: Duration,
    ) -> Result<Value> {
        self.control(ControlOp::BeginDelete {
            target: obj_ref::<K>(namespace, name),
            grace_seconds: grace.as_secs(),
        })
    }

    /// One object, if it exists.
    fn get_obj<K: k8s_openapi::Resource>(
        &self,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<Value>> {
        let v = self.control(ControlOp::Get {
            target: obj_ref::<K>(namespace, name),
        })?;
        Ok((!v.is_null()).then_some(v))
    }

    /// All objects of a kind.
    fn list_objs<K: k8s_openapi::Resource>(&self) -> Result<Vec<Value>> {
        Ok(serde_json::from_value(self.control(ControlOp::List {
            api_version: K::API_VERSION.into(),
            kind: K::KIND.into(),
        })?)?)
    }

    /// The next `count` API requests (of any kind) answer `status` with a `Status` body.
    fn fail_next(&self, count: u64, status: u16) -> Result<()> {
        self.control(ControlOp::FailNext {
            count,
            status: Some(status),
        })
        .map(drop)
    }

    /// Delays every API response by `latency` (zero: none).
    fn set_latency(&self, latency: Duration) -> Result<()> {
        self.control(ControlOp::SetLatency {
            ms: latency.as_millis() as u64,
        })
        .map(drop)
    }

    /// Aborts every open watch stream mid-response (connection reset, no final chunk);
    /// returns how many.
    fn abort_watches(&self) -> Result<usize> {
        Ok(serde_json::from_value(
            self.control(ControlOp::EndWatches { abort: true })?,
        )?)
    }

    /// Ends every open watch stream cleanly (like `timeoutSeconds` running out).
    fn end_watches(&self) -> Result<usize> {
        Ok(serde_json::from_value(
            self.control(ControlOp::EndWatches { abort: false })?,
        )?)
    }

    /// Forgets the history: watches and continue tokens from older resource versions get
    /// 410 Expired. Returns the current resource version.
    fn compact(&self) -> Result<u64> {
        Ok(serde_json::from_value(self.control(ControlOp::Compact)?)?)
    }

    /// Changes kept for watch replay.
    fn set_history_limit(&self, limit: usize) -> Result<()> {
        self.control(ControlOp::SetHistoryLimit { limit }).map(drop)
    }

    /// Bookmark interval of watches started from now on.
    fn set_bookmark_interval(&self, interval: Duration) -> Result<()> {
        self.control(ControlOp::SetBookmarkInterval {
            ms: interval.as_millis() as u64,
        })
        .map(drop)
    }

    /// Every event (core/v1 or events.k8s.io/v1) created or patched, in order, as stored.
    fn events(&self) -> Result<Vec<Value>> {
        Ok(serde_json::from_value(self.control(ControlOp::Events)?)?)
    }

    /// Every API request so far.
    fn requests(&self) -> Result<Vec<RequestRecord>> {
        Ok(serde_json::from_value(self.control(ControlOp::Requests)?)?)
    }

    /// Requests with this verb (`list`, `watch`, `get`, `create`, `patch`, ...) and path
    /// (without query; `None`: any).
    fn request_count(&self, verb: &str, path: Option<&str>) -> Result<usize> {
        Ok(self
            .requests()?
            .iter()
            .filter(|r| r.verb == verb && path.is_none_or(|p| r.path == p))
            .count())
    }

    /// Forgets the request log.
    fn reset_requests(&self) -> Result<()> {
        self.control(ControlOp::ResetRequests).map(drop)
    }

    /// Resource version, compaction point, open watches.
    fn state(&self) -> Result<ServerState> {
        Ok(serde_json::from_value(self.control(ControlOp::State)?)?)
    }

    /// Waits until at least `n` watch streams are open.
    fn wait_for_watches(&self, n: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.state()?;
            if s.watches >= n {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("{} watches open after {timeout:?}, wanted {n}", s.watches);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Writes a kubeconfig pointing at [`KubeControl::url`] (cluster, user and context
    /// `fake`, namespace `default`, a dummy bearer token).
    fn write_kubeconfig(&self, path: &Path) -> Result<()> {
        std::fs::write(path, kubeconfig_yaml(&self.url()))
            .with_context(|| format!("writing {}", path.display()))
    }
}

/// A kubeconfig for `server`.
pub fn kubeconfig_yaml(server: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {server}\n\
         contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\n\
         current-context: fake\nusers:\n- name: fake\n  user:\n    token: fake-token\n"
    )
}

/// Runs the API on `api` (and the control protocol on `control`, if any) until the runtime
/// ends.
async fn serve(
    shared: Arc<Shared>,
    api: tokio::net::TcpListener,
    control: Option<tokio::net::UnixListener>,
) {
    if let Some(control) = control {
        let shared = shared.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = control.accept().await {
                tokio::spawn(server::serve_control(shared.clone(), stream));
            }
        });
    }
    while let Ok((stream, _)) = api.accept().await {
        let _ = stream.set_nodelay(true);
        tokio::spawn(server::serve_api(shared.clone(), stream));
    }
}

/// An in-process fake API server on `127.0.0.1:<free port>`, on its own tokio runtime (so it
/// works from sync tests and from any async runtime). Stopped on drop.
pub struct FakeApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for FakeApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeApiServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl FakeApiServer {
    /// Starts one with default [`Options`].
    pub fn start() -> Result<FakeApiServer> {
        Self::start_with(Options::default())
    }

    /// Starts one.
    pub fn start_with(options: Options) -> Result<FakeApiServer> {
        Self::start_on("127.0.0.1:0".parse()?, options)
    }

    /// Starts one listening on `addr`.
    pub fn start_on(addr: SocketAddr, options: Options) -> Result<FakeApiServer> {
        let listener =
            std::net::TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fake-kube-apiserver")
            .enable_all()
            .build()?;
        let shared = Shared::new(options.history, options.bookmark_interval);
        let s = shared.clone();
        runtime.spawn(async move {
            match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => serve(s, l, None).await,
                Err(e) => eprintln!("fake-kube-apiserver: {e}"),
            }
        });
        Ok(FakeApiServer {
            shared,
            addr,
            runtime: Some(runtime),
        })
    }

    /// Starts the `fake-kube-apiserver` binary in `node`'s network namespace, listening on
    /// `127.0.0.1:<free port>` there, controlled over a unix socket in the temp directory.
    pub fn start_in_node(node: &TestNode) -> Result<RemoteApiServer> {
        RemoteApiServer::start(
            node.command(binary()),
            "127.0.0.1:0".parse()?,
            Options::default(),
        )
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A kube-rs config for this server (no auth, plain HTTP).
    pub fn kube_config(&self) -> Result<kube::Config> {
        Ok(kube::Config::new(self.url().parse()?))
    }

    /// A kube-rs client; must be called inside a tokio runtime.
    pub fn client(&self) -> Result<kube::Client> {
        Ok(kube::Client::try_from(self.kube_config()?)?)
    }
}

impl KubeControl for FakeApiServer {
    fn control(&self, op: ControlOp) -> Result<Value> {
        server::control(&self.shared, op).map_err(anyhow::Error::msg)
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

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
        let line = rx.recv_timeout(Duration::from_secs(10)).map_err(|_| {
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
                options.bookmark_interval = Duration::from_millis(val()?.parse()?)
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

//! A fake Kubernetes API server faithful enough for kube-rs's `watcher` and `reflector`.
//!
//! * Resources: core/v1 `pods`, `namespaces`, `serviceaccounts`, `events`, and
//!   `events.k8s.io/v1` `events` (every event written is recorded, [`KubeControl::events`]).
//!   List, watch, get, create (`generateName` too), update, merge/strategic/apply patch,
//!   delete; `/version`, `/api`, `/api/v1`, `/apis`, `/apis/events.k8s.io/v1` discovery.
//! * `SelfSubjectAccessReview`: allowed, unless [`KubeControl::deny`] took that permission
//!   away.
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
//!
//! The parts: `store/` (the state and its writes), `server/` (HTTP: routes, dispatch, list and
//! watch), `control.rs` (the control operations), `resources.rs`, `selector.rs`; the handles
//! `in_process.rs` ([`FakeApiServer`]) and `remote.rs` ([`RemoteApiServer`], the binary's main).

pub mod control;
pub mod resources;
pub mod selector;
pub mod server;
pub mod store;

mod in_process;
mod remote;

pub use in_process::FakeApiServer;
pub use remote::{binary, run_binary, Ready, RemoteApiServer};

use crate::time_scale::scaled;
use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use server::Shared;
pub use server::{
    AccessRule, ControlOp, ObjRef, RequestRecord, DEFAULT_BOOKMARK_INTERVAL, DEFAULT_HISTORY,
};

/// Settings of a fake API server.
#[derive(Clone, Copy, Debug)]
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

    /// From now on `SelfSubjectAccessReview` denies these permissions (verb, API group,
    /// resource) and allows every other; an empty list allows everything again.
    fn deny(&self, rules: &[(&str, &str, &str)]) -> Result<()> {
        let rules = rules
            .iter()
            .map(|(verb, group, resource)| AccessRule::new(verb, group, resource))
            .collect();
        self.control(ControlOp::SetDenied { rules }).map(drop)
    }

    /// Resource version, compaction point, open watches.
    fn state(&self) -> Result<ServerState> {
        Ok(serde_json::from_value(self.control(ControlOp::State)?)?)
    }

    /// Waits until at least `n` watch streams are open.
    fn wait_for_watches(&self, n: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + scaled(timeout);
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

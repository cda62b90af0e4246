//! The control API of the fake API server: add, change and delete objects, inject faults,
//! read what it saw. Shared by the in-process handle and the unix-socket protocol.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::server::{AccessRule, Shared};
use super::store::{resource_by_kind, ApiError, ObjKey, RESOURCES};

/// Identifies one object in control operations.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjRef {
    /// `v1`, `events.k8s.io/v1`.
    pub api_version: String,
    /// `Pod`, `Namespace`, `ServiceAccount`, `Event`.
    pub kind: String,
    /// Namespace (ignored for cluster-scoped kinds; `default` when missing).
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
}

/// A control operation (the unix-socket protocol's request body, `POST /control`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ControlOp {
    /// Create (fails if it exists). Answers the stored object.
    Create {
        /// The object (with `apiVersion` and `kind`).
        object: Value,
    },
    /// Create or replace. Answers the stored object.
    Apply {
        /// The object.
        object: Value,
    },
    /// JSON merge patch of an existing object. Answers the stored object.
    Patch {
        /// Which.
        target: ObjRef,
        /// The merge patch.
        patch: Value,
    },
    /// Remove now. Answers the last state.
    Delete {
        /// Which.
        target: ObjRef,
    },
    /// Set `deletionTimestamp` (graceful deletion's first step). Answers the object.
    BeginDelete {
        /// Which.
        target: ObjRef,
        /// `deletionGracePeriodSeconds`.
        grace_seconds: u64,
    },
    /// One object or null.
    Get {
        /// Which.
        target: ObjRef,
    },
    /// All objects of a kind.
    List {
        /// `v1` etc.
        api_version: String,
        /// Kind.
        kind: String,
    },
    /// The next `count` API requests answer `status` (default 500).
    FailNext {
        /// How many.
        count: u64,
        /// HTTP status.
        status: Option<u16>,
    },
    /// Delay every API response (the head of watches too).
    SetLatency {
        /// Milliseconds.
        ms: u64,
    },
    /// End open watches: `abort` resets the connections mid-stream, else they end cleanly.
    /// Answers how many.
    EndWatches {
        /// Abort instead of ending.
        abort: bool,
    },
    /// Forget the history: older resource versions get 410 Expired.
    Compact,
    /// Changes kept for watch replay (older ones are compacted).
    SetHistoryLimit {
        /// Number of changes.
        limit: usize,
    },
    /// Interval of bookmarks on watches that allow them.
    SetBookmarkInterval {
        /// Milliseconds.
        ms: u64,
    },
    /// Every event object created or patched through the API, in order.
    Events,
    /// Every API request seen.
    Requests,
    /// Forget the request log.
    ResetRequests,
    /// `{"resource_version":N,"compacted":N,"watches":N}`.
    State,
    /// The permissions `SelfSubjectAccessReview` denies from now on (replacing the earlier
    /// ones; empty: everything is allowed).
    SetDenied {
        /// The denied permissions.
        rules: Vec<AccessRule>,
    },
}

fn resolve(target: &ObjRef) -> Result<(usize, ObjKey), String> {
    let res = resource_by_kind(&target.api_version, &target.kind)
        .ok_or_else(|| format!("unsupported kind {}/{}", target.api_version, target.kind))?;
    let ns = if RESOURCES[res].namespaced {
        target
            .namespace
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".into())
    } else {
        String::new()
    };
    Ok((res, (ns, target.name.clone())))
}

fn object_res(object: &Value) -> Result<usize, String> {
    let av = object
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or("");
    resource_by_kind(av, kind).ok_or_else(|| format!("unsupported kind {av:?}/{kind:?}"))
}

/// Runs a control operation.
pub fn control(shared: &Shared, op: ControlOp) -> Result<Value, String> {
    let e = |e: ApiError| e.to_string();
    Ok(match op {
        ControlOp::Create { object } => {
            let res = object_res(&object)?;
            (*shared.store().create(res, object).map_err(e)?).clone()
        }
        ControlOp::Apply { object } => {
            let res = object_res(&object)?;
            (*shared.store().apply(res, object).map_err(e)?).clone()
        }
        ControlOp::Patch { target, patch } => {
            let (res, key) = resolve(&target)?;
            (*shared.store().patch(res, &key, &patch, false).map_err(e)?).clone()
        }
        ControlOp::Delete { target } => {
            let (res, key) = resolve(&target)?;
            (*shared.store().delete(res, &key).map_err(e)?).clone()
        }
        ControlOp::BeginDelete {
            target,
            grace_seconds,
        } => {
            let (res, key) = resolve(&target)?;
            (*shared
                .store()
                .begin_delete(res, &key, grace_seconds)
                .map_err(e)?)
            .clone()
        }
        ControlOp::Get { target } => {
            let (res, key) = resolve(&target)?;
            shared
                .store()
                .get(res, &key)
                .map_or(Value::Null, |v| (*v).clone())
        }
        ControlOp::List { api_version, kind } => {
            let res = resource_by_kind(&api_version, &kind)
                .ok_or_else(|| format!("unsupported kind {api_version}/{kind}"))?;
            let snap = shared.store().snapshot(res, None).map_err(e)?;
            Value::Array(snap.values().map(|v| (**v).clone()).collect())
        }
        ControlOp::FailNext { count, status } => {
            let mut f = shared
                .faults
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            f.fail_next = count;
            f.fail_status = status.unwrap_or(500);
            Value::Null
        }
        ControlOp::SetLatency { ms } => {
            shared
                .faults
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .latency = Duration::from_millis(ms);
            Value::Null
        }
        ControlOp::EndWatches { abort } => json!(shared.store().end_watches(abort)),
        ControlOp::Compact => {
            let mut s = shared.store();
            s.compact();
            json!(s.rv())
        }
        ControlOp::SetHistoryLimit { limit } => {
            shared.store().set_history_limit(limit);
            Value::Null
        }
        ControlOp::SetBookmarkInterval { ms } => {
            shared.bookmark_ms.store(ms.max(1), Ordering::SeqCst);
            Value::Null
        }
        ControlOp::Events => Value::Array(shared.store().recorded_events.clone()),
        ControlOp::Requests => serde_json::to_value(
            &*shared
                .requests
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
        .map_err(|e| e.to_string())?,
        ControlOp::ResetRequests => {
            shared
                .requests
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clear();
            Value::Null
        }
        ControlOp::SetDenied { rules } => shared.set_denied(rules),
        ControlOp::State => {
            let s = shared.store();
            json!({ "resource_version": s.rv(), "compacted": s.compacted(), "watches": s.watch_count() })
        }
    })
}

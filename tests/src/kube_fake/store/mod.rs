//! The fake API server's state: objects, the global resource version, the change history that
//! watches replay, and the open watches. The writes are in `writes.rs`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde_json::{json, Value};
use tokio::sync::mpsc;

pub use super::resources::*;
pub use writes::{merge_patch, not_found, timestamp_after};

mod writes;

/// An open watch: its resource, its filter, and the channel its HTTP stream reads.
struct Watcher {
    id: u64,
    res: usize,
    filter: Filter,
    tx: mpsc::UnboundedSender<WatchMsg>,
}

/// The whole state.
pub struct Store {
    rv: u64,
    objects: Vec<BTreeMap<ObjKey, Arc<Value>>>,
    history: VecDeque<Change>,
    /// Watching from a resource version below this gets 410.
    compacted: u64,
    /// Changes kept.
    pub history_limit: usize,
    watchers: Vec<Watcher>,
    next_watcher: u64,
    next_uid: u64,
    /// Every event object created or patched through the API, in order.
    pub recorded_events: Vec<Value>,
}

impl Store {
    /// An empty store (resource version 1, like a fresh etcd with nothing in it).
    pub fn new(history_limit: usize) -> Store {
        Store {
            rv: 1,
            objects: RESOURCES.iter().map(|_| BTreeMap::new()).collect(),
            history: VecDeque::new(),
            compacted: 1,
            history_limit,
            watchers: Vec::new(),
            next_watcher: 1,
            next_uid: 1,
            recorded_events: Vec::new(),
        }
    }

    /// The current resource version.
    pub fn rv(&self) -> u64 {
        self.rv
    }

    /// Oldest resource version a watch may start from.
    pub fn compacted(&self) -> u64 {
        self.compacted
    }

    /// Forgets all history: every resource version before the current one gets 410.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
    }

    /// Sets the history size, trimming it.
    pub fn set_history_limit(&mut self, n: usize) {
        self.history_limit = n;
        self.trim();
    }

    fn trim(&mut self) {
        while self.history.len() > self.history_limit {
            if let Some(c) = self.history.pop_front() {
                self.compacted = c.rv;
            }
        }
    }

    /// Number of open watches.
    pub fn watch_count(&self) -> usize {
        self.watchers.iter().filter(|w| !w.tx.is_closed()).count()
    }

    /// Ends (or aborts) every open watch; returns how many.
    pub fn end_watches(&mut self, abort: bool) -> usize {
        let n = self.watch_count();
        for w in self.watchers.drain(..) {
            let _ = w.tx.send(if abort {
                WatchMsg::Abort
            } else {
                WatchMsg::End
            });
        }
        n
    }

    /// Removes a watch.
    pub fn unregister(&mut self, id: u64) {
        self.watchers.retain(|w| w.id != id);
    }

    /// One object.
    pub fn get(&self, res: usize, key: &ObjKey) -> Option<Arc<Value>> {
        self.objects[res].get(key).cloned()
    }

    /// The objects of `res` at resource version `at` (the current ones when `None`), sorted
    /// by namespace and name. 410 when `at` is older than the retained history.
    pub fn snapshot(
        &self,
        res: usize,
        at: Option<u64>,
    ) -> Result<BTreeMap<ObjKey, Arc<Value>>, ApiError> {
        let mut map = self.objects[res].clone();
        let Some(at) = at else { return Ok(map) };
        if at >= self.rv {
            return Ok(map);
        }
        if at < self.compacted {
            return Err(ApiError::new(
                410,
                "Expired",
                format!("too old resource version: {at} ({})", self.compacted),
            ));
        }
        for c in self.history.iter().rev() {
            if c.rv <= at {
                break;
            }
            if c.res != res {
                continue;
            }
            match (&c.ty, &c.prev) {
                (EventType::Added, _) => {
                    map.remove(&c.key);
                }
                (_, Some(prev)) => {
                    map.insert(c.key.clone(), prev.clone());
                }
                (_, None) => {
                    map.remove(&c.key);
                }
            }
        }
        Ok(map)
    }

    /// Registers a watch of `res` from resource version `from` (events with a larger one are
    /// replayed); `initial` objects are sent first as `ADDED` (for `rv=""`/`"0"` and
    /// `sendInitialEvents`), then, if `initial_end_bookmark`, a bookmark annotated
    /// `k8s.io/initial-events-end`. Returns the watch id, or 410 if `from` is compacted.
    pub fn watch(
        &mut self,
        res: usize,
        from: Option<u64>,
        filter: Filter,
        initial_end_bookmark: bool,
        tx: mpsc::UnboundedSender<WatchMsg>,
    ) -> Result<u64, ApiError> {
        match from {
            Some(rv) => {
                if rv < self.compacted {
                    return Err(ApiError::new(
                        410,
                        "Expired",
                        format!("too old resource version: {rv} ({})", self.compacted),
                    ));
                }
                for c in &self.history {
                    if c.rv > rv && c.res == res {
                        if let Some(line) = event_for(&filter, c) {
                            let _ = tx.send(WatchMsg::Line(line));
                        }
                    }
                }
            }
            None => {
                for obj in self.objects[res].values() {
                    if filter.matches(obj) {
                        let _ = tx.send(WatchMsg::Line(line("ADDED", obj)));
                    }
                }
            }
        }
        if initial_end_bookmark {
            let _ = tx.send(WatchMsg::Line(self.bookmark_line(res, true)));
        }
        let id = self.next_watcher;
        self.next_watcher += 1;
        self.watchers.push(Watcher {
            id,
            res,
            filter,
            tx,
        });
        Ok(id)
    }

    /// A `BOOKMARK` line carrying the current resource version.
    pub fn bookmark_line(&self, res: usize, initial_end: bool) -> Vec<u8> {
        let r = &RESOURCES[res];
        let mut meta = json!({ "resourceVersion": self.rv.to_string(), "creationTimestamp": null });
        if initial_end {
            meta["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
        }
        line(
            "BOOKMARK",
            &json!({ "kind": r.kind, "apiVersion": r.api_version(), "metadata": meta }),
        )
    }

    /// Queues a bookmark on watch `id` (behind the events already queued to it).
    pub fn send_bookmark(&self, id: u64) {
        if let Some(w) = self.watchers.iter().find(|w| w.id == id) {
            let _ = w.tx.send(WatchMsg::Line(self.bookmark_line(w.res, false)));
        }
    }

    fn commit(
        &mut self,
        res: usize,
        key: ObjKey,
        ty: EventType,
        obj: Arc<Value>,
        prev: Option<Arc<Value>>,
    ) {
        let change = Change {
            rv: self.rv,
            res,
            key: key.clone(),
            ty,
            obj: obj.clone(),
            prev,
        };
        match ty {
            EventType::Deleted => {
                self.objects[res].remove(&key);
            }
            _ => {
                self.objects[res].insert(key, obj);
            }
        }
        self.watchers.retain(|w| !w.tx.is_closed());
        for w in &self.watchers {
            if w.res == res {
                if let Some(line) = event_for(&w.filter, &change) {
                    let _ = w.tx.send(WatchMsg::Line(line));
                }
            }
        }
        self.history.push_back(change);
        self.trim();
    }
}

/// `{"type":..,"object":..}\n`.
pub fn line(ty: &str, obj: &Value) -> Vec<u8> {
    let mut v = serde_json::to_vec(&json!({ "type": ty, "object": obj })).unwrap_or_default();
    v.push(b'\n');
    v
}

/// The event a watcher with `filter` gets for `c`, as the API server's watch cache decides:
/// a change that moves an object out of the filter is `DELETED` (with the previous state
/// and the new resource version), into it `ADDED`.
fn event_for(filter: &Filter, c: &Change) -> Option<Vec<u8>> {
    let now = filter.matches(&c.obj);
    let before = c.prev.as_ref().is_some_and(|p| filter.matches(p));
    match c.ty {
        EventType::Added => now.then(|| line("ADDED", &c.obj)),
        EventType::Deleted => before.then(|| line("DELETED", &c.obj)),
        EventType::Modified => match (before, now) {
            (true, true) => Some(line(EventType::Modified.as_str(), &c.obj)),
            (false, true) => Some(line("ADDED", &c.obj)),
            (true, false) => {
                let mut old = c.prev.as_deref().map_or(Value::Null, Clone::clone);
                old["metadata"]["resourceVersion"] = json!(c.rv.to_string());
                Some(line("DELETED", &old))
            }
            (false, false) => None,
        },
    }
}

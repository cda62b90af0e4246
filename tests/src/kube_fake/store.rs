//! The fake API server's state: objects, the global resource version, the change history that
//! watches replay, and the open watches.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

pub use super::resources::*;

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

    fn new_uid(&mut self) -> String {
        let n = self.next_uid;
        self.next_uid += 1;
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let a = t ^ (std::process::id() as u64).rotate_left(32);
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            (a >> 32) as u32,
            (a >> 16) as u16,
            (a as u16) & 0xfff,
            (n >> 48) as u16 & 0xfff,
            n & 0xffff_ffff_ffff
        )
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

    /// Normalises `obj` for resource `res` (apiVersion, kind, namespace) and returns its key.
    pub fn key_of(res: usize, obj: &mut Value) -> Result<ObjKey, ApiError> {
        let r = &RESOURCES[res];
        if !obj.is_object() {
            return Err(ApiError::new(
                400,
                "BadRequest",
                "object is not a JSON object",
            ));
        }
        obj["apiVersion"] = json!(r.api_version());
        obj["kind"] = json!(r.kind);
        if !obj.get("metadata").is_some_and(Value::is_object) {
            obj["metadata"] = json!({});
        }
        let meta = obj["metadata"].as_object_mut().unwrap();
        let ns = if r.namespaced {
            let ns = meta
                .get("namespace")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .unwrap_or("default")
                .to_string();
            meta.insert("namespace".into(), json!(ns));
            ns
        } else {
            meta.remove("namespace");
            String::new()
        };
        let name = meta
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        Ok((ns, name))
    }

    /// Creates an object (409 if it exists). `generateName` is honoured.
    pub fn create(&mut self, res: usize, mut obj: Value) -> Result<Arc<Value>, ApiError> {
        let (ns, mut name) = Self::key_of(res, &mut obj)?;
        if name.is_empty() {
            let gen = obj
                .pointer("/metadata/generateName")
                .and_then(Value::as_str)
                .map(str::to_string);
            match gen {
                Some(g) => {
                    name = format!("{g}{}", &self.new_uid()[24..29]);
                    obj["metadata"]["name"] = json!(name);
                }
                None => {
                    return Err(ApiError::new(
                        422,
                        "Invalid",
                        format!(
                            "{} is invalid: metadata.name: Required value",
                            RESOURCES[res].kind
                        ),
                    ))
                }
            }
        }
        let key = (ns, name.clone());
        if self.objects[res].contains_key(&key) {
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", RESOURCES[res].plural),
            ));
        }
        Ok(self.write(res, key, obj, None))
    }

    /// Creates or replaces an object. A replacement carrying a different `metadata.uid` is a
    /// new object: the old one is `DELETED`, the new one `ADDED`.
    pub fn apply(&mut self, res: usize, mut obj: Value) -> Result<Arc<Value>, ApiError> {
        let key = Self::key_of(res, &mut obj)?;
        if key.1.is_empty() {
            return self.create(res, obj);
        }
        let prev = self.objects[res].get(&key).cloned();
        if let Some(p) = &prev {
            let new_uid = obj.pointer("/metadata/uid").and_then(Value::as_str);
            let old_uid = p.pointer("/metadata/uid").and_then(Value::as_str);
            if new_uid.is_some() && new_uid != old_uid {
                self.delete(res, &key)?;
                return Ok(self.write(res, key, obj, None));
            }
        }
        Ok(self.write(res, key, obj, prev))
    }

    /// Replaces an existing object (404 if missing; 409 if `metadata.resourceVersion` is set
    /// and stale).
    pub fn replace(&mut self, res: usize, mut obj: Value) -> Result<Arc<Value>, ApiError> {
        let key = Self::key_of(res, &mut obj)?;
        let Some(prev) = self.objects[res].get(&key).cloned() else {
            return Err(not_found(res, &key.1));
        };
        if let Some(rv) = obj
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
        {
            let cur = prev
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str);
            if !rv.is_empty() && Some(rv) != cur {
                return Err(ApiError::new(
                    409,
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on {} \"{}\": the object has been modified; please apply your changes to the latest version and try again",
                        RESOURCES[res].plural, key.1
                    ),
                ));
            }
        }
        Ok(self.write(res, key, obj, Some(prev)))
    }

    /// Applies a JSON merge patch (RFC 7386) to an existing object (404 if missing), or
    /// creates it when `create` (server-side apply).
    pub fn patch(
        &mut self,
        res: usize,
        key: &ObjKey,
        patch: &Value,
        create: bool,
    ) -> Result<Arc<Value>, ApiError> {
        let prev = self.objects[res].get(key).cloned();
        let mut obj = match &prev {
            Some(p) => (**p).clone(),
            None if create => json!({ "metadata": { "name": key.1, "namespace": key.0 } }),
            None => return Err(not_found(res, &key.1)),
        };
        merge_patch(&mut obj, patch);
        // Identity fields cannot be patched away.
        obj["metadata"]["name"] = json!(key.1);
        if !key.0.is_empty() {
            obj["metadata"]["namespace"] = json!(key.0);
        }
        if let Some(p) = &prev {
            obj["metadata"]["uid"] = p["metadata"]["uid"].clone();
        }
        let mut obj2 = obj;
        Self::key_of(res, &mut obj2)?;
        Ok(self.write(res, key.clone(), obj2, prev))
    }

    /// Marks an object as being deleted (`metadata.deletionTimestamp`,
    /// `deletionGracePeriodSeconds`): a `MODIFIED`, like a pod's graceful deletion.
    pub fn begin_delete(
        &mut self,
        res: usize,
        key: &ObjKey,
        grace: u64,
    ) -> Result<Arc<Value>, ApiError> {
        let patch = json!({ "metadata": {
            "deletionTimestamp": timestamp_after(grace),
            "deletionGracePeriodSeconds": grace,
        }});
        self.patch(res, key, &patch, false)
    }

    /// Removes an object; `DELETED` carries its last state with the deletion's resource
    /// version.
    pub fn delete(&mut self, res: usize, key: &ObjKey) -> Result<Arc<Value>, ApiError> {
        let Some(prev) = self.objects[res].get(key).cloned() else {
            return Err(not_found(res, &key.1));
        };
        self.rv += 1;
        let mut last = (*prev).clone();
        last["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let last = Arc::new(last);
        self.commit(
            res,
            key.clone(),
            EventType::Deleted,
            last.clone(),
            Some(prev),
        );
        Ok(last)
    }

    fn write(
        &mut self,
        res: usize,
        key: ObjKey,
        mut obj: Value,
        prev: Option<Arc<Value>>,
    ) -> Arc<Value> {
        self.rv += 1;
        let uid = match prev
            .as_ref()
            .and_then(|p| p.pointer("/metadata/uid"))
            .and_then(Value::as_str)
        {
            Some(u) => u.to_string(),
            None => match obj.pointer("/metadata/uid").and_then(Value::as_str) {
                Some(u) if !u.is_empty() => u.to_string(),
                _ => self.new_uid(),
            },
        };
        let created = prev
            .as_ref()
            .and_then(|p| p.pointer("/metadata/creationTimestamp"))
            .cloned()
            .filter(|v| !v.is_null())
            .or_else(|| {
                obj.pointer("/metadata/creationTimestamp")
                    .cloned()
                    .filter(|v| !v.is_null())
            })
            .unwrap_or_else(|| json!(timestamp_after(0)));
        let generation = match &prev {
            None => 1,
            Some(p) => {
                let g = p
                    .pointer("/metadata/generation")
                    .and_then(Value::as_i64)
                    .unwrap_or(1);
                if spec_of(p) != spec_of(&obj) {
                    g + 1
                } else {
                    g
                }
            }
        };
        let meta: &mut Map<String, Value> = obj["metadata"].as_object_mut().unwrap();
        meta.insert("uid".into(), json!(uid));
        meta.insert("resourceVersion".into(), json!(self.rv.to_string()));
        meta.insert("creationTimestamp".into(), created);
        meta.insert("generation".into(), json!(generation));
        let obj = Arc::new(obj);
        if res == 3 || res == 4 {
            self.recorded_events.push((*obj).clone());
        }
        let ty = if prev.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        self.commit(res, key, ty, obj.clone(), prev);
        obj
    }
}

fn spec_of(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    v
}

/// A 404 NotFound error.
pub fn not_found(res: usize, name: &str) -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        format!("{} \"{name}\" not found", RESOURCES[res].plural),
    )
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().unwrap();
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
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
                let mut old = (**c.prev.as_ref().unwrap()).clone();
                old["metadata"]["resourceVersion"] = json!(c.rv.to_string());
                Some(line("DELETED", &old))
            }
            (false, false) => None,
        },
    }
}

/// RFC 3339 UTC timestamp `secs` seconds from now (second precision, like Kubernetes).
pub fn timestamp_after(secs: u64) -> String {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        + secs;
    let days = (t / 86_400) as i64;
    let rem = t % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

//! Writes to the store: create (`generateName` too), apply, replace, patch, graceful and
//! immediate delete, each committed as one change at a new resource version.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use super::{ApiError, EventType, ObjKey, Store, RESOURCES};

impl Store {
    fn new_uid(&mut self) -> String {
        let n = self.next_uid;
        self.next_uid += 1;
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let a = t ^ u64::from(std::process::id()).rotate_left(32);
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            (a >> 32) as u32,
            (a >> 16) as u16,
            (a as u16) & 0xfff,
            (n >> 48) as u16 & 0xfff,
            n & 0xffff_ffff_ffff
        )
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
        let meta = metadata_mut(obj);
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
                if spec_of(p) == spec_of(&obj) {
                    g
                } else {
                    g + 1
                }
            }
        };
        let meta = metadata_mut(&mut obj);
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

/// A 404 `NotFound` error.
pub fn not_found(res: usize, name: &str) -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        format!("{} \"{name}\" not found", RESOURCES[res].plural),
    )
}

/// `value` as a JSON object, made an empty one first if it is anything else.
fn object_mut(value: &mut Value) -> &mut Map<String, Value> {
    if !value.is_object() {
        *value = Value::Object(Map::new());
    }
    match value {
        Value::Object(map) => map,
        _ => unreachable!("made an object just above"),
    }
}

/// The object's `metadata`, made an empty map first if it is missing or not a map.
fn metadata_mut(obj: &mut Value) -> &mut Map<String, Value> {
    object_mut(&mut obj["metadata"])
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            let t = object_mut(target);
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

/// RFC 3339 UTC timestamp `secs` seconds from now (second precision, like Kubernetes).
#[allow(
    clippy::many_single_char_names,
    reason = "the names of Hinnant's civil_from_days"
)]
pub fn timestamp_after(secs: u64) -> String {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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

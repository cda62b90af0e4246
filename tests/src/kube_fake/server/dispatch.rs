//! A request on a resource or object, carried out on the store: resource versions, selectors,
//! bodies, and each verb.

use std::collections::BTreeMap;
use std::sync::Arc;

use hyper::{Method, Response};
use serde_json::{json, Value};

use crate::kube_fake::selector::{FieldSelector, LabelSelector};
use crate::kube_fake::store::{not_found, ApiError, Filter, RESOURCES};

use super::list_watch::{list, start_watch};
use super::route::Route;
use super::{err_resp, json_resp, Body, Shared};

pub(super) fn parse_rv(s: Option<&String>) -> Result<Option<u64>, ApiError> {
    match s.map(String::as_str) {
        None | Some("" | "0") => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| {
            ApiError::new(
                400,
                "BadRequest",
                format!("invalid resource version: {v:?}"),
            )
        }),
    }
}

pub(super) fn filter_of(
    res: usize,
    ns: Option<String>,
    query: &BTreeMap<String, String>,
) -> Result<Filter, ApiError> {
    let bad = |m: String| ApiError::new(400, "BadRequest", m);
    Ok(Filter {
        namespace: ns,
        fields: FieldSelector::parse(
            query.get("fieldSelector").map_or("", String::as_str),
            RESOURCES[res].fields,
        )
        .map_err(bad)?,
        labels: LabelSelector::parse(query.get("labelSelector").map_or("", String::as_str))
            .map_err(bad)?,
    })
}

pub(super) fn dispatch(
    shared: &Arc<Shared>,
    method: &Method,
    r: Route,
    query: &BTreeMap<String, String>,
    content_type: &str,
    body: &[u8],
) -> Response<Body> {
    let watch = query.get("watch").is_some_and(|w| w == "true" || w == "1");
    let result = match (r, method) {
        (Route::Version, &Method::GET) => Ok(json_resp(
            200,
            &json!({
                "major": "1", "minor": "33", "gitVersion": "v1.33.0-fake",
                "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
                "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.24.0", "compiler": "gc",
                "platform": "linux/amd64",
            }),
        )),
        (Route::Discovery(v), &Method::GET) => Ok(json_resp(200, &v)),
        (Route::AccessReview, &Method::POST) => parse_body(body).and_then(|review| {
            let denied = shared.denied();
            Ok(json_resp(201, &super::access::review(&review, &denied)?))
        }),
        (Route::Collection { res, ns }, &Method::GET) if watch => {
            filter_of(res, ns, query).and_then(|f| start_watch(shared, res, f, query))
        }
        (Route::Object { res, ns, name }, &Method::GET) if watch => {
            let mut q = query.clone();
            let sel = match q.get("fieldSelector") {
                Some(s) if !s.is_empty() => format!("{s},metadata.name={name}"),
                _ => format!("metadata.name={name}"),
            };
            q.insert("fieldSelector".into(), sel);
            filter_of(res, ns, &q).and_then(|f| start_watch(shared, res, f, &q))
        }
        (Route::Collection { res, ns }, &Method::GET) => list(shared, res, ns, query),
        (Route::Object { res, ns, name }, &Method::GET) => {
            let key = (ns.unwrap_or_default(), name.clone());
            shared
                .store()
                .get(res, &key)
                .map(|o| json_resp(200, &o))
                .ok_or_else(|| not_found(res, &name))
        }
        (Route::Collection { res, ns }, &Method::POST) => parse_body(body).and_then(|mut obj| {
            if let Some(ns) = &ns {
                obj["metadata"]["namespace"] = json!(ns);
            }
            let o = shared.store().create(res, obj)?;
            Ok(json_resp(201, &o))
        }),
        (Route::Object { res, ns, name }, &Method::PUT) => parse_body(body).and_then(|mut obj| {
            if obj.pointer("/metadata/name").and_then(Value::as_str) != Some(name.as_str()) {
                return Err(ApiError::new(
                    400,
                    "BadRequest",
                    "the name of the object does not match the name on the URL",
                ));
            }
            if let Some(ns) = &ns {
                obj["metadata"]["namespace"] = json!(ns);
            }
            let o = shared.store().replace(res, obj)?;
            Ok(json_resp(200, &o))
        }),
        (Route::Object { res, ns, name }, &Method::PATCH) => {
            let key = (ns.unwrap_or_default(), name);
            let ct = content_type.split(';').next().unwrap_or("").trim();
            match ct {
                "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                    parse_body(body).and_then(|p| {
                        let o = shared.store().patch(res, &key, &p, false)?;
                        Ok(json_resp(200, &o))
                    })
                }
                "application/apply-patch+yaml" => parse_body(body).and_then(|p| {
                    let o = shared.store().patch(res, &key, &p, true)?;
                    Ok(json_resp(200, &o))
                }),
                other => Err(ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    format!("the body of the request was in an unknown format - accepted media types include: application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml (got {other:?})"),
                )),
            }
        }
        (Route::Object { res, ns, name }, &Method::DELETE) => {
            let key = (ns.unwrap_or_default(), name);
            shared.store().delete(res, &key).map(|o| json_resp(200, &o))
        }
        (Route::NotFound, _) => Err(ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )),
        _ => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )),
    };
    result.unwrap_or_else(|e| err_resp(&e))
}

pub(super) fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::new(400, "BadRequest", format!("invalid JSON body: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::new(400, "BadRequest", "body is not an object"));
    }
    Ok(v)
}

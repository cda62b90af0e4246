//! API paths parsed into [`Route`]s (resources, objects, discovery) and the verb of a request.

use std::collections::BTreeMap;

use hyper::Method;
use serde_json::{json, Value};

use crate::kube_fake::store::{resource_by_path, RESOURCES};

/// A parsed API path.
pub(super) enum Route {
    Version,
    Discovery(Value),
    /// `authorization.k8s.io/v1` `selfsubjectaccessreviews`.
    AccessReview,
    Collection {
        res: usize,
        ns: Option<String>,
    },
    Object {
        res: usize,
        ns: Option<String>,
        name: String,
    },
    NotFound,
}

pub(super) fn route(path: &str) -> Route {
    let parts: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let (group, version, rest): (&str, &str, &[&str]) = match parts.as_slice() {
        ["version"] => return Route::Version,
        ["api"] => {
            return Route::Discovery(json!({
                "kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
            }))
        }
        ["apis"] => {
            return Route::Discovery(json!({
                "kind": "APIGroupList", "apiVersion": "v1",
                "groups": [{
                    "name": "events.k8s.io",
                    "versions": [{"groupVersion": "events.k8s.io/v1", "version": "v1"}],
                    "preferredVersion": {"groupVersion": "events.k8s.io/v1", "version": "v1"},
                }, {
                    "name": "authorization.k8s.io",
                    "versions": [{"groupVersion": "authorization.k8s.io/v1", "version": "v1"}],
                    "preferredVersion": {"groupVersion": "authorization.k8s.io/v1", "version": "v1"},
                }],
            }))
        }
        ["apis", "authorization.k8s.io", "v1"] => {
            return Route::Discovery(super::access::discovery())
        }
        ["apis", "authorization.k8s.io", "v1", "selfsubjectaccessreviews"] => {
            return Route::AccessReview
        }
        ["api", v] => return discovery("", v),
        ["apis", g, v] => return discovery(g, v),
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Route::NotFound,
    };
    let (ns, rest) = match rest {
        ["namespaces", ns, tail @ ..] if !tail.is_empty() => (Some(ns.to_string()), tail),
        _ => (None, rest),
    };
    match rest {
        [plural] => match resource_by_path(group, version, plural) {
            Some(res) if ns.is_none() || RESOURCES[res].namespaced => Route::Collection { res, ns },
            _ => Route::NotFound,
        },
        [plural, name] => match resource_by_path(group, version, plural) {
            Some(res) if RESOURCES[res].namespaced == ns.is_some() => Route::Object {
                res,
                ns,
                name: name.to_string(),
            },
            _ => Route::NotFound,
        },
        _ => Route::NotFound,
    }
}

pub(super) fn discovery(group: &str, version: &str) -> Route {
    let resources: Vec<Value> = RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .map(|r| {
            json!({
                "name": r.plural, "singularName": r.singular, "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["create","delete","get","list","patch","update","watch"],
                "shortNames": r.short_names,
            })
        })
        .collect();
    if resources.is_empty() {
        return Route::NotFound;
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Route::Discovery(json!({
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources,
    }))
}

pub(super) fn verb_of(
    method: &Method,
    route: &Route,
    query: &BTreeMap<String, String>,
) -> &'static str {
    let watch = query.get("watch").is_some_and(|w| w == "true" || w == "1");
    match (route, method) {
        (Route::Version | Route::Discovery(_), _) => "discovery",
        (Route::AccessReview, &Method::POST) => "create",
        (Route::Collection { .. }, &Method::GET) if watch => "watch",
        (Route::Collection { .. }, &Method::GET) => "list",
        (Route::Collection { .. }, &Method::POST) => "create",
        (Route::Object { .. }, &Method::GET) if watch => "watch",
        (Route::Object { .. }, &Method::GET) => "get",
        (Route::Object { .. }, &Method::PUT) => "update",
        (Route::Object { .. }, &Method::PATCH) => "patch",
        (Route::Object { .. }, &Method::DELETE) => "delete",
        _ => "unknown",
    }
}

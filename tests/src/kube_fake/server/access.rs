//! `SelfSubjectAccessReview` (`POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews`):
//! every request is allowed unless a control operation denied its verb on its resource
//! ([`ControlOp::SetDenied`](super::ControlOp::SetDenied)), so a test can take one permission
//! away from the caller and see what asks for it.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::kube_fake::store::ApiError;

/// A permission: a verb on a resource of an API group (`""` for core).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessRule {
    /// `list`, `watch`, `create`, ...
    pub verb: String,
    /// API group: `""` (core), `events.k8s.io`, ...
    pub group: String,
    /// Plural resource name: `pods`, `events`, ...
    pub resource: String,
}

impl AccessRule {
    /// `verb` on `resource` in `group`.
    pub fn new(verb: &str, group: &str, resource: &str) -> AccessRule {
        AccessRule {
            verb: verb.to_owned(),
            group: group.to_owned(),
            resource: resource.to_owned(),
        }
    }
}

/// The API discovery document of `authorization.k8s.io/v1` (only the review the fake serves).
pub(super) fn discovery() -> Value {
    json!({
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "authorization.k8s.io/v1",
        "resources": [{
            "name": "selfsubjectaccessreviews", "singularName": "selfsubjectaccessreview",
            "namespaced": false, "kind": "SelfSubjectAccessReview", "verbs": ["create"],
        }],
    })
}

/// Answers a review (`body`) given the `denied` permissions: the review with its `status`.
pub(super) fn review(body: &Value, denied: &[AccessRule]) -> Result<Value, ApiError> {
    let bad = |m: &str| ApiError::new(400, "BadRequest", m.to_owned());
    if body.get("kind").and_then(Value::as_str) != Some("SelfSubjectAccessReview") {
        return Err(bad("the body is not a SelfSubjectAccessReview"));
    }
    let Some(attrs) = body.pointer("/spec/resourceAttributes") else {
        if body.pointer("/spec/nonResourceAttributes").is_some() {
            // Non-resource URLs are not modelled: allowed.
            return Ok(answer(body, true, "non-resource URLs are allowed"));
        }
        return Err(bad(
            "spec: resourceAttributes or nonResourceAttributes is required",
        ));
    };
    let field = |name: &str| attrs.get(name).and_then(Value::as_str).unwrap_or_default();
    let asked = AccessRule::new(field("verb"), field("group"), field("resource"));
    if asked.verb.is_empty() || asked.resource.is_empty() {
        return Err(bad(
            "spec.resourceAttributes: verb and resource are required",
        ));
    }
    Ok(if denied.contains(&asked) {
        answer(body, false, "")
    } else {
        answer(body, true, "allowed by the fake API server")
    })
}

fn answer(body: &Value, allowed: bool, reason: &str) -> Value {
    let mut status = json!({ "allowed": allowed });
    if !reason.is_empty() {
        status["reason"] = json!(reason);
    }
    json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "metadata": {},
        "spec": body.get("spec").cloned().unwrap_or_else(|| json!({})),
        "status": status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(verb: &str, group: &str, resource: &str) -> Value {
        json!({
            "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": {"verb": verb, "group": group, "resource": resource}},
        })
    }

    #[test]
    fn allows_all_but_what_was_denied() {
        let denied = [AccessRule::new("watch", "", "pods")];
        let allowed = review(&ask("list", "", "pods"), &denied).expect("answer");
        assert_eq!(allowed["status"]["allowed"], true);
        let refused = review(&ask("watch", "", "pods"), &denied).expect("answer");
        assert_eq!(refused["status"]["allowed"], false);
        assert_eq!(refused["spec"]["resourceAttributes"]["verb"], "watch");
        let other_group = review(&ask("watch", "apps", "pods"), &denied).expect("answer");
        assert_eq!(other_group["status"]["allowed"], true);
        assert!(review(&json!({"kind": "Pod"}), &denied).is_err());
        assert!(review(&ask("", "", "pods"), &denied).is_err());
    }
}

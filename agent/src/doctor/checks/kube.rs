//! Kubernetes mode: the API server answers (`/version`) with the agent's kubeconfig (or
//! in-cluster account), and that account may do what the agent does, asked with a
//! `SelfSubjectAccessReview` per verb: list and watch this node's pods and the namespaces and
//! service accounts (their annotations name roles), create and patch Events about pods.

use std::path::Path;
use std::time::Duration;

use futures_util::future::join_all;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::api::PostParams;
use kube::{Api, Client};

use super::error_chain;
use crate::doctor::report::Check;
use crate::doctor::settings::{Roles, Settings};

/// What the agent does with the API: (verb, API group, resource). The chart's `ClusterRole`
/// (`deploy/helm/iamlet/templates/clusterrole.yaml`) grants these.
pub(crate) const NEEDED: [(&str, &str, &str); 8] = [
    ("list", "", "pods"),
    ("watch", "", "pods"),
    ("list", "", "namespaces"),
    ("watch", "", "namespaces"),
    ("list", "", "serviceaccounts"),
    ("watch", "", "serviceaccounts"),
    ("create", "events.k8s.io", "events"),
    ("patch", "events.k8s.io", "events"),
];

/// The Kubernetes checks for `settings`.
pub(crate) async fn check_kubernetes(settings: &Settings) -> Vec<Check> {
    const API: &str = "kubernetes api";
    let (kubeconfig, node) = match &settings.roles {
        Roles::Bindings(path) => {
            return vec![Check::skip(
                "kubernetes",
                format!(
                    "standalone mode (--bindings {}): the agent does not use the Kubernetes API",
                    path.display()
                ),
            )]
        }
        Roles::Nothing => {
            return vec![Check::skip(
                "kubernetes",
                "no --kubeconfig and not in a pod: the agent does not use the Kubernetes API",
            )]
        }
        Roles::Kubernetes { kubeconfig, node } => (kubeconfig.as_deref(), node.as_deref()),
    };
    let mut checks = vec![match node {
        Some(node) => Check::ok("node name", format!("{node} (the pod watch selects spec.nodeName={node})")),
        None => Check::fail(
            "node name",
            "--node-name (NODE_NAME) unset: the agent refuses to start in Kubernetes mode without it",
            "set NODE_NAME from the downward API (fieldRef spec.nodeName), as the chart does",
        ),
    }];
    let source = kubeconfig.map_or_else(
        || "in-cluster service account".to_owned(),
        |p| format!("kubeconfig {}", p.display()),
    );
    let client = match client(kubeconfig, settings.timeout).await {
        Ok(client) => client,
        Err(e) => {
            checks.push(Check::fail(
                API,
                format!("cannot set up a client from the {source}: {e}"),
                "pass --kubeconfig a readable kubeconfig, or run doctor in the agent's pod (in-cluster)",
            ));
            checks.push(Check::skip("rbac", "no API client (see above)"));
            return checks;
        }
    };
    match tokio::time::timeout(settings.timeout, client.apiserver_version()).await {
        Ok(Ok(info)) => checks.push(Check::ok(
            API,
            format!("{} answers /version (with the {source})", info.git_version),
        )),
        Ok(Err(e)) => {
            checks.push(Check::fail(
                API,
                format!("GET /version with the {source} failed: {}", error_chain(&e)),
                "check that the API server is reachable from the node (its address in the kubeconfig, or KUBERNETES_SERVICE_HOST in a pod) and that the credentials are valid",
            ));
            checks.push(Check::skip(
                "rbac",
                "the API server does not answer (see above)",
            ));
            return checks;
        }
        Err(_) => {
            checks.push(Check::fail(
                API,
                format!("GET /version with the {source} did not answer within {} ms", settings.timeout.as_millis()),
                "check that the API server is reachable from the node (routes, security groups, the endpoint's access settings)",
            ));
            checks.push(Check::skip(
                "rbac",
                "the API server does not answer (see above)",
            ));
            return checks;
        }
    }
    checks.push(check_rbac(&client, settings.timeout).await);
    checks
}

/// A client as the agent makes it, with `timeout` on connects and reads.
async fn client(kubeconfig: Option<&Path>, timeout: Duration) -> Result<Client, String> {
    let mut config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path).map_err(|e| e.to_string())?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| e.to_string())?
        }
        None => kube::Config::incluster().map_err(|e| e.to_string())?,
    };
    config.connect_timeout = Some(timeout);
    config.read_timeout = Some(timeout);
    Client::try_from(config).map_err(|e| e.to_string())
}

/// One `SelfSubjectAccessReview` per entry of [`NEEDED`].
async fn check_rbac(client: &Client, timeout: Duration) -> Check {
    const NAME: &str = "rbac";
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let asks = NEEDED.iter().map(|(verb, group, resource)| {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    verb: Some((*verb).to_owned()),
                    group: Some((*group).to_owned()),
                    resource: Some((*resource).to_owned()),
                    ..ResourceAttributes::default()
                }),
                ..SelfSubjectAccessReviewSpec::default()
            },
            ..SelfSubjectAccessReview::default()
        };
        let api = api.clone();
        async move {
            let answer =
                tokio::time::timeout(timeout, api.create(&PostParams::default(), &review)).await;
            match answer {
                Ok(Ok(review)) => Ok(review.status.is_some_and(|s| s.allowed)),
                Ok(Err(e)) => Err(error_chain(&e)),
                Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
            }
        }
    });
    let answers = join_all(asks).await;
    let mut denied = Vec::new();
    for ((verb, group, resource), answer) in NEEDED.iter().zip(answers) {
        match answer {
            Ok(true) => {}
            Ok(false) => denied.push(permission(verb, group, resource)),
            Err(e) => {
                return Check::fail(
                    NAME,
                    format!("cannot ask the API server (SelfSubjectAccessReview for {}): {e}", permission(verb, group, resource)),
                    "check that the API server serves authorization.k8s.io/v1 and that the agent's credentials are valid",
                )
            }
        }
    }
    if denied.is_empty() {
        Check::ok(
            NAME,
            "may list and watch pods, namespaces and serviceaccounts, and create and patch events.k8s.io events",
        )
    } else {
        Check::fail(
            NAME,
            format!("the agent's account may not: {}", denied.join(", ")),
            "grant them to the agent's service account in all namespaces (a ClusterRole bound with a ClusterRoleBinding; the chart's is deploy/helm/iamlet/templates/clusterrole.yaml)",
        )
    }
}

/// `verb resource` or `verb group/resource`.
fn permission(verb: &str, group: &str, resource: &str) -> String {
    if group.is_empty() {
        format!("{verb} {resource}")
    } else {
        format!("{verb} {group}/{resource}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_needed_permissions_are_named_as_kubectl_does() {
        assert_eq!(permission("watch", "", "pods"), "watch pods");
        assert_eq!(
            permission("create", "events.k8s.io", "events"),
            "create events.k8s.io/events"
        );
        // What the chart's ClusterRole grants covers every verb the agent needs.
        let role = include_str!("../../../../deploy/helm/iamlet/templates/clusterrole.yaml");
        for (verb, group, resource) in NEEDED {
            let granted = role.lines().any(|l| l.contains(&format!("\"{resource}\"")))
                && role.contains(&format!("\"{verb}\""))
                && (group.is_empty() || role.contains(&format!("\"{group}\"")));
            assert!(
                granted,
                "{verb} {group}/{resource} not in the chart's ClusterRole"
            );
        }
    }
}

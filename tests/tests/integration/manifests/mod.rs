//! The Helm chart (`deploy/helm/iamlet`) and the manifests rendered from it
//! (`deploy/manifests/iamlet.yaml`). Needs no privileges.
//!
//! * The committed manifests are parsed into the Kubernetes API types and checked for what the
//!   agent needs on a node: host network, the downward-API environment, the listeners on the
//!   host IP, capabilities, the cgroup2 and bpffs mounts, probes on the admin port, priority,
//!   tolerations, the surge update strategy, resources and RBAC.
//! * Every `--flag` the DaemonSet passes must be a flag the agent has (read from its clap
//!   definition, `iamlet::Args`).
//! * With `helm` available (`IAMLET_HELM`, `helm` on PATH, or `target/tools/helm`, which
//!   `cargo xtask setup` installs), the chart is rendered again and must match the committed
//!   file byte for byte; and a render with every value set must give agent flags only.
//!
//! `committed.rs` checks the committed manifests; `chart.rs` renders the chart with helm.

pub(crate) mod chart;
mod committed;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Container, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The command that renders the committed manifests, as the file's header names it.
const RENDER_ARGS: &[&str] = &[
    "template",
    "iamlet",
    "deploy/helm/iamlet",
    "--namespace",
    "kube-system",
];
const MANIFESTS: &str = "deploy/manifests/iamlet.yaml";
const HEADER: &str = "# Rendered from deploy/helm/iamlet with its default values by
#   helm template iamlet deploy/helm/iamlet --namespace kube-system
# Do not edit: change the chart and render again (tests/tests/integration/manifests/ fails on drift).
";
const NAMESPACE: &str = "kube-system";
const METADATA_PORT: u16 = 8181;
const ADMIN_PORT: u16 = 9809;

/// The workspace root.
pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The objects of one multi-document manifest.
#[derive(Default)]
struct Objects {
    daemonsets: Vec<DaemonSet>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    bindings: Vec<ClusterRoleBinding>,
    services: Vec<Service>,
    /// Kinds without a k8s-openapi type (the prometheus-operator ServiceMonitor).
    others: Vec<String>,
}

fn parse(text: &str) -> Objects {
    use serde::Deserialize;
    let mut objects = Objects::default();
    for document in serde_yaml::Deserializer::from_str(text) {
        let value = serde_yaml::Value::deserialize(document).expect("valid YAML document");
        if value.is_null() {
            continue;
        }
        let kind = value
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or_else(|| panic!("document without kind: {value:?}"))
            .to_owned();
        let api_version = value
            .get("apiVersion")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned();
        macro_rules! typed {
            ($list:ident) => {
                objects.$list.push(
                    serde_yaml::from_value(value)
                        .unwrap_or_else(|e| panic!("{kind} does not parse as {api_version}: {e}")),
                )
            };
        }
        match (api_version.as_str(), kind.as_str()) {
            ("apps/v1", "DaemonSet") => typed!(daemonsets),
            ("v1", "ServiceAccount") => typed!(service_accounts),
            ("v1", "Service") => typed!(services),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => typed!(cluster_roles),
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => typed!(bindings),
            ("monitoring.coreos.com/v1", "ServiceMonitor") => objects.others.push(kind),
            _ => panic!("unexpected object {api_version} {kind} in the manifests"),
        }
    }
    objects
}

fn committed() -> (String, Objects) {
    let path = root().join(MANIFESTS);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let objects = parse(&text);
    (text, objects)
}

fn only<'a, T>(list: &'a [T], what: &str) -> &'a T {
    assert_eq!(list.len(), 1, "expected exactly one {what}");
    &list[0]
}

fn agent_container(ds: &DaemonSet) -> &Container {
    let spec = ds.spec.as_ref().expect("DaemonSet spec");
    let pod = spec.template.spec.as_ref().expect("pod spec");
    assert_eq!(pod.containers.len(), 1, "one container");
    assert!(
        pod.init_containers.is_none(),
        "no init containers expected; update this test if one is added"
    );
    &pod.containers[0]
}

fn args(container: &Container) -> &[String] {
    container.args.as_deref().unwrap_or_default()
}

/// The value of `--name=value` in `args`; `Some("")` for a bare `--name` (a switch). The chart
/// renders every flag with a value as one `--name=value` item.
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let long = format!("--{name}");
    args.iter().find_map(|a| {
        let rest = a.strip_prefix(&long)?;
        if rest.is_empty() {
            Some("")
        } else {
            rest.strip_prefix('=')
        }
    })
}

fn int_or_string(v: &IntOrString) -> String {
    match v {
        IntOrString::Int(i) => i.to_string(),
        IntOrString::String(s) => s.clone(),
    }
}

// ---------------------------------------------------------------------------------------------
// The agent's flags, from its clap definition.

/// The long flags of the agent.
fn agent_flags() -> BTreeSet<String> {
    use clap::CommandFactory;
    iamlet::Args::command()
        .get_arguments()
        .filter_map(|a| a.get_long().map(str::to_owned))
        .collect()
}

fn assert_agent_flags(args: &[String], known: &BTreeSet<String>) {
    for arg in args {
        let Some(name) = arg.strip_prefix("--") else {
            continue;
        };
        let name = name.split('=').next().unwrap_or_default();
        assert!(
            known.contains(name),
            "the DaemonSet passes --{name}, which the agent does not have (its flags: {known:?})"
        );
    }
}

#[test]
fn the_agent_flags_are_read_from_its_definition() {
    let flags = agent_flags();
    for expected in [
        "listen-v4",
        "admin-listen",
        "shutdown-grace",
        "log-format",
        "allow-path",
        "base-role-arn",
        "require-imdsv2",
        "node-name",
    ] {
        assert!(
            flags.contains(expected),
            "--{expected} not found; found {flags:?}"
        );
    }
}

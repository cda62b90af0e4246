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

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

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
# Do not edit: change the chart and render again (tests/tests/manifests.rs fails on drift).
";
const NAMESPACE: &str = "kube-system";
const METADATA_PORT: u16 = 8181;
const ADMIN_PORT: u16 = 9809;

fn root() -> PathBuf {
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

// ---------------------------------------------------------------------------------------------
// The committed manifests.

#[test]
fn manifests_have_the_expected_objects() {
    let (text, objects) = committed();
    assert!(text.starts_with(HEADER), "{MANIFESTS} lost its header");
    assert_eq!(objects.daemonsets.len(), 1);
    assert_eq!(objects.service_accounts.len(), 1);
    assert_eq!(objects.cluster_roles.len(), 1);
    assert_eq!(objects.bindings.len(), 1);
    assert!(
        objects.services.is_empty() && objects.others.is_empty(),
        "the ServiceMonitor is off by default"
    );
    let ds = &objects.daemonsets[0];
    let sa = &objects.service_accounts[0];
    for ns in [&ds.metadata.namespace, &sa.metadata.namespace] {
        assert_eq!(ns.as_deref(), Some(NAMESPACE));
    }
}

#[test]
fn daemonset_runs_in_the_host_network_on_every_node() {
    let (_, objects) = committed();
    let ds = only(&objects.daemonsets, "DaemonSet");
    let spec = ds.spec.as_ref().expect("spec");
    let pod = spec.template.spec.as_ref().expect("pod spec");

    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    let tolerations = pod.tolerations.as_deref().unwrap_or_default();
    assert!(
        tolerations.iter().any(|t| t.operator.as_deref() == Some("Exists")
            && t.key.is_none()
            && t.effect.is_none()),
        "a toleration with operator Exists and no key or effect tolerates every taint: {tolerations:?}"
    );
    let node_selector = pod.node_selector.as_ref().expect("nodeSelector");
    assert_eq!(
        node_selector.get("kubernetes.io/os").map(String::as_str),
        Some("linux")
    );

    // The selector picks the template's pods.
    let selector = spec.selector.match_labels.as_ref().expect("matchLabels");
    let labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.as_ref())
        .expect("pod labels");
    for (k, v) in selector {
        assert_eq!(labels.get(k), Some(v), "pod label {k}");
    }

    // Surge: the new pod starts before the old one stops; the node is never without a proxy.
    let strategy = spec.update_strategy.as_ref().expect("updateStrategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    let rolling = strategy.rolling_update.as_ref().expect("rollingUpdate");
    assert_eq!(
        rolling.max_surge.as_ref().map(int_or_string).as_deref(),
        Some("1")
    );
    assert_eq!(
        rolling
            .max_unavailable
            .as_ref()
            .map(int_or_string)
            .as_deref(),
        Some("0")
    );
    // With hostNetwork every declared container port becomes a host port, and the scheduler
    // would keep the surge pod off a node whose old pod holds it.
    let container = agent_container(ds);
    assert!(
        container.ports.as_deref().unwrap_or_default().is_empty(),
        "no container ports (they would block maxSurge): {:?}",
        container.ports
    );
}

#[test]
fn daemonset_environment_and_listeners() {
    let (_, objects) = committed();
    let ds = only(&objects.daemonsets, "DaemonSet");
    let container = agent_container(ds);
    let env = container.env.as_deref().unwrap_or_default();
    let field_ref = |name: &str| {
        env.iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value_from.as_ref())
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.clone())
    };
    assert_eq!(field_ref("NODE_NAME").as_deref(), Some("spec.nodeName"));
    assert_eq!(field_ref("HOST_IP").as_deref(), Some("status.hostIP"));

    let args = args(container);
    assert_eq!(
        flag(args, "listen-v4"),
        Some(format!("$(HOST_IP):{METADATA_PORT}").as_str()),
        "the metadata proxy listens on the host IP: {args:?}"
    );
    assert_eq!(
        flag(args, "admin-listen"),
        Some(format!("$(HOST_IP):{ADMIN_PORT}").as_str()),
        "the admin server listens where the kubelet's probes reach it: {args:?}"
    );
    // Kubernetes expands $(VAR) only for variables the container defines.
    for arg in args {
        let mut rest = arg.as_str();
        while let Some(i) = rest.find("$(") {
            let var = &rest[i + 2..];
            let var = &var[..var.find(')').expect("closing parenthesis")];
            assert!(
                env.iter().any(|e| e.name == var),
                "{arg} refers to $({var}), which the container does not define"
            );
            rest = &rest[i + 2..];
        }
    }

    // The kubelet's SIGKILL comes after the drain has had its time.
    let grace = flag(args, "shutdown-grace").expect("--shutdown-grace");
    let grace: i64 = grace
        .strip_suffix('s')
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("--shutdown-grace={grace}: expected whole seconds"));
    let pod = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec");
    let termination = pod
        .termination_grace_period_seconds
        .expect("terminationGracePeriodSeconds");
    assert!(
        termination > grace,
        "terminationGracePeriodSeconds {termination} must exceed --shutdown-grace {grace}s"
    );
}

#[test]
fn daemonset_args_are_agent_flags() {
    let (_, objects) = committed();
    let ds = only(&objects.daemonsets, "DaemonSet");
    let container = agent_container(ds);
    assert!(
        container.command.is_none(),
        "the image's entrypoint runs iamlet"
    );
    assert_agent_flags(args(container), &agent_flags());
}

#[test]
fn daemonset_probes_hit_the_admin_port() {
    let (_, objects) = committed();
    let container = agent_container(only(&objects.daemonsets, "DaemonSet"));
    for (probe, path) in [
        (&container.liveness_probe, "/live"),
        (&container.readiness_probe, "/ready"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("an httpGet probe on {path}"));
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(int_or_string(&get.port), ADMIN_PORT.to_string());
        // No host: the kubelet probes the pod IP, which is the host IP the admin server binds.
        assert!(get.host.is_none(), "probe host must be unset");
        assert!(matches!(get.scheme.as_deref(), None | Some("HTTP")));
    }
}

#[test]
fn daemonset_security_context_and_resources() {
    let (_, objects) = committed();
    let container = agent_container(only(&objects.daemonsets, "DaemonSet"));
    let sc = container
        .security_context
        .as_ref()
        .expect("securityContext");
    assert_ne!(sc.privileged, Some(true), "not privileged by default");
    let caps = sc.capabilities.as_ref().expect("capabilities");
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_owned()][..]));
    let added: BTreeSet<&str> = caps
        .add
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(String::as_str)
        .collect();
    assert_eq!(
        added,
        BTreeSet::from(["BPF", "NET_ADMIN", "PERFMON", "SYS_ADMIN"])
    );
    // The API server rejects allowPrivilegeEscalation: false together with SYS_ADMIN.
    assert_ne!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.run_as_user, Some(0));
    assert_eq!(sc.read_only_root_filesystem, Some(true));

    let resources = container.resources.as_ref().expect("resources");
    let requests = resources.requests.as_ref().expect("requests");
    assert!(requests.contains_key("cpu") && requests.contains_key("memory"));
    let limits = resources.limits.as_ref().expect("limits");
    assert!(limits.contains_key("memory"), "a memory limit");
}

#[test]
fn daemonset_mounts_cgroup2_and_bpffs_from_the_host() {
    let (_, objects) = committed();
    let ds = only(&objects.daemonsets, "DaemonSet");
    let pod = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec");
    let container = agent_container(ds);
    let volumes = pod.volumes.as_deref().unwrap_or_default();
    let mounts = container.volume_mounts.as_deref().unwrap_or_default();
    let host_path_mount = |host: &str| {
        let volume = volumes
            .iter()
            .find(|v| v.host_path.as_ref().is_some_and(|h| h.path == host))
            .unwrap_or_else(|| panic!("a hostPath volume of {host}"));
        let mount = mounts
            .iter()
            .find(|m| m.name == volume.name)
            .unwrap_or_else(|| panic!("a mount of volume {}", volume.name));
        (volume.host_path.clone().expect("hostPath"), mount.clone())
    };

    // The agent finds cgroup2 at /sys/fs/cgroup and attaches by an fd of a directory; it
    // never writes there.
    let (host, mount) = host_path_mount("/sys/fs/cgroup");
    assert_eq!(host.type_.as_deref(), Some("Directory"));
    assert_eq!(mount.mount_path, "/sys/fs/cgroup");
    assert_eq!(mount.read_only, Some(true));

    // bpffs for the pins; a bpffs mounted on the host later must show up in the container.
    let (host, mount) = host_path_mount("/sys/fs/bpf");
    assert_eq!(host.type_.as_deref(), Some("Directory"));
    assert_eq!(mount.mount_path, "/sys/fs/bpf");
    assert_ne!(mount.read_only, Some(true), "pins are written to bpffs");
    assert_eq!(
        mount.mount_propagation.as_deref(),
        Some("HostToContainer"),
        "Bidirectional is only allowed for privileged containers"
    );
    // The pin directory is below the mount.
    let pins = flag(args(container), "bpffs-dir").unwrap_or("/sys/fs/bpf/iamlet");
    assert!(pins.starts_with("/sys/fs/bpf/"), "--bpffs-dir={pins}");

    // The handover socket lives on the host, where the old and the new agent of an update
    // both see it; the agent keeps its links on exit (fail closed).
    let socket = flag(args(container), "handover-socket").expect("--handover-socket");
    let (host, mount) = host_path_mount("/run/iamlet");
    assert_eq!(host.type_.as_deref(), Some("DirectoryOrCreate"));
    assert_eq!(mount.mount_path, "/run/iamlet");
    assert_ne!(mount.read_only, Some(true), "the socket is created there");
    assert_eq!(socket, "/run/iamlet/handover.sock");
    assert_eq!(flag(args(container), "on-exit"), Some("keep"));
}

#[test]
fn rbac_binds_the_service_account_to_the_cluster_role() {
    let (_, objects) = committed();
    let ds = only(&objects.daemonsets, "DaemonSet");
    let sa = only(&objects.service_accounts, "ServiceAccount");
    let role = only(&objects.cluster_roles, "ClusterRole");
    let binding = only(&objects.bindings, "ClusterRoleBinding");

    let pod = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec");
    assert_eq!(pod.service_account_name, sa.metadata.name);
    assert_ne!(pod.automount_service_account_token, Some(false));
    assert_ne!(sa.automount_service_account_token, Some(false));

    let rules = role.rules.as_deref().unwrap_or_default();
    let allows = |group: &str, resource: &str, verb: &str| {
        rules.iter().any(|r| {
            r.api_groups
                .as_deref()
                .unwrap_or_default()
                .iter()
                .any(|g| g == group)
                && r.resources
                    .as_deref()
                    .unwrap_or_default()
                    .iter()
                    .any(|x| x == resource)
                && r.verbs.iter().any(|v| v == verb)
        })
    };
    for resource in ["pods", "namespaces", "serviceaccounts"] {
        for verb in ["get", "list", "watch"] {
            assert!(allows("", resource, verb), "{verb} {resource}");
        }
        for verb in ["create", "update", "patch", "delete"] {
            assert!(!allows("", resource, verb), "no {verb} on {resource}");
        }
    }
    for group in ["", "events.k8s.io"] {
        for verb in ["create", "patch"] {
            assert!(allows(group, "events", verb), "{verb} events in {group:?}");
        }
    }
    for rule in rules {
        assert!(
            !rule.verbs.iter().any(|v| v == "*")
                && !rule
                    .resources
                    .as_deref()
                    .unwrap_or_default()
                    .iter()
                    .any(|r| r == "*" || r == "secrets"),
            "least privilege: {rule:?}"
        );
    }

    assert_eq!(binding.role_ref.api_group, "rbac.authorization.k8s.io");
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(Some(&binding.role_ref.name), role.metadata.name.as_ref());
    let subjects = binding.subjects.as_deref().unwrap_or_default();
    assert!(
        subjects.iter().any(|s| s.kind == "ServiceAccount"
            && Some(&s.name) == sa.metadata.name.as_ref()
            && s.namespace == sa.metadata.namespace),
        "the binding names the agent's ServiceAccount: {subjects:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Rendering with helm.

fn find_helm() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("IAMLET_HELM") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "IAMLET_HELM={} does not exist",
            path.display()
        );
        return Some(path);
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("helm"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let local = root().join("target/tools/helm");
        local.is_file().then_some(local)
    })
}

fn helm_or_skip(test: &str) -> Option<PathBuf> {
    let helm = find_helm();
    if helm.is_none() {
        eprintln!(
            "SKIPPED {test}: no helm binary (looked at IAMLET_HELM, PATH and target/tools/helm); \
             `cargo xtask setup` installs one at target/tools/helm"
        );
    }
    helm
}

fn render(helm: &Path, extra: &[&str]) -> String {
    let out = Command::new(helm)
        .args(RENDER_ARGS)
        .args(extra)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", helm.display()));
    assert!(
        out.status.success(),
        "helm {} {}: {}\n{}",
        RENDER_ARGS.join(" "),
        extra.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

#[test]
fn committed_manifests_are_what_the_chart_renders() {
    let Some(helm) = helm_or_skip("committed_manifests_are_what_the_chart_renders") else {
        return;
    };
    let want = format!("{HEADER}{}", render(&helm, &[]));
    let have = std::fs::read_to_string(root().join(MANIFESTS)).expect("committed manifests");
    if want != have {
        let line = want
            .lines()
            .zip(have.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| want.lines().count().min(have.lines().count()));
        panic!(
            "{MANIFESTS} differs from what the chart renders, first at line {}:\n  \
             rendered:  {:?}\n  committed: {:?}\nRender it again from the workspace root:\n  \
             {{ head -3 {MANIFESTS}; {} {}; }} > /tmp/iamlet.yaml && mv /tmp/iamlet.yaml {MANIFESTS}",
            line + 1,
            want.lines().nth(line).unwrap_or("<end>"),
            have.lines().nth(line).unwrap_or("<end>"),
            helm.display(),
            RENDER_ARGS.join(" "),
        );
    }
}

#[test]
fn chart_with_every_option_renders_agent_flags_only() {
    let Some(helm) = helm_or_skip("chart_with_every_option_renders_agent_flags_only") else {
        return;
    };
    let text = render(
        &helm,
        &[
            "--set",
            "securityContext.privileged=true",
            "--set",
            "metrics.serviceMonitor.enabled=true",
            "--set",
            "agent.listenV6=[fd00::1]:8181",
            "--set",
            "agent.cgroup=kubepods.slice",
            "--set",
            "agent.bpffsDir=/sys/fs/bpf/iamlet",
            "--set",
            "agent.baseRoleArn=arn:aws:iam::123456789012:role/",
            "--set",
            "agent.requireImdsv2=true",
            "--set",
            "agent.region=eu-west-1",
            "--set",
            "agent.stsEndpoint=https://sts.eu-west-1.amazonaws.com",
            "--set",
            "agent.sessionDuration=2h",
            "--set",
            "agent.sessionTags=true",
            "--set",
            "agent.upstream=off",
            "--set",
            "agent.allowPaths[0]=meta-data/placement/.*",
            "--set",
            "agent.allowPaths[1]=meta-data/(a|b): #x",
            "--set",
            "agent.extraArgs[0]=--no-prefetch",
            "--set",
            "serviceAccount.annotations.eks\\.amazonaws\\.com/role-arn=arn:aws:iam::123456789012:role/iamlet",
        ],
    );
    let objects = parse(&text);
    let ds = only(&objects.daemonsets, "DaemonSet");
    let container = agent_container(ds);
    let args = args(container);
    assert_agent_flags(args, &agent_flags());
    for (name, value) in [
        ("listen-v6", "[fd00::1]:8181"),
        ("cgroup", "kubepods.slice"),
        ("base-role-arn", "arn:aws:iam::123456789012:role/"),
        ("region", "eu-west-1"),
        ("session-duration", "2h"),
        ("upstream", "off"),
        ("allow-path", "meta-data/placement/.*"),
        ("require-imdsv2", ""),
        ("session-tags", ""),
        ("no-prefetch", ""),
    ] {
        assert_eq!(flag(args, name), Some(value), "--{name} in {args:?}");
    }
    assert!(
        args.iter().any(|a| a == "--allow-path=meta-data/(a|b): #x"),
        "a regex with YAML-special characters survives: {args:?}"
    );
    let sc = container
        .security_context
        .as_ref()
        .expect("securityContext");
    assert_eq!(sc.privileged, Some(true));
    assert!(sc.capabilities.is_none());
    let bpffs = container
        .volume_mounts
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|m| m.mount_path == "/sys/fs/bpf")
        .expect("bpffs mount");
    assert_eq!(bpffs.mount_propagation.as_deref(), Some("Bidirectional"));
    let sa = only(&objects.service_accounts, "ServiceAccount");
    assert!(sa
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key("eks.amazonaws.com/role-arn")));
    let service = only(&objects.services, "metrics Service");
    let service_spec = service.spec.as_ref().expect("Service spec");
    assert_eq!(service_spec.cluster_ip.as_deref(), Some("None"));
    let port = &service_spec.ports.as_deref().unwrap_or_default()[0];
    assert_eq!(port.port, i32::from(ADMIN_PORT));
    assert_eq!(objects.others, ["ServiceMonitor"]);
}

/// The memory limit of the agent container, and its `--max-connections`.
fn memory_limit_and_connections(text: &str) -> (String, usize) {
    let objects = parse(text);
    let container = agent_container(only(&objects.daemonsets, "DaemonSet"));
    let limit = container
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get("memory"))
        .map(|q| q.0.clone())
        .expect("a memory limit");
    let conns = flag(args(container), "max-connections")
        .expect("--max-connections")
        .parse()
        .expect("a number");
    (limit, conns)
}

#[test]
fn the_memory_limit_follows_the_connection_bound() {
    // 128 MiB of base, 13 KiB per connection held, 16 MiB of request bytes.
    let derived = |conns: usize| format!("{}Mi", 128 + (conns * 13).div_ceil(1024) + 16);
    let (limit, conns) = memory_limit_and_connections(&committed().0);
    assert_eq!((limit.as_str(), conns), (derived(4096).as_str(), 4096));
    let Some(helm) = helm_or_skip("the_memory_limit_follows_the_connection_bound") else {
        return;
    };
    let (limit, conns) =
        memory_limit_and_connections(&render(&helm, &["--set", "agent.maxConnections=16384"]));
    assert_eq!((limit, conns), (derived(16384), 16384));
    let (limit, _) =
        memory_limit_and_connections(&render(&helm, &["--set", "resources.limits.memory=1Gi"]));
    assert_eq!(limit, "1Gi", "an explicit limit is kept");
}

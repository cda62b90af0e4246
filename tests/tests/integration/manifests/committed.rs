//! The committed manifests (`deploy/manifests/iamlet.yaml`), parsed into the API types:
//! the objects, the DaemonSet (host network, environment, listeners, probes, security context,
//! resources, mounts) and RBAC.

use super::*;

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
    // `kubectl exec` into the agent's container finds its admin server with `iamlet inspect`.
    let admin_env = env
        .iter()
        .find(|e| e.name == "IAMLET_ADMIN_LISTEN")
        .and_then(|e| e.value.as_deref());
    assert_eq!(
        admin_env,
        Some(format!("$(HOST_IP):{ADMIN_PORT}").as_str()),
        "{env:?}"
    );

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
        BTreeSet::from(["BPF", "NET_ADMIN", "PERFMON", "SYS_ADMIN", "SYS_RESOURCE"])
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

//! The chart (`deploy/helm/iamlet`) rendered with a real `helm`: the committed manifests are
//! what it renders, every option gives agent flags only, the memory limit follows the
//! connection bound.

use std::process::Command;

use super::*;

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

/// helm (`IAMLET_HELM`, `PATH`, then `target/tools/helm`), or `None` after saying `test` is
/// skipped.
pub(crate) fn helm_or_skip(test: &str) -> Option<PathBuf> {
    let helm = find_helm();
    if helm.is_none() {
        eprintln!(
            "SKIPPED {test}: no helm binary (looked at IAMLET_HELM, PATH and target/tools/helm); \
             `cargo xtask setup` installs one at target/tools/helm"
        );
    }
    helm
}

/// What `helm template` renders for the chart with `extra` arguments.
pub(crate) fn render(helm: &Path, extra: &[&str]) -> String {
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
            "agent.proxyThreads=2",
            "--set",
            "agent.proxyBusyPoll=200us",
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
        ("proxy-threads", "2"),
        ("proxy-busy-poll", "200us"),
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
    // 128 MiB of base, 15 KiB per connection held, 16 MiB of request bytes.
    let derived = |conns: usize| format!("{}Mi", 128 + (conns * 15).div_ceil(1024) + 16);
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

/// The value of the agent's `--name` in the DaemonSet of `text`, if given.
fn agent_flag(text: &str, name: &str) -> Option<String> {
    let objects = parse(text);
    flag(
        args(agent_container(only(&objects.daemonsets, "DaemonSet"))),
        name,
    )
    .map(str::to_owned)
}

#[test]
fn proxy_threads_are_the_agents_choice_unless_set() {
    let threads = |text: &str| agent_flag(text, "proxy-threads");
    assert_eq!(threads(&committed().0), None, "one per CPU by default");
    let Some(helm) = helm_or_skip("proxy_threads_are_the_agents_choice_unless_set") else {
        return;
    };
    assert_eq!(
        threads(&render(&helm, &["--set", "agent.proxyThreads=1"])),
        Some("1".to_owned())
    );
}

#[test]
fn busy_polling_is_the_agents_choice_unless_set_and_0_turns_it_off() {
    let window = |text: &str| agent_flag(text, "proxy-busy-poll");
    assert_eq!(window(&committed().0), None, "the agent's default");
    let Some(helm) =
        helm_or_skip("busy_polling_is_the_agents_choice_unless_set_and_0_turns_it_off")
    else {
        return;
    };
    // `--set` makes 0 a number: it must still reach the agent.
    for (set, want) in [("0", "0"), ("200us", "200us")] {
        assert_eq!(
            window(&render(
                &helm,
                &["--set", &format!("agent.proxyBusyPoll={set}")]
            )),
            Some(want.to_owned()),
            "agent.proxyBusyPoll={set}"
        );
    }
}

//! The checks, one concern per file, run in an order where each can use what the ones
//! before it found (the kernel version, the pods cgroup, whether the programs are attached).
//!
//! | file | checks |
//! |---|---|
//! | `kernel` | `kernel` (release against the minimum), `btf` |
//! | `features` | `bpf features` (program, attach and map types, cgroup links) |
//! | `caps` | `capabilities` of the agent (or of doctor) |
//! | `cgroup` | `cgroup v2` (mount, unified or hybrid), `pods cgroup` |
//! | `pins` | `bpffs`, `pins` (links on the pods cgroup, maps) |
//! | `attach` | one per hook: iamlet's program on the pods cgroup, and anyone else's |
//! | `guard` | `forward guard` (the node's policy routing rules) |
//! | `agent` | `agent` (the process), `ready` (`/live`, `/ready`), `listener v4`/`v6` |
//! | `aws` | `region`, `sts endpoint`, `aws identity` (or the static credentials file) |
//! | `kube` | `node name`, `kubernetes api`, `rbac` |

mod agent;
mod attach;
mod aws;
mod caps;
mod cgroup;
mod features;
mod guard;
mod kernel;
mod kube;
mod pins;

use std::net::SocketAddr;

pub(crate) use agent::{find_agent, AgentProcess};

use super::report::Check;
use super::settings::{Roles, Settings};

/// Runs every check against `settings`, with `agent` the agent found on this node.
pub(crate) fn run_all(
    settings: &Settings,
    agent: Option<&AgentProcess>,
    runtime: &tokio::runtime::Runtime,
) -> Vec<Check> {
    let pid = agent.map(|a| a.pid);
    let mut checks = Vec::new();
    let (check, kernel) = kernel::check_kernel();
    checks.push(check);
    checks.push(features::check_bpf_features(kernel));
    checks.push(kernel::check_btf());
    checks.push(caps::check_capabilities(pid, kernel));
    let (check, layout) = cgroup::check_cgroup2();
    checks.push(check);
    let (check, pods) = cgroup::check_pods_cgroup(layout.as_ref(), settings.cgroup.as_deref());
    checks.push(check);
    checks.push(pins::check_bpffs(&settings.bpffs_dir));
    let (hooks, attached) = attach::check_attachments(pods.as_ref(), &settings.bpffs_dir, pid);
    checks.extend(hooks);
    checks.push(pins::check_pins(&settings.bpffs_dir, pods.as_ref(), pid));
    checks.push(guard::check_forward_guard(settings.forward_guard, pid));
    checks.push(agent::check_agent(agent, &settings.bpffs_dir, attached));
    checks.push(agent::check_ready(&settings.admin, settings.timeout));
    checks.push(agent::check_listener(
        "listener v4",
        "--listen-v4",
        settings.listen_v4.map(SocketAddr::V4),
        settings.timeout,
    ));
    if settings.listen_v6.is_some() || settings.listen_v4.is_none() {
        checks.push(agent::check_listener(
            "listener v6",
            "--listen-v6",
            settings.listen_v6.map(SocketAddr::V6),
            settings.timeout,
        ));
    }
    checks.push(check_roles(&settings.roles));
    checks.extend(runtime.block_on(aws::check_sts(settings)));
    checks.extend(runtime.block_on(kube::check_kubernetes(settings)));
    checks
}

/// Where pods' roles come from, and whether that source is usable.
fn check_roles(roles: &Roles) -> Check {
    const NAME: &str = "roles";
    match roles {
        Roles::Bindings(path) => {
            match crate::role::bindings::StaticBindings::has_bare_roles(path) {
                Ok(_) => Check::ok(NAME, format!("standalone: bindings from {}", path.display())),
                Err(e) => Check::fail(
                    NAME,
                    format!("--bindings: {e}"),
                    "fix the bindings file (see README: cgroup globs -> roles), or pass the one the agent uses",
                ),
            }
        }
        Roles::Kubernetes { kubeconfig, .. } => Check::ok(
            NAME,
            format!(
                "kubernetes: pod annotations, namespace policy and service accounts, through the {}",
                kubeconfig.as_ref().map_or_else(
                    || "in-cluster service account".to_owned(),
                    |p| format!("kubeconfig {}", p.display())
                )
            ),
        ),
        Roles::Nothing => Check::warn(
            NAME,
            "no role source: no --bindings, no --kubeconfig and not in a pod, so the agent redirects pods but gives none a role",
            "run the agent in its pod (Kubernetes mode), or pass --bindings (standalone) or --kubeconfig; run doctor in the agent's pod to see what it sees",
        ),
    }
}

/// `error: cause: cause ...`.
pub(super) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

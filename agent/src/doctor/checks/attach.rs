//! What runs on the pods cgroup for each of iamlet's hooks: iamlet's program (by name, or by
//! the program behind its pinned link), attached to the pods cgroup itself, and anyone
//! else's, attached there or above it (`BPF_PROG_QUERY`, with `BPF_F_QUERY_EFFECTIVE` for
//! the programs that really run, in the order they run).

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;

use iamlet_sys::bpf as bpf_sys;

use super::cgroup::PodsCgroup;
use crate::datapath::links::{self, Hook, HOOKS};
use crate::doctor::report::Check;

/// Names of the loaded programs by id (empty when this process may not list them).
fn program_names() -> HashMap<u32, String> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter_map(|info| Some((info.id(), info.name_as_str()?.to_owned())))
        .collect()
}

/// One program on the cgroup, as shown: `name (prog N)`.
fn shown(id: u32, names: &HashMap<u32, String>) -> String {
    match names.get(&id) {
        Some(name) if !name.is_empty() => format!("{name} (prog {id})"),
        _ => format!("prog {id}"),
    }
}

/// What runs for one hook.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct HookView {
    /// Programs attached to the pods cgroup itself, in the order they run.
    pub(crate) direct: Vec<u32>,
    /// Every program that runs for the pods' sockets: the cgroup's own, then its ancestors'.
    pub(crate) effective: Vec<u32>,
}

/// The checks of every hook, and whether iamlet's program is attached for all of them.
pub(crate) fn check_attachments(
    pods: Option<&PodsCgroup>,
    pin_dir: &Path,
    agent: Option<u32>,
) -> (Vec<Check>, bool) {
    let Some(pods) = pods else {
        let checks = HOOKS
            .iter()
            .map(|h| Check::skip(h.section, "no pods cgroup (see above)"))
            .collect();
        return (checks, false);
    };
    let cgroup = match File::open(&pods.path) {
        Ok(file) => file,
        Err(e) => {
            let checks = HOOKS
                .iter()
                .map(|h| {
                    Check::warn(
                        h.section,
                        format!("cannot open {}: {e}", pods.path.display()),
                        "run doctor as root on the node, or inside the agent's container",
                    )
                })
                .collect();
            return (checks, false);
        }
    };
    let names = program_names();
    let mut all = true;
    let checks = HOOKS
        .iter()
        .map(|hook| {
            let view = bpf_sys::prog_query(cgroup.as_fd(), hook.attach_type).and_then(|direct| {
                let effective = bpf_sys::prog_query_effective(cgroup.as_fd(), hook.attach_type)?;
                Ok(HookView { direct, effective })
            });
            match view {
                Ok(view) => {
                    let pinned = pinned_prog(pin_dir, hook);
                    let is_ours = |id: u32| {
                        names.get(&id).is_some_and(|n| n == hook.program) || pinned == Some(id)
                    };
                    all &= view.direct.iter().any(|id| is_ours(*id));
                    judge(hook, &pods.path, &view, &is_ours, |id| shown(id, &names), agent)
                }
                Err(e) => {
                    all = false;
                    Check::warn(
                        hook.section,
                        format!("cannot list the programs on {}: {e}", pods.path.display()),
                        "run doctor as root on the node, or inside the agent's container (CAP_NET_ADMIN)",
                    )
                }
            }
        })
        .collect();
    (checks, all)
}

/// The program behind the link pinned for `hook`, if there is one.
fn pinned_prog(pin_dir: &Path, hook: &Hook) -> Option<u32> {
    let fd = bpf_sys::obj_get(&links::link_pin(pin_dir, hook)).ok()?;
    bpf_sys::cgroup_link_info(fd.as_fd())
        .ok()
        .map(|info| info.prog_id)
}

/// The verdict for `hook` on the cgroup at `cgroup` given what runs there.
pub(crate) fn judge(
    hook: &Hook,
    cgroup: &Path,
    view: &HookView,
    is_ours: &dyn Fn(u32) -> bool,
    show: impl Fn(u32) -> String,
    agent: Option<u32>,
) -> Check {
    let name = hook.section;
    let list = |ids: &[u32]| {
        ids.iter()
            .map(|id| show(*id))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let ours_direct: Vec<u32> = view
        .direct
        .iter()
        .copied()
        .filter(|id| is_ours(*id))
        .collect();
    let Some(first) = view.effective.iter().position(|id| is_ours(*id)) else {
        let others: Vec<u32> = view.direct.clone();
        let mut finding = format!("{} is not attached to {}", hook.program, cgroup.display());
        if !others.is_empty() {
            finding.push_str(&format!(" (attached there: {})", list(&others)));
        }
        finding.push_str(&consequence(hook));
        let action = match agent {
            Some(pid) => format!("the agent (pid {pid}) runs but has not attached its programs: see its log and GET /ready"),
            None => "start the agent (kubectl -n kube-system get pods -l app.kubernetes.io/name=iamlet -o wide; a stopped agent's log says why it stopped)".to_owned(),
        };
        return Check::fail(name, finding, action);
    };
    if ours_direct.is_empty() {
        return Check::warn(
            name,
            format!(
                "{} runs on the pods' sockets but is attached above {}, not to it",
                show(view.effective[first]),
                cgroup.display()
            ),
            "run the agent with --cgroup set to the pods cgroup",
        );
    }
    if ours_direct.len() > 1 {
        return Check::warn(
            name,
            format!("{} is attached {} times: {}", hook.program, ours_direct.len(), list(&ours_direct)),
            "one agent per node: another agent (with another --bpffs-dir) or a leftover link holds the rest; find it with bpftool link show, and remove its pins",
        );
    }
    let before: Vec<u32> = view.effective[..first].to_vec();
    let after: Vec<u32> = view.effective[first + 1..]
        .iter()
        .copied()
        .filter(|id| !is_ours(*id))
        .collect();
    let redirects = hook.section.starts_with("cgroup/connect");
    if redirects && !before.is_empty() {
        return Check::warn(
            name,
            format!("{} is attached to {}, but {} runs before it: if that rewrites 169.254.169.254, pods bypass iamlet", show(ours_direct[0]), cgroup.display(), list(&before)),
            format!("find out who attached it: bpftool cgroup tree {}; bpftool prog show id {}", cgroup.display(), before[0]),
        );
    }
    let mut finding = format!("{} attached to {}", show(ours_direct[0]), cgroup.display());
    let others: Vec<u32> = before.into_iter().chain(after).collect();
    if !others.is_empty() {
        finding.push_str(&format!(
            "; also running on these sockets: {}",
            list(&others)
        ));
        if redirects {
            finding.push_str(" (after iamlet's)");
        }
    }
    Check::ok(name, finding)
}

/// What a hook without iamlet's program means for pods.
fn consequence(hook: &Hook) -> String {
    match hook.section {
        "cgroup/connect4" | "cgroup/connect6" => {
            ": pods' metadata connects are not redirected to iamlet (they reach the node's own metadata service, or are refused by the forwarding guard)".to_owned()
        }
        "sock_ops" => ": redirected connections are not recorded, so iamlet cannot tell which pod made them (403)".to_owned(),
        _ => ": packets that bypass connect() (raw sockets, a pod's own DNAT) reach the metadata service".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::report::Status;

    fn hook(section: &str) -> Hook {
        *HOOKS.iter().find(|h| h.section == section).expect("a hook")
    }

    fn names() -> HashMap<u32, String> {
        [
            (10, "iamlet_connect4"),
            (20, "cil_sock4_connect"),
            (30, "other_connect4"),
        ]
        .into_iter()
        .map(|(id, n)| (id, n.to_owned()))
        .collect()
    }

    fn run(view: &HookView, agent: Option<u32>) -> Check {
        let names = names();
        let is_ours = |id: u32| names.get(&id).is_some_and(|n| n == "iamlet_connect4");
        judge(
            &hook("cgroup/connect4"),
            Path::new("/sys/fs/cgroup/kubepods.slice"),
            view,
            &is_ours,
            |id| shown(id, &names),
            agent,
        )
    }

    #[test]
    fn iamlet_attached_alone_or_before_an_ancestors_program_is_ok() {
        let alone = run(
            &HookView {
                direct: vec![10],
                effective: vec![10],
            },
            Some(1),
        );
        assert_eq!(alone.status, Status::Ok);
        assert_eq!(
            alone.finding,
            "iamlet_connect4 (prog 10) attached to /sys/fs/cgroup/kubepods.slice"
        );
        let cilium = run(
            &HookView {
                direct: vec![10],
                effective: vec![10, 20],
            },
            Some(1),
        );
        assert_eq!(cilium.status, Status::Ok);
        assert!(
            cilium.finding.ends_with(
                "also running on these sockets: cil_sock4_connect (prog 20) (after iamlet's)"
            ),
            "{cilium:?}"
        );
    }

    #[test]
    fn someone_elses_program_before_iamlets_is_named() {
        let check = run(
            &HookView {
                direct: vec![30, 10],
                effective: vec![30, 10],
            },
            Some(1),
        );
        assert_eq!(check.status, Status::Warn);
        assert!(
            check
                .finding
                .contains("other_connect4 (prog 30) runs before it"),
            "{check:?}"
        );
        assert!(
            check
                .action
                .as_deref()
                .is_some_and(|a| a.contains("bpftool prog show id 30")),
            "{check:?}"
        );
    }

    #[test]
    fn nothing_attached_is_a_problem_with_what_to_do() {
        let none = run(&HookView::default(), None);
        assert_eq!(none.status, Status::Fail);
        assert!(none.finding.starts_with("iamlet_connect4 is not attached to /sys/fs/cgroup/kubepods.slice: pods' metadata connects are not redirected"), "{none:?}");
        assert!(
            none.action
                .as_deref()
                .is_some_and(|a| a.starts_with("start the agent")),
            "{none:?}"
        );
        let other = run(
            &HookView {
                direct: vec![30],
                effective: vec![30],
            },
            Some(9),
        );
        assert!(
            other
                .finding
                .contains("(attached there: other_connect4 (prog 30))"),
            "{other:?}"
        );
        assert!(
            other.action.as_deref().is_some_and(|a| a.contains("pid 9")),
            "{other:?}"
        );
        let twice = run(
            &HookView {
                direct: vec![10, 10],
                effective: vec![10, 10],
            },
            Some(1),
        );
        assert_eq!(twice.status, Status::Warn);
        let above = run(
            &HookView {
                direct: vec![],
                effective: vec![10],
            },
            Some(1),
        );
        assert_eq!(above.status, Status::Warn);
        assert!(above.finding.contains("attached above"), "{above:?}");
    }
}

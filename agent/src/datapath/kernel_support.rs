//! What the kernel must support, checked before anything is loaded or attached, so that a
//! kernel too old for iamlet is refused with the missing feature and its version named, not
//! with an `EINVAL` from deep inside the loader.
//!
//! For each hook it loads the smallest program of the hook's type and attach type, and asks
//! for a cgroup link of it with no cgroup: a kernel with cgroup links (5.7) answers `EBADF`
//! there, one without `EINVAL`. Nothing is attached.

use std::io;
use std::os::fd::AsFd;

use iamlet_sys::bpf as bpf_sys;

use super::links::HOOKS;

/// Why the kernel cannot run iamlet.
#[derive(Debug, thiserror::Error)]
pub enum Unsupported {
    /// The kernel refused a feature iamlet needs.
    #[error("this kernel (Linux {kernel}) cannot run iamlet: it lacks {feature}, which needs Linux {since} or later ({source}); iamlet is tested on 5.10, 6.1 and 6.12")]
    Missing {
        /// What the kernel refused.
        feature: String,
        /// The first Linux release that has it.
        since: &'static str,
        /// `uname -r`.
        kernel: String,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// This process may not load eBPF programs at all.
    #[error("no permission to load eBPF programs ({source}): the agent needs CAP_BPF and CAP_NET_ADMIN (or CAP_SYS_ADMIN), and before Linux 5.11 CAP_SYS_RESOURCE to lift its locked-memory limit")]
    Permission {
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
}

/// Since when cgroup programs can be attached through a `bpf_link` (and swapped in place by
/// `BPF_LINK_UPDATE`, which the upgrade handover relies on).
const CGROUP_LINKS_SINCE: &str = "5.7";

/// Lifts the locked-memory limit. Before Linux 5.11, the kernel charges eBPF programs and maps
/// to the user's `RLIMIT_MEMLOCK` (later kernels charge the cgroup's memory instead), and all
/// of root's processes share that count: on 5.10 a successor or an adopting agent, loading
/// while the programs and maps of the one before are still there, was refused with `EPERM`.
/// Raising it needs `CAP_SYS_RESOURCE`; without it the limit is kept, which later kernels
/// ignore anyway.
pub(crate) fn lift_memlock_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let from = getrlimit(Resource::Memlock);
    if from.current.is_none() {
        return;
    }
    let unlimited = Rlimit {
        current: None,
        maximum: None,
    };
    match setrlimit(Resource::Memlock, unlimited) {
        Ok(()) => tracing::debug!(from = ?from.current, "lifted the locked-memory limit"),
        Err(e) => tracing::debug!(
            error = %e,
            limit = ?from.current,
            "could not lift the locked-memory limit (needed for eBPF before Linux 5.11 only)"
        ),
    }
}

/// Checks every hook of [`HOOKS`].
pub(crate) fn check() -> Result<(), Unsupported> {
    for hook in &HOOKS {
        let prog = bpf_sys::probe_prog_load(hook.prog_type, hook.attach_type).map_err(|e| {
            refusal(
                e,
                format!(
                    "{} programs (BPF_PROG_TYPE {})",
                    hook.section, hook.prog_type
                ),
                hook.since,
            )
        })?;
        bpf_sys::probe_cgroup_link(prog.as_fd(), hook.attach_type).map_err(|e| {
            refusal(
                e,
                format!("bpf_link for {} programs (BPF_LINK_CREATE)", hook.section),
                CGROUP_LINKS_SINCE,
            )
        })?;
    }
    Ok(())
}

fn refusal(source: io::Error, feature: String, since: &'static str) -> Unsupported {
    match source.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => Unsupported::Permission { source },
        _ => Unsupported::Missing {
            feature,
            since,
            kernel: kernel_release(),
            source,
        },
    }
}

/// `uname -r`.
fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "(unknown version)".to_owned(), |s| s.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_old_kernel_is_told_what_it_lacks() {
        let e = refusal(
            io::Error::from_raw_os_error(libc::EINVAL),
            "bpf_link for cgroup/connect4 programs (BPF_LINK_CREATE)".to_owned(),
            CGROUP_LINKS_SINCE,
        );
        let text = e.to_string();
        assert!(
            text.contains("cannot run iamlet: it lacks bpf_link for cgroup/connect4"),
            "{text}"
        );
        assert!(text.contains("needs Linux 5.7 or later"), "{text}");
        assert!(text.contains(&kernel_release()), "{text}");
    }

    #[test]
    fn a_permission_error_is_not_blamed_on_the_kernel() {
        let e = refusal(
            io::Error::from_raw_os_error(libc::EPERM),
            String::new(),
            "4.10",
        );
        assert!(matches!(e, Unsupported::Permission { .. }), "{e}");
    }
}

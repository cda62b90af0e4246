//! The eBPF features iamlet uses, asked of the kernel itself: each hook's program type with
//! its attach type and a cgroup `bpf_link` of it (the probes the agent runs before it loads
//! anything), and the map types (aya's feature probes). Nothing is attached.

use std::io;

use aya::maps::MapType;

use super::kernel::{KernelVersion, MINIMUM};
use crate::datapath::kernel_support::{self, Unsupported};
use crate::datapath::links::HOOKS;
use crate::doctor::report::Check;

const NAME: &str = "bpf features";

/// The map types of iamlet's maps (see `agent_common::maps`), and since when Linux has them.
const MAPS: [(MapType, &str, &str); 3] = [
    (MapType::Array, "array", "3.19"),
    (MapType::LruHash, "LRU hash", "4.10"),
    (MapType::PerCpuArray, "per-CPU array", "4.6"),
];

/// What one probe found missing.
#[derive(Debug)]
enum Probe {
    /// The kernel refused it: it lacks the feature.
    Missing {
        feature: String,
        since: &'static str,
        source: String,
    },
    /// This process may not ask.
    Denied(io::Error),
}

/// Probes every hook and map type.
pub(crate) fn check_bpf_features(kernel: Option<KernelVersion>) -> Check {
    match probe_all() {
        Ok(()) => Check::ok(
            NAME,
            format!(
                "{} programs, each with its cgroup bpf_link; {} maps",
                HOOKS.map(|h| h.section).join(", "),
                MAPS.map(|m| m.1).join(", ")
            ),
        ),
        Err(Probe::Missing {
            feature,
            since,
            source,
        }) => Check::fail(
            NAME,
            format!(
                "this kernel{} lacks {feature} ({source}), which needs Linux {since} or later",
                kernel.map(|k| format!(" ({k})")).unwrap_or_default()
            ),
            format!("run the node on Linux {MINIMUM} or later with eBPF enabled (CONFIG_BPF_SYSCALL, CONFIG_CGROUP_BPF)"),
        ),
        Err(Probe::Denied(e)) => Check::warn(
            NAME,
            format!("cannot probe: this process may not load eBPF programs ({e})"),
            "run doctor as root on the node, or inside the agent's container (kubectl exec), which has CAP_BPF",
        ),
    }
}

fn probe_all() -> Result<(), Probe> {
    // Before Linux 5.11 the probes are charged to root's locked-memory limit, which the
    // running agent's programs and maps already use: lift it as the agent does.
    kernel_support::lift_memlock_limit();
    // The hooks: the agent's own start-up check.
    kernel_support::check().map_err(|e| match e {
        Unsupported::Missing {
            feature,
            since,
            source,
            ..
        } => Probe::Missing {
            feature,
            since,
            source: source.to_string(),
        },
        Unsupported::Permission { source } => Probe::Denied(source),
    })?;
    for (map_type, name, since) in MAPS {
        match aya::sys::is_map_supported(map_type) {
            Ok(true) => {}
            Ok(false) => {
                return Err(Probe::Missing {
                    feature: format!("{name} maps"),
                    since,
                    source: "refused".to_owned(),
                })
            }
            Err(e) => return Err(refusal(e.io_error, format!("{name} maps"), since)),
        }
    }
    Ok(())
}

fn refusal(source: io::Error, feature: String, since: &'static str) -> Probe {
    match source.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => Probe::Denied(source),
        _ => Probe::Missing {
            feature,
            since,
            source: source.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_permission_error_is_not_blamed_on_the_kernel() {
        let denied = refusal(
            io::Error::from_raw_os_error(libc::EPERM),
            String::new(),
            "5.7",
        );
        assert!(matches!(denied, Probe::Denied(_)), "{denied:?}");
        let missing = refusal(
            io::Error::from_raw_os_error(libc::EINVAL),
            "bpf_link for sock_ops programs (BPF_LINK_CREATE)".to_owned(),
            "5.7",
        );
        assert!(
            matches!(missing, Probe::Missing { since: "5.7", .. }),
            "{missing:?}"
        );
    }
}

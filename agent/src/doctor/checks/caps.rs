//! Capabilities: what the agent needs (see the chart's `securityContext.capabilities`),
//! against the effective set of the running agent, or of this process when none runs.

use super::kernel::{KernelVersion, CAP_BPF_SINCE, MEMCG_ACCOUNTING_SINCE};
use crate::doctor::report::Check;

const NAME: &str = "capabilities";

/// `CAP_NET_ADMIN`.
const CAP_NET_ADMIN: u32 = 12;
/// `CAP_SYS_ADMIN`.
const CAP_SYS_ADMIN: u32 = 21;
/// `CAP_SYS_RESOURCE`.
const CAP_SYS_RESOURCE: u32 = 24;
/// `CAP_PERFMON`.
const CAP_PERFMON: u32 = 38;
/// `CAP_BPF`.
const CAP_BPF: u32 = 39;

/// The capabilities iamlet cares about, in the order they are listed.
const KNOWN: [(u32, &str); 5] = [
    (CAP_BPF, "CAP_BPF"),
    (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
    (CAP_PERFMON, "CAP_PERFMON"),
    (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
    (CAP_SYS_RESOURCE, "CAP_SYS_RESOURCE"),
];

/// What the agent's container should be given (the chart's list).
const GRANT: &str = "give the agent's container BPF, NET_ADMIN, PERFMON, SYS_ADMIN and SYS_RESOURCE (the chart's securityContext.capabilities), or run it privileged";

/// A capability set (`CapEff` of `/proc/<pid>/status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CapSet(u64);

impl CapSet {
    /// The `CapEff:` line of a `/proc/<pid>/status` text (hexadecimal).
    pub(crate) fn from_status(status: &str) -> Option<CapSet> {
        let hex = status
            .lines()
            .find_map(|line| line.strip_prefix("CapEff:"))?
            .trim();
        u64::from_str_radix(hex, 16).ok().map(CapSet)
    }

    /// Whether capability number `cap` is in the set.
    pub(crate) fn has(self, cap: u32) -> bool {
        cap < 64 && self.0 & (1 << cap) != 0
    }

    /// Names of the known capabilities in the set.
    fn known_names(self) -> Vec<&'static str> {
        KNOWN
            .iter()
            .filter(|(cap, _)| self.has(*cap))
            .map(|(_, name)| *name)
            .collect()
    }
}

/// Whose capabilities are judged.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Holder {
    /// The running agent.
    Agent(u32),
    /// This process (no agent found).
    Doctor,
}

/// Reads the effective capabilities of the agent `pid` (or of this process) and judges them.
pub(crate) fn check_capabilities(agent: Option<u32>, kernel: Option<KernelVersion>) -> Check {
    let (holder, path) = match agent {
        Some(pid) => (Holder::Agent(pid), format!("/proc/{pid}/status")),
        None => (Holder::Doctor, "/proc/self/status".to_owned()),
    };
    let caps = match std::fs::read_to_string(&path) {
        Ok(text) => CapSet::from_status(&text),
        Err(e) => {
            return Check::warn(
                NAME,
                format!("cannot read {path}: {e}"),
                "run doctor as root on the node, or inside the agent's container",
            )
        }
    };
    match caps {
        Some(caps) => judge(caps, holder, kernel),
        None => Check::warn(
            NAME,
            format!("{path} has no CapEff line"),
            "run doctor on Linux, on the node or inside the agent's container",
        ),
    }
}

/// The verdict on `caps` held by `holder` on kernel `kernel` (unknown: judged as a recent one).
pub(crate) fn judge(caps: CapSet, holder: Holder, kernel: Option<KernelVersion>) -> Check {
    let whose = match holder {
        Holder::Agent(pid) => format!("the agent (pid {pid})"),
        Holder::Doctor => "this process (no agent runs; run doctor where the agent runs, e.g. kubectl exec into its pod)".to_owned(),
    };
    let held = caps.known_names();
    let held = if held.is_empty() {
        "none of CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON, CAP_SYS_ADMIN, CAP_SYS_RESOURCE".to_owned()
    } else {
        held.join(" ")
    };
    let admin = caps.has(CAP_SYS_ADMIN);
    let has_cap_bpf = kernel.is_none_or(|k| k >= CAP_BPF_SINCE);
    let mut missing = Vec::new();
    if !(admin || has_cap_bpf && caps.has(CAP_BPF)) {
        missing.push(if has_cap_bpf {
            "CAP_BPF (or CAP_SYS_ADMIN): bpf() itself"
        } else {
            "CAP_SYS_ADMIN: bpf() before Linux 5.8"
        });
    }
    if !caps.has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN: loading and attaching networking programs to a cgroup");
    }
    if kernel.is_some_and(|k| k < MEMCG_ACCOUNTING_SINCE) && !caps.has(CAP_SYS_RESOURCE) {
        missing.push("CAP_SYS_RESOURCE: before Linux 5.11 eBPF memory counts against RLIMIT_MEMLOCK, which the agent lifts");
    }
    if !missing.is_empty() {
        return Check::fail(
            NAME,
            format!("{whose} lacks {}; it has {held}", missing.join("; ")),
            GRANT,
        );
    }
    let mut lacking = Vec::new();
    if !admin {
        lacking.push("CAP_SYS_ADMIN (mounting bpffs when /sys/fs/bpf has none)");
        if !caps.has(CAP_PERFMON) {
            lacking.push("CAP_PERFMON (the verifier's relaxed mode; some programs may be refused)");
        }
    }
    if lacking.is_empty() {
        Check::ok(NAME, format!("{whose}: {held}"))
    } else {
        Check::warn(
            NAME,
            format!("{whose} has {held}, but not {}", lacking.join(", ")),
            GRANT,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::report::Status;

    const STATUS: &str = "Name:\tiamlet\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\nCapEff:\t000001ffffffffff\nCapBnd:\t000001ffffffffff\n";

    #[test]
    fn decodes_cap_eff() {
        let all = CapSet::from_status(STATUS).expect("CapEff");
        for (cap, _) in KNOWN {
            assert!(all.has(cap), "{cap}");
        }
        assert!(!all.has(41));
        assert!(!all.has(64));
        // The chart's five: BPF, NET_ADMIN, PERFMON, SYS_ADMIN, SYS_RESOURCE.
        let chart = CapSet::from_status("CapEff:\t000000c001201000\n").expect("CapEff");
        assert_eq!(
            chart.known_names(),
            [
                "CAP_BPF",
                "CAP_NET_ADMIN",
                "CAP_PERFMON",
                "CAP_SYS_ADMIN",
                "CAP_SYS_RESOURCE"
            ]
        );
        assert_eq!(CapSet::from_status("CapEff:\tzz\n"), None);
        assert_eq!(CapSet::from_status("Name: x\n"), None);
    }

    #[test]
    fn judges_what_the_agent_needs() {
        let new = Some(KernelVersion::new(6, 1, 0));
        let old = Some(KernelVersion::new(5, 10, 0));
        let set = |caps: &[u32]| CapSet(caps.iter().fold(0, |acc, c| acc | 1 << c));
        let chart = set(&[
            CAP_BPF,
            CAP_NET_ADMIN,
            CAP_PERFMON,
            CAP_SYS_ADMIN,
            CAP_SYS_RESOURCE,
        ]);
        assert_eq!(judge(chart, Holder::Agent(7), old).status, Status::Ok);
        let no_net = judge(set(&[CAP_BPF, CAP_SYS_ADMIN]), Holder::Agent(7), new);
        assert_eq!(no_net.status, Status::Fail);
        assert!(no_net.finding.contains("lacks CAP_NET_ADMIN"), "{no_net:?}");
        assert!(no_net.finding.contains("the agent (pid 7)"), "{no_net:?}");
        // SYS_RESOURCE matters only before 5.11.
        let minimal = set(&[CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON, CAP_SYS_ADMIN]);
        assert_eq!(judge(minimal, Holder::Doctor, new).status, Status::Ok);
        let on_old = judge(minimal, Holder::Doctor, old);
        assert_eq!(on_old.status, Status::Fail);
        assert!(on_old.finding.contains("CAP_SYS_RESOURCE"), "{on_old:?}");
        // Without SYS_ADMIN the agent works, with less.
        let lean = judge(set(&[CAP_BPF, CAP_NET_ADMIN]), Holder::Agent(1), new);
        assert_eq!(lean.status, Status::Warn);
        assert!(lean.finding.contains("CAP_PERFMON"), "{lean:?}");
        // Before 5.8 there is no CAP_BPF: SYS_ADMIN it is.
        let pre_bpf = Some(KernelVersion::new(5, 7, 0));
        let bpf_only = judge(
            set(&[CAP_BPF, CAP_NET_ADMIN, CAP_SYS_RESOURCE]),
            Holder::Doctor,
            pre_bpf,
        );
        assert_eq!(bpf_only.status, Status::Fail);
        assert!(
            bpf_only.finding.contains("before Linux 5.8"),
            "{bpf_only:?}"
        );
        assert_eq!(judge(CapSet(0), Holder::Doctor, new).status, Status::Fail);
    }
}

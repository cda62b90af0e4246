//! The node's forwarding guard: the policy routing rules that refuse to forward anything to a
//! metadata address (see `datapath::forward_guard`).

use crate::datapath::forward_guard::{self, GuardRule};
use crate::doctor::report::Check;

const NAME: &str = "forward guard";

/// The forwarding guard check; `enabled` is the agent's `--forward-guard`.
pub(crate) fn check_forward_guard(enabled: bool, agent: Option<u32>) -> Check {
    if !enabled {
        return Check::skip(
            NAME,
            "--forward-guard off: the node's routing is left alone",
        );
    }
    match forward_guard::missing() {
        Ok(missing) => judge(&missing, agent),
        Err(e) => Check::warn(
            NAME,
            format!("cannot read the node's routing rules: {e}"),
            "run doctor in the node's network namespace (on the node, or in the agent's hostNetwork pod)",
        ),
    }
}

fn judge(missing: &[GuardRule], agent: Option<u32>) -> Check {
    if missing.is_empty() {
        return Check::ok(
            NAME,
            format!(
                "ip rules pref {} (the node's own traffic) and {} (prohibit forwarding) to 169.254.169.254 and fd00:ec2::254 in place",
                forward_guard::GUARD_PRIORITY,
                forward_guard::GUARD_PRIORITY + 1
            ),
        );
    }
    let shown: Vec<String> = missing
        .iter()
        .map(|r| {
            if r.local_only {
                format!("pref {} iif lo to {} lookup main", r.priority, r.dst)
            } else {
                format!("pref {} to {} prohibit", r.priority, r.dst)
            }
        })
        .collect();
    let finding = format!(
        "missing: {}: a pod that forwards or writes frames below IP can reach the metadata service",
        shown.join(", ")
    );
    match agent {
        Some(pid) => Check::warn(
            NAME,
            finding,
            format!("the running agent (pid {pid}) adds them back within a second; if they stay missing see its log (or check that doctor runs in the node's network namespace)"),
        ),
        None => Check::fail(
            NAME,
            finding,
            "start the agent (it installs them), or run doctor in the node's network namespace",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::report::Status;

    #[test]
    fn names_the_missing_rules() {
        assert_eq!(judge(&[], None).status, Status::Ok);
        let rules = forward_guard::rules();
        let gone = judge(&rules[..2], None);
        assert_eq!(gone.status, Status::Fail);
        assert!(
            gone.finding.starts_with("missing: pref 5 iif lo to 169.254.169.254 lookup main, pref 6 to 169.254.169.254 prohibit"),
            "{gone:?}"
        );
        assert_eq!(judge(&rules, Some(3)).status, Status::Warn);
    }
}

//! Checking that this machine can run the privileged tests at all.

use std::fmt;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::cgroup::cgroup2_root;

/// Why the privileged tests cannot run here; names the missing privilege, kernel feature
/// or tool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkipReason(pub String);

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SkipReason {}

/// Effective-capability bits checked (from `linux/capability.h`).
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;

fn status_field(status: &str, key: &str) -> Option<String> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|v| v.trim().to_owned())
}

fn tool_runs(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Checks what every privileged test needs: effective uid 0 with `CAP_SYS_ADMIN` and
/// `CAP_NET_ADMIN`, a mounted cgroup2 hierarchy, kernel BTF (`/sys/kernel/btf/vmlinux`), and
/// the `ip`, `ss`, `nsenter` and `/bin/sh` tools.
pub fn require_privileges() -> Result<(), SkipReason> {
    let status = fs::read_to_string("/proc/self/status")
        .map_err(|e| SkipReason(format!("cannot read /proc/self/status: {e}")))?;
    let euid = status_field(&status, "Uid:")
        .and_then(|v| v.split_whitespace().nth(1).map(str::to_owned))
        .unwrap_or_default();
    if euid != "0" {
        return Err(SkipReason(format!("not root (effective uid {euid})")));
    }
    let caps = status_field(&status, "CapEff:")
        .and_then(|v| u64::from_str_radix(&v, 16).ok())
        .unwrap_or(0);
    for (bit, name) in [
        (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
        (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
    ] {
        if caps & (1 << bit) == 0 {
            return Err(SkipReason(format!("missing capability {name}")));
        }
    }
    cgroup2_root().map_err(|e| SkipReason(format!("kernel feature missing: cgroup v2 ({e:#})")))?;
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Err(SkipReason(
            "kernel feature missing: BTF (/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF)".into(),
        ));
    }
    for (program, arg) in [("ip", "-V"), ("ss", "-V"), ("nsenter", "--version")] {
        if !tool_runs(program, arg) {
            return Err(SkipReason(format!(
                "tool missing: {program} (iproute2/util-linux)"
            )));
        }
    }
    if !Path::new("/bin/sh").exists() {
        return Err(SkipReason("tool missing: /bin/sh".into()));
    }
    Ok(())
}

/// Returns early from a test (printing the reason) when [`require_privileges`] fails.
///
/// `skip_unless_privileged!()` for tests returning `()`, `skip_unless_privileged!(Ok(()))`
/// for tests returning a `Result`. With `IAMLET_TESTS_STRICT=1` in the environment it
/// panics instead, so CI cannot pass by skipping.
#[macro_export]
macro_rules! skip_unless_privileged {
    () => {
        $crate::skip_unless_privileged!(())
    };
    ($ret:expr) => {
        if let Err(reason) = $crate::require_privileges() {
            if std::env::var_os("IAMLET_TESTS_STRICT").is_some_and(|v| v == "1") {
                panic!("privileged test cannot run (IAMLET_TESTS_STRICT=1): {reason}");
            }
            eprintln!("SKIPPED: {reason}");
            return $ret;
        }
    };
}

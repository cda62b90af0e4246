//! The kernel: its release against the minimum iamlet needs, and the kernel's BTF.

use std::fmt;
use std::path::Path;

use crate::doctor::report::Check;

/// Where the kernel names its release (`uname -r`).
const OSRELEASE: &str = "/proc/sys/kernel/osrelease";
/// The kernel's own BTF.
const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The oldest kernel iamlet runs on: cgroup `bpf_link`s, which the agent owns its attachment
/// through and the upgrade swaps programs with (`BPF_LINK_UPDATE`). See README "Kernels".
pub(crate) const MINIMUM: KernelVersion = KernelVersion::new(5, 7, 0);
/// The oldest kernel the kernel matrix tests (Amazon Linux 2).
const OLDEST_TESTED: KernelVersion = KernelVersion::new(5, 10, 0);
/// Since this release `CAP_BPF` exists (before it, `bpf()` needs `CAP_SYS_ADMIN`).
pub(crate) const CAP_BPF_SINCE: KernelVersion = KernelVersion::new(5, 8, 0);
/// Before this release eBPF memory counts against `RLIMIT_MEMLOCK` (so the agent needs
/// `CAP_SYS_RESOURCE` to lift it).
pub(crate) const MEMCG_ACCOUNTING_SINCE: KernelVersion = KernelVersion::new(5, 11, 0);

/// A kernel release's `major.minor.patch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct KernelVersion {
    major: u32,
    minor: u32,
    patch: u32,
}

impl KernelVersion {
    /// `major.minor.patch`.
    pub(crate) const fn new(major: u32, minor: u32, patch: u32) -> KernelVersion {
        KernelVersion {
            major,
            minor,
            patch,
        }
    }

    /// The version at the start of a release string: `6.1.0-50-amd64`,
    /// `5.10.223-212.873.amzn2.x86_64`, `6.18.0+`, `6.1`. `None` when it does not start with
    /// `major.minor`.
    pub(crate) fn parse(release: &str) -> Option<KernelVersion> {
        let mut numbers = release.trim().splitn(3, '.').map(leading_number);
        let major = numbers.next().flatten()?;
        let minor = numbers.next().flatten()?;
        let patch = numbers.next().flatten().unwrap_or(0);
        Some(KernelVersion::new(major, minor, patch))
    }
}

impl fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)?;
        if self.patch != 0 {
            write!(f, ".{}", self.patch)?;
        }
        Ok(())
    }
}

/// The number a version component starts with (`223-212` gives 223).
fn leading_number(part: &str) -> Option<u32> {
    let digits = part
        .find(|c: char| !c.is_ascii_digit())
        .map_or(part, |end| &part[..end]);
    digits.parse().ok()
}

/// The running kernel's release string and version.
pub(crate) fn running() -> Result<(String, Option<KernelVersion>), std::io::Error> {
    let release = std::fs::read_to_string(OSRELEASE)?.trim().to_owned();
    let version = KernelVersion::parse(&release);
    Ok((release, version))
}

/// The kernel check; gives the version for the checks that depend on it.
pub(crate) fn check_kernel() -> (Check, Option<KernelVersion>) {
    const NAME: &str = "kernel";
    let (release, version) = match running() {
        Ok(found) => found,
        Err(e) => {
            return (
                Check::warn(
                    NAME,
                    format!("cannot read {OSRELEASE}: {e}"),
                    "run doctor on the node itself (or in the agent's container), where /proc is the kernel's",
                ),
                None,
            )
        }
    };
    let Some(version) = version else {
        return (
            Check::warn(
                NAME,
                format!("release {release:?} has no version number iamlet can read"),
                format!("make sure the kernel is Linux {MINIMUM} or later"),
            ),
            None,
        );
    };
    let check = verdict(&release, version);
    (check, Some(version))
}

/// The verdict on kernel `version` (its full release string is `release`).
fn verdict(release: &str, version: KernelVersion) -> Check {
    const NAME: &str = "kernel";
    if version < MINIMUM {
        Check::fail(
            NAME,
            format!("Linux {release}: iamlet needs {MINIMUM} or later (cgroup bpf_links, which the agent attaches through and upgrades swap programs in)"),
            format!("run the node on Linux {OLDEST_TESTED} or later (EKS: Amazon Linux 2 runs 5.10, Amazon Linux 2023 and Bottlerocket 6.1 and 6.12)"),
        )
    } else if version < OLDEST_TESTED {
        Check::warn(
            NAME,
            format!("Linux {release}: new enough ({MINIMUM} or later), but older than any kernel iamlet is tested on ({OLDEST_TESTED}, 6.1, 6.12)"),
            format!("prefer Linux {OLDEST_TESTED} or later"),
        )
    } else {
        Check::ok(
            NAME,
            format!("Linux {release} (iamlet needs {MINIMUM} or later; tested on 5.10, 6.1, 6.12)"),
        )
    }
}

/// The kernel's BTF: iamlet does not need it, so its absence only takes views away.
pub(crate) fn check_btf() -> Check {
    check_btf_at(Path::new(VMLINUX_BTF))
}

fn check_btf_at(path: &Path) -> Check {
    const NAME: &str = "btf";
    match std::fs::metadata(path) {
        Ok(meta) => Check::ok(
            NAME,
            format!(
                "{} present ({} KiB); iamlet does not read it (its programs have no CO-RE relocations)",
                path.display(),
                meta.len() / 1024
            ),
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Check::ok(
            NAME,
            format!(
                "{} absent: fine for iamlet, which loads without the kernel's BTF (its programs have no CO-RE relocations); only bpftool's views of kernel types are missing",
                path.display()
            ),
        ),
        Err(e) => Check::warn(
            NAME,
            format!("cannot read {}: {e}", path.display()),
            "nothing needed for iamlet (it loads without the kernel's BTF); run doctor as root to see it",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::report::Status;

    #[test]
    fn parses_release_strings() {
        let v = |s| KernelVersion::parse(s);
        assert_eq!(v("6.1.0-50-amd64"), Some(KernelVersion::new(6, 1, 0)));
        assert_eq!(
            v("5.10.223-212.873.amzn2.x86_64"),
            Some(KernelVersion::new(5, 10, 223))
        );
        assert_eq!(
            v("6.12.117+deb13-amd64"),
            Some(KernelVersion::new(6, 12, 117))
        );
        assert_eq!(v("6.18.0+\n"), Some(KernelVersion::new(6, 18, 0)));
        assert_eq!(v("6.1"), Some(KernelVersion::new(6, 1, 0)));
        assert_eq!(v("4.19-rc1"), Some(KernelVersion::new(4, 19, 0)));
        assert_eq!(v("6"), None);
        assert_eq!(v("linux"), None);
        assert_eq!(v(""), None);
        assert!(KernelVersion::new(5, 10, 0) > KernelVersion::new(5, 7, 200));
        assert!(KernelVersion::new(5, 6, 19) < MINIMUM);
        assert_eq!(KernelVersion::new(5, 10, 223).to_string(), "5.10.223");
        assert_eq!(KernelVersion::new(6, 1, 0).to_string(), "6.1");
    }

    #[test]
    fn judges_the_version() {
        let old = verdict("5.4.0-1", KernelVersion::new(5, 4, 0));
        assert_eq!(old.status, Status::Fail);
        assert!(old.finding.contains("needs 5.7 or later"), "{old:?}");
        let untested = verdict("5.8.1", KernelVersion::new(5, 8, 1));
        assert_eq!(untested.status, Status::Warn);
        let fine = verdict("6.1.176", KernelVersion::new(6, 1, 176));
        assert_eq!(fine.status, Status::Ok);
        assert!(fine.finding.starts_with("Linux 6.1.176"), "{fine:?}");
    }

    #[test]
    fn a_missing_btf_is_not_a_problem() {
        let check = check_btf_at(Path::new("/nonexistent/btf/vmlinux"));
        assert_eq!(check.status, Status::Ok);
        assert!(check.finding.contains("absent"), "{check:?}");
    }
}

//! The pin directory: on a bpffs, and holding the programs' links (on the pods cgroup) and
//! the maps the agent pins there.

use std::io;
use std::os::fd::AsFd;
use std::path::Path;

use agent_common::maps::{CONFIG_MAP, COOKIES_MAP, COUNTERS_MAP, PEERS_MAP};
use iamlet_sys::bpf::{self as bpf_sys, BPF_LINK_TYPE_CGROUP};

use super::cgroup::PodsCgroup;
use crate::datapath::links::{self, HOOKS};
use crate::doctor::report::Check;

/// `f_type` of a bpf filesystem (`BPF_FS_MAGIC`).
const BPF_FS_MAGIC: i128 = 0xcafe_4a11;
/// Where the agent mounts bpffs when nothing is mounted there.
const CONVENTIONAL_BPFFS: &str = "/sys/fs/bpf";

/// Whether `path` is on a bpf filesystem.
fn on_bpffs(path: &Path) -> io::Result<bool> {
    let stat = rustix::fs::statfs(path)?;
    Ok(i128::from(stat.f_type) == BPF_FS_MAGIC)
}

/// The bpffs check: the pin directory (or, before the agent made it, its parent) is on a
/// bpffs.
pub(crate) fn check_bpffs(pin_dir: &Path) -> Check {
    const NAME: &str = "bpffs";
    let Some(parent) = pin_dir.parent() else {
        return Check::fail(
            NAME,
            format!("--bpffs-dir {} has no parent directory", pin_dir.display()),
            "pass --bpffs-dir a directory below a bpffs mount, e.g. /sys/fs/bpf/iamlet",
        );
    };
    let (probed, exists) = if pin_dir.exists() {
        (pin_dir, true)
    } else {
        (parent, false)
    };
    match on_bpffs(probed) {
        Ok(true) if exists => Check::ok(NAME, format!("{} is on a bpf filesystem", pin_dir.display())),
        Ok(true) => Check::ok(
            NAME,
            format!(
                "{} is a bpf filesystem; {} does not exist yet (the agent creates it)",
                parent.display(),
                pin_dir.display()
            ),
        ),
        Ok(false) if exists => Check::fail(
            NAME,
            format!("{} is not on a bpf filesystem, so nothing can be pinned there", pin_dir.display()),
            "pass --bpffs-dir a directory below a bpffs mount (e.g. /sys/fs/bpf/iamlet), or mount one: mount -t bpf bpf /sys/fs/bpf",
        ),
        Ok(false) if parent == Path::new(CONVENTIONAL_BPFFS) => Check::warn(
            NAME,
            format!("nothing is mounted at {CONVENTIONAL_BPFFS}: the agent mounts bpffs there as it starts, but from a container that mount reaches the node only with privileged: true and Bidirectional mount propagation"),
            "mount bpffs on the node (mount -t bpf bpf /sys/fs/bpf; systemd does at boot on most distributions)",
        ),
        Ok(false) => Check::fail(
            NAME,
            format!("{} is not a bpf filesystem, so --bpffs-dir {} cannot be created there", parent.display(), pin_dir.display()),
            format!("mount -t bpf bpf {}, or pass --bpffs-dir below /sys/fs/bpf", parent.display()),
        ),
        Err(e) => Check::warn(
            NAME,
            format!("cannot look at {}: {e}", probed.display()),
            "run doctor as root on the node, or inside the agent's container (which mounts the node's /sys/fs/bpf)",
        ),
    }
}

/// What one link pin holds.
enum LinkPin {
    /// A cgroup link of the right attach type on this cgroup id.
    Ok,
    /// Missing.
    Missing,
    /// Something else: what.
    Wrong(String),
}

/// The pins check: each program's link pinned, on the pods cgroup, and the maps pinned.
pub(crate) fn check_pins(pin_dir: &Path, pods: Option<&PodsCgroup>, agent: Option<u32>) -> Check {
    const NAME: &str = "pins";
    let Some(pods) = pods else {
        return Check::skip(NAME, "no pods cgroup to compare the links with (see above)");
    };
    if !pin_dir.is_dir() {
        return Check::fail(
            NAME,
            format!("no pin directory {}: no agent has run here with this --bpffs-dir", pin_dir.display()),
            "start the agent (it creates the directory and pins its links and maps there), or pass doctor the --bpffs-dir the agent uses",
        );
    }
    let mut missing = Vec::new();
    let mut wrong = Vec::new();
    for hook in &HOOKS {
        let pin = links::link_pin(pin_dir, hook);
        let name = pin
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match inspect_link(&pin, hook.attach_type, pods.id) {
            Ok(LinkPin::Ok) => {}
            Ok(LinkPin::Missing) => missing.push(name),
            Ok(LinkPin::Wrong(what)) => wrong.push(format!("{name} {what}")),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES)) => {
                return Check::warn(
                    NAME,
                    format!("cannot open {}: {e}", pin.display()),
                    "run doctor as root on the node, or inside the agent's container",
                )
            }
            Err(e) => wrong.push(format!("{name} cannot be read as a link ({e})")),
        }
    }
    for map in [CONFIG_MAP, COOKIES_MAP, PEERS_MAP, COUNTERS_MAP] {
        if !pin_dir.join(map).exists() {
            missing.push(map.to_owned());
        }
    }
    if !wrong.is_empty() {
        return Check::fail(
            NAME,
            format!("in {}: {}", pin_dir.display(), wrong.join("; ")),
            format!("an agent ran here with another --cgroup: start the agent with --cgroup {} (it replaces links on another cgroup), or remove those pins (rm {}/link_*) to detach them", pods.path.display(), pin_dir.display()),
        );
    }
    if missing.is_empty() {
        return Check::ok(
            NAME,
            format!(
                "{} links (on the pods cgroup, id {}) and 4 maps pinned in {}",
                HOOKS.len(),
                pods.id,
                pin_dir.display()
            ),
        );
    }
    let finding = format!("missing in {}: {}", pin_dir.display(), missing.join(", "));
    match agent {
        Some(pid) => Check::warn(
            NAME,
            finding,
            format!("the running agent (pid {pid}) pins them again within a second; if they stay missing, see its log and iamlet_datapath_repairs_total"),
        ),
        None => Check::fail(
            NAME,
            finding,
            "start the agent: it attaches its programs and pins their links and its maps",
        ),
    }
}

/// What the link pinned at `pin` is.
fn inspect_link(pin: &Path, attach_type: u32, cgroup_id: u64) -> io::Result<LinkPin> {
    if !pin.exists() {
        return Ok(LinkPin::Missing);
    }
    let fd = bpf_sys::obj_get(pin)?;
    let info = bpf_sys::cgroup_link_info(fd.as_fd())?;
    Ok(if info.link_type != BPF_LINK_TYPE_CGROUP {
        LinkPin::Wrong(format!(
            "is not a cgroup link (link type {})",
            info.link_type
        ))
    } else if info.attach_type != attach_type {
        LinkPin::Wrong(format!(
            "has attach type {}, not {attach_type}",
            info.attach_type
        ))
    } else if info.cgroup_id == 0 {
        LinkPin::Wrong("is on a cgroup that was removed".to_owned())
    } else if info.cgroup_id != cgroup_id {
        LinkPin::Wrong(format!(
            "is on cgroup id {}, not the pods cgroup (id {cgroup_id})",
            info.cgroup_id
        ))
    } else {
        LinkPin::Ok
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::report::Status;

    #[test]
    fn a_directory_off_bpffs_is_refused_with_what_to_do() {
        let dir = std::env::temp_dir().join(format!("iamlet-doctor-pins-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        if on_bpffs(&dir).unwrap_or(true) {
            return; // a temp dir on bpffs would be odd; nothing to show then
        }
        let check = check_bpffs(&dir);
        assert_eq!(check.status, Status::Fail, "{check:?}");
        assert!(
            check
                .action
                .as_deref()
                .is_some_and(|a| a.contains("mount -t bpf")),
            "{check:?}"
        );
        let below = check_bpffs(&dir.join("iamlet"));
        assert_eq!(below.status, Status::Fail, "{below:?}");
        let pods = PodsCgroup {
            path: dir.clone(),
            id: 1,
        };
        let none = check_pins(&dir.join("absent"), Some(&pods), None);
        assert_eq!(none.status, Status::Fail);
        assert!(none.finding.contains("no pin directory"), "{none:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

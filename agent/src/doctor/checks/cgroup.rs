//! cgroup v2: where it is mounted (a unified or a hybrid layout) and the pods cgroup the
//! programs attach to, found the way the agent finds it.

use std::path::{Path, PathBuf};

use crate::caller::cgroup::{self, PROC_MOUNTS};
use crate::doctor::report::Check;

/// The cgroup2 hierarchy as mounted here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    /// The cgroup2 mount point the agent uses.
    pub(crate) root: PathBuf,
    /// Mount points of cgroup v1 hierarchies (empty: a unified layout).
    pub(crate) v1: Vec<PathBuf>,
}

impl Layout {
    /// Whether cgroup v1 controllers are mounted next to cgroup2.
    pub(crate) fn is_hybrid(&self) -> bool {
        !self.v1.is_empty()
    }
}

/// The pods cgroup, as the agent would attach to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PodsCgroup {
    /// Its directory (canonical).
    pub(crate) path: PathBuf,
    /// Its cgroup id (the directory's inode).
    pub(crate) id: u64,
}

/// The layout in `/proc/mounts`-formatted text.
pub(crate) fn layout_of(mounts: &str) -> Option<Layout> {
    let root = cgroup::find_cgroup2_mount(mounts).ok()?;
    let v1 = mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_ascii_whitespace();
            let (_, mount_point, fstype) = (fields.next()?, fields.next()?, fields.next()?);
            (fstype == "cgroup").then(|| PathBuf::from(mount_point))
        })
        .collect();
    Some(Layout { root, v1 })
}

/// The cgroup v2 check; gives the layout for the checks after it.
pub(crate) fn check_cgroup2() -> (Check, Option<Layout>) {
    const NAME: &str = "cgroup v2";
    let mounts =
        match std::fs::read_to_string(PROC_MOUNTS) {
            Ok(text) => text,
            Err(e) => return (
                Check::fail(
                    NAME,
                    format!("cannot read {PROC_MOUNTS}: {e}"),
                    "run doctor on the node or in the agent's container, where /proc is mounted",
                ),
                None,
            ),
        };
    let Some(layout) = layout_of(&mounts) else {
        return (
            Check::fail(
                NAME,
                "no cgroup2 filesystem is mounted: iamlet's programs attach to a cgroup v2 directory",
                "boot the node with cgroup v2 (systemd.unified_cgroup_hierarchy=1; EKS AMIs from Amazon Linux 2023 on have it), and in a container mount the host's /sys/fs/cgroup",
            ),
            None,
        );
    };
    let finding = if layout.is_hybrid() {
        let names: Vec<String> = layout
            .v1
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        format!(
            "hybrid: cgroup2 at {}, cgroup v1 hierarchies next to it ({})",
            layout.root.display(),
            names.join(", ")
        )
    } else {
        format!("unified: cgroup2 at {}", layout.root.display())
    };
    (Check::ok(NAME, finding), Some(layout))
}

/// The pods cgroup check: `--cgroup` if given, else the kubelet's, as the agent finds it.
pub(crate) fn check_pods_cgroup(
    layout: Option<&Layout>,
    flag: Option<&Path>,
) -> (Check, Option<PodsCgroup>) {
    const NAME: &str = "pods cgroup";
    let Some(layout) = layout else {
        return (Check::skip(NAME, "no cgroup2 mount (see above)"), None);
    };
    let found = match flag {
        Some(path) => cgroup::validate_attach_cgroup(&layout.root, path),
        None => cgroup::autodetect_pods_cgroup(&layout.root)
            .and_then(|found| cgroup::validate_attach_cgroup(&layout.root, &found)),
    };
    let how = if flag.is_some() {
        "--cgroup"
    } else {
        "the kubelet's, found"
    };
    let path = match found {
        Ok(path) => path,
        Err(e) => {
            let mut action = match flag {
                Some(_) => "pass --cgroup the kubelet's pods cgroup (kubepods.slice with the systemd cgroup driver, kubepods with cgroupfs), relative to the cgroup2 mount or absolute".to_owned(),
                None => "start the kubelet first (it creates the pods cgroup), or pass --cgroup with the cgroup the pods run in".to_owned(),
            };
            if layout.is_hybrid() {
                action.push_str("; on this hybrid host the pods appear in the cgroup2 hierarchy only with the kubelet's systemd cgroup driver");
            }
            return (Check::fail(NAME, e.to_string(), action), None);
        }
    };
    match cgroup::cgroup_id(&path) {
        Ok(id) => (
            Check::ok(NAME, format!("{} ({how}; cgroup id {id})", path.display())),
            Some(PodsCgroup { path, id }),
        ),
        Err(e) => (
            Check::fail(
                NAME,
                e.to_string(),
                "check that the cgroup exists and doctor may read it",
            ),
            None,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_unified_from_hybrid() {
        let unified = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\nbpf /sys/fs/bpf bpf rw 0 0\n";
        let layout = layout_of(unified).expect("cgroup2");
        assert_eq!(layout.root, Path::new("/sys/fs/cgroup"));
        assert!(!layout.is_hybrid());
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs ro 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n\
                      cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n\
                      cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0\n";
        let layout = layout_of(hybrid).expect("cgroup2");
        assert_eq!(layout.root, Path::new("/sys/fs/cgroup/unified"));
        assert!(layout.is_hybrid());
        assert_eq!(layout.v1.len(), 2);
        assert_eq!(
            layout_of("cgroup /sys/fs/cgroup/memory cgroup rw 0 0\n"),
            None
        );
    }

    #[test]
    fn a_missing_pods_cgroup_is_named_with_what_to_do() {
        let dir = std::env::temp_dir().join(format!("iamlet-doctor-cg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let layout = Layout {
            root: dir.clone(),
            v1: Vec::new(),
        };
        let (check, found) = check_pods_cgroup(Some(&layout), None);
        assert_eq!(check.status, crate::doctor::report::Status::Fail);
        assert!(
            check.finding.contains("kubepods.slice or kubepods"),
            "{check:?}"
        );
        assert!(found.is_none());
        std::fs::create_dir_all(dir.join("kubepods")).expect("pods dir");
        let (check, found) = check_pods_cgroup(Some(&layout), None);
        assert_eq!(check.status, crate::doctor::report::Status::Ok, "{check:?}");
        assert!(found.is_some_and(|p| p.path.ends_with("kubepods")));
        let (check, _) = check_pods_cgroup(Some(&layout), Some(Path::new("/")));
        assert!(
            check
                .finding
                .contains("refusing to attach to the cgroup2 root"),
            "{check:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

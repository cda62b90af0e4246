//! cgroup v2 discovery and the cgroup-id index.
//!
//! The eBPF programs record `bpf_get_current_cgroup_id()` for every redirected connect. That id
//! is the inode number of the cgroup's directory in the cgroup2 filesystem, so user space turns
//! it back into a path (and from there into a pod, see [`crate::caller::pod_identity`]) by walking the
//! cgroup tree and remembering each directory's inode: [`CgroupIndex`].

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};

/// Where the kernel lists mounted filesystems.
pub(crate) const PROC_MOUNTS: &str = "/proc/mounts";

/// The conventional cgroup2 mount point, preferred when the filesystem is mounted several times.
const PREFERRED_MOUNT: &str = "/sys/fs/cgroup";

/// Names of the kubelet's pods cgroup, systemd driver first, then cgroupfs driver.
const PODS_CGROUP_NAMES: [&str; 2] = ["kubepods.slice", "kubepods"];

/// Most ids remembered as missing after a rescan (they are never reused).
const MAX_MISSING: usize = 4096;

/// Errors of cgroup discovery, validation and indexing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O operation on a path failed (reading a file, resolving or stat'ing a path).
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What was attempted: `read`, `resolve`, `stat`.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// No filesystem of type `cgroup2` is mounted.
    #[error("no cgroup2 filesystem found in {source_name} (is cgroup v2 mounted?)")]
    NoCgroup2Mount {
        /// What was parsed, e.g. `/proc/mounts`.
        source_name: String,
    },
    /// Neither of the kubelet's pods cgroups exists under the cgroup2 root.
    #[error("no kubelet pods cgroup under {root}: looked for {looked_for}")]
    PodsCgroupNotFound {
        /// The cgroup2 root searched.
        root: PathBuf,
        /// The directory names tried.
        looked_for: String,
    },
    /// A cgroup path is not a directory.
    #[error("{path} is not a directory, so it is not a cgroup")]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// The candidate is the cgroup2 root itself, which would capture every process on the host.
    #[error(
        "refusing to attach to the cgroup2 root {path}: that would intercept every process on \
         the host; name the kubelet's pods cgroup (e.g. kubepods.slice) instead"
    )]
    IsRoot {
        /// The root.
        path: PathBuf,
    },
    /// The candidate lies outside the cgroup2 mount.
    #[error("{path} is not below the cgroup2 mount {root}")]
    OutsideRoot {
        /// The candidate (canonical).
        path: PathBuf,
        /// The cgroup2 root (canonical).
        root: PathBuf,
    },
    /// The candidate is below the cgroup2 mount point but on another filesystem.
    #[error("{path} is on a different filesystem than the cgroup2 mount {root}")]
    OtherFilesystem {
        /// The candidate (canonical).
        path: PathBuf,
        /// The cgroup2 root (canonical).
        root: PathBuf,
    },
}

/// Builds an [`Error::Io`] constructor for `op` on `path`.
fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io { op, path, source }
}

/// Decodes the octal escapes (`\040` for a space, `\011`, `\012`, `\134`) that the kernel
/// uses for whitespace and backslashes in `/proc/mounts` fields.
fn decode_mount_field(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(byte) = u8::try_from(value) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    PathBuf::from(OsString::from_vec(out))
}

/// Returns the mount point of the `cgroup2` filesystem from `/proc/mounts`-formatted text.
///
/// When cgroup2 is mounted more than once, `/sys/fs/cgroup` is preferred, else the first one
/// listed is returned (on hybrid hosts that is typically `/sys/fs/cgroup/unified`).
pub(crate) fn find_cgroup2_mount(proc_mounts: &str) -> Result<PathBuf, Error> {
    let mut first = None;
    for line in proc_mounts.lines() {
        let mut fields = line.split_ascii_whitespace();
        let (Some(_device), Some(mount_point), Some(fstype)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if fstype != "cgroup2" {
            continue;
        }
        let mount_point = decode_mount_field(mount_point);
        if mount_point == Path::new(PREFERRED_MOUNT) {
            return Ok(mount_point);
        }
        first.get_or_insert(mount_point);
    }
    first.ok_or_else(|| Error::NoCgroup2Mount {
        source_name: "mount table".to_owned(),
    })
}

/// Returns the mount point of the `cgroup2` filesystem, read from `/proc/mounts`.
pub(crate) fn cgroup2_mount() -> Result<PathBuf, Error> {
    let text = fs::read_to_string(PROC_MOUNTS).map_err(io_err("read", Path::new(PROC_MOUNTS)))?;
    find_cgroup2_mount(&text).map_err(|_| Error::NoCgroup2Mount {
        source_name: PROC_MOUNTS.to_owned(),
    })
}

/// Returns the kubelet's pods cgroup below the cgroup2 `root`: `kubepods.slice` (systemd
/// cgroup driver) or `kubepods` (cgroupfs driver).
pub(crate) fn autodetect_pods_cgroup(root: &Path) -> Result<PathBuf, Error> {
    PODS_CGROUP_NAMES
        .iter()
        .map(|name| root.join(name))
        .find(|candidate| candidate.is_dir())
        .ok_or_else(|| Error::PodsCgroupNotFound {
            root: root.to_path_buf(),
            looked_for: PODS_CGROUP_NAMES.join(" or "),
        })
}

/// Checks that `candidate` is an existing cgroup strictly below the cgroup2 `root` and returns
/// its canonical path.
///
/// `candidate` is either relative to `root` or absolute; an absolute path that does not exist
/// on the filesystem and is not under `root` is read the way `/proc/<pid>/cgroup` writes
/// cgroups, i.e. relative to `root` (`/kubepods.slice`).
pub(crate) fn validate_attach_cgroup(root: &Path, candidate: &Path) -> Result<PathBuf, Error> {
    let root_canon = root.canonicalize().map_err(io_err("resolve", root))?;
    let joined = if !candidate.is_absolute() {
        root.join(candidate)
    } else if candidate == Path::new("/") {
        // The cgroup root as /proc/<pid>/cgroup writes it, not the filesystem root.
        root.to_path_buf()
    } else if !candidate.starts_with(root)
        && !candidate.starts_with(&root_canon)
        && fs::symlink_metadata(candidate).is_err_and(|e| e.kind() == io::ErrorKind::NotFound)
    {
        // `/kubepods.slice` as written in /proc/<pid>/cgroup: relative to the cgroup2 root.
        root.join(candidate.strip_prefix("/").unwrap_or(candidate))
    } else {
        candidate.to_path_buf()
    };
    let canon = joined.canonicalize().map_err(io_err("resolve", &joined))?;
    let meta = fs::metadata(&canon).map_err(io_err("stat", &canon))?;
    if !meta.is_dir() {
        return Err(Error::NotADirectory { path: canon });
    }
    if canon == root_canon {
        return Err(Error::IsRoot { path: canon });
    }
    if !canon.starts_with(&root_canon) {
        return Err(Error::OutsideRoot {
            path: canon,
            root: root_canon,
        });
    }
    let root_meta = fs::metadata(&root_canon).map_err(io_err("stat", &root_canon))?;
    if meta.dev() != root_meta.dev() {
        return Err(Error::OtherFilesystem {
            path: canon,
            root: root_canon,
        });
    }
    Ok(canon)
}

/// Returns the id of the cgroup at `path`: the inode number of its directory, which is what
/// `bpf_get_current_cgroup_id()` reports for processes in that cgroup.
pub(crate) fn cgroup_id(path: &Path) -> Result<u64, Error> {
    fs::metadata(path)
        .map(|meta| meta.ino())
        .map_err(io_err("stat", path))
}

/// The cgroup2 directory of this process, from the `0::` line of `/proc/self/cgroup`.
pub(crate) fn own_cgroup(root: &Path) -> Result<PathBuf, Error> {
    let proc_path = Path::new("/proc/self/cgroup");
    let text = fs::read_to_string(proc_path).map_err(io_err("read", proc_path))?;
    parse_own_cgroup(root, &text).ok_or_else(|| Error::NoCgroup2Mount {
        source_name: "/proc/self/cgroup (no 0:: line)".to_owned(),
    })
}

/// The cgroup below `base` whose `cgroup.procs` lists `pid` (as this process sees pids).
///
/// For a process in a private cgroup namespace (a non-privileged container on cgroup v2),
/// `/proc/self/cgroup` only says `0::/`; the host's hierarchy mounted from the host still shows
/// where it really is.
pub(crate) fn find_pid_cgroup(base: &Path, pid: u32) -> Option<PathBuf> {
    let want = pid.to_string();
    let mut stack = vec![base.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
            if procs.lines().any(|l| l.trim() == want) {
                return Some(dir);
            }
        }
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
        }
    }
    None
}

fn parse_own_cgroup(root: &Path, proc_cgroup: &str) -> Option<PathBuf> {
    let rel = proc_cgroup
        .lines()
        .find_map(|line| line.strip_prefix("0::"))?
        .trim()
        .trim_start_matches('/');
    Some(if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    })
}

/// Renders `path` relative to `root` the way `/proc/<pid>/cgroup` does: with a leading slash,
/// `/` for the root itself. `None` when `path` is not below `root`.
fn render_relative(root: &Path, path: &Path) -> Option<String> {
    let rel = path.strip_prefix(root).ok()?;
    let mut out = String::new();
    for component in rel.components() {
        if let Component::Normal(name) = component {
            out.push('/');
            out.push_str(&name.to_string_lossy());
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    Some(out)
}

/// `Some` on success; `None` on failure, logged unless the path vanished (cgroups come and go
/// while the tree is walked).
fn vanished_ok<T>(result: io::Result<T>, path: &Path) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(err) => {
            if err.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), error = %err, "cannot read cgroup tree");
            }
            None
        }
    }
}

/// Walks the directory tree at `base` (inclusive) without following symlinks and maps every
/// directory's inode to its path relative to `root`. Directories that vanish during the walk
/// are skipped; only a failure to stat `base` itself is an error.
fn scan_tree(root: &Path, base: &Path) -> Result<HashMap<u64, String>, Error> {
    let mut map = HashMap::new();
    let base_meta = fs::symlink_metadata(base).map_err(io_err("stat", base))?;
    if !base_meta.is_dir() {
        return Err(Error::NotADirectory {
            path: base.to_path_buf(),
        });
    }
    if let Some(rel) = render_relative(root, base) {
        map.insert(base_meta.ino(), rel);
    }
    let mut stack = vec![base.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Some(entries) = vanished_ok(fs::read_dir(&dir), &dir) else {
            continue;
        };
        for entry in entries {
            let Some(entry) = vanished_ok(entry, &dir) else {
                break;
            };
            // DirEntry::metadata does not follow symlinks, so symlinks are never descended.
            let path = entry.path();
            match vanished_ok(entry.metadata(), &path) {
                Some(meta) if meta.is_dir() => {
                    if let Some(rel) = render_relative(root, &path) {
                        map.insert(meta.ino(), rel);
                    }
                    stack.push(path);
                }
                _ => {}
            }
        }
    }
    Ok(map)
}

/// Bookkeeping of rescans, guarded by the mutex that serialises them.
#[derive(Debug, Default)]
struct ScanState {
    /// Ids a rescan that started after their lookup did not find: cgroups outside the
    /// indexed subtree or already removed. Cgroup ids are never reused, so asking again
    /// cannot find them; cleared by [`CgroupIndex::refresh`].
    missing: HashSet<u64>,
}

/// Maps cgroup ids (directory inodes) to cgroup paths relative to the cgroup2 root, rendered
/// like `/kubepods.slice/kubepods-besteffort.slice/...`.
///
/// Only the subtree below the attached cgroup is indexed. A lookup of an unknown id is
/// answered only after a walk that started after the lookup did, so a container whose cgroup
/// was created a moment before it connected is always found. Walks are single-flight
/// (concurrent misses share one), and an id such a walk did not find is not walked for again.
/// Safe to share between threads.
#[derive(Debug)]
pub(crate) struct CgroupIndex {
    root: PathBuf,
    scan_base: PathBuf,
    map: RwLock<HashMap<u64, String>>,
    scan: Mutex<ScanState>,
    /// Number of scans started, including the initial one; bumped, with `scan` held, before
    /// a walk begins.
    started: AtomicU64,
    rescans: AtomicU64,
}

impl CgroupIndex {
    /// Builds the index of the subtree `scan_base` (inclusive), whose paths are rendered
    /// relative to the cgroup2 mount `root`. Both are canonicalised; fails when either cannot
    /// be resolved or read, or when `scan_base` is not `root` or below it.
    pub(crate) fn new(root: &Path, scan_base: &Path) -> Result<Self, Error> {
        let root = root.canonicalize().map_err(io_err("resolve", root))?;
        let scan_base = scan_base
            .canonicalize()
            .map_err(io_err("resolve", scan_base))?;
        if !scan_base.starts_with(&root) {
            return Err(Error::OutsideRoot {
                path: scan_base,
                root,
            });
        }
        let map = scan_tree(&root, &scan_base)?;
        tracing::debug!(base = %scan_base.display(), cgroups = map.len(), "indexed cgroups");
        Ok(Self {
            root,
            scan_base,
            map: RwLock::new(map),
            scan: Mutex::new(ScanState::default()),
            started: AtomicU64::new(1),
            rescans: AtomicU64::new(0),
        })
    }

    /// The path of `id` if the index has it already: no file system access.
    pub(crate) fn cached(&self, id: u64) -> Option<String> {
        self.lookup(id)
    }

    fn lookup(&self, id: u64) -> Option<String> {
        self.map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .cloned()
    }

    /// Walks the subtree and replaces the map; must be called with `self.scan` held.
    fn rescan_locked(&self, _state: &mut ScanState) {
        self.started.fetch_add(1, Ordering::AcqRel);
        match scan_tree(&self.root, &self.scan_base) {
            Ok(map) => {
                *self.map.write().unwrap_or_else(PoisonError::into_inner) = map;
            }
            Err(err) => {
                tracing::warn!(error = %err, "cgroup rescan failed; index emptied");
                self.map
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clear();
            }
        }
        self.rescans.fetch_add(1, Ordering::Relaxed);
    }

    /// The path of cgroup `id` relative to the cgroup2 root (e.g.
    /// `/kubepods.slice/kubepods-pod<uid>.slice/cri-containerd-<id>.scope`).
    ///
    /// On a miss, waits for (or makes) a rescan that started after this call, then looks
    /// again; ids such a rescan did not find are answered at once afterwards. Blocks on
    /// filesystem I/O during a rescan.
    pub(crate) fn path_of(&self, id: u64) -> Option<String> {
        let ticket = self.started.load(Ordering::Acquire);
        if let Some(path) = self.lookup(id) {
            return Some(path);
        }
        let mut state = self.scan.lock().unwrap_or_else(PoisonError::into_inner);
        if state.missing.contains(&id) {
            return None;
        }
        // With the lock held no walk runs: one that started after our ticket has finished,
        // and it began after the caller's cgroup existed.
        if self.started.load(Ordering::Acquire) == ticket {
            self.rescan_locked(&mut state);
        }
        let found = self.lookup(id);
        if found.is_none() && state.missing.len() < MAX_MISSING {
            state.missing.insert(id);
        }
        found
    }

    /// Rescans the subtree now (from a periodic task, so that removed cgroups are dropped).
    pub(crate) fn refresh(&self) {
        let mut state = self.scan.lock().unwrap_or_else(PoisonError::into_inner);
        state.missing.clear();
        self.rescan_locked(&mut state);
    }

    /// Every indexed cgroup path (relative to the cgroup2 root), as of the last scan.
    pub(crate) fn paths(&self) -> Vec<String> {
        self.map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// Every indexed cgroup, id and path, as of the last scan.
    pub(crate) fn entries(&self) -> Vec<(u64, String)> {
        self.map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(id, path)| (*id, path.clone()))
            .collect()
    }

    /// Number of cgroups in the index.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    #[cfg(test)]
    /// Number of rescans done since construction (the initial scan is not counted).
    pub(crate) fn rescans(&self) -> u64 {
        self.rescans.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests;

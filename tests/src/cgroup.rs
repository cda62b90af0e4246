//! cgroup v2 helpers: finding the cgroup2 mount, owned cgroup directories, killing
//! everything inside a cgroup subtree.
//!
//! The cgroup2 hierarchy is found from `/proc/mounts` (it may be `/sys/fs/cgroup` or, on
//! hybrid systems, `/sys/fs/cgroup/unified`). Only directories this crate created are ever
//! written to or removed.

use crate::time_scale::scaled;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::process::tool;

/// How long [`kill_all`] waits for a cgroup subtree to become empty.
pub const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// The mount point of the cgroup2 hierarchy, from `/proc/mounts` (cached).
pub fn cgroup2_root() -> Result<&'static Path> {
    static ROOT: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    ROOT.get_or_init(|| find_cgroup2_mount().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map(PathBuf::as_path)
        .map_err(|e| anyhow!("{e}"))
}

fn find_cgroup2_mount() -> Result<PathBuf> {
    let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    mounts
        .lines()
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            let _source = fields.next()?;
            let target = fields.next()?;
            let fstype = fields.next()?;
            (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount_path(target)))
        })
        .context("no cgroup2 filesystem in /proc/mounts")
}

/// `/proc/mounts` escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mount_path(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            if !d.iter().all(|b| (b'0'..=b'7').contains(b)) {
                return None;
            }
            let v = d.iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            u8::try_from(v).ok()
        });
        if let (b'\\', Some(byte)) = (bytes[i], octal) {
            out.push(byte);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup id of the cgroup directory `path`: its inode number on cgroupfs, which is
/// what `bpf_get_current_cgroup_id()` returns for tasks in it.
pub fn cgroup_id(path: &Path) -> Result<u64> {
    Ok(fs::metadata(path)
        .with_context(|| format!("stat {}", path.display()))?
        .ino())
}

/// The cgroup2 path of process `pid` as shown on its `0::` line of `/proc/<pid>/cgroup`
/// (starts with `/`, relative to the cgroup2 root).
pub fn cgroup_of(pid: u32) -> Result<String> {
    let file = format!("/proc/{pid}/cgroup");
    let text = fs::read_to_string(&file).with_context(|| format!("reading {file}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
        .with_context(|| format!("no 0:: line in {file}"))
}

/// The pids listed in `<dir>/cgroup.procs` (this cgroup only, not its descendants).
pub fn procs(dir: &Path) -> Result<Vec<u32>> {
    let file = dir.join("cgroup.procs");
    let text = fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// The pids in `dir` and all its descendant cgroups.
pub fn procs_recursive(dir: &Path) -> Result<Vec<u32>> {
    let mut pids = procs(dir)?;
    for child in child_dirs(dir)? {
        pids.extend(procs_recursive(&child)?);
    }
    Ok(pids)
}

/// Whether any process lives in `dir` or below (`populated` in `cgroup.events`).
pub fn is_populated(dir: &Path) -> Result<bool> {
    let file = dir.join("cgroup.events");
    match fs::read_to_string(&file) {
        Ok(text) => Ok(text
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["populated", "1"])),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(!procs_recursive(dir)?.is_empty()),
        Err(e) => Err(e).with_context(|| format!("reading {}", file.display())),
    }
}

/// Moves process `pid` into the cgroup `dir`.
pub fn add_process(dir: &Path, pid: u32) -> Result<()> {
    let file = dir.join("cgroup.procs");
    fs::write(&file, format!("{pid}\n"))
        .with_context(|| format!("writing {pid} to {}", file.display()))
}

/// Kills every process in the cgroup subtree `dir` and waits (up to [`KILL_TIMEOUT`]) until
/// it is empty. Uses `cgroup.kill` where the kernel has it (5.14+), else `kill -9` of the
/// listed pids, repeated until nothing is left (this also catches forks racing the kill).
pub fn kill_all(dir: &Path) -> Result<()> {
    if !is_populated(dir)? {
        return Ok(());
    }
    let kill_file = dir.join("cgroup.kill");
    let has_kill = kill_file.exists();
    if has_kill {
        fs::write(&kill_file, "1").with_context(|| format!("writing {}", kill_file.display()))?;
    }
    let deadline = Instant::now() + scaled(KILL_TIMEOUT);
    loop {
        if !is_populated(dir)? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "cgroup {} still has processes {:?} after {KILL_TIMEOUT:?}",
                dir.display(),
                procs_recursive(dir).unwrap_or_default()
            );
        }
        if !has_kill {
            let pids: Vec<String> = procs_recursive(dir)?.iter().map(u32::to_string).collect();
            if !pids.is_empty() {
                // Some may exit between listing and killing: ignore kill's failure.
                let mut args = vec!["-9".to_owned()];
                args.extend(pids);
                let _ = tool("kill", &args);
            }
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn child_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            dirs.push(entry.path());
        }
    }
    Ok(dirs)
}

/// Kills everything in the cgroup subtree `dir`, then removes its directories bottom-up.
/// A missing `dir` is not an error.
pub fn remove_tree(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    kill_all(dir)?;
    rmdir_tree(dir)
}

fn rmdir_tree(dir: &Path) -> Result<()> {
    for child in child_dirs(dir)? {
        rmdir_tree(&child)?;
    }
    match fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("rmdir {}", dir.display())),
    }
}

/// Checks that `rel` is a relative path of plain components (no `..`, no root, not empty).
pub(crate) fn check_relative(rel: &str) -> Result<()> {
    let path = Path::new(rel);
    if rel.is_empty() || !path.components().all(|c| matches!(c, Component::Normal(_))) {
        bail!("cgroup name {rel:?} must be a relative path of plain components");
    }
    Ok(())
}

/// A cgroup directory created by this crate, removed (after killing everything in it) on
/// drop. Empty ancestors between it and an optional stop directory are removed too, so a
/// pod created as `a.slice/b.slice` leaves nothing behind.
#[derive(Debug)]
pub struct CgroupDir {
    path: PathBuf,
    relative: String,
    id: u64,
    prune_up_to: Option<PathBuf>,
}

impl CgroupDir {
    /// Creates `<cgroup2 root>/<name>` (a single component); fails if it exists.
    pub fn create_top_level(name: &str) -> Result<CgroupDir> {
        if name.contains('/') {
            bail!("top-level cgroup name {name:?} must be one component");
        }
        check_relative(name)?;
        let root = cgroup2_root()?;
        let path = root.join(name);
        fs::create_dir(&path).with_context(|| format!("mkdir {}", path.display()))?;
        Self::owned(path, name.to_owned(), None)
    }

    /// Creates `<parent>/<rel>`, including missing intermediate directories (`rel` may be
    /// nested, e.g. `kubepods.slice/pod1.slice`); fails if the leaf exists. On drop, the
    /// leaf subtree and any then-empty intermediate directories below `parent` go.
    pub fn create_nested(parent: &CgroupDir, rel: &str) -> Result<CgroupDir> {
        check_relative(rel)?;
        let path = parent.path.join(rel);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("mkdir -p {}", dir.display()))?;
        }
        fs::create_dir(&path).with_context(|| format!("mkdir {}", path.display()))?;
        let relative = format!("{}/{rel}", parent.relative);
        Self::owned(path, relative, Some(parent.path.clone()))
    }

    fn owned(path: PathBuf, relative: String, prune_up_to: Option<PathBuf>) -> Result<CgroupDir> {
        let mut dir = CgroupDir {
            path,
            relative,
            id: 0,
            prune_up_to,
        };
        // If stat fails, `dir` drops here and removes what was created.
        dir.id = cgroup_id(&dir.path)?;
        Ok(dir)
    }

    /// Absolute path of the directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Path relative to the cgroup2 root, without a leading `/` (`/proc/<pid>/cgroup`
    /// shows it as `0::/<relative>`).
    pub fn relative(&self) -> &str {
        &self.relative
    }

    /// The cgroup id (inode number of the directory).
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl Drop for CgroupDir {
    fn drop(&mut self) {
        if let Err(e) = remove_tree(&self.path) {
            eprintln!(
                "iamlet-tests: cannot remove cgroup {}: {e:#}",
                self.path.display()
            );
            return;
        }
        if let Some(stop) = &self.prune_up_to {
            let mut dir = self.path.parent();
            while let Some(d) = dir {
                if d == stop.as_path() || !d.starts_with(stop) {
                    break;
                }
                // Fails (busy/not empty) while another pod still uses it: leave it then;
                // the owner of `stop` removes the whole tree at the end anyway.
                if fs::remove_dir(d).is_err() {
                    break;
                }
                dir = d.parent();
            }
        }
    }
}

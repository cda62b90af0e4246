//! What bpftool says is attached to a cgroup, on every kernel the tests run on.
//!
//! `bpftool cgroup show` is the operator's view, but the bpftool this machine has (7.1, Debian
//! 12) cannot list a cgroup's programs on Linux 5.10: once a query finds programs, it exits
//! 255 with an empty list. Its `bpf_link` listing works there, and iamlet attaches through
//! links only, so [`cgroup_programs`] reads `bpftool link show` (and `prog show` for the
//! names). [`cgroup_show_works`] says whether the operator's view can be checked too.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use serde_json::Value;

/// A program attached to a cgroup through a `bpf_link`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupProgram {
    /// The program's id.
    pub id: u64,
    /// Its name (`iamlet_connect4`, ...).
    pub name: String,
    /// The link's attach type as bpftool names it (`cgroup_inet4_connect`, ...).
    pub attach_type: String,
}

/// Runs `bpftool -j ARGS` and parses its output (nothing at all counts as an empty list).
pub fn json(args: &[&str]) -> Result<Value> {
    let out = Command::new("bpftool")
        .arg("-j")
        .args(args)
        .output()
        .context("running bpftool")?;
    // With `-j`, bpftool reports its errors as JSON on stdout.
    ensure!(
        out.status.success(),
        "bpftool {args:?} ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        // `bpftool -j cgroup show` prints nothing at all for a cgroup without programs.
        return Ok(Value::Array(Vec::new()));
    }
    serde_json::from_slice(&out.stdout).context("bpftool output is not JSON")
}

/// The programs attached to `cgroup` (a cgroup v2 directory) through `bpf_link`s, sorted by id.
pub fn cgroup_programs(cgroup: &Path) -> Result<Vec<CgroupProgram>> {
    // A cgroup v2 id is its directory's inode number.
    let id = std::fs::metadata(cgroup)
        .with_context(|| format!("reading {}", cgroup.display()))?
        .ino();
    let links = json(&["link", "show"])?;
    let progs = json(&["prog", "show"])?;
    let name_of = |prog: u64| {
        progs
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["id"].as_u64() == Some(prog))
            .and_then(|p| p["name"].as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let mut attached: Vec<CgroupProgram> = links
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["type"] == "cgroup" && l["cgroup_id"].as_u64() == Some(id))
        .filter_map(|l| {
            let prog = l["prog_id"].as_u64()?;
            Some(CgroupProgram {
                id: prog,
                name: name_of(prog),
                attach_type: l["attach_type"].as_str().unwrap_or_default().to_owned(),
            })
        })
        .collect();
    attached.sort_by_key(|p| p.id);
    Ok(attached)
}

/// Whether this machine's bpftool can list a cgroup's programs on the running kernel
/// (`bpftool cgroup show`/`tree`): it can on 6.1 and later and cannot on 5.10 (see the module
/// doc; nothing in between was tried).
pub fn cgroup_show_works() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release.trim().split(['.', '-']);
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor) >= (6, 1)
}

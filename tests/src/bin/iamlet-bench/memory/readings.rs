//! What is read of an agent: `/proc/<pid>/status` and `smaps_rollup`, its BPF memlock, the
//! engine's counters, and a reading after `malloc_trim(0)`.

use super::{
    run_with_timeout, Agent, Context, Duration, HashSet, Path, Result, Side, TestNode, ADMIN_ADDR,
    SETTLE,
};

/// One agent's memory, in KiB (bytes for none).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Mem {
    pub(super) rss: u64,
    pub(super) hwm: u64,
    pub(super) rss_anon: u64,
    pub(super) pss: u64,
    pub(super) private_dirty: u64,
    pub(super) threads: u64,
    /// `memlock` of the BPF maps it holds open (kernel memory, not in its RSS).
    pub(super) bpf_memlock: u64,
}

/// One figure of a [`Mem`].
pub(super) type Field = fn(&Mem) -> u64;

pub(super) const MEM_ROWS: [(&str, Field); 6] = [
    ("VmRSS", |m| m.rss),
    ("VmHWM", |m| m.hwm),
    ("RssAnon", |m| m.rss_anon),
    ("Pss", |m| m.pss),
    ("Private_Dirty", |m| m.private_dirty),
    ("BPF maps memlock", |m| m.bpf_memlock),
];

pub(super) fn kib_field(text: &str, key: &str) -> Result<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no {key} line"))
}

pub(super) fn read_mem(pid: u32) -> Result<Mem> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    Ok(Mem {
        rss: kib_field(&status, "VmRSS")?,
        hwm: kib_field(&status, "VmHWM")?,
        rss_anon: kib_field(&status, "RssAnon")?,
        threads: kib_field(&status, "Threads")?,
        pss: kib_field(&rollup, "Pss")?,
        private_dirty: kib_field(&rollup, "Private_Dirty")?,
        bpf_memlock: bpf_memlock_kib(pid),
    })
}

/// Sum of `memlock` over the distinct BPF maps `pid` has open, in KiB.
pub(super) fn bpf_memlock_kib(pid: u32) -> u64 {
    let mut seen = HashSet::new();
    let mut bytes = 0;
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    for fd in fds.flatten() {
        if std::fs::read_link(fd.path()).map_or(true, |l| l != Path::new("anon_inode:bpf-map")) {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        let field = |k: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(k)?.trim().parse::<u64>().ok())
        };
        if let (Some(id), Some(memlock)) = (field("map_id:"), field("memlock:")) {
            if seen.insert(id) {
                bytes += memlock;
            }
        }
    }
    bytes / 1024
}

/// The engine's counters from the agent's `/metrics` (all `None` without an engine).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct EngineStats {
    pub(super) cache_entries: Option<u64>,
    pub(super) sts_calls: Option<u64>,
}

pub(super) fn engine_stats(node: &TestNode) -> Result<EngineStats> {
    let url = format!("http://{ADMIN_ADDR}/metrics");
    let out = node
        .run_timeout(&["curl", "-sf", "-m", "2", &url], Duration::from_secs(5))?
        .ensure_success()?;
    // By suffix: the registry's prefix is applied to the engine's already prefixed names
    // (`iamlet_iamlet_credentials_cache_entries`).
    let metric = |suffix: &str| {
        out.stdout.lines().find_map(|l| {
            let (name, value) = l.split_once(' ')?;
            if l.starts_with('#') || !name.ends_with(suffix) {
                return None;
            }
            value.trim().parse().ok()
        })
    };
    Ok(EngineStats {
        cache_entries: metric("_credentials_cache_entries"),
        sts_calls: metric("_sts_calls_total"),
    })
}

/// `malloc_trim(0)` in `pid`, called through gdb; whether it ran.
pub(super) fn malloc_trim(pid: u32) -> bool {
    let mut cmd = std::process::Command::new("gdb");
    cmd.args(["-p", &pid.to_string(), "-batch", "-nx", "-ex"])
        .arg("call (int) malloc_trim(0)");
    matches!(
        run_with_timeout(&mut cmd, Duration::from_secs(30)),
        Ok(out) if out.success() && out.stdout.contains("$1 = ")
    )
}

/// One reading: memory and the credentials cache size.
pub(super) type Reading = (Mem, Option<u64>);

/// Settles, then reads the agent's memory (and the credentials cache size).
pub(super) fn measure(side: &Side, agent: &Agent) -> Result<Reading> {
    std::thread::sleep(SETTLE);
    let pid = agent.pid().context("agent pid")?;
    Ok((read_mem(pid)?, engine_stats(&side.node)?.cache_entries))
}

/// Frees what the allocator keeps (`malloc_trim(0)`), then reads again: what is left is
/// closer to live data. `None` if gdb could not do it.
pub(super) fn measure_trimmed(side: &Side, agent: &Agent) -> Result<Option<Reading>> {
    let pid = agent.pid().context("agent pid")?;
    if !malloc_trim(pid) {
        return Ok(None);
    }
    std::thread::sleep(Duration::from_millis(500));
    Ok(Some((
        read_mem(pid)?,
        engine_stats(&side.node)?.cache_entries,
    )))
}

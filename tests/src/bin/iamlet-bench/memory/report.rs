//! The readings of each stage over the rounds, and the baseline/loaded table.

use super::{median, Duration, Field, Mem, Mode, Reading, MEM_ROWS, PODS};

/// Goal: the loaded agent's anonymous memory after load (served twice), in KiB.
const GOAL_RSS_ANON_KIB: f64 = 10.0 * 1024.0;
/// Goal: the loaded agent's peak resident memory, start-up included, in KiB.
const GOAL_HWM_KIB: f64 = 32.0 * 1024.0;

/// Readings of one stage over the rounds.
#[derive(Default)]
pub(super) struct Stage {
    pub(super) runs: Vec<Mem>,
    pub(super) cache: Vec<Option<u64>>,
}

impl Stage {
    pub(super) fn push(&mut self, (m, c): Reading) {
        self.runs.push(m);
        self.cache.push(c);
    }

    pub(super) fn median(&self, f: Field) -> f64 {
        median(self.runs.iter().map(|m| f(m) as f64).collect())
    }

    pub(super) fn cache_median(&self) -> String {
        let v: Vec<f64> = self.cache.iter().flatten().map(|&n| n as f64).collect();
        if v.is_empty() {
            "-".to_owned()
        } else {
            format!("{:.0}", median(v))
        }
    }

    pub(super) fn cache_text(&self) -> String {
        let v: Vec<String> = self
            .cache
            .iter()
            .map(|c| c.map_or_else(|| "-".to_owned(), |n| n.to_string()))
            .collect();
        v.join(" ")
    }
}

/// One mode's readings.
#[derive(Default)]
pub(super) struct Results {
    pub(super) base: Stage,
    pub(super) base_trimmed: Stage,
    pub(super) indexed: Stage,
    pub(super) served: Stage,
    pub(super) again: Stage,
    pub(super) trimmed: Stage,
    pub(super) serve_times: Vec<Duration>,
}

/// One line of the baseline/loaded table.
pub(super) fn compare_row(name: &str, b: f64, l: f64) {
    let ratio = if b > 0.0 {
        format!("{:.2}x", l / b)
    } else {
        "-".to_owned()
    };
    println!(
        "{name:<22} {b:>10.0} {l:>10.0} {:>+10.0} {ratio:>7} {:>+9.2}",
        l - b,
        (l - b) / PODS as f64
    );
}

pub(super) fn report(mode: Mode, r: &Results) {
    println!();
    println!(
        "== {}: baseline = empty cluster; loaded = after every pod ran the SDK flow once",
        mode.name()
    );
    println!(
        "{:<22} {:>10} {:>10} {:>10} {:>7} {:>9}",
        "KiB (median)", "baseline", "loaded", "delta", "ratio", "KiB/pod"
    );
    for (name, f) in MEM_ROWS {
        compare_row(name, r.base.median(f), r.served.median(f));
    }
    println!(
        "{:<22} {:>10.0} {:>10.0}",
        "threads",
        r.base.median(|m| m.threads),
        r.served.median(|m| m.threads)
    );
    println!(
        "{:<22} {:>10} {:>10}",
        "cache entries",
        r.base.cache_median(),
        r.served.cache_median()
    );
    if r.trimmed.runs.is_empty() || r.base_trimmed.runs.is_empty() {
        println!("(no malloc_trim figures: gdb could not call it)");
    } else {
        println!("after malloc_trim(0) through gdb (free memory the allocator held, returned):");
        for (name, f) in MEM_ROWS.iter().take(3) {
            compare_row(
                &format!("  {name}"),
                r.base_trimmed.median(*f),
                r.trimmed.median(*f),
            );
        }
    }
    println!("loaded agent by stage (KiB: median [per round])");
    println!(
        "  {:<14} {:>25} {:>25} {:>25} {:>25}",
        "", "indexed, no request yet", "served once", "served twice", "then malloc_trim(0)"
    );
    for (name, f) in MEM_ROWS.iter().take(5) {
        let cell = |s: &Stage| {
            if s.runs.is_empty() {
                return "-".to_owned();
            }
            let per: Vec<String> = s.runs.iter().map(|m| f(m).to_string()).collect();
            format!("{:.0} [{}]", s.median(*f), per.join(" "))
        };
        println!(
            "  {name:<14} {:>25} {:>25} {:>25} {:>25}",
            cell(&r.indexed),
            cell(&r.served),
            cell(&r.again),
            cell(&r.trimmed)
        );
    }
    println!(
        "  {:<14} {:>25} {:>25} {:>25} {:>25}",
        "cache entries",
        r.indexed.cache_text(),
        r.served.cache_text(),
        r.again.cache_text(),
        r.trimmed.cache_text()
    );
    let per = |s: &Stage| {
        let v: Vec<String> = s.runs.iter().map(|m| m.rss_anon.to_string()).collect();
        v.join(" ")
    };
    let goal = |name: &str, value: f64, limit: f64| {
        let verdict = if value <= limit { "met" } else { "NOT met" };
        println!(
            "goal {name} <= {:.0} MB after load: {verdict} ({:.1} MB)",
            limit / 1024.0,
            value / 1024.0
        );
    };
    goal("RssAnon", r.again.median(|m| m.rss_anon), GOAL_RSS_ANON_KIB);
    goal("VmHWM", r.again.median(|m| m.hwm), GOAL_HWM_KIB);
    println!(
        "baseline RssAnon per round: [{}]; after malloc_trim(0): [{}]",
        per(&r.base),
        per(&r.base_trimmed)
    );
    println!(
        "SDK flow over {PODS} pods (a client process each, in the pod's cgroup): {:.1} s per pass (median)",
        median(r.serve_times.iter().map(Duration::as_secs_f64).collect())
    );
}

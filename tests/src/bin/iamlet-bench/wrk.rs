//! Running wrk and reading its report, and what the server spent meanwhile.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use iamlet_tests::{run_with_timeout, FakePod};

use crate::busy::BusyCpus;
use crate::latency::{Histogram, HISTOGRAM_LINE};

/// How hard wrk pushes: its connections and threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Load {
    pub(crate) connections: u32,
    pub(crate) threads: u32,
}

/// Where the load generator and the server run (`cargo xtask bench imds --cpus`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Placement {
    /// Anywhere: wrk and the server share every CPU (as pods and the agent share a node).
    Shared,
    /// wrk on CPU 0, the server on CPU 1: the server's figures are its own, not the load
    /// generator's competition for a core. Each server then has one CPU (nginx one worker;
    /// iamlet's runtime one worker, sized from its CPU affinity).
    Split,
}

impl Placement {
    /// `value` of `IAMLET_BENCH_CPUS` on a machine with `cpus` CPUs.
    pub(crate) fn parse(value: Option<&str>, cpus: usize) -> Result<Placement> {
        match value {
            None | Some("" | "shared") => Ok(Placement::Shared),
            Some("split") => {
                anyhow::ensure!(
                    cpus >= 2,
                    "--cpus split needs 2 CPUs, this machine has {cpus}"
                );
                Ok(Placement::Split)
            }
            Some(other) => anyhow::bail!("--cpus {other:?}: want shared or split"),
        }
    }

    /// The CPU list (`taskset -c`) of the load generator, if pinned.
    pub(crate) fn client_cpus(self) -> Option<&'static str> {
        match self {
            Placement::Shared => None,
            Placement::Split => Some("0"),
        }
    }

    /// `load` with no more wrk threads than wrk has CPUs. Two wrk threads on one CPU take
    /// turns of milliseconds, and while one runs, the answers waiting for the other age: with
    /// a server fast enough to keep wrk busy, that put a 4 ms p99 on a server whose own
    /// answers took 0.1 ms (measured: one thread on the same CPU drove the same 8 connections
    /// at the same rate with a p99 of 97 µs).
    pub(crate) fn fit(self, load: Load) -> Load {
        let cpus = match self {
            Placement::Shared => {
                std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
            }
            Placement::Split => 1,
        };
        Load {
            threads: load
                .threads
                .min(u32::try_from(cpus).unwrap_or(u32::MAX))
                .max(1),
            ..load
        }
    }

    /// The CPU list of the server, if pinned.
    pub(crate) fn server_cpus(self) -> Option<&'static str> {
        match self {
            Placement::Shared => None,
            Placement::Split => Some("1"),
        }
    }

    pub(crate) fn describe(self) -> &'static str {
        match self {
            Placement::Shared => "wrk and the servers share every CPU",
            Placement::Split => "wrk pinned to CPU 0, each server to CPU 1",
        }
    }
}

/// `program` as `command` makes it (in a pod or the node), under `taskset -c cpus` if given.
pub(crate) fn on_cpus(
    cpus: Option<&str>,
    program: &str,
    command: impl Fn(&str) -> Command,
) -> Command {
    match cpus {
        Some(cpus) => {
            let mut cmd = command("taskset");
            cmd.args(["-c", cpus, program]);
            cmd
        }
        None => command(program),
    }
}

/// Seconds of each wrk run.
pub(crate) const WRK_SECONDS: u32 = 5;

/// The Lua `done` hook appended to every wrk script of the bench: every latency wrk saw, in
/// µs, with its count ([`HISTOGRAM_LINE`]), so the bench takes exact percentiles (wrk's
/// table rounds them) of a round and of the rounds together. In the hook `#latency` is the
/// number of distinct latencies, and `latency(i)` the i-th of them and its count.
pub(crate) const LATENCY_HOOK: &str = r#"
done = function(summary, latency, requests)
    local buckets = {}
    for i = 1, #latency do
        local us, count = latency(i)
        buckets[#buckets + 1] = string.format("%d:%d", us, count)
    end
    io.write("iamlet-bench-latency-histogram ", table.concat(buckets, " "), "\n")
end
"#;

/// What one wrk run reported, and what the server spent on it.
#[derive(Clone, Debug, Default)]
pub(crate) struct WrkRun {
    pub(crate) rps: f64,
    /// The round's own p99, in µs.
    pub(crate) p99_us: f64,
    /// Every latency of the run.
    pub(crate) latency: Histogram,
    pub(crate) requests: u64,
    pub(crate) non_2xx: u64,
    pub(crate) socket_errors: u64,
    pub(crate) socket_errors_text: String,
    /// CPU time the server's processes used during the run, per request, in µs.
    pub(crate) cpu_us_per_req: f64,
    /// Time the server's threads were runnable but waited for a CPU, per request, in µs.
    pub(crate) runq_us_per_req: f64,
    /// Times the server's threads were put on a CPU, per request.
    pub(crate) switches_per_req: f64,
    /// CPU time wrk's pod used during the run (its cgroup's `cpu.stat`), per request, in µs:
    /// with shared CPUs it comes from the same CPUs as the server's.
    pub(crate) client_cpu_us_per_req: f64,
    /// How busy the CPUs wrk ran on were, in percent (split: CPU 0, wrk's alone; shared:
    /// the machine). Near 100 %, wrk is what limits the run, and its threads, taking turns
    /// on a CPU, add their waits to the latencies it reports.
    pub(crate) client_busy_pct: f64,
}

/// Busy and total time (`USER_HZ` ticks) of the CPUs in `cpus` (a `taskset -c` list of single
/// CPUs; `None`: all) from `/proc/stat`.
fn cpu_times(cpus: Option<&str>) -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let wanted: Vec<String> = match cpus {
        None => vec!["cpu".to_owned()],
        Some(list) => list
            .split(',')
            .map(|c| format!("cpu{}", c.trim()))
            .collect(),
    };
    let (mut busy, mut total) = (0, 0);
    for line in stat.lines() {
        let mut fields = line.split_whitespace();
        if !fields
            .next()
            .is_some_and(|name| wanted.iter().any(|w| w == name))
        {
            continue;
        }
        // user nice system idle iowait irq softirq steal (guest time is in user already).
        let ticks: Vec<u64> = fields.take(8).filter_map(|f| f.parse().ok()).collect();
        anyhow::ensure!(ticks.len() == 8, "short /proc/stat line {line:?}");
        total += ticks.iter().sum::<u64>();
        busy += ticks.iter().sum::<u64>() - ticks[3] - ticks[4];
    }
    Ok((busy, total))
}

/// `usage_usec` of a cgroup's `cpu.stat` text: the CPU time its processes used, in µs.
fn usage_usec(cpu_stat: &str) -> Option<u64> {
    cpu_stat.lines().find_map(|line| {
        let (key, value) = line.split_once(' ')?;
        (key == "usage_usec").then(|| value.trim().parse().ok())?
    })
}

/// The CPU time the processes of the cgroup at `path` used so far, in µs.
fn cgroup_usage_us(path: &Path) -> Result<u64> {
    let file = path.join("cpu.stat");
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    usage_usec(&text).with_context(|| format!("no usage_usec in {}", file.display()))
}

/// Clock ticks per second of `/proc/<pid>/stat` times.
fn clock_ticks() -> Result<f64> {
    let out = Command::new("getconf").arg("CLK_TCK").output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

/// `(ppid, utime + stime)` of `pid` (all its threads, living or gone), in clock ticks.
fn proc_stat(pid: u32) -> Option<(u32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; ppid is field 4, utime/stime 14/15.
    let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ppid = rest.get(1)?.parse().ok()?;
    let ticks = rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?;
    Some((ppid, ticks))
}

/// The scheduler's account of `pid`'s living threads (`/proc/<pid>/task/*/schedstat`): ns
/// spent waiting on a run queue, and timeslices run.
fn sched_stat(pid: u32) -> (u64, u64) {
    let mut total = (0, 0);
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return total;
    };
    for task in tasks.flatten() {
        let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        let fields: Vec<u64> = text
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        if let [_, wait, slices] = fields[..] {
            total.0 += wait;
            total.1 += slices;
        }
    }
    total
}

/// What a server has spent so far.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Usage {
    cpu_ticks: u64,
    runq_ns: u64,
    switches: u64,
}

/// The server whose costs a run is charged: a process and its children (nginx workers).
#[derive(Clone, Copy)]
pub(crate) struct Server {
    pub(crate) pid: u32,
}

impl Server {
    /// The process's and its direct children's costs so far.
    pub(crate) fn usage(self) -> Usage {
        let mut pids = vec![self.pid];
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for e in entries.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                    continue;
                };
                if proc_stat(pid).is_some_and(|(ppid, _)| ppid == self.pid) {
                    pids.push(pid);
                }
            }
        }
        let mut usage = Usage::default();
        for pid in pids {
            usage.cpu_ticks += proc_stat(pid).map_or(0, |(_, t)| t);
            let (wait, slices) = sched_stat(pid);
            usage.runq_ns += wait;
            usage.switches += slices;
        }
        usage
    }
}

pub(crate) fn parse_wrk(out: &str) -> Result<WrkRun> {
    let mut run = WrkRun::default();
    let (mut rps, mut requests, mut histogram) = (None, None, None);
    for line in out.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", v] => rps = Some(v.parse::<f64>()?),
            [HISTOGRAM_LINE, pairs @ ..] => {
                histogram = Some(Histogram::parse(pairs.iter().copied())?);
            }
            [n, "requests", "in", ..] => requests = Some(n.parse::<u64>()?),
            ["Non-2xx", "or", "3xx", "responses:", n] => run.non_2xx = n.parse()?,
            ["Socket", "errors:", rest @ ..] => {
                run.socket_errors_text = rest.join(" ");
                run.socket_errors = rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum();
            }
            _ => {}
        }
    }
    run.rps = rps.context("no Requests/sec line")?;
    run.requests = requests.context("no `N requests in` line")?;
    run.latency = histogram
        .with_context(|| format!("no `{HISTOGRAM_LINE}` line (the script's done hook)"))?;
    run.p99_us = run
        .latency
        .percentile(99.0)
        .map_or(f64::NAN, |us| us as f64);
    Ok(run)
}

/// One wrk run from inside `pod` with `script` (which must carry [`LATENCY_HOOK`]) and an
/// optional extra header, where `placement` puts it, with `busy_cpus` threads spinning
/// meanwhile, charging `server`.
pub(crate) fn run_wrk(
    pod: &FakePod,
    server: Server,
    (load, placement, busy_cpus): (Load, Placement, usize),
    url: &str,
    script: &Path,
    header: Option<&str>,
) -> Result<WrkRun> {
    let mut cmd = on_cpus(placement.client_cpus(), "wrk", |p| pod.command(p));
    cmd.arg(format!("-t{}", load.threads))
        .arg(format!("-c{}", load.connections))
        .arg(format!("-d{WRK_SECONDS}s"))
        .arg("-s")
        .arg(script);
    if let Some(h) = header {
        cmd.args(["-H", h]);
    }
    cmd.arg(url);
    let busy = BusyCpus::start(busy_cpus);
    let before = server.usage();
    let client_before = cpu_times(placement.client_cpus())?;
    let pod_before = cgroup_usage_us(pod.cgroup_path())?;
    let out = run_with_timeout(&mut cmd, Duration::from_secs(u64::from(WRK_SECONDS) + 30))?
        .ensure_success()?;
    let client_after = cpu_times(placement.client_cpus())?;
    let pod_after = cgroup_usage_us(pod.cgroup_path())?;
    let after = server.usage();
    drop(busy);
    let mut run =
        parse_wrk(&out.stdout).with_context(|| format!("parsing wrk's output:\n{}", out.stdout))?;
    let requests = run.requests.max(1) as f64;
    run.cpu_us_per_req =
        after.cpu_ticks.saturating_sub(before.cpu_ticks) as f64 * 1e6 / clock_ticks()? / requests;
    run.runq_us_per_req = after.runq_ns.saturating_sub(before.runq_ns) as f64 / 1e3 / requests;
    run.switches_per_req = after.switches.saturating_sub(before.switches) as f64 / requests;
    run.client_cpu_us_per_req = pod_after.saturating_sub(pod_before) as f64 / requests;
    let busy = client_after.0.saturating_sub(client_before.0) as f64;
    let total = client_after.1.saturating_sub(client_before.1).max(1) as f64;
    run.client_busy_pct = busy * 100.0 / total;
    Ok(run)
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One server's runs of one scenario.
pub(crate) struct Series {
    pub(crate) name: &'static str,
    pub(crate) runs: Vec<WrkRun>,
}

impl Series {
    pub(crate) fn new(name: &'static str) -> Series {
        Series {
            name,
            runs: Vec::new(),
        }
    }

    /// The median over the rounds of one figure.
    pub(crate) fn median(&self, figure: fn(&WrkRun) -> f64) -> f64 {
        median(self.runs.iter().map(figure).collect())
    }

    pub(crate) fn rps(&self) -> f64 {
        self.median(|r| r.rps)
    }

    /// The latency in µs `p` percent of the requests of every round together stayed within:
    /// what a client saw over the whole run, where the median of the rounds' own percentiles
    /// keeps one round and drops the others.
    pub(crate) fn percentile(&self, p: f64) -> f64 {
        self.latency()
            .percentile(p)
            .map_or(f64::NAN, |us| us as f64)
    }

    /// Every request of every round.
    fn latency(&self) -> Histogram {
        Histogram::merge(self.runs.iter().map(|r| &r.latency))
    }

    pub(crate) fn p99(&self) -> f64 {
        self.percentile(99.0)
    }

    pub(crate) fn p999(&self) -> f64 {
        self.percentile(99.9)
    }

    /// The slowest request of any round, in µs.
    pub(crate) fn max_us(&self) -> f64 {
        self.latency().max().map_or(f64::NAN, |us| us as f64)
    }

    pub(crate) fn errors(&self) -> u64 {
        self.runs.iter().map(|r| r.non_2xx + r.socket_errors).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_done_hook_and_the_summary() {
        let out = "Running 5s test @ http://169.254.169.254/\n  2 threads and 8 connections\n\
            200000 requests in 5.00s, 300.00MB read\n\
            Non-2xx or 3xx responses: 3\n\
            Requests/sec:  40000.10\n\
            iamlet-bench-latency-histogram 180:197000 1190:2999 11000:1\n";
        let run = parse_wrk(out).unwrap();
        assert_eq!(run.requests, 200_000);
        assert_eq!(run.non_2xx, 3);
        assert!((run.rps - 40000.1).abs() < 1e-6);
        assert!((run.p99_us - 1190.0).abs() < 1e-9, "{}", run.p99_us);
        assert_eq!(run.latency.count(), 200_000);
        assert_eq!(run.latency.max(), Some(11_000));
        assert!(parse_wrk("Requests/sec: 1\n1 requests in 1s\n").is_err());
        let no_histogram = out.lines().filter(|l| !l.contains("histogram"));
        let err = parse_wrk(&no_histogram.collect::<Vec<_>>().join("\n")).unwrap_err();
        assert!(
            err.to_string().contains("iamlet-bench-latency-histogram"),
            "{err}"
        );
    }

    #[test]
    fn a_cgroups_cpu_time_from_its_cpu_stat() {
        let stat = "usage_usec 1234567\nuser_usec 1000000\nsystem_usec 234567\n\
            nr_periods 0\n";
        assert_eq!(usage_usec(stat), Some(1_234_567));
        assert_eq!(usage_usec("user_usec 5\n"), None);
        assert_eq!(usage_usec("usage_usec many\n"), None);
    }

    #[test]
    fn placement_from_its_name() {
        assert_eq!(Placement::parse(None, 2).unwrap(), Placement::Shared);
        assert_eq!(
            Placement::parse(Some("split"), 2).unwrap(),
            Placement::Split
        );
        assert_eq!(Placement::Split.client_cpus(), Some("0"));
        assert_eq!(Placement::Split.server_cpus(), Some("1"));
        assert!(
            Placement::parse(Some("split"), 1).is_err(),
            "one CPU cannot be split"
        );
        assert!(Placement::parse(Some("pinned"), 2).is_err());
    }

    #[test]
    fn wrk_gets_no_more_threads_than_cpus() {
        let load = Load {
            connections: 8,
            threads: 2,
        };
        let split = Placement::Split.fit(load);
        assert_eq!((split.connections, split.threads), (8, 1));
        let shared = Placement::Shared.fit(load);
        assert!(shared.threads >= 1 && shared.threads <= 2, "{shared:?}");
    }
}

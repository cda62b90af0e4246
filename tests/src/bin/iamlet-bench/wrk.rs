//! Running wrk and reading its report.

use crate::imds::{TARGET_P99_US, TARGET_RATIO, WRK_CONNECTIONS, WRK_SECONDS, WRK_THREADS};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use iamlet_tests::{run_with_timeout, FakePod};

/// What one wrk run reported.
#[derive(Clone, Debug, Default)]
pub(crate) struct WrkRun {
    pub(crate) rps: f64,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) requests: u64,
    pub(crate) non_2xx: u64,
    pub(crate) socket_errors: u64,
    pub(crate) socket_errors_text: String,
    /// CPU time the server's processes used during the run, per request, in µs.
    pub(crate) cpu_us_per_req: f64,
}

/// Clock ticks per second of `/proc/<pid>/stat` times.
pub(crate) fn clock_ticks() -> Result<f64> {
    let out = Command::new("getconf").arg("CLK_TCK").output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

/// `(ppid, utime + stime)` of `pid` (all its threads), in clock ticks.
pub(crate) fn proc_stat(pid: u32) -> Option<(u32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; ppid is field 4, utime/stime 14/15.
    let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ppid = rest.get(1)?.parse().ok()?;
    let ticks = rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?;
    Some((ppid, ticks))
}

/// The server whose CPU time a run is charged: a process and its children (nginx workers).
#[derive(Clone, Copy)]
pub(crate) struct Server {
    pub(crate) pid: u32,
}

impl Server {
    /// CPU ticks used so far by the process and its direct children.
    pub(crate) fn cpu_ticks(self) -> u64 {
        let mut total = proc_stat(self.pid).map_or(0, |(_, t)| t);
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for e in entries.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                    continue;
                };
                if let Some((ppid, t)) = proc_stat(pid) {
                    if ppid == self.pid {
                        total += t;
                    }
                }
            }
        }
        total
    }
}

/// A wrk duration (`812.00us`, `1.23ms`, `2.00s`, `1.00m`) in µs.
pub(crate) fn wrk_duration_us(s: &str) -> Result<f64> {
    let split = s
        .find(|c: char| c.is_ascii_alphabetic())
        .with_context(|| format!("no unit in wrk duration {s:?}"))?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().with_context(|| format!("wrk duration {s:?}"))?;
    let scale = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        "h" => 3600e6,
        _ => bail!("unknown unit in wrk duration {s:?}"),
    };
    Ok(n * scale)
}

pub(crate) fn parse_wrk(out: &str) -> Result<WrkRun> {
    let mut run = WrkRun::default();
    let (mut rps, mut p50, mut p99, mut requests) = (None, None, None, None);
    for line in out.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", v] => rps = Some(v.parse::<f64>()?),
            ["50%", v] => p50 = Some(wrk_duration_us(v)?),
            ["99%", v] => p99 = Some(wrk_duration_us(v)?),
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
    run.p50_us = p50.context("no 50% latency line (--latency)")?;
    run.p99_us = p99.context("no 99% latency line (--latency)")?;
    run.requests = requests.context("no `N requests in` line")?;
    Ok(run)
}

pub(crate) fn run_wrk(
    pod: &FakePod,
    server: Server,
    url: &str,
    script: Option<&Path>,
    header: Option<&str>,
) -> Result<WrkRun> {
    let mut cmd = pod.command("wrk");
    cmd.arg(format!("-t{WRK_THREADS}"))
        .arg(format!("-c{WRK_CONNECTIONS}"))
        .arg(format!("-d{WRK_SECONDS}s"))
        .arg("--latency");
    if let Some(h) = header {
        cmd.args(["-H", h]);
    }
    if let Some(s) = script {
        cmd.arg("-s").arg(s);
    }
    cmd.arg(url);
    let before = server.cpu_ticks();
    let out = run_with_timeout(&mut cmd, Duration::from_secs(u64::from(WRK_SECONDS) + 30))?
        .ensure_success()?;
    let used = server.cpu_ticks().saturating_sub(before);
    let mut run =
        parse_wrk(&out.stdout).with_context(|| format!("parsing wrk's output:\n{}", out.stdout))?;
    run.cpu_us_per_req = used as f64 * 1e6 / clock_ticks()? / run.requests.max(1) as f64;
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
    pub(crate) fn rps(&self) -> f64 {
        median(self.runs.iter().map(|r| r.rps).collect())
    }
    pub(crate) fn p50(&self) -> f64 {
        median(self.runs.iter().map(|r| r.p50_us).collect())
    }
    pub(crate) fn p99(&self) -> f64 {
        median(self.runs.iter().map(|r| r.p99_us).collect())
    }
    pub(crate) fn cpu_per_req(&self) -> f64 {
        median(self.runs.iter().map(|r| r.cpu_us_per_req).collect())
    }
    pub(crate) fn errors(&self) -> u64 {
        self.runs.iter().map(|r| r.non_2xx + r.socket_errors).sum()
    }
}

/// Prints one scenario: iamlet, nginx and (when given) a baseline build of iamlet, measured in
/// the same alternating rounds.
pub(crate) fn report(title: &str, iamlet: &Series, nginx: &Series, baseline: Option<&Series>) {
    println!();
    println!("{title}");
    println!(
        "  {:<16} {:>10} {:>9} {:>9} {:>16} {:>8}",
        "server", "req/s", "p50 µs", "p99 µs", "server CPU µs/req", "errors"
    );
    for s in [Some(iamlet), baseline, Some(nginx)].into_iter().flatten() {
        println!(
            "  {:<16} {:>10.0} {:>9.0} {:>9.0} {:>16.1} {:>8}",
            s.name,
            s.rps(),
            s.p50(),
            s.p99(),
            s.cpu_per_req(),
            s.errors()
        );
        for (i, r) in s.runs.iter().enumerate() {
            if r.non_2xx > 0 || r.socket_errors > 0 {
                println!(
                    "    round {}: {} non-2xx of {} requests; socket errors: {}",
                    i + 1,
                    r.non_2xx,
                    r.requests,
                    if r.socket_errors_text.is_empty() {
                        "none"
                    } else {
                        &r.socket_errors_text
                    }
                );
            }
        }
    }
    let ratio = iamlet.rps() / nginx.rps();
    let p99 = iamlet.p99();
    let met = |ok: bool| if ok { "met" } else { "NOT met" };
    println!("  iamlet/nginx throughput: {ratio:.2}x");
    if let Some(b) = baseline {
        println!(
            "  {}/nginx throughput: {:.2}x; this build / {}: throughput {:.2}x, p99 {:.2}x, CPU per request {:.2}x",
            b.name,
            b.rps() / nginx.rps(),
            b.name,
            iamlet.rps() / b.rps(),
            iamlet.p99() / b.p99(),
            iamlet.cpu_per_req() / b.cpu_per_req()
        );
    }
    println!(
        "  target iamlet >= {TARGET_RATIO}x nginx throughput: {} ({ratio:.2}x)",
        met(ratio >= TARGET_RATIO)
    );
    println!(
        "  target iamlet p99 <= {:.0} ms at {WRK_CONNECTIONS} connections: {} ({:.2} ms)",
        TARGET_P99_US / 1000.0,
        met(p99 <= TARGET_P99_US),
        p99 / 1000.0
    );
}

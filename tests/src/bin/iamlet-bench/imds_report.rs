//! `bench imds`'s table: each scenario's figures per server, the ratios to nginx, and the
//! goals.
//!
//! Goals (reported, never asserted), in the same run: iamlet's p99 at most [`GOAL_P99`]×
//! nginx's p99 in every scenario and at every load, and its throughput at least
//! [`GOAL_THROUGHPUT`]× nginx's at [`THROUGHPUT_GOAL_CONNECTIONS`] connections (where that
//! ratio was first measured; at 1 connection req/s is one round trip after another, mostly
//! the kernel's, and is printed but not held to it).

use crate::wrk::{median, Load, Placement, Series};

/// Goal: iamlet's req/s at least this multiple of nginx's.
pub(crate) const GOAL_THROUGHPUT: f64 = 1.3;
/// Goal: iamlet's p99 at most this multiple of nginx's.
pub(crate) const GOAL_P99: f64 = 2.0;
/// The load whose throughput is held to [`GOAL_THROUGHPUT`].
pub(crate) const THROUGHPUT_GOAL_CONNECTIONS: u32 = 8;

/// One line of the goal summary.
pub(crate) struct Verdict {
    pub(crate) scenario: String,
    pub(crate) load: Load,
    pub(crate) throughput: f64,
    pub(crate) p99: f64,
    pub(crate) p999: f64,
    /// Rounds whose own p99 was within the goal of nginx's in the same round, of all rounds.
    pub(crate) p99_rounds: (usize, usize),
    /// iamlet's CPU time per request over nginx's.
    pub(crate) cpu: f64,
    /// iamlet's busy percent (its CPU time per second) while wrk's CPUs were saturated, if
    /// they were and iamlet was not: wrk, not iamlet, set iamlet's req/s.
    pub(crate) wrk_bound: Option<f64>,
    /// With split CPUs: the most req/s wrk's one CPU could ask of iamlet, as a multiple of
    /// nginx's req/s (see [`client_ceiling`]).
    pub(crate) client_ceiling: Option<f64>,
}

impl Verdict {
    /// Whether the throughput goal applies at this load.
    fn throughput_held(&self) -> bool {
        self.load.connections == THROUGHPUT_GOAL_CONNECTIONS
    }

    pub(crate) fn met(&self) -> bool {
        (!self.throughput_held() || self.throughput >= GOAL_THROUGHPUT) && self.p99 <= GOAL_P99
    }
}

type Column = (&'static str, fn(&Series) -> f64, usize);

/// The columns of a scenario's table: header, figure, decimals. Latencies are over every
/// request of every round together ([`Series::percentile`]); the rest are medians of the
/// rounds.
const COLUMNS: [Column; 11] = [
    ("req/s", |s| s.rps(), 0),
    ("p50 µs", |s| s.percentile(50.0), 0),
    ("p99 µs", |s| s.p99(), 0),
    ("p99.9 µs", |s| s.p999(), 0),
    ("max µs", |s| s.max_us(), 0),
    ("CPU µs/req", |s| s.median(|r| r.cpu_us_per_req), 1),
    ("runq µs/req", |s| s.median(|r| r.runq_us_per_req), 2),
    ("on-CPU/req", |s| s.median(|r| r.switches_per_req), 2),
    // The server's CPU per second: near 100 %, the server is what limits the run.
    (
        "server %",
        |s| s.median(|r| r.rps * r.cpu_us_per_req / 1e4),
        0,
    ),
    ("wrk CPUs %", |s| s.median(|r| r.client_busy_pct), 0),
    ("wrk µs/req", |s| s.median(|r| r.client_cpu_us_per_req), 1),
];

/// Rounds in which iamlet's p99 was within [`GOAL_P99`]× nginx's in the round next to it,
/// and rounds compared.
fn rounds_within_goal(iamlet: &Series, nginx: &Series) -> (usize, usize) {
    let pairs = iamlet.runs.iter().zip(&nginx.runs);
    let within = pairs
        .clone()
        .filter(|(i, n)| i.p99_us <= GOAL_P99 * n.p99_us)
        .count();
    (within, pairs.count())
}

/// Prints one scenario at one load: iamlet, nginx and (when given) a baseline build of
/// iamlet, measured in the same alternating rounds; returns iamlet's ratios to nginx.
pub(crate) fn report(
    title: &str,
    short: &str,
    (load, placement): (Load, Placement),
    iamlet: &Series,
    nginx: &Series,
    baseline: Option<&Series>,
) -> Verdict {
    println!();
    println!(
        "{title}, {} connection(s), {} wrk thread(s)",
        load.connections, load.threads
    );
    print!("  {:<16}", "server");
    for (name, _, _) in COLUMNS {
        print!(" {name:>11}");
    }
    println!(" {:>7}", "errors");
    for s in [Some(iamlet), baseline, Some(nginx)].into_iter().flatten() {
        print!("  {:<16}", s.name);
        for (_, figure, decimals) in COLUMNS {
            print!(" {:>11.decimals$}", figure(s));
        }
        println!(" {:>7}", s.errors());
        let p99s: Vec<String> = s.runs.iter().map(|r| format!("{:.0}", r.p99_us)).collect();
        println!("    p99 by round, µs: {}", p99s.join(", "));
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
    let verdict = Verdict {
        scenario: format!("{short}, {} connection(s)", load.connections),
        load,
        throughput: iamlet.rps() / nginx.rps(),
        p99: iamlet.p99() / nginx.p99(),
        p999: iamlet.p999() / nginx.p999(),
        p99_rounds: rounds_within_goal(iamlet, nginx),
        cpu: iamlet.median(|r| r.cpu_us_per_req) / nginx.median(|r| r.cpu_us_per_req),
        // Shared CPUs: wrk and the servers take from one pool, and no side's own figure says
        // which limited the run.
        wrk_bound: match placement {
            Placement::Split => wrk_bound(iamlet),
            Placement::Shared => None,
        },
        client_ceiling: match placement {
            Placement::Split => client_ceiling(iamlet).map(|c| c / nginx.rps()),
            Placement::Shared => None,
        },
    };
    println!(
        "  iamlet/nginx: throughput {:.2}x, p99 {:.2}x, p99.9 {:.2}x",
        verdict.throughput, verdict.p99, verdict.p999
    );
    if let Some(b) = baseline {
        println!(
            "  this build / {}: throughput {:.2}x, p99 {:.2}x, p99.9 {:.2}x, CPU per request {:.2}x",
            b.name,
            iamlet.rps() / b.rps(),
            iamlet.p99() / b.p99(),
            iamlet.p999() / b.p999(),
            iamlet.median(|r| r.cpu_us_per_req) / b.median(|r| r.cpu_us_per_req)
        );
    }
    verdict
}

/// Busy percent at which a side counts as saturated.
const SATURATED_PCT: f64 = 97.0;

/// The server's busy percent if wrk's CPUs were saturated and the server was not.
fn wrk_bound(server: &Series) -> Option<f64> {
    let busy = server.median(|r| r.rps * r.cpu_us_per_req / 1e4);
    let wrk = server.median(|r| r.client_busy_pct);
    (wrk >= SATURATED_PCT && busy < SATURATED_PCT).then_some(busy)
}

/// The req/s wrk's CPUs would make at 100 % busy, at the cost per request they had against
/// `server`: the median, over the rounds where wrk's CPUs were measured, of req/s over their
/// busy fraction. An estimate: wrk spends less per request the faster it is answered (more
/// answers per wakeup), so a faster server could go somewhat past it. `None` if no round
/// measured wrk's CPUs.
fn client_ceiling(server: &Series) -> Option<f64> {
    let ceilings: Vec<f64> = server
        .runs
        .iter()
        .filter(|r| r.client_busy_pct > 0.0)
        .map(|r| r.rps * 100.0 / r.client_busy_pct)
        .collect();
    (!ceilings.is_empty()).then(|| median(ceilings))
}

/// The goal summary over every scenario and load.
pub(crate) fn summary(verdicts: &[Verdict]) {
    println!();
    println!(
        "goals (same run): p99 of every round's requests <= {GOAL_P99}x nginx's; throughput >= {GOAL_THROUGHPUT}x nginx's at {THROUGHPUT_GOAL_CONNECTIONS} connections"
    );
    for v in verdicts {
        println!(
            "  {:<28} throughput {:>5.2}x{} p99 {:>5.2}x (rounds within: {} of {})  p99.9 {:>5.2}x  {}",
            v.scenario,
            v.throughput,
            if v.throughput_held() { "  " } else { "*" },
            v.p99,
            v.p99_rounds.0,
            v.p99_rounds.1,
            v.p999,
            if v.met() { "met" } else { "NOT met" }
        );
        if let (true, Some(busy)) = (v.throughput_held(), v.wrk_bound) {
            println!(
                "    wrk's CPUs were the limit (iamlet {busy:.0} % busy): by CPU per request ({:.2}x nginx's) iamlet serves {:.2}x nginx's req/s",
                v.cpu,
                1.0 / v.cpu
            );
        }
        if let (true, Some(ceiling)) = (v.throughput_held(), v.client_ceiling) {
            if ceiling < GOAL_THROUGHPUT {
                println!(
                    "    beyond this client: wrk's one CPU, fully busy at its cost per request against iamlet, would ask {ceiling:.2}x nginx's req/s, under the {GOAL_THROUGHPUT}x goal (CPU per request: iamlet {:.2}x nginx's)",
                    v.cpu
                );
            }
        }
    }
    let missed = verdicts.iter().filter(|v| !v.met()).count();
    println!("  {} of {} met", verdicts.len() - missed, verdicts.len());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wrk::WrkRun;

    fn verdict(connections: u32, throughput: f64, p99: f64) -> Verdict {
        Verdict {
            scenario: String::new(),
            load: Load {
                connections,
                threads: 1,
            },
            throughput,
            p99,
            p999: 1.0,
            p99_rounds: (0, 0),
            cpu: 1.0,
            wrk_bound: None,
            client_ceiling: None,
        }
    }

    #[test]
    fn goals_by_load() {
        assert!(verdict(8, 1.3, 2.0).met());
        assert!(
            !verdict(8, 1.29, 1.0).met(),
            "throughput held at 8 connections"
        );
        assert!(!verdict(8, 2.0, 2.01).met(), "p99 held everywhere");
        assert!(
            verdict(1, 0.9, 1.5).met(),
            "throughput not held at 1 connection"
        );
        assert!(!verdict(1, 2.0, 2.5).met());
    }

    #[test]
    fn each_round_is_compared_with_the_round_next_to_it() {
        let with_p99s = |p99s: &[f64]| {
            let mut s = Series::new("server");
            s.runs = p99s
                .iter()
                .map(|&p99_us| WrkRun {
                    p99_us,
                    ..WrkRun::default()
                })
                .collect();
            s
        };
        let iamlet = with_p99s(&[400.0, 2_000.0, 300.0]);
        let nginx = with_p99s(&[200.0, 900.0, 2_500.0]);
        assert_eq!(
            rounds_within_goal(&iamlet, &nginx),
            (2, 3),
            "2.22x in round 2"
        );
    }

    fn series(rps: f64, cpu_us_per_req: f64, client_busy_pct: f64) -> Series {
        let mut s = Series::new("iamlet");
        s.runs.push(WrkRun {
            rps,
            cpu_us_per_req,
            client_busy_pct,
            ..WrkRun::default()
        });
        s
    }

    #[test]
    fn a_run_is_wrk_bound_only_when_wrk_is_saturated_and_the_server_is_not() {
        let busy = wrk_bound(&series(100_000.0, 9.0, 99.0)).expect("wrk-bound");
        assert!((busy - 90.0).abs() < 1e-9, "{busy}");
        assert_eq!(
            wrk_bound(&series(110_000.0, 9.0, 99.0)),
            None,
            "server saturated"
        );
        assert_eq!(
            wrk_bound(&series(100_000.0, 9.0, 80.0)),
            None,
            "wrk not saturated"
        );
    }

    #[test]
    fn the_client_ceiling_is_req_per_s_at_a_fully_busy_client() {
        let ceiling = client_ceiling(&series(150_000.0, 5.0, 75.0)).expect("measured");
        assert!((ceiling - 200_000.0).abs() < 1e-6, "{ceiling}");
        assert_eq!(
            client_ceiling(&series(150_000.0, 5.0, 0.0)),
            None,
            "not measured"
        );
    }
}

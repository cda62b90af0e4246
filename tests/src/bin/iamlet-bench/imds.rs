//! `imds`: iamlet against nginx serving the same bytes.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use iamlet_tests::{Agent, FakePod, TestNode, IMDS_V4, NODE_PROXY_V4};

use crate::bench_pod::{
    creds_path, fetch_flow, require_bench_tools, start_agent, write_agent_files, TempDir,
    BENCH_POD_UID, BENCH_ROLE, ROLES_PATH, TOKEN_PATH,
};
use crate::imds_report::{report, summary};
use crate::nginx::start_nginx;
use crate::options::ImdsOptions;
use crate::wrk::{run_wrk, Load, Placement, Series, Server, LATENCY_HOOK, WRK_SECONDS};

/// nginx listens next to iamlet's listener (same address, other port): the same hop.
pub(crate) const NGINX_PORT: u16 = 8080;
/// The loads every scenario runs at: 8 connections over 2 wrk threads (fewer where wrk has
/// fewer CPUs: see [`Placement::fit`]), and 1 connection (each request waits for the one
/// before: latency alone).
pub(crate) const LOADS: [Load; 2] = [
    Load {
        connections: 8,
        threads: 2,
    },
    Load {
        connections: 1,
        threads: 1,
    },
];

/// The credentials JSON without `LastUpdated` (iamlet stamps it per request).
fn creds_without_last_updated(body: &[u8]) -> Result<serde_json::Value> {
    let mut v: serde_json::Value =
        serde_json::from_slice(body).context("credentials body is not JSON")?;
    v.as_object_mut()
        .context("credentials body is not a JSON object")?
        .remove("LastUpdated");
    Ok(v)
}

/// wrk's Lua script for the SDK flow. wrk calls `request()` per thread, not per connection, so
/// each thread cycles PUT token → GET role list → GET credentials over its connections. The
/// GETs carry `token`, minted by a PUT before the run: a token stays good for its TTL, and
/// every PUT of the flow still mints one. The script has no `response()`: with one, wrk
/// copies every answer's headers and body into Lua, and with split CPUs that, not the server,
/// capped the flow at about 140,000 req/s (README, "Where the tail comes from").
fn flow_script(token: &str) -> String {
    format!(
        r#"local token = [[{token}]]
local role = [[{BENCH_ROLE}]]
local step = 0
local steps
-- After wrk.init has set the Host header (a request formatted at load time has none).
init = function(args)
    steps = {{
        wrk.format("PUT", "{TOKEN_PATH}", {{ ["X-aws-ec2-metadata-token-ttl-seconds"] = "21600" }}),
        wrk.format("GET", "{ROLES_PATH}", {{ ["X-aws-ec2-metadata-token"] = token }}),
        wrk.format("GET", "{ROLES_PATH}" .. role, {{ ["X-aws-ec2-metadata-token"] = token }}),
    }}
end
request = function()
    step = step % 3 + 1
    return steps[step]
end
{LATENCY_HOOK}"#
    )
}

/// An older build of the agent on a node of its own, for `IAMLET_BASELINE_BIN`.
struct Baseline {
    bin: PathBuf,
    pod: FakePod,
    server: Server,
    token_header: String,
    script: PathBuf,
    // Dropped last: the agent, then the node.
    _agent: Agent,
    _node: TestNode,
}

impl Baseline {
    fn start(bin: &Path, dir: &TempDir, placement: Placement) -> Result<Baseline> {
        let (node, pod, agent) = start_agent(dir, bin, placement, "baseline")?;
        let served = fetch_flow(&pod, &format!("http://{IMDS_V4}"), dir, "baseline")?;
        let token = String::from_utf8(served.token)?;
        let script = dir.path("flow-baseline.lua");
        std::fs::write(&script, flow_script(&token))?;
        Ok(Baseline {
            bin: bin.to_owned(),
            server: Server {
                pid: agent.pid().context("baseline agent pid")?,
            },
            pod,
            token_header: format!("X-aws-ec2-metadata-token: {token}"),
            script,
            _agent: agent,
            _node: node,
        })
    }
}

/// The order the servers (0 iamlet, 1 nginx, 2 the baseline build) run in `round` (from 1):
/// each goes first in turn, so none always follows the same other. (The order was suspected
/// when the same build, measured as itself and as the baseline, came out at 2.45x and 3.09x
/// of its own p99 at 8 connections with shared CPUs. Rotated, the next run gave 0.40x and
/// 4.02x: that spread is the scheduler's draw, not the order; rotating is fair either way.)
fn turn_order(round: usize, with_baseline: bool) -> Vec<usize> {
    let servers = if with_baseline { 3 } else { 2 };
    let first = round.saturating_sub(1) % servers;
    (0..servers).map(|i| (first + i) % servers).collect()
}

/// One scenario of `bench imds`: what wrk asks of each server (iamlet, nginx) and of the
/// baseline build.
struct Scenario<'a> {
    title: String,
    /// The title in the goal summary.
    short: &'static str,
    urls: [String; 2],
    script: &'a Path,
    header: Option<&'a str>,
    baseline_url: String,
    baseline_script: Option<&'a Path>,
    baseline_header: Option<&'a str>,
}

/// `bench imds`: wrk inside a fake pod against iamlet (through the redirect, static
/// credentials, no upstream, no rate limit) and against nginx serving the bytes iamlet served
/// (same node address, same veth), rounds alternating between the two (each first in turn):
///
/// 1. keep-alive GET of the credentials path (with a token, as the SDKs send);
/// 2. the SDK flow: PUT token, GET role list, GET credentials with the token just minted;
///
/// each at every load of [`LOADS`]. Besides wrk's view (req/s, percentiles from its `done`
/// hook), each run charges the server the CPU time, run-queue wait and timeslices its
/// threads took (`/proc/<pid>/task/*/schedstat`), per request.
pub(crate) fn bench_imds() -> Result<()> {
    require_bench_tools(&["wrk", "nginx", "curl"])?;
    let options = ImdsOptions::from_env()?;
    let placement = options.placement;
    let dir = TempDir::new("imds")?;
    std::fs::create_dir_all(dir.path("www"))?;
    write_agent_files(&dir, &BENCH_POD_UID.replace('-', "_"))?;
    let (node, pod, agent) =
        start_agent(&dir, &iamlet_tests::agent::agent_bin(), placement, "iamlet")?;
    eprintln!(
        "iamlet: {} (pid {})",
        iamlet_tests::agent::agent_bin().display(),
        agent.pid().unwrap_or(0)
    );

    // What iamlet serves this pod, then nginx serving those same bytes.
    let iamlet_base = format!("http://{IMDS_V4}");
    let nginx_base = format!("http://{NODE_PROXY_V4}:{NGINX_PORT}");
    let served = fetch_flow(&pod, &iamlet_base, &dir, "iamlet")?;
    std::fs::write(dir.path("www/roles"), &served.roles)?;
    std::fs::write(dir.path("www/creds"), &served.creds)?;
    let token = String::from_utf8(served.token.clone())?;
    let nginx = start_nginx(&node, &dir, &token, placement)?;
    let servers = [
        Server {
            pid: agent.pid().context("agent pid")?,
        },
        Server {
            pid: nginx.master.id(),
        },
    ];

    // Both must answer the three requests alike before anything is measured.
    let again = fetch_flow(&pod, &iamlet_base, &dir, "iamlet-again")?;
    let from_nginx = fetch_flow(&pod, &nginx_base, &dir, "nginx")?;
    ensure!(
        from_nginx.token == served.token,
        "nginx token body differs from iamlet's"
    );
    ensure!(
        again.token.len() == served.token.len(),
        "iamlet token bodies differ in length ({} vs {} bytes)",
        again.token.len(),
        served.token.len()
    );
    for (what, a, n) in [
        ("role list", &again.roles, &from_nginx.roles),
        ("credentials", &again.creds, &from_nginx.creds),
    ] {
        ensure!(
            a.len() == n.len(),
            "{what}: iamlet sent {} bytes, nginx {}",
            a.len(),
            n.len()
        );
        if what == "role list" {
            ensure!(a == n, "role list: iamlet {a:?}, nginx {n:?}");
        }
    }
    ensure!(
        creds_without_last_updated(&again.creds)? == creds_without_last_updated(&from_nginx.creds)?,
        "credentials JSON differs between iamlet and nginx (beyond LastUpdated)"
    );
    println!(
        "bodies: token {} B, role list {} B, credentials {} B; identical from iamlet and nginx (credentials: but for LastUpdated, stamped per request)",
        served.token.len(),
        served.roles.len(),
        served.creds.len()
    );

    let script = dir.path("flow.lua");
    std::fs::write(&script, flow_script(&token))?;
    // Keep-alive GETs need no script but the latency hook.
    let hook = dir.path("keepalive.lua");
    std::fs::write(&hook, LATENCY_HOOK)?;
    let token_header = format!("X-aws-ec2-metadata-token: {token}");
    let creds_url = |base: &str| format!("{base}{}", creds_path());
    // An older build of the agent, side by side (IAMLET_BASELINE_BIN): its own node and pod,
    // laid out alike.
    let baseline = match std::env::var_os("IAMLET_BASELINE_BIN") {
        Some(bin) => Some(Baseline::start(
            std::path::Path::new(&bin),
            &dir,
            placement,
        )?),
        None => None,
    };

    let scenarios = [
        Scenario {
            title: format!("1. keep-alive GET {} (with token)", creds_path()),
            short: "keep-alive GET",
            urls: [creds_url(&iamlet_base), creds_url(&nginx_base)],
            script: &hook,
            header: Some(&token_header),
            baseline_url: creds_url(&iamlet_base),
            baseline_script: Some(&hook),
            baseline_header: baseline.as_ref().map(|b| b.token_header.as_str()),
        },
        Scenario {
            title:
                "2. SDK flow: PUT token -> GET role list -> GET credentials (req/s counts requests)"
                    .into(),
            short: "SDK flow",
            urls: [iamlet_base.clone(), nginx_base.clone()],
            script: &script,
            header: None,
            baseline_url: iamlet_base.clone(),
            baseline_script: baseline.as_ref().map(|b| b.script.as_path()),
            baseline_header: None,
        },
    ];
    // [load][scenario]: iamlet, nginx, baseline.
    let loads = LOADS.map(|load| {
        placement.fit(Load {
            threads: options
                .wrk_threads
                .unwrap_or(load.threads)
                .min(load.connections),
            ..load
        })
    });
    let mut series: Vec<Vec<[Series; 3]>> = loads
        .iter()
        .map(|_| {
            scenarios
                .iter()
                .map(|_| {
                    [
                        Series::new("iamlet"),
                        Series::new("nginx"),
                        Series::new("iamlet-baseline"),
                    ]
                })
                .collect()
        })
        .collect();
    let rounds = options.rounds;
    for round in 1..=rounds {
        eprintln!("round {round}/{rounds}");
        for (l, &load) in loads.iter().enumerate() {
            for (s, sc) in scenarios.iter().enumerate() {
                for i in turn_order(round, baseline.is_some()) {
                    let run = match i {
                        0 | 1 => run_wrk(
                            &pod,
                            servers[i],
                            (load, placement, options.busy_cpus),
                            &sc.urls[i],
                            sc.script,
                            sc.header,
                        )?,
                        _ => {
                            let (Some(b), Some(bs)) = (&baseline, sc.baseline_script) else {
                                continue;
                            };
                            run_wrk(
                                &b.pod,
                                b.server,
                                (load, placement, options.busy_cpus),
                                &sc.baseline_url,
                                bs,
                                sc.baseline_header,
                            )?
                        }
                    };
                    series[l][s][i].runs.push(run);
                }
            }
        }
    }
    println!(
        "wrk in a fake pod over veth, {rounds} rounds x {WRK_SECONDS} s per server and load, each server first in turn; latencies over every round's requests, the rest medians of rounds; {} CPUs",
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get)
    );
    println!("{}", placement.describe());
    let busy = options.busy_cpus;
    if busy > 0 {
        println!("a busy node: {busy} thread(s) spinning while wrk runs");
    }
    println!("runq: time the server's threads were runnable but waited for a CPU; on-CPU: times they were scheduled");
    println!("server %: the server's CPU time per second; wrk CPUs %: how busy the CPUs wrk ran on were (split: CPU 0; shared: all). Near 100 %, that side limits the run; a busy wrk also adds its threads' turns on the CPU to the latencies it reports");
    println!("wrk µs/req: CPU time of wrk's pod per request (with shared CPUs, taken from the same CPUs as the server's)");
    if let Some(b) = &baseline {
        println!("iamlet-baseline: {}", b.bin.display());
    }
    let mut verdicts = Vec::new();
    for (l, &load) in loads.iter().enumerate() {
        for (s, sc) in scenarios.iter().enumerate() {
            let [iamlet, nginx, base] = &series[l][s];
            let base = baseline.as_ref().map(|_| base);
            verdicts.push(report(
                &sc.title,
                sc.short,
                (load, placement),
                iamlet,
                nginx,
                base,
            ));
        }
    }
    summary(&verdicts);
    let log = agent.log_text();
    if !log.trim().is_empty() {
        println!(
            "\niamlet logged (warn and above, and the audit log):\n{}",
            log.trim_end()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_server_goes_first_in_turn() {
        assert_eq!(turn_order(1, false), [0, 1]);
        assert_eq!(turn_order(2, false), [1, 0]);
        assert_eq!(turn_order(3, false), [0, 1]);
        assert_eq!(turn_order(1, true), [0, 1, 2]);
        assert_eq!(turn_order(2, true), [1, 2, 0]);
        assert_eq!(turn_order(3, true), [2, 0, 1]);
    }
}

//! `abuse`: what one hostile pod costs another. The release agent serves two pods (static
//! credentials, default limits). For each attack, the attacker pod runs it (see
//! `abuse_client`) while the victim pod does [`VICTIM_REQUESTS`] credential GETs, each on a
//! fresh connection, [`VICTIM_RATE`] a second; the victim's p50/p99 are compared with the same
//! GETs with no attack (run before every attack, so drift shows), and the agent's RSS is read
//! before, during (peak) and [`SETTLE`] after the attack.
//!
//! Goals (reported, never asserted): victim p99 within 2x of its baseline, RSS after within
//! 10 % of before.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use iamlet_tests::{require_privileges, Agent, ChildGuard, FakePod, TestNode};
use serde_json::Value;

use crate::bench_pod::{BENCH_POD_UID, BENCH_ROLE, BENCH_ROLE_ARN, ROLES_PATH};

const VICTIM_UID: &str = BENCH_POD_UID;
const ATTACKER_UID: &str = "9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d";
const VICTIM_REQUESTS: usize = 200;
const VICTIM_RATE: f64 = 20.0;
/// How long the attack runs before the victim starts, so it is at full strength.
const RAMP: Duration = Duration::from_secs(4);
/// How long after the attack the agent's memory is read again.
const SETTLE: Duration = Duration::from_secs(5);

/// (name, kind, connections): the attacks of the hardening issue, plus two floods.
const ATTACKS: &[(&str, &str, usize)] = &[
    ("4096 held keep-alive (GET every 8 s)", "hold", 4096),
    ("10000 idle connections", "idle", 10_000),
    ("4096 slowloris (a header line a second)", "slowloris", 4096),
    ("10000 x 15 KB unfinished headers", "big-headers", 10_000),
    ("request flood (64 keep-alive conns)", "flood", 64),
    ("connect flood (64 loops)", "connect-flood", 64),
];

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .context("VmRSS")?
        .parse()
        .context("VmRSS value")
}

struct Victim {
    p50_us: f64,
    p99_us: f64,
    ok: usize,
    failed: usize,
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    iamlet_tests::stats::percentile(sorted, p).map_or(f64::NAN, |v| v as f64)
}

fn run_victim(pod: &FakePod, exe: &std::path::Path) -> Result<Victim> {
    let mut cmd = pod.command(exe);
    cmd.args(["abuse-client", "victim"])
        .arg(VICTIM_REQUESTS.to_string())
        .arg(VICTIM_RATE.to_string())
        .arg(format!("{ROLES_PATH}{BENCH_ROLE}"));
    let out =
        iamlet_tests::run_with_timeout(&mut cmd, Duration::from_secs(120))?.ensure_success()?;
    let v: Value = serde_json::from_str(out.stdout.trim()).context("victim output")?;
    let mut lat: Vec<u64> = v["latencies_us"]
        .as_array()
        .context("latencies")?
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    lat.sort_unstable();
    let ok = v["statuses"]["200"]
        .as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(0);
    Ok(Victim {
        p50_us: percentile(&lat, 0.5),
        p99_us: percentile(&lat, 0.99),
        ok,
        failed: VICTIM_REQUESTS - ok,
    })
}

fn ms(us: f64) -> String {
    format!("{:.2} ms", us / 1000.0)
}

/// `bench abuse`.
pub(crate) fn bench_abuse() -> Result<()> {
    if let Err(reason) = require_privileges() {
        bail!("the benchmark needs what the privileged tests need: {reason}");
    }
    let exe = std::env::current_exe()?;
    let dir = std::env::temp_dir().join(format!("iamlet-bench-abuse-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let attacker_role = "arn:aws:iam::123456789012:role/attacker";
    std::fs::write(
        dir.join("bindings.yaml"),
        format!(
            "bindings:\n  - cgroup: \"**/kubepods-besteffort-pod{}.slice\"\n    role: {BENCH_ROLE_ARN}\n  - cgroup: \"**/kubepods-besteffort-pod{}.slice\"\n    role: {attacker_role}\n",
            VICTIM_UID.replace('-', "_"),
            ATTACKER_UID.replace('-', "_"),
        ),
    )?;
    std::fs::write(
        dir.join("creds.yaml"),
        format!(
            "credentials:\n  {BENCH_ROLE_ARN}:\n    access_key_id: ASIAVICTIMEXAMPLE001\n    secret_access_key: s\n    session_token: t\n  {attacker_role}:\n    access_key_id: ASIAATTACKEXAMPLE01\n    secret_access_key: s\n    session_token: t\n"
        ),
    )?;
    let node = TestNode::new()?;
    let victim = node.add_pod(&iamlet_tests::besteffort_container_cgroup(VICTIM_UID, 1))?;
    let attacker = node.add_pod(&iamlet_tests::besteffort_container_cgroup(ATTACKER_UID, 2))?;
    let bindings = dir.join("bindings.yaml").display().to_string();
    let creds = dir.join("creds.yaml").display().to_string();
    let agent = Agent::start(
        &node,
        &[
            "--bindings",
            &bindings,
            "--static-credentials",
            &creds,
            "--upstream",
            "off",
            "--log",
            "warn",
        ],
    )?;
    let pid = agent.pid().context("agent pid")?;
    eprintln!(
        "iamlet: {} (pid {pid}), default limits",
        iamlet_tests::agent::agent_bin().display()
    );
    // Warm up: the first requests allocate what every later one reuses.
    run_victim(&victim, &exe)?;

    let mut rows = Vec::new();
    for (name, kind, conns) in ATTACKS {
        eprintln!("attack: {name}");
        let base = run_victim(&victim, &exe)?;
        let before = rss_kib(pid)?;
        let attack_secs = RAMP.as_secs_f64() + VICTIM_REQUESTS as f64 / VICTIM_RATE + 3.0;
        let mut cmd = attacker.command(&exe);
        cmd.args(["abuse-client", "attack", kind])
            .arg(conns.to_string())
            .arg(attack_secs.to_string())
            .stdout(Stdio::piped());
        let mut attack = ChildGuard::spawn(&mut cmd)?;
        let mut peak = before;
        let ramp_end = Instant::now() + RAMP;
        while Instant::now() < ramp_end {
            peak = peak.max(rss_kib(pid)?);
            std::thread::sleep(Duration::from_millis(200));
        }
        let sampler_stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sampler = {
            let stop = sampler_stop.clone();
            std::thread::spawn(move || {
                let mut peak = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    peak = peak.max(rss_kib(pid).unwrap_or(0));
                    std::thread::sleep(Duration::from_millis(200));
                }
                peak
            })
        };
        let under = run_victim(&victim, &exe)?;
        let status = attack
            .wait_timeout(Duration::from_secs(60))?
            .context("the attack did not end")?;
        sampler_stop.store(true, std::sync::atomic::Ordering::Relaxed);
        peak = peak.max(sampler.join().unwrap_or(0));
        let mut report = String::new();
        if let Some(mut out) = attack.stdout.take() {
            use std::io::Read;
            out.read_to_string(&mut report)?;
        }
        if !status.success() {
            bail!("attack {kind} failed ({status}): {report}");
        }
        std::thread::sleep(SETTLE);
        let after = rss_kib(pid)?;
        rows.push((
            name,
            base,
            under,
            before,
            peak,
            after,
            report.trim().to_owned(),
        ));
    }

    println!(
        "victim: {VICTIM_REQUESTS} credential GETs at {VICTIM_RATE}/s, a fresh connection each; baseline = the same GETs with no attack, just before; RSS = agent VmRSS; {} CPUs",
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get)
    );
    println!("| attack | victim p50 (baseline) | victim p99 (baseline) | p99 ratio | victim failures | RSS before | RSS peak | RSS after | after/before | goals |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (name, base, under, before, peak, after, _) in &rows {
        let ratio = under.p99_us / base.p99_us;
        let mem = *after as f64 / *before as f64;
        let goals = if ratio <= 2.0 && mem <= 1.10 && under.failed == 0 {
            "met"
        } else {
            "NOT met"
        };
        println!(
            "| {name} | {} ({}) | {} ({}) | {ratio:.2}x | {} | {before} KiB | {peak} KiB | {after} KiB | {mem:.2} | {goals} |",
            ms(under.p50_us),
            ms(base.p50_us),
            ms(under.p99_us),
            ms(base.p99_us),
            under.failed,
        );
        let _ = under.ok;
    }
    println!("\nattackers (connects made, closed by iamlet, answers they got):");
    for (name, _, _, _, _, _, report) in &rows {
        println!("  {name}: {report}");
    }
    let metrics = agent.metrics(&node)?;
    println!("\niamlet's connection counters:");
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("iamlet_proxy_connections_total"))
    {
        println!("  {line}");
    }
    let log = agent.log_text();
    if !log.trim().is_empty() {
        let lines: Vec<&str> = log.lines().collect();
        println!(
            "\niamlet logged {} lines at warn and above; the last ones:",
            lines.len()
        );
        for line in lines.iter().rev().take(5).rev() {
            println!("  {line}");
        }
    }
    drop(agent);
    calibrate(&exe, &bindings, &creds)?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Memory per connection, served and waiting: one pod holds [`CALIBRATION_CONNS`] idle
/// connections against an agent that serves them all, then against one that lets them all
/// wait; the RSS growth over that many connections is what each costs (what the chart's
/// memory limit is derived from).
fn calibrate(exe: &std::path::Path, bindings: &str, creds: &str) -> Result<()> {
    println!(
        "
memory per connection ({CALIBRATION_CONNS} idle connections of one pod):"
    );
    let n = CALIBRATION_CONNS.to_string();
    for (what, per_pod, waiting) in [
        ("served (hyper connection, read buffer)", n.as_str(), "0"),
        ("waiting for its turn", "1", n.as_str()),
    ] {
        let node = TestNode::new()?;
        let pod = node.add_pod(&iamlet_tests::besteffort_container_cgroup(ATTACKER_UID, 2))?;
        let agent = Agent::start(
            &node,
            &[
                "--bindings",
                bindings,
                "--static-credentials",
                creds,
                "--upstream",
                "off",
                "--log",
                "warn",
                "--max-connections-per-pod",
                per_pod,
                "--max-waiting-per-pod",
                waiting,
                "--header-timeout",
                "60s",
            ],
        )?;
        let pid = agent.pid().context("agent pid")?;
        run_victim(&pod, exe)?;
        let before = rss_kib(pid)?;
        let mut cmd = pod.command(exe);
        cmd.args(["abuse-client", "attack", "idle", &n, "12"])
            .stdout(Stdio::null());
        let mut attack = ChildGuard::spawn(&mut cmd)?;
        std::thread::sleep(Duration::from_secs(8));
        let held = rss_kib(pid)?;
        let _ = attack.wait_timeout(Duration::from_secs(30))?;
        std::thread::sleep(SETTLE);
        let after = rss_kib(pid)?;
        println!(
            "  {what}: RSS {before} KiB -> {held} KiB with the connections -> {after} KiB after: {:.1} KiB per connection",
            (held.saturating_sub(before)) as f64 / CALIBRATION_CONNS as f64
        );
    }
    Ok(())
}

/// Connections held by [`calibrate`].
const CALIBRATION_CONNS: usize = 4000;

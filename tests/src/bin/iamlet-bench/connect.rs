//! `connect`: `connect()` latency with and without the programs attached (the connect hooks,
//! `sock_ops` and the egress filter, which sees every packet of the handshake).

use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use iamlet_tests::{
    require_privileges, run_with_timeout, Agent, ChildGuard, TestNode, IMDS_V4, NODE_PROXY_V4,
};

const ROUNDS: usize = 10;
const PER_ROUND: usize = 500;

/// Inside the pod: connect `n` times to `addr`, print each latency in nanoseconds.
pub(crate) fn client(args: &[String]) -> Result<()> {
    let addr: SocketAddr = args.first().context("address")?.parse()?;
    let n: usize = args.get(1).context("count")?.parse()?;
    let mut out = String::new();
    for _ in 0..n {
        let start = Instant::now();
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        let ns = start.elapsed().as_nanos();
        drop(stream);
        out.push_str(&ns.to_string());
        out.push('\n');
    }
    print!("{out}");
    Ok(())
}

/// In the node: accept and drop connections on each address as fast as possible (a plain
/// listener with a deep backlog, so the baseline never waits on a full accept queue).
pub(crate) fn sink(args: &[String]) -> Result<()> {
    let mut threads = Vec::new();
    for a in args {
        let listener =
            std::net::TcpListener::bind(a.as_str()).with_context(|| format!("binding {a}"))?;
        threads.push(std::thread::spawn(move || {
            for stream in listener.incoming() {
                drop(stream);
            }
        }));
    }
    println!("ready");
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

/// The `p`-quantile of `sorted` nanosecond samples, in microseconds.
pub(crate) fn percentile(sorted: &[u64], p: f64) -> f64 {
    iamlet_tests::stats::percentile(sorted, p).map_or(f64::NAN, |v| v as f64 / 1000.0)
}

pub(crate) fn bench_connect() -> Result<()> {
    if let Err(reason) = require_privileges() {
        bail!("the benchmark needs what the privileged tests need: {reason}");
    }
    let node = TestNode::new()?;
    let pod = node.add_pod("bench")?;
    let plain = SocketAddr::new(NODE_PROXY_V4.into(), 9000);
    let imds = SocketAddr::new(IMDS_V4.into(), 80);
    // The agent's own listener: where the redirect takes a pod's connect. Without programs
    // the same connect goes there directly, so both cases meet the same server on the same
    // hop and differ only by the programs.
    let listener = SocketAddr::new(NODE_PROXY_V4.into(), iamlet_tests::PROXY_PORT);
    let exe = std::env::current_exe()?;
    let mut sink = node.command(&exe);
    sink.args(["sink", &plain.to_string()])
        .stdout(std::process::Stdio::null());
    let _sink = ChildGuard::spawn(&mut sink)?;
    node.wait_listening(plain, Duration::from_secs(10))?;
    // Extra agent flags for an A/B run, e.g. IAMLET_BENCH_AGENT_ARGS="--forward-guard off".
    let extra = std::env::var("IAMLET_BENCH_AGENT_ARGS").unwrap_or_default();
    let mut args = vec!["--log", "warn"];
    args.extend(extra.split_whitespace());
    let _agent = Agent::start(&node, &args)?;

    let cases: [(&str, bool, SocketAddr); 4] = [
        ("redirected dst, programs attached", true, imds),
        ("listener direct, no programs", false, listener),
        ("other dst, programs attached", true, plain),
        ("other dst, no programs", false, plain),
    ];
    let mut samples: Vec<Vec<u64>> = vec![Vec::new(); cases.len()];
    for _ in 0..ROUNDS {
        for (i, (_, attached, addr)) in cases.iter().enumerate() {
            let mut cmd = if *attached {
                pod.command(&exe)
            } else {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", pod.netns_path().display()))
                    .arg("--")
                    .arg(&exe);
                c
            };
            cmd.args(["connect-client", &addr.to_string(), &PER_ROUND.to_string()]);
            let out = run_with_timeout(&mut cmd, Duration::from_secs(60))?.ensure_success()?;
            for line in out.stdout.lines() {
                samples[i].push(line.trim().parse()?);
            }
        }
    }
    println!(
        "connect() latency from a fake pod over veth, {ROUNDS} interleaved rounds x {PER_ROUND} connects per case"
    );
    println!(
        "{:<36} {:>10} {:>10} {:>10}",
        "case", "p50 µs", "p90 µs", "p99 µs"
    );
    let mut medians = Vec::new();
    for (i, (name, _, _)) in cases.iter().enumerate() {
        let s = &mut samples[i];
        s.sort_unstable();
        let (p50, p90, p99) = (percentile(s, 0.5), percentile(s, 0.9), percentile(s, 0.99));
        medians.push(p50);
        println!("{name:<36} {p50:>10.1} {p90:>10.1} {p99:>10.1}");
    }
    println!(
        "ratio (attached / no programs), p50: redirected dst {:.2}x, other dst {:.2}x",
        medians[0] / medians[1],
        medians[2] / medians[3]
    );
    Ok(())
}

// ---- bench imds -------------------------------------------------------------------------

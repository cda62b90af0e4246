//! The two sides of `bench abuse` that run inside fake pods (`iamlet-bench abuse-client ...`):
//!
//! * `victim N RATE PATH`: N GETs of PATH, RATE per second, each on a fresh connection to
//!   169.254.169.254:80 (as an SDK refreshing credentials does); prints the latencies (µs,
//!   connect to last byte) and statuses as JSON.
//! * `attack KIND CONNS SECONDS`: CONNS concurrent attackers for SECONDS, each re-opening its
//!   connection a second after the server closes it; prints what happened as JSON. Kinds:
//!   `hold` (a keep-alive GET every 8 s), `idle` (connect, send nothing), `slowloris` (a
//!   header line a second, never done), `big-headers` (15 KB of headers, never done),
//!   `flood` (keep-alive GETs back to back), `connect-flood` (connect and close, no pause).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const IMDS: &str = "169.254.169.254:80";
const GET: &[u8] = b"GET /latest/meta-data/iam/security-credentials/ HTTP/1.1\r\nHost: x\r\n\r\n";

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?)
}

/// Raises the soft open-file limit to the hard one (an attacker opens thousands).
fn raise_nofile() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = limit.maximum;
    let _ = setrlimit(Resource::Nofile, limit);
}

/// Reads one HTTP response (head, then Content-Length bytes); returns its status.
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<u16> {
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let status: u16 = head
                .split_whitespace()
                .nth(1)
                .context("status line")?
                .parse()?;
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())
                        .flatten()
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + length {
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    bail!("closed mid-body");
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Ok(status);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("closed before an answer");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn victim(args: &[String]) -> Result<()> {
    let n: usize = args.first().context("N")?.parse()?;
    let rate: f64 = args.get(1).context("RATE")?.parse()?;
    let path = args.get(2).context("PATH")?.clone();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let rt = runtime()?;
    let (latencies, statuses, errors) = rt.block_on(async move {
        let mut latencies = Vec::with_capacity(n);
        let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
        let mut errors = Vec::new();
        let start = Instant::now();
        let mut buf = Vec::new();
        for i in 0..n {
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
            let t = Instant::now();
            let once = async {
                let mut s = TcpStream::connect(IMDS).await?;
                s.set_nodelay(true)?;
                s.write_all(request.as_bytes()).await?;
                read_response(&mut s, &mut buf).await
            };
            match tokio::time::timeout(Duration::from_secs(15), once).await {
                Ok(Ok(status)) => {
                    latencies.push(micros(t.elapsed()));
                    *statuses.entry(status.to_string()).or_default() += 1;
                }
                Ok(Err(e)) => {
                    latencies.push(micros(t.elapsed()));
                    errors.push(e.to_string());
                }
                Err(_) => {
                    latencies.push(15_000_000);
                    errors.push("timed out after 15 s".into());
                }
            }
        }
        (latencies, statuses, errors)
    });
    println!(
        "{}",
        serde_json::json!({ "latencies_us": latencies, "statuses": statuses, "errors": errors })
    );
    Ok(())
}

#[derive(Default)]
struct Counts {
    connects: AtomicU64,
    connect_errors: AtomicU64,
    closed_by_server: AtomicU64,
    answers: AtomicU64,
}

/// One attacker: opens its connection, does its kind of harm until the server closes it or
/// time is up, and opens again a second later.
async fn attacker(kind: &'static str, deadline: Instant, counts: Arc<Counts>) {
    let mut buf = Vec::new();
    while Instant::now() < deadline {
        let Ok(Ok(mut s)) =
            tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(IMDS)).await
        else {
            counts.connect_errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        counts.connects.fetch_add(1, Ordering::Relaxed);
        if kind == "connect-flood" {
            drop(s);
            tokio::task::yield_now().await;
            continue;
        }
        let until_closed = async {
            match kind {
                "hold" | "flood" => loop {
                    s.write_all(GET).await?;
                    read_response(&mut s, &mut buf).await?;
                    counts.answers.fetch_add(1, Ordering::Relaxed);
                    if kind == "hold" {
                        tokio::time::sleep(Duration::from_secs(8)).await;
                    }
                },
                "slowloris" => {
                    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await?;
                    loop {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        s.write_all(b"X-Slow: 1\r\n").await?;
                    }
                }
                "big-headers" => {
                    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await?;
                    let line = format!("X-Pad: {}\r\n", "a".repeat(1000));
                    for _ in 0..15 {
                        s.write_all(line.as_bytes()).await?;
                    }
                    let mut byte = [0u8; 1];
                    let _closed_or_answered = s.read(&mut byte).await?;
                    Ok::<(), anyhow::Error>(())
                }
                _ => {
                    let mut byte = [0u8; 1];
                    let _closed_or_answered = s.read(&mut byte).await?;
                    Ok(())
                }
            }
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if let Ok(_closed) = tokio::time::timeout(left, until_closed).await {
            counts.closed_by_server.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

fn attack(args: &[String]) -> Result<()> {
    let kind: &'static str = match args.first().map(String::as_str) {
        Some("hold") => "hold",
        Some("idle") => "idle",
        Some("slowloris") => "slowloris",
        Some("big-headers") => "big-headers",
        Some("flood") => "flood",
        Some("connect-flood") => "connect-flood",
        other => bail!("unknown attack {other:?}"),
    };
    let conns: usize = args.get(1).context("CONNS")?.parse()?;
    let seconds: f64 = args.get(2).context("SECONDS")?.parse()?;
    raise_nofile();
    let counts = Arc::new(Counts::default());
    let rt = runtime()?;
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..conns {
            tasks.push(tokio::spawn(attacker(kind, deadline, counts.clone())));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
    println!(
        "{}",
        serde_json::json!({
            "kind": kind,
            "connects": counts.connects.load(Ordering::Relaxed),
            "connect_errors": counts.connect_errors.load(Ordering::Relaxed),
            "closed_by_server": counts.closed_by_server.load(Ordering::Relaxed),
            "answers": counts.answers.load(Ordering::Relaxed),
        })
    );
    Ok(())
}

/// `abuse-client victim ...` / `abuse-client attack ...`.
pub(crate) fn client(args: &[String]) -> Result<()> {
    match args.first().map(String::as_str) {
        Some("victim") => victim(&args[1..]),
        Some("attack") => attack(&args[1..]),
        _ => bail!("usage: abuse-client victim N RATE PATH | attack KIND CONNS SECONDS"),
    }
}

/// `d` in whole microseconds.
fn micros(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

//! Benchmarks, each measured side by side with its baseline in one run (rounds interleaved so
//! machine noise hits every case alike).
//!
//! `cargo xtask bench connect`: `connect()` latency from a fake pod, with and without iamlet's
//! programs attached, to a redirected destination (169.254.169.254:80) and a non-redirected
//! one. "Without" runs the same client in the same network namespace but outside the attached
//! cgroup, so no program runs for its sockets: instead of 169.254.169.254:80 it connects to the
//! agent's listener itself, where the redirect takes the pod's connect.
//!
//! `cargo xtask bench imds`: HTTP throughput and latency of iamlet's metadata API against
//! nginx serving the same bytes on the same hop (see [`bench_imds`]).
//!
//! `cargo xtask bench requests`: the agent's user-space instructions and allocations per
//! request of each route, counted by callgrind (see [`requests`]).
//!
//! `cargo xtask bench memory`: the agent's memory with 250 pods / 100 roles in its index,
//! against the same agent on an empty cluster (see [`memory`]).
//!
//! `cargo xtask bench abuse`: one pod attacks the metadata proxy while another asks for its
//! credentials, against the same requests with no attack (see [`abuse`]).
#![allow(
    clippy::too_many_lines,
    reason = "a test scenario or bench driver reads top to bottom, step by step"
)]

mod abuse;
mod abuse_client;
mod bench_pod;
mod busy;
mod connect;
mod imds;
mod imds_report;
mod latency;
mod memory;
mod nginx;
mod options;
mod requests;
mod wrk;

use anyhow::{bail, Result};

/// What `iamlet-bench` says to anything it does not know.
const USAGE: &str =
    "usage: iamlet-bench <connect|imds|requests|memory|abuse> (no further arguments: \
    run it as `cargo xtask bench <name> [options]`, which passes the options on)";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The benches take their options from the environment xtask sets; an argument after one
    // of them is a mistake (`--help`, `--rounds 7`), not something to ignore and run anyway.
    if matches!(
        args.first().map(String::as_str),
        Some("connect" | "imds" | "requests" | "memory" | "abuse")
    ) && args.len() > 1
    {
        bail!("{}: unexpected argument {:?}\n{USAGE}", args[0], args[1]);
    }
    match args.first().map(String::as_str) {
        Some("connect") => connect::bench_connect(),
        Some("connect-client") => connect::client(&args[1..]),
        Some("sink") => connect::sink(&args[1..]),
        Some("imds") => imds::bench_imds(),
        Some("requests") => requests::bench_requests(),
        Some("memory") => memory::bench_memory(),
        Some("memory-client") => memory::client(&args[1..]),
        Some("abuse") => abuse::bench_abuse(),
        Some("abuse-client") => abuse_client::client(&args[1..]),
        _ => bail!("{USAGE}"),
    }
}

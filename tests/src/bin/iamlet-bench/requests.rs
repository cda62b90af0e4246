//! `requests`: the agent's own work for one request of each route, counted, not timed. The
//! agent runs under callgrind (valgrind), which counts every instruction it executes in user
//! space and every call to the allocator. A pod (curl) sends each route's request once and
//! then [`REQUESTS`] + 1 times, over one keep-alive connection; the difference divided by
//! [`REQUESTS`] is one request's cost, the connection's own (accept, attribution, close)
//! cancelling out. One route asks for a connection per request (`Connection: close`), as an
//! SDK refreshing its credentials now and then does: there the connection's cost is the
//! request's.
//!
//! Why counts: `bench imds`'s CPU time per request moves by about 10 % from one run to the next
//! (the scheduler, the other CPU's load), so a change of a few hundred nanoseconds cannot be
//! seen there. Instructions and allocations move by 2 % at most (the agent's background work,
//! a check of its datapath once a second, lands in some phases and not others), so two builds
//! compare closely: `--baseline` runs an older build the same way, after this one.
//!
//! What counts leave out: the kernel's work (the two system calls of a request, most of its
//! CPU time: see README, "Where the tail comes from"), and what an instruction costs (a cache
//! miss is one instruction).

mod callgrind;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use iamlet_tests::{run_with_timeout, FakePod, IMDS_V4};

use crate::bench_pod::{
    creds_path, fetch_flow, require_bench_tools, start_agent, write_agent_files, TempDir,
    BENCH_POD_UID, ROLES_PATH, TOKEN_PATH, TTL_HEADER,
};
use crate::wrk::Placement;
use callgrind::Counts;

/// Requests of each route in the measured phase (plus the one of the phase subtracted).
pub(crate) const REQUESTS: u64 = 1000;

/// A directory to copy callgrind's dumps into, for `callgrind_annotate` (each route's
/// measured phase is the even-numbered dump of its build).
const KEEP_DUMPS: &str = "IAMLET_BENCH_KEEP_DUMPS";

/// How much slower than native the agent runs under callgrind, for the harness's deadlines.
const TIME_SCALE: &str = "10";

/// One route as a pod's SDK asks for it.
struct Route {
    name: &'static str,
    method: &'static str,
    path: String,
    /// Whether the request carries the pod's IMDSv2 token (the PUT carries its TTL instead).
    token: bool,
    /// Whether each request has a connection of its own (`Connection: close`).
    fresh: bool,
}

fn routes() -> [Route; 5] {
    [
        Route {
            name: "PUT token",
            method: "PUT",
            path: TOKEN_PATH.into(),
            token: false,
            fresh: false,
        },
        Route {
            name: "GET role list (token)",
            method: "GET",
            path: ROLES_PATH.into(),
            token: true,
            fresh: false,
        },
        Route {
            name: "GET credentials (token)",
            method: "GET",
            path: creds_path(),
            token: true,
            fresh: false,
        },
        Route {
            name: "GET credentials (IMDSv1)",
            method: "GET",
            path: creds_path(),
            token: false,
            fresh: false,
        },
        Route {
            name: "GET credentials, a connection each",
            method: "GET",
            path: creds_path(),
            token: true,
            fresh: true,
        },
    ]
}

/// The agent `bin` under callgrind, on a node of its own; `tag` names its files.
/// Returns the cost per request of each route, in [`routes`] order.
fn measure_build(bin: &Path, dir: &TempDir, tag: &str) -> Result<Vec<Counts>> {
    let out = dir.path(&format!("callgrind-{tag}"));
    let launcher = dir.path(&format!("callgrind-{tag}.sh"));
    std::fs::write(
        &launcher,
        format!(
            "#!/bin/sh\nexec valgrind --tool=callgrind --callgrind-out-file='{}' '{}' \"$@\"\n",
            out.display(),
            bin.display()
        ),
    )?;
    std::fs::set_permissions(
        &launcher,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let (_node, pod, agent) = start_agent(dir, &launcher, Placement::Shared, tag)?;
    let pid = agent.pid().context("agent pid")?;
    let base = format!("http://{IMDS_V4}");
    // Everything a pod's first requests set up (its token memo, the metrics' series, the
    // rendered credentials) is set up before anything is counted.
    let served = fetch_flow(&pod, &base, dir, tag)?;
    let token = String::from_utf8(served.token).context("token is not text")?;
    let mut dumps = Dumps { out, taken: 0, pid };
    let mut costs = Vec::new();
    for route in routes() {
        send(&pod, &base, &route, &token, 1)?;
        dumps.zero()?;
        send(&pod, &base, &route, &token, 1)?;
        let one = dumps.take()?;
        send(&pod, &base, &route, &token, REQUESTS + 1)?;
        let many = dumps.take()?;
        costs.push(many.minus(&one).per(REQUESTS));
        eprintln!("{tag}: {} measured", route.name);
    }
    Ok(costs)
}

/// The dumps callgrind writes for one agent (`<out>.1`, `<out>.2`, ...).
struct Dumps {
    out: PathBuf,
    taken: u32,
    pid: u32,
}

impl Dumps {
    fn control(&self, what: &str) -> Result<()> {
        run_with_timeout(
            Command::new("callgrind_control").args([what, &self.pid.to_string()]),
            Duration::from_secs(60),
        )?
        .ensure_success()?;
        Ok(())
    }

    /// Sets the agent's counters to zero.
    fn zero(&mut self) -> Result<()> {
        self.control("--zero")
    }

    /// The counts since the last zero or dump (a dump zeroes them too).
    fn take(&mut self) -> Result<Counts> {
        self.control("--dump")?;
        self.taken += 1;
        let path = PathBuf::from(format!("{}.{}", self.out.display(), self.taken));
        if let Some(keep) = std::env::var_os(KEEP_DUMPS) {
            let to = Path::new(&keep).join(path.file_name().unwrap_or_default());
            std::fs::copy(&path, &to).with_context(|| format!("{KEEP_DUMPS}: {}", to.display()))?;
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading callgrind's dump {}", path.display()))?;
        callgrind::parse(&text).with_context(|| format!("in {}", path.display()))
    }
}

/// `n` requests of `route` from the pod, one after the other over one connection (curl reuses
/// it for every URL of one run) unless the route wants one each; each must be answered with
/// 200.
fn send(pod: &FakePod, base: &str, route: &Route, token: &str, n: u64) -> Result<()> {
    let mut cmd = pod.command("curl");
    cmd.args([
        "-sS",
        "--fail-early",
        "-f",
        "-o",
        "/dev/null",
        "-X",
        route.method,
    ]);
    if route.method == "PUT" {
        cmd.args(["-H", TTL_HEADER]);
    }
    if route.token {
        cmd.args(["-H", &format!("X-aws-ec2-metadata-token: {token}")]);
    }
    if route.fresh {
        cmd.args(["-H", "Connection: close"]);
    }
    // One `-o` per URL: curl writes each answer where the `-o` of its turn says.
    let url = format!("{base}{}", route.path);
    for i in 0..n {
        if i > 0 {
            cmd.args(["-o", "/dev/null"]);
        }
        cmd.arg(&url);
    }
    let run = run_with_timeout(&mut cmd, Duration::from_secs(120))?;
    ensure!(
        run.success(),
        "{} {}: curl failed: {}",
        route.method,
        route.path,
        run.stderr.trim()
    );
    Ok(())
}

/// `bench requests`: see the module doc.
pub(crate) fn bench_requests() -> Result<()> {
    require_bench_tools(&["valgrind", "callgrind_control", "curl"])?;
    // The harness waits for a ready agent, and curl for its answers, this much longer.
    std::env::set_var(iamlet_tests::time_scale::TIME_SCALE_ENV, TIME_SCALE);
    let dir = TempDir::new("requests")?;
    write_agent_files(&dir, &BENCH_POD_UID.replace('-', "_"))?;
    let bin = iamlet_tests::agent::agent_bin();
    eprintln!("iamlet: {}", bin.display());
    let current = measure_build(&bin, &dir, "iamlet")?;
    let baseline = match std::env::var_os("IAMLET_BASELINE_BIN") {
        Some(b) => {
            let b = PathBuf::from(b);
            eprintln!("baseline: {}", b.display());
            Some(measure_build(&b, &dir, "baseline")?)
        }
        None => None,
    };
    print!("{}", report(&current, baseline.as_deref()));
    Ok(())
}

/// The table: per request of each route, against the baseline's if there is one.
fn report(current: &[Counts], baseline: Option<&[Counts]>) -> String {
    let mut out = format!(
        "user-space instructions and allocator calls per request ({REQUESTS} requests, counted \
         by callgrind)\n{:<36} {:>13} {:>10} {:>7}",
        "route", "instructions", "SHA-256 *", "allocs"
    );
    if baseline.is_some() {
        out.push_str(&format!(
            " {:>13} {:>10} {:>7} {:>13}",
            "baseline", "SHA-256 *", "allocs", "instr. ratio"
        ));
    }
    out.push('\n');
    for (i, route) in routes().iter().enumerate() {
        let now = current[i];
        out.push_str(&format!(
            "  {:<34} {:>13.0} {:>10.0} {:>7.1}",
            route.name, now.instructions, now.sha256, now.allocations
        ));
        if let Some(before) = baseline.map(|b| b[i]) {
            out.push_str(&format!(
                " {:>13.0} {:>10.0} {:>7.1} {:>12.3}x",
                before.instructions,
                before.sha256,
                before.allocations,
                now.instructions / before.instructions
            ));
        }
        out.push('\n');
    }
    out.push_str(
        "* of the instructions, those of the portable SHA-256 (token minting and checking): \
         valgrind does not emulate the CPU's SHA instructions, which the agent uses where the \
         CPU has them, for a few hundred instructions a token\n",
    );
    out
}

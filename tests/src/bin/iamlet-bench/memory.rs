//! `memory`: the agent's memory with [`PODS`] pods / [`ROLES`] roles in its index, against the
//! same agent (same binary, same flags) watching an empty cluster.
//!
//! Two fake nodes live through the whole run, each with its own fake API server (and moto):
//!
//! * baseline: an empty cluster, no pod cgroups;
//! * loaded: [`NAMESPACES`] namespaces (each permitting its own roles by kiam's regex
//!   annotation), [`ACCOUNTS_PER_NAMESPACE`] service accounts each, [`PODS`] pods on this node
//!   and [`OTHER_NODE_PODS`] on other nodes (filtered out by the agent's field selector), with
//!   roles spread over [`ROLES`] names by the `iam.amazonaws.com/role` annotation; each pod
//!   has a kubelet-style cgroup (the three QoS layouts) with its real UID.
//!
//! Both credential sources are measured ([`Mode`]): static credentials for the [`ROLES`]
//! roles (one rendered document per role), and the STS engine against moto (one session per
//! pod, fetched ahead when the pod appears; skipped if moto is not installed).
//!
//! Each round starts a fresh agent on each side (which side first alternates between rounds),
//! waits for its three watches (namespaces, service accounts, then pods, opened only once the
//! pod list was received) and, with STS, for the prefetch; lets it settle and reads
//! `/proc/<pid>/status` and `smaps_rollup`. On the loaded side that is the "indexed" stage;
//! then every pod runs the SDK flow once (PUT token, GET role list, GET credentials, each
//! answer checked: every pod is proven indexed and its credentials rendered) and the agent is
//! read again ("served", the figure compared with the baseline), then once more ("served
//! twice": growth there would hint at a leak). Last, `malloc_trim(0)` is called in the agent
//! through gdb and it is read again on both sides: glibc keeps freed memory (the transient
//! peak of decoding the pod list, startup), and what remains after the trim is an upper bound
//! of the live data.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use iamlet_tests::agent::ADMIN_ADDR;
use iamlet_tests::kube_fake::{FakeApiServer, KubeControl, RemoteApiServer};
use iamlet_tests::sts::{sts_available, MotoSts};
use iamlet_tests::{require_privileges, run_with_timeout, Agent, FakePod, TestNode, IMDS_V4};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};

use crate::imds::{ROLES_PATH, TOKEN_PATH};

mod cluster;
use crate::wrk::median;
use cluster::{credentials_yaml, publish, PodDesc};

/// Pods on the agent's node.
const PODS: usize = 250;
/// Distinct role names the pods are annotated with.
const ROLES: usize = 100;
/// Namespaces; each owns `ROLES / NAMESPACES` roles.
const NAMESPACES: usize = 25;
/// Service accounts per namespace: `default` plus one per role of the namespace.
const ACCOUNTS_PER_NAMESPACE: usize = 1 + ROLES / NAMESPACES;
/// Pods on other nodes (the agent's field selector must leave them out).
const OTHER_NODE_PODS: usize = 100;
const OTHER_NODES: usize = 4;
/// Pod cgroups sharing one network namespace (the agent names pods by cgroup, not by address;
/// sharing keeps the number of veths low).
const PODS_PER_NETNS: usize = 10;
const ROUNDS: usize = 3;
/// Quiet time before memory is read.
const SETTLE: Duration = Duration::from_secs(3);
const NODE: &str = "node-1";
const ACCOUNT: &str = "123456789012";
const LOG: &str = "warn";

/// One agent's memory, in KiB (bytes for none).
#[derive(Clone, Copy, Debug, Default)]
struct Mem {
    rss: u64,
    hwm: u64,
    rss_anon: u64,
    pss: u64,
    private_dirty: u64,
    threads: u64,
    /// `memlock` of the BPF maps it holds open (kernel memory, not in its RSS).
    bpf_memlock: u64,
}

/// One figure of a [`Mem`].
type Field = fn(&Mem) -> u64;

const MEM_ROWS: [(&str, Field); 6] = [
    ("VmRSS", |m| m.rss),
    ("VmHWM", |m| m.hwm),
    ("RssAnon", |m| m.rss_anon),
    ("Pss", |m| m.pss),
    ("Private_Dirty", |m| m.private_dirty),
    ("BPF maps memlock", |m| m.bpf_memlock),
];

fn kib_field(text: &str, key: &str) -> Result<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no {key} line"))
}

fn read_mem(pid: u32) -> Result<Mem> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    Ok(Mem {
        rss: kib_field(&status, "VmRSS")?,
        hwm: kib_field(&status, "VmHWM")?,
        rss_anon: kib_field(&status, "RssAnon")?,
        threads: kib_field(&status, "Threads")?,
        pss: kib_field(&rollup, "Pss")?,
        private_dirty: kib_field(&rollup, "Private_Dirty")?,
        bpf_memlock: bpf_memlock_kib(pid),
    })
}

/// Sum of `memlock` over the distinct BPF maps `pid` has open, in KiB.
fn bpf_memlock_kib(pid: u32) -> u64 {
    let mut seen = HashSet::new();
    let mut bytes = 0;
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    for fd in fds.flatten() {
        if std::fs::read_link(fd.path()).map_or(true, |l| l != Path::new("anon_inode:bpf-map")) {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        let field = |k: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(k)?.trim().parse::<u64>().ok())
        };
        if let (Some(id), Some(memlock)) = (field("map_id:"), field("memlock:")) {
            if seen.insert(id) {
                bytes += memlock;
            }
        }
    }
    bytes / 1024
}

/// Where the agent gets credentials.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `--static-credentials`: one document per role, no credentials engine.
    Static,
    /// `--sts-endpoint` (moto): the STS engine, one cached session per pod (role + session
    /// name), fetched ahead when a pod appears.
    Sts,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Static => "static credentials",
            Mode::Sts => "STS (moto)",
        }
    }
}

/// The engine's counters from the agent's `/metrics` (all `None` without an engine).
#[derive(Clone, Copy, Debug, Default)]
struct EngineStats {
    cache_entries: Option<u64>,
    sts_calls: Option<u64>,
}

fn engine_stats(node: &TestNode) -> Result<EngineStats> {
    let url = format!("http://{ADMIN_ADDR}/metrics");
    let out = node
        .run_timeout(&["curl", "-sf", "-m", "2", &url], Duration::from_secs(5))?
        .ensure_success()?;
    // By suffix: the registry's prefix is applied to the engine's already prefixed names
    // (`iamlet_iamlet_credentials_cache_entries`).
    let metric = |suffix: &str| {
        out.stdout.lines().find_map(|l| {
            let (name, value) = l.split_once(' ')?;
            if l.starts_with('#') || !name.ends_with(suffix) {
                return None;
            }
            value.trim().parse().ok()
        })
    };
    Ok(EngineStats {
        cache_entries: metric("_credentials_cache_entries"),
        sts_calls: metric("_sts_calls_total"),
    })
}

/// `malloc_trim(0)` in `pid`, called through gdb; whether it ran.
fn malloc_trim(pid: u32) -> bool {
    let mut cmd = std::process::Command::new("gdb");
    cmd.args(["-p", &pid.to_string(), "-batch", "-nx", "-ex"])
        .arg("call (int) malloc_trim(0)");
    matches!(
        run_with_timeout(&mut cmd, Duration::from_secs(30)),
        Ok(out) if out.success() && out.stdout.contains("$1 = ")
    )
}

/// A fake node with its API server (and moto, for [`Mode::Sts`]).
struct Side {
    label: &'static str,
    pods: Vec<(FakePod, String)>,
    // Drop order: pods and moto before the node.
    moto: Option<MotoSts>,
    kubeconfig: String,
    creds: String,
    api: RemoteApiServer,
    node: TestNode,
}

impl Side {
    fn new(label: &'static str, dir: &Path, creds: &Path, sts: bool) -> Result<Side> {
        let node = TestNode::new()?;
        let api = FakeApiServer::start_in_node(&node)?;
        let kubeconfig = dir.join(format!("kubeconfig-{label}"));
        api.write_kubeconfig(&kubeconfig)?;
        let moto = if sts {
            Some(MotoSts::start(&node)?)
        } else {
            None
        };
        Ok(Side {
            label,
            pods: Vec::new(),
            moto,
            kubeconfig: kubeconfig.display().to_string(),
            creds: creds.display().to_string(),
            api,
            node,
        })
    }

    /// Starts the agent and waits until it watches pods (their list received).
    fn start_agent(&self, mode: Mode) -> Result<Agent> {
        let base = format!("arn:aws:iam::{ACCOUNT}:role/");
        let mut args = vec![
            "--kubeconfig",
            &self.kubeconfig,
            "--node-name",
            NODE,
            "--base-role-arn",
            &base,
            "--upstream",
            "off",
            "--log",
            LOG,
        ];
        let endpoint;
        match mode {
            Mode::Static => args.extend(["--static-credentials", &self.creds]),
            Mode::Sts => {
                endpoint = self
                    .moto
                    .as_ref()
                    .context("moto is not running")?
                    .endpoint();
                args.extend(["--sts-endpoint", &endpoint, "--region", "us-east-1"]);
            }
        }
        let agent = Agent::start(&self.node, &args)?;
        let pid = agent.pid().context("agent pid")?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        ensure!(
            comm.trim() == "iamlet",
            "pid {pid} is {comm:?}, not the agent"
        );
        // Namespaces, service accounts, then pods (opened once the pod list was received).
        self.api
            .wait_for_watches(3, Duration::from_secs(30))
            .with_context(|| format!("{}: agent log:\n{}", self.label, agent.log_text()))?;
        Ok(agent)
    }

    /// With the STS engine: waits until it has fetched credentials for every pod (prefetch),
    /// at most 60 s.
    fn wait_prefetch(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let calls = engine_stats(&self.node)?.sts_calls;
            if calls.is_none_or(|n| n >= PODS as u64) {
                return Ok(());
            }
            if Instant::now() > deadline {
                eprintln!(
                    "{}: prefetch incomplete after 60 s: {calls:?} STS calls",
                    self.label
                );
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the agent and closes what is left of its watches, so the next agent's count
    /// starts from zero.
    fn stop_agent(&self, mut agent: Agent) -> Result<()> {
        let log = agent.log_text();
        let status = agent.stop()?;
        ensure!(
            status.success(),
            "{}: agent exited with {status}",
            self.label
        );
        if !log.trim().is_empty() {
            eprintln!("{}: iamlet logged:\n{}", self.label, log.trim_end());
        }
        self.api.end_watches()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.api.state()?.watches > 0 {
            ensure!(
                Instant::now() < deadline,
                "{}: watches still open",
                self.label
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Every pod runs the SDK flow once, checking the answers.
    fn serve_all(&self, exe: &Path, agent: &Agent) -> Result<Duration> {
        let start = Instant::now();
        for (pod, role) in &self.pods {
            let mut cmd = pod.command(exe);
            cmd.args(["memory-client", role]);
            run_with_timeout(&mut cmd, Duration::from_secs(20))?
                .ensure_success()
                .with_context(|| {
                    format!(
                        "pod {} (role {role}); iamlet logged:\n{}",
                        pod.name(),
                        agent.log_text()
                    )
                })?;
        }
        Ok(start.elapsed())
    }
}

/// One HTTP/1.1 request to the metadata service (one connection, `Connection: close`);
/// answers the status and body.
fn request(method: &str, path: &str, header: Option<(&str, &str)>) -> Result<(u16, String)> {
    let addr = SocketAddr::new(IMDS_V4.into(), 80);
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {IMDS_V4}\r\nConnection: close\r\n");
    if let Some((k, v)) = header {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if method == "PUT" {
        req.push_str("Content-Length: 0\r\n");
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let raw = String::from_utf8(raw).context("answer is not UTF-8")?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .with_context(|| format!("{method} {path}: no end of headers in {raw:?}"))?;
    ensure!(
        !head.to_ascii_lowercase().contains("transfer-encoding"),
        "{method} {path}: chunked answer"
    );
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("{method} {path}: status line {head:?}"))?;
    Ok((status, body.to_owned()))
}

/// Inside a pod: the SDK flow (PUT token, GET role list, GET credentials with the token);
/// fails unless the role list is exactly `role` and the credentials are a success document.
pub fn client(args: &[String]) -> Result<()> {
    let role = args.first().context("role")?;
    let (status, token) = request(
        "PUT",
        TOKEN_PATH,
        Some(("X-aws-ec2-metadata-token-ttl-seconds", "21600")),
    )?;
    ensure!(status == 200, "PUT {TOKEN_PATH}: {status} {token}");
    let with = Some(("X-aws-ec2-metadata-token", token.as_str()));
    let (status, roles) = request("GET", ROLES_PATH, with)?;
    ensure!(
        status == 200 && roles == *role,
        "GET {ROLES_PATH}: {status} {roles:?}, wanted {role:?}"
    );
    let path = format!("{ROLES_PATH}{role}");
    let (status, body) = request("GET", &path, with)?;
    ensure!(status == 200, "GET {path}: {status} {body}");
    let doc: Value = serde_json::from_str(&body).context("credentials are not JSON")?;
    ensure!(
        doc["Code"] == "Success" && doc["AccessKeyId"].as_str().is_some_and(|k| !k.is_empty()),
        "GET {path}: {body}"
    );
    Ok(())
}

/// One reading: memory and the credentials cache size.
type Reading = (Mem, Option<u64>);

/// Settles, then reads the agent's memory (and the credentials cache size).
fn measure(side: &Side, agent: &Agent) -> Result<Reading> {
    std::thread::sleep(SETTLE);
    let pid = agent.pid().context("agent pid")?;
    Ok((read_mem(pid)?, engine_stats(&side.node)?.cache_entries))
}

/// Frees what the allocator keeps (`malloc_trim(0)`), then reads again: what is left is
/// closer to live data. `None` if gdb could not do it.
fn measure_trimmed(side: &Side, agent: &Agent) -> Result<Option<Reading>> {
    let pid = agent.pid().context("agent pid")?;
    if !malloc_trim(pid) {
        return Ok(None);
    }
    std::thread::sleep(Duration::from_millis(500));
    Ok(Some((
        read_mem(pid)?,
        engine_stats(&side.node)?.cache_entries,
    )))
}

/// Readings of one stage over the rounds.
#[derive(Default)]
struct Stage {
    runs: Vec<Mem>,
    cache: Vec<Option<u64>>,
}

impl Stage {
    fn push(&mut self, (m, c): Reading) {
        self.runs.push(m);
        self.cache.push(c);
    }

    fn median(&self, f: Field) -> f64 {
        median(self.runs.iter().map(|m| f(m) as f64).collect())
    }

    fn cache_median(&self) -> String {
        let v: Vec<f64> = self.cache.iter().flatten().map(|&n| n as f64).collect();
        if v.is_empty() {
            "-".to_owned()
        } else {
            format!("{:.0}", median(v))
        }
    }

    fn cache_text(&self) -> String {
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
struct Results {
    base: Stage,
    base_trimmed: Stage,
    indexed: Stage,
    served: Stage,
    again: Stage,
    trimmed: Stage,
    serve_times: Vec<Duration>,
}

/// One round of `mode`: a fresh agent on each side, the loaded side's stages.
fn round(
    mode: Mode,
    loaded_first: bool,
    baseline: &Side,
    loaded: &Side,
    exe: &Path,
    r: &mut Results,
) -> Result<()> {
    let order = if loaded_first {
        [true, false]
    } else {
        [false, true]
    };
    for is_loaded in order {
        if is_loaded {
            let agent = loaded.start_agent(mode)?;
            loaded.wait_prefetch()?;
            r.indexed.push(measure(loaded, &agent)?);
            r.serve_times.push(loaded.serve_all(exe, &agent)?);
            r.served.push(measure(loaded, &agent)?);
            r.serve_times.push(loaded.serve_all(exe, &agent)?);
            r.again.push(measure(loaded, &agent)?);
            if let Some(t) = measure_trimmed(loaded, &agent)? {
                r.trimmed.push(t);
            }
            loaded.stop_agent(agent)?;
        } else {
            let agent = baseline.start_agent(mode)?;
            r.base.push(measure(baseline, &agent)?);
            if let Some(t) = measure_trimmed(baseline, &agent)? {
                r.base_trimmed.push(t);
            }
            baseline.stop_agent(agent)?;
        }
    }
    Ok(())
}

/// One line of the baseline/loaded table.
fn compare_row(name: &str, b: f64, l: f64) {
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

fn report(mode: Mode, r: &Results) {
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

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn bench_memory() -> Result<()> {
    if let Err(reason) = require_privileges() {
        bail!("the benchmark needs what the privileged tests need: {reason}");
    }
    let started = Instant::now();
    let exe = std::env::current_exe()?;
    let dir =
        TempDir(std::env::temp_dir().join(format!("iamlet-bench-memory-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0)?;
    let creds = dir.0.join("creds.yaml");
    std::fs::write(&creds, credentials_yaml())?;
    let mut modes = vec![Mode::Static];
    match sts_available() {
        Ok(()) => modes.push(Mode::Sts),
        Err(why) => eprintln!("STS mode skipped: {why}"),
    }
    let sts = modes.contains(&Mode::Sts);

    let baseline = Side::new("baseline", &dir.0, &creds, sts)?;
    let mut loaded = Side::new("loaded", &dir.0, &creds, sts)?;
    let pods: Vec<PodDesc> = (0..PODS).map(PodDesc::on_node).collect();
    let published = publish(&loaded.api, &pods)?;
    for (i, p) in pods.iter().enumerate() {
        let pod = if i % PODS_PER_NETNS == 0 {
            loaded.node.add_pod(&p.cgroup())?
        } else {
            let owner = &loaded.pods[i - i % PODS_PER_NETNS].0;
            loaded.node.add_pod_in_netns(&p.cgroup(), owner)?
        };
        loaded.pods.push((pod, p.role.clone()));
    }
    let roles_used: HashSet<&str> = pods.iter().map(|p| p.role.as_str()).collect();
    ensure!(roles_used.len() == ROLES, "{} roles used", roles_used.len());
    eprintln!(
        "loaded cluster: {NAMESPACES} namespaces, {} service accounts, {PODS} pods on {NODE} + {OTHER_NODE_PODS} elsewhere ({} KiB of JSON), {ROLES} roles; set up in {:.1} s",
        NAMESPACES * ACCOUNTS_PER_NAMESPACE,
        published / 1024,
        started.elapsed().as_secs_f64()
    );

    let mut results: Vec<Results> = modes.iter().map(|_| Results::default()).collect();
    for n in 1..=ROUNDS {
        for (i, &mode) in modes.iter().enumerate() {
            eprintln!("round {n}/{ROUNDS}: {}", mode.name());
            // Alternate which side goes first.
            round(mode, n % 2 == 0, &baseline, &loaded, &exe, &mut results[i])?;
        }
    }

    println!(
        "iamlet agent memory: {PODS} pods / {ROLES} roles in the index (+ {NAMESPACES} namespaces with kiam regex policies, {} service accounts, {OTHER_NODE_PODS} pods on other nodes filtered out; {} KiB of objects as JSON), against the same agent on an empty cluster",
        NAMESPACES * ACCOUNTS_PER_NAMESPACE,
        published / 1024
    );
    println!(
        "{}; same flags both sides (Kubernetes mode, --upstream off, --log warn); {ROUNDS} alternating rounds, a fresh agent each; read {} s after the last activity; {} CPUs",
        iamlet_tests::agent::agent_bin().display(),
        SETTLE.as_secs(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for (mode, r) in modes.iter().zip(&results) {
        report(*mode, r);
    }
    println!();
    println!("total run time {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

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
//!
//! The parts: `cluster.rs` (the loaded side's objects), `side.rs` (a fake node, its API
//! server and agent), `readings.rs` (what is read of an agent), `pod_client.rs` (the SDK flow
//! run in each pod), `report.rs` (the stages over the rounds and the table).

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

use crate::bench_pod::{ROLES_PATH, TOKEN_PATH};

mod cluster;
mod pod_client;
mod readings;
mod report;
mod side;

use crate::wrk::median;
use cluster::{credentials_yaml, publish, PodDesc};
pub(crate) use pod_client::client;
use readings::{engine_stats, measure, measure_trimmed, Field, Mem, Reading, MEM_ROWS};
use report::{report, Results};
use side::Side;

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

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(crate) fn bench_memory() -> Result<()> {
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
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get)
    );
    for (mode, r) in modes.iter().zip(&results) {
        report(*mode, r);
    }
    println!();
    println!("total run time {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

//! The STS credentials cache end to end: the agent assuming roles in moto's STS behind the
//! fault-injecting proxy, pods asking through the redirect. Single-flight, prefetch,
//! refresh-ahead, and behaviour under STS faults. Run as root through `cargo xtask test`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use iamlet_tests::agent::metric_value;
use iamlet_tests::{
    fetch_credentials, http, promtool, skip_unless_privileged, sts_available, Agent, FakePod,
    Family, Fault, FaultProxy, MotoSts, Sdk, TestNode,
};
use serde_json::Value;

const ROLE_A: &str = "arn:aws:iam::123456789012:role/app-a";
const ROLE_B: &str = "arn:aws:iam::123456789012:role/app-b";
const UID_A: &str = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
const UID_B: &str = "5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f7a8b9";

use iamlet_tests::besteffort_pod_slice as pod_slice;
use iamlet_tests::stats::percentile;

fn pod_cgroup(uid: &str) -> String {
    iamlet_tests::besteffort_container_cgroup(uid, 7)
}

/// moto + fault proxy + a bindings file for two pods.
struct Sts {
    _moto: MotoSts,
    proxy: FaultProxy,
    dir: PathBuf,
}

impl Sts {
    fn start(node: &TestNode) -> Result<Sts> {
        sts_available().map_err(anyhow::Error::msg)?;
        let moto = MotoSts::start(node)?;
        let proxy = FaultProxy::start(node, moto.addr())?;
        let dir = std::env::temp_dir().join(format!("iamlet-sts-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let bindings = format!(
            "bindings:\n  - cgroup: \"{}\"\n    role: {ROLE_A}\n    external_id: ext-a\n  - cgroup: \"{}\"\n    role: {ROLE_B}\n",
            pod_slice(UID_A),
            pod_slice(UID_B)
        );
        std::fs::write(dir.join("bindings.yaml"), bindings)?;
        Ok(Sts {
            _moto: moto,
            proxy,
            dir,
        })
    }

    fn agent(&self, node: &TestNode, extra: &[&str]) -> Result<Agent> {
        let bindings = self.dir.join("bindings.yaml").display().to_string();
        let endpoint = self.proxy.endpoint();
        let mut args = vec![
            "--bindings",
            &bindings,
            "--sts-endpoint",
            &endpoint,
            "--region",
            "us-east-1",
            "--upstream",
            "off",
            "--rate-limit",
            "0",
        ];
        args.extend_from_slice(extra);
        Agent::start(node, &args)
    }
}

impl Drop for Sts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// GETs the credentials document from inside `pod` (IMDSv1, raw HTTP): status and body.
fn creds(pod: &FakePod, role: &str) -> Result<(u16, Value)> {
    let path = format!("/latest/meta-data/iam/security-credentials/{role}");
    let a = http(
        pod.command("python3"),
        Family::V4,
        "169.254.169.254",
        80,
        "GET",
        &path,
    )?;
    let doc = serde_json::from_str(&a.body).unwrap_or(Value::Null);
    Ok((a.status, doc))
}

/// Runs `n` requests for the credentials from inside `pod`, `concurrency` at a time, and
/// returns per-request (status, seconds, body code) as JSON lines.
const LOAD: &str = r#"
import json, socket, sys, threading, time
role, n, conc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
results = []
lock = threading.Lock()
gate = threading.Barrier(conc)
def one():
    s = socket.create_connection(("169.254.169.254", 80), timeout=20)
    s.settimeout(20)
    t = time.time()
    s.sendall(f"GET /latest/meta-data/iam/security-credentials/{role} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while True:
        c = s.recv(65536)
        if not c:
            break
        data += c
    dt = time.time() - t
    head, _, body = data.partition(b"\r\n\r\n")
    try:
        code = json.loads(body).get("Code")
        key = json.loads(body).get("AccessKeyId")
    except Exception:
        code, key = None, None
    with lock:
        results.append({"status": int(head.split(b" ")[1]), "secs": dt, "code": code, "key": key})
def worker(k):
    gate.wait()
    for _ in range(k):
        one()
per = n // conc
ts = [threading.Thread(target=worker, args=(per,)) for _ in range(conc)]
for t in ts: t.start()
for t in ts: t.join()
print(json.dumps(results))
"#;

#[derive(Debug)]
struct Load {
    statuses: Vec<u16>,
    secs: Vec<f64>,
    codes: Vec<Option<String>>,
    keys: Vec<Option<String>>,
}

impl Load {
    fn p(&self, q: f64) -> f64 {
        let mut v = self.secs.clone();
        v.sort_by(f64::total_cmp);
        percentile(&v, q).unwrap_or(f64::NAN)
    }
}

fn load(pod: &FakePod, role: &str, n: usize, concurrency: usize) -> Result<Load> {
    let out = pod
        .run_timeout(
            &[
                "python3",
                "-c",
                LOAD,
                role,
                &n.to_string(),
                &concurrency.to_string(),
            ],
            Duration::from_secs(120),
        )?
        .ensure_success()?;
    let rows: Vec<Value> = serde_json::from_str(out.stdout.trim()).context("load output")?;
    Ok(Load {
        statuses: rows
            .iter()
            .map(|r| {
                r["status"]
                    .as_u64()
                    .and_then(|s| u16::try_from(s).ok())
                    .unwrap_or(0)
            })
            .collect(),
        secs: rows
            .iter()
            .map(|r| r["secs"].as_f64().unwrap_or(0.0))
            .collect(),
        codes: rows
            .iter()
            .map(|r| r["code"].as_str().map(str::to_string))
            .collect(),
        keys: rows
            .iter()
            .map(|r| r["key"].as_str().map(str::to_string))
            .collect(),
    })
}

#[test]
fn concurrent_first_requests_make_one_assume_role() {
    skip_unless_privileged!();
    let node = TestNode::new().expect("creating the test node");
    let sts = Sts::start(&node).expect("starting moto STS and the fault proxy");
    let a = node.add_pod(&pod_cgroup(UID_A)).expect("adding pod a");
    // Slow STS, no prefetch: every request below is a first request for the role.
    sts.proxy
        .set_fault(Fault::Latency(Duration::from_millis(1500)))
        .expect("setting a latency of 1.5 s");
    let _agent = sts
        .agent(&node, &["--no-prefetch", "--credentials-timeout", "10s"])
        .expect("starting the agent");
    sts.proxy
        .reset_stats()
        .expect("resetting the fault proxy stats");
    let l = load(&a, "app-a", 1000, 1000).expect("1000 requests for app-a");
    let ok = l.statuses.iter().filter(|s| **s == 200).count();
    assert!(
        ok == 1000,
        "{ok}/1000 answered 200: {:?}",
        &l.statuses[..10]
    );
    let distinct: std::collections::HashSet<_> = l.keys.iter().flatten().collect();
    assert!(distinct.len() == 1, "{} different keys", distinct.len());
    let calls = sts
        .proxy
        .stats()
        .expect("the fault proxy stats")
        .assume_role_calls_for(ROLE_A);
    assert!(
        calls == 1,
        "{calls} AssumeRole calls for 1000 concurrent first requests"
    );
    eprintln!(
        "1000 concurrent first requests: 1 AssumeRole, p50 {:.3}s p99 {:.3}s (STS latency 1.5 s)",
        l.p(0.5),
        l.p(0.99)
    );
}

#[test]
fn a_new_pod_is_prefetched_before_it_asks() {
    skip_unless_privileged!();
    let node = TestNode::new().expect("creating the test node");
    let sts = Sts::start(&node).expect("starting moto STS and the fault proxy");
    let _agent = sts
        .agent(&node, &["--session-tags", "--node-name", "node-7"])
        .expect("starting the agent");
    sts.proxy
        .reset_stats()
        .expect("resetting the fault proxy stats");
    let started = Instant::now();
    let a = node.add_pod(&pod_cgroup(UID_A)).expect("adding pod a");
    sts.proxy
        .wait_assume_role_calls(1, Duration::from_secs(15))
        .expect("no prefetch after the pod appeared");
    let prefetch_delay = started.elapsed();
    let before = sts.proxy.stats().expect("the fault proxy stats");
    let got = fetch_credentials(&a, Sdk::Boto3).expect("credentials through boto3 in a");
    let after = sts.proxy.stats().expect("the fault proxy stats");
    assert!(
        after.assume_role_calls() == before.assume_role_calls(),
        "the pod's first request called STS"
    );
    assert!(got.access_key_id.starts_with("ASIA") || got.access_key_id.starts_with("AKIA"));
    let call = after
        .assume_role_log
        .iter()
        .find(|c| c.role_arn.as_deref() == Some(ROLE_A))
        .expect("AssumeRole for app-a in the log");
    assert!(call.external_id.as_deref() == Some("ext-a"), "{call:?}");
    assert!(call.duration_seconds == Some(3600), "{call:?}");
    assert!(
        call.role_session_name
            .as_deref()
            .is_some_and(|n| n.starts_with("iamlet-")),
        "{call:?}"
    );
    assert!(
        call.tags
            .iter()
            .any(|t| t.key == "node" && t.value == "node-7"),
        "{call:?}"
    );
    eprintln!("prefetch {prefetch_delay:?} after the pod's cgroup appeared");
}

#[test]
fn refresh_ahead_never_serves_stale_credentials() {
    skip_unless_privileged!();
    let node = TestNode::new().expect("creating the test node");
    let sts = Sts::start(&node).expect("starting moto STS and the fault proxy");
    let a = node.add_pod(&pod_cgroup(UID_A)).expect("adding pod a");
    let _agent = sts
        .agent(&node, &["--session-duration", "12s"])
        .expect("starting the agent");
    let script = r#"
import json, socket, sys, time, datetime
end = time.time() + 30
errors, keys, least = 0, set(), 1e9
while time.time() < end:
    s = socket.create_connection(("169.254.169.254", 80), timeout=5)
    s.sendall(b"GET /latest/meta-data/iam/security-credentials/app-a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = b""
    while True:
        c = s.recv(65536)
        if not c: break
        data += c
    head, _, body = data.partition(b"\r\n\r\n")
    if b" 200 " not in head.split(b"\r\n")[0]:
        errors += 1
    else:
        doc = json.loads(body)
        exp = datetime.datetime.strptime(doc["Expiration"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
        left = (exp - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
        least = min(least, left)
        keys.add(doc["AccessKeyId"])
    time.sleep(0.1)
print(json.dumps({"errors": errors, "keys": len(keys), "least": least}))
"#;
    let out = a
        .run_timeout(&["python3", "-c", script], Duration::from_secs(60))
        .expect("running the expiry watcher in pod a")
        .ensure_success()
        .expect("the expiry watcher in pod a");
    let r: Value = serde_json::from_str(out.stdout.trim()).expect("the expiry watcher's JSON");
    let calls = sts
        .proxy
        .stats()
        .expect("the fault proxy stats")
        .assume_role_calls_for(ROLE_A);
    eprintln!("refresh-ahead over 30 s of 12 s sessions: {r}, {calls} AssumeRole calls");
    assert!(r["errors"] == 0, "errors while polling: {r}");
    assert!(
        r["keys"].as_u64().unwrap_or(0) >= 3,
        "credentials were not renewed: {r}"
    );
    // The minimum left is a fifth of the session (2.4 s), less a second of rounding.
    assert!(
        r["least"].as_f64().unwrap_or(0.0) >= 1.4,
        "served nearly expired credentials: {r}"
    );
    assert!(calls <= 8, "{calls} calls: refreshes are not per request");
}

#[test]
fn sts_faults_keep_cached_roles_served_and_fail_uncached_fast() {
    skip_unless_privileged!();
    let node = TestNode::new().expect("creating the test node");
    let sts = Sts::start(&node).expect("starting moto STS and the fault proxy");
    let a = node.add_pod(&pod_cgroup(UID_A)).expect("adding pod a");
    let agent = sts
        .agent(
            &node,
            &[
                "--no-prefetch",
                "--sts-max-attempts",
                "1",
                "--sts-backoff-max",
                "1s",
            ],
        )
        .expect("starting the agent");
    // A is cached before the faults start; B never is.
    assert!(creds(&a, "app-a").expect("credentials of app-a from a").0 == 200);
    let baseline = load(&a, "app-a", 200, 4).expect("200 requests for app-a");
    let b = node.add_pod(&pod_cgroup(UID_B)).expect("adding pod b");
    for (fault, codes) in [
        (Fault::Hang, &["RequestTimeout"][..]),
        (
            Fault::Latency(Duration::from_secs(10)),
            &["RequestTimeout"][..],
        ),
        (Fault::Throttle, &["Throttling"][..]),
        (Fault::Status(500), &["InternalFailure"][..]),
        (Fault::Status(503), &["ServiceUnavailable"][..]),
        (Fault::Reset, &["ServiceUnavailable"][..]),
        (Fault::Deny, &["AccessDenied"][..]),
    ] {
        sts.proxy
            .set_fault(fault)
            .unwrap_or_else(|e| panic!("setting fault {fault:?}: {e:#}"));
        let cached = load(&a, "app-a", 200, 4)
            .unwrap_or_else(|e| panic!("{fault:?}: 200 requests for app-a: {e:#}"));
        assert!(
            cached.statuses.iter().all(|s| *s == 200),
            "{fault:?}: cached role failed: {:?}",
            cached.codes
        );
        let started = Instant::now();
        let (status, doc) = creds(&b, "app-b")
            .unwrap_or_else(|e| panic!("{fault:?}: credentials of app-b from b: {e:#}"));
        let took = started.elapsed();
        assert!(
            status == 500,
            "{fault:?}: uncached role got {status}: {doc}"
        );
        let code = doc["Code"].as_str().unwrap_or("");
        assert!(codes.contains(&code), "{fault:?}: code {code:?} ({doc})");
        assert!(
            took < Duration::from_millis(3500),
            "{fault:?}: took {took:?}"
        );
        eprintln!(
            "{fault:?}: cached p50 {:.1} ms p99 {:.1} ms (no fault: p50 {:.1} ms p99 {:.1} ms); uncached -> 500 {code} in {took:?}",
            cached.p(0.5) * 1e3,
            cached.p(0.99) * 1e3,
            baseline.p(0.5) * 1e3,
            baseline.p(0.99) * 1e3
        );
        sts.proxy.clear().expect("clearing the fault");
        // Let the engine's backoff for B (at most 1.2 s here) pass before the next fault.
        std::thread::sleep(Duration::from_millis(1500));
    }
    // STS is back: B recovers.
    let (status, doc) = creds(&b, "app-b").expect("credentials of app-b from b");
    assert!(status == 200, "B after recovery: {status} {doc}");

    // What an operator sees of all that: failures by code, call latency, the least time to
    // expiry, request latency; and Prometheus's linter has nothing to say about the scrape.
    let scrape = agent.metrics(&node).expect("scraping the agent");
    for code in [
        "RequestTimeout",
        "Throttling",
        "InternalFailure",
        "ServiceUnavailable",
        "AccessDenied",
    ] {
        let sample = format!("iamlet_sts_assume_role_failures_total{{code=\"{code}\"}}");
        let failed = metric_value(&scrape, &sample).unwrap_or(0.0);
        assert!(failed >= 1.0, "{sample} is {failed}:\n{scrape}");
    }
    let calls =
        metric_value(&scrape, "iamlet_sts_assume_role_duration_seconds_count").unwrap_or(0.0);
    assert!(calls >= 8.0, "{calls} AssumeRole calls timed:\n{scrape}");
    let left =
        metric_value(&scrape, "iamlet_credentials_min_time_to_expiry_seconds").unwrap_or(0.0);
    assert!(left > 600.0, "least time to expiry {left} s:\n{scrape}");
    let served = metric_value(
        &scrape,
        "iamlet_proxy_request_duration_seconds_count{route=\"role_credentials\",status=\"2xx\"}",
    )
    .unwrap_or(0.0);
    assert!(
        served >= 1000.0,
        "{served} credential answers timed:\n{scrape}"
    );
    assert!(
        scrape.contains("iamlet_build_info{"),
        "no build info:\n{scrape}"
    );
    promtool::check_metrics(&scrape).expect("promtool check metrics");
}

//! Fixtures of the churn tests: pods, the agent, what a pod was answered, tallies.

use iamlet_tests::scaled;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{ChildStdin, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use iamlet_tests::fake_imds::{INSTANCE_ID, NODE_ACCESS_KEY, NODE_ACCOUNT, NODE_SECRET};
use iamlet_tests::stats::percentile;
use iamlet_tests::{
    run_with_timeout, Agent, ChildGuard, FakeApiServer, FakeImds, FakePod, KubeControl,
    RemoteApiServer, TestNode,
};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};

pub(crate) const NODE: &str = "node-1";
pub(crate) const ACCOUNT: &str = "123456789012";
pub(crate) const ROLES: usize = 50;
pub(crate) const WAVES: usize = 10;
pub(crate) const PER_WAVE: usize = 20;
pub(crate) const WAIT: Duration = Duration::from_secs(30);
pub(crate) const LIST: &str = "/latest/meta-data/iam/security-credentials/";

pub(crate) fn role(r: usize) -> String {
    format!("churn-{r:02}")
}
pub(crate) fn key(r: usize) -> String {
    format!("ASIACHURN{r:011}")
}
/// Pod number `n`'s role: neighbours and the pods taking over a slot get different ones.
pub(crate) fn role_of(n: usize) -> usize {
    (7 * n) % ROLES
}
pub(crate) fn uid(n: usize) -> String {
    format!("c4a5{n:04x}-0000-4000-8000-{n:012x}")
}
/// Pods of even slots keep their slot's name from wave to wave, like a StatefulSet's.
pub(crate) fn name(n: usize) -> String {
    match n % 2 {
        0 => format!("web-{}", n % PER_WAVE),
        _ => format!("churn-{n:03}"),
    }
}
pub(crate) fn namespace(n: usize) -> String {
    format!("team-{}", n % 5)
}
pub(crate) fn container(n: usize) -> String {
    iamlet_tests::besteffort_container_cgroup(&uid(n), n as u64 + 1)
}
pub(crate) fn pod_json(n: usize, r: usize) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name(n), "namespace": namespace(n), "uid": uid(n),
                     "annotations": {"iam.amazonaws.com/role": role(r)}},
        "spec": {"nodeName": NODE, "serviceAccountName": "default", "containers": [{"name": "c", "image": "x"}]}
    })
}

/// One pod's process. First, like a Go SDK at start-up, within milliseconds of the container's
/// start: `curl` mints a token and lists the role. Then, as `exec`'d `python3` with a token
/// of its own, one round at once and one more per line of stdin: the role list, the
/// credentials of the listed role (as an SDK does; its own role if none is listed),
/// `iam/info`, the node's role name (bait), another pod's role name (the stdin line) and a
/// passthrough path. Prints `asking` before its first request, then one JSON line per round,
/// each answer `[status, body, ms]`.
pub(crate) const POD_START: &str = r#"
echo asking
u=http://169.254.169.254/latest
t=$(curl -s -m 20 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' $u/api/token)
f=$(curl -s -m 20 -H "X-aws-ec2-metadata-token: $t" -w '\n%{http_code} %{time_total}' $u/meta-data/iam/security-credentials/)
exec python3 -c "$1" "$2" "$3" "$f"
"#;
pub(crate) const POD_SCRIPT: &str = r#"
import http.client, json, sys, time
own, other, fast = sys.argv[1:4]
P = "/latest/meta-data/iam/security-credentials/"
def req(method, path, headers):
    t = time.monotonic()
    c = http.client.HTTPConnection("169.254.169.254", 80, timeout=20)
    try:
        c.request(method, path, headers=headers)
        r = c.getresponse()
        status, body = r.status, r.read().decode(errors="replace")
    except Exception as e:
        status, body = 0, "client error: %r" % (e,)
    finally:
        c.close()
    return [status, body, round((time.monotonic() - t) * 1000, 2)]
body, _, meta = fast.rpartition("\n")
status, secs = (meta.split() + ["0", "0"])[:2]
out = {"fast": [int(status), body, round(float(secs) * 1000, 2)]}
t0 = time.monotonic()
out["token"] = tok = req("PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "21600"})
h = {"X-aws-ec2-metadata-token": tok[1]}
while True:
    out["list"] = req("GET", P, h)
    out["creds"] = req("GET", P + (out["list"][1] if out["list"][0] == 200 else own), h)
    out["total_ms"] = round((time.monotonic() - t0) * 1000, 2)
    out["info"] = req("GET", "/latest/meta-data/iam/info", h)
    out["bait"] = req("GET", P + "node-role", h)
    out["other"] = req("GET", P + other, h)
    out["instance"] = req("GET", "/latest/meta-data/instance-id", h)
    print(json.dumps(out), flush=True)
    line = sys.stdin.readline()
    if not line:
        break
    out, other, t0 = {}, line.strip(), time.monotonic()
"#;

/// Runs [`POD_START`] and [`POD_SCRIPT`] in `pod` for roles `own` and `other`.
pub(crate) fn pod_command(pod: &FakePod, own: usize, other: usize) -> std::process::Command {
    let mut cmd = pod.command("sh");
    cmd.args(["-c", POD_START, "pod", POD_SCRIPT, &role(own), &role(other)]);
    cmd
}

/// One round's answers, judged for a pod whose role is `r`.
#[derive(Debug, Default)]
pub(crate) struct Verdict {
    /// Answers with this pod's own role (list, credentials, info).
    pub(crate) own: usize,
    pub(crate) not_found: usize,
    /// Answers with anything but this pod's role: what this file hunts.
    pub(crate) foreign: Vec<String>,
    /// Answers carrying the node's credentials or account.
    pub(crate) node: Vec<String>,
    /// Other unexpected answers (errors, a failed token or passthrough).
    pub(crate) odd: Vec<String>,
    pub(crate) requests: usize,
}

impl Verdict {
    pub(crate) fn of(out: &Value, r: usize) -> Verdict {
        let mut v = Verdict::default();
        let profile = format!("arn:aws:iam::{ACCOUNT}:instance-profile/{}", role(r));
        for (field, answer) in out.as_object().into_iter().flatten() {
            let (Some(status), Some(body)) = (answer[0].as_u64(), answer[1].as_str()) else {
                continue;
            };
            v.requests += 1;
            let said = format!("{field}: {status} {body:?}");
            let baits = [NODE_ACCESS_KEY, NODE_SECRET, NODE_ACCOUNT, "node-session"];
            if baits.iter().any(|b| body.contains(b)) {
                v.node.push(said.clone());
            }
            let doc: Value = serde_json::from_str(body).unwrap_or(Value::Null);
            let mine = match field.as_str() {
                "token" | "instance" => {
                    if status != 200 || (field == "instance" && body != INSTANCE_ID) {
                        v.odd.push(said);
                    }
                    continue;
                }
                "list" | "fast" => body == role(r),
                "creds" => {
                    doc["AccessKeyId"] == key(r)
                        && doc["SecretAccessKey"] == format!("churn-secret-{r:02}")
                }
                "info" => doc["InstanceProfileArn"] == profile.as_str(),
                _ => false, // bait and other: never this pod's
            };
            match status {
                200 if mine => v.own += 1,
                200 => v.foreign.push(said),
                404 => v.not_found += 1,
                _ => v.odd.push(said),
            }
        }
        v
    }

    /// A pod with a role: its role everywhere, 404 for the bait and the other pod's role.
    pub(crate) fn served(&self) -> bool {
        self.clean() && self.own >= 3 && self.not_found == 2
    }

    /// A deleted pod: 404 for every role path.
    pub(crate) fn gone(&self) -> bool {
        self.clean() && self.own == 0 && self.not_found >= 5
    }

    /// Nothing but this pod's role, if any, and no node credentials.
    pub(crate) fn safe(&self) -> bool {
        self.foreign.is_empty() && self.node.is_empty()
    }

    pub(crate) fn clean(&self) -> bool {
        self.safe() && self.odd.is_empty()
    }
}

pub(crate) struct Setup {
    pub(crate) dir: PathBuf,
    pub(crate) api: RemoteApiServer,
    pub(crate) _imds: FakeImds,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The stand-in IMDS, the API server with five namespaces permitting the churn roles, static
/// credentials for every role, and the agent with `--upstream` at the stand-in, watching.
pub(crate) fn setup(node: &TestNode, pod_wait: &str) -> Result<(Setup, Agent)> {
    let imds = FakeImds::start(node)?;
    let api = FakeApiServer::start_in_node(node)?;
    for i in 0..5 {
        api.apply(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {
            "name": format!("team-{i}"),
            "annotations": {"iam.amazonaws.com/permitted": format!("arn:aws:iam::{ACCOUNT}:role/churn-[0-9]+")}}}))?;
    }
    let dir = std::env::temp_dir().join(format!("iamlet-{}", node.netns_name()));
    std::fs::create_dir_all(&dir)?;
    let s = Setup {
        dir: dir.clone(),
        api,
        _imds: imds,
    };
    s.api.write_kubeconfig(&dir.join("kubeconfig"))?;
    let mut creds = String::from("credentials:\n");
    for r in 0..ROLES {
        creds.push_str(&format!(
            "  arn:aws:iam::{ACCOUNT}:role/{}:\n    access_key_id: {}\n    secret_access_key: churn-secret-{r:02}\n    session_token: t{r}\n",
            role(r), key(r)
        ));
    }
    std::fs::write(dir.join("creds.yaml"), creds)?;
    let args = format!(
        "--kubeconfig {0}/kubeconfig --node-name {NODE} --static-credentials {0}/creds.yaml \
         --base-role-arn arn:aws:iam::{ACCOUNT}:role/ --upstream http://169.254.169.254 \
         --pod-wait {pod_wait}",
        dir.display()
    );
    let agent = Agent::start(node, &args.split_whitespace().collect::<Vec<_>>())?;
    s.api.wait_for_watches(3, WAIT)?; // namespaces, service accounts, pods
    Ok((s, agent))
}

pub(crate) fn publish(api: &RemoteApiServer, n: usize, r: usize) -> Result<()> {
    api.apply(&pod_json(n, r)).map(drop)
}

/// Deletes pod `n`; odd ones gracefully (a `deletionTimestamp` first, as the kubelet sees it).
pub(crate) fn unpublish(api: &RemoteApiServer, n: usize) -> Result<()> {
    let (ns, name) = (namespace(n), name(n));
    if n % 4 < 2 {
        api.begin_delete_obj::<Pod>(Some(&ns), &name, Duration::from_secs(30))?;
    }
    api.delete_obj::<Pod>(Some(&ns), &name).map(drop)
}

/// One round in `pod` for role `r` by a fresh process.
pub(crate) fn ask_once(pod: &FakePod, r: usize) -> Result<Verdict> {
    let mut cmd = pod_command(pod, r, (r + 1) % ROLES);
    let out = run_with_timeout(&mut cmd, WAIT)?.ensure_success()?;
    let last = out.stdout.lines().last().unwrap_or_default();
    Ok(Verdict::of(&serde_json::from_str(last)?, r))
}

pub(crate) fn wait_until(what: &str, mut f: impl FnMut() -> Result<bool>) -> Result<Duration> {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(45) {
        if f()? {
            return Ok(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("timed out waiting for {what}")
}

/// When a pod's process starts: before the API server publishes the pod (so it asks during
/// the agent's pod-start wait), together with it (back to back), or after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Order {
    ProcessFirst,
    Together,
    ApiFirst,
}
pub(crate) const ORDERS: [Order; 3] = [Order::ProcessFirst, Order::Together, Order::ApiFirst];

/// A churned pod and its long-lived process (stdin, output lines). Field order is drop
/// order: the process, then the cgroup.
pub(crate) struct Churner {
    pub(crate) n: usize,
    pub(crate) order: Order,
    pub(crate) proc: Option<(ChildGuard, ChildStdin, Receiver<String>)>,
    pub(crate) pod: Option<FakePod>,
}

impl Churner {
    pub(crate) fn new(n: usize, order: Order) -> Churner {
        let (proc, pod) = (None, None);
        Churner {
            n,
            order,
            proc,
            pod,
        }
    }

    /// Creates the container's cgroup in `slot`'s network namespace and starts the process
    /// in it at once, as the container runtime does.
    pub(crate) fn start(&mut self, node: &TestNode, slot: &FakePod, other: usize) -> Result<()> {
        let pod = self
            .pod
            .insert(node.add_pod_in_netns(&container(self.n), slot)?);
        let mut cmd = pod_command(pod, role_of(self.n), other);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut child = ChildGuard::spawn(&mut cmd)?;
        let stdout = child.stdout.take().context("stdout")?;
        let stdin = child.stdin.take().context("stdin")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        self.proc = Some((child, stdin, rx));
        Ok(())
    }

    /// The next output line that is `asking` (or, with `asking` false, that is not).
    pub(crate) fn line(&mut self, asking: bool) -> Result<String> {
        let (_, _, rx) = self.proc.as_mut().context("not started")?;
        let deadline = Instant::now() + scaled(WAIT);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .with_context(|| format!("pod {} {} did not answer", name(self.n), uid(self.n)))?;
            if (line == "asking") == asking {
                return Ok(line);
            }
        }
    }

    /// The next round's answers (after asking for `other`'s role, if given).
    pub(crate) fn round(&mut self, other: Option<usize>) -> Result<Value> {
        if let (Some(o), Some((_, stdin, _))) = (other, self.proc.as_mut()) {
            writeln!(stdin, "{}", role(o))?;
        }
        Ok(serde_json::from_str(&self.line(false)?)?)
    }
}

#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) requests: usize,
    pub(crate) wrong: usize,
    pub(crate) node: usize,
    /// 404s where one was expected, and where one was.
    pub(crate) expected_404: (usize, usize),
    pub(crate) stale_rounds: usize,
    pub(crate) failures: Vec<String>,
    pub(crate) failed_cgroups: Vec<u64>,
    pub(crate) first_list_ms: Vec<(Order, f64)>,
    pub(crate) first_total_ms: Vec<f64>,
}

impl Tally {
    /// Judges the first round of a pod that has its role.
    pub(crate) fn first_round(&mut self, c: &mut Churner) -> Result<()> {
        let out = c.round(None)?;
        let v = Verdict::of(&out, role_of(c.n));
        self.count(c, "first round", &v);
        self.expected_404.1 += 2;
        if v.served() {
            self.expected_404.0 += 2;
        } else if v.clean() {
            self.fail(c, &format!("not served: {out}"));
        }
        let ms = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
        self.first_list_ms.push((c.order, ms(&out["fast"][2])));
        self.first_total_ms.push(ms(&out["total_ms"]));
        Ok(())
    }

    /// Fails with the problems seen, after printing the agent's log lines about the first
    /// failing pods' cgroups.
    pub(crate) fn finish(&self, agent: &Agent) -> Result<()> {
        std::thread::sleep(Duration::from_millis(300)); // the log is written
        let log = agent.log_text();
        for id in self.failed_cgroups.iter().take(5) {
            let tag = format!("cgroup_id={id}");
            eprintln!("--- agent log, {tag} ---");
            for l in log
                .lines()
                .filter(|l| l.split_whitespace().any(|w| w == tag))
            {
                eprintln!("{l}");
            }
        }
        let n = self.failures.len();
        let first = self.failures[..n.min(20)].join("\n");
        ensure!(n == 0, "{n} problems, the first ones:\n{first}");
        ensure!(!log.contains(NODE_SECRET), "node secret in the agent log");
        ensure!(!log.contains("panicked"), "the agent panicked:\n{log}");
        Ok(())
    }

    pub(crate) fn count(&mut self, c: &Churner, when: &str, v: &Verdict) {
        self.requests += v.requests;
        self.wrong += v.foreign.len();
        self.node += v.node.len();
        for problem in v.foreign.iter().chain(&v.node).chain(&v.odd) {
            self.fail(c, &format!("{when}: {problem}"));
        }
    }

    pub(crate) fn fail(&mut self, c: &Churner, problem: &str) {
        let id = c.pod.as_ref().map_or(0, FakePod::cgroup_id);
        let (n, r) = (c.n, role(role_of(c.n)));
        let who = format!("{} {} (role {r}, cgroup_id={id})", name(n), uid(n));
        self.failures.push(format!("{who} {problem}"));
        self.failed_cgroups.push(id);
    }
}

pub(crate) fn percentiles(mut v: Vec<f64>) -> String {
    v.sort_by(f64::total_cmp);
    match (percentile(&v, 0.50), percentile(&v, 0.99)) {
        (Some(p50), Some(p99)) => format!("p50 {p50:.1} ms, p99 {p99:.1} ms (n={})", v.len()),
        _ => "-".into(),
    }
}

/// Pods deleted from the API with a process still in their cgroup, at the IP the next pod of
/// their slot now has (whose role is `others`): 404 for every role path, never a role. Their
/// own role is tolerated (and retried) for 10 s, until the agent has seen the deletion.
pub(crate) fn check_leftovers(t: &mut Tally, old: &mut [Churner], others: &[usize]) -> Result<()> {
    for (c, &other) in old.iter_mut().zip(others) {
        let deadline = Instant::now() + scaled(Duration::from_secs(10));
        t.expected_404.1 += 5;
        loop {
            let out = c.round(Some(other))?;
            let v = Verdict::of(&out, role_of(c.n));
            t.count(c, "after deletion", &v);
            if v.gone() {
                t.expected_404.0 += 5;
            } else if v.clean() && Instant::now() < deadline {
                t.stale_rounds += 1;
                std::thread::sleep(Duration::from_millis(100));
                continue;
            } else {
                t.fail(c, &format!("deleted, its leftover process got {out}"));
            }
            break;
        }
    }
    Ok(())
}

//! Kubernetes mode end to end: the fake API server and the agent in the node's namespace, fake
//! pods whose cgroups follow the systemd driver's layout with the pods' real UIDs. Annotated
//! roles, namespace policy with an Event, hostNetwork pods, the pod-start race, deletion; and
//! with moto STS behind the fault proxy: prefetch when the watch delivers a pod (before its
//! container asks), kiam's external-id and session-name annotations, and the opt-in IRSA
//! service account annotation. Run as root through `cargo xtask test`.

use iamlet_tests::scaled;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use iamlet_tests::kube_fake::{FakeApiServer, KubeControl, RemoteApiServer};
use iamlet_tests::{
    fetch_credentials, http, skip_unless_privileged, sts_available, Agent, FakePod, Family,
    FaultProxy, MotoSts, Sdk, TestNode,
};
use serde_json::{json, Value};

pub(crate) const NODE: &str = "node-1";
const ACCOUNT: &str = "123456789012";

pub(crate) fn container(uid: &str) -> String {
    iamlet_tests::besteffort_container_cgroup(uid, 1)
}

pub(crate) fn pod_json(ns: &str, name: &str, uid: &str, role: Option<&str>, node: &str) -> Value {
    let mut annotations = serde_json::Map::new();
    if let Some(r) = role {
        annotations.insert("iam.amazonaws.com/role".into(), json!(r));
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "uid": uid, "annotations": annotations},
        "spec": {"nodeName": node, "serviceAccountName": "default", "containers": [{"name": "c", "image": "x"}]}
    })
}

pub(crate) fn namespace_json(name: &str, permitted: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "annotations": {"iam.amazonaws.com/permitted": permitted}}
    })
}

pub(crate) struct Setup {
    dir: PathBuf,
    pub(crate) api: RemoteApiServer,
    /// The agent's flags, for a successor.
    args: Vec<String>,
}

impl Setup {
    /// A second agent with the same flags, taking over from `running` (an upgrade).
    fn successor(&self, node: &TestNode, running: &Agent) -> Result<Agent> {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        Agent::start_successor(node, running, &args)
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where the agent gets credentials in a test.
#[derive(Clone, Copy)]
enum Creds<'a> {
    /// Static credentials for these role names.
    Static(&'a [&'a str]),
    /// STS at this endpoint, plus extra agent flags.
    Sts(&'a str, &'a [&'a str]),
}

pub(crate) fn setup(node: &TestNode, roles: &[&str]) -> Result<(Setup, Agent)> {
    setup_with(node, Creds::Static(roles))
}

fn setup_with(node: &TestNode, creds_from: Creds<'_>) -> Result<(Setup, Agent)> {
    let api = FakeApiServer::start_in_node(node)?;
    let dir = std::env::temp_dir().join(format!("iamlet-kube-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let kubeconfig = dir.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig)?;
    let kc = kubeconfig.display().to_string();
    let base = format!("arn:aws:iam::{ACCOUNT}:role/");
    let mut args = vec![
        "--kubeconfig",
        &kc,
        "--node-name",
        NODE,
        "--base-role-arn",
        &base,
        "--upstream",
        "off",
        "--pod-wait",
        "3s",
    ];
    let roles = match creds_from {
        Creds::Static(roles) => roles,
        Creds::Sts(endpoint, extra) => {
            args.extend(["--sts-endpoint", endpoint, "--region", "us-east-1"]);
            args.extend_from_slice(extra);
            let agent = Agent::start(node, &args)?;
            let args = args.iter().map(std::string::ToString::to_string).collect();
            return Ok((Setup { dir, api, args }, agent));
        }
    };
    let mut creds = String::from("credentials:\n");
    for role in roles {
        creds.push_str(&format!(
            "  arn:aws:iam::{ACCOUNT}:role/{role}:\n    access_key_id: ASIA{}\n    secret_access_key: s\n    session_token: t\n",
            role.to_uppercase().replace('-', "")
        ));
    }
    std::fs::write(dir.join("creds.yaml"), creds)?;
    let cr = dir.join("creds.yaml").display().to_string();
    args.extend(["--static-credentials", &cr]);
    let agent = Agent::start(node, &args)?;
    let args = args.iter().map(std::string::ToString::to_string).collect();
    Ok((Setup { dir, api, args }, agent))
}

fn role_list(pod: &FakePod) -> Result<(u16, String)> {
    let a = http(
        pod.command("python3"),
        Family::V4,
        "169.254.169.254",
        80,
        "GET",
        "/latest/meta-data/iam/security-credentials/",
    )?;
    Ok((a.status, a.body))
}

pub(crate) fn wait_for(what: &str, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + scaled(Duration::from_secs(10));
    while Instant::now() < deadline {
        if f()? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    anyhow::bail!("timed out waiting for {what}")
}

#[test]
fn pods_get_their_annotated_roles_and_policy_is_enforced() {
    skip_unless_privileged!();
    let node = TestNode::new().expect("creating the test node");
    let ua = "11111111-2222-4333-8444-555555555555";
    let ub = "66666666-7777-4888-9999-aaaaaaaaaaaa";
    let uh = "bbbbbbbb-cccc-4ddd-8eee-ffffffffffff";
    let (s, _agent) = setup(&node, &["app-a", "app-b", "host-role"])
        .expect("setting up the fake API server and the agent");
    s.api
        .apply(&namespace_json("team-a", ".*"))
        .expect("applying namespace team-a");
    s.api
        .apply(&namespace_json(
            "locked",
            "arn:aws:iam::.*:role/nothing-allowed",
        ))
        .expect("applying namespace locked");
    s.api
        .apply(&pod_json("team-a", "a", ua, Some("app-a"), NODE))
        .expect("applying pod team-a/a");
    s.api
        .apply(&pod_json("locked", "b", ub, Some("app-b"), NODE))
        .expect("applying pod locked/b");
    s.api
        .apply(&pod_json("team-a", "h", uh, Some("host-role"), NODE))
        .expect("applying pod team-a/h");
    // A pod on another node is not watched.
    s.api
        .apply(&pod_json(
            "team-a",
            "elsewhere",
            "00000000-0000-4000-8000-000000000000",
            Some("app-a"),
            "node-2",
        ))
        .expect("applying pod team-a/elsewhere (on node-2)");
    let a = node.add_pod(&container(ua)).expect("adding pod a");
    let b = node.add_pod(&container(ub)).expect("adding pod b");
    let h = node
        .add_host_network_pod(&container(uh))
        .expect("adding host-network pod h");
    assert!(
        role_list(&a).expect("the role list of pod a") == (200, "app-a".into()),
        "pod a: {:?}",
        role_list(&a).expect("the role list of pod a")
    );
    assert!(
        role_list(&h).expect("the role list of pod h") == (200, "host-role".into()),
        "hostNetwork pod: {:?}",
        role_list(&h).expect("the role list of pod h")
    );
    assert!(
        role_list(&b).expect("the role list of pod b").0 == 404,
        "forbidden role served: {:?}",
        role_list(&b).expect("the role list of pod b")
    );
    wait_for("the IamletRoleForbidden Event", || {
        Ok(s.api.events()?.iter().any(|e| {
            e.to_string().contains("IamletRoleForbidden") && e.to_string().contains("\"b\"")
        }))
    })
    .expect("waiting for the IamletRoleForbidden Event");
}

#[test]
fn pod_start_race_annotation_change_and_deletion() {
    skip_unless_privileged!();
    let node = TestNode::new().expect("creating the test node");
    let uid = "12121212-3434-4565-8787-909090909090";
    let (s, _agent) =
        setup(&node, &["early", "later"]).expect("setting up the fake API server and the agent");
    s.api
        .apply(&namespace_json("team-a", ".*"))
        .expect("applying namespace team-a");
    // The container runs before the API server publishes its pod.
    let pod = node.add_pod(&container(uid)).expect("adding the pod");
    let asking = std::thread::spawn({
        let mut cmd = pod.command("python3");
        cmd.args(["-c", "import urllib.request as u; r=u.urlopen('http://169.254.169.254/latest/meta-data/iam/security-credentials/', timeout=10); print(r.status, r.read().decode())"]);
        move || iamlet_tests::run_with_timeout(&mut cmd, Duration::from_secs(20))
    });
    std::thread::sleep(Duration::from_millis(800));
    s.api
        .apply(&pod_json("team-a", "racer", uid, Some("early"), NODE))
        .expect("applying pod team-a/racer");
    let out = asking
        .join()
        .expect("the asking thread panicked")
        .expect("running the asking pod's request");
    assert!(out.stdout.trim() == "200 early", "pod-start race: {out}");
    // Annotation change applies on the next request.
    s.api
        .apply(&pod_json("team-a", "racer", uid, Some("later"), NODE))
        .expect("applying pod team-a/racer");
    wait_for("the new role", || {
        Ok(role_list(&pod)? == (200, "later".into()))
    })
    .expect("waiting for the new role");
    // Deleted pods lose access at once.
    s.api
        .delete(iamlet_tests::kube_fake::ObjRef {
            api_version: "v1".into(),
            kind: "Pod".into(),
            namespace: Some("team-a".into()),
            name: "racer".into(),
        })
        .expect("deleting pod team-a/racer");
    wait_for("404 after deletion", || Ok(role_list(&pod)?.0 == 404))
        .expect("waiting for 404 after deletion");
}

#[test]
fn watched_pods_are_prefetched_from_sts_with_kiam_and_irsa_annotations() {
    skip_unless_privileged!();
    sts_available().unwrap_or_else(|e| panic!("{e}"));
    let node = TestNode::new().expect("creating the test node");
    let moto = MotoSts::start(&node).expect("starting moto STS");
    let proxy = FaultProxy::start(&node, moto.addr()).expect("starting the fault proxy");
    let endpoint = proxy.endpoint();
    let (s, agent) = setup_with(
        &node,
        Creds::Sts(&endpoint, &["--service-account-roles", "--log", "info"]),
    )
    .expect("setting up the fake API server and the agent");
    s.api
        .apply(&namespace_json("team-a", ".*"))
        .expect("applying namespace team-a");
    proxy
        .reset_stats()
        .expect("resetting the fault proxy stats");

    // A pod with kiam's annotations: prefetched as soon as the watch delivers it, before its
    // container exists.
    let uid = "31313131-4242-4535-8686-979797979797";
    let mut pod = pod_json("team-a", "annotated", uid, Some("app-sts"), NODE);
    pod["metadata"]["annotations"]["iam.amazonaws.com/external-id"] = json!("ext-123");
    pod["metadata"]["annotations"]["iam.amazonaws.com/session-name"] = json!("nightly-report");
    let published = Instant::now();
    s.api.apply(&pod).expect("applying pod team-a/annotated");
    proxy
        .wait_assume_role_calls(1, Duration::from_secs(15))
        .expect("no prefetch after the watch delivered the pod");
    let prefetched_after = published.elapsed();
    let role_arn = format!("arn:aws:iam::{ACCOUNT}:role/app-sts");
    let stats = proxy.stats().expect("the fault proxy stats");
    let call = stats
        .assume_role_log
        .iter()
        .find(|c| c.role_arn.as_deref() == Some(role_arn.as_str()))
        .unwrap_or_else(|| panic!("AssumeRole for {role_arn}: {:?}", stats.assume_role_log));
    assert!(call.external_id.as_deref() == Some("ext-123"), "{call:?}");
    assert!(
        call.role_session_name.as_deref() == Some("nightly-report"),
        "{call:?}"
    );
    let container_a = node
        .add_pod(&container(uid))
        .expect("adding pod container_a");
    let before = proxy.assume_role_calls();
    let got = fetch_credentials(&container_a, Sdk::Boto3)
        .expect("credentials through boto3 in container_a");
    assert!(
        proxy.assume_role_calls() == before,
        "the pod's first request called STS"
    );
    assert!(got.access_key_id.starts_with("ASIA"), "{got:?}");

    // A pod without an annotation whose service account names a role (IRSA style).
    let sa_role = format!("arn:aws:iam::{ACCOUNT}:role/from-service-account");
    s.api
        .apply(&json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": "reporter", "namespace": "team-a",
                         "annotations": {"eks.amazonaws.com/role-arn": sa_role}}
        }))
        .expect("applying service account team-a/reporter");
    let uid_b = "64646464-7575-4868-9797-a8a8a8a8a8a8";
    let mut pod_b = pod_json("team-a", "irsa", uid_b, None, NODE);
    pod_b["spec"]["serviceAccountName"] = json!("reporter");
    s.api.apply(&pod_b).expect("applying pod team-a/irsa");
    let container_b = node
        .add_pod(&container(uid_b))
        .expect("adding pod container_b");
    wait_for("the service account's role", || {
        Ok(role_list(&container_b)? == (200, "from-service-account".into()))
    })
    .expect("waiting for the service account's role");
    let got_b = fetch_credentials(&container_b, Sdk::Boto3)
        .expect("credentials through boto3 in container_b");
    assert!(
        got_b.access_key_id != got.access_key_id,
        "two roles, one key: {got_b:?}"
    );
    assert!(
        proxy
            .stats()
            .expect("the fault proxy stats")
            .assume_role_calls_for(&sa_role)
            >= 1,
        "no AssumeRole for the service account's role"
    );
    eprintln!("prefetched {prefetched_after:?} after the API server published the pod");

    // An upgrade: the successor lists the pods and fetches their credentials before it takes
    // the sockets over, so the pods' next requests, now answered by it, call no STS.
    let before_successor = proxy.assume_role_calls();
    let successor = s
        .successor(&node, &agent)
        .expect("starting the successor agent");
    let at_takeover = proxy.assume_role_calls();
    assert!(
        at_takeover >= before_successor + 2,
        "the successor did not prefetch both roles before taking over ({before_successor} -> {at_takeover} AssumeRole calls):\n{}",
        successor.log_text()
    );
    assert!(
        agent.log_text().contains("handed over to the successor"),
        "no handover:\n{}",
        agent.log_text()
    );
    for pod in [&container_a, &container_b] {
        fetch_credentials(pod, Sdk::Boto3)
            .unwrap_or_else(|e| panic!("credentials through boto3 in {}: {e:#}", pod.name()));
    }
    assert!(
        proxy.assume_role_calls() == at_takeover,
        "requests after the takeover called STS"
    );
}

#[test]
fn no_prefetch_fetches_only_when_a_pod_asks() {
    skip_unless_privileged!();
    sts_available().unwrap_or_else(|e| panic!("{e}"));
    let node = TestNode::new().expect("creating the test node");
    let moto = MotoSts::start(&node).expect("starting moto STS");
    let proxy = FaultProxy::start(&node, moto.addr()).expect("starting the fault proxy");
    let endpoint = proxy.endpoint();
    let (s, _agent) = setup_with(&node, Creds::Sts(&endpoint, &["--no-prefetch"]))
        .expect("setting up the fake API server and the agent");
    s.api
        .apply(&namespace_json("team-a", ".*"))
        .expect("applying namespace team-a");
    proxy
        .reset_stats()
        .expect("resetting the fault proxy stats");
    let uid = "52525252-6363-4747-8585-969696969696";
    s.api
        .apply(&pod_json("team-a", "lazy", uid, Some("app-lazy"), NODE))
        .expect("applying pod team-a/lazy");
    let container_a = node
        .add_pod(&container(uid))
        .expect("adding pod container_a");
    // The watch has delivered the pod (its role is listed) and nothing was fetched.
    wait_for("the pod's role", || {
        Ok(role_list(&container_a)? == (200, "app-lazy".into()))
    })
    .expect("waiting for the pod's role");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        proxy.assume_role_calls() == 0,
        "--no-prefetch: {} AssumeRole calls before the pod asked",
        proxy.assume_role_calls()
    );
    let got = fetch_credentials(&container_a, Sdk::Boto3)
        .expect("credentials through boto3 in container_a");
    assert!(got.access_key_id.starts_with("ASIA"), "{got:?}");
    assert!(
        proxy.assume_role_calls() == 1,
        "the first request fetched once: {}",
        proxy.assume_role_calls()
    );
}

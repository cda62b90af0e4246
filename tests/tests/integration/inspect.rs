//! The operators' commands against a real agent in Kubernetes mode (fake API server, static
//! credentials): `iamlet inspect` lists the node's pods with their roles and what they were
//! served, as a table and as JSON; `iamlet log-filter` changes the running agent's logging;
//! the Kubernetes metrics count the pod index and the watch. Run as root through
//! `cargo xtask test`.

use std::time::Duration;

use iamlet_tests::agent::{agent_bin, metric_value};
use iamlet_tests::{skip_unless_privileged, Agent, FakePod, KubeControl, TestNode};
use serde_json::Value;

use crate::kube::{container, namespace_json, pod_json, setup, wait_for, NODE};

const SERVED_UID: &str = "a1a1a1a1-b2b2-4c3c-8d4d-e5e5e5e5e5e5";
const IDLE_UID: &str = "f6f6f6f6-a7a7-4b8b-9c9c-d0d0d0d0d0d0";
const KEY: &str = "ASIAAPPINSPECT";

/// Runs `iamlet ARGS` inside the node (where the agent's admin server is on loopback).
fn cli(node: &TestNode, args: &[&str]) -> iamlet_tests::RunOutput {
    let bin = agent_bin().display().to_string();
    let mut argv = vec![bin.as_str()];
    argv.extend_from_slice(args);
    node.run_timeout(&argv, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("running iamlet {args:?}: {e:#}"))
}

fn credentials(pod: &FakePod) -> u16 {
    let path = "/latest/meta-data/iam/security-credentials/app-inspect";
    pod.imds("GET", path, &[])
        .unwrap_or_else(|e| panic!("GET {path}: {e:#}"))
        .status
}

fn inspect_json(node: &TestNode) -> Value {
    let out = cli(node, &["inspect", "-o", "json"]);
    assert!(out.success(), "iamlet inspect -o json: {out:?}");
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

fn row<'a>(report: &'a Value, uid: &str) -> &'a Value {
    report["pods"]
        .as_array()
        .and_then(|pods| pods.iter().find(|p| p["uid"] == uid))
        .unwrap_or_else(|| panic!("no row for {uid}: {report:#}"))
}

#[test]
fn inspect_lists_pods_with_roles_and_what_they_were_served() {
    skip_unless_privileged!();
    let node = TestNode::new().expect("creating the test node");
    let (s, mut agent) = setup(&node, &["app-inspect"]).expect("the API server and the agent");
    s.api
        .apply(&namespace_json("shop", ".*"))
        .expect("applying namespace shop");
    s.api
        .apply(&pod_json(
            "shop",
            "cart",
            SERVED_UID,
            Some("app-inspect"),
            NODE,
        ))
        .expect("applying pod shop/cart");
    s.api
        .apply(&pod_json("shop", "idle", IDLE_UID, None, NODE))
        .expect("applying pod shop/idle");
    let pod = node
        .add_pod(&container(SERVED_UID))
        .expect("adding the pod");
    for _ in 0..3 {
        assert_eq!(credentials(&pod), 200);
    }
    wait_for("both pods in the index", || {
        Ok(agent.metric(&node, "iamlet_kube_pods")? >= 2.0)
    })
    .expect("waiting for the pod index");

    let report = inspect_json(&node);
    assert_eq!(report["mode"], "kubernetes", "{report:#}");
    assert_eq!(report["node"], NODE, "{report:#}");
    let served = row(&report, SERVED_UID);
    assert_eq!(served["namespace"], "shop", "{served:#}");
    assert_eq!(served["name"], "cart", "{served:#}");
    assert_eq!(
        served["role"], "arn:aws:iam::123456789012:role/app-inspect",
        "{served:#}"
    );
    assert_eq!(served["credential_source"], "static", "{served:#}");
    assert_eq!(served["access_key_id"], KEY, "{served:#}");
    assert_eq!(served["served"], 3, "{served:#}");
    assert_eq!(served["refused"], 0, "{served:#}");
    assert!(served["last_request"].is_string(), "{served:#}");
    assert!(served["expiration"].is_string(), "{served:#}");
    // The pod's own cgroup (the slice above its container), by id as bpftool shows it.
    let slice = node
        .pods_cgroup()
        .join(iamlet_tests::besteffort_pod_slice(SERVED_UID));
    let slice_id = std::fs::metadata(&slice)
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .expect("the pod slice");
    assert_eq!(served["cgroup_id"], slice_id, "{served:#}");
    let text = report.to_string();
    assert!(
        !text.contains("secret") && !text.contains("\"t\""),
        "{text}"
    );
    let idle = row(&report, IDLE_UID);
    assert_eq!(idle["role_note"], "no role", "{idle:#}");
    assert_eq!(idle["served"], 0, "{idle:#}");
    assert!(idle.get("last_request").is_none(), "{idle:#}");

    let table = cli(&node, &["inspect"]);
    assert!(table.success(), "{table:?}");
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert!(
        lines[0].starts_with("2 pods (kubernetes mode on node node-1)"),
        "{}",
        table.stdout
    );
    assert!(lines[1].starts_with("POD "), "{}", table.stdout);
    let cart = lines
        .iter()
        .find(|l| l.starts_with("shop/cart "))
        .unwrap_or_else(|| panic!("no shop/cart line:\n{}", table.stdout));
    for cell in [SERVED_UID, KEY, "static", " in ", "role/app-inspect"] {
        assert!(cart.contains(cell), "{cell} missing: {cart}");
    }
    assert!(
        cart.contains(" ago ") || cart.contains(" just now "),
        "no last request: {cart}"
    );
    eprintln!("iamlet inspect:\n{}", table.stdout);

    // The Kubernetes metrics.
    let scrape = agent.metrics(&node).expect("scraping the agent");
    for sample in [
        "iamlet_ready 1",
        "iamlet_kube_pods 2",
        "iamlet_kube_watch_errors_total{resource=\"pods\"} 0",
        "iamlet_kube_watch_errors_total{resource=\"namespaces\"} 0",
    ] {
        assert!(scrape.contains(sample), "{sample} missing:\n{scrape}");
    }
    let age =
        metric_value(&scrape, "iamlet_kube_watch_last_event_age_seconds").expect("the watch age");
    assert!((0.0..60.0).contains(&age), "watch age {age}");

    // Stop the agent: the CLI says what is wrong.
    agent.stop().expect("stopping the agent");
    let down = cli(&node, &["inspect"]);
    assert_eq!(down.status.code(), Some(1), "{down:?}");
    assert!(
        down.stderr
            .contains("no iamlet agent answers at 127.0.0.1:9809"),
        "{}",
        down.stderr
    );
}

#[test]
fn log_filter_changes_the_running_agents_logging() {
    skip_unless_privileged!();
    let node = TestNode::new().expect("creating the test node");
    let (s, agent) = setup(&node, &["app-inspect"]).expect("the API server and the agent");
    s.api
        .apply(&namespace_json("shop", ".*"))
        .expect("applying namespace shop");
    s.api
        .apply(&pod_json(
            "shop",
            "cart",
            SERVED_UID,
            Some("app-inspect"),
            NODE,
        ))
        .expect("applying pod shop/cart");
    let pod = node
        .add_pod(&container(SERVED_UID))
        .expect("adding the pod");
    let audit_lines = |agent: &Agent| agent.log_text().matches("credentials served").count();

    let shown = cli(&node, &["log-filter"]);
    assert!(shown.success(), "{shown:?}");
    assert!(!shown.stdout.trim().is_empty(), "{shown:?}");
    let original = shown.stdout.trim().to_owned();

    let off = cli(&node, &["log-filter", "info,iamlet::audit=off"]);
    assert!(off.success(), "{off:?}");
    assert_eq!(off.stdout.trim(), "info,iamlet::audit=off");
    let before = audit_lines(&agent);
    assert_eq!(credentials(&pod), 200);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        audit_lines(&agent),
        before,
        "audit off, yet logged:\n{}",
        agent.log_text()
    );
    assert_eq!(
        cli(&node, &["log-filter"]).stdout.trim(),
        "info,iamlet::audit=off"
    );

    let bad = cli(&node, &["log-filter", "info,iamlet=loudest"]);
    assert_eq!(bad.status.code(), Some(1), "{bad:?}");
    assert!(bad.stderr.contains("400"), "{}", bad.stderr);
    assert!(bad.stderr.contains("invalid log filter"), "{}", bad.stderr);
    assert_eq!(
        cli(&node, &["log-filter"]).stdout.trim(),
        "info,iamlet::audit=off",
        "a bad filter changed nothing"
    );

    let back = cli(&node, &["log-filter", &original]);
    assert!(back.success(), "{back:?}");
    // A pod not answered before gets its first line at once (the first pod's answers are
    // counted into its collapsed line now).
    s.api
        .apply(&pod_json(
            "shop",
            "cart-2",
            IDLE_UID,
            Some("app-inspect"),
            NODE,
        ))
        .expect("applying pod shop/cart-2");
    let second = node
        .add_pod(&container(IDLE_UID))
        .expect("adding the second pod");
    assert_eq!(credentials(&second), 200);
    wait_for("the audit line again", || Ok(audit_lines(&agent) > before))
        .expect("audit logging back on");
}

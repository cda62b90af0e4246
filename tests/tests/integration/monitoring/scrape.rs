//! No dangling queries: a real agent in Kubernetes mode (the fake API server) with STS
//! credentials (moto behind the fault proxy) serves a pod its role, and every metric that the
//! alerting rules and the dashboard query is a family of its `/metrics`. Run as root through
//! `cargo xtask test`.

use std::collections::{BTreeMap, BTreeSet};

use iamlet_tests::kube_fake::{FakeApiServer, KubeControl};
use iamlet_tests::{skip_unless_privileged, sts_available, Agent, FaultProxy, MotoSts, TestNode};

use super::*;
use crate::kube::{container, namespace_json, pod_json, wait_for, NODE};

const UID: &str = "7e7e7e7e-8f8f-4a0a-9b1b-2c2c2c2c2c2c";
const ROLE: &str = "app-monitoring";

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The families of a scrape in the text format 0.0.4, by their `# TYPE` lines: name → type.
fn families(scrape: &str) -> BTreeMap<&str, &str> {
    scrape
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .collect()
}

/// The family a queried name belongs to: itself, or the histogram or summary whose
/// `_bucket` / `_count` / `_sum` series it is.
fn family_of<'a>(name: &str, families: &BTreeMap<&'a str, &'a str>) -> Option<(&'a str, &'a str)> {
    if let Some((family, kind)) = families.get_key_value(name) {
        return Some((family, kind));
    }
    ["_bucket", "_count", "_sum"].iter().find_map(|suffix| {
        let stem = name.strip_suffix(suffix)?;
        let (family, kind) = families.get_key_value(stem)?;
        (*kind == "histogram" || (*kind == "summary" && *suffix != "_bucket"))
            .then_some((*family, *kind))
    })
}

#[test]
fn family_of_resolves_histogram_series_only_for_histograms() {
    let scrape =
        "# TYPE iamlet_a_seconds histogram\n# TYPE iamlet_b_total counter\n# TYPE iamlet_c gauge\n";
    let families = families(scrape);
    assert_eq!(
        family_of("iamlet_a_seconds_bucket", &families),
        Some(("iamlet_a_seconds", "histogram"))
    );
    assert_eq!(
        family_of("iamlet_b_total", &families),
        Some(("iamlet_b_total", "counter"))
    );
    assert_eq!(family_of("iamlet_c_count", &families), None);
    assert_eq!(family_of("iamlet_b", &families), None);
}

#[test]
fn every_metric_the_alerts_and_the_dashboard_query_is_in_a_real_scrape() {
    skip_unless_privileged!();
    sts_available().unwrap_or_else(|e| panic!("{e}"));
    let node = TestNode::new().expect("creating the test node");
    let moto = MotoSts::start(&node).expect("starting moto STS");
    let proxy = FaultProxy::start(&node, moto.addr()).expect("starting the fault proxy");
    let api = FakeApiServer::start_in_node(&node).expect("starting the fake API server");
    let dir = TempDir(
        std::env::temp_dir().join(format!("iamlet-monitoring-test-{}", std::process::id())),
    );
    std::fs::create_dir_all(&dir.0).expect("creating the test's directory");
    let kubeconfig = dir.0.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig)
        .expect("writing the kubeconfig");
    let kubeconfig = kubeconfig.display().to_string();
    let endpoint = proxy.endpoint();
    let agent = Agent::start(
        &node,
        &[
            "--kubeconfig",
            &kubeconfig,
            "--node-name",
            NODE,
            "--base-role-arn",
            "arn:aws:iam::123456789012:role/",
            "--upstream",
            "off",
            "--sts-endpoint",
            &endpoint,
            "--region",
            "us-east-1",
        ],
    )
    .expect("starting the agent");

    // A pod served its role: AssumeRole, the credentials cache and its expiry, the request
    // and connection metrics all have samples.
    api.apply(&namespace_json("shop", ".*"))
        .expect("applying namespace shop");
    api.apply(&pod_json("shop", "cart", UID, Some(ROLE), NODE))
        .expect("applying pod shop/cart");
    let pod = node.add_pod(&container(UID)).expect("adding the pod");
    let path = format!("/latest/meta-data/iam/security-credentials/{ROLE}");
    let answer = pod
        .imds("GET", &path, &[])
        .unwrap_or_else(|e| panic!("GET {path}: {e:#}"));
    assert_eq!(answer.status, 200, "{}", answer.body);
    wait_for("the credentials' expiry gauge", || {
        Ok(agent
            .metrics(&node)?
            .contains("\niamlet_credentials_min_time_to_expiry_seconds "))
    })
    .expect("waiting for the expiry gauge");
    let scrape = agent.metrics(&node).expect("scraping the agent");
    let families = families(&scrape);

    // Every name each query selects, resolved to its family.
    let mut used: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for query in all_queries() {
        for name in metric_names(&query.expr) {
            used.entry(name).or_default().insert(query.place.clone());
        }
    }
    let mut missing = Vec::new();
    let mut table = Vec::new();
    for (name, places) in &used {
        if PROMETHEUS_OWN.contains(&name.as_str()) {
            table.push(format!(
                "  {name:<48} Prometheus's own (exempt); used in {}",
                places.len()
            ));
            continue;
        }
        match family_of(name, &families) {
            Some((family, kind)) if name.starts_with("iamlet_") => {
                table.push(format!(
                    "  {name:<48} {kind} {family}; used in {}",
                    places.len()
                ));
            }
            _ => missing.push(format!(
                "  {name}, used by {}",
                places.iter().cloned().collect::<Vec<_>>().join("; ")
            )),
        }
    }
    assert!(
        missing.is_empty(),
        "{} metric(s) queried by {ALERTS} or {DASHBOARD} are not iamlet families of the agent's \
         scrape (nor exempt: {PROMETHEUS_OWN:?}):\n{}\n\nthe scrape:\n{scrape}",
        missing.len(),
        missing.join("\n")
    );
    eprintln!(
        "{} metric names queried, every one in the scrape:\n{}",
        used.len(),
        table.join("\n")
    );

    // The other way round, for the report: families nothing queries.
    let queried: BTreeSet<&str> = used
        .keys()
        .filter_map(|name| family_of(name, &families).map(|(family, _)| family))
        .collect();
    let unqueried: Vec<&str> = families
        .keys()
        .copied()
        .filter(|f| !queried.contains(f))
        .collect();
    eprintln!("families no alert or panel queries: {unqueried:?}");
}

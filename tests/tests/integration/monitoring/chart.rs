//! The chart with the monitoring toggles on, rendered by a real helm: the PrometheusRule
//! carries the rules file's groups as they are, the `ConfigMap` the dashboard as it is, with the
//! Grafana sidecar's label; with the toggles off (the default) neither is rendered.

use k8s_openapi::api::core::v1::ConfigMap;
use serde::Deserialize;

use super::*;

/// The documents `helm template` renders with `--set` of each of `sets`.
fn render(helm: &Path, sets: &[&str]) -> Vec<serde_yaml::Value> {
    let extra: Vec<&str> = sets.iter().flat_map(|set| ["--set", set]).collect();
    let text = crate::manifests::chart::render(helm, &extra);
    serde_yaml::Deserializer::from_str(&text)
        .map(|document| serde_yaml::Value::deserialize(document).expect("a YAML document"))
        .filter(|document| !document.is_null())
        .collect()
}

/// The one document of `kind`, if any (more than one is an error).
fn only_of_kind<'a>(
    documents: &'a [serde_yaml::Value],
    kind: &str,
) -> Option<&'a serde_yaml::Value> {
    let mut found = documents
        .iter()
        .filter(|d| d["kind"].as_str() == Some(kind));
    let first = found.next();
    assert!(found.next().is_none(), "more than one {kind}");
    first
}

fn label<'a>(object: &'a serde_yaml::Value, name: &str) -> Option<&'a str> {
    object["metadata"]["labels"][name].as_str()
}

#[test]
fn chart_renders_the_alerts_and_the_dashboard_as_they_are() {
    let Some(helm) = crate::manifests::chart::helm_or_skip(
        "chart_renders_the_alerts_and_the_dashboard_as_they_are",
    ) else {
        return;
    };

    let defaults = render(&helm, &[]);
    assert!(
        only_of_kind(&defaults, "PrometheusRule").is_none()
            && only_of_kind(&defaults, "ConfigMap").is_none(),
        "the monitoring toggles are off by default"
    );

    let documents = render(
        &helm,
        &[
            "metrics.prometheusRule.enabled=true",
            "metrics.prometheusRule.labels.release=kube-prometheus-stack",
            "metrics.grafanaDashboard.enabled=true",
            "metrics.grafanaDashboard.annotations.grafana_folder=iamlet",
            "metrics.serviceMonitor.enabled=true",
        ],
    );

    let rule = only_of_kind(&documents, "PrometheusRule").expect("a PrometheusRule");
    assert_eq!(
        rule["apiVersion"].as_str(),
        Some("monitoring.coreos.com/v1")
    );
    assert_eq!(rule["metadata"]["name"].as_str(), Some("iamlet"));
    assert_eq!(rule["metadata"]["namespace"].as_str(), Some("kube-system"));
    assert_eq!(label(rule, "app.kubernetes.io/name"), Some("iamlet"));
    assert_eq!(label(rule, "release"), Some("kube-prometheus-stack"));
    let file: serde_yaml::Value = serde_yaml::from_str(&read(ALERTS)).expect("the rules file");
    assert_eq!(
        rule["spec"], file,
        "the PrometheusRule's spec must be {ALERTS} as it is"
    );

    let map = only_of_kind(&documents, "ConfigMap").expect("a ConfigMap");
    let typed: ConfigMap = serde_yaml::from_value(map.clone()).unwrap_or_else(|e| {
        panic!("the dashboard ConfigMap does not parse as a v1 ConfigMap: {e}")
    });
    assert_eq!(typed.metadata.name.as_deref(), Some("iamlet-dashboard"));
    assert_eq!(typed.metadata.namespace.as_deref(), Some("kube-system"));
    assert_eq!(label(map, "grafana_dashboard"), Some("1"));
    assert_eq!(
        map["metadata"]["annotations"]["grafana_folder"].as_str(),
        Some("iamlet")
    );
    let data = typed.data.unwrap_or_default();
    assert_eq!(data.len(), 1, "one dashboard: {:?}", data.keys());
    let json = data.get("iamlet.json").expect("data iamlet.json");
    let rendered: Value = serde_json::from_str(json)
        .unwrap_or_else(|e| panic!("the ConfigMap's iamlet.json is not JSON: {e}"));
    assert_eq!(
        rendered,
        dashboard(),
        "the ConfigMap must carry {DASHBOARD} as it is"
    );

    // The alerts find the agents by a job containing "iamlet": the ServiceMonitor's job is its
    // Service's name.
    let service = only_of_kind(&documents, "Service").expect("the metrics Service");
    let job = service["metadata"]["name"]
        .as_str()
        .expect("a Service name");
    assert!(
        job.contains("iamlet"),
        "job {job} would not match the alerts"
    );

    // The sidecar's label and the namespace are the operator's to choose.
    let elsewhere = render(
        &helm,
        &[
            "metrics.grafanaDashboard.enabled=true",
            "metrics.grafanaDashboard.label=dashboards",
            "metrics.grafanaDashboard.labelValue=iamlet",
            "metrics.grafanaDashboard.namespace=monitoring",
        ],
    );
    let map = only_of_kind(&elsewhere, "ConfigMap").expect("a ConfigMap");
    assert_eq!(label(map, "dashboards"), Some("iamlet"));
    assert_eq!(label(map, "grafana_dashboard"), None);
    assert_eq!(map["metadata"]["namespace"].as_str(), Some("monitoring"));
    assert!(only_of_kind(&elsewhere, "PrometheusRule").is_none());
}

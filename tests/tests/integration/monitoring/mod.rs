//! The chart's monitoring: the alerting rules (`deploy/helm/iamlet/files/alerts.yaml`) and the
//! Grafana dashboard (`files/dashboard.json`), which the chart embeds behind
//! `metrics.prometheusRule.enabled` and `metrics.grafanaDashboard.enabled`.
//!
//! * `alerts.rs` (no privileges): `promtool check rules`, and `promtool test rules` with
//!   `tests/fixtures/promtool/alerts_test.yaml`, which has every alert firing and not firing;
//!   every alert has a severity, a summary, a description and a runbook section in
//!   `deploy/README.md`.
//! * `dashboard.rs` (no privileges): the dashboard's structure (the `datasource` variable on
//!   every panel and query), and each of its queries parsed by promtool.
//! * `chart.rs` (no privileges; skipped without helm, as `manifests::` is): the chart rendered
//!   with both toggles on carries the rules file and the dashboard as they are.
//! * `scrape.rs` (root, moto): a real agent in Kubernetes mode with STS credentials serves a
//!   pod, and every metric the rules and the dashboard query is in its `/metrics`: no dangling
//!   query. `up`, the series Prometheus itself records for every target, is the one exemption
//!   ([`PROMETHEUS_OWN`]).

mod alerts;
mod chart;
mod dashboard;
mod scrape;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

/// The alerting rules, a plain Prometheus rules file.
const ALERTS: &str = "deploy/helm/iamlet/files/alerts.yaml";
/// The Grafana dashboard.
const DASHBOARD: &str = "deploy/helm/iamlet/files/dashboard.json";
/// The rules' unit tests.
const ALERTS_TEST: &str = "tests/fixtures/promtool/alerts_test.yaml";
/// The runbook: a section per alert.
const RUNBOOK: &str = "deploy/README.md";
/// Metrics the queries may use that the agent does not expose: `up`, recorded by Prometheus
/// for every target it scrapes (0 when the scrape failed).
const PROMETHEUS_OWN: &[&str] = &["up"];

use crate::manifests::root;

fn read(relative: &str) -> String {
    let path = root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// A Prometheus rules file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    groups: Vec<RuleGroup>,
}

/// A group of rules.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleGroup {
    name: String,
    rules: Vec<AlertRule>,
}

/// An alerting rule (the file has no recording rules).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertRule {
    alert: String,
    expr: String,
    #[serde(rename = "for")]
    pending: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

fn alert_rules() -> Vec<AlertRule> {
    let file: RulesFile = serde_yaml::from_str(&read(ALERTS))
        .unwrap_or_else(|e| panic!("{ALERTS} is not a rules file of alerting rules: {e}"));
    assert!(!file.groups.is_empty(), "{ALERTS} has no groups");
    file.groups
        .into_iter()
        .inspect(|g| assert!(!g.rules.is_empty(), "group {} has no rules", g.name))
        .flat_map(|g| g.rules)
        .collect()
}

fn dashboard() -> Value {
    serde_json::from_str(&read(DASHBOARD))
        .unwrap_or_else(|e| panic!("{DASHBOARD} is not JSON: {e}"))
}

/// A Prometheus query and where it is (an alert, a dashboard panel or variable).
#[derive(Debug)]
struct Query {
    place: String,
    expr: String,
}

/// The dashboard's panels, those inside rows included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in list.as_array().into_iter().flatten() {
            out.push(panel);
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// Every query of the dashboard: its panels' targets, and its query variables
/// (`label_values(SELECTOR, label)` counts as its selector).
fn dashboard_queries(dashboard: &Value) -> Vec<Query> {
    let mut queries = Vec::new();
    for panel in panels(dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("panel {:?} has a target without expr", panel["title"]));
            queries.push(Query {
                place: format!(
                    "panel \"{}\" query {}",
                    panel["title"].as_str().unwrap_or_default(),
                    target["refId"].as_str().unwrap_or_default()
                ),
                expr: expr.to_owned(),
            });
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if variable["type"] != "query" {
            continue;
        }
        let query = variable["query"]["query"]
            .as_str()
            .or_else(|| variable["query"].as_str())
            .unwrap_or_else(|| panic!("variable {:?} has no query", variable["name"]));
        let (selector, _label) = query
            .strip_prefix("label_values(")
            .and_then(|rest| rest.strip_suffix(')'))
            .and_then(|args| args.rsplit_once(','))
            .unwrap_or_else(|| {
                panic!(
                    "variable {:?}: expected label_values(SELECTOR, label), got {query:?}",
                    variable["name"]
                )
            });
        queries.push(Query {
            place: format!(
                "variable \"{}\"",
                variable["name"].as_str().unwrap_or_default()
            ),
            expr: selector.trim().to_owned(),
        });
    }
    queries
}

/// Every query of the alerting rules and the dashboard.
fn all_queries() -> Vec<Query> {
    let mut queries: Vec<Query> = alert_rules()
        .into_iter()
        .map(|rule| Query {
            place: format!("alert {}", rule.alert),
            expr: rule.expr,
        })
        .collect();
    queries.extend(dashboard_queries(&dashboard()));
    queries
}

/// Aggregation operators: a word followed by `by`/`without` or `(`, never a metric.
const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
];
/// Binary operators and literals spelled as words.
const KEYWORDS: &[&str] = &[
    "and", "or", "unless", "bool", "offset", "inf", "nan", "atan2",
];
/// Modifiers followed by a list of label names.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names the Prometheus query `expr` selects: every identifier that is not a function call, an
/// aggregation, a keyword, a label name (in `{...}`, `by (...)` and the like), a string, a
/// number or duration, a range, or a Grafana `$variable`. A selector by `__name__` is refused:
/// its metric could not be checked.
fn metric_names(expr: &str) -> BTreeSet<String> {
    assert!(
        !expr.contains("__name__"),
        "{expr}: selects by __name__; name the metric instead"
    );
    let chars: Vec<char> = expr.chars().collect();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '"' | '\'' | '`') {
            i = skip_string(&chars, i);
        } else if c == '{' {
            i = skip_group(&chars, i, '}');
        } else if c == '[' {
            i = skip_group(&chars, i, ']');
        } else if c == '$' || c.is_ascii_digit() || c == '.' {
            // A variable, a number (1e3, 0x1f, 0.5) or a duration (5m).
            i += 1;
            while i < chars.len() && (ident(chars[i]) || chars[i] == '.') {
                i += 1;
            }
        } else if ident(c) {
            let start = i;
            while i < chars.len() && ident(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let lower = word.to_ascii_lowercase();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let called = chars.get(next) == Some(&'(');
            if LABEL_LISTS.contains(&lower.as_str()) {
                if called {
                    i = skip_group(&chars, next, ')');
                }
            } else if !called
                && !AGGREGATIONS.contains(&lower.as_str())
                && !KEYWORDS.contains(&lower.as_str())
            {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The index after the string literal that starts at `start`.
fn skip_string(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            '\\' if quote != '`' => i += 2,
            c if c == quote => return i + 1,
            _ => i += 1,
        }
    }
    panic!(
        "unterminated string in {}",
        chars.iter().collect::<String>()
    )
}

/// The index after the `close` that ends the group opened at `start` (strings inside skipped).
fn skip_group(chars: &[char], start: usize, close: char) -> usize {
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => i = skip_string(chars, i),
            c if c == close => return i + 1,
            _ => i += 1,
        }
    }
    panic!(
        "no {close:?} closes the group at {start} in {}",
        chars.iter().collect::<String>()
    )
}

#[test]
fn metric_names_are_read_from_promql() {
    let cases: &[(&str, &[&str])] = &[
        (
            r#"sum by (le, route) (rate(iamlet_x_bucket{instance=~"$instance", a="}{"}[$__rate_interval]))"#,
            &["iamlet_x_bucket"],
        ),
        (r#"up{job=~".*iamlet.*"} == 0"#, &["up"]),
        (r#"absent(up{job=~".*iamlet.*"})"#, &["up"]),
        (
            "sum without (resource) (increase(a_total[10m])) > 0\n  and b_seconds > 600",
            &["a_total", "b_seconds"],
        ),
        (
            "rate(a[5m]) / ON (instance) group_left (version) b offset 5m > 0.5e1",
            &["a", "b"],
        ),
        (
            "histogram_quantile(0.99, sum(rate(h_bucket[5m:1m])) by (le)) or vector(0x1f)",
            &["h_bucket"],
        ),
        (
            "topk(3, count_values without (x) (\"v\", c)) unless d",
            &["c", "d"],
        ),
        ("iamlet_build_info", &["iamlet_build_info"]),
    ];
    for (expr, want) in cases {
        let want: BTreeSet<String> = want.iter().map(|s| (*s).to_owned()).collect();
        assert_eq!(metric_names(expr), want, "{expr}");
    }
}

//! The Grafana dashboard: its Prometheus comes from the `datasource` variable on every panel
//! and query, panels have unique ids and fit the grid, and every query is a Prometheus query that
//! promtool parses (with Grafana's variables replaced by what Grafana would put there).

use std::collections::BTreeSet;

use iamlet_tests::promtool;
use serde_json::Value;

use super::*;

/// The data source every panel and query names.
const DATASOURCE_UID: &str = "${datasource}";
/// Grafana's variables in the queries, and a value of each for parsing.
const VARIABLES: &[(&str, &str)] = &[("$__rate_interval", "5m"), ("$instance", ".*")];

fn assert_datasource(what: &str, datasource: &Value) {
    assert_eq!(
        datasource["uid"], DATASOURCE_UID,
        "{what}: the data source must be the `datasource` variable"
    );
    assert_eq!(datasource["type"], "prometheus", "{what}");
}

#[test]
fn dashboard_panels_use_the_datasource_variable_and_fit_the_grid() {
    let dashboard = dashboard();
    assert!(
        dashboard["title"].as_str().is_some_and(|t| !t.is_empty()),
        "a title"
    );
    assert_eq!(dashboard["uid"], "iamlet", "a fixed uid keeps links stable");
    assert!(
        dashboard["schemaVersion"].as_u64().is_some(),
        "a schemaVersion"
    );
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list");
    let datasource = variables
        .iter()
        .find(|v| v["name"] == "datasource")
        .expect("a `datasource` variable");
    assert_eq!(datasource["type"], "datasource");
    assert_eq!(datasource["query"], "prometheus");
    for variable in variables.iter().filter(|v| v["type"] == "query") {
        assert_datasource(
            &format!("variable {}", variable["name"]),
            &variable["datasource"],
        );
    }

    let mut ids = BTreeSet::new();
    let mut charts = 0;
    for panel in panels(&dashboard) {
        let title = panel["title"].as_str().unwrap_or_default();
        assert!(!title.is_empty(), "a panel without a title: {panel}");
        let id = panel["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("{title}: no id"));
        assert!(ids.insert(id), "{title}: panel id {id} is used twice");
        let grid = &panel["gridPos"];
        let (x, w) = (grid["x"].as_u64(), grid["w"].as_u64());
        assert!(
            x.zip(w).is_some_and(|(x, w)| w > 0 && x + w <= 24)
                && grid["y"].is_u64()
                && grid["h"].as_u64().is_some_and(|h| h > 0),
            "{title}: gridPos {grid} must fit the 24 columns"
        );
        if panel["type"] == "row" {
            continue;
        }
        charts += 1;
        assert_datasource(title, &panel["datasource"]);
        let targets = panel["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        assert!(!targets.is_empty(), "{title}: no queries");
        for target in targets {
            assert_datasource(
                &format!("{title} target {}", target["refId"]),
                &target["datasource"],
            );
        }
    }
    eprintln!(
        "{charts} panels, {} queries",
        dashboard_queries(&dashboard).len()
    );
}

#[test]
fn dashboard_queries_parse_as_promql() {
    // Each query as a recording rule: `promtool check rules` parses every expression.
    #[derive(serde::Serialize)]
    struct Rule {
        record: String,
        expr: String,
    }
    let queries = dashboard_queries(&dashboard());
    let mut rules = Vec::new();
    for (n, query) in queries.iter().enumerate() {
        let mut expr = query.expr.clone();
        for (variable, value) in VARIABLES {
            expr = expr.replace(variable, value);
        }
        assert!(
            !expr.contains('$'),
            "{}: {} uses a Grafana variable this test does not know; add it to VARIABLES",
            query.place,
            query.expr
        );
        rules.push(Rule {
            record: format!("dashboard:query_{n}"),
            expr,
        });
    }
    let file = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    let path = std::env::temp_dir().join(format!(
        "iamlet-dashboard-queries-{}.yaml",
        std::process::id()
    ));
    std::fs::write(&path, serde_yaml::to_string(&file).expect("YAML"))
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    let checked = promtool::check_rules(&[&path]);
    let _ = std::fs::remove_file(&path);
    let report = checked.unwrap_or_else(|e| {
        let listed: Vec<String> = queries
            .iter()
            .enumerate()
            .map(|(n, q)| format!("  query_{n}: {}: {}", q.place, q.expr))
            .collect();
        panic!("{e:#}\nthe queries:\n{}", listed.join("\n"))
    });
    assert!(
        report.contains(&format!("SUCCESS: {} rules found", queries.len())),
        "{report}"
    );
    eprintln!("{} dashboard queries parse", queries.len());
}

//! The alerting rules with promtool: they check, their unit tests pass and cover every alert
//! firing and not firing; every alert tells an operator how bad it is and what to do.

use std::collections::BTreeSet;

use iamlet_tests::promtool;
use serde::Deserialize;

use super::*;

/// The severities the rules use.
const SEVERITIES: &[&str] = &["critical", "warning"];

/// A promtool unit-test file, as far as this test reads it.
#[derive(Debug, Deserialize)]
struct UnitTests {
    rule_files: Vec<String>,
    tests: Vec<UnitTestGroup>,
}

#[derive(Debug, Deserialize)]
struct UnitTestGroup {
    #[serde(default)]
    alert_rule_test: Vec<AlertCase>,
}

#[derive(Debug, Deserialize)]
struct AlertCase {
    alertname: String,
    #[serde(default)]
    exp_alerts: Vec<serde_yaml::Value>,
}

#[test]
fn alert_rules_pass_promtool_check() {
    let report = promtool::check_rules(&[&root().join(ALERTS)]).unwrap_or_else(|e| panic!("{e:#}"));
    let rules = alert_rules().len();
    assert!(
        report.contains(&format!("SUCCESS: {rules} rules found")),
        "promtool saw other rules than the {rules} alerts: {report}"
    );
    eprintln!("{report}");
}

#[test]
fn alert_rules_pass_their_promtool_unit_tests() {
    let report =
        promtool::test_rules(&[&root().join(ALERTS_TEST)]).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(report.contains("SUCCESS"), "{report}");
    eprintln!("{report}");
}

#[test]
fn every_alert_has_unit_tests_firing_and_not_firing() {
    let tests: UnitTests =
        serde_yaml::from_str(&read(ALERTS_TEST)).unwrap_or_else(|e| panic!("{ALERTS_TEST}: {e}"));
    let test_dir = root().join(ALERTS_TEST);
    let test_dir = test_dir.parent().expect("the fixture's directory");
    let rule_files: Vec<PathBuf> = tests
        .rule_files
        .iter()
        .map(|f| {
            test_dir
                .join(f)
                .canonicalize()
                .unwrap_or_else(|e| panic!("{ALERTS_TEST} names {f}: {e}"))
        })
        .collect();
    let alerts_file = root().join(ALERTS).canonicalize().expect("the rules file");
    assert_eq!(
        rule_files,
        [alerts_file],
        "{ALERTS_TEST} must test {ALERTS}, and only it"
    );

    let cases: Vec<&AlertCase> = tests
        .tests
        .iter()
        .flat_map(|g| &g.alert_rule_test)
        .collect();
    let alerts: BTreeSet<String> = alert_rules().into_iter().map(|r| r.alert).collect();
    for case in &cases {
        assert!(
            alerts.contains(&case.alertname),
            "{ALERTS_TEST} tests {}, which {ALERTS} does not have",
            case.alertname
        );
    }
    for alert in &alerts {
        let fires = cases
            .iter()
            .any(|c| &c.alertname == alert && !c.exp_alerts.is_empty());
        let stays_quiet = cases
            .iter()
            .any(|c| &c.alertname == alert && c.exp_alerts.is_empty());
        assert!(fires, "{ALERTS_TEST} has no case where {alert} fires");
        assert!(
            stays_quiet,
            "{ALERTS_TEST} has no case where {alert} does not fire"
        );
    }
    eprintln!(
        "{} alerts, {} unit-test cases, each alert firing and not firing",
        alerts.len(),
        cases.len()
    );
}

#[test]
fn every_alert_says_how_bad_it_is_and_what_to_do() {
    let runbook = read(RUNBOOK);
    let headings: BTreeSet<String> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("#### "))
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    let mut names = BTreeSet::new();
    for rule in alert_rules() {
        let alert = &rule.alert;
        assert!(names.insert(alert.clone()), "{alert} is defined twice");
        assert!(
            alert.starts_with("Iamlet") && alert.chars().all(|c| c.is_ascii_alphanumeric()),
            "{alert}: alert names are IamletCamelCase"
        );
        let severity = rule.labels.get("severity").map(String::as_str);
        assert!(
            severity.is_some_and(|s| SEVERITIES.contains(&s)),
            "{alert}: severity {severity:?}, expected one of {SEVERITIES:?}"
        );
        let keys: BTreeSet<&str> = rule.annotations.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            BTreeSet::from(["description", "summary"]),
            "{alert}: annotations"
        );
        // A section per alert, its GitHub anchor the alert's name in lower case.
        let anchor = alert.to_ascii_lowercase();
        assert!(
            rule.annotations["description"].ends_with(&format!("Runbook: {RUNBOOK}#{anchor}")),
            "{alert}: the description ends with its runbook link, {RUNBOOK}#{anchor}"
        );
        assert!(
            headings.contains(&anchor),
            "{RUNBOOK} has no section `#### {alert}`"
        );
        if let Some(pending) = &rule.pending {
            assert!(
                pending.ends_with('m'),
                "{alert}: for {pending}, expected minutes"
            );
        }
    }
}

//! Prometheus's own tool (Debian's `prometheus` package, installed by `cargo xtask setup`):
//! `promtool check metrics` on what the agent exposes, and `promtool check rules` /
//! `promtool test rules` on the chart's alerting rules and their unit tests.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// Runs `promtool check metrics` on a scrape; an error carries every problem it reported.
pub fn check_metrics(scrape: &str) -> Result<()> {
    run(&["check", "metrics"], &[], Some(scrape)).map(drop)
}

/// Runs `promtool check rules` on rules files (syntax, expressions, templates); its report on
/// success, an error with it otherwise.
pub fn check_rules(files: &[&Path]) -> Result<String> {
    run(&["check", "rules"], files, None)
}

/// Runs `promtool test rules` on unit-test files (each names its rules files); its report on
/// success, an error with every failed case otherwise.
pub fn test_rules(files: &[&Path]) -> Result<String> {
    run(&["test", "rules"], files, None)
}

/// Runs `promtool ARGS FILES`, with `stdin` written to its input; its stdout and stderr on
/// success.
fn run(args: &[&str], files: &[&Path], stdin: Option<&str>) -> Result<String> {
    let mut command = format!("promtool {}", args.join(" "));
    for file in files {
        command.push_str(&format!(" {}", file.display()));
    }
    let mut child = Command::new("promtool")
        .args(args)
        .args(files)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting promtool (cargo xtask setup installs Debian's prometheus package)")?;
    if let Some(text) = stdin {
        let mut input = child.stdin.take().context("promtool's stdin")?;
        input
            .write_all(text.as_bytes())
            .with_context(|| format!("writing the input of {command}"))?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for {command}"))?;
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("{command}: {}\n{report}", out.status);
    }
    Ok(report)
}

//! Prometheus's own linter on what the agent exposes: `promtool check metrics` (Debian's
//! `prometheus` package, installed by `cargo xtask setup`).

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// Runs `promtool check metrics` on a scrape; an error carries every problem it reported.
pub fn check_metrics(scrape: &str) -> Result<()> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting promtool (cargo xtask setup installs Debian's prometheus package)")?;
    {
        let mut stdin = child.stdin.take().context("promtool's stdin")?;
        stdin
            .write_all(scrape.as_bytes())
            .context("writing the scrape to promtool")?;
    }
    let out = child.wait_with_output().context("waiting for promtool")?;
    if !out.status.success() {
        bail!(
            "promtool check metrics: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

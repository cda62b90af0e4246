//! What `iamlet doctor` found: one [`Check`] per line, its verdict, what was found and, for a
//! problem, what to do; rendered as text for an operator or as one JSON object.

use serde::Serialize;

/// The verdict of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Status {
    /// As it should be.
    Ok,
    /// Works, but something deserves a look (or could not be checked).
    Warn,
    /// A problem: iamlet does not work (fully) on this node until it is fixed.
    Fail,
    /// Does not apply here (the finding says why).
    Skip,
}

impl Status {
    /// The mark printed in the text report: problems in capitals so that they stand out.
    fn mark(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
            Status::Skip => "skip",
        }
    }
}

/// One check's outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Check {
    /// Short name, e.g. `kernel`, `attach connect4`.
    pub(crate) name: String,
    /// The verdict.
    pub(crate) status: Status,
    /// What was found, in one line.
    pub(crate) finding: String,
    /// What to do about it (warnings and problems).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) action: Option<String>,
}

/// `text` on one line: line breaks (some errors span several) become `; ` (a space after
/// a colon), and the indentation after them goes.
fn one_line(text: impl Into<String>) -> String {
    let text = text.into();
    if !text.contains(['\n', '\r']) {
        return text;
    }
    let mut out = String::new();
    for line in text.lines().map(str::trim).filter(|line| !line.is_empty()) {
        if !out.is_empty() {
            out.push_str(if out.ends_with(':') { " " } else { "; " });
        }
        out.push_str(line);
    }
    out
}

impl Check {
    /// A check that found things as they should be.
    pub(crate) fn ok(name: impl Into<String>, finding: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            status: Status::Ok,
            finding: one_line(finding),
            action: None,
        }
    }

    /// A check that does not apply, and why.
    pub(crate) fn skip(name: impl Into<String>, why: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            status: Status::Skip,
            finding: one_line(why),
            action: None,
        }
    }

    /// Something to look at, and what to do.
    pub(crate) fn warn(
        name: impl Into<String>,
        finding: impl Into<String>,
        action: impl Into<String>,
    ) -> Check {
        Check {
            name: name.into(),
            status: Status::Warn,
            finding: one_line(finding),
            action: Some(one_line(action)),
        }
    }

    /// A problem, and what to do.
    pub(crate) fn fail(
        name: impl Into<String>,
        finding: impl Into<String>,
        action: impl Into<String>,
    ) -> Check {
        Check {
            name: name.into(),
            status: Status::Fail,
            finding: one_line(finding),
            action: Some(one_line(action)),
        }
    }
}

/// How many checks ended how.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Summary {
    /// Checks that passed.
    pub(crate) ok: usize,
    /// Warnings.
    pub(crate) warn: usize,
    /// Problems.
    pub(crate) fail: usize,
    /// Checks that did not apply.
    pub(crate) skip: usize,
    /// No problem found (warnings allowed): the exit status is 0.
    pub(crate) healthy: bool,
}

/// Everything `iamlet doctor` found.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Report {
    /// Where the settings came from and whom the checks looked at (printed above the checks).
    pub(crate) notes: Vec<String>,
    /// The checks, in the order they ran.
    pub(crate) checks: Vec<Check>,
    /// The counts.
    pub(crate) summary: Summary,
}

impl Report {
    /// A report of `checks`, with its summary.
    pub(crate) fn new(notes: Vec<String>, checks: Vec<Check>) -> Report {
        let mut summary = Summary::default();
        for check in &checks {
            match check.status {
                Status::Ok => summary.ok += 1,
                Status::Warn => summary.warn += 1,
                Status::Fail => summary.fail += 1,
                Status::Skip => summary.skip += 1,
            }
        }
        summary.healthy = summary.fail == 0;
        Report {
            notes,
            checks,
            summary,
        }
    }

    /// The text report: the notes, one line per check (mark, name, finding) with a `fix:` line
    /// under each warning and problem, then the counts.
    pub(crate) fn to_text(&self) -> String {
        let width = self
            .checks
            .iter()
            .map(|c| c.name.chars().count())
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        for note in &self.notes {
            out.push_str(note);
            out.push('\n');
        }
        if !self.notes.is_empty() {
            out.push('\n');
        }
        for check in &self.checks {
            out.push_str(&format!(
                "{:<4}  {:<width$}  {}\n",
                check.status.mark(),
                check.name,
                check.finding
            ));
            if let Some(action) = &check.action {
                out.push_str(&format!("{:<4}  {:<width$}  fix: {action}\n", "", ""));
            }
        }
        let s = &self.summary;
        out.push_str(&format!(
            "\n{} ok, {} {}, {} {}, {} skipped: {}\n",
            s.ok,
            s.warn,
            plural(s.warn, "warning", "warnings"),
            s.fail,
            plural(s.fail, "problem", "problems"),
            s.skip,
            if s.healthy {
                "iamlet can work on this node"
            } else {
                "fix the problems above (FAIL)"
            }
        ));
        out
    }

    /// The JSON report (`-o json`): `{"notes":[..],"checks":[{name,status,finding,action}],
    /// "summary":{ok,warn,fail,skip,healthy}}`.
    pub(crate) fn to_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).unwrap_or_else(|e| {
            // Only strings and numbers are serialised; this cannot fail, but never panic.
            format!("{{\"error\":\"cannot render the report: {e}\"}}")
        });
        text.push('\n');
        text
    }
}

fn plural(n: usize, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 {
        one
    } else {
        many
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        Report::new(
            vec!["agent: pid 42".to_owned()],
            vec![
                Check::ok("kernel", "Linux 6.1.176"),
                Check::fail("attach connect4", "not attached", "start the agent"),
                Check::warn("btf", "absent", "nothing"),
                Check::skip("kubernetes api", "standalone mode"),
            ],
        )
    }

    #[test]
    fn text_has_one_line_per_check_and_a_fix_under_each_problem() {
        let text = sample().to_text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "agent: pid 42");
        assert_eq!(lines[1], "");
        assert_eq!(lines[2], "ok    kernel           Linux 6.1.176");
        assert_eq!(lines[3], "FAIL  attach connect4  not attached");
        assert_eq!(lines[4], "                       fix: start the agent");
        assert_eq!(lines[5], "WARN  btf              absent");
        assert_eq!(lines[7], "skip  kubernetes api   standalone mode");
        assert_eq!(
            lines.last().copied(),
            Some("1 ok, 1 warning, 1 problem, 1 skipped: fix the problems above (FAIL)")
        );
    }

    #[test]
    fn json_has_the_checks_and_a_summary() {
        let report = sample();
        assert!(!report.summary.healthy);
        let value: serde_json::Value =
            serde_json::from_str(&report.to_json()).expect("the report is JSON");
        assert_eq!(value["checks"][0]["name"], "kernel");
        assert_eq!(value["checks"][0]["status"], "ok");
        assert!(value["checks"][0].get("action").is_none());
        assert_eq!(value["checks"][1]["status"], "fail");
        assert_eq!(value["checks"][1]["action"], "start the agent");
        assert_eq!(value["checks"][3]["status"], "skip");
        assert_eq!(value["summary"]["fail"], 1);
        assert_eq!(value["summary"]["healthy"], false);
        assert_eq!(value["notes"][0], "agent: pid 42");
    }

    #[test]
    fn a_finding_over_several_lines_is_put_on_one() {
        let check = Check::fail(
            "aws identity",
            "no credentials found in chain. Attempted:\n  Environment: not set\n  Profile: none\n",
            "give it credentials",
        );
        assert_eq!(
            check.finding,
            "no credentials found in chain. Attempted: Environment: not set; Profile: none"
        );
    }

    #[test]
    fn warnings_alone_are_healthy() {
        let report = Report::new(Vec::new(), vec![Check::warn("btf", "absent", "nothing")]);
        assert!(report.summary.healthy);
        assert!(report
            .to_text()
            .ends_with("0 ok, 1 warning, 0 problems, 0 skipped: iamlet can work on this node\n"));
    }
}

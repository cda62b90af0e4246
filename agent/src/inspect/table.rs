//! `iamlet inspect`'s table: one line per pod, columns aligned, times relative to when the
//! agent made the report (`in 54m`, `3s ago`).

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use super::report::{PodRow, Report};
use crate::timefmt::parse_utc;

const HEADERS: [&str; 10] = [
    "POD",
    "UID",
    "CGROUP ID",
    "ROLE",
    "SOURCE",
    "ACCESS KEY",
    "EXPIRES",
    "LAST REQUEST",
    "SERVED",
    "REFUSED",
];

/// The report as a table, with a summary line first.
pub(crate) fn render(report: &Report) -> String {
    let at = parse_utc(&report.generated_at).ok();
    let mut rows: Vec<[String; 10]> = vec![HEADERS.map(str::to_owned)];
    rows.extend(report.pods.iter().map(|row| cells(row, at)));
    let mut widths = [0usize; 10];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let node = report
        .node
        .as_deref()
        .map_or(String::new(), |n| format!(" on node {n}"));
    let _ = writeln!(
        out,
        "{} pods ({} mode{node}) at {}",
        report.pods.len(),
        report.mode,
        report.generated_at
    );
    for row in &rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn cells(row: &PodRow, at: Option<SystemTime>) -> [String; 10] {
    let dash = || "-".to_owned();
    let pod = match (&row.namespace, &row.name) {
        (Some(ns), Some(name)) => format!("{ns}/{name}"),
        _ => row.cgroup.clone().unwrap_or_else(dash),
    };
    let role = match (&row.role, &row.role_note) {
        (Some(role), _) => role.clone(),
        (None, Some(note)) => format!("({note})"),
        (None, None) => dash(),
    };
    let expires = match (&row.expiration, &row.credential_error) {
        (_, Some(code)) => format!("error: {code}"),
        (Some(t), None) => relative(t, at, true),
        (None, None) => dash(),
    };
    [
        pod,
        row.uid.clone().unwrap_or_else(dash),
        row.cgroup_id.map_or_else(dash, |id| id.to_string()),
        role,
        row.credential_source.clone(),
        row.access_key_id.clone().unwrap_or_else(dash),
        expires,
        row.last_request
            .as_deref()
            .map_or_else(dash, |t| relative(t, at, false)),
        row.served.to_string(),
        row.refused.to_string(),
    ]
}

/// `in 54m` / `expired 3m ago` (future) or `12s ago` (past), from `at`.
fn relative(time: &str, at: Option<SystemTime>, future: bool) -> String {
    let (Some(at), Ok(t)) = (at, parse_utc(time)) else {
        return time.to_owned();
    };
    match (t.duration_since(at), future) {
        (Ok(ahead), true) => format!("in {}", short(ahead)),
        (Ok(_), false) => "just now".to_owned(),
        (Err(e), true) => format!("expired {} ago", short(e.duration())),
        (Err(e), false) => format!("{} ago", short(e.duration())),
    }
}

/// `4s`, `12m`, `3h20m`, `2d3h`.
fn short(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86_400, s % 86_400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_rows_aligned_with_relative_times() {
        let report = Report {
            mode: "kubernetes".to_owned(),
            node: Some("node-a".to_owned()),
            generated_at: "2026-12-01T04:00:00Z".to_owned(),
            pods: vec![
                PodRow {
                    namespace: Some("shop".to_owned()),
                    name: Some("cart-7d9f".to_owned()),
                    uid: Some("0b6f8a3e-6a3c-4b51-9d7c-2a1f0e9c4d11".to_owned()),
                    cgroup_id: Some(4211),
                    role: Some("arn:aws:iam::123456789012:role/cart".to_owned()),
                    credential_source: "sts".to_owned(),
                    access_key_id: Some("ASIAEXAMPLE".to_owned()),
                    expiration: Some("2026-12-01T04:54:00Z".to_owned()),
                    last_request: Some("2026-12-01T03:59:57Z".to_owned()),
                    served: 12,
                    ..PodRow::default()
                },
                PodRow {
                    namespace: Some("kube-system".to_owned()),
                    name: Some("dns".to_owned()),
                    role_note: Some("no role".to_owned()),
                    credential_source: "none".to_owned(),
                    ..PodRow::default()
                },
            ],
        };
        let text = render(&report);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "2 pods (kubernetes mode on node node-a) at 2026-12-01T04:00:00Z"
        );
        assert!(lines[1].starts_with("POD "), "{text}");
        assert!(lines[2].contains("shop/cart-7d9f"), "{text}");
        assert!(lines[2].contains("in 54m"), "{text}");
        assert!(lines[2].contains("3s ago"), "{text}");
        assert!(lines[3].contains("(no role)"), "{text}");
        // Aligned: every column starts at the same offset on every line.
        let col = lines[1].find("ROLE").expect("ROLE column");
        assert_eq!(lines[2].find("arn:aws"), Some(col), "{text}");
        assert_eq!(lines[3].find("(no role)"), Some(col), "{text}");
        assert_eq!(short(Duration::from_secs(12_000)), "3h20m");
        assert_eq!(
            relative(
                "2026-12-01T03:57:00Z",
                parse_utc("2026-12-01T04:00:00Z").ok(),
                true
            ),
            "expired 3m ago"
        );
    }
}

//! The two scrape formats, by content negotiation: OpenMetrics 1.0 (what prometheus-client
//! writes, and what Prometheus asks for first) to clients that accept it, and the classic
//! Prometheus text format 0.0.4 to every other client (curl, `promtool check metrics`, older
//! agents), as Prometheus's own client libraries do.
//!
//! The two differ, for what iamlet exposes, in three places: a counter's `# HELP` and
//! `# TYPE` name its samples' `_total` name in 0.0.4; `# UNIT` lines and the final `# EOF`
//! are OpenMetrics only.

use prometheus_client::registry::Registry;

/// The content type of each format.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT_004: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A scrape format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    /// OpenMetrics 1.0.
    OpenMetrics,
    /// Prometheus text 0.0.4.
    Text,
}

impl Format {
    /// The format for a request's `Accept` header.
    pub(crate) fn negotiate(accept: Option<&[u8]>) -> Self {
        let accepts_openmetrics = accept.is_some_and(|a| {
            a.windows(b"application/openmetrics-text".len())
                .any(|w| w.eq_ignore_ascii_case(b"application/openmetrics-text"))
        });
        if accepts_openmetrics {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }

    /// The response's content type.
    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => OPENMETRICS,
            Format::Text => TEXT_004,
        }
    }
}

/// The registry's samples in `format`.
pub(crate) fn encode(registry: &Registry, format: Format) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(match format {
        Format::OpenMetrics => out,
        Format::Text => to_text_004(&out),
    })
}

/// OpenMetrics text as prometheus-client writes it (per family: `# HELP`, `# TYPE`, an
/// optional `# UNIT`, then samples), in the 0.0.4 format.
fn to_text_004(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // A family's help line waits for its type, which decides the name both carry.
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            flush_help(&mut out, help.take());
            help = Some(rest.split_once(' ').unwrap_or((rest, "")));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (shown, kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "unknown" => (name.to_owned(), "untyped"),
                other => (name.to_owned(), other),
            };
            match help.take() {
                Some((help_name, text)) if help_name == name => {
                    out.push_str(&format!("# HELP {shown} {}\n", unescape_help(text)));
                }
                other => flush_help(&mut out, other),
            }
            out.push_str(&format!("# TYPE {shown} {kind}\n"));
            continue;
        }
        flush_help(&mut out, help.take());
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    flush_help(&mut out, help);
    out
}

fn flush_help(out: &mut String, help: Option<(&str, &str)>) {
    if let Some((name, text)) = help {
        out.push_str(&format!("# HELP {name} {}\n", unescape_help(text)));
    }
}

/// OpenMetrics escapes `"` in help text; 0.0.4 escapes only `\` and line feeds.
fn unescape_help(text: &str) -> String {
    text.replace("\\\"", "\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiates_like_prometheus_clients() {
        let prometheus = b"application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::negotiate(Some(b"*/*")), Format::Text);
        assert_eq!(Format::negotiate(None), Format::Text);
        assert_eq!(Format::negotiate(Some(b"text/plain")), Format::Text);
    }

    #[test]
    fn counters_carry_their_total_name_and_openmetrics_lines_go() {
        let om = "# HELP x_requests Requests \\\"answered\\\".\n# TYPE x_requests counter\nx_requests_total{route=\"a\"} 3\n# HELP x_open Open.\n# TYPE x_open gauge\nx_open 2\n# HELP x_took Time.\n# TYPE x_took histogram\n# UNIT x_took seconds\nx_took_bucket{le=\"+Inf\"} 1\nx_took_sum 0.5\nx_took_count 1\n# EOF\n";
        let text = to_text_004(om);
        assert_eq!(
            text,
            "# HELP x_requests_total Requests \"answered\".\n# TYPE x_requests_total counter\nx_requests_total{route=\"a\"} 3\n# HELP x_open Open.\n# TYPE x_open gauge\nx_open 2\n# HELP x_took Time.\n# TYPE x_took histogram\nx_took_bucket{le=\"+Inf\"} 1\nx_took_sum 0.5\nx_took_count 1\n"
        );
    }
}

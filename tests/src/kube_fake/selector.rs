//! Field and label selectors as the API server parses and applies them.

use std::collections::BTreeSet;

use serde_json::Value;

/// A parsed `fieldSelector`: terms joined by `,`, each `field=value`, `field==value` or
/// `field!=value`. A missing field compares as `""` (so `spec.nodeName=` selects unscheduled
/// pods, as on a real cluster).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector {
    terms: Vec<(String, bool, String)>,
}

impl FieldSelector {
    /// Parses `s`; `allowed` lists the field labels the resource supports (anything else is
    /// rejected like the API server's `field label not supported`).
    pub fn parse(s: &str, allowed: &[&str]) -> Result<FieldSelector, String> {
        let mut terms = Vec::new();
        for raw in split_unescaped(s, ',') {
            let raw = raw.trim();
            if raw.is_empty() {
                continue;
            }
            let (field, eq, value) = if let Some(i) = find_unescaped(raw, "!=") {
                (&raw[..i], false, &raw[i + 2..])
            } else if let Some(i) = find_unescaped(raw, "==") {
                (&raw[..i], true, &raw[i + 2..])
            } else if let Some(i) = find_unescaped(raw, "=") {
                (&raw[..i], true, &raw[i + 1..])
            } else {
                return Err(format!("invalid selector: '{s}'; can't understand '{raw}'"));
            };
            let field = field.trim();
            if !allowed.contains(&field) {
                return Err(format!("field label not supported: {field}"));
            }
            terms.push((field.to_string(), eq, unescape(value.trim())));
        }
        Ok(FieldSelector { terms })
    }

    /// Whether `obj` matches every term.
    pub fn matches(&self, obj: &Value) -> bool {
        self.terms.iter().all(|(field, eq, value)| {
            let actual = field_value(obj, field);
            (actual == *value) == *eq
        })
    }

    /// The value a `field=value` term pins, if any (used to narrow `metadata.name`).
    pub fn required(&self, field: &str) -> Option<&str> {
        self.terms
            .iter()
            .find(|(f, eq, _)| f == field && *eq)
            .map(|(_, _, v)| v.as_str())
    }

    /// Whether the selector has no terms.
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }
}

/// The string value of a dotted field path (`spec.nodeName`); `""` when missing, booleans
/// and numbers as their JSON text.
pub fn field_value(obj: &Value, path: &str) -> String {
    let mut cur = obj;
    for part in path.split('.') {
        match cur.get(part) {
            Some(v) => cur = v,
            None => return String::new(),
        }
    }
    match cur {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn split_unescaped(s: &str, sep: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut part = String::new();
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            part.push('\\');
            part.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            out.push(std::mem::take(&mut part));
        } else {
            part.push(c);
        }
    }
    out.push(part);
    out
}

fn find_unescaped(s: &str, pat: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            i += 2;
            continue;
        }
        if s[i..].starts_with(pat) {
            return Some(i);
        }
        i += 1;
    }
    None
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            out.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else {
            out.push(c);
        }
    }
    out
}

/// One label requirement.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Req {
    Exists(String),
    NotExists(String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Gt(String, i64),
    Lt(String, i64),
}

/// A parsed `labelSelector` (`k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (a,b)`,
/// `k notin (a,b)`, `k>1`, `k<1`, joined by `,`). `k!=v` and `notin` also match objects
/// without the label, as in Kubernetes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {
    reqs: Vec<Req>,
}

impl LabelSelector {
    /// Parses a label selector.
    pub fn parse(s: &str) -> Result<LabelSelector, String> {
        let mut reqs = Vec::new();
        // Split on commas outside parentheses.
        let mut depth = 0;
        let mut cur = String::new();
        let mut parts = Vec::new();
        for c in s.chars() {
            match c {
                '(' => {
                    depth += 1;
                    cur.push(c);
                }
                ')' => {
                    depth -= 1;
                    cur.push(c);
                }
                ',' if depth == 0 => parts.push(std::mem::take(&mut cur)),
                _ => cur.push(c),
            }
        }
        parts.push(cur);
        let bad =
            |p: &str| format!("unable to parse requirement: invalid label selector {s:?} at {p:?}");
        for part in parts {
            let p = part.trim();
            if p.is_empty() {
                continue;
            }
            if let Some(k) = p.strip_prefix('!') {
                let k = k.trim();
                check_key(k).map_err(|()| bad(p))?;
                reqs.push(Req::NotExists(k.to_string()));
                continue;
            }
            if let Some(i) = p.find("!=") {
                let (k, v) = (p[..i].trim(), p[i + 2..].trim());
                check_key(k).map_err(|()| bad(p))?;
                reqs.push(Req::NotIn(k.to_string(), [v.to_string()].into()));
                continue;
            }
            if let Some(i) = p.find("==") {
                let (k, v) = (p[..i].trim(), p[i + 2..].trim());
                check_key(k).map_err(|()| bad(p))?;
                reqs.push(Req::In(k.to_string(), [v.to_string()].into()));
                continue;
            }
            if let Some(i) = p.find('=') {
                let (k, v) = (p[..i].trim(), p[i + 1..].trim());
                check_key(k).map_err(|()| bad(p))?;
                reqs.push(Req::In(k.to_string(), [v.to_string()].into()));
                continue;
            }
            if let Some(i) = p.find('>') {
                let k = p[..i].trim();
                let n = p[i + 1..].trim().parse().map_err(|_| bad(p))?;
                reqs.push(Req::Gt(k.to_string(), n));
                continue;
            }
            if let Some(i) = p.find('<') {
                let k = p[..i].trim();
                let n = p[i + 1..].trim().parse().map_err(|_| bad(p))?;
                reqs.push(Req::Lt(k.to_string(), n));
                continue;
            }
            let words: Vec<&str> = p.splitn(2, char::is_whitespace).collect();
            if words.len() == 2 {
                let k = words[0].trim();
                let rest = words[1].trim();
                let (op, set) = if let Some(r) = rest.strip_prefix("notin") {
                    (false, r)
                } else if let Some(r) = rest.strip_prefix("in") {
                    (true, r)
                } else {
                    return Err(bad(p));
                };
                let set = set.trim();
                let inner = set
                    .strip_prefix('(')
                    .and_then(|s| s.strip_suffix(')'))
                    .ok_or_else(|| bad(p))?;
                let values: BTreeSet<String> = inner
                    .split(',')
                    .map(|v| v.trim().to_string())
                    .filter(|v| !v.is_empty())
                    .collect();
                check_key(k).map_err(|()| bad(p))?;
                reqs.push(if op {
                    Req::In(k.to_string(), values)
                } else {
                    Req::NotIn(k.to_string(), values)
                });
                continue;
            }
            check_key(p).map_err(|()| bad(p))?;
            reqs.push(Req::Exists(p.to_string()));
        }
        Ok(LabelSelector { reqs })
    }

    /// Whether `obj`'s `metadata.labels` satisfy every requirement.
    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels");
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.reqs.iter().all(|r| match r {
            Req::Exists(k) => get(k).is_some(),
            Req::NotExists(k) => get(k).is_none(),
            Req::In(k, set) => get(k).is_some_and(|v| set.contains(v)),
            Req::NotIn(k, set) => get(k).is_none_or(|v| !set.contains(v)),
            Req::Gt(k, n) => get(k)
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v > *n),
            Req::Lt(k, n) => get(k)
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v < *n),
        })
    }
}

fn check_key(k: &str) -> Result<(), ()> {
    if k.is_empty()
        || !k
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
    {
        return Err(());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn labels() {
        let o = json!({"metadata": {"labels": {"app": "a", "tier": "web"}}});
        let none = json!({"metadata": {}});
        for (sel, on_o, on_none) in [
            ("app=a", true, false),
            ("app==a", true, false),
            ("app!=b", true, true),
            ("app!=a", false, true),
            ("app", true, false),
            ("!app", false, true),
            ("app in (a, b)", true, false),
            ("app notin (a,b)", false, true),
            ("app in (a,b),tier=web", true, false),
            ("app in (a,b),tier!=web", false, false),
            ("", true, true),
        ] {
            let s = LabelSelector::parse(sel).unwrap();
            assert_eq!(s.matches(&o), on_o, "{sel} on o");
            assert_eq!(s.matches(&none), on_none, "{sel} on none");
        }
        assert!(LabelSelector::parse("app in a").is_err());
    }

    #[test]
    fn fields() {
        let allowed = ["metadata.name", "spec.nodeName"];
        let p = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1"}});
        let s = FieldSelector::parse("spec.nodeName=n1,metadata.name!=q", &allowed).unwrap();
        assert!(s.matches(&p));
        let s = FieldSelector::parse("spec.nodeName==n2", &allowed).unwrap();
        assert!(!s.matches(&p));
        assert!(FieldSelector::parse("spec.bogus=1", &allowed).is_err());
        let s = FieldSelector::parse("spec.nodeName=", &allowed).unwrap();
        assert!(s.matches(&json!({"metadata": {"name": "x"}})));
    }
}

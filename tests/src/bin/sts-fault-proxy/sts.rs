//! The STS side: the parameters of a request (query and form body), its SigV4 scope, the
//! AssumeRole log entry, and answers in STS's XML error format.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Response, StatusCode, Uri};
use serde_json::{json, Value};

pub(crate) type Answer = Response<Full<Bytes>>;

pub(crate) fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub(crate) fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// An STS (awsQuery) error answer:
/// `<ErrorResponse><Error><Type/><Code/><Message/></Error><RequestId/></ErrorResponse>`.
pub(crate) fn sts_error(status: StatusCode, code: &str, message: &str, request_id: &str) -> Answer {
    let kind = if status.is_server_error() {
        "Receiver"
    } else {
        "Sender"
    };
    let body = format!(
        "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\n  <Error>\n    <Type>{kind}</Type>\n    <Code>{}</Code>\n    <Message>{}</Message>\n  </Error>\n  <RequestId>{request_id}</RequestId>\n</ErrorResponse>\n",
        xml_escape(code),
        xml_escape(message)
    );
    let mut answer = Response::new(Full::new(Bytes::from(body)));
    *answer.status_mut() = status;
    let h = answer.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/xml"));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert(HeaderName::from_static("x-amzn-requestid"), v);
    }
    answer
}

pub(crate) fn json_answer(status: StatusCode, v: &Value) -> Answer {
    let mut answer = Response::new(Full::new(Bytes::from(v.to_string())));
    *answer.status_mut() = status;
    answer.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    answer
}

/// Headers that belong to one hop and are not relayed.
pub(crate) fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "content-length"
    )
}

pub(crate) fn copy_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        if !is_hop_by_hop(name) {
            to.append(name.clone(), value.clone());
        }
    }
}

/// The request's parameters: the query string, then a form-encoded body.
pub(crate) fn params(uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = uri
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|ct| ct.starts_with("application/x-www-form-urlencoded"));
    if is_form && !body.is_empty() {
        out.extend(form_urlencoded::parse(body).into_owned());
    }
    out
}

pub(crate) fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// `Prefix.member.N.<field>` lists (`Tags.member.1.Key`, `TransitiveTagKeys.member.2`), in
/// index order, as (index, field, value).
pub(crate) fn members<'a>(
    params: &'a [(String, String)],
    prefix: &str,
) -> Vec<(u32, &'a str, &'a str)> {
    let head = format!("{prefix}.member.");
    let mut out: Vec<(u32, &str, &str)> = params
        .iter()
        .filter_map(|(k, v)| {
            let rest = k.strip_prefix(&head)?;
            let (index, field) = rest.split_once('.').unwrap_or((rest, ""));
            Some((index.parse().ok()?, field, v.as_str()))
        })
        .collect();
    out.sort_by_key(|(i, f, _)| (*i, f.to_string()));
    out
}

/// `(access key id, region)` from a SigV4 `Authorization` header
/// (`AWS4-HMAC-SHA256 Credential=AKID/20260101/us-east-1/sts/aws4_request, ...`).
pub(crate) fn sigv4_scope(headers: &HeaderMap) -> (Option<String>, Option<String>) {
    let Some(auth) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return (None, None);
    };
    let Some(cred) = auth
        .split(['\u{20}', ','])
        .find_map(|part| part.strip_prefix("Credential="))
    else {
        return (None, None);
    };
    let mut parts = cred.split('/');
    let key = parts.next().map(str::to_owned);
    let region = parts.nth(1).map(str::to_owned);
    (key, region)
}

pub(crate) fn assume_role_entry(
    params: &[(String, String)],
    headers: &HeaderMap,
    fault: &str,
    request_id: &str,
) -> Value {
    let mut tags: Vec<Value> = Vec::new();
    let mut by_index: BTreeMap<u32, (Option<&str>, Option<&str>)> = BTreeMap::new();
    for (i, field, value) in members(params, "Tags") {
        let e = by_index.entry(i).or_default();
        match field {
            "Key" => e.0 = Some(value),
            "Value" => e.1 = Some(value),
            _ => {}
        }
    }
    for (_, (k, v)) in by_index {
        tags.push(json!({ "key": k.unwrap_or(""), "value": v.unwrap_or("") }));
    }
    let transitive: Vec<&str> = members(params, "TransitiveTagKeys")
        .into_iter()
        .map(|(_, _, v)| v)
        .collect();
    let policy_arns: Vec<&str> = members(params, "PolicyArns")
        .into_iter()
        .filter(|(_, f, _)| *f == "arn")
        .map(|(_, _, v)| v)
        .collect();
    let (key, region) = sigv4_scope(headers);
    json!({
        "role_arn": param(params, "RoleArn"),
        "role_session_name": param(params, "RoleSessionName"),
        "external_id": param(params, "ExternalId"),
        "duration_seconds": param(params, "DurationSeconds").and_then(|d| d.parse::<u64>().ok()),
        "source_identity": param(params, "SourceIdentity"),
        "tags": tags,
        "transitive_tag_keys": transitive,
        "policy_arns": policy_arns,
        "signing_access_key_id": key,
        "signing_region": region,
        "fault": fault,
        "request_id": request_id,
        "at_unix_ms": now_unix_ms(),
    })
}

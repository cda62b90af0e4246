//! The instance metadata API as each pod sees it. Routes (any API version: `latest`, `1.0`,
//! `YYYY-MM-DD`):
//!
//! | request | answer |
//! |---|---|
//! | `PUT /<v>/api/token` + `X-aws-ec2-metadata-token-ttl-seconds: 1..21600` | 200, a token bound to the caller, TTL header echoed; 400 if the TTL is missing or out of range; 403 if `X-Forwarded-For` is present |
//! | `GET /<v>/meta-data/iam/` | `info` and `security-credentials/` (404 without a role) |
//! | `GET /<v>/meta-data/iam/security-credentials[/]` | the caller's role name (404 without a role) |
//! | `GET /<v>/meta-data/iam/security-credentials/<role>` | credentials JSON for the caller's role; 404 for any other name; 500 `{"Code","Message"}` if they cannot be had |
//! | `GET /<v>/meta-data/iam/security-credentials-extended/...` | the same, with `AccountId` |
//! | `GET /<v>/meta-data/iam/info` | `{"Code","LastUpdated","InstanceProfileArn","InstanceProfileId"}` |
//! | other `meta-data/iam/*`, `identity-credentials/*` | 404, never forwarded |
//! | `GET /iamlet/whoami` | JSON: who iamlet thinks the caller is (debugging aid) |
//! | other allowed paths (`--allow-path`) | forwarded to the real service with the agent's own token; 404 if not allowed |
//!
//! A GET carrying `X-aws-ec2-metadata-token` needs a valid, unexpired token minted for the same
//! caller (401 otherwise); without one it is served unless `--require-imdsv2` (then 401).
//! Callers over their rate limit get 429 (token PUTs are not limited).

pub(crate) mod audit;
pub(crate) mod passthrough;
pub(crate) mod paths;
pub(crate) mod ratelimit;
pub(crate) mod session;
pub(crate) mod token;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use hyper::header::{HeaderName, HeaderValue};
use hyper::Method;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::caller::attribution::Caller;
use crate::clock;
use crate::credentials::{CredentialError, CredentialSource, Credentials};
use crate::role::{RoleBinding, RoleResolver};
use crate::server::{self, RequestHeaders, Resp};
use crate::timefmt::format_utc;
use audit::{Audit, Outcome};
use passthrough::Upstream;
use paths::{AllowList, Route};
use ratelimit::RateLimiter;
use session::Session;
use token::TokenKey;

// Header names made once: looked up by a `&str`, a name is parsed and checked on every
// request.
const TTL_HEADER: HeaderName = HeaderName::from_static("x-aws-ec2-metadata-token-ttl-seconds");
const TOKEN_HEADER: HeaderName = HeaderName::from_static("x-aws-ec2-metadata-token");
const FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const ALLOW: HeaderName = HeaderName::from_static("allow");
const RETRY_AFTER: HeaderName = HeaderName::from_static("retry-after");
const TEXT: &str = "text/plain";

/// Who a token and a rate-limit bucket belong to: the pod, or the bare cgroup outside pods.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Subject {
    /// A pod, by UID.
    Pod(String),
    /// A cgroup that is no pod's.
    Cgroup(u64),
}

impl Subject {
    /// The subject of a caller.
    pub(crate) fn of(caller: &Caller) -> Self {
        match &caller.pod_uid {
            Some(uid) => Subject::Pod(uid.clone()),
            None => Subject::Cgroup(caller.cgroup_id),
        }
    }
}

/// Settings of the metadata API.
#[derive(Clone, Debug)]
pub(crate) struct ImdsSettings {
    /// Refuse tokenless (IMDSv1) GETs.
    pub require_imdsv2: bool,
    /// Paths that may be forwarded.
    pub allow: AllowList,
    /// Requests per second per caller (0: unlimited).
    pub rate_limit: f64,
    /// Burst per caller.
    pub rate_burst: f64,
    /// Longest a credentials request may wait for its source.
    pub credentials_timeout: Duration,
}

/// The metadata API.
#[derive(Debug)]
pub(crate) struct Imds {
    settings: ImdsSettings,
    tokens: TokenKey,
    roles: Arc<dyn RoleResolver>,
    credentials: Arc<dyn CredentialSource>,
    upstream: Option<Upstream>,
    limiter: RateLimiter<Subject>,
    audit: Arc<Audit>,
}

/// An answer: the route name (for metrics and the audit log), the response, and what the
/// audit log is to record of it (credentials served, or a refusal), if anything.
#[derive(Debug)]
pub(crate) struct Answer {
    /// The route (a fixed set of names).
    pub route: &'static str,
    /// The response.
    pub resp: Resp,
    /// What the audit log records.
    pub audit: Option<Outcome>,
}

impl Answer {
    fn plain(route: &'static str, resp: Resp) -> Self {
        Answer {
            route,
            resp,
            audit: None,
        }
    }

    fn refused(route: &'static str, resp: Resp, reason: impl Into<Cow<'static, str>>) -> Self {
        Answer {
            route,
            resp,
            audit: Some(Outcome::Refused {
                reason: reason.into(),
            }),
        }
    }
}

fn text(status: u16, body: impl Into<bytes::Bytes>) -> Resp {
    server::response(status, TEXT, body)
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct CredentialsDoc<'a> {
    code: &'static str,
    last_updated: String,
    #[serde(rename = "Type")]
    kind: &'static str,
    access_key_id: &'a str,
    secret_access_key: &'a str,
    token: &'a str,
    expiration: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    account_id: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct InfoDoc {
    code: &'static str,
    last_updated: String,
    instance_profile_arn: String,
    instance_profile_id: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ErrorDoc<'a> {
    code: &'a str,
    message: &'a str,
}

/// A stable, instance-profile-id-shaped identifier for a role (`AIPA` + 17 characters).
pub(crate) fn instance_profile_id(role_arn: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let digest = Sha256::digest(role_arn.as_bytes());
    let mut id = String::from("AIPA");
    id.extend(
        digest
            .iter()
            .take(17)
            .map(|b| ALPHABET[usize::from(*b) % 32] as char),
    );
    id
}

/// The credentials document the SDKs parse.
pub(crate) fn credentials_json(creds: &Credentials, account_id: Option<&str>) -> String {
    let doc = CredentialsDoc {
        code: "Success",
        last_updated: format_utc(creds.last_updated),
        kind: "AWS-HMAC",
        access_key_id: &creds.access_key_id,
        secret_access_key: &creds.secret_access_key,
        token: &creds.session_token,
        expiration: format_utc(creds.expiration),
        account_id,
    };
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

fn error_json(status: u16, code: &str, message: &str) -> Resp {
    let body = serde_json::to_string(&ErrorDoc { code, message }).unwrap_or_default();
    text(status, body)
}

fn unix_now() -> u64 {
    clock::wall()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Imds {
    /// The metadata API over the given sources. `upstream` is `None` when passthrough is off.
    pub(crate) fn new(
        settings: ImdsSettings,
        tokens: TokenKey,
        roles: Arc<dyn RoleResolver>,
        credentials: Arc<dyn CredentialSource>,
        upstream: Option<Upstream>,
    ) -> Self {
        let limiter = RateLimiter::new(settings.rate_limit, settings.rate_burst);
        let audit = Arc::new(Audit::new(roles.clone()));
        Imds {
            settings,
            tokens,
            roles,
            credentials,
            upstream,
            limiter,
            audit,
        }
    }

    /// Answers one request of `caller` on a connection whose state is `session`, read at
    /// `received`.
    pub(crate) async fn handle(
        &self,
        caller: &Caller,
        session: &Session,
        (method, raw_path, headers): (&Method, &str, &dyn RequestHeaders),
        received: Instant,
    ) -> Answer {
        let path = match paths::normalize(raw_path) {
            Ok(path) => path,
            Err(e) => {
                return Answer::plain("bad_request", text(400, format!("Bad Request: {e}\n")))
            }
        };
        let route = paths::route(&path);
        if route == Route::Token {
            // Minting costs one HMAC and SDKs treat anything but 200 on this PUT as fatal or
            // as "no IMDSv2", so it is not rate limited.
            let resp = self.token(session, method, headers);
            if resp.status() == 403 {
                return Answer::refused("token", resp, "X-Forwarded-For on a token request");
            }
            return Answer::plain("token", resp);
        }
        if !self.limiter.allow(session.subject(), received) {
            let mut resp = text(429, "Too Many Requests\n");
            resp.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
            // A client over its rate does not keep its connection: it reconnects, and its
            // connections count against its pod's limit.
            resp.headers_mut()
                .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
            return Answer::refused("rate_limited", resp, "over the pod's request rate");
        }
        if method != Method::GET && method != Method::HEAD {
            let mut resp = text(405, "Method Not Allowed\n");
            resp.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return Answer::plain("method_not_allowed", resp);
        }
        if let Some((refusal, reason)) = self.check_token(session, headers) {
            return Answer::refused("unauthorized", refusal, reason);
        }
        match route {
            Route::Whoami => Answer::plain("whoami", server::json(200, caller)),
            Route::IamListing => match self.binding(caller).await {
                Ok(Some(_)) => {
                    Answer::plain("iam_listing", text(200, "info\nsecurity-credentials/"))
                }
                Ok(None) => Answer::plain("iam_listing", text(404, "Not Found\n")),
                Err(resp) => Answer::plain("iam_listing", resp),
            },
            Route::IamInfo => Answer::plain("iam_info", self.info(caller).await),
            Route::RoleList { .. } => match self.binding(caller).await {
                Ok(Some(b)) => Answer::plain("role_list", text(200, b.role_name().to_owned())),
                Ok(None) => Answer::plain("role_list", text(404, "Not Found\n")),
                Err(resp) => Answer::plain("role_list", resp),
            },
            Route::RoleCredentials { role, extended } => {
                let (resp, outcome) = self.role_credentials(caller, role, extended).await;
                Answer {
                    route: "role_credentials",
                    resp,
                    audit: Some(outcome),
                }
            }
            Route::Forbidden => Answer::plain("forbidden", text(404, "Not Found\n")),
            Route::Token => unreachable!("handled above"),
            Route::Other => Answer::plain("passthrough", self.passthrough(&path).await),
        }
    }

    fn token(&self, session: &Session, method: &Method, headers: &dyn RequestHeaders) -> Resp {
        if method != Method::PUT {
            let mut resp = text(405, "Method Not Allowed\n");
            resp.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("PUT"));
            return resp;
        }
        if headers.first(&FORWARDED_FOR).is_some() {
            return text(403, "Forbidden\n");
        }
        let asked = headers.first(&TTL_HEADER);
        let ttl = match token::parse_ttl(asked) {
            Ok(ttl) => ttl,
            Err(reason) => return text(400, format!("Bad Request: {reason}\n")),
        };
        // The TTL is echoed: as the client wrote it where that is the number's own text
        // (every SDK does), else as the number. The SDKs' default, the longest, is a
        // constant: it allocates nothing.
        let echoed = match asked {
            Some(b"21600") => HeaderValue::from_static("21600"),
            Some(value) if token::is_canonical_ttl(value) => {
                HeaderValue::from_bytes(value).unwrap_or_else(|_| HeaderValue::from(ttl))
            }
            _ => HeaderValue::from(ttl),
        };
        let token = self.tokens.mint(session.binding(), unix_now(), ttl);
        let mut resp = text(200, token);
        resp.headers_mut().insert(TTL_HEADER, echoed);
        resp
    }

    /// `Some(401, why)` when the request's token (or its absence) is not acceptable.
    fn check_token(
        &self,
        session: &Session,
        headers: &dyn RequestHeaders,
    ) -> Option<(Resp, Cow<'static, str>)> {
        let memo = session.tokens();
        match headers.first(&TOKEN_HEADER) {
            Some(value) => {
                let now = unix_now();
                if memo.accepts(value, now) {
                    return None;
                }
                // As `HeaderValue::to_str`: visible ASCII (and tabs) only.
                let visible = value
                    .iter()
                    .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b));
                let token = if visible {
                    std::str::from_utf8(value).unwrap_or("")
                } else {
                    ""
                };
                match self.tokens.verify(token, session.binding(), now) {
                    Ok(expiry) => {
                        memo.remember(value, expiry);
                        None
                    }
                    Err(e) => Some((
                        text(401, "Unauthorized\n"),
                        format!("IMDSv2 token refused: {e}").into(),
                    )),
                }
            }
            None if self.settings.require_imdsv2 => Some((
                text(401, "Unauthorized\n"),
                "no IMDSv2 token (--require-imdsv2)".into(),
            )),
            None => None,
        }
    }

    /// The audit log (its periodic flush runs apart).
    pub(crate) fn audit(&self) -> &Arc<Audit> {
        &self.audit
    }

    async fn binding(&self, caller: &Caller) -> Result<Option<Arc<RoleBinding>>, Resp> {
        self.roles.role_for(caller).await.map_err(|e| {
            tracing::warn!(cgroup_id = caller.cgroup_id, error = %e, "role lookup failed");
            error_json(500, "RoleLookupFailed", &e.to_string())
        })
    }

    async fn credentials(
        &self,
        binding: &RoleBinding,
    ) -> Result<Arc<Credentials>, CredentialError> {
        let timeout = self.settings.credentials_timeout;
        match tokio::time::timeout(timeout, self.credentials.credentials(binding)).await {
            Ok(result) => result,
            Err(_) => Err(CredentialError::new(
                "RequestTimeout",
                format!(
                    "credentials for {} were not available within {timeout:?}",
                    binding.role_arn
                ),
            )),
        }
    }

    async fn role_credentials(
        &self,
        caller: &Caller,
        role: &str,
        extended: bool,
    ) -> (Resp, Outcome) {
        let refused = |resp: Resp, reason: Cow<'static, str>| (resp, Outcome::Refused { reason });
        let binding = match self.binding(caller).await {
            Ok(Some(b)) if b.role_name() == role => b,
            Ok(Some(_)) => {
                return refused(text(404, "Not Found\n"), "not this pod's role".into());
            }
            Ok(None) => return refused(text(404, "Not Found\n"), "no role for this pod".into()),
            Err(resp) => return refused(resp, "role lookup failed".into()),
        };
        match self.credentials(&binding).await {
            Ok(creds) => {
                // The account is the role's, and credentials are one role's.
                let body = creds.rendered.get_or_render(extended, || {
                    let account = if extended { binding.account_id() } else { None };
                    bytes::Bytes::from(credentials_json(&creds, account))
                });
                (
                    text(200, body),
                    Outcome::Served {
                        binding,
                        credentials: creds,
                    },
                )
            }
            Err(e) => {
                tracing::warn!(role = %binding.role_arn, pod_uid = ?caller.pod_uid, code = %e.code, message = %e.message, "credentials unavailable");
                let reason = format!("credentials unavailable: {}", e.code).into();
                refused(error_json(500, &e.code, &e.message), reason)
            }
        }
    }

    async fn info(&self, caller: &Caller) -> Resp {
        let binding = match self.binding(caller).await {
            Ok(Some(b)) => b,
            Ok(None) => return text(404, "Not Found\n"),
            Err(resp) => return resp,
        };
        let profile_arn = binding.role_arn.replacen(":role/", ":instance-profile/", 1);
        let doc = InfoDoc {
            code: "Success",
            last_updated: format_utc(clock::wall()),
            instance_profile_id: instance_profile_id(&binding.role_arn),
            instance_profile_arn: profile_arn,
        };
        text(200, serde_json::to_string_pretty(&doc).unwrap_or_default())
    }

    async fn passthrough(&self, path: &paths::NormalPath) -> Resp {
        let Some(upstream) = &self.upstream else {
            return text(404, "Not Found\n");
        };
        if !self.settings.allow.allows(path) {
            return text(404, "Not Found\n");
        }
        // Only once the path could go: is it the node's own role name?
        if let Some(role) = upstream.node_role().await {
            if paths::names_role(path, &role) {
                return text(404, "Not Found\n");
            }
        }
        let rendered = path.render();
        match upstream.get(&rendered).await {
            Ok(answer) => {
                let mut resp = text(answer.status.as_u16(), answer.body);
                if let Some(ct) = answer.content_type {
                    resp.headers_mut().insert(hyper::header::CONTENT_TYPE, ct);
                }
                resp
            }
            Err(e @ passthrough::PassthroughError::Timeout { .. }) => {
                tracing::warn!(path = %rendered, error = %e, "passthrough failed");
                text(504, "Gateway Timeout\n")
            }
            Err(e) => {
                tracing::warn!(path = %rendered, error = %e, "passthrough failed");
                text(502, "Bad Gateway\n")
            }
        }
    }
}

#[cfg(test)]
mod tests;

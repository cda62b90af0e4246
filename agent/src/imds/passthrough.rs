//! Forwarding allowed, non-credential paths to the real metadata service, with the agent's
//! own IMDSv2 token (pods' tokens are iamlet's and mean nothing upstream).
//!
//! Defence in depth: besides the path checks of `paths`, any upstream body that looks like a
//! credentials document is refused, so no allow-list mistake can hand the node's role
//! credentials to a pod.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::clock;

/// TTL of the agent's own upstream token.
const UPSTREAM_TOKEN_TTL: u64 = 21_600;
/// Largest upstream body passed on.
const MAX_BODY: usize = 1 << 20;
/// Markers of a credentials document, or of the node's instance profile (`iam/info`), in an
/// upstream body.
const CREDENTIAL_MARKERS: [&str; 5] = [
    "SecretAccessKey",
    "\"Token\"",
    "AccessKeyId",
    "InstanceProfileArn",
    ":instance-profile/",
];
/// How long the node's role name is kept before it is asked for again.
const NODE_ROLE_TTL: Duration = Duration::from_secs(600);
/// How long a failed lookup of the node's role name is kept.
const NODE_ROLE_RETRY: Duration = Duration::from_secs(30);

/// Why an upstream request failed (answered 502/504).
#[derive(Debug, thiserror::Error)]
pub enum PassthroughError {
    #[error("upstream metadata service at {upstream} did not answer within {timeout:?}")]
    Timeout { upstream: String, timeout: Duration },
    #[error("upstream metadata service at {upstream}: {reason}")]
    Upstream { upstream: String, reason: String },
    #[error("upstream answer for {path} looks like credentials or the node's role; refused")]
    LooksLikeCredentials { path: String },
}

/// An upstream answer.
#[derive(Debug)]
pub(crate) struct UpstreamAnswer {
    /// Status.
    pub status: StatusCode,
    /// Content type, if given.
    pub content_type: Option<HeaderValue>,
    /// Body.
    pub body: Bytes,
}

#[derive(Debug)]
enum TokenState {
    Unknown,
    Token {
        value: String,
        refresh_at: Instant,
    },
    /// The upstream does not do IMDSv2 (its PUT answered 403/404/405): go tokenless until then.
    Tokenless {
        retry_at: Instant,
    },
}

/// A client of the real metadata service.
#[derive(Debug)]
pub(crate) struct Upstream {
    base: Uri,
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
    token: Mutex<TokenState>,
    /// The node's own role name (from the upstream's role listing) and until when it holds.
    node_role: Mutex<Option<(Option<String>, Instant)>>,
}

impl Upstream {
    /// A client of `base` (e.g. `http://169.254.169.254`), each request bounded by `timeout`.
    pub(crate) fn new(base: Uri, timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Upstream {
            base,
            client,
            timeout,
            token: Mutex::new(TokenState::Unknown),
            node_role: Mutex::new(None),
        }
    }

    fn url(&self, path: &str) -> Result<Uri, PassthroughError> {
        let text = format!("{}{}", self.base.to_string().trim_end_matches('/'), path);
        text.parse()
            .map_err(|e| self.err(format!("bad URL {text}: {e}")))
    }

    fn err(&self, reason: String) -> PassthroughError {
        PassthroughError::Upstream {
            upstream: self.base.to_string(),
            reason,
        }
    }

    async fn send(&self, req: Request<Full<Bytes>>) -> Result<UpstreamAnswer, PassthroughError> {
        let fut = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| self.err(format!("request failed: {e}")))?;
            let status = resp.status();
            let content_type = resp.headers().get(CONTENT_TYPE).cloned();
            let body = Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| self.err(format!("reading the body failed: {e}")))?
                .to_bytes();
            Ok(UpstreamAnswer {
                status,
                content_type,
                body,
            })
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| PassthroughError::Timeout {
                upstream: self.base.to_string(),
                timeout: self.timeout,
            })?
    }

    /// The agent's own token, fetched or refreshed as needed; `None` when the upstream does
    /// not do IMDSv2.
    async fn token(&self) -> Result<Option<String>, PassthroughError> {
        let now = clock::now();
        {
            let state = self
                .token
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match &*state {
                TokenState::Token { value, refresh_at } if *refresh_at > now => {
                    return Ok(Some(value.clone()))
                }
                TokenState::Tokenless { retry_at } if *retry_at > now => return Ok(None),
                _ => {}
            }
        }
        let req = Request::builder()
            .method(Method::PUT)
            .uri(self.url("/latest/api/token")?)
            .header("X-aws-ec2-metadata-token-ttl-seconds", UPSTREAM_TOKEN_TTL)
            .body(Full::new(Bytes::new()))
            .map_err(|e| self.err(e.to_string()))?;
        let answer = self.send(req).await?;
        let new_state = match answer.status.as_u16() {
            200 => {
                let value = String::from_utf8_lossy(&answer.body).trim().to_owned();
                let refresh_at = now + Duration::from_secs(UPSTREAM_TOKEN_TTL - 300);
                TokenState::Token { value, refresh_at }
            }
            403..=405 => TokenState::Tokenless {
                retry_at: now + Duration::from_secs(300),
            },
            other => return Err(self.err(format!("token request answered {other}"))),
        };
        let token = match &new_state {
            TokenState::Token { value, .. } => Some(value.clone()),
            _ => None,
        };
        *self
            .token
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = new_state;
        Ok(token)
    }

    /// The node's own role name, from the upstream's role listing (kept for
    /// [`NODE_ROLE_TTL`]); `None` when the node has none or the upstream cannot say.
    pub(crate) async fn node_role(&self) -> Option<String> {
        let now = clock::now();
        if let Some((role, until)) = &*self
            .node_role
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
        {
            if *until > now {
                return role.clone();
            }
        }
        let listing = self
            .get_once("/latest/meta-data/iam/security-credentials/")
            .await;
        let (role, keep) = match listing {
            Ok(answer) if answer.status == StatusCode::OK => {
                let text = String::from_utf8_lossy(&answer.body);
                let role = text.lines().next().map(str::trim).unwrap_or_default();
                let role = (!role.is_empty()).then(|| role.trim_end_matches('/').to_owned());
                (role, NODE_ROLE_TTL)
            }
            Ok(answer) if answer.status == StatusCode::NOT_FOUND => (None, NODE_ROLE_TTL),
            Ok(_) | Err(_) => (None, NODE_ROLE_RETRY),
        };
        *self
            .node_role
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((role.clone(), now + keep));
        role
    }

    /// GETs `path` for the agent itself (e.g. the node's `iam/info` at start-up): nothing of
    /// it goes to a pod, so no body is refused.
    pub(crate) async fn get_for_agent(
        &self,
        path: &str,
    ) -> Result<UpstreamAnswer, PassthroughError> {
        let answer = self.get_once(path).await?;
        if answer.status != StatusCode::UNAUTHORIZED {
            return Ok(answer);
        }
        // Our token expired or the upstream restarted: fetch a new one, once.
        *self
            .token
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = TokenState::Unknown;
        self.get_once(path).await
    }

    /// GETs `path` (canonical and allowed) from upstream for a pod: an answer that looks like
    /// credentials, the node's instance profile or the node's role name is refused.
    pub(crate) async fn get(&self, path: &str) -> Result<UpstreamAnswer, PassthroughError> {
        let answer = self.get_for_agent(path).await?;
        let node_role = self
            .node_role
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let is_node_role = node_role
            .and_then(|(role, _)| role)
            .is_some_and(|role| String::from_utf8_lossy(&answer.body).trim() == role);
        if is_node_role || looks_like_credentials(&answer.body) {
            tracing::error!(
                path,
                "upstream answer looks like credentials or the node's role; refusing to pass it on"
            );
            return Err(PassthroughError::LooksLikeCredentials {
                path: path.to_owned(),
            });
        }
        Ok(answer)
    }

    async fn get_once(&self, path: &str) -> Result<UpstreamAnswer, PassthroughError> {
        let token = self.token().await?;
        let mut req = Request::builder().method(Method::GET).uri(self.url(path)?);
        if let Some(token) = token {
            req = req.header("X-aws-ec2-metadata-token", token);
        }
        let req = req
            .body(Full::new(Bytes::new()))
            .map_err(|e| self.err(e.to_string()))?;
        self.send(req).await
    }
}

/// Whether a body looks like a credentials document.
pub(crate) fn looks_like_credentials(body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(body);
    CREDENTIAL_MARKERS.iter().any(|m| text.contains(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_bodies_are_spotted() {
        assert!(looks_like_credentials(
            br#"{"Code":"Success","AccessKeyId":"ASIA","SecretAccessKey":"x","Token":"y"}"#
        ));
        assert!(looks_like_credentials(b"... SecretAccessKey ..."));
        assert!(looks_like_credentials(
            br#"{"Code":"Success","InstanceProfileArn":"arn:aws:iam::1:instance-profile/n"}"#
        ));
        assert!(looks_like_credentials(
            b"arn:aws:iam::123456789012:instance-profile/node"
        ));
        assert!(!looks_like_credentials(b"i-0123456789abcdef0"));
        assert!(!looks_like_credentials(
            br#"{"region":"eu-west-1","instanceId":"i-1"}"#
        ));
    }
}

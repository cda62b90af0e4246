//! Fixed credentials per role from a YAML file (`--static-credentials`, for development and
//! tests; the STS cache is the production source).
//!
//! Static credentials file:
//!
//! ```yaml
//! credentials:
//!   arn:aws:iam::123456789012:role/web:
//!     access_key_id: ASIA...
//!     secret_access_key: ...
//!     session_token: ...
//!     expiration: 2026-11-22T12:00:00Z   # optional; default: always one hour ahead
//! ```

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use super::{CredentialError, CredentialSource, Credentials, RenderedDocs};
use crate::clock;
use crate::role::{validate_role_arn, BoxFuture, RoleBinding};
use crate::timefmt;

/// Errors of reading the static credentials file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read static credentials file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("static credentials file {path} is not valid YAML of the expected shape: {source}")]
    Parse {
        path: String,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("static credentials file {path}, role {role}: {reason}")]
    Entry {
        path: String,
        role: String,
        reason: String,
    },
    #[error("static credentials file {path}, role {role}: {source}")]
    Role {
        path: String,
        role: String,
        #[source]
        source: crate::role::ArnError,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    credentials: HashMap<String, Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    access_key_id: String,
    secret_access_key: String,
    session_token: String,
    expiration: Option<String>,
}

#[derive(Debug)]
struct StaticEntry {
    access_key_id: String,
    secret_access_key: String,
    session_token: String,
    expiration: Option<SystemTime>,
}

/// Fixed credentials per role ARN.
#[derive(Debug)]
pub(crate) struct StaticCredentials {
    // Looked up on every request: foldhash (seeded per process), not SipHash.
    by_role: HashMap<String, StaticEntry, foldhash::fast::RandomState>,
    /// The credentials last handed out per role: the same `Arc` until a rolling expiry comes
    /// within half its lifetime, so callers can cache what they derive from it.
    issued: std::sync::Mutex<HashMap<String, Arc<Credentials>, foldhash::fast::RandomState>>,
}

/// How far ahead the expiry of static credentials without one is put.
const ROLLING_EXPIRY: Duration = Duration::from_secs(3600);

impl StaticCredentials {
    /// Loads and checks `path`.
    pub(crate) fn load(path: &Path) -> Result<Self, ConfigError> {
        let display = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: display.clone(),
            source,
        })?;
        Self::parse(&text, &display)
    }

    /// Parses file text (`origin` names it in errors).
    pub(crate) fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let file: File = serde_yaml::from_str(text).map_err(|source| ConfigError::Parse {
            path: origin.to_owned(),
            source,
        })?;
        let mut by_role = HashMap::default();
        for (role, e) in file.credentials {
            let err = |reason: String| ConfigError::Entry {
                path: origin.to_owned(),
                role: role.clone(),
                reason,
            };
            validate_role_arn(&role).map_err(|source| ConfigError::Role {
                path: origin.to_owned(),
                role: role.clone(),
                source,
            })?;
            if e.access_key_id.is_empty() || e.secret_access_key.is_empty() {
                return Err(err(
                    "access_key_id and secret_access_key must not be empty".into()
                ));
            }
            let expiration = match &e.expiration {
                Some(t) => {
                    Some(timefmt::parse_utc(t).map_err(|e| err(format!("expiration: {e}")))?)
                }
                None => None,
            };
            by_role.insert(
                role,
                StaticEntry {
                    access_key_id: e.access_key_id,
                    secret_access_key: e.secret_access_key,
                    session_token: e.session_token,
                    expiration,
                },
            );
        }
        Ok(StaticCredentials {
            by_role,
            issued: std::sync::Mutex::new(HashMap::default()),
        })
    }

    fn get(&self, binding: &RoleBinding, now: SystemTime) -> Result<Credentials, CredentialError> {
        let e = self.by_role.get(&binding.role_arn).ok_or_else(|| {
            CredentialError::new(
                "AccessDenied",
                format!(
                    "no static credentials are configured for {}",
                    binding.role_arn
                ),
            )
        })?;
        let expiration = e.expiration.unwrap_or(now + ROLLING_EXPIRY);
        if expiration <= now {
            return Err(CredentialError::new(
                "ExpiredToken",
                format!(
                    "the static credentials for {} have expired",
                    binding.role_arn
                ),
            ));
        }
        Ok(Credentials {
            access_key_id: e.access_key_id.clone(),
            secret_access_key: e.secret_access_key.clone(),
            session_token: e.session_token.clone(),
            expiration,
            last_updated: now,
            rendered: RenderedDocs::default(),
        })
    }
}

impl StaticCredentials {
    fn issue(
        &self,
        binding: &RoleBinding,
        now: SystemTime,
    ) -> Result<Arc<Credentials>, CredentialError> {
        let mut issued = self
            .issued
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = issued.get(&binding.role_arn) {
            let left = c.expiration.duration_since(now).unwrap_or_default();
            if left > ROLLING_EXPIRY / 2 {
                return Ok(c.clone());
            }
        }
        let fresh = Arc::new(self.get(binding, now)?);
        issued.insert(binding.role_arn.clone(), fresh.clone());
        Ok(fresh)
    }
}

impl CredentialSource for StaticCredentials {
    fn credentials<'a>(
        &'a self,
        binding: &'a RoleBinding,
    ) -> BoxFuture<'a, Result<Arc<Credentials>, CredentialError>> {
        Box::pin(std::future::ready(self.issue(binding, clock::wall())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(role: &str) -> RoleBinding {
        RoleBinding {
            role_arn: role.into(),
            session_name: "s1".into(),
            external_id: None,
            session_tags: Vec::new(),
        }
    }

    #[test]
    fn serves_configured_roles_only() {
        let text = r"
credentials:
  arn:aws:iam::123456789012:role/web:
    access_key_id: ASIAWEB
    secret_access_key: secret
    session_token: token
  arn:aws:iam::123456789012:role/old:
    access_key_id: ASIAOLD
    secret_access_key: secret
    session_token: token
    expiration: 2001-01-01T00:00:00Z
";
        let s = StaticCredentials::parse(text, "t").expect("valid");
        let now = SystemTime::now();
        let c = s
            .get(&binding("arn:aws:iam::123456789012:role/web"), now)
            .expect("web");
        assert_eq!(c.access_key_id, "ASIAWEB");
        assert_eq!(c.expiration, now + ROLLING_EXPIRY);
        assert!(!format!("{c:?}").contains("secret\""));
        let e = s
            .get(&binding("arn:aws:iam::123456789012:role/other"), now)
            .expect_err("unknown");
        assert_eq!(e.code, "AccessDenied");
        let e = s
            .get(&binding("arn:aws:iam::123456789012:role/old"), now)
            .expect_err("expired");
        assert_eq!(e.code, "ExpiredToken");
    }

    #[test]
    fn the_same_credentials_are_handed_out_until_half_their_life() {
        let text = "credentials:\n  arn:aws:iam::123456789012:role/web:\n    access_key_id: A\n    secret_access_key: s\n    session_token: t\n";
        let s = StaticCredentials::parse(text, "t").expect("valid");
        let b = binding("arn:aws:iam::123456789012:role/web");
        let now = SystemTime::now();
        let first = s.issue(&b, now).expect("first");
        let again = s.issue(&b, now + Duration::from_secs(60)).expect("again");
        assert!(Arc::ptr_eq(&first, &again));
        let later = s.issue(&b, now + Duration::from_secs(1900)).expect("later");
        assert!(!Arc::ptr_eq(&first, &later));
        assert!(later.expiration > first.expiration);
    }

    #[test]
    fn bad_files_are_rejected() {
        assert!(StaticCredentials::parse("credentials: [", "t").is_err());
        let bad_role = "credentials:\n  web:\n    access_key_id: a\n    secret_access_key: b\n    session_token: c\n";
        let e = StaticCredentials::parse(bad_role, "t").expect_err("bare name");
        assert!(e.to_string().contains("role web"), "{e}");
        let bad_time = "credentials:\n  arn:aws:iam::123456789012:role/x:\n    access_key_id: a\n    secret_access_key: b\n    session_token: c\n    expiration: tomorrow\n";
        assert!(StaticCredentials::parse(bad_time, "t").is_err());
    }
}

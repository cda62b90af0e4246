//! Which IAM role a caller gets: the [`RoleResolver`] trait and the [`RoleBinding`] it
//! returns, role ARN rules, and the two role sources: standalone [`bindings`] from a YAML file
//! and [`kubernetes`] (pod annotations, the pod index and the watch).

pub(crate) mod bindings;
pub(crate) mod kubernetes;

use std::future::{Future, Ready};
use std::pin::Pin;
use std::sync::Arc;

use futures_util::future::Either;

use crate::caller::attribution::Caller;

/// A boxed, sendable future (the traits here are used as trait objects).
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The role a caller is bound to, and how the session is named.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct RoleBinding {
    /// Full role ARN.
    pub role_arn: String,
    /// RoleSessionName for AssumeRole (already sanitised).
    pub session_name: String,
    /// ExternalId for AssumeRole, if the role's trust policy wants one.
    pub external_id: Option<String>,
    /// Session tags for AssumeRole (`--session-tags`), sorted by key.
    pub session_tags: Vec<(String, String)>,
}

impl RoleBinding {
    /// The role's name: the last path segment of the ARN's resource (`role/path/name` →
    /// `name`), which is what the metadata service lists.
    pub(crate) fn role_name(&self) -> &str {
        // On every role-list and credentials request: a byte scan from the end, where
        // `rsplit` builds a searcher for the character.
        match self.role_arn.bytes().rposition(|b| b == b'/') {
            Some(slash) => &self.role_arn[slash + 1..],
            None => &self.role_arn,
        }
    }

    /// The 12-digit account id from the ARN.
    pub(crate) fn account_id(&self) -> Option<&str> {
        self.role_arn.split(':').nth(4).filter(|a| !a.is_empty())
    }
}

/// Why a role could not be determined.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RoleError {
    #[error("role lookup for cgroup {cgroup} failed: {reason}")]
    Lookup { cgroup: String, reason: String },
}

/// What a role lookup gives: the caller's binding, `Ok(None)` if it has no role.
pub(crate) type RoleResult = Result<Option<Arc<RoleBinding>>, RoleError>;

/// A role lookup's answer, awaited: known at once (every request of a known pod: nothing
/// allocated, nothing registered, see [`answer_now`]), or to come (a pod the Kubernetes watch has
/// not delivered yet, see [`answer_later`]).
pub(crate) type RoleAnswer<'a> = Either<Ready<RoleResult>, BoxFuture<'a, RoleResult>>;

/// An answer known now.
pub(crate) fn answer_now<'a>(result: RoleResult) -> RoleAnswer<'a> {
    Either::Left(std::future::ready(result))
}

/// An answer to come.
pub(crate) fn answer_later<'a>(
    answer: impl Future<Output = RoleResult> + Send + 'a,
) -> RoleAnswer<'a> {
    Either::Right(Box::pin(answer))
}

/// Resolves the role of a caller.
pub(crate) trait RoleResolver: Send + Sync + std::fmt::Debug + 'static {
    /// The caller's binding, `Ok(None)` if it has no role.
    fn role_for<'a>(&'a self, caller: &'a Caller) -> RoleAnswer<'a>;

    /// The namespace and name of the pod with this UID, where the resolver knows pods (for
    /// the audit log).
    fn pod_name(&self, _uid: &str) -> Option<(String, String)> {
        None
    }
}

/// Why a role name or ARN was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArnError {
    #[error("{arn:?} is not a role ARN like arn:aws:iam::123456789012:role/name")]
    NotRoleArn { arn: String },
    #[error("{arn:?}: role name {name:?} is not a valid IAM role name")]
    BadRoleName { arn: String, name: String },
    #[error("{role:?} is a bare role name; give a full ARN or set --base-role-arn")]
    BareName { role: String },
}

/// Checks a role ARN: `arn:<partition>:iam::<12 digits>:role/<optional path/><name>`.
pub(crate) fn validate_role_arn(arn: &str) -> Result<(), ArnError> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let ok = parts.len() == 6
        && parts[0] == "arn"
        && parts[1].starts_with("aws")
        && parts[2] == "iam"
        && parts[3].is_empty()
        && parts[4].len() == 12
        && parts[4].bytes().all(|b| b.is_ascii_digit())
        && parts[5].starts_with("role/");
    if !ok {
        return Err(ArnError::NotRoleArn {
            arn: arn.to_owned(),
        });
    }
    let name = arn.rsplit('/').next().unwrap_or("");
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b))
    {
        return Err(ArnError::BadRoleName {
            arn: arn.to_owned(),
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// The base role ARN (`arn:<partition>:iam::<account>:role/`) of the account an instance
/// profile ARN (from the metadata service's `iam/info`) belongs to.
pub(crate) fn base_arn_from_instance_profile(profile_arn: &str) -> Option<String> {
    let parts: Vec<&str> = profile_arn.splitn(6, ':').collect();
    if parts.len() != 6 || parts[0] != "arn" || parts[2] != "iam" {
        return None;
    }
    let base = format!("arn:{}:iam::{}:role/", parts[1], parts[4]);
    validate_role_arn(&format!("{base}x")).ok()?;
    Some(base)
}

/// Turns a role name or ARN into an ARN: a bare name is appended to `base` (e.g.
/// `arn:aws:iam::123456789012:role/`).
pub(crate) fn expand_role(role: &str, base: Option<&str>) -> Result<String, ArnError> {
    let arn = if role.starts_with("arn:") {
        role.to_owned()
    } else {
        let base = base.ok_or_else(|| ArnError::BareName {
            role: role.to_owned(),
        })?;
        let sep = if base.ends_with('/') { "" } else { "/" };
        format!("{base}{sep}{}", role.trim_start_matches('/'))
    };
    validate_role_arn(&arn)?;
    Ok(arn)
}

/// Makes a valid session tag value (at most 256 characters of `[\p{L}\p{Z}\p{N}_.:/=+\-@]`).
pub(crate) fn sanitize_tag_value(raw: &str) -> String {
    raw.chars()
        .map(|c| {
            if c.is_alphanumeric() || c == ' ' || "_.:/=+-@".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(256)
        .collect()
}

/// Makes a valid RoleSessionName (`[\w+=,.@-]`, 2..=64 chars) out of any text.
pub(crate) fn sanitize_session_name(raw: &str) -> String {
    let mut out: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_+=,.@-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    out.truncate(64);
    while out.len() < 2 {
        out.push('-');
    }
    out
}

/// The resolver when no role source is configured: nobody has a role.
#[derive(Debug, Default)]
pub(crate) struct NoRoles;

impl RoleResolver for NoRoles {
    fn role_for<'a>(&'a self, _caller: &'a Caller) -> RoleAnswer<'a> {
        answer_now(Ok(None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arns_and_session_names() {
        assert!(validate_role_arn("arn:aws:iam::123456789012:role/a/b/c").is_ok());
        assert!(validate_role_arn("arn:aws-cn:iam::123456789012:role/x").is_ok());
        assert!(validate_role_arn("arn:aws:iam::123456789012:user/x").is_err());
        assert!(validate_role_arn("arn:aws:iam::123456789012:role/").is_err());
        assert!(validate_role_arn("arn:aws:iam::123456789012:role/has space").is_err());
        assert_eq!(
            expand_role("x", Some("arn:aws:iam::123456789012:role")),
            Ok("arn:aws:iam::123456789012:role/x".to_string())
        );
        assert_eq!(sanitize_session_name("ns/pod name"), "ns-pod-name");
        assert_eq!(
            base_arn_from_instance_profile("arn:aws:iam::111122223333:instance-profile/node"),
            Some("arn:aws:iam::111122223333:role/".to_string())
        );
        assert_eq!(
            base_arn_from_instance_profile("arn:aws:iam::12:instance-profile/x"),
            None
        );
        assert_eq!(base_arn_from_instance_profile("garbage"), None);
        assert_eq!(sanitize_session_name(&"a".repeat(100)).len(), 64);
        assert_eq!(sanitize_session_name("x"), "x-");
        assert_eq!(sanitize_tag_value("a/b c*d"), "a/b c-d");
        assert_eq!(sanitize_tag_value(&"v".repeat(300)).len(), 256);
    }
}

//! Which IAM role a caller gets: the [`RoleResolver`] trait, the [`RoleBinding`] it returns,
//! and the standalone resolver that reads bindings from a YAML file (`--bindings`).
//!
//! Bindings file:
//!
//! ```yaml
//! bindings:
//!   - cgroup: "web.slice"            # glob, relative to the attached cgroup; `*` stays inside
//!     role: arn:aws:iam::123456789012:role/web   # one path segment, `**` crosses segments
//!   - cgroup: "batch-*.scope"
//!     role: batch                    # bare name: expanded with --base-role-arn
//!     session_name: nightly-batch    # optional; default derived from the cgroup
//!     external_id: "..."             # optional
//! ```
//!
//! A binding applies to the cgroup its pattern matches and to everything below it. The first
//! binding (in file order) that matches the caller's cgroup or one of its ancestors wins.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use globset::{Glob, GlobBuilder, GlobMatcher};
use serde::Deserialize;

use crate::attribution::Caller;

/// A boxed, sendable future (the traits here are used as trait objects).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The role a caller is bound to, and how the session is named.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RoleBinding {
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
    pub fn role_name(&self) -> &str {
        self.role_arn.rsplit('/').next().unwrap_or(&self.role_arn)
    }

    /// The 12-digit account id from the ARN.
    pub fn account_id(&self) -> Option<&str> {
        self.role_arn.split(':').nth(4).filter(|a| !a.is_empty())
    }
}

/// Why a role could not be determined.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoleError {
    #[error("role lookup for cgroup {cgroup} failed: {reason}")]
    Lookup { cgroup: String, reason: String },
}

/// Resolves the role of a caller.
pub trait RoleResolver: Send + Sync + std::fmt::Debug + 'static {
    /// The caller's binding, `Ok(None)` if it has no role.
    fn resolve<'a>(
        &'a self,
        caller: &'a Caller,
    ) -> BoxFuture<'a, Result<Option<Arc<RoleBinding>>, RoleError>>;
}

/// Errors of reading and checking role configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read bindings file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("bindings file {path} is not valid YAML of the expected shape: {source}")]
    Parse {
        path: String,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("bindings file {path}, binding {index}: {reason}")]
    Binding {
        path: String,
        index: usize,
        reason: String,
    },
    #[error("bindings file {path}, binding {index}: {source}")]
    BindingRole {
        path: String,
        index: usize,
        #[source]
        source: ArnError,
    },
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
pub fn validate_role_arn(arn: &str) -> Result<(), ArnError> {
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
pub fn base_arn_from_instance_profile(profile_arn: &str) -> Option<String> {
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
pub fn expand_role(role: &str, base: Option<&str>) -> Result<String, ArnError> {
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

/// The session name of a binding without one: `iamlet-pod-<uid>` for a kubelet pod cgroup,
/// else `iamlet-<last path segment>`; unique per pod or cgroup.
fn default_session_name(matched: &str) -> String {
    let raw = match crate::identity::parse_pod_cgroup(&format!("/{matched}")) {
        Some(pod) => format!("iamlet-pod-{}", pod.pod_uid),
        None => format!("iamlet-{}", matched.rsplit('/').next().unwrap_or(matched)),
    };
    sanitize_session_name(&raw)
}

/// Makes a valid session tag value (at most 256 characters of `[\p{L}\p{Z}\p{N}_.:/=+\-@]`).
pub fn sanitize_tag_value(raw: &str) -> String {
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
pub fn sanitize_session_name(raw: &str) -> String {
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BindingsFile {
    bindings: Vec<BindingEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BindingEntry {
    cgroup: String,
    role: String,
    session_name: Option<String>,
    external_id: Option<String>,
}

#[derive(Debug)]
struct CompiledBinding {
    matcher: GlobMatcher,
    role_arn: String,
    session_name: Option<String>,
    external_id: Option<String>,
}

/// Standalone role resolution from a bindings file.
#[derive(Debug)]
pub struct StaticBindings {
    /// The attached cgroup, relative to the cgroup2 root, with a leading slash.
    base: String,
    bindings: Vec<CompiledBinding>,
    /// Node name for session tags; `None`: no session tags.
    tag_node: Option<String>,
    /// cgroup path → binding, so the globs run once per cgroup, not per request.
    resolved: moka::sync::Cache<String, Option<Arc<RoleBinding>>>,
}

impl StaticBindings {
    /// Whether the bindings file at `path` names any role by bare name (so it needs a base ARN).
    pub fn has_bare_roles(path: &Path) -> Result<bool, ConfigError> {
        let display = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: display.clone(),
            source,
        })?;
        let file: BindingsFile =
            serde_yaml::from_str(&text).map_err(|source| ConfigError::Parse {
                path: display,
                source,
            })?;
        Ok(file.bindings.iter().any(|b| !b.role.starts_with("arn:")))
    }

    /// Loads and checks `path`; patterns are relative to `attached` (the attached cgroup,
    /// relative to the cgroup2 root, e.g. `/kubepods.slice`).
    pub fn load(path: &Path, attached: &str, base_arn: Option<&str>) -> Result<Self, ConfigError> {
        let display = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: display.clone(),
            source,
        })?;
        Self::parse(&text, &display, attached, base_arn)
    }

    /// Parses bindings text (`origin` names it in errors).
    pub fn parse(
        text: &str,
        origin: &str,
        attached: &str,
        base_arn: Option<&str>,
    ) -> Result<Self, ConfigError> {
        let file: BindingsFile =
            serde_yaml::from_str(text).map_err(|source| ConfigError::Parse {
                path: origin.to_owned(),
                source,
            })?;
        let mut bindings = Vec::new();
        for (index, entry) in file.bindings.into_iter().enumerate() {
            let err = |reason: String| ConfigError::Binding {
                path: origin.to_owned(),
                index,
                reason,
            };
            let pattern = entry.cgroup.trim_matches('/');
            if pattern.is_empty() {
                return Err(err("empty cgroup pattern".into()));
            }
            let glob: Glob = GlobBuilder::new(pattern)
                .literal_separator(true)
                .build()
                .map_err(|e| err(format!("cgroup pattern {pattern:?}: {e}")))?;
            let role_arn =
                expand_role(&entry.role, base_arn).map_err(|source| ConfigError::BindingRole {
                    path: origin.to_owned(),
                    index,
                    source,
                })?;
            if let Some(s) = &entry.session_name {
                if sanitize_session_name(s) != *s {
                    return Err(err(format!(
                        "session_name {s:?} must be 2-64 characters of [A-Za-z0-9_+=,.@-]"
                    )));
                }
            }
            bindings.push(CompiledBinding {
                matcher: glob.compile_matcher(),
                role_arn,
                session_name: entry.session_name,
                external_id: entry.external_id,
            });
        }
        let base = format!("/{}", attached.trim_matches('/'));
        Ok(StaticBindings {
            base,
            bindings,
            tag_node: None,
            resolved: moka::sync::Cache::builder()
                .max_capacity(50_000)
                .time_to_idle(std::time::Duration::from_secs(3600))
                .build(),
        })
    }

    /// The role ARN of every binding, in file order.
    pub fn role_arns(&self) -> Vec<String> {
        self.bindings.iter().map(|b| b.role_arn.clone()).collect()
    }

    /// Adds session tags (`cgroup`, `node`) to every binding.
    pub fn with_session_tags(mut self, node: &str) -> Self {
        self.tag_node = Some(node.to_owned());
        self
    }

    fn tags(&self, cgroup: &str) -> Vec<(String, String)> {
        match &self.tag_node {
            Some(node) => vec![
                ("cgroup".to_owned(), sanitize_tag_value(cgroup)),
                ("node".to_owned(), sanitize_tag_value(node)),
            ],
            None => Vec::new(),
        }
    }

    /// The distinct bindings in use by the given cgroup paths (relative to the cgroup2
    /// root), for prefetching.
    pub fn bindings_for<'a>(
        &self,
        paths: impl IntoIterator<Item = &'a str>,
    ) -> std::collections::HashSet<RoleBinding> {
        paths.into_iter().filter_map(|p| self.lookup(p)).collect()
    }

    /// The binding for a cgroup path relative to the cgroup2 root.
    pub fn lookup(&self, cgroup_path: &str) -> Option<RoleBinding> {
        let rel = cgroup_path.strip_prefix(self.base.as_str())?;
        let rel = rel.strip_prefix('/')?;
        for b in &self.bindings {
            let mut candidate = rel;
            loop {
                if b.matcher.is_match(candidate) {
                    let session_name = b
                        .session_name
                        .clone()
                        .unwrap_or_else(|| default_session_name(candidate));
                    return Some(RoleBinding {
                        role_arn: b.role_arn.clone(),
                        session_name,
                        external_id: b.external_id.clone(),
                        session_tags: self.tags(candidate),
                    });
                }
                match candidate.rfind('/') {
                    Some(i) => candidate = &candidate[..i],
                    None => break,
                }
            }
        }
        None
    }
}

impl RoleResolver for StaticBindings {
    fn resolve<'a>(
        &'a self,
        caller: &'a Caller,
    ) -> BoxFuture<'a, Result<Option<Arc<RoleBinding>>, RoleError>> {
        let found = caller.cgroup_path.as_deref().and_then(|path| {
            if let Some(hit) = self.resolved.get(path) {
                return hit;
            }
            let found = self.lookup(path).map(Arc::new);
            self.resolved.insert(path.to_owned(), found.clone());
            found
        });
        Box::pin(std::future::ready(Ok(found)))
    }
}

/// The resolver when no role source is configured: nobody has a role.
#[derive(Debug, Default)]
pub struct NoRoles;

impl RoleResolver for NoRoles {
    fn resolve<'a>(
        &'a self,
        _caller: &'a Caller,
    ) -> BoxFuture<'a, Result<Option<Arc<RoleBinding>>, RoleError>> {
        Box::pin(std::future::ready(Ok(None)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
bindings:
  - cgroup: "web.slice"
    role: arn:aws:iam::123456789012:role/web
  - cgroup: "batch-*.scope"
    role: batch
    session_name: nightly-batch
    external_id: ext-1
  - cgroup: "deep/**/leaf"
    role: arn:aws:iam::123456789012:role/team/leafy
"#;

    fn bindings() -> StaticBindings {
        StaticBindings::parse(
            FILE,
            "test",
            "/kubepods.slice",
            Some("arn:aws:iam::123456789012:role/"),
        )
        .expect("valid file")
    }

    #[test]
    fn matches_self_and_descendants_first_match_wins() {
        let b = bindings();
        let web = b.lookup("/kubepods.slice/web.slice").expect("web");
        assert_eq!(web.role_arn, "arn:aws:iam::123456789012:role/web");
        assert_eq!(web.session_name, "iamlet-web.slice");
        let child = b
            .lookup("/kubepods.slice/web.slice/nginx.scope")
            .expect("child");
        assert_eq!(child.role_arn, web.role_arn);
        let batch = b.lookup("/kubepods.slice/batch-7.scope").expect("batch");
        assert_eq!(batch.role_arn, "arn:aws:iam::123456789012:role/batch");
        assert_eq!(batch.session_name, "nightly-batch");
        assert_eq!(batch.external_id.as_deref(), Some("ext-1"));
        let leaf = b.lookup("/kubepods.slice/deep/a/b/leaf").expect("leaf");
        assert_eq!(leaf.role_name(), "leafy");
        assert_eq!(leaf.account_id(), Some("123456789012"));
    }

    #[test]
    fn session_tags_and_prefetch_set() {
        let b = bindings().with_session_tags("node-1");
        let web = b.lookup("/kubepods.slice/web.slice/x.scope").expect("web");
        assert_eq!(
            web.session_tags,
            vec![
                ("cgroup".to_string(), "web.slice".to_string()),
                ("node".to_string(), "node-1".to_string())
            ]
        );
        let set = b.bindings_for([
            "/kubepods.slice/web.slice",
            "/kubepods.slice/web.slice/x.scope",
            "/kubepods.slice/batch-1.scope",
            "/kubepods.slice/nothing",
        ]);
        assert_eq!(set.len(), 2);
    }

    #[test]
    fn star_stays_in_one_segment_and_outside_paths_miss() {
        let b = bindings();
        assert_eq!(b.lookup("/kubepods.slice/batch-7/x.scope"), None);
        assert_eq!(b.lookup("/kubepods.slice/other.slice"), None);
        assert_eq!(b.lookup("/system.slice/web.slice"), None);
        assert_eq!(b.lookup("/kubepods.slicex/web.slice"), None);
        assert_eq!(b.lookup("/kubepods.slice"), None);
    }

    #[test]
    fn bad_files_are_rejected_with_the_binding_named() {
        let no_base = StaticBindings::parse(FILE, "f", "/k", None).expect_err("bare name");
        assert!(no_base.to_string().contains("binding 1"), "{no_base}");
        assert!(no_base.to_string().contains("--base-role-arn"), "{no_base}");
        let bad_arn = "bindings:\n  - cgroup: a\n    role: arn:aws:iam::12:role/x\n";
        assert!(StaticBindings::parse(bad_arn, "f", "/k", None).is_err());
        let unknown =
            "bindings:\n  - cgroup: a\n    role: arn:aws:iam::123456789012:role/x\n    rol: y\n";
        assert!(StaticBindings::parse(unknown, "f", "/k", None).is_err());
        let bad_glob = "bindings:\n  - cgroup: 'a[' \n    role: arn:aws:iam::123456789012:role/x\n";
        assert!(StaticBindings::parse(bad_glob, "f", "/k", None).is_err());
        let bad_session =
            "bindings:\n  - cgroup: a\n    role: arn:aws:iam::123456789012:role/x\n    session_name: 'a b'\n";
        assert!(StaticBindings::parse(bad_session, "f", "/k", None).is_err());
    }

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
        assert_eq!(
            default_session_name(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1d4a6c37_5b2e_4c8e_9a6f_0e5e2d7c9b11.slice"
            ),
            "iamlet-pod-1d4a6c37-5b2e-4c8e-9a6f-0e5e2d7c9b11"
        );
        assert_eq!(default_session_name("a/b/web.slice"), "iamlet-web.slice");
        assert_eq!(sanitize_session_name(&"a".repeat(100)).len(), 64);
        assert_eq!(sanitize_session_name("x"), "x-");
        assert_eq!(sanitize_tag_value("a/b c*d"), "a/b c-d");
        assert_eq!(sanitize_tag_value(&"v".repeat(300)).len(), 256);
    }
}

//! Standalone role bindings: which cgroup gets which role, read from a YAML file
//! (`--bindings`).
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

use std::path::Path;
use std::sync::Arc;

use globset::{Glob, GlobBuilder, GlobMatcher};
use serde::Deserialize;

use super::{
    answer_now, expand_role, sanitize_session_name, sanitize_tag_value, ArnError, RoleAnswer,
    RoleBinding, RoleResolver,
};
use crate::caller::attribution::Caller;

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

/// The session name of a binding without one: `iamlet-pod-<uid>` for a kubelet pod cgroup,
/// else `iamlet-<last path segment>`; unique per pod or cgroup.
fn default_session_name(matched: &str) -> String {
    let raw = match crate::caller::pod_identity::parse_pod_cgroup(&format!("/{matched}")) {
        Some(pod) => format!("iamlet-pod-{}", pod.pod_uid),
        None => format!("iamlet-{}", matched.rsplit('/').next().unwrap_or(matched)),
    };
    sanitize_session_name(&raw)
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
pub(crate) struct StaticBindings {
    /// The attached cgroup, relative to the cgroup2 root, with a leading slash.
    base: String,
    bindings: Vec<CompiledBinding>,
    /// Node name for session tags; `None`: no session tags.
    tag_node: Option<String>,
    /// cgroup id → binding, so the globs run once per cgroup, not per request. Keyed by the
    /// id (hashing 8 bytes, not a path of a hundred or more), which names one cgroup for its
    /// whole life: one made again at the same path has a new id.
    resolved: moka::sync::Cache<u64, Option<Arc<RoleBinding>>, foldhash::fast::RandomState>,
}

impl StaticBindings {
    /// Whether the bindings file at `path` names any role by bare name (so it needs a base ARN).
    pub(crate) fn has_bare_roles(path: &Path) -> Result<bool, ConfigError> {
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
    pub(crate) fn load(
        path: &Path,
        attached: &str,
        base_arn: Option<&str>,
    ) -> Result<Self, ConfigError> {
        let display = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: display.clone(),
            source,
        })?;
        Self::parse(&text, &display, attached, base_arn)
    }

    /// Parses bindings text (`origin` names it in errors).
    pub(crate) fn parse(
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
                // Looked up on every request: foldhash (seeded per process), not SipHash.
                .build_with_hasher(foldhash::fast::RandomState::default()),
        })
    }

    #[cfg(feature = "fuzzing")]
    /// The role ARN of every binding, in file order.
    pub(crate) fn role_arns(&self) -> Vec<String> {
        self.bindings.iter().map(|b| b.role_arn.clone()).collect()
    }

    /// Adds session tags (`cgroup`, `node`) to every binding.
    pub(crate) fn with_session_tags(mut self, node: &str) -> Self {
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
    pub(crate) fn bindings_for<'a>(
        &self,
        paths: impl IntoIterator<Item = &'a str>,
    ) -> std::collections::HashSet<RoleBinding> {
        paths.into_iter().filter_map(|p| self.lookup(p)).collect()
    }

    /// The binding for a cgroup path relative to the cgroup2 root.
    pub(crate) fn lookup(&self, cgroup_path: &str) -> Option<RoleBinding> {
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
    fn role_for<'a>(&'a self, caller: &'a Caller) -> RoleAnswer<'a> {
        let found = caller.cgroup_path.as_deref().and_then(|path| {
            if let Some(hit) = self.resolved.get(&caller.cgroup_id) {
                return hit;
            }
            let found = self.lookup(path).map(Arc::new);
            self.resolved.insert(caller.cgroup_id, found.clone());
            found
        });
        answer_now(Ok(found))
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
    fn default_session_names_name_the_pod_or_the_cgroup() {
        assert_eq!(
            default_session_name(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1d4a6c37_5b2e_4c8e_9a6f_0e5e2d7c9b11.slice"
            ),
            "iamlet-pod-1d4a6c37-5b2e-4c8e-9a6f-0e5e2d7c9b11"
        );
        assert_eq!(default_session_name("a/b/web.slice"), "iamlet-web.slice");
    }
}

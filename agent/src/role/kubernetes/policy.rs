//! Which role a pod gets, from its annotations, its service account and its namespace's
//! policy: compatible with kiam and kube2iam. Pure functions over plain metadata, so every rule
//! is unit-tested without an API server.
//!
//! Order (each step configurable):
//! 1. pod annotation `iam.amazonaws.com/role`: a role name (expanded with the base ARN) or a
//!    full ARN; `iam.amazonaws.com/external-id` and `iam.amazonaws.com/session-name` (kiam)
//!    are honoured;
//! 2. service account annotation `eks.amazonaws.com/role-arn` (only with
//!    `use_service_account_annotation`, since IRSA pods already get web identity);
//! 3. the default role, if any.
//!
//! The resolved ARN must then pass the namespace policy: kiam's `iam.amazonaws.com/permitted`
//! (a regex over the ARN, anchored at both ends) and/or kube2iam's
//! `iam.amazonaws.com/allowed-roles` (a JSON array of globs over the ARN or role name).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::role::{expand_role, sanitize_session_name, sanitize_tag_value, RoleBinding};

/// Pod annotation naming the role (kiam, kube2iam).
pub(crate) const ROLE_ANNOTATION: &str = "iam.amazonaws.com/role";
/// Pod annotation with the AssumeRole ExternalId (kiam).
pub(crate) const EXTERNAL_ID_ANNOTATION: &str = "iam.amazonaws.com/external-id";
/// Pod annotation with the RoleSessionName (kiam).
pub(crate) const SESSION_NAME_ANNOTATION: &str = "iam.amazonaws.com/session-name";
/// Service account annotation of IRSA.
pub(crate) const SA_ROLE_ANNOTATION: &str = "eks.amazonaws.com/role-arn";
/// Namespace annotation: regex of permitted role ARNs (kiam).
pub(crate) const PERMITTED_ANNOTATION: &str = "iam.amazonaws.com/permitted";
/// Namespace annotation: JSON array of allowed role globs (kube2iam).
pub(crate) const ALLOWED_ROLES_ANNOTATION: &str = "iam.amazonaws.com/allowed-roles";

/// Which namespace annotations gate roles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum NamespacePolicy {
    /// No namespace restriction.
    Off,
    /// kiam: the namespace must carry `iam.amazonaws.com/permitted` matching the role.
    Kiam,
    /// kube2iam: the namespace must carry `iam.amazonaws.com/allowed-roles` matching the role.
    Kube2iam,
    /// Either annotation may permit the role (migrations from both).
    Either,
}

/// Role-resolution settings.
#[derive(Clone, Debug)]
pub(crate) struct PolicySettings {
    /// Base ARN for bare role names.
    pub base_arn: Option<String>,
    /// Honour the IRSA service account annotation.
    pub use_service_account_annotation: bool,
    /// Role for pods that name none.
    pub default_role: Option<String>,
    /// Namespace gate.
    pub namespace_policy: NamespacePolicy,
    /// Add session tags (namespace, pod, service-account, node).
    pub session_tags: bool,
    /// This node's name.
    pub node: String,
}

/// The metadata of a pod that matters here.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PodInfo {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
    /// Service account name.
    pub service_account: String,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
}

/// What a pod gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// No role is configured for it.
    NoRole,
    /// This binding (shared: every request of the pod is answered with it).
    Role(Arc<RoleBinding>),
    /// A role was asked for but is not allowed (never served; reported as an Event).
    Denied {
        /// The role asked for.
        role: String,
        /// Why it is refused.
        reason: String,
    },
}

/// Resolves a pod's role. `sa_annotations` and `ns_annotations` are those of its service
/// account and namespace (empty if unknown).
pub(crate) fn decide(
    s: &PolicySettings,
    pod: &PodInfo,
    sa_annotations: &BTreeMap<String, String>,
    ns_annotations: &BTreeMap<String, String>,
) -> Decision {
    let requested = pod
        .annotations
        .get(ROLE_ANNOTATION)
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty())
        .or_else(|| {
            s.use_service_account_annotation
                .then(|| sa_annotations.get(SA_ROLE_ANNOTATION).cloned())
                .flatten()
        })
        .or_else(|| s.default_role.clone());
    let Some(requested) = requested else {
        return Decision::NoRole;
    };
    let arn = match expand_role(&requested, s.base_arn.as_deref()) {
        Ok(arn) => arn,
        Err(e) => {
            return Decision::Denied {
                role: requested,
                reason: e.to_string(),
            }
        }
    };
    if let Err(reason) = namespace_allows(s.namespace_policy, &pod.namespace, &arn, ns_annotations)
    {
        return Decision::Denied { role: arn, reason };
    }
    let session_name = match pod.annotations.get(SESSION_NAME_ANNOTATION) {
        Some(name) if sanitize_session_name(name) == *name => name.clone(),
        _ => session_name(pod),
    };
    let mut session_tags = Vec::new();
    if s.session_tags {
        session_tags = vec![
            ("namespace".to_owned(), sanitize_tag_value(&pod.namespace)),
            ("node".to_owned(), sanitize_tag_value(&s.node)),
            ("pod".to_owned(), sanitize_tag_value(&pod.name)),
            (
                "service-account".to_owned(),
                sanitize_tag_value(&pod.service_account),
            ),
        ];
    }
    Decision::Role(Arc::new(RoleBinding {
        role_arn: arn,
        session_name,
        external_id: pod.annotations.get(EXTERNAL_ID_ANNOTATION).cloned(),
        session_tags,
    }))
}

/// `<namespace>-<pod>`, made valid; when too long, shortened and made unique with the UID.
pub(crate) fn session_name(pod: &PodInfo) -> String {
    let full = sanitize_session_name(&format!("{}-{}", pod.namespace, pod.name));
    if full.len() < 64 {
        return full;
    }
    let uid: String = pod.uid.chars().filter(|c| *c != '-').take(12).collect();
    let mut short = full[..64 - uid.len() - 1].to_owned();
    short.push('-');
    short.push_str(&uid);
    sanitize_session_name(&short)
}

/// Largest compiled size of a namespace's `permitted` regex: a pattern that needs more (a
/// pathological or hostile annotation) is refused instead of costing the agent time and
/// memory on every pod of that namespace.
const PERMITTED_REGEX_LIMIT: usize = 1 << 20;
/// Compiled `permitted` patterns kept (pods of one namespace share theirs).
const PERMITTED_CACHE: usize = 1024;

/// The anchored regex of a `permitted` annotation, compiled once per distinct pattern.
fn permitted_regex(pattern: &str) -> Result<regex::Regex, regex::Error> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock, PoisonError};
    static CACHE: OnceLock<Mutex<HashMap<String, regex::Regex>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(re) = cache
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(pattern)
    {
        return Ok(re.clone());
    }
    let re = regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(PERMITTED_REGEX_LIMIT)
        .build()?;
    let mut cache = cache.lock().unwrap_or_else(PoisonError::into_inner);
    if cache.len() >= PERMITTED_CACHE {
        cache.clear();
    }
    cache.insert(pattern.to_owned(), re.clone());
    Ok(re)
}

fn namespace_allows(
    policy: NamespacePolicy,
    namespace: &str,
    arn: &str,
    ns: &BTreeMap<String, String>,
) -> Result<(), String> {
    let kiam = || -> Result<(), String> {
        let pattern = ns.get(PERMITTED_ANNOTATION).ok_or_else(|| {
            format!("namespace {namespace} has no {PERMITTED_ANNOTATION} annotation")
        })?;
        let re = permitted_regex(pattern).map_err(|e| {
            format!("namespace {namespace}: {PERMITTED_ANNOTATION} is not a valid regex: {e}")
        })?;
        if re.is_match(arn) {
            Ok(())
        } else {
            Err(format!(
                "namespace {namespace} does not permit {arn} ({PERMITTED_ANNOTATION}: {pattern})"
            ))
        }
    };
    let kube2iam = || -> Result<(), String> {
        let raw = ns.get(ALLOWED_ROLES_ANNOTATION).ok_or_else(|| {
            format!("namespace {namespace} has no {ALLOWED_ROLES_ANNOTATION} annotation")
        })?;
        let globs: Vec<String> = serde_json::from_str(raw).map_err(|e| {
            format!("namespace {namespace}: {ALLOWED_ROLES_ANNOTATION} is not a JSON array of strings: {e}")
        })?;
        let name = arn.rsplit('/').next().unwrap_or(arn);
        for g in &globs {
            let m = globset::Glob::new(g)
                .map_err(|e| format!("namespace {namespace}: bad glob {g:?}: {e}"))?
                .compile_matcher();
            if m.is_match(arn) || m.is_match(name) {
                return Ok(());
            }
        }
        Err(format!(
            "namespace {namespace} does not allow {arn} ({ALLOWED_ROLES_ANNOTATION}: {raw})"
        ))
    };
    match policy {
        NamespacePolicy::Off => Ok(()),
        NamespacePolicy::Kiam => kiam(),
        NamespacePolicy::Kube2iam => kube2iam(),
        NamespacePolicy::Either => kiam().or_else(|a| kube2iam().map_err(|b| format!("{a}; {b}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(policy: NamespacePolicy) -> PolicySettings {
        PolicySettings {
            base_arn: Some("arn:aws:iam::123456789012:role/".into()),
            use_service_account_annotation: false,
            default_role: None,
            namespace_policy: policy,
            session_tags: false,
            node: "node-1".into(),
        }
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn pod(annotations: &[(&str, &str)]) -> PodInfo {
        PodInfo {
            namespace: "team-a".into(),
            name: "web-7d9f".into(),
            uid: "1d4a6c37-5b2e-4c8e-9a6f-0e5e2d7c9b11".into(),
            service_account: "web".into(),
            annotations: map(annotations),
        }
    }

    fn role_of(d: Decision) -> String {
        match d {
            Decision::Role(b) => b.role_arn.clone(),
            other => panic!("expected a role, got {other:?}"),
        }
    }

    #[test]
    fn pod_annotation_name_or_arn() {
        let s = settings(NamespacePolicy::Off);
        let none = BTreeMap::new();
        let d = decide(&s, &pod(&[(ROLE_ANNOTATION, "web")]), &none, &none);
        assert_eq!(role_of(d), "arn:aws:iam::123456789012:role/web");
        let arn = "arn:aws:iam::999999999999:role/path/x";
        let d = decide(&s, &pod(&[(ROLE_ANNOTATION, arn)]), &none, &none);
        assert_eq!(role_of(d), arn);
        assert_eq!(decide(&s, &pod(&[]), &none, &none), Decision::NoRole);
    }

    #[test]
    fn kiam_external_id_and_session_name() {
        let s = settings(NamespacePolicy::Off);
        let none = BTreeMap::new();
        let p = pod(&[
            (ROLE_ANNOTATION, "web"),
            (EXTERNAL_ID_ANNOTATION, "ext-9"),
            (SESSION_NAME_ANNOTATION, "custom-session"),
        ]);
        let Decision::Role(b) = decide(&s, &p, &none, &none) else {
            panic!("role")
        };
        assert_eq!(b.external_id.as_deref(), Some("ext-9"));
        assert_eq!(b.session_name, "custom-session");
        let Decision::Role(b) = decide(&s, &pod(&[(ROLE_ANNOTATION, "web")]), &none, &none) else {
            panic!("role")
        };
        assert_eq!(b.session_name, "team-a-web-7d9f");
    }

    #[test]
    fn service_account_and_default_role_order() {
        let mut s = settings(NamespacePolicy::Off);
        let sa = map(&[(SA_ROLE_ANNOTATION, "arn:aws:iam::123456789012:role/irsa")]);
        let none = BTreeMap::new();
        assert_eq!(decide(&s, &pod(&[]), &sa, &none), Decision::NoRole);
        s.use_service_account_annotation = true;
        assert_eq!(
            role_of(decide(&s, &pod(&[]), &sa, &none)),
            "arn:aws:iam::123456789012:role/irsa"
        );
        // The pod annotation wins over the service account.
        let p = pod(&[(ROLE_ANNOTATION, "web")]);
        assert_eq!(
            role_of(decide(&s, &p, &sa, &none)),
            "arn:aws:iam::123456789012:role/web"
        );
        s.default_role = Some("fallback".into());
        assert_eq!(
            role_of(decide(&s, &pod(&[]), &none, &none)),
            "arn:aws:iam::123456789012:role/fallback"
        );
    }

    #[test]
    fn kiam_permitted_regex_is_anchored() {
        let s = settings(NamespacePolicy::Kiam);
        let p = pod(&[(ROLE_ANNOTATION, "web")]);
        let ok = map(&[(
            PERMITTED_ANNOTATION,
            "arn:aws:iam::123456789012:role/(web|api)",
        )]);
        assert!(matches!(
            decide(&s, &p, &BTreeMap::new(), &ok),
            Decision::Role(_)
        ));
        let partial = map(&[(PERMITTED_ANNOTATION, "web")]);
        assert!(matches!(
            decide(&s, &p, &BTreeMap::new(), &partial),
            Decision::Denied { .. }
        ));
        let missing = BTreeMap::new();
        let Decision::Denied { reason, .. } = decide(&s, &p, &BTreeMap::new(), &missing) else {
            panic!("denied")
        };
        assert!(
            reason.contains("no iam.amazonaws.com/permitted"),
            "{reason}"
        );
        let bad = map(&[(PERMITTED_ANNOTATION, "(")]);
        assert!(matches!(
            decide(&s, &p, &BTreeMap::new(), &bad),
            Decision::Denied { .. }
        ));
        // A pattern whose compiled form would be huge is refused, not compiled.
        let huge = map(&[(PERMITTED_ANNOTATION, "(((a{100}){100}){100})")]);
        let Decision::Denied { reason, .. } = decide(&s, &p, &BTreeMap::new(), &huge) else {
            panic!("a huge permitted regex was accepted");
        };
        assert!(reason.contains("not a valid regex"), "{reason}");
        // The same pattern twice is compiled once and decides alike.
        let ok = map(&[(PERMITTED_ANNOTATION, ".*")]);
        for _ in 0..2 {
            assert!(matches!(
                decide(&s, &p, &BTreeMap::new(), &ok),
                Decision::Role(_)
            ));
        }
    }

    #[test]
    fn kube2iam_allowed_roles_globs() {
        let s = settings(NamespacePolicy::Kube2iam);
        let p = pod(&[(ROLE_ANNOTATION, "web")]);
        let none = BTreeMap::new();
        for allowed in [
            r#"["web"]"#,
            r#"["w*"]"#,
            r#"["arn:aws:iam::123456789012:role/*"]"#,
        ] {
            let ns = map(&[(ALLOWED_ROLES_ANNOTATION, allowed)]);
            assert!(
                matches!(decide(&s, &p, &none, &ns), Decision::Role(_)),
                "{allowed}"
            );
        }
        for denied in [r#"["api"]"#, "[]", "not json"] {
            let ns = map(&[(ALLOWED_ROLES_ANNOTATION, denied)]);
            assert!(
                matches!(decide(&s, &p, &none, &ns), Decision::Denied { .. }),
                "{denied}"
            );
        }
        let either = settings(NamespacePolicy::Either);
        let ns = map(&[(ALLOWED_ROLES_ANNOTATION, r#"["web"]"#)]);
        assert!(matches!(decide(&either, &p, &none, &ns), Decision::Role(_)));
    }

    #[test]
    fn bad_role_names_are_denied_not_guessed() {
        let mut s = settings(NamespacePolicy::Off);
        s.base_arn = None;
        let none = BTreeMap::new();
        assert!(matches!(
            decide(&s, &pod(&[(ROLE_ANNOTATION, "web")]), &none, &none),
            Decision::Denied { .. }
        ));
        assert!(matches!(
            decide(
                &s,
                &pod(&[(ROLE_ANNOTATION, "arn:aws:iam::1:role/x")]),
                &none,
                &none
            ),
            Decision::Denied { .. }
        ));
    }

    #[test]
    fn session_names_and_tags() {
        let mut s = settings(NamespacePolicy::Off);
        s.session_tags = true;
        let mut p = pod(&[(ROLE_ANNOTATION, "web")]);
        p.name = "x".repeat(80);
        let Decision::Role(b) = decide(&s, &p, &BTreeMap::new(), &BTreeMap::new()) else {
            panic!("role")
        };
        assert_eq!(b.session_name.len(), 64);
        assert!(
            b.session_name.ends_with("-1d4a6c375b2e"),
            "{}",
            b.session_name
        );
        let keys: Vec<&str> = b.session_tags.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["namespace", "node", "pod", "service-account"]);
    }
}

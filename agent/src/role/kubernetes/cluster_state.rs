//! What the watch knows: the namespaces' and service accounts' annotations, and the pods on
//! this node with their role decisions. Turns watch events into index updates and into the
//! effects the agent acts on (prefetch, release, Events), as plain data, so the rules are
//! tested without an API server.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use crate::role::kubernetes::pod_index::{PodEntry, PodIndex};
use crate::role::kubernetes::policy::{decide, Decision, PodInfo, PolicySettings};
use crate::role::RoleBinding;

/// Something the agent does because of a change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Fetch credentials for this binding now (a pod bound to it appeared or changed role).
    Prefetch(RoleBinding),
    /// A pod no longer uses this binding.
    Release(RoleBinding),
    /// A pod asked for a role it may not have: record a Kubernetes Event on it.
    Forbidden {
        /// The pod.
        pod: PodInfo,
        /// The role asked for.
        role: String,
        /// Why it is refused.
        reason: String,
    },
}

/// The watch's view of the cluster, for this node.
#[derive(Debug)]
pub(crate) struct ClusterState {
    settings: PolicySettings,
    index: Arc<PodIndex>,
    namespaces: HashMap<String, BTreeMap<String, String>>,
    service_accounts: HashMap<(String, String), BTreeMap<String, String>>,
    /// Pods whose refusal was already reported (uid, role), so an Event is recorded once.
    reported: HashSet<(String, String)>,
}

fn binding_of(d: &Decision) -> Option<&RoleBinding> {
    match d {
        Decision::Role(b) => Some(b.as_ref()),
        _ => None,
    }
}

impl ClusterState {
    /// An empty state feeding `index`.
    pub(crate) fn new(settings: PolicySettings, index: Arc<PodIndex>) -> Self {
        ClusterState {
            settings,
            index,
            namespaces: HashMap::new(),
            service_accounts: HashMap::new(),
            reported: HashSet::new(),
        }
    }

    fn decide(&self, pod: &PodInfo) -> Decision {
        let empty = BTreeMap::new();
        let ns = self.namespaces.get(&pod.namespace).unwrap_or(&empty);
        let sa = self
            .service_accounts
            .get(&(pod.namespace.clone(), pod.service_account.clone()))
            .unwrap_or(&empty);
        decide(&self.settings, pod, sa, ns)
    }

    /// Effects of a pod's entry changing from `old` to `new`.
    fn diff(&mut self, old: Option<&Decision>, new: Option<&PodEntry>, out: &mut Vec<Effect>) {
        let old_b = old.and_then(binding_of);
        let new_b = new.and_then(|e| binding_of(&e.decision));
        if old_b != new_b {
            if let Some(b) = old_b {
                out.push(Effect::Release(b.clone()));
            }
            if let Some(b) = new_b {
                out.push(Effect::Prefetch(b.clone()));
            }
        }
        if let Some(PodEntry { info, decision }) = new {
            if !matches!(decision, Decision::Denied { .. }) {
                // Allowed again: a later refusal is news again.
                self.reported.retain(|(u, _)| *u != info.uid);
            }
        }
        if let Some(PodEntry {
            info,
            decision: Decision::Denied { role, reason },
        }) = new
        {
            if self.reported.insert((info.uid.clone(), role.clone())) {
                out.push(Effect::Forbidden {
                    pod: info.clone(),
                    role: role.clone(),
                    reason: reason.clone(),
                });
            }
        }
    }

    /// A pod was added or changed.
    pub(crate) fn apply_pod(&mut self, info: PodInfo) -> Vec<Effect> {
        let decision = self.decide(&info);
        let entry = PodEntry { info, decision };
        let old = self.index.upsert(entry.clone());
        let mut out = Vec::new();
        self.diff(old.as_ref().map(|e| &e.decision), Some(&entry), &mut out);
        out
    }

    /// A pod was deleted.
    pub(crate) fn delete_pod(&mut self, uid: &str) -> Vec<Effect> {
        let mut out = Vec::new();
        if let Some(old) = self.index.remove(uid) {
            self.diff(Some(&old.decision), None, &mut out);
        }
        self.reported.retain(|(u, _)| u != uid);
        out
    }

    /// The pods were relisted: `pods` is the whole set now.
    pub(crate) fn replace_pods(&mut self, pods: Vec<PodInfo>) -> Vec<Effect> {
        let entries: Vec<PodEntry> = pods
            .into_iter()
            .map(|info| {
                let decision = self.decide(&info);
                PodEntry { info, decision }
            })
            .collect();
        let before: HashMap<String, Decision> = self
            .index
            .entries()
            .iter()
            .map(|e| (e.info.uid.clone(), e.decision.clone()))
            .collect();
        let mut out = Vec::new();
        for removed in self.index.replace_all(entries.clone()) {
            self.diff(Some(&removed.decision), None, &mut out);
        }
        for e in &entries {
            self.diff(before.get(&e.info.uid), Some(e), &mut out);
        }
        out
    }

    /// Re-decides every pod (a namespace or service account changed).
    fn recompute(&mut self, affects: impl Fn(&PodInfo) -> bool) -> Vec<Effect> {
        let mut out = Vec::new();
        for e in self.index.entries() {
            if affects(&e.info) {
                let decision = self.decide(&e.info);
                if decision != e.decision {
                    let entry = PodEntry {
                        info: e.info.clone(),
                        decision,
                    };
                    self.index.upsert(entry.clone());
                    self.diff(Some(&e.decision), Some(&entry), &mut out);
                }
            }
        }
        out
    }

    /// A namespace's annotations (None: deleted).
    pub(crate) fn apply_namespace(
        &mut self,
        name: &str,
        annotations: Option<BTreeMap<String, String>>,
    ) -> Vec<Effect> {
        match annotations {
            Some(a) => self.namespaces.insert(name.to_owned(), a),
            None => self.namespaces.remove(name),
        };
        self.recompute(|p| p.namespace == name)
    }

    /// The namespaces were relisted: `all` is the whole set now.
    pub(crate) fn replace_namespaces(
        &mut self,
        all: HashMap<String, BTreeMap<String, String>>,
    ) -> Vec<Effect> {
        self.namespaces = all;
        self.recompute(|_| true)
    }

    /// The service accounts were relisted: `all` is the whole set now.
    pub(crate) fn replace_service_accounts(
        &mut self,
        all: HashMap<(String, String), BTreeMap<String, String>>,
    ) -> Vec<Effect> {
        self.service_accounts = all;
        self.recompute(|_| true)
    }

    /// A service account's annotations (None: deleted).
    pub(crate) fn apply_service_account(
        &mut self,
        namespace: &str,
        name: &str,
        annotations: Option<BTreeMap<String, String>>,
    ) -> Vec<Effect> {
        let key = (namespace.to_owned(), name.to_owned());
        match annotations {
            Some(a) => self.service_accounts.insert(key, a),
            None => self.service_accounts.remove(&key),
        };
        self.recompute(|p| p.namespace == namespace && p.service_account == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::role::kubernetes::pod_index::Lookup;
    use crate::role::kubernetes::policy::{NamespacePolicy, PERMITTED_ANNOTATION, ROLE_ANNOTATION};

    fn state(policy: NamespacePolicy) -> (ClusterState, Arc<PodIndex>) {
        let index = Arc::new(PodIndex::new());
        let s = PolicySettings {
            base_arn: Some("arn:aws:iam::123456789012:role/".into()),
            use_service_account_annotation: false,
            default_role: None,
            namespace_policy: policy,
            session_tags: false,
            node: "n1".into(),
        };
        (ClusterState::new(s, index.clone()), index)
    }

    fn pod(uid: &str, ns: &str, role: Option<&str>) -> PodInfo {
        PodInfo {
            namespace: ns.into(),
            name: format!("pod-{uid}"),
            uid: uid.into(),
            service_account: "default".into(),
            annotations: role
                .map(|r| BTreeMap::from([(ROLE_ANNOTATION.to_owned(), r.to_owned())]))
                .unwrap_or_default(),
        }
    }

    fn arns(effects: &[Effect]) -> Vec<String> {
        effects
            .iter()
            .map(|e| match e {
                Effect::Prefetch(b) => format!("+{}", b.role_name()),
                Effect::Release(b) => format!("-{}", b.role_name()),
                Effect::Forbidden { role, .. } => format!("!{role}"),
            })
            .collect()
    }

    #[test]
    fn add_change_delete() {
        let (mut st, index) = state(NamespacePolicy::Off);
        assert_eq!(arns(&st.apply_pod(pod("u1", "a", Some("web")))), ["+web"]);
        // Same again: nothing to do.
        assert!(st.apply_pod(pod("u1", "a", Some("web"))).is_empty());
        // Annotation changed: release the old, prefetch the new.
        assert_eq!(
            arns(&st.apply_pod(pod("u1", "a", Some("api")))),
            ["-web", "+api"]
        );
        assert_eq!(arns(&st.delete_pod("u1")), ["-api"]);
        assert_eq!(index.get("u1"), Lookup::Deleted);
    }

    #[test]
    fn namespace_policy_changes_apply_to_running_pods() {
        let (mut st, index) = state(NamespacePolicy::Kiam);
        let e = st.apply_pod(pod("u1", "a", Some("web")));
        assert_eq!(arns(&e), ["!arn:aws:iam::123456789012:role/web"]);
        // Reported once only.
        assert!(st.apply_pod(pod("u1", "a", Some("web"))).is_empty());
        let permit = BTreeMap::from([(PERMITTED_ANNOTATION.to_owned(), ".*web".to_owned())]);
        assert_eq!(arns(&st.apply_namespace("a", Some(permit))), ["+web"]);
        assert!(
            matches!(index.get("u1"), Lookup::Found(e) if matches!(e.decision, Decision::Role(_)))
        );
        assert_eq!(
            arns(&st.apply_namespace("a", None)),
            ["-web", "!arn:aws:iam::123456789012:role/web"]
        );
    }

    #[test]
    fn relist_replaces_and_releases() {
        let (mut st, _index) = state(NamespacePolicy::Off);
        st.apply_pod(pod("u1", "a", Some("web")));
        st.apply_pod(pod("u2", "a", Some("api")));
        let e = st.replace_pods(vec![
            pod("u2", "a", Some("api")),
            pod("u3", "a", Some("db")),
        ]);
        assert_eq!(arns(&e), ["-web", "+db"]);
    }
}

//! The agent's side of `iamlet inspect`: gathers, at request time, the pods the agent knows
//! (the pod index, or the cgroups a bindings file binds), what each gets (role, credentials
//! from the cache) and what each was served (the audit log's per-pod record).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use super::report::{PodRow, Report};
use crate::caller::cgroup::CgroupIndex;
use crate::caller::pod_identity::parse_pod_cgroup;
use crate::clock;
use crate::credentials::sts_cache::StsCache;
use crate::credentials::Credentials;
use crate::imds::audit::served::SubjectStats;
use crate::imds::audit::Audit;
use crate::imds::Subject;
use crate::role::bindings::StaticBindings;
use crate::role::kubernetes::pod_index::PodIndex;
use crate::role::kubernetes::policy::Decision;
use crate::role::RoleBinding;
use crate::timefmt::format_utc;

/// Where roles come from, with what the inventory reads of it.
#[derive(Debug)]
pub(crate) enum RoleSourceView {
    /// Kubernetes mode: this node's pod index.
    Kubernetes {
        /// The node.
        node: String,
        /// Its pods.
        pods: Arc<PodIndex>,
    },
    /// A bindings file.
    Standalone(Arc<StaticBindings>),
    /// No roles.
    None,
}

/// Where credentials come from.
#[derive(Clone, Debug)]
pub(crate) enum CredentialSourceView {
    /// The STS cache.
    Sts(StsCache),
    /// `--static-credentials`.
    Static,
    /// Nothing is served.
    None,
}

/// Everything `/debug/pods` reads.
#[derive(Debug)]
pub(crate) struct Inventory {
    /// Roles.
    pub roles: RoleSourceView,
    /// Credentials.
    pub credentials: CredentialSourceView,
    /// The cgroup index (ids and paths).
    pub cgroups: Arc<CgroupIndex>,
    /// The audit log (what each pod was served).
    pub audit: Arc<Audit>,
}

impl Inventory {
    /// The report now. Reads the cgroup tree for the ids of pods that have not asked yet.
    pub(crate) fn report(&self) -> Report {
        let now = clock::now();
        let wall = clock::wall();
        let served: HashMap<Subject, SubjectStats> =
            self.audit.served().snapshot().into_iter().collect();
        let cgroups = self.cgroups.entries();
        let mut rows = match &self.roles {
            RoleSourceView::Kubernetes { pods, .. } => self.pod_rows(pods, &served, &cgroups),
            RoleSourceView::Standalone(bindings) => self.bound_rows(bindings, &served, &cgroups),
            RoleSourceView::None => Vec::new(),
        };
        // Whoever asked and is not listed yet (a bare cgroup, a pod the index dropped).
        let listed: HashSet<Subject> = rows.iter().filter_map(subject_of).collect();
        for (subject, stats) in &served {
            if listed.contains(subject) {
                continue;
            }
            let mut row = PodRow {
                uid: match subject {
                    Subject::Pod(uid) => Some(uid.clone()),
                    Subject::Cgroup(_) => None,
                },
                cgroup: stats.cgroup.clone(),
                cgroup_id: Some(stats.cgroup_id),
                role_note: Some("not known to the role source now".to_owned()),
                ..PodRow::default()
            };
            self.fill(&mut row, None, Some(stats));
            rows.push(row);
        }
        for row in &mut rows {
            if let Some(last) = served_stats(&served, row).map(|s| s.last_request) {
                row.last_request = Some(format_utc(wall - now.saturating_duration_since(last)));
            }
        }
        rows.sort_by(|a, b| {
            (&a.namespace, &a.name, &a.cgroup).cmp(&(&b.namespace, &b.name, &b.cgroup))
        });
        let (mode, node) = match &self.roles {
            RoleSourceView::Kubernetes { node, .. } => ("kubernetes", Some(node.clone())),
            RoleSourceView::Standalone(_) => ("standalone", None),
            RoleSourceView::None => ("none", None),
        };
        Report {
            mode: mode.to_owned(),
            node,
            generated_at: format_utc(wall),
            pods: rows,
        }
    }

    /// Kubernetes mode: a row per pod in the index.
    fn pod_rows(
        &self,
        pods: &PodIndex,
        served: &HashMap<Subject, SubjectStats>,
        cgroups: &[(u64, String)],
    ) -> Vec<PodRow> {
        // The pod's own cgroup: the shortest path naming its UID.
        let mut pod_cgroups: HashMap<String, (u64, &str)> = HashMap::new();
        for (id, path) in cgroups {
            let Some(parsed) = parse_pod_cgroup(path) else {
                continue;
            };
            let shorter = pod_cgroups
                .get(&parsed.pod_uid)
                .is_none_or(|(_, known)| path.len() < known.len());
            if shorter {
                pod_cgroups.insert(parsed.pod_uid, (*id, path.as_str()));
            }
        }
        pods.entries()
            .iter()
            .map(|entry| {
                let info = &entry.info;
                let stats = served.get(&Subject::Pod(info.uid.clone()));
                let (cgroup_id, cgroup) = match (pod_cgroups.get(&info.uid), stats) {
                    (Some((id, path)), _) => (Some(*id), Some((*path).to_owned())),
                    (None, Some(s)) => (Some(s.cgroup_id), s.cgroup.clone()),
                    (None, None) => (None, None),
                };
                let (binding, note) = match &entry.decision {
                    Decision::Role(b) => (Some(b.as_ref()), None),
                    Decision::NoRole => (None, Some("no role".to_owned())),
                    Decision::Denied { role, reason } => {
                        (None, Some(format!("denied {role}: {reason}")))
                    }
                };
                let mut row = PodRow {
                    namespace: Some(info.namespace.clone()),
                    name: Some(info.name.clone()),
                    uid: Some(info.uid.clone()),
                    cgroup,
                    cgroup_id,
                    role: binding.map(|b| b.role_arn.clone()),
                    role_note: note,
                    ..PodRow::default()
                };
                self.fill(&mut row, binding, stats);
                row
            })
            .collect()
    }

    /// Standalone: a row per cgroup the bindings give a role (not its nested cgroups, which
    /// share it), keyed by cgroup.
    fn bound_rows(
        &self,
        bindings: &StaticBindings,
        served: &HashMap<Subject, SubjectStats>,
        cgroups: &[(u64, String)],
    ) -> Vec<PodRow> {
        let bound: BTreeMap<&str, (u64, RoleBinding)> = cgroups
            .iter()
            .filter_map(|(id, path)| Some((path.as_str(), (*id, bindings.lookup(path)?))))
            .collect();
        bound
            .iter()
            .filter(|(path, (_, binding))| {
                // Skip a cgroup whose parent is bound to the same role.
                let parent = path.rsplit_once('/').map_or("", |(p, _)| p);
                bound
                    .get(parent)
                    .is_none_or(|(_, b)| b.role_arn != binding.role_arn)
            })
            .map(|(path, (id, binding))| {
                let mut row = PodRow {
                    uid: parse_pod_cgroup(path).map(|p| p.pod_uid),
                    cgroup: Some((*path).to_owned()),
                    cgroup_id: Some(*id),
                    role: Some(binding.role_arn.clone()),
                    ..PodRow::default()
                };
                let stats = served_stats(served, &row);
                self.fill(&mut row, Some(binding), stats);
                row
            })
            .collect()
    }

    /// Fills the credentials and served columns: the cache's current credentials for
    /// `binding` (what the next request gets), else the ones last served.
    fn fill(&self, row: &mut PodRow, binding: Option<&RoleBinding>, stats: Option<&SubjectStats>) {
        let source = match (&self.credentials, binding.is_some() || row.role.is_some()) {
            (CredentialSourceView::Sts(_), true) => "sts",
            (CredentialSourceView::Static, true) => "static",
            _ => "none",
        };
        source.clone_into(&mut row.credential_source);
        let mut current: Option<Arc<Credentials>> = None;
        if let (CredentialSourceView::Sts(cache), Some(binding)) = (&self.credentials, binding) {
            let peeked = cache.peek(binding);
            current = peeked.current;
            row.credential_error = peeked.last_error;
        }
        if let Some(stats) = stats {
            row.served = stats.served;
            row.refused = stats.refused;
            row.last_refusal = stats.last_refusal.as_deref().map(str::to_owned);
            if current.is_none() {
                current.clone_from(&stats.credentials);
            }
        }
        if let Some(c) = current {
            row.access_key_id = Some(c.access_key_id.clone());
            row.expiration = Some(format_utc(c.expiration));
        }
    }
}

/// The subject a row's served record is kept under.
/// (As `Subject::of` names a caller: by pod UID where its cgroup names one.)
fn subject_of(row: &PodRow) -> Option<Subject> {
    match (&row.uid, row.cgroup_id) {
        (Some(uid), _) => Some(Subject::Pod(uid.clone())),
        (None, Some(id)) => Some(Subject::Cgroup(id)),
        (None, None) => None,
    }
}

fn served_stats<'a>(
    served: &'a HashMap<Subject, SubjectStats>,
    row: &PodRow,
) -> Option<&'a SubjectStats> {
    served.get(&subject_of(row)?)
}

//! What each pod was served, for `iamlet inspect` (the admin server's `/debug/pods`): per pod
//! (or bare cgroup), its latest credentials, when it last asked, and how many answers and
//! refusals it got. Kept beside the audit log, which sees every answer it counts.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::{Entry, Outcome};
use crate::credentials::Credentials;
use crate::imds::Subject;
use crate::role::RoleBinding;

/// Subjects kept; a new one beyond it is not tracked (the audit log still logs it).
const MAX_SUBJECTS: usize = 50_000;

/// How long a subject that stopped asking is kept.
const IDLE_LIMIT: Duration = Duration::from_secs(3600);

/// What one pod (or bare cgroup) was served.
#[derive(Clone, Debug)]
pub(crate) struct SubjectStats {
    /// The cgroup id of its latest request.
    pub cgroup_id: u64,
    /// That cgroup's path, if it was known.
    pub cgroup: Option<String>,
    /// The binding of the latest credentials served.
    pub binding: Option<Arc<RoleBinding>>,
    /// The latest credentials served (only the key id and expiry are shown).
    pub credentials: Option<Arc<Credentials>>,
    /// When it last asked (a credentials request or a refused one).
    pub last_request: Instant,
    /// Credentials answers served.
    pub served: u64,
    /// Requests refused.
    pub refused: u64,
    /// Why the latest refusal was made.
    pub last_refusal: Option<Cow<'static, str>>,
}

impl SubjectStats {
    fn count(&mut self, entry: &Entry<'_>, now: Instant) {
        self.last_request = now;
        if self.cgroup_id != entry.caller.cgroup_id {
            self.cgroup_id = entry.caller.cgroup_id;
            self.cgroup.clone_from(&entry.caller.cgroup_path);
        }
        match entry.outcome {
            Outcome::Served {
                binding,
                credentials,
            } => {
                self.served += 1;
                if !self
                    .credentials
                    .as_ref()
                    .is_some_and(|c| Arc::ptr_eq(c, credentials))
                {
                    self.credentials = Some(credentials.clone());
                    self.binding = Some(binding.clone());
                }
            }
            Outcome::Refused { reason } => {
                self.refused += 1;
                if self.last_refusal.as_deref() != Some(&**reason) {
                    self.last_refusal = Some(reason.clone());
                }
            }
        }
    }
}

/// The per-subject record.
#[derive(Debug, Default)]
pub(crate) struct ServedLog {
    subjects: Mutex<HashMap<Subject, SubjectStats, foldhash::fast::RandomState>>,
}

impl ServedLog {
    /// Counts one audited answer at `now`.
    pub(super) fn record(&self, entry: &Entry<'_>, now: Instant) {
        let mut subjects = self.subjects.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(stats) = subjects.get_mut(entry.subject) {
            stats.count(entry, now);
            return;
        }
        if subjects.len() >= MAX_SUBJECTS {
            subjects.retain(|_, s| now.saturating_duration_since(s.last_request) < IDLE_LIMIT);
            if subjects.len() >= MAX_SUBJECTS {
                return;
            }
        }
        let mut stats = SubjectStats {
            cgroup_id: entry.caller.cgroup_id,
            cgroup: entry.caller.cgroup_path.clone(),
            binding: None,
            credentials: None,
            last_request: now,
            served: 0,
            refused: 0,
            last_refusal: None,
        };
        stats.count(entry, now);
        subjects.insert(entry.subject.clone(), stats);
    }

    /// Forgets subjects idle for [`IDLE_LIMIT`] at `now`.
    pub(super) fn forget_idle(&self, now: Instant) {
        self.subjects
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, s| now.saturating_duration_since(s.last_request) < IDLE_LIMIT);
    }

    /// Every subject's record now.
    pub(crate) fn snapshot(&self) -> Vec<(Subject, SubjectStats)> {
        self.subjects
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(subject, stats)| (subject.clone(), stats.clone()))
            .collect()
    }
}

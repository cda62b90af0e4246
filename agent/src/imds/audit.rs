//! The audit log: one line per credentials answer and per refusal, under the tracing target
//! `iamlet::audit` at info (a JSON object with `--log-format json`; `--log
//! info,iamlet::audit=off` turns it off). A line names the pod (namespace, name and UID in
//! Kubernetes mode; the cgroup path otherwise), the cgroup id, the route, the HTTP status and
//! the latency; a credentials answer adds the role ARN, the AccessKeyId and the expiry (never
//! the secret key or the session token), a refusal its reason.
//!
//! **Collapsing.** An SDK polls its credentials; logging every answer would flood the log. The
//! first answer of each AccessKeyId to each pod is always logged at once (that line is what
//! maps a CloudTrail AccessKeyId back to a pod). Answers alike to it (same pod, same key, same
//! status) within [`INTERVAL`] are counted instead, and the count is logged as `repeated` on
//! the next line for that key: the next answer after the interval, or the periodic flush.
//! Refusals collapse the same way, keyed by pod, route and status.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::Subject;
use crate::caller::attribution::Caller;
use crate::credentials::Credentials;
use crate::role::{RoleBinding, RoleResolver};
use crate::timefmt::format_utc;
use foldhash::fast::RandomState;
use served::ServedLog;

/// How long answers alike are counted before their count is logged.
pub(crate) const INTERVAL: Duration = Duration::from_secs(60);

/// Keys kept; beyond it, keys with nothing left to log are dropped first.
const MAX_KEYS: usize = 50_000;

/// What a request of the audited kinds came to.
#[derive(Clone, Debug)]
pub(crate) enum Outcome {
    /// Credentials were served.
    Served {
        /// The binding they were served for.
        binding: Arc<RoleBinding>,
        /// The credentials (only the key id and expiry are logged).
        credentials: Arc<Credentials>,
    },
    /// The request was refused.
    Refused {
        /// Why, in words.
        reason: Cow<'static, str>,
    },
}

/// One audited answer.
#[derive(Debug)]
pub(crate) struct Entry<'a> {
    /// Who asked.
    pub caller: &'a Caller,
    /// Whose it counts as.
    pub subject: &'a Subject,
    /// The route (as in the metrics).
    pub route: &'static str,
    /// The HTTP status answered.
    pub status: u16,
    /// Time from the request read to the answer made.
    pub latency: Duration,
    /// What it came to.
    pub outcome: &'a Outcome,
}

/// The last line logged for a kind of answer (pod, route, status, AccessKeyId), and how many
/// answers alike were counted since.
#[derive(Debug)]
struct Tally {
    subject: Subject,
    route: &'static str,
    status: u16,
    /// The AccessKeyId served (empty for refusals).
    access_key_id: String,
    /// The line logged last (logged again, with the count, by the flush).
    line: Line,
    logged_at: Instant,
    repeated: u64,
    /// Latency of the latest answer counted.
    last_latency: Duration,
}

impl Tally {
    fn is_for(&self, entry: &Entry<'_>, access_key_id: &str) -> bool {
        self.subject == *entry.subject
            && self.route == entry.route
            && self.status == entry.status
            && self.access_key_id == access_key_id
    }
}

/// The fields of one line, owned (so the flush can log it again).
#[derive(Clone, Debug)]
struct Line {
    cgroup_id: u64,
    cgroup: Option<String>,
    pod_uid: Option<String>,
    route: &'static str,
    status: u16,
    latency: Duration,
    outcome: Outcome,
}

/// The audit log of one proxy.
#[derive(Debug)]
pub(crate) struct Audit {
    /// What each subject was served (for `iamlet inspect`).
    served: ServedLog,
    /// Tallies by a hash of what makes answers alike: counting an answer allocates nothing.
    /// (Two kinds with the same hash only cost a line more: the later replaces the earlier.)
    /// The key is a hash already; foldhash (seeded per process) makes both cheap, and no pod
    /// chooses what is hashed but its own requests' route.
    tallies: Mutex<HashMap<u64, Tally, RandomState>>,
    hasher: RandomState,
    roles: Arc<dyn RoleResolver>,
}

impl Audit {
    /// An audit log naming pods through `roles` (namespace and name, where it knows them).
    pub(crate) fn new(roles: Arc<dyn RoleResolver>) -> Self {
        Audit {
            served: ServedLog::default(),
            tallies: Mutex::new(HashMap::default()),
            hasher: RandomState::default(),
            roles,
        }
    }

    /// What each subject was served.
    pub(crate) fn served(&self) -> &ServedLog {
        &self.served
    }

    /// Records one answer at `now`: logs it, or counts it with the ones alike.
    pub(crate) fn record(&self, entry: &Entry<'_>, now: Instant) {
        self.served.record(entry, now);
        let access_key_id = match entry.outcome {
            Outcome::Served { credentials, .. } => credentials.access_key_id.as_str(),
            Outcome::Refused { .. } => "",
        };
        let hash = self
            .hasher
            .hash_one((entry.subject, entry.route, entry.status, access_key_id));
        let (line, repeated) = {
            let mut tallies = self.tallies.lock().unwrap_or_else(PoisonError::into_inner);
            match tallies.get_mut(&hash) {
                Some(tally) if tally.is_for(entry, access_key_id) => {
                    if now.saturating_duration_since(tally.logged_at) < INTERVAL {
                        tally.repeated += 1;
                        tally.last_latency = entry.latency;
                        return;
                    }
                    let repeated = tally.repeated;
                    tally.logged_at = now;
                    tally.repeated = 0;
                    tally.line = line_of(entry);
                    (tally.line.clone(), repeated)
                }
                _ => {
                    if tallies.len() >= MAX_KEYS {
                        tallies.retain(|_, t| t.repeated > 0);
                    }
                    let line = line_of(entry);
                    tallies.insert(
                        hash,
                        Tally {
                            subject: entry.subject.clone(),
                            route: entry.route,
                            status: entry.status,
                            access_key_id: access_key_id.to_owned(),
                            line: line.clone(),
                            logged_at: now,
                            repeated: 0,
                            last_latency: entry.latency,
                        },
                    );
                    (line, 0)
                }
            }
        };
        self.log(&line, repeated);
    }

    /// Logs the count of answers alike that no later answer reported, for each kind whose
    /// interval has passed at `now` (as its last line again, with `repeated` and the latest
    /// latency), and forgets kinds idle for two intervals.
    pub(crate) fn flush(&self, now: Instant) {
        self.served.forget_idle(now);
        let mut due = Vec::new();
        {
            let mut tallies = self.tallies.lock().unwrap_or_else(PoisonError::into_inner);
            tallies.retain(|_, tally| {
                let age = now.saturating_duration_since(tally.logged_at);
                if age < INTERVAL {
                    return true;
                }
                if tally.repeated > 0 {
                    let mut line = tally.line.clone();
                    line.latency = tally.last_latency;
                    due.push((line, tally.repeated));
                    tally.logged_at = now;
                    tally.repeated = 0;
                    return true;
                }
                age < INTERVAL * 2
            });
        }
        for (line, repeated) in due {
            self.log(&line, repeated);
        }
    }

    /// Flushes every [`INTERVAL`] until `stop`, and once more then.
    pub(crate) async fn run(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.flush(crate::clock::now()),
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        self.flush(crate::clock::now() + INTERVAL);
    }

    fn log(&self, line: &Line, repeated: u64) {
        let pod = line
            .pod_uid
            .as_deref()
            .and_then(|uid| self.roles.pod_name(uid));
        let (namespace, name) = match &pod {
            Some((ns, name)) => (Some(ns.as_str()), Some(name.as_str())),
            None => (None, None),
        };
        let latency_us = u64::try_from(line.latency.as_micros()).unwrap_or(u64::MAX);
        // Fields that are `None` are left out of the line.
        let (message, role_arn, access_key_id, expiration, reason) = match &line.outcome {
            Outcome::Served {
                binding,
                credentials,
            } => (
                "credentials served",
                Some(binding.role_arn.as_str()),
                Some(credentials.access_key_id.as_str()),
                Some(format_utc(credentials.expiration)),
                None,
            ),
            Outcome::Refused { reason } => ("request refused", None, None, None, Some(&**reason)),
        };
        tracing::info!(
            target: "iamlet::audit",
            pod_namespace = namespace,
            pod_name = name,
            pod_uid = line.pod_uid.as_deref(),
            cgroup = line.cgroup.as_deref(),
            cgroup_id = line.cgroup_id,
            route = line.route,
            status = line.status,
            role_arn,
            access_key_id,
            expiration = expiration.as_deref(),
            reason,
            latency_us,
            repeated,
            "{message}"
        );
    }
}

fn line_of(entry: &Entry<'_>) -> Line {
    Line {
        cgroup_id: entry.caller.cgroup_id,
        cgroup: entry.caller.cgroup_path.clone(),
        pod_uid: entry.caller.pod_uid.clone(),
        route: entry.route,
        status: entry.status,
        latency: entry.latency,
        outcome: entry.outcome.clone(),
    }
}

pub(crate) mod served;
#[cfg(test)]
mod tests;

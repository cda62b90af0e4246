//! The agent's own index of the pods on its node: pod UID → what role the pod gets, updated by
//! the watch, read by every request. A lookup for a UID the watch has not delivered yet waits
//! (bounded) for it to appear, which closes the pod-start race: a container can run before the
//! agent hears of its pod, and must get its own role then, not a 404 or a default. A deleted
//! pod is remembered as deleted for a while, so its cgroup loses access at once instead of
//! waiting.

use std::collections::HashMap;

use foldhash::fast::RandomState;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::clock;
use crate::role::kubernetes::policy::{Decision, PodInfo};

/// How long a deleted pod's UID is remembered.
const TOMBSTONE_TTL: Duration = Duration::from_secs(600);

/// One pod's entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PodEntry {
    /// Its metadata.
    pub info: PodInfo,
    /// What it gets.
    pub decision: Decision,
}

#[derive(Debug, Default)]
struct State {
    // Looked up on every request: foldhash (seeded per process) hashes a UID in a fraction
    // of SipHash's time.
    pods: HashMap<String, Arc<PodEntry>, RandomState>,
    deleted: HashMap<String, Instant, RandomState>,
}

/// What a lookup found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// The pod is known.
    Found(Arc<PodEntry>),
    /// The pod was deleted.
    Deleted,
    /// The pod did not appear within the wait.
    Unknown,
}

/// The index.
#[derive(Debug, Default)]
pub(crate) struct PodIndex {
    state: RwLock<State>,
    changed: Notify,
    /// A full list has been applied at least once.
    listed: std::sync::atomic::AtomicBool,
}

impl PodIndex {
    /// An empty index.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a pod; returns the previous entry.
    pub(crate) fn upsert(&self, entry: PodEntry) -> Option<Arc<PodEntry>> {
        let uid = entry.info.uid.clone();
        let previous = {
            let mut st = self
                .state
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            st.deleted.remove(&uid);
            st.pods.insert(uid, Arc::new(entry))
        };
        self.changed.notify_waiters();
        previous
    }

    /// Removes a pod; returns its entry.
    pub(crate) fn remove(&self, uid: &str) -> Option<Arc<PodEntry>> {
        let removed = {
            let mut st = self
                .state
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let now = clock::now();
            st.deleted
                .retain(|_, at| now.duration_since(*at) < TOMBSTONE_TTL);
            st.deleted.insert(uid.to_owned(), now);
            st.pods.remove(uid)
        };
        self.changed.notify_waiters();
        removed
    }

    /// Replaces the whole set (after a relist): pods not in `entries` are removed. Returns
    /// the removed entries.
    pub(crate) fn replace_all(&self, entries: Vec<PodEntry>) -> Vec<Arc<PodEntry>> {
        let removed = {
            let mut st = self
                .state
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut next: HashMap<String, Arc<PodEntry>, RandomState> = entries
                .into_iter()
                .map(|e| (e.info.uid.clone(), Arc::new(e)))
                .collect();
            let now = clock::now();
            let mut removed = Vec::new();
            let previous = std::mem::take(&mut st.pods);
            for (uid, old) in previous {
                if !next.contains_key(&uid) {
                    st.deleted.insert(uid, now);
                    removed.push(old);
                }
            }
            for uid in next.keys() {
                st.deleted.remove(uid);
            }
            std::mem::swap(&mut st.pods, &mut next);
            removed
        };
        self.listed
            .store(true, std::sync::atomic::Ordering::Release);
        self.changed.notify_waiters();
        removed
    }

    /// Whether a full list of this node's pods has been applied (the watch has synced once).
    pub(crate) fn is_listed(&self) -> bool {
        self.listed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The entry of `uid` now.
    pub(crate) fn get(&self, uid: &str) -> Lookup {
        let st = self
            .state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(e) = st.pods.get(uid) {
            return Lookup::Found(e.clone());
        }
        if st.deleted.contains_key(uid) {
            return Lookup::Deleted;
        }
        Lookup::Unknown
    }

    /// The entry of `uid`, waiting up to `wait` for the watch to deliver it.
    pub(crate) async fn wait_for(&self, uid: &str, wait: Duration) -> Lookup {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Register for the next change before looking, so none is missed in between.
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.get(uid) {
                Lookup::Unknown => {}
                found => return found,
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.get(uid);
            }
        }
    }

    /// Every entry (for prefetch registration and metrics).
    pub(crate) fn entries(&self) -> Vec<Arc<PodEntry>> {
        let st = self
            .state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        st.pods.values().cloned().collect()
    }

    /// Number of pods (the `iamlet_kube_pods` gauge, `iamlet inspect`).
    pub(crate) fn len(&self) -> usize {
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pods
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(uid: &str) -> PodEntry {
        PodEntry {
            info: PodInfo {
                uid: uid.into(),
                ..PodInfo::default()
            },
            decision: Decision::NoRole,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_pod_that_appears_during_the_wait_is_found_at_once() {
        let index = Arc::new(PodIndex::new());
        let i2 = index.clone();
        let started = clock::now();
        let waiter = tokio::spawn(async move {
            let got = i2.wait_for("u1", Duration::from_secs(5)).await;
            (got, clock::since(started))
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        index.upsert(entry("u1"));
        let (got, waited) = waiter.await.expect("join");
        assert!(matches!(got, Lookup::Found(e) if e.info.uid == "u1"));
        assert_eq!(waited, Duration::from_millis(50), "found when it appeared");
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_pods_wait_only_the_bound_and_deleted_pods_not_at_all() {
        let index = PodIndex::new();
        let started = clock::now();
        assert_eq!(
            index.wait_for("nope", Duration::from_millis(100)).await,
            Lookup::Unknown
        );
        assert_eq!(clock::since(started), Duration::from_millis(100));
        index.upsert(entry("u2"));
        index.remove("u2");
        let started = clock::now();
        assert_eq!(
            index.wait_for("u2", Duration::from_secs(5)).await,
            Lookup::Deleted
        );
        assert_eq!(clock::since(started), Duration::ZERO);
        // Re-added (same UID cannot come back in Kubernetes, but the index copes).
        index.upsert(entry("u2"));
        assert!(matches!(index.get("u2"), Lookup::Found(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_deleted_pod_is_remembered_for_the_tombstone_ttl_then_forgotten() {
        let index = PodIndex::new();
        index.upsert(entry("old"));
        index.remove("old");
        tokio::time::sleep(TOMBSTONE_TTL.checked_sub(Duration::from_secs(1)).unwrap()).await;
        index.remove("other");
        assert_eq!(index.get("old"), Lookup::Deleted, "still within the TTL");
        tokio::time::sleep(Duration::from_secs(1)).await;
        index.remove("other");
        assert_eq!(index.get("old"), Lookup::Unknown, "forgotten after the TTL");
    }

    #[test]
    fn replace_all_removes_what_is_gone() {
        let index = PodIndex::new();
        index.upsert(entry("a"));
        index.upsert(entry("b"));
        let removed = index.replace_all(vec![entry("b"), entry("c")]);
        assert_eq!(removed.len(), 1);
        assert_eq!(removed[0].info.uid, "a");
        assert_eq!(index.get("a"), Lookup::Deleted);
        assert!(matches!(index.get("c"), Lookup::Found(_)));
        assert_eq!(index.len(), 2);
    }
}

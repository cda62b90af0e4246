//! Which accepted connections get served, so that no pod can lock the others out.
//!
//! * **All pods**: at most `max_total` connections are held at once (served or waiting). The
//!   accept loop checks this with one atomic add and closes a connection beyond it at once, so
//!   it never stops accepting and the kernel's accept queue keeps draining for everyone.
//! * **Per pod** (the key the handler names after attribution, before any byte is read): at
//!   most `per_key` connections are served at once; up to `waiting_per_key` more wait their
//!   turn (accepted, nothing read, no buffers) for at most `wait_limit`; a connection beyond
//!   that is closed at once. One pod holding thousands of connections therefore costs the
//!   others nothing.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why a connection was closed without being served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Refusal {
    /// `max_total` connections were already held.
    Total,
    /// Its pod already had `per_key` connections served and as many waiting.
    PerKey,
    /// It waited `wait_limit` for one of its pod's connections to close.
    WaitTimedOut,
}

impl Refusal {
    /// A short name for metrics and logs.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Refusal::Total => "over_total_limit",
            Refusal::PerKey => "over_pod_limit",
            Refusal::WaitTimedOut => "wait_timed_out",
        }
    }
}

/// Limits of [`Admission`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct AdmissionLimits {
    /// Connections held at once over all keys.
    pub max_total: usize,
    /// Connections of one key served at once.
    pub per_key: usize,
    /// Connections of one key waiting for a turn.
    pub waiting_per_key: usize,
    /// Longest a connection waits for its key's turn.
    pub wait_limit: Duration,
}

struct KeySlots {
    active: Arc<Semaphore>,
    waiting: AtomicUsize,
}

/// The admission state of one server.
pub(crate) struct Admission<K> {
    limits: AdmissionLimits,
    /// Connections held now (shared with whoever watches it: metrics, heap trimming).
    total: Arc<AtomicUsize>,
    keys: Mutex<HashMap<K, Arc<KeySlots>>>,
}

impl<K> std::fmt::Debug for Admission<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("limits", &self.limits)
            .field("total", &self.total.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// One held connection, counted in the total until dropped.
#[derive(Debug)]
pub(crate) struct TotalGuard<K: Hash + Eq + Clone> {
    admission: Arc<Admission<K>>,
}

impl<K: Hash + Eq + Clone> Drop for TotalGuard<K> {
    fn drop(&mut self) {
        self.admission.total.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection's turn within its key, released when dropped.
pub(crate) struct KeyGuard<K: Hash + Eq + Clone> {
    admission: Arc<Admission<K>>,
    key: K,
    slots: Arc<KeySlots>,
    permit: Option<OwnedSemaphorePermit>,
}

impl<K: Hash + Eq + Clone> std::fmt::Debug for KeyGuard<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyGuard")
    }
}

impl<K: Hash + Eq + Clone> Drop for KeyGuard<K> {
    fn drop(&mut self) {
        drop(self.permit.take());
        self.admission.forget_if_idle(&self.key, &self.slots);
    }
}

impl<K: Hash + Eq + Clone> Admission<K> {
    /// Admission under `limits`, counting held connections in `held`.
    pub(crate) fn new(limits: AdmissionLimits, held: Arc<AtomicUsize>) -> Arc<Self> {
        Arc::new(Admission {
            limits: AdmissionLimits {
                max_total: limits.max_total.max(1),
                per_key: limits.per_key.clamp(1, Semaphore::MAX_PERMITS),
                waiting_per_key: limits.waiting_per_key,
                wait_limit: limits.wait_limit,
            },
            total: held,
            keys: Mutex::new(HashMap::new()),
        })
    }

    #[cfg(test)]
    /// Connections held now.
    pub(crate) fn held(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }

    /// Counts one more connection, unless `max_total` are held already.
    pub(crate) fn enter_total(self: &Arc<Self>) -> Result<TotalGuard<K>, Refusal> {
        let before = self.total.fetch_add(1, Ordering::AcqRel);
        if before >= self.limits.max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Total);
        }
        Ok(TotalGuard {
            admission: self.clone(),
        })
    }

    fn slots(&self, key: &K) -> Arc<KeySlots> {
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        keys.entry(key.clone())
            .or_insert_with(|| {
                Arc::new(KeySlots {
                    active: Arc::new(Semaphore::new(self.limits.per_key)),
                    waiting: AtomicUsize::new(0),
                })
            })
            .clone()
    }

    /// Drops the key's entry once nothing uses it.
    fn forget_if_idle(&self, key: &K, slots: &Arc<KeySlots>) {
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        // The map's reference and `slots` are the only ones left: no connection of this key
        // is served or waiting, and none can start without taking this lock.
        if Arc::strong_count(slots) == 2 {
            keys.remove(key);
        }
    }

    /// Waits for a turn of `key`: at once if fewer than `per_key` of its connections are
    /// served, else in line behind them (at most `waiting_per_key` waiting, for at most
    /// `wait_limit`).
    pub(crate) async fn enter_key(self: &Arc<Self>, key: K) -> Result<KeyGuard<K>, Refusal> {
        // The guard holds the only reference besides the map's, so that dropping it (served,
        // refused or timed out) forgets an idle key.
        let mut guard = KeyGuard {
            admission: self.clone(),
            slots: self.slots(&key),
            key,
            permit: None,
        };
        let active = guard.slots.active.clone();
        if let Ok(permit) = active.clone().try_acquire_owned() {
            guard.permit = Some(permit);
            return Ok(guard);
        }
        if guard.slots.waiting.fetch_add(1, Ordering::AcqRel) >= self.limits.waiting_per_key {
            guard.slots.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::PerKey);
        }
        let waited = tokio::time::timeout(self.limits.wait_limit, active.acquire_owned()).await;
        guard.slots.waiting.fetch_sub(1, Ordering::AcqRel);
        match waited {
            Ok(Ok(permit)) => {
                guard.permit = Some(permit);
                Ok(guard)
            }
            // The semaphore is never closed; a timeout is the only way out.
            Ok(Err(_)) | Err(_) => Err(Refusal::WaitTimedOut),
        }
    }

    #[cfg(test)]
    /// Keys with a connection served or waiting (for tests and metrics).
    pub(crate) fn keys(&self) -> usize {
        self.keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(max_total: usize, per_key: usize) -> Arc<Admission<&'static str>> {
        Admission::new(
            AdmissionLimits {
                max_total,
                per_key,
                waiting_per_key: per_key,
                wait_limit: Duration::from_secs(10),
            },
            Arc::new(AtomicUsize::new(0)),
        )
    }

    #[test]
    fn total_is_capped_and_released() {
        let a = admission(2, 2);
        let one = a.enter_total().expect("one");
        let two = a.enter_total().expect("two");
        assert_eq!(a.enter_total().err(), Some(Refusal::Total));
        drop(one);
        let three = a.enter_total().expect("three after a release");
        assert_eq!(a.held(), 2);
        drop((two, three));
        assert_eq!(a.held(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn one_key_waits_in_line_and_never_holds_up_another() {
        let a = admission(100, 2);
        let p1 = a.enter_key("abuser").await.expect("1");
        let _p2 = a.enter_key("abuser").await.expect("2");
        // Two more may wait; the fifth is refused at once.
        let w1 = tokio::spawn({
            let a = a.clone();
            async move { a.enter_key("abuser").await }
        });
        let w2 = tokio::spawn({
            let a = a.clone();
            async move { a.enter_key("abuser").await.map(drop) }
        });
        tokio::task::yield_now().await;
        assert_eq!(a.enter_key("abuser").await.err(), Some(Refusal::PerKey));
        // Another key is served at once.
        let other = a.enter_key("victim").await.expect("victim");
        assert_eq!(a.keys(), 2);
        drop(other);
        assert_eq!(a.keys(), 1, "an idle key is forgotten");
        // A release lets a waiter in; the other waiter times out after wait_limit.
        drop(p1);
        let _w1 = w1
            .await
            .expect("join")
            .expect("a waiter gets the freed turn");
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(w2.await.expect("join"), Err(Refusal::WaitTimedOut));
    }
}

//! How the Kubernetes watch is doing, for the metrics: when it last delivered anything and how
//! many errors each of its watches met (kube-rs retries them with backoff; an error here is a
//! failed list or watch call, or a stream that broke).
//!
//! kube-rs hands on no heartbeat (it consumes the API server's bookmarks), so on a quiet
//! cluster the time since the last event grows too: it means "stale" only together with
//! errors, which is how the chart's alert reads it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::clock;

/// The watches the agent runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Watched {
    /// Namespaces (metadata only).
    Namespaces,
    /// Service accounts (metadata only).
    ServiceAccounts,
    /// This node's pods.
    Pods,
}

impl Watched {
    /// Every watch, in the order the agent starts them.
    pub(crate) const ALL: [Watched; 3] =
        [Watched::Namespaces, Watched::ServiceAccounts, Watched::Pods];

    /// The `resource` label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Watched::Namespaces => "namespaces",
            Watched::ServiceAccounts => "serviceaccounts",
            Watched::Pods => "pods",
        }
    }

    fn slot(self) -> usize {
        match self {
            Watched::Namespaces => 0,
            Watched::ServiceAccounts => 1,
            Watched::Pods => 2,
        }
    }
}

/// The watch's health, shared by the watch (writer) and the metrics (reader).
#[derive(Debug)]
pub(crate) struct WatchHealth {
    /// When the watch started, or last delivered an event.
    last_event: Mutex<Instant>,
    errors: [AtomicU64; 3],
}

impl Default for WatchHealth {
    fn default() -> Self {
        WatchHealth {
            last_event: Mutex::new(clock::now()),
            errors: Default::default(),
        }
    }
}

impl WatchHealth {
    /// Records one item of `watched`'s stream: an event (`ok`) or an error.
    pub(crate) fn observe(&self, watched: Watched, ok: bool) {
        if ok {
            *self
                .last_event
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = clock::now();
        } else {
            self.errors[watched.slot()].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Time since the last event of any watch (since the start, before the first).
    pub(crate) fn since_last_event(&self) -> Duration {
        clock::since(
            *self
                .last_event
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// Errors `watched` met so far.
    pub(crate) fn errors(&self, watched: Watched) -> u64 {
        self.errors[watched.slot()].load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn events_reset_the_age_and_errors_count_per_watch() {
        let health = WatchHealth::default();
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(health.since_last_event(), Duration::from_secs(30));
        health.observe(Watched::Pods, false);
        health.observe(Watched::Pods, false);
        health.observe(Watched::Namespaces, false);
        assert_eq!(health.since_last_event(), Duration::from_secs(30));
        assert_eq!(health.errors(Watched::Pods), 2);
        assert_eq!(health.errors(Watched::Namespaces), 1);
        assert_eq!(health.errors(Watched::ServiceAccounts), 0);
        health.observe(Watched::ServiceAccounts, true);
        assert_eq!(health.since_last_event(), Duration::ZERO);
    }
}

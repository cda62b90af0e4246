//! Giving memory back after a burst of connections.
//!
//! Every connection the proxy serves allocates (hyper's buffers, the task: about 12 KiB
//! served, 2 KiB waiting, measured by `cargo xtask bench abuse`). glibc keeps what is freed in
//! its arenas, so after thousands of connections close the agent would stay at its peak size
//! for good, and a pod could ratchet it towards its memory limit burst by burst. So
//! [`run`] watches the number of connections held and, once it has fallen to a quarter of a
//! peak of at least [`TRIM_PEAK`], asks the allocator to return its free pages
//! (`malloc_trim(0)`, a few milliseconds, on a blocking thread).
//!
//! Other work that frees much of what it allocated asks for a trim through [`TrimRequests`]:
//! start-up (parsing the eBPF object, the configuration), and each list of the Kubernetes
//! watch (the pod list is decoded whole, then dropped). Measured with `cargo xtask bench
//! memory` (250 pods, 100 roles): the loaded agent's anonymous memory (`RssAnon`) was
//! 11.5 MB, of which 5.6 MB were such free memory the allocator held; with these trims, 5.8 MB.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use iamlet_sys::heap::release_free_memory;
use tokio::sync::watch;

/// Smallest peak of held connections worth a trim afterwards.
pub(crate) const TRIM_PEAK: usize = 256;
/// How often the count is looked at.
const TICK: Duration = Duration::from_secs(2);

/// Whether, having seen `peak` connections and holding `held` now, it is time to trim.
pub(crate) fn should_trim(peak: usize, held: usize) -> bool {
    peak >= TRIM_PEAK && held <= peak / 4
}

/// Asks [`run`] for a trim at its next tick (cheap; requests before the tick make one trim).
#[derive(Clone, Debug, Default)]
pub(crate) struct TrimRequests(Arc<AtomicBool>);

impl TrimRequests {
    /// Something just freed much of what it allocated.
    pub(crate) fn request(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether a trim was asked for since the last call.
    fn take(&self) -> bool {
        self.0.swap(false, Ordering::Relaxed)
    }
}

/// Trims after each burst of connections and when asked (see the module doc) until `stop`.
pub(crate) async fn run(
    held: Arc<AtomicUsize>,
    requests: TrimRequests,
    mut stop: watch::Receiver<bool>,
) {
    let mut peak = 0;
    loop {
        tokio::select! {
            () = tokio::time::sleep(TICK) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let now = held.load(Ordering::Relaxed);
        peak = peak.max(now);
        let requested = requests.take();
        if requested || should_trim(peak, now) {
            let released = tokio::task::spawn_blocking(release_free_memory)
                .await
                .unwrap_or(false);
            tracing::debug!(peak, now, requested, released, "returned free heap memory");
            peak = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_only_after_a_real_burst() {
        assert!(!should_trim(100, 0), "small peaks are left alone");
        assert!(!should_trim(4000, 2000), "still busy");
        assert!(should_trim(4000, 1000));
        assert!(should_trim(TRIM_PEAK, 0));
    }

    #[test]
    fn requests_coalesce_until_taken() {
        let requests = TrimRequests::default();
        assert!(!requests.take());
        requests.request();
        requests.clone().request();
        assert!(requests.take());
        assert!(!requests.take(), "one trim answers every request before it");
    }
}

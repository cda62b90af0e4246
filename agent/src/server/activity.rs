//! What one connection is doing, for the two things that watch it from outside its requests:
//! the request-head deadline and the drain.
//!
//! **The head deadline.** A client gets `header_read_timeout` to send each request's head,
//! counted from the connection's accept or from the previous answer; a client that does not
//! (slowloris, or a keep-alive connection left idle) is closed. While a request is being
//! answered the deadline does not run; once the answer is made it does, so a client that
//! does not read its answers is closed the same way. hyper has this deadline too, but it
//! allocates a timer for every request, registers it with the runtime and removes it again;
//! here each request costs two stores and a clock read, and the connection's one timer wakes
//! once per timeout at most.
//!
//! **The first request.** The drain lets a connection that has not begun its first request
//! begin it before telling it to finish (see `drain`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::clock;

/// A request is being answered (the head deadline does not run).
const BUSY: u64 = 1 << 63;
/// A request has begun at least once.
const SEEN: u64 = 1 << 62;
/// The rest: nanoseconds from the accept to the last answer (0: none yet).
const NANOS: u64 = SEEN - 1;

/// One connection's activity.
#[derive(Debug)]
pub(crate) struct ConnActivity {
    accepted: Instant,
    /// [`BUSY`] | [`SEEN`] | nanoseconds since `accepted` of the last answer. Only the
    /// connection's requests write it (one at a time); the watchers read it.
    state: AtomicU64,
    first: Notify,
}

impl ConnActivity {
    /// A connection accepted now.
    pub(crate) fn new() -> Self {
        ConnActivity {
            accepted: clock::now(),
            state: AtomicU64::new(0),
            first: Notify::new(),
        }
    }

    /// A request's head has been read: its answer begins.
    pub(crate) fn request_began(&self) {
        let state = self.state.load(Ordering::Relaxed);
        self.state.store(state | BUSY | SEEN, Ordering::Release);
        if state & SEEN == 0 {
            self.first.notify_one();
        }
    }

    /// The request's answer is made: the deadline for the next head runs from now.
    pub(crate) fn request_answered(&self) {
        let since = clock::since(self.accepted);
        let nanos = u64::try_from(since.as_nanos()).unwrap_or(NANOS).min(NANOS);
        self.state.store(SEEN | nanos, Ordering::Release);
    }

    /// Whether a request has begun on this connection.
    pub(crate) fn seen(&self) -> bool {
        self.state.load(Ordering::Acquire) & SEEN != 0
    }

    /// Resolves once the first request begins.
    pub(crate) async fn first_request(&self) {
        // `notify_one` stores a permit, so a request that began before this waits is seen.
        if !self.seen() {
            self.first.notified().await;
        }
    }

    /// Resolves when the client has had `timeout` to send a request's head and has not:
    /// `timeout` after the accept or the last answer, with no request being answered.
    pub(crate) async fn head_timed_out(&self, timeout: Duration) {
        loop {
            let now = clock::now();
            let state = self.state.load(Ordering::Acquire);
            let deadline = if state & BUSY != 0 {
                // Looked at again once a timeout from now: the answer will be made by then.
                now + timeout
            } else {
                self.accepted + Duration::from_nanos(state & NANOS) + timeout
            };
            if deadline <= now {
                return;
            }
            tokio::time::sleep_until(deadline.into()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(10);
    /// Just short of the timeout.
    const ALMOST: Duration = Duration::from_millis(9_999);

    /// Whether `head_timed_out` has resolved once `elapsed` has passed (paused time).
    async fn timed_out_after(activity: &ConnActivity, elapsed: Duration) -> bool {
        tokio::time::timeout(elapsed, activity.head_timed_out(TIMEOUT))
            .await
            .is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_sends_nothing_times_out_after_the_timeout() {
        let activity = ConnActivity::new();
        assert!(!timed_out_after(&activity, ALMOST).await);
        // The deadline is counted from the accept, not from when it is looked at.
        assert!(timed_out_after(&activity, Duration::from_millis(2)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_runs_from_the_last_answer_and_not_while_answering() {
        let activity = ConnActivity::new();
        tokio::time::sleep(Duration::from_secs(9)).await;
        activity.request_began();
        // A slow answer (waiting for STS, say) is not a slow client.
        assert!(!timed_out_after(&activity, Duration::from_secs(25)).await);
        activity.request_answered();
        assert!(!timed_out_after(&activity, ALMOST).await);
        assert!(timed_out_after(&activity, Duration::from_millis(2)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_request_is_noticed_once_and_whenever_it_is_waited_for() {
        let activity = ConnActivity::new();
        assert!(!activity.seen());
        let early = tokio::time::timeout(Duration::from_secs(1), activity.first_request());
        assert!(early.await.is_err(), "no request yet");
        activity.request_began();
        activity.request_answered();
        activity.request_began();
        assert!(activity.seen());
        tokio::time::timeout(Duration::from_secs(1), activity.first_request())
            .await
            .expect("the first request has begun");
    }
}

//! Busy polling on the proxy's threads (`--proxy-busy-poll`): for a short window after a
//! response goes out, a thread keeps checking its sockets (`epoll_wait` that does not block)
//! instead of going to sleep in `epoll_wait` until the next request.
//!
//! Why: an SDK or a busy client sends its next request some microseconds after the answer.
//! A thread that sleeps through that gap pays a trip through the scheduler to sleep and
//! another to wake (7 to 9 µs of CPU each in `bench imds`), and its wake-up may wait for a
//! CPU. Spinning through the gap costs the gap. After a quiet window the thread sleeps as
//! before: an idle node pays nothing, and a node serving a request now and then pays at most
//! the window per response.
//!
//! Spinning only pays on a CPU nobody else wants. Between polls the thread offers its CPU
//! (`sched_yield`); if that hands the CPU to another thread (the yield took long), the CPU is
//! contended: the thread stops spinning and, for [`HOLD_OFF`], sleeps between requests as it
//! would without busy polling. So pods and the load's own client keep their CPU time.
//!
//! Off unless asked for: on a vCPU that shares its host CPU with other guests (an
//! oversubscribed host, an emulated VM) or that is metered (burstable instances), the spin
//! is paid for even when this guest has nothing else to run.
//!
//! How: [`start`] spawns a task on each proxy thread's current-thread runtime. While the
//! thread's last response is recent it yields, and a yielding task makes the runtime poll its
//! reactor without blocking before it runs the task again. Otherwise it waits, without a
//! timer, for [`responded`] to wake it.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// A `sched_yield` that took longer than this gave the CPU to another thread.
const GAVE_AWAY: Duration = Duration::from_micros(20);

/// How long a thread that found its CPU contended sleeps between requests before it spins
/// again.
const HOLD_OFF: Duration = Duration::from_millis(10);

/// This thread's last response and its spinner, if waiting for one.
struct ThreadState {
    /// Whether a spinner runs on this thread (else there is nothing to note).
    spinner: Cell<bool>,
    last_response: Cell<Option<Instant>>,
    waiting: RefCell<Option<Waker>>,
}

thread_local! {
    static STATE: ThreadState = const {
        ThreadState {
            spinner: Cell::new(false),
            last_response: Cell::new(None),
            waiting: RefCell::new(None),
        }
    };
}

/// Notes that a response is going out on this thread: a clock read, and a wake-up for the
/// spinner if it waits. On threads without a spinner (busy polling off, the admin server)
/// it reads one flag and returns.
pub(crate) fn responded() {
    STATE.with(|state| {
        if !state.spinner.get() {
            return;
        }
        state.last_response.set(Some(Instant::now()));
        if let Some(waker) = state.waiting.borrow_mut().take() {
            waker.wake();
        }
    });
}

/// Whether this thread answered within `window`.
fn recent(window: Duration) -> bool {
    STATE.with(|state| {
        state
            .last_response
            .get()
            .is_some_and(|at| at.elapsed() < window)
    })
}

/// Waits until this thread answers (at once if it did within `window`).
async fn response_within(window: Duration) {
    poll_fn(|cx| {
        if recent(window) {
            return Poll::Ready(());
        }
        STATE.with(|state| *state.waiting.borrow_mut() = Some(cx.waker().clone()));
        Poll::Pending
    })
    .await;
}

/// Keeps this thread polling for `window` after each response (see the module doc), from
/// now on: call it on a current-thread runtime's thread, inside the runtime. The spinner
/// ends with the runtime.
pub(crate) fn start(window: Duration) {
    STATE.with(|state| state.spinner.set(true));
    tokio::spawn(spin_with(window, HOLD_OFF, std::thread::yield_now));
}

/// The spinner [`start`] spawns, offering the CPU with `give_way` and holding off for
/// `hold_off`.
async fn spin_with(window: Duration, hold_off: Duration, mut give_way: impl FnMut()) {
    loop {
        response_within(window).await;
        while recent(window) {
            let offered = Instant::now();
            give_way();
            if offered.elapsed() > GAVE_AWAY {
                tokio::time::sleep(hold_off).await;
                break;
            }
            tokio::task::yield_now().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    fn spinner_waits() -> bool {
        STATE.with(|state| state.waiting.borrow().is_some())
    }

    /// Lets the runtime run the spinner `n` times.
    async fn yields(n: usize) {
        for _ in 0..n {
            tokio::task::yield_now().await;
        }
    }

    /// Spawns a spinner on this (current-thread) runtime whose every offer of the CPU is
    /// taken by someone else for `taken`; returns the count of its offers.
    fn counted_spinner(window: Duration, hold_off: Duration, taken: Duration) -> Arc<AtomicU32> {
        let offers = Arc::new(AtomicU32::new(0));
        let counted = offers.clone();
        STATE.with(|state| state.spinner.set(true));
        tokio::spawn(spin_with(window, hold_off, move || {
            counted.fetch_add(1, Ordering::Relaxed);
            if !taken.is_zero() {
                std::thread::sleep(taken);
            }
        }));
        offers
    }

    #[test]
    fn a_response_is_noted_only_with_a_spinner_and_recent_for_the_window_only() {
        responded();
        assert!(
            !recent(Duration::from_secs(60)),
            "no spinner: nothing noted"
        );
        STATE.with(|state| state.spinner.set(true));
        responded();
        assert!(recent(Duration::from_secs(60)));
        std::thread::sleep(Duration::from_millis(5));
        assert!(!recent(Duration::from_millis(1)));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_spinner_sleeps_until_a_response_then_spins_for_the_window() {
        let offers = counted_spinner(Duration::from_millis(20), HOLD_OFF, Duration::ZERO);
        let offers = || offers.load(Ordering::Relaxed);
        yields(2).await;
        assert!(spinner_waits(), "asleep until a response");
        assert_eq!(offers(), 0);
        responded();
        assert!(!spinner_waits(), "woken by the response");
        yields(10).await;
        assert!(offers() >= 2, "spinning: {}", offers());
        // While it spins, other tasks still run and timers still fire.
        tokio::time::sleep(Duration::from_millis(2)).await;
        // After the window it waits again, and stops offering the CPU.
        tokio::time::sleep(Duration::from_millis(30)).await;
        yields(2).await;
        assert!(spinner_waits(), "asleep after the window");
        let settled = offers();
        yields(10).await;
        assert_eq!(offers(), settled);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_contended_cpu_stops_the_spinning_for_the_hold_off() {
        let offers = counted_spinner(
            Duration::from_secs(60),
            Duration::from_millis(200),
            Duration::from_millis(1),
        );
        let offers = || offers.load(Ordering::Relaxed);
        responded();
        yields(10).await;
        assert_eq!(offers(), 1, "one offer, then it holds off");
        responded();
        yields(10).await;
        assert_eq!(offers(), 1, "still holding off, responses or not");
        // After the hold-off it spins again.
        tokio::time::sleep(Duration::from_millis(250)).await;
        yields(10).await;
        assert_eq!(offers(), 2, "one more offer after the hold-off");
    }
}

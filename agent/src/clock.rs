//! Time, read in one place, so that tests can control it.
//!
//! The monotonic clock is tokio's: in production it is the system's monotonic clock, and a
//! test that pauses tokio's clock (`#[tokio::test(start_paused = true)]`) moves it only by
//! sleeping, exactly, with no real time passing. Timers (`tokio::time::sleep`, `timeout`)
//! follow the same clock.
//!
//! The wall clock (credential expiry is an absolute UTC time) is the system's in production.
//! In unit tests it follows the monotonic clock from a fixed start, so that expiry, refresh at
//! half-life and back-off are exact under paused time too.

use std::time::{Instant, SystemTime};

/// Now, on the monotonic clock (tokio's; paused in tests that pause it).
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Time since `earlier` on the monotonic clock (zero if `earlier` is later).
pub(crate) fn since(earlier: Instant) -> std::time::Duration {
    now().saturating_duration_since(earlier)
}

/// Now, on the wall clock.
#[cfg(not(test))]
pub(crate) fn wall() -> SystemTime {
    SystemTime::now()
}

/// Now, on the wall clock: in unit tests a fixed start plus the monotonic time since, so that
/// it moves with paused time.
#[cfg(test)]
pub(crate) fn wall() -> SystemTime {
    use std::sync::OnceLock;
    static START: OnceLock<(Instant, SystemTime)> = OnceLock::new();
    let (mono, wall) = *START.get_or_init(|| (now(), SystemTime::now()));
    wall + now().saturating_duration_since(mono)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn both_clocks_move_with_paused_time_and_only_with_it() {
        let (t0, w0) = (super::now(), super::wall());
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(super::since(t0), Duration::from_secs(3600));
        assert_eq!(
            super::wall().duration_since(w0).expect("forward"),
            Duration::from_secs(3600)
        );
    }
}

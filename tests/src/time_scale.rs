//! One factor for every time limit of the tests and their fixtures.
//!
//! `IAMLET_TEST_TIME_SCALE` (a whole number, default 1) multiplies each deadline, timeout and
//! `--…-timeout` flag the harness sets. `cargo xtask vm-test` sets it because a guest kernel
//! under emulation (qemu TCG) runs several times slower than this machine; on the host it is
//! never set, so no limit is loosened there.

use std::sync::OnceLock;
use std::time::Duration;

/// The environment variable read once per process.
pub const TIME_SCALE_ENV: &str = "IAMLET_TEST_TIME_SCALE";

/// The factor: `IAMLET_TEST_TIME_SCALE` if it is a whole number from 1 to 100, else 1.
pub fn time_scale() -> u32 {
    static SCALE: OnceLock<u32> = OnceLock::new();
    *SCALE.get_or_init(|| {
        std::env::var(TIME_SCALE_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<u32>().ok())
            .filter(|s| (1..=100).contains(s))
            .unwrap_or(1)
    })
}

/// `d` times the factor.
pub fn scaled(d: Duration) -> Duration {
    d * time_scale()
}

//! Range checks of the numeric flags, and the duration syntax flags use.

use std::time::Duration;

use super::{Args, Error};

/// Bounds of the numeric flags: a value outside them is refused at start (exit 64).
pub(crate) mod bounds {
    use std::time::Duration;

    /// `--max-connections`.
    pub(crate) const MAX_CONNECTIONS: usize = 65_536;
    /// `--rate-limit` (requests per second per pod).
    pub(crate) const RATE_LIMIT: f64 = 1_000_000.0;
    /// `--rate-burst`.
    pub(crate) const RATE_BURST: f64 = 1_000_000.0;
    /// `--sts-concurrency`.
    pub(crate) const STS_CONCURRENCY: usize = 1024;
    /// `--sts-max-attempts`.
    pub(crate) const STS_MAX_ATTEMPTS: u32 = 10;
    /// `--credentials-timeout`, `--upstream-timeout`, `--sts-attempt-timeout`.
    pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
    /// `--header-timeout`.
    pub(crate) const HEADER_TIMEOUT: Duration = Duration::from_secs(300);
    /// `--shutdown-grace`.
    pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(600);
    /// `--sts-backoff-max`.
    pub(crate) const STS_BACKOFF_MAX: Duration = Duration::from_secs(3600);
    /// `--unused-grace`.
    pub(crate) const UNUSED_GRACE: Duration = Duration::from_secs(7 * 24 * 3600);
    /// `--proxy-threads`.
    pub(crate) const PROXY_THREADS: usize = 64;
    /// `--proxy-busy-poll`: a longer window burns more CPU per request than it saves.
    pub(crate) const PROXY_BUSY_POLL: Duration = Duration::from_millis(1);
    /// `--pod-wait`.
    pub(crate) const POD_WAIT: Duration = Duration::from_secs(30);
}

/// `Err(Error::Limit)` unless `low <= value <= high`.
fn within<T: PartialOrd + Copy + std::fmt::Debug>(
    flag: &'static str,
    value: T,
    low: T,
    high: T,
) -> Result<(), Error> {
    // `!(a <= b)` rather than `a > b` so that NaN is refused too.
    #[allow(clippy::neg_cmp_op_on_partial_ord)]
    let outside = !(low <= value) || !(value <= high);
    if outside {
        return Err(Error::Limit {
            flag,
            value: format!("{value:?}"),
            reason: format!("must be between {low:?} and {high:?}"),
        });
    }
    Ok(())
}

impl Args {
    pub(super) fn check_limits(&self) -> Result<(), Error> {
        let ms = Duration::from_millis;
        within("rate-limit", self.rate_limit, 0.0, bounds::RATE_LIMIT)?;
        within("rate-burst", self.rate_burst, 1.0, bounds::RATE_BURST)?;
        within(
            "max-connections",
            self.max_connections,
            1,
            bounds::MAX_CONNECTIONS,
        )?;
        within(
            "max-connections-per-pod",
            self.max_connections_per_pod,
            1,
            self.max_connections.min(bounds::MAX_CONNECTIONS),
        )?;
        within(
            "max-waiting-per-pod",
            self.max_waiting_per_pod,
            0,
            self.max_connections.min(bounds::MAX_CONNECTIONS),
        )?;
        within(
            "proxy-threads",
            self.proxy_threads,
            0,
            bounds::PROXY_THREADS,
        )?;
        within(
            "proxy-busy-poll",
            self.proxy_busy_poll,
            Duration::ZERO,
            bounds::PROXY_BUSY_POLL,
        )?;
        within(
            "credentials-timeout",
            self.credentials_timeout,
            ms(1),
            bounds::REQUEST_TIMEOUT,
        )?;
        within(
            "upstream-timeout",
            self.upstream_timeout,
            ms(1),
            bounds::REQUEST_TIMEOUT,
        )?;
        within(
            "header-timeout",
            self.header_timeout,
            ms(1),
            bounds::HEADER_TIMEOUT,
        )?;
        within(
            "shutdown-grace",
            self.shutdown_grace,
            Duration::ZERO,
            bounds::SHUTDOWN_GRACE,
        )?;
        // AWS STS takes 15m..12h. A custom --sts-endpoint (an STS-compatible test server) may
        // use shorter sessions, down to 10 s.
        let min = if self.sts_endpoint.is_some() { 10 } else { 900 };
        within(
            "session-duration",
            self.session_duration,
            Duration::from_secs(min),
            Duration::from_secs(43_200),
        )?;
        within("refresh-fraction", self.refresh_fraction, 0.1, 0.9)?;
        within(
            "sts-concurrency",
            self.sts_concurrency,
            1,
            bounds::STS_CONCURRENCY,
        )?;
        within(
            "sts-max-attempts",
            self.sts_max_attempts,
            1,
            bounds::STS_MAX_ATTEMPTS,
        )?;
        within(
            "sts-backoff-max",
            self.sts_backoff_max,
            ms(100),
            bounds::STS_BACKOFF_MAX,
        )?;
        within(
            "sts-attempt-timeout",
            self.sts_attempt_timeout,
            ms(1),
            bounds::REQUEST_TIMEOUT,
        )?;
        within(
            "unused-grace",
            self.unused_grace,
            Duration::from_secs(1),
            bounds::UNUSED_GRACE,
        )?;
        within("pod-wait", self.pod_wait, Duration::ZERO, bounds::POD_WAIT)?;
        Ok(())
    }
}

/// Parses `500ms`, `5s`, `2m` or a bare number of seconds.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 5s or 2m"))?;
    let secs = match unit {
        "us" | "µs" => value / 1e6,
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?} (use us, ms, s, m or h)"
            ))
        }
    };
    if !secs.is_finite() || !(0.0..=86_400.0 * 365.0).contains(&secs) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

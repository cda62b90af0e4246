//! Range checks of the numeric flags, and the duration syntax flags use.

use std::time::Duration;

use super::{Args, Error};

impl Args {
    pub(super) fn check_limits(&self) -> Result<(), Error> {
        let bad = |flag: &'static str, value: String, reason: &'static str| {
            Err(Error::Limit {
                flag,
                value,
                reason,
            })
        };
        if !self.rate_limit.is_finite() || self.rate_limit < 0.0 {
            return bad(
                "rate-limit",
                self.rate_limit.to_string(),
                "must be 0 or more",
            );
        }
        if !self.rate_burst.is_finite() || self.rate_burst < 1.0 {
            return bad(
                "rate-burst",
                self.rate_burst.to_string(),
                "must be 1 or more",
            );
        }
        if self.max_connections == 0 {
            return bad("max-connections", "0".into(), "must be at least 1");
        }
        if self.credentials_timeout.is_zero() {
            return bad("credentials-timeout", "0s".into(), "must be positive");
        }
        if self.header_timeout.is_zero() {
            return bad("header-timeout", "0s".into(), "must be positive");
        }
        let secs = self.session_duration.as_secs();
        // AWS STS takes 15m..12h. A custom --sts-endpoint (an STS-compatible test server) may
        // use shorter sessions, down to 10 s.
        let min = if self.sts_endpoint.is_some() { 10 } else { 900 };
        if !(min..=43_200).contains(&secs) {
            return bad(
                "session-duration",
                format!("{secs}s"),
                "must be between 15m and 12h (STS limits)",
            );
        }
        if !(0.1..=0.9).contains(&self.refresh_fraction) {
            return bad(
                "refresh-fraction",
                self.refresh_fraction.to_string(),
                "must be between 0.1 and 0.9",
            );
        }
        if self.sts_concurrency == 0 || self.sts_max_attempts == 0 {
            return bad(
                "sts-concurrency/--sts-max-attempts",
                "0".into(),
                "must be at least 1",
            );
        }
        if self.sts_backoff_max < Duration::from_millis(100) {
            return bad(
                "sts-backoff-max",
                format!("{:?}", self.sts_backoff_max),
                "must be at least 100ms",
            );
        }
        if self.sts_attempt_timeout.is_zero() {
            return bad("sts-attempt-timeout", "0s".into(), "must be positive");
        }
        Ok(())
    }
}

/// Parses `500ms`, `5s`, `2m` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 5s or 2m"))?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    };
    if !secs.is_finite() || !(0.0..=86_400.0 * 365.0).contains(&secs) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

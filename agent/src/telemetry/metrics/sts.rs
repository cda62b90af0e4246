//! The credentials cache's metrics: its AssumeRole calls (a latency histogram and failures by
//! AWS error code, recorded as they happen), and, read on each scrape, its counters, its
//! entries and the least time left on the credentials it holds.

use std::time::Duration;

use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

use super::encode_gauge;
use super::labels::FailureLabels;
use crate::credentials::sts_cache::StsCache;

/// Upper bounds (seconds) of the AssumeRole latency buckets: a regional endpoint answers in
/// tens of milliseconds; seconds mean retries, throttling or an endpoint far away.
const ASSUME_ROLE_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// What the STS cache records about its AssumeRole calls (cheap to clone: shared handles).
#[derive(Clone, Debug)]
pub(crate) struct AssumeRoleMetrics {
    /// Call latency, successes and failures alike.
    pub(super) duration: Histogram,
    /// Failed calls by AWS error code.
    pub(super) failures: Family<FailureLabels, Counter>,
}

impl Default for AssumeRoleMetrics {
    fn default() -> Self {
        AssumeRoleMetrics {
            duration: Histogram::new(ASSUME_ROLE_BUCKETS),
            failures: Family::default(),
        }
    }
}

impl AssumeRoleMetrics {
    /// Records one call that took `elapsed` and failed with `error_code`, if it failed.
    pub(crate) fn observe(&self, elapsed: Duration, error_code: Option<&str>) {
        self.duration.observe(elapsed.as_secs_f64());
        if let Some(code) = error_code {
            self.failures.get_or_create(&FailureLabels::of(code)).inc();
        }
    }
}

/// Reads the STS cache's counters and state on each scrape.
#[derive(Debug)]
pub(super) struct StsCacheCollector {
    pub(super) sts_cache: StsCache,
}

impl prometheus_client::collector::Collector for StsCacheCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use std::sync::atomic::Ordering::Relaxed;
        let s = self.sts_cache.stats();
        for (name, help, value) in [
            (
                "sts_calls",
                "AssumeRole calls made",
                s.sts_calls.load(Relaxed),
            ),
            (
                "sts_failures",
                "AssumeRole calls that failed",
                s.sts_failures.load(Relaxed),
            ),
            (
                "credentials_hits",
                "Credential requests served from the cache",
                s.hits.load(Relaxed),
            ),
            (
                "credentials_misses",
                "Credential requests that had to wait for STS or failed",
                s.misses.load(Relaxed),
            ),
        ] {
            let metric = encoder.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            prometheus_client::encoding::EncodeMetric::encode(&ConstCounter::new(value), metric)?;
        }
        encode_gauge(
            &mut encoder,
            "credentials_cache_entries",
            "Role sessions in the credentials cache",
            None,
            i64::try_from(self.sts_cache.entries()).unwrap_or(i64::MAX),
        )?;
        // Only when there are credentials: no sample rather than a made-up one.
        if let Some(left) = self.sts_cache.least_time_left(crate::clock::wall()) {
            encode_gauge(
                &mut encoder,
                "credentials_min_time_to_expiry",
                "Least time left before expiry among the credentials the cache holds and serves",
                Some(&prometheus_client::registry::Unit::Seconds),
                left.as_secs_f64(),
            )?;
        }
        Ok(())
    }
}

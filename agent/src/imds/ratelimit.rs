//! Per-caller request rate limit (token bucket), so one pod cannot starve the others.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Instant;

/// Buckets kept before idle (full) ones are dropped.
const MAX_IDLE_BUCKETS: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// A token bucket per key: `rate` requests per second on average, bursts of `burst`.
#[derive(Debug)]
pub(crate) struct RateLimiter<K> {
    rate: f64,
    burst: f64,
    /// Keyed by pods (UIDs or cgroup ids), which no pod chooses: a fast hash (seeded per
    /// process) is enough.
    buckets: Mutex<HashMap<K, Bucket, foldhash::fast::RandomState>>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// A limiter; `rate` <= 0 disables limiting.
    pub(crate) fn new(rate: f64, burst: f64) -> Self {
        RateLimiter {
            rate,
            burst: burst.max(1.0),
            buckets: Mutex::new(HashMap::default()),
        }
    }

    /// Takes one token for `key`; false if the caller is over its limit.
    pub(crate) fn allow(&self, key: &K, now: Instant) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // A known caller (every request but its first) costs no allocation.
        if let Some(bucket) = buckets.get_mut(key) {
            return self.take(bucket, now);
        }
        if buckets.len() > MAX_IDLE_BUCKETS {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * rate < burst
            });
        }
        let bucket = buckets.entry(key.clone()).or_insert(Bucket {
            tokens: self.burst,
            last: now,
        });
        self.take(bucket, now)
    }

    /// Refills `bucket` up to `now` and takes one token from it if it has one.
    fn take(&self, bucket: &mut Bucket, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bursts_then_refills_per_key() {
        let l = RateLimiter::new(10.0, 5.0);
        let t0 = Instant::now();
        for _ in 0..5 {
            assert!(l.allow(&"a", t0));
        }
        assert!(!l.allow(&"a", t0));
        // Another caller is unaffected.
        assert!(l.allow(&"b", t0));
        // 100 ms at 10/s gives one more.
        assert!(l.allow(&"a", t0 + Duration::from_millis(100)));
        assert!(!l.allow(&"a", t0 + Duration::from_millis(100)));
    }

    #[test]
    fn zero_rate_disables() {
        let l = RateLimiter::new(0.0, 1.0);
        let t0 = Instant::now();
        for _ in 0..1000 {
            assert!(l.allow(&1u64, t0));
        }
    }
}

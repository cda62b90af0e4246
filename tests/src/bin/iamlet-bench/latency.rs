//! wrk's latency histogram of a run, and the percentiles of several runs taken together.
//!
//! The median of the rounds' p99s keeps one round's tail and drops the others': with shared
//! CPUs a round's p99 is one or two of the scheduler's slices or none, and the median lands
//! on either. The p99 of every request of every round weighs each request once: it is the
//! one a client saw over the whole run.

use anyhow::{Context, Result};

/// The line of wrk's output that carries a run's latencies, as `µs:count` pairs (written by
/// [`crate::wrk::LATENCY_HOOK`]).
pub(crate) const HISTOGRAM_LINE: &str = "iamlet-bench-latency-histogram";

/// Latencies in µs and how many requests took each, ascending, each latency once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Histogram {
    buckets: Vec<(u64, u64)>,
}

impl Histogram {
    /// The `µs:count` pairs of a [`HISTOGRAM_LINE`], after its first word.
    pub(crate) fn parse<'a>(pairs: impl IntoIterator<Item = &'a str>) -> Result<Histogram> {
        let mut buckets = Vec::new();
        for pair in pairs {
            let (us, count) = pair
                .split_once(':')
                .with_context(|| format!("latency bucket {pair:?}: want µs:count"))?;
            let number = |v: &str| {
                v.parse::<u64>()
                    .with_context(|| format!("latency bucket {pair:?}: {v:?} is not a number"))
            };
            buckets.push((number(us)?, number(count)?));
        }
        Ok(Histogram::from_buckets(buckets))
    }

    fn from_buckets(mut buckets: Vec<(u64, u64)>) -> Histogram {
        buckets.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(buckets.len());
        for (us, count) in buckets {
            match merged.last_mut() {
                Some(last) if last.0 == us => last.1 += count,
                _ if count > 0 => merged.push((us, count)),
                _ => {}
            }
        }
        Histogram { buckets: merged }
    }

    /// Every request of `runs` in one histogram.
    pub(crate) fn merge<'a>(runs: impl IntoIterator<Item = &'a Histogram>) -> Histogram {
        Histogram::from_buckets(
            runs.into_iter()
                .flat_map(|h| h.buckets.iter().copied())
                .collect(),
        )
    }

    /// Requests counted.
    pub(crate) fn count(&self) -> u64 {
        self.buckets.iter().map(|&(_, n)| n).sum()
    }

    /// The latency in µs at or below which `p` percent of the requests were, by wrk's rule
    /// (the request of rank `round(p / 100 × count + 0.5)`); `None` with no requests.
    pub(crate) fn percentile(&self, p: f64) -> Option<u64> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "a rank between 1 and the count, which is far below 2^52"
        )]
        let rank = ((p / 100.0 * count as f64 + 0.5).round() as u64).clamp(1, count);
        let mut seen = 0;
        self.buckets.iter().find_map(|&(us, n)| {
            seen += n;
            (seen >= rank).then_some(us)
        })
    }

    /// The slowest request, in µs.
    pub(crate) fn max(&self) -> Option<u64> {
        self.buckets.last().map(|&(us, _)| us)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(line: &str) -> Histogram {
        Histogram::parse(line.split_whitespace()).unwrap()
    }

    #[test]
    fn percentiles_follow_wrks_rank() {
        // 100 requests: 98 at 10 µs, one at 500, one at 3000.
        let h = histogram("10:98 500:1 3000:1");
        assert_eq!(h.count(), 100);
        assert_eq!(h.percentile(50.0), Some(10));
        // Rank round(99 + 0.5) = 100 (wrk rounds half away from zero): the slowest.
        assert_eq!(h.percentile(99.0), Some(3000));
        assert_eq!(h.percentile(98.0), Some(500));
        assert_eq!(h.max(), Some(3000));
        assert_eq!(Histogram::default().percentile(99.0), None);
    }

    #[test]
    fn rounds_taken_together_weigh_each_request_once() {
        // A quiet round and a round with a slice's wait in its last 2 %: the median of
        // their p99s would be either; every request together puts the p99 in the wait.
        let quiet = histogram("100:990 200:10");
        let slow = histogram("100:980 2000:20");
        let all = Histogram::merge([&quiet, &slow]);
        assert_eq!(all.count(), 2000);
        assert_eq!(all.percentile(99.0), Some(2000));
        assert_eq!(all.percentile(98.5), Some(200));
        assert_eq!(all.percentile(98.0), Some(100));
        assert_eq!(all, histogram("2000:20 100:1970 200:10"), "sorted, merged");
    }

    #[test]
    fn bad_buckets_are_refused_by_name() {
        let err = Histogram::parse(["10:3", "12"]).unwrap_err().to_string();
        assert!(err.contains("\"12\"") && err.contains("µs:count"), "{err}");
        let err = Histogram::parse(["x:3"]).unwrap_err().to_string();
        assert!(err.contains("\"x\" is not a number"), "{err}");
        assert_eq!(
            histogram("5:0 7:1").percentile(1.0),
            Some(7),
            "empty buckets dropped"
        );
    }
}

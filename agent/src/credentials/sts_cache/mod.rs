//! The STS credentials cache: a moka cache of role sessions in front of STS.
//!
//! * **Single-flight**: concurrent misses for one binding (role ARN, session name, external id,
//!   tags: the cache key) share one AssumeRole call.
//! * **Prefetch**: [`StsCache::register`] (a pod bound to a role appeared) starts the call before
//!   the pod asks, with at most `max_concurrency` calls at once.
//! * **Refresh-ahead**: once less than `refresh_fraction` of a session's lifetime is left, a
//!   background refresh starts while the old credentials keep being served.
//! * **Faults**: when STS fails, credentials that are still valid keep being served and the call
//!   is retried with exponential backoff and jitter; a request that finds nothing valid gets
//!   the last error at once while the backoff runs, so it never waits on a known-bad STS.
//! * **Eviction**: an entry no registered pod uses and nobody asked for during `grace` is
//!   dropped.
//! * **Where calls run**: on the runtime the cache was made on (the agent's main runtime), also
//!   when a request on one of the proxy's threads starts one: that thread only waits for the
//!   result, it never does a TLS handshake or parses an STS answer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use futures_util::future::{FutureExt, Shared};
use tokio::sync::{watch, Semaphore};

use crate::clock;
use crate::credentials::sts_client::Assumer;
use crate::credentials::{CredentialError, CredentialSource, Credentials};
use crate::role::{BoxFuture, RoleBinding};
use crate::telemetry::metrics::AssumeRoleMetrics;

/// Tuning of the STS cache.
#[derive(Clone, Debug)]
pub(crate) struct StsCacheSettings {
    /// Refresh once less than this fraction of a session's lifetime is left (0.5: at half).
    pub refresh_fraction: f64,
    /// Never serve credentials with less than this left; fetch new ones instead.
    pub min_remaining: Duration,
    /// Drop entries unused (no registered pod, no request) for this long.
    pub grace: Duration,
    /// AssumeRole calls in flight at once.
    pub max_concurrency: usize,
    /// Most entries kept.
    pub max_entries: u64,
    /// First retry delay after a failure; doubles per failure.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// How often the background sweep looks for refreshes, retries and evictions.
    pub tick: Duration,
    /// Fetch as soon as a pod is registered (off: `--no-prefetch`, only when a pod asks;
    /// credentials once fetched are still refreshed ahead).
    pub prefetch: bool,
}

impl Default for StsCacheSettings {
    fn default() -> Self {
        StsCacheSettings {
            refresh_fraction: 0.5,
            min_remaining: Duration::from_secs(5 * 60),
            grace: Duration::from_secs(15 * 60),
            max_concurrency: 8,
            max_entries: 50_000,
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            tick: Duration::from_secs(1),
            prefetch: true,
        }
    }
}

type FetchResult = Result<Arc<Credentials>, CredentialError>;
type Fetch = Shared<BoxFuture<'static, FetchResult>>;

struct Slot {
    binding: RoleBinding,
    state: Mutex<SlotState>,
}

struct SlotState {
    current: Option<Arc<Credentials>>,
    inflight: Option<Fetch>,
    last_error: Option<CredentialError>,
    failures: u32,
    next_attempt: Instant,
    users: usize,
    last_used: Instant,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What [`StsCache::peek`] found.
#[derive(Clone, Debug, Default)]
pub(crate) struct Peek {
    /// The credentials the next request gets, if any.
    pub current: Option<Arc<Credentials>>,
    /// The AWS error code of the latest failed call, while it has not succeeded since.
    pub last_error: Option<String>,
}

/// Counters for metrics and tests.
#[derive(Debug, Default)]
pub(crate) struct StsCacheStats {
    /// AssumeRole calls made.
    pub sts_calls: AtomicU64,
    /// AssumeRole calls that failed.
    pub sts_failures: AtomicU64,
    /// Requests served from the cache without waiting.
    pub hits: AtomicU64,
    /// Requests that had to wait for a call (or failed fast).
    pub misses: AtomicU64,
    /// AssumeRole latency and failures by code.
    pub assume_role: AssumeRoleMetrics,
}

struct Inner {
    assumer: Arc<dyn Assumer>,
    cache: moka::sync::Cache<RoleBinding, Arc<Slot>, foldhash::fast::RandomState>,
    settings: StsCacheSettings,
    permits: Semaphore,
    stats: StsCacheStats,
    /// Where AssumeRole calls run (`None` outside a runtime: wherever they start).
    runtime: Option<tokio::runtime::Handle>,
}

/// The STS cache (cheap to clone).
#[derive(Clone)]
pub(crate) struct StsCache {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for StsCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StsCache")
            .field("entries", &self.inner.cache.entry_count())
            .field("settings", &self.inner.settings)
            .finish()
    }
}

fn remaining(c: &Credentials, now: SystemTime) -> Duration {
    c.expiration.duration_since(now).unwrap_or(Duration::ZERO)
}

impl StsCache {
    /// An STS cache calling `assumer`.
    pub(crate) fn new(assumer: Arc<dyn Assumer>, settings: StsCacheSettings) -> Self {
        let cache = moka::sync::Cache::builder()
            .max_capacity(settings.max_entries)
            // Looked up on every request, by a binding of several strings: foldhash (seeded
            // per process) hashes it in a fraction of SipHash's time.
            .build_with_hasher(foldhash::fast::RandomState::default());
        let permits = Semaphore::new(settings.max_concurrency.max(1));
        StsCache {
            inner: Arc::new(Inner {
                assumer,
                cache,
                settings,
                permits,
                stats: StsCacheStats::default(),
                runtime: tokio::runtime::Handle::try_current().ok(),
            }),
        }
    }

    /// The least time left among the credentials the cache holds (`None`: it holds none).
    pub(crate) fn least_time_left(&self, now: SystemTime) -> Option<Duration> {
        self.inner
            .cache
            .iter()
            .filter_map(|(_, slot)| slot.lock().current.as_ref().map(|c| remaining(c, now)))
            .min()
    }

    /// What the cache holds for `binding` now, without fetching anything (`iamlet inspect`).
    pub(crate) fn peek(&self, binding: &RoleBinding) -> Peek {
        match self.inner.cache.get(binding) {
            Some(slot) => {
                let st = slot.lock();
                Peek {
                    current: st.current.clone(),
                    last_error: st.last_error.as_ref().map(|e| e.code.clone()),
                }
            }
            None => Peek::default(),
        }
    }

    /// Counters.
    pub(crate) fn stats(&self) -> &StsCacheStats {
        &self.inner.stats
    }

    /// Number of cached bindings.
    pub(crate) fn entries(&self) -> u64 {
        self.inner.cache.run_pending_tasks();
        self.inner.cache.entry_count()
    }

    fn slot(&self, binding: &RoleBinding) -> Arc<Slot> {
        // The common case, a hit, borrows the key instead of cloning it.
        if let Some(slot) = self.inner.cache.get(binding) {
            return slot;
        }
        let now = clock::now();
        self.inner.cache.get_with(binding.clone(), || {
            Arc::new(Slot {
                binding: binding.clone(),
                state: Mutex::new(SlotState {
                    current: None,
                    inflight: None,
                    last_error: None,
                    failures: 0,
                    next_attempt: now,
                    users: 0,
                    last_used: now,
                }),
            })
        })
    }

    fn due_for_refresh(&self, c: &Credentials, now: SystemTime) -> bool {
        let lifetime = c
            .expiration
            .duration_since(c.last_updated)
            .unwrap_or(Duration::ZERO);
        let left = remaining(c, now);
        left < lifetime.mul_f64(self.inner.settings.refresh_fraction)
            || left <= self.inner.settings.min_remaining
    }

    /// Starts (or joins) the AssumeRole call of `slot`; `st` is its locked state.
    fn fetch(&self, slot: &Arc<Slot>, st: &mut SlotState) -> Fetch {
        if let Some(f) = &st.inflight {
            return f.clone();
        }
        let inner = self.inner.clone();
        let slot2 = slot.clone();
        let fut: BoxFuture<'static, FetchResult> = Box::pin(async move {
            let _permit = inner.permits.acquire().await;
            inner.stats.sts_calls.fetch_add(1, Ordering::Relaxed);
            let started = clock::now();
            let result = inner.assumer.assume(&slot2.binding).await.map(Arc::new);
            inner.stats.assume_role.observe(
                clock::since(started),
                result.as_ref().err().map(|e| e.code.as_str()),
            );
            let mut st = slot2.lock();
            st.inflight = None;
            match &result {
                Ok(c) => {
                    st.current = Some(c.clone());
                    st.failures = 0;
                    st.last_error = None;
                    st.next_attempt = clock::now();
                }
                Err(e) => {
                    inner.stats.sts_failures.fetch_add(1, Ordering::Relaxed);
                    st.failures = st.failures.saturating_add(1);
                    st.last_error = Some(e.clone());
                    st.next_attempt = clock::now() + backoff(&inner.settings, st.failures);
                    tracing::warn!(role = %slot2.binding.role_arn, session = %slot2.binding.session_name, failures = st.failures, code = %e.code, message = %e.message, "AssumeRole failed");
                }
            }
            result
        });
        // Its own task drives it to the end even if every waiter gives up (their bound is
        // shorter); waiters only wait for that task.
        let task = match &self.inner.runtime {
            Some(runtime) => runtime.spawn(fut),
            None => tokio::spawn(fut),
        };
        let waited: BoxFuture<'static, FetchResult> = Box::pin(async move {
            task.await.unwrap_or_else(|e| {
                Err(CredentialError::new(
                    "InternalError",
                    format!("the AssumeRole task ended without an answer: {e}"),
                ))
            })
        });
        let shared = waited.shared();
        st.inflight = Some(shared.clone());
        shared
    }

    /// Starts a call in the background (its spawned task drives it; nobody waits here).
    fn start_fetch(&self, slot: &Arc<Slot>, st: &mut SlotState) {
        let _driven_by_its_task = self.fetch(slot, st);
    }

    /// Credentials for `binding`: cached ones if they have enough time left, else the result
    /// of a (shared) AssumeRole call. Falls back to still-valid cached credentials when the
    /// call fails.
    pub(crate) async fn get(&self, binding: &RoleBinding) -> FetchResult {
        let slot = self.slot(binding);
        let now = clock::now();
        let wall = clock::wall();
        let fetch = {
            let mut st = slot.lock();
            st.last_used = now;
            if let Some(c) = st.current.clone() {
                if remaining(&c, wall) > self.inner.settings.min_remaining {
                    if self.due_for_refresh(&c, wall)
                        && st.inflight.is_none()
                        && now >= st.next_attempt
                    {
                        self.start_fetch(&slot, &mut st);
                    }
                    self.inner.stats.hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(c);
                }
            }
            self.inner.stats.misses.fetch_add(1, Ordering::Relaxed);
            if st.inflight.is_none() && now < st.next_attempt {
                if let Some(e) = &st.last_error {
                    return Self::fallback(&st, e.clone());
                }
            }
            self.fetch(&slot, &mut st)
        };
        match fetch.await {
            Ok(c) => Ok(c),
            Err(e) => {
                let st = slot.lock();
                Self::fallback(&st, e)
            }
        }
    }

    /// Still-valid cached credentials if there are any, else the error.
    fn fallback(st: &SlotState, err: CredentialError) -> FetchResult {
        match &st.current {
            Some(c) if remaining(c, clock::wall()) > Duration::from_secs(30) => Ok(c.clone()),
            _ => Err(err),
        }
    }

    /// Bindings some pod uses that have no credentials yet and a fetch under way: the
    /// prefetches still running.
    pub(crate) fn prefetching(&self) -> usize {
        self.inner
            .cache
            .iter()
            .filter(|(_, slot)| {
                let st = slot.lock();
                st.users > 0 && st.current.is_none() && st.inflight.is_some()
            })
            .count()
    }

    /// A pod bound to `binding` appeared: keep the entry and, unless prefetch is off, fetch
    /// credentials now.
    pub(crate) fn register(&self, binding: &RoleBinding) {
        let slot = self.slot(binding);
        let mut st = slot.lock();
        st.users += 1;
        st.last_used = clock::now();
        if self.inner.settings.prefetch && st.current.is_none() && clock::now() >= st.next_attempt {
            self.start_fetch(&slot, &mut st);
        }
    }

    /// A pod bound to `binding` went away.
    pub(crate) fn unregister(&self, binding: &RoleBinding) {
        if let Some(slot) = self.inner.cache.get(binding) {
            let mut st = slot.lock();
            st.users = st.users.saturating_sub(1);
            st.last_used = clock::now();
        }
    }

    /// One pass of background work: refreshes due, retries after failures, evictions.
    pub(crate) fn sweep(&self) {
        let now = clock::now();
        let wall = clock::wall();
        let grace = self.inner.settings.grace;
        let mut evict = Vec::new();
        for (key, slot) in &self.inner.cache {
            let mut st = slot.lock();
            if st.users == 0 && now.duration_since(st.last_used) > grace {
                evict.push(key);
                continue;
            }
            if st.inflight.is_some() || now < st.next_attempt {
                continue;
            }
            let wanted = match &st.current {
                Some(c) => self.due_for_refresh(c, wall),
                None => st.users > 0 && self.inner.settings.prefetch,
            };
            if wanted {
                self.start_fetch(&slot, &mut st);
            }
        }
        for key in evict {
            tracing::debug!(role = %key.role_arn, session = %key.session_name, "dropping unused credentials");
            self.inner.cache.invalidate(&*key);
        }
    }

    /// Runs [`StsCache::sweep`] every `tick` until `stop` turns true.
    pub(crate) async fn run(self, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(self.inner.settings.tick) => self.sweep(),
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}

/// Delay before the next call after `failures` consecutive failures: exponential, capped,
/// with ±20 % jitter so that many entries do not retry in lockstep.
fn backoff(settings: &StsCacheSettings, failures: u32) -> Duration {
    let jitter = f64::from(getrandom::u32().unwrap_or(0) % 401) / 1000.0 - 0.2;
    backoff_with_jitter(settings, failures, jitter)
}

/// [`backoff`] with the jitter given (-0.2 to 0.2).
fn backoff_with_jitter(settings: &StsCacheSettings, failures: u32, jitter: f64) -> Duration {
    let exp = settings
        .retry_base
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    exp.min(settings.retry_max).mul_f64(1.0 + jitter)
}

impl CredentialSource for StsCache {
    fn credentials<'a>(&'a self, binding: &'a RoleBinding) -> BoxFuture<'a, FetchResult> {
        Box::pin(self.get(binding))
    }
}

#[cfg(test)]
mod tests;

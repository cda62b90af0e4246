//! `StsCache` behaviour against a scripted fake STS.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex as StdMutex;

use super::*;
use crate::credentials::RenderedDocs;

/// What the fake does on each call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Ok,
    Fail,
    Hang,
}

#[derive(Debug)]
struct FakeSts {
    calls: AtomicUsize,
    mode: StdMutex<Mode>,
    delay: Duration,
    lifetime: Duration,
    serial: AtomicU64,
}

impl FakeSts {
    fn new(delay: Duration, lifetime: Duration) -> Arc<Self> {
        Arc::new(FakeSts {
            calls: AtomicUsize::new(0),
            mode: StdMutex::new(Mode::Ok),
            delay,
            lifetime,
            serial: AtomicU64::new(0),
        })
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().expect("lock") = mode;
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Assumer for FakeSts {
    fn assume<'a>(
        &'a self,
        binding: &'a RoleBinding,
    ) -> BoxFuture<'a, Result<Credentials, CredentialError>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let mode = *self.mode.lock().expect("lock");
            tokio::time::sleep(self.delay).await;
            match mode {
                Mode::Ok => {
                    let n = self.serial.fetch_add(1, Ordering::SeqCst);
                    let now = crate::clock::wall();
                    Ok(Credentials {
                        access_key_id: format!("ASIA{n}{}", binding.session_name),
                        secret_access_key: "s".into(),
                        session_token: "t".into(),
                        expiration: now + self.lifetime,
                        last_updated: now,
                        rendered: RenderedDocs::default(),
                    })
                }
                Mode::Fail => Err(CredentialError::new("Throttling", "Rate exceeded")),
                Mode::Hang => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Err(CredentialError::new("Never", "never"))
                }
            }
        })
    }
}

fn binding(name: &str) -> RoleBinding {
    RoleBinding {
        role_arn: format!("arn:aws:iam::123456789012:role/{name}"),
        session_name: format!("s-{name}"),
        external_id: None,
        session_tags: Vec::new(),
    }
}

fn settings() -> StsCacheSettings {
    StsCacheSettings {
        min_remaining: Duration::from_millis(300),
        retry_base: Duration::from_millis(200),
        retry_max: Duration::from_secs(1),
        tick: Duration::from_millis(20),
        grace: Duration::from_millis(200),
        ..StsCacheSettings::default()
    }
}

#[tokio::test(start_paused = true)]
async fn concurrent_misses_make_one_call() {
    let sts = FakeSts::new(Duration::from_millis(100), Duration::from_secs(3600));
    let sts_cache = StsCache::new(sts.clone(), settings());
    let b = binding("a");
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let e = sts_cache.clone();
        let b = b.clone();
        tasks.push(tokio::spawn(async move { e.get(&b).await }));
    }
    let mut keys = std::collections::HashSet::new();
    for t in tasks {
        keys.insert(t.await.expect("join").expect("creds").access_key_id.clone());
    }
    assert_eq!(sts.calls(), 1);
    assert_eq!(keys.len(), 1);
    // Another binding (other session name) is another entry.
    sts_cache.get(&binding("b")).await.expect("b");
    assert_eq!(sts.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn registration_prefetches() {
    let sts = FakeSts::new(Duration::from_millis(10), Duration::from_secs(3600));
    let sts_cache = StsCache::new(sts.clone(), settings());
    let b = binding("a");
    sts_cache.register(&b);
    // The call takes 10 ms; just after, its credentials are cached, with no request made.
    tokio::time::sleep(Duration::from_millis(11)).await;
    assert_eq!(sts.calls(), 1);
    sts_cache.get(&b).await.expect("creds");
    assert_eq!(sts.calls(), 1, "the request was served from the prefetch");
    assert_eq!(sts_cache.stats().hits.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn without_prefetch_registration_only_keeps_the_entry() {
    let sts = FakeSts::new(Duration::from_millis(10), Duration::from_secs(3600));
    let sts_cache = StsCache::new(
        sts.clone(),
        StsCacheSettings {
            prefetch: false,
            ..settings()
        },
    );
    let b = binding("a");
    sts_cache.register(&b);
    sts_cache.sweep();
    tokio::time::sleep(Duration::from_millis(100)).await;
    sts_cache.sweep();
    assert_eq!(
        sts.calls(),
        0,
        "--no-prefetch: nothing is fetched before a pod asks"
    );
    sts_cache.get(&b).await.expect("creds");
    assert_eq!(sts.calls(), 1, "the first request fetches");
}

#[tokio::test(start_paused = true)]
async fn refresh_ahead_happens_at_half_life_in_the_background() {
    let lifetime = Duration::from_millis(1200);
    let sts = FakeSts::new(Duration::from_millis(20), lifetime);
    let s = settings();
    let min_remaining = s.min_remaining;
    let tick = s.tick;
    let sts_cache = StsCache::new(sts.clone(), s);
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(sts_cache.clone().run(stop_rx));
    let b = binding("a");
    let started = crate::clock::now();
    let first = sts_cache.get(&b).await.expect("first");
    assert_eq!(
        crate::clock::since(started),
        Duration::from_millis(20),
        "one call"
    );
    let mut seen = vec![first.access_key_id.clone()];
    // 4 s of requests every 10 ms: never an error, never less than min_remaining left,
    // never a request that waits for STS.
    while crate::clock::since(started) < Duration::from_secs(4) {
        let asked = crate::clock::now();
        let c = sts_cache.get(&b).await.expect("never an error");
        assert_eq!(
            crate::clock::since(asked),
            Duration::ZERO,
            "served from the cache"
        );
        let left = remaining(&c, crate::clock::wall());
        assert!(
            left > min_remaining,
            "served credentials with {left:?} left"
        );
        if seen.last() != Some(&c.access_key_id) {
            seen.push(c.access_key_id.clone());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = stop_tx.send(true);
    // Each 1.2 s session is replaced once 600 ms are left (half-life), found by the sweep
    // within one tick and fetched in 20 ms: a new session every 600 ms + at most a tick +
    // 20 ms. One call per session: none wasted, none from a request.
    let period = lifetime / 2 + tick + Duration::from_millis(20);
    let min_sessions = (Duration::from_secs(4).as_millis() / period.as_millis()) as usize + 1;
    assert!(
        seen.len() >= min_sessions,
        "{} sessions in 4 s, expected at least {min_sessions}",
        seen.len()
    );
    assert!(
        sts.calls() <= seen.len() + 1,
        "{} calls for {} sessions",
        sts.calls(),
        seen.len()
    );
}

#[tokio::test(start_paused = true)]
async fn sts_failure_keeps_serving_cached_credentials() {
    let sts = FakeSts::new(Duration::from_millis(5), Duration::from_secs(3600));
    // Refresh on every request, so that each one tries (and fails) in the background.
    let eager = StsCacheSettings {
        refresh_fraction: 1.0,
        retry_base: Duration::from_millis(1),
        retry_max: Duration::from_millis(5),
        ..settings()
    };
    let sts_cache = StsCache::new(sts.clone(), eager);
    let b = binding("a");
    let first = sts_cache.get(&b).await.expect("creds");
    sts.set(Mode::Fail);
    for _ in 0..20 {
        let c = sts_cache
            .get(&b)
            .await
            .expect("cached credentials are served");
        assert_eq!(c.access_key_id, first.access_key_id);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(sts.calls() > 2, "refreshes were attempted: {}", sts.calls());
    assert!(sts_cache.stats().sts_failures.load(Ordering::Relaxed) >= 1);
}

#[tokio::test(start_paused = true)]
async fn nothing_cached_and_sts_down_fails_fast_with_the_code() {
    let sts = FakeSts::new(Duration::from_millis(5), Duration::from_secs(3600));
    sts.set(Mode::Fail);
    let sts_cache = StsCache::new(sts.clone(), settings());
    let b = binding("a");
    let e = sts_cache.get(&b).await.expect_err("no credentials");
    assert_eq!(e.code, "Throttling");
    assert_eq!(sts.calls(), 1);
    // Within the backoff (200 ms ± 20 %): the same error at once, no new call.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let started = crate::clock::now();
    let e = sts_cache.get(&b).await.expect_err("still failing");
    assert_eq!(e.code, "Throttling");
    assert_eq!(crate::clock::since(started), Duration::ZERO);
    assert_eq!(sts.calls(), 1);
    // After the backoff STS is tried again, and recovers.
    sts.set(Mode::Ok);
    tokio::time::sleep(Duration::from_millis(100)).await;
    sts_cache.get(&b).await.expect("recovered");
    assert_eq!(sts.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_hung_sts_does_not_hold_cached_roles() {
    let sts = FakeSts::new(Duration::from_millis(1), Duration::from_secs(3600));
    let sts_cache = StsCache::new(sts.clone(), settings());
    let cached = binding("cached");
    sts_cache.get(&cached).await.expect("creds");
    sts.set(Mode::Hang);
    let uncached = binding("uncached");
    let e2 = sts_cache.clone();
    let u2 = uncached.clone();
    let hung = tokio::spawn(async move { e2.get(&u2).await });
    tokio::task::yield_now().await;
    let started = crate::clock::now();
    for _ in 0..100 {
        sts_cache.get(&cached).await.expect("cached");
    }
    assert_eq!(crate::clock::since(started), Duration::ZERO);
    assert!(
        !hung.is_finished(),
        "the uncached request waits (the IMDS layer bounds it)"
    );
    hung.abort();
}

#[tokio::test(start_paused = true)]
async fn unused_entries_are_dropped_after_grace() {
    let sts = FakeSts::new(Duration::from_millis(1), Duration::from_secs(3600));
    let sts_cache = StsCache::new(sts.clone(), settings());
    let kept = binding("kept");
    let gone = binding("gone");
    sts_cache.register(&kept);
    sts_cache.register(&gone);
    tokio::time::sleep(Duration::from_millis(50)).await;
    sts_cache.unregister(&gone);
    // Just before the grace (200 ms) both are kept; just after, the unregistered one goes.
    tokio::time::sleep(Duration::from_millis(199)).await;
    sts_cache.sweep();
    assert_eq!(sts_cache.entries(), 2);
    tokio::time::sleep(Duration::from_millis(2)).await;
    sts_cache.sweep();
    assert_eq!(sts_cache.entries(), 1);
    sts_cache.get(&kept).await.expect("kept");
    assert_eq!(sts.calls(), 2, "the registered entry stayed cached");
}

#[test]
fn backoff_doubles_per_failure_is_capped_and_jittered_within_20_percent() {
    let s = StsCacheSettings::default();
    let exact: Vec<Duration> = [1, 2, 3, 5, 7, 30]
        .iter()
        .map(|f| backoff_with_jitter(&s, *f, 0.0))
        .collect();
    let secs = |n| Duration::from_secs(n);
    assert_eq!(
        exact,
        [secs(1), secs(2), secs(4), secs(16), secs(60), secs(60)]
    );
    assert_eq!(backoff_with_jitter(&s, 1, -0.2), Duration::from_millis(800));
    assert_eq!(backoff_with_jitter(&s, 30, 0.2), Duration::from_secs(72));
    for failures in [1, 5, 30] {
        let b = backoff(&s, failures);
        let base = backoff_with_jitter(&s, failures, 0.0);
        assert!(b >= base.mul_f64(0.8) && b <= base.mul_f64(1.2), "{b:?}");
    }
}

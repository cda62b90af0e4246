//! StsCache behaviour against a scripted fake STS.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex as StdMutex;

use super::*;

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
                    let now = SystemTime::now();
                    Ok(Credentials {
                        access_key_id: format!("ASIA{n}{}", binding.session_name),
                        secret_access_key: "s".into(),
                        session_token: "t".into(),
                        expiration: now + self.lifetime,
                        last_updated: now,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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

#[tokio::test]
async fn registration_prefetches() {
    let sts = FakeSts::new(Duration::from_millis(10), Duration::from_secs(3600));
    let sts_cache = StsCache::new(sts.clone(), settings());
    let b = binding("a");
    sts_cache.register(&b);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(sts.calls(), 1);
    sts_cache.get(&b).await.expect("creds");
    assert_eq!(sts.calls(), 1, "the request was served from the prefetch");
    assert_eq!(sts_cache.stats().hits.load(Ordering::Relaxed), 1);
}

#[tokio::test]
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_ahead_keeps_serving_fresh_credentials() {
    let lifetime = Duration::from_millis(1200);
    let sts = FakeSts::new(Duration::from_millis(20), lifetime);
    let s = settings();
    let min_remaining = s.min_remaining;
    let sts_cache = StsCache::new(sts.clone(), s);
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(sts_cache.clone().run(stop_rx));
    let b = binding("a");
    let started = Instant::now();
    let mut seen = std::collections::HashSet::new();
    while started.elapsed() < Duration::from_secs(4) {
        let c = sts_cache.get(&b).await.expect("never an error");
        let left = remaining(&c, SystemTime::now());
        assert!(
            left > min_remaining,
            "served credentials with {left:?} left"
        );
        seen.insert(c.access_key_id.clone());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = stop_tx.send(true);
    // ~4 s of 1.2 s sessions refreshed at half-life: several refreshes, not one per request.
    assert!(seen.len() >= 4, "only {} sessions", seen.len());
    assert!(sts.calls() <= 12, "{} calls", sts.calls());
}

#[tokio::test]
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

#[tokio::test]
async fn nothing_cached_and_sts_down_fails_fast_with_the_code() {
    let sts = FakeSts::new(Duration::from_millis(5), Duration::from_secs(3600));
    sts.set(Mode::Fail);
    let sts_cache = StsCache::new(sts.clone(), settings());
    let b = binding("a");
    let e = sts_cache.get(&b).await.expect_err("no credentials");
    assert_eq!(e.code, "Throttling");
    assert_eq!(sts.calls(), 1);
    // Within the backoff: the same error at once, no new call.
    let started = Instant::now();
    let e = sts_cache.get(&b).await.expect_err("still failing");
    assert_eq!(e.code, "Throttling");
    assert!(started.elapsed() < Duration::from_millis(50));
    assert_eq!(sts.calls(), 1);
    // After the backoff STS is tried again, and recovers.
    sts.set(Mode::Ok);
    tokio::time::sleep(Duration::from_millis(300)).await;
    sts_cache.get(&b).await.expect("recovered");
    assert_eq!(sts.calls(), 2);
}

#[tokio::test]
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
    let started = Instant::now();
    for _ in 0..100 {
        sts_cache.get(&cached).await.expect("cached");
    }
    assert!(started.elapsed() < Duration::from_millis(100));
    assert!(
        !hung.is_finished(),
        "the uncached request waits (the IMDS layer bounds it)"
    );
    hung.abort();
}

#[tokio::test]
async fn unused_entries_are_dropped_after_grace() {
    let sts = FakeSts::new(Duration::from_millis(1), Duration::from_secs(3600));
    let sts_cache = StsCache::new(sts.clone(), settings());
    let kept = binding("kept");
    let gone = binding("gone");
    sts_cache.register(&kept);
    sts_cache.register(&gone);
    tokio::time::sleep(Duration::from_millis(50)).await;
    sts_cache.unregister(&gone);
    tokio::time::sleep(Duration::from_millis(300)).await;
    sts_cache.sweep();
    assert_eq!(sts_cache.entries(), 1);
    sts_cache.get(&kept).await.expect("kept");
    assert_eq!(sts.calls(), 2, "the registered entry stayed cached");
}

#[test]
fn backoff_grows_and_is_capped() {
    let s = StsCacheSettings::default();
    let b1 = backoff(&s, 1);
    let b5 = backoff(&s, 5);
    let b30 = backoff(&s, 30);
    assert!(
        b1 >= Duration::from_millis(800) && b1 <= Duration::from_millis(1200),
        "{b1:?}"
    );
    assert!(
        b5 >= Duration::from_millis(12_800) && b5 <= Duration::from_millis(19_200),
        "{b5:?}"
    );
    assert!(b30 <= Duration::from_secs(72), "{b30:?}");
}

use std::sync::Mutex as StdMutex;
use std::time::SystemTime;

use tracing_subscriber::fmt::MakeWriter;

use super::*;
use crate::credentials::RenderedDocs;
use crate::role::RoleAnswer;

/// Knows one pod by name.
#[derive(Debug)]
struct NamedPods;

impl RoleResolver for NamedPods {
    fn role_for<'a>(&'a self, _caller: &'a Caller) -> RoleAnswer<'a> {
        crate::role::answer_now(Ok(None))
    }

    fn pod_name(&self, uid: &str) -> Option<(String, String)> {
        (uid == "uid-a").then(|| ("shop".to_owned(), "web-7d9f".to_owned()))
    }
}

/// Log lines written while a test runs (JSON, one per line).
#[derive(Clone, Default)]
struct Captured(Arc<StdMutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Captured {
    fn lines(&self) -> Vec<serde_json::Value> {
        let text = String::from_utf8(self.0.lock().expect("lock").clone()).expect("utf-8");
        text.lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }
}

/// Runs `f` with the audit target captured as JSON lines.
fn capture(f: impl FnOnce()) -> Vec<serde_json::Value> {
    let out = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_writer(out.clone())
        .with_max_level(tracing::Level::INFO)
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    out.lines()
}

fn caller(uid: Option<&str>) -> Caller {
    Caller::redirected(42, "/kubepods.slice/pod-a", uid)
}

fn served(key_id: &str) -> Outcome {
    Outcome::Served {
        binding: Arc::new(RoleBinding {
            role_arn: "arn:aws:iam::123456789012:role/web".into(),
            session_name: "s".into(),
            external_id: None,
            session_tags: Vec::new(),
        }),
        credentials: Arc::new(Credentials {
            access_key_id: key_id.into(),
            secret_access_key: "SECRET-never-logged".into(),
            session_token: "TOKEN-never-logged".into(),
            expiration: SystemTime::UNIX_EPOCH + Duration::from_secs(4_102_444_800),
            last_updated: SystemTime::UNIX_EPOCH,
            rendered: RenderedDocs::default(),
        }),
    }
}

fn answer(audit: &Audit, c: &Caller, outcome: &Outcome, status: u16, at: Instant) {
    let subject = Subject::of(c);
    audit.record(
        &Entry {
            caller: c,
            subject: &subject,
            route: "role_credentials",
            status,
            latency: Duration::from_micros(35),
            outcome,
        },
        at,
    );
}

#[test]
fn the_first_answer_of_each_key_is_logged_and_repeats_are_counted() {
    let audit = Audit::new(Arc::new(NamedPods));
    let a = caller(Some("uid-a"));
    let t0 = Instant::now();
    let lines = capture(|| {
        for i in 0..10 {
            answer(
                &audit,
                &a,
                &served("ASIAONE"),
                200,
                t0 + Duration::from_secs(i),
            );
        }
        // A new key: logged at once.
        answer(
            &audit,
            &a,
            &served("ASIATWO"),
            200,
            t0 + Duration::from_secs(11),
        );
        // The first key again, past its interval: logged, with the count.
        answer(
            &audit,
            &a,
            &served("ASIAONE"),
            200,
            t0 + INTERVAL + Duration::from_secs(1),
        );
    });
    assert_eq!(lines.len(), 3, "{lines:#?}");
    let first = &lines[0];
    assert_eq!(first["target"], "iamlet::audit");
    assert_eq!(first["message"], "credentials served");
    assert_eq!(first["pod_namespace"], "shop");
    assert_eq!(first["pod_name"], "web-7d9f");
    assert_eq!(first["pod_uid"], "uid-a");
    assert_eq!(first["cgroup_id"], 42);
    assert_eq!(first["role_arn"], "arn:aws:iam::123456789012:role/web");
    assert_eq!(first["access_key_id"], "ASIAONE");
    assert_eq!(first["expiration"], "2100-01-01T00:00:00Z");
    assert_eq!(first["status"], 200);
    assert_eq!(first["latency_us"], 35);
    assert_eq!(first["repeated"], 0);
    assert_eq!(lines[1]["access_key_id"], "ASIATWO");
    assert_eq!(lines[2]["access_key_id"], "ASIAONE");
    assert_eq!(lines[2]["repeated"], 9, "the nine answers after the first");
    let text = serde_json::to_string(&lines).expect("json");
    assert!(
        !text.contains("never-logged"),
        "a secret was logged: {text}"
    );
}

#[test]
fn the_flush_logs_counts_no_later_answer_reported() {
    let audit = Audit::new(Arc::new(NamedPods));
    let a = caller(Some("uid-a"));
    let t0 = Instant::now();
    let lines = capture(|| {
        for i in 0..4 {
            answer(
                &audit,
                &a,
                &served("ASIAONE"),
                200,
                t0 + Duration::from_secs(i),
            );
        }
        audit.flush(t0 + Duration::from_secs(30));
        audit.flush(t0 + INTERVAL);
        // Nothing more counted: nothing more logged.
        audit.flush(t0 + INTERVAL * 2);
    });
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert_eq!(lines[1]["repeated"], 3);
    assert_eq!(lines[1]["access_key_id"], "ASIAONE");
}

#[test]
fn refusals_are_logged_with_their_reason_and_collapse_alike() {
    let audit = Audit::new(Arc::new(NamedPods));
    let standalone = caller(None);
    let refused = Outcome::Refused {
        reason: "no role for this caller".into(),
    };
    let t0 = Instant::now();
    let lines = capture(|| {
        for i in 0..5 {
            answer(
                &audit,
                &standalone,
                &refused,
                404,
                t0 + Duration::from_millis(i),
            );
        }
        answer(
            &audit,
            &standalone,
            &refused,
            429,
            t0 + Duration::from_millis(9),
        );
    });
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert_eq!(lines[0]["message"], "request refused");
    assert_eq!(lines[0]["reason"], "no role for this caller");
    assert_eq!(lines[0]["cgroup"], "/kubepods.slice/pod-a");
    assert!(lines[0].get("pod_name").is_none(), "{:?}", lines[0]);
    assert_eq!(lines[1]["status"], 429);
}

//! The role resolver requests use in Kubernetes mode: names the pod from its cgroup's pod UID
//! and reads its decision from the pod index, waiting (bounded) for a pod the watch has not
//! delivered yet.

use std::sync::Arc;
use std::time::Duration;

use super::pod_index::{Lookup, PodIndex};
use super::policy::Decision;
use crate::caller::attribution::Caller;
use crate::role::{answer_later, answer_now, RoleAnswer, RoleError, RoleResolver, RoleResult};

/// Role resolution for requests, from the pod index.
#[derive(Debug)]
pub(crate) struct KubeRoles {
    index: Arc<PodIndex>,
    wait: Duration,
}

impl KubeRoles {
    /// A resolver over `index` that waits up to `wait` for pods not seen yet.
    pub(crate) fn new(index: Arc<PodIndex>, wait: Duration) -> Self {
        KubeRoles { index, wait }
    }

    /// The answer of a lookup that found the pod, or knows it is gone, or gave up waiting.
    fn decide(uid: &str, found: Lookup, caller: &Caller, waited: Duration) -> RoleResult {
        match found {
            Lookup::Found(entry) => match &entry.decision {
                Decision::Role(b) => Ok(Some(b.clone())),
                Decision::Denied { role, reason } => {
                    tracing::info!(pod_uid = uid, %role, %reason, "role refused");
                    Ok(None)
                }
                Decision::NoRole => Ok(None),
            },
            Lookup::Deleted => Ok(None),
            Lookup::Unknown => Err(RoleError::Lookup {
                cgroup: caller.cgroup_path.clone().unwrap_or_default(),
                reason: format!("pod {uid} is not known to the Kubernetes watch after {waited:?}"),
            }),
        }
    }
}

impl RoleResolver for KubeRoles {
    fn role_for<'a>(&'a self, caller: &'a Caller) -> RoleAnswer<'a> {
        let Some(uid) = caller.pod_uid.as_deref() else {
            return answer_now(Ok(None));
        };
        // A pod the index knows (every request but a new pod's first ones) is answered at
        // once; only an unknown one waits for the watch, registered for its changes.
        match self.index.get(uid) {
            Lookup::Unknown => answer_later(async move {
                let found = self.index.wait_for(uid, self.wait).await;
                Self::decide(uid, found, caller, self.wait)
            }),
            found => answer_now(Self::decide(uid, found, caller, self.wait)),
        }
    }

    fn pod_name(&self, uid: &str) -> Option<(String, String)> {
        match self.index.get(uid) {
            Lookup::Found(entry) => Some((entry.info.namespace.clone(), entry.info.name.clone())),
            Lookup::Deleted | Lookup::Unknown => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::future::Either;

    use super::*;
    use crate::clock;
    use crate::role::kubernetes::pod_index::PodEntry;
    use crate::role::kubernetes::policy::PodInfo;
    use crate::role::RoleBinding;

    const WAIT: Duration = Duration::from_secs(2);

    fn pod(uid: &str, decision: Decision) -> PodEntry {
        PodEntry {
            info: PodInfo {
                uid: uid.into(),
                namespace: "ns".into(),
                name: format!("pod-{uid}"),
                ..PodInfo::default()
            },
            decision,
        }
    }

    fn role(name: &str) -> Arc<RoleBinding> {
        Arc::new(RoleBinding {
            role_arn: format!("arn:aws:iam::123456789012:role/{name}"),
            session_name: "s".into(),
            external_id: None,
            session_tags: Vec::new(),
        })
    }

    fn caller(uid: Option<&str>) -> Caller {
        Caller::redirected(7, "/kubepods/pod-x", uid)
    }

    fn resolver() -> (Arc<PodIndex>, KubeRoles) {
        let index = Arc::new(PodIndex::new());
        (index.clone(), KubeRoles::new(index, WAIT))
    }

    /// The answer, which must be known at once.
    fn at_once(answer: RoleAnswer<'_>) -> RoleResult {
        match answer {
            Either::Left(ready) => ready.into_inner(),
            Either::Right(_) => panic!("the answer should be known at once"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_known_pod_is_answered_at_once_with_its_decision() {
        let (index, roles) = resolver();
        index.upsert(pod("a", Decision::Role(role("app"))));
        index.upsert(pod("n", Decision::NoRole));
        index.upsert(pod(
            "d",
            Decision::Denied {
                role: "admin".into(),
                reason: "not allowed in ns".into(),
            },
        ));
        let a = caller(Some("a"));
        let got = at_once(roles.role_for(&a)).expect("ok").expect("a role");
        assert_eq!(got.role_name(), "app");
        assert!(
            Arc::ptr_eq(&got, &role_of(&index, "a")),
            "shared, not copied"
        );
        assert_eq!(at_once(roles.role_for(&caller(Some("n")))), Ok(None));
        assert_eq!(
            at_once(roles.role_for(&caller(Some("d")))),
            Ok(None),
            "denied: no role"
        );
        assert_eq!(
            at_once(roles.role_for(&caller(None))),
            Ok(None),
            "not a pod"
        );
        assert_eq!(roles.pod_name("a"), Some(("ns".into(), "pod-a".into())));
    }

    fn role_of(index: &PodIndex, uid: &str) -> Arc<RoleBinding> {
        match index.get(uid) {
            Lookup::Found(entry) => match &entry.decision {
                Decision::Role(b) => b.clone(),
                other => panic!("{uid}: {other:?}"),
            },
            other => panic!("{uid}: {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_deleted_pod_is_answered_at_once_with_no_role() {
        let (index, roles) = resolver();
        index.upsert(pod("gone", Decision::Role(role("app"))));
        index.remove("gone");
        assert_eq!(at_once(roles.role_for(&caller(Some("gone")))), Ok(None));
        assert_eq!(roles.pod_name("gone"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unknown_pod_waits_until_the_watch_delivers_it() {
        let (index, roles) = resolver();
        let roles = Arc::new(roles);
        let started = clock::now();
        let asking = {
            let roles = roles.clone();
            tokio::spawn(async move {
                let c = caller(Some("new"));
                let answer = roles.role_for(&c);
                assert!(matches!(answer, Either::Right(_)), "must wait");
                (answer.await, clock::since(started))
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        index.upsert(pod("new", Decision::Role(role("late"))));
        let (got, waited) = asking.await.expect("join");
        assert_eq!(got.expect("ok").expect("a role").role_name(), "late");
        assert_eq!(
            waited,
            Duration::from_millis(300),
            "answered when it appeared"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_unknown_pod_is_an_error_after_the_wait() {
        let (_index, roles) = resolver();
        let started = clock::now();
        let got = roles.role_for(&caller(Some("never"))).await;
        assert_eq!(clock::since(started), WAIT);
        let err = got.expect_err("unknown after the wait");
        let text = err.to_string();
        assert!(text.contains("/kubepods/pod-x"), "{text}");
        assert!(text.contains("pod never is not known"), "{text}");
    }
}

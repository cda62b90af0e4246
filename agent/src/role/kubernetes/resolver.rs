//! The role resolver requests use in Kubernetes mode: names the pod from its cgroup's pod UID
//! and reads its decision from the pod index, waiting (bounded) for a pod the watch has not
//! delivered yet.

use std::sync::Arc;
use std::time::Duration;

use super::pod_index::{Lookup, PodIndex};
use super::policy::Decision;
use crate::caller::attribution::Caller;
use crate::role::{RoleAnswer, RoleError, RoleResolver, RoleResult};

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
}

impl KubeRoles {
    /// The answer of a lookup that found the pod, or knows it is gone.
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
            return RoleAnswer::now(Ok(None));
        };
        // A pod the index knows (every request but a new pod's first ones) is answered at
        // once; only an unknown one waits for the watch, registered for its changes.
        match self.index.get(uid) {
            Lookup::Unknown => RoleAnswer::Later(Box::pin(async move {
                let found = self.index.wait_for(uid, self.wait).await;
                Self::decide(uid, found, caller, self.wait)
            })),
            found => RoleAnswer::now(Self::decide(uid, found, caller, self.wait)),
        }
    }

    fn pod_name(&self, uid: &str) -> Option<(String, String)> {
        match self.index.get(uid) {
            Lookup::Found(entry) => Some((entry.info.namespace.clone(), entry.info.name.clone())),
            Lookup::Deleted | Lookup::Unknown => None,
        }
    }
}

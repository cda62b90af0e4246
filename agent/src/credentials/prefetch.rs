//! Standalone prefetch: keeps the STS cache's registrations equal to the bindings of the cgroups
//! that exist, so credentials are fetched when a bound cgroup appears (before its first
//! request) and released when it is gone.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::caller::cgroup::CgroupIndex;
use crate::credentials::sts_cache::StsCache;
use crate::role::bindings::StaticBindings;
use crate::role::RoleBinding;

/// How often the cgroup tree is looked at for new and removed bound cgroups.
pub(crate) const POLL: Duration = Duration::from_secs(2);

/// Registers/unregisters bindings with `sts_cache` as bound cgroups come and go, until `stop`.
pub(crate) async fn run(
    bindings: Arc<StaticBindings>,
    index: Arc<CgroupIndex>,
    sts_cache: StsCache,
    mut stop: watch::Receiver<bool>,
) {
    let mut registered: HashSet<RoleBinding> = HashSet::new();
    loop {
        let idx = index.clone();
        let paths = match tokio::task::spawn_blocking(move || {
            idx.refresh();
            idx.paths()
        })
        .await
        {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "cgroup scan for prefetch failed");
                Vec::new()
            }
        };
        let wanted = bindings.bindings_for(paths.iter().map(String::as_str));
        for b in wanted.difference(&registered) {
            tracing::info!(role = %b.role_arn, session = %b.session_name, "prefetching credentials");
            sts_cache.register(b);
        }
        for b in registered.difference(&wanted) {
            tracing::info!(role = %b.role_arn, session = %b.session_name, "binding no longer in use");
            sts_cache.unregister(b);
        }
        registered = wanted;
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

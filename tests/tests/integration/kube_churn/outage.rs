//! The API outage test.

use super::support::*;

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use iamlet_tests::{skip_unless_privileged, FakePod, KubeControl, RemoteApiServer, TestNode};

const OUTAGE: Duration = Duration::from_secs(6);
/// Pod numbers of the outage test: keep, gone1, new1, gone2, new2, changed.
const OUTAGE_PODS: usize = 900;

/// An outage: with all three watches open and a clean request log, every API request
/// answers 500 and the open watches are dropped; `during` changes the cluster meanwhile. For [`OUTAGE`], the `serving` pods
/// (number, role) must keep getting those roles from the agent's index. Then the API is back.
fn outage(
    api: &RemoteApiServer,
    pods: &[FakePod],
    serving: &[(usize, usize)],
    during: impl FnOnce() -> Result<()>,
) -> Result<String> {
    api.wait_for_watches(3, WAIT)?; // from a steady state
    api.reset_requests()?;
    api.fail_next(u64::MAX, 500)?;
    let dropped = api.abort_watches()?;
    during()?;
    let (started, mut served) = (Instant::now(), 0);
    while started.elapsed() < OUTAGE {
        for &(n, r) in serving {
            let v = ask_once(&pods[n - OUTAGE_PODS], r)?;
            ensure!(v.served(), "API down: {} not served: {v:?}", uid(n));
            served += v.requests;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let failed = api.requests()?.iter().filter(|q| q.status == 500).count();
    api.fail_next(0, 500)?;
    ensure!(failed > 0, "no API request failed during the outage");
    Ok(format!("{dropped} watches dropped, {failed} API requests answered 500, {served} pod requests served meanwhile"))
}

#[test]
fn kube_churn_api_outage_serves_known_pods_and_resyncs() {
    skip_unless_privileged!();
    let started = Instant::now();
    let node = TestNode::new().expect("creating the test node");
    let (s, _agent) = setup(&node, "2s").expect("setting up the fake API server and the agent");
    let [keep, gone1, new1, gone2, new2, changed] = std::array::from_fn(|i| OUTAGE_PODS + i);
    let changed_role = (role_of(changed) + 1) % ROLES;
    let pods = (OUTAGE_PODS..OUTAGE_PODS + 6)
        .map(|n| node.add_pod(&container(n)))
        .collect::<Result<Vec<_>>>()
        .expect("adding the pods");
    let pod = |n: usize| &pods[n - OUTAGE_PODS];
    // Never a foreign role or the node's (errors are fine until the agent has resynced).
    let ask = |n: usize, r: usize| -> Result<Verdict> {
        let v = ask_once(pod(n), r)?;
        ensure!(v.safe(), "{}: {v:?}", uid(n));
        Ok(v)
    };
    let serves = |n: usize, r: usize| Ok::<_, anyhow::Error>(ask(n, r)?.served());
    let is_gone = |n: usize| Ok::<_, anyhow::Error>(ask(n, role_of(n))?.gone());
    for n in [keep, gone1, gone2, changed] {
        publish(&s.api, n, role_of(n)).unwrap_or_else(|e| panic!("publishing {}: {e:#}", name(n)));
    }
    for n in [keep, gone1, gone2, changed] {
        wait_until(&format!("{} served", name(n)), || serves(n, role_of(n)))
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    // Outage 1: the watches resume from their resource version and replay what they missed.
    // gone1, deleted meanwhile, is still served: the agent cannot know yet.
    let known = [keep, gone1, gone2, changed].map(|n| (n, role_of(n)));
    let mut unknown = None;
    let summary1 = outage(&s.api, &pods, &known, || {
        unpublish(&s.api, gone1)?;
        publish(&s.api, new1, role_of(new1))?;
        let url = format!("http://169.254.169.254{LIST}");
        let out = pod(new1).run(&["curl", "-s", "-w", " %{http_code}", &url])?;
        unknown = Some(out.stdout);
        Ok(())
    })
    .expect("outage 1");
    let unknown = unknown.expect("no answer");
    assert!(!unknown.ends_with(" 200"), "unknown pod served: {unknown}");
    let resync1 = wait_until("the resync after outage 1", || {
        Ok(is_gone(gone1)? && serves(new1, role_of(new1))? && serves(keep, role_of(keep))?)
    })
    .expect("waiting until the resync after outage 1");
    let lists1 = s
        .api
        .request_count("list", Some("/api/v1/pods"))
        .expect("counting list requests");

    // Outage 2: the history is compacted meanwhile, so the watch's resource version is too
    // old: 410 Gone, and the agent must relist.
    let mut compacted = 0;
    let known = [keep, new1, gone2, changed].map(|n| (n, role_of(n)));
    let summary2 = outage(&s.api, &pods, &known, || {
        unpublish(&s.api, gone2)?;
        publish(&s.api, new2, role_of(new2))?;
        publish(&s.api, changed, changed_role)?;
        compacted = s.api.compact()?;
        Ok(())
    })
    .expect("outage 2");
    let resync2 = wait_until("the resync after outage 2", || {
        Ok(is_gone(gone2)?
            && serves(new2, role_of(new2))?
            && serves(changed, changed_role)?
            && serves(keep, role_of(keep))?
            && serves(new1, role_of(new1))?
            && is_gone(gone1)?)
    })
    .expect("waiting until the resync after outage 2");
    let requests = s
        .api
        .requests()
        .expect("the request log of the fake API server");
    let expired = (requests.iter())
        .filter(|q| q.verb == "watch" && q.path == "/api/v1/pods" && q.status == 200)
        .filter_map(|q| {
            let mut kv = q.query.split('&');
            let rv = kv.find_map(|kv| kv.strip_prefix("resourceVersion="));
            rv.and_then(|rv| rv.parse::<u64>().ok())
        })
        .filter(|rv| *rv > 0 && *rv < compacted)
        .count();
    let lists2 = s
        .api
        .request_count("list", Some("/api/v1/pods"))
        .expect("counting list requests");
    println!(
        "kube churn, API outages of {OUTAGE:?}:
  outage 1 (replay): {summary1}
    a pod published meanwhile got {unknown}
    resynced {resync1:.1?} after the API was back, {lists1} pod relists
  outage 2 (410 Gone): {summary2}
    {expired} pod watches from a compacted version (410), {lists2} pod relists
    resynced {resync2:.1?} after the API was back
  runtime: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(expired > 0, "no 410 for the pod watch: {requests:#?}");
    assert!(lists2 > 0, "no relist after 410 Gone: {requests:#?}");
}

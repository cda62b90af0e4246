//! Watches on the in-process fake API server: the kube-rs watcher and reflector follow
//! changes in order, bookmarks, relists after 410, selectors, server errors, aborted watches.

use super::*;
use iamlet_tests::scaled;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_sees_changes_in_order() {
    let fake = FakeApiServer::start().expect("starting the fake API server");
    fake.apply(&pod("ns", "existing", "node-a", &[]))
        .expect("applying pod ns/existing");
    fake.apply(&pod("ns", "elsewhere", "node-b", &[]))
        .expect("applying pod ns/elsewhere");
    let client = fake.client().expect("kube client for the fake API server");
    let cfg = watcher::Config::default().fields("spec.nodeName=node-a");
    let mut events = watcher(Api::<Pod>::all(client.clone()), cfg.clone()).boxed();
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(describe(
            &next_event(&mut events).await.expect("next watcher event"),
        ));
    }
    assert_eq!(seen, ["init", "init-apply existing", "init-done"]);
    // The watch starts on the next poll; it replays from the list's resource version.

    let added = fake
        .apply(&pod("ns", "p", "node-a", &[]))
        .expect("applying pod ns/p");
    fake.patch_obj::<Pod>(Some("ns"), "p", json!({"metadata": {"labels": {"x": "1"}}}))
        .expect("patching pod p");
    fake.patch_obj::<Pod>(Some("ns"), "p", json!({"status": {"phase": "Running"}}))
        .expect("patching pod p");
    fake.apply(&pod("ns", "q", "node-b", &[]))
        .expect("applying pod ns/q"); // other node: not seen
    let deleted = fake
        .delete_obj::<Pod>(Some("ns"), "p")
        .expect("deleting pod p");
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(next_event(&mut events).await.expect("next watcher event"));
    }
    let d: Vec<String> = got.iter().map(describe).collect();
    assert_eq!(d, ["apply p", "apply p", "apply p", "delete p"]);
    let watcher::Event::Apply(p1) = &got[1] else {
        unreachable!()
    };
    assert_eq!(p1.labels()["x"], "1");
    let watcher::Event::Apply(p2) = &got[2] else {
        unreachable!()
    };
    assert_eq!(
        p2.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Running")
    );
    assert_eq!(
        p2.metadata.uid,
        added["metadata"]["uid"].as_str().map(String::from)
    );
    let watcher::Event::Delete(p3) = &got[3] else {
        unreachable!()
    };
    assert_eq!(
        p3.metadata.resource_version,
        deleted["metadata"]["resourceVersion"]
            .as_str()
            .map(String::from)
    );
    assert_eq!(p3.labels()["x"], "1", "DELETED carries the last state");

    // A reflector converges on the same thing.
    let store = spawn_reflector(client, cfg);
    store
        .wait_until_ready()
        .await
        .expect("waiting for the reflector store");
    converge(&store, &["existing"])
        .await
        .expect("store converging on [existing]");
    // Replacing with another uid is delete + add; the store follows.
    let mut replaced = pod("ns", "existing", "node-a", &[]);
    replaced["metadata"]["uid"] = json!("11111111-2222-4333-8444-555555555555");
    fake.apply(&replaced)
        .expect("applying the replacement of pod ns/existing");
    let deadline = Instant::now() + scaled(WAIT);
    while store
        .state()
        .first()
        .and_then(|p| p.metadata.uid.clone())
        .as_deref()
        != Some("11111111-2222-4333-8444-555555555555")
    {
        assert!(Instant::now() < deadline, "replacement not seen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookmarks_arrive() {
    let fake = FakeApiServer::start_with(Options {
        bookmark_interval: Duration::from_millis(200),
        ..Options::default()
    })
    .expect("starting the fake API server");
    fake.apply(&pod("ns", "p", "node-a", &[]))
        .expect("applying pod ns/p");
    let pods: Api<Pod> = Api::all(fake.client().expect("kube client for the fake API server"));
    let list = pods
        .list(&ListParams::default())
        .await
        .expect("listing pods");
    let rv = list.metadata.resource_version.clone().expect("no rv");
    let mut stream = pods
        .watch(&WatchParams::default().timeout(3), &rv)
        .await
        .expect("starting a watch")
        .boxed();
    fake.apply(&pod("ns", "p2", "node-a", &[]))
        .expect("applying pod ns/p2");
    let mut bookmarks = Vec::new();
    let mut added = 0;
    while let Some(ev) = tokio::time::timeout(WAIT, stream.next())
        .await
        .unwrap_or_else(|_| panic!("no watch event in {WAIT:?}"))
    {
        match ev.expect("watch event") {
            WatchEvent::Bookmark(b) => bookmarks.push(b.metadata.resource_version),
            WatchEvent::Added(_) => added += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    // timeoutSeconds=3 ended the stream.
    assert_eq!(added, 1);
    assert!(bookmarks.len() >= 5, "{bookmarks:?}");
    assert_eq!(
        bookmarks.last().unwrap(),
        &fake
            .state()
            .expect("the state of the fake API server")
            .resource_version
            .to_string()
    );
    // Streaming list: initial events then the initial-events-end bookmark.
    let mut s = pods
        .watch(&WatchParams::default().initial_events().timeout(1), "")
        .await
        .expect("starting a watch")
        .boxed();
    let mut kinds = Vec::new();
    while let Some(ev) = s.next().await {
        kinds.push(match ev.expect("watch event") {
            WatchEvent::Added(p) => format!("added {}", p.name_any()),
            WatchEvent::Bookmark(b) => format!(
                "bookmark {}",
                b.metadata
                    .annotations
                    .contains_key("k8s.io/initial-events-end")
            ),
            other => format!("{other:?}"),
        });
    }
    assert_eq!(kinds[..3], ["added p", "added p2", "bookmark true"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_resource_version_relists_and_converges() {
    let fake = FakeApiServer::start().expect("starting the fake API server");
    fake.apply(&pod("ns", "p1", "n", &[]))
        .expect("applying pod ns/p1");
    fake.apply(&pod("ns", "p2", "n", &[]))
        .expect("applying pod ns/p2");
    let store = spawn_reflector(
        fake.client().expect("kube client for the fake API server"),
        watcher::Config::default(),
    );
    store
        .wait_until_ready()
        .await
        .expect("waiting for the reflector store");
    converge(&store, &["p1", "p2"])
        .await
        .expect("store converging on [p1, p2]");
    fake.wait_for_watches(1, WAIT).expect("waiting for a watch");
    assert_eq!(
        fake.request_count("list", Some("/api/v1/pods"))
            .expect("counting list requests"),
        1
    );

    // Hold the re-watch back, change things, forget the history: the re-watch gets 410.
    fake.set_latency(Duration::from_millis(700))
        .expect("setting the latency");
    fake.abort_watches().expect("aborting the watches");
    fake.delete_obj::<Pod>(Some("ns"), "p1")
        .expect("deleting pod p1");
    fake.apply(&pod("ns", "p3", "n", &[]))
        .expect("applying pod ns/p3");
    fake.compact().expect("compacting the history");
    tokio::time::sleep(Duration::from_millis(100)).await;
    fake.set_latency(Duration::ZERO)
        .expect("setting the latency");
    converge(&store, &["p2", "p3"])
        .await
        .expect("store converging on [p2, p3]");
    let lists = fake
        .request_count("list", Some("/api/v1/pods"))
        .expect("counting list requests");
    assert!(lists >= 2, "no relist after 410 ({lists} lists)");
    // The raw 410 as kube-rs sees it.
    let pods: Api<Pod> = Api::all(fake.client().expect("kube client for the fake API server"));
    let mut s = pods
        .watch(&WatchParams::default(), "2")
        .await
        .expect("starting a watch")
        .boxed();
    match s.next().await.expect("no event").expect("watch event") {
        WatchEvent::Error(e) => {
            assert_eq!((e.code, e.reason.as_str()), (410, "Expired"));
            assert!(
                e.message.starts_with("too old resource version"),
                "{}",
                e.message
            );
        }
        other => panic!("expected a 410 ERROR, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_selector_moves_objects_in_and_out() {
    let fake = FakeApiServer::start().expect("starting the fake API server");
    fake.apply(&pod("ns", "p", "n", &[("app", "a")]))
        .expect("applying pod ns/p");
    let cfg = watcher::Config::default().labels("app in (a,b),tier!=db");
    let mut events = watcher(
        Api::<Pod>::all(fake.client().expect("kube client for the fake API server")),
        cfg,
    )
    .boxed();
    for _ in 0..3 {
        next_event(&mut events).await.expect("next watcher event");
    }
    // The watch starts on the next poll; it replays from the list's resource version.
    fake.patch_obj::<Pod>(
        Some("ns"),
        "p",
        json!({"metadata": {"labels": {"tier": "db"}}}),
    )
    .expect("patching pod p"); // out
    fake.patch_obj::<Pod>(
        Some("ns"),
        "p",
        json!({"metadata": {"labels": {"tier": "web"}}}),
    )
    .expect("patching pod p"); // in
    fake.patch_obj::<Pod>(
        Some("ns"),
        "p",
        json!({"metadata": {"labels": {"app": "c"}}}),
    )
    .expect("patching pod p"); // out
    fake.patch_obj::<Pod>(Some("ns"), "p", json!({"metadata": {"labels": {"x": "y"}}}))
        .expect("patching pod p"); // still out
    fake.patch_obj::<Pod>(
        Some("ns"),
        "p",
        json!({"metadata": {"labels": {"app": "b", "tier": null}}}),
    )
    .expect("patching pod p"); // in
    let mut d = Vec::new();
    for _ in 0..4 {
        let ev = next_event(&mut events).await.expect("next watcher event");
        if let watcher::Event::Delete(p) = &ev {
            // The previous state, at the new resource version.
            assert!(p.labels().get("app").is_some_and(|a| a == "a"));
        }
        d.push(describe(&ev));
    }
    assert_eq!(d, ["delete p", "apply p", "delete p", "apply p"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried() {
    let fake = FakeApiServer::start().expect("starting the fake API server");
    fake.apply(&pod("ns", "p1", "n", &[]))
        .expect("applying pod ns/p1");
    fake.fail_next(3, 500)
        .expect("failing the next 3 requests with 500");
    let store = spawn_reflector(
        fake.client().expect("kube client for the fake API server"),
        watcher::Config::default(),
    );
    converge(&store, &["p1"])
        .await
        .expect("store converging on [p1]");
    let failed = fake
        .requests()
        .expect("the request log of the fake API server")
        .iter()
        .filter(|r| r.status == 500)
        .count();
    assert_eq!(failed, 3);
    fake.wait_for_watches(1, WAIT).expect("waiting for a watch");
    // A failing re-watch too.
    fake.fail_next(2, 503)
        .expect("failing the next 2 requests with 503");
    fake.end_watches().expect("ending the watches");
    fake.apply(&pod("ns", "p2", "n", &[]))
        .expect("applying pod ns/p2");
    converge(&store, &["p1", "p2"])
        .await
        .expect("store converging on [p1, p2]");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_watches_recover() {
    let fake = FakeApiServer::start().expect("starting the fake API server");
    let store = spawn_reflector(
        fake.client().expect("kube client for the fake API server"),
        watcher::Config::default(),
    );
    store
        .wait_until_ready()
        .await
        .expect("waiting for the reflector store");
    fake.wait_for_watches(1, WAIT).expect("waiting for a watch");
    for i in 0..3 {
        let n = fake.abort_watches().expect("aborting the watches");
        assert_eq!(n, 1);
        fake.apply(&pod("ns", &format!("p{i}"), "n", &[]))
            .unwrap_or_else(|e| panic!("applying pod ns/p{i}: {e:#}"));
        fake.wait_for_watches(1, WAIT).expect("waiting for a watch");
    }
    converge(&store, &["p0", "p1", "p2"])
        .await
        .expect("store converging on [p0, p1, p2]");
    let watches = fake
        .request_count("watch", Some("/api/v1/pods"))
        .expect("counting watch requests");
    assert!(watches >= 4, "{watches}");
    // Re-watches resume from the last resource version: no relist.
    assert_eq!(
        fake.request_count("list", None)
            .expect("counting list requests"),
        1
    );
}

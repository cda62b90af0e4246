//! The fake Kubernetes API server (`iamlet_tests::kube_fake`) against the real kube-rs client,
//! watcher and reflector. All but the last test need no privileges.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use futures_util::{Stream, StreamExt};
use iamlet_tests::kube_fake::{kubeconfig_yaml, Options, RemoteApiServer};
use iamlet_tests::{skip_unless_privileged, FakeApiServer, KubeControl, TestNode};
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::api::{Api, ListParams, ObjectMeta, PostParams, WatchEvent, WatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);

fn pod(ns: &str, name: &str, node: &str, labels: &[(&str, &str)]) -> Value {
    let labels: serde_json::Map<String, Value> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "namespace": ns, "labels": labels },
        "spec": { "nodeName": node, "serviceAccountName": "default",
                  "containers": [{ "name": "c", "image": "busybox" }] },
    })
}

fn names(store: &Store<Pod>) -> BTreeSet<String> {
    store.state().iter().map(|p| p.name_any()).collect()
}

/// Waits until `store` holds exactly `want`.
async fn converge(store: &Store<Pod>, want: &[&str]) -> Result<()> {
    let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
    let deadline = Instant::now() + WAIT;
    loop {
        let have = names(store);
        if have == want {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "store has {have:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A reflector over pods with `cfg`, driven in the background; returns its store.
fn spawn_reflector(client: Client, cfg: watcher::Config) -> Store<Pod> {
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(Api::<Pod>::all(client), cfg))
        .default_backoff()
        .applied_objects();
    tokio::spawn(async move {
        futures_util::pin_mut!(stream);
        while stream.next().await.is_some() {}
    });
    reader
}

async fn next_event<S>(s: &mut S) -> Result<watcher::Event<Pod>>
where
    S: Stream<Item = Result<watcher::Event<Pod>, watcher::Error>> + Unpin,
{
    loop {
        match tokio::time::timeout(WAIT, s.next()).await {
            Err(_) => anyhow::bail!("no watcher event in {WAIT:?}"),
            Ok(None) => anyhow::bail!("watcher ended"),
            Ok(Some(Err(e))) => eprintln!("watcher error (retried): {e}"),
            Ok(Some(Ok(ev))) => return Ok(ev),
        }
    }
}

fn describe(ev: &watcher::Event<Pod>) -> String {
    match ev {
        watcher::Event::Apply(p) => format!("apply {}", p.name_any()),
        watcher::Event::Delete(p) => format!("delete {}", p.name_any()),
        watcher::Event::Init => "init".into(),
        watcher::Event::InitApply(p) => format!("init-apply {}", p.name_any()),
        watcher::Event::InitDone => "init-done".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_with_selectors_and_pagination() -> Result<()> {
    let fake = FakeApiServer::start()?;
    for i in 0..5 {
        fake.apply(&pod("ns1", &format!("a{i}"), "node-a", &[("app", "a")]))?;
    }
    fake.apply(&pod("ns2", "b0", "node-b", &[("app", "b"), ("tier", "db")]))?;
    fake.apply(&pod("ns2", "c0", "", &[]))?;
    let client = fake.client()?;
    let pods: Api<Pod> = Api::all(client.clone());

    let on_a = pods
        .list(&ListParams::default().fields("spec.nodeName=node-a"))
        .await?;
    assert_eq!(on_a.items.len(), 5);
    assert!(on_a.items.iter().all(|p| p.metadata.uid.is_some()
        && p.metadata.creation_timestamp.is_some()
        && p.metadata.generation == Some(1)));
    let not_a = pods
        .list(&ListParams::default().fields("spec.nodeName!=node-a"))
        .await?;
    let got: BTreeSet<_> = not_a.items.iter().map(|p| p.name_any()).collect();
    assert_eq!(got, BTreeSet::from(["b0".to_string(), "c0".to_string()]));
    let unscheduled = pods
        .list(&ListParams::default().fields("spec.nodeName="))
        .await?;
    assert_eq!(unscheduled.items.len(), 1);
    let one = pods
        .list(&ListParams::default().fields("metadata.name=a3,metadata.namespace=ns1"))
        .await?;
    assert_eq!(one.items[0].name_any(), "a3");
    let ns2: Api<Pod> = Api::namespaced(client.clone(), "ns2");
    assert_eq!(ns2.list(&ListParams::default()).await?.items.len(), 2);
    assert_eq!(ns2.get("b0").await?.labels()["tier"], "db");
    let e = ns2.get("nope").await.unwrap_err();
    assert!(
        matches!(e, kube::Error::Api(ref s) if s.code == 404),
        "{e:?}"
    );
    let e = pods
        .list(&ListParams::default().fields("spec.bogus=1"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, kube::Error::Api(ref s) if s.code == 400),
        "{e:?}"
    );

    for (sel, want) in [
        ("app=a", 5),
        ("app!=a", 2),
        ("app", 6),
        ("!app", 1),
        ("app in (a,b)", 6),
        ("app notin (a)", 2),
        ("app in (a,b),tier!=db", 5),
        ("tier", 1),
    ] {
        let l = pods.list(&ListParams::default().labels(sel)).await?;
        assert_eq!(l.items.len(), want, "labelSelector {sel}");
    }

    // Pagination: consistent pages at the first page's resource version.
    let first = pods.list(&ListParams::default().limit(3)).await?;
    assert_eq!(first.items.len(), 3);
    let token = first
        .metadata
        .continue_
        .clone()
        .context("no continue token")?;
    assert_eq!(first.metadata.remaining_item_count, Some(4));
    fake.apply(&pod("aaa", "early", "node-a", &[]))?; // sorts first; not in this list
    fake.delete_obj::<Pod>(Some("ns2"), "c0")?; // still in this list
    let second = pods
        .list(&ListParams::default().limit(3).continue_token(&token))
        .await?;
    let third_token = second
        .metadata
        .continue_
        .clone()
        .context("no second token")?;
    let third = pods
        .list(&ListParams::default().limit(3).continue_token(&third_token))
        .await?;
    let all: Vec<String> = first
        .items
        .iter()
        .chain(&second.items)
        .chain(&third.items)
        .map(|p| p.name_any())
        .collect();
    assert_eq!(all, ["a0", "a1", "a2", "a3", "a4", "b0", "c0"]);
    assert_eq!(third.metadata.continue_.as_deref().unwrap_or(""), "");
    assert_eq!(
        second.metadata.resource_version,
        first.metadata.resource_version
    );

    // A compacted continue token is 410 Expired.
    fake.compact()?;
    let e = pods
        .list(&ListParams::default().limit(3).continue_token(&token))
        .await
        .unwrap_err();
    assert!(
        matches!(e, kube::Error::Api(ref s) if s.code == 410 && s.reason == "Expired"),
        "{e:?}"
    );

    // The other resources, and discovery.
    fake.apply(&Namespace {
        metadata: ObjectMeta {
            name: Some("ns1".into()),
            ..Default::default()
        },
        ..Default::default()
    })?;
    fake.apply(&ServiceAccount {
        metadata: ObjectMeta {
            name: Some("sa1".into()),
            namespace: Some("ns1".into()),
            ..Default::default()
        },
        ..Default::default()
    })?;
    assert_eq!(
        Api::<Namespace>::all(client.clone())
            .list(&ListParams::default())
            .await?
            .items
            .len(),
        1
    );
    let sas = Api::<ServiceAccount>::namespaced(client.clone(), "ns1")
        .list(&ListParams::default())
        .await?;
    assert_eq!(sas.items[0].name_any(), "sa1");
    let v = client.apiserver_version().await?;
    assert_eq!(v.minor, "33");
    let groups = client.list_core_api_versions().await?;
    assert_eq!(groups.versions, ["v1"]);
    let res = client.list_core_api_resources("v1").await?;
    assert!(res.resources.iter().any(|r| r.name == "pods"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_sees_changes_in_order() -> Result<()> {
    let fake = FakeApiServer::start()?;
    fake.apply(&pod("ns", "existing", "node-a", &[]))?;
    fake.apply(&pod("ns", "elsewhere", "node-b", &[]))?;
    let client = fake.client()?;
    let cfg = watcher::Config::default().fields("spec.nodeName=node-a");
    let mut events = watcher(Api::<Pod>::all(client.clone()), cfg.clone()).boxed();
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(describe(&next_event(&mut events).await?));
    }
    assert_eq!(seen, ["init", "init-apply existing", "init-done"]);
    // The watch starts on the next poll; it replays from the list's resource version.

    let added = fake.apply(&pod("ns", "p", "node-a", &[]))?;
    fake.patch_obj::<Pod>(Some("ns"), "p", json!({"metadata": {"labels": {"x": "1"}}}))?;
    fake.patch_obj::<Pod>(Some("ns"), "p", json!({"status": {"phase": "Running"}}))?;
    fake.apply(&pod("ns", "q", "node-b", &[]))?; // other node: not seen
    let deleted = fake.delete_obj::<Pod>(Some("ns"), "p")?;
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(next_event(&mut events).await?);
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
    store.wait_until_ready().await?;
    converge(&store, &["existing"]).await?;
    // Replacing with another uid is delete + add; the store follows.
    let mut replaced = pod("ns", "existing", "node-a", &[]);
    replaced["metadata"]["uid"] = json!("11111111-2222-4333-8444-555555555555");
    fake.apply(&replaced)?;
    let deadline = Instant::now() + WAIT;
    while store
        .state()
        .first()
        .and_then(|p| p.metadata.uid.clone())
        .as_deref()
        != Some("11111111-2222-4333-8444-555555555555")
    {
        ensure!(Instant::now() < deadline, "replacement not seen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookmarks_arrive() -> Result<()> {
    let fake = FakeApiServer::start_with(Options {
        bookmark_interval: Duration::from_millis(200),
        ..Options::default()
    })?;
    fake.apply(&pod("ns", "p", "node-a", &[]))?;
    let pods: Api<Pod> = Api::all(fake.client()?);
    let list = pods.list(&ListParams::default()).await?;
    let rv = list.metadata.resource_version.clone().context("no rv")?;
    let mut stream = pods
        .watch(&WatchParams::default().timeout(3), &rv)
        .await?
        .boxed();
    fake.apply(&pod("ns", "p2", "node-a", &[]))?;
    let mut bookmarks = Vec::new();
    let mut added = 0;
    while let Some(ev) = tokio::time::timeout(WAIT, stream.next()).await? {
        match ev? {
            WatchEvent::Bookmark(b) => bookmarks.push(b.metadata.resource_version),
            WatchEvent::Added(_) => added += 1,
            other => anyhow::bail!("unexpected {other:?}"),
        }
    }
    // timeoutSeconds=3 ended the stream.
    assert_eq!(added, 1);
    assert!(bookmarks.len() >= 5, "{bookmarks:?}");
    assert_eq!(
        bookmarks.last().unwrap(),
        &fake.state()?.resource_version.to_string()
    );
    // Streaming list: initial events then the initial-events-end bookmark.
    let mut s = pods
        .watch(&WatchParams::default().initial_events().timeout(1), "")
        .await?
        .boxed();
    let mut kinds = Vec::new();
    while let Some(ev) = s.next().await {
        kinds.push(match ev? {
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
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_resource_version_relists_and_converges() -> Result<()> {
    let fake = FakeApiServer::start()?;
    fake.apply(&pod("ns", "p1", "n", &[]))?;
    fake.apply(&pod("ns", "p2", "n", &[]))?;
    let store = spawn_reflector(fake.client()?, watcher::Config::default());
    store.wait_until_ready().await?;
    converge(&store, &["p1", "p2"]).await?;
    fake.wait_for_watches(1, WAIT)?;
    assert_eq!(fake.request_count("list", Some("/api/v1/pods"))?, 1);

    // Hold the re-watch back, change things, forget the history: the re-watch gets 410.
    fake.set_latency(Duration::from_millis(700))?;
    fake.abort_watches()?;
    fake.delete_obj::<Pod>(Some("ns"), "p1")?;
    fake.apply(&pod("ns", "p3", "n", &[]))?;
    fake.compact()?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    fake.set_latency(Duration::ZERO)?;
    converge(&store, &["p2", "p3"]).await?;
    let lists = fake.request_count("list", Some("/api/v1/pods"))?;
    assert!(lists >= 2, "no relist after 410 ({lists} lists)");
    // The raw 410 as kube-rs sees it.
    let pods: Api<Pod> = Api::all(fake.client()?);
    let mut s = pods.watch(&WatchParams::default(), "2").await?.boxed();
    match s.next().await.context("no event")?? {
        WatchEvent::Error(e) => {
            assert_eq!((e.code, e.reason.as_str()), (410, "Expired"));
            assert!(
                e.message.starts_with("too old resource version"),
                "{}",
                e.message
            );
        }
        other => anyhow::bail!("expected a 410 ERROR, got {other:?}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_selector_moves_objects_in_and_out() -> Result<()> {
    let fake = FakeApiServer::start()?;
    fake.apply(&pod("ns", "p", "n", &[("app", "a")]))?;
    let cfg = watcher::Config::default().labels("app in (a,b),tier!=db");
    let mut events = watcher(Api::<Pod>::all(fake.client()?), cfg).boxed();
    for _ in 0..3 {
        next_event(&mut events).await?;
    }
    // The watch starts on the next poll; it replays from the list's resource version.
    fake.patch_obj::<Pod>(
        Some("ns"),
        "p",
        json!({"metadata": {"labels": {"tier": "db"}}}),
    )?; // out
    fake.patch_obj::<Pod>(
        Some("ns"),
        "p",
        json!({"metadata": {"labels": {"tier": "web"}}}),
    )?; // in
    fake.patch_obj::<Pod>(
        Some("ns"),
        "p",
        json!({"metadata": {"labels": {"app": "c"}}}),
    )?; // out
    fake.patch_obj::<Pod>(Some("ns"), "p", json!({"metadata": {"labels": {"x": "y"}}}))?; // still out
    fake.patch_obj::<Pod>(
        Some("ns"),
        "p",
        json!({"metadata": {"labels": {"app": "b", "tier": null}}}),
    )?; // in
    let mut d = Vec::new();
    for _ in 0..4 {
        let ev = next_event(&mut events).await?;
        if let watcher::Event::Delete(p) = &ev {
            // The previous state, at the new resource version.
            assert!(p.labels().get("app").is_some_and(|a| a == "a"));
        }
        d.push(describe(&ev));
    }
    assert_eq!(d, ["delete p", "apply p", "delete p", "apply p"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried() -> Result<()> {
    let fake = FakeApiServer::start()?;
    fake.apply(&pod("ns", "p1", "n", &[]))?;
    fake.fail_next(3, 500)?;
    let store = spawn_reflector(fake.client()?, watcher::Config::default());
    converge(&store, &["p1"]).await?;
    let failed = fake.requests()?.iter().filter(|r| r.status == 500).count();
    assert_eq!(failed, 3);
    fake.wait_for_watches(1, WAIT)?;
    // A failing re-watch too.
    fake.fail_next(2, 503)?;
    fake.end_watches()?;
    fake.apply(&pod("ns", "p2", "n", &[]))?;
    converge(&store, &["p1", "p2"]).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_watches_recover() -> Result<()> {
    let fake = FakeApiServer::start()?;
    let store = spawn_reflector(fake.client()?, watcher::Config::default());
    store.wait_until_ready().await?;
    fake.wait_for_watches(1, WAIT)?;
    for i in 0..3 {
        let n = fake.abort_watches()?;
        assert_eq!(n, 1);
        fake.apply(&pod("ns", &format!("p{i}"), "n", &[]))?;
        fake.wait_for_watches(1, WAIT)?;
    }
    converge(&store, &["p0", "p1", "p2"]).await?;
    let watches = fake.request_count("watch", Some("/api/v1/pods"))?;
    assert!(watches >= 4, "{watches}");
    // Re-watches resume from the last resource version: no relist.
    assert_eq!(fake.request_count("list", None)?, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_recorded() -> Result<()> {
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};
    let fake = FakeApiServer::start()?;
    let p = fake.apply(&pod("ns", "p", "n", &[]))?;
    let p: Pod = serde_json::from_value(p)?;
    let client = fake.client()?;
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "iamlet".into(),
            instance: Some("node-a".into()),
        },
    );
    let ev = Event {
        type_: EventType::Warning,
        reason: "RoleForbidden".into(),
        note: Some("role app-a is not allowed in namespace ns".into()),
        action: "AssumeRole".into(),
        secondary: None,
    };
    recorder.publish(&ev, &p.object_ref(&())).await?;
    recorder.publish(&ev, &p.object_ref(&())).await?; // a series: PATCH
                                                      // A core/v1 event too.
    let core: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client, "ns");
    core.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"generateName": "p."},
            "involvedObject": {"kind": "Pod", "namespace": "ns", "name": "p"},
            "reason": "Legacy", "message": "m", "type": "Normal",
        }))?,
    )
    .await?;
    let evs = fake.events()?;
    assert_eq!(evs.len(), 3, "{evs:#?}");
    assert_eq!(evs[0]["apiVersion"], "events.k8s.io/v1");
    assert_eq!(evs[0]["reason"], "RoleForbidden");
    assert_eq!(evs[0]["regarding"]["name"], "p");
    assert_eq!(evs[1]["series"]["count"], 2);
    assert_eq!(evs[2]["apiVersion"], "v1");
    assert!(evs[2]["metadata"]["name"]
        .as_str()
        .unwrap()
        .starts_with("p."));
    assert_eq!(fake.request_count("create", None)?, 2);
    assert_eq!(fake.request_count("patch", None)?, 1);
    Ok(())
}

/// The binary in this process's network namespace: kube-rs through a kubeconfig, control over
/// the unix socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_with_unix_socket_control() -> Result<()> {
    let bin = iamlet_tests::kube_fake::binary();
    if !bin.is_file() {
        eprintln!(
            "SKIPPED: {} missing (cargo build -p iamlet-tests --bins)",
            bin.display()
        );
        return Ok(());
    }
    let fake = RemoteApiServer::start_local(Options::default())?;
    let dir = std::env::temp_dir().join(format!("iamlet-kubeconfig-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("kubeconfig");
    fake.write_kubeconfig(&path)?;
    assert_eq!(
        std::fs::read_to_string(&path)?,
        kubeconfig_yaml(&fake.url())
    );
    let kc = kube::config::Kubeconfig::read_from(&path)?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    let _ = std::fs::remove_dir_all(&dir);
    let client = Client::try_from(cfg)?;
    fake.apply(&pod("ns", "p1", "node-a", &[]))?;
    let store = spawn_reflector(
        client.clone(),
        watcher::Config::default().fields("spec.nodeName=node-a"),
    );
    converge(&store, &["p1"]).await?;
    fake.wait_for_watches(1, WAIT)?;
    fake.abort_watches()?;
    fake.apply(&pod("ns", "p2", "node-a", &[]))?;
    fake.patch_obj::<Pod>(Some("ns"), "p1", json!({"spec": {"nodeName": "node-b"}}))?;
    converge(&store, &["p2"]).await?;
    assert_eq!(
        fake.get_obj::<Pod>(Some("ns"), "p1")?.unwrap()["metadata"]["generation"],
        2
    );
    assert_eq!(fake.list_objs::<Pod>()?.len(), 2);
    assert!(fake.request_count("watch", None)? >= 2);
    Ok(())
}

/// The binary in a test node's network namespace (where the agent runs), reached with curl
/// there and controlled from here over the unix socket.
#[test]
fn binary_in_node() -> Result<()> {
    skip_unless_privileged!(Ok(()));
    let node = TestNode::new()?;
    let fake = FakeApiServer::start_in_node(&node)?;
    fake.apply(&pod("ns", "p1", "node-a", &[("app", "a")]))?;
    fake.apply(&pod("ns", "p2", "node-b", &[]))?;
    let url = format!(
        "{}/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-a",
        fake.url()
    );
    let out = node
        .run(&[
            "curl",
            "-sS",
            "--noproxy",
            "*",
            "-m",
            "10",
            "--fail-with-body",
            &url,
        ])?
        .ensure_success()?;
    let list: Value = serde_json::from_str(&out.stdout)?;
    assert_eq!(list["kind"], "PodList");
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1));
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .context("rv")?
        .to_string();
    fake.patch_obj::<Pod>(
        Some("ns"),
        "p1",
        json!({"metadata": {"labels": {"app": "b"}}}),
    )?;
    let url = format!(
        "{}/api/v1/pods?watch=true&timeoutSeconds=1&labelSelector=app%3Da&resourceVersion={rv}",
        fake.url()
    );
    let out = node
        .run(&["curl", "-sS", "--noproxy", "*", "-m", "10", &url])?
        .ensure_success()?;
    let lines: Vec<Value> = out
        .stdout
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(lines.len(), 1, "{}", out.stdout);
    assert_eq!(lines[0]["type"], "DELETED");
    assert_eq!(fake.request_count("watch", None)?, 1);
    let path = std::env::temp_dir().join(format!("iamlet-node-kubeconfig-{}", std::process::id()));
    fake.write_kubeconfig(&path)?;
    assert!(std::fs::read_to_string(&path)?.contains(&fake.url()));
    let _ = std::fs::remove_file(&path);
    drop(fake);
    Ok(())
}

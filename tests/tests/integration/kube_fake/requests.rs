//! Requests to the in-process fake API server with the kube-rs client: lists with field and
//! label selectors, gets, pagination, the other resources, discovery, and events.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_with_selectors_and_pagination() {
    let fake = FakeApiServer::start().expect("starting the fake API server");
    for i in 0..5 {
        fake.apply(&pod("ns1", &format!("a{i}"), "node-a", &[("app", "a")]))
            .unwrap_or_else(|e| panic!("applying pod ns1/a{i}: {e:#}"));
    }
    fake.apply(&pod("ns2", "b0", "node-b", &[("app", "b"), ("tier", "db")]))
        .expect("applying pod ns2/b0");
    fake.apply(&pod("ns2", "c0", "", &[]))
        .expect("applying pod ns2/c0");
    let client = fake.client().expect("kube client for the fake API server");
    let pods: Api<Pod> = Api::all(client.clone());

    let on_a = pods
        .list(&ListParams::default().fields("spec.nodeName=node-a"))
        .await
        .expect("listing pods with fieldSelector spec.nodeName=node-a");
    assert_eq!(on_a.items.len(), 5);
    assert!(on_a.items.iter().all(|p| p.metadata.uid.is_some()
        && p.metadata.creation_timestamp.is_some()
        && p.metadata.generation == Some(1)));
    let not_a = pods
        .list(&ListParams::default().fields("spec.nodeName!=node-a"))
        .await
        .expect("listing pods with fieldSelector spec.nodeName!=node-a");
    let got: BTreeSet<_> = not_a
        .items
        .iter()
        .map(kube::ResourceExt::name_any)
        .collect();
    assert_eq!(got, BTreeSet::from(["b0".to_string(), "c0".to_string()]));
    let unscheduled = pods
        .list(&ListParams::default().fields("spec.nodeName="))
        .await
        .expect("listing pods with fieldSelector spec.nodeName=");
    assert_eq!(unscheduled.items.len(), 1);
    let one = pods
        .list(&ListParams::default().fields("metadata.name=a3,metadata.namespace=ns1"))
        .await
        .expect("listing pods with fieldSelector metadata.name=a3,metadata.namespace=ns1");
    assert_eq!(one.items[0].name_any(), "a3");
    let ns2: Api<Pod> = Api::namespaced(client.clone(), "ns2");
    assert_eq!(
        ns2.list(&ListParams::default())
            .await
            .expect("listing pods in ns2")
            .items
            .len(),
        2
    );
    assert_eq!(
        ns2.get("b0").await.expect("getting pod b0").labels()["tier"],
        "db"
    );
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
        let l = pods
            .list(&ListParams::default().labels(sel))
            .await
            .unwrap_or_else(|e| panic!("listing pods with labelSelector {sel}: {e}"));
        assert_eq!(l.items.len(), want, "labelSelector {sel}");
    }

    // Pagination: consistent pages at the first page's resource version.
    let first = pods
        .list(&ListParams::default().limit(3))
        .await
        .expect("listing the first page");
    assert_eq!(first.items.len(), 3);
    let token = first.metadata.continue_.clone().expect("no continue token");
    assert_eq!(first.metadata.remaining_item_count, Some(4));
    fake.apply(&pod("aaa", "early", "node-a", &[]))
        .expect("applying pod aaa/early"); // sorts first; not in this list
    fake.delete_obj::<Pod>(Some("ns2"), "c0")
        .expect("deleting pod c0"); // still in this list
    let second = pods
        .list(&ListParams::default().limit(3).continue_token(&token))
        .await
        .expect("listing the second page");
    let third_token = second.metadata.continue_.clone().expect("no second token");
    let third = pods
        .list(&ListParams::default().limit(3).continue_token(&third_token))
        .await
        .expect("listing the third page");
    let all: Vec<String> = first
        .items
        .iter()
        .chain(&second.items)
        .chain(&third.items)
        .map(kube::ResourceExt::name_any)
        .collect();
    assert_eq!(all, ["a0", "a1", "a2", "a3", "a4", "b0", "c0"]);
    assert_eq!(third.metadata.continue_.as_deref().unwrap_or(""), "");
    assert_eq!(
        second.metadata.resource_version,
        first.metadata.resource_version
    );

    // A compacted continue token is 410 Expired.
    fake.compact().expect("compacting the history");
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
    })
    .expect("applying namespace ns1");
    fake.apply(&ServiceAccount {
        metadata: ObjectMeta {
            name: Some("sa1".into()),
            namespace: Some("ns1".into()),
            ..Default::default()
        },
        ..Default::default()
    })
    .expect("applying service account ns1/sa1");
    assert_eq!(
        Api::<Namespace>::all(client.clone())
            .list(&ListParams::default())
            .await
            .expect("listing namespaces")
            .items
            .len(),
        1
    );
    let sas = Api::<ServiceAccount>::namespaced(client.clone(), "ns1")
        .list(&ListParams::default())
        .await
        .expect("listing service accounts in ns1");
    assert_eq!(sas.items[0].name_any(), "sa1");
    let v = client
        .apiserver_version()
        .await
        .expect("the API server version");
    assert_eq!(v.minor, "33");
    let groups = client
        .list_core_api_versions()
        .await
        .expect("the core API versions");
    assert_eq!(groups.versions, ["v1"]);
    let res = client
        .list_core_api_resources("v1")
        .await
        .expect("the core API resources");
    assert!(res.resources.iter().any(|r| r.name == "pods"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_recorded() {
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};
    let fake = FakeApiServer::start().expect("starting the fake API server");
    let p = fake
        .apply(&pod("ns", "p", "n", &[]))
        .expect("applying pod ns/p");
    let p: Pod = serde_json::from_value(p).expect("the applied pod as a Pod");
    let client = fake.client().expect("kube client for the fake API server");
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
    recorder
        .publish(&ev, &p.object_ref(&()))
        .await
        .expect("publishing event");
    recorder
        .publish(&ev, &p.object_ref(&()))
        .await
        .expect("publishing event"); // a series: PATCH
                                     // A core/v1 event too.
    let core: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client, "ns");
    core.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"generateName": "p."},
            "involvedObject": {"kind": "Pod", "namespace": "ns", "name": "p"},
            "reason": "Legacy", "message": "m", "type": "Normal",
        }))
        .expect("a core/v1 Event from JSON"),
    )
    .await
    .expect("creating a core/v1 event");
    let evs = fake.events().expect("the recorded events");
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
    assert_eq!(
        fake.request_count("create", None)
            .expect("counting create requests"),
        2
    );
    assert_eq!(
        fake.request_count("patch", None)
            .expect("counting patch requests"),
        1
    );
}

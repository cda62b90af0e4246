//! The fake Kubernetes API server (`iamlet_tests::kube_fake`) against the real kube-rs client,
//! watcher and reflector. All but `binary::binary_in_node` need no privileges.
//!
//! `requests.rs`: lists, gets, pagination, discovery and events; `watch.rs`: watches, the
//! watcher and the reflector, through errors and 410; `binary.rs`: the server as its own
//! process (`fake-kube-apiserver`), controlled over its unix socket.

mod binary;
mod requests;
mod watch;

use iamlet_tests::scaled;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
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
    let want: BTreeSet<String> = want.iter().map(std::string::ToString::to_string).collect();
    let deadline = Instant::now() + scaled(WAIT);
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

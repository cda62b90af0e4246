//! The fake API server as its own process (`fake-kube-apiserver`), controlled over its unix
//! socket: from this process, and in a test node's network namespace.

use super::*;

/// The binary in this process's network namespace: kube-rs through a kubeconfig, control over
/// the unix socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_with_unix_socket_control() {
    let bin = iamlet_tests::kube_fake::binary();
    if !bin.is_file() {
        eprintln!(
            "SKIPPED: {} missing (cargo build -p iamlet-tests --bins)",
            bin.display()
        );
        return;
    }
    let fake = RemoteApiServer::start_local(Options::default())
        .expect("starting the fake API server binary");
    let dir = std::env::temp_dir().join(format!("iamlet-kubeconfig-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("creating the kubeconfig directory");
    let path = dir.join("kubeconfig");
    fake.write_kubeconfig(&path)
        .expect("writing the kubeconfig");
    assert_eq!(
        std::fs::read_to_string(&path).expect("reading the written kubeconfig"),
        kubeconfig_yaml(&fake.url())
    );
    let kc = kube::config::Kubeconfig::read_from(&path).expect("reading the kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .expect("kube config from the kubeconfig");
    let _ = std::fs::remove_dir_all(&dir);
    let client = Client::try_from(cfg).expect("kube client from the kubeconfig");
    fake.apply(&pod("ns", "p1", "node-a", &[]))
        .expect("applying pod ns/p1");
    let store = spawn_reflector(
        client.clone(),
        watcher::Config::default().fields("spec.nodeName=node-a"),
    );
    converge(&store, &["p1"])
        .await
        .expect("store converging on [p1]");
    fake.wait_for_watches(1, WAIT).expect("waiting for a watch");
    fake.abort_watches().expect("aborting the watches");
    fake.apply(&pod("ns", "p2", "node-a", &[]))
        .expect("applying pod ns/p2");
    fake.patch_obj::<Pod>(Some("ns"), "p1", json!({"spec": {"nodeName": "node-b"}}))
        .expect("patching pod p1");
    converge(&store, &["p2"])
        .await
        .expect("store converging on [p2]");
    assert_eq!(
        fake.get_obj::<Pod>(Some("ns"), "p1")
            .expect("getting pod p1")
            .unwrap()["metadata"]["generation"],
        2
    );
    assert_eq!(
        fake.list_objs::<Pod>()
            .expect("listing the stored objects")
            .len(),
        2
    );
    assert!(
        fake.request_count("watch", None)
            .expect("counting watch requests")
            >= 2
    );
}

/// The binary in a test node's network namespace (where the agent runs), reached with curl
/// there and controlled from here over the unix socket.
#[test]
fn binary_in_node() {
    skip_unless_privileged!();
    let node = TestNode::new().expect("creating the test node");
    let fake =
        FakeApiServer::start_in_node(&node).expect("starting the fake API server in the node");
    fake.apply(&pod("ns", "p1", "node-a", &[("app", "a")]))
        .expect("applying pod ns/p1");
    fake.apply(&pod("ns", "p2", "node-b", &[]))
        .expect("applying pod ns/p2");
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
        ])
        .expect("running the list with curl in the node")
        .ensure_success()
        .expect("the list with curl in the node");
    let list: Value = serde_json::from_str(&out.stdout).expect("parsing the JSON output");
    assert_eq!(list["kind"], "PodList");
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1));
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .expect("no resourceVersion in the list")
        .to_string();
    fake.patch_obj::<Pod>(
        Some("ns"),
        "p1",
        json!({"metadata": {"labels": {"app": "b"}}}),
    )
    .expect("patching pod p1");
    let url = format!(
        "{}/api/v1/pods?watch=true&timeoutSeconds=1&labelSelector=app%3Da&resourceVersion={rv}",
        fake.url()
    );
    let out = node
        .run(&["curl", "-sS", "--noproxy", "*", "-m", "10", &url])
        .expect("running the watch with curl in the node")
        .ensure_success()
        .expect("the watch with curl in the node");
    let lines: Vec<Value> = out
        .stdout
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .expect("watch lines as JSON");
    assert_eq!(lines.len(), 1, "{}", out.stdout);
    assert_eq!(lines[0]["type"], "DELETED");
    assert_eq!(
        fake.request_count("watch", None)
            .expect("counting watch requests"),
        1
    );
    let path = std::env::temp_dir().join(format!("iamlet-node-kubeconfig-{}", std::process::id()));
    fake.write_kubeconfig(&path)
        .expect("writing the kubeconfig");
    assert!(std::fs::read_to_string(&path)
        .expect("reading the written kubeconfig")
        .contains(&fake.url()));
    let _ = std::fs::remove_file(&path);
    drop(fake);
}

//! The loaded side's cluster: namespaces, service accounts, pods on this node and elsewhere,
//! roles spread over them, and the static credentials for those roles.

use super::{
    ensure, json, Context, KubeControl, Pod, RemoteApiServer, Result, Value, ACCOUNT,
    ACCOUNTS_PER_NAMESPACE, NAMESPACES, NODE, OTHER_NODES, OTHER_NODE_PODS, ROLES,
};

/// One pod of the loaded cluster.
pub(super) struct PodDesc {
    index: usize,
    namespace: String,
    name: String,
    uid: String,
    pub(super) role: String,
    account: String,
    node: String,
}

impl PodDesc {
    pub(super) fn on_node(index: usize) -> PodDesc {
        Self::new(index, NODE.to_owned(), 0)
    }

    fn elsewhere(index: usize) -> PodDesc {
        Self::new(index, format!("node-{}", 2 + index % OTHER_NODES), 1)
    }

    fn new(index: usize, node: String, group: u32) -> PodDesc {
        let role = index % ROLES;
        let ns = role % NAMESPACES;
        let svc = role / NAMESPACES;
        let hash = format!(
            "{:010x}",
            (role as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        )[..10]
            .to_owned();
        PodDesc {
            index,
            namespace: namespace_name(ns),
            name: format!(
                "svc-{svc}-{hash}-{:05x}",
                (index + 1000 * group as usize) * 7919 % 0xfffff
            ),
            uid: format!("5f1d{group:04x}-{role:04x}-4000-8000-{index:012x}"),
            role: role_name(role),
            account: format!("svc-{svc}"),
            node,
        }
    }

    /// The container's cgroup below the pods cgroup, as the kubelet's systemd driver lays it
    /// out (QoS classes in turn).
    pub(super) fn cgroup(&self) -> String {
        let uid = self.uid.replace('-', "_");
        let cid = format!("{:064x}", self.index + 1);
        match self.qos() {
            "Burstable" => format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice/cri-containerd-{cid}.scope"
            ),
            "BestEffort" => format!(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid}.slice/cri-containerd-{cid}.scope"
            ),
            _ => format!("kubepods.slice/kubepods-pod{uid}.slice/cri-containerd-{cid}.scope"),
        }
    }

    fn qos(&self) -> &'static str {
        ["Burstable", "BestEffort", "Guaranteed"][self.index % 3]
    }

    /// The pod as a ReplicaSet-made pod looks in a list answer (without `managedFields`).
    fn json(&self) -> Value {
        let (ns, name, role) = (&self.namespace, &self.name, &self.role);
        let app = &self.account;
        let rs = name.rsplit_once('-').map_or(name.as_str(), |(rs, _)| rs);
        let hash = rs.rsplit_once('-').map_or("", |(_, h)| h);
        let image = format!("{ACCOUNT}.dkr.ecr.eu-west-1.amazonaws.com/{ns}/{app}:1.4.2");
        let cid = format!("containerd://{:064x}", self.index + 1);
        let resources = match self.qos() {
            "Guaranteed" => json!({"requests": {"cpu": "250m", "memory": "256Mi"},
                                   "limits": {"cpu": "250m", "memory": "256Mi"}}),
            "Burstable" => json!({"requests": {"cpu": "100m", "memory": "128Mi"},
                                  "limits": {"memory": "256Mi"}}),
            _ => json!({}),
        };
        let ip = format!("10.1.{}.{}", self.index / 200, 10 + self.index % 200);
        let t = "2025-11-20T09:14:07Z";
        let conditions: Vec<Value> = [
            "PodReadyToStartContainers",
            "Initialized",
            "Ready",
            "ContainersReady",
            "PodScheduled",
        ]
        .iter()
        .map(|c| json!({"type": c, "status": "True", "lastTransitionTime": t}))
        .collect();
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": name, "namespace": ns, "uid": self.uid, "generateName": format!("{rs}-"),
                "labels": {
                    "app.kubernetes.io/name": app, "app.kubernetes.io/part-of": ns,
                    "app.kubernetes.io/version": "1.4.2", "pod-template-hash": hash,
                },
                "annotations": {
                    "iam.amazonaws.com/role": role,
                    "kubectl.kubernetes.io/restartedAt": "2025-11-19T16:02:44Z",
                    "prometheus.io/scrape": "true", "prometheus.io/port": "9090",
                },
                "ownerReferences": [{
                    "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs,
                    "uid": format!("7e2a0000-0000-4000-8000-{:012x}", self.index % ROLES),
                    "controller": true, "blockOwnerDeletion": true,
                }],
            },
            "spec": {
                "nodeName": self.node, "serviceAccountName": self.account,
                "restartPolicy": "Always", "terminationGracePeriodSeconds": 30,
                "dnsPolicy": "ClusterFirst", "schedulerName": "default-scheduler",
                "enableServiceLinks": true, "preemptionPolicy": "PreemptLowerPriority",
                "priority": 0,
                "securityContext": {"runAsNonRoot": true, "fsGroup": 2000},
                "containers": [{
                    "name": "app", "image": image, "imagePullPolicy": "IfNotPresent",
                    "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"},
                              {"name": "metrics", "containerPort": 9090, "protocol": "TCP"}],
                    "env": [{"name": "AWS_REGION", "value": "eu-west-1"},
                            {"name": "LOG_LEVEL", "value": "info"},
                            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}}],
                    "resources": resources,
                    "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http", "scheme": "HTTP"},
                                       "periodSeconds": 10, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3},
                    "livenessProbe": {"httpGet": {"path": "/livez", "port": "http", "scheme": "HTTP"},
                                      "periodSeconds": 10, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3},
                    "volumeMounts": [{"name": "kube-api-access-x7k2p", "readOnly": true,
                                      "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
                    "terminationMessagePath": "/dev/termination-log",
                    "terminationMessagePolicy": "File",
                }],
                "volumes": [{"name": "kube-api-access-x7k2p", "projected": {"defaultMode": 420, "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
                ]}}],
                "tolerations": [
                    {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                    {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                ],
            },
            "status": {
                "phase": "Running", "qosClass": self.qos(), "hostIP": "10.0.12.34",
                "podIP": ip, "podIPs": [{"ip": ip}], "startTime": t,
                "conditions": conditions,
                "containerStatuses": [{
                    "name": "app", "ready": true, "started": true, "restartCount": 0,
                    "image": image, "containerID": cid,
                    "imageID": format!("{image}@sha256:{:064x}", self.index % ROLES),
                    "state": {"running": {"startedAt": t}},
                }],
            },
        })
    }
}

fn namespace_name(ns: usize) -> String {
    format!("team-{ns:02}")
}

/// Role `r`'s name: it belongs to namespace `r % NAMESPACES`.
fn role_name(r: usize) -> String {
    format!("{}-svc-{}", namespace_name(r % NAMESPACES), r / NAMESPACES)
}

fn role_arn(role: &str) -> String {
    format!("arn:aws:iam::{ACCOUNT}:role/{role}")
}

/// A session token as long as a real STS one (~700 characters), different per role.
fn session_token(seed: usize) -> String {
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    (0..700u64)
        .map(|i| {
            let x = (i + 1009 * seed as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            alphabet[(x >> 58) as usize % alphabet.len()] as char
        })
        .collect()
}

/// The agent's static credentials: all [`ROLES`] roles.
pub(super) fn credentials_yaml() -> String {
    let mut out = String::from("credentials:\n");
    for r in 0..ROLES {
        out.push_str(&format!(
            "  {}:\n    access_key_id: ASIABENCH{r:011}\n    secret_access_key: wJalrXUtnFEMI/K7MDENG/bPxRfiCY{r:010}\n    session_token: {}\n",
            role_arn(&role_name(r)),
            session_token(r)
        ));
    }
    out
}

/// Publishes the loaded cluster; answers the bytes of JSON written.
pub(super) fn publish(api: &RemoteApiServer, pods: &[PodDesc]) -> Result<usize> {
    let mut bytes = 0;
    let mut apply = |obj: Value| -> Result<()> {
        bytes += obj.to_string().len();
        api.apply(&obj)?;
        Ok(())
    };
    for ns in 0..NAMESPACES {
        let name = namespace_name(ns);
        apply(json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {
                "name": name,
                "labels": {"kubernetes.io/metadata.name": name, "team": name},
                "annotations": {"iam.amazonaws.com/permitted": format!("arn:aws:iam::{ACCOUNT}:role/{name}-.*")},
            },
        }))?;
        for a in 0..ACCOUNTS_PER_NAMESPACE {
            let mut meta = json!({"name": "default", "namespace": name});
            if a > 0 {
                let svc = a - 1;
                meta = json!({
                    "name": format!("svc-{svc}"), "namespace": name,
                    "labels": {"app.kubernetes.io/name": format!("svc-{svc}")},
                    "annotations": {"eks.amazonaws.com/role-arn": role_arn(&format!("{name}-svc-{svc}"))},
                });
            }
            apply(json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta}))?;
        }
    }
    for p in pods {
        let obj = p.json();
        // What the agent's watch will parse.
        serde_json::from_value::<Pod>(obj.clone()).context("pod JSON is not a valid Pod")?;
        apply(obj)?;
    }
    for i in 0..OTHER_NODE_PODS {
        apply(PodDesc::elsewhere(i).json())?;
    }
    let stored = api.list_objs::<Pod>()?;
    let here = stored
        .iter()
        .filter(|p| p["spec"]["nodeName"] == NODE)
        .count();
    ensure!(
        here == pods.len() && stored.len() == pods.len() + OTHER_NODE_PODS,
        "the API server holds {} pods, {here} on {NODE}",
        stored.len()
    );
    Ok(bytes)
}

//! `cargo xtask demo`: the main job on this machine. moto plays STS on the node; iamlet runs
//! in standalone mode with a bindings file that gives two fake pods two roles; inside each pod,
//! plain boto3 with no AWS settings at all asks STS who it is, and gets its own role, served
//! through the kernel's redirect of 169.254.169.254. Cleans up after itself.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use iamlet_tests::clients::python;
use iamlet_tests::{
    http, require_privileges, run_with_timeout, sts_available, Agent, FakePod, Family, MotoSts,
    TestNode, NODE_PROXY_V4, PROXY_PORT,
};

const ACCOUNT: &str = "123456789012";
const PODS: [(&str, &str, &str); 2] = [
    (
        "web",
        "7c0f5e3a-2b1d-4e8f-9a6b-3d2c1e0f9a8b",
        "web-frontend",
    ),
    (
        "batch",
        "e4d3c2b1-a0f9-4e8d-8c7b-6a5f4e3d2c1b",
        "nightly-batch",
    ),
];

/// What runs in each pod: boto3's default credential chain (which ends at the metadata
/// service), then GetCallerIdentity. The endpoint and region are arguments, not AWS_* settings.
const WHOAMI_PY: &str = r#"
import sys, boto3
session = boto3.Session()
creds = session.get_credentials()
sts = session.client("sts", endpoint_url=sys.argv[1], region_name="us-east-1")
who = sts.get_caller_identity()
print(f"  credentials from: {creds.method}, access key {creds.access_key[:8]}...")
print(f"  sts:GetCallerIdentity -> {who['Arn']}")
"#;

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn pod_slice(uid: &str) -> String {
    format!(
        "kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
        uid.replace('-', "_")
    )
}

fn run_in_pod(pod: &FakePod, endpoint: &str, home: &std::path::Path) -> Result<String> {
    let mut cmd = pod.command(python());
    cmd.args(["-c", WHOAMI_PY, endpoint])
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", home)
        .current_dir(home);
    let out = run_with_timeout(&mut cmd, std::time::Duration::from_secs(60))?;
    if !out.success() {
        bail!("boto3 in pod {} failed:\n{}", pod.name(), out.stderr);
    }
    Ok(out.stdout)
}

fn main() -> Result<()> {
    if let Err(reason) = require_privileges() {
        bail!("the demo needs what the privileged tests need: {reason}");
    }
    sts_available().map_err(anyhow::Error::msg)?;
    let dir = TempDir(std::env::temp_dir().join(format!("iamlet-demo-{}", std::process::id())));
    std::fs::create_dir_all(dir.0.join("home"))?;

    let node = TestNode::new()?;
    println!(
        "node: network namespace {}, pods cgroup {}",
        node.netns_name(),
        node.pods_cgroup().display()
    );
    let moto = MotoSts::start(&node)?;
    println!(
        "STS: moto on {} (node namespace), up in {:.1?}",
        moto.addr(),
        moto.startup()
    );

    let mut bindings = String::from("bindings:\n");
    for (_, uid, role) in PODS {
        bindings.push_str(&format!(
            "  - cgroup: \"{}\"\n    role: arn:aws:iam::{ACCOUNT}:role/{role}\n",
            pod_slice(uid)
        ));
    }
    let bindings_file = dir.0.join("bindings.yaml");
    std::fs::write(&bindings_file, &bindings)?;
    println!("\nbindings file:\n{}", bindings.trim_end());

    let mut pods = Vec::new();
    for (i, (name, uid, _)) in PODS.iter().enumerate() {
        let path = format!("{}/cri-containerd-{:064x}.scope", pod_slice(uid), i + 1);
        pods.push((*name, node.add_pod(&path)?));
    }
    let endpoint = moto.endpoint();
    let mut agent = Agent::start(
        &node,
        &[
            "--on-exit",
            "detach",
            "--bindings",
            bindings_file.to_str().context("utf-8 path")?,
            "--sts-endpoint",
            &endpoint,
            "--region",
            "us-east-1",
            "--upstream",
            "off",
            "--log",
            "info",
        ],
    )?;
    println!(
        "\niamlet attached to {} and listening on {NODE_PROXY_V4}:{PROXY_PORT}",
        node.pods_cgroup().display()
    );

    for (name, pod) in &pods {
        let ip = pod.ipv4().map(|ip| ip.to_string()).unwrap_or_default();
        println!("\npod {name} (ip {ip}, no AWS_* variables, no ~/.aws): python3 -c 'boto3 ... get_caller_identity()'");
        print!(
            "{}",
            run_in_pod(pod, &moto.pod_endpoint(), &dir.0.join("home"))?
        );
    }

    let outside = node.add_outside_netns("outside")?;
    let answer = http(
        outside.command("python3"),
        Family::V4,
        &NODE_PROXY_V4.to_string(),
        PROXY_PORT,
        "GET",
        "/latest/meta-data/iam/security-credentials/",
    )?;
    println!(
        "\na process outside the pods cgroup asking the proxy directly gets {}: {}",
        answer.status,
        answer.body.trim()
    );
    let status = agent.stop()?;
    println!("\niamlet stopped ({status}); programs detached; fake pods, moto and files removed.");
    Ok(())
}

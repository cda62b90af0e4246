//! `cargo xtask demo`: a fake node with two pods laid out like the kubelet's systemd cgroup
//! driver does, the real agent attached to it, and what each pod gets when it asks the
//! metadata address who it is. Cleans up after itself.

use anyhow::{bail, Result};
use iamlet_tests::{http, require_privileges, Agent, Family, TestNode, PROXY_PORT};

const PODS: [(&str, &str); 2] = [
    ("web", "7c0f5e3a-2b1d-4e8f-9a6b-3d2c1e0f9a8b"),
    ("batch", "e4d3c2b1-a0f9-4e8d-8c7b-6a5f4e3d2c1b"),
];

fn main() -> Result<()> {
    if let Err(reason) = require_privileges() {
        bail!("the demo needs what the privileged tests need: {reason}");
    }
    let node = TestNode::new()?;
    println!(
        "node netns {}, pods cgroup {}",
        node.netns_name(),
        node.pods_cgroup().display()
    );
    let mut pods = Vec::new();
    for (i, (name, uid)) in PODS.iter().enumerate() {
        let qos = if i == 0 { "burstable" } else { "besteffort" };
        let rel = format!(
            "kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{}.slice/cri-containerd-{:064x}.scope",
            uid.replace('-', "_"),
            i + 1
        );
        pods.push((*name, node.add_pod(&rel)?));
    }
    let agent = Agent::start(&node, &[])?;
    println!(
        "iamlet is attached to {} and listens on {PROXY_PORT}\n",
        node.pods_cgroup().display()
    );
    for (name, pod) in &pods {
        let ip = pod.ipv4().map(|ip| ip.to_string()).unwrap_or_default();
        println!("pod {name} (ip {ip}, cgroup inode {}):", pod.cgroup_id());
        println!("  $ curl http://169.254.169.254/iamlet/whoami");
        let out = pod
            .run(&[
                "curl",
                "-s",
                "-m",
                "5",
                "http://169.254.169.254/iamlet/whoami",
            ])?
            .ensure_success()?;
        let value: serde_json::Value = serde_json::from_str(&out.stdout)?;
        println!(
            "  {}\n",
            serde_json::to_string_pretty(&value)?.replace('\n', "\n  ")
        );
    }
    let outside = node.add_outside_netns("outside")?;
    let answer = http(
        outside.command("python3"),
        Family::V4,
        &iamlet_tests::NODE_PROXY_V4.to_string(),
        PROXY_PORT,
        "GET",
        "/iamlet/whoami",
    )?;
    println!(
        "a process outside the pods cgroup connecting straight to the proxy gets {}: {}",
        answer.status,
        answer.body.trim()
    );
    let status = agent.stop()?;
    println!("\niamlet stopped ({status}); programs detached, fake pods removed.");
    Ok(())
}

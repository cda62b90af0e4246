//! A kernel that lacks what iamlet needs is refused at start, by name: the agent runs under a
//! seccomp filter that answers one `bpf(2)` command with `EINVAL`, as a kernel without that
//! command does (no kernel older than 5.10 can be fetched here to show it for real), and must
//! exit naming the missing feature and the kernel, having attached nothing.

use iamlet_tests::{skip_unless_privileged, PodRole, StaticRoles, TestNode, NODE_PROXY_V4};

const A: PodRole = PodRole {
    uid: "6b1f0e2d-3c4b-4a59-8867-7f8e9d0c1b2a",
    role: "arn:aws:iam::123456789012:role/app-a",
    access_key: "ASIAKERNELEXAMPLE001",
};

/// `enum bpf_cmd`.
const BPF_PROG_LOAD: u32 = 5;
const BPF_LINK_CREATE: u32 = 28;

/// Runs the agent on `node` with `bpf_cmd` denied; gives its exit code and stderr.
fn agent_without(node: &TestNode, roles: &StaticRoles, bpf_cmd: u32) -> (Option<i32>, String) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/deny_bpf_command.py");
    let pins = std::env::temp_dir().join(format!("iamlet-kernel-test-{}", std::process::id()));
    let mut cmd = node.command("/usr/bin/python3");
    cmd.arg(script)
        .arg(bpf_cmd.to_string())
        .arg("--")
        .arg(iamlet_tests::agent::agent_bin())
        .arg("--cgroup")
        .arg(node.pods_cgroup())
        .args(["--listen-v4", &format!("{NODE_PROXY_V4}:18181")])
        .args([
            "--admin-listen",
            "127.0.0.1:9829",
            "--handover-socket",
            "off",
        ])
        .arg("--bpffs-dir")
        .arg(&pins)
        .args(roles.args())
        .env("AWS_EC2_METADATA_DISABLED", "true");
    let out = iamlet_tests::run_with_timeout(&mut cmd, std::time::Duration::from_secs(20))
        .expect("running the agent under the seccomp filter");
    assert!(!pins.exists(), "pins made at {}", pins.display());
    (out.status.code(), out.stderr)
}

#[test]
fn a_kernel_without_what_iamlet_needs_is_refused_by_name() {
    skip_unless_privileged!();
    let node = TestNode::new().expect("creating the test node");
    let roles = StaticRoles::write(&[A]).expect("writing the static roles");
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");

    let (code, err) = agent_without(&node, &roles, BPF_LINK_CREATE);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!("this kernel (Linux {})", release.trim()))
            && err.contains("lacks bpf_link for cgroup_skb/egress programs (BPF_LINK_CREATE)")
            && err.contains("needs Linux 5.7 or later"),
        "{err}"
    );

    let (code, err) = agent_without(&node, &roles, BPF_PROG_LOAD);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("lacks cgroup_skb/egress programs") && err.contains("needs Linux 4.10"),
        "{err}"
    );

    // Nothing was attached to the pods' cgroup.
    let shown = node
        .run(&[
            "bpftool",
            "cgroup",
            "show",
            &node.pods_cgroup().display().to_string(),
        ])
        .expect("bpftool cgroup show");
    assert!(shown.stdout.trim().is_empty(), "{}", shown.stdout);
}

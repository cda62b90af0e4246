//! The pod every `bench imds` and `bench requests` run measures, and the agent serving it: one
//! role bound to the pod's cgroup, static credentials of a realistic size, no upstream and no
//! rate limit. Also the one-request client (curl inside the pod) that checks what it serves.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use iamlet_tests::{require_privileges, run_with_timeout, Agent, FakePod, TestNode};

use crate::wrk::Placement;

/// The benchmark pod's UID; its cgroup is laid out as the kubelet's systemd driver does.
pub(crate) const BENCH_POD_UID: &str = "3f2e1d0c-b9a8-4765-8432-10fedcba9876";
pub(crate) const BENCH_ROLE: &str = "bench-app";
pub(crate) const BENCH_ROLE_ARN: &str = "arn:aws:iam::123456789012:role/bench-app";
pub(crate) const TOKEN_PATH: &str = "/latest/api/token";
pub(crate) const ROLES_PATH: &str = "/latest/meta-data/iam/security-credentials/";
pub(crate) const TTL_HEADER: &str = "X-aws-ec2-metadata-token-ttl-seconds: 21600";

pub(crate) fn creds_path() -> String {
    format!("{ROLES_PATH}{BENCH_ROLE}")
}

/// A session token as long as a real STS one (~700 characters), so the credentials JSON has
/// a realistic size.
pub(crate) fn bench_session_token() -> String {
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    (0..700u32)
        .map(|i| alphabet[(i.wrapping_mul(2_654_435_761) >> 7) as usize % alphabet.len()] as char)
        .collect()
}

/// A private directory under the temp dir, removed on drop.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new(label: &str) -> Result<TempDir> {
        let dir = std::env::temp_dir().join(format!("iamlet-bench-{label}-{}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(TempDir(dir))
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One request from inside the pod with curl; returns the status and the exact body bytes.
fn pod_fetch(
    pod: &FakePod,
    method: &str,
    url: &str,
    headers: &[&str],
    out: &Path,
) -> Result<(u16, Vec<u8>)> {
    let mut cmd = pod.command("curl");
    cmd.args(["-sS", "-m", "5", "-w", "%{http_code}", "-X", method, "-o"])
        .arg(out);
    for h in headers {
        cmd.args(["-H", h]);
    }
    cmd.arg(url);
    let run = run_with_timeout(&mut cmd, Duration::from_secs(10))?.ensure_success()?;
    let status = run
        .stdout
        .trim()
        .parse()
        .with_context(|| format!("curl {method} {url}: status {:?}", run.stdout))?;
    let body = std::fs::read(out).with_context(|| format!("reading {}", out.display()))?;
    Ok((status, body))
}

/// The three bodies of the SDK flow from one server.
pub(crate) struct Bodies {
    pub(crate) token: Vec<u8>,
    pub(crate) roles: Vec<u8>,
    pub(crate) creds: Vec<u8>,
}

/// PUT token, GET role list, GET credentials (with the token) from `base`, inside the pod;
/// each must answer 200.
pub(crate) fn fetch_flow(pod: &FakePod, base: &str, dir: &TempDir, tag: &str) -> Result<Bodies> {
    let (status, token) = pod_fetch(
        pod,
        "PUT",
        &format!("{base}{TOKEN_PATH}"),
        &[TTL_HEADER],
        &dir.path(&format!("{tag}-token")),
    )?;
    ensure!(status == 200, "{tag}: PUT {TOKEN_PATH} answered {status}");
    let token_text = String::from_utf8(token.clone()).context("token is not text")?;
    let with = format!("X-aws-ec2-metadata-token: {token_text}");
    let mut bodies = Bodies {
        token,
        roles: Vec::new(),
        creds: Vec::new(),
    };
    for (path, slot, name) in [
        (ROLES_PATH.to_owned(), &mut bodies.roles, "roles"),
        (creds_path(), &mut bodies.creds, "creds"),
    ] {
        let (status, body) = pod_fetch(
            pod,
            "GET",
            &format!("{base}{path}"),
            &[&with],
            &dir.path(&format!("{tag}-{name}")),
        )?;
        ensure!(
            status == 200,
            "{tag}: GET {path} answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
        *slot = body;
    }
    Ok(bodies)
}

/// The agent's flags in this benchmark: static credentials for the pod's role, no rate limit,
/// no upstream, warnings and the audit log (at info, as by default).
pub(crate) fn agent_args(dir: &TempDir) -> Vec<String> {
    vec![
        "--bindings".into(),
        dir.path("bindings.yaml").display().to_string(),
        "--static-credentials".into(),
        dir.path("creds.yaml").display().to_string(),
        "--log".into(),
        "warn,iamlet::audit=info".into(),
        "--rate-limit".into(),
        "0".into(),
        "--upstream".into(),
        "off".into(),
    ]
}

/// What starts the agent `bin`: itself, or a script that pins it to the server's CPU.
pub(crate) fn agent_launcher(
    dir: &TempDir,
    bin: &Path,
    placement: Placement,
    tag: &str,
) -> Result<PathBuf> {
    let Some(cpus) = placement.server_cpus() else {
        return Ok(bin.to_owned());
    };
    let script = dir.path(&format!("iamlet-on-cpu-{tag}"));
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nexec taskset -c {cpus} '{}' \"$@\"\n",
            bin.display()
        ),
    )?;
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    Ok(script)
}

/// Refuses to run without what the privileged tests need, or without one of `tools`.
pub(crate) fn require_bench_tools(tools: &[&str]) -> Result<()> {
    if let Err(reason) = require_privileges() {
        bail!("the benchmark needs what the privileged tests need: {reason}");
    }
    for tool in tools {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(std::process::Stdio::null())
            .status()?
            .success();
        ensure!(found, "{tool} not found (cargo xtask setup installs it)");
    }
    Ok(())
}

/// The pod's cgroup under the node's pods cgroup, laid out as the kubelet's systemd driver
/// does.
pub(crate) fn pod_cgroup(uid: &str) -> String {
    format!(
        "kubepods-besteffort.slice/kubepods-besteffort-pod{uid}.slice/cri-containerd-{:064x}.scope",
        1
    )
}

/// Writes the agent's bindings (the pod `uid` with underscores, as in cgroup names, gets
/// [`BENCH_ROLE_ARN`]) and its static credentials into `dir`.
pub(crate) fn write_agent_files(dir: &TempDir, uid: &str) -> Result<()> {
    std::fs::write(
        dir.path("bindings.yaml"),
        format!(
            "bindings:\n  - cgroup: \"kubepods-besteffort.slice/kubepods-besteffort-pod{uid}.slice\"\n    role: {BENCH_ROLE_ARN}\n"
        ),
    )?;
    std::fs::write(
        dir.path("creds.yaml"),
        format!(
            "credentials:\n  {BENCH_ROLE_ARN}:\n    access_key_id: ASIABENCHEXAMPLE0001\n    secret_access_key: wJalrXUtnFEMI/K7MDENG/bPxRfiCYBENCHKEY01\n    session_token: {}\n    expiration: 2099-01-01T00:00:00Z\n",
            bench_session_token()
        ),
    )?;
    Ok(())
}

/// A node with the bench pod, and the agent `bin` serving it (on the server's CPU if pinned);
/// `tag` names its launcher script.
pub(crate) fn start_agent(
    dir: &TempDir,
    bin: &Path,
    placement: Placement,
    tag: &str,
) -> Result<(TestNode, FakePod, Agent)> {
    let node = TestNode::new()?;
    let pod = node.add_pod(&pod_cgroup(&BENCH_POD_UID.replace('-', "_")))?;
    let args = agent_args(dir);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let launcher = agent_launcher(dir, bin, placement, tag)?;
    let agent = Agent::start_with_bin(&node, &launcher, &args)?;
    Ok((node, pod, agent))
}

//! A side of the comparison: a fake node with its API server (and moto), its pods, its agent.

use super::{
    engine_stats, ensure, run_with_timeout, Agent, Context, Duration, FakeApiServer, FakePod,
    Instant, KubeControl, Mode, MotoSts, Path, RemoteApiServer, Result, TestNode, ACCOUNT, LOG,
    NODE, PODS,
};

/// A fake node with its API server (and moto, for [`Mode::Sts`]).
pub(super) struct Side {
    pub(super) label: &'static str,
    pub(super) pods: Vec<(FakePod, String)>,
    // Drop order: pods and moto before the node.
    pub(super) moto: Option<MotoSts>,
    pub(super) kubeconfig: String,
    pub(super) creds: String,
    pub(super) api: RemoteApiServer,
    pub(super) node: TestNode,
}

impl Side {
    pub(super) fn new(label: &'static str, dir: &Path, creds: &Path, sts: bool) -> Result<Side> {
        let node = TestNode::new()?;
        let api = FakeApiServer::start_in_node(&node)?;
        let kubeconfig = dir.join(format!("kubeconfig-{label}"));
        api.write_kubeconfig(&kubeconfig)?;
        let moto = if sts {
            Some(MotoSts::start(&node)?)
        } else {
            None
        };
        Ok(Side {
            label,
            pods: Vec::new(),
            moto,
            kubeconfig: kubeconfig.display().to_string(),
            creds: creds.display().to_string(),
            api,
            node,
        })
    }

    /// Starts the agent and waits until it watches pods (their list received).
    pub(super) fn start_agent(&self, mode: Mode) -> Result<Agent> {
        let base = format!("arn:aws:iam::{ACCOUNT}:role/");
        let mut args = vec![
            "--kubeconfig",
            &self.kubeconfig,
            "--node-name",
            NODE,
            "--base-role-arn",
            &base,
            "--upstream",
            "off",
            "--log",
            LOG,
        ];
        let endpoint;
        match mode {
            Mode::Static => args.extend(["--static-credentials", &self.creds]),
            Mode::Sts => {
                endpoint = self
                    .moto
                    .as_ref()
                    .context("moto is not running")?
                    .endpoint();
                args.extend(["--sts-endpoint", &endpoint, "--region", "us-east-1"]);
            }
        }
        let agent = Agent::start(&self.node, &args)?;
        let pid = agent.pid().context("agent pid")?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        ensure!(
            comm.trim() == "iamlet",
            "pid {pid} is {comm:?}, not the agent"
        );
        // Namespaces, service accounts, then pods (opened once the pod list was received).
        self.api
            .wait_for_watches(3, Duration::from_secs(30))
            .with_context(|| format!("{}: agent log:\n{}", self.label, agent.log_text()))?;
        Ok(agent)
    }

    /// With the STS engine: waits until it has fetched credentials for every pod (prefetch),
    /// at most 60 s.
    pub(super) fn wait_prefetch(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let calls = engine_stats(&self.node)?.sts_calls;
            if calls.is_none_or(|n| n >= PODS as u64) {
                return Ok(());
            }
            if Instant::now() > deadline {
                eprintln!(
                    "{}: prefetch incomplete after 60 s: {calls:?} STS calls",
                    self.label
                );
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the agent and closes what is left of its watches, so the next agent's count
    /// starts from zero.
    pub(super) fn stop_agent(&self, mut agent: Agent) -> Result<()> {
        let log = agent.log_text();
        let status = agent.stop()?;
        ensure!(
            status.success(),
            "{}: agent exited with {status}",
            self.label
        );
        if !log.trim().is_empty() {
            eprintln!("{}: iamlet logged:\n{}", self.label, log.trim_end());
        }
        self.api.end_watches()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.api.state()?.watches > 0 {
            ensure!(
                Instant::now() < deadline,
                "{}: watches still open",
                self.label
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Every pod runs the SDK flow once, checking the answers.
    pub(super) fn serve_all(&self, exe: &Path, agent: &Agent) -> Result<Duration> {
        let start = Instant::now();
        for (pod, role) in &self.pods {
            let mut cmd = pod.command(exe);
            cmd.args(["memory-client", role]);
            run_with_timeout(&mut cmd, Duration::from_secs(20))?
                .ensure_success()
                .with_context(|| {
                    format!(
                        "pod {} (role {role}); iamlet logged:\n{}",
                        pod.name(),
                        agent.log_text()
                    )
                })?;
        }
        Ok(start.elapsed())
    }
}

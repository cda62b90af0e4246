//! `iamlet doctor`: checks what a node needs for iamlet and says what is wrong in words an
//! operator acts on. Exit status 0 when nothing is wrong (warnings allowed), 1 with the
//! problems listed, 64 on bad usage; `-o json` prints the same as one JSON object.
//!
//! Run it where the agent runs (`kubectl exec -n kube-system ds/iamlet -- iamlet doctor`),
//! or as root on the node. It takes the agent's flags for what it checks (`--cgroup`,
//! `--bpffs-dir`, `--listen-v4`, `--admin`/`--admin-listen`, `--region`, `--sts-endpoint`,
//! `--kubeconfig`, `--node-name`, ... with the same environment variables); those not given
//! are read from the command line of the agent that holds the pin directory, else the
//! agent's defaults. Nothing is changed: programs are probed, never attached.
//!
//! - [`settings`]: the flags and how they are completed from the running agent's;
//! - `checks`: the checks, one concern per file;
//! - [`report`]: the verdicts, rendered as text or JSON.
//!
//! From the integration test `doctor::` (Kubernetes mode against the fake API server, which
//! was told to deny two permissions; the test node's pods cgroup on a hybrid host):
//!
//! ```text
//! $ iamlet doctor --bpffs-dir /sys/fs/bpf/iamlet-test-26561-0
//! Agent: pid 26633; what doctor was not given is taken from its command line.
//!
//! ok    kernel             Linux 6.18.44-fc-v857 (iamlet needs 5.7 or later; tested on 5.10, 6.1, 6.12)
//! ok    bpf features       cgroup_skb/egress, cgroup/connect4, cgroup/connect6, sock_ops programs, each with its cgroup bpf_link; array, LRU hash, per-CPU array maps
//! ok    btf                /sys/kernel/btf/vmlinux present (5390 KiB); iamlet does not read it (its programs have no CO-RE relocations)
//! ok    capabilities       the agent (pid 26633): CAP_BPF CAP_NET_ADMIN CAP_PERFMON CAP_SYS_ADMIN
//! ok    cgroup v2          hybrid: cgroup2 at /sys/fs/cgroup/unified, cgroup v1 hierarchies next to it (cpu, cpuacct, cpuset, memory, devices, freezer, blkio, pids, systemd)
//! ok    pods cgroup        /sys/fs/cgroup/unified/iamlet-test-26561-0 (--cgroup; cgroup id 2894)
//! ok    bpffs              /sys/fs/bpf/iamlet-test-26561-0 is on a bpf filesystem
//! ok    cgroup_skb/egress  iamlet_egress (prog 1045) attached to /sys/fs/cgroup/unified/iamlet-test-26561-0
//! ok    cgroup/connect4    iamlet_connect4 (prog 1046) attached to /sys/fs/cgroup/unified/iamlet-test-26561-0
//! ok    cgroup/connect6    iamlet_connect6 (prog 1047) attached to /sys/fs/cgroup/unified/iamlet-test-26561-0
//! ok    sock_ops           iamlet_sock_ops (prog 1048) attached to /sys/fs/cgroup/unified/iamlet-test-26561-0
//! ok    pins               4 links (on the pods cgroup, id 2894) and 4 maps pinned in /sys/fs/bpf/iamlet-test-26561-0
//! ok    forward guard      ip rules pref 5 (the node's own traffic) and 6 (prohibit forwarding) to 169.254.169.254 and fd00:ec2::254 in place
//! ok    agent              pid 26633 (/work/wt-doctor/target/debug/iamlet) holds /sys/fs/bpf/iamlet-test-26561-0
//! ok    ready              GET http://127.0.0.1:9809/ready: 200, /live: 200
//! ok    listener v4        198.18.255.1:8181 accepts connections (0 ms)
//! ok    listener v6        [fd00:1a3e:ffff::1]:8181 accepts connections (0 ms)
//! ok    roles              kubernetes: pod annotations, namespace policy and service accounts, through the kubeconfig /tmp/iamlet-kube-test-26561/kubeconfig
//! ok    credentials        static credentials from /tmp/iamlet-kube-test-26561/creds.yaml (STS is not used)
//! ok    node name          node-1 (the pod watch selects spec.nodeName=node-1)
//! ok    kubernetes api     v1.33.0-fake answers /version (with the kubeconfig /tmp/iamlet-kube-test-26561/kubeconfig)
//! FAIL  rbac               the agent's account may not: watch pods, create events.k8s.io/events
//!                          fix: grant them to the agent's service account in all namespaces (a ClusterRole bound with a ClusterRoleBinding; the chart's is deploy/helm/iamlet/templates/clusterrole.yaml)
//!
//! 21 ok, 0 warnings, 1 problem, 0 skipped: fix the problems above (FAIL)
//! $ echo $?
//! 1
//! ```

mod checks;
pub(crate) mod report;
pub(crate) mod settings;

use std::ffi::OsString;

use clap::{Parser, ValueEnum};

use report::Report;
use settings::{Flags, Settings};

/// Exit status: problems found (or doctor could not run).
const EXIT_PROBLEMS: i32 = 1;
/// Exit status: bad usage (`EX_USAGE`).
const EXIT_USAGE: i32 = 64;

/// How to print the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    /// One line per check, with what to do under each problem.
    Text,
    /// One JSON object: `notes`, `checks` (name, status, finding, action), `summary`.
    Json,
}

/// Checks what this node needs for iamlet: kernel and eBPF features, cgroup v2, bpffs,
/// capabilities, the programs on the pods cgroup and their pins, the agent and its
/// listeners, STS, and in Kubernetes mode the API and its permissions.
#[derive(Debug, Parser)]
#[command(
    name = "iamlet doctor",
    bin_name = "iamlet doctor",
    version,
    after_help = "Exit status: 0 when nothing is wrong (warnings allowed), 1 when problems are listed, 64 on bad usage. Run it where the agent runs (kubectl exec -n kube-system ds/iamlet -- iamlet doctor) or as root on the node: flags not given are read from the running agent's command line."
)]
struct DoctorArgs {
    #[command(flatten)]
    flags: Flags,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

/// Runs `iamlet doctor` with `args` (the first is the program name); gives the exit status.
pub fn run_cli(args: impl IntoIterator<Item = OsString>) -> i32 {
    let args = match DoctorArgs::try_parse_from(args) {
        Ok(args) => args,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { EXIT_USAGE } else { 0 };
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("iamlet doctor: cannot start the async runtime: {e}");
            return EXIT_PROBLEMS;
        }
    };
    let report = diagnose(&args.flags, &runtime);
    match args.output {
        Output::Text => print!("{}", report.to_text()),
        Output::Json => print!("{}", report.to_json()),
    }
    if report.summary.healthy {
        0
    } else {
        EXIT_PROBLEMS
    }
}

/// Finds the agent, settles the settings and runs every check.
fn diagnose(flags: &Flags, runtime: &tokio::runtime::Runtime) -> Report {
    let pin_dir = flags.pin_dir();
    let agent = checks::find_agent(&pin_dir);
    let mut notes = Vec::new();
    let agent_args = match &agent {
        None => {
            notes.push(format!(
                "No agent holds {}: checking with doctor's flags and the agent's defaults.",
                pin_dir.display()
            ));
            None
        }
        Some(found) if flags.ignore_agent_flags => {
            notes.push(format!(
                "Agent: pid {} (its flags ignored: --ignore-agent-flags).",
                found.pid
            ));
            None
        }
        Some(found) => match &found.args {
            Ok(args) => {
                notes.push(format!(
                    "Agent: pid {}; what doctor was not given is taken from its command line.",
                    found.pid
                ));
                Some(args)
            }
            Err(why) => {
                notes.push(format!(
                    "Agent: pid {}; {why}: checking with doctor's flags and the agent's defaults.",
                    found.pid
                ));
                None
            }
        },
    };
    let settings = Settings::resolve(flags, agent_args, Settings::in_cluster());
    let checks = checks::run_all(&settings, agent.as_ref(), runtime);
    Report::new(notes, checks)
}

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
//! ```text
//! $ iamlet doctor
//! SAMPLE
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
#[command(name = "iamlet doctor", version)]
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

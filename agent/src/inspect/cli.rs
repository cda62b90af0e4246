//! `iamlet inspect` and `iamlet log-filter`: ask the agent running on this node, through its
//! admin server.

use std::ffi::OsString;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use super::client::{AdminClient, ClientError};
use super::report::Report;
use super::table;

/// Exit code: the agent could not be asked or refused.
const EXIT_FAILED: i32 = 1;
/// Exit code: bad usage (`EX_USAGE`).
const EXIT_USAGE: i32 = 64;

/// How to print.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    /// An aligned table.
    Table,
    /// The agent's report as JSON (the fields of `GET /debug/pods`).
    Json,
}

/// Where the agent is.
#[derive(Debug, clap::Args)]
struct Target {
    /// The agent's admin server (its `--admin-listen`). The chart sets `IAMLET_ADMIN_LISTEN`
    /// in the agent's container, so `kubectl exec` into it needs no flag.
    #[arg(long, env = "IAMLET_ADMIN_LISTEN", default_value = "127.0.0.1:9809")]
    admin: String,
    /// Seconds to wait for the agent.
    #[arg(long, default_value_t = 5)]
    timeout: u64,
}

impl Target {
    fn client(&self) -> Result<AdminClient, ClientError> {
        AdminClient::new(&self.admin, Duration::from_secs(self.timeout.max(1)))
    }
}

/// The pods the iamlet agent on this node knows: role, credentials (key id and expiry,
/// never secrets), last request and answers served.
#[derive(Debug, Parser)]
#[command(name = "iamlet inspect", bin_name = "iamlet inspect", version)]
struct InspectArgs {
    #[command(flatten)]
    target: Target,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

/// Shows the running agent's log filter, or replaces it (until the agent restarts).
#[derive(Debug, Parser)]
#[command(name = "iamlet log-filter", bin_name = "iamlet log-filter", version)]
struct LogFilterArgs {
    #[command(flatten)]
    target: Target,
    /// The new filter, in --log syntax (e.g. `info,iamlet::audit=off` or `debug`); without
    /// it, the filter in force is printed.
    filter: Option<String>,
}

/// Why a CLI failed.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("the agent's report does not parse (is the agent the same version as this CLI?): {0}")]
    Report(#[source] serde_json::Error),
}

/// Runs `iamlet inspect` with `args` (the first is the program name); gives the exit code.
pub fn inspect(args: impl IntoIterator<Item = OsString>) -> i32 {
    let args = match InspectArgs::try_parse_from(args) {
        Ok(args) => args,
        Err(e) => return clap_exit(&e),
    };
    let run = || -> Result<String, CliError> {
        let body = args.target.client()?.get("/debug/pods")?;
        let report: Report = serde_json::from_slice(&body).map_err(CliError::Report)?;
        Ok(match args.output {
            Output::Table => table::render(&report),
            Output::Json => {
                let mut text = serde_json::to_string_pretty(&report).map_err(CliError::Report)?;
                text.push('\n');
                text
            }
        })
    };
    finish(run())
}

/// Runs `iamlet log-filter` with `args` (the first is the program name); gives the exit code.
pub fn log_filter(args: impl IntoIterator<Item = OsString>) -> i32 {
    let args = match LogFilterArgs::try_parse_from(args) {
        Ok(args) => args,
        Err(e) => return clap_exit(&e),
    };
    let run = || -> Result<String, CliError> {
        let client = args.target.client()?;
        let body = match &args.filter {
            Some(filter) => client.put("/log-filter", filter.as_bytes())?,
            None => client.get("/log-filter")?,
        };
        Ok(String::from_utf8_lossy(&body).into_owned())
    };
    finish(run())
}

fn finish(result: Result<String, CliError>) -> i32 {
    match result {
        Ok(text) => {
            print!("{text}");
            0
        }
        Err(e) => {
            eprintln!("iamlet: {e}");
            EXIT_FAILED
        }
    }
}

fn clap_exit(e: &clap::Error) -> i32 {
    let _ = e.print();
    if e.use_stderr() {
        EXIT_USAGE
    } else {
        0
    }
}

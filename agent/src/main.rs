//! The `iamlet` node agent.
#![forbid(unsafe_code)]

use clap::Parser;
use iamlet::Args;

/// `EX_USAGE`: the configuration is invalid.
const EXIT_CONFIG: i32 = 64;

fn main() {
    // Commands for operators on the node; anything else runs the agent.
    let command = std::env::args_os().nth(1);
    let rest = || std::env::args_os().skip(1);
    let exit = match command.as_ref().and_then(|c| c.to_str()) {
        Some("inspect") => Some(iamlet::inspect_cli(rest())),
        Some("log-filter") => Some(iamlet::log_filter_cli(rest())),
        Some("doctor") => Some(iamlet::doctor_cli(rest())),
        _ => None,
    };
    if let Some(code) = exit {
        std::process::exit(code);
    }
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) if e.use_stderr() => {
            let _ = e.print();
            std::process::exit(EXIT_CONFIG);
        }
        Err(e) => {
            // --help and --version.
            let _ = e.print();
            std::process::exit(0);
        }
    };
    // Check the flags (nothing read yet), then read what they name.
    let config = match args.validate() {
        Ok(plan) => plan.load(),
        Err(e) => {
            eprintln!("iamlet: invalid configuration: {e}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    let config = match config {
        Ok(config) => config,
        Err(e) => {
            eprintln!("iamlet: invalid configuration: {}", with_causes(&e));
            std::process::exit(EXIT_CONFIG);
        }
    };
    iamlet::init_logging(args.log_format, &args.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("iamlet: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(iamlet::run(config)) {
        tracing::error!(error = %e, "iamlet failed");
        eprintln!("iamlet: {}", with_causes(&e));
        std::process::exit(1);
    }
}

/// `error: cause: cause ...`, each source once (a source already quoted by its parent's
/// message is skipped).
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

//! The `iamlet` node agent.
#![forbid(unsafe_code)]

use clap::Parser;
use iamlet::config::Args;

/// EX_USAGE: the configuration is invalid.
const EXIT_CONFIG: i32 = 64;

fn main() {
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
    let config = match args.validate() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("iamlet: invalid configuration: {e}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    iamlet::telemetry::init(args.log_format, &args.log);
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
    if let Err(e) = runtime.block_on(iamlet::app::run(config)) {
        tracing::error!(error = %e, "iamlet failed");
        eprintln!("iamlet: {}", anyhow::Error::from(e));
        std::process::exit(1);
    }
}

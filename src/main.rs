//! The `ringcast` binary: parse the command line, start the server, exit 0 after a
//! graceful shutdown.

use std::process::ExitCode;

use clap::Parser;
use ringcast::config::{Cli, Config};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = ringcast::logging::init(cli.log_format, &cli.log_level) {
        eprintln!("ringcast: {e}");
        return ExitCode::from(2);
    }
    ringcast::logging::log_panics();
    ringcast::runtime::affinity::raise_open_files_limit();
    let config = match Config::from_cli(&cli) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(2);
        }
    };
    match ringcast::server::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

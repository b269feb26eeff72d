//! The `ringcast` binary: parse the command line (and the `--config` file under it),
//! start the server, exit 0 after a graceful shutdown. `ringcast config check|example`
//! are the configuration tools.

use std::process::ExitCode;

use ringcast::config::{file as config_file, Cli, Command, Config, ConfigCommand, ConfigError};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match config_file::parse(std::env::args_os().collect()) {
        Ok(cli) => cli,
        Err(e) => return config_error(e),
    };
    match &cli.command {
        Some(Command::Config(ConfigCommand::Example)) => {
            print!("{}", config_file::EXAMPLE);
            return ExitCode::SUCCESS;
        }
        Some(Command::Config(ConfigCommand::Check { file })) => return check(file),
        None => {}
    }
    serve(cli)
}

fn serve(cli: Cli) -> ExitCode {
    if let Err(e) = ringcast::logging::init(cli.log_format, &cli.log_level) {
        eprintln!("ringcast: {e}");
        return ExitCode::from(2);
    }
    ringcast::logging::log_panics();
    ringcast::runtime::affinity::raise_open_files_limit();
    let resolved = match Config::from_cli(&cli) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(2);
        }
    };
    match ringcast::server::run(resolved.config, resolved.apps) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            // Unusable certificate files are configuration errors, like a bad flag: 2
            // (so `RestartPreventExitStatus=2` does not restart into the same error).
            if e.downcast_ref::<ringcast::tls::TlsError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// `ringcast config check FILE`.
fn check(file: &std::path::Path) -> ExitCode {
    let cli = match config_file::parse(config_file::check_args(file)) {
        Ok(cli) => cli,
        Err(e) => return config_error(e),
    };
    match Config::from_cli(&cli) {
        Ok(resolved) => {
            print!("{}", config_file::describe(&cli, &resolved.apps));
            eprintln!("ringcast: {} is valid", file.display());
            ExitCode::SUCCESS
        }
        Err(e) => config_error(e),
    }
}

fn config_error(e: ConfigError) -> ExitCode {
    match e {
        ConfigError::Cli(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            ExitCode::from(code)
        }
        other => {
            eprintln!("ringcast: {other}");
            ExitCode::from(2)
        }
    }
}

//! `infralab`'s command line: parses arguments, dispatches to the library and
//! maps every outcome to a documented exit code ([`crate::exit`]).

mod args;
mod commands;
mod show;
mod solutions;

use clap::Parser;

pub use args::{Cli, Command, Format, ImagesCommand};

use crate::engine::EnvError;
use crate::exit;
use crate::lab::LabErrors;

/// Why a command could not do its job.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad lab files (exit 2).
    #[error("{0}")]
    Lab(#[from] LabErrors),
    /// Other bad input: unknown lab, unknown kind (exit 2).
    #[error("error: {0}")]
    Input(String),
    /// The environment (exit 3).
    #[error("error: {}{}", .0.message, .0.hint.as_ref().map(|h| format!("\n  fix: {h}")).unwrap_or_default())]
    Env(#[from] EnvError),
}

impl CliError {
    fn exit_code(&self) -> i32 {
        match self {
            CliError::Lab(_) | CliError::Input(_) => exit::BAD_INPUT,
            CliError::Env(_) => exit::ENVIRONMENT,
        }
    }
}

/// Parses the command line, runs the command and returns the exit code.
pub fn run() -> i32 {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return exit::ENVIRONMENT;
        }
    };
    match runtime.block_on(commands::dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{e}");
            e.exit_code()
        }
    }
}

fn init_tracing(verbose: u8) {
    // Client libraries log their own connection errors (a readiness probe
    // retrying, a fault cutting a connection): expected here, so only
    // infralab's own warnings show unless -v asks for more.
    let default = match verbose {
        0 => "infralab=warn",
        1 => "infralab=debug,info",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

//! The `geosteer` command: thin on purpose. Parses arguments, sets up logging, calls into the
//! library, and maps outcomes to exit codes (64 = bad configuration, as in sysexits.h).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use geosteer::app;
use geosteer::config::LogFormat;

/// Exit code for configuration errors (EX_USAGE in sysexits.h).
const EXIT_CONFIG: u8 = 64;
/// Exit code for runtime failures such as an address already in use.
const EXIT_RUNTIME: u8 = 1;

/// geosteer: authoritative DNS that answers each client with its nearest healthy region.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve DNS until SIGINT/SIGTERM.
    Serve {
        /// Configuration file (default: the embedded geosteer.toml).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Load and validate configuration and zones without binding anything.
    Check {
        /// Configuration file (default: the embedded geosteer.toml).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

fn init_logging(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match app::load(config.as_deref()) {
            Ok(loaded) => {
                println!(
                    "{}: ok ({} zone{})",
                    loaded.config.source.display(),
                    loaded.zones.len(),
                    if loaded.zones.len() == 1 { "" } else { "s" }
                );
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Serve { config } => {
            let loaded = match app::load(config.as_deref()) {
                Ok(l) => l,
                Err(errors) => {
                    eprintln!("{errors}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            init_logging(&loaded.config.log_level, loaded.config.log_format);
            match app::serve(loaded) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("geosteer: {e:#}");
                    ExitCode::from(EXIT_RUNTIME)
                }
            }
        }
    }
}

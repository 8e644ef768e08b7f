//! The `geosteer` command: thin on purpose. Parses arguments, sets up logging, calls into the
//! library, and maps outcomes to exit codes (64 = bad configuration, as in sysexits.h).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use std::net::IpAddr;

use geosteer::config::LogFormat;
use geosteer::health::prober;
use geosteer::routing::Family;
use geosteer::{app, explain};
use ipnet::IpNet;

/// Exit code for configuration errors (EX_USAGE in sysexits.h).
const EXIT_CONFIG: u8 = 64;
/// Exit code for a bad command-line request (a name that is not a profile).
const EXIT_USAGE: u8 = 2;
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
    /// Explain the answer a traffic profile gives one client: location, every endpoint with
    /// its terms, the decision, TTL and ECS scope.
    Explain {
        /// Configuration file (default: the embedded geosteer.toml).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The steered name, e.g. mqtt.example.test.
        name: String,
        /// The query's source address (the resolver).
        #[arg(long, default_value = "127.0.0.1")]
        client: IpAddr,
        /// EDNS Client Subnet the resolver sends, e.g. 81.2.69.0/24.
        #[arg(long)]
        ecs: Option<IpNet>,
        /// Record type.
        #[arg(long = "type", default_value = "A", value_parser = ["A", "AAAA", "CNAME"])]
        qtype: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
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
                let (z, p) = (loaded.state.zones.len(), loaded.state.routing.len());
                println!(
                    "{}: ok ({z} zone{}, {p} profile{})",
                    loaded.config.source.display(),
                    if z == 1 { "" } else { "s" },
                    if p == 1 { "" } else { "s" }
                );
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Explain {
            config,
            name,
            client,
            ecs,
            qtype,
            json,
        } => {
            let loaded = match app::load(config.as_deref()) {
                Ok(l) => l,
                Err(errors) => {
                    eprintln!("{errors}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let family = match qtype.as_str() {
                "AAAA" => Family::V6,
                "CNAME" => Family::Any,
                _ => Family::V4,
            };
            // Without a running server's probes: monitored endpoints CheckingEndpoint (served),
            // the others Unmonitored.
            let health = prober::initial_snapshot(&loaded.state.routing);
            match explain::explain(&loaded.state, &health, &name, family, client, ecs) {
                Ok(report) if json => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&report).unwrap_or_default()
                    );
                    ExitCode::SUCCESS
                }
                Ok(report) => {
                    print!("{report}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("geosteer explain: {e}");
                    ExitCode::from(EXIT_USAGE)
                }
            }
        }
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

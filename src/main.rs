//! The `geosteer` command: thin on purpose. Parses arguments, sets up logging, calls into the
//! library, and maps outcomes to exit codes (64 = bad configuration, as in sysexits.h).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use std::net::IpAddr;

use geosteer::config::LogFormat;
use geosteer::probing::prober;
use geosteer::routing::Family;
use geosteer::{app, cli, explain};
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
    /// Failover drills on a running geosteer (through its admin API).
    Drill {
        #[command(subcommand)]
        action: DrillAction,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Force an endpoint or region down/up, or back to probing (through the admin API).
    Force {
        /// Endpoint as profile/endpoint, e.g. mqtt/westeurope (or use --region).
        #[arg(required_unless_present = "region")]
        endpoint: Option<String>,
        /// Every endpoint in this catalogue region, e.g. azure:westeurope.
        #[arg(long, conflicts_with = "endpoint")]
        region: Option<String>,
        /// down, up, or probe (lift the force).
        #[arg(long, value_parser = ["down", "up", "probe"])]
        action: String,
        /// Why (shown in status and logs).
        #[arg(long, default_value = "")]
        reason: String,
        /// Lift automatically after this long, e.g. 30m.
        #[arg(long)]
        duration: Option<String>,
        /// Only for these client networks.
        #[arg(long)]
        scope: Vec<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Demo endpoints (demo/geosteer.toml): take one down — its probes are refused and the
    /// answers move — or bring it back up.
    Demo {
        /// down or up.
        #[arg(value_parser = ["down", "up"])]
        action: String,
        /// Demo endpoint name, e.g. westeurope.
        endpoint: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// The fleet (with [cluster]): instances, versions, configuration digests, heartbeats,
    /// what each serves for the sample subnets, and disagreements.
    Fleet {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Ask a running geosteer to reload its configuration (like SIGHUP).
    Reload {
        /// Apply the reload even if it removes every zone or every traffic profile served now
        /// (refused otherwise, as almost always a mistake).
        #[arg(long)]
        allow_removal: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
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
        /// Explain from the configuration files only, without asking a running server.
        #[arg(long)]
        offline: bool,
    },
}

/// How to reach a running geosteer's admin API.
#[derive(clap::Args)]
struct ApiArgs {
    /// Configuration file the server runs with (for the API address and token).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Admin API base URL (overrides the configuration), e.g. http://127.0.0.1:8053.
    #[arg(long, global = true)]
    api: Option<String>,
    /// Bearer token (overrides the configuration; also GEOSTEER_TOKEN).
    #[arg(long, global = true)]
    token: Option<String>,
}

#[derive(Subcommand)]
enum DrillAction {
    /// Force an endpoint down (for some or all clients), verify that answers move, revert at
    /// expiry.
    Start {
        /// Profile (owner name or its first label, e.g. mqtt).
        #[arg(long)]
        profile: String,
        /// Endpoint name.
        #[arg(long)]
        endpoint: String,
        /// How long, e.g. 10m.
        #[arg(long, default_value = "10m")]
        duration: String,
        /// Only these client networks (CIDR); default all.
        #[arg(long)]
        scope: Vec<String>,
        /// Only report what would move.
        #[arg(long)]
        dry_run: bool,
    },
    /// Show drills and their verification.
    Status,
    /// Stop running drills now (they revert and verify).
    Stop {
        /// Only this drill.
        #[arg(long)]
        id: Option<String>,
    },
}

fn api_call(api: ApiArgs, f: impl FnOnce(&cli::ApiTarget) -> Result<String, String>) -> ExitCode {
    let target = match cli::ApiTarget::resolve(api.config.as_deref(), api.api, api.token) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("geosteer: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match f(&target) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("geosteer: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
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
    // reqwest (admin API client) uses rustls without a built-in provider; use ring, as the
    // probes do. Err only means one is already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
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
                for w in &loaded.config.warnings {
                    eprintln!("warning: {w}");
                }
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
            offline,
        } => {
            // The running server's view first: during an incident the files alone would
            // contradict it (no probe verdicts, forced states or drills).
            let mut why_files = "--offline".to_string();
            if !offline {
                match cli::explain_from_server(config.as_deref(), &name, client, ecs, &qtype) {
                    Ok((base, report)) => {
                        if json {
                            let mut r = report["report"].clone();
                            r["view"] = serde_json::json!({ "from": "server", "server": base });
                            println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
                        } else {
                            println!(
                                "view      the running server at {base} (its probe states, forced states and drills)"
                            );
                            print!("{}", report["text"].as_str().unwrap_or_default());
                        }
                        return ExitCode::SUCCESS;
                    }
                    Err(cli::ExplainError::Refused(e)) => {
                        eprintln!("geosteer explain: {e}");
                        return ExitCode::from(EXIT_USAGE);
                    }
                    Err(cli::ExplainError::Unreachable(why)) => why_files = why,
                }
            }
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
                    let mut r = serde_json::to_value(&report).unwrap_or_default();
                    r["view"] = serde_json::json!({ "from": "files", "why": why_files });
                    println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
                    ExitCode::SUCCESS
                }
                Ok(report) => {
                    println!(
                        "view      configuration files only ({why_files}): probe states, forced states and drills are not shown"
                    );
                    print!("{report}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("geosteer explain: {e}");
                    ExitCode::from(EXIT_USAGE)
                }
            }
        }
        Command::Drill { action, api } => match action {
            DrillAction::Start {
                profile,
                endpoint,
                duration,
                scope,
                dry_run,
            } => api_call(api, |t| {
                cli::drill_start(t, &profile, &endpoint, &duration, &scope, dry_run)
            }),
            DrillAction::Status => api_call(api, cli::drill_status),
            DrillAction::Stop { id } => api_call(api, |t| cli::drill_stop(t, id.as_deref())),
        },
        Command::Force {
            endpoint,
            region,
            action,
            reason,
            duration,
            scope,
            api,
        } => {
            let mut body =
                serde_json::json!({ "action": action, "reason": reason, "scope": scope });
            if let Some(d) = duration {
                body["duration"] = d.into();
            }
            match (endpoint, region) {
                (Some(e), _) => match e.split_once('/') {
                    Some((p, n)) => {
                        body["profile"] = p.into();
                        body["endpoint_name"] = n.into();
                    }
                    None => {
                        eprintln!(
                            "geosteer: give the endpoint as profile/endpoint, e.g. mqtt/westeurope"
                        );
                        return ExitCode::from(EXIT_USAGE);
                    }
                },
                (None, Some(r)) => body["region"] = r.into(),
                (None, None) => return ExitCode::from(EXIT_USAGE),
            }
            api_call(api, |t| cli::force(t, body))
        }
        Command::Fleet { api } => api_call(api, cli::fleet),
        Command::Demo {
            action,
            endpoint,
            api,
        } => api_call(api, |t| cli::demo(t, &endpoint, action == "up")),
        Command::Reload { allow_removal, api } => api_call(api, |t| cli::reload(t, allow_removal)),
        Command::Serve { config } => {
            let loaded = match app::load(config.as_deref()) {
                Ok(l) => l,
                Err(errors) => {
                    eprintln!("{errors}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            init_logging(&loaded.config.log_level, loaded.config.log_format);
            for w in &loaded.config.warnings {
                tracing::warn!("{w}");
            }
            match serve(loaded) {
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

/// Serves until SIGINT or SIGTERM: `main` owns the runtime and the signals; the server itself
/// ([`app::run`]) is embeddable and takes its shutdown and reload triggers as inputs.
fn serve(loaded: app::Loaded) -> anyhow::Result<()> {
    use anyhow::Context;
    let bound = app::bind(&loaded.config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(loaded.config.workers)
        .thread_name("geosteer-worker")
        .enable_all()
        .build()
        .context("failed to start the tokio runtime")?;
    runtime.block_on(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (tx, reloads) = tokio::sync::mpsc::channel(1);
        match signal(SignalKind::hangup()) {
            Ok(mut hup) => {
                tokio::spawn(async move {
                    while hup.recv().await.is_some() {
                        // A reload already queued covers this one too.
                        let _ = tx.try_send(());
                    }
                });
            }
            Err(_) => tracing::warn!(
                "cannot install a SIGHUP handler; reload with the admin API or by editing files"
            ),
        }
        let inputs = app::Inputs {
            clock: geosteer::base::Clock::system(),
            reloads,
        };
        app::run(loaded, bound, inputs, None, wait_for_signal()).await
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut int, mut term) = match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(i), Ok(t)) => (i, t),
        _ => {
            // Without signal handlers we still serve; Ctrl-C then kills the process outright.
            tracing::warn!("cannot install signal handlers; graceful shutdown unavailable");
            std::future::pending::<()>().await;
            return;
        }
    };
    tokio::select! {
        _ = int.recv() => tracing::info!(signal = "SIGINT", "signal received"),
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "signal received"),
    }
}

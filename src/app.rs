//! Wiring: load and validate everything, bind, serve, and shut down gracefully.
//!
//! Order matters for operators: configuration and zones are loaded and validated *before* any
//! socket is bound, so a bad file exits with code 64 without ever taking the port; binding
//! happens before serving, so every bound address is logged (port 0 resolved) before the
//! first query is answered.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::base::ConfigErrors;
use crate::config::Config;
use crate::dns::Handler;
use crate::dns::server::{self, TcpLimits};
use crate::health::HealthSnapshot;
use crate::metrics::Metrics;
use crate::ops::control::Control;
use crate::ops::store::Persisted;
use crate::ops::{api, reload};
use crate::state::State;

/// Everything `check` validates and `serve` needs, loaded without binding anything.
pub struct Loaded {
    /// The config file (`None` = embedded default).
    pub config_path: Option<std::path::PathBuf>,
    /// The configuration.
    pub config: Config,
    /// Zones, profiles, GeoIP.
    pub state: State,
    /// Forced states and drills from the state file.
    pub persisted: Persisted,
}

/// Loads configuration, zones, profiles, GeoIP databases and the state file; all errors are
/// collected.
pub fn load(config_path: Option<&Path>) -> Result<Loaded, ConfigErrors> {
    let config = Config::load(config_path)?;
    let state = crate::state::build(&config)?;
    let persisted = Persisted::load(&config.state_file)?;
    Ok(Loaded {
        config_path: config_path.map(Path::to_path_buf),
        config,
        state,
        persisted,
    })
}

/// Serves until SIGINT or SIGTERM, then drains. Runs its own tokio runtime.
pub fn serve(loaded: Loaded) -> anyhow::Result<()> {
    let Loaded {
        config_path,
        config,
        state,
        mut persisted,
    } = loaded;
    for z in state.zones.iter() {
        info!(zone = %z.origin, file = %z.file.display(), names = z.nodes.len(), "zone loaded");
    }
    for p in &state.routing.profiles {
        info!(profile = %p.owner, method = ?p.method, endpoints = p.endpoints.len(), "profile loaded");
    }
    let bound = server::bind(&config.udp, &config.tcp, config.workers)?;
    let admin = match config.admin_listen {
        Some(a) => {
            Some(api::bind(a).with_context(|| format!("failed to bind the admin API to {a}"))?)
        }
        None => None,
    };
    persisted.prune(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.workers)
        .thread_name("geosteer-worker")
        .enable_all()
        .build()
        .context("failed to start the tokio runtime")?;
    runtime.block_on(async move {
        let state = Arc::new(ArcSwap::from_pointee(state));
        let health = Arc::new(ArcSwap::from_pointee(HealthSnapshot::default()));
        let metrics = Arc::new(Metrics::default());
        let handler = Arc::new(
            Handler::new(
                state.clone(),
                health.clone(),
                metrics.clone(),
                config.edns_udp_payload,
            )
            .with_rrl(crate::dns::rrl::Rrl::new(config.rrl.clone())),
        );
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let limits = TcpLimits {
            max_connections: config.tcp_max_connections,
            idle_timeout: config.tcp_idle_timeout,
            max_per_source: config.tcp_max_per_source,
            write_timeout: config.tcp_write_timeout,
        };
        // Probing starts before serving; answers never wait for it (unprobed = CheckingEndpoint,
        // which is served).
        let prober = crate::probing::prober::spawn(
            &state.load().routing,
            persisted.forced.clone(),
            health.clone(),
            shutdown.clone(),
            &tracker,
        );
        let grace = config.shutdown_grace;
        let workers = config.workers;
        let control = Control::new(
            config_path,
            config,
            state,
            health,
            metrics,
            handler.clone(),
            prober,
            persisted,
        );
        control.resume_drills().await;
        tracker.spawn(reload::on_sighup(control.clone(), shutdown.clone()));
        tracker.spawn(reload::watch_files(control.clone(), shutdown.clone()));
        if let Some(l) = admin {
            let l = tokio::net::TcpListener::from_std(l).context("admin listener")?;
            info!(proto = "http", addr = %l.local_addr()?, "admin API listening");
            tracker.spawn(api::serve(l, control.clone(), shutdown.clone()));
        }
        server::spawn(bound, handler, limits, shutdown.clone(), &tracker)
            .context("failed to register sockets with the runtime")?;
        info!(workers, "geosteer serving");
        wait_for_signal().await;
        info!("shutting down: no new queries; draining open connections");
        shutdown.cancel();
        tracker.close();
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            warn!(?grace, "connections still open after the grace period");
        }
        info!("stopped");
        Ok(())
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
            warn!("cannot install signal handlers; graceful shutdown unavailable");
            std::future::pending::<()>().await;
            return;
        }
    };
    tokio::select! {
        _ = int.recv() => info!(signal = "SIGINT", "signal received"),
        _ = term.recv() => info!(signal = "SIGTERM", "signal received"),
    }
}

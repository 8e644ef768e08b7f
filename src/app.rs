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

use crate::config::{Config, ConfigErrors};
use crate::dns::Handler;
use crate::dns::server::{self, TcpLimits};
use crate::zone::{self, ZoneSet};

/// Everything `check` validates and `serve` needs, loaded without binding anything.
pub struct Loaded {
    /// The configuration.
    pub config: Config,
    /// The zones.
    pub zones: ZoneSet,
}

/// Loads configuration and every zone; all errors are collected.
pub fn load(config_path: Option<&Path>) -> Result<Loaded, ConfigErrors> {
    let config = Config::load(config_path)?;
    let zones = ZoneSet::new(zone::load_dir(&config.zones_dir)?);
    Ok(Loaded { config, zones })
}

/// Serves until SIGINT or SIGTERM, then drains. Runs its own tokio runtime.
pub fn serve(loaded: Loaded) -> anyhow::Result<()> {
    let Loaded { config, zones } = loaded;
    for z in zones.iter() {
        info!(zone = %z.origin, file = %z.file.display(), names = z.nodes.len(), "zone loaded");
    }
    let bound = server::bind(&config.udp, &config.tcp, config.workers)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.workers)
        .thread_name("geosteer-worker")
        .enable_all()
        .build()
        .context("failed to start the tokio runtime")?;
    runtime.block_on(async move {
        let zones = Arc::new(ArcSwap::from_pointee(zones));
        let handler = Arc::new(Handler::new(zones, config.edns_udp_payload));
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let limits = TcpLimits {
            max_connections: config.tcp_max_connections,
            idle_timeout: config.tcp_idle_timeout,
        };
        server::spawn(bound, handler, limits, shutdown.clone(), &tracker)
            .context("failed to register sockets with the runtime")?;
        info!(workers = config.workers, "geosteer serving");
        wait_for_signal().await;
        info!("shutting down: no new queries; draining open connections");
        shutdown.cancel();
        tracker.close();
        if tokio::time::timeout(config.shutdown_grace, tracker.wait())
            .await
            .is_err()
        {
            warn!(grace = ?config.shutdown_grace, "connections still open after the grace period");
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

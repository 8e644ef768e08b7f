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

use crate::base::Clock;

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

/// Sockets bound before serving (port 0 resolved), so `main` can log them and tests can read
/// the ports back before the first query.
pub struct Bound {
    /// DNS sockets (UDP per worker, TCP listeners).
    pub dns: server::Bound,
    /// The admin API listener, if configured.
    pub admin: Option<std::net::TcpListener>,
}

/// Binds every configured socket (DNS and admin API) without serving.
pub fn bind(config: &Config) -> anyhow::Result<Bound> {
    let dns = server::bind(&config.udp, &config.tcp, config.workers)?;
    let admin = match config.admin_listen {
        Some(a) => {
            Some(api::bind(a).with_context(|| format!("failed to bind the admin API to {a}"))?)
        }
        None => None,
    };
    Ok(Bound { dns, admin })
}

/// How the embedding process drives a running server besides shutdown.
pub struct Inputs {
    /// Wall time for the control plane (forced-state and drill expiry, status times) and the
    /// prober: [`Clock::system`] in production, [`Clock::following_tokio`] under paused time.
    pub clock: Clock,
    /// Each message asks for a reload, as SIGHUP does (`main` forwards SIGHUP here).
    pub reloads: tokio::sync::mpsc::Receiver<()>,
}

/// Serves `loaded` on `bound` until `shutdown` completes, then drains open TCP connections
/// for up to `shutdown_grace`. Needs a running tokio runtime; installs no signal handlers
/// (mini-redis's `server::run(listener, shutdown)`: the caller owns the process).
///
/// `ready` (if given) receives the control plane once everything is serving, so an embedder
/// (tests) can drive forces, drills and reloads in-process.
pub async fn run(
    loaded: Loaded,
    bound: Bound,
    inputs: Inputs,
    ready: Option<tokio::sync::oneshot::Sender<Arc<Control>>>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let Loaded {
        config_path,
        config,
        state,
        mut persisted,
    } = loaded;
    let Inputs { clock, mut reloads } = inputs;
    let mut config = config;
    let run_token = per_run_token(&mut config, bound.admin.as_ref()).await;
    for z in state.zones.iter() {
        info!(zone = %z.origin, file = %z.file.display(), names = z.nodes.len(), "zone loaded");
    }
    for p in &state.routing.profiles {
        info!(profile = %p.owner, method = ?p.method, endpoints = p.endpoints.len(), "profile loaded");
    }
    persisted.prune(clock.unix_secs());
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
    let stop = CancellationToken::new();
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
        clock,
        stop.clone(),
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
        clock,
    );
    control.start_demo();
    if let Some(settings) = control.config.load().cluster.clone() {
        // Fleet mode: read the fleet's forced states and drills before serving (within
        // start_timeout; past it the state file's last state serves and the link reconciles
        // in the background). DNS answers never wait on etcd after this point.
        let fleet = crate::ops::fleet::Fleet::new(settings, clock)
            .map_err(|e| anyhow::anyhow!("[cluster]: {e}"))?;
        control.attach_fleet(fleet.clone());
        fleet.initial_sync(&control).await;
        fleet.spawn(control.clone(), stop.clone(), &tracker);
    }
    control.resume_drills().await;
    {
        let (control, stop) = (control.clone(), stop.clone());
        tracker.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    r = reloads.recv() => {
                        if r.is_none() { return; }
                        info!("reload requested (SIGHUP)");
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = control.reload("SIGHUP") => {}
                        }
                    }
                }
            }
        });
    }
    tracker.spawn(reload::watch_files(control.clone(), stop.clone()));
    if let Some(l) = bound.admin {
        info!(proto = "http", addr = %l.local_addr()?, "admin API listening");
        // Its own thread and runtime: no admin request may take a DNS worker. Shutdown
        // waits for it like for the TCP connections (it drains its own within `grace`).
        let stopped = api::spawn(l, control.clone(), stop.clone(), grace)
            .context("failed to start the admin API thread")?;
        tracker.spawn(async move {
            let _ = stopped.await;
        });
    }
    server::spawn(bound.dns, handler, limits, stop.clone(), &tracker)
        .context("failed to register sockets with the runtime")?;
    info!(workers, "geosteer serving");
    if let Some(tx) = ready {
        let _ = tx.send(control.clone());
    }
    shutdown.await;
    info!("shutting down: no new queries; draining open connections");
    stop.cancel();
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        warn!(?grace, "connections still open after the grace period");
    }
    if let Some(p) = run_token {
        let _ = tokio::fs::remove_file(&p).await;
    }
    info!("stopped");
    Ok(())
}

/// A loopback admin API without a configured token gets a token for this run, written (mode
/// 0600) where the local CLI looks for it (`ops::runtoken`), so `geosteer force|drill|reload`
/// work against the embedded default while state-changing calls stay authenticated. Returns the
/// file to remove at shutdown.
async fn per_run_token(
    config: &mut Config,
    admin: Option<&std::net::TcpListener>,
) -> Option<std::path::PathBuf> {
    let addr = admin?.local_addr().ok()?;
    if config.admin_token.is_some() || !addr.ip().is_loopback() {
        return None;
    }
    let state_file = config.state_file.clone();
    let made =
        tokio::task::spawn_blocking(move || crate::ops::runtoken::create(addr.port(), &state_file))
            .await;
    match made {
        Ok(Ok((token, path))) => {
            info!(file = %path.display(), "admin token for this run written (mode 0600); the local geosteer CLI reads it");
            config.admin_token = Some(token);
            config.run_token_file = Some(path.clone());
            Some(path)
        }
        Ok(Err(e)) => {
            warn!(error = %e, "cannot write a per-run admin token; state-changing API calls are refused");
            None
        }
        Err(_) => None,
    }
}

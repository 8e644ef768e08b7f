//! The control plane: everything that changes what the DNS path serves, in one place — reload,
//! forced states, drills. The admin API and signal handlers call into it; the DNS path only
//! reads the snapshots it publishes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::Notify;
use tracing::{error, info, warn};

use super::drill::{
    self, DrillRecord, DrillRequest, DrillStatus, SampleResult, VERIFY_EVERY, VERIFY_WITHIN,
};
use super::store::Persisted;
use crate::base::Clock;
use crate::config::Config;
use crate::dns::Handler;
use crate::health::{
    Force, ForceAction, ForceEntry, ForceOrigin, ForceTarget, HealthSnapshot, MonitorState,
};
use crate::metrics::Metrics;
use crate::probing::prober::Prober;
use crate::state::State;

/// Loads abandoned at their deadline that are still running (each holds one OS thread, blocked
/// in some read). Beyond this many, reloads are refused at once instead of leaking more.
const MAX_ABANDONED_LOADS: usize = 4;

/// Why a control-plane request was refused. Each kind has one HTTP status, so the admin API
/// maps errors by kind instead of guessing from text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// The request names a profile, endpoint, region or drill that does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with what is running, e.g. a drill on the endpoint (409).
    #[error("{0}")]
    Conflict(String),
    /// The request itself is malformed or incomplete (400).
    #[error("{0}")]
    BadRequest(String),
    /// The server cannot do it yet or now (503).
    #[error("{0}")]
    NotReady(String),
    /// The state file could not be written; the change was rolled back, not applied (500).
    #[error("{0}")]
    NotSaved(String),
}

impl ControlError {
    /// The HTTP status code of this kind of error.
    pub fn status(&self) -> u16 {
        match self {
            Self::NotFound(_) => 404,
            Self::Conflict(_) => 409,
            Self::BadRequest(_) => 400,
            Self::NotReady(_) => 503,
            Self::NotSaved(_) => 500,
        }
    }
}

/// What a `force` call did: the API's JSON answer and the CLI's report.
#[derive(Debug, Clone, Serialize)]
pub struct ForceOutcome {
    /// The target asked for.
    pub target: ForceTarget,
    /// The action (`None` = lift: back to probing).
    pub action: Option<ForceAction>,
    /// Entries this call removed: on a lift every force it cleared (drills' included), else
    /// the operator force of the same target it replaced.
    pub lifted: Vec<ForceEntry>,
    /// Drills stopped because their force was lifted.
    pub stopped_drills: Vec<String>,
    /// After a lift: forces that still hold an endpoint of the target (a region force over a
    /// lifted endpoint).
    pub still_forced: Vec<ForceEntry>,
    /// Every forced state in effect now.
    pub forced: Vec<ForceEntry>,
}

/// Outcome of the last reload.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReloadStatus {
    /// Configuration generation (1 = as started).
    pub generation: u64,
    /// Unix time of the last attempt.
    pub at_unix: f64,
    /// What triggered it.
    pub trigger: String,
    /// Error of the last attempt, if it failed (the previous configuration kept serving).
    pub error: Option<String>,
}

/// Shared control-plane state.
pub struct Control {
    /// Config file (`None` = embedded default).
    pub config_path: Option<PathBuf>,
    /// Current configuration.
    pub config: ArcSwap<Config>,
    /// Serving state.
    pub state: Arc<ArcSwap<State>>,
    /// Health snapshot.
    pub health: Arc<ArcSwap<HealthSnapshot>>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The DNS request handler (drills resolve through it).
    pub handler: Arc<Handler>,
    /// The prober.
    pub prober: Prober,
    persisted: Mutex<Persisted>,
    reload_lock: tokio::sync::Mutex<()>,
    /// Serialises state-file writes, and a force's change-write-or-roll-back.
    save_lock: tokio::sync::Mutex<()>,
    /// Load threads still running (see [`MAX_ABANDONED_LOADS`]).
    loads_running: Arc<std::sync::atomic::AtomicUsize>,
    /// Last reload outcome.
    pub reload_status: Mutex<ReloadStatus>,
    drill_stops: Mutex<HashMap<String, Arc<Notify>>>,
    /// Fleet mode: the link to etcd, where forced states and drills live (`None` = standalone:
    /// the state file is the store).
    fleet: std::sync::OnceLock<Arc<super::fleet::Fleet>>,
    /// `[demo]`: the demo endpoints geosteer listens on itself (none in production).
    demo: std::sync::OnceLock<super::demo::Demo>,
    /// Wall time (expiry of forces and drills, status times): injected, so drills run under
    /// paused tokio time in tests.
    clock: Clock,
}

/// Milliseconds since the epoch by `clock`.
fn started_ms(clock: &Clock) -> u64 {
    clock
        .now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Parses "10m", "90s", "1h30m".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("duration {s:?}: {e}"))
}

impl Control {
    /// Assembles the control plane.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config_path: Option<PathBuf>,
        config: Config,
        state: Arc<ArcSwap<State>>,
        health: Arc<ArcSwap<HealthSnapshot>>,
        metrics: Arc<Metrics>,
        handler: Arc<Handler>,
        prober: Prober,
        persisted: Persisted,
        clock: Clock,
    ) -> Arc<Self> {
        Arc::new(Self {
            clock,
            config_path,
            config: ArcSwap::from_pointee(config),
            state,
            health,
            metrics,
            handler,
            prober,
            persisted: Mutex::new(persisted),
            reload_lock: tokio::sync::Mutex::new(()),
            save_lock: tokio::sync::Mutex::new(()),
            loads_running: Arc::default(),
            reload_status: Mutex::new(ReloadStatus {
                generation: 1,
                at_unix: clock.unix_f64(),
                trigger: "start".into(),
                error: None,
            }),
            drill_stops: Mutex::new(HashMap::new()),
            fleet: std::sync::OnceLock::new(),
            demo: std::sync::OnceLock::new(),
        })
    }

    /// Starts the `[demo]` endpoints' listeners (call once, on the control runtime).
    pub fn start_demo(&self) {
        let endpoints = self.config.load().demo.clone();
        if !endpoints.is_empty() {
            let _ = self.demo.set(super::demo::Demo::start(&endpoints));
        }
    }

    /// Takes a `[demo]` endpoint down (its probes are refused) or brings it back up.
    pub fn set_demo(&self, name: &str, up: bool) -> Result<std::net::SocketAddr, ControlError> {
        let Some(demo) = self.demo.get() else {
            return Err(ControlError::NotFound(
                "no [demo] endpoints: run the demo configuration                  (`geosteer serve --config demo/geosteer.toml`)"
                    .into(),
            ));
        };
        demo.set(name, up).map_err(|e| {
            if e.starts_with("no demo endpoint") {
                ControlError::NotFound(e)
            } else {
                ControlError::Conflict(e)
            }
        })
    }

    /// Makes this a fleet member: forced states and drills are stored in etcd from now on.
    pub fn attach_fleet(&self, fleet: Arc<super::fleet::Fleet>) {
        let _ = self.fleet.set(fleet);
    }

    /// The fleet link, in fleet mode.
    pub fn fleet(&self) -> Option<&Arc<super::fleet::Fleet>> {
        self.fleet.get()
    }

    /// Configuration generation (1 = as started; +1 per successful reload).
    pub fn generation(&self) -> u64 {
        self.reload_status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .generation
    }

    /// What this instance answers now for each profile and sample subnet
    /// (`[admin] drill_samples`): the fleet compares these between instances. Weighted
    /// profiles are left out: their answers are random by design, so two instances differing
    /// there says nothing.
    pub fn sample_answers(&self) -> Vec<super::fleet::Served> {
        let samples = self.config.load().drill_samples.clone();
        let state = self.state.load();
        let mut out = Vec::new();
        for p in state
            .routing
            .profiles
            .iter()
            .filter(|p| p.method != crate::routing::Method::Weighted)
        {
            let owner = p.owner.to_string();
            for s in &samples {
                out.push(super::fleet::Served {
                    profile: owner.clone(),
                    subnet: s.to_string(),
                    answer: drill::resolve(&self.handler, &owner, s),
                });
            }
        }
        out
    }

    /// Drill records with, in fleet mode, every instance's rows.
    pub fn drills_view(&self) -> Vec<DrillRecord> {
        let mut drills = self.drills();
        if let Some(f) = self.fleet() {
            for d in drills.iter_mut().filter(|d| !d.dry_run) {
                d.fleet = Some(f.drill_rows(d));
            }
        }
        drills
    }

    /// Fleet mode: the forced states and drills etcd holds now replace the local ones (a
    /// peer's change, or the state read at start-up or after an outage). Drills that stopped
    /// elsewhere wake their local finisher; the state file keeps the last state seen, for a
    /// start while etcd is unreachable.
    ///
    /// `read` gives the fleet's state once the save lock is held, so a local change committed
    /// meanwhile is in it (it was in etcd, and in the mirror, before the lock was released).
    /// Returns the drills applied.
    pub async fn apply_fleet_state(&self, read: impl FnOnce() -> Persisted) -> Vec<DrillRecord> {
        let _serial = self.save_lock.lock().await;
        let fleet_state = read();
        let drills = fleet_state.drills.clone();
        let not_running: Vec<String> = fleet_state
            .drills
            .iter()
            .filter(|d| d.status != DrillStatus::Running)
            .map(|d| d.id.clone())
            .collect();
        let forced = {
            let mut p = self.persisted();
            *p = fleet_state;
            p.prune(self.clock.unix_secs());
            p.forced.clone()
        };
        self.prober.set_forced(forced).await;
        {
            let stops = self.drill_stops.lock().unwrap_or_else(|e| e.into_inner());
            for id in &not_running {
                if let Some(n) = stops.get(id) {
                    n.notify_one();
                }
            }
        }
        if let Err(e) = self.save_file().await {
            warn!(error = %e, "fleet: the last state seen is not kept in the state file");
        }
        drills
    }

    fn persisted(&self) -> std::sync::MutexGuard<'_, Persisted> {
        // A poisoned lock only means a panic elsewhere mid-update; the data is still usable.
        self.persisted.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forced states in effect.
    pub fn forced(&self) -> Vec<ForceEntry> {
        let mut p = self.persisted();
        p.prune(self.clock.unix_secs());
        p.forced.clone()
    }

    /// Drill records.
    pub fn drills(&self) -> Vec<DrillRecord> {
        self.persisted().drills.clone()
    }

    /// Changes the persisted state with `change`, stores it (state file, or etcd in fleet
    /// mode) and hands the forced states to the prober — all under the save lock, so a fleet
    /// update never lands between a change and its store. Used by drills: standalone, a
    /// state-file error is logged and the drill goes on (it is verified live); in fleet mode
    /// the error is returned, since a change etcd did not take would be one NS's alone.
    async fn commit_with(&self, change: impl FnOnce(&mut Persisted)) -> Result<(), String> {
        let _serial = self.save_lock.lock().await;
        let before = self.persisted().clone();
        change(&mut self.persisted());
        let stored = self.save(&before).await;
        if stored.is_err() && self.fleet().is_some() {
            // Not in etcd: not here either (a change one NS alone makes is what fleet mode
            // exists to prevent).
            *self.persisted() = before;
        }
        let forced = {
            let mut p = self.persisted();
            p.prune(self.clock.unix_secs());
            p.forced.clone()
        };
        self.prober.set_forced(forced).await;
        match stored {
            Err(e) if self.fleet().is_none() => {
                error!(error = %e, "forced states will not survive a restart");
                Ok(())
            }
            other => other,
        }
    }

    /// Stores the current persisted state: in etcd in fleet mode — the keys this change
    /// touched, compared with `before` (the state it started from), each only if no other
    /// instance changed it meanwhile — and then in the state file, as the last state seen;
    /// standalone, in the state file. The caller holds `save_lock`.
    async fn save(&self, before: &Persisted) -> Result<(), String> {
        if let Some(fleet) = self.fleet() {
            let snapshot = self.persisted().clone();
            fleet.store(before, &snapshot).await?;
            if let Err(e) = self.save_file().await {
                warn!(error = %e, "fleet: the last state seen is not kept in the state file");
            }
            return Ok(());
        }
        self.save_file().await
    }

    /// Writes the current persisted state to the state file (off the runtime).
    async fn save_file(&self) -> Result<(), String> {
        let (snapshot, path) = {
            let mut p = self.persisted();
            p.prune(self.clock.unix_secs());
            (p.clone(), self.config.load().state_file.clone())
        };
        let shown = path.display().to_string();
        match tokio::task::spawn_blocking(move || snapshot.save(&path)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("cannot write the state file {shown}: {e}")),
            Err(e) => Err(format!("state file writer failed: {e}")),
        }
    }

    /// Reloads configuration, zones, profiles and GeoIP databases (see [`Control::reload_with`]);
    /// a reload that would remove every zone or every profile is refused.
    pub async fn reload(&self, trigger: &str) -> Result<u64, String> {
        self.reload_with(trigger, false).await
    }

    /// Reloads configuration, zones, profiles and GeoIP databases. Parsing happens off the
    /// runtime; on success the new state replaces the old in one atomic swap (queries in
    /// flight finish on the old one); on failure the old state keeps serving.
    ///
    /// Loading runs on a thread of its own with a deadline (`[admin] reload_timeout`): files
    /// are opened without blocking and must be regular, but a read can still hang (a hung
    /// network mount, a file swapped for a FIFO between check and read). Past the deadline the
    /// load is abandoned and reported as a failed reload, so the reload lock is released and
    /// later reloads still run. A plain thread rather than `spawn_blocking`: the runtime waits
    /// for its blocking pool when it shuts down, so a stuck read there would keep SIGTERM from
    /// ever exiting.
    ///
    /// `allow_removal`: without it, a reload after which none of the zones, or none of the
    /// traffic profiles, served now would be served any more is refused — that is nearly
    /// always a mistake (a wrong directory, an emptied or missing file) and would answer every
    /// name NXDOMAIN or REFUSED.
    pub async fn reload_with(&self, trigger: &str, allow_removal: bool) -> Result<u64, String> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let loaded = self.load_with_deadline().await.and_then(|(config, state)| {
            match (
                allow_removal,
                removes_everything(&self.state.load(), &state),
            ) {
                (false, Some(what)) => Err(format!(
                    "refused: after this reload {what}; if that is intended, reload with \
                     `geosteer reload --allow-removal` or `POST /api/reload?allow_removal=true`"
                )),
                _ => Ok((config, state)),
            }
        });
        let mut status = self
            .reload_status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        status.at_unix = self.clock.unix_f64();
        status.trigger = trigger.to_string();
        let result = match loaded {
            Ok((config, state)) => {
                let old = self.config.load();
                if old.udp != config.udp
                    || old.tcp != config.tcp
                    || old.workers != config.workers
                    || old.admin_listen != config.admin_listen
                    || old.cluster != config.cluster
                {
                    warn!(
                        "listen addresses, workers, the admin address or [cluster] changed: they take effect after a restart"
                    );
                }
                self.state.store(Arc::new(state));
                self.prober.reconfigure(&self.state.load().routing).await;
                // A per-run token stays valid while the file still configures none.
                let mut config = config;
                if config.admin_token.is_none() && old.run_token_file.is_some() {
                    config.admin_token.clone_from(&old.admin_token);
                    config.run_token_file.clone_from(&old.run_token_file);
                }
                self.config.store(Arc::new(config));
                self.metrics.reloads.inc();
                status.generation += 1;
                status.error = None;
                info!(
                    trigger,
                    generation = status.generation,
                    "configuration reloaded"
                );
                Ok(status.generation)
            }
            Err(e) => {
                self.metrics.reload_errors.inc();
                error!(trigger, error = %e, "reload failed; the previous configuration keeps serving");
                status.error = Some(e.clone());
                Err(e)
            }
        };
        *self.reload_status.lock().unwrap_or_else(|e| e.into_inner()) = status;
        // The old state and the parser's temporaries are freed now (or as soon as the last
        // in-flight query lets go of the old state); hand the memory back to the OS so RSS
        // does not ratchet up with every reload. Off the runtime: a trim can take milliseconds.
        drop(tokio::task::spawn_blocking(trim_heap));
        result
    }

    /// Loads configuration and state on a thread of its own, waiting at most
    /// `[admin] reload_timeout` for it (see [`Control::reload_with`]).
    async fn load_with_deadline(&self) -> Result<(Config, State), String> {
        use std::sync::atomic::Ordering;
        /// Counts a load thread out however it ends.
        struct Running(Arc<std::sync::atomic::AtomicUsize>);
        impl Drop for Running {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let timeout = self.config.load().reload_timeout;
        let before = self.loads_running.fetch_add(1, Ordering::SeqCst);
        let running = Running(self.loads_running.clone());
        if before >= MAX_ABANDONED_LOADS {
            return Err(format!(
                "{before} earlier reloads are still stuck reading files (abandoned after \
                 reload_timeout); not starting another — fix the file that never finishes \
                 reading (a hung mount?) or restart geosteer"
            ));
        }
        let path = self.config_path.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("geosteer-reload".into())
            .spawn(move || {
                let _running = running;
                let loaded = Config::load(path.as_deref())
                    .map_err(|e| e.to_string())
                    .and_then(|config| {
                        let state = crate::state::build(&config).map_err(|e| e.to_string())?;
                        Ok((config, state))
                    });
                let _ = tx.send(loaded);
            });
        if let Err(e) = spawned {
            return Err(format!("cannot start the reload thread: {e}"));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(loaded)) => loaded,
            Ok(Err(_)) => Err("the reload thread ended without a result".into()),
            Err(_) => Err(format!(
                "reading and validating the files took longer than reload_timeout ({}); \
                 abandoned (is a file on a hung mount, or a pipe?)",
                humantime::format_duration(timeout)
            )),
        }
    }

    /// Resolves a profile reference (owner name with or without its trailing dot, or its first
    /// label) and endpoint name to the key. Not found: the message lists what there is.
    pub fn endpoint_key(
        &self,
        profile: &str,
        endpoint: &str,
    ) -> Result<(String, String), ControlError> {
        let state = self.state.load();
        let p = state
            .routing
            .find_profile(profile)
            .map(|i| &state.routing.profiles[i])
            .ok_or_else(|| {
                let names: Vec<String> = state
                    .routing
                    .profiles
                    .iter()
                    .map(|p| p.owner.to_string())
                    .collect();
                ControlError::NotFound(format!(
                    "no profile {profile:?} (profiles: {})",
                    names.join(", ")
                ))
            })?;
        let e = p
            .endpoints
            .iter()
            .find(|e| e.name == endpoint)
            .or_else(|| {
                p.endpoints
                    .iter()
                    .find(|e| e.name.eq_ignore_ascii_case(endpoint))
            })
            .ok_or_else(|| {
                let names: Vec<&str> = p.endpoints.iter().map(|e| e.name.as_str()).collect();
                ControlError::NotFound(format!(
                    "profile {} has no endpoint {endpoint:?} (endpoints: {})",
                    p.owner,
                    names.join(", ")
                ))
            })?;
        Ok((p.owner.to_string(), e.key.to_string()))
    }

    /// Resolves an endpoint reference in any form the CLI accepts — `profile/endpoint` where
    /// the profile is its owner name with or without the trailing dot
    /// (`mqtt.example.test./westeurope`, `mqtt.example.test/westeurope`) or its first label
    /// (`mqtt/westeurope`) — to the endpoint key.
    pub fn endpoint_ref(&self, reference: &str) -> Result<String, ControlError> {
        match reference.rsplit_once('/') {
            Some((profile, endpoint)) if !profile.is_empty() && !endpoint.is_empty() => {
                self.endpoint_key(profile, endpoint).map(|(_, key)| key)
            }
            _ => Err(ControlError::BadRequest(format!(
                "endpoint {reference:?}: give it as profile/endpoint, e.g. mqtt/westeurope"
            ))),
        }
    }

    /// Forces an endpoint or a region down/up (replacing an earlier operator force of the same
    /// target), or lifts (`action = None`: back to probing).
    ///
    /// Lifting is what an operator reaches for in an emergency, so it clears everything that
    /// holds the target, not only the entry of that exact name: lifting a region removes every
    /// force on the region *and* on each endpoint in it, drills' forces included (those drills
    /// are stopped, recorded as stopped, and verify their revert in the background); lifting
    /// an endpoint removes every force and drill on it. A region force still covering a lifted
    /// endpoint is left alone (it holds other endpoints too) and reported in `still_forced`.
    ///
    /// The change is written to the state file *before* it takes effect: if the write fails,
    /// the change is rolled back in memory, the prober never sees it, and the caller gets
    /// [`ControlError::NotSaved`]. A force that only lived in memory would silently vanish at
    /// the next restart — the operator must know it was not made.
    pub async fn force(
        &self,
        target: ForceTarget,
        action: Option<ForceAction>,
        reason: String,
        duration: Option<Duration>,
        scope: Vec<ipnet::IpNet>,
    ) -> Result<ForceOutcome, ControlError> {
        // Validate the target against the current table; note which endpoints it covers and
        // which region each endpoint is in (what a lift clears, and what may still hold it).
        let (covered, regions): (Vec<String>, Vec<(String, String)>) = {
            let state = self.state.load();
            let all: Vec<&crate::routing::Endpoint> = state
                .routing
                .profiles
                .iter()
                .flat_map(|p| &p.endpoints)
                .collect();
            let covered = all
                .iter()
                .filter(|e| match &target {
                    ForceTarget::Endpoint(k) => &*e.key == k.as_str(),
                    ForceTarget::Region(r) => e.region.as_deref() == Some(r.as_str()),
                })
                .map(|e| e.key.to_string())
                .collect();
            let regions = all
                .iter()
                .filter_map(|e| Some((e.key.to_string(), e.region.clone()?)))
                .collect();
            (covered, regions)
        };
        if covered.is_empty() {
            let state = self.state.load();
            return Err(ControlError::NotFound(match &target {
                ForceTarget::Endpoint(k) => format!("no endpoint {k:?}"),
                ForceTarget::Region(r) => {
                    let mut used: Vec<&str> = state
                        .routing
                        .profiles
                        .iter()
                        .flat_map(|p| &p.endpoints)
                        .filter_map(|e| e.region.as_deref())
                        .collect();
                    used.sort_unstable();
                    used.dedup();
                    let close: Vec<&str> = used
                        .iter()
                        .copied()
                        .filter(|u| u.rsplit(':').next() == Some(r.rsplit(':').next().unwrap_or(r)))
                        .collect();
                    let hint = if close.is_empty() {
                        String::new()
                    } else {
                        format!("did you mean {}? ", close.join(" or "))
                    };
                    format!(
                        "no endpoint is in region {r:?} ({hint}regions in use: {}; names are provider:region)",
                        used.join(", ")
                    )
                }
            }));
        }
        // What this call removes: a force/unforce replaces the operator's force of the same
        // target; a lift removes every force on the target and on the endpoints it covers.
        let lifts = |f: &ForceEntry| match (action, &f.target) {
            (Some(_), t) => *t == target && f.drill.is_none(),
            (None, t) if *t == target => true,
            (None, ForceTarget::Endpoint(k)) => covered.contains(k),
            (None, ForceTarget::Region(_)) => false,
        };
        let _serial = self.save_lock.lock().await;
        let before = self.persisted().clone();
        let now_ms = started_ms(&self.clock);
        let replaced: Vec<ForceEntry> = {
            let mut p = self.persisted();
            let replaced: Vec<ForceEntry> = p.forced.extract_if(.., |f| lifts(f)).collect();
            if let Some(action) = action {
                p.forced.push(ForceEntry {
                    target: target.clone(),
                    force: Force {
                        action,
                        scope,
                        reason: reason.clone(),
                        // Rounded up to the second: at least as long as asked.
                        until: duration
                            .map(|d| (now_ms + d.as_millis().max(1000) as u64).div_ceil(1000)),
                    },
                    drill: None,
                });
            }
            // Drills whose force was lifted are over: recorded as stopped in the same change
            // (stored with it: in fleet mode every instance sees the drill end), and their
            // finishers verify the revert.
            for d in p.drills.iter_mut().filter(|d| {
                d.status == DrillStatus::Running
                    && replaced
                        .iter()
                        .any(|f| f.drill.as_deref() == Some(d.id.as_str()))
            }) {
                d.status = DrillStatus::Stopped;
                d.ended_ms.get_or_insert(now_ms);
            }
            replaced
        };
        if let Err(e) = self.save(&before).await {
            *self.persisted() = before;
            error!(?target, ?action, error = %e, "forced state not changed");
            return Err(if self.fleet().is_some() {
                ControlError::NotReady(format!("{e}; the forced state was not changed"))
            } else {
                ControlError::NotSaved(format!(
                    "{e}; the forced state was not changed (it could not be kept across a restart)"
                ))
            });
        }
        let forced = self.forced();
        self.prober.set_forced(forced.clone()).await;
        let stopped_drills: Vec<String> = replaced.iter().filter_map(|f| f.drill.clone()).collect();
        {
            let stops = self.drill_stops.lock().unwrap_or_else(|e| e.into_inner());
            for id in &stopped_drills {
                if let Some(n) = stops.get(id) {
                    n.notify_one();
                }
            }
        }
        // A lifted endpoint may still be held by its region's force: say so.
        let still_forced: Vec<ForceEntry> = if action.is_none() {
            forced
                .iter()
                .filter(|f| match &f.target {
                    ForceTarget::Region(r) => covered
                        .iter()
                        .any(|k| regions.iter().any(|(key, region)| key == k && region == r)),
                    ForceTarget::Endpoint(k) => covered.contains(k),
                })
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        if action.is_none() {
            info!(?target, lifted = replaced.len(), drills_stopped = ?stopped_drills, "forced states lifted");
        } else {
            info!(?target, ?action, %reason, "forced state changed");
        }
        Ok(ForceOutcome {
            target,
            action,
            lifted: replaced,
            stopped_drills,
            still_forced,
            forced,
        })
    }

    fn predicted_handler(&self, key: &str, scope: &[ipnet::IpNet]) -> Handler {
        let mut health = (**self.health.load()).clone();
        let mut h = health.get(key).clone();
        // Added beside the forces already there: the effective-state rule weighs it against
        // them exactly as it will weigh the drill's real force.
        h.forced.push((
            ForceOrigin::Drill,
            Arc::new(Force {
                action: ForceAction::Down,
                scope: scope.to_vec(),
                reason: "dry run".into(),
                until: None,
            }),
        ));
        health.set(key, h);
        Handler::new(
            self.state.clone(),
            Arc::new(ArcSwap::from_pointee(health)),
            Arc::new(Metrics::default()),
            1232,
        )
    }

    /// Starts a drill and returns once the move is verified (or verification timed out).
    pub async fn start_drill(
        self: &Arc<Self>,
        req: DrillRequest,
    ) -> Result<DrillRecord, ControlError> {
        let duration = parse_duration(&req.duration).map_err(ControlError::BadRequest)?;
        let (profile, key) = self.endpoint_key(&req.profile, &req.endpoint)?;
        // A monitored endpoint without a first probe verdict: the verdict may land while the
        // drill verifies, and its move could not be told from the drill's own.
        let monitored = self
            .state
            .load()
            .routing
            .endpoints()
            .any(|(_, e)| *e.key == *key && e.monitor.is_some());
        if monitored && self.health.load().get(&key).state == MonitorState::CheckingEndpoint {
            return Err(ControlError::NotReady(format!(
                "{key} has no probe verdict yet (CheckingEndpoint): a drill now could not tell \
                 its own move from the first verdict's; retry once it has been probed \
                 (/readyz answers 200 after the first probe round)"
            )));
        }
        if self
            .drills()
            .iter()
            .any(|d| d.status == DrillStatus::Running && d.key == key)
        {
            return Err(ControlError::Conflict(format!(
                "a drill on {key} is already running"
            )));
        }
        let config = self.config.load();
        let mut samples: Vec<ipnet::IpNet> = if req.scope.is_empty() {
            config.drill_samples.clone()
        } else {
            config
                .drill_samples
                .iter()
                .filter(|s| req.scope.iter().any(|n| n.contains(&s.trunc().addr())))
                .copied()
                .collect()
        };
        if samples.is_empty() {
            samples = req.scope.clone();
        }
        if samples.is_empty() {
            return Err(ControlError::BadRequest(
                "no sample subnets: set [admin] drill_samples or give --scope".into(),
            ));
        }
        let started = self.clock.unix_secs();
        // `d<start ms>`, made unique among the records kept (two drills can start within
        // one millisecond, or at one instant of an injected clock).
        let id = {
            let base = format!("d{}", started_ms(&self.clock));
            let taken = self.drills();
            let mut id = base.clone();
            let mut n = 1;
            while taken.iter().any(|d| d.id == id) {
                n += 1;
                id = format!("{base}-{n}");
            }
            id
        };
        let predictor = self.predicted_handler(&key, &req.scope);
        let mut results: Vec<SampleResult> = samples
            .iter()
            .map(|s| {
                let before = drill::resolve(&self.handler, &profile, s);
                let predicted = drill::resolve(&predictor, &profile, s);
                SampleResult {
                    subnet: *s,
                    expected_move: before != predicted,
                    before,
                    predicted,
                    during: None,
                    moved_ms: None,
                    after: None,
                    back_ms: None,
                }
            })
            .collect();
        let mut record = DrillRecord {
            id: id.clone(),
            profile: profile.clone(),
            endpoint: req.endpoint.clone(),
            key: key.clone(),
            scope: req.scope.clone(),
            dry_run: req.dry_run,
            started_unix: started,
            started_ms: started_ms(&self.clock),
            ended_ms: None,
            by: self.fleet().map(|f| f.instance().to_string()),
            // Whole seconds (the force's resolution), rounded up: a drill lasts at least as
            // long as asked, not up to a second less.
            until_unix: (started_ms(&self.clock) + duration.as_millis().max(1000) as u64)
                .div_ceil(1000),
            status: if req.dry_run {
                DrillStatus::DryRun
            } else {
                DrillStatus::Running
            },
            samples: Vec::new(),
            verified_move: None,
            verified_back: None,
            fleet: None,
        };
        if req.dry_run {
            record.samples = results;
            let stored = record.clone();
            self.commit_with(|p| p.drills.push(stored))
                .await
                .map_err(|e| self.not_stored(e))?;
            return Ok(record);
        }
        // Force it down — the record (with the answers before and the predictions, which every
        // fleet instance verifies against) goes with the force — then watch the answers move.
        record.samples = results.clone();
        let force = ForceEntry {
            target: ForceTarget::Endpoint(key.clone()),
            force: Force {
                action: ForceAction::Down,
                scope: req.scope.clone(),
                reason: format!("drill {id}"),
                until: Some(record.until_unix),
            },
            drill: Some(id.clone()),
        };
        let stored = record.clone();
        let forced_at = tokio::time::Instant::now();
        if let Err(e) = self
            .commit_with(|p| {
                p.forced.push(force);
                p.drills.push(stored);
            })
            .await
        {
            // Not in etcd, so not here either (`commit_with` rolled it back).
            return Err(self.not_stored(e));
        }
        info!(drill = %id, endpoint = %key, ?duration, "drill started");
        self.watch(&profile, &mut results, forced_at, true).await;
        // Verified only if something was expected to move and did (and nothing else did): a
        // drill whose samples all stay put proves nothing about failover, so it must not say
        // "yes" (the report says there was nothing to verify).
        record.verified_move = Some(
            results.iter().any(|r| r.expected_move)
                && results.iter().all(|r| {
                    let moved = r.during.as_deref() != Some(r.before.as_str());
                    moved == r.expected_move
                }),
        );
        record.samples = results;
        // Stopped meanwhile (a lift or a stop from another instance): keep that status.
        let (verified_move, samples) = (record.verified_move, record.samples.clone());
        let _ = self
            .commit_with(|p| {
                if let Some(d) = p.drills.iter_mut().find(|d| d.id == id) {
                    d.verified_move = verified_move;
                    d.samples = samples;
                }
            })
            .await;
        if let Some(d) = self.drills().into_iter().find(|d| d.id == record.id) {
            record = d;
        }
        self.spawn_finisher(id);
        Ok(record)
    }

    /// The error for a change the store did not take: in fleet mode, etcd unreachable (503,
    /// retry later); standalone, the state file (500).
    fn not_stored(&self, e: String) -> ControlError {
        if self.fleet().is_some() {
            ControlError::NotReady(e)
        } else {
            ControlError::NotSaved(e)
        }
    }

    /// Polls the samples until each shows its expected state. `moving`: waiting for the drill
    /// answers (fills `during`/`moved_ms`); else waiting for the old answers (`after`/`back_ms`).
    async fn watch(
        &self,
        profile: &str,
        results: &mut [SampleResult],
        since: tokio::time::Instant,
        moving: bool,
    ) {
        let deadline = since + VERIFY_WITHIN;
        loop {
            let mut pending = false;
            for r in results.iter_mut() {
                let now = drill::resolve(&self.handler, profile, &r.subnet);
                let ms = u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX);
                if moving {
                    let target_reached = if r.expected_move {
                        now != r.before
                    } else {
                        true
                    };
                    if r.moved_ms.is_none() && r.expected_move && target_reached {
                        r.moved_ms = Some(ms);
                    }
                    pending |= !target_reached;
                    r.during = Some(now);
                } else {
                    let back = now == r.before;
                    if r.back_ms.is_none() && back && r.expected_move {
                        r.back_ms = Some(ms);
                    }
                    pending |= !back;
                    r.after = Some(now);
                }
            }
            if !pending || tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(VERIFY_EVERY).await;
        }
    }

    /// Starts the task that ends drill `id` at expiry or on `drill stop`.
    fn spawn_finisher(self: &Arc<Self>, id: String) {
        let stop = Arc::new(Notify::new());
        self.drill_stops
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), stop.clone());
        let me = self.clone();
        tokio::spawn(async move { me.finish_drill(id, stop).await });
    }

    /// Waits for expiry or stop, lifts the force, verifies the answers came back.
    async fn finish_drill(self: Arc<Self>, id: String, stop: Arc<Notify>) {
        let Some(record) = self.drills().into_iter().find(|d| d.id == id) else {
            return;
        };
        let left_ms = (record.until_unix * 1000).saturating_sub(started_ms(&self.clock));
        // Stopped or lifted before this finisher was registered (during the move's
        // verification, or elsewhere in the fleet): its notification came too early to hear.
        let ended = record.status != DrillStatus::Running || record.ended_ms.is_some();
        let stopped = ended
            || tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(left_ms)) => false,
                _ = stop.notified() => true,
            };
        let lifted_at = tokio::time::Instant::now();
        let now_ms = started_ms(&self.clock);
        let _ = self
            .commit_with(|p| {
                p.forced.retain(|f| f.drill.as_deref() != Some(id.as_str()));
                if let Some(d) = p.drills.iter_mut().find(|d| d.id == id) {
                    d.ended_ms
                        .get_or_insert(if stopped { now_ms } else { d.until_unix * 1000 });
                }
            })
            .await;
        let mut samples = record.samples.clone();
        self.watch(&record.profile, &mut samples, lifted_at, false)
            .await;
        let verified_back = samples
            .iter()
            .all(|s| s.after.as_deref() == Some(s.before.as_str()));
        let mut status = DrillStatus::Done;
        let _ = self
            .commit_with(|p| {
                if let Some(d) = p.drills.iter_mut().find(|d| d.id == id) {
                    d.verified_back = Some(verified_back);
                    d.samples = samples;
                    d.status = if stopped || d.status == DrillStatus::Stopped {
                        DrillStatus::Stopped
                    } else {
                        DrillStatus::Done
                    };
                    status = d.status;
                }
            })
            .await;
        info!(drill = %id, ?status, verified_back, "drill ended");
        self.drill_stops
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    /// Stops running drills (all, or one by id): each is recorded as stopped and its force
    /// lifted (in fleet mode in etcd, so every instance reverts, whichever started it); the
    /// local finisher verifies the revert. Returns how many were stopped; an id that names no
    /// running drill is an error (a typo must not look like a stopped drill).
    pub async fn stop_drills(&self, id: Option<&str>) -> Result<usize, ControlError> {
        let running: Vec<String> = self
            .drills()
            .into_iter()
            .filter(|d| d.status == DrillStatus::Running && id.is_none_or(|i| i == d.id))
            .map(|d| d.id)
            .collect();
        if let Some(i) = id
            && running.is_empty()
        {
            let known = self.drills().iter().any(|d| d.id == i);
            return Err(ControlError::NotFound(if known {
                format!("drill {i} is not running")
            } else {
                format!("no drill {i:?} (see `geosteer drill status`)")
            }));
        }
        if running.is_empty() {
            return Ok(0);
        }
        let now_ms = started_ms(&self.clock);
        self.commit_with(|p| {
            p.forced
                .retain(|f| f.drill.as_ref().is_none_or(|d| !running.contains(d)));
            for d in p.drills.iter_mut().filter(|d| running.contains(&d.id)) {
                d.status = DrillStatus::Stopped;
                d.ended_ms.get_or_insert(now_ms);
            }
        })
        .await
        .map_err(|e| self.not_stored(e))?;
        let stops = self.drill_stops.lock().unwrap_or_else(|e| e.into_inner());
        for i in &running {
            if let Some(n) = stops.get(i) {
                n.notify_one();
            }
        }
        Ok(running.len())
    }

    /// After a restart (standalone): drills that expired while down are marked, running ones
    /// resume their wait for expiry (their force entries were restored from the state file).
    /// In fleet mode every instance verifies every drill and expired ones are finished in etcd
    /// (`ops::fleet`), so there is nothing to resume here.
    pub async fn resume_drills(self: &Arc<Self>) {
        if self.fleet().is_some() {
            return;
        }
        let now = self.clock.unix_secs();
        let mut resumed = Vec::new();
        let _ = self
            .commit_with(|p| {
                for d in p
                    .drills
                    .iter_mut()
                    .filter(|d| d.status == DrillStatus::Running)
                {
                    if d.until_unix <= now {
                        d.status = DrillStatus::Expired;
                    } else {
                        resumed.push(d.id.clone());
                    }
                }
            })
            .await;
        for id in resumed {
            info!(drill = %id, "resuming drill after restart");
            self.spawn_finisher(id);
        }
    }
}

/// What a reload from `old` to `new` would remove entirely, if it removes every zone or every
/// traffic profile served now: "no zone served now would be served (example.test.)".
fn removes_everything(old: &State, new: &State) -> Option<String> {
    fn list<'a>(names: impl Iterator<Item = &'a str>) -> String {
        let names: Vec<&str> = names.collect();
        let more = names.len().saturating_sub(5);
        let mut s = names.into_iter().take(5).collect::<Vec<_>>().join(", ");
        if more > 0 {
            s.push_str(&format!(" and {more} more"));
        }
        s
    }
    let old_zones: Vec<String> = old.zones.iter().map(|z| z.origin.to_string()).collect();
    let new_zones: Vec<String> = new.zones.iter().map(|z| z.origin.to_string()).collect();
    if !old_zones.is_empty() && !old_zones.iter().any(|z| new_zones.contains(z)) {
        return Some(format!(
            "no zone served now would be served ({})",
            list(old_zones.iter().map(String::as_str))
        ));
    }
    let old_profiles: Vec<String> = old
        .routing
        .profiles
        .iter()
        .map(|p| p.owner.to_string())
        .collect();
    let new_profiles: Vec<String> = new
        .routing
        .profiles
        .iter()
        .map(|p| p.owner.to_string())
        .collect();
    if !old_profiles.is_empty() && !old_profiles.iter().any(|p| new_profiles.contains(p)) {
        return Some(format!(
            "no traffic profile served now would be served ({}): their names would answer \
             NXDOMAIN",
            list(old_profiles.iter().map(String::as_str))
        ));
    }
    None
}

/// Returns free heap pages to the OS (glibc keeps them otherwise: with 10,000 endpoints each
/// reload left RSS ~35 MiB higher until it plateaued at ~1.6× the start-up figure).
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory the allocator already considers free; it has no
    // preconditions and is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

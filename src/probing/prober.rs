//! Probing: one task per monitored endpoint, one publisher that owns every verdict.
//!
//! Failover speed comes from three choices:
//! - probing starts at once and repeats every `interval` (1 s by default, plus jitter);
//! - a failure is confirmed *at once* by a second probe instead of waiting for the next
//!   interval, and a probe still unanswered after a short hedge delay (4× the endpoint's usual
//!   RTT, at least 100 ms, at most half the timeout) gets a parallel confirmation probe — so a
//!   refused endpoint is degraded within milliseconds of the first failed probe, and one that
//!   silently drops packets about one timeout after it;
//! - a verdict change is published (one `ArcSwap` store) the moment it happens; the DNS path
//!   reads the snapshot and never waits on a probe.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::load::LoadPoller;
use super::probe::{Probe, ProbeOutcome, ProbeTls, TlsRegistry};
use crate::base::Clock;
use crate::health::StatusSnapshot;
use crate::health::load::CapacitySpec;
use crate::health::monitor::{MonitorSpec, Protocol};
use crate::health::state::Tracker;
use crate::health::votes::{Vote, Votes};
use crate::health::{
    EndpointHealth, EndpointStatus, Force, ForceEntry, ForceOrigin, ForceTarget, HealthSnapshot,
    MonitorState,
};
use crate::routing::{RoutingTable, Stability, Target};

/// Probes in flight at once across all endpoints: bounds sockets and CPU with many endpoints.
const MAX_CONCURRENT_PROBES: usize = 256;
/// How often RTT changes (not state changes: those publish at once) are published.
const RTT_PUBLISH_EVERY: Duration = Duration::from_millis(250);
/// Shortest gap between two state-change publishes (bursts are coalesced).
const URGENT_COALESCE: Duration = Duration::from_millis(20);
/// How long a probe hostname's resolution is reused.
const RESOLVE_EVERY: Duration = Duration::from_secs(30);
/// Shortest hedge delay before a parallel confirmation probe.
const MIN_HEDGE: Duration = Duration::from_millis(100);

/// What to probe for one endpoint.
#[derive(Debug, Clone)]
pub struct ProbeTarget {
    /// Endpoint key.
    pub key: Arc<str>,
    /// Monitor settings.
    pub spec: MonitorSpec,
    /// Address to probe, or a hostname to resolve.
    pub host: ProbeHost,
}

/// A load source to poll for one endpoint.
#[derive(Debug, Clone)]
pub struct LoadTarget {
    /// Endpoint key.
    pub key: Arc<str>,
    /// Source and limits.
    pub spec: CapacitySpec,
}

/// Holds probe RTT changes for ranking until they persist (see `EndpointHealth::rank_rtt_ms`).
#[derive(Debug, Clone, Copy, Default)]
struct Held {
    value: Option<f64>,
    pending_since: Option<Instant>,
}

impl Held {
    fn update(&mut self, raw: Option<f64>, s: &Stability, now: Instant) -> Option<f64> {
        let Some(raw) = raw else { return self.value };
        match self.value {
            None => self.value = Some(raw),
            Some(held) => {
                let margin = s.margin_ms.max(held * s.margin_pct / 100.0);
                if (raw - held).abs() > margin {
                    let since = *self.pending_since.get_or_insert(now);
                    if now.saturating_duration_since(since) >= s.hold {
                        self.value = Some(raw);
                        self.pending_since = None;
                    }
                } else {
                    self.pending_since = None;
                }
            }
        }
        self.value
    }
}

/// Share of client networks a recovered endpoint may take back: grows linearly from 0 at
/// recovery to 1 after `period` (always 1 without a ramp or a recovery).
fn ramp_share(recovered_at: Option<Instant>, period: Duration, now: Instant) -> f64 {
    match recovered_at {
        Some(at) if !period.is_zero() => {
            (now.saturating_duration_since(at).as_secs_f64() / period.as_secs_f64()).min(1.0)
        }
        _ => 1.0,
    }
}

/// Last load poll of one endpoint.
#[derive(Debug, Clone)]
struct LoadState {
    connections: Option<f64>,
    at: Option<Instant>,
    error: Option<String>,
}

/// Where a probe goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeHost {
    /// An address.
    Ip(IpAddr),
    /// A hostname, resolved before each round.
    Name(String),
}

/// Splits a table's endpoints into probe targets and unmonitored keys.
pub fn plan(table: &RoutingTable) -> (Vec<ProbeTarget>, Vec<Arc<str>>) {
    let mut probed = Vec::new();
    let mut unmonitored = Vec::new();
    for p in &table.profiles {
        for e in &p.endpoints {
            let host = match (&e.monitor, &e.target) {
                (_, Target::Nested(_)) => continue,
                (None, _) => {
                    unmonitored.push(e.key.clone());
                    continue;
                }
                (Some(spec), target) => match (&spec.host, target) {
                    (Some(h), _) => match h.parse::<IpAddr>() {
                        Ok(ip) => ProbeHost::Ip(ip),
                        Err(_) => ProbeHost::Name(h.clone()),
                    },
                    (None, Target::Addrs { a, aaaa }) => {
                        match a.iter().chain(aaaa).find_map(|r| r.data.ip_addr()) {
                            Some(ip) => ProbeHost::Ip(ip),
                            None => continue,
                        }
                    }
                    (None, Target::Cname(r)) => match &r.data {
                        hickory_server::proto::rr::RData::CNAME(c) => {
                            ProbeHost::Name(c.0.to_ascii().trim_end_matches('.').to_string())
                        }
                        _ => continue,
                    },
                    (None, Target::Nested(_)) => continue,
                },
            };
            if let Some(spec) = &e.monitor {
                probed.push(ProbeTarget {
                    key: e.key.clone(),
                    spec: spec.clone(),
                    host,
                });
            }
        }
    }
    (probed, unmonitored)
}

/// The snapshot before any probe has answered: probed endpoints CheckingEndpoint, the rest
/// Unmonitored. `explain` without a running server uses it.
pub fn initial_snapshot(table: &RoutingTable) -> HealthSnapshot {
    let (_, unmonitored) = plan(table);
    let mut snap = HealthSnapshot::default();
    for k in &unmonitored {
        snap.set(
            k,
            EndpointHealth {
                state: MonitorState::Unmonitored,
                ..Default::default()
            },
        );
    }
    snap
}

/// One probe result on its way to the publisher.
struct Report {
    key: Arc<str>,
    outcome: ProbeOutcome,
}

/// What the publisher is told.
enum Msg {
    Report(Report),
    Load(Arc<str>, Result<f64, String>),
    Reconfigure(Plan),
    /// New forced states; the sender (if any) hears once they are published.
    Forced(Vec<ForceEntry>, Option<tokio::sync::oneshot::Sender<()>>),
    /// The fleet's votes (`None`: no fleet, or its votes are stale — own verdicts rule).
    Votes(Option<Votes>),
}

/// A table's probing plan.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    targets: Vec<ProbeTarget>,
    unmonitored: Vec<Arc<str>>,
    /// Every endpoint key (probed, unmonitored and nested) with its region, for region forces.
    regions: Vec<(Arc<str>, Option<String>)>,
    /// Load sources.
    loads: Vec<LoadTarget>,
    /// Each endpoint's profile stability settings.
    stability: HashMap<Arc<str>, Stability>,
    /// The table itself, to tell which profiles fail open in each snapshot.
    table: Arc<RoutingTable>,
}

impl Plan {
    /// The plan for a table.
    pub fn of(table: &RoutingTable) -> Self {
        let (targets, unmonitored) = plan(table);
        let regions = table
            .profiles
            .iter()
            .flat_map(|p| {
                p.endpoints
                    .iter()
                    .map(|e| (e.key.clone(), e.region.clone()))
            })
            .collect();
        let loads = table
            .profiles
            .iter()
            .flat_map(|p| p.endpoints.iter())
            .filter_map(|e| {
                e.capacity.as_ref().map(|c| LoadTarget {
                    key: e.key.clone(),
                    spec: c.clone(),
                })
            })
            .collect();
        let stability = table
            .profiles
            .iter()
            .flat_map(|p| {
                p.endpoints
                    .iter()
                    .map(move |e| (e.key.clone(), p.stability))
            })
            .collect();
        Self {
            targets,
            unmonitored,
            regions,
            loads,
            stability,
            table: Arc::new(table.clone()),
        }
    }
}

/// Handle to the running prober.
#[derive(Clone)]
pub struct Prober {
    tx: mpsc::Sender<Msg>,
}

impl Prober {
    /// Switches to a new table's endpoints. Endpoints whose key and monitor settings are
    /// unchanged keep their verdict, RTT and schedule (no probe storm, no CheckingEndpoint
    /// blip after a reload); new ones start probing at once; removed ones stop.
    pub async fn reconfigure(&self, table: &RoutingTable) {
        let _ = self.tx.send(Msg::Reconfigure(Plan::of(table))).await;
    }

    /// Replaces the other instances' votes (fleet mode; `None` = own verdicts rule). The
    /// prober republishes at once.
    pub async fn set_votes(&self, votes: Option<Votes>) {
        let _ = self.tx.send(Msg::Votes(votes)).await;
    }

    /// Replaces the set of forced states (the prober republishes at once).
    pub async fn set_forced(&self, forced: Vec<ForceEntry>) {
        let (ack, published) = tokio::sync::oneshot::channel();
        if self.tx.send(Msg::Forced(forced, Some(ack))).await.is_ok() {
            // Returns once the snapshot with these forces is what the DNS path reads: a
            // caller can then say "served" (and a fleet instance starting up answers only
            // after its fleet's forces are in effect). A stopped prober drops the sender.
            let _ = published.await;
        }
    }
}

/// Starts probing every monitored endpoint of `table`, publishing into `health`.
pub fn spawn(
    table: &RoutingTable,
    forced: Vec<ForceEntry>,
    health: Arc<ArcSwap<HealthSnapshot>>,
    clock: Clock,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) -> Prober {
    let (tx, rx) = mpsc::channel::<Msg>(4096);
    let publisher = Publisher {
        tx: tx.clone(),
        slots: Arc::new(Semaphore::new(MAX_CONCURRENT_PROBES)),
        shutdown: shutdown.clone(),
        tasks: tasks.clone(),
        plan: Plan::default(),
        running: HashMap::new(),
        running_loads: HashMap::new(),
        loads: HashMap::new(),
        held: HashMap::new(),
        tls: TlsRegistry::default(),
        trackers: HashMap::new(),
        details: HashMap::new(),
        forced,
        votes: None,
        state_changes: 0,
        failed_open: Vec::new(),
        fail_open_transitions: 0,
        health,
        clock,
    };
    tasks.spawn(publisher.run(rx, Plan::of(table)));
    Prober { tx }
}

struct Running {
    target: ProbeTarget,
    stop: CancellationToken,
}

struct Publisher {
    tx: mpsc::Sender<Msg>,
    slots: Arc<Semaphore>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    plan: Plan,
    running: HashMap<Arc<str>, Running>,
    running_loads: HashMap<Arc<str>, (CapacitySpec, CancellationToken)>,
    loads: HashMap<Arc<str>, LoadState>,
    held: HashMap<Arc<str>, Held>,
    tls: TlsRegistry,
    trackers: HashMap<Arc<str>, Tracker>,
    details: HashMap<Arc<str>, EndpointStatus>,
    forced: Vec<ForceEntry>,
    /// The fleet's votes, when there is a fleet and they are fresh.
    votes: Option<Votes>,
    state_changes: u64,
    /// Profiles failing open in the last snapshot, and transitions since start.
    failed_open: Vec<String>,
    fail_open_transitions: u64,
    health: Arc<ArcSwap<HealthSnapshot>>,
    /// Wall time for status times and forced-state expiry (injected: paused time in tests).
    clock: Clock,
}

fn protocol_name(spec: &MonitorSpec) -> String {
    serde_json::to_value(spec.protocol)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

impl Publisher {
    fn apply_plan(&mut self, plan: Plan) {
        let now = Instant::now();
        let wanted: HashMap<Arc<str>, &ProbeTarget> =
            plan.targets.iter().map(|t| (t.key.clone(), t)).collect();
        // Stop what is gone or changed.
        self.running.retain(|k, r| {
            let keep = wanted
                .get(k)
                .is_some_and(|t| t.spec == r.target.spec && t.host == r.target.host);
            if !keep {
                r.stop.cancel();
            }
            keep
        });
        self.trackers.retain(|k, _| self.running.contains_key(k));
        self.details
            .retain(|k, _| wanted.contains_key(k) || plan.unmonitored.contains(k));
        // TLS clients: one per distinct settings, kept while some monitor uses them.
        let used: std::collections::HashSet<_> = plan
            .targets
            .iter()
            .filter_map(|t| t.spec.tls.as_ref())
            .collect();
        self.tls.retain(&used);
        // Start what is new.
        let mut started = 0;
        for t in &plan.targets {
            if self.running.contains_key(&t.key) {
                continue;
            }
            let stop = self.shutdown.child_token();
            self.trackers.insert(
                t.key.clone(),
                Tracker::new(t.spec.tolerated_failures, t.spec.recovery, now),
            );
            self.details.insert(
                t.key.clone(),
                EndpointStatus {
                    since_unix: self.clock.unix_f64(),
                    reason: "no probe result yet".into(),
                    protocol: protocol_name(&t.spec),
                    ..Default::default()
                },
            );
            let tls = match t.spec.protocol {
                Protocol::Http | Protocol::Https | Protocol::Mqtts => match self.tls.of(&t.spec) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        warn!(endpoint = %t.key, error = %e, "cannot set up TLS for probes");
                        None
                    }
                },
                _ => None,
            };
            self.tasks.spawn(endpoint_loop(
                t.clone(),
                tls,
                self.tx.clone(),
                self.slots.clone(),
                stop.clone(),
            ));
            self.running.insert(
                t.key.clone(),
                Running {
                    target: t.clone(),
                    stop,
                },
            );
            started += 1;
        }
        for k in &plan.unmonitored {
            self.details
                .entry(k.clone())
                .or_insert_with(|| EndpointStatus {
                    state: MonitorState::Unmonitored,
                    since_unix: self.clock.unix_f64(),
                    reason: "not probed (no monitor)".into(),
                    protocol: "none".into(),
                    ..Default::default()
                });
        }
        // Load pollers: same keep/stop/start rule.
        let wanted_loads: HashMap<Arc<str>, &LoadTarget> =
            plan.loads.iter().map(|l| (l.key.clone(), l)).collect();
        self.running_loads.retain(|k, (spec, stop)| {
            let keep = wanted_loads.get(k).is_some_and(|l| &l.spec == spec);
            if !keep {
                stop.cancel();
            }
            keep
        });
        self.loads.retain(|k, _| wanted_loads.contains_key(k));
        self.held.retain(|k, _| self.running.contains_key(k));
        for l in &plan.loads {
            if self.running_loads.contains_key(&l.key) {
                continue;
            }
            let stop = self.shutdown.child_token();
            self.tasks
                .spawn(load_loop(l.clone(), self.tx.clone(), stop.clone()));
            self.running_loads
                .insert(l.key.clone(), (l.spec.clone(), stop));
            self.loads.insert(
                l.key.clone(),
                LoadState {
                    connections: None,
                    at: None,
                    error: None,
                },
            );
        }
        info!(
            probed = plan.targets.len(),
            started,
            unmonitored = plan.unmonitored.len(),
            load_sources = plan.loads.len(),
            "health probing plan applied"
        );
        self.plan = plan;
    }

    fn publish(&mut self) {
        let now = Instant::now();
        let unix = self.clock.unix_f64();
        let mut snap = HealthSnapshot::default();
        // Forced states in effect (expired ones are dropped here; the store prunes its file).
        let now_secs = unix as u64;
        self.forced
            .retain(|f| f.force.until.is_none_or(|u| u > now_secs));
        // Every force that hits an endpoint is kept with its origin (in list order); which one
        // applies to a client is the effective-state rule's decision (routing::effective).
        let mut forced_by_key: HashMap<Arc<str>, Vec<(ForceOrigin, Arc<Force>)>> = HashMap::new();
        for entry in &self.forced {
            let force = Arc::new(entry.force.clone());
            for (key, region) in &self.plan.regions {
                let hit = match &entry.target {
                    ForceTarget::Endpoint(k) => k.as_str() == &**key,
                    ForceTarget::Region(r) => region.as_deref() == Some(r.as_str()),
                };
                if hit {
                    forced_by_key
                        .entry(key.clone())
                        .or_default()
                        .push((entry.origin(), force.clone()));
                }
            }
        }
        let default_stability = Stability::default();
        for (key, _) in &self.plan.regions {
            let stability = self.plan.stability.get(key).unwrap_or(&default_stability);
            let load = self.running_loads.get(key).and_then(|(spec, _)| {
                let l = self.loads.get(key)?;
                let fresh =
                    l.at.is_some_and(|at| now.saturating_duration_since(at) < spec.interval * 3);
                if fresh {
                    l.connections.map(|c| c / spec.capacity)
                } else {
                    None
                }
            });
            let base = match (self.trackers.get(key), self.plan.unmonitored.contains(key)) {
                (Some(t), _) => {
                    let ramp = ramp_share(t.recovered_at(), stability.ramp, now);
                    let rank = self.held.entry(key.clone()).or_default().update(
                        t.rtt_ms(),
                        stability,
                        now,
                    );
                    EndpointHealth {
                        state: self.fleet_state(key, t),
                        rtt_ms: t.rtt_ms(),
                        short_ttl: t.short_ttl(now),
                        forced: Vec::new(),
                        rank_rtt_ms: rank,
                        load,
                        ramp,
                    }
                }
                (None, true) => EndpointHealth {
                    state: MonitorState::Unmonitored,
                    load,
                    ..Default::default()
                },
                (None, false) => EndpointHealth {
                    load,
                    ..Default::default()
                },
            };
            let forced = forced_by_key.remove(key).unwrap_or_default();
            if !forced.is_empty()
                || self.trackers.contains_key(key)
                || self.plan.unmonitored.contains(key)
                || base.load.is_some()
            {
                snap.set(key, EndpointHealth { forced, ..base });
            }
        }
        for (k, t) in &self.trackers {
            // `None` until someone has an opinion (no voters: the instance's own
            // CheckingEndpoint rules, which is not a fleet verdict).
            let fleet_up = self
                .votes
                .as_ref()
                .and_then(|_| match self.fleet_state(k, t) {
                    MonitorState::Online => Some(true),
                    MonitorState::Degraded => Some(false),
                    _ => None,
                });
            let votes = self.votes.as_ref().map(|v| {
                let own = match t.state() {
                    MonitorState::Online => Some(true),
                    MonitorState::Degraded => Some(false),
                    _ => None,
                };
                let (since, _) = t.last_change();
                own.map(|up| Vote {
                    instance: v.instance.clone(),
                    up,
                    rtt_ms: t.rtt_ms(),
                    since_unix: unix - now.saturating_duration_since(since).as_secs_f64(),
                })
                .into_iter()
                .chain(v.others.get(k).cloned().unwrap_or_default())
                .collect::<Vec<_>>()
            });
            if let Some(d) = self.details.get_mut(k) {
                if let (Some(was), Some(now_up)) = (d.fleet_up, fleet_up)
                    && was != now_up
                {
                    let votes_text: Vec<String> = votes
                        .iter()
                        .flatten()
                        .map(|v| format!("{}={}", v.instance, if v.up { "up" } else { "down" }))
                        .collect();
                    if now_up {
                        info!(endpoint = %k, up = now_up, votes = %votes_text.join(" "), "fleet verdict changed");
                    } else {
                        // Answers stop going there, possibly before this instance's own probes
                        // say so: an operator must see it at warn level.
                        warn!(endpoint = %k, up = now_up, votes = %votes_text.join(" "), "fleet verdict changed");
                    }
                }
                d.fleet_up = fleet_up;
                d.votes = votes.unwrap_or_default();
                d.state = t.state();
                d.rtt_ms = t.rtt_ms();
                let (since, reason) = t.last_change();
                d.since_unix = unix - now.saturating_duration_since(since).as_secs_f64();
                d.reason = reason.to_string();
            }
        }
        for (k, (spec, _)) in &self.running_loads {
            let l = self.loads.get(k);
            let d = self.details.entry(k.clone()).or_default();
            d.capacity = Some(spec.capacity);
            d.connections = l.and_then(|l| l.connections);
            d.load_error = l.and_then(|l| l.error.clone());
        }
        let mut status = StatusSnapshot {
            details: self.details.clone(),
            first_round_done: self.running.keys().all(|k| {
                self.details
                    .get(k)
                    .is_some_and(|d| d.probes_ok + d.probes_failed > 0)
            }),
            state_changes: self.state_changes,
            forced: self.forced.clone(),
            ..Default::default()
        };
        if let Some(v) = &self.votes {
            snap.vantages = Arc::new(self.vantages(v));
        }
        self.note_fail_open(&snap, &mut status);
        snap.status = Arc::new(status);
        snap.keep_generation_of(&self.health.load());
        self.health.store(Arc::new(snap));
    }

    /// When the next timed force ends, as a runtime instant (`None`: none is timed).
    fn next_expiry(&self) -> Option<Instant> {
        let until = self.forced.iter().filter_map(|f| f.force.until).min()?;
        let left_ms = (until as f64 * 1000.0 - self.clock.unix_f64() * 1000.0).max(0.0);
        Some(Instant::now() + Duration::from_millis(left_ms as u64 + 1))
    }

    /// The fleet's RTT matrix: every instance with a location is a vantage point; this one's
    /// RTTs are its held (hysteresis) RTTs, the others' what they last published.
    fn vantages(&self, v: &Votes) -> crate::health::votes::Vantages {
        let mut names: Vec<&String> = v.points.keys().collect();
        names.sort();
        let points: Vec<(String, crate::geo::GeoPoint)> =
            names.iter().map(|n| ((*n).clone(), v.points[*n])).collect();
        let index = |name: &str| {
            points
                .iter()
                .position(|(n, _)| n == name)
                .and_then(|i| u16::try_from(i).ok())
        };
        let mut rtt: crate::base::FastMap<Arc<str>, Vec<(u16, f64)>> = Default::default();
        if let Some(me) = index(&v.instance) {
            for (k, t) in &self.trackers {
                let held = self.held.get(k).and_then(|h| h.value);
                if let Some(ms) = held.or(t.rtt_ms())
                    && t.state() == MonitorState::Online
                {
                    rtt.entry(k.clone()).or_default().push((me, ms));
                }
            }
        }
        for (k, list) in &v.others {
            for vote in list.iter().filter(|vote| vote.up) {
                if let (Some(i), Some(ms)) = (index(&vote.instance), vote.rtt_ms) {
                    rtt.entry(k.clone()).or_default().push((i, ms));
                }
            }
        }
        crate::health::votes::Vantages { points, rtt }
    }

    /// The state routing uses for a probed endpoint: this instance's own verdict, or — in
    /// fleet mode, with fresh votes — the quorum rule's verdict over its own vote and the other
    /// instances' (`health::votes`). An instance without a verdict yet (CheckingEndpoint)
    /// takes the fleet's when there is one.
    fn fleet_state(&self, key: &Arc<str>, t: &Tracker) -> MonitorState {
        let own = t.state();
        let Some(votes) = &self.votes else {
            return own;
        };
        let others = votes.others.get(key).map(Vec::as_slice).unwrap_or_default();
        let own_vote = match own {
            MonitorState::Online => Some(true),
            MonitorState::Degraded => Some(false),
            _ => None,
        };
        let voters = others.len() + usize::from(own_vote.is_some());
        if voters == 0 {
            return own;
        }
        let down = others.iter().filter(|v| !v.up).count() + usize::from(own_vote == Some(false));
        if votes.quorum.is_down(down, voters) {
            MonitorState::Degraded
        } else {
            MonitorState::Online
        }
    }

    /// Finds the profiles that fail open in `snap` (the one rule: `RoutingTable::fails_open`)
    /// and logs each transition into or out of fail-open once — here, where snapshots are
    /// made, never on the query path (a query-time log would fire per query).
    fn note_fail_open(&mut self, snap: &HealthSnapshot, status: &mut StatusSnapshot) {
        let table = &self.plan.table;
        let now: Vec<String> = (0..table.profiles.len())
            .filter(|&i| table.fails_open(i, snap))
            .map(|i| table.profiles[i].owner.to_string())
            .collect();
        for p in now.iter().filter(|p| !self.failed_open.contains(p)) {
            self.fail_open_transitions += 1;
            warn!(
                profile = %p,
                "fail-open: every endpoint of the profile is Degraded; serving them anyway (short TTL)"
            );
        }
        let current = table
            .profiles
            .iter()
            .map(|p| p.owner.to_string())
            .collect::<Vec<_>>();
        for p in self.failed_open.iter().filter(|p| !now.contains(p)) {
            // A profile removed by a reload just leaves the set.
            if current.contains(p) {
                self.fail_open_transitions += 1;
                info!(profile = %p, "fail-open ended: an endpoint of the profile is served again");
            }
        }
        self.failed_open = now.clone();
        status.failed_open = now;
        status.fail_open_transitions = self.fail_open_transitions;
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Msg>, initial: Plan) {
        self.apply_plan(initial);
        self.publish();
        let mut tick = tokio::time::interval(RTT_PUBLISH_EVERY);
        let mut dirty = false;
        // State changes publish at once — unless another publish happened within
        // URGENT_COALESCE, then right after it: one snapshot per burst, not one per change
        // (10,000 endpoints changing state at start-up would otherwise cost O(n²)).
        let mut urgent = false;
        let mut last_publish = Instant::now();
        loop {
            // A timed force (or a drill) ends at its second exactly, not at the next tick: the
            // snapshot without it is published at its `until` (+1 ms, so the clock has passed it).
            let expiry = self.next_expiry();
            let msg = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(expiry.unwrap_or_else(Instant::now)), if expiry.is_some() => {
                    self.publish();
                    last_publish = Instant::now();
                    continue;
                }
                _ = tokio::time::sleep_until(last_publish + URGENT_COALESCE), if urgent => {
                    self.publish();
                    last_publish = Instant::now();
                    urgent = false;
                    dirty = false;
                    continue;
                }
                m = rx.recv() => match m { Some(m) => m, None => return },
                _ = tick.tick() => {
                    // RTT updates, short-TTL windows and forced states that expire with time.
                    if dirty
                        || !self.forced.is_empty()
                        || !self.running_loads.is_empty()
                        || self.trackers.values().any(|t| t.short_ttl(Instant::now()))
                    {
                        self.publish();
                        dirty = false;
                    }
                    continue;
                }
            };
            match msg {
                Msg::Reconfigure(plan) => {
                    self.apply_plan(plan);
                    self.publish();
                }
                Msg::Load(key, result) => {
                    if let Some(l) = self.loads.get_mut(&key) {
                        match result {
                            Ok(c) => {
                                l.connections = Some(c);
                                l.at = Some(Instant::now());
                                l.error = None;
                            }
                            Err(e) => {
                                debug!(endpoint = %key, error = %e, "load poll failed");
                                l.error = Some(e);
                            }
                        }
                        // Load moves answers (spill-over): publish at once.
                        self.publish();
                    }
                }
                Msg::Votes(v) => {
                    self.votes = v;
                    self.publish();
                    last_publish = Instant::now();
                }
                Msg::Forced(f, ack) => {
                    self.forced = f;
                    self.publish();
                    last_publish = Instant::now();
                    if let Some(ack) = ack {
                        let _ = ack.send(());
                    }
                }
                Msg::Report(Report { key, outcome }) => {
                    let Some(t) = self.trackers.get_mut(&key) else {
                        continue;
                    };
                    let change = t.record(
                        outcome.ok,
                        outcome.rtt,
                        outcome.error.as_deref(),
                        Instant::now(),
                    );
                    if let Some(d) = self.details.get_mut(&key) {
                        if outcome.ok {
                            d.probes_ok += 1;
                            d.last_error = None;
                        } else {
                            d.probes_failed += 1;
                            d.last_error = outcome.error.clone();
                        }
                        if outcome.cert_not_after.is_some() {
                            d.cert_not_after_unix = outcome.cert_not_after;
                        }
                        d.last_stages = outcome
                            .stages
                            .iter()
                            .map(|(n, t)| (n.to_string(), t.as_secs_f64() * 1000.0))
                            .collect();
                    }
                    let first_result = self
                        .details
                        .get(&key)
                        .is_some_and(|d| d.probes_ok + d.probes_failed == 1);
                    if let Some(c) = change {
                        self.state_changes += 1;
                        if c.to == MonitorState::Degraded {
                            warn!(endpoint = %key, from = ?c.from, to = ?c.to, reason = %c.reason, "endpoint state changed");
                        } else {
                            info!(endpoint = %key, from = ?c.from, to = ?c.to, reason = %c.reason, "endpoint state changed");
                        }
                        urgent = true;
                    } else if first_result {
                        // Readiness depends on first results: publish them promptly.
                        urgent = true;
                    } else {
                        debug!(endpoint = %key, ok = outcome.ok, rtt = ?outcome.rtt, error = ?outcome.error, "probe");
                        dirty = true;
                    }
                }
            }
        }
    }
}

/// Polls one load source until stopped.
async fn load_loop(t: LoadTarget, tx: mpsc::Sender<Msg>, stop: CancellationToken) {
    let poller = match LoadPoller::new(&t.spec) {
        Ok(p) => p,
        Err(e) => {
            warn!(endpoint = %t.key, error = %e, "cannot set up load polling");
            return;
        }
    };
    loop {
        let result = poller.poll().await;
        if tx.send(Msg::Load(t.key.clone(), result)).await.is_err() {
            return;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(t.spec.interval) => {}
        }
    }
}

/// Resolves the probe address (hostnames through the system resolver, off the DNS path).
async fn resolve(host: &ProbeHost, port: u16) -> Result<SocketAddr, String> {
    match host {
        ProbeHost::Ip(ip) => Ok(SocketAddr::new(*ip, port)),
        ProbeHost::Name(n) => tokio::net::lookup_host((n.as_str(), port))
            .await
            .map_err(|e| format!("cannot resolve {n}: {e}"))?
            .next()
            .ok_or_else(|| format!("{n} has no addresses")),
    }
}

fn failed(error: String) -> ProbeOutcome {
    ProbeOutcome {
        ok: false,
        rtt: Duration::ZERO,
        stages: Vec::new(),
        error: Some(error),
        cert_not_after: None,
    }
}

async fn endpoint_loop(
    t: ProbeTarget,
    tls: Option<ProbeTls>,
    tx: mpsc::Sender<Msg>,
    slots: Arc<Semaphore>,
    shutdown: CancellationToken,
) {
    let jitter = |max: Duration| max.mul_f64(fastrand::f64());
    // Start at once (after a little jitter so many endpoints do not probe in lockstep).
    // Start within one interval at a random phase: at once for the default 1 s interval, and
    // spread evenly for large fleets on long intervals (no start-up probe storm).
    let mut next = Instant::now() + jitter(t.spec.interval.max(t.spec.jitter));
    let mut probe: Option<(SocketAddr, Probe)> = None;
    let mut usual_rtt: Option<Duration> = None;
    let mut resolved: Option<(SocketAddr, Instant)> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(next) => {}
        }
        let round_start = Instant::now();
        // (Re)build the probe when the address changes (hostname targets). Hostnames are
        // resolved at most every RESOLVE_EVERY, not before every probe.
        let addr = match (&t.host, resolved) {
            (ProbeHost::Name(_), Some((a, at))) if at.elapsed() < RESOLVE_EVERY => Ok(a),
            _ => resolve(&t.host, t.spec.port).await,
        };
        if let Ok(a) = addr
            && !matches!(resolved, Some((old, at)) if old == a && at.elapsed() < RESOLVE_EVERY)
        {
            resolved = Some((a, Instant::now()));
        }
        let ready = match addr {
            Ok(a) => {
                if probe.as_ref().is_none_or(|(old, _)| *old != a) {
                    match Probe::prepared(&t.spec, tls.as_ref(), a) {
                        Ok(p) => probe = Some((a, p)),
                        Err(e) => {
                            warn!(endpoint = %t.key, error = %e, "cannot set up probe");
                            probe = None;
                        }
                    }
                }
                probe.as_ref().map(|(_, p)| p)
            }
            Err(e) => {
                if tx
                    .send(Msg::Report(Report {
                        key: t.key.clone(),
                        outcome: failed(e),
                    }))
                    .await
                    .is_err()
                {
                    return;
                }
                None
            }
        };
        if let Some(p) = ready {
            let hedge = usual_rtt
                .map_or(MIN_HEDGE, |r| (r * 4).max(MIN_HEDGE))
                .min(t.spec.timeout / 2);
            // Boxed: a round holds two probe futures (the hedge), and the HTTP/MQTT/TLS ones
            // are several KiB. Inline they would make every endpoint's task that big for its
            // whole life (≈ 8 KiB × 10,000 endpoints = 80 MiB measured); boxed, the memory
            // exists only while a round runs.
            match Box::pin(round(p, &t.key, &tx, &slots, hedge)).await {
                RoundEnd::PublisherGone => return,
                RoundEnd::Rtt(r) => usual_rtt = r.or(usual_rtt),
            }
        }
        next = (round_start + t.spec.interval + jitter(t.spec.jitter)).max(Instant::now());
    }
}

enum RoundEnd {
    PublisherGone,
    Rtt(Option<Duration>),
}

/// One scheduled probe with its confirmation: at once after a failure, or in parallel after
/// `hedge` if the first probe has not answered yet.
async fn round(
    p: &Probe,
    key: &Arc<str>,
    tx: &mpsc::Sender<Msg>,
    slots: &Semaphore,
    hedge: Duration,
) -> RoundEnd {
    let run = || async {
        let _slot = slots.acquire().await;
        p.run().await
    };
    let send = |o: ProbeOutcome| async {
        let ok_rtt = o.ok.then_some(o.rtt);
        let gone = tx
            .send(Msg::Report(Report {
                key: key.clone(),
                outcome: o,
            }))
            .await
            .is_err();
        (gone, ok_rtt)
    };
    let first = run();
    tokio::pin!(first);
    tokio::select! {
        o = &mut first => {
            let ok = o.ok;
            let (gone, rtt) = send(o).await;
            if gone {
                return RoundEnd::PublisherGone;
            }
            if ok {
                return RoundEnd::Rtt(rtt);
            }
            let (gone, rtt) = send(run().await).await;
            if gone { RoundEnd::PublisherGone } else { RoundEnd::Rtt(rtt) }
        }
        _ = tokio::time::sleep(hedge) => {
            // Slow to answer: confirm in parallel; each result is reported as it lands.
            let a = async { send(first.await).await };
            let b = async { send(run().await).await };
            let ((g1, r1), (g2, r2)) = tokio::join!(a, b);
            if g1 || g2 { RoundEnd::PublisherGone } else { RoundEnd::Rtt(r1.or(r2)) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every monitored endpoint has one `endpoint_loop` task for its whole life, so its future
    /// size is multiplied by the fleet: 10,000 endpoints × 8 KiB was 80 MiB of RSS before the
    /// probe round was boxed. This pins the size so a new inline future cannot bring it back.
    #[test]
    fn an_endpoint_task_is_small() {
        let raw: crate::health::monitor::RawMonitor =
            toml::from_str("protocol = \"https\"\npath = \"/health\"").unwrap();
        let t = ProbeTarget {
            key: "p/e".into(),
            spec: MonitorSpec::from_raw(&raw).unwrap(),
            host: ProbeHost::Ip(IpAddr::from([127, 0, 0, 1])),
        };
        let (tx, _rx) = mpsc::channel(1);
        let fut = endpoint_loop(
            t,
            None,
            tx,
            Arc::new(Semaphore::new(1)),
            CancellationToken::new(),
        );
        let size = std::mem::size_of_val(&fut);
        assert!(size <= 2048, "endpoint_loop future is {size} bytes");
    }

    #[tokio::test(start_paused = true)]
    async fn recovery_ramp_grows_linearly_after_a_recovery() {
        let mut t = Tracker::new(1, 1, Instant::now());
        let period = Duration::from_secs(60);
        // Never degraded: no ramp.
        t.record(true, Duration::from_millis(1), None, Instant::now());
        assert_eq!(ramp_share(t.recovered_at(), period, Instant::now()), 1.0);
        t.record(false, Duration::ZERO, None, Instant::now());
        t.record(false, Duration::ZERO, None, Instant::now());
        tokio::time::advance(Duration::from_secs(5)).await;
        t.record(true, Duration::from_millis(1), None, Instant::now());
        assert_eq!(t.state(), MonitorState::Online);
        assert_eq!(ramp_share(t.recovered_at(), period, Instant::now()), 0.0);
        tokio::time::advance(Duration::from_secs(15)).await;
        assert!((ramp_share(t.recovered_at(), period, Instant::now()) - 0.25).abs() < 1e-9);
        tokio::time::advance(Duration::from_secs(45)).await;
        assert_eq!(ramp_share(t.recovered_at(), period, Instant::now()), 1.0);
        // A zero period means no ramp at all.
        assert_eq!(
            ramp_share(Some(Instant::now()), Duration::ZERO, Instant::now()),
            1.0
        );
    }

    #[tokio::test(start_paused = true)]
    async fn ranking_rtt_follows_only_changes_that_persist_beyond_the_margin() {
        let s = Stability {
            margin_ms: 10.0,
            margin_pct: 10.0,
            hold: Duration::from_secs(30),
            ramp: Duration::from_secs(60),
        };
        let mut h = Held::default();
        assert_eq!(h.update(Some(20.0), &s, Instant::now()), Some(20.0));
        // Noise within the margin (10 ms here) never moves it.
        for v in [25.0, 15.0, 29.0, 11.0] {
            tokio::time::advance(Duration::from_secs(60)).await;
            assert_eq!(h.update(Some(v), &s, Instant::now()), Some(20.0), "{v}");
        }
        // A real rise is adopted only after it has lasted `hold`.
        assert_eq!(h.update(Some(80.0), &s, Instant::now()), Some(20.0));
        tokio::time::advance(Duration::from_secs(29)).await;
        assert_eq!(h.update(Some(80.0), &s, Instant::now()), Some(20.0));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(h.update(Some(80.0), &s, Instant::now()), Some(80.0));
        // A spike that ends before `hold` resets the clock.
        assert_eq!(h.update(Some(200.0), &s, Instant::now()), Some(80.0));
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(h.update(Some(82.0), &s, Instant::now()), Some(80.0));
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(h.update(Some(200.0), &s, Instant::now()), Some(80.0));
        // The margin is the larger of ms and %: 10 % of 80 = 8 < 10 ms.
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(h.update(Some(200.0), &s, Instant::now()), Some(200.0));
    }
}

//! Endpoint health as routing sees it: a monitor state and a smoothed probe RTT per endpoint,
//! published as one immutable [`HealthSnapshot`].
//!
//! States follow Azure Traffic Manager's monitor states so operators can map what they know.
//! Snapshots are keyed by the endpoint's stable key (`owner/endpoint`), not by an index, so a
//! configuration reload that keeps an endpoint keeps its health.

pub mod load;
pub mod monitor;
pub mod state;
pub mod tls;
pub mod votes;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Traffic Manager's endpoint monitor states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub enum MonitorState {
    /// No verdict yet (just configured or just reloaded): served.
    #[default]
    CheckingEndpoint,
    /// Probes succeed: served.
    Online,
    /// Probes fail: not served (unless every endpoint is degraded, see fail-open).
    Degraded,
    /// Disabled by configuration: never served.
    Disabled,
    /// Not probed ("always serve").
    Unmonitored,
    /// Forced down by an operator or a drill: not served, not even by fail-open.
    ForcedDown,
    /// Forced up by an operator: served whatever the probes say.
    ForcedUp,
}

impl MonitorState {
    /// Whether an endpoint in this state receives traffic.
    pub fn serves(self) -> bool {
        matches!(
            self,
            Self::CheckingEndpoint | Self::Online | Self::Unmonitored | Self::ForcedUp
        )
    }
}

/// What a forced state does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForceAction {
    /// Not served.
    Down,
    /// Served regardless of probes.
    Up,
}

/// An operator's (or a drill's) override of an endpoint's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Force {
    /// Down or up.
    pub action: ForceAction,
    /// Clients it applies to (empty = everyone): a drill can move a few networks first.
    #[serde(default)]
    pub scope: Vec<IpNet>,
    /// Why, for the status page and logs.
    pub reason: String,
    /// When it ends by itself (Unix seconds); `None` = until lifted.
    pub until: Option<u64>,
}

impl Force {
    /// Whether it applies to a client at `addr` (unknown address: only unscoped forces).
    pub fn applies_to(&self, addr: Option<IpAddr>) -> bool {
        self.scope.is_empty() || addr.is_some_and(|a| self.scope.iter().any(|n| n.contains(&a)))
    }
}

/// What routing knows about one endpoint.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EndpointHealth {
    /// Monitor state.
    pub state: MonitorState,
    /// Smoothed probe round-trip time from this server, ms.
    pub rtt_ms: Option<f64>,
    /// Answers pointing here get a short TTL (suspect or just recovered; see `state`).
    pub short_ttl: bool,
    /// Operator and drill overrides that target this endpoint (directly or through its
    /// region), each with where it comes from; which one applies to a client is decided by
    /// `routing::effective` (precedence, then scope).
    pub forced: Vec<(ForceOrigin, Arc<Force>)>,
    /// Probe RTT as used for *ranking*: follows `rtt_ms` only once a change beyond the
    /// profile's margin has persisted for its hold time (hysteresis against noise).
    pub rank_rtt_ms: Option<f64>,
    /// Current load / capacity (fresh data only).
    pub load: Option<f64>,
    /// Recovery ramp: share of client networks a just-recovered endpoint may win back (1 = all).
    pub ramp: f64,
}

impl Default for EndpointHealth {
    fn default() -> Self {
        UNKNOWN.clone()
    }
}

/// Unknown endpoints: no verdict yet.
static UNKNOWN: EndpointHealth = EndpointHealth {
    state: MonitorState::CheckingEndpoint,
    rtt_ms: None,
    short_ttl: false,
    forced: Vec::new(),
    rank_rtt_ms: None,
    load: None,
    ramp: 1.0,
};

/// Which endpoints a forced state targets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForceTarget {
    /// One endpoint, by key (`owner/name`).
    Endpoint(String),
    /// Every endpoint located in a catalogue region.
    Region(String),
}

/// Where a force on an endpoint comes from (precedence among them: `routing::effective`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ForceOrigin {
    /// An operator's force on this endpoint.
    Endpoint,
    /// A drill's force on this endpoint.
    Drill,
    /// An operator's force on the endpoint's region.
    Region,
}

/// A forced state and what it targets, as stored and as the prober applies it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForceEntry {
    /// What it targets.
    pub target: ForceTarget,
    /// The override.
    pub force: Force,
    /// Drill that owns it, if any (drills lift their own forces).
    #[serde(default)]
    pub drill: Option<String>,
}

impl ForceEntry {
    /// Where it comes from, as an endpoint it hits sees it.
    pub fn origin(&self) -> ForceOrigin {
        match (&self.target, &self.drill) {
            (_, Some(_)) => ForceOrigin::Drill,
            (ForceTarget::Endpoint(_), None) => ForceOrigin::Endpoint,
            (ForceTarget::Region(_), None) => ForceOrigin::Region,
        }
    }
}

/// Operator-facing detail of one endpoint (status API, metrics); not read by queries.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EndpointStatus {
    /// Monitor state (before forced overrides).
    pub state: MonitorState,
    /// Smoothed probe RTT, ms.
    pub rtt_ms: Option<f64>,
    /// Unix time of the last state change.
    pub since_unix: f64,
    /// Why it is in this state.
    pub reason: String,
    /// Last probe error, if the last probe failed.
    pub last_error: Option<String>,
    /// Stage timings of the last probe, ms.
    pub last_stages: Vec<(String, f64)>,
    /// Probes that succeeded / failed since start.
    pub probes_ok: u64,
    /// Probes that failed since start.
    pub probes_failed: u64,
    /// Protocol probed (`none` = unmonitored).
    pub protocol: String,
    /// Last polled connection count, if a load source is configured.
    pub connections: Option<f64>,
    /// Configured capacity.
    pub capacity: Option<f64>,
    /// Last load-poll error.
    pub load_error: Option<String>,
    /// Unix time at which the endpoint's TLS certificate expires, as last seen by a probe
    /// (kept while later handshakes fail, e.g. because it has expired).
    pub cert_not_after_unix: Option<i64>,
    /// Fleet mode: every instance's vote, this one's first (empty standalone, or while the
    /// fleet's votes are stale).
    pub votes: Vec<votes::Vote>,
    /// Fleet mode: the verdict the quorum rule gives (`None` = this instance's own verdict
    /// rules).
    pub fleet_up: Option<bool>,
}

/// Health of every endpoint as routing reads it, immutable once published: one compact value
/// per endpoint (gdnsd's model). What operators see besides — probe details, readiness,
/// counts, forced states, fail-open — is a [`StatusSnapshot`] of its own, published with it
/// but never read on the query path.
#[derive(Debug)]
pub struct HealthSnapshot {
    by_key: crate::base::FastMap<Arc<str>, EndpointHealth>,
    /// Fleet mode: the measured RTT matrix (empty standalone, or while the fleet's votes are
    /// stale).
    pub vantages: Arc<votes::Vantages>,
    /// The operator's view published with this snapshot.
    pub status: Arc<StatusSnapshot>,
    /// Unique to this content (see [`Self::generation`]).
    generation: u64,
    /// Every client network a force is scoped to (usually none).
    scoped_nets: Vec<ipnet::IpNet>,
}

/// Source of [`HealthSnapshot::generation`]: process-wide, so two snapshots never share one.
static SNAPSHOT_GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn next_snapshot_generation() -> u64 {
    SNAPSHOT_GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl Default for HealthSnapshot {
    fn default() -> Self {
        Self {
            by_key: Default::default(),
            vantages: Default::default(),
            status: Default::default(),
            generation: next_snapshot_generation(),
            scoped_nets: Vec::new(),
        }
    }
}

impl Clone for HealthSnapshot {
    /// A clone is a new snapshot (it is about to be changed, as a dry run's is): it gets a
    /// generation of its own, so nothing cached for the original is taken for it.
    fn clone(&self) -> Self {
        Self {
            by_key: self.by_key.clone(),
            vantages: self.vantages.clone(),
            status: self.status.clone(),
            generation: next_snapshot_generation(),
            scoped_nets: self.scoped_nets.clone(),
        }
    }
}

/// Operator-facing health (status API, metrics, readiness, the map); not read by queries.
#[derive(Debug, Clone, Default)]
pub struct StatusSnapshot {
    /// Operator-facing details per endpoint.
    pub details: HashMap<Arc<str>, EndpointStatus>,
    /// Every probed endpoint has had at least one probe result.
    pub first_round_done: bool,
    /// State changes since start.
    pub state_changes: u64,
    /// Forced states in effect.
    pub forced: Vec<ForceEntry>,
    /// Profiles (owner names) that fail open right now: every endpoint able to answer is
    /// Degraded, so all of them are served anyway (for everyone; see
    /// `RoutingTable::fails_open`).
    pub failed_open: Vec<String>,
    /// Times a profile went into or out of fail-open since start.
    pub fail_open_transitions: u64,
}

impl HealthSnapshot {
    /// Health of an endpoint; unknown endpoints are `CheckingEndpoint` (served).
    pub fn get(&self, key: &str) -> &EndpointHealth {
        self.by_key.get(key).unwrap_or(&UNKNOWN)
    }

    /// Every endpoint's health (status API, metrics).
    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &EndpointHealth)> {
        self.by_key.iter()
    }

    /// Sets an endpoint's health (used by the prober and by tests). The snapshot becomes a
    /// new generation.
    pub fn set(&mut self, key: &str, health: EndpointHealth) {
        for (_, f) in &health.forced {
            for net in &f.scope {
                if !self.scoped_nets.contains(net) {
                    self.scoped_nets.push(*net);
                }
            }
        }
        self.generation = next_snapshot_generation();
        self.by_key.insert(Arc::from(key), health);
    }

    /// Whether routing decides every client alike under both snapshots: the same endpoints
    /// with the same state, forces, ranking RTT (the held one, or the raw one where none is
    /// held — what the performance method reads), load, ramp and short-TTL flag, and the same
    /// vantage matrix. The prober publishes about every second while probes report, mostly
    /// raw RTT wobble that the held RTT does not follow; such a publish keeps the generation.
    pub fn routes_like(&self, other: &Self) -> bool {
        fn same(a: &EndpointHealth, b: &EndpointHealth) -> bool {
            // Every field named, so a new one has to be placed on one side or the other.
            let EndpointHealth {
                state,
                rtt_ms,
                short_ttl,
                forced,
                rank_rtt_ms,
                load,
                ramp,
            } = a;
            *state == b.state
                && *short_ttl == b.short_ttl
                && *forced == b.forced
                && rank_rtt_ms.or(*rtt_ms) == b.rank_rtt_ms.or(b.rtt_ms)
                && *load == b.load
                && *ramp == b.ramp
        }
        self.by_key.len() == other.by_key.len()
            && self
                .by_key
                .iter()
                .all(|(k, a)| other.by_key.get(k).is_some_and(|b| same(a, b)))
            && (Arc::ptr_eq(&self.vantages, &other.vantages) || *self.vantages == *other.vantages)
    }

    /// Takes `previous`'s generation when routing decides alike under both
    /// ([`Self::routes_like`]): the routed-answer cache stays warm across publishes that change
    /// nothing for routing. Called by the prober before it publishes.
    pub fn keep_generation_of(&mut self, previous: &Self) {
        if self.routes_like(previous) {
            self.generation = previous.generation;
        }
    }

    /// A number no other snapshot of this process has, unless it routes exactly like the one
    /// it replaced ([`Self::keep_generation_of`]): the routed-answer cache
    /// (`dns::routed_cache`) keeps decisions per generation, so a published change is seen by
    /// the very next query. (A snapshot is changed only before it is published; `set` and
    /// `clone` take a new generation.)
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// How many leading address bits a decision for the client network `addr`/`prefix_len`
    /// depends on because of forces scoped to client networks: the longest such scope that lies
    /// strictly inside it (0 when none does). A scope that contains the whole network, or none
    /// of it, treats all of it alike; one inside it splits it.
    pub fn scoped_force_bits(&self, addr: std::net::IpAddr, prefix_len: u8) -> u8 {
        let Ok(net) = ipnet::IpNet::new(addr, prefix_len) else {
            return 0;
        };
        self.scoped_nets
            .iter()
            .filter(|s| s.prefix_len() > prefix_len && net.contains(&s.network()))
            .map(|s| s.prefix_len())
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn online(rtt: f64, rank: Option<f64>) -> EndpointHealth {
        EndpointHealth {
            state: MonitorState::Online,
            rtt_ms: Some(rtt),
            rank_rtt_ms: rank,
            ..Default::default()
        }
    }

    fn published(previous: &HealthSnapshot, e: EndpointHealth) -> HealthSnapshot {
        let mut s = HealthSnapshot::default();
        s.set("p/a", e);
        s.keep_generation_of(previous);
        s
    }

    /// A publish that moves only raw RTTs under a held one keeps the generation (the routed
    /// cache stays warm); anything routing reads starts a new one.
    #[test]
    fn a_generation_is_kept_only_while_routing_reads_the_same() {
        let mut first = HealthSnapshot::default();
        first.set("p/a", online(20.0, Some(20.0)));
        let g = first.generation();
        assert_eq!(published(&first, online(23.5, Some(20.0))).generation(), g);
        let changed = [
            online(20.0, Some(35.0)),
            online(35.0, None),
            EndpointHealth {
                state: MonitorState::Degraded,
                ..online(20.0, Some(20.0))
            },
            EndpointHealth {
                short_ttl: true,
                ..online(20.0, Some(20.0))
            },
            EndpointHealth {
                ramp: 0.5,
                ..online(20.0, Some(20.0))
            },
            EndpointHealth {
                load: Some(0.7),
                ..online(20.0, Some(20.0))
            },
            EndpointHealth {
                forced: vec![(
                    ForceOrigin::Drill,
                    Arc::new(Force {
                        action: ForceAction::Down,
                        scope: vec![],
                        reason: "t".into(),
                        until: None,
                    }),
                )],
                ..online(20.0, Some(20.0))
            },
        ];
        for e in changed {
            let next = published(&first, e.clone());
            assert_ne!(next.generation(), g, "{e:?}");
        }
        // Without a held RTT the raw one is what ranks: a change is a new generation.
        let mut raw = HealthSnapshot::default();
        raw.set("p/a", online(20.0, None));
        assert_ne!(
            published(&raw, online(21.0, None)).generation(),
            raw.generation()
        );
        // Another endpoint set, or new vantage data, too.
        let mut more = published(&first, online(20.0, Some(20.0)));
        assert_eq!(more.generation(), g);
        more.set("p/b", online(20.0, Some(20.0)));
        more.keep_generation_of(&first);
        assert_ne!(more.generation(), g);
        let mut v = published(&first, online(20.0, Some(20.0)));
        v.vantages = Arc::new(votes::Vantages {
            points: vec![("x".into(), crate::geo::GeoPoint { lat: 1.0, lon: 2.0 })],
            ..Default::default()
        });
        v.generation = next_snapshot_generation();
        v.keep_generation_of(&first);
        assert_ne!(v.generation(), g);
    }
}

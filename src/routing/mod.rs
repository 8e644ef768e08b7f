//! Traffic profiles and the routing decision.
//!
//! A [`RoutingTable`] is an immutable snapshot of every profile (built by [`profile`] from the
//! `zones/<zone>.toml` files); [`RoutingTable::select`] is the pure decision: given a profile,
//! the client's location and a [`HealthSnapshot`], which records answer. It never fails and
//! never waits; with `explain` it also records every term that led to the decision.
//!
//! Methods (Azure Traffic Manager's): `performance` (lowest estimated latency, see [`model`]),
//! `priority`, `weighted`, `geographic`, `multivalue`, `subnet`; an endpoint may be another
//! profile (nested, up to 10 deep). What all methods share (candidates, fail-open, recovery
//! ramp, nesting, records, TTL, ECS scope, the explanation) is here; each method's own decision
//! is one function in `method/`, all with the same signature (see `method/mod.rs`).
//!
//! **Address families.** An A query is answered from endpoints that have an IPv4 target (or a
//! hostname target, answered as CNAME; or a nested profile able to answer A); AAAA likewise
//! with IPv6. An endpoint with only IPv6 targets is invisible to A queries, so A and AAAA may
//! pick different regions when their endpoint sets differ. A CNAME query is answered only when
//! the decision lands on a hostname endpoint.

pub mod effective;
mod method;
pub mod model;
pub mod profile;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use hickory_server::proto::rr::{Name, Record};
use ipnet::IpNet;
use serde::Serialize;

use crate::base::Counter;
use crate::geo::GeoPoint;
use crate::health::{HealthSnapshot, MonitorState};
use crate::locate::{Code, Location};
use model::{Estimate, Model};

/// Traffic Manager's routing methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Lowest estimated latency to the client.
    Performance,
    /// Lowest priority number among healthy endpoints.
    Priority,
    /// Random by weight (or hashed by client subnet when sticky).
    Weighted,
    /// Geo codes map to endpoints; the most specific match wins.
    Geographic,
    /// Up to `max_answers` healthy endpoints at once.
    Multivalue,
    /// Client CIDR ranges map to endpoints; an endpoint without ranges is the fallback.
    Subnet,
}

/// What an endpoint answers with.
#[derive(Debug, Clone)]
pub enum Target {
    /// A/AAAA records (owner and TTL are set when encoding).
    Addrs {
        /// IPv4 records.
        a: Vec<Record>,
        /// IPv6 records.
        aaaa: Vec<Record>,
    },
    /// A CNAME to a hostname outside our control (boxed: records are large).
    Cname(Box<Record>),
    /// Another profile, by index.
    Nested(usize),
}

/// A geographic code of the `geographic` method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GeoCode {
    /// Everything (`WORLD`).
    World,
    /// A continent (`EU`, `NA`, …).
    Continent(Code),
    /// A country (`DE`).
    Country(Code),
    /// A first-level subdivision (`US-CA`).
    Subdivision(Code, Code),
}

impl GeoCode {
    /// How specific the code is (higher wins).
    pub fn specificity(&self) -> u8 {
        match self {
            Self::World => 1,
            Self::Continent(_) => 2,
            Self::Country(_) => 3,
            Self::Subdivision(..) => 4,
        }
    }

    /// Whether a location falls under this code.
    pub fn matches(&self, loc: &Location) -> bool {
        match self {
            Self::World => true,
            Self::Continent(c) => loc.continent == Some(*c),
            Self::Country(c) => loc.country == Some(*c),
            Self::Subdivision(c, s) => loc.country == Some(*c) && loc.subdivision == Some(*s),
        }
    }
}

impl std::fmt::Display for GeoCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::World => f.write_str("WORLD"),
            Self::Continent(c) | Self::Country(c) => write!(f, "{c}"),
            Self::Subdivision(c, s) => write!(f, "{c}-{s}"),
        }
    }
}

/// One endpoint of a profile.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Stable key `owner/name` (health survives reloads by key).
    pub key: Arc<str>,
    /// Name within the profile.
    pub name: String,
    /// Answer records or nested profile.
    pub target: Target,
    /// Admin state: disabled endpoints are never served.
    pub enabled: bool,
    /// Catalogue region, if given.
    pub region: Option<String>,
    /// Location (from the region or explicit lat/lon).
    pub point: Option<GeoPoint>,
    /// `weighted`: 1..=1000.
    pub weight: u32,
    /// `priority`: 1..=1000, unique in the profile.
    pub priority: u32,
    /// `geographic`: codes this endpoint serves.
    pub geo: Vec<GeoCode>,
    /// `subnet`: client ranges; empty = fallback endpoint.
    pub subnets: Vec<IpNet>,
    /// Nested: healthy while at least this many children are served.
    pub min_child: usize,
    /// Nested: … and this many IPv4-capable children.
    pub min_child_v4: usize,
    /// Nested: … and this many IPv6-capable children.
    pub min_child_v6: usize,
    /// How it is probed; `None` = Unmonitored (always served) or nested.
    pub monitor: Option<crate::health::monitor::MonitorSpec>,
    /// Answers naming this endpoint since the table was loaded.
    pub answers: Counter,
    /// Broker load source and limits (performance method).
    pub capacity: Option<crate::health::load::CapacitySpec>,
}

/// Anti-noise settings of a profile (`[profile.stability]`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stability {
    /// A latency-driven move needs the new best to beat the anchor by this many ms…
    pub margin_ms: f64,
    /// … and by this share of the anchor's estimate, %.
    pub margin_pct: f64,
    /// Probe RTT changes count for ranking only once they persist this long.
    pub hold: std::time::Duration,
    /// A recovered endpoint wins its clients back over this period (0 = at once).
    pub ramp: std::time::Duration,
}

impl Default for Stability {
    fn default() -> Self {
        Self {
            margin_ms: 10.0,
            margin_pct: 10.0,
            hold: std::time::Duration::from_secs(30),
            // Off by default: connected MQTT clients do not follow DNS, only new connections
            // do, so a recovered region fills gradually anyway; set a ramp for fleets whose
            // clients reconnect often (short sessions) to avoid a burst at fail-back.
            ramp: std::time::Duration::ZERO,
        }
    }
}

/// One traffic profile.
#[derive(Debug, Clone)]
pub struct Profile {
    /// Owner name the profile answers at.
    pub owner: Name,
    /// Owner as lower-cased wire bytes.
    pub owner_wire: Box<[u8]>,
    /// Routing method.
    pub method: Method,
    /// Answer TTL.
    pub ttl: u32,
    /// `multivalue`: most endpoints per answer.
    pub max_answers: usize,
    /// `weighted`: hash by client subnet instead of random.
    pub sticky: bool,
    /// `geographic`: answer only from the most specific mapping of the client's location; if
    /// that endpoint is not served, answer nothing rather than fall back to a less specific
    /// mapping (Traffic Manager's behaviour; for data residency).
    pub geo_strict: bool,
    /// Hysteresis and recovery ramp.
    pub stability: Stability,
    /// Endpoints in file order (ties go to the earlier one).
    pub endpoints: Vec<Endpoint>,
    /// Whether any endpoint (recursively) has IPv4 / IPv6 / hostname targets.
    pub can_answer: [bool; 3],
    /// Decisions made since the table was loaded.
    pub queries: Counter,
    /// Decisions that failed open.
    pub fail_open: Counter,
}

/// Address family asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Family {
    /// A.
    V4,
    /// AAAA.
    V6,
    /// CNAME (family-agnostic: only hostname endpoints answer).
    Any,
}

impl Family {
    fn index(self) -> usize {
        match self {
            Self::V4 => 0,
            Self::V6 => 1,
            Self::Any => 2,
        }
    }
}

/// Operator-measured RTTs that override the distance model.
#[derive(Debug, Clone, Default)]
pub struct Measured {
    /// (client network, region, RTT ms), longest prefix first.
    pub networks: Vec<(IpNet, String, f64)>,
    /// (country, region) → RTT ms.
    pub countries: HashMap<(Code, String), f64>,
}

impl Measured {
    fn lookup(&self, loc: &Location, region: Option<&str>) -> Option<f64> {
        let region = region?;
        if let Some(addr) = loc.addr
            && let Some((_, _, rtt)) = self
                .networks
                .iter()
                .find(|(n, r, _)| r == region && n.contains(&addr))
        {
            return Some(*rtt);
        }
        let country = loc.country?;
        self.countries.get(&(country, region.to_string())).copied()
    }
}

/// What the client looks like to routing.
#[derive(Debug, Clone, Copy)]
pub struct Client {
    /// Where the client is.
    pub loc: Location,
    /// ECS source prefix, if the query carried ECS (bounds the scope we may answer with).
    pub ecs_source: Option<u8>,
}

impl Client {
    /// The client network used for sticky hashing: /24 for IPv4, /56 for IPv6, the usual ECS
    /// source prefixes, so all queries a resolver sends for one client network agree.
    #[inline]
    fn sticky_key(&self) -> u64 {
        match self.loc.addr {
            Some(IpAddr::V4(a)) => u64::from(u32::from(a) >> 8),
            Some(IpAddr::V6(a)) => (u128::from(a) >> 72) as u64,
            None => 0,
        }
    }
}

/// How widely the decision holds, before capping by the ECS source prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Scope {
    /// The same for every client.
    Global,
    /// The same throughout the client's GeoIP network.
    GeoNetwork,
    /// Holds for this many leading bits of the client address.
    Prefix(u8),
    /// Holds only for the exact client subnet given.
    Source,
}

/// Short lists on the answer path (candidates, picks, records): inline up to eight, so a
/// routed answer allocates nothing for them (allocation was ~15 % of its instructions).
pub type Small<T> = smallvec::SmallVec<[T; 8]>;

/// The decision.
#[derive(Debug, Clone, Default)]
pub struct Selection<'t> {
    /// Records to answer with (A, AAAA or one CNAME).
    pub records: Small<&'t Record>,
    /// Endpoints chosen (their keys), outermost first.
    pub chosen: Small<&'t str>,
    /// TTL to answer with.
    pub ttl: u32,
    /// ECS scope prefix to answer with (0 when no ECS was sent).
    pub scope: u8,
    /// Some level served degraded endpoints because all were degraded.
    pub failed_open: bool,
    /// Leading bits of the client address the decision depends on, before the cap by the
    /// ECS source prefix (255: the exact client). Every client whose address agrees on them —
    /// and that is located the same — gets the same decision; the routed-answer cache relies
    /// on it.
    pub bits: u8,
    /// A level rolled a die (non-sticky `weighted`): the next query may be answered otherwise.
    pub random: bool,
    /// The chosen endpoints as (profile, endpoint) indices: their answer counters, bumped
    /// again by every answer the routed-answer cache copies.
    pub picked: Small<(u32, u32)>,
}

/// One endpoint line of an explanation.
#[derive(Debug, Clone, Serialize)]
pub struct ExplainEndpoint {
    /// Endpoint name.
    pub name: String,
    /// Region, if any.
    pub region: Option<String>,
    /// Monitor state (nested endpoints: derived from their children).
    pub state: MonitorState,
    /// Whether it was a candidate (eligible for the family and served).
    pub candidate: bool,
    /// Smoothed probe RTT.
    pub rtt_ms: Option<f64>,
    /// Latency estimate terms (performance).
    pub estimate: Option<Estimate>,
    /// Weight, priority, geo codes or subnets, as relevant to the method.
    pub detail: String,
    /// Current load / capacity, if a load source is configured and fresh.
    pub load: Option<f64>,
    /// Recovery ramp share (1 = fully back).
    pub ramp: f64,
    /// Fleet mode: every instance's vote on this endpoint (this instance's first), when the
    /// fleet's votes are in use.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub votes: Vec<crate::health::votes::Vote>,
}

/// One profile level of an explanation.
#[derive(Debug, Clone, Serialize)]
pub struct ExplainLevel {
    /// Profile owner.
    pub profile: String,
    /// Method.
    pub method: Method,
    /// Every endpoint with its terms.
    pub endpoints: Vec<ExplainEndpoint>,
    /// All were degraded and were served anyway.
    pub failed_open: bool,
    /// What was decided and why.
    pub decision: String,
}

/// The trace `explain` prints.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Explain {
    /// One entry per profile level visited.
    pub levels: Vec<ExplainLevel>,
}

/// All profiles, immutable once built.
#[derive(Debug, Clone, Default)]
pub struct RoutingTable {
    /// Profiles; nested references are indices into this.
    pub profiles: Vec<Profile>,
    by_owner: crate::base::FastMap<Box<[u8]>, usize>,
    /// The latency model.
    pub model: Model,
    /// Operator-measured RTTs.
    pub measured: Measured,
    /// Whether some geographic profile uses subdivision codes (costs an extra GeoIP decode).
    pub wants_subdivision: bool,
    /// Bit set of the owners' wire lengths (names are at most 255 bytes).
    owner_lens: [u64; 4],
}

/// Deepest nesting of profiles (Traffic Manager allows 10 levels).
pub const MAX_DEPTH: usize = 10;

impl RoutingTable {
    /// The profile answering at a lower-cased wire name. Every query asks, so names of a length
    /// no owner has are turned away before hashing them.
    #[inline]
    pub fn profile_at(&self, owner_wire: &[u8]) -> Option<usize> {
        let n = owner_wire.len();
        if n > 255 || self.owner_lens[n / 64] & (1 << (n % 64)) == 0 {
            return None;
        }
        self.by_owner.get(owner_wire).copied()
    }

    /// A profile by its owner name (`mqtt.example.test`, trailing dot optional) or, for
    /// operators' convenience, its first label (`mqtt`; the first profile with it wins).
    pub fn find_profile(&self, name: &str) -> Option<usize> {
        let want = name.trim_end_matches('.').to_ascii_lowercase();
        let owner = |p: &Profile| {
            p.owner
                .to_ascii()
                .trim_end_matches('.')
                .to_ascii_lowercase()
        };
        self.profiles
            .iter()
            .position(|p| owner(p) == want)
            .or_else(|| {
                self.profiles
                    .iter()
                    .position(|p| owner(p).split('.').next() == Some(want.as_str()))
            })
    }

    /// Number of profiles.
    pub fn len(&self) -> usize {
        self.profiles.len()
    }

    /// Whether there are no profiles.
    pub fn is_empty(&self) -> bool {
        self.profiles.is_empty()
    }

    /// Decides the answer for `client` at profile `p`.
    pub fn select<'t>(
        &'t self,
        p: usize,
        family: Family,
        client: &Client,
        health: &HealthSnapshot,
        mut explain: Option<&mut Explain>,
    ) -> Selection<'t> {
        let mut sel = Selection {
            ttl: self.profiles[p].ttl,
            ..Default::default()
        };
        let mut bits = 0u8;
        self.select_into(
            p,
            family,
            client,
            health,
            &mut sel,
            &mut bits,
            &mut explain,
            0,
        );
        // A force scoped to client networks (a drill's first networks) may apply to part of
        // the client's database network: then the decision holds no wider than that scope.
        if let Some(addr) = client.loc.addr {
            bits = bits.max(health.scoped_force_bits(addr, client.loc.prefix_len));
        }
        sel.bits = bits;
        // Capped at the source prefix (RFC 7871 §7.2.1: scope may not exceed what we were given
        // … in practice, a longer scope than the source says nothing more).
        sel.scope = match client.ecs_source {
            None | Some(0) => 0,
            Some(src) => bits.min(src),
        };
        sel
    }

    /// Monitor state of an endpoint as routing sees it for `client`: the one rule of
    /// [`effective`].
    fn state(
        &self,
        ep: &Endpoint,
        health: &HealthSnapshot,
        client: &Client,
        depth: usize,
    ) -> MonitorState {
        self.effective_state_at(ep, health, effective::Viewer::of(client.loc.addr), depth)
    }

    fn eligible(&self, ep: &Endpoint, family: Family) -> bool {
        match (&ep.target, family) {
            (Target::Addrs { a, .. }, Family::V4) => !a.is_empty(),
            (Target::Addrs { aaaa, .. }, Family::V6) => !aaaa.is_empty(),
            (Target::Addrs { .. }, Family::Any) => false,
            (Target::Cname(_), _) => true,
            (Target::Nested(c), f) => self.profiles[*c].can_answer[f.index()],
        }
    }

    /// Candidates at one profile level, given each endpoint's effective state: eligible for the
    /// family and served; if none is served but some eligible ones are `Degraded`, those
    /// (fail-open, the `bool`). Shared by [`Self::select`] and [`Self::fails_open`].
    fn candidates(
        &self,
        profile: &Profile,
        family: Family,
        states: &[MonitorState],
    ) -> (Small<usize>, bool) {
        let eligible = |i: usize| self.eligible(&profile.endpoints[i], family);
        let cands: Small<usize> = (0..profile.endpoints.len())
            .filter(|&i| eligible(i) && states[i].serves())
            .collect();
        if !cands.is_empty() {
            return (cands, false);
        }
        let degraded: Small<usize> = (0..profile.endpoints.len())
            .filter(|&i| eligible(i) && states[i] == MonitorState::Degraded)
            .collect();
        let failed_open = !degraded.is_empty();
        (degraded, failed_open)
    }

    #[allow(clippy::too_many_arguments)]
    fn select_into<'t>(
        &'t self,
        p: usize,
        family: Family,
        client: &Client,
        health: &HealthSnapshot,
        sel: &mut Selection<'t>,
        bits: &mut u8,
        explain: &mut Option<&mut Explain>,
        depth: usize,
    ) {
        let profile = &self.profiles[p];
        // Candidates: eligible for the family and served. If none is served but some are
        // enabled, serve those anyway (Traffic Manager's and gdnsd's fail-open): answering with
        // a possibly-down region beats answering with nothing.
        let states: Small<MonitorState> = profile
            .endpoints
            .iter()
            .map(|e| self.state(e, health, client, depth))
            .collect();
        let (mut cands, failed_open) = self.candidates(profile, family, &states);
        sel.failed_open |= failed_open;
        if failed_open {
            // Serving endpoints the probes call down: resolvers should re-ask soon, to follow
            // the first one that comes back.
            sel.ttl = sel.ttl.min(crate::health::state::SHORT_TTL);
        }
        // Recovery ramp: a just-recovered endpoint takes back a growing share of client
        // networks (decided by hash, so each network moves once) instead of all at once.
        let ramped: Small<usize> = cands
            .iter()
            .copied()
            .filter(|&i| {
                let r = health.get(&profile.endpoints[i].key).ramp;
                r >= 1.0 || unit_hash(client, &profile.endpoints[i].key) < r
            })
            .collect();
        let mut hashed = false;
        if ramped.len() < cands.len() && !ramped.is_empty() {
            cands = ramped;
            hashed = true;
        } else if cands
            .iter()
            .any(|&i| health.get(&profile.endpoints[i].key).ramp < 1.0)
        {
            hashed = true;
        }

        let mut estimates: Small<Option<Estimate>> =
            smallvec::smallvec![None; profile.endpoints.len()];
        let cx = method::Ctx {
            table: self,
            profile,
            cands: &cands,
            family,
            client,
            health,
            want: explain.is_some(),
        };
        let (picked, decision, mut level_scope) = method::pick(&cx, &mut estimates);
        sel.random |= profile.method == Method::Weighted && !profile.sticky;
        if hashed && level_scope != Scope::Global {
            level_scope = Scope::Source;
        }
        // The decision holds for as many leading bits as its most specific level needs.
        *bits = (*bits).max(match level_scope {
            Scope::Global => 0,
            Scope::GeoNetwork => client.loc.prefix_len,
            Scope::Prefix(n) => n,
            Scope::Source => u8::MAX,
        });

        if let Some(x) = explain.as_deref_mut() {
            x.levels.push(ExplainLevel {
                profile: profile.owner.to_string(),
                method: profile.method,
                endpoints: profile
                    .endpoints
                    .iter()
                    .enumerate()
                    .map(|(i, e)| ExplainEndpoint {
                        name: e.name.clone(),
                        region: e.region.clone(),
                        state: states[i],
                        candidate: cands.contains(&i),
                        rtt_ms: health.get(&e.key).rtt_ms,
                        estimate: estimates[i],
                        detail: method::detail(profile.method, e),
                        load: health.get(&e.key).load,
                        ramp: health.get(&e.key).ramp,
                        votes: health
                            .status
                            .details
                            .get(&e.key)
                            .map(|d| d.votes.clone())
                            .unwrap_or_default(),
                    })
                    .collect(),
                failed_open,
                decision: if failed_open {
                    format!(
                        "fail-open (every endpoint able to answer is Degraded: serving them \
                         anyway, short TTL): {}",
                        decision()
                    )
                } else {
                    decision()
                },
            });
        }

        for i in picked {
            let ep = &profile.endpoints[i];
            sel.chosen.push(&ep.key);
            sel.picked.push((p as u32, i as u32));
            // Health-driven TTL: resolvers re-ask soon while the answer may be about to change.
            if health.get(&ep.key).short_ttl {
                sel.ttl = sel.ttl.min(crate::health::state::SHORT_TTL);
            }
            match &ep.target {
                Target::Addrs { a, aaaa } => match family {
                    Family::V4 => sel.records.extend(a.iter()),
                    Family::V6 => sel.records.extend(aaaa.iter()),
                    Family::Any => {}
                },
                Target::Cname(r) => sel.records.push(r),
                Target::Nested(c) if depth + 1 < MAX_DEPTH => {
                    self.select_into(*c, family, client, health, sel, bits, explain, depth + 1);
                }
                Target::Nested(_) => {}
            }
        }
    }
}

/// A client network's position in [0, 1) for a salt: decides ramps and spills, the same for
/// every query from that network (/24, /56).
#[inline]
fn unit_hash(client: &Client, salt: &str) -> f64 {
    (mix(client.sticky_key() ^ fnv(salt.as_bytes())) >> 11) as f64 / (1u64 << 53) as f64
}

/// Weighted rendezvous hashing over (index, key, weight): deterministic per client network,
/// proportional to weight, and removing one option moves only its own clients.
fn rendezvous<'k>(
    client: &Client,
    salt: &str,
    set: impl Iterator<Item = (usize, &'k str, f64)>,
) -> Option<usize> {
    let base = client.sticky_key() ^ fnv(salt.as_bytes());
    set.filter(|(_, _, w)| *w > 0.0)
        .map(|(i, key, w)| {
            let h = mix(base ^ fnv(key.as_bytes()));
            let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            (i, w / -u.ln())
        })
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(i, _)| i)
}

/// FNV-1a, to mix the profile into sticky hashes (different profiles spread differently).
#[inline]
fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x100_0000_01b3)
    })
}

/// SplitMix64 finaliser: spreads neighbouring subnets over the whole range.
#[inline]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl RoutingTable {
    /// Builds a table (used by the loader).
    pub fn new(profiles: Vec<Profile>, model: Model, measured: Measured) -> Self {
        let by_owner = profiles
            .iter()
            .enumerate()
            .map(|(i, p)| (p.owner_wire.clone(), i))
            .collect();
        let wants_subdivision = profiles.iter().any(|p| {
            p.endpoints
                .iter()
                .any(|e| e.geo.iter().any(|g| matches!(g, GeoCode::Subdivision(..))))
        });
        let mut owner_lens = [0u64; 4];
        for p in &profiles {
            let n = p.owner_wire.len().min(255);
            owner_lens[n / 64] |= 1 << (n % 64);
        }
        Self {
            profiles,
            by_owner,
            model,
            measured,
            wants_subdivision,
            owner_lens,
        }
    }
}
#[cfg(test)]
mod tests;

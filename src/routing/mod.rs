//! Traffic profiles and the routing decision.
//!
//! A [`RoutingTable`] is an immutable snapshot of every profile (built by [`profile`] from the
//! `zones/<zone>.toml` files); [`RoutingTable::select`] is the pure decision: given a profile,
//! the client's location and a [`HealthSnapshot`], which records answer. It never fails and
//! never waits; with `explain` it also records every term that led to the decision.
//!
//! Methods (Azure Traffic Manager's): `performance` (lowest estimated latency, see [`model`]),
//! `priority`, `weighted`, `geographic`, `multivalue`, `subnet`; an endpoint may be another
//! profile (nested, up to 10 deep).
//!
//! **Address families.** An A query is answered from endpoints that have an IPv4 target (or a
//! hostname target, answered as CNAME; or a nested profile able to answer A); AAAA likewise
//! with IPv6. An endpoint with only IPv6 targets is invisible to A queries, so A and AAAA may
//! pick different regions when their endpoint sets differ. A CNAME query is answered only when
//! the decision lands on a hostname endpoint.

pub mod model;
pub mod profile;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use hickory_server::proto::rr::{Name, Record};
use ipnet::IpNet;
use serde::Serialize;

use crate::geo::GeoPoint;
use crate::health::{HealthSnapshot, MonitorState};
use crate::locate::{Code, Location};
use crate::ops::metrics::Counter;
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
    /// The chosen endpoints themselves (for per-endpoint counters).
    pub picked: Small<&'t Endpoint>,
    /// TTL to answer with.
    pub ttl: u32,
    /// ECS scope prefix to answer with (0 when no ECS was sent).
    pub scope: u8,
    /// Some level served degraded endpoints because all were degraded.
    pub failed_open: bool,
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
    by_owner: crate::FastMap<Box<[u8]>, usize>,
    /// The latency model.
    pub model: Model,
    /// Operator-measured RTTs.
    pub measured: Measured,
    /// Whether some geographic profile uses subdivision codes (costs an extra GeoIP decode).
    pub wants_subdivision: bool,
}

/// Deepest nesting of profiles (Traffic Manager allows 10 levels).
pub const MAX_DEPTH: usize = 10;

impl RoutingTable {
    /// The profile answering at a lower-cased wire name.
    pub fn profile_at(&self, owner_wire: &[u8]) -> Option<usize> {
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
        // Capped at the source prefix (RFC 7871 §7.2.1: scope may not exceed what we were given
        // … in practice, a longer scope than the source says nothing more).
        sel.scope = match client.ecs_source {
            None | Some(0) => 0,
            Some(src) => bits.min(src),
        };
        sel
    }

    /// Monitor state of an endpoint as routing sees it.
    fn state(
        &self,
        ep: &Endpoint,
        health: &HealthSnapshot,
        client: &Client,
        depth: usize,
    ) -> MonitorState {
        if !ep.enabled {
            return MonitorState::Disabled;
        }
        let h = health.get(&ep.key);
        if let Some(f) = &h.forced
            && f.applies_to(client.loc.addr)
        {
            return match f.action {
                crate::health::ForceAction::Down => MonitorState::ForcedDown,
                crate::health::ForceAction::Up => MonitorState::ForcedUp,
            };
        }
        match &ep.target {
            Target::Nested(c) => {
                if depth >= MAX_DEPTH {
                    return MonitorState::Degraded;
                }
                let child = &self.profiles[*c];
                let (mut all, mut v4, mut v6) = (0, 0, 0);
                for e in &child.endpoints {
                    if self.state(e, health, client, depth + 1).serves() {
                        all += 1;
                        v4 += usize::from(self.eligible(e, Family::V4));
                        v6 += usize::from(self.eligible(e, Family::V6));
                    }
                }
                if all >= ep.min_child && v4 >= ep.min_child_v4 && v6 >= ep.min_child_v6 {
                    MonitorState::Online
                } else {
                    MonitorState::Degraded
                }
            }
            _ => h.state,
        }
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
        let eligible = |i: usize| self.eligible(&profile.endpoints[i], family);
        let mut cands: Small<usize> = (0..profile.endpoints.len())
            .filter(|&i| eligible(i) && states[i].serves())
            .collect();
        let mut failed_open = false;
        if cands.is_empty() {
            cands = (0..profile.endpoints.len())
                .filter(|&i| eligible(i) && states[i] == MonitorState::Degraded)
                .collect();
            failed_open = !cands.is_empty();
        }
        sel.failed_open |= failed_open;
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
        let (picked, decision, mut level_scope) = self.pick(
            profile,
            &cands,
            family,
            client,
            health,
            &mut estimates,
            explain.is_some(),
        );
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
                        detail: detail(profile.method, e),
                        load: health.get(&e.key).load,
                        ramp: health.get(&e.key).ramp,
                    })
                    .collect(),
                failed_open,
                decision: decision(),
            });
        }

        for i in picked {
            let ep = &profile.endpoints[i];
            sel.chosen.push(&ep.key);
            sel.picked.push(ep);
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

    /// Applies the method to the candidates. Returns the chosen endpoint indices, a lazily
    /// formatted decision text (empty unless `want`: see [`lazy`]), and how widely the decision
    /// holds.
    #[allow(clippy::too_many_arguments)]
    fn pick<'a>(
        &'a self,
        profile: &'a Profile,
        cands: &'a [usize],
        family: Family,
        client: &'a Client,
        health: &'a HealthSnapshot,
        estimates: &mut [Option<Estimate>],
        want: bool,
    ) -> (Small<usize>, Why<'a>, Scope) {
        let eps = &profile.endpoints;
        if cands.is_empty() {
            return (
                Small::new(),
                lazy(want, || "no candidate: empty answer".into()),
                Scope::Global,
            );
        }
        match profile.method {
            Method::Performance => {
                for &i in cands {
                    let h = health.get(&eps[i].key);
                    let measured = self.measured.lookup(&client.loc, eps[i].region.as_deref());
                    // Ranking uses the held RTT (hysteresis), not every probe's wobble.
                    let rtt = h.rank_rtt_ms.or(h.rtt_ms);
                    estimates[i] =
                        Some(
                            self.model
                                .estimate(client.loc.point, eps[i].point, rtt, measured),
                        );
                }
                let total = |i: usize| estimates[i].and_then(|e| e.total_ms);
                // Distance (or measured) only: the client's natural home, immune to RTT noise.
                let path = |i: usize| estimates[i].and_then(|e| e.measured_ms.or(e.distance_ms));
                let mut scope = if self.measured.networks.is_empty() {
                    Scope::GeoNetwork
                } else {
                    Scope::Source
                };
                if cands.iter().any(|&i| total(i).is_some()) {
                    let load =
                        |i: usize| eps[i].capacity.as_ref().zip(health.get(&eps[i].key).load);
                    // Above the hard mark: last resort only.
                    let pool: Small<usize> = {
                        let ok: Small<usize> = cands
                            .iter()
                            .copied()
                            .filter(|&i| load(i).is_none_or(|(c, r)| r < c.hard_limit))
                            .collect();
                        if ok.is_empty() {
                            Small::from_slice(cands)
                        } else {
                            ok
                        }
                    };
                    let argmin = |f: &dyn Fn(usize) -> Option<f64>, set: &[usize]| {
                        set.iter()
                            .copied()
                            .filter_map(|i| f(i).map(|v| (i, v)))
                            .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)))
                    };
                    let Some((best, best_ms)) = argmin(&total, &pool) else {
                        return (
                            smallvec::smallvec![pool[0]],
                            lazy(want, || "no estimate".into()),
                            scope,
                        );
                    };
                    let anchor = argmin(&path, &pool).map_or(best, |a| a.0);
                    let st = &profile.stability;
                    let anchor_ms = total(anchor).unwrap_or(best_ms);
                    let gain = anchor_ms - best_ms;
                    let beats = gain >= st.margin_ms && gain >= anchor_ms * st.margin_pct / 100.0;
                    let mut chosen = if best == anchor || beats {
                        best
                    } else {
                        anchor
                    };
                    // The decision text is only built for `explain`/`_why`: formatting its
                    // floats would cost more than the whole choice.
                    macro_rules! text {
                        ($($t:tt)*) => { if want { format!($($t)*) } else { String::new() } };
                    }
                    let mut why: String = if chosen == anchor && best != anchor {
                        text!(
                            "{}: hysteresis held it ({} would be {gain:.1} ms better; margin {} ms and {} %)",
                            eps[anchor].name,
                            eps[best].name,
                            st.margin_ms,
                            st.margin_pct
                        )
                    } else {
                        text!(
                            "{}: lowest estimate {:.1} ms",
                            eps[chosen].name,
                            total(chosen).unwrap_or(best_ms)
                        )
                    };
                    // Capacity: spread a failed home's clients, spill from a busy endpoint.
                    let headroom = |i: usize| {
                        load(i).and_then(|(c, r)| {
                            let room = (c.high_water - r) * c.capacity;
                            (room > 0.0).then_some(room)
                        })
                    };
                    let spread = |exclude: Option<usize>, salt: &str| -> Option<usize> {
                        let set: Small<(usize, f64)> = pool
                            .iter()
                            .copied()
                            .filter(|&i| Some(i) != exclude)
                            .filter_map(|i| {
                                let room = headroom(i)?;
                                let ms = total(i)?.max(1.0);
                                Some((i, room / (ms * ms)))
                            })
                            .collect();
                        rendezvous(client, salt, set.iter().map(|&(i, w)| (i, &*eps[i].key, w)))
                    };
                    let all_eligible: Small<usize> = (0..eps.len())
                        .filter(|&i| eps[i].enabled && self.eligible(&eps[i], family))
                        .collect();
                    // Home: where the client would go with every endpoint healthy (the estimate
                    // of endpoints that are not candidates is computed here, on demand).
                    let path_any = |i: usize| {
                        let measured = self.measured.lookup(&client.loc, eps[i].region.as_deref());
                        let e = self
                            .model
                            .estimate(client.loc.point, eps[i].point, None, measured);
                        e.measured_ms.or(e.distance_ms)
                    };
                    let home = argmin(&path_any, &all_eligible).map(|h| h.0);
                    let any_load = pool.iter().any(|&i| load(i).is_some());
                    if any_load {
                        scope = Scope::Source;
                    }
                    if any_load && home.is_some_and(|h| !pool.contains(&h)) {
                        if let Some(i) = spread(None, "spread") {
                            let home_name = home.map_or("-", |h| eps[h].name.as_str());
                            why = text!(
                                "{}: home {home_name} unavailable; its clients spread by headroom and latency",
                                eps[i].name
                            );
                            chosen = i;
                        }
                    } else if let Some((c, r)) = load(chosen)
                        && r >= c.high_water
                    {
                        let p =
                            ((r - c.high_water) / (c.hard_limit - c.high_water)).clamp(0.0, 1.0);
                        if unit_hash(client, &format!("spill/{}", eps[chosen].key)) < p
                            && let Some(i) = spread(Some(chosen), "spill")
                        {
                            why = text!(
                                "{}: spilled from {} at {:.0} % load (spill share {:.0} %)",
                                eps[i].name,
                                eps[chosen].name,
                                r * 100.0,
                                p * 100.0
                            );
                            chosen = i;
                        } else {
                            why.push_str(&text!(
                                "; at {:.0} % load, {:.0} % of client networks spill",
                                r * 100.0,
                                p * 100.0
                            ));
                        }
                    }
                    return (
                        smallvec::smallvec![chosen],
                        lazy(want, move || why.clone()),
                        scope,
                    );
                }
                // No location (neither the ECS address nor the resolver's: see
                // `dns::handler::locate_client_traced`): the profile's declared order, the
                // first served endpoint in the file — as gdnsd answers unlocatable clients
                // from its declared datacenter order. Probe RTT does not rank here: it
                // measures how far the endpoint is from *this server*, not from the client,
                // and file positions are unique, so it has no tie to break.
                let i = cands.iter().copied().min().unwrap_or(cands[0]);
                let name = &eps[i].name;
                let known = client.loc.is_known();
                (
                    smallvec::smallvec![i],
                    lazy(want, move || {
                        if known {
                            format!(
                                "{name}: client location has no coordinates; first served in profile order"
                            )
                        } else {
                            format!(
                                "{name}: client location unknown; first served in profile order"
                            )
                        }
                    }),
                    scope,
                )
            }
            Method::Priority => {
                let i = cands
                    .iter()
                    .copied()
                    .min_by_key(|&i| (eps[i].priority, i))
                    .unwrap_or(cands[0]);
                let (name, prio) = (&eps[i].name, eps[i].priority);
                (
                    smallvec::smallvec![i],
                    lazy(want, move || {
                        format!("{name}: lowest priority {prio} among served")
                    }),
                    Scope::Global,
                )
            }
            Method::Weighted => {
                let total: u64 = cands.iter().map(|&i| u64::from(eps[i].weight)).sum();
                let (chosen, scope) = if profile.sticky {
                    // Weighted rendezvous hashing: each (client network, endpoint) pair gets a
                    // score, the highest wins. Proportional to weight, and when an endpoint
                    // leaves only its own clients move; the others keep their answer.
                    let base = client.sticky_key() ^ fnv(&profile.owner_wire);
                    let score = |i: usize| {
                        let h = mix(base ^ fnv(eps[i].key.as_bytes()));
                        // Uniform in (0, 1), never 0 or 1.
                        let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
                        f64::from(eps[i].weight) / -u.ln()
                    };
                    let best = cands
                        .iter()
                        .copied()
                        .max_by(|&a, &b| score(a).total_cmp(&score(b)))
                        .unwrap_or(cands[0]);
                    let bits = if client.loc.addr.is_some_and(|a| a.is_ipv4()) {
                        24
                    } else {
                        56
                    };
                    (best, Scope::Prefix(bits))
                } else {
                    let roll = fastrand::u64(0..total.max(1));
                    let mut acc = 0;
                    let mut chosen = cands[0];
                    for &i in cands {
                        acc += u64::from(eps[i].weight);
                        if roll < acc {
                            chosen = i;
                            break;
                        }
                    }
                    (chosen, Scope::Global)
                };
                let (name, w, sticky) = (&eps[chosen].name, eps[chosen].weight, profile.sticky);
                (
                    smallvec::smallvec![chosen],
                    lazy(want, move || {
                        format!(
                            "{name}: weight {w} of {total}{}",
                            if sticky {
                                ", hashed by client subnet"
                            } else {
                                ", random"
                            }
                        )
                    }),
                    scope,
                )
            }
            Method::Geographic => {
                // Strict: the most specific mapping among *all* endpoints decides; if its
                // endpoint is not a candidate (down, disabled), nothing is answered.
                let strict_best = profile
                    .geo_strict
                    .then(|| most_specific(eps, client, 0..eps.len()));
                if let Some(Some((i, g))) = strict_best
                    && !cands.contains(&i)
                {
                    let name = &eps[i].name;
                    return (
                        Small::new(),
                        lazy(want, move || {
                            format!(
                                "{name} (most specific match {g}) is not served and geo_strict \
                                 forbids a fallback: empty answer"
                            )
                        }),
                        Scope::GeoNetwork,
                    );
                }
                let best = most_specific(eps, client, cands.iter().copied());
                match best {
                    Some((i, g)) => {
                        let name = &eps[i].name;
                        (
                            smallvec::smallvec![i],
                            lazy(want, move || format!("{name}: most specific match {g}")),
                            Scope::GeoNetwork,
                        )
                    }
                    None => (
                        Small::new(),
                        lazy(want, || {
                            "no served endpoint maps the client's location: empty answer".into()
                        }),
                        Scope::GeoNetwork,
                    ),
                }
            }
            Method::Multivalue => {
                let picked: Small<usize> =
                    cands.iter().copied().take(profile.max_answers).collect();
                let n = picked.len();
                let max = profile.max_answers;
                (
                    picked,
                    lazy(want, move || {
                        format!("{n} served endpoint(s), at most {max}")
                    }),
                    Scope::Global,
                )
            }
            Method::Subnet => {
                let addr = client.loc.addr;
                let matched = cands
                    .iter()
                    .filter_map(|&i| {
                        eps[i]
                            .subnets
                            .iter()
                            .filter(|n| addr.is_some_and(|a| n.contains(&a)))
                            .map(|n| n.prefix_len())
                            .max()
                            .map(|len| (i, len))
                    })
                    .max_by_key(|(i, len)| (*len, std::cmp::Reverse(*i)));
                if let Some((i, len)) = matched {
                    let name = &eps[i].name;
                    return (
                        smallvec::smallvec![i],
                        lazy(want, move || format!("{name}: client in its /{len} range")),
                        Scope::Source,
                    );
                }
                match cands.iter().copied().find(|&i| eps[i].subnets.is_empty()) {
                    Some(i) => {
                        let name = &eps[i].name;
                        (
                            smallvec::smallvec![i],
                            lazy(want, move || {
                                format!("{name}: no range matched; fallback endpoint")
                            }),
                            Scope::Source,
                        )
                    }
                    None => (
                        Small::new(),
                        lazy(want, || {
                            "no range matched and no fallback: empty answer".into()
                        }),
                        Scope::Source,
                    ),
                }
            }
        }
    }
}

/// Among `among`, the endpoint whose geo mapping matches the client most specifically (ties:
/// the earlier endpoint), with that mapping.
fn most_specific(
    eps: &[Endpoint],
    client: &Client,
    among: impl Iterator<Item = usize>,
) -> Option<(usize, GeoCode)> {
    among
        .filter_map(|i| {
            eps[i]
                .geo
                .iter()
                .filter(|g| g.matches(&client.loc))
                .max_by_key(|g| g.specificity())
                .map(|g| (i, *g))
        })
        .max_by_key(|(i, g)| (g.specificity(), std::cmp::Reverse(*i)))
}

fn detail(method: Method, e: &Endpoint) -> String {
    match method {
        Method::Weighted => format!("weight {}", e.weight),
        Method::Priority => format!("priority {}", e.priority),
        Method::Geographic => e
            .geo
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(","),
        Method::Subnet if e.subnets.is_empty() => "fallback".into(),
        Method::Subnet => e
            .subnets
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(","),
        Method::Performance => match &e.capacity {
            Some(c) => format!(
                "capacity {} (high {:.0} %, hard {:.0} %)",
                c.capacity,
                c.high_water * 100.0,
                c.hard_limit * 100.0
            ),
            None => String::new(),
        },
        Method::Multivalue => String::new(),
    }
}

/// A client network's position in [0, 1) for a salt: decides ramps and spills, the same for
/// every query from that network (/24, /56).
/// A decision's text, formatted only when someone reads it.
type Why<'a> = Box<dyn Fn() -> String + 'a>;

/// `text` as a [`Why`] when `want`, else an empty one. Answers do not read the text, only
/// `explain` and `_why` do; the empty one is a zero-sized closure, so boxing it allocates
/// nothing (a capturing closure would cost an allocation per routed query).
fn lazy<'a>(want: bool, text: impl Fn() -> String + 'a) -> Why<'a> {
    if want {
        Box::new(text)
    } else {
        Box::new(String::new)
    }
}

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
fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x100_0000_01b3)
    })
}

/// SplitMix64 finaliser: spreads neighbouring subnets over the whole range.
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
        Self {
            profiles,
            by_owner,
            model,
            measured,
            wants_subdivision,
        }
    }
}
#[cfg(test)]
mod tests;

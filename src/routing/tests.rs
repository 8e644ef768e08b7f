//! Unit tests of the routing decision ([`RoutingTable::select`]) and of the profile loader's
//! error messages. Tables are built from TOML text the way the server builds them (zone →
//! `load_profiles` → `compute_capabilities` → `RoutingTable::new`); clients are built by hand,
//! so no GeoIP database is needed.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::LazyLock;

use hickory_server::proto::rr::Name;

use super::model::Model;
use super::profile::{compute_capabilities, load_profiles};
use super::*;
use crate::base::ConfigErrors;
use crate::geo::{Catalogue, GeoPoint};
use crate::health::{EndpointHealth, HealthSnapshot, MonitorState};
use crate::locate::{Code, Location};
use crate::wire::wire_lower;
use crate::zone::{Zone, load_zone_text};

// ---------------------------------------------------------------------------------------------
// Building tables and clients
// ---------------------------------------------------------------------------------------------

const ZONE: &str =
    "$ORIGIN t.\n$TTL 60\n@ IN SOA ns.t. h.t. 1 2 3 4 30\n@ IN NS ns.t.\nns IN A 192.0.2.1\n";

static CATALOGUE: LazyLock<Catalogue> = LazyLock::new(|| Catalogue::load(None).unwrap());

fn zone(text: &str) -> Zone {
    load_zone_text(Path::new("zones/t.zone"), text).unwrap()
}

fn load_with_zone(zone_text: &str, toml: &str) -> Result<Vec<Profile>, ConfigErrors> {
    load_profiles(
        &zone(zone_text),
        Path::new("zones/t.toml"),
        toml,
        &CATALOGUE,
        0,
    )
}

fn table_with(toml: &str, model: Model, measured: Measured) -> RoutingTable {
    let mut profiles = match load_with_zone(ZONE, toml) {
        Ok(p) => p,
        Err(e) => panic!("profiles do not load:\n{e}"),
    };
    compute_capabilities(&mut profiles);
    RoutingTable::new(profiles, model, measured)
}

fn table(toml: &str) -> RoutingTable {
    table_with(toml, Model::default(), Measured::default())
}

/// Index of the profile answering at `<name>.t.`.
fn idx(t: &RoutingTable, name: &str) -> usize {
    let owner = Name::from_ascii(format!("{name}.t.")).unwrap();
    t.profile_at(&wire_lower(&owner))
        .unwrap_or_else(|| panic!("no profile {name}"))
}

fn code(s: &str) -> Code {
    Code::new(s).unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A located client with ECS source /24.
fn at(
    addr: &str,
    (lat, lon): (f64, f64),
    country: &str,
    continent: &str,
    sub: Option<&str>,
) -> Client {
    Client {
        loc: Location {
            addr: Some(ip(addr)),
            point: Some(GeoPoint { lat, lon }),
            country: Some(code(country)),
            continent: Some(code(continent)),
            subdivision: sub.map(code),
            asn: None,
            prefix_len: 20,
        },
        ecs_source: Some(24),
    }
}

fn london() -> Client {
    at("81.2.69.160", (51.51, -0.13), "GB", "EU", Some("ENG"))
}

fn glasgow() -> Client {
    at("81.2.70.10", (55.86, -4.25), "GB", "EU", Some("SCT"))
}

fn paris() -> Client {
    at("82.64.0.10", (48.86, 2.35), "FR", "EU", Some("IDF"))
}

fn new_york() -> Client {
    at("216.160.83.56", (40.71, -74.01), "US", "NA", Some("NY"))
}

fn tokyo() -> Client {
    at("1.0.16.1", (35.68, 139.69), "JP", "AS", Some("13"))
}

/// An address GeoIP knows nothing about (prefix_len still bounds the scope).
fn nowhere(addr: &str) -> Client {
    Client {
        loc: Location {
            addr: Some(ip(addr)),
            prefix_len: 16,
            ..Location::default()
        },
        ecs_source: Some(24),
    }
}

fn ecs(mut c: Client, source: Option<u8>) -> Client {
    c.ecs_source = source;
    c
}

fn prefix(mut c: Client, len: u8) -> Client {
    c.loc.prefix_len = len;
    c
}

fn addr(mut c: Client, a: &str) -> Client {
    c.loc.addr = Some(ip(a));
    c
}

/// One health change: endpoint key, state, smoothed probe RTT.
type Change = (&'static str, MonitorState, Option<f64>);

fn down(key: &'static str) -> Change {
    (key, MonitorState::Degraded, None)
}

fn state(key: &'static str, s: MonitorState) -> Change {
    (key, s, None)
}

fn rtt(key: &'static str, ms: f64) -> Change {
    (key, MonitorState::Online, Some(ms))
}

fn health(changes: &[Change]) -> HealthSnapshot {
    let mut h = HealthSnapshot::default();
    for &(key, state, rtt_ms) in changes {
        h.set(
            key,
            EndpointHealth {
                state,
                rtt_ms,
                ..EndpointHealth::default()
            },
        );
    }
    h
}

fn texts(sel: &Selection<'_>) -> Vec<String> {
    sel.records.iter().map(|r| r.data.to_string()).collect()
}

/// One row of a decision table.
struct Row {
    what: &'static str,
    profile: &'static str,
    client: Client,
    health: Vec<Change>,
    family: Family,
    /// Endpoint keys chosen, outermost first.
    chosen: Vec<&'static str>,
    /// Record data answered.
    records: Vec<&'static str>,
    scope: u8,
    failed_open: bool,
}

impl Row {
    fn new(what: &'static str, profile: &'static str, client: Client) -> Self {
        Self {
            what,
            profile,
            client,
            health: Vec::new(),
            family: Family::V4,
            chosen: Vec::new(),
            records: Vec::new(),
            scope: 0,
            failed_open: false,
        }
    }

    fn health(mut self, changes: &[Change]) -> Self {
        self.health = changes.to_vec();
        self
    }

    fn family(mut self, f: Family) -> Self {
        self.family = f;
        self
    }

    fn expect(mut self, chosen: &[&'static str], records: &[&'static str], scope: u8) -> Self {
        self.chosen = chosen.to_vec();
        self.records = records.to_vec();
        self.scope = scope;
        self
    }

    fn failed_open(mut self) -> Self {
        self.failed_open = true;
        self
    }
}

/// Runs every row; each decision is also made with `explain`, which must not change it.
fn check(t: &RoutingTable, rows: &[Row]) {
    for row in rows {
        let p = idx(t, row.profile);
        let h = health(&row.health);
        let sel = t.select(p, row.family, &row.client, &h, None);
        let what = row.what;
        assert_eq!(sel.chosen.to_vec(), row.chosen, "{what}: chosen");
        assert_eq!(texts(&sel), row.records, "{what}: records");
        assert_eq!(sel.scope, row.scope, "{what}: scope");
        assert_eq!(sel.failed_open, row.failed_open, "{what}: failed_open");
        // Fail-open answers carry the short TTL.
        let ttl = if row.failed_open {
            t.profiles[p].ttl.min(crate::health::state::SHORT_TTL)
        } else {
            t.profiles[p].ttl
        };
        assert_eq!(sel.ttl, ttl, "{what}: ttl");

        let mut x = Explain::default();
        let with = t.select(p, row.family, &row.client, &h, Some(&mut x));
        assert_eq!(with.chosen, sel.chosen, "{what}: chosen with explain");
        assert_eq!(with.records, sel.records, "{what}: records with explain");
        assert_eq!(with.scope, sel.scope, "{what}: scope with explain");
        assert_eq!(
            with.failed_open, sel.failed_open,
            "{what}: fail-open w/ explain"
        );
        assert!(!x.levels.is_empty(), "{what}: explain has levels");
    }
}

// ---------------------------------------------------------------------------------------------
// 1. performance
// ---------------------------------------------------------------------------------------------

const PERF: &str = r#"
[[profile]]
name = "mqtt"
method = "performance"
ttl = 20

[[profile.endpoint]]
name = "westeurope"
region = "azure:westeurope"
targets = ["198.51.100.10", "2001:db8:100::10"]

[[profile.endpoint]]
name = "eastus"
region = "azure:eastus"
targets = ["198.51.100.20", "2001:db8:100::20"]

[[profile.endpoint]]
name = "southeastasia"
region = "azure:southeastasia"
targets = ["198.51.100.30", "2001:db8:100::30"]
"#;

const WE: &str = "mqtt.t./westeurope";
const EUS: &str = "mqtt.t./eastus";
const SEA: &str = "mqtt.t./southeastasia";

#[test]
fn performance_picks_the_lowest_estimate() {
    let t = table(PERF);
    let rows = [
        Row::new("London → westeurope", "mqtt", london()).expect(&[WE], &["198.51.100.10"], 20),
        Row::new("London AAAA → westeurope", "mqtt", london())
            .family(Family::V6)
            .expect(&[WE], &["2001:db8:100::10"], 20),
        Row::new("New York → eastus", "mqtt", new_york()).expect(&[EUS], &["198.51.100.20"], 20),
        Row::new("Tokyo → southeastasia", "mqtt", tokyo()).expect(&[SEA], &["198.51.100.30"], 20),
        Row::new("London, westeurope degraded → eastus", "mqtt", london())
            .health(&[down(WE)])
            .expect(&[EUS], &["198.51.100.20"], 20),
        Row::new("London, westeurope disabled → eastus", "mqtt", london())
            .health(&[state(WE, MonitorState::Disabled)])
            .expect(&[EUS], &["198.51.100.20"], 20),
        Row::new("London, west+east degraded → SEA", "mqtt", london())
            .health(&[down(WE), down(EUS)])
            .expect(&[SEA], &["198.51.100.30"], 20),
        Row::new("Tokyo, SEA degraded → westeurope", "mqtt", tokyo())
            .health(&[down(SEA)])
            .expect(&[WE], &["198.51.100.10"], 20),
        Row::new("New York, eastus degraded → westeurope", "mqtt", new_york())
            .health(&[down(EUS)])
            .expect(&[WE], &["198.51.100.10"], 20),
        Row::new("no server point: probe RTT ignored", "mqtt", london())
            .health(&[rtt(WE, 500.0)])
            .expect(&[WE], &["198.51.100.10"], 20),
        // Unknown location: the profile's order, whatever the probe RTTs (they measure this
        // server's distance to the endpoint, not the client's).
        Row::new(
            "unknown location → profile order, not lowest probe RTT",
            "mqtt",
            nowhere("192.0.2.77"),
        )
        .health(&[rtt(WE, 80.0), rtt(EUS, 20.0), rtt(SEA, 50.0)])
        .expect(&[WE], &["198.51.100.10"], 16),
        Row::new(
            "unknown location, one RTT known → profile order",
            "mqtt",
            nowhere("192.0.2.77"),
        )
        .health(&[rtt(SEA, 150.0)])
        .expect(&[WE], &["198.51.100.10"], 16),
        Row::new(
            "unknown location, RTT tie → profile order",
            "mqtt",
            nowhere("192.0.2.77"),
        )
        .health(&[rtt(WE, 40.0), rtt(EUS, 20.0), rtt(SEA, 20.0)])
        .expect(&[WE], &["198.51.100.10"], 16),
        Row::new(
            "unknown location, no RTT → profile order",
            "mqtt",
            nowhere("192.0.2.77"),
        )
        .expect(&[WE], &["198.51.100.10"], 16),
        Row::new(
            "unknown location, first degraded",
            "mqtt",
            nowhere("192.0.2.77"),
        )
        .health(&[down(WE)])
        .expect(&[EUS], &["198.51.100.20"], 16),
    ];
    check(&t, &rows);
}

/// The probe excess (RTT beyond what the server→endpoint distance predicts) is added for every
/// client, so a slow region loses clients before it fails.
#[test]
fn performance_probe_excess_makes_a_slow_region_lose() {
    // The server sits at westeurope itself: the predicted RTT there is the 5 ms base.
    let server = GeoPoint {
        lat: 52.37,
        lon: 4.90,
    };
    let model = Model {
        server: Some(server),
        ..Model::default()
    };
    let t = table_with(PERF, model, Measured::default());
    let london_we = model
        .estimate(london().loc.point, Some(server), None, None)
        .total_ms
        .unwrap();
    let eastus = CATALOGUE.get("azure:eastus").unwrap().point();
    let london_eus = model
        .estimate(london().loc.point, Some(eastus), None, None)
        .total_ms
        .unwrap();
    // Sanity of the premise: London is ~12 ms from westeurope and ~120 ms from eastus.
    assert!(london_we < 20.0 && (100.0..150.0).contains(&london_eus));
    let margin = london_eus - london_we;
    let rows = [
        Row::new("+200 ms excess on westeurope → eastus", "mqtt", london())
            .health(&[rtt(WE, 205.0)])
            .expect(&[EUS], &["198.51.100.20"], 20),
        Row::new("RTT at the prediction: no excess", "mqtt", london())
            .health(&[rtt(WE, 5.0)])
            .expect(&[WE], &["198.51.100.10"], 20),
        Row::new("excess below the margin keeps westeurope", "mqtt", london())
            .health(&[(WE, MonitorState::Online, Some(5.0 + margin - 5.0))])
            .expect(&[WE], &["198.51.100.10"], 20),
        // Issue 6 hysteresis: beating the anchor by 5 ms is within the 10 ms / 10 % margin …
        Row::new(
            "excess just past break-even: hysteresis keeps westeurope",
            "mqtt",
            london(),
        )
        .health(&[(WE, MonitorState::Online, Some(5.0 + margin + 5.0))])
        .expect(&[WE], &["198.51.100.10"], 20),
        // … beating it by 25 ms (> 10 ms and > 10 % of ~145 ms) moves the client.
        Row::new(
            "excess beyond break-even plus the margin loses westeurope",
            "mqtt",
            london(),
        )
        .health(&[(WE, MonitorState::Online, Some(5.0 + margin + 25.0))])
        .expect(&[EUS], &["198.51.100.20"], 20),
        Row::new("New York is unaffected", "mqtt", new_york())
            .health(&[rtt(WE, 205.0)])
            .expect(&[EUS], &["198.51.100.20"], 20),
        Row::new("excess on both: the lesser total wins", "mqtt", london())
            .health(&[rtt(WE, 105.0), rtt(EUS, 500.0)])
            .expect(&[WE], &["198.51.100.10"], 20),
    ];
    check(&t, &rows);
}

#[test]
fn performance_measured_rtts_override_the_distance_model() {
    let mut by_country = Measured::default();
    by_country
        .countries
        .insert((code("GB"), "azure:eastus".to_string()), 10.0);
    let t = table_with(PERF, Model::default(), by_country);
    let rows = [
        Row::new("GB → eastus measured 10 ms beats 12 ms", "mqtt", london()).expect(
            &[EUS],
            &["198.51.100.20"],
            20,
        ),
        Row::new("US clients keep the model", "mqtt", new_york()).expect(
            &[EUS],
            &["198.51.100.20"],
            20,
        ),
        Row::new("Tokyo keeps the model", "mqtt", tokyo()).expect(&[SEA], &["198.51.100.30"], 20),
        Row::new("GB, eastus degraded → model again", "mqtt", london())
            .health(&[down(EUS)])
            .expect(&[WE], &["198.51.100.10"], 20),
    ];
    check(&t, &rows);

    let by_network = Measured {
        networks: vec![(
            "81.2.69.0/24".parse().unwrap(),
            "azure:southeastasia".to_string(),
            1.0,
        )],
        ..Measured::default()
    };
    let t = table_with(PERF, Model::default(), by_network);
    // A network table makes the decision depend on the exact client subnet: scope = source.
    let rows = [
        Row::new("London in the measured /24 → SEA", "mqtt", london()).expect(
            &[SEA],
            &["198.51.100.30"],
            24,
        ),
        Row::new(
            "London outside it → westeurope",
            "mqtt",
            addr(london(), "81.2.70.1"),
        )
        .expect(&[WE], &["198.51.100.10"], 24),
    ];
    check(&t, &rows);

    // Network and country tables together: the network entry wins where it matches.
    let mut both = Measured {
        networks: vec![(
            "81.2.69.0/24".parse().unwrap(),
            "azure:southeastasia".to_string(),
            1.0,
        )],
        ..Measured::default()
    };
    both.countries
        .insert((code("GB"), "azure:eastus".to_string()), 2.0);
    let t = table_with(PERF, Model::default(), both);
    let rows = [
        Row::new("network 1 ms beats country 2 ms", "mqtt", london()).expect(
            &[SEA],
            &["198.51.100.30"],
            24,
        ),
        Row::new(
            "outside the network: country",
            "mqtt",
            addr(london(), "81.2.70.1"),
        )
        .expect(&[EUS], &["198.51.100.20"], 24),
    ];
    check(&t, &rows);
}

// ---------------------------------------------------------------------------------------------
// 2. priority
// ---------------------------------------------------------------------------------------------

const PRIO: &str = r#"
[[profile]]
name = "fo"
method = "priority"

[[profile.endpoint]]
name = "c"
targets = ["192.0.2.30"]
priority = 4

[[profile.endpoint]]
name = "off"
targets = ["192.0.2.99"]
priority = 1
enabled = false

[[profile.endpoint]]
name = "a"
targets = ["192.0.2.10"]
priority = 2

[[profile.endpoint]]
name = "b"
targets = ["192.0.2.20"]
priority = 3

[[profile]]
name = "ordered"
method = "priority"

[[profile.endpoint]]
name = "first"
targets = ["192.0.2.1"]

[[profile.endpoint]]
name = "second"
targets = ["192.0.2.2"]
"#;

#[test]
fn priority_picks_the_lowest_priority_served() {
    let t = table(PRIO);
    let (a, b, c, off) = ("fo.t./a", "fo.t./b", "fo.t./c", "fo.t./off");
    let rows = [
        Row::new(
            "lowest served priority (disabled 1 skipped)",
            "fo",
            london(),
        )
        .expect(&[a], &["192.0.2.10"], 0),
        Row::new("a degraded → b", "fo", london())
            .health(&[down(a)])
            .expect(&[b], &["192.0.2.20"], 0),
        Row::new("a, b degraded → c", "fo", london())
            .health(&[down(a), down(b)])
            .expect(&[c], &["192.0.2.30"], 0),
        Row::new("a disabled by state → b", "fo", london())
            .health(&[state(a, MonitorState::Disabled)])
            .expect(&[b], &["192.0.2.20"], 0),
        Row::new("a unmonitored is served", "fo", london())
            .health(&[state(a, MonitorState::Unmonitored)])
            .expect(&[a], &["192.0.2.10"], 0),
        Row::new("a checking is served", "fo", london())
            .health(&[state(a, MonitorState::CheckingEndpoint)])
            .expect(&[a], &["192.0.2.10"], 0),
        Row::new("a degraded, b unmonitored → b", "fo", london())
            .health(&[down(a), state(b, MonitorState::Unmonitored)])
            .expect(&[b], &["192.0.2.20"], 0),
        Row::new("disabled stays off when a recovers", "fo", london())
            .health(&[state(off, MonitorState::Online)])
            .expect(&[a], &["192.0.2.10"], 0),
        Row::new("all degraded → fail open at a", "fo", london())
            .health(&[down(a), down(b), down(c)])
            .expect(&[a], &["192.0.2.10"], 0)
            .failed_open(),
        Row::new("no priority given: file order", "ordered", london()).expect(
            &["ordered.t./first"],
            &["192.0.2.1"],
            0,
        ),
        Row::new("file order, first degraded", "ordered", london())
            .health(&[down("ordered.t./first")])
            .expect(&["ordered.t./second"], &["192.0.2.2"], 0),
    ];
    check(&t, &rows);
}

// ---------------------------------------------------------------------------------------------
// 3. weighted
// ---------------------------------------------------------------------------------------------

const WEIGHTED: &str = r#"
[[profile]]
name = "w"
method = "weighted"

[[profile.endpoint]]
name = "stable"
targets = ["192.0.2.1", "2001:db8::1"]
weight = 90

[[profile.endpoint]]
name = "canary"
targets = ["192.0.2.2", "2001:db8::2"]
weight = 10

[[profile]]
name = "three"
method = "weighted"

[[profile.endpoint]]
name = "a"
targets = ["192.0.2.1"]
weight = 600

[[profile.endpoint]]
name = "b"
targets = ["192.0.2.2"]
weight = 300

[[profile.endpoint]]
name = "c"
targets = ["192.0.2.3"]
weight = 100

[[profile]]
name = "s"
method = "weighted"
sticky = true

[[profile.endpoint]]
name = "stable"
targets = ["192.0.2.1", "2001:db8::1"]
weight = 90

[[profile.endpoint]]
name = "canary"
targets = ["192.0.2.2", "2001:db8::2"]
weight = 10
"#;

/// Share of selections landing on each endpoint key.
fn shares<'t>(
    t: &'t RoutingTable,
    p: usize,
    h: &HealthSnapshot,
    clients: impl Iterator<Item = Client>,
) -> (usize, HashMap<&'t str, usize>) {
    let mut n = 0;
    let mut by = HashMap::new();
    for c in clients {
        let sel = t.select(p, Family::V4, &c, h, None);
        assert_eq!(sel.chosen.len(), 1);
        *by.entry(sel.chosen[0]).or_insert(0) += 1;
        n += 1;
    }
    (n, by)
}

fn assert_share(what: &str, n: usize, by: &HashMap<&str, usize>, key: &str, want: f64) {
    let got = by.get(key).copied().unwrap_or(0) as f64 / n as f64;
    assert!(
        (got - want).abs() <= 0.02,
        "{what}: {key} got {got:.4}, want {want} ± 0.02 ({by:?})"
    );
}

#[test]
fn weighted_random_follows_the_weights() {
    let t = table(WEIGHTED);
    let h = HealthSnapshot::default();
    let n = 20_000;

    let (total, by) = shares(&t, idx(&t, "w"), &h, (0..n).map(|_| london()));
    assert_eq!(total, n);
    assert_share("90/10", total, &by, "w.t./stable", 0.90);
    assert_share("90/10", total, &by, "w.t./canary", 0.10);

    let (total, by) = shares(&t, idx(&t, "three"), &h, (0..n).map(|_| london()));
    assert_share("60/30/10", total, &by, "three.t./a", 0.60);
    assert_share("60/30/10", total, &by, "three.t./b", 0.30);
    assert_share("60/30/10", total, &by, "three.t./c", 0.10);

    // A degraded endpoint's weight is redistributed: b gone → 600:100.
    let h = health(&[down("three.t./b")]);
    let (total, by) = shares(&t, idx(&t, "three"), &h, (0..n).map(|_| london()));
    assert_eq!(by.get("three.t./b"), None);
    assert_share("b degraded", total, &by, "three.t./a", 6.0 / 7.0);
    assert_share("b degraded", total, &by, "three.t./c", 1.0 / 7.0);

    // Canary degraded → every answer is stable, with scope 0 (random decisions hold globally).
    let h = health(&[down("w.t./canary")]);
    let rows = [Row::new("canary degraded", "w", london())
        .health(&[down("w.t./canary")])
        .expect(&["w.t./stable"], &["192.0.2.1"], 0)];
    check(&t, &rows);
    let (total, by) = shares(&t, idx(&t, "w"), &h, (0..1000).map(|_| london()));
    assert_eq!(by.get("w.t./stable"), Some(&total));
}

fn v4_client(a: u32) -> Client {
    let mut c = london();
    c.loc.addr = Some(IpAddr::V4(a.into()));
    c
}

#[test]
fn weighted_sticky_hashes_the_client_network() {
    let t = table(WEIGHTED);
    let p = idx(&t, "s");
    let h = HealthSnapshot::default();

    // Every address of one /24 gets the same answer, query after query.
    for net in [0x0a01_0200u32, 0x5102_4500, 0xc633_6400, 0x0100_1000] {
        let first = t.select(p, Family::V4, &v4_client(net), &h, None).chosen;
        for host in 0..=255u32 {
            for _ in 0..2 {
                let got = t.select(p, Family::V4, &v4_client(net | host), &h, None);
                assert_eq!(got.chosen, first, "{net:#x} + {host}");
                assert_eq!(got.scope, 24);
            }
        }
    }

    // IPv6: the /56 is the unit.
    let v6 = |s: &str| addr(london(), s);
    let first = t
        .select(p, Family::V6, &v6("2001:db8:1:200::1"), &h, None)
        .chosen;
    for a in [
        "2001:db8:1:200::ffff",
        "2001:db8:1:2ff:1234::1",
        "2001:db8:1:2ab::9",
    ] {
        assert_eq!(
            t.select(p, Family::V6, &v6(a), &h, None).chosen,
            first,
            "{a}"
        );
    }

    // Different /24s spread by weight.
    let (total, by) = shares(
        &t,
        p,
        &h,
        (0..20_000u32).map(|i| v4_client(0x0a00_0000 + (i << 8) + 7)),
    );
    assert_share("sticky 90/10", total, &by, "s.t./stable", 0.90);
    assert_share("sticky 90/10", total, &by, "s.t./canary", 0.10);

    // The canary's networks move to stable when it is degraded, and come back after.
    let down_h = health(&[down("s.t./canary")]);
    let (total, by) = shares(
        &t,
        p,
        &down_h,
        (0..2000u32).map(|i| v4_client(0x0a00_0000 + (i << 8))),
    );
    assert_eq!(by.get("s.t./stable"), Some(&total));
}

#[test]
fn weighted_sticky_scope_is_the_hashed_prefix_capped_by_ecs() {
    let t = table(WEIGHTED);
    let v6 = addr(london(), "2001:db8:1:200::1");
    let rows: &[(&str, Client, Family, u8)] = &[
        ("v4, ECS /24 → 24", london(), Family::V4, 24),
        ("v4, ECS /32 → 24", ecs(london(), Some(32)), Family::V4, 24),
        ("v4, ECS /20 → 20", ecs(london(), Some(20)), Family::V4, 20),
        ("v4, ECS /0 → 0", ecs(london(), Some(0)), Family::V4, 0),
        ("v4, no ECS → 0", ecs(london(), None), Family::V4, 0),
        ("v6, ECS /56 → 56", ecs(v6, Some(56)), Family::V6, 56),
        ("v6, ECS /64 → 56", ecs(v6, Some(64)), Family::V6, 56),
        ("v6, ECS /48 → 48", ecs(v6, Some(48)), Family::V6, 48),
        ("v6 client, A query → 56", ecs(v6, Some(64)), Family::V4, 56),
    ];
    let h = HealthSnapshot::default();
    for &(what, c, family, want) in rows {
        let sel = t.select(idx(&t, "s"), family, &c, &h, None);
        assert_eq!(sel.scope, want, "{what}");
        assert_eq!(sel.records.len(), 1, "{what}");
    }
}

// ---------------------------------------------------------------------------------------------
// 4. geographic
// ---------------------------------------------------------------------------------------------

const GEO: &str = r#"
[[profile]]
name = "geo"
method = "geographic"

[[profile.endpoint]]
name = "world"
targets = ["192.0.2.1"]
geo = ["WORLD"]

[[profile.endpoint]]
name = "europe"
targets = ["192.0.2.2"]
geo = ["EU"]

[[profile.endpoint]]
name = "gb"
targets = ["192.0.2.3"]
geo = ["GB"]

[[profile.endpoint]]
name = "scotland"
targets = ["192.0.2.4"]
geo = ["GB-SCT"]

[[profile.endpoint]]
name = "americas"
targets = ["192.0.2.5"]
geo = ["NA", "SA", "country:JP"]

[[profile]]
name = "geo-strict"
method = "geographic"
geo_strict = true

[[profile.endpoint]]
name = "world"
targets = ["192.0.2.1"]
geo = ["WORLD"]

[[profile.endpoint]]
name = "gb"
targets = ["192.0.2.3"]
geo = ["GB"]

[[profile.endpoint]]
name = "scotland"
targets = ["192.0.2.4"]
geo = ["GB-SCT"]

[[profile]]
name = "geo-eu"
method = "geographic"

[[profile.endpoint]]
name = "europe"
targets = ["192.0.2.2"]
geo = ["EU"]

[[profile.endpoint]]
name = "us"
targets = ["192.0.2.5"]
geo = ["US"]
"#;

#[test]
fn geographic_most_specific_match_wins() {
    let t = table(GEO);
    let (world, europe, gb, sct) = (
        "geo.t./world",
        "geo.t./europe",
        "geo.t./gb",
        "geo.t./scotland",
    );
    let rows = [
        Row::new("subdivision beats country", "geo", glasgow()).expect(&[sct], &["192.0.2.4"], 20),
        Row::new("country beats continent", "geo", london()).expect(&[gb], &["192.0.2.3"], 20),
        Row::new("continent beats WORLD", "geo", paris()).expect(&[europe], &["192.0.2.2"], 20),
        Row::new("one endpoint, several codes", "geo", new_york()).expect(
            &["geo.t./americas"],
            &["192.0.2.5"],
            20,
        ),
        Row::new("country:JP under one endpoint", "geo", tokyo()).expect(
            &["geo.t./americas"],
            &["192.0.2.5"],
            20,
        ),
        Row::new("unknown location → WORLD", "geo", nowhere("192.0.2.77")).expect(
            &[world],
            &["192.0.2.1"],
            16,
        ),
        Row::new("scotland degraded → gb", "geo", glasgow())
            .health(&[down(sct)])
            .expect(&[gb], &["192.0.2.3"], 20),
        Row::new("scotland, gb degraded → europe", "geo", glasgow())
            .health(&[down(sct), down(gb)])
            .expect(&[europe], &["192.0.2.2"], 20),
        Row::new("scotland, gb, europe degraded → world", "geo", glasgow())
            .health(&[down(sct), down(gb), down(europe)])
            .expect(&[world], &["192.0.2.1"], 20),
        Row::new("gb disabled → europe for London", "geo", london())
            .health(&[state(gb, MonitorState::Disabled)])
            .expect(&[europe], &["192.0.2.2"], 20),
        Row::new("all degraded → fail open, most specific", "geo", glasgow())
            .health(&[
                down(world),
                down(europe),
                down(gb),
                down(sct),
                down("geo.t./americas"),
            ])
            .expect(&[sct], &["192.0.2.4"], 20)
            .failed_open(),
        Row::new("no match → empty answer", "geo-eu", tokyo()).expect(&[], &[], 20),
        Row::new(
            "no match, unknown location → empty",
            "geo-eu",
            nowhere("192.0.2.77"),
        )
        .expect(&[], &[], 16),
        Row::new(
            "only match degraded, others served → empty",
            "geo-eu",
            paris(),
        )
        .health(&[down("geo-eu.t./europe")])
        .expect(&[], &[], 20),
        Row::new("continent match", "geo-eu", paris()).expect(
            &["geo-eu.t./europe"],
            &["192.0.2.2"],
            20,
        ),
        // geo_strict: the most specific mapping decides even when its endpoint is down.
        Row::new("strict: subdivision served", "geo-strict", glasgow()).expect(
            &["geo-strict.t./scotland"],
            &["192.0.2.4"],
            20,
        ),
        Row::new(
            "strict: scotland degraded → empty, not gb",
            "geo-strict",
            glasgow(),
        )
        .health(&[down("geo-strict.t./scotland")])
        .expect(&[], &[], 20),
        Row::new(
            "strict: gb disabled → empty for London",
            "geo-strict",
            london(),
        )
        .health(&[state("geo-strict.t./gb", MonitorState::Disabled)])
        .expect(&[], &[], 20),
        Row::new(
            "strict: scotland down does not affect London",
            "geo-strict",
            london(),
        )
        .health(&[down("geo-strict.t./scotland")])
        .expect(&["geo-strict.t./gb"], &["192.0.2.3"], 20),
        Row::new(
            "strict: all degraded → fail open, most specific",
            "geo-strict",
            glasgow(),
        )
        .health(&[
            down("geo-strict.t./world"),
            down("geo-strict.t./gb"),
            down("geo-strict.t./scotland"),
        ])
        .expect(&["geo-strict.t./scotland"], &["192.0.2.4"], 20)
        .failed_open(),
    ];
    check(&t, &rows);
}

// ---------------------------------------------------------------------------------------------
// 5. multivalue
// ---------------------------------------------------------------------------------------------

const MULTI: &str = r#"
[[profile]]
name = "mv"
method = "multivalue"
max_answers = 3

[[profile.endpoint]]
name = "e1"
targets = ["192.0.2.1"]

[[profile.endpoint]]
name = "off"
targets = ["192.0.2.99"]
enabled = false

[[profile.endpoint]]
name = "e2"
targets = ["192.0.2.2"]

[[profile.endpoint]]
name = "e3"
targets = ["192.0.2.3", "2001:db8::3"]

[[profile.endpoint]]
name = "e4"
targets = ["192.0.2.4"]

[[profile.endpoint]]
name = "e5"
targets = ["2001:db8::5"]

[[profile]]
name = "mv1"
method = "multivalue"
max_answers = 1

[[profile.endpoint]]
name = "a"
targets = ["192.0.2.1"]

[[profile.endpoint]]
name = "b"
targets = ["192.0.2.2"]

[[profile]]
name = "mv-default"
method = "multivalue"

[[profile.endpoint]]
name = "a"
targets = ["192.0.2.1"]

[[profile.endpoint]]
name = "b"
targets = ["192.0.2.2"]

[[profile.endpoint]]
name = "c"
targets = ["192.0.2.3"]

[[profile.endpoint]]
name = "d"
targets = ["192.0.2.4"]
"#;

#[test]
fn multivalue_answers_up_to_max_served() {
    let t = table(MULTI);
    let k = |n: &'static str| -> &'static str {
        match n {
            "e1" => "mv.t./e1",
            "e2" => "mv.t./e2",
            "e3" => "mv.t./e3",
            "e4" => "mv.t./e4",
            "e5" => "mv.t./e5",
            _ => unreachable!(),
        }
    };
    let rows = [
        Row::new("first three served (disabled skipped)", "mv", london()).expect(
            &[k("e1"), k("e2"), k("e3")],
            &["192.0.2.1", "192.0.2.2", "192.0.2.3"],
            0,
        ),
        Row::new("e2 degraded → e1 e3 e4", "mv", london())
            .health(&[down(k("e2"))])
            .expect(
                &[k("e1"), k("e3"), k("e4")],
                &["192.0.2.1", "192.0.2.3", "192.0.2.4"],
                0,
            ),
        Row::new("only e4 left for A", "mv", london())
            .health(&[down(k("e1")), down(k("e2")), down(k("e3"))])
            .expect(&[k("e4")], &["192.0.2.4"], 0),
        Row::new("AAAA: only IPv6 endpoints", "mv", london())
            .family(Family::V6)
            .expect(&[k("e3"), k("e5")], &["2001:db8::3", "2001:db8::5"], 0),
        Row::new(
            "all degraded → fail open, disabled still off",
            "mv",
            london(),
        )
        .health(&[
            down(k("e1")),
            down(k("e2")),
            down(k("e3")),
            down(k("e4")),
            down(k("e5")),
        ])
        .expect(
            &[k("e1"), k("e2"), k("e3")],
            &["192.0.2.1", "192.0.2.2", "192.0.2.3"],
            0,
        )
        .failed_open(),
        Row::new("max_answers 1", "mv1", london()).expect(&["mv1.t./a"], &["192.0.2.1"], 0),
        Row::new("max_answers defaults to 3", "mv-default", london()).expect(
            &["mv-default.t./a", "mv-default.t./b", "mv-default.t./c"],
            &["192.0.2.1", "192.0.2.2", "192.0.2.3"],
            0,
        ),
    ];
    check(&t, &rows);
}

// ---------------------------------------------------------------------------------------------
// 6. subnet
// ---------------------------------------------------------------------------------------------

const SUBNET: &str = r#"
[[profile]]
name = "sn"
method = "subnet"

[[profile.endpoint]]
name = "wide"
targets = ["192.0.2.1", "2001:db8:f::1"]
subnets = ["10.0.0.0/8"]

[[profile.endpoint]]
name = "narrow"
targets = ["192.0.2.2", "2001:db8:f::2"]
subnets = ["10.1.0.0/16", "2001:db8:1::/48"]

[[profile.endpoint]]
name = "narrowest"
targets = ["192.0.2.3", "2001:db8:f::3"]
subnets = ["10.1.2.0/24"]

[[profile.endpoint]]
name = "v6"
targets = ["192.0.2.4", "2001:db8:f::4"]
subnets = ["2001:db8::/32"]

[[profile.endpoint]]
name = "fallback"
targets = ["192.0.2.9", "2001:db8:f::9"]

[[profile]]
name = "no-fallback"
method = "subnet"

[[profile.endpoint]]
name = "only"
targets = ["192.0.2.1"]
subnets = ["10.0.0.0/8"]
"#;

#[test]
fn subnet_longest_prefix_wins() {
    let t = table(SUBNET);
    let c = |a: &str| addr(london(), a);
    let (wide, narrow, narrowest, v6, fb) = (
        "sn.t./wide",
        "sn.t./narrow",
        "sn.t./narrowest",
        "sn.t./v6",
        "sn.t./fallback",
    );
    let rows = [
        Row::new("/24 beats /16 and /8", "sn", c("10.1.2.3")).expect(
            &[narrowest],
            &["192.0.2.3"],
            24,
        ),
        Row::new("/16 beats /8", "sn", c("10.1.3.3")).expect(&[narrow], &["192.0.2.2"], 24),
        Row::new("/8", "sn", c("10.9.9.9")).expect(&[wide], &["192.0.2.1"], 24),
        Row::new("no match → fallback", "sn", c("192.0.2.200")).expect(&[fb], &["192.0.2.9"], 24),
        Row::new("IPv6 /48 beats /32", "sn", c("2001:db8:1::5"))
            .family(Family::V6)
            .expect(&[narrow], &["2001:db8:f::2"], 24),
        Row::new("IPv6 /32", "sn", c("2001:db8:2::5"))
            .family(Family::V6)
            .expect(&[v6], &["2001:db8:f::4"], 24),
        Row::new("IPv6 client, A query", "sn", c("2001:db8:2::5")).expect(
            &[v6],
            &["192.0.2.4"],
            24,
        ),
        Row::new("IPv6 no match → fallback", "sn", c("2001:db9::1"))
            .family(Family::V6)
            .expect(&[fb], &["2001:db8:f::9"], 24),
        Row::new(
            "IPv4-mapped is not in an IPv4 range",
            "sn",
            c("::ffff:10.1.2.3"),
        )
        .expect(&[fb], &["192.0.2.9"], 24),
        Row::new("narrowest degraded → next longest", "sn", c("10.1.2.3"))
            .health(&[down(narrowest)])
            .expect(&[narrow], &["192.0.2.2"], 24),
        Row::new("all matches degraded → fallback", "sn", c("10.1.2.3"))
            .health(&[down(narrowest), down(narrow), down(wide)])
            .expect(&[fb], &["192.0.2.9"], 24),
        Row::new("no address → fallback", "sn", {
            let mut x = london();
            x.loc.addr = None;
            x
        })
        .expect(&[fb], &["192.0.2.9"], 24),
        Row::new("ECS /32 → scope 32", "sn", ecs(c("10.1.2.3"), Some(32))).expect(
            &[narrowest],
            &["192.0.2.3"],
            32,
        ),
        Row::new("no ECS → scope 0", "sn", ecs(c("10.1.2.3"), None)).expect(
            &[narrowest],
            &["192.0.2.3"],
            0,
        ),
        Row::new(
            "no match, no fallback → empty",
            "no-fallback",
            c("192.0.2.200"),
        )
        .expect(&[], &[], 24),
        Row::new("match without fallback", "no-fallback", c("10.0.0.1")).expect(
            &["no-fallback.t./only"],
            &["192.0.2.1"],
            24,
        ),
    ];
    check(&t, &rows);
}

// ---------------------------------------------------------------------------------------------
// 7. address families
// ---------------------------------------------------------------------------------------------

const FAMILIES: &str = r#"
[[profile]]
name = "fam"
method = "performance"

[[profile.endpoint]]
name = "westeurope"
region = "azure:westeurope"
targets = ["2001:db8::10"]

[[profile.endpoint]]
name = "eastus"
region = "azure:eastus"
targets = ["192.0.2.20", "2001:db8::20"]

[[profile.endpoint]]
name = "southeastasia"
region = "azure:southeastasia"
targets = ["192.0.2.30"]

[[profile]]
name = "lb"
method = "priority"

[[profile.endpoint]]
name = "lb1"
targets = ["lb1.example.net"]

[[profile.endpoint]]
name = "lb2"
targets = ["lb2.example.net."]

[[profile]]
name = "mix"
method = "priority"

[[profile.endpoint]]
name = "v4"
targets = ["192.0.2.1"]

[[profile.endpoint]]
name = "host"
targets = ["lb.example.net"]
"#;

#[test]
fn families_choose_among_endpoints_having_them() {
    let t = table(FAMILIES);
    let (we, eus, sea) = ("fam.t./westeurope", "fam.t./eastus", "fam.t./southeastasia");
    let rows = [
        Row::new("A: IPv6-only westeurope invisible", "fam", london()).expect(
            &[eus],
            &["192.0.2.20"],
            20,
        ),
        Row::new("AAAA: westeurope", "fam", london())
            .family(Family::V6)
            .expect(&[we], &["2001:db8::10"], 20),
        Row::new("A: Tokyo → SEA", "fam", tokyo()).expect(&[sea], &["192.0.2.30"], 20),
        Row::new("AAAA: Tokyo → westeurope (SEA has no v6)", "fam", tokyo())
            .family(Family::V6)
            .expect(&[we], &["2001:db8::10"], 20),
        Row::new("CNAME query on address endpoints: nothing", "fam", london())
            .family(Family::Any)
            .expect(&[], &[], 0),
        Row::new("AAAA: westeurope degraded → eastus", "fam", london())
            .family(Family::V6)
            .health(&[down(we)])
            .expect(&[eus], &["2001:db8::20"], 20),
        Row::new(
            "A: all v4 endpoints degraded → fail open among them",
            "fam",
            london(),
        )
        .health(&[down(eus), down(sea)])
        .expect(&[eus], &["192.0.2.20"], 20)
        .failed_open(),
        Row::new("hostname answers A with CNAME", "lb", london()).expect(
            &["lb.t./lb1"],
            &["lb1.example.net."],
            0,
        ),
        Row::new("hostname answers AAAA with CNAME", "lb", london())
            .family(Family::V6)
            .expect(&["lb.t./lb1"], &["lb1.example.net."], 0),
        Row::new("hostname answers CNAME", "lb", london())
            .family(Family::Any)
            .expect(&["lb.t./lb1"], &["lb1.example.net."], 0),
        Row::new("hostname failover", "lb", london())
            .health(&[down("lb.t./lb1")])
            .expect(&["lb.t./lb2"], &["lb2.example.net."], 0),
        Row::new("mix A → v4 address", "mix", london()).expect(&["mix.t./v4"], &["192.0.2.1"], 0),
        Row::new("mix AAAA → hostname", "mix", london())
            .family(Family::V6)
            .expect(&["mix.t./host"], &["lb.example.net."], 0),
        Row::new("mix CNAME → hostname", "mix", london())
            .family(Family::Any)
            .expect(&["mix.t./host"], &["lb.example.net."], 0),
    ];
    check(&t, &rows);
}

// ---------------------------------------------------------------------------------------------
// 8. nested profiles
// ---------------------------------------------------------------------------------------------

const NESTED: &str = r#"
[[profile]]
name = "pool"
method = "priority"

[[profile.endpoint]]
name = "w"
targets = ["192.0.2.1", "2001:db8::1"]

[[profile.endpoint]]
name = "n"
targets = ["192.0.2.2"]

[[profile.endpoint]]
name = "s"
targets = ["2001:db8::3"]

[[profile]]
name = "top"
method = "priority"

[[profile.endpoint]]
name = "europe"
profile = "pool"
min_child_endpoints = 2

[[profile.endpoint]]
name = "us"
targets = ["192.0.2.20", "2001:db8::20"]

[[profile]]
name = "top4"
method = "priority"

[[profile.endpoint]]
name = "europe"
profile = "pool"
min_child_endpoints_ipv4 = 2

[[profile.endpoint]]
name = "us"
targets = ["192.0.2.20", "2001:db8::20"]

[[profile]]
name = "top6"
method = "priority"

[[profile.endpoint]]
name = "europe"
profile = "pool"
min_child_endpoints_ipv6 = 2

[[profile.endpoint]]
name = "us"
targets = ["192.0.2.20", "2001:db8::20"]

[[profile]]
name = "six"
method = "priority"

[[profile.endpoint]]
name = "only"
targets = ["2001:db8::6"]

[[profile]]
name = "top-six"
method = "priority"

[[profile.endpoint]]
name = "six"
profile = "six"

[[profile.endpoint]]
name = "v4"
targets = ["192.0.2.4"]

[[profile]]
name = "top-off"
method = "priority"

[[profile.endpoint]]
name = "europe"
profile = "pool"
enabled = false

[[profile.endpoint]]
name = "us"
targets = ["192.0.2.20"]

[[profile]]
name = "grand"
method = "priority"

[[profile.endpoint]]
name = "mid"
profile = "top"
"#;

#[test]
fn nested_profiles_recurse_and_count_children() {
    let t = table(NESTED);
    let (w, n, s) = ("pool.t./w", "pool.t./n", "pool.t./s");
    let rows = [
        Row::new("healthy child: records from the child", "top", london()).expect(
            &["top.t./europe", w],
            &["192.0.2.1"],
            0,
        ),
        Row::new("AAAA through the child", "top", london())
            .family(Family::V6)
            .expect(&["top.t./europe", w], &["2001:db8::1"], 0),
        Row::new(
            "w degraded: 2 of 3 served ≥ 2 → child picks n",
            "top",
            london(),
        )
        .health(&[down(w)])
        .expect(&["top.t./europe", n], &["192.0.2.2"], 0),
        Row::new("w degraded, AAAA → child picks s", "top", london())
            .health(&[down(w)])
            .family(Family::V6)
            .expect(&["top.t./europe", s], &["2001:db8::3"], 0),
        Row::new("w, n degraded: 1 < 2 → parent moves to us", "top", london())
            .health(&[down(w), down(n)])
            .expect(&["top.t./us"], &["192.0.2.20"], 0),
        Row::new(
            "us degraded too, AAAA: europe fails open, child serves s",
            "top",
            london(),
        )
        .health(&[down(w), down(n), down("top.t./us")])
        .family(Family::V6)
        .expect(&["top.t./europe", s], &["2001:db8::3"], 0)
        .failed_open(),
        Row::new(
            "us degraded too, A: no v4 child served → child fails open",
            "top",
            london(),
        )
        .health(&[down(w), down(n), down("top.t./us")])
        .expect(&["top.t./europe", w], &["192.0.2.1"], 0)
        .failed_open(),
        Row::new(
            "everything degraded: fail open at both levels",
            "top",
            london(),
        )
        .health(&[down(w), down(n), down(s), down("top.t./us")])
        .expect(&["top.t./europe", w], &["192.0.2.1"], 0)
        .failed_open(),
        Row::new("ipv4 minimum met", "top4", london())
            .health(&[down(s)])
            .expect(&["top4.t./europe", w], &["192.0.2.1"], 0),
        Row::new("ipv4 minimum missed (n down) → us", "top4", london())
            .health(&[down(n)])
            .expect(&["top4.t./us"], &["192.0.2.20"], 0),
        Row::new("ipv4 minimum missed → us for AAAA too", "top4", london())
            .health(&[down(n)])
            .family(Family::V6)
            .expect(&["top4.t./us"], &["2001:db8::20"], 0),
        Row::new("ipv6 minimum met", "top6", london())
            .health(&[down(n)])
            .expect(&["top6.t./europe", w], &["192.0.2.1"], 0),
        Row::new("ipv6 minimum missed (s down) → us", "top6", london())
            .health(&[down(s)])
            .expect(&["top6.t./us"], &["192.0.2.20"], 0),
        Row::new("v6-only child invisible to A", "top-six", london()).expect(
            &["top-six.t./v4"],
            &["192.0.2.4"],
            0,
        ),
        Row::new("v6-only child answers AAAA", "top-six", london())
            .family(Family::V6)
            .expect(&["top-six.t./six", "six.t./only"], &["2001:db8::6"], 0),
        Row::new("disabled nested endpoint never served", "top-off", london()).expect(
            &["top-off.t./us"],
            &["192.0.2.20"],
            0,
        ),
        Row::new(
            "disabled nested, us degraded → us fails open",
            "top-off",
            london(),
        )
        .health(&[down("top-off.t./us")])
        .expect(&["top-off.t./us"], &["192.0.2.20"], 0)
        .failed_open(),
        Row::new("two levels deep", "grand", london()).expect(
            &["grand.t./mid", "top.t./europe", w],
            &["192.0.2.1"],
            0,
        ),
        Row::new("two levels deep, inner moves", "grand", london())
            .health(&[down(w), down(n)])
            .expect(&["grand.t./mid", "top.t./us"], &["192.0.2.20"], 0),
    ];
    check(&t, &rows);
}

// ---------------------------------------------------------------------------------------------
// 9. fail-open
// ---------------------------------------------------------------------------------------------

const FAILOPEN: &str = r#"
[[profile]]
name = "mv"
method = "multivalue"
max_answers = 5

[[profile.endpoint]]
name = "a"
targets = ["192.0.2.1"]

[[profile.endpoint]]
name = "off"
targets = ["192.0.2.99"]
enabled = false

[[profile.endpoint]]
name = "b"
targets = ["192.0.2.2"]

[[profile]]
name = "perf"
method = "performance"

[[profile.endpoint]]
name = "westeurope"
region = "azure:westeurope"
targets = ["192.0.2.10"]
enabled = false

[[profile.endpoint]]
name = "eastus"
region = "azure:eastus"
targets = ["192.0.2.20"]

[[profile.endpoint]]
name = "southeastasia"
region = "azure:southeastasia"
targets = ["192.0.2.30"]

[[profile]]
name = "dead"
method = "priority"

[[profile.endpoint]]
name = "a"
targets = ["192.0.2.1"]
enabled = false

[[profile.endpoint]]
name = "b"
targets = ["192.0.2.2"]
"#;

#[test]
fn fail_open_serves_degraded_but_never_disabled() {
    let t = table(FAILOPEN);
    let rows = [
        Row::new("all degraded → all enabled served", "mv", london())
            .health(&[down("mv.t./a"), down("mv.t./b")])
            .expect(&["mv.t./a", "mv.t./b"], &["192.0.2.1", "192.0.2.2"], 0)
            .failed_open(),
        Row::new(
            "degraded state on a disabled endpoint: still off",
            "mv",
            london(),
        )
        .health(&[down("mv.t./a"), down("mv.t./b"), down("mv.t./off")])
        .expect(&["mv.t./a", "mv.t./b"], &["192.0.2.1", "192.0.2.2"], 0)
        .failed_open(),
        Row::new("one served: no fail-open", "mv", london())
            .health(&[down("mv.t./a")])
            .expect(&["mv.t./b"], &["192.0.2.2"], 0),
        Row::new(
            "disabled by state + degraded → degraded one",
            "mv",
            london(),
        )
        .health(&[state("mv.t./a", MonitorState::Disabled), down("mv.t./b")])
        .expect(&["mv.t./b"], &["192.0.2.2"], 0)
        .failed_open(),
        Row::new("all disabled → empty, no fail-open", "mv", london())
            .health(&[
                state("mv.t./a", MonitorState::Disabled),
                state("mv.t./b", MonitorState::Disabled),
            ])
            .expect(&[], &[], 0),
        Row::new(
            "performance fails open among degraded only",
            "perf",
            london(),
        )
        .health(&[down("perf.t./eastus"), down("perf.t./southeastasia")])
        .expect(&["perf.t./eastus"], &["192.0.2.20"], 20)
        .failed_open(),
        Row::new(
            "performance: disabled nearest never served",
            "perf",
            london(),
        )
        .expect(&["perf.t./eastus"], &["192.0.2.20"], 20),
        Row::new("priority fail-open skips disabled a", "dead", london())
            .health(&[down("dead.t./b")])
            .expect(&["dead.t./b"], &["192.0.2.2"], 0)
            .failed_open(),
    ];
    check(&t, &rows);
}

// ---------------------------------------------------------------------------------------------
// 10. ECS scope
// ---------------------------------------------------------------------------------------------

const SCOPES: &str = r#"
[[profile]]
name = "perf"
method = "performance"

[[profile.endpoint]]
name = "westeurope"
region = "azure:westeurope"
targets = ["192.0.2.10", "2001:db8::10"]

[[profile.endpoint]]
name = "eastus"
region = "azure:eastus"
targets = ["192.0.2.20", "2001:db8::20"]

[[profile]]
name = "geo"
method = "geographic"

[[profile.endpoint]]
name = "world"
targets = ["192.0.2.1"]
geo = ["WORLD"]

[[profile]]
name = "prio"
method = "priority"

[[profile.endpoint]]
name = "a"
targets = ["192.0.2.1"]

[[profile]]
name = "mv"
method = "multivalue"

[[profile.endpoint]]
name = "a"
targets = ["192.0.2.1"]

[[profile.endpoint]]
name = "b"
targets = ["192.0.2.2"]

[[profile]]
name = "w"
method = "weighted"

[[profile.endpoint]]
name = "a"
targets = ["192.0.2.1"]

[[profile.endpoint]]
name = "b"
targets = ["192.0.2.2"]

[[profile]]
name = "sticky"
method = "weighted"
sticky = true

[[profile.endpoint]]
name = "a"
targets = ["192.0.2.1", "2001:db8::1"]

[[profile.endpoint]]
name = "b"
targets = ["192.0.2.2", "2001:db8::2"]

[[profile]]
name = "sn"
method = "subnet"

[[profile.endpoint]]
name = "a"
targets = ["192.0.2.1"]
subnets = ["10.0.0.0/8"]

[[profile.endpoint]]
name = "fb"
targets = ["192.0.2.2"]

[[profile]]
name = "prio-perf"
method = "priority"

[[profile.endpoint]]
name = "child"
profile = "perf"

[[profile]]
name = "perf-sn"
method = "performance"

[[profile.endpoint]]
name = "child"
region = "azure:westeurope"
profile = "sn"

[[profile]]
name = "prio-prio"
method = "priority"

[[profile.endpoint]]
name = "child"
profile = "prio"

[[profile]]
name = "prio-sticky"
method = "priority"

[[profile.endpoint]]
name = "child"
profile = "sticky"

[[profile]]
name = "perf-sticky"
method = "performance"

[[profile.endpoint]]
name = "child"
region = "azure:westeurope"
profile = "sticky"
"#;

fn scope_of(t: &RoutingTable, profile: &str, c: &Client) -> u8 {
    let h = HealthSnapshot::default();
    t.select(idx(t, profile), Family::V4, c, &h, None).scope
}

#[test]
fn ecs_scope_follows_what_the_decision_depends_on() {
    let t = table(SCOPES);
    // london(): GeoIP network /20, ECS source /24.
    let rows: &[(&str, &str, Client, u8)] = &[
        ("no ECS → 0", "perf", ecs(london(), None), 0),
        ("source 0 → 0", "perf", ecs(london(), Some(0)), 0),
        ("performance: min(geo /20, src /24)", "perf", london(), 20),
        (
            "performance: min(geo /20, src /16)",
            "perf",
            ecs(london(), Some(16)),
            16,
        ),
        (
            "performance: min(geo /28, src /24)",
            "perf",
            prefix(london(), 28),
            24,
        ),
        ("geographic: min(geo /20, src /24)", "geo", london(), 20),
        (
            "geographic: min(geo /20, src /18)",
            "geo",
            ecs(london(), Some(18)),
            18,
        ),
        ("geographic, source 0", "geo", ecs(london(), Some(0)), 0),
        ("priority → 0", "prio", london(), 0),
        ("multivalue → 0", "mv", london(), 0),
        ("weighted random → 0", "w", london(), 0),
        (
            "weighted sticky v4 → /24",
            "sticky",
            ecs(london(), Some(32)),
            24,
        ),
        (
            "weighted sticky capped by src",
            "sticky",
            ecs(london(), Some(22)),
            22,
        ),
        ("subnet → source", "sn", ecs(london(), Some(24)), 24),
        ("subnet → source /32", "sn", ecs(london(), Some(32)), 32),
        ("subnet, no ECS", "sn", ecs(london(), None), 0),
        ("subnet, source 0", "sn", ecs(london(), Some(0)), 0),
        (
            "nested priority→performance → geo",
            "prio-perf",
            london(),
            20,
        ),
        (
            "nested performance→subnet → source",
            "perf-sn",
            ecs(london(), Some(28)),
            28,
        ),
        ("nested priority→priority → 0", "prio-prio", london(), 0),
        (
            "nested priority→sticky → /24",
            "prio-sticky",
            ecs(london(), Some(32)),
            24,
        ),
        ("nested, no ECS", "perf-sn", ecs(london(), None), 0),
        // Geo network /28 is more specific than the sticky /24.
        (
            "nested performance(/28)→sticky",
            "perf-sticky",
            ecs(prefix(london(), 28), Some(32)),
            28,
        ),
        (
            "nested performance(/20)→sticky, src 16",
            "perf-sticky",
            ecs(london(), Some(16)),
            16,
        ),
    ];
    for &(what, profile, c, want) in rows {
        assert_eq!(scope_of(&t, profile, &c), want, "{what}");
    }
}

/// The nested scope must be the most specific (longest) of the levels' scopes. When the outer
/// level is `performance` with a GeoIP network shorter than the sticky /24 of an inner
/// `weighted sticky` level, the inner decision still differs between /24s of that network.
#[test]
fn ecs_scope_nested_geo_network_shorter_than_sticky_prefix() {
    let t = table(SCOPES);
    // GeoIP network /20, ECS source /24: the sticky child depends on the whole /24.
    assert_eq!(scope_of(&t, "perf-sticky", &london()), 24);
    assert_eq!(scope_of(&t, "perf-sticky", &ecs(london(), Some(32))), 24);
    // Demonstrate why /20 is wrong: within the client's /20 the child answers differ by /24,
    // so a resolver caching the /20-scoped answer would serve other /24s the wrong endpoint.
    let p = idx(&t, "perf-sticky");
    let h = HealthSnapshot::default();
    let base = u32::from("81.2.64.0".parse::<Ipv4Addr>().unwrap());
    let answers: HashSet<Vec<&str>> = (0..16u32)
        .map(|i| {
            t.select(p, Family::V4, &v4_client(base + (i << 8)), &h, None)
                .chosen
                .to_vec()
        })
        .collect();
    assert!(answers.len() > 1, "the /24s of the /20 disagree");
}

// ---------------------------------------------------------------------------------------------
// 11. explain
// ---------------------------------------------------------------------------------------------

#[test]
fn explain_records_every_level_without_changing_the_decision() {
    let t = table(PERF);
    let p = idx(&t, "mqtt");
    let h = health(&[
        down(WE),
        rtt(EUS, 80.0),
        state(SEA, MonitorState::Unmonitored),
    ]);
    let plain = t.select(p, Family::V4, &london(), &h, None);
    let mut x = Explain::default();
    let explained = t.select(p, Family::V4, &london(), &h, Some(&mut x));
    assert_eq!(plain.chosen, explained.chosen);
    assert_eq!(plain.records, explained.records);
    assert_eq!(plain.scope, explained.scope);
    assert_eq!(plain.ttl, explained.ttl);
    assert_eq!(plain.chosen.as_slice(), [EUS]);

    assert_eq!(x.levels.len(), 1);
    let l = &x.levels[0];
    assert_eq!(l.profile, "mqtt.t.");
    assert_eq!(l.method, Method::Performance);
    assert!(!l.failed_open);
    let names: Vec<&str> = l.endpoints.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["westeurope", "eastus", "southeastasia"]);
    let we = &l.endpoints[0];
    assert_eq!(we.state, MonitorState::Degraded);
    assert!(!we.candidate);
    assert_eq!(we.estimate, None, "non-candidates are not estimated");
    assert_eq!(we.region.as_deref(), Some("azure:westeurope"));
    let eus = &l.endpoints[1];
    assert_eq!(eus.state, MonitorState::Online);
    assert!(eus.candidate);
    assert_eq!(eus.rtt_ms, Some(80.0));
    let est = eus.estimate.expect("estimate for a candidate");
    let total = est.total_ms.unwrap();
    assert!(est.distance_km.unwrap() > 5000.0);
    assert_eq!(l.decision, format!("eastus: lowest estimate {total:.1} ms"));
    let sea = &l.endpoints[2];
    assert_eq!(sea.state, MonitorState::Unmonitored);
    assert_eq!(sea.rtt_ms, None);
    assert!(sea.candidate && sea.estimate.unwrap().total_ms.unwrap() > total);

    // Unknown location.
    let mut x = Explain::default();
    t.select(p, Family::V4, &nowhere("192.0.2.7"), &h, Some(&mut x));
    assert_eq!(
        x.levels[0].decision,
        "eastus: client location unknown; first served in profile order"
    );

    // Nested: one level per profile visited, outermost first; fail-open is per level.
    let t = table(NESTED);
    let p = idx(&t, "top");
    for (changes, want_levels) in [
        (vec![], 2),
        (vec![down("pool.t./w"), down("pool.t./n")], 1),
        (
            vec![
                down("pool.t./w"),
                down("pool.t./n"),
                down("pool.t./s"),
                down("top.t./us"),
            ],
            2,
        ),
    ] {
        let h = health(&changes);
        let plain = t.select(p, Family::V4, &london(), &h, None);
        let mut x = Explain::default();
        let explained = t.select(p, Family::V4, &london(), &h, Some(&mut x));
        assert_eq!(plain.chosen, explained.chosen);
        assert_eq!(plain.records, explained.records);
        assert_eq!(plain.failed_open, explained.failed_open);
        assert_eq!(x.levels.len(), want_levels, "{changes:?}");
        assert_eq!(x.levels[0].profile, "top.t.");
        assert_eq!(x.levels[0].method, Method::Priority);
        if want_levels == 2 {
            assert_eq!(x.levels[1].profile, "pool.t.");
        }
    }
    let h = health(&[
        down("pool.t./w"),
        down("pool.t./n"),
        down("pool.t./s"),
        down("top.t./us"),
    ]);
    let mut x = Explain::default();
    t.select(p, Family::V4, &london(), &h, Some(&mut x));
    assert!(x.levels[0].failed_open && x.levels[1].failed_open);
    assert_eq!(x.levels[0].endpoints[0].state, MonitorState::Degraded);
    assert_eq!(x.levels[0].endpoints[0].detail, "priority 1");
    // The decision says it failed open.
    let fo =
        "fail-open (every endpoint able to answer is Degraded: serving them anyway, short TTL)";
    assert_eq!(
        x.levels[0].decision,
        format!("{fo}: europe: lowest priority 1 among served")
    );
    assert_eq!(
        x.levels[1].decision,
        format!("{fo}: w: lowest priority 1 among served")
    );

    // Method-specific details and decisions.
    let t = table(SUBNET);
    let mut x = Explain::default();
    t.select(
        idx(&t, "sn"),
        Family::V4,
        &addr(london(), "10.1.2.3"),
        &HealthSnapshot::default(),
        Some(&mut x),
    );
    let l = &x.levels[0];
    assert_eq!(l.decision, "narrowest: client in its /24 range");
    assert_eq!(l.endpoints[1].detail, "10.1.0.0/16,2001:db8:1::/48");
    assert_eq!(l.endpoints[4].detail, "fallback");
    let mut x = Explain::default();
    t.select(
        idx(&t, "sn"),
        Family::V4,
        &addr(london(), "172.16.0.1"),
        &HealthSnapshot::default(),
        Some(&mut x),
    );
    assert_eq!(
        x.levels[0].decision,
        "fallback: no range matched; fallback endpoint"
    );

    let t = table(GEO);
    let mut x = Explain::default();
    t.select(
        idx(&t, "geo"),
        Family::V4,
        &glasgow(),
        &HealthSnapshot::default(),
        Some(&mut x),
    );
    assert_eq!(x.levels[0].decision, "scotland: most specific match GB-SCT");
    assert_eq!(x.levels[0].endpoints[4].detail, "NA,SA,JP");
    let mut x = Explain::default();
    t.select(
        idx(&t, "geo-eu"),
        Family::V4,
        &tokyo(),
        &HealthSnapshot::default(),
        Some(&mut x),
    );
    assert_eq!(
        x.levels[0].decision,
        "no served endpoint maps the client's location: empty answer"
    );

    let t = table(WEIGHTED);
    let mut x = Explain::default();
    let sel = t.select(
        idx(&t, "s"),
        Family::V4,
        &london(),
        &HealthSnapshot::default(),
        Some(&mut x),
    );
    let name = sel.chosen[0].strip_prefix("s.t./").unwrap();
    let w = if name == "stable" { 90 } else { 10 };
    assert_eq!(
        x.levels[0].decision,
        format!("{name}: weight {w} of 100, hashed by client subnet")
    );
    assert_eq!(x.levels[0].endpoints[0].detail, "weight 90");

    let t = table(MULTI);
    let mut x = Explain::default();
    t.select(
        idx(&t, "mv"),
        Family::V4,
        &london(),
        &HealthSnapshot::default(),
        Some(&mut x),
    );
    assert_eq!(x.levels[0].decision, "3 served endpoint(s), at most 3");
    let off = &x.levels[0].endpoints[1];
    assert_eq!(
        (off.name.as_str(), off.state, off.candidate),
        ("off", MonitorState::Disabled, false)
    );
    let v6only = &x.levels[0].endpoints[5];
    assert!(
        !v6only.candidate,
        "IPv6-only endpoint is no candidate for A"
    );
}

// ---------------------------------------------------------------------------------------------
// 12. profile loader errors
// ---------------------------------------------------------------------------------------------

/// The first line of the loader's error for `toml` (in zone `zone_text`).
fn load_error(zone_text: &str, toml: &str) -> String {
    match load_with_zone(zone_text, toml) {
        Ok(_) => panic!("profiles loaded but should not:\n{toml}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn profile_errors_name_file_line_and_field() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "unknown field",
            r#"[[profile]]
name = "p"
method = "priority"

[[profile.endpoint]]
name = "a"
targets = ["192.0.2.1"]
colour = "red"
"#,
            // (the list of accepted fields goes on; it grows with the format, so only its
            // head is pinned here)
            "zones/t.toml:8: profile[p].endpoint[a].colour: unknown field `colour`, expected one of \
             `name`, `targets`, `profile`, `enabled`, `region`, `lat`, `lon`, `weight`, \
             `priority`, `geo`, `subnets`, `min_child_endpoints`,",
        ),
        (
            "duplicate endpoint name",
            r#"[[profile]]
name = "p"
method = "priority"

[[profile.endpoint]]
name = "a"
targets = ["192.0.2.1"]

[[profile.endpoint]]
name = "a"
targets = ["192.0.2.2"]
"#,
            "zones/t.toml:10: profile[p].endpoint[a].name: duplicate endpoint name in this profile",
        ),
        (
            "unknown region",
            r#"[[profile]]
name = "p"
method = "performance"

[[profile.endpoint]]
name = "a"
region = "azure:atlantis"
targets = ["192.0.2.1"]
"#,
            "zones/t.toml:7: profile[p].endpoint[a].region: unknown region \"azure:atlantis\" \
             (see geo/regions.toml; names are provider:region)",
        ),
        (
            "priority with weighted",
            r#"[[profile]]
name = "p"
method = "weighted"

[[profile.endpoint]]
name = "a"
targets = ["192.0.2.1"]
priority = 1
"#,
            "zones/t.toml:8: profile[p].endpoint[a].priority: only used by method priority",
        ),
        (
            "duplicate priority",
            r#"[[profile]]
name = "p"
method = "priority"

[[profile.endpoint]]
name = "a"
targets = ["192.0.2.1"]
priority = 5

[[profile.endpoint]]
name = "b"
targets = ["192.0.2.2"]
priority = 5
"#,
            "zones/t.toml:13: profile[p].endpoint[b].priority: priority 5 is also endpoint \"a\"'s",
        ),
        (
            "duplicate geo code",
            r#"[[profile]]
name = "p"
method = "geographic"

[[profile.endpoint]]
name = "a"
targets = ["192.0.2.1"]
geo = ["DE", "FR"]

[[profile.endpoint]]
name = "b"
targets = ["192.0.2.2"]
geo = ["de"]
"#,
            "zones/t.toml:13: profile[p].endpoint[b].geo: de is already mapped to endpoint \"a\"",
        ),
        (
            "bad geo code",
            r#"[[profile]]
name = "p"
method = "geographic"

[[profile.endpoint]]
name = "a"
targets = ["192.0.2.1"]
geo = ["Europe"]
"#,
            "zones/t.toml:8: profile[p].endpoint[a].geo: \"Europe\" is not a geo code (WORLD, a \
             continent AF AN AS EU NA OC SA, a country like DE, or a subdivision like US-CA)",
        ),
        (
            "subnet with host bits",
            r#"[[profile]]
name = "p"
method = "subnet"

[[profile.endpoint]]
name = "a"
targets = ["192.0.2.1"]
subnets = ["10.1.2.3/16"]
"#,
            "zones/t.toml:8: profile[p].endpoint[a].subnets: 10.1.2.3/16 has host bits set (did \
             you mean 10.1.0.0/16?)",
        ),
        (
            "two fallbacks",
            r#"[[profile]]
name = "p"
method = "subnet"

[[profile.endpoint]]
name = "a"
targets = ["192.0.2.1"]

[[profile.endpoint]]
name = "b"
targets = ["192.0.2.2"]
"#,
            "zones/t.toml:10: profile[p].endpoint[b].subnets: more than one fallback endpoint (an \
             endpoint without subnets)",
        ),
        (
            "multivalue with hostname",
            r#"[[profile]]
name = "p"
method = "multivalue"

[[profile.endpoint]]
name = "a"
targets = ["lb.example.net"]
"#,
            "zones/t.toml:7: profile[p].endpoint[a].targets: multivalue endpoints must be IP \
             addresses",
        ),
        (
            "hostname mixed with IPs",
            r#"[[profile]]
name = "p"
method = "priority"

[[profile.endpoint]]
name = "a"
targets = ["lb.example.net", "192.0.2.1"]
"#,
            "zones/t.toml:7: profile[p].endpoint[a].targets: a hostname target cannot be mixed \
             with IP addresses",
        ),
        (
            "geo_strict on another method",
            r#"[[profile]]
name = "p"
method = "priority"
geo_strict = true

[[profile.endpoint]]
name = "a"
targets = ["192.0.2.1"]
"#,
            "zones/t.toml:4: profile[p].geo_strict: only used by method geographic",
        ),
        (
            "nested cycle",
            r#"[[profile]]
name = "a"
method = "priority"

[[profile.endpoint]]
name = "to-b"
profile = "b"

[[profile]]
name = "b"
method = "priority"

[[profile.endpoint]]
name = "to-a"
profile = "a"
"#,
            "zones/t.toml:7: profile[a].endpoint[to-b].profile: nesting \"b\" here makes a \
             cycle: a → b → a\nzones/t.toml:15: profile[b].endpoint[to-a].profile: nesting \
             \"a\" here makes a cycle: b → a → b",
        ),
        (
            "nested self-reference",
            r#"[[profile]]
name = "a"
method = "priority"

[[profile.endpoint]]
name = "me"
profile = "A"
"#,
            "zones/t.toml:7: profile[a].endpoint[me].profile: nesting \"a\" here makes a \
             cycle: a → a",
        ),
        (
            "nested unknown profile",
            r#"[[profile]]
name = "a"
method = "priority"

[[profile.endpoint]]
name = "x"
profile = "nope"
"#,
            "zones/t.toml:7: profile[a].endpoint[x].profile: no profile named \"nope\" in this \
             file",
        ),
        (
            "performance without location",
            r#"[[profile]]
name = "p"
method = "performance"

[[profile.endpoint]]
name = "a"
targets = ["192.0.2.1"]
"#,
            "zones/t.toml:6: profile[p].endpoint[a].region: performance routing needs a \
             location: region = \"provider:region\" or lat/lon",
        ),
        (
            "max_answers 11",
            r#"[[profile]]
name = "p"
method = "multivalue"
max_answers = 11

[[profile.endpoint]]
name = "a"
targets = ["192.0.2.1"]
"#,
            "zones/t.toml:4: profile[p].max_answers: 11 is outside 1..=10",
        ),
        (
            "max_answers on another method",
            r#"[[profile]]
name = "p"
method = "priority"
max_answers = 2

[[profile.endpoint]]
name = "a"
targets = ["192.0.2.1"]
"#,
            "zones/t.toml:4: profile[p].max_answers: only used by method multivalue",
        ),
        (
            "sticky on another method",
            r#"[[profile]]
name = "p"
method = "priority"
sticky = true

[[profile.endpoint]]
name = "a"
targets = ["192.0.2.1"]
"#,
            "zones/t.toml:4: profile[p].sticky: only used by method weighted",
        ),
        (
            "weight out of range",
            r#"[[profile]]
name = "p"
method = "weighted"

[[profile.endpoint]]
name = "a"
targets = ["192.0.2.1"]
weight = 0
"#,
            "zones/t.toml:8: profile[p].endpoint[a].weight: 0 is outside 1..=1000",
        ),
        (
            "geographic without geo",
            r#"[[profile]]
name = "p"
method = "geographic"

[[profile.endpoint]]
name = "a"
targets = ["192.0.2.1"]
"#,
            "zones/t.toml:6: profile[p].endpoint[a].geo: geographic endpoints need geo codes",
        ),
        (
            "targets and profile",
            r#"[[profile]]
name = "a"
method = "priority"

[[profile.endpoint]]
name = "x"
targets = ["192.0.2.1"]
profile = "a"
"#,
            "zones/t.toml:7: profile[a].endpoint[x].targets: give targets or profile, not both",
        ),
        (
            "min_child_endpoints on an address endpoint",
            r#"[[profile]]
name = "p"
method = "priority"

[[profile.endpoint]]
name = "a"
targets = ["192.0.2.1"]
min_child_endpoints_ipv6 = 1
"#,
            "zones/t.toml:8: profile[p].endpoint[a].min_child_endpoints_ipv6: only used by \
             nested-profile endpoints",
        ),
        (
            "lat without lon",
            r#"[[profile]]
name = "p"
method = "priority"

[[profile.endpoint]]
name = "a"
targets = ["192.0.2.1"]
lat = 50.0
"#,
            "zones/t.toml:8: profile[p].endpoint[a].lat: lat and lon go together",
        ),
        (
            "duplicate subnet",
            r#"[[profile]]
name = "p"
method = "subnet"

[[profile.endpoint]]
name = "a"
targets = ["192.0.2.1"]
subnets = ["10.0.0.0/8"]

[[profile.endpoint]]
name = "b"
targets = ["192.0.2.2"]
subnets = ["10.0.0.0/8"]
"#,
            "zones/t.toml:13: profile[p].endpoint[b].subnets: 10.0.0.0/8 is already mapped to \
             endpoint \"a\"",
        ),
        (
            "duplicate profile name",
            r#"[[profile]]
name = "p"
method = "priority"

[[profile.endpoint]]
name = "a"
targets = ["192.0.2.1"]

[[profile]]
name = "P"
method = "priority"

[[profile.endpoint]]
name = "a"
targets = ["192.0.2.1"]
"#,
            "zones/t.toml:10: profile[p].name: duplicate profile name",
        ),
    ];
    for (what, toml, want) in cases {
        let got = load_error(ZONE, toml);
        assert!(got.starts_with(want), "{what}:\n got: {got}\nwant: {want}");
        // Exactly the errors expected: nothing else is reported alongside.
        assert_eq!(got.lines().count(), want.lines().count(), "{what}:\n{got}");
    }
}

#[test]
fn profile_name_may_not_shadow_a_static_record() {
    let zone_text = format!("{ZONE}www IN A 192.0.2.9\n");
    let got = load_error(
        &zone_text,
        r#"[[profile]]
name = "www"
method = "priority"

[[profile.endpoint]]
name = "a"
targets = ["192.0.2.1"]
"#,
    );
    assert_eq!(
        got,
        "zones/t.toml:2: profile[www].name: www.t. also has static records in zones/t.zone; a \
         name is either static or steered"
    );
    // The same profile under another name loads.
    assert!(
        load_with_zone(
            &zone_text,
            "[[profile]]\nname = \"web\"\nmethod = \"priority\"\n\n[[profile.endpoint]]\nname = \
             \"a\"\ntargets = [\"192.0.2.1\"]\n",
        )
        .is_ok()
    );
}

#[test]
fn nesting_errors_name_the_cycle_or_the_too_long_chain() {
    // p0 → p1 → … → p{n-1}, each through one endpoint; the last profile has an address.
    let chain = |n: usize| {
        let mut t = String::new();
        for i in 0..n {
            t.push_str(&format!(
                "[[profile]]\nname = \"p{i}\"\nmethod = \"priority\"\n\n[[profile.endpoint]]\n"
            ));
            if i + 1 < n {
                t.push_str(&format!("name = \"e{i}\"\nprofile = \"p{}\"\n\n", i + 1));
            } else {
                t.push_str("name = \"last\"\ntargets = [\"192.0.2.1\"]\n\n");
            }
        }
        t
    };
    // Ten profiles nest (the deepest allowed); eleven do not, and the error is on the first
    // reference with the whole chain.
    assert!(load_with_zone(ZONE, &chain(10)).is_ok());
    assert_eq!(
        load_error(ZONE, &chain(11)),
        "zones/t.toml:7: profile[p0].endpoint[e0].profile: nesting \"p1\" here makes a chain \
         of 11 profiles (p0 → p1 → p2 → p3 → p4 → p5 → p6 → p7 → p8 → p9 → p10); at most 10 \
         may nest"
    );
    // A cycle below a profile is reported at the references that make it, not at the ones
    // that merely lead into it: a → b, b → c, c → b.
    let text = r#"[[profile]]
name = "a"
method = "priority"

[[profile.endpoint]]
name = "to-b"
profile = "b"

[[profile]]
name = "b"
method = "priority"

[[profile.endpoint]]
name = "to-c"
profile = "c"

[[profile]]
name = "c"
method = "priority"

[[profile.endpoint]]
name = "back-to-b"
profile = "b"
"#;
    assert_eq!(
        load_error(ZONE, text),
        "zones/t.toml:15: profile[b].endpoint[to-c].profile: nesting \"c\" here makes a cycle: \
         b → c → b\nzones/t.toml:23: profile[c].endpoint[back-to-b].profile: nesting \"b\" here \
         makes a cycle: c → b → c"
    );
}

#[test]
fn the_example_profiles_load() {
    let zone_text = std::fs::read_to_string("zones/example.test.zone").unwrap();
    let toml = std::fs::read_to_string("zones/example.test.toml").unwrap();
    let z = load_zone_text(Path::new("zones/example.test.zone"), &zone_text).unwrap();
    let mut profiles = load_profiles(
        &z,
        Path::new("zones/example.test.toml"),
        &toml,
        &CATALOGUE,
        0,
    )
    .unwrap();
    compute_capabilities(&mut profiles);
    let t = RoutingTable::new(profiles, Model::default(), Measured::default());
    let owner = Name::from_ascii("mqtt.example.test.").unwrap();
    let p = t.profile_at(&wire_lower(&owner)).unwrap();
    let h = HealthSnapshot::default();
    for (c, want) in [
        (london(), "mqtt.example.test./westeurope"),
        (new_york(), "mqtt.example.test./eastus"),
        (tokyo(), "mqtt.example.test./southeastasia"),
    ] {
        assert_eq!(
            t.select(p, Family::V4, &c, &h, None).chosen.as_slice(),
            [want]
        );
    }
}

// ----- Issue 6: capacity-aware spill-over, spreading, recovery ramp ---------------------

const CAP: &str = r#"
[[profile]]
name = "cap"
method = "performance"

[[profile.endpoint]]
name = "westeurope"
region = "azure:westeurope"
targets = ["198.51.100.10"]
[profile.endpoint.capacity]
source = "emqx"
url = "http://127.0.0.1:1/api/v5/stats?aggregate=true"
capacity = 1000

[[profile.endpoint]]
name = "northeurope"
region = "azure:northeurope"
targets = ["198.51.100.11"]
[profile.endpoint.capacity]
source = "emqx"
url = "http://127.0.0.1:1/api/v5/stats?aggregate=true"
capacity = 1000

[[profile.endpoint]]
name = "eastus"
region = "azure:eastus"
targets = ["198.51.100.20"]
[profile.endpoint.capacity]
source = "emqx"
url = "http://127.0.0.1:1/api/v5/stats?aggregate=true"
capacity = 1000
"#;

const CWE: &str = "cap.t./westeurope";
const CNE: &str = "cap.t./northeurope";
const CEU: &str = "cap.t./eastus";

/// Health with loads (fraction of capacity) and states.
fn loads(entries: &[(&str, MonitorState, Option<f64>, f64)]) -> HealthSnapshot {
    let mut h = HealthSnapshot::default();
    for &(key, state, load, ramp) in entries {
        h.set(
            key,
            EndpointHealth {
                state,
                load,
                ramp,
                ..EndpointHealth::default()
            },
        );
    }
    h
}

/// Shares of 4,000 London-area /24 networks per endpoint key.
fn london_shares(t: &RoutingTable, h: &HealthSnapshot) -> HashMap<String, f64> {
    let p = idx(t, "cap");
    let n = 4000u32;
    let mut by: HashMap<String, u32> = HashMap::new();
    for i in 0..n {
        let mut c = london();
        c.loc.addr = Some(IpAddr::from(std::net::Ipv4Addr::from(
            0x5000_0000 + (i << 8),
        )));
        let sel = t.select(p, Family::V4, &c, h, None);
        *by.entry(sel.chosen[0].to_string()).or_default() += 1;
    }
    by.into_iter()
        .map(|(k, v)| (k, f64::from(v) / f64::from(n)))
        .collect()
}

#[test]
fn below_the_high_water_mark_nothing_spills() {
    let t = table(CAP);
    let h = loads(&[
        (CWE, MonitorState::Online, Some(0.70), 1.0),
        (CNE, MonitorState::Online, Some(0.1), 1.0),
        (CEU, MonitorState::Online, Some(0.1), 1.0),
    ]);
    let s = london_shares(&t, &h);
    assert_eq!(s.get(CWE).copied(), Some(1.0), "{s:?}");
}

#[test]
fn between_the_marks_spill_grows_progressively() {
    let t = table(CAP);
    // 87.5 % is half way from 80 % to 95 %: about half the networks spill.
    let h = loads(&[
        (CWE, MonitorState::Online, Some(0.875), 1.0),
        (CNE, MonitorState::Online, Some(0.1), 1.0),
        (CEU, MonitorState::Online, Some(0.1), 1.0),
    ]);
    let s = london_shares(&t, &h);
    let stay = s.get(CWE).copied().unwrap_or(0.0);
    assert!((0.46..0.54).contains(&stay), "{s:?}");
    // Spilled clients go to the region with headroom nearest to them.
    assert!(s.get(CNE).copied().unwrap_or(0.0) > 0.4, "{s:?}");
    // Deterministic: the same network gets the same answer every time.
    let again = london_shares(&t, &h);
    assert_eq!(s, again);
    // Past the hard mark: a last resort only.
    let h = loads(&[
        (CWE, MonitorState::Online, Some(0.96), 1.0),
        (CNE, MonitorState::Online, Some(0.1), 1.0),
        (CEU, MonitorState::Online, Some(0.1), 1.0),
    ]);
    let s = london_shares(&t, &h);
    assert_eq!(s.get(CWE), None, "{s:?}");
    // … unless every endpoint is past it.
    let h = loads(&[
        (CWE, MonitorState::Online, Some(0.96), 1.0),
        (CNE, MonitorState::Online, Some(0.97), 1.0),
        (CEU, MonitorState::Online, Some(0.99), 1.0),
    ]);
    assert_eq!(london_shares(&t, &h).get(CWE).copied(), Some(1.0));
}

#[test]
fn a_failed_regions_clients_spread_over_regions_with_headroom() {
    let t = table(CAP);
    // Plenty of room next door: practically everyone goes to the next nearest.
    let h = loads(&[
        (CWE, MonitorState::Degraded, Some(0.5), 1.0),
        (CNE, MonitorState::Online, Some(0.10), 1.0),
        (CEU, MonitorState::Online, Some(0.10), 1.0),
    ]);
    let s = london_shares(&t, &h);
    assert!(s.get(CNE).copied().unwrap_or(0.0) > 0.95, "{s:?}");
    // Next nearest nearly full: the clients do not all pile onto it.
    let h = loads(&[
        (CWE, MonitorState::Degraded, Some(0.5), 1.0),
        (CNE, MonitorState::Online, Some(0.79), 1.0),
        (CEU, MonitorState::Online, Some(0.10), 1.0),
    ]);
    let s = london_shares(&t, &h);
    let ne = s.get(CNE).copied().unwrap_or(0.0);
    let eu = s.get(CEU).copied().unwrap_or(0.0);
    assert!(
        ne > 0.2 && eu > 0.2 && (ne + eu - 1.0).abs() < 1e-6,
        "{s:?}"
    );
    // Next nearest at its mark: everyone goes where there is room.
    let h = loads(&[
        (CWE, MonitorState::Degraded, Some(0.5), 1.0),
        (CNE, MonitorState::Online, Some(0.85), 1.0),
        (CEU, MonitorState::Online, Some(0.10), 1.0),
    ]);
    let s = london_shares(&t, &h);
    assert_eq!(s.get(CEU).copied(), Some(1.0), "{s:?}");
    // Without load data routing is the plain next nearest.
    let h = loads(&[(CWE, MonitorState::Degraded, None, 1.0)]);
    assert_eq!(london_shares(&t, &h).get(CNE).copied(), Some(1.0));
}

#[test]
fn a_recovering_endpoint_wins_back_a_growing_share() {
    let t = table(CAP);
    for ramp in [0.0, 0.3, 0.7, 1.0] {
        let h = loads(&[
            (CWE, MonitorState::Online, None, ramp),
            (CNE, MonitorState::Online, None, 1.0),
            (CEU, MonitorState::Online, None, 1.0),
        ]);
        let s = london_shares(&t, &h);
        let back = s.get(CWE).copied().unwrap_or(0.0);
        assert!((back - ramp).abs() < 0.04, "ramp {ramp}: {s:?}");
    }
    // Monotonic: a network back at 30 % stays back at 70 %.
    let p = idx(&t, "cap");
    for i in 0..500u32 {
        let mut c = london();
        c.loc.addr = Some(IpAddr::from(std::net::Ipv4Addr::from(
            0x5000_0000 + (i << 8),
        )));
        let at = |r: f64| {
            let h = loads(&[(CWE, MonitorState::Online, None, r)]);
            t.select(p, Family::V4, &c, &h, None).chosen[0] == CWE
        };
        assert!(!at(0.3) || at(0.7), "network {i} went back and forth");
    }
}

#[test]
fn explain_shows_load_and_hysteresis() {
    let t = table(CAP);
    let p = idx(&t, "cap");
    let h = loads(&[
        (CWE, MonitorState::Online, Some(0.875), 1.0),
        (CNE, MonitorState::Online, Some(0.1), 1.0),
        (CEU, MonitorState::Online, Some(0.1), 1.0),
    ]);
    let mut x = Explain::default();
    t.select(p, Family::V4, &london(), &h, Some(&mut x));
    let we = &x.levels[0].endpoints[0];
    assert_eq!(we.load, Some(0.875));
    assert!(
        we.detail.contains("capacity 1000 (high 80 %, hard 95 %)"),
        "{}",
        we.detail
    );
    assert!(
        x.levels[0].decision.contains("88 % load") || x.levels[0].decision.contains("spilled"),
        "{}",
        x.levels[0].decision
    );
}

#[test]
fn profile_name_may_not_be_a_wildcard() {
    for name in ["*", "*.eu", "mqtt.*"] {
        let got = load_error(
            &format!("{ZONE}*.w IN A 192.0.2.9\n"),
            &format!(
                "[[profile]]\nname = \"{name}\"\nmethod = \"priority\"\n\n[[profile.endpoint]]\n\
                 name = \"a\"\ntargets = [\"192.0.2.1\"]\n"
            ),
        );
        assert_eq!(
            got,
            format!(
                "zones/t.toml:2: profile[{name}].name: {name}.t. is a wildcard; a traffic profile \
                 answers one exact name (wildcards are for static records in the zone file)"
            ),
        );
    }
}

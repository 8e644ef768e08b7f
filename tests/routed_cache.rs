//! The routed-answer cache (`dns::routed_cache`) answers exactly what a fresh decision would:
//! every routed query goes to a handler with the cache and to one without it (each query
//! decided afresh by `select()`), across health snapshots that change states, forces (scoped
//! and not), RTTs and ramps, and the two answers must be the same bytes — ECS scope, TTL and
//! records included. The clients are tens of thousands of ECS subnets (IPv4 and IPv6, located
//! by the sample database or not, every source prefix length the cache keys on) and query
//! sources, asked twice each, so the cache is filled and then read.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use geosteer::config::Config;
use geosteer::dns::{Handler, Transport};
use geosteer::health::{
    EndpointHealth, Force, ForceAction, ForceOrigin, HealthSnapshot, MonitorState,
};
use geosteer::metrics::Metrics;

/// A query for `name`/`qtype`: EDNS when `edns` is `Some(do_bit)`, ECS when `ecs` is given as
/// (address, source prefix) — the address cut to the prefix, as RFC 7871 requires.
fn query(
    id: u16,
    name: &str,
    qtype: u16,
    edns: Option<bool>,
    ecs: Option<(IpAddr, u8)>,
) -> Vec<u8> {
    let mut p = Vec::with_capacity(80);
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, u8::from(edns.is_some())]);
    for label in name.trim_end_matches('.').split('.') {
        p.push(label.len() as u8);
        p.extend_from_slice(label.as_bytes());
    }
    p.push(0);
    p.extend_from_slice(&qtype.to_be_bytes());
    p.extend_from_slice(&[0, 1]);
    if let Some(dnssec_ok) = edns {
        p.extend_from_slice(&[0, 0, 41, 0x04, 0xD0, 0, 0, u8::from(dnssec_ok) << 7, 0]);
        match ecs {
            None => p.extend_from_slice(&[0, 0]),
            Some((addr, source)) => {
                let n = usize::from(source).div_ceil(8);
                let (family, octets) = match addr {
                    IpAddr::V4(a) => (1u16, a.octets().to_vec()),
                    IpAddr::V6(a) => (2u16, a.octets().to_vec()),
                };
                let mut bytes = octets[..n].to_vec();
                if source % 8 != 0 {
                    bytes[n - 1] &= 0xFFu8 << (8 - source % 8);
                }
                p.extend_from_slice(&((8 + n) as u16).to_be_bytes());
                p.extend_from_slice(&8u16.to_be_bytes());
                p.extend_from_slice(&((4 + n) as u16).to_be_bytes());
                p.extend_from_slice(&family.to_be_bytes());
                p.extend_from_slice(&[source, 0]);
                p.extend_from_slice(&bytes);
            }
        }
    }
    p
}

/// Mixed case, as resolvers using 0x20 send it: the answer must echo it byte for byte.
fn spelled(name: &str, salt: u64) -> String {
    name.chars()
        .enumerate()
        .map(|(i, c)| {
            if (salt >> (i % 64)) & 1 == 1 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect()
}

struct Client {
    src: SocketAddr,
    ecs: Option<(IpAddr, u8)>,
    edns: Option<bool>,
}

/// ECS subnets and sources: located networks of the sample database (and addresses inside
/// them), random IPv4 /24s and /16s and IPv6 /56s and /48s (mostly unlocated: placed at their
/// resolver), source prefix 0, and no ECS at all from many resolver addresses.
fn clients(state: &geosteer::state::State, rng: &mut fastrand::Rng) -> Vec<Client> {
    let mut located = Vec::new();
    state.locator.sample_networks(2_000, |a| located.push(a));
    assert!(located.len() > 20, "the sample database has networks");
    let resolvers: Vec<IpAddr> = vec![
        "81.2.69.53".parse().unwrap(),         // GB
        "216.160.83.53".parse().unwrap(),      // US
        "1.0.16.53".parse().unwrap(),          // JP
        "10.9.8.7".parse().unwrap(),           // nowhere
        "2a01:4f8:c0c:1::53".parse().unwrap(), // DE
        "2001:db8:ffff::53".parse().unwrap(),  // nowhere
    ];
    let mut out = Vec::new();
    let edns = |rng: &mut fastrand::Rng| match rng.u8(0..8) {
        0 => Some(true),
        _ => Some(false),
    };
    for i in 0..24_000usize {
        let resolver = resolvers[rng.usize(0..resolvers.len())];
        let src = SocketAddr::new(resolver, rng.u16(1024..));
        let ecs = match i % 8 {
            // Inside a located network (its first address, or a few past it).
            0 | 1 => {
                let base = located[rng.usize(0..located.len())];
                let addr = match base {
                    IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) + rng.u32(0..4))),
                    IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) + rng.u128(0..4))),
                };
                let source = if addr.is_ipv4() { 32 } else { 128 };
                Some((addr, [24, source, 20][rng.usize(0..3)].min(source)))
            }
            2 | 3 => Some((
                IpAddr::V4(Ipv4Addr::from(rng.u32(..))),
                [24, 16, 25][rng.usize(0..3)],
            )),
            4 => Some((
                IpAddr::V6(Ipv6Addr::from(rng.u128(..))),
                [56, 48, 64][rng.usize(0..3)],
            )),
            5 => Some((IpAddr::V4(Ipv4Addr::from(rng.u32(..))), 0)),
            // No ECS: the query source is the client; many sources of one resolver network.
            _ => {
                let src = match resolver {
                    IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) ^ rng.u32(0..256))),
                    IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) ^ rng.u128(0..65536))),
                };
                out.push(Client {
                    src: SocketAddr::new(src, 53),
                    ecs: None,
                    edns: if rng.bool() { None } else { edns(rng) },
                });
                continue;
            }
        };
        out.push(Client {
            src,
            ecs,
            edns: edns(rng),
        });
    }
    out
}

/// Health snapshots the clients are asked under, built from the table's endpoint keys.
fn snapshots(state: &geosteer::state::State) -> Vec<(&'static str, HealthSnapshot)> {
    let key = |profile: &str, endpoint: &str| -> String {
        let p = state
            .routing
            .find_profile(profile)
            .unwrap_or_else(|| panic!("profile {profile}"));
        state.routing.profiles[p]
            .endpoints
            .iter()
            .find(|e| e.name == endpoint)
            .unwrap_or_else(|| panic!("{profile}/{endpoint}"))
            .key
            .to_string()
    };
    let online = |rtt: f64| EndpointHealth {
        state: MonitorState::Online,
        rtt_ms: Some(rtt),
        rank_rtt_ms: Some(rtt),
        ..Default::default()
    };
    let force = |action, scope: &[&str]| {
        (
            ForceOrigin::Drill,
            Arc::new(Force {
                action,
                scope: scope.iter().map(|s| s.parse().unwrap()).collect(),
                reason: "test".into(),
                until: None,
            }),
        )
    };
    let all = |f: &dyn Fn(&str, &str) -> EndpointHealth| {
        let mut s = HealthSnapshot::default();
        for p in &state.routing.profiles {
            for e in &p.endpoints {
                let (owner, name) = (p.owner.to_string(), e.name.clone());
                s.set(&e.key, f(owner.split('.').next().unwrap(), &name));
            }
        }
        s
    };
    let mut out = vec![("nothing probed yet", HealthSnapshot::default())];
    let rtts = all(&|_, n| online(if n.starts_with("west") { 40.0 } else { 90.0 }));
    // The next publish moved every raw RTT, but not the held ones routing ranks by: it keeps
    // the generation, so the cells cached under the previous snapshot answer under this one.
    let mut wobble = all(&|_, n| EndpointHealth {
        rtt_ms: Some(if n.starts_with("west") { 47.0 } else { 83.0 }),
        ..online(if n.starts_with("west") { 40.0 } else { 90.0 })
    });
    wobble.keep_generation_of(&rtts);
    assert_eq!(wobble.generation(), rtts.generation());
    out.push(("online, RTTs", rtts));
    out.push(("raw RTTs moved, held ones not", wobble));
    let mut s = all(&|_, _| online(30.0));
    s.set(
        &key("mqtt", "westeurope"),
        EndpointHealth {
            state: MonitorState::Degraded,
            ..Default::default()
        },
    );
    s.set(
        &key("mqtt-eu", "westeurope"),
        EndpointHealth {
            state: MonitorState::Degraded,
            short_ttl: true,
            ..Default::default()
        },
    );
    out.push(("westeurope degraded", s));
    out.push((
        "everything degraded (fail-open)",
        all(&|_, _| EndpointHealth {
            state: MonitorState::Degraded,
            ..Default::default()
        }),
    ));
    let mut s = all(&|_, _| online(25.0));
    s.set(
        &key("mqtt", "eastus"),
        EndpointHealth {
            forced: vec![force(ForceAction::Down, &[])],
            ..online(25.0)
        },
    );
    out.push(("eastus forced down", s));
    // A drill on part of networks: 81.2.69.0/25 and one IPv6 /64 — narrower than the database
    // networks they sit in.
    let mut s = all(&|_, _| online(25.0));
    for (p, e) in [
        ("mqtt", "westeurope"),
        ("mqtt-eu", "westeurope"),
        ("mqtt-geo", "westeurope"),
    ] {
        s.set(
            &key(p, e),
            EndpointHealth {
                forced: vec![force(
                    ForceAction::Down,
                    &["81.2.69.0/25", "2a01:4f8:c0c:1::/64"],
                )],
                ..online(25.0)
            },
        );
    }
    out.push(("scoped drill", s));
    let mut s = all(&|_, _| online(25.0));
    s.set(
        &key("mqtt", "southeastasia"),
        EndpointHealth {
            ramp: 0.4,
            ..online(5.0)
        },
    );
    out.push(("recovery ramp", s));
    out
}

#[test]
fn cached_routed_answers_are_the_bytes_a_fresh_decision_gives() {
    let config = Config::load(None).expect("embedded configuration");
    let state = geosteer::state::build(&config).expect("bundled zones");
    let snapshots = snapshots(&state);
    let names: Vec<String> = state
        .routing
        .profiles
        .iter()
        .map(|p| p.owner.to_string())
        .collect();
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let clients = clients(&state, &mut rng);
    let state = Arc::new(ArcSwap::from_pointee(state));
    let health = Arc::new(ArcSwap::from_pointee(HealthSnapshot::default()));
    let metrics = Arc::new(Metrics::default());
    let cached = Handler::new(state.clone(), health.clone(), metrics.clone(), 1232);
    let fresh = Handler::new(state, health.clone(), Arc::new(Metrics::default()), 1232)
        .without_answer_cache();
    let (mut out_cached, mut out_fresh) = (Vec::new(), Vec::new());
    let mut compared = 0usize;
    let mut scoped = 0usize;
    for (what, snapshot) in snapshots {
        health.store(Arc::new(snapshot));
        let hits_before = metrics.routed_cache_hits.get();
        for (i, c) in clients.iter().enumerate() {
            let name = &names[i % names.len()];
            let qtype = [1u16, 28, 5][i % 3];
            // Twice: the first fills the cache (or not), the second may be served from it;
            // another ID and spelling each time.
            for round in 0..2u16 {
                let id = (i as u16).wrapping_mul(7).wrapping_add(round);
                let q = query(id, &spelled(name, rng.u64(..)), qtype, c.edns, c.ecs);
                let a = cached.handle(&q, c.src, Transport::Udp, &mut out_cached);
                let b = fresh.handle(&q, c.src, Transport::Udp, &mut out_fresh);
                assert_eq!(a, b, "{what}: answered or not, {name} {qtype} {:?}", c.ecs);
                assert!(
                    out_cached == out_fresh,
                    "{what}: {name} type {qtype} from {} ECS {:?} EDNS {:?} (round {round}):\n cached {:02x?}\n fresh  {:02x?}",
                    c.src,
                    c.ecs,
                    c.edns,
                    out_cached,
                    out_fresh
                );
                compared += 1;
                // Count answers that carry a non-zero ECS scope (client-dependent ones).
                if c.ecs.is_some_and(|(_, s)| s > 0) && out_fresh.len() > 3 {
                    let tail =
                        out_fresh.len() - usize::from(c.ecs.map_or(0, |(_, s)| s).div_ceil(8));
                    if out_fresh.get(tail - 1).is_some_and(|&s| s > 0) {
                        scoped += 1;
                    }
                }
            }
        }
        let hits = metrics.routed_cache_hits.get() - hits_before;
        // Each client asks twice and many share a cell: most second queries are hits. A cache
        // that never answered would make this comparison say nothing.
        assert!(
            hits as usize > clients.len() / 2,
            "{what}: only {hits} cache hits for {} clients",
            clients.len()
        );
    }
    assert!(compared >= 300_000, "{compared} comparisons");
    assert!(scoped > 10_000, "only {scoped} answers with an ECS scope");
}

/// A die roll is never cached: non-sticky `weighted` answers every query afresh, so both of
/// its endpoints keep appearing for one client.
#[test]
fn random_weighted_answers_are_not_cached() {
    let dir = tempfile::tempdir().unwrap();
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir(dir.path().join("zones")).unwrap();
    std::fs::copy(
        repo.join("zones/example.test.zone"),
        dir.path().join("zones/example.test.zone"),
    )
    .unwrap();
    let profiles = std::fs::read_to_string(repo.join("zones/example.test.toml"))
        .unwrap()
        .replace("sticky = true", "sticky = false")
        .replace("weight = 90", "weight = 50")
        .replace("weight = 10", "weight = 50");
    std::fs::write(dir.path().join("zones/example.test.toml"), profiles).unwrap();
    let toml = format!(
        "[server]\nudp = [\"127.0.0.1:0\"]\ntcp = []\n[zones]\ndirectory = \"zones\"\n\
         [geoip]\ncity = \"{}\"\n",
        repo.join("geo/sample-city.mmdb").display()
    );
    std::fs::write(dir.path().join("geosteer.toml"), toml).unwrap();
    let config = Config::load(Some(&dir.path().join("geosteer.toml"))).expect("config");
    let state = geosteer::state::build(&config).expect("zones");
    let metrics = Arc::new(Metrics::default());
    let handler = Handler::new(
        Arc::new(ArcSwap::from_pointee(state)),
        Arc::new(ArcSwap::from_pointee(HealthSnapshot::default())),
        metrics.clone(),
        1232,
    );
    let src: SocketAddr = "81.2.69.53:5300".parse().unwrap();
    let ecs = Some(("81.2.69.0".parse().unwrap(), 24));
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for id in 0..200u16 {
        let q = query(id, "mqtt-canary.example.test", 1, Some(false), ecs);
        assert!(handler.handle(&q, src, Transport::Udp, &mut out));
        // The whole answer but its ID: only the record can differ.
        seen.insert(out[2..].to_vec());
    }
    assert_eq!(
        metrics.routed_cache_hits.get(),
        0,
        "a random answer was cached"
    );
    assert!(
        seen.len() >= 2,
        "one client saw one answer 200 times: {seen:?}"
    );
}

//! The answer path in isolation: `Handler::handle` on prepared query packets, no sockets.
//!
//! `bench/dns.sh` measures the whole server against Knot with dnsperf, but on a shared VM its
//! figures move by ±15 % from run to run, which hides a change of a few percent. This bench
//! runs the same handler the UDP/TCP loops call, on the bundled example zone and profiles, and
//! prints nanoseconds per query; under callgrind it gives *instructions per query*, which are
//! the same on every run of the same binary (see bench/README.md):
//!
//! ```text
//! cargo bench --bench handler                        # ns/query (noisy, quick)
//! bash bench/instructions.sh                         # instructions/query (exact)
//! ```
//!
//! Workloads: `static` (A for www.example.test. with EDNS, no ECS) and `nxdomain`, answered
//! from the answer cache after the first query, the same two `-uncached` (a handler without
//! the cache: what the first query for a name costs), `routed` (A for the
//! performance-routed mqtt.example.test. with ECS from 10,000 different /24s: after a cell's
//! first query, from the routed-answer cache, as between two health snapshots of a running
//! server) and `routed-uncached` (the same queries, each decided afresh: locate, select,
//! encode — what every routed query cost before the routed-answer cache, and what a query
//! costs right after a snapshot is published).

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use geosteer::config::Config;
use geosteer::dns::handler::{Handler, Transport};
use geosteer::health::HealthSnapshot;
use geosteer::metrics::Metrics;

/// A query for `name`/A with EDNS (payload 1232) and, if given, an ECS option for `ecs`/24.
fn query(id: u16, name: &str, ecs: Option<[u8; 3]>) -> Vec<u8> {
    let mut p = Vec::with_capacity(64);
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1]); // RD; QD=1, AR=1
    for label in name.trim_end_matches('.').split('.') {
        p.push(label.len() as u8);
        p.extend_from_slice(label.as_bytes());
    }
    p.extend_from_slice(&[0, 0, 1, 0, 1]); // root, A, IN
    p.extend_from_slice(&[0, 0, 41, 0x04, 0xD0, 0, 0, 0, 0]); // OPT, payload 1232
    match ecs {
        None => p.extend_from_slice(&[0, 0]),
        Some(net) => {
            p.extend_from_slice(&[0, 11]); // rdlen
            p.extend_from_slice(&[0, 8, 0, 7, 0, 1, 24, 0]); // ECS, len 7, IPv4, /24, scope 0
            p.extend_from_slice(&net);
        }
    }
    p
}

/// Answers every packet once, `rounds` times; returns the total response bytes (kept so the
/// work cannot be optimised away). Not inlined: callgrind counts from here.
#[inline(never)]
pub fn run_queries(handler: &Handler, packets: &[Vec<u8>], rounds: usize) -> usize {
    let src: SocketAddr = ([198, 51, 100, 7], 53000).into();
    let mut out = Vec::with_capacity(1232);
    let mut bytes = 0;
    for _ in 0..rounds {
        for p in packets {
            out.clear();
            if handler.handle(black_box(p), src, Transport::Udp, &mut out) {
                bytes += out.len();
            }
        }
    }
    bytes
}

fn main() {
    // `cargo bench` passes --bench; a workload name selects one (instructions.sh runs each).
    let only: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    // `cargo test --all-targets` runs this binary without --bench: then it is a smoke test
    // (every workload answered correctly), not a measurement.
    let measuring = std::env::args().any(|a| a == "--bench");
    let queries: usize = std::env::var("QUERIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if measuring { 1_000_000 } else { 1_000 });
    let config = Config::load(None).expect("embedded configuration");
    let state = geosteer::state::build(&config).expect("bundled zones and profiles");
    let state = Arc::new(ArcSwap::from_pointee(state));
    let health = Arc::new(ArcSwap::from_pointee(HealthSnapshot::default()));
    let metrics = Arc::new(Metrics::default());
    let handler = Handler::new(
        state.clone(),
        health.clone(),
        metrics.clone(),
        config.edns_udp_payload,
    );
    // The same without the answer cache: what a first query for a name costs.
    let uncached =
        Handler::new(state, health, metrics, config.edns_udp_payload).without_answer_cache();
    let routed: Vec<Vec<u8>> = (0..10_000u32)
        .map(|i| {
            let net = [(i >> 8) as u8 % 200 + 20, i as u8, 0];
            query(i as u16, "mqtt.example.test", Some(net))
        })
        .collect();
    let workloads: Vec<(&str, &Handler, Vec<Vec<u8>>)> = vec![
        ("static", &handler, vec![query(1, "www.example.test", None)]),
        (
            "nxdomain",
            &handler,
            vec![query(2, "nope.example.test", None)],
        ),
        (
            "static-uncached",
            &uncached,
            vec![query(1, "www.example.test", None)],
        ),
        (
            "nxdomain-uncached",
            &uncached,
            vec![query(2, "nope.example.test", None)],
        ),
        ("routed", &handler, routed.clone()),
        ("routed-uncached", &uncached, routed),
    ];
    for (name, handler, packets) in &workloads {
        if only.as_deref().is_some_and(|o| o != *name) {
            continue;
        }
        // Every packet must be answered, or the figure means nothing.
        let mut out = Vec::new();
        for p in packets {
            out.clear();
            let src: SocketAddr = ([198, 51, 100, 7], 53000).into();
            assert!(
                handler.handle(p, src, Transport::Udp, &mut out),
                "{name}: no answer"
            );
            assert_eq!(
                out[3] & 0x0F,
                if name.starts_with("nxdomain") { 3 } else { 0 },
                "{name}: rcode"
            );
        }
        let rounds = (queries / packets.len()).max(1);
        let started = Instant::now();
        let bytes = run_queries(handler, packets, rounds);
        let n = rounds * packets.len();
        let ns = started.elapsed().as_nanos() as f64 / n as f64;
        println!(
            "{name:>17}: {n} queries, {ns:.0} ns/query, {} bytes/answer",
            bytes / n
        );
    }
}

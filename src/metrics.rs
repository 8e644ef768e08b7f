//! Prometheus metrics, lock-free on the query path.
//!
//! Counters that belong to a zone, profile or endpoint live *in* the state snapshot (a
//! [`Counter`] field), so counting a query is one relaxed atomic add with no lookup; they start
//! from zero after a reload, which Prometheus' `rate()` handles as a counter reset. Global
//! counters and the latency histogram live in [`Metrics`].

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use crate::base::Counter;
use crate::health::{HealthSnapshot, MonitorState};
use crate::routing::effective::Viewer;
use crate::state::State;

/// Answer-latency histogram bucket bounds, µs. Static answers take a few µs; the top buckets
/// catch scheduling stalls.
const LATENCY_BUCKETS_US: [u64; 10] = [5, 10, 25, 50, 100, 250, 500, 1000, 5000, 25000];
/// Response codes tracked individually (0..=23 covers every assigned one we send).
const RCODES: usize = 24;

/// Process-wide metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    /// [transport][rcode] query counts (0 = udp, 1 = tcp).
    queries: [[Counter; RCODES]; 2],
    /// Queries carrying EDNS Client Subnet.
    pub ecs_queries: Counter,
    /// Queries answered from the per-worker cache of static answers.
    pub answer_cache_hits: Counter,
    /// Routed answers served from the per-worker routed-answer cache.
    pub routed_cache_hits: Counter,
    /// Packets dropped unanswered (runts, responses).
    pub dropped: Counter,
    latency_buckets: [Counter; LATENCY_BUCKETS_US.len()],
    latency_count: Counter,
    latency_sum_ns: Counter,
    /// Successful reloads.
    pub reloads: Counter,
    /// Failed reloads (the old state kept serving).
    pub reload_errors: Counter,
    /// `_why` TXT queries answered.
    pub why_queries: Counter,
    /// UDP responses dropped by rate limiting.
    pub rrl_dropped: Counter,
    /// UDP responses sent truncated by rate limiting (slip).
    pub rrl_slipped: Counter,
}

fn rcode_name(r: usize) -> &'static str {
    match r {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        16 => "BADVERS",
        _ => "OTHER",
    }
}

impl Metrics {
    /// Counts one answered query.
    pub fn query(&self, tcp: bool, rcode: u16, elapsed_ns: u64) {
        let r = usize::from(rcode).min(RCODES - 1);
        self.queries[usize::from(tcp)][r].inc();
        let us = elapsed_ns / 1000;
        if let Some(i) = LATENCY_BUCKETS_US.iter().position(|&b| us <= b) {
            self.latency_buckets[i].inc();
        }
        self.latency_count.inc();
        self.latency_sum_ns
            .0
            .fetch_add(elapsed_ns, Ordering::Relaxed);
    }

    /// Total queries answered with `rcode` (all transports), for tests and status.
    pub fn answered(&self, rcode: u16) -> u64 {
        let r = usize::from(rcode).min(RCODES - 1);
        self.queries[0][r].get() + self.queries[1][r].get()
    }

    /// Renders everything in the Prometheus text exposition format.
    pub fn render(&self, state: &State, health: &HealthSnapshot) -> String {
        let mut o = String::with_capacity(8192);
        let help = |o: &mut String, name: &str, kind: &str, text: &str| {
            let _ = writeln!(o, "# HELP {name} {text}\n# TYPE {name} {kind}");
        };
        help(
            &mut o,
            "geosteer_queries_total",
            "counter",
            "DNS queries answered, by transport and response code.",
        );
        for (t, transport) in ["udp", "tcp"].iter().enumerate() {
            for r in 0..RCODES {
                let v = self.queries[t][r].get();
                if v > 0 || r == 0 || r == 2 {
                    let _ = writeln!(
                        o,
                        "geosteer_queries_total{{transport=\"{transport}\",rcode=\"{}\"}} {v}",
                        rcode_name(r)
                    );
                }
            }
        }
        help(
            &mut o,
            "geosteer_ecs_queries_total",
            "counter",
            "Queries carrying EDNS Client Subnet.",
        );
        let _ = writeln!(o, "geosteer_ecs_queries_total {}", self.ecs_queries.get());
        help(
            &mut o,
            "geosteer_answer_cache_hits_total",
            "counter",
            "Queries answered from the per-worker cache of encoded static answers.",
        );
        let _ = writeln!(
            o,
            "geosteer_answer_cache_hits_total {}",
            self.answer_cache_hits.get()
        );
        help(
            &mut o,
            "geosteer_routed_cache_hits_total",
            "counter",
            "Routed answers copied from the per-worker cache of decisions (same state and health).",
        );
        let _ = writeln!(
            o,
            "geosteer_routed_cache_hits_total {}",
            self.routed_cache_hits.get()
        );
        help(
            &mut o,
            "geosteer_dropped_packets_total",
            "counter",
            "Packets not answered (too short, or responses).",
        );
        let _ = writeln!(o, "geosteer_dropped_packets_total {}", self.dropped.get());
        help(
            &mut o,
            "geosteer_why_queries_total",
            "counter",
            "_why TXT decision traces answered.",
        );
        let _ = writeln!(o, "geosteer_why_queries_total {}", self.why_queries.get());
        help(
            &mut o,
            "geosteer_rrl_dropped_total",
            "counter",
            "UDP responses dropped by response rate limiting.",
        );
        let _ = writeln!(o, "geosteer_rrl_dropped_total {}", self.rrl_dropped.get());
        help(
            &mut o,
            "geosteer_rrl_slipped_total",
            "counter",
            "UDP responses sent truncated by response rate limiting (clients retry over TCP).",
        );
        let _ = writeln!(o, "geosteer_rrl_slipped_total {}", self.rrl_slipped.get());

        help(
            &mut o,
            "geosteer_answer_duration_seconds",
            "histogram",
            "Time from a decoded packet to an encoded answer.",
        );
        let mut cum = 0;
        for (i, b) in LATENCY_BUCKETS_US.iter().enumerate() {
            cum += self.latency_buckets[i].get();
            let _ = writeln!(
                o,
                "geosteer_answer_duration_seconds_bucket{{le=\"{}\"}} {cum}",
                *b as f64 / 1e6
            );
        }
        let _ = writeln!(
            o,
            "geosteer_answer_duration_seconds_bucket{{le=\"+Inf\"}} {}",
            self.latency_count.get()
        );
        let _ = writeln!(
            o,
            "geosteer_answer_duration_seconds_sum {}",
            self.latency_sum_ns.get() as f64 / 1e9
        );
        let _ = writeln!(
            o,
            "geosteer_answer_duration_seconds_count {}",
            self.latency_count.get()
        );

        help(
            &mut o,
            "geosteer_zone_queries_total",
            "counter",
            "Queries per zone (since the last reload).",
        );
        for z in state.zones.iter() {
            let _ = writeln!(
                o,
                "geosteer_zone_queries_total{{zone=\"{}\"}} {}",
                z.origin,
                z.queries.get()
            );
        }
        help(
            &mut o,
            "geosteer_profile_queries_total",
            "counter",
            "A/AAAA/CNAME decisions per traffic profile (since the last reload).",
        );
        for p in &state.routing.profiles {
            let _ = writeln!(
                o,
                "geosteer_profile_queries_total{{profile=\"{}\"}} {}",
                p.owner,
                p.queries.get()
            );
        }
        help(
            &mut o,
            "geosteer_fail_open_total",
            "counter",
            "Decisions that served degraded endpoints because all were degraded.",
        );
        for p in &state.routing.profiles {
            let _ = writeln!(
                o,
                "geosteer_fail_open_total{{profile=\"{}\"}} {}",
                p.owner,
                p.fail_open.get()
            );
        }
        help(
            &mut o,
            "geosteer_profile_failed_open",
            "gauge",
            "1 while every endpoint of the profile able to answer is Degraded and all are served anyway (fail-open).",
        );
        for (i, p) in state.routing.profiles.iter().enumerate() {
            let _ = writeln!(
                o,
                "geosteer_profile_failed_open{{profile=\"{}\"}} {}",
                p.owner,
                u8::from(state.routing.fails_open(i, health))
            );
        }
        help(
            &mut o,
            "geosteer_fail_open_transitions_total",
            "counter",
            "Times a profile went into or out of fail-open since start.",
        );
        let _ = writeln!(
            o,
            "geosteer_fail_open_transitions_total {}",
            health.status.fail_open_transitions
        );
        help(
            &mut o,
            "geosteer_endpoint_answers_total",
            "counter",
            "Answers naming each endpoint (since the last reload).",
        );
        for p in &state.routing.profiles {
            for e in &p.endpoints {
                let _ = writeln!(
                    o,
                    "geosteer_endpoint_answers_total{{profile=\"{}\",endpoint=\"{}\"}} {}",
                    p.owner,
                    e.name,
                    e.answers.get()
                );
            }
        }

        // One group per metric family, HELP/TYPE first (the text format asks for it).
        // States by the one rule (routing::effective), as seen by everyone (unscoped forces).
        let mut rows: Vec<(
            &std::sync::Arc<str>,
            &crate::health::EndpointStatus,
            MonitorState,
        )> = state
            .routing
            .endpoints()
            .filter_map(|(_, e)| {
                let (key, detail) = health.status.details.get_key_value(&e.key)?;
                let s = state.routing.effective_state(e, health, Viewer::Everyone);
                Some((key, detail, s))
            })
            .collect();
        rows.sort_by(|a, b| a.0.cmp(b.0));
        rows.dedup_by(|a, b| a.0 == b.0);
        help(
            &mut o,
            "geosteer_endpoint_up",
            "gauge",
            "1 if the endpoint is served (Online, CheckingEndpoint, Unmonitored, ForcedUp).",
        );
        for (k, _, state) in &rows {
            let up = u8::from(state.serves());
            let _ = writeln!(o, "geosteer_endpoint_up{{endpoint=\"{k}\"}} {up}");
        }
        help(
            &mut o,
            "geosteer_endpoint_state",
            "gauge",
            "The endpoint's monitor state (1 for the current state).",
        );
        for (k, _, state) in &rows {
            let _ = writeln!(
                o,
                "geosteer_endpoint_state{{endpoint=\"{k}\",state=\"{state:?}\"}} 1"
            );
        }
        help(
            &mut o,
            "geosteer_endpoint_rtt_seconds",
            "gauge",
            "Smoothed (peak EWMA) probe round-trip time.",
        );
        for (k, d, _) in &rows {
            if let Some(r) = d.rtt_ms {
                let _ = writeln!(
                    o,
                    "geosteer_endpoint_rtt_seconds{{endpoint=\"{k}\"}} {}",
                    r / 1000.0
                );
            }
        }
        help(
            &mut o,
            "geosteer_endpoint_certificate_expiry_timestamp_seconds",
            "gauge",
            "Unix time at which the TLS certificate an https/mqtts probe last saw expires.",
        );
        for (k, d, _) in &rows {
            if let Some(t) = d.cert_not_after_unix {
                let _ = writeln!(
                    o,
                    "geosteer_endpoint_certificate_expiry_timestamp_seconds{{endpoint=\"{k}\"}} {t}"
                );
            }
        }
        help(
            &mut o,
            "geosteer_probes_total",
            "counter",
            "Probe results per endpoint.",
        );
        for (k, d, _) in &rows {
            for (result, n) in [("ok", d.probes_ok), ("failed", d.probes_failed)] {
                let _ = writeln!(
                    o,
                    "geosteer_probes_total{{endpoint=\"{k}\",result=\"{result}\"}} {n}"
                );
            }
        }
        help(
            &mut o,
            "geosteer_endpoint_connections",
            "gauge",
            "Broker connections last polled from the endpoint's load source.",
        );
        for (k, d, _) in &rows {
            if let (Some(c), Some(_)) = (d.connections, d.capacity) {
                let _ = writeln!(o, "geosteer_endpoint_connections{{endpoint=\"{k}\"}} {c}");
            }
        }
        help(
            &mut o,
            "geosteer_endpoint_capacity",
            "gauge",
            "Configured connection capacity.",
        );
        for (k, d, _) in &rows {
            if let (Some(_), Some(cap)) = (d.connections, d.capacity) {
                let _ = writeln!(o, "geosteer_endpoint_capacity{{endpoint=\"{k}\"}} {cap}");
            }
        }
        help(
            &mut o,
            "geosteer_endpoint_load_ratio",
            "gauge",
            "Connections / capacity as routing uses it (fresh data only).",
        );
        for (k, _, _) in &rows {
            if let Some(l) = health.get(k).load {
                let _ = writeln!(o, "geosteer_endpoint_load_ratio{{endpoint=\"{k}\"}} {l}");
            }
        }
        help(
            &mut o,
            "geosteer_endpoint_state_changes_total",
            "counter",
            "Endpoint monitor state changes since start.",
        );
        let _ = writeln!(
            o,
            "geosteer_endpoint_state_changes_total {}",
            health.status.state_changes
        );
        help(
            &mut o,
            "geosteer_forced_states",
            "gauge",
            "Forced states (operator overrides and drills) in effect.",
        );
        let _ = writeln!(o, "geosteer_forced_states {}", health.status.forced.len());
        help(
            &mut o,
            "geosteer_reloads_total",
            "counter",
            "Successful configuration reloads.",
        );
        let _ = writeln!(o, "geosteer_reloads_total {}", self.reloads.get());
        help(
            &mut o,
            "geosteer_reload_errors_total",
            "counter",
            "Failed reloads (the previous configuration kept serving).",
        );
        let _ = writeln!(
            o,
            "geosteer_reload_errors_total {}",
            self.reload_errors.get()
        );
        o
    }
}

#[cfg(test)]
mod effective_tests {
    use super::*;
    use crate::health::{EndpointHealth, EndpointStatus};
    use crate::routing::RoutingTable;

    fn effective_table() -> RoutingTable {
        let text = "[[profile]]\nname = \"child\"\nmethod = \"priority\"\n[[profile.endpoint]]\nname = \"a\"\ntargets = [\"192.0.2.11\"]\n[[profile.endpoint]]\nname = \"b\"\ntargets = [\"192.0.2.12\"]\n[[profile]]\nname = \"top\"\nmethod = \"priority\"\n[[profile.endpoint]]\nname = \"leaf\"\ntargets = [\"192.0.2.1\"]\n[[profile.endpoint]]\nname = \"leaf-off\"\ntargets = [\"192.0.2.2\"]\nenabled = false\n[[profile.endpoint]]\nname = \"nest\"\nprofile = \"child\"\nmin_child_endpoints = 1\n";
        let zone = crate::zone::load_zone_text(
            std::path::Path::new("zones/t.zone"),
            "$ORIGIN t.\n$TTL 60\n@ IN SOA ns.t. h.t. 1 2 3 4 30\n@ IN NS ns.t.\nns IN A 192.0.2.1\n",
        )
        .unwrap();
        let cat = crate::geo::Catalogue::load(None).unwrap();
        let mut p = crate::routing::profile::load_profiles(
            &zone,
            std::path::Path::new("zones/t.toml"),
            text,
            &cat,
            0,
        )
        .unwrap();
        crate::routing::profile::compute_capabilities(&mut p);
        RoutingTable::new(p, Default::default(), Default::default())
    }

    /// Metrics read the same rule: a nested endpoint whose children are all down is Degraded
    /// there too, and a disabled endpoint is Disabled even when forced up.
    #[test]
    fn metrics_agree_with_routing() {
        let t = effective_table();
        let mut h = HealthSnapshot::default();
        for k in ["child.t./a", "child.t./b"] {
            h.set(
                k,
                EndpointHealth {
                    state: MonitorState::Degraded,
                    ..Default::default()
                },
            );
        }
        let mut forced_up = h.get("top.t./leaf-off").clone();
        forced_up.forced = vec![(
            crate::health::ForceOrigin::Endpoint,
            std::sync::Arc::new(crate::health::Force {
                action: crate::health::ForceAction::Up,
                scope: vec![],
                reason: "test".into(),
                until: None,
            }),
        )];
        h.set("top.t./leaf-off", forced_up);
        for (_, e) in t.endpoints() {
            std::sync::Arc::make_mut(&mut h.status)
                .details
                .insert(e.key.clone(), EndpointStatus::default());
        }
        let state = State {
            routing: t,
            ..Default::default()
        };
        let text = Metrics::default().render(&state, &h);
        for (key, want) in [
            ("top.t./nest", "Degraded"),
            ("top.t./leaf-off", "Disabled"),
            ("child.t./a", "Degraded"),
            ("top.t./leaf", "CheckingEndpoint"),
        ] {
            let line = format!("geosteer_endpoint_state{{endpoint=\"{key}\",state=\"{want}\"}} 1");
            assert!(text.contains(&line), "{line} missing in\n{text}");
        }
    }
}

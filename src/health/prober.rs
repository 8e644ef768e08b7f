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

use super::monitor::MonitorSpec;
use super::probe::{Probe, ProbeOutcome};
use super::state::Tracker;
use super::{EndpointHealth, HealthSnapshot, MonitorState};
use crate::routing::{RoutingTable, Target};

/// Probes in flight at once across all endpoints: bounds sockets and CPU with many endpoints.
const MAX_CONCURRENT_PROBES: usize = 256;
/// How often RTT changes (not state changes: those publish at once) are published.
const RTT_PUBLISH_EVERY: Duration = Duration::from_millis(250);
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

/// Starts probing every monitored endpoint of `table`, publishing into `health`.
pub fn spawn(
    table: &RoutingTable,
    health: Arc<ArcSwap<HealthSnapshot>>,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) {
    let (targets, unmonitored) = plan(table);
    let (tx, rx) = mpsc::channel::<Report>(1024);
    let slots = Arc::new(Semaphore::new(MAX_CONCURRENT_PROBES));
    let now = Instant::now();
    let trackers: HashMap<Arc<str>, Tracker> = targets
        .iter()
        .map(|t| {
            (
                t.key.clone(),
                Tracker::new(t.spec.tolerated_failures, t.spec.recovery, now),
            )
        })
        .collect();
    info!(
        probed = targets.len(),
        unmonitored = unmonitored.len(),
        "health probing starts"
    );
    for t in targets {
        tasks.spawn(endpoint_loop(
            t,
            tx.clone(),
            slots.clone(),
            shutdown.clone(),
        ));
    }
    drop(tx);
    tasks.spawn(publisher(rx, trackers, unmonitored, health, shutdown));
}

async fn publisher(
    mut rx: mpsc::Receiver<Report>,
    mut trackers: HashMap<Arc<str>, Tracker>,
    unmonitored: Vec<Arc<str>>,
    health: Arc<ArcSwap<HealthSnapshot>>,
    shutdown: CancellationToken,
) {
    let publish = |trackers: &HashMap<Arc<str>, Tracker>| {
        let now = Instant::now();
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
        for (k, t) in trackers {
            snap.set(
                k,
                EndpointHealth {
                    state: t.state(),
                    rtt_ms: t.rtt_ms(),
                    short_ttl: t.short_ttl(now),
                },
            );
        }
        health.store(Arc::new(snap));
    };
    publish(&trackers);
    let mut tick = tokio::time::interval(RTT_PUBLISH_EVERY);
    let mut dirty = false;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            msg = rx.recv() => {
                let Some(Report { key, outcome }) = msg else { return };
                let Some(t) = trackers.get_mut(&key) else { continue };
                let change = t.record(outcome.ok, outcome.rtt, outcome.error.as_deref(), Instant::now());
                if let Some(c) = change {
                    let level_warn = c.to == MonitorState::Degraded;
                    if level_warn {
                        warn!(endpoint = %key, from = ?c.from, to = ?c.to, reason = %c.reason, "endpoint state changed");
                    } else {
                        info!(endpoint = %key, from = ?c.from, to = ?c.to, reason = %c.reason, "endpoint state changed");
                    }
                    publish(&trackers);
                    dirty = false;
                } else {
                    debug!(endpoint = %key, ok = outcome.ok, rtt = ?outcome.rtt, error = ?outcome.error, "probe");
                    dirty = true;
                }
            }
            _ = tick.tick() => {
                // RTT updates, and short-TTL windows that expire with time.
                if dirty || trackers.values().any(|t| t.state() == MonitorState::Online) {
                    publish(&trackers);
                    dirty = false;
                }
            }
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
    }
}

async fn endpoint_loop(
    t: ProbeTarget,
    tx: mpsc::Sender<Report>,
    slots: Arc<Semaphore>,
    shutdown: CancellationToken,
) {
    let jitter = |max: Duration| max.mul_f64(fastrand::f64());
    // Start at once (after a little jitter so many endpoints do not probe in lockstep).
    let mut next = Instant::now() + jitter(t.spec.jitter);
    let mut probe: Option<(SocketAddr, Probe)> = None;
    let mut usual_rtt: Option<Duration> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(next) => {}
        }
        let round_start = Instant::now();
        // (Re)build the probe when the address changes (hostname targets).
        let addr = resolve(&t.host, t.spec.port).await;
        let ready = match addr {
            Ok(a) => {
                if probe.as_ref().is_none_or(|(old, _)| *old != a) {
                    match Probe::new(&t.spec, a) {
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
                    .send(Report {
                        key: t.key.clone(),
                        outcome: failed(e),
                    })
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
            match round(p, &t.key, &tx, &slots, hedge).await {
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
    tx: &mpsc::Sender<Report>,
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
            .send(Report {
                key: key.clone(),
                outcome: o,
            })
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

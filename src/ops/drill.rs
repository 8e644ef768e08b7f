//! Failover drills: force an endpoint down for some or all clients, verify that answers move,
//! revert by themselves at expiry (also across restarts), and verify that answers come back.
//!
//! Verification resolves the steered name for sample client subnets *through the same
//! request handler the DNS sockets use* (ECS queries built on the wire), so "moved" means the
//! bytes a resolver would get changed — not that a flag was set.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use hickory_server::proto::op::Message;
use hickory_server::proto::rr::RData;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::dns::{Handler, Transport};

/// How long a drill's verification waits for answers to move (or come back) before reporting
/// failure: the same for this instance's drills and for each fleet instance's own check.
pub const VERIFY_WITHIN: std::time::Duration = std::time::Duration::from_secs(15);
/// Poll interval while verifying a drill.
pub const VERIFY_EVERY: std::time::Duration = std::time::Duration::from_millis(20);

/// A drill request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillRequest {
    /// Profile owner name (`mqtt.example.test`) or its label relative to the zone (`mqtt`).
    pub profile: String,
    /// Endpoint name within the profile.
    pub endpoint: String,
    /// How long the endpoint stays forced down, e.g. "10m".
    #[serde(default = "default_duration")]
    pub duration: String,
    /// Clients affected (empty = everyone).
    #[serde(default)]
    pub scope: Vec<IpNet>,
    /// Only report what would move; change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

fn default_duration() -> String {
    "10m".into()
}

/// Where a drill is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DrillStatus {
    /// Endpoint forced down; waiting for expiry or stop.
    Running,
    /// Reverted at expiry, answers verified back.
    Done,
    /// Stopped early by an operator, answers verified back.
    Stopped,
    /// Expired while geosteer was not running (reverted at start-up).
    Expired,
    /// Shadow run: nothing changed.
    DryRun,
}

/// What one sample client saw.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SampleResult {
    /// Client subnet (sent as ECS).
    pub subnet: IpNet,
    /// Answer before the drill.
    pub before: String,
    /// Answer the model predicts during the drill.
    pub predicted: String,
    /// Whether the drill should move this client.
    pub expected_move: bool,
    /// Answer observed during the drill.
    pub during: Option<String>,
    /// Time from forcing to the new answer being served, ms.
    pub moved_ms: Option<u64>,
    /// Answer after the drill.
    pub after: Option<String>,
    /// Time from reverting to the old answer being served again, ms.
    pub back_ms: Option<u64>,
}

/// A drill and its verification, as reported and persisted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DrillRecord {
    /// Identifier (`d` + start time in ms).
    pub id: String,
    /// Profile owner.
    pub profile: String,
    /// Endpoint name.
    pub endpoint: String,
    /// Endpoint key.
    pub key: String,
    /// Clients affected (empty = all).
    pub scope: Vec<IpNet>,
    /// Shadow run.
    pub dry_run: bool,
    /// Unix start time.
    pub started_unix: u64,
    /// Start time, ms since the epoch (fleet instances measure their time to move from it).
    #[serde(default)]
    pub started_ms: u64,
    /// When it ended (stop, or expiry as finished), ms since the epoch.
    #[serde(default)]
    pub ended_ms: Option<u64>,
    /// The instance that started it (fleet mode).
    #[serde(default)]
    pub by: Option<String>,
    /// Unix expiry.
    pub until_unix: u64,
    /// Status.
    pub status: DrillStatus,
    /// Per-sample results.
    pub samples: Vec<SampleResult>,
    /// At least one sample was expected to move, every such sample moved, and none other did
    /// (`false` when no sample was expected to move: nothing was verified).
    pub verified_move: Option<bool>,
    /// Every sample is back to its old answer.
    pub verified_back: Option<bool>,
    /// Fleet mode: what every instance saw (filled in when read, never stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetDrill>,
}

impl DrillRecord {
    /// No sample was expected to move: the drill cannot show that answers move, so its move
    /// is never reported as verified.
    pub fn nothing_to_verify(&self) -> bool {
        !self.samples.iter().any(|s| s.expected_move)
    }
}

impl std::fmt::Display for DrillRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "drill {} {:?}: {} endpoint {} ({}) scope {}",
            self.id,
            self.status,
            self.profile,
            self.endpoint,
            if self.dry_run {
                "dry run"
            } else {
                "forced down"
            },
            if self.scope.is_empty() {
                "all clients".to_string()
            } else {
                self.scope
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            }
        )?;
        for s in &self.samples {
            let moved = match (s.moved_ms, &s.during) {
                (Some(ms), Some(d)) => format!("{d} after {ms} ms"),
                (None, Some(d)) => format!("{d} (unchanged)"),
                _ => format!("{} (predicted)", s.predicted),
            };
            let back = match (s.back_ms, &s.after) {
                (Some(ms), Some(a)) => format!("; back to {a} after {ms} ms"),
                (None, Some(a)) => format!("; now {a}"),
                _ => String::new(),
            };
            writeln!(
                f,
                "  {:<20} {} → {}{}{}",
                s.subnet.to_string(),
                s.before,
                moved,
                back,
                if s.expected_move {
                    ""
                } else {
                    "  (not affected)"
                }
            )?;
        }
        if let Some(v) = self.verified_move {
            if self.nothing_to_verify() {
                writeln!(
                    f,
                    "  move verified: NO (nothing to verify: no sample is expected to move; \
                     give a --scope or [admin] drill_samples that this endpoint serves)"
                )?;
            } else {
                writeln!(f, "  move verified: {}", if v { "yes" } else { "NO" })?;
            }
        }
        if let Some(v) = self.verified_back {
            writeln!(f, "  revert verified: {}", if v { "yes" } else { "NO" })?;
        }
        if let Some(fleet) = &self.fleet {
            writeln!(
                f,
                "  fleet: {:<30} {:<8} {:>9} {:<8} {:>9}",
                "instance", "moved", "after", "back", "after"
            )?;
            let yes_no = |v: Option<bool>| match v {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "-",
            };
            let ms = |v: Option<u64>| v.map_or("-".to_string(), |m| format!("{m} ms"));
            for r in &fleet.rows {
                writeln!(
                    f,
                    "         {:<30} {:<8} {:>9} {:<8} {:>9}",
                    r.instance,
                    yes_no(r.moved),
                    ms(r.moved_ms),
                    yes_no(r.back),
                    ms(r.back_ms)
                )?;
            }
            for m in &fleet.missing {
                writeln!(f, "         {m:<30} (no result yet)")?;
            }
            writeln!(
                f,
                "  fleet move verified: {}; fleet revert verified: {}",
                if fleet.verified_move {
                    "yes (every live instance moved)"
                } else {
                    "NO"
                },
                if fleet.verified_back {
                    "yes"
                } else {
                    "not yet / NO"
                }
            )?;
        }
        Ok(())
    }
}

/// A query for `name` with the sample's subnet as ECS, on the wire.
fn ecs_query(name: &str, qtype: u16, subnet: &IpNet) -> Vec<u8> {
    let mut b = vec![0x5a, 0x5a, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1];
    for label in name.trim_end_matches('.').split('.') {
        b.push(label.len().min(63) as u8);
        b.extend_from_slice(&label.as_bytes()[..label.len().min(63)]);
    }
    b.push(0);
    b.extend_from_slice(&qtype.to_be_bytes());
    b.extend_from_slice(&1u16.to_be_bytes());
    let (family, octets): (u16, Vec<u8>) = match subnet.trunc().addr() {
        IpAddr::V4(a) => (1, a.octets().to_vec()),
        IpAddr::V6(a) => (2, a.octets().to_vec()),
    };
    let alen = usize::from(subnet.prefix_len()).div_ceil(8);
    b.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0]);
    b.extend_from_slice(&((8 + alen) as u16).to_be_bytes());
    b.extend_from_slice(&8u16.to_be_bytes());
    b.extend_from_slice(&((4 + alen) as u16).to_be_bytes());
    b.extend_from_slice(&family.to_be_bytes());
    b.push(subnet.prefix_len());
    b.push(0);
    b.extend_from_slice(&octets[..alen]);
    b
}

/// What a client in `subnet` is answered for `name` (A and AAAA), as text.
pub fn resolve(handler: &Handler, name: &str, subnet: &IpNet) -> String {
    let src = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 53);
    let mut parts = Vec::new();
    for qtype in [1u16, 28] {
        let mut out = Vec::new();
        if !handler.handle(
            &ecs_query(name, qtype, subnet),
            src,
            Transport::Tcp,
            &mut out,
        ) {
            continue;
        }
        if let Ok(m) = Message::from_vec(&out) {
            for r in &m.answers {
                match &r.data {
                    RData::A(a) => parts.push(a.to_string()),
                    RData::AAAA(a) => parts.push(a.to_string()),
                    RData::CNAME(c) => parts.push(c.0.to_string()),
                    _ => {}
                }
            }
        }
    }
    parts.dedup();
    if parts.is_empty() {
        "(no answer)".into()
    } else {
        parts.join(" ")
    }
}

/// What one instance saw of a drill, verified through its own request handler.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct InstanceResult {
    /// The instance.
    pub instance: String,
    /// Every sample expected to move did, on this instance (`None`: not known yet).
    pub moved: Option<bool>,
    /// From the drill's start to this instance serving the last moved answer, ms.
    pub moved_ms: Option<u64>,
    /// Every sample is back to its answer before the drill.
    pub back: Option<bool>,
    /// From the drill's end (expiry or stop) to this instance serving the old answers, ms.
    pub back_ms: Option<u64>,
    /// Answers during the drill, per sample (the drill record's order).
    pub during: Vec<String>,
    /// Answers after the drill.
    pub after: Vec<String>,
}

/// A drill as the fleet saw it: one row per instance.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FleetDrill {
    /// Per-instance results (instances that reported).
    pub rows: Vec<InstanceResult>,
    /// Live instances that have not reported.
    pub missing: Vec<String>,
    /// Every live instance reported its move, and every one moved.
    pub verified_move: bool,
    /// Every live instance reported its revert, and every one is back.
    pub verified_back: bool,
}

//! "Why this answer": the decision for a name and a client, with every term that led to it.
//!
//! Used by `geosteer explain`; it runs the very same [`RoutingTable::select`] the server runs,
//! with tracing switched on, so the explanation cannot drift from the behaviour.
//!
//! [`RoutingTable::select`]: crate::routing::RoutingTable::select

use std::fmt::{self, Write as _};
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use serde::Serialize;

use crate::health::HealthSnapshot;
use crate::locate::{LocatedBy, Location, Placement};
use crate::routing::{Explain, Family, Profile, Selection};
use crate::state::State;
use crate::wire::{ClientSubnet, QName};

/// The explanation of one decision.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Name asked.
    pub name: String,
    /// Family asked (A → V4, AAAA → V6).
    pub family: Family,
    /// Query source address assumed.
    pub client: IpAddr,
    /// ECS subnet assumed, if any.
    pub ecs: Option<String>,
    /// Where the client was located.
    pub location: Location,
    /// Which step of the fallback chain located it (ECS address, resolver address, none).
    pub located: Placement,
    /// Profile levels and their endpoints.
    pub trace: Explain,
    /// Answer records, presentation form.
    pub answer: Vec<String>,
    /// Endpoints chosen.
    pub chosen: Vec<String>,
    /// TTL of the answer.
    pub ttl: u32,
    /// ECS scope prefix of the answer.
    pub scope: u8,
    /// Whether fail-open applied.
    pub failed_open: bool,
    /// Fleet mode: the vantage points (instance names) estimates `via` refer to, by index.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub vantages: Vec<String>,
}

/// Explains the answer for `name` (a traffic profile's owner).
pub fn explain(
    state: &State,
    health: &HealthSnapshot,
    name: &str,
    family: Family,
    client: IpAddr,
    ecs: Option<IpNet>,
) -> Result<Report, String> {
    let qname = QName::from_dotted(name).ok_or_else(|| format!("{name:?} is not a valid name"))?;
    let Some(p) = state.routing.profile_at(qname.lower()) else {
        return Err(format!(
            "{} is not a traffic profile (static names are answered from their zone file)",
            qname.to_dotted()
        ));
    };
    let ecs_opt = ecs.map(|n| ClientSubnet {
        family: if n.addr().is_ipv4() { 1 } else { 2 },
        source_prefix: n.prefix_len(),
        addr: n.trunc().addr(),
    });
    let (c, placed) = state.locate_client_traced(ecs_opt, SocketAddr::new(client, 0));
    let mut trace = Explain::default();
    let sel = state
        .routing
        .select(p, family, &c, health, Some(&mut trace));
    let mut report = Report::new(
        &state.routing.profiles[p],
        family,
        client,
        ecs_opt,
        c.loc,
        placed,
        trace,
        &sel,
    );
    report.vantages = health
        .vantages
        .points
        .iter()
        .map(|(n, _)| n.clone())
        .collect();
    Ok(report)
}

impl Report {
    /// Assembles a report from a traced selection.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        profile: &Profile,
        family: Family,
        client: IpAddr,
        ecs: Option<ClientSubnet>,
        location: Location,
        located: Placement,
        trace: Explain,
        sel: &Selection<'_>,
    ) -> Self {
        Report {
            name: profile.owner.to_string(),
            family,
            client,
            ecs: ecs.map(|e| format!("{}/{}", e.addr, e.source_prefix)),
            location,
            located,
            trace,
            answer: sel.records.iter().map(|r| r.data.to_string()).collect(),
            chosen: sel.chosen.iter().map(|s| s.to_string()).collect(),
            ttl: sel.ttl,
            scope: sel.scope,
            failed_open: sel.failed_open,
            vantages: Vec::new(),
        }
    }
}

fn opt<T: fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = &self.location;
        writeln!(f, "name      {} ({:?})", self.name, self.family)?;
        writeln!(
            f,
            "client    {} ecs {} → address {} (network /{})",
            self.client,
            self.ecs.as_deref().unwrap_or("none"),
            l.addr.map_or("-".into(), |a| a.to_string()),
            l.prefix_len
        )?;
        let p = &self.located;
        let from = opt(p.from);
        let why = match (p.by, p.ecs_unlocated) {
            (LocatedBy::Ecs, _) => format!("ecs {from}"),
            (LocatedBy::Resolver, true) => {
                format!("resolver {from} (the ECS address has no location)")
            }
            (LocatedBy::Resolver, false) => format!("resolver {from} (no ECS address)"),
            (LocatedBy::None, true) => {
                "none (neither the ECS address nor the resolver has a location)".into()
            }
            (LocatedBy::None, false) => "none (the resolver has no location)".into(),
        };
        writeln!(f, "located   by {why}")?;
        writeln!(
            f,
            "location  {} country {} continent {} subdivision {} asn {}",
            l.point
                .map_or("unknown".into(), |p| format!("{:.2},{:.2}", p.lat, p.lon)),
            opt(l.country),
            opt(l.continent),
            opt(l.subdivision),
            opt(l.asn)
        )?;
        for level in &self.trace.levels {
            writeln!(f, "profile   {} method {:?}", level.profile, level.method)?;
            for e in &level.endpoints {
                let mut terms = String::new();
                if let Some(est) = &e.estimate {
                    if let Some(km) = est.distance_km {
                        let _ = write!(terms, " dist {km:.0} km");
                    }
                    if let Some(ms) = est.distance_ms {
                        let _ = write!(terms, " model {ms:.1} ms");
                    }
                    if let Some(ms) = est.measured_ms {
                        let _ = write!(terms, " measured {ms:.1} ms");
                    }
                    if let Some((j, ms)) = est.via {
                        let vantage = self
                            .vantages
                            .get(usize::from(j))
                            .map_or_else(|| format!("#{j}"), Clone::clone);
                        let _ = write!(
                            terms,
                            " via vantage {vantage} {ms:.1} ms (model to {vantage} + its probe RTT)"
                        );
                    } else {
                        let _ = write!(terms, " excess {:.1} ms", est.excess_ms);
                    }
                    match est.total_ms {
                        Some(t) => {
                            let _ = write!(terms, " → estimate {t:.1} ms");
                        }
                        None => terms.push_str(" → no estimate"),
                    }
                }
                if !e.votes.is_empty() {
                    let votes: Vec<String> = e
                        .votes
                        .iter()
                        .map(|v| format!("{} {}", v.instance, if v.up { "up" } else { "down" }))
                        .collect();
                    let _ = write!(terms, " votes [{}]", votes.join(", "));
                }
                if let Some(l) = e.load {
                    let _ = write!(terms, " load {:.0} %", l * 100.0);
                }
                if e.ramp < 1.0 {
                    let _ = write!(
                        terms,
                        " recovering: {:.0} % of networks back",
                        e.ramp * 100.0
                    );
                }
                if !e.detail.is_empty() {
                    let _ = write!(terms, " [{}]", e.detail);
                }
                writeln!(
                    f,
                    "  {} {:<16} {:<22} state {:?} rtt {}{}",
                    if e.candidate { "+" } else { "-" },
                    e.name,
                    e.region.as_deref().unwrap_or("-"),
                    e.state,
                    e.rtt_ms.map_or("-".into(), |r| format!("{r:.1} ms")),
                    terms
                )?;
            }
            writeln!(f, "  decision: {}", level.decision)?;
        }
        writeln!(
            f,
            "answer    {} ttl {} scope /{}",
            if self.answer.is_empty() {
                "(none: NODATA)".to_string()
            } else {
                self.answer.join(" ")
            },
            self.ttl,
            self.scope
        )
    }
}

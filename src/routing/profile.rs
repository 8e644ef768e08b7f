//! Loading traffic profiles from `zones/<zone>.toml`, beside the zone file they belong to.
//!
//! Strict on purpose: unknown fields, settings that the profile's method does not use, duplicate
//! priorities or geo codes, unknown regions, nested cycles — each is an error naming file, line
//! and field. A profile that loads is one whose every endpoint can be reasoned about.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use hickory_server::proto::rr::rdata::{A, AAAA, CNAME};
use hickory_server::proto::rr::{Name, RData, Record};
use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use super::{Endpoint, GeoCode, MAX_DEPTH, Method, Profile, Stability, Target};
use crate::base::{ConfigError, ConfigErrors, line_of_offset};
use crate::geo::{Catalogue, GeoPoint};
use crate::health::load::{CapacitySpec, RawCapacity};
use crate::health::monitor::{MonitorSpec, Protocol, RawMonitor};
use crate::health::tls::TlsCache;
use crate::locate::Code;
use crate::wire::{wire_is_subdomain, wire_lower};
use crate::zone::Zone;

/// Default answer TTL: short enough that a failover reaches resolvers within half a minute.
const DEFAULT_TTL: u32 = 30;
/// Traffic Manager's ceiling for multivalue answers is 8; we allow 10 (fits 512 bytes as A).
const MAX_MULTIVALUE: usize = 10;
/// Continent codes as MaxMind reports them.
const CONTINENTS: [&str; 7] = ["AF", "AN", "AS", "EU", "NA", "OC", "SA"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    profile: Vec<Spanned<RawProfile>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    name: String,
    method: Method,
    ttl: Option<u32>,
    max_answers: Option<usize>,
    sticky: Option<bool>,
    geo_strict: Option<bool>,
    monitor: Option<Spanned<RawMonitor>>,
    stability: Option<Spanned<RawStability>>,
    #[serde(default)]
    endpoint: Vec<Spanned<RawEndpoint>>,
}

/// `[profile.stability]` as written.
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct RawStability {
    margin_ms: Option<f64>,
    margin_pct: Option<f64>,
    #[serde(default, with = "crate::base::de::opt_duration")]
    hold: Option<std::time::Duration>,
    #[serde(default, with = "crate::base::de::opt_duration")]
    ramp: Option<std::time::Duration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    name: String,
    #[serde(default)]
    targets: Vec<String>,
    profile: Option<String>,
    enabled: Option<bool>,
    region: Option<String>,
    lat: Option<f64>,
    lon: Option<f64>,
    weight: Option<u32>,
    priority: Option<u32>,
    geo: Option<Vec<String>>,
    subnets: Option<Vec<String>>,
    min_child_endpoints: Option<usize>,
    min_child_endpoints_ipv4: Option<usize>,
    min_child_endpoints_ipv6: Option<usize>,
    monitor: Option<Spanned<RawMonitor>>,
    capacity: Option<Spanned<RawCapacity>>,
}

/// Where in the file an error is.
struct Ctx<'a> {
    file: &'a Path,
    text: &'a str,
    errors: Vec<ConfigError>,
    /// Probe TLS settings built so far (each `ca_file` read once).
    tls: TlsCache,
}

impl Ctx<'_> {
    /// Whether the table starting at `span` sets `key`.
    fn has_key(&self, span: &std::ops::Range<usize>, key: &str) -> bool {
        let line = self.line(span, key);
        self.text
            .lines()
            .nth(line.saturating_sub(1))
            .is_some_and(|l| {
                l.trim_start()
                    .strip_prefix(key)
                    .is_some_and(|r| r.trim_start().starts_with('='))
            })
    }

    /// Line of `key =` in the table starting at the span, else the table's first line.
    ///
    /// `toml` spans an array-of-tables element by its `[[header]]` only, so the body is taken
    /// to run from the span to the next table header.
    fn line(&self, span: &std::ops::Range<usize>, key: &str) -> usize {
        let body = self.text.get(span.start..).unwrap_or("");
        let mut offset = span.start;
        for (n, l) in body.split_inclusive('\n').enumerate() {
            let t = l.trim_start();
            if n > 0 && t.starts_with('[') && offset >= span.end {
                break;
            }
            if let Some(rest) = t.strip_prefix(key)
                && rest.trim_start().starts_with('=')
            {
                return line_of_offset(self.text, offset);
            }
            offset += l.len();
        }
        line_of_offset(self.text, span.start)
    }

    fn err(
        &mut self,
        span: &std::ops::Range<usize>,
        key: &str,
        field: String,
        msg: impl Into<String>,
    ) {
        let line = self.line(span, key);
        self.errors
            .push(ConfigError::new(self.file, line, field, msg));
    }
}

/// Loads the profiles of one zone. `first_index` is the global index the first profile gets,
/// so nested references can point across the whole table.
pub fn load_profiles(
    zone: &Zone,
    file: &Path,
    text: &str,
    catalogue: &Catalogue,
    first_index: usize,
) -> Result<Vec<Profile>, ConfigErrors> {
    // Every serde problem of the file (not only the first), then the checks below on the rest.
    let (raw, errors) = crate::base::diag::from_toml_all::<RawFile>(file, text);
    let Some(raw) = raw else {
        return Err(ConfigErrors(errors));
    };
    // Lines of the problems serde found: a profile with one of them was read without the bad
    // lines, so what the checks below find in it may only be a consequence (no endpoints left
    // after a misspelt `[[profile.endpoints]]`), and is not reported.
    let serde_errors = errors.len();
    let mut cx = Ctx {
        file,
        text,
        errors,
        tls: TlsCache::default(),
    };
    // Names first, so nested references resolve regardless of order.
    let mut index: HashMap<String, usize> = HashMap::new();
    for (i, p) in raw.profile.iter().enumerate() {
        let span = p.span();
        let name = p.get_ref().name.to_ascii_lowercase();
        if index.insert(name.clone(), i).is_some() {
            cx.err(
                &span,
                "name",
                format!("profile[{name}].name"),
                "duplicate profile name",
            );
        }
    }
    // Stage 2: each profile on its own.
    let mut profiles = Vec::with_capacity(raw.profile.len());
    let mut nested_refs: Vec<NestedRef> = Vec::new();
    for (pi, sp) in raw.profile.iter().enumerate() {
        if let Some(profile) = validate_profile(
            &mut cx,
            zone,
            catalogue,
            &index,
            first_index,
            pi,
            sp,
            &mut nested_refs,
        ) {
            profiles.push(profile);
        }
    }
    // Stage 3: the nesting as a whole.
    check_nesting(&mut cx, &raw, &nested_refs);
    if serde_errors > 0 {
        let entry = |line: usize| {
            text.lines()
                .take(line)
                .enumerate()
                .filter(|(_, l)| l.trim() == "[[profile]]")
                .map(|(i, _)| i + 1)
                .last()
        };
        let damaged: Vec<Option<usize>> = cx.errors[..serde_errors]
            .iter()
            .map(|e| entry(e.line))
            .collect();
        let mut n = 0;
        cx.errors.retain(|e| {
            n += 1;
            n <= serde_errors || !damaged.contains(&entry(e.line))
        });
    }
    if !cx.errors.is_empty() {
        // A profile-level setting (its monitor) is checked once per endpoint: report it once.
        return Err(ConfigErrors(cx.errors).in_file_order());
    }
    Ok(profiles)
}

/// Stage 2: one profile, validated on its own (its nested references are collected for stage 3,
/// since the referenced profile may come later in the file). Errors go to `cx`; `None` when the
/// profile is unusable.
#[allow(clippy::too_many_arguments)]
fn validate_profile(
    cx: &mut Ctx<'_>,
    zone: &Zone,
    catalogue: &Catalogue,
    index: &HashMap<String, usize>,
    first_index: usize,
    pi: usize,
    sp: &toml::Spanned<RawProfile>,
    nested_refs: &mut Vec<NestedRef>,
) -> Option<Profile> {
    let span = sp.span();
    let p = sp.get_ref();
    let pname = p.name.to_ascii_lowercase();
    let field = |f: &str| format!("profile[{pname}].{f}");
    let owner = match Name::from_ascii(&p.name).and_then(|n| n.append_domain(&zone.origin)) {
        Ok(n) if !p.name.is_empty() && p.name != "@" && !p.name.ends_with('.') => n,
        // The apex carries SOA and NS, so it cannot be steered; the pattern that does what
        // the operator wants is a child zone with a CNAME to its steered name.
        _ if p.name == "@"
            || p.name
                .trim_end_matches('.')
                .eq_ignore_ascii_case(zone.origin.to_ascii().trim_end_matches('.')) =>
        {
            let apex = zone.origin.to_ascii();
            cx.err(
                &span,
                "name",
                field("name"),
                format!(
                    "{:?} is the zone apex {apex}, which holds SOA and NS and cannot be \
                         steered; serve a child zone (e.g. geo.{apex}) with a profile in it and \
                         point the name at it with a CNAME in the parent (mqtt.{apex} CNAME \
                         mqtt.geo.{apex}), as deploy/README.md describes",
                    p.name
                ),
            );
            return None;
        }
        _ => {
            cx.err(
                &span,
                "name",
                field("name"),
                format!(
                    "{:?} is not a name relative to the zone {}",
                    p.name, zone.origin
                ),
            );
            return None;
        }
    };
    // A profile answers one exact name; steering every name a wildcard matches would need
    // wildcard matching on the routed path, its `_why` names and the answer cache.
    if owner.iter().any(|l| l == b"*") {
        cx.err(
            &span,
            "name",
            field("name"),
            format!(
                "{owner} is a wildcard; a traffic profile answers one exact name \
                     (wildcards are for static records in the zone file)"
            ),
        );
        return None;
    }
    let owner_wire = wire_lower(&owner);
    if !wire_is_subdomain(&owner_wire, &zone.origin_wire) {
        cx.err(&span, "name", field("name"), "not inside the zone");
        return None;
    }
    if zone
        .nodes
        .get(&owner_wire)
        .is_some_and(|n| !n.rrsets.is_empty())
    {
        cx.err(
            &span,
            "name",
            field("name"),
            format!(
                "{owner} also has static records in {}; a name is either static or steered",
                zone.file.display()
            ),
        );
    }
    if zone.has_cuts {
        let mut off = 0;
        while off < owner_wire.len() && owner_wire[off] != 0 {
            if zone.nodes.get(&owner_wire[off..]).is_some_and(|n| n.cut) {
                cx.err(
                    &span,
                    "name",
                    field("name"),
                    "below a delegation (zone cut)",
                );
                break;
            }
            off += 1 + usize::from(owner_wire[off]);
        }
    }
    let ttl = p.ttl.unwrap_or(DEFAULT_TTL);
    if ttl > i32::MAX as u32 {
        cx.err(&span, "ttl", field("ttl"), "TTL above 2^31-1 (RFC 2181 §8)");
    }
    let max_answers = match (p.method, p.max_answers) {
        (Method::Multivalue, Some(n)) if (1..=MAX_MULTIVALUE).contains(&n) => n,
        (Method::Multivalue, Some(n)) => {
            cx.err(
                &span,
                "max_answers",
                field("max_answers"),
                format!("{n} is outside 1..={MAX_MULTIVALUE}"),
            );
            1
        }
        (Method::Multivalue, None) => 3,
        (_, Some(_)) => {
            cx.err(
                &span,
                "max_answers",
                field("max_answers"),
                "only used by method multivalue",
            );
            1
        }
        (_, None) => 1,
    };
    if p.sticky.is_some() && p.method != Method::Weighted {
        cx.err(
            &span,
            "sticky",
            field("sticky"),
            "only used by method weighted",
        );
    }
    if p.geo_strict.is_some() && p.method != Method::Geographic {
        cx.err(
            &span,
            "geo_strict",
            field("geo_strict"),
            "only used by method geographic",
        );
    }
    if p.endpoint.is_empty() {
        cx.err(
            &span,
            "name",
            field("endpoint"),
            "a profile needs at least one endpoint",
        );
    }
    let stability = match &p.stability {
        None => Stability::default(),
        Some(st) => {
            let r = st.get_ref();
            let d = Stability::default();
            let v = Stability {
                margin_ms: r.margin_ms.unwrap_or(d.margin_ms),
                margin_pct: r.margin_pct.unwrap_or(d.margin_pct),
                hold: r.hold.unwrap_or(d.hold),
                ramp: r.ramp.unwrap_or(d.ramp),
            };
            if !(v.margin_ms >= 0.0 && v.margin_pct >= 0.0 && v.margin_pct <= 100.0) {
                cx.err(
                    &st.span(),
                    "margin_ms",
                    field("stability.margin_ms"),
                    "margins must be >= 0 (margin_pct <= 100)",
                );
            }
            v
        }
    };
    let mut endpoints = Vec::with_capacity(p.endpoint.len());
    let mut seen_names = HashSet::new();
    let mut seen_prio = HashMap::new();
    let mut seen_geo: HashMap<GeoCode, String> = HashMap::new();
    let mut seen_nets: HashMap<IpNet, String> = HashMap::new();
    let mut fallbacks = 0;
    for (ei, se) in p.endpoint.iter().enumerate() {
        let es = se.span();
        let e = se.get_ref();
        let ef = |f: &str| format!("profile[{pname}].endpoint[{}].{f}", e.name);
        if !seen_names.insert(e.name.clone()) {
            cx.err(
                &es,
                "name",
                ef("name"),
                "duplicate endpoint name in this profile",
            );
        }
        // Target: addresses, one hostname, or a nested profile.
        let target = match (&e.profile, e.targets.is_empty()) {
            (Some(_), false) => {
                cx.err(
                    &es,
                    "targets",
                    ef("targets"),
                    "give targets or profile, not both",
                );
                continue;
            }
            (None, true) => {
                cx.err(
                    &es,
                    "name",
                    ef("targets"),
                    "no targets (IP addresses or one hostname) and no nested profile",
                );
                continue;
            }
            (Some(child), true) => match index.get(&child.to_ascii_lowercase()) {
                Some(&ci) => {
                    nested_refs.push((pi, ci, es.clone(), e.name.clone()));
                    Target::Nested(first_index + ci)
                }
                None => {
                    cx.err(
                        &es,
                        "profile",
                        ef("profile"),
                        format!("no profile named {child:?} in this file"),
                    );
                    continue;
                }
            },
            (None, false) => match parse_targets(&e.targets) {
                Ok(t) => t,
                Err(msg) => {
                    cx.err(&es, "targets", ef("targets"), msg);
                    continue;
                }
            },
        };
        if p.method == Method::Multivalue && !matches!(target, Target::Addrs { .. }) {
            cx.err(
                &es,
                "targets",
                ef("targets"),
                "multivalue endpoints must be IP addresses",
            );
        }
        // Location.
        let (region, point) = match (&e.region, e.lat, e.lon) {
            (Some(r), None, None) => match catalogue.get(r) {
                Some(reg) => (Some(r.clone()), Some(reg.point())),
                None => {
                    let close = catalogue.suggest(r);
                    let hint = if close.is_empty() {
                        String::new()
                    } else {
                        format!("did you mean {}? ", close.join(" or "))
                    };
                    cx.err(&es, "region", ef("region"), format!("unknown region {r:?} ({hint}see geo/regions.toml; names are provider:region)"));
                    (None, None)
                }
            },
            (None, Some(lat), Some(lon)) => {
                let p = GeoPoint { lat, lon };
                if !p.is_valid() {
                    cx.err(
                        &es,
                        "lat",
                        ef("lat"),
                        "latitude must be in -90..=90 and longitude in -180..=180",
                    );
                }
                (None, Some(p))
            }
            (None, None, None) => (None, None),
            (Some(_), _, _) => {
                cx.err(
                    &es,
                    "region",
                    ef("region"),
                    "give region or lat/lon, not both",
                );
                (None, None)
            }
            _ => {
                cx.err(&es, "lat", ef("lat"), "lat and lon go together");
                (None, None)
            }
        };
        if p.method == Method::Performance
            && point.is_none()
            && !cx.errors.iter().any(|x| x.field == ef("region"))
        {
            cx.err(
                &es,
                "name",
                ef("region"),
                "performance routing needs a location: region = \"provider:region\" or lat/lon",
            );
        }
        // Method-specific settings; a setting the method ignores is a mistake worth naming.
        let uses = |m: Method| p.method == m;
        let weight = match e.weight {
            Some(w) if !uses(Method::Weighted) => {
                let _ = w;
                cx.err(&es, "weight", ef("weight"), "only used by method weighted");
                1
            }
            Some(w) if !(1..=1000).contains(&w) => {
                cx.err(
                    &es,
                    "weight",
                    ef("weight"),
                    format!("{w} is outside 1..=1000"),
                );
                1
            }
            Some(w) => w,
            None => 1,
        };
        let priority = match e.priority {
            Some(_) if !uses(Method::Priority) => {
                cx.err(
                    &es,
                    "priority",
                    ef("priority"),
                    "only used by method priority",
                );
                0
            }
            Some(v) if !(1..=1000).contains(&v) => {
                cx.err(
                    &es,
                    "priority",
                    ef("priority"),
                    format!("{v} is outside 1..=1000"),
                );
                0
            }
            Some(v) => v,
            // Traffic Manager numbers endpoints in order when no priority is given.
            None => ei as u32 + 1,
        };
        if uses(Method::Priority)
            && let Some(other) = seen_prio.insert(priority, e.name.clone())
        {
            cx.err(
                &es,
                "priority",
                ef("priority"),
                format!("priority {priority} is also endpoint {other:?}'s"),
            );
        }
        let mut geo = Vec::new();
        match (&e.geo, uses(Method::Geographic)) {
            (Some(_), false) => cx.err(&es, "geo", ef("geo"), "only used by method geographic"),
            (None, true) => cx.err(
                &es,
                "name",
                ef("geo"),
                "geographic endpoints need geo codes",
            ),
            (Some(codes), true) => {
                for c in codes {
                    match parse_geo(c) {
                            Some(g) => {
                                if let Some(other) = seen_geo.insert(g, e.name.clone()) {
                                    cx.err(&es, "geo", ef("geo"), format!("{c} is already mapped to endpoint {other:?}"));
                                }
                                geo.push(g);
                            }
                            None => cx.err(&es, "geo", ef("geo"), format!("{c:?} is not a geo code (WORLD, a continent AF AN AS EU NA OC SA, a country like DE, or a subdivision like US-CA)")),
                        }
                }
            }
            (None, false) => {}
        }
        let mut subnets = Vec::new();
        match (&e.subnets, uses(Method::Subnet)) {
            (Some(_), false) => cx.err(&es, "subnets", ef("subnets"), "only used by method subnet"),
            (Some(list), true) if !list.is_empty() => {
                for s in list {
                    match s.parse::<IpNet>() {
                        Ok(n) if n.trunc() == n => {
                            if let Some(other) = seen_nets.insert(n, e.name.clone()) {
                                cx.err(
                                    &es,
                                    "subnets",
                                    ef("subnets"),
                                    format!("{n} is already mapped to endpoint {other:?}"),
                                );
                            }
                            subnets.push(n);
                        }
                        Ok(n) => cx.err(
                            &es,
                            "subnets",
                            ef("subnets"),
                            format!("{s} has host bits set (did you mean {}?)", n.trunc()),
                        ),
                        Err(_) => cx.err(
                            &es,
                            "subnets",
                            ef("subnets"),
                            format!("{s:?} is not a CIDR range"),
                        ),
                    }
                }
            }
            (_, true) => fallbacks += 1,
            (None, false) => {}
        }
        if uses(Method::Subnet) && fallbacks > 1 {
            cx.err(
                &es,
                "name",
                ef("subnets"),
                "more than one fallback endpoint (an endpoint without subnets)",
            );
        }
        let is_nested = matches!(target, Target::Nested(_));
        // Monitor: the profile's settings, overridden field by field by the endpoint's.
        let capacity = match &e.capacity {
            None => None,
            Some(c) if !uses(Method::Performance) => {
                cx.err(
                    &c.span(),
                    "source",
                    ef("capacity"),
                    "capacity is used by method performance",
                );
                None
            }
            Some(c) => match CapacitySpec::from_raw(c.get_ref()) {
                Ok(spec) => Some(spec),
                Err((key, msg)) => {
                    cx.err(
                        &c.span(),
                        key,
                        format!("profile[{pname}].endpoint[{}].capacity.{key}", e.name),
                        msg,
                    );
                    None
                }
            },
        };
        let monitor = match (&p.monitor, &e.monitor) {
            (_, Some(_)) if is_nested => {
                cx.err(
                    &es,
                    "monitor",
                    ef("monitor"),
                    "nested endpoints take their health from their children",
                );
                None
            }
            (_, _) if is_nested => None,
            (None, None) => None,
            (pm, em) => {
                let base = pm.as_ref().map(|m| m.get_ref().clone()).unwrap_or_default();
                let merged = match em {
                    Some(m) => base.merged(m.get_ref()),
                    None => base,
                };
                // TLS settings are built here, on the loading thread: a bad `ca_file` is
                // reported at its line, and probe tasks never read files.
                let checked = MonitorSpec::from_raw(&merged).and_then(|mut spec| {
                    // Relative to this file, like `$INCLUDE` (not to the working directory).
                    if let (Some(ca), Some(dir)) = (&spec.ca_file, cx.file.parent())
                        && ca.is_relative()
                    {
                        spec.ca_file = Some(dir.join(ca));
                    }
                    spec.load_tls(&mut cx.tls)?;
                    Ok(spec)
                });
                match checked {
                    Ok(spec) if spec.protocol == Protocol::None => None,
                    Ok(spec) => Some(spec),
                    Err((key, msg)) => {
                        let (span, prefix) = match (em, pm) {
                            (Some(m), _) if cx.has_key(&m.span(), key) => (
                                m.span(),
                                format!("profile[{pname}].endpoint[{}].monitor", e.name),
                            ),
                            (_, Some(m)) => (m.span(), format!("profile[{pname}].monitor")),
                            (Some(m), None) => (
                                m.span(),
                                format!("profile[{pname}].endpoint[{}].monitor", e.name),
                            ),
                            (None, None) => (es.clone(), ef("monitor")),
                        };
                        cx.err(&span, key, format!("{prefix}.{key}"), msg);
                        None
                    }
                }
            }
        };
        for (key, v) in [
            ("min_child_endpoints", e.min_child_endpoints),
            ("min_child_endpoints_ipv4", e.min_child_endpoints_ipv4),
            ("min_child_endpoints_ipv6", e.min_child_endpoints_ipv6),
        ] {
            if v.is_some() && !is_nested {
                cx.err(&es, key, ef(key), "only used by nested-profile endpoints");
            }
        }
        endpoints.push(Endpoint {
            key: Arc::from(format!("{owner}/{}", e.name)),
            name: e.name.clone(),
            target,
            enabled: e.enabled.unwrap_or(true),
            region,
            point,
            weight,
            priority,
            geo,
            subnets,
            min_child: e.min_child_endpoints.unwrap_or(1),
            min_child_v4: e.min_child_endpoints_ipv4.unwrap_or(0),
            min_child_v6: e.min_child_endpoints_ipv6.unwrap_or(0),
            monitor,
            answers: Default::default(),
            capacity,
        });
    }
    Some(Profile {
        owner,
        owner_wire,
        method: p.method,
        ttl,
        max_answers,
        sticky: p.sticky.unwrap_or(false),
        geo_strict: p.geo_strict.unwrap_or(false),
        stability,
        endpoints,
        can_answer: [false; 3],
        queries: Default::default(),
        fail_open: Default::default(),
    })
}

/// A nested reference: (parent profile, child profile, span of the endpoint, endpoint name).
type NestedRef = (usize, usize, std::ops::Range<usize>, String);

/// Stage 3: nested references form no cycle and no chain deeper than [`MAX_DEPTH`].
fn check_nesting(cx: &mut Ctx<'_>, raw: &RawFile, nested_refs: &[NestedRef]) {
    let n = raw.profile.len();
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); n];
    for r in nested_refs {
        children[r.0].push(r.1);
    }
    let pname = |i: usize| raw.profile[i].get_ref().name.to_ascii_lowercase();
    let chain = |path: &[usize]| {
        path.iter()
            .map(|&i| pname(i))
            .collect::<Vec<_>>()
            .join(" → ")
    };
    let chains = longest_chains(&children);
    for (parent, child, span, endpoint) in nested_refs {
        let field = format!("profile[{}].endpoint[{endpoint}].profile", pname(*parent));
        let cname = pname(*child);
        let in_cycle = chains[*child].is_none();
        let message = if let Some(back) = in_cycle
            .then(|| path_between(*child, *parent, &children))
            .flatten()
        {
            // The reference closes a loop: parent → child → … → parent.
            let mut path = vec![*parent];
            path.extend(back);
            format!("nesting {cname:?} here makes a cycle: {}", chain(&path))
        } else {
            match &chains[*child] {
                // A loop further down is reported at its own references.
                None => continue,
                Some(below) if below.len() >= MAX_DEPTH => {
                    let mut path = vec![*parent];
                    path.extend(below);
                    format!(
                        "nesting {cname:?} here makes a chain of {} profiles ({}); at most {MAX_DEPTH} may nest",
                        path.len(),
                        chain(&path)
                    )
                }
                Some(_) => continue,
            }
        };
        cx.err(span, "profile", field, message);
    }
}

/// For every profile, the longest chain of nested profiles starting there (itself first), or
/// `None` if a cycle is reachable from it. One memoised depth-first search over all profiles:
/// linear in profiles and references, so a file with many diamond-shaped references cannot make
/// loading exponential.
fn longest_chains(children: &[Vec<usize>]) -> Vec<Option<Vec<usize>>> {
    #[derive(Clone, Copy)]
    enum Mark {
        New,
        OnStack,
        /// Length of the longest chain from here, and the next profile on it.
        Done(usize, Option<usize>),
        Cyclic,
    }
    fn walk(p: usize, children: &[Vec<usize>], marks: &mut [Mark]) -> Option<usize> {
        match marks[p] {
            Mark::Done(len, _) => return Some(len),
            Mark::OnStack | Mark::Cyclic => {
                marks[p] = Mark::Cyclic;
                return None;
            }
            Mark::New => {}
        }
        marks[p] = Mark::OnStack;
        let mut best = (1, None);
        for &c in &children[p] {
            let Some(len) = walk(c, children, marks) else {
                marks[p] = Mark::Cyclic;
                return None;
            };
            if len + 1 > best.0 {
                best = (len + 1, Some(c));
            }
        }
        marks[p] = Mark::Done(best.0, best.1);
        Some(best.0)
    }
    let mut marks = vec![Mark::New; children.len()];
    for p in 0..children.len() {
        walk(p, children, &mut marks);
    }
    (0..children.len())
        .map(|p| {
            let Mark::Done(..) = marks[p] else {
                return None;
            };
            let mut chain = vec![p];
            let mut at = p;
            while let Mark::Done(_, Some(next)) = marks[at] {
                chain.push(next);
                at = next;
            }
            Some(chain)
        })
        .collect()
}

/// A path of nested references from `from` to `target` (both included), if there is one.
fn path_between(from: usize, target: usize, children: &[Vec<usize>]) -> Option<Vec<usize>> {
    // Breadth-first, so the reported cycle is the shortest one.
    let mut came_from: HashMap<usize, usize> = HashMap::new();
    let mut queue = std::collections::VecDeque::from([from]);
    let mut seen = HashSet::from([from]);
    while let Some(p) = queue.pop_front() {
        if p == target {
            let mut path = vec![p];
            let mut at = p;
            while let Some(&prev) = came_from.get(&at) {
                path.push(prev);
                at = prev;
            }
            path.reverse();
            return Some(path);
        }
        for &c in &children[p] {
            if seen.insert(c) {
                came_from.insert(c, p);
                queue.push_back(c);
            }
        }
    }
    None
}

/// Addresses (any mix of IPv4 and IPv6) or exactly one hostname.
fn parse_targets(targets: &[String]) -> Result<Target, String> {
    let mut a = Vec::new();
    let mut aaaa = Vec::new();
    let mut host = None;
    for t in targets {
        match t.parse::<IpAddr>() {
            Ok(IpAddr::V4(v4)) => a.push(Record::from_rdata(Name::root(), 0, RData::A(A(v4)))),
            Ok(IpAddr::V6(v6)) => {
                aaaa.push(Record::from_rdata(Name::root(), 0, RData::AAAA(AAAA(v6))))
            }
            Err(_) => {
                // Without this, `127.0.0.256` or `2001:db8::1::2` would become a CNAME to a
                // "hostname" of that spelling.
                if let Some(why) = not_an_address(t) {
                    return Err(format!(
                        "{t:?} looks like an IP address but is not one: {why}"
                    ));
                }
                let mut name = Name::from_ascii(t)
                    .map_err(|e| format!("{t:?} is neither an IP address nor a hostname: {e}"))?;
                name.set_fqdn(true);
                if host.replace(name).is_some() {
                    return Err("at most one hostname target (it is answered as a CNAME)".into());
                }
            }
        }
    }
    match host {
        Some(_) if !a.is_empty() || !aaaa.is_empty() => {
            Err("a hostname target cannot be mixed with IP addresses".into())
        }
        Some(h) => Ok(Target::Cname(Box::new(Record::from_rdata(
            Name::root(),
            0,
            RData::CNAME(CNAME(h)),
        )))),
        None => {
            // Most endpoints have one address; a pushed-to Vec would keep room for four
            // records (≈ 800 bytes unused per endpoint, 8 MB per 10,000-endpoint table).
            a.shrink_to_fit();
            aaaa.shrink_to_fit();
            Ok(Target::Addrs { a, aaaa })
        }
    }
}

/// Why a target that looks like an address — only digits and dots, or any `:` (no hostname
/// has one) — does not parse as one. `None` if it does not look like an address (a hostname).
fn not_an_address(t: &str) -> Option<String> {
    if t.contains(':') {
        if t.starts_with('[') || t.ends_with(']') {
            return Some("write IPv6 addresses without brackets".into());
        }
        if t.contains('%') {
            return Some("a zone index (%…) has no meaning in an answer".into());
        }
        if t.matches("::").count() > 1 {
            return Some("\"::\" may appear only once".into());
        }
        if let Some(g) = t.split(':').find(|g| {
            g.len() > 4 && !g.contains('.') || !g.chars().all(|c| c.is_ascii_hexdigit() || c == '.')
        }) {
            return Some(format!("group {g:?} is not 1–4 hexadecimal digits"));
        }
        let groups = t.split(':').filter(|g| !g.is_empty()).count();
        if !t.contains("::") && groups != 8 {
            return Some(format!(
                "{groups} groups; an IPv6 address has 8 (or uses \"::\")"
            ));
        }
        return Some("not a valid IPv6 address".into());
    }
    if t.is_empty() || !t.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return None;
    }
    let parts: Vec<&str> = t.split('.').collect();
    if parts.len() != 4 {
        return Some(format!("{} parts; an IPv4 address has 4", parts.len()));
    }
    for p in parts {
        if p.is_empty() {
            return Some("an empty part".into());
        }
        if p.len() > 1 && p.starts_with('0') {
            return Some(format!("{p:?} has a leading zero (octal to some parsers)"));
        }
        if p.parse::<u32>().map_or(true, |n| n > 255) {
            return Some(format!("{p} is above 255"));
        }
    }
    Some("not a valid IPv4 address".into())
}

/// Parses a geo code: WORLD, a continent, a country, or CC-SUB; `country:XX` disambiguates a
/// country whose code is also a continent's (AS is Asia; `country:AS` is American Samoa).
fn parse_geo(s: &str) -> Option<GeoCode> {
    let u = s.trim().to_ascii_uppercase();
    if u == "WORLD" {
        return Some(GeoCode::World);
    }
    if let Some(c) = u.strip_prefix("COUNTRY:") {
        return (c.len() == 2 && c.bytes().all(|b| b.is_ascii_alphabetic()))
            .then(|| Code::new(c).map(GeoCode::Country))
            .flatten();
    }
    if let Some(c) = u.strip_prefix("CONTINENT:") {
        return CONTINENTS
            .contains(&c)
            .then(|| Code::new(c).map(GeoCode::Continent))
            .flatten();
    }
    if let Some((c, sub)) = u.split_once('-') {
        let ok = c.len() == 2
            && c.bytes().all(|b| b.is_ascii_alphabetic())
            && (1..=3).contains(&sub.len());
        return ok
            .then(|| Some(GeoCode::Subdivision(Code::new(c)?, Code::new(sub)?)))
            .flatten();
    }
    if u.len() == 2 && u.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Code::new(&u).map(|c| {
            if CONTINENTS.contains(&u.as_str()) {
                GeoCode::Continent(c)
            } else {
                GeoCode::Country(c)
            }
        });
    }
    None
}

/// Fills each profile's `can_answer` (IPv4, IPv6, hostname) through nested references.
pub fn compute_capabilities(profiles: &mut [Profile]) {
    for _ in 0..=MAX_DEPTH {
        let snapshot: Vec<[bool; 3]> = profiles.iter().map(|p| p.can_answer).collect();
        for p in profiles.iter_mut() {
            let mut can = [false; 3];
            for e in &p.endpoints {
                match &e.target {
                    Target::Addrs { a, aaaa } => {
                        can[0] |= !a.is_empty();
                        can[1] |= !aaaa.is_empty();
                    }
                    Target::Cname(_) => can = [true; 3],
                    Target::Nested(c) => {
                        for (k, v) in can.iter_mut().enumerate() {
                            *v |= snapshot.get(*c).is_some_and(|s| s[k]);
                        }
                    }
                }
            }
            p.can_answer = can;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geo_codes_parse() {
        assert_eq!(parse_geo("world"), Some(GeoCode::World));
        assert!(matches!(parse_geo("EU"), Some(GeoCode::Continent(_))));
        assert!(matches!(parse_geo("de"), Some(GeoCode::Country(_))));
        assert!(matches!(parse_geo("country:AS"), Some(GeoCode::Country(_))));
        assert!(matches!(parse_geo("US-CA"), Some(GeoCode::Subdivision(..))));
        assert_eq!(parse_geo("Europe"), None);
        assert_eq!(parse_geo("continent:XX"), None);
    }

    #[test]
    fn targets_are_addresses_or_one_hostname() {
        assert!(matches!(
            parse_targets(&["192.0.2.1".into(), "2001:db8::1".into()]),
            Ok(Target::Addrs { .. })
        ));
        assert!(matches!(
            parse_targets(&["lb.example.net".into()]),
            Ok(Target::Cname(_))
        ));
        assert!(parse_targets(&["lb.example.net".into(), "192.0.2.1".into()]).is_err());
        assert!(parse_targets(&["a.example".into(), "b.example".into()]).is_err());
    }

    #[test]
    fn address_lookalikes_are_refused_with_the_reason() {
        for (t, why) in [
            ("127.0.0.256", "256 is above 255"),
            ("127.0.0", "3 parts; an IPv4 address has 4"),
            ("127.0.0.1.", "5 parts; an IPv4 address has 4"),
            (
                "10.0.0.01",
                "\"01\" has a leading zero (octal to some parsers)",
            ),
            ("1..2.3", "an empty part"),
            ("2001:db8::1::2", "\"::\" may appear only once"),
            (
                "2001:db8:0:0:0:0:1",
                "7 groups; an IPv6 address has 8 (or uses \"::\")",
            ),
            ("2001:db8::g", "group \"g\" is not 1–4 hexadecimal digits"),
            ("[2001:db8::1]", "write IPv6 addresses without brackets"),
            (
                "fe80::1%eth0",
                "a zone index (%…) has no meaning in an answer",
            ),
            (
                "lb.example.net:8883",
                "group \"lb.example.net\" is not 1–4 hexadecimal digits",
            ),
        ] {
            let e = parse_targets(&[t.into()]).err().unwrap_or_default();
            assert_eq!(
                e,
                format!("{t:?} looks like an IP address but is not one: {why}"),
                "{t}"
            );
        }
        // Hostnames with digits are still hostnames.
        for t in ["1e100.net", "lb-1.example.net", "123.example"] {
            assert!(
                matches!(parse_targets(&[t.into()]), Ok(Target::Cname(_))),
                "{t}"
            );
        }
    }
}

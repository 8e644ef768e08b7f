//! The serving state: everything a query reads, built off the hot path and swapped whole.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::base::{ConfigError, ConfigErrors};
use crate::config::Config;
use crate::geo::Catalogue;
use crate::locate::{LocatedBy, Location, Placement};
use crate::routing::{Client, profile};
use crate::wire::ClientSubnet;
use crate::zone::{self};

use crate::locate::Locator;
use crate::routing::RoutingTable;
use crate::zone::ZoneSet;

/// Zones, profiles and the GeoIP databases of one configuration generation.
#[derive(Debug, Default)]
pub struct State {
    /// Unique per built state ([`next_generation`]): cached answers of an
    /// earlier state are never served.
    pub generation: u64,
    /// Static zones.
    pub zones: ZoneSet,
    /// Traffic profiles.
    pub routing: RoutingTable,
    /// GeoIP lookups.
    pub locator: Arc<Locator>,
    /// Sources allowed to ask `_why.<name>` TXT.
    pub why_acl: Vec<ipnet::IpNet>,
    /// Fraction of queries logged.
    pub query_log_sample: f64,
}

impl State {
    /// Where routing should think the client is: [`Self::locate_client_traced`] without
    /// the trace.
    pub fn locate_client(&self, ecs: Option<ClientSubnet>, src: SocketAddr) -> Client {
        self.locate_client_traced(ecs, src).0
    }

    /// The City-database network of the resolver (query source) address `src`, from the
    /// per-worker cache of resolver locations: the routed-answer cache's key when the query has
    /// no usable ECS, or an ECS subnet without location.
    pub fn resolver_network(&self, src: IpAddr) -> (IpAddr, u8) {
        let loc = resolver_location(self, src);
        crate::base::cut(loc.addr.unwrap_or(src), loc.prefix_len)
    }

    /// The client-location fallback chain:
    ///
    /// 1. the ECS address, when the resolver sent one with a non-zero source prefix (RFC 7871
    ///    §7.1.2) and the City database locates it;
    /// 2. else the resolver's own (query source) address, if the database locates it — when an
    ///    ECS subnet has no location the client is most likely near its resolver (ISP resolvers
    ///    are), which beats ordering by our probe RTT, a property of *this server's* position;
    /// 3. else nowhere: each method's location-free order decides (`performance`: profile order).
    ///
    /// On step 2 after an unlocatable ECS subnet, the location (coordinates, country, ASN) is the
    /// resolver's, but the client's *address* and *network* stay the ECS ones: subnet ranges,
    /// sticky hashes, drill scopes and measured client networks still match the client, and the
    /// ECS scope is the width of the database network the ECS address fell in (no location
    /// anywhere in it). That scope is not 0: another client subnet, outside that network, may well
    /// be located and answered differently — scope 0 would let the resolver reuse this answer for
    /// it.
    pub fn locate_client_traced(
        &self,
        ecs: Option<ClientSubnet>,
        src: SocketAddr,
    ) -> (Client, Placement) {
        let state = self;
        let subdivision = state.routing.wants_subdivision;
        let ecs_source = ecs.map(|e| e.source_prefix);
        let client = |loc| Client { loc, ecs_source };
        let ecs_addr = ecs.filter(|e| e.source_prefix > 0).map(|e| e.addr);
        let mut ecs_unlocated = false;
        let mut own = None;
        if let Some(addr) = ecs_addr {
            let loc = state.locator.locate(addr, subdivision);
            if loc.is_known() {
                let placed = Placement {
                    by: LocatedBy::Ecs,
                    from: loc.addr,
                    ecs_unlocated: false,
                };
                return (client(loc), placed);
            }
            ecs_unlocated = true;
            own = Some(loc);
        }
        let resolver = resolver_location(state, src.ip());
        // The client's own address and network: the ECS ones when an ECS subnet was given.
        let own = own.unwrap_or(resolver);
        if resolver.is_known() {
            let loc = Location {
                addr: own.addr,
                prefix_len: own.prefix_len,
                ..resolver
            };
            let placed = Placement {
                by: LocatedBy::Resolver,
                from: resolver.addr,
                ecs_unlocated,
            };
            return (client(loc), placed);
        }
        let placed = Placement {
            by: LocatedBy::None,
            from: None,
            ecs_unlocated,
        };
        (client(own), placed)
    }
}

/// A `*.toml` in the zones directory is the profile file of the zone file with the same stem
/// (`x.toml` beside `x.zone`). One without its zone file would never be read, and the names it
/// steers would answer NXDOMAIN with no word why: an error naming the file (and the zone files
/// there are, since the usual cause is a typo or a zone file named differently).
fn unpaired_profile_files(config: &Config, zones: &[zone::Zone], errors: &mut Vec<ConfigError>) {
    let Ok(entries) = std::fs::read_dir(&config.zones_dir) else {
        return;
    };
    let mut stray: Vec<std::path::PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .filter(|p| !zones.iter().any(|z| z.file.with_extension("toml") == *p))
        .collect();
    stray.sort();
    for path in stray {
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let present: Vec<String> = zones
            .iter()
            .filter_map(|z| z.file.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        errors.push(ConfigError::file(
            &path,
            format!(
                "no zone file {stem}.zone for profile file {stem}.toml (profiles of zone Z go in \
                 Z.toml beside Z.zone; zone files here: {})",
                present.join(", ")
            ),
        ));
    }
}

static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// Per worker: the last located resolver addresses of a state generation. A resolver sends
    /// queries for many client networks from a few addresses, so when an ECS subnet has no
    /// location (the fallback to the resolver's place), the same few lookups repeat; each
    /// costs a GeoIP tree walk and record decode (≈ 5,000 instructions).
    static RESOLVERS: std::cell::RefCell<[Option<(u64, IpAddr, Location)>; 16]> =
        const { std::cell::RefCell::new([None; 16]) };
}

/// The resolver's location, from the per-worker cache when it is of this state generation.
fn resolver_location(state: &State, addr: IpAddr) -> Location {
    let slot = match addr {
        IpAddr::V4(a) => u32::from(a) as usize,
        IpAddr::V6(a) => (u128::from(a) >> 64) as usize ^ (u128::from(a) as usize),
    } % 16;
    // Generation 0 is a hand-built state (tests): never cached, it is not unique.
    if state.generation == 0 {
        return state.locator.locate(addr, state.routing.wants_subdivision);
    }
    let hit = RESOLVERS.with(|c| match c.borrow()[slot] {
        Some((g, a, loc)) if g == state.generation && a == addr => Some(loc),
        _ => None,
    });
    hit.unwrap_or_else(|| {
        let loc = state.locator.locate(addr, state.routing.wants_subdivision);
        RESOLVERS.with(|c| c.borrow_mut()[slot] = Some((state.generation, addr, loc)));
        loc
    })
}

/// A number unique to one serving state (taken when the state is built), so entries of an
/// earlier state are never served after a reload — even if the new state happens to be
/// allocated at the old one's address.
pub fn next_generation() -> u64 {
    NEXT_GENERATION.fetch_add(1, Ordering::Relaxed)
}

/// Builds the serving state from a validated configuration (blocking file I/O).
pub fn build(config: &Config) -> Result<State, ConfigErrors> {
    let mut errors = Vec::new();
    let catalogue = Catalogue::load(config.regions_file.as_deref())
        .map_err(|e| config.blame_all("routing.regions", e))?;
    let locator = match Locator::open(config.geoip_city.as_deref(), config.geoip_asn.as_deref()) {
        Ok(l) => l,
        Err(e) => {
            for e in e.0 {
                let field = if config.geoip_city.as_deref() == Some(e.file.as_path()) {
                    "geoip.city"
                } else {
                    "geoip.asn"
                };
                errors.push(config.blame(field, e));
            }
            Locator::default()
        }
    };
    let zones = zone::load_dir(&config.zones_dir).map_err(|e| {
        // Only the directory-level errors (missing, empty) are about the setting; errors
        // inside a zone file keep their own file and line.
        ConfigErrors(
            e.0.into_iter()
                .map(|e| {
                    if e.file == config.zones_dir {
                        config.blame("zones.directory", e)
                    } else {
                        e
                    }
                })
                .collect(),
        )
    });
    // Zone errors are reported with the GeoIP ones; profiles need their zones, so stop there.
    let mut zones = match zones {
        Ok(z) => z,
        Err(e) => {
            errors.extend(e.0);
            return Err(ConfigErrors(errors).in_file_order());
        }
    };
    unpaired_profile_files(config, &zones, &mut errors);
    let mut profiles = Vec::new();
    for z in &zones {
        let path = z.file.with_extension("toml");
        // No profile file: a static zone. Anything else at that name must be a readable,
        // non-empty profile file: a FIFO, a dangling symlink or an empty file is an error, not
        // a zone whose steered names silently turn into NXDOMAIN.
        if std::fs::symlink_metadata(&path).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
        {
            continue;
        }
        let text =
            match crate::base::file::read_regular_text(&path, crate::base::file::MAX_PROFILE_BYTES)
            {
                Ok(t) => t,
                Err(e) => {
                    errors.push(ConfigError::file(
                        &path,
                        format!("cannot read profiles: {e}"),
                    ));
                    continue;
                }
            };
        match profile::load_profiles(z, &path, &text, &catalogue, profiles.len()) {
            Ok(p) if p.is_empty() => errors.push(ConfigError::file(
                &path,
                "no [[profile]] in this file (remove the file if the zone has no steered names)",
            )),
            Ok(mut p) => profiles.append(&mut p),
            Err(mut e) => errors.append(&mut e.0),
        }
    }
    profile::compute_capabilities(&mut profiles);
    // A profile's name exists in the zone that answers it (the longest apex, as queries are
    // matched): a wildcard above it must not answer names below it (RFC 4592 closest encloser).
    for p in &profiles {
        if let Some(z) = zones
            .iter_mut()
            .filter(|z| crate::wire::wire_is_subdomain(&p.owner_wire, &z.origin_wire))
            .max_by_key(|z| z.origin_wire.len())
        {
            z.add_steered_name(&p.owner_wire);
        }
    }
    let resolved = match config.resolve(&catalogue) {
        Ok(r) => Some(r),
        Err(mut e) => {
            errors.append(&mut e.0);
            None
        }
    };
    let Some(resolved) = resolved.filter(|_| errors.is_empty()) else {
        return Err(ConfigErrors(errors).in_file_order());
    };
    Ok(State {
        generation: next_generation(),
        zones: ZoneSet::new(zones),
        routing: RoutingTable::new(profiles, resolved.model, resolved.measured),
        locator: Arc::new(locator),
        why_acl: config.why_acl.clone(),
        query_log_sample: config.query_log_sample,
    })
}

//! The serving state: everything a query reads, built off the hot path and swapped whole.

use std::sync::Arc;

use crate::locate::Locator;
use crate::routing::RoutingTable;
use crate::zone::ZoneSet;

/// Zones, profiles and the GeoIP databases of one configuration generation.
#[derive(Debug, Default)]
pub struct State {
    /// Unique per built state ([`crate::dns::cache::next_generation`]): cached answers of an
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

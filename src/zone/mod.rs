//! Static zone data: RFC 1035 master files loaded into an immutable, query-ready form.
//!
//! Loading is the slow part and may fail (and then names file, line and record); lookup is
//! the fast part and cannot fail. Names are keyed by their lower-cased wire form, so a query
//! name can be looked up — and each of its ancestors, which are suffixes of the same byte
//! string — without allocating.
//!
//! Supported: any record type hickory parses, empty non-terminals, in-zone CNAME chains,
//! delegations (referrals with glue), additional-section addresses for NS/MX/SRV targets.
//! Not supported (rejected at load with a clear error): wildcard owners, SOA below the apex.

mod load;

pub use load::{load_dir, load_zone_text};

use std::path::PathBuf;

use crate::wire::{QName, wire_is_subdomain};
use hickory_server::proto::rr::{Name, Record, RecordType};

/// One RRset as served, with everything an answer needs precomputed.
#[derive(Debug, Clone)]
pub struct RrSet {
    /// Record type of every record in the set.
    pub rtype: RecordType,
    /// The records (same owner, type, class IN; TTLs as written in the file).
    pub records: Vec<Record>,
    /// Addresses of in-zone targets (NS, MX, SRV): the additional section, RFC 1035 §4.3.2.
    pub additional: Vec<Record>,
    /// For CNAME: the target's lower-cased wire name, so chains are followed without allocating.
    pub cname_target: Option<Box<[u8]>>,
}

/// Everything at one owner name. Empty for empty non-terminals.
#[derive(Debug, Clone, Default)]
pub struct Node {
    /// RRsets at this name, in file order of first appearance.
    pub rrsets: Vec<RrSet>,
    /// NS records below the apex make this name a zone cut: we are not authoritative below it.
    pub cut: bool,
}

impl Node {
    /// The RRset of a type, if present.
    pub fn get(&self, rtype: RecordType) -> Option<&RrSet> {
        self.rrsets.iter().find(|s| s.rtype == rtype)
    }
}

/// One zone, immutable once loaded.
#[derive(Debug, Clone)]
pub struct Zone {
    /// Zone apex.
    pub origin: Name,
    /// Apex as lower-cased wire bytes.
    pub origin_wire: Box<[u8]>,
    /// Number of labels of the apex (root = 0).
    pub origin_labels: usize,
    /// The SOA as it appears in answers to `SOA` queries.
    pub soa: Record,
    /// The SOA as it appears in negative answers: TTL = min(SOA TTL, SOA MINIMUM), RFC 2308 §5.
    pub negative_soa: Record,
    /// `negative_soa` pre-encoded against the apex in the question (no per-query compression).
    pub negative_soa_wire: Option<crate::wire::ApexRr>,
    /// Names by lower-cased wire form, including empty non-terminals.
    pub nodes: crate::base::FastMap<Box<[u8]>, Node>,
    /// Whether any node is a zone cut (skips the ancestor walk for the common case).
    pub has_cuts: bool,
    /// File it came from.
    pub file: PathBuf,
    /// Queries answered from this zone since it was loaded.
    pub queries: std::sync::Arc<crate::base::Counter>,
}

/// The RRsets of an answer or CNAME chain, inline up to four (no allocation per query).
pub type RrSets<'z> = smallvec::SmallVec<[&'z RrSet; 4]>;

/// The outcome of looking a name up in a zone. Borrowed from the zone: nothing is copied.
#[derive(Debug)]
pub enum Lookup<'z> {
    /// Data found: the answer RRsets in order. The first is owned by the query name; the rest
    /// (a CNAME chain) by their records' own names.
    Answer(RrSets<'z>),
    /// CNAME chain that ended in NXDOMAIN or NODATA inside the zone (RFC 6604 rcode rules).
    Partial {
        /// The CNAME RRsets followed.
        chain: RrSets<'z>,
        /// Whether the final target does not exist at all.
        nxdomain: bool,
    },
    /// The name exists but has no data of that type (includes empty non-terminals).
    NoData,
    /// The name does not exist.
    NxDomain,
    /// The name is at or below a delegation: referral with the cut's NS and glue.
    Referral(&'z RrSet),
    /// The name exists (ANY queries are answered per RFC 8482, never with the whole node).
    Exists,
}

/// Longest CNAME chain followed inside a zone before answering with what we have.
const MAX_CNAME_CHAIN: usize = 8;

impl Zone {
    /// Looks up `qname` (which must be at or below the apex) for `qtype`.
    pub fn lookup(&self, qname: &QName, qtype: RecordType) -> Lookup<'_> {
        if let Some(cut) = self.find_cut(qname, qtype) {
            return Lookup::Referral(cut);
        }
        let Some(node) = self.nodes.get(qname.lower()) else {
            return Lookup::NxDomain;
        };
        if qtype == RecordType::ANY {
            return if node.rrsets.is_empty() {
                Lookup::NoData
            } else {
                Lookup::Exists
            };
        }
        if let Some(set) = node.get(qtype) {
            return Lookup::Answer(smallvec::smallvec![set]);
        }
        let Some(cname) = node.get(RecordType::CNAME) else {
            return Lookup::NoData;
        };
        self.chase(cname, qtype)
    }

    /// Follows a CNAME chain inside this zone.
    fn chase<'z>(&'z self, first: &'z RrSet, qtype: RecordType) -> Lookup<'z> {
        let mut chain: RrSets<'z> = smallvec::smallvec![first];
        let mut current = first;
        for _ in 0..MAX_CNAME_CHAIN {
            let Some(target) = current.cname_target.as_deref() else {
                break;
            };
            if !wire_is_subdomain(target, &self.origin_wire) || self.target_below_cut(target) {
                break; // out of zone or delegated: the resolver follows it
            }
            let Some(node) = self.nodes.get(target) else {
                return Lookup::Partial {
                    chain,
                    nxdomain: true,
                };
            };
            if let Some(set) = node.get(qtype) {
                chain.push(set);
                return Lookup::Answer(chain);
            }
            match node.get(RecordType::CNAME) {
                Some(next) if !chain.iter().any(|s| std::ptr::eq(*s, next)) => {
                    chain.push(next);
                    current = next;
                }
                Some(_) => break, // loop
                None => {
                    return Lookup::Partial {
                        chain,
                        nxdomain: false,
                    };
                }
            }
        }
        Lookup::Answer(chain)
    }

    /// The topmost zone cut at or above `qname` (below the apex), unless the query is a DS
    /// query at the cut itself, which the parent side answers (RFC 4035 §3.1.4.1).
    fn find_cut(&self, qname: &QName, qtype: RecordType) -> Option<&RrSet> {
        if !self.has_cuts {
            return None;
        }
        let labels = qname.label_count();
        // Suffixes from just below the apex down to the full name.
        for depth in (self.origin_labels + 1)..=labels {
            let suffix = qname.suffix(labels - depth);
            if let Some(node) = self.nodes.get(suffix)
                && node.cut
            {
                if depth == labels && qtype == RecordType::DS {
                    return None;
                }
                return node.get(RecordType::NS);
            }
        }
        None
    }

    fn target_below_cut(&self, target: &[u8]) -> bool {
        if !self.has_cuts {
            return false;
        }
        let mut off = 0;
        while off < target.len() && target[off] != 0 {
            if self.nodes.get(&target[off..]).is_some_and(|n| n.cut) {
                return true;
            }
            off += 1 + target[off] as usize;
        }
        false
    }
}

/// All loaded zones, found by the longest matching apex.
#[derive(Debug, Clone, Default)]
pub struct ZoneSet {
    zones: crate::base::FastMap<Box<[u8]>, Zone>,
}

impl ZoneSet {
    /// Builds the set; apexes are unique (checked at load).
    pub fn new(zones: Vec<Zone>) -> Self {
        Self {
            zones: zones
                .into_iter()
                .map(|z| (z.origin_wire.clone(), z))
                .collect(),
        }
    }

    /// The zone with the longest apex that `qname` is at or below.
    pub fn find(&self, qname: &QName) -> Option<&Zone> {
        let labels = qname.label_count();
        (0..=labels).find_map(|skip| self.zones.get(qname.suffix(skip)))
    }

    /// Every zone, for status output and tests.
    pub fn iter(&self) -> impl Iterator<Item = &Zone> {
        self.zones.values()
    }

    /// Number of zones.
    pub fn len(&self) -> usize {
        self.zones.len()
    }

    /// Whether no zone is loaded.
    pub fn is_empty(&self) -> bool {
        self.zones.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::wire_lower;

    #[test]
    fn subdomain_respects_label_boundaries() {
        let apex = wire_lower(&Name::from_ascii("example.test.").unwrap());
        let www = wire_lower(&Name::from_ascii("WWW.Example.test.").unwrap());
        let evil = wire_lower(&Name::from_ascii("evilexample.test.").unwrap());
        assert!(wire_is_subdomain(&www, &apex));
        assert!(wire_is_subdomain(&apex, &apex));
        assert!(!wire_is_subdomain(&evil, &apex));
    }
}

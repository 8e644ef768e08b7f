//! Static zone data: RFC 1035 master files loaded into an immutable, query-ready form.
//!
//! Loading is the slow part and may fail (and then names file, line and record); lookup is
//! the fast part and cannot fail. Names are keyed by their lower-cased wire form, so a query
//! name can be looked up — and each of its ancestors, which are suffixes of the same byte
//! string — without allocating.
//!
//! Supported: any record type hickory parses, empty non-terminals, in-zone CNAME chains,
//! delegations (referrals with glue), additional-section addresses for NS/MX/SRV targets, and
//! wildcards (RFC 4592): `*.x` answers a name below `x` that does not exist when `x` is that
//! name's closest encloser (its nearest existing ancestor), owned by the query name.
//! Rejected at load with a clear error: SOA below the apex, SOA or NS at a wildcard owner, `*`
//! as any label but the first.

mod load;

pub use load::{load_dir, load_zone_text};

use std::path::PathBuf;

use crate::wire::{QName, wire_is_subdomain};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};

/// One RRset as served, with everything an answer needs precomputed.
#[derive(Debug, Clone)]
pub struct RrSet {
    /// Record type of every record in the set.
    pub rtype: RecordType,
    /// The records (same owner, type, class IN; TTLs as written in the file). A boxed slice,
    /// not a `Vec`: no spare capacity and one word less, times every RRset of a big zone.
    pub records: Box<[Record]>,
    /// Addresses of in-zone targets (NS, MX, SRV): the additional section, RFC 1035 §4.3.2.
    pub additional: Box<[Record]>,
    /// For CNAME: the target's lower-cased wire name, so chains are followed without allocating.
    pub cname_target: Option<Box<[u8]>>,
}

/// Everything at one owner name. Empty for empty non-terminals.
#[derive(Debug, Clone, Default)]
pub struct Node {
    /// RRsets at this name, in file order of first appearance (shrunk to fit once loaded:
    /// a `Vec` grows to four RRsets at its first push, most names own one).
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
    /// Whether any owner is a wildcard (skips the closest-encloser walk of NXDOMAIN answers).
    pub has_wildcards: bool,
    /// The parents of the wildcards (`x.` for `*.x.`), lower-cased wire names: a name below
    /// none of them can never be synthesized, so its NXDOMAIN skips the closest-encloser walk
    /// (in a zone with one wildcard, most NXDOMAINs are elsewhere).
    pub wildcard_parents: Box<[Box<[u8]>]>,
    /// File it came from.
    pub file: PathBuf,
    /// Queries answered from this zone since it was loaded.
    pub queries: std::sync::Arc<crate::base::Counter>,
}

/// One RRset of an answer or CNAME chain.
#[derive(Debug, Clone, Copy)]
pub struct Link<'z> {
    /// The RRset as stored in the zone.
    pub set: &'z RrSet,
    /// The owner to answer it at when that is not its records' own name: the CNAME target
    /// (the CNAME's RDATA name) of a chain link synthesized from a wildcard. The first link is
    /// always answered at the query name, so this is `None` there.
    pub owner: Option<&'z Name>,
}

impl<'z> Link<'z> {
    fn own(set: &'z RrSet) -> Self {
        Self { set, owner: None }
    }
}

/// The RRsets of an answer or CNAME chain, inline up to four (no allocation per query).
pub type RrSets<'z> = smallvec::SmallVec<[Link<'z>; 4]>;

/// The outcome of looking a name up in a zone. Borrowed from the zone: nothing is copied.
#[derive(Debug)]
pub enum Lookup<'z> {
    /// Data found: the answer RRsets in order. The first is owned by the query name (also
    /// when synthesized from a wildcard); the rest (a CNAME chain) by their records' own names
    /// or, synthesized, by [`Link::owner`].
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
    ///
    /// A name that does not exist is answered from the wildcard of its closest encloser, if
    /// there is one (RFC 4592 §3.3.1). Referrals are found first, so a name below a zone cut
    /// is never synthesized; existing names, including empty non-terminals, are never
    /// synthesized either (they are the closest encloser of their own name).
    pub fn lookup(&self, qname: &QName, qtype: RecordType) -> Lookup<'_> {
        if let Some(cut) = self.find_cut(qname, qtype) {
            return Lookup::Referral(cut);
        }
        let node = match self.nodes.get(qname.lower()) {
            Some(node) => node,
            None => match self.wildcard_for(qname.lower()) {
                Some(source) => source,
                None => return Lookup::NxDomain,
            },
        };
        if qtype == RecordType::ANY {
            return if node.rrsets.is_empty() {
                Lookup::NoData
            } else {
                Lookup::Exists
            };
        }
        if let Some(set) = node.get(qtype) {
            return Lookup::Answer(smallvec::smallvec![Link::own(set)]);
        }
        let Some(cname) = node.get(RecordType::CNAME) else {
            return Lookup::NoData;
        };
        self.chase(cname, qtype)
    }

    /// The source of synthesis for `name` (lower-cased wire form, at or below the apex, not a
    /// node of the zone): the wildcard `*.<closest encloser>`, if it exists.
    ///
    /// The closest encloser is the nearest ancestor that exists; every ancestor of an owner
    /// exists (empty non-terminals are nodes), so the walk stops at the apex at the latest.
    /// Only that one wildcard is a candidate: a wildcard higher up is blocked by the existing
    /// name in between (RFC 4592 §2.2.1), which makes the name NXDOMAIN.
    fn wildcard_for(&self, name: &[u8]) -> Option<&Node> {
        if !self.has_wildcards
            || !self
                .wildcard_parents
                .iter()
                .any(|p| wire_is_subdomain(name, p))
        {
            return None;
        }
        let mut off = 0;
        while off < name.len() && name[off] != 0 {
            off += 1 + usize::from(name[off]);
            let ancestor = name.get(off..)?;
            if ancestor.len() < self.origin_wire.len() {
                return None;
            }
            if self.nodes.contains_key(ancestor) {
                // `*.<ancestor>` in a stack buffer: wire names are at most 255 bytes.
                let mut buf = [0u8; 2 + 255];
                let star = buf.get_mut(..2 + ancestor.len())?;
                star[0] = 1;
                star[1] = b'*';
                star[2..].copy_from_slice(ancestor);
                return self.nodes.get(&*star);
            }
        }
        None
    }

    /// Follows a CNAME chain inside this zone. Targets that do not exist are synthesized from
    /// a wildcard like query names are; such a link is answered at the target name.
    fn chase<'z>(&'z self, first: &'z RrSet, qtype: RecordType) -> Lookup<'z> {
        let mut chain: RrSets<'z> = smallvec::smallvec![Link::own(first)];
        let mut current = first;
        for _ in 0..MAX_CNAME_CHAIN {
            let Some(target) = current.cname_target.as_deref() else {
                break;
            };
            if !wire_is_subdomain(target, &self.origin_wire) || self.target_below_cut(target) {
                break; // out of zone or delegated: the resolver follows it
            }
            let (node, owner) = match self.nodes.get(target) {
                Some(node) => (node, None),
                None => match self.wildcard_for(target) {
                    Some(source) => (source, cname_target_name(current)),
                    None => {
                        return Lookup::Partial {
                            chain,
                            nxdomain: true,
                        };
                    }
                },
            };
            if let Some(set) = node.get(qtype) {
                chain.push(Link { set, owner });
                return Lookup::Answer(chain);
            }
            match node.get(RecordType::CNAME) {
                // A wildcard CNAME met again leads to the same target again: a loop too.
                Some(next) if !chain.iter().any(|l| std::ptr::eq(l.set, next)) => {
                    chain.push(Link { set: next, owner });
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

    /// Makes `owner` (lower-cased wire form, at or below the apex) and its ancestors exist
    /// without data, for a name answered by a traffic profile rather than by zone records: it
    /// is then a closest encloser like any other owner, so a wildcard above it does not answer
    /// names below it (RFC 4592 §2.2.1), and its ancestors are empty non-terminals.
    pub fn add_steered_name(&mut self, owner: &[u8]) {
        if !wire_is_subdomain(owner, &self.origin_wire) {
            return;
        }
        let mut off = 0;
        while off < owner.len() && owner[off] != 0 {
            let Some(name) = owner.get(off..) else {
                return;
            };
            if name.len() <= self.origin_wire.len() {
                return;
            }
            self.nodes.entry(name.into()).or_default();
            off += 1 + usize::from(owner[off]);
        }
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

/// The target name of a CNAME RRset, as loaded.
fn cname_target_name(set: &RrSet) -> Option<&Name> {
    match set.records.first().map(|r| &r.data) {
        Some(RData::CNAME(c)) => Some(&c.0),
        _ => None,
    }
}

/// All loaded zones, found by the longest matching apex.
#[derive(Debug, Clone, Default)]
pub struct ZoneSet {
    zones: crate::base::FastMap<Box<[u8]>, Zone>,
    /// Labels of the longest apex: suffixes longer than that cannot be a zone.
    max_labels: usize,
}

impl ZoneSet {
    /// Builds the set; apexes are unique (checked at load).
    pub fn new(zones: Vec<Zone>) -> Self {
        Self {
            max_labels: zones.iter().map(|z| z.origin_labels).max().unwrap_or(0),
            zones: zones
                .into_iter()
                .map(|z| (z.origin_wire.clone(), z))
                .collect(),
        }
    }

    /// The zone with the longest apex that `qname` is at or below. Starts at the suffix as long
    /// as the longest apex (one hash lookup for a name below a single zone, instead of one per
    /// label).
    pub fn find(&self, qname: &QName) -> Option<&Zone> {
        let labels = qname.label_count();
        (labels.saturating_sub(self.max_labels)..=labels)
            .find_map(|skip| self.zones.get(qname.suffix(skip)))
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

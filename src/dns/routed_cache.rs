//! Per-worker cache of encoded *routed* answers: a routed answer at the cost of a static one.
//!
//! A routed decision depends on the client only through where it is (the City-database
//! network its address falls in, and — when an ECS subnet has no location — its resolver's
//! network) and through the leading bits of its address the decision reports
//! ([`crate::routing::Selection::bits`]: the ECS scope before the cap by the source prefix).
//! Everything else is the serving state and the health snapshot, which change rarely compared
//! to queries. So each worker keeps, per (state generation, health generation), the encoded
//! answer for a cell —
//!
//! > profile, query type, EDNS/DO, ECS family and source prefix, the client's database
//! > network, and the resolver's network when the location came from it —
//!
//! and answers the next query of that cell with a copy, patched like the static cache's (ID,
//! RD, CD, the question's spelling) plus the ECS option's address, which is the last bytes of
//! the message. A decision is kept only when it holds for the whole cell: not a die roll
//! (non-sticky `weighted`), and depending on no more address bits than the database network
//! has (`bits <= prefix`) — so subnet ranges, sticky hashes finer than the network, recovery
//! ramps, capacity spill, operator-measured client networks and drills scoped to part of a
//! network are decided per query, as before. A new health snapshot (any probe result, force,
//! vote or load change) or a reload starts an empty cache: the next query after a publish is
//! decided afresh. `tests/routed_cache.rs` resolves tens of thousands of clients through both
//! paths, across health and force changes, and requires identical bytes.
//!
//! Bounded like the static cache: at most [`MAX_ENTRIES`] per worker, emptied when full; answers
//! over [`super::cache::MAX_ANSWER`] bytes or truncated are not kept.

use std::cell::RefCell;
use std::net::IpAddr;

use crate::routing::Small;

/// Cells kept per worker thread before the cache is emptied (≈ 200 bytes each).
pub const MAX_ENTRIES: usize = 16_384;

/// What a routed answer depends on besides the two generations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    /// Profile index in the routing table.
    pub profile: u32,
    /// A, AAAA or CNAME.
    pub qtype: u16,
    /// 0 without EDNS, 1 with EDNS and DO clear, 2 with DO set.
    pub edns: u8,
    /// The ECS option's family and source prefix (`None`: no option).
    pub ecs: Option<(u16, u8)>,
    /// The client's address (ECS address, else the query source) cut to the City database
    /// network it falls in, and that network's length.
    pub net: (IpAddr, u8),
    /// The resolver's network, when an ECS subnet had no location and the resolver's was used.
    pub resolver: Option<(IpAddr, u8)>,
}

/// What a hit needs besides the bytes: the counters a fresh answer bumps, and the ECS scope.
#[derive(Clone)]
pub struct Hit {
    /// ECS scope the answer carries.
    pub ecs_scope: u8,
    /// The decision failed open.
    pub failed_open: bool,
    /// Endpoints answered, as (profile, endpoint) indices.
    pub picked: Small<(u32, u32)>,
}

struct Entry {
    bytes: Box<[u8]>,
    question_len: usize,
    hit: Hit,
}

struct Cache {
    generations: (u64, u64),
    /// Hashed before each key. Unlike the zone-derived keys of the other maps on the answer
    /// path, these come from the network (client addresses): a per-worker random seed keeps a
    /// sender from choosing addresses whose FxHash values collide.
    seed: u64,
    map: crate::base::FastMap<(u64, Key), Entry>,
}

impl Default for Cache {
    fn default() -> Self {
        Self {
            generations: (0, 0),
            seed: fastrand::u64(..),
            map: Default::default(),
        }
    }
}

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(Cache::default());
}

/// The query-specific parts a cached answer is patched with.
pub struct Patch<'a> {
    /// Message ID.
    pub id: u16,
    /// RD bit.
    pub rd: bool,
    /// CD bit.
    pub cd: bool,
    /// The question section as the client spelled it.
    pub question: &'a [u8],
    /// The ECS option's address bytes (source prefix rounded up to bytes), if any.
    pub ecs_addr: &'a [u8],
}

/// Writes the cached answer of `key` into `out`, patched, and returns what the answer counts;
/// `None` on a miss.
pub fn lookup(
    generations: (u64, u64),
    key: &Key,
    patch: &Patch<'_>,
    out: &mut Vec<u8>,
) -> Option<Hit> {
    CACHE.with_borrow_mut(|c| {
        if c.generations != generations {
            c.map.clear();
            c.generations = generations;
            return None;
        }
        let e = c.map.get(&(c.seed, *key))?;
        let end = crate::wire::HEADER_LEN + patch.question.len();
        if e.question_len != patch.question.len() || e.bytes.len() < end + patch.ecs_addr.len() {
            return None;
        }
        out.clear();
        out.extend_from_slice(&e.bytes);
        super::cache::patch_header(out, patch.id, patch.rd, patch.cd, patch.question);
        let tail = out.len() - patch.ecs_addr.len();
        out[tail..].copy_from_slice(patch.ecs_addr);
        Some(e.hit.clone())
    })
}

/// Keeps `answer` for `key` if it fits and was not truncated; the caller decides that the
/// decision holds for the whole cell.
pub fn insert(generations: (u64, u64), key: Key, question: &[u8], answer: &[u8], hit: Hit) {
    let truncated = answer.get(2).is_none_or(|b| b & 0x02 != 0);
    if answer.len() > super::cache::MAX_ANSWER || truncated {
        return;
    }
    CACHE.with_borrow_mut(|c| {
        if c.generations != generations {
            c.map.clear();
            c.generations = generations;
        }
        if c.map.len() >= MAX_ENTRIES {
            c.map.clear();
        }
        c.map.insert(
            (c.seed, key),
            Entry {
                bytes: answer.into(),
                question_len: question.len(),
                hit,
            },
        );
    });
}

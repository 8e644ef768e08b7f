//! Per-worker cache of encoded static answers.
//!
//! A static answer (a zone lookup, not a traffic profile) depends only on the serving state
//! and on the question — name (case aside), type, class — and on whether the query had EDNS
//! and with which DO bit (copied into our OPT, RFC 3225);
//! everything else that differs between two such queries is patched into a copy: the ID, the
//! RD and CD bits, and the question's bytes (the client's spelling of the name; every other
//! name in the answer points into it, at the same offsets). So the second query for a name
//! costs a hash lookup and a copy instead of a zone lookup and an encode — about a third of
//! the instructions of an encoded answer (`bench/instructions.sh`). Answers synthesized from a
//! wildcard (RFC 4592) are no exception: the key is the query name, not the wildcard, so two
//! names one wildcard matches have two entries, and the owner is that pointer to the question.
//!
//! What is *not* cached, so it can never be served stale or to the wrong client: answers at a
//! traffic profile's name and `_why` answers (client-dependent), queries with EDNS Client Subnet
//! (the echoed option differs per client), answers larger than 512 bytes or truncated or trimmed
//! to fit (they depend on the transport and the client's buffer size), and anything outside our
//! zones. The cache is thread-local (no lock, no sharing between workers) and is emptied when
//! the serving state changes (a reload): entries belong to one state generation. It holds at
//! most [`MAX_ENTRIES`] answers per worker and is emptied when full, so a flood of random names
//! costs what it costs without the cache, and memory stays bounded (≈ 1 MiB per worker).

use std::cell::RefCell;
use std::sync::Arc;

use crate::base::Counter;

/// Answers kept per worker thread before the cache is emptied.
pub const MAX_ENTRIES: usize = 4096;
/// Largest answer cached: one that fits the smallest UDP limit is the same for every limit.
pub const MAX_ANSWER: usize = 512;

struct Entry {
    /// The whole response as first encoded.
    bytes: Box<[u8]>,
    /// Length of the question section it was encoded with.
    question_len: usize,
    /// The zone's query counter (a hit is still a query of that zone).
    zone_queries: Arc<Counter>,
}

#[derive(Default)]
struct Cache {
    generation: u64,
    map: crate::base::FastMap<Box<[u8]>, Entry>,
}

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(Cache::default());
}

/// The cache key: lower-cased name, type, class, EDNS or not and its DO bit. Built in a stack
/// buffer.
pub struct Key {
    buf: [u8; 255 + 5],
    len: usize,
}

impl Key {
    /// Key of a question; `edns` is the query's DO bit, `None` without EDNS. DO is keyed rather
    /// than patched: an answer cached for a DO query must never reach a query without it, nor
    /// the other way round.
    pub fn new(lower_name: &[u8], qtype: u16, qclass: u16, edns: Option<bool>) -> Option<Self> {
        let n = lower_name.len();
        if n > 255 {
            return None;
        }
        let mut buf = [0u8; 260];
        buf[..n].copy_from_slice(lower_name);
        buf[n..n + 2].copy_from_slice(&qtype.to_be_bytes());
        buf[n + 2..n + 4].copy_from_slice(&qclass.to_be_bytes());
        buf[n + 4] = match edns {
            None => 0,
            Some(false) => 1,
            Some(true) => 2,
        };
        Some(Self { buf, len: n + 5 })
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Writes the cached answer for `key` into `out`, patched for this query; `false` on a miss.
pub fn lookup(
    generation: u64,
    key: &Key,
    id: u16,
    rd: bool,
    cd: bool,
    question: &[u8],
    out: &mut Vec<u8>,
) -> bool {
    CACHE.with_borrow_mut(|c| {
        if c.generation != generation {
            c.map.clear();
            c.generation = generation;
            return false;
        }
        let Some(e) = c.map.get(key.bytes()) else {
            return false;
        };
        let end = crate::wire::HEADER_LEN + question.len();
        if e.question_len != question.len() || e.bytes.len() < end {
            return false;
        }
        out.clear();
        out.extend_from_slice(&e.bytes);
        patch_header(out, id, rd, cd, question);
        e.zone_queries.inc();
        true
    })
}

/// Makes a cached answer this query's: its ID, RD and CD bits, and its spelling of the question
/// (same length: the caller checked).
pub(super) fn patch_header(out: &mut [u8], id: u16, rd: bool, cd: bool, question: &[u8]) {
    let end = crate::wire::HEADER_LEN + question.len();
    out[..2].copy_from_slice(&id.to_be_bytes());
    out[2] = (out[2] & !0x01) | u8::from(rd);
    out[3] = (out[3] & !0x10) | (u8::from(cd) << 4);
    out[crate::wire::HEADER_LEN..end].copy_from_slice(question);
}

/// Keeps `answer` (just encoded for a query with `question`) if it may be reused: at most
/// [`MAX_ANSWER`] bytes and not truncated. The caller decides that it is a static answer that
/// was encoded whole.
pub fn insert(
    generation: u64,
    key: &Key,
    question: &[u8],
    answer: &[u8],
    zone_queries: &Arc<Counter>,
) {
    let truncated = answer.get(2).is_none_or(|b| b & 0x02 != 0);
    if answer.len() > MAX_ANSWER || truncated {
        return;
    }
    CACHE.with_borrow_mut(|c| {
        if c.generation != generation {
            c.map.clear();
            c.generation = generation;
        }
        if c.map.len() >= MAX_ENTRIES {
            c.map.clear();
        }
        c.map.insert(
            key.bytes().into(),
            Entry {
                bytes: answer.into(),
                question_len: question.len(),
                zone_queries: zone_queries.clone(),
            },
        );
    });
}

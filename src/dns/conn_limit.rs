//! The TCP connection table: who holds a slot, and who gives one up when slots run short.
//!
//! The rule (also in the README's configuration reference):
//! - Below half of `max` open connections nobody is limited: one busy resolver (large public
//!   resolvers send from a few addresses, and rate limiting's slip sends clients to TCP on
//!   purpose) may open as many connections as it needs.
//! - Once more than half the slots are in use, a source (IPv4 address, IPv6 /64, since one host
//!   usually owns a whole /64) holding `per_source` connections gets a new one only by giving up
//!   its own quietest connection: one source cannot crowd out the rest.
//! - When every slot is in use, a new connection takes the slot of the quietest connection.
//! - "Quietest" = the longest time without progress (a query read in full or answers handed to
//!   the kernel): idle keep-alives and writers whose client stopped reading go first. A
//!   connection that made progress within [`MIN_QUIET`] is never evicted; if there is no other
//!   candidate, the new connection is closed instead, so a flood of new connections cannot cut
//!   active clients off mid-exchange.
//!
//! Consulted only when a connection is accepted or closed (a scan of at most `max` entries, only
//! when the table is under pressure), so a mutex-guarded map is the simple, adequate tool. Per
//! query a connection only stores a timestamp in an atomic ([`ConnSlot::progress`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// A connection that made progress more recently than this is not evicted. Long enough that a
/// client in the middle of an exchange (query sent, answer being read) is never cut off; short
/// enough that a client sending one query every few seconds to keep its slot loses it to a
/// newcomer.
pub const MIN_QUIET: Duration = Duration::from_secs(1);

/// Open TCP connections, counted overall and per source.
#[derive(Debug)]
pub struct ConnTable {
    max: usize,
    per_source: usize,
    min_quiet: Duration,
    epoch: Instant,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    conns: HashMap<u64, Entry>,
    by_source: HashMap<u128, usize>,
}

#[derive(Debug)]
struct Entry {
    source: u128,
    conn: Arc<Conn>,
}

/// What a connection shares with the table.
#[derive(Debug)]
struct Conn {
    /// Milliseconds since the table's epoch of the last progress.
    last_progress: AtomicU64,
    /// Cancelled when the table gives this connection's slot to another.
    evicted: CancellationToken,
}

/// Held while a connection is open; releases its slot when dropped.
#[derive(Debug)]
pub struct ConnSlot {
    table: Arc<ConnTable>,
    id: u64,
    conn: Arc<Conn>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Every slot is in use by connections that are all active.
    Full,
    /// The table is more than half full and this source holds its share, all active.
    SourceShare,
}

fn key(ip: IpAddr) -> u128 {
    match ip.to_canonical() {
        IpAddr::V4(a) => u128::from(u32::from(a)) | 1 << 127,
        IpAddr::V6(a) => u128::from(a) >> 64,
    }
}

impl ConnTable {
    /// A table of `max` slots (at least 1) with a per-source share of `per_source` once more
    /// than half are in use (0 = no share).
    pub fn new(max: usize, per_source: usize) -> Arc<Self> {
        Self::with_min_quiet(max, per_source, MIN_QUIET)
    }

    fn with_min_quiet(max: usize, per_source: usize, min_quiet: Duration) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(1),
            per_source,
            min_quiet,
            epoch: Instant::now(),
            inner: Mutex::new(Inner::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Admits a connection from `ip`, evicting the quietest eligible connection if the rule
    /// above asks for it; `Err` if the new connection must be closed instead.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnSlot, Refused> {
        let source = key(ip);
        let now = self.now_ms();
        let mut inner = self.lock();
        let open = inner.conns.len();
        let mine = inner.by_source.get(&source).copied().unwrap_or(0);
        let pressure = open * 2 > self.max;
        let scope = if pressure && self.per_source > 0 && mine >= self.per_source {
            Some(Refused::SourceShare)
        } else if open >= self.max {
            Some(Refused::Full)
        } else {
            None
        };
        if let Some(scope) = scope {
            let quiet_ms = u64::try_from(self.min_quiet.as_millis()).unwrap_or(u64::MAX);
            let victim = inner
                .conns
                .iter()
                .filter(|(_, e)| scope == Refused::Full || e.source == source)
                .map(|(&id, e)| (e.conn.last_progress.load(Ordering::Relaxed), id))
                .filter(|&(last, _)| now.saturating_sub(last) >= quiet_ms)
                .min();
            let Some((_, id)) = victim else {
                return Err(scope);
            };
            if let Some(e) = inner.remove(id) {
                e.conn.evicted.cancel();
            }
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let conn = Arc::new(Conn {
            last_progress: AtomicU64::new(now),
            evicted: CancellationToken::new(),
        });
        inner.conns.insert(
            id,
            Entry {
                source,
                conn: conn.clone(),
            },
        );
        *inner.by_source.entry(source).or_insert(0) += 1;
        Ok(ConnSlot {
            table: self.clone(),
            id,
            conn,
        })
    }

    /// Connections holding a slot.
    pub fn open(&self) -> usize {
        self.lock().conns.len()
    }

    /// Connections from `ip`'s source holding a slot.
    pub fn open_from(&self, ip: IpAddr) -> usize {
        self.lock().by_source.get(&key(ip)).copied().unwrap_or(0)
    }
}

impl Inner {
    fn remove(&mut self, id: u64) -> Option<Entry> {
        let e = self.conns.remove(&id)?;
        if let Some(n) = self.by_source.get_mut(&e.source) {
            *n -= 1;
            if *n == 0 {
                self.by_source.remove(&e.source);
            }
        }
        Some(e)
    }
}

impl ConnSlot {
    /// Records progress (a query read in full, or answers handed to the kernel): one atomic
    /// store, no lock.
    pub fn progress(&self) {
        self.conn
            .last_progress
            .store(self.table.now_ms(), Ordering::Relaxed);
    }

    /// Cancelled when this connection's slot has been given to another connection.
    pub fn evicted(&self) -> &CancellationToken {
        &self.conn.evicted
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        // An evicted connection's entry is gone already; its slot belongs to another.
        self.table.lock().remove(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_source_may_use_any_number_of_slots_while_the_table_is_at_most_half_full() {
        let t = ConnTable::with_min_quiet(100, 2, Duration::ZERO);
        let a = ip("192.0.2.1");
        // The 51st is admitted with 50 open: exactly half is not "more than half".
        let held: Vec<_> = (0..51).map(|_| t.admit(a).unwrap()).collect();
        assert_eq!(t.open_from(a), 51);
        assert!(held.iter().all(|s| !s.evicted().is_cancelled()));
        // More than half full: at its share, the source now replaces its own quietest.
        held[7].conn.last_progress.store(0, Ordering::Relaxed);
        for (i, s) in held.iter().enumerate() {
            if i != 7 {
                s.conn.last_progress.store(1_000, Ordering::Relaxed);
            }
        }
        let _n = t.admit(a).unwrap();
        assert_eq!(t.open_from(a), 51);
        assert!(held[7].evicted().is_cancelled(), "the quietest gave way");
        assert_eq!(
            held.iter().filter(|s| s.evicted().is_cancelled()).count(),
            1
        );
        // Another source is unaffected.
        let _b = t.admit(ip("192.0.2.2")).unwrap();
        assert_eq!(t.open(), 52);
        drop(held);
        assert_eq!(t.open(), 2, "evicted slots are not released twice");
    }

    #[test]
    fn a_full_table_evicts_only_connections_quiet_long_enough() {
        let t = ConnTable::with_min_quiet(3, 0, Duration::from_secs(3600));
        let held: Vec<_> = (1..=3)
            .map(|i| t.admit(ip(&format!("192.0.2.{i}"))).unwrap())
            .collect();
        // All made progress just now: the newcomer is refused, nobody is evicted.
        assert_eq!(t.admit(ip("192.0.2.9")).unwrap_err(), Refused::Full);
        assert!(held.iter().all(|s| !s.evicted().is_cancelled()));
        let t = ConnTable::with_min_quiet(3, 0, Duration::ZERO);
        let held: Vec<_> = (1..=3)
            .map(|i| t.admit(ip(&format!("192.0.2.{i}"))).unwrap())
            .collect();
        for (s, at) in held.iter().zip([30, 10, 20]) {
            s.conn.last_progress.store(at, Ordering::Relaxed);
        }
        let _n = t.admit(ip("192.0.2.9")).unwrap();
        assert_eq!(t.open(), 3);
        assert!(
            held[1].evicted().is_cancelled(),
            "least recent progress goes"
        );
        assert!(!held[0].evicted().is_cancelled() && !held[2].evicted().is_cancelled());
    }

    #[test]
    fn a_source_at_its_share_under_pressure_only_replaces_its_own() {
        let t = ConnTable::with_min_quiet(4, 1, Duration::from_secs(3600));
        let a = ip("2001:db8:1:2::1");
        let _a1 = t.admit(a).unwrap();
        let _a2 = t.admit(ip("2001:db8:1:2::ffff")).unwrap(); // same /64: still at most half
        let _b = t.admit(ip("192.0.2.2")).unwrap(); // 3 of 4: more than half
        assert_eq!(t.admit(a).unwrap_err(), Refused::SourceShare);
        let c = t.admit(ip("192.0.2.3"));
        assert!(c.is_ok(), "another source has its share");
        assert_eq!(t.open(), 4);
        assert_eq!(t.admit(ip("192.0.2.4")).unwrap_err(), Refused::Full);
    }
}

//! Per-source TCP connection limits: one client cannot hold every connection slot.
//!
//! Consulted only when a connection is accepted or closed (never per query), so a mutex-guarded
//! map is the simple, adequate tool. Sources are counted by address (IPv6 by /64, since one
//! host usually owns a whole /64 and can pick any address in it).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Counts open connections per source.
#[derive(Debug)]
pub struct SourceLimiter {
    max_per_source: usize,
    open: Mutex<HashMap<u128, usize>>,
}

/// Held while a connection is open; releases its slot when dropped.
#[derive(Debug)]
pub struct SourceSlot {
    limiter: Arc<SourceLimiter>,
    key: u128,
}

fn key(ip: IpAddr) -> u128 {
    match ip.to_canonical() {
        IpAddr::V4(a) => u128::from(u32::from(a)) | 1 << 127,
        IpAddr::V6(a) => u128::from(a) >> 64,
    }
}

impl SourceLimiter {
    /// A limiter allowing `max_per_source` concurrent connections per source (0 = unlimited).
    pub fn new(max_per_source: usize) -> Arc<Self> {
        Arc::new(Self {
            max_per_source,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Takes a slot for `ip`, or `None` if that source is at its limit.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<SourceSlot> {
        let k = key(ip);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(k).or_insert(0);
        if self.max_per_source > 0 && *n >= self.max_per_source {
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            limiter: self.clone(),
            key: k,
        })
    }

    /// Open connections from `ip` (for tests and status).
    pub fn open_from(&self, ip: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.get(&key(ip)).copied().unwrap_or(0)
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut open = self.limiter.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_per_source_and_released_on_drop() {
        let l = SourceLimiter::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let s1 = l.acquire(a).unwrap();
        let _s2 = l.acquire(a).unwrap();
        assert!(l.acquire(a).is_none());
        assert!(l.acquire(b).is_some(), "another source has its own budget");
        drop(s1);
        assert_eq!(l.open_from(a), 1);
        assert!(l.acquire(a).is_some());
        // IPv6: the /64 is one source.
        let x: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let y: IpAddr = "2001:db8:1:2::ffff".parse().unwrap();
        let _x1 = l.acquire(x).unwrap();
        let _x2 = l.acquire(y).unwrap();
        assert!(l.acquire(x).is_none());
        let unlimited = SourceLimiter::new(0);
        let held: Vec<_> = (0..100).map(|_| unlimited.acquire(a).unwrap()).collect();
        assert_eq!(unlimited.open_from(a), held.len());
    }
}

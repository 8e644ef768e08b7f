//! Response rate limiting (RRL) against reflection and amplification.
//!
//! An authoritative server on the Internet is a free amplifier: spoof a victim's address, ask
//! for something big, and the server floods the victim. RRL counts responses per (client
//! network, query name, query type) per second — the network being the /24 or /56 the source
//! address falls in, as spoofed floods vary the host — and beyond the limit drops them, except
//! every `slip`-th one, which is sent truncated (TC=1, no records): a real client behind that
//! network then retries over TCP (which cannot be spoofed) and still gets its answer.
//!
//! The table is a fixed array of atomics indexed by a hash of the key: no allocation, no lock,
//! constant memory. Two keys sharing a slot share a budget, which can only make limiting
//! stricter for them, never looser; with 65,536 slots that is rare.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Slots in the table (a power of two).
const SLOTS: usize = 1 << 16;

/// What to do with one UDP response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send it.
    Allow,
    /// Send a truncated (TC=1) empty response instead.
    Slip,
    /// Send nothing.
    Drop,
}

pub use crate::config::RrlConfig;

/// The limiter.
pub struct Rrl {
    config: RrlConfig,
    slots: Box<[AtomicU64]>,
}

impl std::fmt::Debug for Rrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rrl").field("config", &self.config).finish()
    }
}

fn now_secs() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as u32)
}

impl Rrl {
    /// A limiter with the given settings.
    pub fn new(config: RrlConfig) -> Self {
        let slots = (0..SLOTS).map(|_| AtomicU64::new(0)).collect();
        Self { config, slots }
    }

    /// Whether limiting is on.
    pub fn enabled(&self) -> bool {
        self.config.responses_per_second > 0
    }

    /// Decides for one response to `src` about `qname` (lower-cased wire) and `qtype`.
    ///
    /// `ecs` (the client subnet a resolver sent: address and prefix) is part of the key: a
    /// large resolver asking for one steered name on behalf of many client networks gets
    /// different answers, not one repeated response, and must not be limited as a flood.
    pub fn check(
        &self,
        src: IpAddr,
        qname: &[u8],
        qtype: u16,
        ecs: Option<(IpAddr, u8)>,
    ) -> Verdict {
        self.check_at(src, qname, qtype, ecs, now_secs())
    }

    fn check_at(
        &self,
        src: IpAddr,
        qname: &[u8],
        qtype: u16,
        ecs: Option<(IpAddr, u8)>,
        now: u32,
    ) -> Verdict {
        let c = &self.config;
        if c.responses_per_second == 0 || c.exempt.iter().any(|n| n.contains(&src)) {
            return Verdict::Allow;
        }
        let net: u128 = match src.to_canonical() {
            IpAddr::V4(a) => {
                let bits = c.ipv4_prefix.min(32);
                u128::from(u32::from(a).checked_shr(32 - u32::from(bits)).unwrap_or(0)) | 1 << 127
            }
            IpAddr::V6(a) => u128::from(a)
                .checked_shr(128 - u32::from(c.ipv6_prefix.min(128)))
                .unwrap_or(0),
        };
        // FNV-1a over network, type and name.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut ecs_bytes = [0u8; 17];
        if let Some((addr, prefix)) = ecs {
            match addr {
                IpAddr::V4(a) => ecs_bytes[..4].copy_from_slice(&a.octets()),
                IpAddr::V6(a) => ecs_bytes[..16].copy_from_slice(&a.octets()),
            }
            ecs_bytes[16] = prefix;
        }
        for b in net
            .to_le_bytes()
            .iter()
            .chain(&qtype.to_le_bytes())
            .chain(&ecs_bytes)
            .chain(qname)
        {
            h = (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
        let slot = &self.slots[(h as usize) & (SLOTS - 1)];
        let mut cur = slot.load(Ordering::Relaxed);
        let count = loop {
            let (epoch, n) = ((cur >> 32) as u32, cur as u32);
            let next = if epoch == now {
                (u64::from(now) << 32) | u64::from(n.saturating_add(1))
            } else {
                (u64::from(now) << 32) | 1
            };
            match slot.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => break next as u32,
                Err(actual) => cur = actual,
            }
        };
        if count <= c.responses_per_second {
            Verdict::Allow
        } else if c.slip > 0 && (count - c.responses_per_second).is_multiple_of(c.slip) {
            Verdict::Slip
        } else {
            Verdict::Drop
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rrl(rate: u32, slip: u32) -> Rrl {
        Rrl::new(RrlConfig {
            responses_per_second: rate,
            slip,
            ipv4_prefix: 24,
            ipv6_prefix: 56,
            exempt: vec!["127.0.0.0/8".parse().unwrap()],
        })
    }

    #[test]
    fn limits_per_network_name_and_second_with_slip() {
        let r = rrl(5, 2);
        let a: IpAddr = "198.51.100.7".parse().unwrap();
        let b: IpAddr = "198.51.100.200".parse().unwrap(); // same /24
        let verdicts: Vec<Verdict> = (0..9)
            .map(|i| {
                r.check_at(
                    if i % 2 == 0 { a } else { b },
                    b"\x03www\x00",
                    1,
                    None,
                    1000,
                )
            })
            .collect();
        assert_eq!(&verdicts[..5], &[Verdict::Allow; 5]);
        assert_eq!(
            &verdicts[5..],
            &[Verdict::Drop, Verdict::Slip, Verdict::Drop, Verdict::Slip]
        );
        // Another name, another network, or the next second: fresh budget.
        assert_eq!(
            r.check_at(a, b"\x04mqtt\x00", 1, None, 1000),
            Verdict::Allow
        );
        // A resolver asking on behalf of another client subnet is not a repeat.
        let ecs = Some(("81.2.69.0".parse().unwrap(), 24));
        assert_eq!(r.check_at(a, b"\x03www\x00", 1, ecs, 1000), Verdict::Allow);
        assert_eq!(
            r.check_at(
                "198.51.101.7".parse().unwrap(),
                b"\x03www\x00",
                1,
                None,
                1000
            ),
            Verdict::Allow
        );
        assert_eq!(r.check_at(a, b"\x03www\x00", 1, None, 1001), Verdict::Allow);
    }

    #[test]
    fn exempt_sources_and_disabled_limiter_always_allow() {
        let r = rrl(1, 0);
        for _ in 0..10 {
            assert_eq!(
                r.check_at("127.0.0.1".parse().unwrap(), b"\x00", 1, None, 5),
                Verdict::Allow
            );
        }
        let v6: IpAddr = "2001:db8:1:200::1".parse().unwrap();
        assert_eq!(r.check_at(v6, b"\x00", 1, None, 5), Verdict::Allow);
        assert_eq!(
            r.check_at("2001:db8:1:2ff::9".parse().unwrap(), b"\x00", 1, None, 5),
            Verdict::Drop,
            "same /56"
        );
        let off = rrl(0, 2);
        for _ in 0..10 {
            assert_eq!(off.check_at(v6, b"\x00", 1, None, 5), Verdict::Allow);
        }
    }
}

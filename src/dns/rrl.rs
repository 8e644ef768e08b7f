//! Response rate limiting (RRL) against reflection and amplification.
//!
//! An authoritative server on the Internet is a free amplifier: spoof a victim's address, ask
//! for something big, and the server floods the victim. RRL counts the responses sent to each
//! client network — the /24 or /56 the source address falls in, as spoofed floods vary the
//! host — per second, and beyond the limit drops them, except every `slip`-th, which is sent
//! truncated (TC=1, no records): a real client behind that network then retries over TCP
//! (which cannot be spoofed) and still gets its answer.
//!
//! Responses are counted by what they are, as BIND and NSD do ([`Kind`]), so that what a
//! spoofer can vary at will does not make a response new:
//!
//! - a positive answer per query name and type — and per client subnet (ECS) only when the
//!   answer depends on it (a routed answer with ECS scope > 0). Static answers are the same
//!   for every subnet, so a varied ECS option must not buy a fresh budget (before this, 2,000
//!   spoofed `big.example.test TXT` queries with random subnets were all answered in full);
//! - NXDOMAIN per zone: random subdomains of one zone share one budget;
//! - NODATA per zone and type; a referral per delegation point;
//! - every error (REFUSED, FORMERR, SERVFAIL, NOTIMP, BADVERS) in one class.
//!
//! On top, each client network has an overall budget over all classes together,
//! [`ALL_FACTOR`] × `responses_per_second`, spent by the responses that are within their own
//! class's limit: the one bound left on what a spoofer can vary legitimately (the subnets of
//! a routed name, the names a wildcard answers).
//!
//! The table is a fixed array of atomics indexed by a hash of the key: no allocation, no lock,
//! constant memory. Two keys sharing a slot share a budget, which can only make limiting
//! stricter for them, never looser; with 65,536 slots that is rare.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Slots in the table (a power of two).
const SLOTS: usize = 1 << 16;

/// A client network's budget over all response classes together, in multiples of
/// `responses_per_second`. Four: a resolver network asking for a handful of different names at
/// the full per-response rate is not limited by it, while a spoofer varying what it can vary
/// (ECS subnets of a routed name, names, types) gets at most four times what one repeated
/// question gets — and still only the per-class rate for any one response.
pub const ALL_FACTOR: u32 = 4;

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

/// What a response is counted as: its class and the key within the class. Names are
/// lower-cased wire form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind<'a> {
    /// An answer with records: per query name and type. `ecs` is the client subnet the answer
    /// was selected for, masked to the answer's ECS scope — set only when that scope is > 0,
    /// i.e. when another subnet may get another answer.
    Answer {
        /// Query name.
        qname: &'a [u8],
        /// Query type.
        qtype: u16,
        /// Subnet the answer holds for (address, scope prefix).
        ecs: Option<(IpAddr, u8)>,
    },
    /// NOERROR without records: per zone and type.
    NoData {
        /// Zone apex.
        zone: &'a [u8],
        /// Query type.
        qtype: u16,
    },
    /// NXDOMAIN: per zone, whatever the name.
    NxDomain {
        /// Zone apex.
        zone: &'a [u8],
    },
    /// A referral: per delegation point.
    Referral {
        /// The zone cut's name.
        cut: &'a [u8],
    },
    /// REFUSED, FORMERR, SERVFAIL, NOTIMP, BADVERS: one class per client network.
    Error,
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

/// FNV-1a, continued from `h`.
fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h = (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// The first `prefix` bits of `addr` as a number, tagged with the family.
fn network(addr: IpAddr, prefix4: u8, prefix6: u8) -> u128 {
    match addr.to_canonical() {
        IpAddr::V4(a) => {
            let bits = u32::from(prefix4.min(32));
            u128::from(u32::from(a).checked_shr(32 - bits).unwrap_or(0)) | 1 << 127
        }
        IpAddr::V6(a) => u128::from(a)
            .checked_shr(128 - u32::from(prefix6.min(128)))
            .unwrap_or(0),
    }
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

    /// Decides for one response of `kind` to `src`.
    pub fn check(&self, src: IpAddr, kind: Kind<'_>) -> Verdict {
        self.check_at(src, kind, now_secs())
    }

    fn check_at(&self, src: IpAddr, kind: Kind<'_>, now: u32) -> Verdict {
        let c = &self.config;
        if c.responses_per_second == 0 || c.exempt.iter().any(|n| n.contains(&src)) {
            return Verdict::Allow;
        }
        let net = network(src, c.ipv4_prefix, c.ipv6_prefix);
        let base = fnv(0xcbf2_9ce4_8422_2325, &net.to_le_bytes());
        // Class tag first, so that keys of different classes never meet by construction.
        let key = match kind {
            Kind::Answer { qname, qtype, ecs } => {
                let h = fnv(fnv(base, &[1]), &qtype.to_le_bytes());
                let h = match ecs {
                    Some((addr, scope)) => {
                        fnv(fnv(h, &network(addr, scope, scope).to_le_bytes()), &[scope])
                    }
                    None => fnv(h, &[0xff]),
                };
                fnv(h, qname)
            }
            Kind::NoData { zone, qtype } => fnv(fnv(fnv(base, &[2]), &qtype.to_le_bytes()), zone),
            Kind::NxDomain { zone } => fnv(fnv(base, &[3]), zone),
            Kind::Referral { cut } => fnv(fnv(base, &[4]), cut),
            Kind::Error => fnv(base, &[5]),
        };
        let rate = c.responses_per_second;
        let count = self.bump(key, now);
        // Only responses within their own limit count against the overall budget: a flood of
        // one question is limited already and must not starve the network's other questions.
        let excess = if count > rate {
            count - rate
        } else {
            let all_rate = rate.saturating_mul(ALL_FACTOR);
            let total = self.bump(fnv(base, &[0]), now);
            if total <= all_rate {
                return Verdict::Allow;
            }
            total - all_rate
        };
        if c.slip > 0 && excess.is_multiple_of(c.slip) {
            Verdict::Slip
        } else {
            Verdict::Drop
        }
    }

    /// Counts one response in the slot of hash `h` for second `now`; returns the count.
    fn bump(&self, h: u64, now: u32) -> u32 {
        let slot = &self.slots[(h as usize) & (SLOTS - 1)];
        let mut cur = slot.load(Ordering::Relaxed);
        loop {
            let (epoch, n) = ((cur >> 32) as u32, cur as u32);
            let next = if epoch == now {
                (u64::from(now) << 32) | u64::from(n.saturating_add(1))
            } else {
                (u64::from(now) << 32) | 1
            };
            match slot.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return next as u32,
                Err(actual) => cur = actual,
            }
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

    fn answer(qname: &[u8], qtype: u16) -> Kind<'_> {
        Kind::Answer {
            qname,
            qtype,
            ecs: None,
        }
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
                    answer(b"\x03www\x00", 1),
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
            r.check_at(a, answer(b"\x04mqtt\x00", 1), 1000),
            Verdict::Allow
        );
        assert_eq!(
            r.check_at(
                "198.51.101.7".parse().unwrap(),
                answer(b"\x03www\x00", 1),
                1000
            ),
            Verdict::Allow
        );
        assert_eq!(
            r.check_at(a, answer(b"\x03www\x00", 1), 1001),
            Verdict::Allow
        );
    }

    #[test]
    fn exempt_sources_and_disabled_limiter_always_allow() {
        let r = rrl(1, 0);
        for _ in 0..10 {
            assert_eq!(
                r.check_at("127.0.0.1".parse().unwrap(), answer(b"\x00", 1), 5),
                Verdict::Allow
            );
        }
        let v6: IpAddr = "2001:db8:1:200::1".parse().unwrap();
        assert_eq!(r.check_at(v6, answer(b"\x00", 1), 5), Verdict::Allow);
        assert_eq!(
            r.check_at("2001:db8:1:2ff::9".parse().unwrap(), answer(b"\x00", 1), 5),
            Verdict::Drop,
            "same /56"
        );
        let off = rrl(0, 2);
        for _ in 0..10 {
            assert_eq!(off.check_at(v6, answer(b"\x00", 1), 5), Verdict::Allow);
        }
    }

    /// Only a subnet the answer depends on (scope > 0) is part of the key, masked to the
    /// scope: two subnets inside one scope share a budget, subnets in different scopes do not.
    #[test]
    fn ecs_is_a_key_only_with_a_scope() {
        let r = rrl(2, 0);
        let src: IpAddr = "198.51.100.7".parse().unwrap();
        let routed = |net: &str, scope| Kind::Answer {
            qname: b"\x04mqtt\x00",
            qtype: 1,
            ecs: Some((net.parse().unwrap(), scope)),
        };
        for net in ["81.2.69.0", "81.2.69.128"] {
            assert_eq!(r.check_at(src, routed(net, 24), 7), Verdict::Allow, "{net}");
        }
        assert_eq!(r.check_at(src, routed("81.2.69.9", 24), 7), Verdict::Drop);
        assert_eq!(r.check_at(src, routed("81.2.70.0", 24), 7), Verdict::Allow);
    }

    /// NXDOMAIN per zone (any name), NODATA per zone and type, referrals per cut, errors in
    /// one class; the classes do not share budgets.
    #[test]
    fn responses_are_counted_by_class() {
        let r = rrl(3, 0);
        let src: IpAddr = "198.51.100.7".parse().unwrap();
        let zone = b"\x07example\x04test\x00";
        let kinds = [
            Kind::NxDomain { zone },
            Kind::NoData { zone, qtype: 1 },
            Kind::NoData { zone, qtype: 28 },
            Kind::Referral {
                cut: b"\x03sub\x07example\x04test\x00",
            },
            Kind::Error,
        ];
        // Three classes' budgets fit the overall one (4 × the rate): two networks for five.
        let other: IpAddr = "198.51.101.7".parse().unwrap();
        for (i, kind) in kinds.into_iter().enumerate() {
            let src = if i < 3 { src } else { other };
            let got: Vec<Verdict> = (0..4).map(|_| r.check_at(src, kind, 9)).collect();
            assert_eq!(&got[..3], &[Verdict::Allow; 3], "{kind:?}");
            assert_eq!(got[3], Verdict::Drop, "{kind:?}");
        }
    }

    /// The overall budget: ALL_FACTOR × the rate over every class together, with slip.
    #[test]
    fn each_network_has_an_overall_budget() {
        let r = rrl(2, 2);
        let src: IpAddr = "198.51.100.7".parse().unwrap();
        let names: Vec<Vec<u8>> = (0..20u8).map(|i| vec![1, b'a' + i, 0]).collect();
        let got: Vec<Verdict> = names
            .iter()
            .map(|n| r.check_at(src, answer(n, 1), 3))
            .collect();
        let allowed = 2 * ALL_FACTOR as usize;
        assert_eq!(&got[..allowed], &vec![Verdict::Allow; allowed][..]);
        assert_eq!(&got[allowed..allowed + 2], &[Verdict::Drop, Verdict::Slip]);
        // Another network is not affected.
        assert_eq!(
            r.check_at("198.51.101.7".parse().unwrap(), answer(&names[0], 1), 3),
            Verdict::Allow
        );
    }
}

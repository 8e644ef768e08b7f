//! The leaf layer: what every other module may use and which uses nothing of the crate.
//!
//! - [`diag`]: configuration diagnostics ([`ConfigError`] names file, line and field).
//! - [`de`]: serde helpers for durations and socket addresses.
//! - [`Counter`]: a relaxed atomic counter that can sit inside snapshot types.
//! - [`Clock`]: wall time as an input, so the control plane is testable with paused time.
//! - [`FastMap`]: the answer path's hash map.

mod clock;
mod counter;
pub mod de;
pub mod diag;
pub mod file;

pub use clock::Clock;
pub use counter::Counter;
pub use diag::{ConfigError, ConfigErrors, line_of_offset};

/// Hash map for the answer path: FxHash instead of SipHash (SipHash was 2–8 % of a query in
/// profiles). HashDoS does not apply: these maps are built from operator data (zones, profiles,
/// endpoints) and only *looked up* with names from the network, so an attacker cannot grow a
/// collision chain — the longest probe sequence is fixed by the operator's own keys.
pub type FastMap<K, V> = std::collections::HashMap<K, V, rustc_hash::FxBuildHasher>;

/// The network of `prefix` bits `addr` is in: (first address, `prefix`). A prefix longer than
/// the address family's leaves the address whole.
pub fn cut(addr: std::net::IpAddr, prefix: u8) -> (std::net::IpAddr, u8) {
    let net = ipnet::IpNet::new(addr, prefix)
        .map(|n| n.trunc().addr())
        .unwrap_or(addr);
    (net, prefix)
}

//! Any bytes as the data of an EDNS Client Subnet option (RFC 7871 §6).
//!
//! Invariant: `parse_ecs` never panics, and accepts only what RFC 7871 §6/§7.1.1 allow:
//! family 1 (prefix ≤ 32) or 2 (prefix ≤ 128), scope 0, exactly ceil(prefix/8) address bytes,
//! no bits set past the prefix; the parsed value is exactly what the bytes say. And the
//! converse: every option of that shape is accepted.

#![no_main]

use std::net::IpAddr;

use geosteer::wire::parse_ecs;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parsed = parse_ecs(data);
    let valid = expected_valid(data);
    assert_eq!(
        parsed.is_some(),
        valid,
        "parse_ecs({data:02x?}) = {parsed:?}, RFC 7871 says valid = {valid}"
    );
    let Some(ecs) = parsed else {
        return;
    };
    let family = u16::from_be_bytes([data[0], data[1]]);
    let prefix = data[2];
    let addr = &data[4..];
    assert_eq!(ecs.family, family);
    assert_eq!(ecs.source_prefix, prefix);
    let octets: Vec<u8> = match ecs.addr {
        IpAddr::V4(a) => {
            assert_eq!(family, 1, "IPv4 address for family {family}");
            a.octets().to_vec()
        }
        IpAddr::V6(a) => {
            assert_eq!(family, 2, "IPv6 address for family {family}");
            a.octets().to_vec()
        }
    };
    // The address is the wire bytes, zero-extended.
    assert_eq!(&octets[..addr.len()], addr);
    assert!(octets[addr.len()..].iter().all(|&b| b == 0));
});

/// RFC 7871 validity, written independently of the implementation.
fn expected_valid(data: &[u8]) -> bool {
    if data.len() < 4 {
        return false;
    }
    let family = u16::from_be_bytes([data[0], data[1]]);
    let (prefix, scope, addr) = (u32::from(data[2]), data[3], &data[4..]);
    let max_bits = match family {
        1 => 32,
        2 => 128,
        _ => return false,
    };
    if prefix > max_bits || scope != 0 || addr.len() as u32 != prefix.div_ceil(8) {
        return false;
    }
    // No bit at position >= prefix may be set.
    addr.iter().enumerate().all(|(i, &byte)| {
        (0..8).all(|bit| {
            let pos = i as u32 * 8 + bit;
            pos < prefix || byte & (0x80 >> bit) == 0
        })
    })
}

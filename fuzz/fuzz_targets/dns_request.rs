//! Any bytes as a DNS request, through the very handler the UDP and TCP sockets use, answering
//! from the repository's own geosteer.toml (zones/, profiles, sample GeoIP databases).
//!
//! Invariants (README "Zones", "EDNS(0)", "Decision trace over DNS"; src/dns/handler.rs):
//! - never panics;
//! - runts (< 12 bytes) and responses (QR=1) are never answered;
//! - an answer parses as a DNS message (hickory), carries the request's ID, QR=1, and the
//!   request's opcode and RD;
//! - it has an OPT exactly when the request had a well-formed one; an ECS option in an EDNS
//!   version 0 request is echoed with the same family, source prefix and address;
//! - a parsed question is echoed byte for byte (0x20 case preserved);
//! - over UDP it fits 512 bytes without EDNS and min(client's payload, edns_udp_payload) with
//!   it; over TCP 65535;
//! - TC is only set on an answer with empty answer/authority/additional sections.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use geosteer::wire::{self, ParseError};
use geosteer::dns::{Handler, Transport};
use geosteer::metrics::Metrics;
use hickory_server::proto::op::{Message, MessageType};
use hickory_server::proto::rr::rdata::opt::{EdnsCode, EdnsOption};
use libfuzzer_sys::fuzz_target;

struct Fixture {
    handler: Handler,
    edns_payload: u16,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        // Relative paths in the config resolve against its directory: give the absolute path.
        let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../geosteer.toml");
        let loaded = geosteer::app::load(Some(&config))
            .unwrap_or_else(|e| panic!("fixture {}: {e}", config.display()));
        // As `serve` starts: monitored endpoints CheckingEndpoint, the others Unmonitored.
        let health = geosteer::probing::prober::initial_snapshot(&loaded.state.routing);
        let edns_payload = loaded.config.edns_udp_payload;
        let handler = Handler::new(
            Arc::new(ArcSwap::from_pointee(loaded.state)),
            Arc::new(ArcSwap::from_pointee(health)),
            Arc::new(Metrics::default()),
            edns_payload,
        );
        Fixture {
            handler,
            edns_payload,
        }
    })
}

/// (source, transport): a loopback resolver (inside `why_acl`) over UDP, a remote IPv6
/// resolver (outside it) over UDP, and a remote IPv4 resolver over TCP.
const CALLERS: [(IpAddr, Transport); 3] = [
    (IpAddr::V4(Ipv4Addr::LOCALHOST), Transport::Udp),
    (
        IpAddr::V6(Ipv6Addr::new(0x2a01, 0x4f8, 0, 0, 0, 0, 0, 0x53)),
        Transport::Udp,
    ),
    (IpAddr::V4(Ipv4Addr::new(81, 2, 69, 1)), Transport::Tcp),
];

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let mut out = Vec::new();
    for (ip, transport) in CALLERS {
        let src = SocketAddr::new(ip, 40053);
        let sent = f.handler.handle(data, src, transport, &mut out);
        check(f, data, transport, sent, &out);
    }
});

fn check(f: &Fixture, req: &[u8], transport: Transport, sent: bool, out: &[u8]) {
    if req.len() < 12 || req[2] & 0x80 != 0 {
        assert!(!sent, "answered a runt or a response (QR=1)");
        return;
    }
    if !sent {
        // Only runts and responses are dropped (README: "nothing when the header itself is
        // unreadable"); everything else gets at least FORMERR.
        panic!("request with a readable header was not answered");
    }
    let parsed = wire::parse(req);
    let m = Message::from_vec(out).unwrap_or_else(|e| {
        panic!("answer does not parse as DNS: {e}\nrequest {req:02x?}\nanswer {out:02x?}")
    });
    let md = &m.metadata;
    assert_eq!(md.id, u16::from_be_bytes([req[0], req[1]]), "ID not echoed");
    assert_eq!(md.message_type, MessageType::Response, "QR not set");
    assert_eq!(out[2] >> 3 & 0x0F, req[2] >> 3 & 0x0F, "opcode not copied");
    // RD and CD mean something only in a standard query (opcode 0); other opcodes get neither.
    let query = req[2] >> 3 & 0x0F == 0;
    assert_eq!(out[2] & 1, req[2] & 1 & u8::from(query), "RD not copied / leaked");
    assert_eq!(out[3] & 0xA0, 0, "RA or AD set");
    if !query {
        assert_eq!(out[2] & 0x04, 0, "AA on a reply to opcode {}", req[2] >> 3 & 0x0F);
        assert_eq!(out[3] & 0x10, 0, "CD on a reply to opcode {}", req[2] >> 3 & 0x0F);
    }

    // OPT in the answer exactly when the request had a well-formed one.
    let req_edns = match &parsed {
        Ok(q) => q.edns,
        Err(ParseError::FormErr { edns, .. }) => {
            assert_eq!(m.edns.is_some(), *edns, "FORMERR OPT presence");
            None
        }
        Err(ParseError::Drop) => panic!("answered a packet the parser drops"),
    };
    if let Ok(q) = &parsed {
        assert_eq!(
            m.edns.is_some(),
            q.edns.is_some(),
            "OPT presence not mirrored"
        );
        // The question, byte for byte.
        if let Some(question) = &q.question {
            assert_eq!(u16::from_be_bytes([out[4], out[5]]), 1, "QDCOUNT");
            assert_eq!(
                out.get(12..12 + question.raw.len()),
                Some(question.raw),
                "question not echoed byte for byte"
            );
        }
        // ECS echoed with the request's family, source prefix and address — except on
        // BADVERS: options of an EDNS version we do not speak are not interpreted.
        let ecs = q.edns.filter(|e| e.version == 0).and_then(|e| e.ecs);
        if let (Some(ecs), Some(e)) = (ecs, &m.edns) {
            match e.option(EdnsCode::Subnet) {
                Some(EdnsOption::Subnet(cs)) => {
                    assert_eq!(cs.source_prefix(), ecs.source_prefix, "ECS source prefix");
                    assert_eq!(cs.addr(), ecs.addr, "ECS address");
                }
                other => panic!("ECS not echoed: {other:?}"),
            }
        }
    }

    // Size limits.
    match transport {
        Transport::Tcp => assert!(out.len() <= 65535),
        Transport::Udp => {
            let limit = match req_edns {
                Some(e) => usize::from(e.payload.max(512).min(f.edns_payload)),
                None => 512,
            };
            assert!(
                out.len() <= limit,
                "UDP answer of {} bytes exceeds {limit}",
                out.len()
            );
        }
    }
    // Truncated answers carry no partial RRsets.
    if md.truncation {
        assert!(
            m.answers.is_empty() && m.authorities.is_empty() && m.additionals.is_empty(),
            "TC set on an answer with records"
        );
    }
}

//! DNS correctness against the real binary: the DO bit is copied into every OPT (RFC 3225),
//! and replies to opcodes other than QUERY carry none of the QUERY-only header bits.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use common::*;

// ---------------------------------------------------------------------------------------------
// Raw messages

/// Header flags of a raw query.
#[derive(Clone, Copy, Default)]
struct Flags {
    opcode: u8,
    aa: bool,
    rd: bool,
    ad: bool,
    cd: bool,
}

/// An OPT record: (EDNS version, DO bit).
type Opt = Option<(u8, bool)>;

/// A raw query for `name`/`qtype` with the given header flags and OPT (IN class).
fn raw_query(id: u16, f: Flags, name: &str, qtype: u16, opt: Opt) -> Vec<u8> {
    let mut p = id.to_be_bytes().to_vec();
    p.push((f.opcode << 3) | (u8::from(f.aa) << 2) | u8::from(f.rd));
    p.push((u8::from(f.ad) << 5) | (u8::from(f.cd) << 4));
    p.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, u8::from(opt.is_some())]);
    for label in name.trim_end_matches('.').split('.') {
        p.push(label.len() as u8);
        p.extend_from_slice(label.as_bytes());
    }
    p.push(0);
    p.extend_from_slice(&qtype.to_be_bytes());
    p.extend_from_slice(&1u16.to_be_bytes());
    if let Some((version, dnssec_ok)) = opt {
        // Root, OPT, payload 1232, ext-rcode 0, version, flags (DO), RDLENGTH 0.
        p.extend_from_slice(&[
            0,
            0,
            41,
            0x04,
            0xd0,
            0,
            version,
            u8::from(dnssec_ok) << 7,
            0,
        ]);
        p.extend_from_slice(&[0, 0]);
    }
    p
}

/// One UDP exchange from `sock` (a fixed source port: the same server worker every time).
fn exchange(sock: &UdpSocket, to: SocketAddr, q: &[u8]) -> Vec<u8> {
    sock.send_to(q, to).expect("send");
    let mut buf = vec![0u8; 65535];
    let (n, _) = sock.recv_from(&mut buf).expect("an answer within 3 s");
    buf.truncate(n);
    buf
}

fn socket() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s
}

/// The DO bit of the answer's OPT, decoded by hickory (`None`: no OPT).
fn answer_do(bytes: &[u8]) -> Option<bool> {
    let m = Message::from_vec(bytes).expect("answer decodes");
    m.edns.as_ref().map(|e| e.flags().dnssec_ok)
}

/// A minimal HTTP/1.1 GET: (status, body).
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    (status, body)
}

fn cache_hits(s: &Server) -> u64 {
    let (_, body) = http_get(s.admin.expect("admin API"), "/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix("geosteer_answer_cache_hits_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no cache hit counter in\n{body}"))
}

// ---------------------------------------------------------------------------------------------
// 1. DO bit (RFC 3225 §3)

/// `dig +dnssec` sees `flags: do` in the OPT of every answer — static (first asking and from
/// the answer cache), routed with and without ECS, `_why` — and a query without DO never gets
/// it, even when the same name was just cached for a DO query.
#[test]
fn the_do_bit_is_copied_into_the_answer_opt() {
    let s = Server::start();
    let has_do = |d: &Dig| {
        let edns = d
            .edns
            .as_deref()
            .unwrap_or_else(|| panic!("no OPT:\n{}", d.raw));
        edns.split("flags:")
            .nth(1)
            .and_then(|f| f.split(';').next())
            .is_some_and(|f| f.split_whitespace().any(|x| x == "do"))
    };
    let cases: &[&[&str]] = &[
        &["www.example.test", "A"],
        &["www.example.test", "A"],
        &["nope.example.test", "A"],
        &["mqtt.example.test", "A"],
        &["mqtt.example.test", "AAAA", "+subnet=81.2.69.0/24"],
        &["mqtt.example.test", "MX", "+subnet=81.2.69.0/24"],
        &["TXT", "_why.mqtt.example.test", "+subnet=216.160.83.0/24"],
        &["example.org", "A"],
    ];
    for args in cases {
        let mut with = args.to_vec();
        with.push("+dnssec");
        let d = s.dig(&with);
        assert!(has_do(&d), "{args:?} +dnssec: DO not copied\n{}", d.raw);
        let d = s.dig(args);
        assert!(!has_do(&d), "{args:?} without DO: DO set\n{}", d.raw);
    }

    // The answer cache: one source port (so one server worker), alternating DO; every answer
    // carries its own query's bit, and some of them came from the cache.
    let sock = socket();
    let hits_before = cache_hits(&s);
    let order = [
        Some(true),
        Some(true),
        Some(false),
        Some(false),
        Some(true),
        None,
        Some(true),
        Some(false),
    ];
    for (i, opt) in order.into_iter().enumerate() {
        for name in ["www.example.test", "mail.example.test"] {
            let q = raw_query(
                0x100 + i as u16,
                Flags::default(),
                name,
                1,
                opt.map(|d| (0, d)),
            );
            let a = exchange(&sock, s.udp4, &q);
            assert_eq!(answer_do(&a), opt, "{name} query {i} {opt:?}");
        }
    }
    let hits = cache_hits(&s) - hits_before;
    assert!(hits >= 8, "only {hits} answers came from the cache");

    // Error replies with an OPT copy it too: BADVERS, NOTIMP, REFUSED, FORMERR.
    let sock = socket();
    let cases = [
        (
            "BADVERS",
            raw_query(1, Flags::default(), "www.example.test", 1, Some((1, true))),
        ),
        (
            "NOTIMP",
            raw_query(
                2,
                Flags {
                    opcode: 15,
                    ..Default::default()
                },
                "www.example.test",
                1,
                Some((0, true)),
            ),
        ),
        (
            "REFUSED",
            raw_query(3, Flags::default(), "example.org", 1, Some((0, true))),
        ),
        (
            "AXFR",
            raw_query(4, Flags::default(), "example.test", 252, Some((0, true))),
        ),
        ("FORMERR", {
            // A well-formed OPT followed by a trailing byte.
            let mut q = raw_query(5, Flags::default(), "www.example.test", 1, Some((0, true)));
            q.push(0);
            q
        }),
    ];
    for (what, q) in cases {
        let a = exchange(&sock, s.udp4, &q);
        assert_eq!(answer_do(&a), Some(true), "{what}: {a:02x?}");
        let q_off = raw_query(9, Flags::default(), "www.example.test", 1, Some((1, false)));
        assert_eq!(answer_do(&exchange(&sock, s.udp4, &q_off)), Some(false));
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Header bits on opcodes other than QUERY

/// A reply to opcode 15 (unassigned), 2 (STATUS), 4 (NOTIFY), 5 (UPDATE) echoes the ID and
/// the opcode and carries no RD, CD, AD, RA or AA — those are defined for QUERY only — also
/// when the request is malformed (FORMERR). A QUERY still gets RD and CD back.
#[test]
fn replies_to_other_opcodes_carry_no_query_bits() {
    let s = Server::start();
    let sock = socket();
    let all = |opcode| Flags {
        opcode,
        aa: true,
        rd: true,
        ad: true,
        cd: true,
    };
    // (opcode, rcode, malformed?)
    let cases = [
        (15u8, 4u8, false),
        (2, 4, false),
        (3, 4, false),
        (6, 4, false),
        (4, 5, false),
        (5, 5, false),
        (15, 1, true),
        (2, 1, true),
    ];
    for (i, (opcode, rcode, malformed)) in cases.into_iter().enumerate() {
        for opt in [None, Some((0, true))] {
            let id = 0xA000 + i as u16;
            let mut q = raw_query(id, all(opcode), "www.example.test", 1, opt);
            if malformed {
                q.push(0);
            }
            let a = exchange(&sock, s.udp4, &q);
            let what = format!("opcode {opcode} malformed={malformed} opt={opt:?}: {a:02x?}");
            assert_eq!(u16::from_be_bytes([a[0], a[1]]), id, "ID: {what}");
            assert_eq!(a[2] & 0x80, 0x80, "QR: {what}");
            assert_eq!((a[2] >> 3) & 0x0F, opcode, "opcode: {what}");
            assert_eq!(a[2] & 0x04, 0, "AA: {what}");
            assert_eq!(a[2] & 0x02, 0, "TC: {what}");
            assert_eq!(a[2] & 0x01, 0, "RD: {what}");
            assert_eq!(a[3] & 0x80, 0, "RA: {what}");
            assert_eq!(a[3] & 0x20, 0, "AD: {what}");
            assert_eq!(a[3] & 0x10, 0, "CD: {what}");
            assert_eq!(a[3] & 0x0F, rcode, "rcode: {what}");
        }
    }
    // QUERY keeps echoing RD and CD, and sets AA (AD, RA still clear).
    let a = exchange(
        &sock,
        s.udp4,
        &raw_query(7, all(0), "www.example.test", 1, None),
    );
    assert_eq!(a[2] & 0x07, 0x05, "AA and RD on a QUERY answer: {a:02x?}");
    assert_eq!(a[3] & 0xF0, 0x10, "only CD of RA/Z/AD/CD: {a:02x?}");

    // dig agrees: with RD, CD and AD asked, an opcode-15 reply shows only `qr`.
    let d = s.dig(&[
        "www.example.test",
        "+opcode=15",
        "+rec",
        "+cdflag",
        "+adflag",
    ]);
    assert_eq!(d.status, "NOTIMP", "{}", d.raw);
    assert_eq!(d.flags, vec!["qr"], "{}", d.raw);
}

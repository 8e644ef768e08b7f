//! Wildcards (RFC 4592), served by the real binary over UDP and TCP: synthesis owned by the
//! query name byte for byte (0x20), the closest-encloser rule, NODATA and empty non-terminals,
//! wildcard CNAME chains, referrals below a zone cut, traffic profile names, and the answer
//! cache never sharing bytes between two names one wildcard matches.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use common::*;

/// A zone with wildcards at several levels, beside existing names that block them.
const ZONE: &str = "\
$ORIGIN w.test.
$TTL 300
@         IN SOA   ns1.w.test. hostmaster.w.test. 1 7200 900 1209600 60
          IN NS    ns1.w.test.
ns1       IN A     192.0.2.1
; At the apex level: answers TXT for every name that does not exist and has no nearer wildcard.
*         IN TXT   \"apex wildcard\"
*.app     IN A     192.0.2.10
; Exists: its own data, and names below it are NXDOMAIN (no *.host.app).
host.app  IN A     192.0.2.11
*.ent     IN A     192.0.2.13
; b.ent is an empty non-terminal: NODATA, never synthesized from *.ent.
a.b.ent   IN A     192.0.2.12
*.alias   IN CNAME target.w.test.
target    IN A     192.0.2.14
; A wildcard CNAME whose target is itself matched by a wildcard.
*.chain   IN CNAME from-chain.app.w.test.
*.loop    IN CNAME x.loop.w.test.
sub       IN NS    ns.sub.w.test.
ns.sub    IN A     192.0.2.53
";

/// One unmonitored endpoint (no probes: no traffic leaves loopback).
const PROFILES: &str = "\
[[profile]]
name = \"mqtt\"
method = \"priority\"

[[profile.endpoint]]
name = \"only\"
targets = [\"192.0.2.77\"]
";

fn zones_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("w.test.zone"), ZONE).expect("write zone");
    std::fs::write(dir.path().join("w.test.toml"), PROFILES).expect("write profiles");
    dir
}

fn start(zones: &Path) -> Server {
    Server::start_with(Opts {
        zones_dir: Some(zones.to_path_buf()),
        ..Default::default()
    })
}

#[derive(Clone, Copy, Debug)]
enum Via {
    Udp,
    Tcp,
}

const BOTH: [Via; 2] = [Via::Udp, Via::Tcp];

/// Asks `name` (case as given) for `rtype` over `via`.
fn ask(s: &Server, via: Via, name: &str, rtype: RecordType) -> Message {
    let q = query(name, rtype).to_vec().expect("encode query");
    let bytes = match via {
        Via::Udp => udp_raw(s.udp4, &q, Duration::from_secs(3)).expect("an answer over UDP"),
        Via::Tcp => {
            let mut c = tcp_connect(s.tcp4);
            tcp_send(&mut c, &q);
            tcp_recv(&mut c).expect("an answer over TCP")
        }
    };
    Message::from_vec(&bytes).expect("answer decodes")
}

/// Answer records as `owner TYPE rdata`, the owner exactly as it came back (case kept).
fn answers(m: &Message) -> Vec<String> {
    m.answers
        .iter()
        .map(|r| format!("{} {} {}", r.name, r.record_type(), r.data))
        .collect()
}

fn is_nodata(m: &Message) -> bool {
    m.metadata.response_code == ResponseCode::NoError
        && m.answers.is_empty()
        && m.authorities.len() == 1
        && m.authorities[0].record_type() == RecordType::SOA
        && m.metadata.authoritative
}

fn is_nxdomain(m: &Message) -> bool {
    m.metadata.response_code == ResponseCode::NXDomain
        && m.answers.is_empty()
        && m.authorities.len() == 1
        && m.authorities[0].record_type() == RecordType::SOA
        && m.metadata.authoritative
}

#[test]
fn synthesized_answers_are_owned_by_the_query_name_case_kept() {
    let zones = zones_dir();
    let s = start(zones.path());
    for via in BOTH {
        for name in ["FoO.aPp.W.tEsT.", "foo.app.w.test.", "x.Y.app.w.test."] {
            let m = ask(&s, via, name, RecordType::A);
            assert_eq!(
                m.metadata.response_code,
                ResponseCode::NoError,
                "{via:?} {m}"
            );
            assert!(m.metadata.authoritative, "{via:?} {m}");
            assert_eq!(answers(&m), [format!("{name} A 192.0.2.10")], "{via:?}");
        }
        // Any type the wildcard owns; the apex-level wildcard for names no nearer one covers.
        let m = ask(&s, via, "NoSuch.w.test.", RecordType::TXT);
        assert_eq!(
            answers(&m),
            ["NoSuch.w.test. TXT apex wildcard"],
            "{via:?} {m}"
        );
        // ANY: RFC 8482 as for any existing name.
        let m = ask(&s, via, "q.app.w.test.", RecordType::ANY);
        assert_eq!(m.answers.len(), 1, "{via:?} {m}");
        assert_eq!(m.answers[0].record_type(), RecordType::HINFO, "{via:?} {m}");
        assert_eq!(m.answers[0].name.to_string(), "q.app.w.test.", "{via:?}");
    }
    // dig shows the owner as it was asked, byte for byte.
    let d = s.dig(&["MiXeD.aPp.w.TeSt", "A"]);
    assert_eq!(d.status, "NOERROR", "{}", d.raw);
    assert!(d.flag("aa"), "{}", d.raw);
    assert_eq!(d.answer.len(), 1, "{}", d.raw);
    assert!(
        d.answer[0].starts_with("MiXeD.aPp.w.TeSt. 300 IN A 192.0.2.10"),
        "{}",
        d.raw
    );
}

#[test]
fn existing_names_block_synthesis_and_names_below_them_are_nxdomain() {
    let zones = zones_dir();
    let s = start(zones.path());
    for via in BOTH {
        // host.app exists: its own data, not the wildcard's; other types NODATA.
        let m = ask(&s, via, "host.app.w.test.", RecordType::A);
        assert_eq!(
            answers(&m),
            ["host.app.w.test. A 192.0.2.11"],
            "{via:?} {m}"
        );
        let m = ask(&s, via, "host.app.w.test.", RecordType::TXT);
        assert!(is_nodata(&m), "{via:?} {m}");
        // Below it: the closest encloser is host.app, which has no wildcard → NXDOMAIN, although
        // *.app and * exist higher up.
        for name in ["x.host.app.w.test.", "y.x.host.app.w.test."] {
            for t in [RecordType::A, RecordType::TXT] {
                let m = ask(&s, via, name, t);
                assert!(is_nxdomain(&m), "{via:?} {name} {t}: {m}");
            }
        }
        // Below ns1 (exists, no wildcard): NXDOMAIN too, not the apex wildcard's TXT.
        let m = ask(&s, via, "x.ns1.w.test.", RecordType::TXT);
        assert!(is_nxdomain(&m), "{via:?} {m}");
    }
}

#[test]
fn missing_types_and_empty_non_terminals_are_nodata() {
    let zones = zones_dir();
    let s = start(zones.path());
    for via in BOTH {
        // The wildcard has A only.
        for t in [RecordType::AAAA, RecordType::TXT, RecordType::MX] {
            let m = ask(&s, via, "foo.app.w.test.", t);
            assert!(is_nodata(&m), "{via:?} {t}: {m}");
        }
        // The wildcard's parent itself exists (empty non-terminal): NODATA.
        let m = ask(&s, via, "app.w.test.", RecordType::A);
        assert!(is_nodata(&m), "{via:?} {m}");
        // b.ent is an empty non-terminal: NODATA, not synthesized from *.ent …
        let m = ask(&s, via, "b.ent.w.test.", RecordType::A);
        assert!(is_nodata(&m), "{via:?} {m}");
        // … while a sibling that does not exist is, and a.b.ent answers its own data.
        let m = ask(&s, via, "c.ent.w.test.", RecordType::A);
        assert_eq!(answers(&m), ["c.ent.w.test. A 192.0.2.13"], "{via:?} {m}");
        let m = ask(&s, via, "a.b.ent.w.test.", RecordType::A);
        assert_eq!(answers(&m), ["a.b.ent.w.test. A 192.0.2.12"], "{via:?} {m}");
        // Below the empty non-terminal: closest encloser b.ent, no *.b.ent → NXDOMAIN.
        let m = ask(&s, via, "z.b.ent.w.test.", RecordType::A);
        assert!(is_nxdomain(&m), "{via:?} {m}");
    }
}

#[test]
fn wildcard_cnames_are_followed_like_other_in_zone_cnames() {
    let zones = zones_dir();
    let s = start(zones.path());
    for via in BOTH {
        let m = ask(&s, via, "Some.ALIAS.w.test.", RecordType::A);
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::NoError,
            "{via:?} {m}"
        );
        assert_eq!(
            answers(&m),
            [
                "Some.ALIAS.w.test. CNAME target.w.test.",
                "target.w.test. A 192.0.2.14"
            ],
            "{via:?} {m}"
        );
        // The target is matched by another wildcard: that link is owned by the target name
        // (the CNAME's target), never by `*.app`.
        let m = ask(&s, via, "q.chain.w.test.", RecordType::A);
        assert_eq!(
            answers(&m),
            [
                "q.chain.w.test. CNAME from-chain.app.w.test.",
                "from-chain.app.w.test. A 192.0.2.10"
            ],
            "{via:?} {m}"
        );
        // The target has no data of the type: NODATA after the chain (RFC 6604).
        let m = ask(&s, via, "q.chain.w.test.", RecordType::AAAA);
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::NoError,
            "{via:?} {m}"
        );
        assert_eq!(
            answers(&m),
            ["q.chain.w.test. CNAME from-chain.app.w.test."],
            "{via:?} {m}"
        );
        assert_eq!(m.authorities.len(), 1, "{via:?} {m}");
        // The CNAME type itself is answered, not followed.
        let m = ask(&s, via, "q.alias.w.test.", RecordType::CNAME);
        assert_eq!(
            answers(&m),
            ["q.alias.w.test. CNAME target.w.test."],
            "{via:?} {m}"
        );
        // A wildcard CNAME whose target it matches again: a loop, answered (not spun on).
        let m = ask(&s, via, "a.loop.w.test.", RecordType::A);
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::NoError,
            "{via:?} {m}"
        );
        assert_eq!(
            answers(&m)[0],
            "a.loop.w.test. CNAME x.loop.w.test.",
            "{via:?} {m}"
        );
    }
}

#[test]
fn referrals_win_below_a_zone_cut_and_profile_names_exist() {
    let zones = zones_dir();
    let s = start(zones.path());
    for via in BOTH {
        // The apex-level wildcard covers "anything" — but not names at or below sub (a cut).
        for name in ["sub.w.test.", "x.sub.w.test.", "a.b.sub.w.test."] {
            let m = ask(&s, via, name, RecordType::TXT);
            assert_eq!(
                m.metadata.response_code,
                ResponseCode::NoError,
                "{via:?} {m}"
            );
            assert!(
                !m.metadata.authoritative,
                "{via:?} {name}: referral has AA clear"
            );
            assert!(m.answers.is_empty(), "{via:?} {name}: {m}");
            assert_eq!(m.authorities.len(), 1, "{via:?} {name}: {m}");
            assert_eq!(m.authorities[0].record_type(), RecordType::NS, "{via:?}");
            assert_eq!(m.authorities[0].name.to_string(), "sub.w.test.", "{via:?}");
        }
        // A traffic profile's name exists: it is answered by the profile, and names below it
        // have it as closest encloser (no wildcard there) → NXDOMAIN, not the apex wildcard.
        let m = ask(&s, via, "mqtt.w.test.", RecordType::A);
        assert_eq!(answers(&m), ["mqtt.w.test. A 192.0.2.77"], "{via:?} {m}");
        let m = ask(&s, via, "x.mqtt.w.test.", RecordType::TXT);
        assert!(is_nxdomain(&m), "{via:?} {m}");
    }
}

/// The answer cache keys by the (lower-cased) query name, so every name a wildcard matches has
/// its own entry, and the owner is a pointer to the question, patched per query: no name ever
/// gets another name's owner, whatever the order and case of the asking.
#[test]
fn the_answer_cache_never_shares_bytes_between_names_one_wildcard_matches() {
    let zones = zones_dir();
    let s = start(zones.path());
    let hits_before = cache_hits(&s);
    // One socket, so the same worker (and its cache) answers every query.
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let names = [
        "one.app.w.test.",
        "ONE.app.w.test.",
        "two.app.w.test.",
        "One.App.W.Test.",
        "tWo.app.w.test.",
        "three.app.w.test.",
        "one.app.w.test.",
    ];
    for round in 0..3 {
        for (i, name) in names.iter().enumerate() {
            let mut q = query(name, RecordType::A);
            q.metadata.id = (round * 100 + i) as u16;
            sock.send_to(&q.to_vec().expect("encode"), s.udp4)
                .expect("send");
            let mut buf = [0u8; 1500];
            let (n, _) = sock.recv_from(&mut buf).expect("an answer");
            let m = Message::from_vec(&buf[..n]).expect("decodes");
            assert_eq!(m.metadata.id, q.metadata.id);
            assert_eq!(
                answers(&m),
                [format!("{name} A 192.0.2.10")],
                "round {round}: {m}"
            );
            // And over TCP, where the same cache serves.
            let mut c = tcp_connect(s.tcp4);
            tcp_send(&mut c, &q.to_vec().expect("encode"));
            let m = Message::from_vec(&tcp_recv(&mut c).expect("tcp answer")).expect("decodes");
            assert_eq!(
                answers(&m),
                [format!("{name} A 192.0.2.10")],
                "tcp round {round}: {m}"
            );
        }
    }
    // The cache was really used (each name asked at least six times).
    let hits = cache_hits(&s) - hits_before;
    assert!(hits > 10, "only {hits} answer cache hits");
}

/// `geosteer_answer_cache_hits_total` from the admin API.
fn cache_hits(s: &Server) -> u64 {
    let addr: SocketAddr = s.admin.expect("admin address");
    let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect admin");
    c.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(c, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("request");
    let mut body = String::new();
    c.read_to_string(&mut body).expect("response");
    body.lines()
        .find_map(|l| l.strip_prefix("geosteer_answer_cache_hits_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no geosteer_answer_cache_hits_total in:\n{body}"))
}

/// The bundled zone's example wildcard, as the README shows it.
#[test]
fn the_bundled_zone_serves_its_wildcard_example() {
    let s = Server::start();
    let d = s.dig(&["Sensor-17.devices.example.test", "A"]);
    assert_eq!(d.status, "NOERROR", "{}", d.raw);
    assert_eq!(
        d.answer,
        ["Sensor-17.devices.example.test. 3600 IN A 192.0.2.40"],
        "{}",
        d.raw
    );
    let d = s.dig(&["sensor-17.devices.example.test", "AAAA"]);
    assert_eq!(d.status, "NOERROR", "{}", d.raw);
    assert!(d.answer.is_empty(), "{}", d.raw);
    assert_eq!(d.authority.len(), 1, "{}", d.raw);
    // Other names of the zone are not affected: still NXDOMAIN.
    let d = s.dig(&["nope.example.test", "A"]);
    assert_eq!(d.status, "NXDOMAIN", "{}", d.raw);
}

//! DNS correctness against the real binary: the DO bit is copied into every OPT (RFC 3225),
//! replies to opcodes other than QUERY carry none of the QUERY-only header bits, and a client
//! whose ECS subnet has no location is placed by the location fallback chain (ECS → resolver →
//! profile order), with `_why`, `explain` and the admin API naming the step.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
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

fn cache_hits(s: &Server) -> u64 {
    let (_, body) = http(s.admin.expect("admin API"), "GET", "/metrics", None, None);
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

// ---------------------------------------------------------------------------------------------
// 5. Clients whose ECS subnet has no location

/// An ECS subnet the sample database lacks (RFC 1918, intentionally absent: geo/README.md).
const UNLOCATED: &str = "10.1.2.0/24";
/// Width of the database gap holding it: every address in 10.0.0.0/7 is unlocatable alike.
const UNLOCATED_SCOPE: &str = "10.1.2.0/24/7";

/// A local HTTP endpoint answering 200 after `delay` (a probe RTT we control), for at most
/// 1,000 probes.
fn slow_http(delay: Duration) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in l.incoming().take(1000) {
            let Ok(mut c) = conn else { continue };
            std::thread::spawn(move || {
                let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                let mut r = BufReader::new(match c.try_clone() {
                    Ok(c) => c,
                    Err(_) => return,
                });
                let mut line = String::new();
                // The request head, bounded.
                for _ in 0..100 {
                    line.clear();
                    match r.read_line(&mut line) {
                        Ok(n) if n > 0 && line != "\r\n" => {}
                        _ => break,
                    }
                }
                // The endpoint's own slowness: what the probe RTT measures.
                std::thread::sleep(delay);
                let _ = c.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            });
        }
    });
    port
}

/// Endpoint addresses answered for each region.
const EASTUS: &str = "192.0.2.1";
const SEA: &str = "192.0.2.2";
const WESTEUROPE: &str = "192.0.2.3";

/// A zone `t.test` with profile `order` (performance), endpoints in the order eastus,
/// southeastasia, westeurope; probe RTTs: eastus slowest, southeastasia fastest, westeurope
/// between. So the three candidate rules all disagree: profile order → eastus, lowest probe
/// RTT → southeastasia, a Frankfurt client → westeurope.
fn write_zones(dir: &Path) -> PathBuf {
    let zones = dir.join("zones");
    std::fs::create_dir_all(&zones).unwrap();
    std::fs::write(
        zones.join("t.test.zone"),
        "$ORIGIN t.test.\n$TTL 60\n@ IN SOA ns.t.test. h.t.test. 1 2 3 4 30\n@ IN NS ns.t.test.\nns IN A 127.0.0.1\n",
    )
    .unwrap();
    let (slow, fast, medium) = (
        slow_http(Duration::from_millis(400)),
        slow_http(Duration::ZERO),
        slow_http(Duration::from_millis(200)),
    );
    let ep = |name: &str, region: &str, target: &str, port: u16| {
        format!(
            "[[profile.endpoint]]\nname = \"{name}\"\nregion = \"azure:{region}\"\ntargets = [\"{target}\"]\n\
             [profile.endpoint.monitor]\nport = {port}\n"
        )
    };
    std::fs::write(
        zones.join("t.test.toml"),
        format!(
            "[[profile]]\nname = \"order\"\nmethod = \"performance\"\nttl = 30\n\
             [profile.monitor]\nprotocol = \"http\"\nhost = \"127.0.0.1\"\ninterval = \"1s\"\ntimeout = \"3s\"\n\
             tolerated_failures = 3\n{}{}{}",
            ep("eastus", "eastus", EASTUS, slow),
            ep("southeastasia", "southeastasia", SEA, fast),
            ep("westeurope", "westeurope", WESTEUROPE, medium),
        ),
    )
    .unwrap();
    zones
}

/// A config on free loopback ports with this zones directory and City/ASN databases.
fn write_config(dir: &Path, zones: &Path, city: &Path, asn: &Path) -> PathBuf {
    let p = dir.join("geosteer.toml");
    std::fs::write(
        &p,
        format!(
            "[server]\nudp = [\"127.0.0.1:0\"]\ntcp = [\"127.0.0.1:0\"]\nworkers = 2\n\
             [zones]\ndirectory = {:?}\n[log]\nlevel = \"info\"\nformat = \"json\"\n\
             [geoip]\ncity = {:?}\nasn = {:?}\n\
             [admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\nstate_file = {:?}\n",
            zones.display().to_string(),
            city.display().to_string(),
            asn.display().to_string(),
            dir.join("state.json").display().to_string(),
        ),
    )
    .unwrap();
    p
}

/// The sample databases without the loopback "lab" networks: here the resolver (every query
/// comes from 127.0.0.1) has no location either.
fn databases_without_loopback(dir: &Path) -> (PathBuf, PathBuf) {
    let csv = std::fs::read_to_string(repo().join("geo/sample-networks.csv")).unwrap();
    let kept: String = csv
        .lines()
        .filter(|l| !l.starts_with("127.0.0.0/8,") && !l.starts_with("::1/128,"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(kept.len() < csv.len(), "the loopback lines were found");
    let db = geosteer_mkgeo::generate(&kept, "networks without loopback")
        .expect("the sample CSV minus two lines compiles");
    let (city, asn) = (
        dir.join(geosteer_mkgeo::CITY_FILE),
        dir.join(geosteer_mkgeo::ASN_FILE),
    );
    std::fs::write(&city, db.city).unwrap();
    std::fs::write(&asn, db.asn).unwrap();
    (city, asn)
}

/// `_why` TXT lines for `ecs` (dig's quoted strings, unquoted).
fn why(s: &Server, ecs: Option<&str>) -> String {
    let mut args = vec!["TXT", "_why.order.t.test", "+short"];
    let subnet = ecs.map(|e| format!("+subnet={e}"));
    args.extend(subnet.as_deref());
    let d = s.dig(&args);
    d.raw
        .lines()
        .map(|l| l.trim().trim_matches('"'))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits until every endpoint of `order` has a probe RTT (so "lowest probe RTT" would have an
/// answer that differs from profile order).
fn wait_for_rtts(s: &Server) {
    poll(
        Duration::from_secs(30),
        "probe RTTs of all three endpoints",
        || {
            let w = why(s, None);
            let lines: Vec<&str> = w.lines().filter(|l| l.contains(" state ")).collect();
            (lines.len() == 3
                && lines
                    .iter()
                    .all(|l| !l.contains(" rtt -") && l.contains("Online")))
            .then_some(())
        },
    );
}

fn answer(s: &Server, ecs: Option<&str>) -> (Vec<String>, Option<String>) {
    let mut args = vec!["order.t.test", "A"];
    let subnet = ecs.map(|e| format!("+subnet={e}"));
    args.extend(subnet.as_deref());
    let d = s.dig(&args);
    assert_eq!(d.status, "NOERROR", "{}", d.raw);
    (d.answer, d.client_subnet)
}

fn a(addr: &str) -> Vec<String> {
    vec![format!("order.t.test. 30 IN A {addr}")]
}

fn explain_cli(config: &Path, ecs: &str, json: bool) -> String {
    let mut cmd = Command::new(bin());
    cmd.args(["explain", "--config"]).arg(config).args([
        "order.t.test",
        "--client",
        "127.0.0.1",
        "--ecs",
        ecs,
    ]);
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output().expect("run geosteer explain");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The resolver (127.0.0.1, Frankfurt in the sample database) is located: a client whose ECS
/// subnet has no location is placed at its resolver — westeurope — not at the endpoint with
/// the lowest probe RTT (southeastasia) nor the first in the file (eastus). The ECS scope is
/// the database gap the subnet fell in (/7), never 0: a located subnet outside it is answered
/// differently.
#[test]
fn an_unlocated_ecs_subnet_is_placed_at_a_located_resolver() {
    let dir = tempfile::tempdir().unwrap();
    let zones = write_zones(dir.path());
    let geo = repo().join("geo");
    let config = write_config(
        dir.path(),
        &zones,
        &geo.join("sample-city.mmdb"),
        &geo.join("sample-asn.mmdb"),
    );
    let s = Server::start_with(Opts {
        config_path: Some(config.clone()),
        ..Default::default()
    });
    wait_for_rtts(&s);

    let (ans, scope) = answer(&s, Some(UNLOCATED));
    assert_eq!(ans, a(WESTEUROPE), "resolver location decides");
    assert_eq!(scope.as_deref(), Some(UNLOCATED_SCOPE));
    // Controls: a located ECS subnet decides by itself (Milton, WA → eastus, scope /24); no
    // ECS at all → the resolver, as before.
    let (ans, scope) = answer(&s, Some("216.160.83.0/24"));
    assert_eq!(ans, a(EASTUS));
    assert_eq!(scope.as_deref(), Some("216.160.83.0/24/24"));
    assert_eq!(answer(&s, None), (a(WESTEUROPE), None));

    // _why names the step.
    let w = why(&s, Some(UNLOCATED));
    assert!(
        w.contains("located   by resolver 127.0.0.1 (the ECS address has no location)"),
        "{w}"
    );
    assert!(w.contains("country DE"), "{w}");
    assert!(w.contains("decision: westeurope: lowest estimate"), "{w}");
    let w = why(&s, Some("216.160.83.0/24"));
    assert!(w.contains("located   by ecs 216.160.83.0"), "{w}");

    // The admin API: text and JSON.
    let (code, body) = http(
        s.admin.unwrap(),
        "GET",
        &format!("/api/explain?name=order.t.test&ecs={UNLOCATED}"),
        None,
        None,
    );
    assert_eq!(code, 200, "{body}");
    let v = json_body(&body);
    assert_eq!(v["report"]["located"]["by"], "resolver", "{v}");
    assert_eq!(v["report"]["located"]["from"], "127.0.0.1", "{v}");
    assert_eq!(v["report"]["located"]["ecs_unlocated"], true, "{v}");
    assert_eq!(v["report"]["scope"], 7, "{v}");
    let text = v["text"].as_str().unwrap();
    assert!(text.contains("located   by resolver 127.0.0.1"), "{text}");

    // The CLI (no probes: the location alone decides), text and JSON.
    let text = explain_cli(&config, UNLOCATED, false);
    assert!(
        text.contains("located   by resolver 127.0.0.1 (the ECS address has no location)"),
        "{text}"
    );
    assert!(
        text.contains(&format!("answer    {WESTEUROPE} ttl 30 scope /7")),
        "{text}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&explain_cli(&config, UNLOCATED, true)).unwrap();
    assert_eq!(v["located"]["by"], "resolver", "{v}");
    assert_eq!(v["answer"][0], WESTEUROPE, "{v}");
}

/// Neither the ECS subnet nor the resolver has a location (databases without the loopback
/// networks): the profile's declared order decides — eastus, the first endpoint, although
/// southeastasia has by far the lowest probe RTT. Scope: still the ECS subnet's database gap.
#[test]
fn with_no_location_at_all_the_profile_order_decides() {
    let dir = tempfile::tempdir().unwrap();
    let zones = write_zones(dir.path());
    let (city, asn) = databases_without_loopback(dir.path());
    let config = write_config(dir.path(), &zones, &city, &asn);
    let s = Server::start_with(Opts {
        config_path: Some(config.clone()),
        ..Default::default()
    });
    wait_for_rtts(&s);

    let (ans, scope) = answer(&s, Some(UNLOCATED));
    assert_eq!(ans, a(EASTUS), "profile order, not the lowest probe RTT");
    assert_eq!(scope.as_deref(), Some(UNLOCATED_SCOPE));
    assert_eq!(answer(&s, None), (a(EASTUS), None));
    // Control: a located ECS subnet still decides (London → westeurope).
    let (ans, _) = answer(&s, Some("81.2.69.0/24"));
    assert_eq!(ans, a(WESTEUROPE));

    let w = why(&s, Some(UNLOCATED));
    assert!(
        w.contains("located   by none (neither the ECS address nor the resolver has a location)"),
        "{w}"
    );
    assert!(
        w.contains("decision: eastus: client location unknown; first served in profile order"),
        "{w}"
    );
    let w = why(&s, None);
    assert!(
        w.contains("located   by none (the resolver has no location)"),
        "{w}"
    );

    let (code, body) = http(
        s.admin.unwrap(),
        "GET",
        &format!("/api/explain?name=order.t.test&ecs={UNLOCATED}"),
        None,
        None,
    );
    assert_eq!(code, 200, "{body}");
    let v = json_body(&body);
    assert_eq!(v["report"]["located"]["by"], "none", "{v}");
    assert_eq!(
        v["report"]["located"]["from"],
        serde_json::Value::Null,
        "{v}"
    );
    assert_eq!(v["report"]["answer"][0], EASTUS, "{v}");
    let decision = v["report"]["trace"]["levels"][0]["decision"]
        .as_str()
        .unwrap();
    assert!(decision.contains("profile order"), "{decision}");

    let v: serde_json::Value =
        serde_json::from_str(&explain_cli(&config, UNLOCATED, true)).unwrap();
    assert_eq!(v["located"]["by"], "none", "{v}");
    assert_eq!(v["answer"][0], EASTUS, "{v}");
}

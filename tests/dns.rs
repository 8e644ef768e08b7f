//! Authoritative DNS behaviour of the real binary, queried with `dig` and with raw,
//! hickory-encoded messages over real UDP and TCP sockets.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn answers_are_authoritative_and_echo_the_query_case() {
    let s = Server::start();
    let d = s.dig(&["WwW.ExAmPlE.TeSt", "A"]);
    assert_eq!(d.status, "NOERROR", "{}", d.raw);
    assert!(d.flag("aa"), "{}", d.raw);
    assert_eq!(d.question, vec![";WwW.ExAmPlE.TeSt. IN A"], "{}", d.raw);
    assert_eq!(
        d.answer,
        vec!["WwW.ExAmPlE.TeSt. 3600 IN A 192.0.2.10"],
        "{}",
        d.raw
    );

    // Byte for byte: the question section of the reply equals the query's.
    let m = query("wWw.EXAMPLE.test.", RecordType::AAAA);
    let sent = m.to_vec().unwrap();
    let got = udp_raw(s.udp4, &sent, Duration::from_secs(3)).expect("answer");
    let qlen = sent.len() - 12;
    assert_eq!(&got[12..12 + qlen], &sent[12..], "question echoed verbatim");
    let reply = Message::from_vec(&got).unwrap();
    assert_eq!(reply.answers.len(), 1);
    assert_eq!(
        reply.answers[0].data,
        RData::AAAA("2001:db8::10".parse().unwrap())
    );
}

#[test]
fn nxdomain_and_nodata_carry_the_soa_with_the_negative_ttl() {
    let s = Server::start();
    // SOA TTL 3600, MINIMUM 300 → negative TTL 300 (RFC 2308).
    let soa = "example.test. 300 IN SOA ns1.example.test. hostmaster.example.test. 2026112401 7200 900 1209600 300";

    let d = s.dig(&["nope.example.test", "A"]);
    assert_eq!(d.status, "NXDOMAIN", "{}", d.raw);
    assert!(d.flag("aa"));
    assert!(d.answer.is_empty());
    assert_eq!(d.authority, vec![soa], "{}", d.raw);

    // Existing name, missing type.
    let d = s.dig(&["www.example.test", "MX"]);
    assert_eq!(d.status, "NOERROR", "{}", d.raw);
    assert!(d.flag("aa"));
    assert!(d.answer.is_empty());
    assert_eq!(d.authority, vec![soa], "{}", d.raw);

    // Empty non-terminals (a.b.deep exists): NODATA, not NXDOMAIN.
    for ent in ["b.deep.example.test", "deep.example.test"] {
        let d = s.dig(&[ent, "A"]);
        assert_eq!(d.status, "NOERROR", "{ent}: {}", d.raw);
        assert!(d.answer.is_empty());
        assert_eq!(d.authority, vec![soa], "{}", d.raw);
    }
    // But below an existing leaf the name does not exist.
    let d = s.dig(&["x.a.b.deep.example.test", "A"]);
    assert_eq!(d.status, "NXDOMAIN", "{}", d.raw);
}

#[test]
fn names_outside_every_zone_are_refused_without_aa() {
    let s = Server::start();
    for name in ["evilexample.test", "example.com", "test", "."] {
        let d = s.dig(&[name, "A"]);
        assert_eq!(d.status, "REFUSED", "{name}: {}", d.raw);
        assert!(!d.flag("aa"), "{name}: {}", d.raw);
        assert!(d.answer.is_empty() && d.authority.is_empty());
    }
}

#[test]
fn edns_opt_present_iff_query_had_one_and_payload_is_capped() {
    let s = Server::start();
    let d = s.dig(&["www.example.test", "+bufsize=4096"]);
    let edns = d.edns.as_deref().expect("OPT in reply");
    assert!(edns.contains("version: 0"), "{edns}");
    assert!(edns.contains("udp: 1232"), "{edns}");

    let d = s.dig(&["www.example.test", "+noedns"]);
    assert_eq!(d.status, "NOERROR");
    assert!(
        d.edns.is_none(),
        "no OPT without one in the query: {}",
        d.raw
    );

    // Unknown options are ignored, not an error.
    let d = s.dig(&["www.example.test", "+ednsopt=65001:c0ffee"]);
    assert_eq!(d.status, "NOERROR", "{}", d.raw);
    assert_eq!(d.answer.len(), 1);
}

#[test]
fn edns_version_above_zero_gets_badvers() {
    let s = Server::start();
    let d = s.dig(&["www.example.test", "+edns=1", "+noednsnegotiation"]);
    assert_eq!(d.status, "BADVERS", "{}", d.raw);
    assert!(d.answer.is_empty());
    assert!(
        d.edns.as_deref().is_some_and(|e| e.contains("version: 0")),
        "{}",
        d.raw
    );
}

#[test]
fn ecs_is_echoed_with_scope_zero_for_static_answers() {
    let s = Server::start();
    let d = s.dig(&["www.example.test", "+subnet=81.2.69.0/24"]);
    assert_eq!(d.status, "NOERROR", "{}", d.raw);
    assert_eq!(
        d.client_subnet.as_deref(),
        Some("81.2.69.0/24/0"),
        "{}",
        d.raw
    );
    let d = s.dig(&["www.example.test", "AAAA", "+subnet=2a02:1:2::/56"]);
    assert_eq!(
        d.client_subnet.as_deref(),
        Some("2a02:1:2::/56/0"),
        "{}",
        d.raw
    );
    // Source prefix 0 is the RFC 7871 "do not use my address" form; still echoed.
    let d = s.dig(&["www.example.test", "+subnet=0.0.0.0/0"]);
    assert_eq!(d.client_subnet.as_deref(), Some("0.0.0.0/0/0"), "{}", d.raw);
}

/// A query for www.example.test A with an OPT carrying one ECS option of the given bytes.
fn ecs_query(option: &[u8]) -> Vec<u8> {
    let mut b = query("www.example.test.", RecordType::A).to_vec().unwrap();
    b[11] = 1; // ARCOUNT
    b.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0]);
    b.extend_from_slice(&((option.len() + 4) as u16).to_be_bytes());
    b.extend_from_slice(&8u16.to_be_bytes());
    b.extend_from_slice(&(option.len() as u16).to_be_bytes());
    b.extend_from_slice(option);
    b
}

#[test]
fn invalid_ecs_gets_formerr() {
    let s = Server::start();
    let cases: &[(&str, &[u8])] = &[
        ("non-zero scope", &[0, 1, 24, 16, 81, 2, 69]),
        ("unknown family", &[0, 7, 24, 0, 81, 2, 69]),
        ("prefix too long", &[0, 1, 33, 0, 81, 2, 69, 1, 0]),
        ("bits beyond prefix", &[0, 1, 22, 0, 81, 2, 69]),
        ("address longer than prefix", &[0, 1, 16, 0, 81, 2, 69]),
        (
            "v6 prefix too long",
            &[
                0, 2, 129, 0, 0x2a, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ],
        ),
    ];
    for (what, opt) in cases {
        let got = udp_raw(s.udp4, &ecs_query(opt), Duration::from_secs(3)).expect(what);
        let m = Message::from_vec(&got).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr, "{what}");
        assert_eq!(m.metadata.id, 0x4242, "{what}");
        assert!(m.answers.is_empty(), "{what}");
    }
    // The valid form of the same option is answered.
    let got = udp_raw(
        s.udp4,
        &ecs_query(&[0, 1, 24, 0, 81, 2, 69]),
        Duration::from_secs(3),
    );
    let m = Message::from_vec(&got.unwrap()).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(m.answers.len(), 1);
}

#[test]
fn large_answers_set_tc_over_udp_and_come_whole_over_tcp() {
    let s = Server::start();
    // No EDNS: 512-byte limit; the 8-record TXT RRset does not fit.
    let d = s.dig(&["big.example.test", "TXT", "+noedns", "+ignore"]);
    assert!(d.flag("tc"), "{}", d.raw);
    assert!(
        d.answer.is_empty(),
        "TC answers carry no partial RRset: {}",
        d.raw
    );
    // EDNS with a small buffer: still truncated, and the OPT is still there.
    let d = s.dig(&["big.example.test", "TXT", "+bufsize=512", "+ignore"]);
    assert!(d.flag("tc"), "{}", d.raw);
    assert!(d.edns.is_some(), "{}", d.raw);
    // dig follows TC to TCP by itself.
    let d = s.dig(&["big.example.test", "TXT", "+noedns"]);
    assert!(d.retried_tcp, "{}", d.raw);
    assert_eq!(d.answer.len(), 8, "{}", d.raw);
    // EDNS 1232 fits it over UDP.
    let d = s.dig(&["big.example.test", "TXT", "+bufsize=1232"]);
    assert!(!d.flag("tc"));
    assert_eq!(d.answer.len(), 8, "{}", d.raw);
    // And plain TCP.
    let d = s.dig(&["big.example.test", "TXT", "+tcp"]);
    assert_eq!(d.answer.len(), 8, "{}", d.raw);
}

#[test]
fn tcp_pipelined_queries_are_all_answered_in_order() {
    let s = Server::start();
    let mut c = tcp_connect(s.tcp4);
    let names = [
        "www.example.test.",
        "mail.example.test.",
        "nope.example.test.",
    ];
    let mut burst = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let mut m = query(n, RecordType::A);
        m.metadata.id = 100 + i as u16;
        let b = m.to_vec().unwrap();
        burst.extend_from_slice(&(b.len() as u16).to_be_bytes());
        burst.extend_from_slice(&b);
    }
    std::io::Write::write_all(&mut c, &burst).unwrap(); // one write: all three in flight
    for (i, n) in names.iter().enumerate() {
        let m = Message::from_vec(&tcp_recv(&mut c).expect("answer")).unwrap();
        assert_eq!(m.metadata.id, 100 + i as u16, "{n}");
    }
}

#[test]
fn tcp_idle_connections_are_closed() {
    let s = Server::start_with(Opts {
        server_extra: "tcp_idle_timeout = \"300ms\"".into(),
        ..Default::default()
    });
    let mut c = tcp_connect(s.tcp4);
    let started = std::time::Instant::now();
    let mut buf = [0u8; 1];
    // Read blocks until the server closes (EOF = Ok(0)); the client timeout is 5 s.
    let n = std::io::Read::read(&mut c, &mut buf);
    assert!(
        matches!(n, Ok(0)),
        "server closed the idle connection: {n:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[test]
fn tcp_connection_limit_closes_excess_connections() {
    let s = Server::start_with(Opts {
        server_extra: "tcp_max_connections = 2".into(),
        ..Default::default()
    });
    let q = query("www.example.test.", RecordType::A).to_vec().unwrap();
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = tcp_connect(s.tcp4);
        tcp_send(&mut c, &q);
        assert!(tcp_recv(&mut c).is_some(), "within the limit: answered");
        held.push(c);
    }
    let mut extra = tcp_connect(s.tcp4);
    tcp_send(&mut extra, &q);
    assert!(
        tcp_recv(&mut extra).is_none(),
        "third connection is closed unanswered"
    );
    // The held connections still work, and a slot frees when one closes.
    tcp_send(&mut held[0], &q);
    assert!(tcp_recv(&mut held[0]).is_some());
    drop(held.pop());
    poll(Duration::from_secs(5), "a freed TCP slot", || {
        let mut c = tcp_connect(s.tcp4);
        tcp_send(&mut c, &q);
        tcp_recv(&mut c)
    });
}

#[test]
fn any_is_answered_minimally_per_rfc8482() {
    let s = Server::start();
    for transport in ["+notcp", "+tcp"] {
        let d = s.dig(&["example.test", "ANY", transport]);
        assert_eq!(d.status, "NOERROR", "{}", d.raw);
        assert_eq!(
            d.answer,
            vec![r#"example.test. 3600 IN HINFO "RFC8482" """#],
            "{}",
            d.raw
        );
    }
    let d = s.dig(&["nope.example.test", "ANY"]);
    assert_eq!(d.status, "NXDOMAIN");
}

#[test]
fn other_classes_opcodes_and_transfers_are_refused_or_notimp() {
    let s = Server::start();
    let d = s.dig(&["-c", "CH", "www.example.test", "TXT"]);
    assert_eq!(d.status, "REFUSED", "{}", d.raw);
    let d = s.dig(&["example.test", "AXFR"]);
    assert!(
        d.raw.contains("REFUSED") || d.raw.contains("Transfer failed"),
        "{}",
        d.raw
    );

    let mut c = tcp_connect(s.tcp4);
    tcp_send(
        &mut c,
        &query("example.test.", RecordType::AXFR).to_vec().unwrap(),
    );
    let m = Message::from_vec(&tcp_recv(&mut c).unwrap()).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    assert!(m.answers.is_empty());

    for (op, want) in [
        (OpCode::Notify, ResponseCode::Refused),
        (OpCode::Update, ResponseCode::Refused),
        (OpCode::Status, ResponseCode::NotImp),
    ] {
        let mut m = query("example.test.", RecordType::SOA);
        m.metadata.op_code = op;
        let r = udp_msg(s.udp4, &m);
        assert_eq!(r.metadata.response_code, want, "{op:?}");
        assert_eq!(r.metadata.op_code, op);
    }
}

#[test]
fn responses_are_never_answered() {
    let s = Server::start();
    let mut m = query("www.example.test.", RecordType::A);
    m.metadata.message_type = MessageType::Response;
    assert!(udp_raw(s.udp4, &m.to_vec().unwrap(), Duration::from_millis(500)).is_none());
    // The server is still answering queries.
    assert_eq!(s.dig(&["www.example.test"]).status, "NOERROR");
}

#[test]
fn malformed_packets_get_formerr_or_nothing_and_the_server_keeps_answering() {
    let mut s = Server::start();
    let good = query("www.example.test.", RecordType::A).to_vec().unwrap();
    let mut packets: Vec<Vec<u8>> = vec![
        vec![],
        vec![0; 11],
        good[..13].to_vec(),
        good[..good.len() - 1].to_vec(),
        [good.clone(), vec![0xde, 0xad]].concat(),
    ];
    // QDCOUNT 2, and a label length running past the end.
    let mut two = good.clone();
    two[5] = 2;
    packets.push(two);
    let mut long_label = good.clone();
    long_label[12] = 63;
    packets.push(long_label);
    // A deterministic pseudo-random sweep: every packet is a mutated copy of a valid query.
    let mut x: u32 = 0x9e37_79b9;
    for _ in 0..300 {
        let mut p = good.clone();
        for _ in 0..3 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let i = (x as usize) % p.len();
            p[i] = (x >> 8) as u8;
        }
        packets.push(p);
    }
    for p in &packets {
        if let Some(reply) = udp_raw(s.udp4, p, Duration::from_millis(200)) {
            // If anything comes back, it is a well-formed DNS response.
            let m = Message::from_vec(&reply).expect("reply parses");
            assert_eq!(m.metadata.message_type, MessageType::Response);
        }
    }
    assert!(
        s.alive(),
        "server survived {} malformed packets",
        packets.len()
    );
    let d = s.dig(&["www.example.test"]);
    assert_eq!(d.answer, vec!["www.example.test. 3600 IN A 192.0.2.10"]);
}

#[test]
fn truncated_header_only_packets_get_formerr() {
    let s = Server::start();
    let good = query("www.example.test.", RecordType::A).to_vec().unwrap();
    let got = udp_raw(s.udp4, &good[..14], Duration::from_secs(3)).expect("FORMERR");
    let m = Message::from_vec(&got).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
}

#[test]
fn referrals_below_a_delegation_are_not_authoritative_and_carry_glue() {
    let s = Server::start();
    let d = s.dig(&["host.sub.example.test", "A"]);
    assert_eq!(d.status, "NOERROR", "{}", d.raw);
    assert!(!d.flag("aa"), "{}", d.raw);
    assert!(d.answer.is_empty());
    assert_eq!(
        d.authority,
        vec!["sub.example.test. 3600 IN NS ns.sub.example.test."]
    );
    assert_eq!(
        d.additional,
        vec!["ns.sub.example.test. 3600 IN A 192.0.2.53"]
    );
}

#[test]
fn cname_chains_inside_the_zone_are_followed() {
    let s = Server::start();
    let d = s.dig(&["alias.example.test", "A"]);
    assert_eq!(
        d.answer,
        vec![
            "alias.example.test. 3600 IN CNAME www.example.test.",
            "www.example.test. 3600 IN A 192.0.2.10"
        ],
        "{}",
        d.raw
    );
}

#[test]
fn apex_ns_answers_include_glue() {
    let s = Server::start();
    let d = s.dig(&["example.test", "NS"]);
    assert_eq!(d.answer.len(), 2, "{}", d.raw);
    assert!(
        d.additional
            .iter()
            .any(|r| r == "ns1.example.test. 3600 IN A 127.0.0.1"),
        "{}",
        d.raw
    );
    assert!(
        d.additional
            .iter()
            .any(|r| r == "ns2.example.test. 3600 IN AAAA ::1"),
        "{}",
        d.raw
    );
}

#[test]
fn ipv6_udp_and_tcp_listeners_answer() {
    let s = Server::start();
    let v6 = s.udp6.expect("::1 bound");
    let d = dig_at(v6, &["www.example.test", "AAAA"]);
    assert_eq!(
        d.answer,
        vec!["www.example.test. 3600 IN AAAA 2001:db8::10"],
        "{}",
        d.raw
    );
    let d = dig_at(v6, &["www.example.test", "A", "+tcp"]);
    assert_eq!(
        d.answer,
        vec!["www.example.test. 3600 IN A 192.0.2.10"],
        "{}",
        d.raw
    );
}

#[test]
fn sigterm_shuts_down_gracefully_with_exit_zero() {
    let mut s = Server::start();
    assert_eq!(s.dig(&["www.example.test"]).status, "NOERROR");
    let status = s
        .signal_and_wait("TERM", Duration::from_secs(10))
        .expect("exited within 10 s");
    assert!(status.success(), "{status:?}");
}

#[test]
fn kdig_agrees() {
    // A second, independent client implementation (Knot's) sees the same answer.
    let s = Server::start();
    let out = std::process::Command::new("kdig")
        .arg(format!("@{}", s.udp4.ip()))
        .args([
            "-p",
            &s.udp4.port().to_string(),
            "+short",
            "www.example.test",
            "A",
        ])
        .output()
        .expect("kdig is installed (knot-dnsutils); .ci/run installs it");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "192.0.2.10");
}

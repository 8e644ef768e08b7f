//! Abuse handling through the real binary: response rate limiting.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn rate_limiting_drops_or_truncates_floods_and_tcp_still_answers() {
    let s = Server::start_with(Opts {
        extra: "[rrl]\nresponses_per_second = 5\nslip = 2\nexempt = []\n".into(),
        ..Default::default()
    });
    // Fire 40 identical queries back to back (well inside one or two seconds), then collect.
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..40u16 {
        let mut m = query("www.example.test.", RecordType::A);
        m.metadata.id = i;
        sock.send_to(&m.to_vec().unwrap(), s.udp4).unwrap();
    }
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let (mut full, mut truncated) = (0, 0);
    let mut buf = [0u8; 2048];
    while let Ok((n, _)) = sock.recv_from(&mut buf) {
        let m = Message::from_vec(&buf[..n]).unwrap();
        if m.metadata.truncation {
            assert!(m.answers.is_empty(), "a slipped answer carries no records");
            truncated += 1;
        } else {
            full += 1;
        }
    }
    let silent = 40 - full - truncated;
    eprintln!("40 identical queries: {full} answered, {truncated} truncated, {silent} dropped");
    // The burst spans at most two one-second windows: at most 2 × 5 full answers.
    assert!((5..=10).contains(&full), "{full}");
    assert!(truncated > 0 && silent > 0, "{truncated} {silent}");
    // A real client retries over TCP and gets the answer.
    let d = s.dig(&["www.example.test", "+tcp"]);
    assert_eq!(d.answer, vec!["www.example.test. 3600 IN A 192.0.2.10"]);
    // Another name is not limited.
    assert_eq!(s.dig(&["mail.example.test"]).status, "NOERROR");
}

#[test]
fn one_source_cannot_hold_every_tcp_slot() {
    // The per-source share applies once more than half the slots are in use (3 of 4 here);
    // below that one source may open as many as it likes (tests/tcp_slots.rs).
    let s = Server::start_with(Opts {
        server_extra: "tcp_max_per_source = 2\ntcp_max_connections = 4".into(),
        ..Default::default()
    });
    let q = query("www.example.test.", RecordType::A).to_vec().unwrap();
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = tcp_connect(s.tcp4);
        tcp_send(&mut c, &q);
        assert!(tcp_recv(&mut c).is_some(), "table at most half full");
        held.push(c);
    }
    // The held connections are active (a connection quiet for a second would give its slot
    // to its own source's new one) …
    for c in &mut held {
        tcp_send(c, &q);
        assert!(tcp_recv(c).is_some());
    }
    // … so a fourth connection from the same address is closed unanswered …
    let mut extra = tcp_connect(s.tcp4);
    tcp_send(&mut extra, &q);
    assert!(
        tcp_recv(&mut extra).is_none(),
        "fourth connection from one source"
    );
    // … while another source address is still served.
    let mut other = {
        use std::net::SocketAddr;
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.bind(&SocketAddr::from(([127, 0, 0, 9], 0)).into())
            .unwrap();
        sock.connect(&s.tcp4.into()).unwrap();
        let c: std::net::TcpStream = sock.into();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c
    };
    tcp_send(&mut other, &q);
    assert!(
        tcp_recv(&mut other).is_some(),
        "another source has its own budget"
    );
}

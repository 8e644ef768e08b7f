//! TCP connection slots through the real binary: one busy resolver is served in full on an idle
//! server, and neither stalled writers nor idle connections can lock new clients out.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use socket2::{Domain, Socket, Type};

/// Connects to `to` from source address `from` (any loopback address works on Linux).
fn connect_from(from: IpAddr, to: SocketAddr) -> Socket {
    let sock = Socket::new(Domain::for_address(to), Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::new(from, 0).into()).unwrap();
    sock.connect(&to.into()).unwrap();
    sock
}

fn stream_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let s: TcpStream = connect_from(from, to).into();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

fn lo(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

fn www() -> Vec<u8> {
    query("www.example.test.", RecordType::A).to_vec().unwrap()
}

/// One connection from `from`: a query, and its answer within `wait`.
fn answered_from(from: IpAddr, to: SocketAddr, wait: Duration) -> Option<TcpStream> {
    let s: TcpStream = connect_from(from, to).into();
    s.set_read_timeout(Some(wait)).unwrap();
    let mut s = s;
    let mut framed = (www().len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&www());
    s.write_all(&framed).ok()?;
    let m = Message::from_vec(&tcp_recv(&mut s)?).ok()?;
    (m.metadata.response_code == ResponseCode::NoError).then_some(s)
}

/// A connection from `from` that sends queries for a large answer and never reads, until the
/// server stops reading too (our write blocks for 200 ms): the server is then stuck writing
/// answers nobody takes.
fn stalled_writer(from: IpAddr, to: SocketAddr) -> Socket {
    let sock = Socket::new(Domain::for_address(to), Type::STREAM, None).unwrap();
    // Small buffers on our side, so the server stalls after little data.
    sock.set_recv_buffer_size(4096).unwrap();
    sock.set_send_buffer_size(4096).unwrap();
    sock.bind(&SocketAddr::new(from, 0).into()).unwrap();
    sock.connect(&to.into()).unwrap();
    sock.set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut burst = Vec::new();
    for id in 0..64u16 {
        let mut m = query("big.example.test.", RecordType::TXT);
        m.metadata.id = id;
        let b = m.to_vec().unwrap();
        burst.extend_from_slice(&(b.len() as u16).to_be_bytes());
        burst.extend_from_slice(&b);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut written = 0usize;
    loop {
        match (&sock).write(&burst) {
            Ok(n) => written += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            // On a loaded machine the server's write timeout can fire before our write does:
            // it has already reset the connection (`was_closed` still sees that).
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => {
                break;
            }
            Err(e) => panic!("stalled writer setup: {e}"),
        }
        assert!(
            Instant::now() < deadline && written < 64 << 20,
            "the server kept reading {written} bytes of queries nobody reads answers to"
        );
    }
    sock
}

/// Whether the server reset this connection (without reading from it, which would unstall it).
/// Bytes waiting unread in a socket's receive queue (FIONREAD).
fn unread(sock: &Socket) -> usize {
    use std::os::fd::AsRawFd;
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through the pointer, which is valid for the call.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::FIONREAD, &mut n) };
    if r == 0 {
        usize::try_from(n).unwrap_or(0)
    } else {
        0
    }
}

/// Whether the server closed the connection: reset (RST), or shut down with a FIN still behind
/// unread answers (POLLRDHUP sees that without reading them).
fn was_closed(sock: &Socket) -> bool {
    use std::os::fd::AsRawFd;
    let mut p = libc::pollfd {
        fd: sock.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no timeout.
    let r = unsafe { libc::poll(&mut p, 1, 0) };
    r > 0 && p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}

#[test]
fn one_address_gets_32_and_200_concurrent_connections_answered_on_an_idle_server() {
    // Defaults: 1024 slots, per-source share 16 (applies only once more than half are in use).
    let s = Server::start_with(Opts::default());
    for n in [32, 200] {
        let mut conns: Vec<TcpStream> = (0..n).map(|_| tcp_connect(s.tcp4)).collect();
        for c in &mut conns {
            tcp_send(c, &www());
        }
        let answered = conns
            .iter_mut()
            .map(|c| tcp_recv(c).and_then(|b| Message::from_vec(&b).ok()))
            .filter(Option::is_some)
            .count();
        assert_eq!(answered, n, "{n} simultaneous connections from 127.0.0.1");
    }
}

#[test]
fn stalled_writers_and_idle_connections_give_way_to_new_clients() {
    // Timeouts far beyond the test: only eviction can free a slot in time.
    let s = Server::start_with(Opts {
        ipv6: true,
        server_extra:
            "tcp_max_connections = 8\ntcp_idle_timeout = \"60s\"\ntcp_write_timeout = \"60s\""
                .into(),
        ..Default::default()
    });
    let started = Instant::now();
    // Four connections flood queries for a large answer and never read …
    let stalled: Vec<Socket> = (0..4).map(|_| stalled_writer(lo(1), s.tcp4)).collect();
    // … and four other sources hold idle connections: the table is full.
    let mut idle: Vec<TcpStream> = (2..=5)
        .map(|i| {
            let mut c = stream_from(lo(i), s.tcp4);
            tcp_send(&mut c, &www());
            assert!(tcp_recv(&mut c).is_some(), "idle client {i} answered once");
            c
        })
        .collect();
    eprintln!("table filled in {:?}", started.elapsed());
    // On a loaded machine the server may still be writing answers to the flooders while the
    // idle clients query; only once nothing more arrives on any flooder are they stalled.
    // Then the idle clients query once more, so they are certainly the more recently active.
    let mut last: Vec<usize> = stalled.iter().map(unread).collect();
    let mut stable_since = Instant::now();
    poll(Duration::from_secs(20), "the flooders to stall", || {
        let now: Vec<usize> = stalled.iter().map(unread).collect();
        if now != last {
            last = now;
            stable_since = Instant::now();
        }
        (stable_since.elapsed() >= Duration::from_millis(500)).then_some(())
    });
    for (i, c) in idle.iter_mut().enumerate() {
        tcp_send(c, &www());
        assert!(tcp_recv(c).is_some(), "idle client {i} answered again");
    }
    // A fresh client from another source, and one over IPv6, are answered within seconds.
    let v6 = SocketAddr::new("::1".parse().unwrap(), s.udp6.expect("::1 listener").port());
    let mut fresh = Vec::new();
    for (from, to) in [(lo(50), s.tcp4), ("::1".parse().unwrap(), v6)] {
        let t = Instant::now();
        fresh.push(poll(
            Duration::from_secs(10),
            "a slot for a new client",
            || answered_from(from, to, Duration::from_secs(2)),
        ));
        eprintln!("new client from {from} answered after {:?}", t.elapsed());
    }
    // The slots came from the stalled writers (quiet since they stalled, before the idle
    // clients' queries), which were reset; the idle clients still work.
    poll(Duration::from_secs(5), "two stalled writers closed", || {
        (stalled.iter().filter(|s| was_closed(s)).count() >= 2).then_some(())
    });
    for (i, c) in idle.iter_mut().enumerate() {
        tcp_send(c, &www());
        assert!(tcp_recv(c).is_some(), "idle client {i} kept its slot");
    }
}

#[test]
fn a_client_that_stops_reading_is_reset_after_the_write_timeout() {
    let s = Server::start_with(Opts {
        server_extra: "tcp_idle_timeout = \"60s\"\ntcp_write_timeout = \"500ms\"".into(),
        ..Default::default()
    });
    let stalled = stalled_writer(lo(1), s.tcp4);
    let t = Instant::now();
    poll(
        Duration::from_secs(10),
        "the stalled connection reset",
        || was_closed(&stalled).then_some(()),
    );
    eprintln!("reset {:?} after the stall began", t.elapsed());
    // The server is fine.
    assert!(answered_from(lo(1), s.tcp4, Duration::from_secs(5)).is_some());
}

#[test]
fn a_table_full_of_idle_connections_gives_the_quietest_slot_to_a_new_client() {
    let s = Server::start_with(Opts {
        server_extra: "tcp_max_connections = 16\ntcp_idle_timeout = \"60s\"".into(),
        ..Default::default()
    });
    // Sixteen sources, one idle connection each; the first then stays quiet while the others
    // ask again, so it is the quietest.
    let mut conns: Vec<TcpStream> = (2..18)
        .map(|i| {
            let mut c = stream_from(lo(i), s.tcp4);
            tcp_send(&mut c, &www());
            assert!(tcp_recv(&mut c).is_some(), "client {i} answered");
            c
        })
        .collect();
    for c in &mut conns[1..] {
        tcp_send(c, &www());
        assert!(tcp_recv(c).is_some());
    }
    let t = Instant::now();
    let _new = poll(Duration::from_secs(10), "a slot for a new client", || {
        answered_from(lo(200), s.tcp4, Duration::from_secs(2))
    });
    eprintln!("new client answered after {:?}", t.elapsed());
    // The quietest connection was closed (EOF) …
    let mut buf = [0u8; 1];
    assert!(
        matches!(conns[0].read(&mut buf), Ok(0)),
        "the quietest connection gave up its slot"
    );
    // … and every other one still works.
    for (i, c) in conns.iter_mut().enumerate().skip(1) {
        tcp_send(c, &www());
        assert!(tcp_recv(c).is_some(), "connection {i} kept its slot");
    }
}

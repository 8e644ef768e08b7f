//! Response rate limiting cannot be bypassed by varying what a spoofer controls: the EDNS
//! Client Subnet option, random subdomains, or a mix of names. The real binary, RRL on, and
//! queries from 127.0.0.2 (the config exempts only 127.0.0.1).
//!
//! Bounds are derived from the configured rate and the seconds a burst spans (the limiter
//! counts per wall-clock second): a burst lasting `t` seconds touches at most `t + 2` windows.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::*;

/// Responses per second per class, as configured below.
const RATE: usize = 10;
/// The overall budget per client network: `ALL_FACTOR` (4) × `RATE`.
const ALL: usize = 4 * RATE;

fn server() -> Server {
    Server::start_with(Opts {
        extra: format!(
            "[rrl]\nresponses_per_second = {RATE}\nslip = 2\nexempt = [\"127.0.0.1/32\", \"::1/128\"]\n"
        ),
        ..Default::default()
    })
}

/// A UDP client on the non-exempt loopback address 127.0.0.2.
fn client() -> UdpSocket {
    let sock = UdpSocket::bind("127.0.0.2:0").expect("bind 127.0.0.2 (loopback is a /8)");
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    sock
}

/// A query for `name`/`qtype` with EDNS (4096 bytes) and, if given, an ECS option.
fn query(id: u16, name: &str, qtype: u16, ecs: Option<([u8; 4], u8)>) -> Vec<u8> {
    let mut p = id.to_be_bytes().to_vec();
    p.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 1]);
    for label in name.trim_end_matches('.').split('.') {
        p.push(label.len() as u8);
        p.extend_from_slice(label.as_bytes());
    }
    p.push(0);
    p.extend_from_slice(&qtype.to_be_bytes());
    p.extend_from_slice(&[0, 1]);
    let mut opt = Vec::new();
    if let Some((addr, prefix)) = ecs {
        let bytes = usize::from(prefix).div_ceil(8);
        opt.extend_from_slice(&[0, 8]);
        opt.extend_from_slice(&(4 + bytes as u16).to_be_bytes());
        opt.extend_from_slice(&[0, 1, prefix, 0]);
        opt.extend_from_slice(&addr[..bytes]);
    }
    p.extend_from_slice(&[0, 0, 41, 0x10, 0x00, 0, 0, 0, 0]);
    p.extend_from_slice(&(opt.len() as u16).to_be_bytes());
    p.extend_from_slice(&opt);
    p
}

/// What came back for a burst.
#[derive(Debug, Default)]
struct Tally {
    /// Responses not truncated, by response code.
    full_noerror: usize,
    full_nxdomain: usize,
    /// Truncated (slipped) responses.
    truncated: usize,
    /// Bytes sent and received.
    bytes_out: usize,
    bytes_in: usize,
    /// The wall-clock windows the burst may have touched.
    windows: usize,
}

impl Tally {
    fn count(&mut self, bytes: &[u8]) {
        self.bytes_in += bytes.len();
        let m = Message::from_vec(bytes).expect("a DNS response");
        if m.metadata.truncation {
            assert!(
                m.answers.is_empty(),
                "a slipped response carries no records"
            );
            self.truncated += 1;
        } else if m.metadata.response_code == ResponseCode::NXDomain {
            self.full_nxdomain += 1;
        } else if m.metadata.response_code == ResponseCode::NoError {
            self.full_noerror += 1;
        }
    }
}

/// Sends every query (paced in groups so the client's receive buffer keeps up), reading
/// responses concurrently; stops sending after 30 s whatever is left. Returns the tally.
fn burst(to: SocketAddr, queries: &[Vec<u8>]) -> Tally {
    let sock = client();
    let reader = sock.try_clone().unwrap();
    let started = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let handle = std::thread::spawn(move || {
        let mut tally = Tally::default();
        let mut buf = [0u8; 4096];
        let mut done = false;
        // Until the sender is done and nothing arrives for a read timeout (300 ms).
        let deadline = Instant::now() + Duration::from_secs(40);
        while Instant::now() < deadline {
            match reader.recv_from(&mut buf) {
                Ok((n, _)) => tally.count(&buf[..n]),
                Err(_) if done => break,
                Err(_) => {}
            }
            done = done || rx.try_recv().is_ok();
        }
        tally
    });
    let mut sent = 0;
    for group in queries.chunks(50) {
        if started.elapsed() > Duration::from_secs(30) {
            break;
        }
        for q in group {
            sock.send_to(q, to).unwrap();
            sent += q.len();
        }
        std::thread::yield_now();
    }
    tx.send(()).unwrap();
    let mut tally = handle.join().unwrap();
    tally.bytes_out = sent;
    tally.windows = started.elapsed().as_secs() as usize + 2;
    tally
}

/// A random /24 (not 127/8, not 0/8).
fn random_subnet() -> [u8; 4] {
    [fastrand::u8(1..=223), fastrand::u8(..), fastrand::u8(..), 0]
        .map(|b| if b == 127 { 128 } else { b })
}

/// The amplifier the issue reported: `big.example.test TXT` (~800 bytes) with a new random
/// client subnet each time. The answer is the same for every subnet, so the subnets share
/// one budget: the number answered in full stays near the configured rate, not 2,000.
#[test]
fn random_ecs_subnets_do_not_buy_fresh_budgets_for_static_answers() {
    let s = server();
    let queries: Vec<Vec<u8>> = (0..2000u16)
        .map(|i| query(i, "big.example.test", 16, Some((random_subnet(), 24))))
        .collect();
    let t = burst(s.udp4, &queries);
    eprintln!("big TXT with random ECS: {t:?}");
    let bound = RATE * t.windows;
    assert!(
        t.full_noerror <= bound,
        "{} of 2000 answered in full (bound {bound})",
        t.full_noerror
    );
    assert!(t.full_noerror >= RATE, "the first {RATE} are answered");
    assert!(t.truncated > 0, "slip still sends some clients to TCP");
    // Amplification of what was answered in full and slipped, over all queries sent.
    assert!(
        t.bytes_in < t.bytes_out,
        "amplification {:.2}",
        t.bytes_in as f64 / t.bytes_out as f64
    );
    // A real client behind the network still gets the answer over TCP.
    let d = s.dig(&["big.example.test", "TXT", "+tcp"]);
    assert_eq!(d.status, "NOERROR");
    assert_eq!(
        d.answer.len(),
        8,
        "the eight TXT records of big.example.test"
    );
}

/// Random subdomains: every NXDOMAIN of one zone is counted in one bucket.
#[test]
fn random_subdomain_nxdomains_share_one_budget_per_zone() {
    let s = server();
    let queries: Vec<Vec<u8>> = (0..2000u16)
        .map(|i| {
            let name = format!("r{}x{i}.example.test", fastrand::u32(..));
            query(i, &name, 1, None)
        })
        .collect();
    let t = burst(s.udp4, &queries);
    eprintln!("random subdomains: {t:?}");
    let bound = RATE * t.windows;
    assert!(
        t.full_nxdomain <= bound,
        "{} of 2000 NXDOMAINs sent (bound {bound})",
        t.full_nxdomain
    );
    assert!(t.full_nxdomain >= RATE);
    assert_eq!(t.full_noerror, 0);
}

/// A routed name's answer depends on the client subnet (ECS scope > 0): each subnet has a
/// budget of its own, so a large resolver asking for many client networks is not limited as
/// a flood. A type the profile answers the same for every subnet (TXT: NODATA, scope 0) is
/// counted once, whatever subnet is sent.
#[test]
fn routed_answers_keep_per_subnet_budgets() {
    let s = server();
    let sock = client();
    let subnets = [[81, 2, 69, 0], [216, 160, 83, 0], [1, 0, 16, 0]];
    let per_subnet = RATE * 6 / 10;
    let mut id = 0u16;
    let mut answered = [0usize; 3];
    let mut buf = [0u8; 4096];
    for _ in 0..per_subnet {
        for (i, net) in subnets.iter().enumerate() {
            id += 1;
            sock.send_to(&query(id, "mqtt.example.test", 1, Some((*net, 24))), s.udp4)
                .unwrap();
            // One at a time: every answer is expected, none may be lost to buffers.
            if let Ok((n, _)) = sock.recv_from(&mut buf) {
                let m = Message::from_vec(&buf[..n]).unwrap();
                if !m.metadata.truncation && !m.answers.is_empty() {
                    answered[i] += 1;
                }
            }
        }
    }
    assert_eq!(
        answered,
        [per_subnet; 3],
        "each subnet answered within its own budget ({per_subnet} each, {} together > {RATE})",
        per_subnet * 3
    );
    // The same name and subnets, a type whose answer does not depend on the subnet.
    let queries: Vec<Vec<u8>> = (0..60u16)
        .map(|i| query(i, "mqtt.example.test", 16, Some((random_subnet(), 24))))
        .collect();
    let t = burst(s.udp4, &queries);
    eprintln!("mqtt TXT (NODATA) with random ECS: {t:?}");
    assert!(t.full_noerror <= RATE * t.windows, "{t:?}");
}

/// Names a wildcard answers are answers of their own (one bucket each), and a routed name's
/// subnets too: the network's overall budget, ALL × the rate, caps the mix.
#[test]
fn the_overall_budget_caps_a_mix_of_distinct_answers() {
    let s = server();
    let queries: Vec<Vec<u8>> = (0..2000u16)
        .map(|i| {
            if i % 2 == 0 {
                let name = format!("d{}x{i}.devices.example.test", fastrand::u32(..));
                query(i, &name, 1, None)
            } else {
                query(i, "mqtt.example.test", 1, Some((random_subnet(), 24)))
            }
        })
        .collect();
    let t = burst(s.udp4, &queries);
    eprintln!("wildcard names and routed subnets: {t:?}");
    let bound = ALL * t.windows;
    assert!(
        t.full_noerror <= bound,
        "{} of 2000 answered in full (bound {bound})",
        t.full_noerror
    );
    assert!(t.full_noerror >= ALL, "{t:?}");
    // An exempt source is never limited (127.0.0.1 is in the exempt list).
    for _ in 0..3 {
        assert_eq!(s.dig(&["www.example.test"]).status, "NOERROR");
    }
}

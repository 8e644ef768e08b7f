//! Fleet II, measured steering, with real parts: two geosteer instances on a real 3-member
//! etcd, one located in westeurope and one in eastus (their vantage points), probing real HTTP
//! listeners on loopback. The westeurope vantage's path to the eu endpoint is slow (its
//! listener answers after a delay); the eastus instance, whose own probes see eu fast, follows
//! the westeurope vantage's measurement for a London client — the vantage nearest to London —
//! and comes back when that path is fast again; `explain` shows the term.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::etcd::EtcdCluster;
use common::fleet::{admin, cluster_toml};
use common::regions::{EU, US};
use common::{Opts, Server, http, json_body, poll};

fn london(s: &Server) -> String {
    common::fleet::london(s, "mqtt.s.test")
}

/// An HTTP listener on `ip` that answers 200 after `delay_ms` (changeable while it runs).
fn http_listener(ip: &str) -> (u16, Arc<AtomicU64>) {
    let l = TcpListener::bind((ip, 0)).unwrap();
    let port = l.local_addr().unwrap().port();
    let delay = Arc::new(AtomicU64::new(0));
    let d = delay.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { continue };
            let d = d.clone();
            std::thread::spawn(move || {
                let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = [0u8; 2048];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                std::thread::sleep(Duration::from_millis(d.load(Ordering::Relaxed)));
                let _ = c.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                );
            });
        }
    });
    (port, delay)
}

/// Zone `s.test`: a performance profile over eu and us, probed over HTTP; each endpoint's
/// probe port is this instance's path to it.
fn zones(dir: &Path, eu_port: u16, us_port: u16) -> PathBuf {
    let zones = dir.join("zones");
    std::fs::create_dir_all(&zones).unwrap();
    std::fs::write(
        zones.join("s.test.zone"),
        "$ORIGIN s.test.\n$TTL 60\n@ IN SOA ns.s.test. h.s.test. 1 2 3 4 30\n@ IN NS ns.s.test.\nns IN A 127.0.0.1\n",
    )
    .unwrap();
    std::fs::write(
        zones.join("s.test.toml"),
        format!(
            "[[profile]]\nname = \"mqtt\"\nmethod = \"performance\"\nttl = 30\n\
             [profile.monitor]\nprotocol = \"http\"\npath = \"/\"\ntimeout = \"2s\"\n\
             [profile.stability]\nhold = \"2s\"\n\
             [[profile.endpoint]]\nname = \"eu\"\nregion = \"azure:westeurope\"\ntargets = [\"{EU}\"]\n\
             [profile.endpoint.monitor]\nport = {eu_port}\n\
             [[profile.endpoint]]\nname = \"us\"\nregion = \"azure:eastus\"\ntargets = [\"{US}\"]\n\
             [profile.endpoint.monitor]\nport = {us_port}\n"
        ),
    )
    .unwrap();
    zones
}

struct Instance {
    server: Server,
    _dir: tempfile::TempDir,
}

fn instance(etcd: &EtcdCluster, name: &str, region: &str, eu: u16, us: u16) -> Instance {
    let dir = tempfile::tempdir().unwrap();
    let z = zones(dir.path(), eu, us);
    let server = Server::start_with(Opts {
        zones_dir: Some(z),
        extra: format!(
            "[routing]\nserver_region = \"{region}\"\n{}",
            cluster_toml(etcd, name, "/steer/", "")
        ),
        ..Default::default()
    });
    Instance { server, _dir: dir }
}

fn explain(s: &Server) -> String {
    let (code, body) = http(
        admin(s),
        "GET",
        "/api/explain?name=mqtt.s.test&ecs=81.2.69.0/24",
        None,
        None,
    );
    assert_eq!(code, 200, "{body}");
    json_body(&body).to_string()
}

#[test]
fn steering_follows_the_fleets_measured_rtt() {
    let etcd = EtcdCluster::start(3);
    // The westeurope vantage reaches eu through a slow path; the eastus vantage through a fast
    // one (same endpoint address, a listener per path).
    let (slow_eu, slow) = http_listener(EU);
    let (fast_eu, _) = http_listener(EU);
    let (us, _) = http_listener(US);
    slow.store(40, Ordering::Relaxed);
    let west = instance(&etcd, "gs-west", "azure:westeurope", slow_eu, us);
    let east = instance(&etcd, "gs-east", "azure:eastus", fast_eu, us);

    // Alone, gs-east would answer eu for London (its own probes see eu fast, and London is
    // next to westeurope). With the fleet's matrix, the estimate goes through the vantage
    // nearest to London — gs-west, which measures eu at 40 ms — so it answers us.
    poll(
        Duration::from_secs(30),
        "gs-east follows gs-west's measurement",
        || (london(&east.server) == US).then_some(()),
    );
    poll(
        Duration::from_secs(30),
        "gs-west agrees (its held RTT follows)",
        || (london(&west.server) == US).then_some(()),
    );
    let e = explain(&east.server);
    assert!(e.contains("gs-west"), "explain names the vantage: {e}");
    assert!(e.contains("\"via\""), "explain carries the term: {e}");

    // The path heals: gs-west measures eu fast again, republishes, and both return to eu —
    // slowly on purpose: the RTT average decays with a 10 s time constant (a path that turned
    // fast once does not win clients back at once), then the margins must be beaten.
    slow.store(0, Ordering::Relaxed);
    for s in [&east.server, &west.server] {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while london(s) != EU {
            assert!(
                std::time::Instant::now() < deadline,
                "not back to eu within 120 s: {}",
                explain(s)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

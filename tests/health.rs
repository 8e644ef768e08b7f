//! Health probes and failover end to end: the real binary probing real listeners on loopback
//! addresses (one per "region"), queried with `dig` as a London client.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::regions::{ASIA, EU, US, shared_port};
use common::*;

const LONDON: &str = "+subnet=81.2.69.0/24";

/// A zone `h.test` with one performance profile over the three loopback regions; `monitor` is
/// the profile's `[profile.monitor]` body, `eu_monitor` an optional override for the EU one.
fn write_zone(dir: &Path, monitor: &str, eu_monitor: &str) -> std::path::PathBuf {
    let zones = dir.join("zones");
    std::fs::create_dir_all(&zones).unwrap();
    std::fs::write(
        zones.join("h.test.zone"),
        "$ORIGIN h.test.\n$TTL 60\n@ IN SOA ns.h.test. h.h.test. 1 2 3 4 30\n@ IN NS ns.h.test.\nns IN A 127.0.0.1\n",
    )
    .unwrap();
    let eu_override = if eu_monitor.is_empty() {
        String::new()
    } else {
        format!("[profile.endpoint.monitor]\n{eu_monitor}\n")
    };
    std::fs::write(
        zones.join("h.test.toml"),
        format!(
            "[[profile]]\nname = \"mqtt\"\nmethod = \"performance\"\nttl = 30\n[profile.monitor]\n{monitor}\n\
             [[profile.endpoint]]\nname = \"eu\"\nregion = \"azure:westeurope\"\ntargets = [\"{EU}\"]\n{eu_override}\
             [[profile.endpoint]]\nname = \"us\"\nregion = \"azure:eastus\"\ntargets = [\"{US}\"]\n\
             [[profile.endpoint]]\nname = \"asia\"\nregion = \"azure:southeastasia\"\ntargets = [\"{ASIA}\"]\n"
        ),
    )
    .unwrap();
    zones
}

fn start(monitor: &str, eu_monitor: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let zones = write_zone(dir.path(), monitor, eu_monitor);
    let s = Server::start_with(Opts {
        zones_dir: Some(zones),
        ..Default::default()
    });
    // Keep the zone files alive as long as the server.
    std::mem::forget(dir);
    s
}

/// The single A record for a London client, and its TTL.
fn answer(s: &Server) -> Option<(String, u32)> {
    let d = s.dig(&["mqtt.h.test", "A", LONDON]);
    let rr = d.answer.first()?;
    let f: Vec<&str> = rr.split(' ').collect();
    Some((f[4].to_string(), f[1].parse().ok()?))
}

fn wait_for(s: &Server, want: &str, within: Duration) -> Duration {
    let started = Instant::now();
    poll(within, &format!("answer {want}"), || {
        answer(s).filter(|(a, _)| a == want).map(|_| ())
    });
    started.elapsed()
}

/// Waits for a JSON log line whose message and fields contain all `needles`.
fn wait_log(s: &Server, needles: &[&str], within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = s
            .log
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no log line with {needles:?} within {within:?}"));
        if needles.iter().all(|n| line.contains(n)) {
            return line;
        }
    }
}

#[test]
fn refused_endpoint_fails_over_in_seconds_and_returns_after_the_recovery_threshold() {
    let (port, listeners) = shared_port();
    let s = start(&format!("protocol = \"tcp\"\nport = {port}"), "");
    // Healthy: nearest region, and once verdicts are in, the profile TTL.
    wait_for(&s, EU, Duration::from_secs(10));
    poll(Duration::from_secs(10), "stable TTL 30", || {
        answer(&s).filter(|(a, ttl)| a == EU && *ttl == 30)
    });

    // Kill the EU listener: connections are refused from now on.
    let [eu, us, asia] = listeners;
    drop(eu);
    let took = wait_for(&s, US, Duration::from_secs(10));
    eprintln!("failover after refusal: {took:?}");
    let line = wait_log(
        &s,
        &["endpoint state changed", "mqtt.h.test./eu", "Degraded"],
        Duration::from_secs(5),
    );
    assert!(line.contains("2 consecutive failed probe(s)"), "{line}");

    // Restore it: the answer comes back only after 3 consecutive successes.
    let _eu = TcpListener::bind((EU, port)).unwrap();
    let back = wait_for(&s, EU, Duration::from_secs(15));
    eprintln!("failback: {back:?}");
    let line = wait_log(
        &s,
        &["mqtt.h.test./eu", "\"to\":\"Online\""],
        Duration::from_secs(5),
    );
    assert!(line.contains("3 consecutive successful probe(s)"), "{line}");
    // Just recovered: short TTL.
    let (_, ttl) = answer(&s).unwrap();
    assert!(ttl <= 5, "TTL right after recovery: {ttl}");
    drop((us, asia));
}

/// A listening socket whose accept queue is full: the kernel drops further SYNs silently.
fn silent_listener(addr: SocketAddr) -> (socket2::Socket, Vec<std::net::TcpStream>) {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.set_reuse_address(true).unwrap();
    s.bind(&addr.into()).unwrap();
    s.listen(0).unwrap();
    // Fill the accept queue; connects beyond it hang (SYN dropped), so stop at the first that
    // does not complete quickly.
    let mut held = Vec::new();
    for _ in 0..8 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(c) => held.push(c),
            Err(_) => break,
        }
    }
    (s, held)
}

#[test]
fn silently_dropping_endpoint_fails_over_about_one_timeout_later() {
    let (port, listeners) = shared_port();
    let s = start(
        &format!("protocol = \"tcp\"\nport = {port}\ntimeout = \"500ms\""),
        "",
    );
    wait_for(&s, EU, Duration::from_secs(10));
    let [eu, _us, _asia] = listeners;
    drop(eu);
    let (_silent, _held) = silent_listener(SocketAddr::new(EU.parse().unwrap(), port));
    let took = wait_for(&s, US, Duration::from_secs(10));
    eprintln!("failover after silent drop: {took:?}");
    let line = wait_log(&s, &["mqtt.h.test./eu", "Degraded"], Duration::from_secs(5));
    assert!(line.contains("timeout"), "{line}");
}

#[test]
fn a_flapping_endpoint_does_not_make_answers_flap() {
    let (port, listeners) = shared_port();
    let s = start(&format!("protocol = \"tcp\"\nport = {port}"), "");
    wait_for(&s, EU, Duration::from_secs(10));
    let [eu, _us, _asia] = listeners;
    drop(eu);
    wait_for(&s, US, Duration::from_secs(10));
    // Up 700 ms, down 700 ms, for ~8 s: never three successes in a row at a 1 s interval.
    let started = Instant::now();
    let mut seen = Vec::new();
    let mut up: Option<TcpListener> = None;
    let mut toggled = Instant::now();
    while started.elapsed() < Duration::from_secs(8) {
        if toggled.elapsed() >= Duration::from_millis(700) {
            up = match up {
                Some(_) => None,
                None => Some(TcpListener::bind((EU, port)).unwrap()),
            };
            toggled = Instant::now();
        }
        if let Some((a, _)) = answer(&s) {
            seen.push(a);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(seen.len() > 50, "sampled answers: {}", seen.len());
    assert!(seen.iter().all(|a| a == US), "answers flapped: {:?}", {
        let mut v = seen.clone();
        v.dedup();
        v
    });
}

struct Mosquitto(Child);

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn mosquitto(addr: &str, port: u16, dir: &Path) -> Mosquitto {
    let conf = dir.join(format!("mosquitto-{addr}.conf"));
    std::fs::write(
        &conf,
        format!("listener {port} {addr}\nallow_anonymous true\npersistence false\nuser root\n"),
    )
    .unwrap();
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto is installed (apt-get install mosquitto; .ci/run does)");
    let m = Mosquitto(child);
    let target = SocketAddr::new(addr.parse().unwrap(), port);
    poll(Duration::from_secs(10), "mosquitto listening", || {
        std::net::TcpStream::connect_timeout(&target, Duration::from_millis(100)).ok()
    });
    m
}

#[test]
fn mqtt_probe_against_a_real_broker_drives_failover() {
    let (port, listeners) = shared_port();
    drop(listeners);
    let dir = tempfile::tempdir().unwrap();
    // The EU endpoint is probed with MQTT (CONNECT/CONNACK) against a real mosquitto; the
    // others with TCP against plain listeners.
    let broker = mosquitto(EU, port, dir.path());
    let _us = TcpListener::bind((US, port)).unwrap();
    let _asia = TcpListener::bind((ASIA, port)).unwrap();
    let s = start(
        &format!("protocol = \"tcp\"\nport = {port}"),
        "protocol = \"mqtt\"\nmqtt_version = \"5\"",
    );
    wait_for(&s, EU, Duration::from_secs(10));
    wait_log(
        &s,
        &["mqtt.h.test./eu", "\"to\":\"Online\""],
        Duration::from_secs(10),
    );
    drop(broker);
    let took = wait_for(&s, US, Duration::from_secs(10));
    eprintln!("failover after broker stop: {took:?}");

    // A listener that accepts TCP but never answers CONNECT is not a healthy broker.
    let _mute = TcpListener::bind((EU, port)).unwrap();
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        assert_eq!(
            answer(&s).unwrap().0,
            US,
            "a mute TCP listener must not pass the MQTT probe"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn answers_never_wait_on_probes() {
    // Every endpoint silently drops SYNs: each probe hangs for its whole 5 s timeout, yet
    // queries are answered at once from the current snapshot.
    let (port, listeners) = shared_port();
    drop(listeners);
    let silent: Vec<_> = [EU, US, ASIA]
        .iter()
        .map(|ip| silent_listener(SocketAddr::new(ip.parse().unwrap(), port)))
        .collect();
    let s = start(
        &format!("protocol = \"tcp\"\nport = {port}\ntimeout = \"5s\"\ninterval = \"6s\""),
        "",
    );
    for _ in 0..20 {
        let t = Instant::now();
        let d = s.dig(&["mqtt.h.test", "A", LONDON]);
        assert_eq!(d.answer.len(), 1, "{}", d.raw);
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "answer waited {:?}",
            t.elapsed()
        );
    }
    drop(silent);
}

//! Incident semantics ("Operator experience"): what a lift lifts and which force wins, fail-open
//! that is logged, counted, short-lived and visible, drills that cannot verify anything, and a
//! UDP port another process holds. The real binary with `dig` and the `geosteer` CLI where an
//! operator would use them; the embedded server under paused time where timing matters.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, UNIX_EPOCH};

use common::embedded::{answer, config, london, settle, shut, start};
use common::*;
use geosteer::base::Clock;
use geosteer::health::{ForceAction, ForceTarget};
use geosteer::ops::drill::{DrillRequest, DrillStatus};
use ipnet::IpNet;

const LONDON: &str = "+subnet=81.2.69.0/24";
const NUREMBERG: &str = "+subnet=2a01:4f8::/48";

// ---------------------------------------------------------------------------------------------
// The real binary
// ---------------------------------------------------------------------------------------------

fn geosteer(s: &Server, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(args)
        .arg("--config")
        .arg(&s.config)
        .arg("--api")
        .arg(format!("http://{}", s.admin.unwrap()))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn a(s: &Server, name: &str, subnet: &str) -> Vec<String> {
    s.dig(&[name, "A", subnet]).answer
}

fn a_is(s: &Server, name: &str, subnet: &str, addr: &str) -> bool {
    a(s, name, subnet)
        .first()
        .is_some_and(|rr| rr.ends_with(&format!(" A {addr}")))
}

/// The runbook's emergency step: `force --region … --action probe` lifts every force on the
/// region and on its endpoints, drills' included (stopping them), and says what it lifted.
#[test]
fn lifting_a_region_lifts_endpoint_forces_and_drills_in_it() {
    let s = Server::start();
    let (code, out, err) = geosteer(
        &s,
        &[
            "force",
            "mqtt/westeurope",
            "--action",
            "down",
            "--reason",
            "LB",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = geosteer(
        &s,
        &[
            "drill",
            "start",
            "--profile",
            "mqtt-failover",
            "--endpoint",
            "westeurope",
            "--duration",
            "10m",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("move verified: yes"), "{out}");
    let id = out.split_whitespace().nth(1).expect("drill id").to_string();
    assert!(a_is(&s, "mqtt.example.test", LONDON, "198.51.100.20"));
    assert!(a_is(
        &s,
        "mqtt-failover.example.test",
        LONDON,
        "198.51.100.11"
    ));

    let (code, out, err) = geosteer(
        &s,
        &["force", "--region", "azure:westeurope", "--action", "probe"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("lifted 2 forced state(s) on region azure:westeurope"),
        "{out}"
    );
    assert!(
        out.contains("endpoint mqtt.example.test./westeurope down for all clients: LB"),
        "{out}"
    );
    assert!(out.contains(&format!("[drill {id}]")), "{out}");
    assert!(out.contains(&format!("stopped drill(s) {id}")), "{out}");
    assert!(out.contains("forced states in effect: 0"), "{out}");
    // Back to probing at once, both profiles.
    assert!(a_is(&s, "mqtt.example.test", LONDON, "198.51.100.10"));
    assert!(a_is(
        &s,
        "mqtt-failover.example.test",
        LONDON,
        "198.51.100.10"
    ));
    // The drill is recorded as stopped, and verifies its revert.
    let status = poll(
        Duration::from_secs(20),
        "drill stopped and verified",
        || {
            let (_, out, _) = geosteer(&s, &["drill", "status"]);
            (out.contains("Stopped") && out.contains("revert verified")).then_some(out)
        },
    );
    assert!(status.contains("revert verified: yes"), "{status}");
    // Nothing left: a second lift says so (API: an empty `lifted`).
    let (code, out, _) = geosteer(
        &s,
        &["force", "--region", "azure:westeurope", "--action", "probe"],
    );
    assert_eq!(code, 0);
    assert!(
        out.contains("nothing to lift: no forced state or drill on region azure:westeurope"),
        "{out}"
    );
}

/// Precedence, whatever the order the forces were made in: an operator's force on an endpoint
/// beats one on its region, and a scoped one does not mask the region's force for clients
/// outside its scope. Lifting the endpoint reports the region force still holding it.
#[test]
fn an_endpoint_force_beats_its_region_and_a_scoped_one_masks_nothing_outside_its_scope() {
    let s = Server::start();
    let ok = |args: &[&str]| {
        let (code, out, err) = geosteer(&s, args);
        assert_eq!(code, 0, "{args:?}: {out}{err}");
        out
    };
    // Both London and Nuremberg are westeurope clients.
    assert!(a_is(&s, "mqtt.example.test", NUREMBERG, "198.51.100.10"));
    ok(&[
        "force",
        "mqtt/westeurope",
        "--action",
        "up",
        "--scope",
        "81.2.69.0/24",
    ]);
    ok(&["force", "--region", "azure:westeurope", "--action", "down"]);
    assert!(
        a_is(&s, "mqtt.example.test", LONDON, "198.51.100.10"),
        "the endpoint's force wins over the region's for London"
    );
    assert!(
        a_is(&s, "mqtt.example.test", NUREMBERG, "198.51.100.20"),
        "outside the endpoint force's scope the region force applies"
    );
    let out = ok(&["force", "mqtt/westeurope", "--action", "probe"]);
    assert!(out.contains("lifted 1 forced state(s)"), "{out}");
    assert!(
        out.contains("still forced (lift the region to clear it):")
            && out.contains("region azure:westeurope down"),
        "{out}"
    );
    assert!(a_is(&s, "mqtt.example.test", LONDON, "198.51.100.20"));
}

/// A zone whose one profile probes, over TCP, a port that refuses connections until the test
/// lets it listen.
fn fail_open_zone(dir: &Path, port: u16) -> PathBuf {
    let zones = dir.join("zones");
    std::fs::create_dir_all(&zones).unwrap();
    std::fs::write(
        zones.join("f.test.zone"),
        "$ORIGIN f.test.\n$TTL 60\n@ IN SOA ns.f.test. h.f.test. 1 2 3 4 30\n@ IN NS ns.f.test.\nns IN A 127.0.0.1\n",
    )
    .unwrap();
    std::fs::write(
        zones.join("f.test.toml"),
        format!(
            "[[profile]]\nname = \"mqtt\"\nmethod = \"performance\"\nttl = 30\n\
             [profile.monitor]\nprotocol = \"tcp\"\nport = {port}\nhost = \"127.0.0.1\"\n\
             interval = \"1s\"\ntimeout = \"1s\"\ntolerated_failures = 0\nrecovery = 1\njitter = \"0s\"\n\
             [[profile.endpoint]]\nname = \"eu\"\nregion = \"azure:westeurope\"\ntargets = [\"192.0.2.10\"]\n\
             [[profile.endpoint]]\nname = \"us\"\nregion = \"azure:eastus\"\ntargets = [\"192.0.2.20\"]\n"
        ),
    )
    .unwrap();
    zones
}

/// Fail-open is an incident: logged once on the way in and once on the way out (not per
/// query), counted, answered with the short TTL, shown on the map as served by fail-open and
/// said in the decision of `explain`.
#[test]
fn fail_open_is_logged_once_counted_short_lived_and_shown() {
    // A port held but not listening: connections are refused until `listen`.
    let port_sock = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .unwrap();
    port_sock
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let port = port_sock.local_addr().unwrap().as_socket().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let zones = fail_open_zone(dir.path(), port);
    let s = Server::start_with(Opts {
        zones_dir: Some(zones),
        ..Default::default()
    });
    let api = s.admin.unwrap();
    let mut seen: Vec<String> = Vec::new();
    let mut read_logs = |until: &dyn Fn(&[String]) -> bool, within: Duration| {
        let deadline = Instant::now() + within;
        while !until(&seen) {
            let left = deadline.saturating_duration_since(Instant::now());
            match s.log.recv_timeout(left) {
                Ok(l) => seen.push(l),
                Err(_) => panic!(
                    "log condition not met within {within:?}:\n{}",
                    seen.join("\n")
                ),
            }
        }
    };
    let into = |l: &String| l.contains("fail-open: every endpoint") && l.contains("WARN");
    let out = |l: &String| l.contains("fail-open ended");
    read_logs(&|ls| ls.iter().any(into), Duration::from_secs(15));

    // Many queries: still one log line. Answers are served, with the short TTL.
    for _ in 0..20 {
        let d = s.dig(&["mqtt.f.test", "A", LONDON]);
        let rr = d.answer.first().expect("answered by fail-open").clone();
        let ttl: u32 = rr.split(' ').nth(1).unwrap().parse().unwrap();
        assert!(ttl <= 5, "fail-open answers carry the short TTL: {rr}");
    }
    let (_, metrics) = http(api, "GET", "/metrics", None, None);
    assert!(
        metrics.contains("geosteer_profile_failed_open{profile=\"mqtt.f.test.\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("geosteer_fail_open_transitions_total 1"),
        "{metrics}"
    );
    let (code, body) = http(api, "GET", "/api/map?profile=mqtt.f.test", None, None);
    assert_eq!(code, 200, "{body}");
    let map = json_body(&body);
    assert_eq!(map["failed_open"], true, "{map}");
    for ep in map["endpoints"].as_array().unwrap() {
        assert_eq!(ep["state"], "Degraded", "{ep}");
        assert_eq!(ep["served"], true, "{ep}");
        assert_eq!(ep["fail_open"], true, "{ep}");
    }
    let (_, body) = http(
        api,
        "GET",
        "/api/explain?name=mqtt.f.test&ecs=81.2.69.0/24",
        None,
        None,
    );
    let text = json_body(&body)["text"].as_str().unwrap().to_string();
    assert!(text.contains("decision: fail-open"), "{text}");

    // The port listens: the endpoints recover and fail-open ends — logged once, counted.
    port_sock.listen(64).unwrap();
    let listener: std::net::TcpListener = port_sock.into();
    std::thread::spawn(move || {
        for c in listener.incoming().take(10_000) {
            drop(c);
        }
    });
    read_logs(&|ls| ls.iter().any(out), Duration::from_secs(15));
    for _ in 0..5 {
        s.dig(&["mqtt.f.test", "A", LONDON]);
    }
    let (_, metrics) = http(api, "GET", "/metrics", None, None);
    assert!(
        metrics.contains("geosteer_profile_failed_open{profile=\"mqtt.f.test.\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("geosteer_fail_open_transitions_total 2"),
        "{metrics}"
    );
    assert_eq!(seen.iter().filter(|l| into(l)).count(), 1, "{seen:#?}");
    assert_eq!(seen.iter().filter(|l| out(l)).count(), 1, "{seen:#?}");
}

/// A UDP-only server: a second one with the same address must not join the first one's
/// SO_REUSEPORT group (and take some of its queries); it exits 1 naming the address.
#[test]
fn a_second_server_on_the_same_udp_port_is_refused() {
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let r = repo();
    let cfg = dir.path().join("geosteer.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nudp = [\"127.0.0.1:{port}\"]\ntcp = []\nworkers = 2\n[zones]\ndirectory = {:?}\n\
             [geoip]\ncity = {:?}\nasn = {:?}\n[admin]\nlisten = \"\"\nstate_file = {:?}\n\
             [log]\nlevel = \"info\"\nformat = \"json\"\n",
            r.join("zones").display().to_string(),
            r.join("geo/sample-city.mmdb").display().to_string(),
            r.join("geo/sample-asn.mmdb").display().to_string(),
            dir.path().join("state.json").display().to_string(),
        ),
    )
    .unwrap();
    let spawn = || {
        Command::new(bin())
            .args(["serve", "--config"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut first = Kill(spawn());
    let lines = BufReader::new(first.0.stderr.take().unwrap()).lines();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in lines.map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let l = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("first server serving");
        if l.contains("geosteer serving") {
            break;
        }
    }
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let d = dig_at(addr, &["mqtt.example.test", "A", LONDON]);
    assert_eq!(d.status, "NOERROR", "{}", d.raw);

    let mut second = Kill(spawn());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = second.0.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "the second server kept running on the first one's UDP port"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    second
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("127.0.0.1:{port}")) && err.contains("address already in use"),
        "{err}"
    );
    // The first one still answers.
    let d = dig_at(addr, &["mqtt.example.test", "A", LONDON]);
    assert_eq!(d.status, "NOERROR", "{}", d.raw);
}

// ---------------------------------------------------------------------------------------------
// Embedded, paused time
// ---------------------------------------------------------------------------------------------

/// The embedded server's clock: tokio's paused time from a fixed wall time.
fn paused_clock() -> Clock {
    Clock::following_tokio(UNIX_EPOCH + Duration::from_secs(1_800_000_000))
}

fn drill_req(endpoint: &str, scope: Vec<IpNet>) -> DrillRequest {
    DrillRequest {
        profile: "mqtt".into(),
        endpoint: endpoint.into(),
        duration: "10m".into(),
        scope,
        dry_run: false,
    }
}

/// A drill in which no sample is expected to move proves nothing: not "verified".
#[tokio::test(start_paused = true)]
async fn a_drill_that_moves_no_sample_is_not_verified() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(&config(dir.path()), paused_clock()).await;
    // London is a westeurope client: drilling eastus for London's network moves nobody.
    let rec = s
        .control
        .start_drill(drill_req("eastus", vec![london()]))
        .await
        .expect("drill starts");
    assert!(rec.samples.iter().all(|x| !x.expected_move), "{rec}");
    assert_eq!(rec.verified_move, Some(false), "{rec}");
    let text = rec.to_string();
    assert!(
        text.contains("move verified: NO (nothing to verify: no sample is expected to move"),
        "{text}"
    );
    shut(s).await;
}

/// An operator's force on an endpoint beats a drill's on it (whichever came first), and lifting
/// the endpoint lifts both and stops the drill.
#[tokio::test(start_paused = true)]
async fn an_operator_force_beats_a_drill_and_an_endpoint_lift_stops_the_drill() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(&config(dir.path()), paused_clock()).await;
    let c = &s.control;
    let before = answer(c);
    assert!(before.contains("198.51.100.10"), "{before}");
    let key = ForceTarget::Endpoint("mqtt.example.test./westeurope".into());
    c.force(
        key.clone(),
        Some(ForceAction::Up),
        "keep serving".into(),
        None,
        vec![],
    )
    .await
    .expect("forced up");
    settle().await;
    let rec = c
        .start_drill(drill_req("westeurope", vec![]))
        .await
        .expect("drill starts");
    assert_eq!(
        answer(c),
        before,
        "the operator's force wins over the drill's"
    );
    assert!(rec.samples.iter().all(|x| !x.expected_move), "{rec}");
    assert_eq!(rec.verified_move, Some(false), "{rec}");

    let out = c
        .force(key.clone(), None, String::new(), None, vec![])
        .await
        .expect("lifted");
    assert_eq!(out.lifted.len(), 2, "{out:?}");
    assert!(
        out.lifted
            .iter()
            .any(|f| f.drill.as_deref() == Some(&*rec.id))
    );
    assert_eq!(out.stopped_drills, vec![rec.id.clone()]);
    assert!(out.forced.is_empty(), "{out:?}");
    settle().await;
    // Let the stopped drill's finisher verify its revert (and the next drill get a new id).
    for _ in 0..20 {
        tokio::time::advance(Duration::from_millis(100)).await;
        settle().await;
    }
    let d = c.drills().into_iter().find(|d| d.id == rec.id).unwrap();
    assert_eq!(d.status, DrillStatus::Stopped);
    assert_eq!(answer(c), before);
    // A drill on its own: lifting its endpoint stops it and brings the answers back.
    let rec = c
        .start_drill(drill_req("westeurope", vec![]))
        .await
        .expect("drill starts");
    assert_eq!(rec.verified_move, Some(true), "{rec}");
    assert_ne!(answer(c), before);
    let out = c
        .force(key.clone(), None, String::new(), None, vec![])
        .await
        .expect("lifted");
    assert_eq!(out.stopped_drills, vec![rec.id.clone()], "{out:?}");
    settle().await;
    assert_eq!(answer(c), before);
    // Nothing left to lift.
    let out = c
        .force(key, None, String::new(), None, vec![])
        .await
        .unwrap();
    assert!(
        out.lifted.is_empty() && out.stopped_drills.is_empty(),
        "{out:?}"
    );
    shut(s).await;
}

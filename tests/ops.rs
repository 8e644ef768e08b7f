//! Operations end to end: admin API, forced states, drills, reload, `_why` — against the real
//! binary, with `dig` and the `geosteer` CLI as an operator would use them.

mod common;

use std::net::UdpSocket;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const LONDON: &str = "+subnet=81.2.69.0/24";

fn london(s: &Server) -> Vec<String> {
    s.dig(&["mqtt.example.test", "A", LONDON]).answer
}

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

#[test]
fn health_readiness_metrics_status_and_explain() {
    let s = Server::start();
    let api = s.admin.expect("admin API address logged");
    assert_eq!(http(api, "GET", "/healthz", None, None).0, 200);
    poll(Duration::from_secs(10), "ready", || {
        (http(api, "GET", "/readyz", None, None).0 == 200).then_some(())
    });
    // Traffic, then metrics reflect it.
    for _ in 0..3 {
        london(&s);
    }
    s.dig(&["nope.example.test"]);
    let (code, metrics) = http(api, "GET", "/metrics", None, None);
    assert_eq!(code, 200);
    for needle in [
        "geosteer_queries_total{transport=\"udp\",rcode=\"NOERROR\"}",
        "geosteer_queries_total{transport=\"udp\",rcode=\"NXDOMAIN\"} 1",
        "geosteer_ecs_queries_total 3",
        "geosteer_profile_queries_total{profile=\"mqtt.example.test.\"} 3",
        "geosteer_endpoint_answers_total{profile=\"mqtt.example.test.\",endpoint=\"westeurope\"} 3",
        "geosteer_answer_duration_seconds_bucket{le=\"+Inf\"} 4",
        "geosteer_zone_queries_total{zone=\"example.test.\"} 4",
        "geosteer_reload_errors_total 0",
    ] {
        assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
    }
    let (code, body) = http(api, "GET", "/api/status", None, None);
    assert_eq!(code, 200);
    let v = json_body(&body);
    assert_eq!(v["profiles"][0]["name"], "mqtt.example.test.");
    assert_eq!(v["profiles"][0]["endpoints"][0]["state"], "Unmonitored");
    let (code, body) = http(
        api,
        "GET",
        "/api/explain?name=mqtt.example.test&ecs=216.160.83.0/24",
        None,
        None,
    );
    assert_eq!(code, 200);
    assert!(body.contains("decision: eastus: lowest estimate"), "{body}");
}

#[test]
fn mutating_calls_need_the_token() {
    let s = Server::start();
    let api = s.admin.unwrap();
    let force = r#"{"profile":"mqtt","endpoint_name":"westeurope","action":"down"}"#;
    assert_eq!(http(api, "POST", "/api/force", None, Some(force)).0, 401);
    assert_eq!(
        http(
            api,
            "POST",
            "/api/force",
            Some("wrong-token-0123456789"),
            Some(force)
        )
        .0,
        401
    );
    assert_eq!(http(api, "POST", "/api/reload", None, None).0, 401);
    assert_eq!(http(api, "POST", "/api/drills", None, Some("{}")).0, 401);
    // Nothing changed.
    assert_eq!(london(&s), vec!["mqtt.example.test. 30 IN A 198.51.100.10"]);
    // Oversized bodies are rejected before parsing.
    let big = format!("{{\"reason\":\"{}\"}}", "x".repeat(100_000));
    assert_eq!(
        http(api, "POST", "/api/force", Some(TOKEN), Some(&big)).0,
        413
    );
}

#[test]
fn forced_states_move_answers_survive_a_restart_and_lift() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let opts = || Opts {
        state_file: Some(state.clone()),
        ..Default::default()
    };
    let s = Server::start_with(opts());
    let (code, out, err) = geosteer(
        &s,
        &[
            "force",
            "mqtt/westeurope",
            "--action",
            "down",
            "--reason",
            "maintenance",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(london(&s), vec!["mqtt.example.test. 30 IN A 198.51.100.20"]);
    // A region force moves every endpoint in it (eastus in mqtt, mqtt-geo's has no region).
    let (code, _, err) = geosteer(
        &s,
        &["force", "--region", "azure:eastus", "--action", "down"],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(london(&s), vec!["mqtt.example.test. 30 IN A 198.51.100.30"]);
    drop(s);

    // Restart with the same state file: still forced.
    let s = Server::start_with(opts());
    assert_eq!(london(&s), vec!["mqtt.example.test. 30 IN A 198.51.100.30"]);
    let (_, body) = http(s.admin.unwrap(), "GET", "/api/status", None, None);
    assert!(
        body.contains("ForcedDown") && body.contains("maintenance"),
        "{body}"
    );
    geosteer(
        &s,
        &["force", "--region", "azure:eastus", "--action", "probe"],
    );
    geosteer(&s, &["force", "mqtt/westeurope", "--action", "probe"]);
    assert_eq!(london(&s), vec!["mqtt.example.test. 30 IN A 198.51.100.10"]);

    // Scoped and timed: only London's network, for one second.
    let (code, _, err) = geosteer(
        &s,
        &[
            "force",
            "mqtt/westeurope",
            "--action",
            "down",
            "--scope",
            "81.2.69.0/24",
            "--duration",
            "1s",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(london(&s), vec!["mqtt.example.test. 30 IN A 198.51.100.20"]);
    let nuremberg = s.dig(&["mqtt.example.test", "A", "+subnet=2a01:4f8::/48"]);
    assert_eq!(
        nuremberg.answer,
        vec!["mqtt.example.test. 30 IN A 198.51.100.10"],
        "outside the scope"
    );
    poll(Duration::from_secs(10), "expiry", || {
        (london(&s) == vec!["mqtt.example.test. 30 IN A 198.51.100.10"]).then_some(())
    });
}

#[test]
fn drills_verify_the_move_revert_at_expiry_and_dry_runs_change_nothing() {
    let s = Server::start();
    let (code, out, err) = geosteer(
        &s,
        &[
            "drill",
            "start",
            "--profile",
            "mqtt",
            "--endpoint",
            "eastus",
            "--dry-run",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("216.160.83.0/24") && out.contains("(predicted)"),
        "{out}"
    );
    assert_eq!(
        s.dig(&["mqtt.example.test", "A", "+subnet=216.160.83.0/24"])
            .answer,
        vec!["mqtt.example.test. 30 IN A 198.51.100.20"]
    );

    let started = Instant::now();
    let (code, out, err) = geosteer(
        &s,
        &[
            "drill",
            "start",
            "--profile",
            "mqtt",
            "--endpoint",
            "westeurope",
            "--duration",
            "2s",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("move verified: yes"), "{out}");
    let moved_line = out.lines().find(|l| l.contains("81.2.69.0/24")).unwrap();
    assert!(
        moved_line.contains("198.51.100.10")
            && moved_line.contains("→ 198.51.100.20")
            && moved_line.contains(" ms"),
        "{moved_line}"
    );
    assert!(
        out.lines()
            .any(|l| l.contains("1.0.16.0/24") && l.contains("not affected")),
        "{out}"
    );
    if started.elapsed() < Duration::from_secs(2) {
        assert_eq!(london(&s), vec!["mqtt.example.test. 30 IN A 198.51.100.20"]);
    }
    // It reverts by itself and verifies the revert.
    let status = poll(Duration::from_secs(20), "drill done", || {
        let (_, out, _) = geosteer(&s, &["drill", "status"]);
        out.contains("Done").then_some(out)
    });
    assert!(status.contains("revert verified: yes"), "{status}");
    assert_eq!(london(&s), vec!["mqtt.example.test. 30 IN A 198.51.100.10"]);
    // A drill on an unknown endpoint is a clear error.
    let (code, _, err) = geosteer(
        &s,
        &[
            "drill",
            "start",
            "--profile",
            "mqtt",
            "--endpoint",
            "atlantis",
        ],
    );
    assert_ne!(code, 0);
    assert!(err.contains("no endpoint \"atlantis\""), "{err}");
}

#[test]
fn a_drill_reverts_at_expiry_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let opts = || Opts {
        state_file: Some(state.clone()),
        ..Default::default()
    };
    let s = Server::start_with(opts());
    let (code, _, err) = geosteer(
        &s,
        &[
            "drill",
            "start",
            "--profile",
            "mqtt",
            "--endpoint",
            "westeurope",
            "--duration",
            "3s",
        ],
    );
    assert_eq!(code, 0, "{err}");
    drop(s); // killed mid-drill
    let s = Server::start_with(opts());
    // Either still inside the drill window or already reverted; it must end reverted.
    poll(Duration::from_secs(15), "revert after restart", || {
        (london(&s) == vec!["mqtt.example.test. 30 IN A 198.51.100.10"]).then_some(())
    });
    // The resumed drill then lifts its force from the state file and records the revert.
    poll(Duration::from_secs(10), "state file pruned", || {
        let text = std::fs::read_to_string(&state).unwrap_or_default();
        (!text.contains("\"action\": \"down\"")).then_some(())
    });
}

fn copy_zones(to: &Path) -> std::path::PathBuf {
    let zones = to.join("zones");
    std::fs::create_dir_all(&zones).unwrap();
    for f in ["example.test.zone", "example.test.toml"] {
        std::fs::copy(repo().join("zones").join(f), zones.join(f)).unwrap();
    }
    zones
}

#[test]
fn reload_on_file_change_and_sighup_keeps_serving_through_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let zones = copy_zones(dir.path());
    let mut s = Server::start_with(Opts {
        zones_dir: Some(zones.clone()),
        admin_extra: "reload_poll = \"200ms\"".into(),
        ..Default::default()
    });
    assert_eq!(
        s.dig(&["www.example.test"]).answer,
        vec!["www.example.test. 3600 IN A 192.0.2.10"]
    );
    // Edit the zone: picked up without a signal.
    let zone = zones.join("example.test.zone");
    let text = std::fs::read_to_string(&zone)
        .unwrap()
        .replace("192.0.2.10", "192.0.2.99");
    std::fs::write(&zone, &text).unwrap();
    poll(Duration::from_secs(10), "zone reload", || {
        (s.dig(&["www.example.test"]).answer == vec!["www.example.test. 3600 IN A 192.0.2.99"])
            .then_some(())
    });
    // A broken profile file: reported, the old state keeps serving.
    let profiles = zones.join("example.test.toml");
    let good = std::fs::read_to_string(&profiles).unwrap();
    std::fs::write(
        &profiles,
        format!("{good}\n[[profile]]\nname = \"broken\"\nmethod = \"fastest\"\n"),
    )
    .unwrap();
    let api = s.admin.unwrap();
    poll(Duration::from_secs(10), "reload error reported", || {
        let (_, body) = http(api, "GET", "/api/status", None, None);
        body.contains("unknown variant `fastest`").then_some(())
    });
    let (_, metrics) = http(api, "GET", "/metrics", None, None);
    assert!(
        !metrics.contains("geosteer_reload_errors_total 0"),
        "{metrics}"
    );
    assert_eq!(london(&s), vec!["mqtt.example.test. 30 IN A 198.51.100.10"]);
    // Fixed, with a change, and reloaded by SIGHUP (poll would too; both are fine).
    std::fs::write(&profiles, good.replace("198.51.100.10", "198.51.100.77")).unwrap();
    let pid = s.pid().to_string();
    Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    poll(Duration::from_secs(10), "profile reload", || {
        (london(&s) == vec!["mqtt.example.test. 30 IN A 198.51.100.77"]).then_some(())
    });
    assert!(s.alive());
}

#[test]
fn health_of_unchanged_endpoints_survives_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    let zones = copy_zones(dir.path());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let profiles = zones.join("example.test.toml");
    std::fs::write(
        &profiles,
        format!(
            "[[profile]]\nname = \"m\"\nmethod = \"priority\"\n[profile.monitor]\nprotocol = \"tcp\"\nport = {port}\n\
             [[profile.endpoint]]\nname = \"a\"\ntargets = [\"127.0.0.1\"]\n"
        ),
    )
    .unwrap();
    let s = Server::start_with(Opts {
        zones_dir: Some(zones.clone()),
        admin_extra: "reload_poll = \"0s\"".into(),
        ..Default::default()
    });
    let api = s.admin.unwrap();
    let state_of_a = || {
        let (_, body) = http(api, "GET", "/api/status", None, None);
        json_body(&body)["profiles"][0]["endpoints"][0]["state"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    poll(Duration::from_secs(10), "Online", || {
        (state_of_a() == "Online").then_some(())
    });
    // Add a second profile and reload: endpoint a stays Online (no CheckingEndpoint blip).
    let text = std::fs::read_to_string(&profiles).unwrap();
    std::fs::write(&profiles, format!("{text}\n[[profile]]\nname = \"n\"\nmethod = \"priority\"\n[[profile.endpoint]]\nname = \"b\"\ntargets = [\"127.0.0.2\"]\n")).unwrap();
    let (code, body) = http(api, "POST", "/api/reload", Some(TOKEN), None);
    assert_eq!(code, 200, "{body}");
    assert_eq!(state_of_a(), "Online");
    drop(listener);
}

#[test]
fn no_query_is_dropped_or_servfailed_during_100_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let zones = copy_zones(dir.path());
    let s = Server::start_with(Opts {
        zones_dir: Some(zones),
        admin_extra: "reload_poll = \"0s\"".into(),
        ..Default::default()
    });
    let target = s.udp4;
    let api = s.admin.unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let (mut sent, mut lost, mut bad) = (0u32, 0u32, 0u32);
            let names = [
                "www.example.test.",
                "mqtt.example.test.",
                "nope.example.test.",
            ];
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                let mut m = query(names[(sent % 3) as usize], RecordType::A);
                m.metadata.id = sent as u16;
                sock.send_to(&m.to_vec().unwrap(), target).unwrap();
                sent += 1;
                let mut buf = [0u8; 2048];
                match sock.recv_from(&mut buf) {
                    Ok((n, _)) => {
                        let r = Message::from_vec(&buf[..n]).unwrap();
                        if r.metadata.id != m.metadata.id
                            || !matches!(
                                r.metadata.response_code,
                                ResponseCode::NoError | ResponseCode::NXDomain
                            )
                        {
                            bad += 1;
                        }
                    }
                    Err(_) => lost += 1,
                }
            }
            (sent, lost, bad)
        })
    };
    for i in 0..100 {
        let (code, body) = http(api, "POST", "/api/reload", Some(TOKEN), None);
        assert_eq!(code, 200, "reload {i}: {body}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (sent, lost, bad) = client.join().unwrap();
    eprintln!("queries during 100 reloads: {sent} sent, {lost} lost, {bad} SERVFAIL/wrong");
    assert!(sent > 100, "the client ran: {sent}");
    assert_eq!((lost, bad), (0, 0));
    let (_, metrics) = http(api, "GET", "/metrics", None, None);
    assert!(metrics.contains("geosteer_reloads_total 100"), "{metrics}");
    assert!(metrics.contains("geosteer_queries_total{transport=\"udp\",rcode=\"SERVFAIL\"} 0"));
}

#[test]
fn why_txt_answers_trusted_sources_only() {
    let s = Server::start();
    let d = s.dig(&["_why.mqtt.example.test", "TXT", "+subnet=216.160.83.0/24"]);
    assert_eq!(d.status, "NOERROR", "{}", d.raw);
    let text = d.answer.join("\n");
    assert!(text.contains("decision: eastus: lowest estimate"), "{text}");
    assert!(text.contains("country US"), "{text}");
    assert!(
        d.answer.iter().all(|r| r.contains(" 0 IN TXT ")),
        "TTL 0: {text}"
    );
    assert_eq!(d.client_subnet.as_deref(), Some("216.160.83.0/24/24"));

    // A server whose ACL does not include loopback refuses.
    let s = Server::start_with(Opts {
        admin_extra: "why_acl = [\"10.0.0.0/8\"]".into(),
        ..Default::default()
    });
    let d = s.dig(&["_why.mqtt.example.test", "TXT"]);
    assert_eq!(d.status, "REFUSED", "{}", d.raw);
    assert!(d.answer.is_empty());
}

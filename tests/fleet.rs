//! Fleet I with real parts: a real 3-member etcd cluster on loopback (`tests/common/etcd.rs`)
//! and several real geosteer processes with `[cluster]`, queried with `dig` and driven through
//! their admin APIs — one drill for the whole fleet, expiry without the instance that started
//! it, an instance joining mid-drill, quorum loss (answers go on, changes are refused, the fleet
//! reconciles) and configuration skew.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::etcd::EtcdCluster;
use common::fleet::{admin, cluster_toml};
use common::{Opts, Server, TOKEN, http, json_body, poll};

/// The answer for a London client.
fn london(s: &Server) -> String {
    common::fleet::london(s, "mqtt.example.test")
}

/// London's sample subnet (81.2.69.0/24) is served westeurope normally, eastus when
/// westeurope is drilled.
const WESTEUROPE: &str = "198.51.100.10";
const EASTUS: &str = "198.51.100.20";

/// A prefix of its own per test, so tests sharing nothing can also share no keys.
fn prefix(test: &str) -> String {
    format!("/gs-{test}/")
}

fn member(etcd: &EtcdCluster, prefix: &str, name: &str, zones: Option<&Path>) -> Server {
    Server::start_with(Opts {
        zones_dir: zones.map(Path::to_path_buf),
        extra: cluster_toml(etcd, name, prefix, "start_timeout = \"5s\"\n"),
        ..Default::default()
    })
}

fn fleet(s: &Server) -> serde_json::Value {
    let (code, body) = http(admin(s), "GET", "/api/fleet", None, None);
    assert_eq!(code, 200, "{body}");
    json_body(&body)
}

fn wait_for_fleet(servers: &[&Server], n: usize) {
    for s in servers {
        poll(
            Duration::from_secs(20),
            "every instance sees the fleet",
            || {
                let f = fleet(s);
                (f["connected"] == true && f["instances"].as_array().map(Vec::len) == Some(n))
                    .then_some(())
            },
        );
    }
}

fn start_drill(s: &Server, duration: &str) -> serde_json::Value {
    let body = format!(
        r#"{{"profile":"mqtt","endpoint":"westeurope","duration":"{duration}","scope":[]}}"#
    );
    let (code, text) = http(admin(s), "POST", "/api/drills", Some(TOKEN), Some(&body));
    assert_eq!(code, 200, "{text}");
    json_body(&text)["record"].clone()
}

fn drills(s: &Server) -> Vec<serde_json::Value> {
    let (code, body) = http(admin(s), "GET", "/api/drills", None, None);
    assert_eq!(code, 200, "{body}");
    json_body(&body).as_array().cloned().unwrap_or_default()
}

fn drill(s: &Server, id: &str) -> serde_json::Value {
    drills(s)
        .into_iter()
        .find(|d| d["id"] == id)
        .unwrap_or_else(|| panic!("drill {id} not listed"))
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// One `drill start` through instance 1 moves all three; instance 1 is killed mid-drill, and
/// the other two still revert at expiry and finish the drill in etcd; every instance's row is
/// in `drill status`.
#[test]
fn a_drill_through_one_instance_moves_the_fleet_and_ends_without_its_starter() {
    let etcd = EtcdCluster::start(3);
    let p = prefix("drill");
    let one = member(&etcd, &p, "gs-1", None);
    let two = member(&etcd, &p, "gs-2", None);
    let three = member(&etcd, &p, "gs-3", None);
    wait_for_fleet(&[&one, &two, &three], 3);
    for s in [&one, &two, &three] {
        assert_eq!(london(s), WESTEUROPE);
    }

    let record = start_drill(&one, "6s");
    let id = record["id"].as_str().unwrap().to_string();
    let until = record["until_unix"].as_u64().unwrap();
    for s in [&one, &two, &three] {
        poll(Duration::from_secs(5), "every instance moves", || {
            (london(s) == EASTUS).then_some(())
        });
    }
    // Every instance verified the move through its own handler and published its row.
    let rows = poll(Duration::from_secs(10), "three rows, all moved", || {
        let d = drill(&two, &id);
        let rows = d["fleet"]["rows"].as_array().cloned().unwrap_or_default();
        (rows.len() == 3 && rows.iter().all(|r| r["moved"] == true)).then_some(d)
    });
    assert_eq!(rows["fleet"]["verified_move"], true, "{rows}");

    // The starter dies mid-drill.
    drop(one);
    for s in [&two, &three] {
        poll(Duration::from_secs(15), "reverted at expiry", || {
            (london(s) == WESTEUROPE).then_some(())
        });
        // On time: the prober publishes the snapshot without the force at its `until` (by
        // its own clock), so within a second of the expiry even on a loaded machine.
        assert!(
            unix_now() < until as f64 + 1.0,
            "reverted {:.1}s after expiry",
            unix_now() - until as f64
        );
    }
    // The survivors finished the drill in etcd (its starter could not).
    poll(Duration::from_secs(20), "the drill is finished", || {
        let d = drill(&three, &id);
        (d["status"] == "done"
            && d["fleet"]["rows"]
                .as_array()
                .is_some_and(|r| r.iter().filter(|r| r["back"] == true).count() >= 2))
        .then_some(())
    });
    assert!(
        etcd.keys(&format!("{p}force/")).is_empty(),
        "the drill's force is gone from etcd"
    );
    // gs-1 is gone from the fleet (its lease expired or was revoked), so the fleet's revert
    // is verified by the two live instances.
    poll(Duration::from_secs(10), "gs-1 leaves the fleet", || {
        (fleet(&two)["instances"].as_array().map(Vec::len) == Some(2)).then_some(())
    });
    let done = drill(&two, &id);
    assert_eq!(done["fleet"]["verified_back"], true, "{done}");
    // The CLI shows one row per instance.
    let out = std::process::Command::new(common::bin())
        .args(["drill", "status", "--api"])
        .arg(format!("http://{}", admin(&two)))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for name in ["gs-1", "gs-2", "gs-3"] {
        assert!(text.contains(name), "{name} in drill status: {text}");
    }
}

/// An instance started while a drill runs applies it before it answers anything: its first
/// answer for London is already the drilled one.
#[test]
fn an_instance_joining_mid_drill_applies_it_before_answering() {
    let etcd = EtcdCluster::start(3);
    let p = prefix("join");
    let one = member(&etcd, &p, "gs-1", None);
    wait_for_fleet(&[&one], 1);
    start_drill(&one, "60s");
    poll(Duration::from_secs(5), "moved", || {
        (london(&one) == EASTUS).then_some(())
    });
    let late = member(&etcd, &p, "gs-late", None);
    assert_eq!(london(&late), EASTUS, "the first answer is the drilled one");
    // And a stop through the late instance ends it everywhere.
    let (code, body) = http(
        admin(&late),
        "POST",
        "/api/drills/stop",
        Some(TOKEN),
        Some("{}"),
    );
    assert_eq!(code, 200, "{body}");
    for s in [&one, &late] {
        poll(Duration::from_secs(5), "reverted by the stop", || {
            (london(s) == WESTEUROPE).then_some(())
        });
    }
}

/// Two of three etcd members stopped (no quorum): every instance keeps answering, with no
/// query lost; a force through the API is refused with a clear error and changes nothing;
/// readiness stays; when the members return the instances reconnect and a force made then
/// reaches every instance.
#[test]
fn without_quorum_answers_go_on_changes_are_refused_and_the_fleet_reconciles() {
    let mut etcd = EtcdCluster::start(3);
    let p = prefix("quorum");
    let one = member(&etcd, &p, "gs-1", None);
    let two = member(&etcd, &p, "gs-2", None);
    wait_for_fleet(&[&one, &two], 2);

    etcd.stop(1);
    etcd.stop(2);
    // Queries during the outage: every one answered, with the usual answer.
    let until = Instant::now() + Duration::from_secs(4);
    let mut asked = 0;
    while Instant::now() < until {
        for s in [&one, &two] {
            assert_eq!(london(s), WESTEUROPE, "answered during the outage");
            asked += 1;
        }
    }
    assert!(asked > 10);
    for s in [&one, &two] {
        poll(Duration::from_secs(10), "the instance notices", || {
            (fleet(s)["connected"] == false).then_some(())
        });
        let (code, _) = http(admin(s), "GET", "/readyz", None, None);
        assert_eq!(code, 200, "still ready without etcd");
    }
    let force = r#"{"endpoint":"mqtt/westeurope","action":"down","reason":"outage test"}"#;
    let (code, body) = http(admin(&one), "POST", "/api/force", Some(TOKEN), Some(force));
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("etcd"), "the error says why: {body}");
    assert!(body.contains("not"), "and that nothing changed: {body}");
    assert_eq!(
        london(&one),
        WESTEUROPE,
        "the refused force changed nothing"
    );
    let (_, metrics) = http(admin(&one), "GET", "/metrics", None, None);
    assert!(
        metrics.contains("geosteer_cluster_connected 0"),
        "{metrics}"
    );
    assert!(!metrics.contains("geosteer_cluster_writes_refused_total 0\n"));

    etcd.restart(1);
    etcd.restart(2);
    for s in [&one, &two] {
        poll(Duration::from_secs(20), "reconnected", || {
            (fleet(s)["connected"] == true).then_some(())
        });
    }
    let (code, body) = http(admin(&two), "POST", "/api/force", Some(TOKEN), Some(force));
    assert_eq!(code, 200, "{body}");
    for s in [&one, &two] {
        poll(
            Duration::from_secs(5),
            "the force reaches every instance",
            || (london(s) == EASTUS).then_some(()),
        );
    }
}

/// An instance whose zones differ from the others' is reported: `config_skew` in the fleet
/// view and the metric, with the odd instance marked.
#[test]
fn configuration_skew_is_reported() {
    let etcd = EtcdCluster::start(3);
    let p = prefix("skew");
    let zones = tempfile::tempdir().unwrap();
    for f in ["example.test.zone", "example.test.toml"] {
        std::fs::copy(common::repo().join("zones").join(f), zones.path().join(f)).unwrap();
    }
    let a = member(&etcd, &p, "gs-a", None);
    let b = member(&etcd, &p, "gs-b", None);
    wait_for_fleet(&[&a, &b], 2);
    assert_eq!(fleet(&a)["config_skew"], false, "same files, no skew");
    // A third instance with one more record in its zone.
    let mut zone = std::fs::read_to_string(zones.path().join("example.test.zone")).unwrap();
    zone.push_str("\nskewed 300 IN A 192.0.2.99\n");
    std::fs::write(zones.path().join("example.test.zone"), zone).unwrap();
    let c = member(&etcd, &p, "gs-c", Some(zones.path()));
    wait_for_fleet(&[&a, &b, &c], 3);
    let f = fleet(&a);
    assert_eq!(f["config_skew"], true, "{f}");
    let skewed: Vec<&str> = f["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["config_skew"] == true)
        .filter_map(|i| i["instance"].as_str())
        .collect();
    assert_eq!(skewed, ["gs-c"], "{f}");
    let (_, metrics) = http(admin(&b), "GET", "/metrics", None, None);
    assert!(
        metrics.contains("geosteer_cluster_config_skew 1"),
        "{metrics}"
    );
}

/// A single etcd member serving TLS on loopback and requiring client certificates
/// (`--client-cert-auth`), killed by PID on drop.
struct TlsEtcd {
    child: std::process::Child,
    url: String,
}

impl Drop for TlsEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// PEM (certificate, key) signed by `ca`, for `names`.
fn leaf(ca: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>, names: &[&str]) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        names.first().copied().unwrap_or("geosteer"),
    );
    let cert = params.signed_by(&key, &**ca).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn ca(name: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap()
}

/// geosteer talks to etcd over TLS with a client certificate (as `deploy/` runs it): with the
/// CA's client certificate it joins the fleet and a drill works; with a certificate from
/// another CA etcd refuses it, and the instance serves on, disconnected, saying so.
#[test]
fn the_fleet_link_uses_tls_with_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let authority = ca("etcd test CA");
    let (server_cert, server_key) = leaf(&authority, &["127.0.0.1", "localhost"]);
    let (client_cert, client_key) = leaf(&authority, &["geosteer"]);
    let stranger = ca("another CA");
    let (bad_cert, bad_key) = leaf(&stranger, &["geosteer"]);
    for (f, text) in [
        ("ca.crt", authority.pem()),
        ("server.crt", server_cert),
        ("server.key", server_key),
        ("tls.crt", client_cert),
        ("tls.key", client_key),
        ("bad.crt", bad_cert),
        ("bad.key", bad_key),
    ] {
        std::fs::write(d.join(f), text).unwrap();
    }
    let (client_port, peer_port) = (free_port(), free_port());
    let url = format!("https://127.0.0.1:{client_port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    let log = std::fs::File::create(d.join("etcd.log")).unwrap();
    let child = std::process::Command::new("etcd")
        .args(["--name", "tls0", "--data-dir"])
        .arg(d.join("data"))
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .args([
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
        ])
        .args(["--initial-cluster", &format!("tls0={peer}")])
        .arg("--cert-file")
        .arg(d.join("server.crt"))
        .arg("--key-file")
        .arg(d.join("server.key"))
        .arg("--trusted-ca-file")
        .arg(d.join("ca.crt"))
        .arg("--client-cert-auth")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start etcd (Debian etcd-server; tests/run.sh installs it)");
    let etcd = TlsEtcd { child, url };
    let cluster = |cert: &str, key: &str, name: &str| {
        format!(
            "[cluster]\netcd = [{:?}]\ninstance = \"{name}\"\nprefix = \"/tls/\"\n\
             ca_file = {:?}\ncert_file = {:?}\nkey_file = {:?}\nheartbeat = \"200ms\"\n\
             lease_ttl = \"2s\"\nrequest_timeout = \"500ms\"\nstart_timeout = \"{}\"\n",
            etcd.url,
            d.join("ca.crt").display().to_string(),
            d.join(cert).display().to_string(),
            d.join(key).display().to_string(),
            // The refused instance waits this long before serving without the fleet's state.
            if name == "gs-tls" { "10s" } else { "1s" },
        )
    };
    let good = Server::start_with(Opts {
        extra: cluster("tls.crt", "tls.key", "gs-tls"),
        ..Default::default()
    });
    poll(Duration::from_secs(20), "connected over TLS", || {
        (fleet(&good)["connected"] == true).then_some(())
    });
    start_drill(&good, "3s");
    assert_eq!(
        london(&good),
        EASTUS,
        "the drill went through etcd over TLS"
    );

    let bad = Server::start_with(Opts {
        extra: cluster("bad.crt", "bad.key", "gs-stranger"),
        ..Default::default()
    });
    let f = fleet(&bad);
    assert_eq!(
        f["connected"], false,
        "a stranger's certificate is refused: {f}"
    );
    assert_eq!(
        london(&bad),
        WESTEUROPE,
        "it serves on, from its own (empty) state"
    );
    let (code, body) = http(
        admin(&bad),
        "POST",
        "/api/force",
        Some(TOKEN),
        Some(r#"{"endpoint":"mqtt/westeurope","action":"down"}"#),
    );
    assert_eq!(code, 503, "{body}");
}

/// An instance restarted while etcd has no quorum serves the last fleet state it saw (kept in
/// its state file) once `start_timeout` has passed, and reconciles when etcd is back.
#[test]
fn a_restart_without_etcd_serves_the_last_state_seen() {
    let mut etcd = EtcdCluster::start(3);
    let p = prefix("restart");
    let state = tempfile::tempdir().unwrap();
    let start = |etcd: &EtcdCluster| {
        Server::start_with(Opts {
            state_file: Some(state.path().join("state.json")),
            extra: cluster_toml(etcd, "gs-1", &p, "start_timeout = \"1s\"\n"),
            ..Default::default()
        })
    };
    let one = start(&etcd);
    wait_for_fleet(&[&one], 1);
    let force = r#"{"endpoint":"mqtt/westeurope","action":"down","reason":"kept"}"#;
    let (code, body) = http(admin(&one), "POST", "/api/force", Some(TOKEN), Some(force));
    assert_eq!(code, 200, "{body}");
    assert_eq!(london(&one), EASTUS);
    drop(one);

    etcd.stop(1);
    etcd.stop(2);
    let again = start(&etcd);
    assert_eq!(
        london(&again),
        EASTUS,
        "the forced state from the state file serves without etcd"
    );
    assert_eq!(fleet(&again)["connected"], false);

    // etcd back: the instance reads the fleet's state (the same force) and reconnects; a lift
    // made now reaches it.
    etcd.restart(1);
    etcd.restart(2);
    poll(Duration::from_secs(20), "reconnected", || {
        (fleet(&again)["connected"] == true).then_some(())
    });
    let lift = r#"{"endpoint":"mqtt/westeurope","action":"probe"}"#;
    let (code, body) = http(admin(&again), "POST", "/api/force", Some(TOKEN), Some(lift));
    assert_eq!(code, 200, "{body}");
    assert_eq!(london(&again), WESTEUROPE);
}

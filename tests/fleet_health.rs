//! Fleet II, quorum health, with real parts: three geosteer instances on a real 3-member etcd
//! cluster, each probing real TCP listeners on loopback "region" addresses, queried with `dig`
//! as a London client. One instance cannot reach westeurope and nobody fails over; westeurope
//! really fails and all move; it recovers and all return; a dead instance's votes expire; with
//! etcd gone, each instance falls back to its own verdict after the staleness bound.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::etcd::EtcdCluster;
use common::fleet::{admin, cluster_toml};
use common::regions::{ASIA, EU, US, shared_port};
use common::{Opts, Server, http, json_body, poll};

fn london(s: &Server) -> String {
    common::fleet::london(s, "mqtt.h.test")
}

/// A port nothing listens on (for the instance that "cannot reach" westeurope).
fn dead_port() -> u16 {
    TcpListener::bind((EU, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Zone `h.test` with a performance profile over the three regions, probed over TCP at
/// `port`; `eu_port` overrides the westeurope endpoint's probe port (a broken path from one
/// instance).
fn zones(dir: &Path, port: u16, eu_port: u16) -> PathBuf {
    let zones = dir.join("zones");
    std::fs::create_dir_all(&zones).unwrap();
    std::fs::write(
        zones.join("h.test.zone"),
        "$ORIGIN h.test.\n$TTL 60\n@ IN SOA ns.h.test. h.h.test. 1 2 3 4 30\n@ IN NS ns.h.test.\nns IN A 127.0.0.1\n",
    )
    .unwrap();
    std::fs::write(
        zones.join("h.test.toml"),
        format!(
            "[[profile]]\nname = \"mqtt\"\nmethod = \"performance\"\nttl = 30\n\
             [profile.monitor]\nprotocol = \"tcp\"\nport = {port}\ntimeout = \"300ms\"\n\
             [[profile.endpoint]]\nname = \"eu\"\nregion = \"azure:westeurope\"\ntargets = [\"{EU}\"]\n\
             [profile.endpoint.monitor]\nport = {eu_port}\n\
             [[profile.endpoint]]\nname = \"us\"\nregion = \"azure:eastus\"\ntargets = [\"{US}\"]\n\
             [[profile.endpoint]]\nname = \"asia\"\nregion = \"azure:southeastasia\"\ntargets = [\"{ASIA}\"]\n"
        ),
    )
    .unwrap();
    zones
}

struct Instance {
    server: Server,
    _dir: tempfile::TempDir,
}

fn instance(etcd: &EtcdCluster, name: &str, port: u16, eu_port: u16) -> Instance {
    let dir = tempfile::tempdir().unwrap();
    let z = zones(dir.path(), port, eu_port);
    let server = Server::start_with(Opts {
        zones_dir: Some(z),
        extra: cluster_toml(
            etcd,
            name,
            "/votes/",
            "start_timeout = \"5s\"\nvotes_stale_after = \"2s\"\n",
        ),
        ..Default::default()
    });
    Instance { server, _dir: dir }
}

/// The westeurope endpoint as `/api/status` shows it.
fn eu_status(s: &Server) -> serde_json::Value {
    let (code, body) = http(admin(s), "GET", "/api/status", None, None);
    assert_eq!(code, 200, "{body}");
    let v = json_body(&body);
    v["profiles"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["endpoints"].as_array().cloned().unwrap_or_default())
        .find(|e| e["name"] == "eu")
        .expect("eu endpoint in status")
}

fn votes(e: &serde_json::Value) -> Vec<(String, bool)> {
    e["votes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|v| (v["instance"].as_str().unwrap().to_string(), v["up"] == true))
        .collect()
}

#[test]
fn health_is_decided_by_a_quorum_of_vantage_points() {
    let mut etcd = EtcdCluster::start(3);
    let (port, listeners) = shared_port();
    let blind = instance(&etcd, "gs-blind", port, dead_port());
    let two = instance(&etcd, "gs-2", port, port);
    let three = instance(&etcd, "gs-3", port, port);
    let all = [&blind.server, &two.server, &three.server];

    // gs-blind's probes to westeurope fail; it votes down, the others up: by majority the
    // endpoint stays up, and every instance — gs-blind included — answers westeurope.
    let e = poll(
        Duration::from_secs(20),
        "three votes on eu, one down",
        || {
            let e = eu_status(&blind.server);
            let v = votes(&e);
            (v.len() == 3 && v.iter().filter(|(_, up)| !up).count() == 1).then_some(e)
        },
    );
    assert_eq!(
        votes(&e)[0],
        ("gs-blind".to_string(), false),
        "its own vote first: {e}"
    );
    assert_eq!(e["fleet_up"], true, "{e}");
    for s in all {
        assert_eq!(
            london(s),
            EU,
            "nobody fails over on one vantage point's word"
        );
    }

    // westeurope really fails: every instance moves.
    let [eu, _us, _asia] = listeners;
    drop(eu);
    for s in all {
        poll(Duration::from_secs(10), "every instance fails over", || {
            (london(s) == US).then_some(())
        });
    }
    // It recovers: every instance returns (gs-blind too, on the others' votes).
    let _eu = TcpListener::bind((EU, port)).unwrap();
    for s in all {
        poll(Duration::from_secs(15), "every instance returns", || {
            (london(s) == EU).then_some(())
        });
    }

    // An instance dies: its votes expire with its lease.
    drop(three);
    poll(Duration::from_secs(10), "gs-3's vote is gone", || {
        let v = votes(&eu_status(&blind.server));
        (v.len() == 2 && !v.iter().any(|(i, _)| i == "gs-3")).then_some(())
    });
    // One down of two is no majority: still up.
    assert_eq!(london(&blind.server), EU);

    // etcd loses quorum: past votes_stale_after each instance goes by its own verdict —
    // gs-blind's own is "down", gs-2's "up".
    etcd.stop(1);
    etcd.stop(2);
    poll(
        Duration::from_secs(15),
        "gs-blind falls back to its own verdict",
        || (london(&blind.server) == US).then_some(()),
    );
    assert_eq!(london(&two.server), EU, "gs-2's own verdict is up");
    let e = eu_status(&blind.server);
    assert!(
        e["votes"].is_null() || votes(&e).is_empty(),
        "no fleet votes while stale: {e}"
    );
    // etcd back: the votes are in use again and gs-blind follows the majority.
    etcd.restart(1);
    etcd.restart(2);
    poll(
        Duration::from_secs(20),
        "gs-blind back on the fleet's verdict",
        || (london(&blind.server) == EU).then_some(()),
    );
}

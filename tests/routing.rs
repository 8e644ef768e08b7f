//! Traffic profiles end to end: the real binary with the sample GeoIP database, queried with
//! `dig +subnet=…` as a recursive resolver with ECS would.

mod common;

use common::*;

/// (ECS subnet, where it is, expected A, expected AAAA, expected scope)
const CONTINENTS: &[(&str, &str, &str, &str, &str)] = &[
    (
        "81.2.69.0/24",
        "London",
        "198.51.100.10",
        "2001:db8:100::10",
        "81.2.69.0/24/24",
    ),
    (
        "216.160.83.0/24",
        "Milton, WA",
        "198.51.100.20",
        "2001:db8:100::20",
        "216.160.83.0/24/24",
    ),
    (
        "1.0.16.0/24",
        "Tokyo",
        "198.51.100.30",
        "2001:db8:100::30",
        "1.0.16.0/24/20",
    ),
    (
        "2a01:4f8::/48",
        "Nuremberg",
        "198.51.100.10",
        "2001:db8:100::10",
        "2a01:4f8::/48/32",
    ),
    (
        "2400:2000::/48",
        "Osaka",
        "198.51.100.30",
        "2001:db8:100::30",
        "2400:2000::/48/20",
    ),
];

#[test]
fn performance_routing_sends_each_continent_to_its_nearest_region() {
    let s = Server::start();
    for (subnet, place, a, aaaa, scope) in CONTINENTS {
        let ecs = format!("+subnet={subnet}");
        let d = s.dig(&["mqtt.example.test", "A", &ecs]);
        assert_eq!(d.status, "NOERROR", "{place}: {}", d.raw);
        assert!(d.flag("aa"));
        assert_eq!(
            d.answer,
            vec![format!("mqtt.example.test. 30 IN A {a}")],
            "{place}: {}",
            d.raw
        );
        // Never scope 0 for a client-dependent answer: the GeoIP network, capped at the source.
        assert_eq!(
            d.client_subnet.as_deref(),
            Some(*scope),
            "{place}: {}",
            d.raw
        );
        let d = s.dig(&["mqtt.example.test", "AAAA", &ecs]);
        assert_eq!(
            d.answer,
            vec![format!("mqtt.example.test. 30 IN AAAA {aaaa}")],
            "{place}: {}",
            d.raw
        );
    }
}

#[test]
fn without_ecs_the_resolver_address_is_located() {
    // 127.0.0.0/8 is mapped to a Frankfurt "lab" location in the sample database.
    let s = Server::start();
    let d = s.dig(&["mqtt.example.test", "A"]);
    assert_eq!(
        d.answer,
        vec!["mqtt.example.test. 30 IN A 198.51.100.10"],
        "{}",
        d.raw
    );
    // Source prefix 0 ("do not use my subnet", RFC 7871): the resolver is located, scope 0.
    let d = s.dig(&["mqtt.example.test", "A", "+subnet=0.0.0.0/0"]);
    assert_eq!(
        d.answer,
        vec!["mqtt.example.test. 30 IN A 198.51.100.10"],
        "{}",
        d.raw
    );
    assert_eq!(d.client_subnet.as_deref(), Some("0.0.0.0/0/0"));
}

#[test]
fn unknown_client_locations_fall_back_without_error() {
    // 10.0.0.0/8 is not in the database: profile order (no probe RTTs yet) → first endpoint.
    let s = Server::start();
    let d = s.dig(&["mqtt.example.test", "A", "+subnet=10.1.2.0/24"]);
    assert_eq!(d.status, "NOERROR");
    assert_eq!(
        d.answer,
        vec!["mqtt.example.test. 30 IN A 198.51.100.10"],
        "{}",
        d.raw
    );
}

#[test]
fn each_routing_method_answers_through_the_binary() {
    let s = Server::start();
    let one = |name: &str, args: &[&str]| {
        let mut a = vec![name, "A"];
        a.extend_from_slice(args);
        s.dig(&a)
    };
    // priority: the first healthy in order; the same for every client → scope 0.
    let d = one("mqtt-failover.example.test", &["+subnet=1.0.16.0/24"]);
    assert_eq!(
        d.answer,
        vec!["mqtt-failover.example.test. 30 IN A 198.51.100.10"]
    );
    assert_eq!(d.client_subnet.as_deref(), Some("1.0.16.0/24/0"));

    // geographic: EU, NA, and the rest of the world.
    for (subnet, want) in [
        ("81.2.69.0/24", "198.51.100.10"),
        ("216.160.83.0/24", "198.51.100.20"),
        ("1.0.16.0/24", "198.51.100.30"),
    ] {
        let d = one("mqtt-geo.example.test", &[&format!("+subnet={subnet}")]);
        assert_eq!(
            d.answer,
            vec![format!("mqtt-geo.example.test. 30 IN A {want}")],
            "{subnet}"
        );
    }

    // multivalue: all three healthy endpoints.
    let d = one("mqtt-all.example.test", &[]);
    assert_eq!(d.answer.len(), 3, "{}", d.raw);

    // subnet: the pinned range, and the fallback for everyone else.
    let d = one("mqtt-office.example.test", &["+subnet=192.0.2.128/25"]);
    assert_eq!(
        d.answer,
        vec!["mqtt-office.example.test. 30 IN A 198.51.100.20"]
    );
    assert_eq!(d.client_subnet.as_deref(), Some("192.0.2.128/25/25"));
    let d = one("mqtt-office.example.test", &["+subnet=81.2.69.0/24"]);
    assert_eq!(
        d.answer,
        vec!["mqtt-office.example.test. 30 IN A 198.51.100.10"]
    );

    // weighted + sticky: one client network keeps its answer; scope /24.
    let first = one("mqtt-canary.example.test", &["+subnet=81.2.69.0/24"]);
    assert_eq!(first.answer.len(), 1);
    assert_eq!(first.client_subnet.as_deref(), Some("81.2.69.0/24/24"));
    for _ in 0..5 {
        let again = one("mqtt-canary.example.test", &["+subnet=81.2.69.0/24"]);
        assert_eq!(again.answer, first.answer);
    }

    // nested: Europe's priority pair for a London client.
    let d = one("mqtt-nested.example.test", &["+subnet=81.2.69.0/24"]);
    assert_eq!(
        d.answer,
        vec!["mqtt-nested.example.test. 30 IN A 198.51.100.10"]
    );
    let d = one("mqtt-nested.example.test", &["+subnet=216.160.83.0/24"]);
    assert_eq!(
        d.answer,
        vec!["mqtt-nested.example.test. 30 IN A 198.51.100.20"]
    );

    // hostname endpoint: CNAME, for A and AAAA alike.
    for t in ["A", "AAAA", "CNAME"] {
        let d = s.dig(&["mqtt-lb.example.test", t]);
        assert_eq!(
            d.answer,
            vec!["mqtt-lb.example.test. 30 IN CNAME emqx-westeurope.lb.example.net."],
            "{t}: {}",
            d.raw
        );
    }
}

#[test]
fn other_types_at_a_steered_name_are_nodata_and_any_is_minimal() {
    let s = Server::start();
    let d = s.dig(&["mqtt.example.test", "MX"]);
    assert_eq!(d.status, "NOERROR");
    assert!(d.answer.is_empty());
    assert_eq!(d.authority.len(), 1, "SOA: {}", d.raw);
    // A CNAME query where no endpoint is a hostname: NODATA.
    let d = s.dig(&["mqtt.example.test", "CNAME"]);
    assert!(d.answer.is_empty() && d.status == "NOERROR", "{}", d.raw);
    let d = s.dig(&["mqtt.example.test", "ANY"]);
    assert_eq!(
        d.answer,
        vec![r#"mqtt.example.test. 3600 IN HINFO "RFC8482" """#]
    );
}

#[test]
fn steered_answers_keep_the_query_case_and_work_over_tcp() {
    let s = Server::start();
    let d = s.dig(&["MqTt.Example.TEST", "A", "+tcp", "+subnet=216.160.83.0/24"]);
    assert_eq!(
        d.answer,
        vec!["MqTt.Example.TEST. 30 IN A 198.51.100.20"],
        "{}",
        d.raw
    );
}

#[test]
fn explain_shows_every_term_and_the_same_decision() {
    let out = std::process::Command::new(bin())
        .args(["explain", "--config"])
        .arg(repo().join("geosteer.toml"))
        .args([
            "mqtt.example.test",
            "--ecs",
            "216.160.83.0/24",
            "--type",
            "AAAA",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "country US continent NA",
        "+ westeurope",
        "+ eastus",
        "+ southeastasia",
        "dist ",
        "model ",
        "excess 0.0 ms",
        "decision: eastus: lowest estimate",
        "answer    2001:db8:100::20 ttl 30 scope /24",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    // The JSON form carries the same decision.
    let out = std::process::Command::new(bin())
        .args(["explain", "--config"])
        .arg(repo().join("geosteer.toml"))
        .args(["mqtt.example.test", "--ecs", "1.0.16.0/24", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["answer"][0], "198.51.100.30");
    assert_eq!(v["scope"], 20);
    // A static name is not a profile: a clear error, exit 2.
    let out = std::process::Command::new(bin())
        .args(["explain", "--config"])
        .arg(repo().join("geosteer.toml"))
        .arg("www.example.test")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a traffic profile"));
}

#[test]
fn a_bad_profile_file_names_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let zones = dir.path().join("zones");
    std::fs::create_dir(&zones).unwrap();
    std::fs::copy(
        repo().join("zones/example.test.zone"),
        zones.join("example.test.zone"),
    )
    .unwrap();
    std::fs::write(
        zones.join("example.test.toml"),
        "[[profile]]\nname = \"mqtt\"\nmethod = \"performance\"\n\n[[profile.endpoint]]\nname = \"eu\"\nregion = \"azure:atlantis\"\ntargets = [\"192.0.2.1\"]\n",
    )
    .unwrap();
    let cfg = dir.path().join("geosteer.toml");
    std::fs::write(&cfg, "[zones]\ndirectory = \"zones\"\n").unwrap();
    let (code, _, err) = check(&cfg);
    assert_eq!(code, 64);
    let want = format!(
        "{}:7: profile[mqtt].endpoint[eu].region: unknown region \"azure:atlantis\"",
        zones.join("example.test.toml").display()
    );
    assert!(err.starts_with(&want), "got {err}\nwant {want}");
}

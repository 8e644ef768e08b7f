//! The admin API takes endpoints in every form the CLI does and answers mistakes in words; the
//! profile loader points a misnamed region to the catalogue name and an apex profile to the
//! child-zone + CNAME pattern.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use common::*;

/// A minimal HTTP/1.1 client: (status, body).
fn http(addr: SocketAddr, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|x| x.1.to_string());
    (status, body.unwrap_or_default())
}

#[test]
fn force_accepts_every_endpoint_form_the_cli_does_and_answers_errors_in_words() {
    let s = Server::start();
    let api = s.admin.expect("admin API");
    for form in [
        "mqtt.example.test./westeurope",
        "mqtt.example.test/westeurope",
        "MQTT/westeurope",
        "mqtt/westeurope",
    ] {
        let (code, body) = http(
            api,
            "/api/force",
            &format!(r#"{{"endpoint":"{form}","action":"down","reason":"t"}}"#),
        );
        assert_eq!(code, 200, "{form}: {body}");
        assert!(
            body.contains("mqtt.example.test./westeurope"),
            "{form}: {body}"
        );
        let (code, body) = http(
            api,
            "/api/force",
            &format!(r#"{{"endpoint":"{form}","action":"probe"}}"#),
        );
        assert_eq!(code, 200, "{form}: {body}");
    }
    let (code, body) = http(
        api,
        "/api/force",
        r#"{"endpoint":"broker/westeurope","action":"down"}"#,
    );
    assert_eq!(code, 404, "{body}");
    assert!(
        body.contains(r#"no profile \"broker\" (profiles: mqtt.example.test., "#),
        "{body}"
    );
    assert!(!body.contains("Endpoint("), "Rust debug text: {body}");
    let (code, body) = http(
        api,
        "/api/force",
        r#"{"endpoint":"mqtt/atlantis","action":"down"}"#,
    );
    assert_eq!(code, 404, "{body}");
    assert!(
        body.contains(
            r#"has no endpoint \"atlantis\" (endpoints: westeurope, eastus, southeastasia)"#
        ),
        "{body}"
    );
    let (code, body) = http(
        api,
        "/api/force",
        r#"{"endpoint":"westeurope","action":"down"}"#,
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("give it as profile/endpoint"), "{body}");
    let (code, body) = http(api, "/api/force", r#"{"region":"eastus","action":"down"}"#);
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("did you mean azure:eastus?"), "{body}");
    assert!(!body.contains("Region("), "Rust debug text: {body}");
}

fn check_profile(profile: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("zones")).unwrap();
    std::fs::copy(
        repo().join("zones/example.test.zone"),
        dir.path().join("zones/example.test.zone"),
    )
    .unwrap();
    std::fs::write(dir.path().join("zones/example.test.toml"), profile).unwrap();
    let cfg = dir.path().join("geosteer.toml");
    std::fs::write(
        &cfg,
        "[zones]\ndirectory = \"zones\"\n[geoip]\ncity = \"\"\nasn = \"\"\n[admin]\nlisten = \"\"\n",
    )
    .unwrap();
    let (code, _, err) = check(&cfg);
    (code, err)
}

#[test]
fn a_region_without_its_provider_gets_a_suggestion() {
    let (code, err) = check_profile(
        "[[profile]]\nname = \"m\"\nmethod = \"performance\"\n[[profile.endpoint]]\nname = \"a\"\nregion = \"eastus\"\ntargets = [\"192.0.2.1\"]\n",
    );
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains(r#"unknown region "eastus" (did you mean azure:eastus? see geo/regions.toml"#),
        "{err}"
    );
}

#[test]
fn steering_the_apex_points_to_the_child_zone_and_cname_pattern() {
    for name in ["@", "example.test."] {
        let (code, err) = check_profile(&format!(
            "[[profile]]\nname = \"{name}\"\nmethod = \"priority\"\n[[profile.endpoint]]\nname = \"a\"\ntargets = [\"192.0.2.1\"]\n"
        ));
        assert_eq!(code, 64, "{err}");
        assert!(
            err.contains("is the zone apex example.test., which holds SOA and NS")
                && err.contains("CNAME mqtt.geo.example.test.")
                && err.contains("deploy/README.md"),
            "{err}"
        );
    }
}

//! The quick start's probe-driven failover demo (`zones/demo/geosteer.toml`) as shipped — only
//! its ports moved to free ones and its paths made absolute: the bundled profile probes the
//! demo endpoints geosteer runs itself, `geosteer demo down westeurope` (the real CLI, finding
//! the per-run token by itself) makes its probes fail and London's answer move, and `demo up`
//! brings it back.

mod common;

use std::process::Command;
use std::time::Duration;

use common::regions::shared_port;
use common::{Opts, Server, bin, poll, repo};

fn london(s: &Server) -> String {
    common::fleet::london(s, "mqtt.live.test")
}

/// `geosteer demo ACTION ENDPOINT --config FILE`, with the admin port the server got (as
/// `GEOSTEER_ADMIN_PORT`, which the CLI honours like `serve` does).
fn demo(s: &Server, config: &std::path::Path, action: &str, endpoint: &str) -> String {
    let out = Command::new(bin())
        .args(["demo", action, endpoint, "--config"])
        .arg(config)
        .env("GEOSTEER_ADMIN_PORT", s.admin.unwrap().port().to_string())
        .output()
        .expect("run geosteer demo");
    assert!(
        out.status.success(),
        "geosteer demo {action} {endpoint}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_bundled_demo_fails_over_on_probes_and_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let src = repo().join("zones/demo");
    let (port, listeners) = shared_port();
    drop(listeners);
    std::fs::create_dir_all(dir.path().join("live")).unwrap();
    for f in ["live.test.zone", "live.test.toml"] {
        let text = std::fs::read_to_string(src.join("live").join(f)).unwrap();
        std::fs::write(
            dir.path().join("live").join(f),
            text.replace("port = 18830", &format!("port = {port}")),
        )
        .unwrap();
    }
    let geo = repo().join("geo");
    let config = std::fs::read_to_string(src.join("geosteer.toml"))
        .unwrap()
        .replace(":5353", ":0")
        .replace("127.0.0.1:8053", "127.0.0.1:0")
        .replace(":18830", &format!(":{port}"))
        .replace("../../geo/", &format!("{}/", geo.display()))
        .replace("\"[::1]:0\"", "\"127.0.0.2:0\"")
        .replace("../../geosteer-demo-state.json", "state.json")
        // The harness reads the bound ports from JSON log lines.
        + "\n[log]\nformat = \"json\"\n";
    assert!(
        config.contains("[[demo.endpoints]]"),
        "the shipped demo has endpoints"
    );
    let path = dir.path().join("geosteer.toml");
    std::fs::write(&path, config).unwrap();
    let s = Server::start_with(Opts {
        config_path: Some(path.clone()),
        ..Default::default()
    });
    poll(Duration::from_secs(15), "London on westeurope", || {
        (london(&s) == "127.0.0.11").then_some(())
    });
    let said = demo(&s, &path, "down", "westeurope");
    assert!(said.contains("down"), "{said}");
    poll(Duration::from_secs(15), "London moves to eastus", || {
        (london(&s) == "127.0.0.12").then_some(())
    });
    demo(&s, &path, "up", "westeurope");
    poll(Duration::from_secs(20), "London back on westeurope", || {
        (london(&s) == "127.0.0.11").then_some(())
    });
    // A name that is not a demo endpoint is an error in words.
    let out = Command::new(bin())
        .args(["demo", "down", "mars", "--config"])
        .arg(&path)
        .env("GEOSTEER_ADMIN_PORT", s.admin.unwrap().port().to_string())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no demo endpoint \"mars\"") && err.contains("westeurope"),
        "{err}"
    );
}

//! `geosteer check` and `serve` on good and bad input: every shipped file loads, every broken
//! one exits 64 with a message naming file, line and field.

mod common;

use std::path::Path;

use common::*;

/// The shipped default configuration checks clean. (The deployment configurations under
/// deploy/ name production paths — secrets, volumes — and are checked by tests/deploy.rs with
/// those paths mapped into a temporary directory.)
#[test]
fn every_shipped_config_checks_clean() {
    let configs = vec![repo().join("geosteer.toml")];
    for c in configs {
        let (code, out, err) = check(&c);
        assert_eq!(code, 0, "{}: {out}{err}", c.display());
        assert!(out.contains(": ok ("), "{out}");
    }
}

/// Every zone file in zones/ parses and passes the consistency checks.
#[test]
fn every_zone_file_loads() {
    let dir = repo().join("zones");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) == Some("zone") {
            let text = std::fs::read_to_string(&p).unwrap();
            geosteer::zone::load_zone_text(&p, &text)
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            n += 1;
        }
    }
    assert!(n >= 1, "zones/ holds at least the example zone");
}

#[test]
fn check_without_config_uses_the_embedded_default() {
    let out = std::process::Command::new(bin())
        .arg("check")
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("<embedded geosteer.toml>: ok"));
}

#[test]
fn version_flag_prints_the_version() {
    let out = std::process::Command::new(bin())
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("geosteer {}", env!("CARGO_PKG_VERSION"))
    );
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

const ZONE: &str =
    "$ORIGIN t.\n$TTL 60\n@ IN SOA ns.t. h.t. 1 2 3 4 30\n@ IN NS ns.t.\nns IN A 192.0.2.1\n";

/// (config text, zone text, expected exact message with `{dir}` for the temp dir).
#[test]
fn bad_input_exits_64_naming_file_line_and_field() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "[server]\nudp = [\"127.0.0.1:0\"]\nworkerz = 2\n",
            ZONE,
            "{dir}/geosteer.toml:3: server.workerz: unknown field `workerz`",
        ),
        (
            "[server]\ntcp = [\"localhost:53\"]\n",
            ZONE,
            "{dir}/geosteer.toml:2: server.tcp: \"localhost:53\": \"localhost\" is not an IP address; host names are not resolved here (write ip:port, e.g. 127.0.0.1:5353 or [::1]:5353)",
        ),
        (
            "[server]\nedns_udp_payload = 65000\n",
            ZONE,
            "{dir}/geosteer.toml:2: server.edns_udp_payload: 65000 is outside 512..=4096 (1232 avoids fragmentation)",
        ),
        (
            "[server]\ntcp_idle_timeout = \"ten seconds\"\n",
            ZONE,
            "{dir}/geosteer.toml:2: server.tcp_idle_timeout:",
        ),
        (
            "[log]\nformat = \"xml\"\n",
            ZONE,
            "{dir}/geosteer.toml:2: log.format: unknown variant `xml`",
        ),
        (
            "",
            "$ORIGIN t.\n$TTL 60\n@ IN SOA ns.t. h.t. 1 2 3 4 30\n@ IN NS ns.t.\nns IN A 192.0.2.300\n",
            "{dir}/zones/t.zone:5: -: syntax:",
        ),
        (
            "",
            "$ORIGIN t.\n$TTL 60\n@ IN SOA ns.t. h.t. 1 2 3 4 30\nns IN A 192.0.2.1\n",
            "{dir}/zones/t.zone:3: t. NS: zone t. has no NS records at its apex",
        ),
        (
            "",
            &format!("{ZONE}www.other. IN A 192.0.2.2\n"),
            "{dir}/zones/t.zone:6: www.other. A: out of zone: not at or below the origin t.",
        ),
        (
            "",
            &format!("{ZONE}a.*.w IN A 192.0.2.2\n"),
            "{dir}/zones/t.zone:6: a.*.w.t. A: `*` is only allowed as the first label (a wildcard, RFC 4592)",
        ),
    ];
    for (config, zone, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        std::fs::create_dir(dir.path().join("zones")).unwrap();
        write(&dir.path().join("zones"), "t.zone", zone);
        let cfg = write(
            dir.path(),
            "geosteer.toml",
            &format!("{config}\n[zones]\ndirectory = \"zones\"\n"),
        );
        let expected = expected.replace("{dir}", &d);
        let (code, _out, err) = check(&cfg);
        assert_eq!(code, 64, "check: {err}");
        assert!(
            err.starts_with(&expected),
            "check:\n got: {err}\nwant: {expected}"
        );
        // `serve` refuses the same input before binding anything.
        let out = std::process::Command::new(bin())
            .args(["serve", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "serve");
        assert!(String::from_utf8_lossy(&out.stderr).starts_with(&expected));
    }
}

#[test]
fn missing_zones_directory_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "geosteer.toml",
        "[zones]\ndirectory = \"nowhere\"\n",
    );
    let (code, _, err) = check(&cfg);
    assert_eq!(code, 64);
    assert!(
        err.contains("geosteer.toml:2: zones.directory: ")
            && err.contains("nowhere: cannot read zones directory"),
        "{err}"
    );
}

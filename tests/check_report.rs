//! `geosteer check` reports every problem of a file — in file order, each once, at the right
//! path — and the configuration defaults are what the README says (the sample GeoIP database
//! when `[geoip]` is left out).

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&p, text).unwrap();
    p
}

/// The stderr lines of `check`, with the directory written as `{dir}`.
fn check_lines(config: &Path, dir: &Path) -> (i32, Vec<String>) {
    let (code, _out, err) = check(config);
    let d = dir.display().to_string();
    (
        code,
        err.lines()
            .map(|l| l.replace(&d, "{dir}"))
            .filter(|l| !l.is_empty())
            .collect(),
    )
}

#[test]
fn every_config_problem_is_reported_once_in_file_order() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "geosteer.toml",
        "[server]\nworkerz = 2\nudp = [\"127.0.0.1:0\"]\nedns_udp_payload = 100\n\n\
         [admin]\nlisten = \"\"\ntoken = \"short\"\n\n[bogus]\nx = 1\n\n[log]\nlevle = \"info\"\n",
    );
    let (code, lines) = check_lines(&cfg, dir.path());
    assert_eq!(code, 64, "{lines:?}");
    let want = [
        "{dir}/geosteer.toml:2: server.workerz: unknown field `workerz` (did you mean `workers`?)",
        "{dir}/geosteer.toml:4: server.edns_udp_payload: 100 is outside 512..=4096",
        "{dir}/geosteer.toml:8: admin.token: shorter than 16 characters",
        // An unknown table after [admin] is named as itself, not as a field of [admin].
        "{dir}/geosteer.toml:10: bogus: unknown field `bogus`, expected one of",
        "{dir}/geosteer.toml:14: log.levle: unknown field `levle` (did you mean `level`?)",
    ];
    assert_eq!(lines.len(), want.len(), "{lines:#?}");
    for (got, want) in lines.iter().zip(want) {
        assert!(got.starts_with(want), "got  {got}\nwant {want}…");
    }
}

#[test]
fn every_profile_problem_is_reported_once_in_file_order() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        repo().join("zones/example.test.zone"),
        write(dir.path(), "zones/example.test.zone", ""),
    )
    .unwrap();
    write(
        dir.path(),
        "zones/example.test.toml",
        r#"[[profile]]
name = "mqtt"
method = "fastest"

[profile.monitor]
protocol = "tcp"
port = 1883

[[profile.endpoints]]
name = "a"
targets = ["198.51.100.10"]

[[profile.endpoint]]
name = "b"
weigth = 3
targets = ["198.51.100.10"]

[[profile]]
name = "x"
method = "priority"
[profile.monitor]
protocol = "tcp"
port = 1
interval = "500ms"
[[profile.endpoint]]
name = "a"
targets = ["198.51.100.10"]
[[profile.endpoint]]
name = "b"
targets = ["198.51.100.11"]
"#,
    );
    let cfg = write(
        dir.path(),
        "geosteer.toml",
        "[server]\nudp = [\"127.0.0.1:0\"]\ntcp = [\"127.0.0.1:0\"]\n[zones]\ndirectory = \"zones\"\n\
         [geoip]\ncity = \"\"\nasn = \"\"\n[admin]\nlisten = \"\"\n",
    );
    let (code, lines) = check_lines(&cfg, dir.path());
    assert_eq!(code, 64, "{lines:?}");
    let f = "{dir}/zones/example.test.toml";
    let want = [
        format!("{f}:3: profile[mqtt].method: unknown variant `fastest`"),
        // [[profile.endpoints]] after [profile.monitor]: not `profile[mqtt].monitor`.
        format!(
            "{f}:9: profile[mqtt].endpoints: unknown field `endpoints` (did you mean `endpoint`?)"
        ),
        format!("{f}:15: profile[mqtt].endpoint[b].weigth: unknown field `weigth`"),
        // A profile-level monitor problem, shared by two endpoints: once.
        format!("{f}:24: profile[x].monitor.interval: 500ms is below the 1s minimum"),
    ];
    assert_eq!(lines.len(), want.len(), "{lines:#?}");
    for (got, want) in lines.iter().zip(&want) {
        assert!(got.starts_with(want.as_str()), "got  {got}\nwant {want}…");
    }
}

/// Without `[geoip]` the sample database is used (the documented default): a London ECS
/// subnet is located by ECS. (Before, leaving the table out silently disabled GeoIP and every
/// client was "located by none".)
#[test]
fn leaving_out_geoip_uses_the_sample_database() {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(repo().join("geo"), dir.path().join("geo")).unwrap();
    let cfg = write(
        dir.path(),
        "geosteer.toml",
        &format!(
            "[zones]\ndirectory = {:?}\n[admin]\nlisten = \"\"\n",
            repo().join("zones").display().to_string()
        ),
    );
    let out = Command::new(bin())
        .args(["explain", "--config"])
        .arg(&cfg)
        .args(["mqtt.example.test", "--ecs", "81.2.69.0/24"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("located   by ecs 81.2.69.0"), "{text}");
    assert!(text.contains("198.51.100.10"), "{text}");
}

/// Where the default database is not there, `check` still passes but says that it routes
/// without GeoIP, and how to make that explicit; `city = ""` is that explicit choice (no
/// warning).
#[test]
fn a_missing_default_geoip_database_is_a_warning_not_silence() {
    let dir = tempfile::tempdir().unwrap();
    let zones = repo().join("zones").display().to_string();
    let cfg = write(
        dir.path(),
        "geosteer.toml",
        &format!("[zones]\ndirectory = {zones:?}\n[admin]\nlisten = \"\"\n"),
    );
    let (code, out, err) = check(&cfg);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains("warning: ")
            && err.contains("geoip.city: not set, and the default")
            && err.contains("routing without client locations (GeoIP)"),
        "{err}"
    );
    let cfg = write(
        dir.path(),
        "geosteer.toml",
        &format!(
            "[zones]\ndirectory = {zones:?}\n[geoip]\ncity = \"\"\nasn = \"\"\n[admin]\nlisten = \"\"\n"
        ),
    );
    let (code, out, err) = check(&cfg);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!err.contains("warning"), "{err}");
}

/// A profile file without its zone file is an error naming it (gallery case 40 pins the line).
#[test]
fn a_profile_file_without_its_zone_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        repo().join("zones/example.test.zone"),
        write(dir.path(), "zones/example.test.zone", ""),
    )
    .unwrap();
    write(
        dir.path(),
        "zones/example.tset.toml",
        "[[profile]]\nname = \"mqtt\"\nmethod = \"priority\"\n[[profile.endpoint]]\nname = \"a\"\ntargets = [\"192.0.2.1\"]\n",
    );
    let cfg = write(
        dir.path(),
        "geosteer.toml",
        "[zones]\ndirectory = \"zones\"\n[geoip]\ncity = \"\"\nasn = \"\"\n[admin]\nlisten = \"\"\n",
    );
    let (code, lines) = check_lines(&cfg, dir.path());
    assert_eq!(code, 64, "{lines:?}");
    assert!(
        lines[0].starts_with(
            "{dir}/zones/example.tset.toml: -: no zone file example.tset.zone for profile file example.tset.toml"
        ),
        "{lines:?}"
    );
}

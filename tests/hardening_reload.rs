//! Files that are not files, through the real binary: a config, profile or zone file replaced
//! by a FIFO, linked to `/dev/zero`, emptied or removed; reloads that would remove everything;
//! the state file's temporary name planted as a symlink, or a state file that cannot be
//! written; placeholder admin tokens and targets that only look like addresses.
//!
//! Every wait is a poll or a read with a deadline: on the old code several of these reloads
//! never returned, so each HTTP call here gives up after 10 s and fails the test instead.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

const LONDON: &str = "+subnet=81.2.69.0/24";
const LONDON_A: &str = "mqtt.example.test. 30 IN A 198.51.100.10";

/// A minimal HTTP/1.1 client with a 10 s deadline: (status, body); status 0 = no answer in
/// time (a reload that hangs).
fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = Vec::new();
    if s.read_to_end(&mut out).is_err() {
        return (0, String::new());
    }
    let out = String::from_utf8_lossy(&out).into_owned();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    (status, body)
}

fn reload(s: &Server) -> (u16, String) {
    http(s.admin.unwrap(), "POST", "/api/reload", None)
}

/// `reload.error` of `/api/status`.
fn reload_error(s: &Server) -> Option<String> {
    let (_, body) = http(s.admin.unwrap(), "GET", "/api/status", None);
    let start = body.find('{')?;
    let end = body.rfind('}')?;
    let v: serde_json::Value = serde_json::from_str(&body[start..=end]).ok()?;
    v["reload"]["error"].as_str().map(str::to_string)
}

fn london(s: &Server) -> Vec<String> {
    s.dig(&["mqtt.example.test", "A", LONDON]).answer
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
}

/// Replaces `path` by a FIFO; returns the old contents.
fn fifo_in_place_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    std::fs::remove_file(path).unwrap();
    mkfifo(path);
    text
}

fn put_back(path: &Path, text: &str) {
    std::fs::remove_file(path).unwrap();
    std::fs::write(path, text).unwrap();
}

fn copy_zones(to: &Path) -> PathBuf {
    let zones = to.join("zones");
    std::fs::create_dir_all(&zones).unwrap();
    for f in ["example.test.zone", "example.test.toml"] {
        std::fs::copy(repo().join("zones").join(f), zones.join(f)).unwrap();
    }
    zones
}

/// A server on a private copy of the zones, reloaded only when a test asks.
fn server(dir: &Path) -> (Server, PathBuf) {
    let zones = copy_zones(dir);
    let s = Server::start_with(Opts {
        zones_dir: Some(zones.clone()),
        admin_extra: "reload_poll = \"0s\"".into(),
        ..Default::default()
    });
    (s, zones)
}

/// Asserts a reload failed with `needle` in its error, in the answer and in `/api/status`,
/// and that the old answers are still served.
fn assert_refused(s: &Server, needle: &str) {
    let (code, body) = reload(s);
    assert_eq!(code, 422, "reload should fail, got {code}: {body}");
    assert!(body.contains(needle), "{needle:?} not in {body}");
    let err = reload_error(s).unwrap_or_default();
    assert!(err.contains(needle), "status: {needle:?} not in {err:?}");
    assert_eq!(london(s), vec![LONDON_A], "the old state keeps serving");
}

/// Runs geosteer with a deadline (a hang fails the test instead of blocking it).
fn run(args: &[&str], envs: &[(&str, &str)], within: Duration) -> Output {
    let mut child = Command::new(bin())
        .args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + within;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "geosteer {args:?} still running after {within:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn fifo_config_profile_and_zone_are_reload_errors_and_sigterm_still_exits() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, zones) = server(dir.path());
    assert_eq!(london(&s), vec![LONDON_A]);
    let fifo = "not a regular file (a FIFO)";

    // The config file: by the API, and by SIGHUP (status shows the error, trigger SIGHUP).
    let config = s.config.clone();
    let text = fifo_in_place_of(&config);
    assert_refused(&s, fifo);
    Command::new("kill")
        .args(["-HUP", &s.pid().to_string()])
        .status()
        .unwrap();
    poll(Duration::from_secs(10), "SIGHUP reload error", || {
        let (_, body) = http(s.admin.unwrap(), "GET", "/api/status", None);
        (body.contains("\"trigger\":\"SIGHUP\"") && body.contains(fifo)).then_some(())
    });
    put_back(&config, &text);

    // The profile file.
    let profiles = zones.join("example.test.toml");
    let good_profiles = fifo_in_place_of(&profiles);
    assert_refused(
        &s,
        "example.test.toml: -: cannot read profiles: not a regular file (a FIFO)",
    );
    put_back(&profiles, &good_profiles);

    // The zone file, and a second zone file that is a dangling symlink.
    let zone = zones.join("example.test.zone");
    let good_zone = fifo_in_place_of(&zone);
    assert_refused(
        &s,
        "example.test.zone: -: cannot read zone file: not a regular file (a FIFO)",
    );
    put_back(&zone, &good_zone);
    std::os::unix::fs::symlink(dir.path().join("nowhere"), zones.join("other.test.zone")).unwrap();
    assert_refused(
        &s,
        "other.test.zone: -: cannot read zone file: No such file or directory",
    );
    std::fs::remove_file(zones.join("other.test.zone")).unwrap();

    // A later good reload applies.
    std::fs::write(
        &profiles,
        good_profiles.replace("198.51.100.10", "198.51.100.77"),
    )
    .unwrap();
    Command::new("kill")
        .args(["-HUP", &s.pid().to_string()])
        .status()
        .unwrap();
    poll(Duration::from_secs(10), "good reload applied", || {
        (london(&s) == vec!["mqtt.example.test. 30 IN A 198.51.100.77"]).then_some(())
    });
    assert_eq!(reload_error(&s), None);

    // With the config a FIFO again and a reload just asked for, SIGTERM still exits promptly.
    let _ = fifo_in_place_of(&config);
    Command::new("kill")
        .args(["-HUP", &s.pid().to_string()])
        .status()
        .unwrap();
    let status = s
        .signal_and_wait("TERM", Duration::from_secs(10))
        .expect("exits within 10 s of SIGTERM");
    assert!(status.success(), "{status:?}");
}

/// Resident set size of a process, KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[test]
fn config_linked_to_dev_zero_is_an_error_and_memory_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _zones) = server(dir.path());
    let config = s.config.clone();
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::remove_file(&config).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &config).unwrap();
    assert_refused(&s, "not a regular file (a character device)");
    let rss = rss_kib(s.pid());
    assert!(rss < 200 * 1024, "RSS {rss} KiB after reading /dev/zero");
    put_back(&config, &text);
    assert_eq!(reload(&s).0, 200);
}

#[test]
fn empty_or_missing_profile_file_is_refused_unless_asked() {
    let dir = tempfile::tempdir().unwrap();
    let (s, zones) = server(dir.path());
    let profiles = zones.join("example.test.toml");
    let good = std::fs::read_to_string(&profiles).unwrap();

    std::fs::write(&profiles, "").unwrap();
    assert_refused(&s, "example.test.toml: -: no [[profile]] in this file");
    std::fs::write(&profiles, "# all commented out\n").unwrap();
    assert_refused(&s, "no [[profile]] in this file");

    // Missing: the zone becomes static, which removes every profile: refused …
    std::fs::remove_file(&profiles).unwrap();
    assert_refused(
        &s,
        "no traffic profile served now would be served (mqtt.example.test.",
    );
    // … unless asked explicitly, here with the CLI.
    let api = format!("http://{}", s.admin.unwrap());
    let out = run(
        &["reload", "--allow-removal", "--api", &api, "--token", TOKEN],
        &[],
        Duration::from_secs(20),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(s.dig(&["mqtt.example.test", LONDON]).status, "NXDOMAIN");
    assert_eq!(reload_error(&s), None);

    // Bringing them back is an ordinary reload.
    std::fs::write(&profiles, &good).unwrap();
    assert_eq!(reload(&s).0, 200);
    assert_eq!(london(&s), vec![LONDON_A]);
}

#[test]
fn replacing_every_zone_is_refused_unless_asked() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _zones) = server(dir.path());
    // Point the config at a directory with another zone only.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(
        other.join("other.test.zone"),
        "$ORIGIN other.test.\n$TTL 60\n@ IN SOA ns1 hostmaster 1 7200 900 1209600 300\n\
         @ IN NS ns1\nns1 IN A 192.0.2.1\nwww IN A 192.0.2.2\n",
    )
    .unwrap();
    let text = std::fs::read_to_string(&s.config).unwrap();
    let zones_line = text
        .lines()
        .find(|l| l.starts_with("directory"))
        .unwrap()
        .to_string();
    std::fs::write(
        &s.config,
        text.replace(
            &zones_line,
            &format!("directory = {:?}", other.display().to_string()),
        ),
    )
    .unwrap();
    assert_refused(&s, "no zone served now would be served (example.test.)");
    assert_eq!(s.dig(&["www.other.test"]).status, "REFUSED");
    let (code, body) = http(
        s.admin.unwrap(),
        "POST",
        "/api/reload?allow_removal=true",
        None,
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        s.dig(&["www.other.test"]).answer,
        vec!["www.other.test. 60 IN A 192.0.2.2"]
    );
    assert_eq!(s.dig(&["www.example.test"]).status, "REFUSED");
}

const FORCE_LONDON_DOWN: &str =
    r#"{"profile":"mqtt","endpoint_name":"westeurope","action":"down","reason":"test"}"#;

#[test]
fn a_planted_state_temp_symlink_is_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _zones) = server(dir.path());
    let state = s.dir.path().join("state.json");
    let victim = dir.path().join("victim.txt");
    std::fs::write(&victim, "precious\n").unwrap();
    std::os::unix::fs::symlink(&victim, s.dir.path().join("state.json.tmp")).unwrap();
    let (code, body) = http(
        s.admin.unwrap(),
        "POST",
        "/api/force",
        Some(FORCE_LONDON_DOWN),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    let saved = std::fs::read_to_string(&state).unwrap();
    assert!(saved.contains("westeurope"), "{saved}");
    assert!(
        std::fs::symlink_metadata(s.dir.path().join("state.json.tmp")).is_err(),
        "no temporary file left behind"
    );
}

#[test]
fn force_fails_loudly_when_the_state_file_cannot_be_written() {
    let dir = tempfile::tempdir().unwrap();
    let zones = copy_zones(dir.path());
    // A directory that does not exist (tests run as root, so permissions would not stop us).
    let state_dir = dir.path().join("state");
    let s = Server::start_with(Opts {
        zones_dir: Some(zones),
        admin_extra: "reload_poll = \"0s\"".into(),
        state_file: Some(state_dir.join("geosteer-state.json")),
        ..Default::default()
    });
    let api = s.admin.unwrap();
    let (code, body) = http(api, "POST", "/api/force", Some(FORCE_LONDON_DOWN));
    assert_eq!(code, 500, "{body}");
    assert!(
        body.contains("cannot write the state file") && body.contains("was not changed"),
        "{body}"
    );
    // Rolled back: not in effect, not listed.
    let (_, forced) = http(api, "GET", "/api/forced", None);
    assert!(!forced.contains("westeurope"), "{forced}");
    assert_eq!(london(&s), vec![LONDON_A]);
    // The CLI exits non-zero with the message.
    let out = run(
        &[
            "force",
            "mqtt/westeurope",
            "--action",
            "down",
            "--api",
            &format!("http://{api}"),
            "--token",
            TOKEN,
        ],
        &[],
        Duration::from_secs(20),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("cannot write the state file"), "{stderr}");
    // Once the directory exists, the same call works and moves the answer.
    std::fs::create_dir(&state_dir).unwrap();
    let (code, body) = http(api, "POST", "/api/force", Some(FORCE_LONDON_DOWN));
    assert_eq!(code, 200, "{body}");
    poll(Duration::from_secs(10), "answer moves", || {
        (london(&s) != vec![LONDON_A]).then_some(())
    });
}

/// A minimal valid setup in `dir` with the given `[admin]` lines and profile file.
fn write_setup(dir: &Path, admin: &str, profiles: &str) -> PathBuf {
    let zones = dir.join("zones");
    std::fs::create_dir_all(&zones).unwrap();
    std::fs::copy(
        repo().join("zones/example.test.zone"),
        zones.join("example.test.zone"),
    )
    .unwrap();
    std::fs::write(zones.join("example.test.toml"), profiles).unwrap();
    let config = dir.join("geosteer.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nudp = [\"127.0.0.1:0\"]\ntcp = [\"127.0.0.1:0\"]\n[zones]\ndirectory = \"zones\"\n[admin]\nlisten = \"\"\n{admin}\n"
        ),
    )
    .unwrap();
    config
}

const ONE_PROFILE: &str = "[[profile]]\nname = \"mqtt\"\nmethod = \"performance\"\n\n[[profile.endpoint]]\nname = \"westeurope\"\nregion = \"azure:westeurope\"\ntargets = [\"198.51.100.10\"]\n";

fn serve(config: &Path) -> Output {
    run(
        &["serve", "--config", config.to_str().unwrap()],
        &[],
        Duration::from_secs(20),
    )
}

#[test]
fn placeholder_tokens_exit_64_naming_their_source() {
    let placeholder = "REPLACE-ME-with-a-random-token-of-32-characters-or-more";
    // token_file, as the shipped Kubernetes Secret would be mounted.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin-token"), format!("{placeholder}\n")).unwrap();
    let config = write_setup(dir.path(), "token_file = \"admin-token\"", ONE_PROFILE);
    let out = serve(&config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("geosteer.toml:8: admin.token_file: ")
            && stderr.contains("admin-token holds a placeholder (\"REPLACE-ME\")"),
        "{stderr}"
    );
    // token, inline.
    let dir = tempfile::tempdir().unwrap();
    let config = write_setup(dir.path(), &format!("token = {placeholder:?}"), ONE_PROFILE);
    let out = serve(&config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("geosteer.toml:8: admin.token: \"REPLACE-ME\": a placeholder"),
        "{stderr}"
    );
    // GEOSTEER_TOKEN for the CLI: refused before any request is sent.
    let out = run(
        &["reload", "--api", "http://127.0.0.1:9"],
        &[("GEOSTEER_TOKEN", placeholder)],
        Duration::from_secs(20),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("GEOSTEER_TOKEN: \"REPLACE-ME\" is a placeholder"),
        "{stderr}"
    );
}

#[test]
fn a_target_that_only_looks_like_an_address_exits_64_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_setup(
        dir.path(),
        "",
        &ONE_PROFILE.replace("198.51.100.10", "127.0.0.256"),
    );
    for args in [["check", "--config"], ["serve", "--config"]] {
        let out = run(
            &[args[0], args[1], config.to_str().unwrap()],
            &[],
            Duration::from_secs(20),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(
            stderr.contains(
                "example.test.toml:8: profile[mqtt].endpoint[westeurope].targets: \"127.0.0.256\" looks like an IP address but is not one: 256 is above 255"
            ),
            "{stderr}"
        );
    }
}

#[test]
fn at_startup_fifos_and_empty_profiles_are_config_errors() {
    // The config itself a FIFO: `check` must not block on it.
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("geosteer.toml");
    mkfifo(&fifo);
    let out = run(
        &["check", "--config", fifo.to_str().unwrap()],
        &[],
        Duration::from_secs(20),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("cannot read configuration: not a regular file (a FIFO)"),
        "{stderr}"
    );
    // A FIFO profile file.
    let dir = tempfile::tempdir().unwrap();
    let config = write_setup(dir.path(), "", ONE_PROFILE);
    let profiles = dir.path().join("zones/example.test.toml");
    std::fs::remove_file(&profiles).unwrap();
    mkfifo(&profiles);
    let out = serve(&config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("example.test.toml: -: cannot read profiles: not a regular file (a FIFO)"),
        "{stderr}"
    );
    // An empty one.
    std::fs::remove_file(&profiles).unwrap();
    std::fs::write(&profiles, "").unwrap();
    let out = serve(&config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("no [[profile]] in this file"), "{stderr}");
}

//! The bad input gallery: broken configurations, zone files and profile files, each with the
//! exact message an operator gets.
//!
//! Every directory `tests/gallery/NN-name/` holds a `geosteer.toml` (zones in `zones/`, the
//! admin API disabled with `listen = ""`) and an `expected.txt`:
//!
//! ```text
//! exit: 64
//! stderr: {dir}/zones/example.test.zone:7: -: syntax: …
//! ```
//!
//! `stderr` is the exact first line `geosteer check --config <dir>/geosteer.toml` prints, with
//! the case directory written as `{dir}`. Two other keys exist for messages that are not frozen
//! whole: `stderr-prefix:` (the line must start with it) is used where the message ends in a
//! list that grows with the code (serde's "expected one of" field lists), and, together with a
//! `finding:` line saying what is wrong, where the message itself is known to need work — the
//! prefix then pins file, line and field only, and the exact line is frozen once it is fixed.
//! Files may contain `{port}`: it is replaced by a port the test holds bound (UDP and TCP) while
//! geosteer runs.
//!
//! Each case is copied to a temporary directory and checked there (so nothing is ever written
//! beside the data). A few cases also run `serve`, which must fail the same way *before*
//! binding: it exits 64 with the same message although its listen port is held by the test.
//! Had it bound first it would have failed with exit 1 ("address in use") instead, as the
//! control test shows with a valid configuration and the same held port.
//!
//! To add a case: create the directory with an `expected.txt` holding only `exit: 64`, run
//! `GALLERY_PRINT=1 cargo test --test gallery -- --nocapture` to see the actual first line,
//! review that it names the right file, line and field, and paste it in.

use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Cases that also run `serve`: one per loader (config, zone directory, zone file, profile,
/// monitor, GeoIP).
const SERVE_CASES: &[&str] = &[
    "06-edns-payload-out-of-range",
    "08-missing-zones-dir",
    "10-zone-bad-ip",
    "19-profile-unknown-region",
    "24-monitor-interval-below-1s",
    "26-unknown-geoip-file",
];

/// At least this many cases (so a broken directory listing cannot pass silently).
const MIN_CASES: usize = 20;

fn gallery() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/gallery")
}

fn cases() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(gallery())
        .expect("tests/gallery")
        .map(|e| e.expect("gallery entry").path())
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    v
}

/// What `expected.txt` asks for.
struct Expected {
    exit: i32,
    /// The exact first stderr line.
    stderr: Option<String>,
    /// Or a prefix of it.
    prefix: Option<String>,
}

impl Expected {
    fn matches(&self, line: &str) -> bool {
        match (&self.stderr, &self.prefix) {
            (Some(exact), None) => line == exact,
            (None, Some(prefix)) => line.starts_with(prefix.as_str()),
            _ => false,
        }
    }

    fn describe(&self) -> String {
        match (&self.stderr, &self.prefix) {
            (Some(exact), None) => exact.clone(),
            (None, Some(prefix)) => format!("{prefix}…"),
            _ => "(give exactly one of stderr: or stderr-prefix:)".into(),
        }
    }
}

fn expected(case: &Path) -> Expected {
    let path = case.join("expected.txt");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut exit = None;
    let (mut stderr, mut prefix) = (None, None);
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("exit: ") {
            exit = Some(v.trim().parse().expect("exit code"));
        } else if let Some(v) = line.strip_prefix("stderr: ") {
            stderr = Some(v.to_string());
        } else if let Some(v) = line.strip_prefix("stderr-prefix: ") {
            prefix = Some(v.to_string());
        } else if line.starts_with("finding: ") || line.trim().is_empty() {
            // Documentation for people.
        } else {
            panic!("{}: unexpected line {line:?}", path.display());
        }
    }
    Expected {
        exit: exit.unwrap_or_else(|| panic!("{}: no `exit:` line", path.display())),
        stderr,
        prefix,
    }
}

/// A port held bound on 127.0.0.1 over UDP and TCP for the life of the value.
struct HeldPort {
    port: u16,
    _udp: UdpSocket,
    _tcp: TcpListener,
}

fn hold_port() -> HeldPort {
    for _ in 0..50 {
        let tcp = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind tcp");
        let port = tcp.local_addr().expect("addr").port();
        if let Ok(udp) = UdpSocket::bind((Ipv4Addr::LOCALHOST, port)) {
            return HeldPort {
                port,
                _udp: udp,
                _tcp: tcp,
            };
        }
    }
    panic!("no port free on 127.0.0.1 for both UDP and TCP");
}

/// Copies a case into a fresh directory, replacing `{port}` in every file.
fn stage(case: &Path, port: u16) -> tempfile::TempDir {
    let tmp = tempfile::Builder::new()
        .prefix("geosteer-gallery-")
        .tempdir()
        .expect("tempdir");
    copy_dir(case, tmp.path(), port);
    tmp
}

fn copy_dir(from: &Path, to: &Path, port: u16) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read case dir") {
        let e = e.expect("entry");
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if src.is_dir() {
            copy_dir(&src, &dst, port);
        } else if e.file_name() != "expected.txt" {
            let bytes = std::fs::read(&src).expect("read case file");
            let bytes = match String::from_utf8(bytes) {
                Ok(t) => t.replace("{port}", &port.to_string()).into_bytes(),
                Err(e) => e.into_bytes(),
            };
            std::fs::write(&dst, bytes).expect("write staged file");
        }
    }
}

/// Runs geosteer with a deadline; a process still running then is killed and the test fails.
fn run(args: &[&str], dir: &Path, deadline: Duration) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_geosteer"))
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn geosteer");
    let started = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if started.elapsed() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "geosteer {args:?} still running after {deadline:?}\nstderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// First stderr line with the staged directory written as `{dir}`.
fn first_line(out: &Output, dir: &Path) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr.lines().next().unwrap_or("").to_string();
    // Temp paths may be reached through a symlink (macOS /var → /private/var); try both.
    let mut line = line.replace(&dir.display().to_string(), "{dir}");
    if let Ok(canon) = dir.canonicalize() {
        line = line.replace(&canon.display().to_string(), "{dir}");
    }
    line
}

fn config_arg(dir: &Path) -> String {
    dir.join("geosteer.toml").display().to_string()
}

#[test]
fn gallery_has_enough_cases() {
    let n = cases().len();
    assert!(n >= MIN_CASES, "only {n} gallery cases");
    for s in SERVE_CASES {
        assert!(gallery().join(s).is_dir(), "serve case {s} is missing");
    }
}

#[test]
fn check_prints_the_expected_first_line() {
    let print = std::env::var_os("GALLERY_PRINT").is_some();
    let mut failures = Vec::new();
    for case in cases() {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let want = expected(&case);
        let held = hold_port();
        let staged = stage(&case, held.port);
        let out = run(
            &["check", "--config", &config_arg(staged.path())],
            staged.path(),
            Duration::from_secs(30),
        );
        let got = first_line(&out, staged.path());
        let code = out.status.code().unwrap_or(-1);
        if print {
            println!("{name}\n  exit: {code}\n  stderr: {got}");
        }
        if code != want.exit || !want.matches(&got) {
            failures.push(format!(
                "{name}:\n  expected exit {}, stderr: {}\n  got      exit {code}, stderr: {got}",
                want.exit,
                want.describe()
            ));
        }
        // Nothing but the error: no "ok" line on stdout.
        assert!(
            out.stdout.is_empty() || code == 0,
            "{name}: stdout {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn serve_fails_the_same_way_before_binding() {
    for name in SERVE_CASES {
        let case = gallery().join(name);
        let want = expected(&case);
        let held = hold_port();
        let staged = stage(&case, held.port);
        let out = run(
            &["serve", "--config", &config_arg(staged.path())],
            staged.path(),
            Duration::from_secs(30),
        );
        let code = out.status.code().unwrap_or(-1);
        let got = first_line(&out, staged.path());
        assert!(
            code == want.exit && want.matches(&got),
            "{name}: serve: expected exit {} with {}\ngot exit {code}, stderr:\n{}",
            want.exit,
            want.describe(),
            String::from_utf8_lossy(&out.stderr)
        );
        // And it wrote nothing (no state file).
        assert!(
            !staged.path().join("geosteer-state.json").exists(),
            "{name}: serve wrote a state file"
        );
    }
}

/// The control for the test above: with a valid configuration and the same held port, `serve`
/// does try to bind and fails with exit 1 — so exit 64 there really means "before binding".
#[test]
fn serve_with_a_valid_config_and_the_held_port_fails_to_bind() {
    let held = hold_port();
    let dir = tempfile::Builder::new()
        .prefix("geosteer-gallery-")
        .tempdir()
        .expect("tempdir");
    let port = held.port;
    std::fs::create_dir(dir.path().join("zones")).expect("mkdir");
    std::fs::write(
        dir.path().join("geosteer.toml"),
        format!(
            "[server]\nudp = [\"127.0.0.1:{port}\"]\ntcp = [\"127.0.0.1:{port}\"]\n\
             [zones]\ndirectory = \"zones\"\n[admin]\nlisten = \"\"\n"
        ),
    )
    .expect("write config");
    std::fs::write(
        dir.path().join("zones/example.test.zone"),
        "$ORIGIN example.test.\n$TTL 60\n@ IN SOA ns1 hostmaster 1 7200 900 1209600 300\n\
         @ IN NS ns1\nns1 IN A 192.0.2.1\n",
    )
    .expect("write zone");
    let out = run(
        &["check", "--config", &config_arg(dir.path())],
        dir.path(),
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(
        &["serve", "--config", &config_arg(dir.path())],
        dir.path(),
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&port.to_string()), "{stderr}");
}

//! The first run, through the README's own commands: `geosteer serve` on the embedded default
//! (ports moved with GEOSTEER_DNS_PORT / GEOSTEER_ADMIN_PORT, as the README documents, since
//! 5353 and 8053 may be taken on a test machine), then `geosteer force`, `drill` and `reload`
//! with no `--config` and no `--token`: the CLI finds the per-run admin token by itself, and a
//! caller without it is still refused. Also: the README's test command is the one CI runs.

mod common;

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

/// A port free on 127.0.0.1 and ::1, UDP and TCP (released before geosteer binds it).
fn free_port() -> u16 {
    for _ in 0..50 {
        let Ok(t) = TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let port = t.local_addr().unwrap().port();
        let ok = UdpSocket::bind(("127.0.0.1", port)).is_ok()
            && UdpSocket::bind(("::1", port)).is_ok()
            && TcpListener::bind(("::1", port)).is_ok();
        if ok {
            return port;
        }
    }
    panic!("no free port");
}

struct Run {
    dir: tempfile::TempDir,
    dns: u16,
    admin: u16,
}

impl Run {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        // The embedded default's relative paths (zones, geo, state file) resolve against the
        // current directory, as for `cargo run` in the repository.
        std::os::unix::fs::symlink(repo().join("zones"), dir.path().join("zones")).unwrap();
        std::os::unix::fs::symlink(repo().join("geo"), dir.path().join("geo")).unwrap();
        std::fs::create_dir(dir.path().join("run")).unwrap();
        Self {
            dir,
            dns: free_port(),
            admin: free_port(),
        }
    }

    fn cmd(&self, runtime_dir: &Path) -> Command {
        let mut c = Command::new(bin());
        c.current_dir(self.dir.path())
            .env("GEOSTEER_DNS_PORT", self.dns.to_string())
            .env("GEOSTEER_ADMIN_PORT", self.admin.to_string())
            .env("XDG_RUNTIME_DIR", runtime_dir)
            .env_remove("GEOSTEER_TOKEN")
            .env_remove("RUST_LOG");
        c
    }

    fn geosteer(&self, args: &[&str]) -> (i32, String, String) {
        let out = self
            .cmd(&self.dir.path().join("run"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn london(&self) -> Vec<String> {
        let addr: SocketAddr = ([127, 0, 0, 1], self.dns).into();
        dig_at(addr, &["mqtt.example.test", "A", "+subnet=81.2.69.0/24"]).answer
    }
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn quick_start_force_drill_and_reload_work_from_the_embedded_default() {
    let run = Run::new();
    let mut server = Killed(
        run.cmd(&run.dir.path().join("run"))
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Serving: the London client gets westeurope.
    poll(Duration::from_secs(20), "the server to answer", || {
        run.london()
            .iter()
            .any(|r| r.ends_with("198.51.100.10"))
            .then_some(())
    });
    let token_file = run
        .dir
        .path()
        .join(format!("run/geosteer/{}.token", run.admin));
    poll(Duration::from_secs(10), "the token file", || {
        token_file.exists().then_some(())
    });
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // Mutations stay authenticated: a CLI that cannot read the token file gets 401.
    let out = run
        .cmd(&run.dir.path().join("elsewhere"))
        .args(["force", "mqtt/westeurope", "--action", "down"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The README's commands, as written: no --config, no --token.
    let (code, out, err) = run.geosteer(&[
        "force",
        "mqtt/westeurope",
        "--action",
        "down",
        "--reason",
        "LB maintenance",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    poll(Duration::from_secs(10), "London to move to eastus", || {
        run.london()
            .iter()
            .any(|r| r.ends_with("198.51.100.20"))
            .then_some(())
    });
    // `explain` asks the running server, so it shows the force (the files alone cannot), and
    // says which view it is; `--offline` is the files' view, and says so.
    let (code, out, err) = run.geosteer(&["explain", "mqtt.example.test", "--ecs", "81.2.69.0/24"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with("view      the running server at http://"),
        "{out}"
    );
    assert!(out.contains("ForcedDown"), "{out}");
    assert!(out.contains("198.51.100.20"), "{out}");
    let (code, out, err) = run.geosteer(&[
        "explain",
        "mqtt.example.test",
        "--ecs",
        "81.2.69.0/24",
        "--offline",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with("view      configuration files only (--offline)"),
        "{out}"
    );
    assert!(!out.contains("ForcedDown"), "{out}");
    let (code, out, _) = run.geosteer(&["explain", "mqtt.example.test", "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["view"]["from"], "server", "{out}");
    let (code, out, err) = run.geosteer(&["force", "mqtt/westeurope", "--action", "probe"]);
    assert_eq!(code, 0, "{out}{err}");
    poll(Duration::from_secs(10), "London to come back", || {
        run.london()
            .iter()
            .any(|r| r.ends_with("198.51.100.10"))
            .then_some(())
    });
    let (code, out, err) = run.geosteer(&[
        "drill",
        "start",
        "--profile",
        "mqtt",
        "--endpoint",
        "westeurope",
        "--duration",
        "10m",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("move verified: yes"), "{out}");
    let (code, out, err) = run.geosteer(&["drill", "stop"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = run.geosteer(&["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("reloaded: generation"), "{out}");
    // The token survives the reload (the embedded default still configures none).
    let (code, out, err) = run.geosteer(&["force", "mqtt/eastus", "--action", "probe"]);
    assert_eq!(code, 0, "{out}{err}");

    // SIGTERM: the token file goes with the process.
    let pid = server.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    poll(Duration::from_secs(20), "geosteer to exit", || {
        server.0.try_wait().ok().flatten()
    });
    assert!(!token_file.exists(), "token file left behind");
    // No server any more: the files' view, and why.
    let (code, out, err) = run.geosteer(&["explain", "mqtt.example.test", "--ecs", "81.2.69.0/24"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with(
            "view      configuration files only (no running server answered at http://"
        ),
        "{out}"
    );
    assert!(out.contains("198.51.100.10"), "{out}");
}

/// The README's one test command is the script CI runs, and the scripts parse.
#[test]
fn the_readme_test_command_is_what_ci_runs() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let tests = &readme[readme.find("## Tests").unwrap()..];
    let block = tests.split("```sh\n").nth(1).unwrap();
    let command = block.split("\n```").next().unwrap().trim();
    assert_eq!(command, "bash tests/run.sh");
    let ci = std::fs::read_to_string(repo().join(".ci/run")).unwrap();
    assert!(
        ci.lines().any(|l| l.trim() == command),
        ".ci/run does not run `{command}`"
    );
    let run = std::fs::read_to_string(repo().join("tests/run.sh")).unwrap();
    assert!(run.contains("cargo test --locked --workspace --all-targets"));
    for script in [".ci/run", "tests/run.sh", "tests/deny-advisories.sh"] {
        let ok = Command::new("bash")
            .arg("-n")
            .arg(repo().join(script))
            .status()
            .unwrap()
            .success();
        assert!(ok, "{script} does not parse");
    }
}

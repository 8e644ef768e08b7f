//! The server embedded in-process (`app::run` with bound sockets, an injected clock and a
//! shutdown future), driven under paused tokio time: drills and their expiry, a restart in the
//! middle of a drill, and shutdown — without waiting real seconds. The end-to-end tests through
//! the binary (tests/ops.rs) stay; these pin the control plane's timing exactly.

mod common;

use std::time::{Duration, UNIX_EPOCH};

use common::embedded::*;
use geosteer::app::{self, Inputs};
use geosteer::base::Clock;
use geosteer::ops::control::Control;
use geosteer::ops::drill::{self, DrillRequest, DrillStatus};
use tokio::sync::{mpsc, oneshot};

fn drill(c: &Control, id: &str) -> drill::DrillRecord {
    c.drills().into_iter().find(|d| d.id == id).expect("drill")
}

/// Advances paused time in small steps until `done` holds (at most `limit`).
async fn advance_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let step = Duration::from_millis(100);
    let mut spent = Duration::ZERO;
    while spent < limit {
        if done() {
            return true;
        }
        tokio::time::advance(step).await;
        settle().await;
        spent += step;
    }
    done()
}

#[tokio::test(start_paused = true)]
async fn a_drill_moves_answers_and_reverts_exactly_at_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let s = start(&cfg, Clock::following_tokio(t0)).await;
    let before = answer(&s.control);
    assert!(
        before.contains("198.51.100.10"),
        "London → westeurope: {before}"
    );

    let rec = s
        .control
        .start_drill(DrillRequest {
            profile: "mqtt".into(),
            endpoint: "westeurope".into(),
            duration: "10m".into(),
            scope: vec![london()],
            dry_run: false,
        })
        .await
        .expect("drill starts");
    assert_eq!(rec.status, DrillStatus::Running);
    assert_eq!(rec.until_unix - rec.started_unix, 600);
    assert_eq!(rec.verified_move, Some(true), "{rec}");
    let during = answer(&s.control);
    assert_ne!(during, before, "London moved off westeurope");

    // Ten seconds before expiry: still drilled.
    let left = s.control.drills()[0].until_unix - Clock::following_tokio(t0).unix_secs();
    tokio::time::advance(Duration::from_secs(left - 10)).await;
    settle().await;
    assert_eq!(drill(&s.control, &rec.id).status, DrillStatus::Running);
    assert_eq!(answer(&s.control), during);

    // At expiry it reverts by itself and verifies the answers came back.
    let reverted = advance_until(Duration::from_secs(30), || {
        drill(&s.control, &rec.id).status == DrillStatus::Done
    })
    .await;
    assert!(reverted, "{}", drill(&s.control, &rec.id));
    assert_eq!(answer(&s.control), before);
    assert_eq!(drill(&s.control, &rec.id).verified_back, Some(true));
    shut(s).await;
}

#[tokio::test(start_paused = true)]
async fn a_restart_mid_drill_resumes_it_and_one_after_expiry_marks_it_expired() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let s = start(&cfg, Clock::following_tokio(t0)).await;
    let before = answer(&s.control);
    let rec = s
        .control
        .start_drill(DrillRequest {
            profile: "mqtt".into(),
            endpoint: "westeurope".into(),
            duration: "5m".into(),
            scope: vec![],
            dry_run: false,
        })
        .await
        .expect("drill starts");
    shut(s).await;

    // Restarted two minutes later: the drill is still on (from the state file) and still
    // ends at its original expiry.
    let later = Clock::following_tokio(t0 + Duration::from_secs(120));
    let s = start(&cfg, later).await;
    assert_eq!(drill(&s.control, &rec.id).status, DrillStatus::Running);
    assert_ne!(
        answer(&s.control),
        before,
        "still drilled after the restart"
    );
    tokio::time::advance(Duration::from_secs(rec.until_unix - later.unix_secs() - 5)).await;
    settle().await;
    assert_eq!(drill(&s.control, &rec.id).status, DrillStatus::Running);
    let reverted = advance_until(Duration::from_secs(30), || {
        drill(&s.control, &rec.id).status == DrillStatus::Done
    })
    .await;
    assert!(reverted, "{}", drill(&s.control, &rec.id));
    assert_eq!(answer(&s.control), before);
    shut(s).await;

    // A drill whose expiry passed while geosteer was down is marked Expired at start and its
    // force is not applied.
    let s = start(&cfg, Clock::following_tokio(t0)).await;
    let rec = s
        .control
        .start_drill(DrillRequest {
            profile: "mqtt".into(),
            endpoint: "westeurope".into(),
            duration: "1m".into(),
            scope: vec![],
            dry_run: false,
        })
        .await
        .expect("drill starts");
    shut(s).await;
    let s = start(&cfg, Clock::following_tokio(t0 + Duration::from_secs(3600))).await;
    assert_eq!(drill(&s.control, &rec.id).status, DrillStatus::Expired);
    assert_eq!(answer(&s.control), before);
    shut(s).await;
}

/// Control errors are typed, and the admin API answers each kind with its own status: unknown
/// profile or endpoint 404, a second drill on one endpoint 409, bad input 400, an unknown drill
/// id 404 (not "stopping 0 drill(s)").
#[tokio::test]
async fn control_errors_map_to_status_codes() {
    let dir = tempfile::tempdir().unwrap();
    let token = "embedded-test-token-0123456789";
    let cfg = config_with(
        dir.path(),
        &format!("listen = \"127.0.0.1:0\"\ntoken = \"{token}\""),
    );
    let loaded = app::load(Some(&cfg)).expect("config loads");
    let bound = app::bind(&loaded.config).expect("binds port 0");
    let admin = bound.admin.as_ref().unwrap().local_addr().unwrap();
    let (_reload, reloads) = mpsc::channel(1);
    let (ready_tx, ready) = oneshot::channel();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(app::run(
        loaded,
        bound,
        Inputs {
            clock: Clock::system(),
            reloads,
        },
        Some(ready_tx),
        async move {
            let _ = stopped.await;
        },
    ));
    let _control = ready.await.unwrap();
    let drill = serde_json::json!({"profile": "mqtt", "endpoint": "westeurope", "duration": "10m"});
    let cases = [
        (
            "/api/force",
            serde_json::json!({"profile": "nope", "endpoint_name": "x", "action": "down"}),
            404,
        ),
        (
            "/api/drills",
            serde_json::json!({"profile": "nope", "endpoint": "westeurope"}),
            404,
        ),
        (
            "/api/drills",
            serde_json::json!({"profile": "mqtt", "endpoint": "westeurope", "duration": "soon"}),
            400,
        ),
        ("/api/drills", drill.clone(), 200),
        ("/api/drills", drill, 409),
        (
            "/api/drills/stop",
            serde_json::json!({"id": "d-unknown"}),
            404,
        ),
        ("/api/drills/stop", serde_json::json!({}), 200),
    ];
    for (path, body, want) in cases {
        let (got, text) = post(admin, token, path, &body).await;
        assert_eq!(got, want, "{path} {body}: {text}");
    }
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

/// One HTTP/1.1 POST with a bearer token; returns the status and the body.
async fn post(
    addr: std::net::SocketAddr,
    token: &str,
    path: &str,
    body: &serde_json::Value,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = body.to_string();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, out)
}

/// A drill on a monitored endpoint that has no probe verdict yet is refused as "not ready"
/// (503): the first verdict could land while the drill verifies its move. The monitor here
/// probes a listener that accepts and never answers, with a 30 s timeout, so no verdict can
/// exist yet.
#[tokio::test]
async fn a_drill_before_the_first_verdict_is_not_ready() {
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = hung.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((c, _)) = hung.accept().await {
            held.push(c);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let zones = dir.path().join("zones");
    std::fs::create_dir(&zones).unwrap();
    std::fs::write(
        zones.join("d.test.zone"),
        "$ORIGIN d.test.\n$TTL 60\n@ IN SOA ns.d.test. h.d.test. 1 2 3 4 30\n@ IN NS ns.d.test.\nns IN A 192.0.2.1\n",
    )
    .unwrap();
    std::fs::write(
        zones.join("d.test.toml"),
        format!(
            "[[profile]]\nname = \"mqtt\"\nmethod = \"priority\"\n\
             [profile.monitor]\nprotocol = \"http\"\nport = {port}\nhost = \"127.0.0.1\"\n\
             path = \"/\"\ninterval = \"60s\"\ntimeout = \"30s\"\n\
             [[profile.endpoint]]\nname = \"a\"\ntargets = [\"192.0.2.10\"]\npriority = 1\n\
             [[profile.endpoint]]\nname = \"b\"\ntargets = [\"192.0.2.20\"]\npriority = 2\n"
        ),
    )
    .unwrap();
    let cfg = dir.path().join("geosteer.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nudp = [\"127.0.0.1:0\"]\ntcp = [\"127.0.0.1:0\"]\nworkers = 1\n\
             [zones]\ndirectory = \"{}\"\n[admin]\nlisten = \"\"\nstate_file = \"{}\"\n\
             drill_samples = [\"81.2.69.0/24\"]\n[log]\nlevel = \"warn\"\n",
            zones.display(),
            dir.path().join("state.json").display()
        ),
    )
    .unwrap();
    let s = start(&cfg, Clock::system()).await;
    let err = s
        .control
        .start_drill(DrillRequest {
            profile: "mqtt".into(),
            endpoint: "a".into(),
            duration: "5m".into(),
            scope: vec![],
            dry_run: false,
        })
        .await
        .expect_err("no verdict yet: not ready");
    assert_eq!(err.status(), 503, "{err}");
    assert!(err.to_string().contains("no probe verdict yet"), "{err}");
    shut(s).await;
}

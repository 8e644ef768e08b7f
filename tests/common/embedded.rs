//! The server embedded in-process (`app::run` with bound sockets, an injected clock and a
//! shutdown future), for tests that drive the control plane directly, under paused tokio time
//! where timing matters.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use geosteer::app::{self, Inputs};
use geosteer::base::Clock;
use geosteer::ops::control::Control;
use geosteer::ops::drill;
use ipnet::IpNet;
use tokio::sync::{mpsc, oneshot};

use super::repo;

/// A configuration on free loopback ports (port 0), no admin API (the control plane is
/// driven directly), the bundled zones and GeoIP
/// sample, and a state file in `dir`.
pub fn config(dir: &Path) -> PathBuf {
    config_with(dir, "listen = \"\"")
}

/// [`config`] with these `[admin]` lines instead of `listen = ""`.
pub fn config_with(dir: &Path, admin: &str) -> PathBuf {
    let r = repo();
    let text = format!(
        r#"
[server]
udp = ["127.0.0.1:0"]
tcp = ["127.0.0.1:0"]
workers = 1
[zones]
directory = "{zones}"
[geoip]
city = "{r}/geo/sample-city.mmdb"
asn = "{r}/geo/sample-asn.mmdb"
[admin]
{admin}
state_file = "{state}"
drill_samples = ["81.2.69.0/24", "216.160.83.0/24"]
reload_poll = "1h"
[log]
level = "warn"
"#,
        zones = r.join("zones").display(),
        r = r.display(),
        state = dir.join("state.json").display(),
    );
    let path = dir.join("geosteer.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A running embedded server: its control plane and the handles that stop it.
pub struct Running {
    pub control: Arc<Control>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _reload: mpsc::Sender<()>,
}

pub async fn start(cfg: &Path, clock: Clock) -> Running {
    // While the server starts, keep the runtime busy so paused time cannot auto-advance: start-up
    // writes the state file on the blocking pool, and an idle runtime would meanwhile jump to
    // the next timer — a resumed drill's expiry — and end that drill early.
    let keeper = tokio::spawn(async {
        loop {
            tokio::task::yield_now().await;
        }
    });
    let loaded = app::load(Some(cfg)).expect("config loads");
    let bound = app::bind(&loaded.config).expect("binds port 0");
    let (reload, reloads) = mpsc::channel(1);
    let (ready_tx, ready) = oneshot::channel();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(app::run(
        loaded,
        bound,
        Inputs { clock, reloads },
        Some(ready_tx),
        async move {
            let _ = stopped.await;
        },
    ));
    let control = ready.await.expect("server ready");
    settle().await;
    keeper.abort();
    Running {
        control,
        stop,
        task,
        _reload: reload,
    }
}

pub async fn shut(r: Running) {
    let _ = r.stop.send(());
    r.task.await.unwrap().unwrap();
}

pub fn london() -> IpNet {
    "81.2.69.0/24".parse().unwrap()
}

/// What the steered name answers a London client, through the server's own handler.
pub fn answer(c: &Control) -> String {
    drill::resolve(&c.handler, "mqtt.example.test", &london())
}

/// Lets spawned tasks run without moving paused time.
pub async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

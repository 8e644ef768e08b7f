//! Reload triggers: SIGHUP, and changes to any file the configuration was built from.
//!
//! Files are polled (modification time and size) rather than watched with inotify: polling
//! also sees Kubernetes ConfigMap updates, which swap a symlinked directory, and editors that
//! replace files by rename. One `stat` per file per second is nothing.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use tokio_util::sync::CancellationToken;
use tracing::info;

use super::control::Control;
use crate::config::Config;

type Fingerprint = Vec<(PathBuf, Option<(SystemTime, u64)>)>;

/// Every file a configuration is built from (what reloads watch, and what the fleet's
/// configuration digest covers). Blocking: lists the zones directory.
pub fn watched(config: &Config) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = config.files.clone();
    files.push(config.zones_dir.clone());
    if let Ok(entries) = std::fs::read_dir(&config.zones_dir) {
        let mut zone_files: Vec<PathBuf> =
            entries.filter_map(Result::ok).map(|e| e.path()).collect();
        zone_files.sort();
        files.extend(zone_files);
    }
    files.extend(config.geoip_city.iter().cloned());
    files.extend(config.geoip_asn.iter().cloned());
    files.extend(config.regions_file.iter().cloned());
    files
}

fn fingerprint(config: &Config) -> Fingerprint {
    watched(config)
        .into_iter()
        .map(|p| {
            let meta = std::fs::metadata(&p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())));
            (p, meta)
        })
        .collect()
}

/// Reloads on file changes until shutdown.
pub async fn watch_files(control: Arc<Control>, shutdown: CancellationToken) {
    let config = control.config.load_full();
    if config.reload_poll.is_zero() {
        return;
    }
    let fp = |c: Arc<Config>| tokio::task::spawn_blocking(move || fingerprint(&c));
    let Ok(mut last) = fp(config).await else {
        return;
    };
    loop {
        let every = control.config.load().reload_poll;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let Ok(now) = fp(control.config.load_full()).await else {
            continue;
        };
        if now != last {
            info!("configuration files changed; reloading");
            // A reload is bounded by reload_timeout, but shutdown does not wait for it.
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = control.reload("file change") => {}
            }
            // Fingerprint what the (possibly new) configuration watches.
            last = fp(control.config.load_full()).await.unwrap_or(now);
        }
    }
}

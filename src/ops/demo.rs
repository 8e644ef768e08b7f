//! Demo endpoints (`[demo]`): loopback TCP listeners geosteer runs itself, so the quick start
//! can show *probe-driven* failover with nothing else installed — the bundled
//! `demo/geosteer.toml` probes them, and `geosteer demo down westeurope` closes one (its probes
//! are then refused and the answers move) until `geosteer demo up westeurope`.
//!
//! A listener accepts and closes every connection: the demo profile's monitor is a TCP connect.
//! Never for production: it only exists when a configuration lists `[[demo.endpoints]]`, and
//! only on loopback addresses.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The demo endpoints and the listener of each that is up.
pub struct Demo {
    endpoints: Mutex<BTreeMap<String, (SocketAddr, Option<CancellationToken>)>>,
    runtime: tokio::runtime::Handle,
}

impl Demo {
    /// Starts a listener for every endpoint (`name`, address). Must run on a tokio runtime.
    pub fn start(endpoints: &[(String, SocketAddr)]) -> Self {
        let demo = Self {
            endpoints: Mutex::new(
                endpoints
                    .iter()
                    .map(|(n, a)| (n.clone(), (*a, None)))
                    .collect(),
            ),
            runtime: tokio::runtime::Handle::current(),
        };
        for (name, _) in endpoints {
            if let Err(e) = demo.set(name, true) {
                warn!(demo = %name, error = %e, "demo endpoint not started");
            }
        }
        demo
    }

    /// Opens (`up`) or closes a demo endpoint's listener. Errors: no such endpoint (with the
    /// names there are), or the address cannot be bound.
    pub fn set(&self, name: &str, up: bool) -> Result<SocketAddr, String> {
        let mut all = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        let names: Vec<String> = all.keys().cloned().collect();
        let Some((addr, running)) = all.get_mut(name) else {
            return Err(format!(
                "no demo endpoint {name:?} (demo endpoints: {})",
                names.join(", ")
            ));
        };
        let addr = *addr;
        match (up, running.take()) {
            (false, Some(stop)) => {
                stop.cancel();
                info!(demo = %name, %addr, "demo endpoint down: connections are refused");
            }
            (false, None) => {}
            (true, Some(stop)) => *running = Some(stop),
            (true, None) => {
                let listener = std::net::TcpListener::bind(addr)
                    .and_then(|l| l.set_nonblocking(true).map(|()| l))
                    .map_err(|e| format!("demo endpoint {name} ({addr}): {e}"))?;
                let stop = CancellationToken::new();
                let s = stop.clone();
                let _guard = self.runtime.enter();
                let listener = tokio::net::TcpListener::from_std(listener)
                    .map_err(|e| format!("demo endpoint {name} ({addr}): {e}"))?;
                self.runtime.spawn(async move {
                    loop {
                        tokio::select! {
                            _ = s.cancelled() => return,
                            // Accept and close: a TCP monitor's probe succeeds.
                            r = listener.accept() => drop(r),
                        }
                    }
                });
                *running = Some(stop);
                info!(demo = %name, %addr, "demo endpoint up");
            }
        }
        Ok(addr)
    }
}

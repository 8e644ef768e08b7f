//! Endpoint health as routing sees it: a monitor state and a smoothed probe RTT per endpoint,
//! published as one immutable [`HealthSnapshot`].
//!
//! States follow Azure Traffic Manager's monitor states so operators can map what they know.
//! Snapshots are keyed by the endpoint's stable key (`owner/endpoint`), not by an index, so a
//! configuration reload that keeps an endpoint keeps its health.

pub mod monitor;
pub mod probe;
pub mod prober;
pub mod state;

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;

/// Traffic Manager's endpoint monitor states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub enum MonitorState {
    /// No verdict yet (just configured or just reloaded): served.
    #[default]
    CheckingEndpoint,
    /// Probes succeed: served.
    Online,
    /// Probes fail: not served (unless every endpoint is degraded, see fail-open).
    Degraded,
    /// Disabled by configuration: never served.
    Disabled,
    /// Not probed ("always serve").
    Unmonitored,
}

impl MonitorState {
    /// Whether an endpoint in this state receives traffic.
    pub fn serves(self) -> bool {
        matches!(
            self,
            Self::CheckingEndpoint | Self::Online | Self::Unmonitored
        )
    }
}

/// What routing knows about one endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct EndpointHealth {
    /// Monitor state.
    pub state: MonitorState,
    /// Smoothed probe round-trip time from this server, ms.
    pub rtt_ms: Option<f64>,
    /// Answers pointing here get a short TTL (suspect or just recovered; see `state`).
    pub short_ttl: bool,
}

/// Health of every endpoint, immutable once published.
#[derive(Debug, Clone, Default)]
pub struct HealthSnapshot {
    by_key: HashMap<Arc<str>, EndpointHealth>,
}

impl HealthSnapshot {
    /// Health of an endpoint; unknown endpoints are `CheckingEndpoint` (served).
    pub fn get(&self, key: &str) -> EndpointHealth {
        self.by_key.get(key).copied().unwrap_or_default()
    }

    /// Sets an endpoint's health (used by the prober and by tests).
    pub fn set(&mut self, key: &str, health: EndpointHealth) {
        self.by_key.insert(Arc::from(key), health);
    }
}

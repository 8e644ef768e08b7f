//! The per-endpoint verdict: an anti-flap state machine and a peak-sensitive RTT EWMA.
//!
//! Both are pure: time is an argument, so tests drive them with tokio's paused clock or plain
//! instants (as linkerd's `ewma` crate does).
//!
//! Rules:
//! - CheckingEndpoint → Online on the first success; → Degraded after `tolerated + 1`
//!   consecutive failures (so is Online → Degraded).
//! - Degraded → Online only after `recovery` consecutive successes: an endpoint flapping
//!   up/down on every probe never gets back in, so answers do not flap with it.
//! - The answer TTL is short ([`SHORT_TTL`]) while an answered endpoint is *suspect* (no
//!   verdict yet, or Online with a failure since its last success) or *just recovered* (back
//!   Online for less than [`RECENTLY_RECOVERED`]): resolvers then re-ask soon enough to follow
//!   the next change. Otherwise the profile's TTL applies.

use std::time::Duration;

use tokio::time::Instant;

use super::MonitorState;

/// TTL cap while an answered endpoint is suspect or just recovered.
pub const SHORT_TTL: u32 = 5;
/// How long "just recovered" lasts.
pub const RECENTLY_RECOVERED: Duration = Duration::from_secs(60);
/// Time constant of the RTT EWMA's decay after a peak.
pub const EWMA_DECAY: Duration = Duration::from_secs(10);

/// A round-trip-time EWMA that jumps to a higher sample at once and decays slowly to lower ones
/// (linkerd's "peak EWMA"): a region that turns slow loses clients on the first slow probe, and
/// one fast probe does not win them back.
#[derive(Debug, Clone, Copy, Default)]
pub struct PeakEwma {
    value_ms: Option<f64>,
    last: Option<Instant>,
}

impl PeakEwma {
    /// Adds a sample taken at `now`.
    pub fn observe(&mut self, sample_ms: f64, now: Instant) {
        self.value_ms = Some(match (self.value_ms, self.last) {
            (Some(v), Some(last)) if sample_ms < v => {
                let dt = now.saturating_duration_since(last).as_secs_f64();
                let w = (-dt / EWMA_DECAY.as_secs_f64()).exp();
                v * w + sample_ms * (1.0 - w)
            }
            _ => sample_ms,
        });
        self.last = Some(now);
    }

    /// Current value, ms.
    pub fn value(&self) -> Option<f64> {
        self.value_ms
    }
}

/// A state change, for logs and the status API.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// State before.
    pub from: MonitorState,
    /// State after.
    pub to: MonitorState,
    /// Why (the deciding probe's error, or the success streak).
    pub reason: String,
}

/// Verdict of one probed endpoint.
#[derive(Debug, Clone)]
pub struct Tracker {
    tolerated: u32,
    recovery: u32,
    state: MonitorState,
    fails: u32,
    oks: u32,
    since: Instant,
    recovered_at: Option<Instant>,
    reason: String,
    rtt: PeakEwma,
}

impl Tracker {
    /// A tracker with no verdict yet.
    pub fn new(tolerated: u32, recovery: u32, now: Instant) -> Self {
        Self {
            tolerated,
            recovery: recovery.max(1),
            state: MonitorState::CheckingEndpoint,
            fails: 0,
            oks: 0,
            since: now,
            recovered_at: None,
            reason: "no probe result yet".into(),
            rtt: PeakEwma::default(),
        }
    }

    /// Records a probe result; returns the transition if the state changed.
    pub fn record(
        &mut self,
        ok: bool,
        rtt: Duration,
        error: Option<&str>,
        now: Instant,
    ) -> Option<Transition> {
        let from = self.state;
        if ok {
            self.oks += 1;
            self.fails = 0;
            self.rtt.observe(rtt.as_secs_f64() * 1000.0, now);
            let to_online = match from {
                MonitorState::CheckingEndpoint => true,
                MonitorState::Degraded => self.oks >= self.recovery,
                _ => false,
            };
            if to_online {
                self.state = MonitorState::Online;
                self.reason = format!("{} consecutive successful probe(s)", self.oks);
                if from == MonitorState::Degraded {
                    self.recovered_at = Some(now);
                }
            }
        } else {
            self.fails += 1;
            self.oks = 0;
            if matches!(from, MonitorState::CheckingEndpoint | MonitorState::Online)
                && self.fails > self.tolerated
            {
                self.state = MonitorState::Degraded;
                self.reason = format!(
                    "{} consecutive failed probe(s): {}",
                    self.fails,
                    error.unwrap_or("failed")
                );
            }
        }
        (self.state != from).then(|| {
            self.since = now;
            Transition {
                from,
                to: self.state,
                reason: self.reason.clone(),
            }
        })
    }

    /// When the endpoint last came back from Degraded.
    pub fn recovered_at(&self) -> Option<Instant> {
        self.recovered_at
    }

    /// Current state.
    pub fn state(&self) -> MonitorState {
        self.state
    }

    /// Smoothed RTT, ms.
    pub fn rtt_ms(&self) -> Option<f64> {
        self.rtt.value()
    }

    /// When the state last changed, and why.
    pub fn last_change(&self) -> (Instant, &str) {
        (self.since, &self.reason)
    }

    /// Whether answers pointing here should carry [`SHORT_TTL`] (see the module docs).
    pub fn short_ttl(&self, now: Instant) -> bool {
        match self.state {
            MonitorState::CheckingEndpoint => true,
            MonitorState::Online => {
                self.fails > 0
                    || self
                        .recovered_at
                        .is_some_and(|t| now.saturating_duration_since(t) < RECENTLY_RECOVERED)
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[tokio::test(start_paused = true)]
    async fn first_success_brings_a_new_endpoint_online() {
        let mut t = Tracker::new(1, 3, Instant::now());
        assert_eq!(t.state(), MonitorState::CheckingEndpoint);
        assert!(t.short_ttl(Instant::now()));
        let tr = t.record(true, 5 * MS, None, Instant::now()).unwrap();
        assert_eq!(
            (tr.from, tr.to),
            (MonitorState::CheckingEndpoint, MonitorState::Online)
        );
        assert!(!t.short_ttl(Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn tolerated_failures_then_degraded_then_recovery_threshold() {
        let mut t = Tracker::new(1, 3, Instant::now());
        t.record(true, MS, None, Instant::now());
        // One failure is tolerated (but makes the TTL short).
        assert!(
            t.record(false, MS, Some("refused"), Instant::now())
                .is_none()
        );
        assert_eq!(t.state(), MonitorState::Online);
        assert!(t.short_ttl(Instant::now()));
        let tr = t
            .record(false, MS, Some("refused"), Instant::now())
            .unwrap();
        assert_eq!(tr.to, MonitorState::Degraded);
        assert!(
            tr.reason.contains("2 consecutive failed probe(s): refused"),
            "{}",
            tr.reason
        );
        // Two successes are not enough; the third brings it back.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(t.record(true, MS, None, Instant::now()).is_none());
        assert!(t.record(true, MS, None, Instant::now()).is_none());
        let tr = t.record(true, MS, None, Instant::now()).unwrap();
        assert_eq!(tr.to, MonitorState::Online);
        // Just recovered: short TTL for a while, then the profile's.
        assert!(t.short_ttl(Instant::now()));
        tokio::time::advance(RECENTLY_RECOVERED + MS).await;
        assert!(!t.short_ttl(Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn an_endpoint_flapping_on_every_probe_stays_out() {
        let mut t = Tracker::new(1, 3, Instant::now());
        t.record(false, MS, None, Instant::now());
        t.record(false, MS, None, Instant::now());
        assert_eq!(t.state(), MonitorState::Degraded);
        for i in 0..100 {
            tokio::time::advance(Duration::from_secs(1)).await;
            let changed = t.record(i % 2 == 0, MS, None, Instant::now());
            assert!(changed.is_none(), "flap {i} changed the state");
        }
        assert_eq!(t.state(), MonitorState::Degraded);
    }

    #[tokio::test(start_paused = true)]
    async fn ewma_jumps_to_peaks_and_decays_slowly() {
        let mut e = PeakEwma::default();
        e.observe(10.0, Instant::now());
        assert_eq!(e.value(), Some(10.0));
        tokio::time::advance(Duration::from_secs(1)).await;
        e.observe(100.0, Instant::now());
        assert_eq!(e.value(), Some(100.0), "a rise is taken at once");
        tokio::time::advance(Duration::from_secs(1)).await;
        e.observe(10.0, Instant::now());
        let v = e.value().unwrap();
        // One second at a 10 s time constant: ~9.5 % of the way down.
        assert!((91.0..92.0).contains(&v), "{v}");
        for _ in 0..60 {
            tokio::time::advance(Duration::from_secs(1)).await;
            e.observe(10.0, Instant::now());
        }
        assert!(e.value().unwrap() < 10.5);
    }
}

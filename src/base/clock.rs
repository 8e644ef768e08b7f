//! Wall-clock time as an input.
//!
//! Only the top of the crate (the control plane's wiring in [`crate::app`] and `main`) decides
//! which clock runs; everything below takes a [`Clock`] and asks it. Forced states and drills
//! carry Unix expiry times (they are persisted and shared), so they need wall time; tests need
//! that time to move when tokio's paused clock is advanced, without waiting seconds
//! (linkerd's EWMA takes the time as an argument for the same reason).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where "now" comes from. Cheap to clone.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// `None`: the system's wall clock. `Some((wall, at))`: `wall` plus the tokio time elapsed
    /// since `at`, so paused tokio time (`start_paused`, `advance`) moves it too.
    anchor: Option<(SystemTime, tokio::time::Instant)>,
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

impl Clock {
    /// The system's wall clock (production).
    pub fn system() -> Self {
        Self { anchor: None }
    }

    /// A clock that reads `start` now and then moves with tokio's clock: with paused time in
    /// tests it advances exactly as far as `tokio::time::advance` says. Call inside a runtime.
    pub fn following_tokio(start: SystemTime) -> Self {
        Self {
            anchor: Some((start, tokio::time::Instant::now())),
        }
    }

    /// The current wall time.
    pub fn now(&self) -> SystemTime {
        match self.anchor {
            None => SystemTime::now(),
            Some((wall, at)) => wall + tokio::time::Instant::now().saturating_duration_since(at),
        }
    }

    /// The current time in whole Unix seconds (0 if the clock is before 1970).
    pub fn unix_secs(&self) -> u64 {
        self.now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    /// The current time in fractional Unix seconds (status pages).
    pub fn unix_f64(&self) -> f64 {
        self.now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    }

    /// How long until the Unix second `until` (zero if it has passed).
    pub fn until_unix(&self, until: u64) -> Duration {
        (UNIX_EPOCH + Duration::from_secs(until))
            .duration_since(self.now())
            .unwrap_or(Duration::ZERO)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn follows_paused_tokio_time() {
        let start = UNIX_EPOCH + Duration::from_secs(1_000);
        let c = Clock::following_tokio(start);
        assert_eq!(c.unix_secs(), 1_000);
        tokio::time::advance(Duration::from_secs(90)).await;
        assert_eq!(c.unix_secs(), 1_090);
        assert_eq!(c.until_unix(1_100), Duration::from_secs(10));
        assert_eq!(c.until_unix(1_000), Duration::ZERO);
    }
}

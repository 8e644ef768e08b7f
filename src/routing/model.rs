//! The latency estimate behind the `performance` method: one pure function, every term
//! visible.
//!
//! ```text
//! estimate(client, endpoint) = path + excess
//!   path   = measured RTT (client network/country → region), if the operator loaded one
//!          | base + k × great-circle km(client, endpoint)
//!   excess = max(0, probe RTT EWMA − (base + k × km(server, endpoint)))
//! ```
//! Light in fibre covers ~200 km per ms one way and real paths run 1.5–2× longer than the
//! great circle, hence k ≈ 0.02 ms/km of RTT; `base` covers access networks and load
//! balancers. The excess is what probes measure beyond what distance explains — a congested
//! load balancer, a struggling region — and it is added for every client, so a region that
//! gets slow loses clients before it fails.

use serde::Serialize;

use crate::geo::GeoPoint;

/// Model parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Model {
    /// Fixed RTT share: access network, load balancer, broker, ms.
    pub base_ms: f64,
    /// RTT per great-circle km, ms.
    pub ms_per_km: f64,
    /// Where this geosteer instance runs; needed to separate probe RTT into distance and
    /// excess. Without it the excess term is 0.
    pub server: Option<GeoPoint>,
}

impl Default for Model {
    fn default() -> Self {
        Self {
            base_ms: 5.0,
            ms_per_km: 0.02,
            server: None,
        }
    }
}

/// Every term of one estimate, for `explain`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Estimate {
    /// Great-circle km from client to endpoint.
    pub distance_km: Option<f64>,
    /// base + k × distance.
    pub distance_ms: Option<f64>,
    /// Operator-measured RTT that replaces the distance term.
    pub measured_ms: Option<f64>,
    /// Probe RTT beyond what the server→endpoint distance predicts.
    pub excess_ms: f64,
    /// The estimate used for ranking; `None` when the client's location is unknown.
    pub total_ms: Option<f64>,
    /// Fleet mode: the estimate through the fleet's vantage points — (vantage index in
    /// `HealthSnapshot::vantages`, client → vantage by the model + the vantage's probe RTT) —
    /// when it replaced distance + excess in `total_ms`.
    pub via: Option<(u16, f64)>,
}

impl Model {
    /// Predicted RTT over a distance.
    pub fn rtt_for_km(&self, km: f64) -> f64 {
        self.base_ms + self.ms_per_km * km
    }

    /// The estimate for one (client, endpoint) pair.
    pub fn estimate(
        &self,
        client: Option<GeoPoint>,
        endpoint: Option<GeoPoint>,
        probe_rtt_ms: Option<f64>,
        measured_ms: Option<f64>,
    ) -> Estimate {
        let distance_km = client.zip(endpoint).map(|(c, e)| c.distance_km(&e));
        let distance_ms = distance_km.map(|km| self.rtt_for_km(km));
        let excess_ms = match (probe_rtt_ms, self.server, endpoint) {
            (Some(rtt), Some(server), Some(ep)) => {
                (rtt - self.rtt_for_km(server.distance_km(&ep))).max(0.0)
            }
            _ => 0.0,
        };
        let path = measured_ms.or(distance_ms);
        Estimate {
            distance_km,
            distance_ms,
            measured_ms,
            excess_ms,
            total_ms: path.map(|p| p + excess_ms),
            via: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRA: GeoPoint = GeoPoint {
        lat: 50.11,
        lon: 8.68,
    };
    const AMS: GeoPoint = GeoPoint {
        lat: 52.37,
        lon: 4.90,
    };
    const IAD: GeoPoint = GeoPoint {
        lat: 38.95,
        lon: -77.45,
    };

    #[test]
    fn distance_term_is_base_plus_k_km() {
        let m = Model::default();
        let e = m.estimate(Some(AMS), Some(IAD), None, None);
        let km = e.distance_km.unwrap();
        assert!((e.distance_ms.unwrap() - (5.0 + 0.02 * km)).abs() < 1e-9);
        assert_eq!(e.excess_ms, 0.0);
        assert_eq!(e.total_ms, e.distance_ms);
    }

    #[test]
    fn probe_excess_is_added_only_beyond_the_distance_prediction() {
        let m = Model {
            server: Some(FRA),
            ..Model::default()
        };
        let predicted = m.rtt_for_km(FRA.distance_km(&AMS));
        // A probe RTT at the prediction adds nothing; 40 ms above it adds 40 ms.
        let calm = m.estimate(Some(AMS), Some(AMS), Some(predicted), None);
        assert!(calm.excess_ms.abs() < 1e-9);
        let slow = m.estimate(Some(AMS), Some(AMS), Some(predicted + 40.0), None);
        assert!((slow.excess_ms - 40.0).abs() < 1e-9);
        assert!((slow.total_ms.unwrap() - (5.0 + 40.0)).abs() < 1e-9);
        // Faster than light-in-fibre predicts never gives a bonus.
        let fast = m.estimate(Some(AMS), Some(AMS), Some(0.1), None);
        assert_eq!(fast.excess_ms, 0.0);
    }

    #[test]
    fn measured_rtt_replaces_the_distance_term() {
        let m = Model::default();
        let e = m.estimate(Some(AMS), Some(IAD), None, Some(12.0));
        assert_eq!(e.total_ms, Some(12.0));
        assert!(e.distance_ms.unwrap() > 100.0);
    }

    #[test]
    fn unknown_client_has_no_estimate() {
        let e = Model::default().estimate(None, Some(IAD), Some(80.0), None);
        assert_eq!(e.total_ms, None);
        assert_eq!(e.distance_km, None);
    }

    #[test]
    fn ranking_puts_the_nearest_region_first() {
        let m = Model::default();
        let client = GeoPoint {
            lat: 51.51,
            lon: -0.13,
        }; // London
        let sin = GeoPoint {
            lat: 1.29,
            lon: 103.85,
        };
        let mut r: Vec<(&str, f64)> = [("ams", AMS), ("iad", IAD), ("sin", sin)]
            .iter()
            .map(|(n, p)| {
                (
                    *n,
                    m.estimate(Some(client), Some(*p), None, None)
                        .total_ms
                        .unwrap(),
                )
            })
            .collect();
        r.sort_by(|a, b| a.1.total_cmp(&b.1));
        assert_eq!(
            r.iter().map(|x| x.0).collect::<Vec<_>>(),
            ["ams", "iad", "sin"]
        );
    }
}

//! Broker load: how many connections an endpoint carries against its capacity, polled from
//! EMQX's HTTP API (or any JSON / Prometheus endpoint).
//!
//! EMQX 5: `GET /api/v5/stats?aggregate=true` with an API key (HTTP Basic auth with key and
//! secret) returns one JSON object whose `"connections.count"` is the cluster's current
//! connection count (keys contain dots literally).

use std::time::Duration;

use serde::Deserialize;

/// Where the load comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LoadSource {
    /// EMQX HTTP API stats (field default `connections.count`).
    Emqx,
    /// Any JSON document; `field` is a key (dots allowed) or a dotted path.
    Json,
    /// Prometheus text format; `field` is a metric name, optionally with labels as written.
    Prometheus,
}

/// Capacity settings as written (`[profile.endpoint.capacity]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCapacity {
    source: LoadSource,
    url: String,
    field: Option<String>,
    api_key: Option<String>,
    api_secret: Option<String>,
    capacity: f64,
    high_water: Option<f64>,
    hard_limit: Option<f64>,
    #[serde(default, with = "crate::base::de::opt_duration")]
    interval: Option<Duration>,
    #[serde(default, with = "crate::base::de::opt_duration")]
    timeout: Option<Duration>,
}

/// Validated capacity settings of one endpoint.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CapacitySpec {
    /// Source kind.
    pub source: LoadSource,
    /// URL polled.
    pub url: String,
    /// Field holding the current connection count.
    pub field: String,
    /// Basic-auth user (EMQX API key).
    pub api_key: Option<String>,
    /// Basic-auth password (EMQX API secret).
    #[serde(skip)]
    pub api_secret: Option<String>,
    /// Connections the endpoint can carry.
    pub capacity: f64,
    /// Load ratio from which new clients progressively spill elsewhere.
    pub high_water: f64,
    /// Load ratio from which the endpoint is chosen only as a last resort.
    pub hard_limit: f64,
    /// Poll interval.
    pub interval: Duration,
    /// Poll timeout.
    pub timeout: Duration,
}

impl CapacitySpec {
    /// Validates; errors are `(field, message)`.
    pub fn from_raw(r: &RawCapacity) -> Result<Self, (&'static str, String)> {
        if !(r.url.starts_with("http://") || r.url.starts_with("https://")) {
            return Err(("url", format!("{:?} is not an http(s) URL", r.url)));
        }
        if !(r.capacity.is_finite() && r.capacity > 0.0) {
            return Err(("capacity", "must be a number > 0 (connections)".into()));
        }
        let high = r.high_water.unwrap_or(0.8);
        let hard = r.hard_limit.unwrap_or(0.95);
        if !(0.0 < high && high < hard && hard <= 1.5) {
            return Err((
                "high_water",
                format!("need 0 < high_water ({high}) < hard_limit ({hard}) <= 1.5"),
            ));
        }
        let interval = r.interval.unwrap_or(Duration::from_secs(5));
        if interval < Duration::from_secs(1) {
            return Err(("interval", "at least 1s".into()));
        }
        let field = match (r.source, &r.field) {
            (_, Some(f)) => f.clone(),
            (LoadSource::Emqx, None) => "connections.count".into(),
            (_, None) => return Err(("field", "json and prometheus sources need a field".into())),
        };
        Ok(Self {
            source: r.source,
            url: r.url.clone(),
            field,
            api_key: r.api_key.clone(),
            api_secret: r.api_secret.clone(),
            capacity: r.capacity,
            high_water: high,
            hard_limit: hard,
            interval,
            timeout: r.timeout.unwrap_or(Duration::from_secs(2)),
        })
    }
}

/// Extracts the connection count from a response body.
pub fn extract(source: LoadSource, field: &str, body: &str) -> Result<f64, String> {
    match source {
        LoadSource::Emqx | LoadSource::Json => {
            let v: serde_json::Value =
                serde_json::from_str(body).map_err(|e| format!("not JSON: {e}"))?;
            // EMQX without aggregate=true answers one object per node: sum them.
            let items: Vec<&serde_json::Value> = match &v {
                serde_json::Value::Array(a) => a.iter().collect(),
                other => vec![other],
            };
            let mut total = 0.0;
            for item in items {
                let found = item
                    .get(field)
                    .or_else(|| field.split('.').try_fold(item, |acc, part| acc.get(part)));
                total += found
                    .and_then(serde_json::Value::as_f64)
                    .ok_or_else(|| format!("no numeric field {field:?}"))?;
            }
            Ok(total)
        }
        LoadSource::Prometheus => {
            let mut total = None;
            for line in body.lines().filter(|l| !l.starts_with('#')) {
                let Some((name, value)) = line.rsplit_once(' ') else {
                    continue;
                };
                let bare = name.split('{').next().unwrap_or(name);
                if name == field || bare == field {
                    let v: f64 = value
                        .trim()
                        .parse()
                        .map_err(|_| format!("bad value in {line:?}"))?;
                    *total.get_or_insert(0.0) += v;
                }
            }
            total.ok_or_else(|| format!("no metric {field:?}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emqx_stats_shapes() {
        let agg =
            r#"{"connections.count":812345,"live_connections.count":800000,"topics.count":12}"#;
        assert_eq!(
            extract(LoadSource::Emqx, "connections.count", agg),
            Ok(812345.0)
        );
        let per_node =
            r#"[{"node":"a","connections.count":10},{"node":"b","connections.count":32}]"#;
        assert_eq!(
            extract(LoadSource::Emqx, "connections.count", per_node),
            Ok(42.0)
        );
        assert!(extract(LoadSource::Emqx, "connections.count", "{}").is_err());
    }

    #[test]
    fn json_paths_and_prometheus() {
        assert_eq!(
            extract(LoadSource::Json, "stats.conns", r#"{"stats":{"conns":7}}"#),
            Ok(7.0)
        );
        let prom = "# HELP x\nemqx_connections_count{node=\"a\"} 5\nemqx_connections_count{node=\"b\"} 6\nother 1\n";
        assert_eq!(
            extract(LoadSource::Prometheus, "emqx_connections_count", prom),
            Ok(11.0)
        );
        assert!(extract(LoadSource::Prometheus, "missing", prom).is_err());
    }
}

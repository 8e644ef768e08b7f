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

/// Polls one endpoint's load source.
pub struct LoadPoller {
    client: reqwest::Client,
    spec: CapacitySpec,
}

/// Largest load-source response read (an EMQX node's Prometheus page is a few hundred KiB).
const MAX_LOAD_BODY: usize = 8 << 20;

impl LoadPoller {
    /// Builds the HTTP client once (TLS verified with the public roots).
    pub fn new(spec: &CapacitySpec) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .no_proxy()
            // A load API that redirects is misconfigured; following it would also send the
            // API key's requests somewhere the operator did not name.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(spec.timeout)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            client,
            spec: spec.clone(),
        })
    }

    /// One poll: the current connection count.
    pub async fn poll(&self) -> Result<f64, String> {
        let mut req = self.client.get(&self.spec.url);
        if let Some(k) = &self.spec.api_key {
            req = req.basic_auth(k, self.spec.api_secret.as_deref());
        }
        let resp = req
            .send()
            .await
            .map_err(|e| format!("{}: {e}", self.spec.url))?;
        if !resp.status().is_success() {
            return Err(format!("{}: status {}", self.spec.url, resp.status()));
        }
        // Bounded: a misbehaving endpoint cannot make the poller buffer an endless body.
        let mut resp = resp;
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("{}: {e}", self.spec.url))?
        {
            if body.len() + chunk.len() > MAX_LOAD_BODY {
                return Err(format!(
                    "{}: response larger than {} MiB",
                    self.spec.url,
                    MAX_LOAD_BODY >> 20
                ));
            }
            body.extend_from_slice(&chunk);
        }
        let body = String::from_utf8_lossy(&body);
        extract(self.spec.source, &self.spec.field, &body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-shot HTTP server on loopback answering every connection with `head` and then
    /// `body_len` bytes of `0`s (streamed in 64 KiB writes); returns its URL.
    async fn serve(head: &'static str, body_len: usize) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/api/v5/stats", l.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut req = [0u8; 4096];
                    let _ = c.read(&mut req).await;
                    let head = head.replace("{len}", &body_len.to_string());
                    if c.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    let chunk = vec![b'0'; 64 << 10];
                    let mut left = body_len;
                    while left > 0 {
                        let n = left.min(chunk.len());
                        if c.write_all(&chunk[..n]).await.is_err() {
                            return;
                        }
                        left -= n;
                    }
                });
            }
        });
        url
    }

    fn spec(url: String) -> CapacitySpec {
        CapacitySpec {
            source: LoadSource::Json,
            url,
            field: "n".into(),
            api_key: Some("key".into()),
            api_secret: Some("secret".into()),
            capacity: 100.0,
            high_water: 0.8,
            hard_limit: 0.95,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
        }
    }

    /// The error a poll of a server answering `head` and `body_len` bytes ends with.
    async fn poll_error(head: &'static str, body_len: usize) -> String {
        let url = serve(head, body_len).await;
        LoadPoller::new(&spec(url))
            .unwrap()
            .poll()
            .await
            .unwrap_err()
    }

    #[tokio::test]
    async fn redirects_are_not_followed_and_bodies_are_bounded() {
        let redirect =
            "HTTP/1.1 302 Found\r\nLocation: http://169.254.169.254/\r\nContent-Length: 0\r\n\r\n";
        let err = poll_error(redirect, 0).await;
        assert!(err.ends_with("status 302 Found"), "{err}");
        let json =
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n";
        let err = poll_error(json, MAX_LOAD_BODY + 1).await;
        assert!(err.ends_with("response larger than 8 MiB"), "{err}");
        // Just under the bound is read (and then fails as JSON, which proves it was read).
        let err = poll_error(json, MAX_LOAD_BODY).await;
        assert!(!err.contains("larger than"), "{err}");
    }

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

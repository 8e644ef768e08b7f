//! Monitor settings: how an endpoint is probed, parsed from `[profile.monitor]` and overridden
//! per endpoint by `[profile.endpoint.monitor]`.
//!
//! Defaults are chosen for failover in about a second: probe every second, give up on a probe
//! after one second, degrade after two consecutive failures (the second is a confirmation probe
//! sent at once, see `prober`), and come back only after three consecutive successes.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// How endpoints are probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP connect.
    Tcp,
    /// HTTP request, healthy on an expected status.
    Http,
    /// HTTPS request (TLS verified with SNI by default).
    Https,
    /// MQTT over TCP: CONNECT, healthy on a successful CONNACK, then DISCONNECT.
    Mqtt,
    /// MQTT over TLS.
    Mqtts,
    /// Not probed: the endpoint is Unmonitored ("always serve").
    None,
}

/// MQTT protocol version of the CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
pub enum MqttVersion {
    /// MQTT 3.1.1 (protocol level 4).
    #[serde(rename = "3.1.1")]
    V311,
    /// MQTT 5 (protocol level 5).
    #[serde(rename = "5")]
    V5,
}

/// Monitor settings as written (every field optional, so endpoint tables can override single
/// fields of the profile's).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMonitor {
    protocol: Option<Protocol>,
    port: Option<u16>,
    host: Option<String>,
    path: Option<String>,
    method: Option<String>,
    headers: Option<std::collections::BTreeMap<String, String>>,
    expected_status: Option<Vec<String>>,
    tls_verify: Option<bool>,
    ca_file: Option<PathBuf>,
    sni: Option<String>,
    mqtt_version: Option<MqttVersion>,
    client_id_prefix: Option<String>,
    username: Option<String>,
    password: Option<String>,
    #[serde(default, with = "crate::base::de::opt_duration")]
    interval: Option<Duration>,
    #[serde(default, with = "crate::base::de::opt_duration")]
    timeout: Option<Duration>,
    tolerated_failures: Option<u32>,
    recovery: Option<u32>,
    #[serde(default, with = "crate::base::de::opt_duration")]
    jitter: Option<Duration>,
}

impl RawMonitor {
    /// `self` with every field `over` sets replacing ours.
    pub fn merged(&self, over: &RawMonitor) -> RawMonitor {
        macro_rules! pick {
            ($($f:ident),*) => { RawMonitor { $($f: over.$f.clone().or_else(|| self.$f.clone())),* } };
        }
        pick!(
            protocol,
            port,
            host,
            path,
            method,
            headers,
            expected_status,
            tls_verify,
            ca_file,
            sni,
            mqtt_version,
            client_id_prefix,
            username,
            password,
            interval,
            timeout,
            tolerated_failures,
            recovery,
            jitter
        )
    }
}

/// Validated monitor settings of one endpoint.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MonitorSpec {
    /// Probe protocol.
    pub protocol: Protocol,
    /// Port probed.
    pub port: u16,
    /// Address or hostname probed instead of the endpoint's first target.
    pub host: Option<String>,
    /// HTTP(S) path.
    pub path: String,
    /// HTTP(S) method (GET or HEAD).
    pub method: String,
    /// HTTP(S) headers (at most 8, Host included).
    pub headers: Vec<(String, String)>,
    /// Healthy HTTP status ranges (inclusive).
    pub expected_status: Vec<(u16, u16)>,
    /// Verify the TLS certificate chain and name (https, mqtts).
    pub tls_verify: bool,
    /// Extra CA certificates (PEM) trusted besides the public roots.
    pub ca_file: Option<PathBuf>,
    /// TLS server name; default: the Host header, else the probed host.
    pub sni: Option<String>,
    /// MQTT protocol version.
    pub mqtt_version: MqttVersion,
    /// MQTT client id prefix (a random suffix is added per probe).
    pub client_id_prefix: String,
    /// MQTT username.
    pub username: Option<String>,
    /// MQTT password.
    #[serde(skip)]
    pub password: Option<String>,
    /// Time between scheduled probes.
    pub interval: Duration,
    /// A probe that has not succeeded after this long failed.
    pub timeout: Duration,
    /// Consecutive failures tolerated before Degraded (Degraded on failure N+1).
    pub tolerated_failures: u32,
    /// Consecutive successes needed to come back from Degraded (anti-flap).
    pub recovery: u32,
    /// TLS settings (http, https, mqtts) as loaded from `tls_verify` and `ca_file` (the CA
    /// file read and checked); `None` from [`Self::from_raw`] until the loader fills it in.
    #[serde(skip)]
    pub tls: Option<super::tls::TlsSettings>,
    /// Random extra delay before each scheduled probe (spreads probes of many endpoints).
    pub jitter: Duration,
}

/// Most HTTP headers per monitor (Traffic Manager's limit).
pub const MAX_HEADERS: usize = 8;
/// Shortest interval allowed.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

impl MonitorSpec {
    /// Whether probes need TLS settings: https and mqtts, and plain http (its HTTP client is
    /// built from the default settings).
    pub fn uses_tls(&self) -> bool {
        matches!(
            self.protocol,
            Protocol::Http | Protocol::Https | Protocol::Mqtts
        )
    }

    /// Fills in [`Self::tls`] from `cache` (reads `ca_file` once per load).
    pub fn load_tls(
        &mut self,
        cache: &mut super::tls::TlsCache,
    ) -> Result<(), (&'static str, String)> {
        if self.uses_tls() {
            self.tls = Some(cache.get(self.tls_verify, self.ca_file.as_deref())?);
        }
        Ok(())
    }

    /// Validates merged settings. Errors are `(field, message)` for the caller to locate.
    pub fn from_raw(r: &RawMonitor) -> Result<Self, (&'static str, String)> {
        let protocol = r.protocol.ok_or((
            "protocol",
            "monitor needs a protocol: tcp, http, https, mqtt, mqtts or none".to_string(),
        ))?;
        let default_port = match protocol {
            Protocol::Http => Some(80),
            Protocol::Https => Some(443),
            Protocol::Mqtt => Some(1883),
            Protocol::Mqtts => Some(8883),
            Protocol::Tcp | Protocol::None => None,
        };
        let port = match (r.port, default_port, protocol) {
            (Some(0), _, _) => return Err(("port", "port 0 cannot be probed".into())),
            (Some(p), _, _) => p,
            (None, Some(p), _) => p,
            (None, None, Protocol::None) => 0,
            (None, None, _) => return Err(("port", "tcp monitors need a port".into())),
        };
        let interval = r.interval.unwrap_or(Duration::from_secs(1));
        if interval < MIN_INTERVAL {
            return Err(("interval", format!("{interval:?} is below the 1s minimum")));
        }
        let timeout = r.timeout.unwrap_or(Duration::from_secs(1));
        if timeout.is_zero() || timeout > Duration::from_secs(60) {
            return Err(("timeout", "must be between 1ms and 60s".into()));
        }
        let headers: Vec<(String, String)> =
            r.headers.clone().unwrap_or_default().into_iter().collect();
        if headers.len() > MAX_HEADERS {
            return Err((
                "headers",
                format!("{} headers; at most {MAX_HEADERS}", headers.len()),
            ));
        }
        let is_http = matches!(protocol, Protocol::Http | Protocol::Https);
        // Name the very field that does not belong, so the error points at its line.
        let misplaced = |fields: &[(&'static str, bool)], what: &str| {
            fields
                .iter()
                .find(|(_, set)| *set)
                .map(|(f, _)| (*f, format!("{f} is only for {what} monitors")))
        };
        if !is_http
            && let Some(e) = misplaced(
                &[
                    ("path", r.path.is_some()),
                    ("method", r.method.is_some()),
                    ("headers", r.headers.is_some()),
                    ("expected_status", r.expected_status.is_some()),
                ],
                "http/https",
            )
        {
            return Err(e);
        }
        let path = r.path.clone().unwrap_or_else(|| "/".into());
        if !path.starts_with('/') {
            return Err(("path", format!("{path:?} must start with /")));
        }
        let method = r
            .method
            .clone()
            .unwrap_or_else(|| "GET".into())
            .to_ascii_uppercase();
        if !matches!(method.as_str(), "GET" | "HEAD") {
            return Err(("method", format!("{method} is not GET or HEAD")));
        }
        let mut expected_status = Vec::new();
        for s in r
            .expected_status
            .clone()
            .unwrap_or_else(|| vec!["200-299".into()])
        {
            let (lo, hi) = s.split_once('-').unwrap_or((&s, &s));
            match (lo.trim().parse::<u16>(), hi.trim().parse::<u16>()) {
                (Ok(lo), Ok(hi)) if (100..=599).contains(&lo) && (lo..=599).contains(&hi) => {
                    expected_status.push((lo, hi))
                }
                _ => {
                    return Err((
                        "expected_status",
                        format!("{s:?} is not a status or range like 200-299"),
                    ));
                }
            }
        }
        let is_mqtt = matches!(protocol, Protocol::Mqtt | Protocol::Mqtts);
        if !is_mqtt
            && let Some(e) = misplaced(
                &[
                    ("mqtt_version", r.mqtt_version.is_some()),
                    ("client_id_prefix", r.client_id_prefix.is_some()),
                    ("username", r.username.is_some()),
                    ("password", r.password.is_some()),
                ],
                "mqtt/mqtts",
            )
        {
            return Err(e);
        }
        let is_tls = matches!(protocol, Protocol::Https | Protocol::Mqtts);
        if !is_tls
            && let Some(e) = misplaced(
                &[
                    ("tls_verify", r.tls_verify.is_some()),
                    ("ca_file", r.ca_file.is_some()),
                    ("sni", r.sni.is_some()),
                ],
                "https/mqtts",
            )
        {
            return Err(e);
        }
        let tolerated_failures = r.tolerated_failures.unwrap_or(1);
        let recovery = r.recovery.unwrap_or(3);
        if !(1..=100).contains(&recovery) {
            return Err(("recovery", "must be between 1 and 100".into()));
        }
        if tolerated_failures > 100 {
            return Err(("tolerated_failures", "must be at most 100".into()));
        }
        let jitter = r.jitter.unwrap_or(Duration::from_millis(100));
        if jitter >= interval {
            return Err(("jitter", "must be shorter than the interval".into()));
        }
        Ok(Self {
            protocol,
            port,
            host: r.host.clone(),
            path,
            method,
            headers,
            expected_status,
            tls_verify: r.tls_verify.unwrap_or(true),
            ca_file: r.ca_file.clone(),
            sni: r.sni.clone(),
            mqtt_version: r.mqtt_version.unwrap_or(MqttVersion::V311),
            client_id_prefix: r
                .client_id_prefix
                .clone()
                .unwrap_or_else(|| "geosteer-probe-".into()),
            username: r.username.clone(),
            password: r.password.clone(),
            interval,
            timeout,
            tolerated_failures,
            recovery,
            jitter,
            tls: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> RawMonitor {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn defaults_aim_at_one_second_failover() {
        let s = MonitorSpec::from_raw(&raw("protocol = \"mqtt\"")).unwrap();
        assert_eq!(s.port, 1883);
        assert_eq!(s.interval, Duration::from_secs(1));
        assert_eq!(s.timeout, Duration::from_secs(1));
        assert_eq!((s.tolerated_failures, s.recovery), (1, 3));
        assert!(s.tls_verify);
    }

    #[test]
    fn endpoint_settings_override_the_profile() {
        let base = raw("protocol = \"https\"\npath = \"/health\"\ninterval = \"5s\"");
        let over = raw("port = 8443\ninterval = \"2s\"");
        let s = MonitorSpec::from_raw(&base.merged(&over)).unwrap();
        assert_eq!(
            (s.port, s.path.as_str(), s.interval),
            (8443, "/health", Duration::from_secs(2))
        );
    }

    #[test]
    fn invalid_settings_name_the_field() {
        let cases = [
            ("protocol = \"tcp\"", "port"),
            (
                "protocol = \"tcp\"\nport = 1\ninterval = \"500ms\"",
                "interval",
            ),
            ("protocol = \"tcp\"\nport = 1\npath = \"/\"", "path"),
            (
                "protocol = \"http\"\nexpected_status = [\"2xx\"]",
                "expected_status",
            ),
            ("protocol = \"http\"\nmqtt_version = \"5\"", "mqtt_version"),
            ("protocol = \"mqtt\"\ntls_verify = false", "tls_verify"),
            ("protocol = \"http\"\nmethod = \"POST\"", "method"),
        ];
        for (text, field) in cases {
            assert_eq!(
                MonitorSpec::from_raw(&raw(text)).unwrap_err().0,
                field,
                "{text}"
            );
        }
    }
}

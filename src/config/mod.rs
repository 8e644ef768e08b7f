//! Configuration: the TOML file an operator writes, parsed strictly and validated.
//!
//! Two stages, as in ripgrep's `lowargs` → `hiargs`: serde types close to the syntax
//! (`deny_unknown_fields`, so a typo is an error instead of a silently ignored setting), then
//! [`Config`], where relative paths are resolved against the config file's directory and
//! cross-field rules are checked. Every error names file, line and field ([`ConfigError`]).
//!
//! The file at the repository root, `geosteer.toml`, is compiled into the binary and used when
//! no `--config` is given, so a fresh clone runs with `cargo run --release -- serve`.

mod cluster;

use std::net::SocketAddr;

pub use crate::base::line_of_offset;
use crate::base::{ConfigError, ConfigErrors, de, file};
use crate::geo::Catalogue;
use crate::locate::Code;
use crate::routing::Measured;
use crate::routing::model::Model;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Lines of the configuration's region references (0 = not in the file).
#[derive(Debug, Clone, Default)]
pub struct RegionLines {
    /// `server_region = …`.
    pub server_region: usize,
    /// `region = …` of each `[[routing.measured]]` entry, in order.
    pub measured: Vec<usize>,
}

/// The configuration's catalogue references, resolved ([`Config::resolve`]).
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The latency model, with the server's own location.
    pub model: Model,
    /// Operator-measured RTTs.
    pub measured: Measured,
}

/// The embedded default configuration (the repository's `geosteer.toml`).
pub const EMBEDDED_DEFAULT: &str = include_str!("../../geosteer.toml");

/// Name shown in messages for the embedded default.
pub const EMBEDDED_NAME: &str = "<embedded geosteer.toml>";

/// Largest EDNS UDP payload we accept as a setting. 1232 is the DNS Flag Day 2020 value that
/// avoids IP fragmentation on practically every path; larger values invite fragmentation
/// attacks and lost answers, so the ceiling is the classic 4096.
const MAX_EDNS_PAYLOAD: u16 = 4096;

/// The whole file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    zones: RawZones,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    geoip: RawGeoip,
    #[serde(default)]
    routing: RawRouting,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    rrl: RawRrl,
    /// Absent = standalone (the state file is the control state).
    #[serde(default)]
    cluster: Option<cluster::RawCluster>,
    /// Demo endpoints (the bundled `demo/geosteer.toml`); absent = none.
    #[serde(default)]
    demo: RawDemo,
}

/// `[demo]`: loopback listeners geosteer runs itself, for monitors to probe in the quick
/// start's probe-driven failover (`geosteer demo down|up NAME`). Never for production.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawDemo {
    endpoints: Vec<RawDemoEndpoint>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDemoEndpoint {
    name: String,
    listen: String,
}

/// `[rrl]`: response rate limiting.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRrl {
    enabled: bool,
    responses_per_second: u32,
    slip: u32,
    ipv4_prefix: u8,
    ipv6_prefix: u8,
    exempt: Vec<ipnet::IpNet>,
}

impl Default for RawRrl {
    fn default() -> Self {
        Self {
            enabled: true,
            responses_per_second: 100,
            slip: 2,
            ipv4_prefix: 24,
            ipv6_prefix: 56,
            exempt: vec![
                "127.0.0.0/8".parse().unwrap_or_default(),
                "::1/128".parse().unwrap_or_default(),
            ],
        }
    }
}

/// `[admin]`: the operator API, forced states, drills, `_why` and query logging.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAdmin {
    listen: String,
    token: Option<String>,
    token_file: Option<PathBuf>,
    state_file: PathBuf,
    why_acl: Vec<ipnet::IpNet>,
    drill_samples: Vec<ipnet::IpNet>,
    #[serde(with = "de::duration")]
    reload_poll: Duration,
    #[serde(with = "de::duration")]
    reload_timeout: Duration,
    query_log_sample: f64,
    max_connections: usize,
    #[serde(with = "de::duration")]
    header_timeout: Duration,
    allowed_hosts: Vec<String>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8053".into(),
            token: None,
            token_file: None,
            state_file: PathBuf::from("geosteer-state.json"),
            why_acl: vec![
                "127.0.0.0/8".parse().unwrap_or_default(),
                "::1/128".parse().unwrap_or_default(),
            ],
            drill_samples: Vec::new(),
            reload_poll: Duration::from_secs(1),
            reload_timeout: Duration::from_secs(60),
            query_log_sample: 0.0,
            max_connections: 64,
            header_timeout: Duration::from_secs(5),
            allowed_hosts: Vec::new(),
        }
    }
}

/// `[geoip]`: MaxMind-format databases. A field left out takes the bundled sample database
/// (what the README documents as the default); `""` routes without one on purpose.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawGeoip {
    city: Option<PathBuf>,
    asn: Option<PathBuf>,
}

/// The default City and ASN databases (the bundled samples), relative to the config's directory.
const DEFAULT_GEOIP: [(&str, &str); 2] = [
    ("geoip.city", "geo/sample-city.mmdb"),
    ("geoip.asn", "geo/sample-asn.mmdb"),
];

/// `[routing]`: the latency model and where this server is.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRouting {
    base_ms: f64,
    ms_per_km: f64,
    server_region: Option<String>,
    server_lat: Option<f64>,
    server_lon: Option<f64>,
    regions: Option<PathBuf>,
    measured: Vec<RawMeasured>,
}

impl Default for RawRouting {
    fn default() -> Self {
        let m = crate::routing::model::Model::default();
        Self {
            base_ms: m.base_ms,
            ms_per_km: m.ms_per_km,
            server_region: None,
            server_lat: None,
            server_lon: None,
            regions: None,
            measured: Vec::new(),
        }
    }
}

/// One `[[routing.measured]]` entry: an operator-measured RTT that overrides the model.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawMeasured {
    /// Client network (CIDR); give this or `country`.
    pub client: Option<String>,
    /// Client country (ISO 3166-1 alpha-2); give this or `client`.
    pub country: Option<String>,
    /// Catalogue region the RTT was measured to.
    pub region: String,
    /// Round-trip time, ms.
    pub rtt_ms: f64,
}

/// `[server]`: sockets and transport limits.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawServer {
    #[serde(deserialize_with = "de::socket_addrs::deserialize")]
    udp: Vec<SocketAddr>,
    #[serde(deserialize_with = "de::socket_addrs::deserialize")]
    tcp: Vec<SocketAddr>,
    workers: usize,
    edns_udp_payload: u16,
    #[serde(with = "de::duration")]
    tcp_idle_timeout: Duration,
    tcp_max_connections: usize,
    tcp_max_per_source: usize,
    #[serde(with = "de::duration")]
    tcp_write_timeout: Duration,
    #[serde(with = "de::duration")]
    shutdown_grace: Duration,
}

impl Default for RawServer {
    fn default() -> Self {
        let local: Vec<SocketAddr> = vec![
            SocketAddr::from(([127, 0, 0, 1], 5353)),
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 5353)),
        ];
        Self {
            udp: local.clone(),
            tcp: local,
            workers: 0,
            edns_udp_payload: 1232,
            tcp_idle_timeout: Duration::from_secs(10),
            tcp_max_connections: 1024,
            tcp_max_per_source: 16,
            tcp_write_timeout: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// `[zones]`: where the RFC 1035 master files live.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawZones {
    directory: PathBuf,
}

impl Default for RawZones {
    fn default() -> Self {
        Self {
            directory: PathBuf::from("zones"),
        }
    }
}

/// `[log]`: tracing output.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLog {
    level: String,
    format: LogFormat,
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            level: "info".to_string(),
            format: LogFormat::Text,
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// RRL settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RrlConfig {
    /// Identical responses per client network per second; 0 disables RRL.
    pub responses_per_second: u32,
    /// Every n-th limited response is sent truncated; 0 = drop all.
    pub slip: u32,
    /// IPv4 network size counted together.
    pub ipv4_prefix: u8,
    /// IPv6 network size counted together.
    pub ipv6_prefix: u8,
    /// Sources never limited.
    pub exempt: Vec<ipnet::IpNet>,
}

/// Validated configuration, paths resolved.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where this configuration came from (file path or [`EMBEDDED_NAME`]).
    /// Lines of the settings that name other files (`zones.directory`, `geoip.city`, …), so a
    /// missing or unreadable file is reported at the line that names it ([`Config::blame`]).
    pub path_lines: Vec<(&'static str, usize)>,
    /// Lines of the region references, for [`Self::resolve`]'s errors.
    pub region_lines: RegionLines,
    pub source: PathBuf,
    /// UDP listen addresses.
    pub udp: Vec<SocketAddr>,
    /// TCP listen addresses.
    pub tcp: Vec<SocketAddr>,
    /// Worker threads, and UDP sockets per UDP address (SO_REUSEPORT). Never 0 here.
    pub workers: usize,
    /// Largest UDP answer we send and the payload size we advertise in OPT.
    pub edns_udp_payload: u16,
    /// A TCP connection with no complete query for this long is closed.
    pub tcp_idle_timeout: Duration,
    /// Concurrent TCP connections across all listeners. When all are in use, a new connection
    /// takes the slot of the connection quiet longest (at least 1 s without a query read or an
    /// answer delivered); if none is, the new one is closed (see `dns::conn_limit`).
    pub tcp_max_connections: usize,
    /// A source's (address; IPv6: /64) share of the TCP slots once more than half are in use:
    /// at its share, a new connection replaces the source's own quietest one or is closed.
    /// Below half full one source may use any number (a busy resolver). 0 = no share.
    pub tcp_max_per_source: usize,
    /// Answers the client does not take for this long reset the connection. Writes wait only
    /// when the client has stopped reading and the socket buffers are full, so a few seconds
    /// is generous for a real client yet frees a stalled one's slot and kernel buffer.
    pub tcp_write_timeout: Duration,
    /// On SIGINT/SIGTERM, how long in-flight TCP connections get to finish.
    pub shutdown_grace: Duration,
    /// Directory holding `*.zone` files, resolved against the config file's directory.
    pub zones_dir: PathBuf,
    /// Log filter (tracing `EnvFilter` syntax); `RUST_LOG` overrides it.
    pub log_level: String,
    /// Log line format.
    pub log_format: LogFormat,
    /// MaxMind-format City database (GeoLite2-City, GeoIP2-City, DB-IP City).
    pub geoip_city: Option<PathBuf>,
    /// MaxMind-format ASN database.
    pub geoip_asn: Option<PathBuf>,
    /// Latency model: fixed part, ms.
    pub base_ms: f64,
    /// Latency model: ms of RTT per great-circle km.
    pub ms_per_km: f64,
    /// Where this server runs: a catalogue region name…
    pub server_region: Option<String>,
    /// …or coordinates.
    pub server_point: Option<crate::geo::GeoPoint>,
    /// Extra region catalogue file (adds to / overrides the embedded one).
    pub regions_file: Option<PathBuf>,
    /// Operator-measured RTTs.
    pub measured: Vec<RawMeasured>,
    /// Admin API listen address; `None` = disabled.
    pub admin_listen: Option<SocketAddr>,
    /// Bearer token for mutating admin calls; `None` = mutating calls refused.
    pub admin_token: Option<String>,
    /// Where forced states (and drills) are kept across restarts.
    pub state_file: PathBuf,
    /// Sources allowed to ask `_why.<name>` TXT.
    pub why_acl: Vec<ipnet::IpNet>,
    /// Client subnets drills resolve before/during/after to verify the move.
    pub drill_samples: Vec<ipnet::IpNet>,
    /// How often watched files are checked for changes; zero = only SIGHUP and the API.
    pub reload_poll: Duration,
    /// Longest a reload may spend reading and validating files before it is abandoned and
    /// reported as failed (the old state keeps serving; see `ops::control`).
    pub reload_timeout: Duration,
    /// Fraction of queries logged as JSON lines (0 = none, 1 = all).
    pub query_log_sample: f64,
    /// Admin API connections open at once; more are closed at accept (bounds its memory).
    pub admin_max_connections: usize,
    /// An admin API connection that has not sent a whole request head for this long (also
    /// an idle keep-alive connection) is closed.
    pub admin_header_timeout: Duration,
    /// Host names (lowercase, no trailing dot) the admin API answers besides IP literals
    /// and `localhost`: a guard against DNS rebinding.
    pub admin_allowed_hosts: Vec<String>,
    /// Every file this configuration was built from (watched for changes).
    pub files: Vec<PathBuf>,
    /// The per-run admin token's file, when `admin_token` is one (see `ops::runtoken`): kept
    /// across reloads of a configuration that still sets no token of its own.
    pub run_token_file: Option<PathBuf>,
    /// Things that load but are probably not what the operator meant (a default GeoIP
    /// database that is not there): `check` prints them, `serve` logs them at warn level.
    pub warnings: Vec<String>,
    /// Response rate limiting (`responses_per_second` 0 = off).
    pub rrl: RrlConfig,
    /// `[cluster]`: the fleet's etcd; `None` = standalone.
    pub cluster: Option<crate::cluster::Settings>,
    /// `[demo]`: loopback demo endpoints (name, address) geosteer listens on itself.
    pub demo: Vec<(String, SocketAddr)>,
}

impl Config {
    /// Loads a config file, or the embedded default when `path` is `None`.
    ///
    /// Relative paths inside a file resolve against that file's directory; inside the embedded
    /// default they resolve against the current directory (the repository root for
    /// `cargo run`).
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigErrors> {
        let mut config = Self::load_file(path)?;
        config.override_ports()?;
        Ok(config)
    }

    /// `GEOSTEER_DNS_PORT` / `GEOSTEER_ADMIN_PORT`: replace the port of every `[server]` UDP
    /// and TCP address / of `[admin] listen`, for running the embedded default (5353, 8053)
    /// beside another instance or in tests. The CLI reads the same variables, so `geosteer force`
    /// finds the API a `serve` with the same environment listens on.
    fn override_ports(&mut self) -> Result<(), ConfigErrors> {
        for var in ["GEOSTEER_DNS_PORT", "GEOSTEER_ADMIN_PORT"] {
            let Some(v) = std::env::var_os(var) else {
                continue;
            };
            let port: u16 = v.to_str().and_then(|v| v.parse().ok()).ok_or_else(|| {
                ConfigError::new(
                    &self.source,
                    0,
                    var,
                    format!("{v:?} is not a port number (0-65535)"),
                )
            })?;
            if var == "GEOSTEER_DNS_PORT" {
                self.udp.iter_mut().for_each(|a| a.set_port(port));
                self.tcp.iter_mut().for_each(|a| a.set_port(port));
            } else if let Some(a) = &mut self.admin_listen {
                a.set_port(port);
            }
        }
        Ok(())
    }

    fn load_file(path: Option<&Path>) -> Result<Self, ConfigErrors> {
        match path {
            Some(p) => {
                let text = file::read_regular_text(p, file::MAX_CONFIG_BYTES)
                    .map_err(|e| ConfigError::file(p, format!("cannot read configuration: {e}")))?;
                let base = p.parent().map(Path::to_path_buf).unwrap_or_default();
                Self::parse(p, &text, &base)
            }
            None => Self::parse(Path::new(EMBEDDED_NAME), EMBEDDED_DEFAULT, Path::new("")),
        }
    }

    /// Parses and validates configuration text. `file` is only used in messages.
    pub fn parse(file: &Path, text: &str, base: &Path) -> Result<Self, ConfigErrors> {
        // Every problem of the file, not only the first serde meets (then the checks below on
        // what could be read), reported in line order.
        let (raw, mut errors) = crate::base::diag::from_toml_all::<RawConfig>(file, text);
        let Some(raw) = raw else {
            return Err(ConfigErrors(errors));
        };
        let at = |key: &str| find_key_line(text, key);
        let s = raw.server;
        if s.udp.is_empty() && s.tcp.is_empty() {
            errors.push(ConfigError::new(
                file,
                at("udp"),
                "server.udp",
                "no listen address: give at least one UDP or TCP address",
            ));
        }
        for (field, addrs) in [("udp", &s.udp), ("tcp", &s.tcp)] {
            let mut seen = std::collections::HashSet::new();
            for a in addrs.iter() {
                if !seen.insert(a) {
                    errors.push(ConfigError::new(
                        file,
                        at(field),
                        format!("server.{field}"),
                        format!("address {a} is listed twice"),
                    ));
                }
            }
        }
        if !(512..=MAX_EDNS_PAYLOAD).contains(&s.edns_udp_payload) {
            errors.push(ConfigError::new(
                file,
                at("edns_udp_payload"),
                "server.edns_udp_payload",
                format!(
                    "{} is outside 512..={MAX_EDNS_PAYLOAD} (1232 avoids fragmentation)",
                    s.edns_udp_payload
                ),
            ));
        }
        if s.tcp_max_connections == 0 {
            errors.push(ConfigError::new(
                file,
                at("tcp_max_connections"),
                "server.tcp_max_connections",
                "must be at least 1",
            ));
        }
        if s.tcp_idle_timeout.is_zero() {
            errors.push(ConfigError::new(
                file,
                at("tcp_idle_timeout"),
                "server.tcp_idle_timeout",
                "must be longer than 0s",
            ));
        }
        if s.tcp_write_timeout.is_zero() {
            errors.push(ConfigError::new(
                file,
                at("tcp_write_timeout"),
                "server.tcp_write_timeout",
                "must be longer than 0s",
            ));
        }
        if s.workers > 1024 {
            errors.push(ConfigError::new(
                file,
                at("workers"),
                "server.workers",
                format!("{} workers is more than 1024", s.workers),
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&raw.log.level) {
            errors.push(ConfigError::new(
                file,
                at("level"),
                "log.level",
                format!("invalid log filter {:?}: {e}", raw.log.level),
            ));
        }
        let r = &raw.routing;
        if !(r.base_ms.is_finite() && r.base_ms >= 0.0) {
            errors.push(ConfigError::new(
                file,
                at("base_ms"),
                "routing.base_ms",
                "must be a finite number >= 0",
            ));
        }
        if !(r.ms_per_km.is_finite() && r.ms_per_km > 0.0) {
            errors.push(ConfigError::new(
                file,
                at("ms_per_km"),
                "routing.ms_per_km",
                "must be a finite number > 0",
            ));
        }
        let server_point = match (r.server_lat, r.server_lon) {
            (Some(lat), Some(lon)) => {
                let p = crate::geo::GeoPoint { lat, lon };
                if !p.is_valid() || r.server_region.is_some() {
                    errors.push(ConfigError::new(
                        file,
                        at("server_lat"),
                        "routing.server_lat",
                        "give server_region or valid server_lat/server_lon, not both",
                    ));
                }
                Some(p)
            }
            (None, None) => None,
            _ => {
                errors.push(ConfigError::new(
                    file,
                    at("server_lat"),
                    "routing.server_lat",
                    "server_lat and server_lon go together",
                ));
                None
            }
        };
        for m in &r.measured {
            let ok = match (&m.client, &m.country) {
                (Some(c), None) => c.parse::<ipnet::IpNet>().is_ok(),
                (None, Some(c)) => c.len() == 2,
                _ => false,
            };
            if !(ok && m.rtt_ms.is_finite() && m.rtt_ms >= 0.0) {
                errors.push(ConfigError::new(file, at("region"), "routing.measured", format!("entry for region {:?}: give exactly one of client (CIDR) or country (2 letters), and rtt_ms >= 0", m.region)));
            }
        }
        let a = &raw.admin;
        let admin_listen = if a.listen.is_empty() {
            None
        } else {
            match de::parse_socket_addr(&a.listen) {
                Ok(l) => Some(l),
                Err(why) => {
                    errors.push(ConfigError::new(
                        file,
                        at("listen"),
                        "admin.listen",
                        format!("{why}; \"\" disables the API"),
                    ));
                    None
                }
            }
        };
        let mut admin_token = a.token.clone();
        if let Some(word) = admin_token.as_deref().and_then(placeholder) {
            errors.push(ConfigError::new(
                file,
                at("token"),
                "admin.token",
                format!("{word:?}: a placeholder, not a token; {TOKEN_HINT}"),
            ));
        }
        if let Some(tf) = &a.token_file {
            let path = base.join(tf);
            match file::read_regular_text(&path, file::MAX_TOKEN_BYTES) {
                Ok(_) if admin_token.is_some() => errors.push(ConfigError::new(
                    file,
                    at("token_file"),
                    "admin.token_file",
                    "give token or token_file, not both",
                )),
                Ok(t) if t.trim().is_empty() => errors.push(ConfigError::new(
                    file,
                    at("token_file"),
                    "admin.token_file",
                    format!("{} is empty", path.display()),
                )),
                Ok(t) => match placeholder(t.trim()) {
                    Some(word) => errors.push(ConfigError::new(
                        file,
                        at("token_file"),
                        "admin.token_file",
                        format!(
                            "{} holds a placeholder ({word:?}), not a token; {TOKEN_HINT}",
                            path.display()
                        ),
                    )),
                    None => admin_token = Some(t.trim().to_string()),
                },
                Err(e) => errors.push(ConfigError::new(
                    file,
                    at("token_file"),
                    "admin.token_file",
                    format!("cannot read {}: {e}", path.display()),
                )),
            }
        }
        if admin_token.as_ref().is_some_and(|t| t.len() < 16) {
            errors.push(ConfigError::new(
                file,
                at("token"),
                "admin.token",
                "shorter than 16 characters",
            ));
        }
        if raw.rrl.ipv4_prefix > 32 || raw.rrl.ipv6_prefix > 128 {
            errors.push(ConfigError::new(
                file,
                at("ipv4_prefix"),
                "rrl.ipv4_prefix",
                "prefix lengths: ipv4 at most 32, ipv6 at most 128",
            ));
        }
        if a.reload_timeout.is_zero() {
            errors.push(ConfigError::new(
                file,
                at("reload_timeout"),
                "admin.reload_timeout",
                "must be longer than 0s",
            ));
        }
        if a.max_connections == 0 {
            errors.push(ConfigError::new(
                file,
                at("max_connections"),
                "admin.max_connections",
                "must be at least 1",
            ));
        }
        if a.header_timeout.is_zero() {
            errors.push(ConfigError::new(
                file,
                at("header_timeout"),
                "admin.header_timeout",
                "must be longer than 0s",
            ));
        }
        let mut admin_allowed_hosts = Vec::new();
        for h in &a.allowed_hosts {
            let name = h.trim_end_matches('.').to_ascii_lowercase();
            let valid = !name.is_empty()
                && name.len() <= 253
                && name.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                });
            if valid {
                admin_allowed_hosts.push(name);
            } else {
                errors.push(ConfigError::new(
                    file,
                    at("allowed_hosts"),
                    "admin.allowed_hosts",
                    format!("{h:?} is not a host name (give names only: no port, scheme or path; IP literals and localhost are always allowed)"),
                ));
            }
        }
        if !(0.0..=1.0).contains(&a.query_log_sample) {
            errors.push(ConfigError::new(
                file,
                at("query_log_sample"),
                "admin.query_log_sample",
                "must be between 0 and 1",
            ));
        }
        let mut demo = Vec::new();
        let demo_lines = nth_key_lines(text, "listen", "[[demo.endpoints]]");
        for (i, e) in raw.demo.endpoints.iter().enumerate() {
            let line = demo_lines.get(i).copied().unwrap_or(0);
            match e.listen.parse::<SocketAddr>() {
                Ok(a) if a.ip().is_loopback() => demo.push((e.name.clone(), a)),
                Ok(a) => errors.push(ConfigError::new(
                    file,
                    line,
                    "demo.endpoints.listen",
                    format!("{a}: demo endpoints listen on loopback only"),
                )),
                Err(err) => errors.push(ConfigError::new(
                    file,
                    line,
                    "demo.endpoints.listen",
                    format!("{:?}: {err}", e.listen),
                )),
            }
        }
        let cluster = match raw.cluster {
            Some(c) => match cluster::validate(c, file, base, &at) {
                Ok(settings) => Some(settings),
                Err(e) => {
                    errors.extend(e);
                    None
                }
            },
            None => None,
        };
        if !errors.is_empty() {
            return Err(ConfigErrors(errors).in_file_order());
        }
        // GeoIP: a setting left out takes the bundled sample (the documented default) if it is
        // there; if not, say so rather than silently routing without GeoIP. `""` = none, quietly.
        let mut warnings = Vec::new();
        let mut geoip = [raw.geoip.city, raw.geoip.asn].map(|setting| match setting {
            Some(p) if p.as_os_str().is_empty() => None,
            Some(p) => Some(base.join(p)),
            None => Some(PathBuf::new()),
        });
        for (slot, (field, default)) in geoip.iter_mut().zip(DEFAULT_GEOIP) {
            if slot.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                let path = base.join(default);
                if path.is_file() {
                    *slot = Some(path);
                } else {
                    warnings.push(format!(
                        "{}: {field}: not set, and the default {} is not there: routing without \
                         {}; set {field} to a database, or to \"\" to do without one",
                        file.display(),
                        path.display(),
                        if field == "geoip.city" {
                            "client locations (GeoIP)"
                        } else {
                            "ASNs"
                        }
                    ));
                    *slot = None;
                }
            }
        }
        let [geoip_city, geoip_asn] = geoip;
        let workers = if s.workers == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            s.workers
        };
        Ok(Self {
            path_lines: [
                ("zones.directory", "directory"),
                ("geoip.city", "city"),
                ("geoip.asn", "asn"),
                ("routing.regions", "regions"),
            ]
            .into_iter()
            .map(|(field, key)| (field, at(key)))
            .collect(),
            region_lines: RegionLines {
                server_region: at("server_region"),
                measured: nth_key_lines(text, "region", "[[routing.measured]]"),
            },
            source: file.to_path_buf(),
            udp: s.udp,
            tcp: s.tcp,
            workers,
            edns_udp_payload: s.edns_udp_payload,
            tcp_idle_timeout: s.tcp_idle_timeout,
            tcp_max_connections: s.tcp_max_connections,
            tcp_max_per_source: s.tcp_max_per_source,
            tcp_write_timeout: s.tcp_write_timeout,
            shutdown_grace: s.shutdown_grace,
            zones_dir: base.join(raw.zones.directory),
            log_level: raw.log.level,
            log_format: raw.log.format,
            geoip_city,
            geoip_asn,
            base_ms: raw.routing.base_ms,
            ms_per_km: raw.routing.ms_per_km,
            server_region: raw.routing.server_region,
            server_point,
            regions_file: raw.routing.regions.map(|p| base.join(p)),
            measured: raw.routing.measured,
            admin_listen,
            admin_token,
            state_file: base.join(&raw.admin.state_file),
            why_acl: raw.admin.why_acl.clone(),
            drill_samples: raw.admin.drill_samples.clone(),
            reload_poll: raw.admin.reload_poll,
            reload_timeout: raw.admin.reload_timeout,
            query_log_sample: raw.admin.query_log_sample,
            admin_max_connections: raw.admin.max_connections,
            admin_header_timeout: raw.admin.header_timeout,
            admin_allowed_hosts,
            rrl: RrlConfig {
                responses_per_second: if raw.rrl.enabled {
                    raw.rrl.responses_per_second
                } else {
                    0
                },
                slip: raw.rrl.slip,
                ipv4_prefix: raw.rrl.ipv4_prefix,
                ipv6_prefix: raw.rrl.ipv6_prefix,
                exempt: raw.rrl.exempt.clone(),
            },
            warnings,
            cluster,
            demo,
            run_token_file: None,
            files: if file.to_str() == Some(EMBEDDED_NAME) {
                Vec::new()
            } else {
                vec![file.to_path_buf()]
            },
        })
    }

    /// Resolves the configuration's references to the region catalogue (`server_region`,
    /// `[[routing.measured]].region`) into what routing uses: the server's point for the
    /// latency model and the measured-RTT table. An unknown region is reported at its file and
    /// line, with the catalogue name it most likely meant (`eastus` → `azure:eastus`).
    pub fn resolve(&self, catalogue: &Catalogue) -> Result<Resolved, ConfigErrors> {
        let mut errors = Vec::new();
        let unknown = |name: &str| {
            let close: Vec<String> = catalogue
                .suggest(name)
                .iter()
                .map(|s| format!("{s:?}"))
                .collect();
            let hint = if close.is_empty() {
                String::new()
            } else {
                format!(" (did you mean {}?)", close.join(" or "))
            };
            format!("unknown region {name:?}{hint}")
        };
        let server = match (&self.server_region, self.server_point) {
            (Some(r), _) => match catalogue.get(r) {
                Some(reg) => Some(reg.point()),
                None => {
                    errors.push(ConfigError::new(
                        &self.source,
                        self.region_lines.server_region,
                        "routing.server_region",
                        unknown(r),
                    ));
                    None
                }
            },
            (None, p) => p,
        };
        let mut measured = Measured::default();
        for (n, m) in self.measured.iter().enumerate() {
            if catalogue.get(&m.region).is_none() {
                errors.push(ConfigError::new(
                    &self.source,
                    self.region_lines.measured.get(n).copied().unwrap_or(0),
                    "routing.measured.region",
                    unknown(&m.region),
                ));
                continue;
            }
            if let Some(net) = m
                .client
                .as_deref()
                .and_then(|c| c.parse::<ipnet::IpNet>().ok())
            {
                measured
                    .networks
                    .push((net.trunc(), m.region.clone(), m.rtt_ms));
            } else if let Some(c) = m.country.as_deref().and_then(Code::new) {
                measured.countries.insert((c, m.region.clone()), m.rtt_ms);
            }
        }
        // Longest prefix first, so the first match is the most specific.
        measured
            .networks
            .sort_by_key(|(n, _, _)| std::cmp::Reverse(n.prefix_len()));
        if errors.is_empty() {
            Ok(Resolved {
                model: Model {
                    base_ms: self.base_ms,
                    ms_per_km: self.ms_per_km,
                    server,
                },
                measured,
            })
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

impl Config {
    /// Re-addresses a whole-file error about a file this configuration names (the zones
    /// directory, a GeoIP database, the region catalogue) to the configuration line that names
    /// it: `geosteer.toml:12: geoip.city: {path}: cannot open City database: …`. The operator
    /// fixes the setting, not the (absent) file, so that is the line to show. Errors with a line
    /// of their own (a syntax error inside the file) are returned unchanged.
    pub fn blame(&self, field: &'static str, err: ConfigError) -> ConfigError {
        if err.line != 0 {
            return err;
        }
        let line = self
            .path_lines
            .iter()
            .find(|(f, _)| *f == field)
            .map_or(0, |&(_, l)| l);
        let default = if line == 0 { " (the default)" } else { "" };
        ConfigError::new(
            &self.source,
            line,
            field,
            format!("{}{default}: {}", err.file.display(), err.message),
        )
    }

    /// [`Config::blame`] for every error of a load.
    pub fn blame_all(&self, field: &'static str, errs: ConfigErrors) -> ConfigErrors {
        ConfigErrors(errs.0.into_iter().map(|e| self.blame(field, e)).collect())
    }
}

/// How to make a real token, for messages refusing a placeholder.
const TOKEN_HINT: &str = "generate one, e.g. with `openssl rand -hex 32`";

/// The placeholder word in an admin token, if it is one: `REPLACE-ME-…` (as in the shipped
/// Kubernetes Secret), `changeme`, `placeholder`, or a `<…>` template. Such a token is public
/// (it is in the repository), so accepting it would hand the admin API to anyone who can reach
/// it; it is refused wherever the token comes from. Random tokens (hex, base64) cannot contain
/// these words by accident in any realistic case: they need letters outside hex, and a given
/// 8-letter word turns up in a 32-character base64 token with odds of about 1 in 10^13.
pub fn placeholder(token: &str) -> Option<&'static str> {
    let folded: String = token
        .chars()
        .filter(|c| !matches!(c, '-' | '_' | ' ' | '.'))
        .flat_map(char::to_lowercase)
        .collect();
    let t = token.trim();
    if t.starts_with('<') && t.ends_with('>') {
        return Some("<…>");
    }
    [
        ("replaceme", "REPLACE-ME"),
        ("changeme", "changeme"),
        ("placeholder", "placeholder"),
    ]
    .into_iter()
    .find(|(w, _)| folded.contains(w))
    .map(|(_, shown)| shown)
}

/// Line of the first `key =` assignment, for errors found after deserialisation.
/// The line of `key = ` in each `table` entry (an array of tables), in order; 0 where absent.
fn nth_key_lines(text: &str, key: &str, table: &str) -> Vec<usize> {
    let mut out = Vec::new();
    let mut inside = false;
    for (i, l) in text.lines().enumerate() {
        let t = l.trim_start();
        if t.starts_with('[') {
            inside = t.starts_with(table);
            if inside {
                out.push(0);
            }
        } else if inside
            && t.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
            && let Some(last) = out.last_mut()
        {
            *last = i + 1;
        }
    }
    out
}

fn find_key_line(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| {
            l.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map_or(0, |i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigErrors> {
        Config::parse(Path::new("t.toml"), text, Path::new("/etc/geosteer"))
    }

    #[test]
    fn admin_hardening_fields() {
        let c = parse("[admin]\nmax_connections = 8\nheader_timeout = \"2s\"\nallowed_hosts = [\"Admin.Example.NET.\"]\n").unwrap();
        assert_eq!(c.admin_max_connections, 8);
        assert_eq!(c.admin_header_timeout, Duration::from_secs(2));
        assert_eq!(c.admin_allowed_hosts, ["admin.example.net"]);
        let d = parse("").unwrap();
        assert_eq!(d.admin_max_connections, 64);
        assert!(d.admin_allowed_hosts.is_empty());
        let e = parse("[admin]\nallowed_hosts = [\"http://x.example:80/\"]\n").unwrap_err();
        assert!(
            e.to_string().starts_with("t.toml:2: admin.allowed_hosts: "),
            "{e}"
        );
        let e = parse("[admin]\nmax_connections = 0\n").unwrap_err();
        assert!(e.to_string().contains("admin.max_connections"), "{e}");
    }

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::load(None).expect("embedded default parses");
        assert!(!c.udp.is_empty());
        assert!(c.workers >= 1);
    }

    #[test]
    fn relative_zone_dir_resolves_against_config_dir() {
        let c = parse("[zones]\ndirectory = \"z\"\n").unwrap();
        assert_eq!(c.zones_dir, Path::new("/etc/geosteer/z"));
    }

    #[test]
    fn unknown_field_names_file_line_field() {
        let e = parse("[server]\nworkers = 1\nudpp = []\n").unwrap_err();
        let s = e.to_string();
        assert!(
            s.starts_with("t.toml:3: server.udpp: unknown field `udpp`"),
            "{s}"
        );
    }

    #[test]
    fn bad_address_names_field() {
        let e = parse("[server]\nudp = [\"127.0.0.1\"]\n").unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("t.toml:2: server.udp:"), "{s}");
    }

    #[test]
    fn placeholder_tokens_are_refused_and_random_ones_are_not() {
        for t in [
            "REPLACE-ME-with-a-random-token-of-32-characters-or-more",
            "replace_me_0123456789abcdef",
            "changeme-changeme-changeme",
            "<your admin token goes here>",
            "this-is-a-placeholder-token",
        ] {
            assert!(placeholder(t).is_some(), "{t}");
            let e = parse(&format!("[admin]\ntoken = {t:?}\n")).unwrap_err();
            assert!(
                e.to_string().starts_with("t.toml:2: admin.token: ")
                    && e.to_string().contains("placeholder"),
                "{e}"
            );
        }
        for t in [
            "0123456789abcdef0123456789abcdef",
            "q8Zk1pXo3vY9rT5wL2mN7bC4dF6gH0jA",
            "test-token-0123456789",
        ] {
            assert_eq!(placeholder(t), None, "{t}");
        }
    }

    #[test]
    fn semantic_errors_are_all_reported() {
        let e = parse("[server]\nedns_udp_payload = 100\ntcp_max_connections = 0\n").unwrap_err();
        assert_eq!(e.0.len(), 2, "{e}");
        assert!(
            e.0[0]
                .to_string()
                .contains("t.toml:2: server.edns_udp_payload")
        );
        assert!(
            e.0[1]
                .to_string()
                .contains("t.toml:3: server.tcp_max_connections")
        );
    }
}

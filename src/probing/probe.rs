//! Probes: one attempt to reach an endpoint, timed.
//!
//! A [`Probe`] is built once per endpoint (URL, headers, MQTT client id) and run many times;
//! every run ends within the monitor's timeout and reports its RTT. The TLS configuration and
//! the HTTP client are built once per distinct TLS settings when the configuration loads
//! ([`ProbeTls`]) and shared by all endpoints that use them.
//!
//! - `tcp`: a TCP connect to the target; RTT = connect time.
//! - `http`/`https`: one request on a fresh connection (no pooling, no redirects, no proxies) to
//!   the target address; healthy iff the status is in an expected range. RTT = time to the
//!   response headers; the body is never read.
//! - `mqtt`/`mqtts`: TCP (+ TLS), CONNECT (3.1.1 or 5, clean session), CONNACK, DISCONNECT.
//!   Healthy iff the CONNACK accepts. RTT = time to the CONNACK.
//!
//! TLS is verified by default against the public (webpki) roots plus the monitor's `ca_file`;
//! `tls_verify = false` accepts any certificate but still checks the handshake signatures.
//!
//! Names: the TLS server name is `sni` if set, else (https) the `Host` header's host, else the
//! monitor's `host`, else the target IP. For https the URL names that server, pinned to the target
//! address, so the TCP connection always goes to `target`; a configured `Host` header is sent
//! verbatim.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;

use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::health::monitor::{MonitorSpec, MqttVersion, Protocol};
use crate::health::tls::{FieldError, TlsSettings};

/// The result of one probe.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeOutcome {
    /// Healthy?
    pub ok: bool,
    /// Time to the deciding event: TCP connect (tcp), response status (http/https), CONNACK
    /// (mqtt/mqtts); on failure, the time until the failure was known.
    pub rtt: Duration,
    /// Stage timings from the start of the probe, e.g. ("tcp", 1.2 ms), ("tls", 4.0 ms),
    /// ("connack", 5.1 ms).
    pub stages: Vec<(&'static str, Duration)>,
    /// Why it failed, for logs and the status API.
    pub error: Option<String>,
    /// Unix time at which the endpoint's TLS certificate (the leaf it presented) expires;
    /// https and mqtts, whenever the handshake completed (also when the probe then failed).
    pub cert_not_after: Option<i64>,
}

/// A ready-to-run probe of one endpoint address.
#[derive(Debug)]
pub struct Probe {
    timeout: Duration,
    target: SocketAddr,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Tcp,
    Http(HttpProbe),
    Mqtt(MqttProbe),
}

#[derive(Debug)]
struct HttpProbe {
    /// The monitor's shared client ([`ProbeTls`]); connections go to `target` whatever the
    /// URL's name resolves to ([`PinnedResolver`]).
    client: reqwest::Client,
    target: SocketAddr,
    method: reqwest::Method,
    url: reqwest::Url,
    headers: reqwest::header::HeaderMap,
    expected: Vec<(u16, u16)>,
}

#[derive(Debug)]
struct MqttProbe {
    /// TLS connector and server name for mqtts.
    tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    version: MqttVersion,
    client_id_prefix: String,
    username: Option<String>,
    password: Option<String>,
}

/// MQTT 3.1.1 guarantees client ids of up to 23 bytes.
const MAX_CLIENT_ID: usize = 23;
/// Random characters kept at the end of the client id even if the prefix is long.
const MIN_CLIENT_ID_SUFFIX: usize = 6;
/// CONNACKs larger than this are not read (a real one is a few bytes, at most a few hundred).
const MAX_CONNACK: usize = 64 * 1024;
/// MQTT keep-alive announced in the CONNECT, seconds.
const KEEPALIVE_SECS: u16 = 10;

impl Probe {
    /// Prepares a probe of `target` (the endpoint's address and the monitor's port).
    ///
    /// TLS clients (http, https, mqtts) come from `tls`, shared with every other probe that has
    /// the same settings. A hand-made spec without loaded settings has them loaded there, which
    /// reads `ca_file` (blocking; tests only).
    pub fn new(
        spec: &MonitorSpec,
        tls: &mut TlsRegistry,
        target: SocketAddr,
    ) -> Result<Self, String> {
        let clients = match spec.protocol {
            Protocol::Http | Protocol::Https | Protocol::Mqtts => Some(tls.of(spec)?),
            _ => None,
        };
        Self::prepared(spec, clients.as_ref(), target)
    }

    /// Prepares a probe with the TLS clients already chosen by the prober (no I/O).
    pub fn prepared(
        spec: &MonitorSpec,
        tls: Option<&ProbeTls>,
        target: SocketAddr,
    ) -> Result<Self, String> {
        let tls = |what: &str| {
            tls.cloned()
                .ok_or_else(|| format!("no TLS client for {what}"))
        };
        let kind = match spec.protocol {
            Protocol::None => return Err("protocol none is not probed".into()),
            Protocol::Tcp => Kind::Tcp,
            Protocol::Http | Protocol::Https => {
                Kind::Http(HttpProbe::new(spec, tls("http")?, target)?)
            }
            Protocol::Mqtt => Kind::Mqtt(MqttProbe::new(spec, None, target)?),
            Protocol::Mqtts => Kind::Mqtt(MqttProbe::new(spec, Some(tls("mqtts")?), target)?),
        };
        Ok(Self {
            timeout: spec.timeout,
            target,
            kind,
        })
    }

    /// Runs one probe; never takes longer than the monitor's timeout (plus scheduling slack).
    pub async fn run(&self) -> ProbeOutcome {
        let start = Instant::now();
        // Validated specs have timeouts of at most 60 s; never panic on a hand-built one.
        let deadline = start
            .checked_add(self.timeout)
            .unwrap_or_else(|| start + Duration::from_secs(86_400));
        let mut stages = Vec::new();
        let mut cert = None;
        let result = tokio::time::timeout_at(deadline, async {
            match &self.kind {
                Kind::Tcp => tcp_probe(self.target, start, &mut stages).await,
                // Boxed so the common TCP probe's future stays small (see prober::round).
                Kind::Http(http) => Box::pin(http.run(start, &mut stages, &mut cert)).await,
                Kind::Mqtt(mqtt) => {
                    let run = mqtt.run(self.target, start, deadline, &mut stages, &mut cert);
                    Box::pin(run).await
                }
            }
        })
        .await;
        match result {
            Ok(Ok(rtt)) => ProbeOutcome {
                ok: true,
                rtt,
                stages,
                error: None,
                cert_not_after: cert,
            },
            Ok(Err(error)) => ProbeOutcome {
                ok: false,
                rtt: start.elapsed(),
                stages,
                error: Some(error),
                cert_not_after: cert,
            },
            Err(_) => {
                let waiting = self.waiting_for(&stages);
                ProbeOutcome {
                    ok: false,
                    rtt: start.elapsed(),
                    stages,
                    error: Some(format!("timeout after {:?} {waiting}", self.timeout)),
                    cert_not_after: cert,
                }
            }
        }
    }

    /// What a timed-out probe was waiting for, from the stages it completed.
    fn waiting_for(&self, stages: &[(&'static str, Duration)]) -> &'static str {
        let done = |name| stages.iter().any(|(s, _)| *s == name);
        match &self.kind {
            Kind::Tcp => "(TCP connect)",
            Kind::Http(_) => "(waiting for the response status)",
            Kind::Mqtt(m) => {
                if !done("tcp") {
                    "(TCP connect)"
                } else if m.tls.is_some() && !done("tls") {
                    "(TLS handshake)"
                } else {
                    "(waiting for CONNACK)"
                }
            }
        }
    }
}

/// TCP connect, then close.
async fn tcp_probe(
    target: SocketAddr,
    start: Instant,
    stages: &mut Vec<(&'static str, Duration)>,
) -> Result<Duration, String> {
    let stream = TcpStream::connect(target)
        .await
        .map_err(|e| format!("TCP connect to {target}: {e}"))?;
    let rtt = start.elapsed();
    stages.push(("tcp", rtt));
    drop(stream);
    Ok(rtt)
}

impl HttpProbe {
    fn new(spec: &MonitorSpec, tls: ProbeTls, target: SocketAddr) -> Result<Self, String> {
        let https = spec.protocol == Protocol::Https;
        let host_header = spec
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("host"))
            .map(|(_, v)| v.trim().to_string());
        // The name in the URL is the TLS server name (reqwest sends the URL host as SNI) and the
        // default Host header; the connection itself is pinned to `target` below.
        let name = [
            if https { spec.sni.clone() } else { None },
            host_header.as_deref().map(|h| strip_port(h).to_string()),
            spec.host.clone(),
        ]
        .into_iter()
        .flatten()
        .find(|n| !n.is_empty());
        let url_host = match name {
            // An IP literal cannot be pinned: connect to the target IP instead.
            Some(n) if n.parse::<IpAddr>().is_err() => n,
            _ => match target.ip() {
                IpAddr::V4(ip) => ip.to_string(),
                IpAddr::V6(ip) => format!("[{ip}]"),
            },
        };
        let scheme = if https { "https" } else { "http" };
        let url_text = format!("{scheme}://{url_host}:{}{}", target.port(), spec.path);
        let url = reqwest::Url::parse(&url_text).map_err(|e| format!("URL {url_text:?}: {e}"))?;

        let mut headers = reqwest::header::HeaderMap::new();
        for (k, v) in &spec.headers {
            let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| format!("header name {k:?}: {e}"))?;
            let value = reqwest::header::HeaderValue::from_str(v)
                .map_err(|e| format!("header {k} value {v:?}: {e}"))?;
            headers.insert(name, value);
        }
        let method = match spec.method.as_str() {
            "HEAD" => reqwest::Method::HEAD,
            "GET" => reqwest::Method::GET,
            other => return Err(format!("method {other} is not GET or HEAD")),
        };

        let client = tls.http;
        Ok(Self {
            client,
            target,
            method,
            url,
            headers,
            expected: spec.expected_status.clone(),
        })
    }

    async fn run(
        &self,
        start: Instant,
        stages: &mut Vec<(&'static str, Duration)>,
        cert: &mut Option<i64>,
    ) -> Result<Duration, String> {
        let request = self
            .client
            .request(self.method.clone(), self.url.clone())
            .headers(self.headers.clone())
            .send();
        let response = PROBE_ADDR
            .scope(self.target, request)
            .await
            .map_err(|e| error_chain(&e))?;
        let rtt = start.elapsed();
        stages.push(("status", rtt));
        *cert = response
            .extensions()
            .get::<reqwest::tls::TlsInfo>()
            .and_then(|t| t.peer_certificate())
            .and_then(not_after);
        let status = response.status().as_u16();
        // The body is never read: dropping the response closes the (unpooled) connection.
        drop(response);
        if self
            .expected
            .iter()
            .any(|&(lo, hi)| (lo..=hi).contains(&status))
        {
            Ok(rtt)
        } else {
            let expected: Vec<String> = self
                .expected
                .iter()
                .map(|&(lo, hi)| {
                    if lo == hi {
                        lo.to_string()
                    } else {
                        format!("{lo}-{hi}")
                    }
                })
                .collect();
            Err(format!(
                "status {status} not in expected {}",
                expected.join(",")
            ))
        }
    }
}

impl MqttProbe {
    fn new(spec: &MonitorSpec, tls: Option<ProbeTls>, target: SocketAddr) -> Result<Self, String> {
        let tls = if let Some(tls) = tls {
            let name = [spec.sni.clone(), spec.host.clone()]
                .into_iter()
                .flatten()
                .find(|n| !n.is_empty())
                .unwrap_or_else(|| target.ip().to_string());
            let server_name = ServerName::try_from(name.clone())
                .map_err(|e| format!("TLS server name {name:?}: {e}"))?;
            Some((tls.config, server_name))
        } else {
            None
        };
        // Keep room for a random suffix within the 23 bytes every broker accepts.
        let mut prefix = spec.client_id_prefix.clone();
        let mut keep = prefix.len().min(MAX_CLIENT_ID - MIN_CLIENT_ID_SUFFIX);
        while !prefix.is_char_boundary(keep) {
            keep -= 1;
        }
        prefix.truncate(keep);
        Ok(Self {
            tls,
            version: spec.mqtt_version,
            client_id_prefix: prefix,
            username: spec.username.clone(),
            password: spec.password.clone(),
        })
    }

    async fn run(
        &self,
        target: SocketAddr,
        start: Instant,
        deadline: Instant,
        stages: &mut Vec<(&'static str, Duration)>,
        cert: &mut Option<i64>,
    ) -> Result<Duration, String> {
        let tcp = TcpStream::connect(target)
            .await
            .map_err(|e| format!("TCP connect to {target}: {e}"))?;
        stages.push(("tcp", start.elapsed()));
        // CONNECT is one small write: send it at once.
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => self.exchange(tcp, start, deadline, stages).await,
            Some((config, name)) => {
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| format!("TLS handshake: {}", error_chain(&e)))?;
                stages.push(("tls", start.elapsed()));
                *cert = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .and_then(|leaf| not_after(leaf));
                self.exchange(tls, start, deadline, stages).await
            }
        }
    }

    /// CONNECT, CONNACK, then DISCONNECT (best effort, within the deadline).
    async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut stream: S,
        start: Instant,
        deadline: Instant,
        stages: &mut Vec<(&'static str, Duration)>,
    ) -> Result<Duration, String> {
        let connect = self.connect_packet();
        stream
            .write_all(&connect)
            .await
            .map_err(|e| format!("sending CONNECT: {e}"))?;
        stream
            .flush()
            .await
            .map_err(|e| format!("sending CONNECT: {e}"))?;
        let (header, body) = read_packet(&mut stream).await?;
        let rtt = start.elapsed();
        stages.push(("connack", rtt));
        check_connack(self.version, header, &body)?;
        // The verdict is in; a failing DISCONNECT does not change it.
        let _ = tokio::time::timeout_at(deadline, async {
            stream.write_all(&[0xE0, 0x00]).await?;
            stream.shutdown().await
        })
        .await;
        Ok(rtt)
    }

    fn connect_packet(&self) -> Vec<u8> {
        let suffix_len = MAX_CLIENT_ID.saturating_sub(self.client_id_prefix.len());
        let mut client_id = self.client_id_prefix.clone();
        client_id.extend(std::iter::repeat_with(fastrand::alphanumeric).take(suffix_len));

        let mut var = Vec::with_capacity(64);
        put_bytes(&mut var, b"MQTT");
        var.push(match self.version {
            MqttVersion::V311 => 4,
            MqttVersion::V5 => 5,
        });
        let mut flags = 0x02; // clean session / clean start
        if self.username.is_some() {
            flags |= 0x80;
        }
        if self.password.is_some() {
            flags |= 0x40;
        }
        var.push(flags);
        var.extend_from_slice(&KEEPALIVE_SECS.to_be_bytes());
        if self.version == MqttVersion::V5 {
            var.push(0); // no properties
        }
        put_bytes(&mut var, client_id.as_bytes());
        if let Some(user) = &self.username {
            put_bytes(&mut var, user.as_bytes());
        }
        if let Some(pass) = &self.password {
            put_bytes(&mut var, pass.as_bytes());
        }

        let mut packet = Vec::with_capacity(var.len() + 5);
        packet.push(0x10);
        put_varint(&mut packet, var.len());
        packet.extend_from_slice(&var);
        packet
    }
}

/// Appends a length-prefixed (u16) string or binary field, truncated to 65535 bytes.
fn put_bytes(out: &mut Vec<u8>, data: &[u8]) {
    let data = &data[..data.len().min(usize::from(u16::MAX))];
    let len = u16::try_from(data.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(data);
}

/// Appends an MQTT variable byte integer.
fn put_varint(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            break;
        }
    }
}

/// Decodes an MQTT variable byte integer at the start of `data`: (value, bytes used).
fn get_varint(data: &[u8]) -> Option<(usize, usize)> {
    let mut value = 0usize;
    for (i, &byte) in data.iter().take(4).enumerate() {
        value |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// Reads one MQTT packet: (fixed header byte, body).
async fn read_packet<S: AsyncRead + Unpin>(stream: &mut S) -> Result<(u8, Vec<u8>), String> {
    let eof = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            "connection closed before CONNACK".to_string()
        } else {
            format!("reading CONNACK: {e}")
        }
    };
    let header = stream.read_u8().await.map_err(eof)?;
    let mut len = 0usize;
    let mut complete = false;
    for i in 0..4 {
        let byte = stream.read_u8().await.map_err(eof)?;
        len |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            complete = true;
            break;
        }
    }
    if !complete {
        return Err("malformed packet length from broker".into());
    }
    if header >> 4 != 2 {
        return Err(format!(
            "expected CONNACK, got packet type {} (header 0x{header:02X})",
            header >> 4
        ));
    }
    if len > MAX_CONNACK {
        return Err(format!("CONNACK of {len} bytes is too large"));
    }
    let mut body = vec![0; len];
    stream.read_exact(&mut body).await.map_err(eof)?;
    Ok((header, body))
}

/// Judges a CONNACK.
fn check_connack(version: MqttVersion, header: u8, body: &[u8]) -> Result<(), String> {
    if header != 0x20 {
        return Err(format!("malformed CONNACK header 0x{header:02X}"));
    }
    let code = match body {
        [_flags, code] => *code,
        [_flags, code, props @ ..] if version == MqttVersion::V5 => {
            match get_varint(props) {
                Some((n, used)) if used + n == props.len() => {}
                _ => return Err("malformed CONNACK properties".into()),
            }
            *code
        }
        _ => return Err(format!("malformed CONNACK of {} bytes", body.len())),
    };
    if code == 0 {
        return Ok(());
    }
    // A 3.1.1 broker answers a v5 CONNECT in 3.1.1 format (2-byte body, code < 0x80).
    if version == MqttVersion::V5 && code >= 0x80 {
        Err(format!(
            "CONNACK refused: {} (0x{code:02X})",
            reason_v5(code)
        ))
    } else {
        Err(format!(
            "CONNACK refused: {} ({code})",
            return_code_v311(code)
        ))
    }
}

fn return_code_v311(code: u8) -> &'static str {
    match code {
        1 => "unacceptable protocol version",
        2 => "identifier rejected",
        3 => "server unavailable",
        4 => "bad user name or password",
        5 => "not authorized",
        _ => "unknown return code",
    }
}

fn reason_v5(code: u8) -> &'static str {
    match code {
        0x80 => "unspecified error",
        0x81 => "malformed packet",
        0x82 => "protocol error",
        0x83 => "implementation specific error",
        0x84 => "unsupported protocol version",
        0x85 => "client identifier not valid",
        0x86 => "bad user name or password",
        0x87 => "not authorized",
        0x88 => "server unavailable",
        0x89 => "server busy",
        0x8A => "banned",
        0x8C => "bad authentication method",
        0x90 => "topic name invalid",
        0x95 => "packet too large",
        0x97 => "quota exceeded",
        0x99 => "payload format invalid",
        0x9A => "retain not supported",
        0x9B => "QoS not supported",
        0x9C => "use another server",
        0x9D => "server moved",
        0x9F => "connection rate exceeded",
        _ => "unknown reason code",
    }
}

/// `host` of a `host[:port]` Host header value (IPv6 literals keep their address, no brackets).
fn strip_port(value: &str) -> &str {
    if let Some(rest) = value.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(ip, _)| ip);
    }
    match value.rsplit_once(':') {
        Some((host, port))
            if !host.contains(':')
                && !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit()) =>
        {
            host
        }
        _ => value,
    }
}

/// An error and its sources, "outer: inner: innermost", without repeats.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

/// The TLS client settings of a monitor, shared by all its endpoints' probes.
///
/// Built by the prober ([`TlsRegistry`]) from [`TlsSettings`] the loader read and checked (so a
/// bad `ca_file` is a configuration error with its line, and probe tasks never read files).
/// Every endpoint of a monitor shares one root store and verifier (about 10,000 endpoints
/// would otherwise hold 10,000 copies of the public roots).
///
/// Session resumption is off: every probe does a full handshake, so every probe verifies the
/// certificate chain, its expiry and the name. A resumed session (TLS 1.3 tickets last up to
/// 7 days) would skip that and keep an endpoint with an expired or replaced certificate Online.
#[derive(Clone)]
pub struct ProbeTls {
    config: Arc<ClientConfig>,
    /// The HTTP(S) client of every endpoint with these settings (see [`PinnedResolver`]).
    http: reqwest::Client,
    /// What built it.
    settings: TlsSettings,
}

impl ProbeTls {
    /// Builds the clients for validated settings (no I/O: the certificates were read by the
    /// loader). Errors name the monitor field at fault, as [`MonitorSpec::from_raw`]'s do
    /// (`protocol` for the never expected failure to set up TLS or the HTTP client).
    pub fn build(settings: &TlsSettings) -> Result<Self, FieldError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ("protocol", format!("TLS configuration: {e}")))?;
        let mut config = if settings.verify {
            let mut roots = RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            for der in settings.extra_roots.iter() {
                roots
                    .add(der.clone())
                    .map_err(|e| ("ca_file", format!("unusable certificate: {e}")))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        } else {
            let verifier = AcceptAnyCertificate {
                algorithms: provider.signature_verification_algorithms,
            };
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth()
        };
        config.resumption = rustls::client::Resumption::disabled();
        let mut http_tls = config.clone();
        // HTTP/1.1 only, like load balancer health checks: one fresh connection per probe.
        http_tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(http_tls)
            .dns_resolver(Arc::new(PinnedResolver))
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            // No pool: every probe is a new connection (and a connection made for one
            // endpoint can never serve another's probe, although they share the client).
            .pool_max_idle_per_host(0)
            // For the certificate's expiry (`ProbeOutcome::cert_not_after`).
            .tls_info(true)
            .user_agent(concat!("geosteer-probe/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ("protocol", format!("HTTP client: {}", error_chain(&e))))?;
        Ok(Self {
            config: Arc::new(config),
            http,
            settings: settings.clone(),
        })
    }
}

/// The prober's TLS clients, one per distinct [`TlsSettings`]: every endpoint of a monitor (and
/// every monitor with the same settings) shares one root store, verifier and HTTP client —
/// about 10,000 endpoints would otherwise hold 10,000 copies of the public roots. Kept across
/// reloads; settings no longer used are dropped when the plan changes.
#[derive(Default)]
pub struct TlsRegistry {
    built: HashMap<TlsSettings, ProbeTls>,
}

impl TlsRegistry {
    /// The clients for a monitor: its loaded settings, else (a hand-made spec) loaded now,
    /// which reads `ca_file` (blocking; tests only).
    pub fn of(&mut self, spec: &MonitorSpec) -> Result<ProbeTls, String> {
        let settings = match &spec.tls {
            Some(s) => s.clone(),
            None => TlsSettings::load(spec.tls_verify, spec.ca_file.as_deref())
                .map_err(|(field, e)| format!("{field}: {e}"))?,
        };
        if let Some(t) = self.built.get(&settings) {
            return Ok(t.clone());
        }
        let t = ProbeTls::build(&settings).map_err(|(field, e)| format!("{field}: {e}"))?;
        self.built.insert(settings, t.clone());
        Ok(t)
    }

    /// Drops the clients of settings no monitor uses any more.
    pub fn retain(&mut self, used: &std::collections::HashSet<&TlsSettings>) {
        self.built.retain(|k, _| used.contains(k));
    }
}

impl PartialEq for ProbeTls {
    fn eq(&self, other: &Self) -> bool {
        self.settings == other.settings
    }
}

impl std::fmt::Debug for ProbeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProbeTls")
            .field("verify", &self.settings.verify)
            .field("ca_file", &self.settings.ca_file)
            .finish_non_exhaustive()
    }
}

tokio::task_local! {
    /// The address the HTTP(S) probe running in this task connects to.
    static PROBE_ADDR: SocketAddr;
}

/// The resolver of the shared HTTP(S) clients: every name resolves to the address of the probe
/// being run ([`PROBE_ADDR`]), so one client serves all endpoints of a monitor although their
/// URLs carry the same name (the TLS server name and Host header) and each must reach its own
/// address. One client per endpoint, pinned with `ClientBuilder::resolve`, cost ≈ 12 KiB per
/// endpoint (`PROTOCOL=http bench/probes.sh`, 10,000 endpoints: 240 MiB RSS, 125 MiB shared).
///
/// This relies on the connection being made inside the request's future (true with pooling
/// off: hyper-util connects in the caller's future; nothing is spawned before the connection
/// exists). Were that to change, the lookup fails closed: no address, a failed probe naming
/// this resolver, never a connection to the wrong endpoint.
struct PinnedResolver;

impl reqwest::dns::Resolve for PinnedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let addr = PROBE_ADDR.try_with(|a| *a);
        let name = name.as_str().to_string();
        Box::pin(async move {
            match addr {
                Ok(a) => Ok(Box::new(std::iter::once(a)) as reqwest::dns::Addrs),
                Err(_) => Err(format!(
                    "no probe address pinned for {name} (resolved outside the probe task)"
                )
                .into()),
            }
        })
    }
}

/// Unix time of a DER certificate's notAfter (`None` if it does not parse).
fn not_after(der: &[u8]) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// `tls_verify = false`: any certificate chain and name, but the handshake signatures are still
/// checked (the peer must hold the key of the certificate it presents).
#[derive(Debug)]
struct AcceptAnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::tls::TlsCache;

    fn spec(text: &str) -> MonitorSpec {
        let raw: crate::health::monitor::RawMonitor = toml::from_str(text).unwrap();
        MonitorSpec::from_raw(&raw).unwrap()
    }

    fn self_signed(name: &str) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn monitors_with_the_same_tls_settings_share_one_config() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, self_signed("a.example")).unwrap();
        let with_ca = format!("ca_file = {:?}", ca.display().to_string());
        let mut cache = TlsCache::default();
        let mut registry = TlsRegistry::default();
        let mut get = |text: &str| {
            let mut s = spec(text);
            s.load_tls(&mut cache).unwrap();
            s.tls.as_ref()?;
            Some(registry.of(&s).unwrap())
        };
        let a = get(&format!("protocol = \"https\"\n{with_ca}")).unwrap();
        let b = get(&format!("protocol = \"mqtts\"\nport = 8883\n{with_ca}")).unwrap();
        assert!(
            Arc::ptr_eq(&a.config, &b.config),
            "one root store per ca_file"
        );
        let public = get("protocol = \"https\"").unwrap();
        let any = get("protocol = \"https\"\ntls_verify = false").unwrap();
        assert!(!Arc::ptr_eq(&a.config, &public.config));
        assert!(!Arc::ptr_eq(&public.config, &any.config));
        // Plain http shares the default settings' client.
        let http = get("protocol = \"http\"").unwrap();
        assert!(Arc::ptr_eq(&public.config, &http.config));
        assert!(get("protocol = \"mqtt\"").is_none());
    }

    /// The prober keeps an endpoint's probe across a reload only if its spec is unchanged:
    /// a `ca_file` edited in place must count as a change.
    #[test]
    fn an_edited_ca_file_changes_the_settings() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, self_signed("a.example")).unwrap();
        let before = TlsSettings::load(true, Some(&ca)).unwrap();
        assert_eq!(before, TlsSettings::load(true, Some(&ca)).unwrap());
        std::fs::write(&ca, self_signed("b.example")).unwrap();
        assert_ne!(before, TlsSettings::load(true, Some(&ca)).unwrap());
        assert_ne!(before, TlsSettings::load(false, Some(&ca)).unwrap());
    }

    #[test]
    fn varints_round_trip() {
        for n in [0, 1, 127, 128, 16_383, 16_384, 2_097_151, 268_435_455] {
            let mut buf = Vec::new();
            put_varint(&mut buf, n);
            assert_eq!(get_varint(&buf), Some((n, buf.len())), "{n}");
        }
    }

    #[test]
    fn host_header_port_is_stripped() {
        assert_eq!(strip_port("example.com:8443"), "example.com");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("[::1]:443"), "::1");
        assert_eq!(strip_port("::1"), "::1");
    }

    #[test]
    fn connack_codes_are_named() {
        let v3 = check_connack(MqttVersion::V311, 0x20, &[0, 5]).unwrap_err();
        assert_eq!(v3, "CONNACK refused: not authorized (5)");
        let v5 = check_connack(MqttVersion::V5, 0x20, &[0, 0x87, 0]).unwrap_err();
        assert_eq!(v5, "CONNACK refused: not authorized (0x87)");
        assert!(check_connack(MqttVersion::V5, 0x20, &[0, 0, 3, 0x21, 0, 10]).is_ok());
        assert!(check_connack(MqttVersion::V5, 0x20, &[0, 0, 5, 0x21]).is_err());
    }
}

//! Probes against real servers on 127.0.0.1: TCP listeners, an HTTP(S) server written here
//! (tokio-rustls, rcgen certificates) and Debian's mosquitto broker (MQTT 3.1.1, 5 and TLS).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use geosteer::health::monitor::{MonitorSpec, RawMonitor};
use geosteer::health::tls::TlsSettings;
use geosteer::probing::probe::{Probe, ProbeOutcome, TlsRegistry};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const NAME: &str = "mqtt.example.test";

fn spec(text: &str) -> MonitorSpec {
    let raw: RawMonitor = toml::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"));
    MonitorSpec::from_raw(&raw).unwrap_or_else(|e| panic!("{text}: {e:?}"))
}

fn probe(text: &str, target: SocketAddr) -> Probe {
    Probe::new(&spec(text), &mut TlsRegistry::default(), target)
        .unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// Runs a probe and checks it kept to its timeout.
async fn run(probe: &Probe, timeout: Duration) -> ProbeOutcome {
    let start = Instant::now();
    let out = probe.run().await;
    let took = start.elapsed();
    assert!(
        took < timeout + Duration::from_millis(200),
        "probe took {took:?}, timeout {timeout:?}: {out:?}"
    );
    out
}

fn stage_names(out: &ProbeOutcome) -> Vec<&'static str> {
    out.stages.iter().map(|(s, _)| *s).collect()
}

fn error(out: &ProbeOutcome) -> String {
    out.error.clone().unwrap_or_default()
}

fn toml_path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

// ---------------------------------------------------------------------------------------------
// TCP

#[tokio::test]
async fn tcp_live_listener_is_ok() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let p = probe("protocol = \"tcp\"\nport = 1", addr);
    let out = run(&p, Duration::from_secs(1)).await;
    assert!(out.ok, "{out:?}");
    assert!(out.rtt > Duration::ZERO);
    assert_eq!(stage_names(&out), ["tcp"]);
    assert_eq!(out.error, None);
}

#[tokio::test]
async fn tcp_closed_port_fails_fast() {
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let p = probe("protocol = \"tcp\"\nport = 1\ntimeout = \"5s\"", addr);
    let out = run(&p, Duration::from_secs(5)).await;
    assert!(!out.ok);
    assert!(out.rtt < Duration::from_secs(1), "{out:?}");
    assert!(error(&out).contains("refused"), "{out:?}");
}

/// A listener that never accepts, with `listen(1)`: Linux queues backlog + 1 = 2 completed
/// connections, then drops further SYNs, so a connect neither completes nor is refused.
#[tokio::test]
async fn tcp_full_backlog_times_out() {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let bind: SocketAddr = "127.0.0.1:0".parse().unwrap();
    socket.bind(&bind.into()).unwrap();
    socket.listen(1).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();

    let mut fillers = Vec::new();
    let mut saturated = false;
    for _ in 0..64 {
        match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => fillers.push(stream),
            Ok(Err(e)) => panic!("filler connect failed: {e}"),
            Err(_) => {
                saturated = true;
                break;
            }
        }
    }
    assert!(saturated, "backlog never filled");
    eprintln!(
        "listen(1): {} connects completed, then connects hang",
        fillers.len()
    );

    let timeout = Duration::from_millis(300);
    let p = probe("protocol = \"tcp\"\nport = 1\ntimeout = \"300ms\"", addr);
    let out = run(&p, timeout).await;
    assert!(!out.ok, "{out:?}");
    assert!(error(&out).starts_with("timeout after 300ms"), "{out:?}");
    assert!(out.rtt >= timeout);
    drop(socket);
}

#[test]
fn protocol_none_is_not_probed() {
    let err = Probe::new(
        &spec("protocol = \"none\""),
        &mut TlsRegistry::default(),
        "127.0.0.1:1".parse().unwrap(),
    )
    .unwrap_err();
    assert_eq!(err, "protocol none is not probed");
}

// ---------------------------------------------------------------------------------------------
// HTTP(S) server

/// What the test server saw of one request.
#[derive(Debug, Clone, Default)]
struct Seen {
    sni: Option<String>,
    method: String,
    path: String,
    host: Option<String>,
    x_probe: Option<String>,
    /// The TLS handshake resumed an earlier session (no certificate was sent or checked).
    resumed: bool,
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// Serves /ok (200), /fail (503), /redirect (302 to /ok) and /slow (never answers).
async fn serve_http(tls: Option<tokio_rustls::TlsAcceptor>) -> (SocketAddr, Log) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    serve_http_on(listener, tls)
}

fn serve_http_on(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> (SocketAddr, Log) {
    let addr = listener.local_addr().unwrap();
    let log: Log = Arc::default();
    let server_log = log.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let log = server_log.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    None => handle_http(tcp, None, false, log).await,
                    Some(acceptor) => {
                        // Handshakes the probe rejects end here.
                        let Ok(stream) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let tls = stream.get_ref().1;
                        let sni = tls.server_name().map(str::to_string);
                        let resumed = tls.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
                        handle_http(stream, sni, resumed, log).await;
                    }
                }
            });
        }
    });
    (addr, log)
}

async fn handle_http<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    sni: Option<String>,
    resumed: bool,
    log: Log,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let mut seen = Seen {
        sni,
        resumed,
        method: first.next().unwrap_or_default().to_string(),
        path: first.next().unwrap_or_default().to_string(),
        ..Seen::default()
    };
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "host" => seen.host = Some(v.trim().to_string()),
                "x-probe" => seen.x_probe = Some(v.trim().to_string()),
                _ => {}
            }
        }
    }
    let path = seen.path.clone();
    log.lock().unwrap().push(seen);
    let (status, extra) = match path.as_str() {
        "/ok" => ("200 OK", ""),
        "/fail" => ("503 Service Unavailable", ""),
        "/redirect" => ("302 Found", "Location: /ok\r\n"),
        "/slow" => {
            // Hold the connection without answering until the client goes away.
            let _ = s.read(&mut chunk).await;
            return;
        }
        _ => ("404 Not Found", ""),
    };
    let body = "a body the probe never reads";
    let response = format!(
        "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(response.as_bytes()).await;
    let _ = s.shutdown().await;
}

fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn acceptor(cert_pem: &str, key_pem: &str) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// An HTTPS server with a self-signed certificate for [`NAME`], its PEM in a temp file.
struct HttpsFixture {
    addr: SocketAddr,
    log: Log,
    _dir: tempfile::TempDir,
    ca_file: PathBuf,
    /// The certificate's notAfter, Unix time.
    not_after: i64,
}

/// A self-signed certificate for [`NAME`] valid until 2031-01-02, and its notAfter (Unix time).
fn certificate() -> (rcgen::Certificate, KeyPair, i64) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![NAME.to_string()]).unwrap();
    params.not_after = rcgen::date_time_ymd(2031, 1, 2);
    let not_after = params.not_after.unix_timestamp();
    (params.self_signed(&key).unwrap(), key, not_after)
}

async fn https_fixture() -> HttpsFixture {
    let (cert, key, not_after) = certificate();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("self-signed.pem");
    std::fs::write(&ca_file, cert.pem()).unwrap();
    let (addr, log) = serve_http(Some(acceptor(&cert.pem(), &key.serialize_pem()))).await;
    HttpsFixture {
        addr,
        log,
        _dir: dir,
        ca_file,
        not_after,
    }
}

impl HttpsFixture {
    fn last(&self) -> Seen {
        self.log
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("no request seen")
    }
    fn requests(&self) -> usize {
        self.log.lock().unwrap().len()
    }
}

// ---------------------------------------------------------------------------------------------
// HTTPS

#[tokio::test]
async fn https_verified_with_ca_file() {
    let f = https_fixture().await;
    let text = format!(
        "protocol = \"https\"\npath = \"/ok\"\nsni = \"{NAME}\"\nca_file = {}",
        toml_path(&f.ca_file)
    );
    let out = run(&probe(&text, f.addr), Duration::from_secs(1)).await;
    assert!(out.ok, "{out:?}");
    assert_eq!(stage_names(&out), ["status"]);
    assert!(out.rtt > Duration::ZERO);
    assert_eq!(
        out.cert_not_after,
        Some(f.not_after),
        "the certificate's expiry"
    );
    let seen = f.last();
    assert_eq!(seen.sni.as_deref(), Some(NAME));
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.path, "/ok");
    assert_eq!(seen.host, Some(format!("{NAME}:{}", f.addr.port())));
}

#[tokio::test]
async fn https_public_roots_reject_a_private_certificate() {
    let f = https_fixture().await;
    let text = format!("protocol = \"https\"\npath = \"/ok\"\nsni = \"{NAME}\"");
    let out = run(&probe(&text, f.addr), Duration::from_secs(1)).await;
    assert!(!out.ok, "{out:?}");
    assert!(error(&out).contains("UnknownIssuer"), "{out:?}");
    assert_eq!(f.requests(), 0);
}

#[tokio::test]
async fn https_without_verification_accepts_any_certificate() {
    let f = https_fixture().await;
    // No ca_file, no name: the certificate is neither trusted nor valid for 127.0.0.1.
    let text = "protocol = \"https\"\npath = \"/ok\"\ntls_verify = false";
    let out = run(&probe(text, f.addr), Duration::from_secs(1)).await;
    assert!(out.ok, "{out:?}");
    assert_eq!(f.last().sni, None, "no SNI for an IP address");
}

#[tokio::test]
async fn https_status_is_judged_by_expected_status() {
    let f = https_fixture().await;
    let base = format!(
        "protocol = \"https\"\npath = \"/fail\"\nsni = \"{NAME}\"\nca_file = {}",
        toml_path(&f.ca_file)
    );
    let out = run(&probe(&base, f.addr), Duration::from_secs(1)).await;
    assert!(!out.ok, "{out:?}");
    assert_eq!(error(&out), "status 503 not in expected 200-299");
    assert_eq!(stage_names(&out), ["status"]);

    let text = format!("{base}\nexpected_status = [\"200-299\", \"503\"]");
    let out = run(&probe(&text, f.addr), Duration::from_secs(1)).await;
    assert!(out.ok, "{out:?}");
}

#[tokio::test]
async fn https_wrong_server_name_is_rejected() {
    let f = https_fixture().await;
    let text = format!(
        "protocol = \"https\"\npath = \"/ok\"\nsni = \"other.example\"\nca_file = {}",
        toml_path(&f.ca_file)
    );
    let out = run(&probe(&text, f.addr), Duration::from_secs(1)).await;
    assert!(!out.ok, "{out:?}");
    assert!(error(&out).contains("not valid for name"), "{out:?}");

    // No name at all: the certificate is not valid for 127.0.0.1 either.
    let text = format!(
        "protocol = \"https\"\npath = \"/ok\"\nca_file = {}",
        toml_path(&f.ca_file)
    );
    let out = run(&probe(&text, f.addr), Duration::from_secs(1)).await;
    assert!(!out.ok, "{out:?}");
    assert_eq!(f.requests(), 0);
}

#[tokio::test]
async fn https_host_header_names_the_server() {
    let f = https_fixture().await;
    // The Host header (any case) is the URL authority and SNI when no sni is set.
    let text = format!(
        "protocol = \"https\"\npath = \"/ok\"\nca_file = {}\n\
         headers = {{ host = \"{NAME}\", X-Probe = \"geosteer\" }}",
        toml_path(&f.ca_file)
    );
    let out = run(&probe(&text, f.addr), Duration::from_secs(1)).await;
    assert!(out.ok, "{out:?}");
    let seen = f.last();
    assert_eq!(seen.sni.as_deref(), Some(NAME));
    assert_eq!(seen.host.as_deref(), Some(NAME), "Host sent as configured");
    assert_eq!(seen.x_probe.as_deref(), Some("geosteer"));

    // An explicit sni wins for TLS; the Host header is still sent as configured.
    let text = format!(
        "protocol = \"https\"\npath = \"/ok\"\nsni = \"{NAME}\"\nca_file = {}\n\
         headers = {{ Host = \"virtual.example:8443\" }}",
        toml_path(&f.ca_file)
    );
    let out = run(&probe(&text, f.addr), Duration::from_secs(1)).await;
    assert!(out.ok, "{out:?}");
    let seen = f.last();
    assert_eq!(seen.sni.as_deref(), Some(NAME));
    assert_eq!(seen.host.as_deref(), Some("virtual.example:8443"));
}

/// Every probe checks the certificate: none resumes a TLS session, neither the same endpoint's
/// next probe nor another endpoint's probe sharing the monitor's TLS settings. (The fixture's
/// rustls server offers resumption, and a client with rustls' defaults takes it from the second
/// handshake on; a resumed handshake sends no certificate, so an expired one would go unseen.)
#[tokio::test]
async fn https_probes_never_resume_a_session() {
    let f = https_fixture().await;
    let text = format!(
        "protocol = \"https\"\npath = \"/ok\"\nsni = \"{NAME}\"\nca_file = {}",
        toml_path(&f.ca_file)
    );
    let mut spec = spec(&text);
    let mut tls = TlsRegistry::default();
    spec.tls = Some(TlsSettings::load(true, Some(&f.ca_file)).unwrap());
    let first = Probe::new(&spec, &mut tls, f.addr).unwrap();
    let second = Probe::new(&spec, &mut tls, f.addr).unwrap();
    for p in [&first, &first, &second, &first, &second] {
        let out = run(p, Duration::from_secs(1)).await;
        assert!(out.ok, "{out:?}");
    }
    let resumed: Vec<bool> = f.log.lock().unwrap().iter().map(|s| s.resumed).collect();
    assert_eq!(resumed, [false; 5], "handshakes that resumed a session");
}

/// End to end: geosteer probing an HTTPS endpoint exports when its certificate expires, in
/// `/metrics` (for an alert weeks ahead) and in `/api/status`; plain TCP probes export none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certificate_expiry_is_exported() {
    let f = https_fixture().await;
    let dir = tempfile::tempdir().unwrap();
    let zones = dir.path().join("zones");
    std::fs::create_dir_all(&zones).unwrap();
    std::fs::write(
        zones.join("c.test.zone"),
        "$ORIGIN c.test.\n$TTL 60\n@ IN SOA ns.c.test. h.c.test. 1 2 3 4 30\n@ IN NS ns.c.test.\nns IN A 127.0.0.1\n",
    )
    .unwrap();
    std::fs::write(
        zones.join("c.test.toml"),
        format!(
            "[[profile]]\nname = \"mqtt\"\nmethod = \"priority\"\n\
             [[profile.endpoint]]\nname = \"tls\"\ntargets = [\"127.0.0.1\"]\n\
             [profile.endpoint.monitor]\nprotocol = \"https\"\nport = {}\npath = \"/ok\"\nsni = \"{NAME}\"\nca_file = {}\n\
             [[profile.endpoint]]\nname = \"plain\"\ntargets = [\"127.0.0.1\"]\n\
             [profile.endpoint.monitor]\nprotocol = \"tcp\"\nport = {}\n",
            f.addr.port(),
            toml_path(&f.ca_file),
            f.addr.port(),
        ),
    )
    .unwrap();
    let s = tokio::task::spawn_blocking(move || {
        common::Server::start_with(common::Opts {
            zones_dir: Some(zones),
            ..Default::default()
        })
    })
    .await
    .unwrap();
    let admin = s.admin.expect("admin API address");
    // HTTP/1.0 by hand: the admin API is plain HTTP and the reply ends with the connection.
    let get = |path: &str| {
        let request = format!("GET {path} HTTP/1.0\r\nHost: {admin}\r\n\r\n");
        async move {
            let mut tcp = TcpStream::connect(admin).await.ok()?;
            tcp.write_all(request.as_bytes()).await.ok()?;
            let mut reply = String::new();
            tcp.read_to_string(&mut reply).await.ok()?;
            Some(reply.split_once("\r\n\r\n")?.1.to_string())
        }
    };
    let name = "geosteer_endpoint_certificate_expiry_timestamp_seconds";
    let want = format!("{name}{{endpoint=\"mqtt.c.test./tls\"}} {}", f.not_after);
    let deadline = Instant::now() + Duration::from_secs(15);
    let metrics = loop {
        let body = get("/metrics").await.unwrap_or_default();
        if body.lines().any(|l| l == want) || Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let lines: Vec<&str> = metrics.lines().filter(|l| l.starts_with(name)).collect();
    assert_eq!(lines, [want.as_str()], "only the https endpoint has one");
    let status: serde_json::Value =
        serde_json::from_str(&get("/api/status").await.expect("status")).unwrap();
    let endpoints = status["profiles"][0]["endpoints"]
        .as_array()
        .expect("endpoints");
    let expiry = |n: &str| {
        endpoints
            .iter()
            .find(|e| e["name"] == n)
            .map(|e| e["cert_not_after_unix"].clone())
    };
    assert_eq!(expiry("tls"), Some(serde_json::json!(f.not_after)));
    assert_eq!(expiry("plain"), Some(serde_json::Value::Null));
    drop(s);
}

#[test]
fn bad_ca_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let target: SocketAddr = "127.0.0.1:443".parse().unwrap();
    let missing = dir.path().join("missing.pem");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let broken = dir.path().join("broken.pem");
    std::fs::write(&broken, "-----BEGIN CERTIFICATE-----\nAAAA\n").unwrap();
    for (protocol, file) in [("https", &missing), ("https", &garbage), ("mqtts", &broken)] {
        let text = format!("protocol = \"{protocol}\"\nca_file = {}", toml_path(file));
        let err = Probe::new(&spec(&text), &mut TlsRegistry::default(), target).unwrap_err();
        assert!(err.contains(&file.display().to_string()), "{err}");
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP

/// Endpoints of one monitor share one HTTP client, and their URLs carry the same name (here
/// from the Host header; it resolves nowhere): each probe must still reach its own endpoint's
/// address, also when probes of both run at the same time.
#[tokio::test]
async fn http_probes_sharing_a_client_reach_their_own_address() {
    // Two servers on the same port of two loopback addresses: only the address tells them apart.
    let (a, b) = loop {
        let a = TcpListener::bind("127.0.0.2:0").await.unwrap();
        let port = a.local_addr().unwrap().port();
        if let Ok(b) = TcpListener::bind(("127.0.0.3", port)).await {
            break (a, b);
        }
    };
    let (addr_a, log_a) = serve_http_on(a, None);
    let (addr_b, log_b) = serve_http_on(b, None);
    let text = format!("protocol = \"http\"\npath = \"/ok\"\nheaders = {{ Host = \"{NAME}\" }}");
    let mut spec = spec(&text);
    let mut tls = TlsRegistry::default();
    spec.tls = Some(TlsSettings::load(true, None).unwrap());
    let (probe_a, probe_b) = (
        Probe::new(&spec, &mut tls, addr_a).unwrap(),
        Probe::new(&spec, &mut tls, addr_b).unwrap(),
    );
    for round in 0..10 {
        let (x, y) = tokio::join!(probe_a.run(), probe_b.run());
        assert!(x.ok && y.ok, "round {round}: {x:?} {y:?}");
    }
    for _ in 0..5 {
        assert!(probe_a.run().await.ok);
    }
    let requests = |log: &Log| {
        let log = log.lock().unwrap();
        assert!(log.iter().all(|s| s.host.as_deref() == Some(NAME)));
        log.len()
    };
    assert_eq!(
        (requests(&log_a), requests(&log_b)),
        (15, 10),
        "requests seen by A, B"
    );
}

#[tokio::test]
async fn http_against_a_plain_server() {
    let (addr, log) = serve_http(None).await;
    let last = || log.lock().unwrap().last().cloned().unwrap();

    let out = run(
        &probe("protocol = \"http\"\npath = \"/ok\"", addr),
        Duration::from_secs(1),
    )
    .await;
    assert!(out.ok, "{out:?}");
    assert_eq!(stage_names(&out), ["status"]);
    assert_eq!(
        last().host,
        Some(addr.to_string()),
        "Host is the target address"
    );

    let text = "protocol = \"http\"\npath = \"/ok\"\nmethod = \"HEAD\"";
    let out = run(&probe(text, addr), Duration::from_secs(1)).await;
    assert!(out.ok, "{out:?}");
    assert_eq!(last().method, "HEAD");

    let out = run(
        &probe("protocol = \"http\"\npath = \"/fail\"", addr),
        Duration::from_secs(1),
    )
    .await;
    assert!(!out.ok);
    assert!(error(&out).contains("503"), "{out:?}");

    // Redirects are not followed: the 302 itself is judged.
    let before = log.lock().unwrap().len();
    let out = run(
        &probe("protocol = \"http\"\npath = \"/redirect\"", addr),
        Duration::from_secs(1),
    )
    .await;
    assert!(!out.ok, "{out:?}");
    assert!(error(&out).contains("302"), "{out:?}");
    let text = "protocol = \"http\"\npath = \"/redirect\"\nexpected_status = [\"300-399\"]";
    let out = run(&probe(text, addr), Duration::from_secs(1)).await;
    assert!(out.ok, "{out:?}");
    assert_eq!(log.lock().unwrap().len(), before + 2, "no request to /ok");

    // Host header configured on plain http: sent verbatim, connection still to the target.
    let text = "protocol = \"http\"\npath = \"/ok\"\nheaders = { HOST = \"app.example.test\" }";
    let out = run(&probe(text, addr), Duration::from_secs(1)).await;
    assert!(out.ok, "{out:?}");
    assert_eq!(last().host.as_deref(), Some("app.example.test"));
}

#[tokio::test]
async fn http_unanswered_request_times_out() {
    let (addr, _log) = serve_http(None).await;
    let timeout = Duration::from_millis(300);
    let text = "protocol = \"http\"\npath = \"/slow\"\ntimeout = \"300ms\"";
    let out = run(&probe(text, addr), timeout).await;
    assert!(!out.ok, "{out:?}");
    assert!(error(&out).starts_with("timeout after 300ms"), "{out:?}");
    assert!(out.stages.is_empty());
}

// ---------------------------------------------------------------------------------------------
// MQTT: Debian's mosquitto

fn find_program(name: &str, debian_path: &str) -> PathBuf {
    if Path::new(debian_path).exists() {
        return PathBuf::from(debian_path);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "{name} not found ({debian_path}); these tests need it: apt-get install mosquitto"
            )
        })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A mosquitto broker on 127.0.0.1, killed (by PID) when dropped.
struct Mosquitto {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Starts a broker; `extra` is added to the listener's configuration, `files` are written
    /// to its directory first (name, contents).
    async fn start(extra: &str, files: &[(&str, &str)]) -> Self {
        let program = find_program("mosquitto", "/usr/sbin/mosquitto");
        let dir = tempfile::tempdir().unwrap();
        for (name, contents) in files {
            std::fs::write(dir.path().join(name), contents).unwrap();
        }
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        // `user root`: when the tests run as root, stay root so the 0700 temp dir stays readable.
        let conf = format!(
            "user root\npersistence false\nlog_dest stderr\nlog_type all\n\
             listener {port} 127.0.0.1\n{extra}\n"
        );
        let conf_path = dir.path().join("mosquitto.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let log = std::fs::File::create(dir.path().join("mosquitto.log")).unwrap();
        let child = Command::new(program)
            .arg("-c")
            .arg(&conf_path)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting mosquitto: {e} (apt-get install mosquitto)"));
        let mut broker = Mosquitto { child, addr, dir };
        broker.wait_ready().await;
        broker
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("mosquitto exited ({status}):\n{}", self.log());
            }
            if let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(self.addr))
                    .await
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto not listening on {} after 10s:\n{}",
                self.addr,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn mqtt_anonymous_broker_accepts_311_and_5() {
    let broker = Mosquitto::start("allow_anonymous true", &[]).await;
    for version in ["3.1.1", "5"] {
        let text = format!("protocol = \"mqtt\"\nmqtt_version = \"{version}\"");
        let out = run(&probe(&text, broker.addr), Duration::from_secs(1)).await;
        assert!(out.ok, "MQTT {version}: {out:?}\n{}", broker.log());
        assert_eq!(stage_names(&out), ["tcp", "connack"], "{version}");
        assert_eq!(out.rtt, out.stages[1].1);
        assert!(out.rtt > Duration::ZERO);
    }
    // A long prefix is cut so the client id stays within 23 bytes (mosquitto accepts longer
    // ids, so this checks that the CONNECT stays well-formed).
    let text = "protocol = \"mqtt\"\nclient_id_prefix = \"a-very-long-client-id-prefix-\"";
    let out = run(&probe(text, broker.addr), Duration::from_secs(1)).await;
    assert!(out.ok, "{out:?}");
    let log = broker.log();
    assert!(log.contains("geosteer-probe-"), "{log}");
    let id: String = log
        .split_whitespace()
        .find(|w| w.starts_with("a-very-long-clien"))
        .unwrap_or_else(|| panic!("no client id in the log:\n{log}"))
        .to_string();
    assert_eq!(id.len(), 23, "{id}");
}

#[tokio::test]
async fn mqtt_credentials_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("passwd");
    let passwd = find_program("mosquitto_passwd", "/usr/bin/mosquitto_passwd");
    let status = Command::new(passwd)
        .args(["-b", "-c"])
        .arg(&pw)
        .args(["probe-user", "s3cret"])
        .status()
        .expect("mosquitto_passwd (apt-get install mosquitto)");
    assert!(status.success(), "mosquitto_passwd failed: {status}");
    let pw_text = std::fs::read_to_string(&pw).unwrap();
    let broker = Mosquitto::start(
        "allow_anonymous false\npassword_file passwd",
        &[("passwd", &pw_text)],
    )
    .await;

    for (version, refusal) in [
        ("3.1.1", "CONNACK refused: not authorized (5)"),
        ("5", "CONNACK refused: not authorized (0x87)"),
    ] {
        let base = format!("protocol = \"mqtt\"\nmqtt_version = \"{version}\"");
        let out = run(&probe(&base, broker.addr), Duration::from_secs(1)).await;
        assert!(!out.ok, "{out:?}");
        assert_eq!(error(&out), refusal, "{version}");
        assert_eq!(stage_names(&out), ["tcp", "connack"]);

        let wrong = format!("{base}\nusername = \"probe-user\"\npassword = \"wrong\"");
        let out = run(&probe(&wrong, broker.addr), Duration::from_secs(1)).await;
        assert!(!out.ok, "{out:?}");
        assert!(error(&out).starts_with("CONNACK refused"), "{out:?}");

        let good = format!("{base}\nusername = \"probe-user\"\npassword = \"s3cret\"");
        let out = run(&probe(&good, broker.addr), Duration::from_secs(1)).await;
        assert!(out.ok, "MQTT {version}: {out:?}\n{}", broker.log());
    }
}

#[tokio::test]
async fn mqtt_silent_listener_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s); // accepted, read nothing, answer nothing
        }
    });
    let timeout = Duration::from_millis(300);
    for version in ["3.1.1", "5"] {
        let text =
            format!("protocol = \"mqtt\"\nmqtt_version = \"{version}\"\ntimeout = \"300ms\"");
        let out = run(&probe(&text, addr), timeout).await;
        assert!(!out.ok, "{out:?}");
        assert_eq!(error(&out), "timeout after 300ms (waiting for CONNACK)");
        assert_eq!(stage_names(&out), ["tcp"]);
    }
}

#[tokio::test]
async fn mqtt_listener_that_hangs_up_fails() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 64];
            let _ = s.read(&mut buf).await;
            drop(s);
        }
    });
    let out = run(&probe("protocol = \"mqtt\"", addr), Duration::from_secs(1)).await;
    assert!(!out.ok, "{out:?}");
    assert_eq!(error(&out), "connection closed before CONNACK");
}

// ---------------------------------------------------------------------------------------------
// MQTTS

/// A CA and a server certificate it signed for [`NAME`] and 127.0.0.1: (ca, cert, key) PEM.
fn ca_and_server_cert() -> (String, String, String) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "geosteer test CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();

    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec![NAME.to_string(), "127.0.0.1".to_string()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, NAME);
    let cert = params.signed_by(&key, &*ca).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

/// MQTTS probes share the monitor's TLS settings like HTTPS ones and must not resume either.
/// mosquitto does not say whether a handshake resumed, so the broker here is a rustls server
/// that records it and answers any CONNECT with an accepting CONNACK.
#[tokio::test]
async fn mqtts_probes_never_resume_a_session() {
    let (cert, key, not_after) = certificate();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, cert.pem()).unwrap();
    let tls = acceptor(&cert.pem(), &key.serialize_pem());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let resumed: Arc<Mutex<Vec<bool>>> = Arc::default();
    let seen = resumed.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (tls, seen) = (tls.clone(), seen.clone());
            tokio::spawn(async move {
                let Ok(mut s) = tls.accept(tcp).await else {
                    return;
                };
                let kind = s.get_ref().1.handshake_kind();
                seen.lock()
                    .unwrap()
                    .push(kind == Some(rustls::HandshakeKind::Resumed));
                let mut buf = [0u8; 512];
                if s.read(&mut buf).await.unwrap_or(0) == 0 {
                    return;
                }
                // CONNACK: no session present, return code 0 (accepted).
                let _ = s.write_all(&[0x20, 0x02, 0x00, 0x00]).await;
                let _ = s.read(&mut buf).await;
            });
        }
    });
    let text = format!(
        "protocol = \"mqtts\"\nsni = \"{NAME}\"\nca_file = {}",
        toml_path(&ca_file)
    );
    let mut spec = spec(&text);
    let mut tls = TlsRegistry::default();
    spec.tls = Some(TlsSettings::load(true, Some(&ca_file)).unwrap());
    let (first, second) = (
        Probe::new(&spec, &mut tls, addr).unwrap(),
        Probe::new(&spec, &mut tls, addr).unwrap(),
    );
    for p in [&first, &first, &second, &first] {
        let out = run(p, Duration::from_secs(1)).await;
        assert!(out.ok, "{out:?}");
        assert_eq!(
            out.cert_not_after,
            Some(not_after),
            "the certificate's expiry"
        );
    }
    assert_eq!(
        *resumed.lock().unwrap(),
        [false; 4],
        "handshakes that resumed"
    );
}

#[tokio::test]
async fn mqtts_with_a_private_ca() {
    let (ca, cert, key) = ca_and_server_cert();
    let broker = Mosquitto::start(
        "allow_anonymous true\ncafile ca.pem\ncertfile server.pem\nkeyfile server.key",
        &[("ca.pem", &ca), ("server.pem", &cert), ("server.key", &key)],
    )
    .await;
    let ca_file = broker.dir.path().join("ca.pem");

    for version in ["3.1.1", "5"] {
        let text = format!(
            "protocol = \"mqtts\"\nmqtt_version = \"{version}\"\nsni = \"{NAME}\"\nca_file = {}",
            toml_path(&ca_file)
        );
        let out = run(&probe(&text, broker.addr), Duration::from_secs(1)).await;
        assert!(out.ok, "MQTT {version}: {out:?}\n{}", broker.log());
        assert_eq!(stage_names(&out), ["tcp", "tls", "connack"]);
        assert!(out.stages[0].1 <= out.stages[1].1 && out.stages[1].1 <= out.stages[2].1);
    }

    // The monitor's host is the server name when sni is not set; else the IP (also in the cert).
    let text = format!(
        "protocol = \"mqtts\"\nhost = \"{NAME}\"\nca_file = {}",
        toml_path(&ca_file)
    );
    let out = run(&probe(&text, broker.addr), Duration::from_secs(1)).await;
    assert!(out.ok, "{out:?}");
    let text = format!("protocol = \"mqtts\"\nca_file = {}", toml_path(&ca_file));
    let out = run(&probe(&text, broker.addr), Duration::from_secs(1)).await;
    assert!(out.ok, "{out:?}");

    // Public roots only: the private CA is unknown.
    let text = format!("protocol = \"mqtts\"\nsni = \"{NAME}\"");
    let out = run(&probe(&text, broker.addr), Duration::from_secs(1)).await;
    assert!(!out.ok, "{out:?}");
    assert!(error(&out).contains("UnknownIssuer"), "{out:?}");
    assert_eq!(stage_names(&out), ["tcp"]);

    // Wrong name with the right CA.
    let text = format!(
        "protocol = \"mqtts\"\nsni = \"other.example\"\nca_file = {}",
        toml_path(&ca_file)
    );
    let out = run(&probe(&text, broker.addr), Duration::from_secs(1)).await;
    assert!(!out.ok, "{out:?}");
    assert!(error(&out).contains("not valid for name"), "{out:?}");

    // No verification.
    let text = "protocol = \"mqtts\"\ntls_verify = false";
    let out = run(&probe(text, broker.addr), Duration::from_secs(1)).await;
    assert!(out.ok, "{out:?}");
}

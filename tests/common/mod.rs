//! Test harness: starts the real `geosteer` binary on free loopback ports and talks to it with
//! real clients (`dig`, raw sockets carrying hickory-encoded messages).
//!
//! The server binds port 0 and logs the ports it got (JSON log lines on stderr); the harness
//! reads them back, so tests never collide on fixed ports and never sleep blindly: every wait
//! is a poll with a deadline.

#![allow(dead_code, unused_imports)] // each test binary uses a different subset

pub mod embedded;
pub mod etcd;
pub mod fleet;
pub mod regions;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub use hickory_server::proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
pub use hickory_server::proto::rr::{Name, RData, RecordType};

/// Repository root (where Cargo.toml is).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_geosteer"))
}

/// A running geosteer, killed (by PID, only this child) on drop.
pub struct Server {
    child: Child,
    /// First bound UDP address on 127.0.0.1.
    pub udp4: SocketAddr,
    /// First bound TCP address on 127.0.0.1.
    pub tcp4: SocketAddr,
    /// Bound UDP address on ::1, if configured.
    pub udp6: Option<SocketAddr>,
    /// Admin API address.
    pub admin: Option<SocketAddr>,
    /// The config file the server runs with.
    pub config: PathBuf,
    /// Log lines seen so far (JSON).
    pub log: mpsc::Receiver<String>,
    /// Temporary directory holding config (and anything a test writes).
    pub dir: tempfile::TempDir,
}

/// Options for [`Server::start_with`].
#[derive(Default)]
pub struct Opts {
    /// Extra lines appended to the `[server]` table.
    pub server_extra: String,
    /// Zones directory (default: the repository's `zones/`).
    pub zones_dir: Option<PathBuf>,
    /// Also listen on ::1.
    pub ipv6: bool,
    /// Further TOML tables appended to the config (e.g. `[routing]`).
    pub extra: String,
    /// Extra lines inside `[admin]`.
    pub admin_extra: String,
    /// State file (default: in the server's temp dir).
    pub state_file: Option<PathBuf>,
    /// Use this config file text instead of generating one (ports must be 0).
    pub config_path: Option<PathBuf>,
}

/// The admin token test servers use.
pub const TOKEN: &str = "test-token-0123456789";

impl Server {
    /// Starts geosteer with the repository's zones on free ports.
    pub fn start() -> Self {
        Self::start_with(Opts {
            ipv6: true,
            ..Default::default()
        })
    }

    /// Starts geosteer with options.
    pub fn start_with(opts: Opts) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let zones = opts.zones_dir.unwrap_or_else(|| repo().join("zones"));
        let (udp, tcp) = if opts.ipv6 {
            (
                r#"["127.0.0.1:0", "[::1]:0"]"#,
                r#"["127.0.0.1:0", "[::1]:0"]"#,
            )
        } else {
            (r#"["127.0.0.1:0"]"#, r#"["127.0.0.1:0"]"#)
        };
        let geo = repo().join("geo");
        let config = format!(
            "[server]\nudp = {udp}\ntcp = {tcp}\nworkers = 2\n{}\n[zones]\ndirectory = {:?}\n[log]\nlevel = \"info\"\nformat = \"json\"\n[geoip]\ncity = {:?}\nasn = {:?}\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\nstate_file = {:?}\ndrill_samples = [\"81.2.69.0/24\", \"216.160.83.0/24\", \"1.0.16.0/24\"]\n{}\n{}\n",
            opts.server_extra,
            zones.display().to_string(),
            geo.join("sample-city.mmdb").display().to_string(),
            geo.join("sample-asn.mmdb").display().to_string(),
            opts.state_file
                .clone()
                .unwrap_or_else(|| dir.path().join("state.json"))
                .display()
                .to_string(),
            opts.admin_extra,
            opts.extra,
        );
        let path = match &opts.config_path {
            Some(p) => p.clone(),
            None => {
                let p = dir.path().join("geosteer.toml");
                std::fs::write(&p, config).expect("write config");
                p
            }
        };
        let mut child = Command::new(bin())
            .args(["serve", "--config"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start geosteer");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut udp4 = None;
        let mut tcp4 = None;
        let mut udp6 = None;
        let mut admin = None;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(l) => l,
                Err(_) => {
                    let _ = child.kill();
                    panic!("geosteer did not report serving within 20 s");
                }
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            let f = &v["fields"];
            match f["message"].as_str() {
                Some("listening") => {
                    let addr: SocketAddr = f["addr"].as_str().unwrap().parse().unwrap();
                    match (f["proto"].as_str(), addr.is_ipv4()) {
                        (Some("udp"), true) if udp4.is_none() => udp4 = Some(addr),
                        (Some("udp"), false) if udp6.is_none() => udp6 = Some(addr),
                        (Some("tcp"), true) if tcp4.is_none() => tcp4 = Some(addr),
                        _ => {}
                    }
                }
                Some("admin API listening") => {
                    admin = f["addr"].as_str().and_then(|a| a.parse().ok());
                }
                Some("geosteer serving") => break,
                _ => {}
            }
        }
        Server {
            child,
            udp4: udp4.expect("udp address logged"),
            tcp4: tcp4.expect("tcp address logged"),
            udp6,
            admin,
            log: rx,
            dir,
            config: path,
        }
    }

    /// Runs `dig` against this server's IPv4 address.
    pub fn dig(&self, args: &[&str]) -> Dig {
        dig_at(self.udp4, args)
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// PID of the server.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal and waits (with a deadline) for the exit status.
    pub fn signal_and_wait(&mut self, sig: &str, within: Duration) -> Option<ExitStatus> {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{sig} failed");
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parsed output of one `dig` run.
#[derive(Debug, Default)]
pub struct Dig {
    /// Whole output, for assertion messages.
    pub raw: String,
    /// `status:` of the header.
    pub status: String,
    /// Header flags (`qr`, `aa`, `tc`, …).
    pub flags: Vec<String>,
    /// Question section line(s), as printed.
    pub question: Vec<String>,
    /// Answer section records, whitespace-normalised.
    pub answer: Vec<String>,
    /// Authority section records.
    pub authority: Vec<String>,
    /// Additional section records.
    pub additional: Vec<String>,
    /// The `; EDNS:` line, if an OPT came back.
    pub edns: Option<String>,
    /// The `; CLIENT-SUBNET:` value, if echoed.
    pub client_subnet: Option<String>,
    /// dig said it retried over TCP.
    pub retried_tcp: bool,
}

impl Dig {
    /// Whether a header flag is set.
    pub fn flag(&self, f: &str) -> bool {
        self.flags.iter().any(|x| x == f)
    }
}

/// Runs `dig @addr -p port` with the given extra arguments and parses its output.
pub fn dig_at(addr: SocketAddr, args: &[&str]) -> Dig {
    let out = Command::new("dig")
        .arg(format!("@{}", addr.ip()))
        .args([
            "-p",
            &addr.port().to_string(),
            "+time=2",
            "+tries=1",
            "+norec",
        ])
        .args(args)
        .output()
        .expect("dig is installed (bind9-dnsutils); .ci/run installs it");
    let raw = String::from_utf8_lossy(&out.stdout).into_owned();
    parse_dig(&raw)
}

/// Parses dig's default output format.
pub fn parse_dig(raw: &str) -> Dig {
    let mut d = Dig {
        raw: raw.to_string(),
        ..Default::default()
    };
    let mut section: Option<&str> = None;
    for line in raw.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix(";; ->>HEADER<<-") {
            if let Some(s) = rest.split("status: ").nth(1) {
                d.status = s.split(',').next().unwrap_or("").trim().to_string();
            }
        } else if let Some(rest) = t.strip_prefix(";; flags:") {
            let flags = rest.split(';').next().unwrap_or("");
            d.flags = flags.split_whitespace().map(str::to_string).collect();
        } else if t.starts_with("; EDNS:") {
            d.edns = Some(t.to_string());
        } else if let Some(rest) = t.strip_prefix("; CLIENT-SUBNET:") {
            d.client_subnet = Some(rest.trim().to_string());
        } else if t.starts_with(";; Truncated, retrying in TCP mode") {
            d.retried_tcp = true;
        } else if t == ";; QUESTION SECTION:" {
            section = Some("q");
        } else if t == ";; ANSWER SECTION:" {
            section = Some("an");
        } else if t == ";; AUTHORITY SECTION:" {
            section = Some("ns");
        } else if t == ";; ADDITIONAL SECTION:" {
            section = Some("ar");
        } else if t.is_empty() {
            section = None;
        } else if let Some(s) = section {
            let norm = t.split_whitespace().collect::<Vec<_>>().join(" ");
            match s {
                "q" => d.question.push(norm),
                "an" => d.answer.push(norm),
                "ns" => d.authority.push(norm),
                _ => d.additional.push(norm),
            }
        }
    }
    d
}

/// Builds a query with hickory's message types.
pub fn query(name: &str, rtype: RecordType) -> Message {
    let mut m = Message::query();
    m.metadata.id = 0x4242;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    m
}

/// Sends raw bytes over UDP; `None` if nothing came back within `wait`.
pub fn udp_raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let bind = if addr.is_ipv4() {
        "127.0.0.1:0"
    } else {
        "[::1]:0"
    };
    let s = UdpSocket::bind(bind).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    s.send_to(bytes, addr).unwrap();
    let mut buf = vec![0u8; 65535];
    match s.recv_from(&mut buf) {
        Ok((n, _)) => {
            buf.truncate(n);
            Some(buf)
        }
        Err(_) => None,
    }
}

/// Sends a message over UDP and decodes the answer.
pub fn udp_msg(addr: SocketAddr, m: &Message) -> Message {
    let bytes = udp_raw(addr, &m.to_vec().unwrap(), Duration::from_secs(3)).expect("an answer");
    Message::from_vec(&bytes).expect("answer decodes")
}

/// Opens a TCP connection with a read timeout.
pub fn tcp_connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// Writes one length-prefixed message.
pub fn tcp_send(s: &mut TcpStream, bytes: &[u8]) {
    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(bytes);
    s.write_all(&framed).unwrap();
}

/// Reads one length-prefixed message; `None` on EOF/timeout.
pub fn tcp_recv(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 2];
    s.read_exact(&mut len).ok()?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut buf).ok()?;
    Some(buf)
}

/// Polls `f` until it returns `Some`, or panics after `within`.
pub fn poll<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Runs `geosteer check --config path`, returning (exit code, stdout, stderr).
pub fn check(path: &Path) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(path)
        .output()
        .expect("run geosteer check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A minimal HTTP/1.1 client: (status, body).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = body.unwrap_or("");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    // Chunked bodies: good enough to search for substrings / parse the first chunk's JSON.
    (status, body)
}

/// The JSON object or array in an HTTP body (tolerates chunk framing around it).
pub fn json_body(body: &str) -> serde_json::Value {
    let start = body.find(['{', '[']).unwrap_or(0);
    let end = body.rfind(['}', ']']).map_or(body.len(), |e| e + 1);
    serde_json::from_str(&body[start..end]).unwrap_or_else(|e| panic!("{e}: {body}"))
}

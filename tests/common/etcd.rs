//! A real etcd cluster on loopback, for integration tests that need a consensus store
//! (membership, leases, quorum loss) rather than a mock of one.
//!
//! Every member is a real `etcd` process (Debian's `etcd-server`, installed by `tests/run.sh`)
//! listening on 127.0.0.1 only, on ports found free by binding port 0; its data dir and its
//! stderr log live in one `TempDir`. Nothing sleeps blindly: start-up, restart and every
//! readiness check are polls with a deadline, and a member that fails to come up fails the test
//! with the tail of its log. Processes are killed by PID (only the ones this harness started),
//! also when a test panics (`Drop`).
//!
//! The harness talks to etcd through its v3 JSON gateway (`/v3/kv/...`) with a minimal
//! std-only HTTP/1.1 client and a hand-written base64, so it needs no new dependencies.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

/// How long a fresh cluster (or a restarted member) may take to become healthy. Generous: on a
/// loaded 2-core machine the first WAL fsyncs and the first election can be slow.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// Whole-cluster start attempts when a port found free was taken before etcd bound it.
const START_ATTEMPTS: usize = 4;

/// Timeout of the harness's own requests (health, status, reads).
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// How many bytes of a member's log a panic message quotes.
const LOG_TAIL: usize = 4000;

/// One member: its fixed identity (name, ports, data dir, log) and its process while it runs.
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// A running etcd cluster of real processes on loopback, torn down (by PID) on drop.
///
/// Tests use it where geosteer's behaviour depends on a real consensus store: quorum loss,
/// leader changes and member restarts are things a mock cannot reproduce faithfully.
pub struct EtcdCluster {
    members: Vec<Member>,
    /// `m0=http://127.0.0.1:P0,...`: the same for every member, so a restart reuses it.
    initial_cluster: String,
    /// Unique per cluster so members of two concurrently running test clusters can never join
    /// each other (etcd rejects peers with another token).
    token: String,
    /// Data dirs and logs; declared last so it is removed after the processes are gone.
    dir: tempfile::TempDir,
}

/// Why one start attempt failed.
enum StartError {
    /// A port found free was taken before etcd bound it: worth another attempt on new ports.
    PortTaken(String),
    /// Anything else: fail the test with this message.
    Fatal(String),
}

impl EtcdCluster {
    /// Starts `n` members as one cluster and returns once every member reports healthy and all
    /// agree on a leader, so a test can write immediately.
    ///
    /// The cluster is bootstrapped statically (`--initial-cluster` with every peer URL,
    /// `--initial-cluster-state new`, a unique `--initial-cluster-token`) because that needs
    /// no discovery service and is how small fixed clusters are deployed. Short heartbeat and
    /// election timeouts (50 ms / 500 ms) make elections fast on loopback without being so
    /// short that a busy 2-core machine triggers spurious elections. If a member dies with
    /// "address already in use" (a free port was taken between our probe and etcd's bind),
    /// the whole start is retried on new ports, a bounded number of times.
    pub fn start(n: usize) -> Self {
        assert!(n >= 1, "an etcd cluster needs at least one member");
        let mut last = String::new();
        for attempt in 1..=START_ATTEMPTS {
            let mut cluster = Self::spawn_all(n);
            match cluster.wait_ready() {
                Ok(()) => return cluster,
                Err(StartError::PortTaken(why)) => {
                    // Dropping the cluster kills the other members and removes the temp dir.
                    last = why;
                    eprintln!("etcd harness: start attempt {attempt} lost a port race: {last}");
                }
                Err(StartError::Fatal(why)) => panic!("etcd cluster of {n} did not start: {why}"),
            }
        }
        panic!("etcd cluster of {n} did not start in {START_ATTEMPTS} attempts: {last}")
    }

    /// Client URLs (`http://127.0.0.1:PORT`), one per member, in member order, for configs
    /// and clients that take a list of endpoints (stopped members included: a client must
    /// cope with dead endpoints).
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// The endpoints as a TOML array literal (`["http://127.0.0.1:1", ...]`), to paste into a
    /// config file after `endpoints = `.
    pub fn toml_endpoints(&self) -> String {
        let quoted: Vec<String> = self
            .endpoints()
            .iter()
            .map(|e| format!("\"{e}\""))
            .collect();
        format!("[{}]", quoted.join(", "))
    }

    /// Stops member `i` abruptly (SIGKILL, then reaps it), as a crash or a lost machine would;
    /// its data dir stays so [`restart`](Self::restart) brings back the same member. Stopping a
    /// stopped member is a no-op.
    pub fn stop(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Restarts stopped member `i` with the same name, ports, flags and data dir (etcd ignores
    /// the `--initial-cluster*` flags once its data dir exists, so it rejoins as itself) and
    /// waits until it is healthy again, which needs a quorum of the cluster to be running.
    pub fn restart(&mut self, i: usize) {
        assert!(
            self.members[i].child.is_none(),
            "etcd member {i} is still running"
        );
        self.spawn(i);
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Some(status) = self.exited(i) {
                panic!(
                    "restarted etcd member {i} exited ({status}); log tail:\n{}",
                    self.log_tail(i)
                );
            }
            if self.healthy(i) {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "restarted etcd member {i} not healthy within {READY_WITHIN:?}; log tail:\n{}",
                    self.log_tail(i)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// True when member `i` is running and its `/health` says `"true"`. etcd 3.4 only says so
    /// when the member sees a leader and a quorum read succeeds, so it is false for a member
    /// cut off from quorum.
    pub fn healthy(&self, i: usize) -> bool {
        if self.members[i].child.is_none() {
            return false;
        }
        match request(
            self.members[i].client_port,
            "GET",
            "/health",
            "",
            PROBE_TIMEOUT,
        ) {
            Ok((200, body)) => serde_json::from_str::<Value>(&body)
                .is_ok_and(|v| v["health"].as_str() == Some("true")),
            _ => false,
        }
    }

    /// Reads one key's value (linearizable read) from the first live member that answers;
    /// `None` when the key is absent. For assertions: panics when no member can answer, since
    /// a test asking has a broken cluster.
    pub fn get(&self, key: &str) -> Option<String> {
        let mut errors = Vec::new();
        for i in self.live() {
            match self.get_via(i, key, PROBE_TIMEOUT) {
                Ok(v) => return v,
                Err(e) => errors.push(format!("member {i}: {e}")),
            }
        }
        panic!("no etcd member could read {key:?}: {errors:?}")
    }

    /// All keys under `prefix` (as strings, in etcd's byte order), read like
    /// [`get`](Self::get); the range end is the prefix with its last byte incremented, which is
    /// how etcd clients spell "every key with this prefix".
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let body = json!({
            "key": b64_encode(prefix.as_bytes()),
            "range_end": b64_encode(&prefix_end(prefix.as_bytes())),
            "keys_only": true,
        })
        .to_string();
        let mut errors = Vec::new();
        for i in self.live() {
            match self.gateway(i, "/v3/kv/range", &body, PROBE_TIMEOUT) {
                Ok(v) => {
                    return v["kvs"]
                        .as_array()
                        .map(|kvs| kvs.iter().map(|kv| b64_field(&kv["key"])).collect())
                        .unwrap_or_default();
                }
                Err(e) => errors.push(format!("member {i}: {e}")),
            }
        }
        panic!("no etcd member could list {prefix:?}: {errors:?}")
    }

    /// Writes `key = value` through member `i`'s gateway (`POST /v3/kv/put`), waiting at most
    /// `timeout`; the store's revision after the write on success. Err carries the HTTP
    /// status and body, or the I/O error (a timeout), so tests can assert that writes without
    /// quorum fail and report how.
    pub fn put_via(
        &self,
        i: usize,
        key: &str,
        value: &str,
        timeout: Duration,
    ) -> Result<i64, String> {
        let body = json!({
            "key": b64_encode(key.as_bytes()),
            "value": b64_encode(value.as_bytes()),
        })
        .to_string();
        let v = self.gateway(i, "/v3/kv/put", &body, timeout)?;
        int_field(&v["header"]["revision"])
            .ok_or_else(|| format!("put answer without a revision: {v}"))
    }

    /// Reads one key through member `i` only (linearizable, so it needs quorum), waiting at
    /// most `timeout`: lets a test check that a write made through one member is visible
    /// through another.
    pub fn get_via(
        &self,
        i: usize,
        key: &str,
        timeout: Duration,
    ) -> Result<Option<String>, String> {
        let body = json!({ "key": b64_encode(key.as_bytes()) }).to_string();
        let v = self.gateway(i, "/v3/kv/range", &body, timeout)?;
        Ok(v["kvs"]
            .as_array()
            .and_then(|kvs| kvs.first())
            .map(|kv| b64_field(&kv["value"])))
    }

    /// The index of the member every live member names as leader (`/v3/maintenance/status`),
    /// or `None` while there is none or they disagree (an election in progress): lets tests
    /// stop the leader on purpose.
    pub fn leader(&self) -> Option<usize> {
        let mut ids = Vec::new(); // (member index, its own id, the leader it sees)
        for i in self.live() {
            let v = self
                .gateway(i, "/v3/maintenance/status", "{}", PROBE_TIMEOUT)
                .ok()?;
            let own = v["header"]["member_id"].as_str()?.to_string();
            let leader = v["leader"].as_str()?.to_string();
            ids.push((i, own, leader));
        }
        let seen = &ids.first()?.2;
        if seen == "0" || ids.iter().any(|(_, _, l)| l != seen) {
            return None;
        }
        ids.iter()
            .find(|(_, own, _)| own == seen)
            .map(|(i, _, _)| *i)
    }

    /// Indices of the members whose process this harness has running.
    fn live(&self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|&i| self.members[i].child.is_some())
            .collect()
    }

    /// One JSON gateway call on member `i`: the parsed answer on HTTP 200, else an error
    /// naming the status and body (or the I/O failure).
    fn gateway(
        &self,
        i: usize,
        path: &str,
        body: &str,
        timeout: Duration,
    ) -> Result<Value, String> {
        let (status, text) = request(self.members[i].client_port, "POST", path, body, timeout)?;
        if status != 200 {
            return Err(format!("HTTP {status}: {}", text.trim()));
        }
        serde_json::from_str(&text).map_err(|e| format!("bad JSON ({e}): {text}"))
    }

    /// Picks ports, creates the temp dir and spawns every member (not yet waiting for them).
    fn spawn_all(n: usize) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("geosteer-etcd-")
            .tempdir()
            .expect("temp dir for etcd");
        let ports = free_ports(2 * n);
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
                data_dir: dir.path().join(format!("m{i}.etcd")),
                log: dir.path().join(format!("m{i}.log")),
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let token = format!(
            "geosteer-test-{}-{nanos}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let mut cluster = Self {
            members,
            initial_cluster,
            token,
            dir,
        };
        for i in 0..n {
            cluster.spawn(i);
        }
        cluster
    }

    /// Starts member `i`'s process with its fixed flags, stderr appended to its log file.
    fn spawn(&mut self, i: usize) {
        let m = &self.members[i];
        let client = format!("http://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .expect("etcd log file");
        let mut cmd = Command::new("etcd");
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.token])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .arg("--enable-v2=false")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // etcd reads every flag from ETCD_* variables too: a developer's environment must not
        // change the test cluster.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot run etcd ({e}); install etcd-server (bash tests/run.sh --install-only)")
        });
        self.members[i].child = Some(child);
    }

    /// Waits until every member is healthy and a leader is agreed on, or says why not.
    fn wait_ready(&mut self) -> Result<(), StartError> {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            for i in 0..self.members.len() {
                if let Some(status) = self.exited(i) {
                    let tail = self.log_tail(i);
                    let why = format!("member {i} exited ({status}); log tail:\n{tail}");
                    return Err(if tail.contains("address already in use") {
                        StartError::PortTaken(why)
                    } else {
                        StartError::Fatal(why)
                    });
                }
            }
            let unhealthy: Vec<usize> = (0..self.members.len())
                .filter(|&i| !self.healthy(i))
                .collect();
            if unhealthy.is_empty() && self.leader().is_some() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let tails: Vec<String> = unhealthy
                    .iter()
                    .map(|&i| format!("member {i} log tail:\n{}", self.log_tail(i)))
                    .collect();
                return Err(StartError::Fatal(format!(
                    "not ready within {READY_WITHIN:?} (unhealthy: {unhealthy:?}, leader: {:?})\n{}",
                    self.leader(),
                    tails.join("\n")
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The exit status if member `i`'s process has exited (reaping it), else `None`.
    fn exited(&mut self, i: usize) -> Option<std::process::ExitStatus> {
        let child = self.members[i].child.as_mut()?;
        let status = child.try_wait().ok()??;
        self.members[i].child = None;
        Some(status)
    }

    /// The last [`LOG_TAIL`] bytes of member `i`'s log, for panic messages.
    fn log_tail(&self, i: usize) -> String {
        let mut text = Vec::new();
        if let Ok(mut f) = File::open(&self.members[i].log) {
            let _ = f.read_to_end(&mut text);
        }
        let from = text.len().saturating_sub(LOG_TAIL);
        String::from_utf8_lossy(&text[from..]).into_owned()
    }
}

impl Drop for EtcdCluster {
    /// Kills (SIGKILL) and reaps every member still running, only the processes this harness
    /// started, so a finished or panicking test leaves no etcd behind holding ports and CPU.
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.stop(i);
        }
        // `dir` (data dirs, logs) is removed after this, when the field drops.
    }
}

/// `count` distinct ports that were free a moment ago: all are bound on 127.0.0.1:0 at once
/// (so the kernel cannot hand out one twice) and then released for etcd to bind. Another
/// process may still grab one in between; `start` retries on that.
fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect()
}

/// One HTTP/1.1 request to 127.0.0.1:`port` with `timeout` for the connect and for each read
/// and write: (status, body), the body de-chunked if the server chunked it. Errors (refused,
/// timed out) are returned, not panicked on, because probing dead members is normal here.
fn request(
    port: u16,
    method: &str,
    path: &str,
    body: &str,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| format!("send: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            format!("no answer within {timeout:?}")
        }
        _ => format!("receive: {e}"),
    })?;
    let raw = String::from_utf8_lossy(&raw);
    let (head, rest) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("truncated HTTP answer: {raw:?}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no HTTP status in {head:?}"))?;
    let chunked = head
        .lines()
        .any(|l| l.to_ascii_lowercase().replace(' ', "") == "transfer-encoding:chunked");
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Ok((status, body))
}

/// Joins the chunks of a chunked HTTP/1.1 body.
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16);
        match size {
            Ok(n) if n > 0 && after.len() >= n => {
                out.push_str(&after[..n]);
                rest = after[n..].strip_prefix("\r\n").unwrap_or(&after[n..]);
            }
            _ => break,
        }
    }
    out
}

/// The smallest key greater than every key starting with `prefix` (etcd's range end for a
/// prefix): the last byte below 0xff incremented, the rest dropped; `\0` (every key) when
/// there is no such byte.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A gateway int64, which protobuf's JSON mapping writes as a string.
fn int_field(v: &Value) -> Option<i64> {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| v.as_i64())
}

/// A gateway bytes field (base64) as a string; empty when absent.
fn b64_field(v: &Value) -> String {
    let bytes = b64_decode(v.as_str().unwrap_or("")).unwrap_or_else(|| panic!("bad base64: {v}"));
    String::from_utf8_lossy(&bytes).into_owned()
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding, as the gateway expects for bytes fields.
fn b64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64 (padding optional); `None` on a character outside the alphabet.
fn b64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes().filter(|&c| c != b'=') {
        let v = B64.iter().position(|&a| a == c)? as u32;
        acc = acc << 6 | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

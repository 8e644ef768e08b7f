//! An etcd v3 client over etcd's JSON gateway (`POST /v3/...`): what the fleet needs and no
//! more — range, transactions (put/delete under compares), leases, authentication, watch.
//!
//! Keys and values travel base64-encoded and 64-bit integers as JSON strings (the gateway's
//! protobuf-JSON mapping). Requests go to the endpoint that last answered; one that fails
//! (connection refused, timeout, 5xx such as "no leader") is skipped for the next, so a dead
//! member costs one timeout, not every request.
//!
//! Reads are linearizable (etcd's default): a member cut off from its quorum cannot answer
//! them, which is exactly what tells an instance it is no longer in touch with the fleet.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use super::Settings;

/// Why an etcd request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EtcdError {
    /// No endpoint answered (connection refused, timeout, no leader, 5xx).
    #[error("etcd unreachable: {0}")]
    Unreachable(String),
    /// etcd answered with an error for this request (4xx: bad request, permission denied).
    #[error("etcd refused the request: {0}")]
    Refused(String),
    /// The answer was not what the API documents.
    #[error("unexpected answer from etcd: {0}")]
    Protocol(String),
}

/// One key-value pair as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    /// Key (UTF-8; geosteer writes only UTF-8 keys).
    pub key: String,
    /// Value bytes.
    pub value: Vec<u8>,
    /// Revision of the last change of this key.
    pub mod_revision: i64,
}

/// A change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Key created or changed.
    Put(Kv),
    /// Key deleted (or its lease expired) at `revision`.
    Delete {
        /// Key.
        key: String,
        /// Revision of the deletion.
        revision: i64,
    },
}

/// One operation of a transaction.
#[derive(Debug, Clone)]
pub enum Op {
    /// Put `value` at `key`, attached to `lease` (0 = none).
    Put {
        /// Key.
        key: String,
        /// Value.
        value: Vec<u8>,
        /// Lease ID, 0 = none.
        lease: i64,
    },
    /// Delete `key`.
    Delete {
        /// Key.
        key: String,
    },
    /// Delete every key starting with `prefix`.
    DeletePrefix {
        /// Key prefix.
        prefix: String,
    },
}

/// A transaction's condition.
#[derive(Debug, Clone)]
pub enum Compare {
    /// The key's last change was at this revision (0 = the key does not exist).
    ModRevision {
        /// Key.
        key: String,
        /// Expected mod revision.
        revision: i64,
    },
}

/// Client for one etcd cluster.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    endpoints: Vec<reqwest::Url>,
    /// Index of the endpoint that answered last.
    current: AtomicUsize,
    credentials: Option<(String, String)>,
    /// Auth token from `/v3/auth/authenticate` (simple tokens expire; renewed on refusal).
    token: Mutex<Option<String>>,
    timeout: Duration,
}

/// Counts requests and bytes (the fleet's etcd traffic, a benchmark figure).
#[derive(Debug, Default)]
pub struct Traffic {
    /// Requests sent (unary and watch starts).
    pub requests: crate::base::Counter,
    /// Request and response body bytes, watch stream included.
    pub bytes: crate::base::Counter,
}

static TRAFFIC: std::sync::LazyLock<Traffic> = std::sync::LazyLock::new(Traffic::default);

/// This process's etcd traffic so far.
pub fn traffic() -> &'static Traffic {
    &TRAFFIC
}

fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

fn unb64(v: &Value) -> Result<Vec<u8>, EtcdError> {
    match v.as_str() {
        None => Ok(Vec::new()),
        Some(s) => B64
            .decode(s)
            .map_err(|e| EtcdError::Protocol(format!("bad base64: {e}"))),
    }
}

/// A JSON int64 (a string in the gateway's mapping; absent = 0).
fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

/// The end of the range of every key starting with `prefix`.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn kv(v: &Value) -> Result<Kv, EtcdError> {
    let key = String::from_utf8(unb64(&v["key"])?)
        .map_err(|_| EtcdError::Protocol("a key is not UTF-8".into()))?;
    Ok(Kv {
        key,
        value: unb64(&v["value"])?,
        mod_revision: int(&v["mod_revision"]),
    })
}

impl Client {
    /// A client for `settings` (no I/O: TLS material was read when the configuration loaded).
    pub fn new(settings: &Settings) -> Result<Self, String> {
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(settings.request_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("geosteer/", env!("CARGO_PKG_VERSION")));
        if settings.etcd.iter().any(|u| u.scheme() == "https") {
            builder = builder.tls_backend_preconfigured(tls_config(settings)?);
        }
        let http = builder
            .build()
            .map_err(|e| format!("etcd HTTP client: {e}"))?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                endpoints: settings.etcd.clone(),
                current: AtomicUsize::new(0),
                credentials: settings.username.clone().zip(settings.password.clone()),
                token: Mutex::new(None),
                timeout: settings.request_timeout,
            }),
        })
    }

    /// The endpoint requests go to now.
    pub fn current_endpoint(&self) -> String {
        let i = self.inner.current.load(Ordering::Relaxed) % self.inner.endpoints.len().max(1);
        self.inner
            .endpoints
            .get(i)
            .map(|u| u.as_str().trim_end_matches('/').to_string())
            .unwrap_or_default()
    }

    fn token(&self) -> Option<String> {
        self.inner
            .token
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Sends one request to `url`; `Ok(Err(..))` is etcd's own refusal (do not try another
    /// member), `Err(..)` a member that could not answer (try the next).
    async fn send(
        &self,
        url: reqwest::Url,
        body: &Value,
        timeout: Option<Duration>,
    ) -> Result<Result<reqwest::Response, EtcdError>, String> {
        let text = body.to_string();
        TRAFFIC.requests.inc();
        TRAFFIC.bytes.add(text.len() as u64);
        // `hasleader`: a member cut off from its quorum refuses (a watch: cancels) instead of
        // answering from a state that no longer moves — how a stalled watch is noticed.
        let mut req = self
            .inner
            .http
            .post(url)
            .header("content-type", "application/json")
            .header("grpc-metadata-hasleader", "true")
            .body(text);
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        if let Some(token) = self.token() {
            req = req.header("authorization", token);
        }
        let resp = req.send().await.map_err(|e| error_chain(&e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(Ok(resp));
        }
        let text = resp.text().await.unwrap_or_default();
        TRAFFIC.bytes.add(text.len() as u64);
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| {
                v["error"]
                    .as_str()
                    .or(v["message"].as_str())
                    .map(String::from)
            })
            .unwrap_or_else(|| text.chars().take(200).collect());
        if status.is_server_error() || status.as_u16() == 429 {
            // "etcdserver: no leader", "request timed out": another member may do better.
            return Err(format!("HTTP {status}: {message}"));
        }
        Ok(Err(EtcdError::Refused(format!("HTTP {status}: {message}"))))
    }

    /// Sends `body` to `path` on the current endpoint, moving on to the next on failure;
    /// (re)authenticates when credentials are set and etcd asks for a token.
    async fn call_raw(
        &self,
        path: &str,
        body: &Value,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, EtcdError> {
        let n = self.inner.endpoints.len();
        let start = self.inner.current.load(Ordering::Relaxed);
        let mut errors = Vec::new();
        let mut reauthenticated = false;
        let mut i = 0;
        while i < n {
            let idx = (start + i) % n;
            let url = match self.inner.endpoints[idx].join(path) {
                Ok(u) => u,
                Err(e) => return Err(EtcdError::Protocol(format!("URL: {e}"))),
            };
            if self.inner.credentials.is_some()
                && self.token().is_none()
                && let Err(e) = self.authenticate(idx).await
            {
                errors.push(format!("{}: {e}", self.inner.endpoints[idx]));
                i += 1;
                continue;
            }
            match self.send(url, body, timeout).await {
                Ok(Ok(resp)) => {
                    self.inner.current.store(idx, Ordering::Relaxed);
                    return Ok(resp);
                }
                Ok(Err(EtcdError::Refused(m)))
                    if self.inner.credentials.is_some()
                        && !reauthenticated
                        && (m.contains("token") || m.contains("user name is empty")) =>
                {
                    // An expired simple token: authenticate again and retry this member once.
                    *self.inner.token.lock().unwrap_or_else(|e| e.into_inner()) = None;
                    reauthenticated = true;
                }
                Ok(Err(e)) => return Err(e),
                Err(e) => {
                    errors.push(format!("{}: {e}", self.inner.endpoints[idx]));
                    i += 1;
                }
            }
        }
        Err(EtcdError::Unreachable(errors.join("; ")))
    }

    async fn authenticate(&self, idx: usize) -> Result<(), String> {
        let Some((name, password)) = &self.inner.credentials else {
            return Ok(());
        };
        let url = self.inner.endpoints[idx]
            .join("/v3/auth/authenticate")
            .map_err(|e| e.to_string())?;
        let resp = self
            .inner
            .http
            .post(url)
            .timeout(self.inner.timeout)
            .json(&json!({"name": name, "password": password}))
            .send()
            .await
            .map_err(|e| error_chain(&e))?;
        let status = resp.status();
        let v: Value = resp.json().await.map_err(|e| error_chain(&e))?;
        match v["token"].as_str() {
            Some(t) if status.is_success() => {
                *self.inner.token.lock().unwrap_or_else(|e| e.into_inner()) = Some(t.into());
                Ok(())
            }
            _ => Err(format!(
                "authentication as {name:?} failed: HTTP {status}: {}",
                v["error"].as_str().unwrap_or("no token")
            )),
        }
    }

    /// A unary request: the answer's JSON.
    async fn call(&self, path: &str, body: Value) -> Result<Value, EtcdError> {
        let resp = self.call_raw(path, &body, Some(self.inner.timeout)).await?;
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| EtcdError::Unreachable(error_chain(&e)))?;
        TRAFFIC.bytes.add(bytes.len() as u64);
        serde_json::from_slice(&bytes).map_err(|e| EtcdError::Protocol(e.to_string()))
    }

    /// Every key under `prefix`, and the store's revision at the time of the read.
    pub async fn range_prefix(&self, prefix: &str) -> Result<(i64, Vec<Kv>), EtcdError> {
        let v = self
            .call(
                "/v3/kv/range",
                json!({"key": b64(prefix.as_bytes()), "range_end": b64(&prefix_end(prefix))}),
            )
            .await?;
        let revision = int(&v["header"]["revision"]);
        let kvs = match v["kvs"].as_array() {
            Some(a) => a.iter().map(kv).collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        Ok((revision, kvs))
    }

    /// Runs `ops` if every compare holds. Returns whether it did, and the store's revision
    /// after it (the revision of the writes when it succeeded).
    pub async fn txn(&self, compare: &[Compare], ops: &[Op]) -> Result<(bool, i64), EtcdError> {
        let compare: Vec<Value> = compare
            .iter()
            .map(|c| match c {
                Compare::ModRevision { key, revision } => json!({
                    "key": b64(key.as_bytes()),
                    "target": "MOD",
                    "result": "EQUAL",
                    "mod_revision": revision.to_string(),
                }),
            })
            .collect();
        let success: Vec<Value> = ops
            .iter()
            .map(|op| match op {
                Op::Put { key, value, lease } => json!({"request_put": {
                    "key": b64(key.as_bytes()),
                    "value": b64(value),
                    "lease": lease.to_string(),
                }}),
                Op::Delete { key } => {
                    json!({"request_delete_range": {"key": b64(key.as_bytes())}})
                }
                Op::DeletePrefix { prefix } => json!({"request_delete_range": {
                    "key": b64(prefix.as_bytes()),
                    "range_end": b64(&prefix_end(prefix)),
                }}),
            })
            .collect();
        let v = self
            .call(
                "/v3/kv/txn",
                json!({"compare": compare, "success": success, "failure": []}),
            )
            .await?;
        Ok((
            v["succeeded"].as_bool().unwrap_or(false),
            int(&v["header"]["revision"]),
        ))
    }

    /// Grants a lease of `ttl`; returns its ID.
    pub async fn grant(&self, ttl: Duration) -> Result<i64, EtcdError> {
        let v = self
            .call(
                "/v3/lease/grant",
                json!({"TTL": ttl.as_secs().max(1).to_string()}),
            )
            .await?;
        match int(&v["ID"]) {
            0 => Err(EtcdError::Protocol(format!(
                "lease grant without an ID: {v}"
            ))),
            id => Ok(id),
        }
    }

    /// Renews lease `id`; returns its remaining TTL in seconds (0 = the lease is gone).
    pub async fn keep_alive(&self, id: i64) -> Result<i64, EtcdError> {
        let v = self
            .call("/v3/lease/keepalive", json!({"ID": id.to_string()}))
            .await?;
        Ok(int(&v["result"]["TTL"]))
    }

    /// Revokes lease `id` (its keys are deleted at once).
    pub async fn revoke(&self, id: i64) -> Result<(), EtcdError> {
        self.call("/v3/lease/revoke", json!({"ID": id.to_string()}))
            .await
            .map(drop)
    }

    /// Watches every key under `prefix` from `start_revision` on.
    pub async fn watch(&self, prefix: &str, start_revision: i64) -> Result<Watch, EtcdError> {
        let body = json!({"create_request": {
            "key": b64(prefix.as_bytes()),
            "range_end": b64(&prefix_end(prefix)),
            "start_revision": start_revision.to_string(),
        }});
        let resp = self.call_raw("/v3/watch", &body, None).await?;
        Ok(Watch {
            resp,
            buf: Vec::new(),
        })
    }
}

/// A running watch: a stream of newline-delimited JSON messages.
pub struct Watch {
    resp: reqwest::Response,
    buf: Vec<u8>,
}

impl Watch {
    /// The next batch of events (all of one revision or more) and the store revision it
    /// reports; `Ok(None)` when etcd ended the stream.
    pub async fn next(&mut self) -> Result<Option<(i64, Vec<Event>)>, EtcdError> {
        loop {
            if let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=nl).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let v: Value = serde_json::from_slice(&line)
                    .map_err(|e| EtcdError::Protocol(format!("watch: {e}")))?;
                if let Some(e) = v.get("error") {
                    return Err(EtcdError::Unreachable(format!("watch ended: {e}")));
                }
                let r = &v["result"];
                if r["canceled"].as_bool() == Some(true) {
                    return Err(EtcdError::Unreachable(format!(
                        "watch cancelled: {}",
                        r["cancel_reason"].as_str().unwrap_or("no reason given")
                    )));
                }
                let revision = int(&r["header"]["revision"]);
                let mut events = Vec::new();
                for e in r["events"].as_array().into_iter().flatten() {
                    let kv = kv(&e["kv"])?;
                    events.push(if e["type"].as_str() == Some("DELETE") {
                        Event::Delete {
                            key: kv.key,
                            revision: kv.mod_revision,
                        }
                    } else {
                        Event::Put(kv)
                    });
                }
                return Ok(Some((revision, events)));
            }
            match self.resp.chunk().await {
                Ok(Some(chunk)) => {
                    TRAFFIC.bytes.add(chunk.len() as u64);
                    if self.buf.len() + chunk.len() > 64 << 20 {
                        return Err(EtcdError::Protocol("watch message over 64 MiB".into()));
                    }
                    self.buf.extend_from_slice(&chunk);
                }
                Ok(None) => return Ok(None),
                Err(e) => return Err(EtcdError::Unreachable(error_chain(&e))),
            }
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// rustls client settings for `https://` endpoints: the public roots plus `ca_file`, and the
/// client certificate when one is configured.
fn tls_config(settings: &Settings) -> Result<rustls::ClientConfig, String> {
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for der in &settings.tls.roots {
        roots
            .add(CertificateDer::from(der.clone()))
            .map_err(|e| format!("cluster.ca_file: unusable certificate: {e}"))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS configuration: {e}"))?
        .with_root_certificates(roots);
    let mut config = match &settings.tls.key {
        Some(key) => {
            let chain = settings
                .tls
                .chain
                .iter()
                .map(|c| CertificateDer::from(c.clone()))
                .collect();
            let key = PrivateKeyDer::try_from(key.clone())
                .map_err(|e| format!("cluster.key_file: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("cluster.cert_file/key_file: {e}"))?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end("/geosteer/"), b"/geosteer0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
    }

    #[test]
    fn gateway_int64s_are_strings() {
        assert_eq!(int(&json!("42")), 42);
        assert_eq!(int(&json!(7)), 7);
        assert_eq!(int(&Value::Null), 0);
    }
}

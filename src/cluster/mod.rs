//! The fleet's shared store: `[cluster]` settings and a small etcd v3 client.
//!
//! Every geosteer instance of a fleet (the NS set of a hostname: several regions, several
//! replicas each) keeps its control state — forced states, drills, the instance registry — in
//! one etcd cluster, so one `drill start` moves every NS and a restarted instance knows what
//! its peers do. etcd is the engine (Raft, the store Kubernetes runs on); geosteer only reads,
//! writes and watches keys under a prefix.
//!
//! Why a hand-written client: the gRPC client crates (`etcd-client`, `etcd-rs`) generate their
//! protobuf code at build time and need `protoc` on the build machine, which a clean clone on
//! a fresh Debian machine does not have. etcd serves the same v3 API as JSON over HTTP (its
//! gRPC gateway, `/v3/...`, stable since 3.4), so the client is a few requests over the
//! `reqwest` client the prober already uses: range, txn, lease grant/keep-alive/revoke,
//! authenticate, and one streaming watch.
//!
//! This layer knows nothing of geosteer's state: the key layout and what the values mean are
//! the control plane's (`ops::fleet`).

pub mod etcd;

use std::path::PathBuf;
use std::time::Duration;

/// `[cluster]`, validated: where etcd is and how to talk to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// etcd client URLs (`http://` or `https://`), tried in order; the first one that
    /// answers is kept until it fails.
    pub etcd: Vec<reqwest::Url>,
    /// This instance's name in the fleet (default: the host name, i.e. the pod name).
    pub instance: String,
    /// Key prefix, ending in `/`: several fleets can share one etcd.
    pub prefix: String,
    /// CA certificates (PEM) that sign the etcd servers' certificates; `None` = the public
    /// roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS, with [`Self::key_file`].
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key_file: Option<PathBuf>,
    /// etcd user (RBAC), with a password.
    pub username: Option<String>,
    /// The user's password (from `password` or read from `password_file`).
    pub password: Option<String>,
    /// Interval of the instance heartbeat and of the liveness check of the etcd connection.
    pub heartbeat: Duration,
    /// Lease of the instance's registration: an instance that stops heartbeating disappears
    /// from the fleet after this.
    pub lease_ttl: Duration,
    /// How long start-up waits to read the fleet state before serving the last state seen
    /// (the state file).
    pub start_timeout: Duration,
    /// Time limit of one etcd request (per endpoint tried).
    pub request_timeout: Duration,
    /// The fleet's health rule: how many instances' "down" make an endpoint down.
    pub quorum: crate::health::votes::Quorum,
    /// Past this long without etcd, the other instances' votes are stale and this instance's
    /// own verdicts rule again.
    pub votes_stale_after: Duration,
    /// TLS material read when the configuration loaded (so a bad file is a config error at
    /// its line, never a run-time surprise).
    pub tls: Tls,
}

/// Certificates and key read from the `[cluster]` files (DER).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tls {
    /// Extra trust anchors (from `ca_file`).
    pub roots: Vec<Vec<u8>>,
    /// Client certificate chain (from `cert_file`).
    pub chain: Vec<Vec<u8>>,
    /// Client private key (from `key_file`), PKCS#8, PKCS#1 or SEC1 DER.
    pub key: Option<Vec<u8>>,
}

/// The host name (`gethostname(2)`): the default instance name; in Kubernetes, the pod name.
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "geosteer".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).into_owned();
    if name.is_empty() {
        "geosteer".into()
    } else {
        name
    }
}

//! `[cluster]`: the fleet's etcd, validated — URLs, instance name, prefix, TLS files and
//! credentials. Every file is read here, at load, so a missing or wrong certificate is an error
//! at its line (exit 64; on reload the old configuration keeps serving), never a run-time
//! surprise in the middle of an outage.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::pem::{PemObject, SectionKind};
use serde::Deserialize;

use crate::base::{ConfigError, de, file};
use crate::cluster::{Settings, Tls};

/// `[cluster]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    etcd: Vec<String>,
    #[serde(default)]
    instance: Option<String>,
    #[serde(default = "default_prefix")]
    prefix: String,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default)]
    cert_file: Option<PathBuf>,
    #[serde(default)]
    key_file: Option<PathBuf>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    password_file: Option<PathBuf>,
    #[serde(default = "default_heartbeat", with = "de::duration")]
    heartbeat: Duration,
    #[serde(default = "default_lease_ttl", with = "de::duration")]
    lease_ttl: Duration,
    #[serde(default = "default_start_timeout", with = "de::duration")]
    start_timeout: Duration,
    #[serde(default = "default_request_timeout", with = "de::duration")]
    request_timeout: Duration,
    #[serde(default = "default_quorum")]
    quorum: String,
    #[serde(default = "default_votes_stale_after", with = "de::duration")]
    votes_stale_after: Duration,
}

fn default_quorum() -> String {
    "majority".into()
}
fn default_votes_stale_after() -> Duration {
    Duration::from_secs(5)
}

fn default_prefix() -> String {
    "/geosteer/".into()
}
fn default_heartbeat() -> Duration {
    Duration::from_secs(1)
}
fn default_lease_ttl() -> Duration {
    Duration::from_secs(10)
}
fn default_start_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(2)
}

/// Validates `[cluster]`; relative file names resolve against `base` (the config file's
/// directory). `at(key)` is the line of `key =`.
pub(super) fn validate(
    raw: RawCluster,
    source: &Path,
    base: &Path,
    at: &dyn Fn(&str) -> usize,
) -> Result<Settings, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut err = |key: &str, message: String| {
        errors.push(ConfigError::new(
            source,
            at(key),
            format!("cluster.{key}"),
            message,
        ));
    };
    if raw.etcd.is_empty() {
        err(
            "etcd",
            "no etcd endpoint: give the client URLs of the etcd members, e.g. \
             [\"http://10.0.0.1:2379\"]"
                .into(),
        );
    }
    let mut urls = Vec::new();
    for u in &raw.etcd {
        match reqwest::Url::parse(u) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
                if url.path() != "/" || url.query().is_some() {
                    err(
                        "etcd",
                        format!("{u:?}: give scheme, host and port only (no path)"),
                    );
                }
                urls.push(url);
            }
            Ok(_) => err(
                "etcd",
                format!("{u:?}: an etcd client URL is http:// or https:// with a host"),
            ),
            Err(e) => err("etcd", format!("{u:?}: {e}")),
        }
    }
    let instance = raw.instance.unwrap_or_else(crate::cluster::host_name);
    if instance.is_empty()
        || instance.len() > 128
        || !instance
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        err(
            "instance",
            format!(
                "{instance:?}: an instance name is 1 to 128 of A-Z a-z 0-9 - _ . (it is part of \
                 etcd keys and metric labels)"
            ),
        );
    }
    if !raw.prefix.starts_with('/') || !raw.prefix.ends_with('/') || raw.prefix.len() < 2 {
        err(
            "prefix",
            format!(
                "{:?}: a key prefix starts and ends with / (e.g. \"/geosteer/\")",
                raw.prefix
            ),
        );
    }
    for (key, d, min) in [
        ("heartbeat", raw.heartbeat, Duration::from_millis(100)),
        (
            "request_timeout",
            raw.request_timeout,
            Duration::from_millis(100),
        ),
        ("lease_ttl", raw.lease_ttl, Duration::from_secs(2)),
        ("start_timeout", raw.start_timeout, Duration::ZERO),
    ] {
        if d < min {
            err(
                key,
                format!(
                    "{} is shorter than {}",
                    humantime::format_duration(d),
                    humantime::format_duration(min)
                ),
            );
        }
    }
    if raw.lease_ttl < raw.heartbeat * 2 {
        err(
            "lease_ttl",
            "must be at least twice the heartbeat (one lost heartbeat must not drop the instance)"
                .into(),
        );
    }
    let quorum = match crate::health::votes::Quorum::parse(&raw.quorum) {
        Ok(q) => q,
        Err(e) => {
            err("quorum", e);
            crate::health::votes::Quorum::default()
        }
    };
    if raw.votes_stale_after < raw.heartbeat {
        err(
            "votes_stale_after",
            "must be at least the heartbeat (else every slow request would drop the fleet's votes)"
                .into(),
        );
    }
    let https = urls.iter().any(|u| u.scheme() == "https");
    let mut tls = Tls::default();
    if let Some(p) = &raw.ca_file {
        match read_pem(&base.join(p), SectionKind::Certificate) {
            Ok(certs) => tls.roots = certs,
            Err(e) => err("ca_file", e),
        }
    }
    match (&raw.cert_file, &raw.key_file) {
        (Some(c), Some(k)) => {
            match read_pem(&base.join(c), SectionKind::Certificate) {
                Ok(chain) => tls.chain = chain,
                Err(e) => err("cert_file", e),
            }
            match read_key(&base.join(k)) {
                Ok(key) => tls.key = Some(key),
                Err(e) => err("key_file", e),
            }
        }
        (Some(_), None) => err(
            "cert_file",
            "a client certificate needs key_file (its private key)".into(),
        ),
        (None, Some(_)) => err(
            "key_file",
            "a client key needs cert_file (its certificate)".into(),
        ),
        (None, None) => {}
    }
    if !https && (raw.ca_file.is_some() || raw.cert_file.is_some()) {
        err(
            "etcd",
            "TLS files are set but no endpoint is https://: the connection would not use them"
                .into(),
        );
    }
    let password = match (&raw.password, &raw.password_file) {
        (Some(_), Some(_)) => {
            err(
                "password_file",
                "give password or password_file, not both".into(),
            );
            None
        }
        (Some(p), None) => Some(p.clone()),
        (None, Some(f)) => {
            let path = base.join(f);
            match file::read_regular_text(&path, file::MAX_TOKEN_BYTES) {
                Ok(t) if t.trim().is_empty() => {
                    err("password_file", format!("{} is empty", path.display()));
                    None
                }
                Ok(t) => Some(t.trim_end_matches(['\r', '\n']).to_string()),
                Err(e) => {
                    err(
                        "password_file",
                        format!("cannot read {}: {e}", path.display()),
                    );
                    None
                }
            }
        }
        (None, None) => None,
    };
    match (&raw.username, &password) {
        (Some(_), None) if raw.password_file.is_none() => {
            err(
                "username",
                "a username needs password or password_file".into(),
            );
        }
        (None, Some(_)) => err("password", "a password needs a username".into()),
        _ => {}
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let settings = Settings {
        etcd: urls,
        instance,
        prefix: raw.prefix,
        ca_file: raw.ca_file.map(|p| base.join(p)),
        cert_file: raw.cert_file.map(|p| base.join(p)),
        key_file: raw.key_file.map(|p| base.join(p)),
        username: raw.username,
        password,
        heartbeat: raw.heartbeat,
        lease_ttl: raw.lease_ttl,
        start_timeout: raw.start_timeout,
        request_timeout: raw.request_timeout,
        quorum,
        votes_stale_after: raw.votes_stale_after,
        tls,
    };
    // Build the client once here (no I/O): a certificate and key that do not belong together,
    // or a CA file rustls cannot use, is an error at its line now, not when serving starts.
    if let Err(e) = crate::cluster::etcd::Client::new(&settings) {
        let key = if e.contains("key_file") || e.contains("cert_file") {
            "cert_file"
        } else if e.contains("ca_file") {
            "ca_file"
        } else {
            "etcd"
        };
        return Err(vec![ConfigError::new(
            source,
            at(key),
            format!("cluster.{key}"),
            e,
        )]);
    }
    Ok(settings)
}

/// The `kind` sections of a PEM file (DER), at least one.
fn read_pem(path: &Path, kind: SectionKind) -> Result<Vec<Vec<u8>>, String> {
    let pem = file::read_regular(path, file::MAX_TOKEN_BYTES * 128)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(&pem) {
        let (k, der) = section.map_err(|e| format!("{}: bad PEM: {e:?}", path.display()))?;
        if k == kind {
            out.push(der);
        }
    }
    if out.is_empty() {
        return Err(format!("{}: no CERTIFICATE section", path.display()));
    }
    Ok(out)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
fn read_key(path: &Path) -> Result<Vec<u8>, String> {
    let pem = file::read_regular(path, file::MAX_TOKEN_BYTES * 128)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(&pem) {
        let (k, der) = section.map_err(|e| format!("{}: bad PEM: {e:?}", path.display()))?;
        if matches!(
            k,
            SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey
        ) {
            return Ok(der);
        }
    }
    Err(format!("{}: no PRIVATE KEY section", path.display()))
}

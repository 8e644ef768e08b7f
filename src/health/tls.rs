//! TLS settings of a monitor as plain data: whether to verify, and the extra CA certificates
//! read from `ca_file` when the configuration loads.
//!
//! Reading and parsing the file happens here, on the loading thread, so a bad `ca_file` is a
//! configuration error at its line and probe tasks never touch files. The clients built from
//! these settings (rustls config, reqwest client) belong to the prober
//! (`probing::probe::TlsRegistry`), which shares one per distinct settings.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::{PemObject, SectionKind};

/// A monitor field and what is wrong with it (the shape of `MonitorSpec::from_raw`'s errors).
pub type FieldError = (&'static str, String);

/// Validated TLS settings of a monitor.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TlsSettings {
    /// Verify the certificate chain and name.
    pub verify: bool,
    /// The `ca_file` named, if any.
    pub ca_file: Option<PathBuf>,
    /// Digest of the file's contents: an edited `ca_file` is a change (probes restart).
    pub digest: u64,
    /// The CA certificates it holds (DER), trusted besides the public roots.
    pub extra_roots: Arc<[CertificateDer<'static>]>,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("verify", &self.verify)
            .field("ca_file", &self.ca_file)
            .field("extra_roots", &self.extra_roots.len())
            .finish()
    }
}

impl TlsSettings {
    /// Reads and checks `ca_file` (blocking file I/O). Errors name the field at fault.
    pub fn load(verify: bool, ca_file: Option<&Path>) -> Result<Self, FieldError> {
        let mut extra = Vec::new();
        let mut digest = 0;
        if verify && let Some(path) = ca_file {
            let shown = path.display();
            let file_err = |e: String| ("ca_file", format!("{shown}: {e}"));
            let pem = read_ca_file(path).map_err(file_err)?;
            digest = {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                pem.hash(&mut h);
                h.finish()
            };
            // Other sections are named in the error: a key or CSR given by mistake is a
            // common slip, and "no certificates" alone does not say what was found.
            let mut others: Vec<&str> = Vec::new();
            for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(&pem) {
                let (kind, der) =
                    section.map_err(|e| file_err(format!("bad PEM: {}", pem_error(&e))))?;
                if kind != SectionKind::Certificate {
                    others.push(section_label(kind));
                    continue;
                }
                let der = CertificateDer::from(der);
                // The same check rustls' RootCertStore::add makes, done here so an unusable
                // certificate is an error at the config line, not at probe time.
                webpki_anchor(&der).map_err(|e| file_err(format!("unusable certificate: {e}")))?;
                extra.push(der);
            }
            if extra.is_empty() && others.is_empty() {
                return Err(file_err("no PEM certificates found".into()));
            }
            if extra.is_empty() {
                return Err(file_err(format!(
                    "no CERTIFICATE section, only {} (the CA's certificate is needed here)",
                    others.join(", ")
                )));
            }
        }
        Ok(Self {
            verify,
            ca_file: ca_file.map(Path::to_path_buf),
            digest,
            extra_roots: extra.into(),
        })
    }
}

fn webpki_anchor(der: &CertificateDer<'_>) -> Result<(), rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der.clone())
}

/// [`TlsSettings`] per distinct (`tls_verify`, `ca_file`) of one configuration load, so each
/// file is read once however many monitors name it.
#[derive(Default)]
pub struct TlsCache {
    built: HashMap<(bool, Option<PathBuf>), Result<TlsSettings, FieldError>>,
}

impl TlsCache {
    /// The settings for `tls_verify` and `ca_file`, loaded once per distinct pair.
    pub fn get(&mut self, verify: bool, ca_file: Option<&Path>) -> Result<TlsSettings, FieldError> {
        self.built
            .entry((verify, ca_file.map(Path::to_path_buf)))
            .or_insert_with(|| TlsSettings::load(verify, ca_file))
            .clone()
    }
}

/// Largest `ca_file` read (a bundle of every public root is ≈ 250 KiB).
const MAX_CA_FILE: u64 = 8 << 20;

/// Reads a CA file: a regular file of at most [`MAX_CA_FILE`] bytes. `/dev/zero` or a FIFO
/// would otherwise hang the load (and every reload) or exhaust memory.
fn read_ca_file(path: &Path) -> Result<Vec<u8>, String> {
    crate::base::file::read_regular(path, MAX_CA_FILE)
}

/// The PEM label of a section kind.
fn section_label(kind: SectionKind) -> &'static str {
    match kind {
        SectionKind::Certificate => "CERTIFICATE",
        SectionKind::PublicKey => "PUBLIC KEY",
        SectionKind::RsaPrivateKey => "RSA PRIVATE KEY",
        SectionKind::PrivateKey => "PRIVATE KEY",
        SectionKind::EcPrivateKey => "EC PRIVATE KEY",
        SectionKind::Crl => "X509 CRL",
        SectionKind::Csr => "CERTIFICATE REQUEST",
        _ => "another kind of section",
    }
}

/// A PEM error with its marker lines as text (their `Display` shows bytes).
fn pem_error(e: &rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error;
    match e {
        Error::MissingSectionEnd { end_marker } => {
            format!("missing {}", String::from_utf8_lossy(end_marker))
        }
        Error::IllegalSectionStart { line } => {
            format!("bad section start {:?}", String::from_utf8_lossy(line))
        }
        other => other.to_string(),
    }
}

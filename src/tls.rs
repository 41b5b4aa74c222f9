//! The certificates the front door serves and the ACME HTTP-01 answers it gives.
//!
//! [`CertStore`] holds one certificate per name (an environment's, from its PEM files or from
//! ACME) with the host names it serves; the TLS handshake finds one by SNI (exact names before
//! wildcards, [`crate::hosts`]). Each certificate carries its status — issuer, expiry, when it
//! was last loaded, the last error obtaining or reloading it — for `ferry status` and the
//! dashboard. A failed reload or renewal keeps serving the certificate already held.
//!
//! [`Challenges`] are the HTTP-01 key authorizations an ACME order is waiting on; the plain
//! HTTP listener answers `/.well-known/acme-challenge/{token}` from them.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

use crate::hosts::{HostPattern, HostTable, normalize};

/// Why a certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the certificate file {path}: {reason}")]
    CertFile { path: String, reason: String },
    #[error(
        "the certificate file {path} holds no PEM certificate (\"-----BEGIN CERTIFICATE-----\")"
    )]
    NoCertificate { path: String },
    #[error("cannot read the key file {path}: {reason}")]
    KeyFile { path: String, reason: String },
    #[error("the key file {key} does not belong to the certificate {cert}: {reason}")]
    Mismatch {
        cert: String,
        key: String,
        reason: String,
    },
    #[error("the certificate {path} cannot be parsed: {reason}")]
    Parse { path: String, reason: String },
}

/// Where a certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CertSource {
    Files { cert: String, key: String },
    Acme,
}

/// What is known of one certificate, for status pages.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertStatus {
    pub source: CertSource,
    /// The host names it is meant to serve.
    pub hosts: Vec<String>,
    /// The issuer's distinguished name, e.g. `CN=R11, O=Let's Encrypt, C=US`.
    pub issuer: Option<String>,
    /// The names the certificate itself covers (its subject alternative names).
    pub names: Vec<String>,
    pub not_before: Option<DateTime<Utc>>,
    pub not_after: Option<DateTime<Utc>>,
    /// Its serial number, hex (a renewal serves a new one).
    pub serial: Option<String>,
    /// When the certificate now served was loaded or obtained.
    pub loaded_at: Option<DateTime<Utc>>,
    /// The last error loading, obtaining or renewing it (cleared by the next success).
    pub error: Option<String>,
    pub error_at: Option<DateTime<Utc>>,
    /// ACME: when it is next looked at (renewed if due, or tried again after an error).
    pub next_attempt: Option<DateTime<Utc>>,
}

impl CertStatus {
    fn new(source: CertSource, hosts: &[HostPattern]) -> CertStatus {
        CertStatus {
            source,
            hosts: hosts.iter().map(ToString::to_string).collect(),
            issuer: None,
            names: Vec::new(),
            not_before: None,
            not_after: None,
            serial: None,
            loaded_at: None,
            error: None,
            error_at: None,
            next_attempt: None,
        }
    }
}

/// Facts read from a certificate's DER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub issuer: String,
    pub names: Vec<String>,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
    /// The serial number, hex.
    pub serial: String,
}

impl CertInfo {
    pub fn of(der: &[u8]) -> Result<CertInfo, String> {
        use x509_parser::prelude::*;
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
        let time = |t: ASN1Time| DateTime::<Utc>::from_timestamp(t.timestamp(), 0);
        let validity = cert.validity();
        let names = match cert.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_string()),
                    GeneralName::IPAddress(ip) => match ip.len() {
                        4 => Some(
                            std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*ip).ok()?).to_string(),
                        ),
                        16 => Some(
                            std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*ip).ok()?).to_string(),
                        ),
                        _ => None,
                    },
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        Ok(CertInfo {
            issuer: cert.issuer().to_string(),
            names,
            not_before: time(validity.not_before).ok_or("a start date out of range")?,
            not_after: time(validity.not_after).ok_or("an expiry date out of range")?,
            serial: cert.raw_serial_as_string(),
        })
    }

    /// True when the certificate's names cover `host` (a claimed name, possibly a wildcard:
    /// a wildcard host is covered only by the same wildcard).
    pub fn covers(&self, host: &HostPattern) -> bool {
        self.names.iter().any(|name| {
            let name = name.to_ascii_lowercase();
            if name == host.as_str() {
                return true;
            }
            !host.is_wildcard()
                && HostPattern::parse(&name)
                    .is_ok_and(|p| p.is_wildcard() && p.matches(host.as_str()))
        })
    }
}

/// Reads a PEM certificate chain and its private key, checking that they belong together.
pub fn load_pem_files(cert: &Path, key: &Path) -> Result<(Arc<CertifiedKey>, CertInfo), TlsError> {
    let cert_path = cert.display().to_string();
    let key_path = key.display().to_string();
    let bytes = std::fs::read(cert).map_err(|e| TlsError::CertFile {
        path: cert_path.clone(),
        reason: e.to_string(),
    })?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::CertFile {
            path: cert_path.clone(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate { path: cert_path });
    }
    let key_bytes = std::fs::read(key).map_err(|e| TlsError::KeyFile {
        path: key_path.clone(),
        reason: e.to_string(),
    })?;
    let private = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| TlsError::KeyFile {
        path: key_path.clone(),
        reason: match e {
            rustls_pki_types::pem::Error::NoItemsFound => {
                "no PEM private key in it (\"-----BEGIN PRIVATE KEY-----\")".to_string()
            }
            e => e.to_string(),
        },
    })?;
    certified(chain, private).map_err(|e| match e {
        Certified::Key(reason) => TlsError::KeyFile {
            path: key_path.clone(),
            reason,
        },
        Certified::Mismatch(reason) => TlsError::Mismatch {
            cert: cert_path.clone(),
            key: key_path.clone(),
            reason,
        },
        Certified::Parse(reason) => TlsError::Parse {
            path: cert_path.clone(),
            reason,
        },
    })
}

/// Why a chain and key do not make a certificate to serve.
#[derive(Debug)]
pub enum Certified {
    Key(String),
    Mismatch(String),
    Parse(String),
}

/// A chain and its key as rustls serves them, checked to belong together, with the leaf's
/// facts.
pub fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<(Arc<CertifiedKey>, CertInfo), Certified> {
    let info = CertInfo::of(chain.first().map(|c| c.as_ref()).unwrap_or_default())
        .map_err(Certified::Parse)?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| Certified::Key(e.to_string()))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(e) => return Err(Certified::Mismatch(e.to_string())),
    }
    Ok((Arc::new(certified), info))
}

struct Cert {
    hosts: Vec<HostPattern>,
    key: Option<Arc<CertifiedKey>>,
    status: CertStatus,
}

#[derive(Default)]
struct Inner {
    /// By certificate name (an environment's, e.g. `staging` or `admin/staging`).
    certs: BTreeMap<String, Cert>,
    /// Host → certificate name.
    by_host: HostTable<String>,
}

/// Every certificate the front door serves, found by SNI.
#[derive(Default)]
pub struct CertStore {
    inner: RwLock<Inner>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.read().certs.keys().cloned().collect();
        f.debug_struct("CertStore").field("certs", &names).finish()
    }
}

impl CertStore {
    pub fn new() -> Arc<CertStore> {
        Arc::new(CertStore::default())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Declares certificate `name` for `hosts` from `source`, holding no certificate yet
    /// (handshakes for its hosts fail until one is installed). Keeps what it holds when
    /// declared again with the same hosts.
    pub fn declare(&self, name: &str, hosts: &[HostPattern], source: CertSource) {
        let mut inner = self.write();
        if let Some(cert) = inner.certs.get_mut(name)
            && cert.hosts == hosts
        {
            cert.status.source = source;
            return;
        }
        let old = inner.certs.insert(
            name.to_string(),
            Cert {
                hosts: hosts.to_vec(),
                key: None,
                status: CertStatus::new(source, hosts),
            },
        );
        if let Some(old) = old {
            for host in &old.hosts {
                if inner.by_host.claimed(host).is_some_and(|n| n == name) {
                    inner.by_host.remove(host);
                }
            }
        }
        for host in hosts {
            inner.by_host.insert(host, name.to_string());
        }
    }

    /// Serves `key` for certificate `name` from now on (declared first with
    /// [`CertStore::declare`]); clears its error.
    pub fn install(&self, name: &str, key: Arc<CertifiedKey>, info: &CertInfo) {
        let mut inner = self.write();
        let Some(cert) = inner.certs.get_mut(name) else {
            tracing::warn!(
                certificate = name,
                "installing an undeclared certificate: ignored"
            );
            return;
        };
        cert.key = Some(key);
        let s = &mut cert.status;
        s.issuer = Some(info.issuer.clone());
        s.names = info.names.clone();
        s.not_before = Some(info.not_before);
        s.not_after = Some(info.not_after);
        s.serial = Some(info.serial.clone());
        s.loaded_at = Some(Utc::now());
        s.error = None;
        s.error_at = None;
    }

    /// Records why certificate `name` could not be loaded, obtained or renewed; the one it
    /// holds (if any) keeps being served.
    pub fn fail(&self, name: &str, error: &str) {
        if let Some(cert) = self.write().certs.get_mut(name) {
            cert.status.error = Some(error.to_string());
            cert.status.error_at = Some(Utc::now());
        }
    }

    /// Records when certificate `name` is next looked at (ACME's renewal schedule).
    pub fn schedule(&self, name: &str, at: Option<DateTime<Utc>>) {
        if let Some(cert) = self.write().certs.get_mut(name) {
            cert.status.next_attempt = at;
        }
    }

    /// Forgets certificate `name`.
    pub fn remove(&self, name: &str) {
        let mut inner = self.write();
        if let Some(old) = inner.certs.remove(name) {
            for host in &old.hosts {
                if inner.by_host.claimed(host).is_some_and(|n| n == name) {
                    inner.by_host.remove(host);
                }
            }
        }
    }

    /// The certificate served for `host` (a request's name, see [`normalize`]).
    pub fn for_host(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        let inner = self.read();
        let name = inner.by_host.get(host)?;
        inner.certs.get(name)?.key.clone()
    }

    /// The name of the certificate that serves `host`, if any is declared for it.
    pub fn name_for_host(&self, host: &str) -> Option<String> {
        self.read().by_host.get(host).cloned()
    }

    pub fn status(&self, name: &str) -> Option<CertStatus> {
        self.read().certs.get(name).map(|c| c.status.clone())
    }

    /// Every certificate's status, by name.
    pub fn statuses(&self) -> BTreeMap<String, CertStatus> {
        self.read()
            .certs
            .iter()
            .map(|(n, c)| (n.clone(), c.status.clone()))
            .collect()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.for_host(&normalize(hello.server_name()?)?)
    }
}

/// The path prefix of HTTP-01 challenges.
pub const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// ACME HTTP-01 key authorizations by token, while their orders are pending.
#[derive(Default)]
pub struct Challenges {
    tokens: RwLock<HashMap<String, String>>,
}

impl std::fmt::Debug for Challenges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.tokens.read().map(|t| t.len()).unwrap_or(0);
        f.debug_struct("Challenges").field("pending", &n).finish()
    }
}

impl Challenges {
    pub fn new() -> Arc<Challenges> {
        Arc::new(Challenges::default())
    }

    pub fn insert(&self, token: &str, key_authorization: &str) {
        self.tokens
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token.to_string(), key_authorization.to_string());
    }

    pub fn remove(&self, token: &str) {
        self.tokens
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(token);
    }

    /// The body to answer a request for `path` with: `Some` for a pending challenge's path
    /// (`/.well-known/acme-challenge/{token}`), `None` otherwise.
    pub fn answer(&self, path: &str) -> Option<String> {
        let token = path.strip_prefix(CHALLENGE_PREFIX)?;
        self.tokens
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
            .cloned()
    }

    /// True when `path` is an ACME challenge's (answered or not): never redirected to HTTPS.
    /// Only `/.well-known/acme-challenge/{token}` with a token of base64url characters
    /// counts, so no other path (`/.well-known/acme-challenge/../../admin`) slips past the
    /// redirect.
    pub fn is_challenge_path(path: &str) -> bool {
        path.strip_prefix(CHALLENGE_PREFIX).is_some_and(|token| {
            !token.is_empty()
                && token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(
        names: &[&str],
        dir: &Path,
        stem: &str,
    ) -> (std::path::PathBuf, std::path::PathBuf) {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(names).unwrap();
        let (c, k) = (
            dir.join(format!("{stem}.crt")),
            dir.join(format!("{stem}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, signing_key.serialize_pem()).unwrap();
        (c, k)
    }

    fn host(s: &str) -> HostPattern {
        HostPattern::parse(s).unwrap()
    }

    #[test]
    fn pem_files_load_with_their_facts_and_mismatches_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let (c1, k1) = self_signed(
            &["staging.example.com", "*.preview.example.com"],
            dir.path(),
            "one",
        );
        let (_, k2) = self_signed(&["other.example.com"], dir.path(), "two");
        let (_, info) = load_pem_files(&c1, &k1).unwrap();
        assert_eq!(info.names, ["staging.example.com", "*.preview.example.com"]);
        assert!(info.not_after > info.not_before);
        assert!(info.covers(&host("staging.example.com")));
        assert!(info.covers(&host("pr-1.preview.example.com")));
        assert!(info.covers(&host("*.preview.example.com")));
        assert!(!info.covers(&host("example.com")));

        let err = load_pem_files(&c1, &k2).unwrap_err().to_string();
        assert!(err.contains("does not belong to the certificate"), "{err}");
        assert!(err.contains("two.key") && err.contains("one.crt"), "{err}");
        let err = load_pem_files(&dir.path().join("nope.crt"), &k1)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cannot read the certificate file") && err.contains("nope.crt"),
            "{err}"
        );
        // a key where the certificate should be, and the other way round
        let err = load_pem_files(&k1, &k1).unwrap_err().to_string();
        assert!(err.contains("holds no PEM certificate"), "{err}");
        let err = load_pem_files(&c1, &c1).unwrap_err().to_string();
        assert!(err.contains("no PEM private key"), "{err}");
    }

    #[test]
    fn handshakes_find_certificates_by_name_and_failures_keep_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = self_signed(&["staging.example.com"], dir.path(), "s");
        let (key, info) = load_pem_files(&c, &k).unwrap();
        let store = CertStore::new();
        let files = CertSource::Files {
            cert: c.display().to_string(),
            key: k.display().to_string(),
        };
        store.declare(
            "staging",
            &[host("staging.example.com"), host("*.preview.example.com")],
            files,
        );
        assert!(
            store.for_host("staging.example.com").is_none(),
            "declared, not installed"
        );
        store.install("staging", key.clone(), &info);
        assert!(store.for_host("staging.example.com").is_some());
        assert!(store.for_host("pr-7.preview.example.com").is_some());
        assert!(store.for_host("example.com").is_none());

        store.fail("staging", "renewal refused");
        assert!(
            store.for_host("staging.example.com").is_some(),
            "still served"
        );
        let status = store.status("staging").unwrap();
        assert_eq!(status.error.as_deref(), Some("renewal refused"));
        assert_eq!(status.not_after, Some(info.not_after));
        store.install("staging", key, &info);
        assert_eq!(store.status("staging").unwrap().error, None);

        // declared again for other hosts: the old names are let go
        store.declare("staging", &[host("new.example.com")], CertSource::Acme);
        assert!(store.for_host("staging.example.com").is_none());
        assert_eq!(
            store.name_for_host("new.example.com").as_deref(),
            Some("staging")
        );
        store.remove("staging");
        assert!(store.name_for_host("new.example.com").is_none());
        assert!(store.statuses().is_empty());
    }

    #[test]
    fn challenges_answer_their_tokens_only() {
        let c = Challenges::new();
        c.insert("tok", "tok.thumb");
        assert_eq!(
            c.answer("/.well-known/acme-challenge/tok").as_deref(),
            Some("tok.thumb")
        );
        assert_eq!(c.answer("/.well-known/acme-challenge/other"), None);
        assert_eq!(c.answer("/tok"), None);
        assert!(Challenges::is_challenge_path(
            "/.well-known/acme-challenge/other"
        ));
        c.remove("tok");
        assert_eq!(c.answer("/.well-known/acme-challenge/tok"), None);
    }
}

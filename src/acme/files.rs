//! What ACME leaves on disk, under `<state_dir>/acme/` (0700): the account
//! (`account.json`: its key and URL, for one directory) and each certificate
//! (`certs/<name>/cert.pem` and `key.pem`, with `directory`: the ACME directory that issued
//! it, so a certificate from a test CA is replaced once the config names another). Every file is 0600 and written whole: to a
//! temporary file in the same directory, synced, then renamed over the old one.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::tls::CertInfo;

/// Why a file under the ACME dir could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct FileError {
    pub path: String,
    pub reason: String,
}

impl FileError {
    fn new(path: &Path, reason: impl ToString) -> FileError {
        FileError {
            path: path.display().to_string(),
            reason: reason.to_string(),
        }
    }
}

/// The ACME dir of a state dir.
#[derive(Debug, Clone)]
pub struct AcmeDir {
    root: PathBuf,
}

/// The account as stored: the directory it belongs to, the contact it was made with, and the
/// credentials instant-acme restores it from (its private key). No `Debug`: it is a secret.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct StoredAccount {
    pub directory: String,
    pub email: String,
    pub credentials: instant_acme::AccountCredentials,
}

impl AcmeDir {
    pub fn new(state_dir: &Path) -> AcmeDir {
        AcmeDir {
            root: state_dir.join("acme"),
        }
    }

    pub fn account_path(&self) -> PathBuf {
        self.root.join("account.json")
    }

    /// `certs/<name>`; a name such as `app/env` makes two levels.
    pub fn cert_dir(&self, name: &str) -> PathBuf {
        self.root.join("certs").join(name)
    }

    /// The stored account, if there is one. A file that cannot be read is an error (not
    /// "none": a new account would be made over it).
    pub fn load_account(&self) -> Result<Option<StoredAccount>, FileError> {
        let path = self.account_path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(FileError::new(&path, e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| FileError::new(&path, format!("not an account ferry wrote: {e}")))
    }

    pub fn save_account(&self, account: &StoredAccount) -> Result<(), FileError> {
        let path = self.account_path();
        let json = serde_json::to_vec_pretty(account).map_err(|e| FileError::new(&path, e))?;
        self.make_dir(&self.root)?;
        write_private(&path, &json)
    }

    /// The stored chain and key of certificate `name`, checked to belong together, and the
    /// directory that issued it (if recorded): `None` when there is none; an error when the
    /// files are there but unusable.
    pub fn load_cert(&self, name: &str) -> Result<Option<Stored>, FileError> {
        let dir = self.cert_dir(name);
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        if !cert.exists() && !key.exists() {
            return Ok(None);
        }
        let (served, info) =
            crate::tls::load_pem_files(&cert, &key).map_err(|e| FileError::new(&dir, e))?;
        let directory = std::fs::read_to_string(dir.join("directory"))
            .ok()
            .map(|d| d.trim().to_string());
        Ok(Some(Stored {
            served,
            info,
            directory,
        }))
    }

    /// Stores certificate `name` (the chain as PEM, its key as PEM, issued through
    /// `directory`) and gives back what the front door serves; nothing is written unless they
    /// belong together.
    pub fn save_cert(
        &self,
        name: &str,
        directory: &str,
        chain_pem: &str,
        key_pem: &str,
    ) -> Result<(Arc<CertifiedKey>, CertInfo), FileError> {
        let dir = self.cert_dir(name);
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(chain_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| FileError::new(&dir, format!("the issued chain: {e}")))?;
        if chain.is_empty() {
            return Err(FileError::new(&dir, "the CA sent no certificate"));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| FileError::new(&dir, format!("the new key: {e}")))?;
        let served = crate::tls::certified(chain, key).map_err(|e| {
            let (crate::tls::Certified::Key(reason)
            | crate::tls::Certified::Mismatch(reason)
            | crate::tls::Certified::Parse(reason)) = e;
            FileError::new(
                &dir,
                format!("the issued certificate does not fit its key: {reason}"),
            )
        })?;
        self.make_dir(&dir)?;
        // the key first: a stop between the two leaves a pair that does not match, which the
        // next start refuses and orders again, never a new chain with an old key
        write_private(&dir.join("key.pem"), key_pem.as_bytes())?;
        write_private(&dir.join("cert.pem"), chain_pem.as_bytes())?;
        write_private(&dir.join("directory"), format!("{directory}\n").as_bytes())?;
        Ok(served)
    }

    /// Creates `dir` and its parents up to the ACME dir, each 0700.
    fn make_dir(&self, dir: &Path) -> Result<(), FileError> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| FileError::new(dir, e))?;
        // made earlier under another umask, or by hand
        let mut at = Some(dir);
        while let Some(d) = at.filter(|d| d.starts_with(&self.root)) {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| FileError::new(d, e))?;
            at = d.parent();
        }
        Ok(())
    }
}

/// A certificate read back from the ACME dir.
pub struct Stored {
    pub served: Arc<CertifiedKey>,
    pub info: CertInfo,
    /// The directory that issued it; `None` when not recorded.
    pub directory: Option<String>,
}

/// Writes `bytes` to `path` with mode 0600, whole or not at all.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    // tempfile makes its files 0600
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(|e| FileError::new(dir, e))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| FileError::new(tmp.path(), e))?;
    tmp.persist(path).map_err(|e| FileError::new(path, e))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    const DIR: &str = "https://acme.example.test/directory";

    #[test]
    fn certificates_are_stored_private_and_read_back() {
        let state = tempfile::tempdir().unwrap();
        let dir = AcmeDir::new(state.path());
        assert!(dir.load_cert("staging").unwrap().is_none());
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["staging.example.com".to_string()]).unwrap();
        let (_, info) = dir
            .save_cert("staging", DIR, &cert.pem(), &signing_key.serialize_pem())
            .unwrap();
        assert_eq!(info.names, ["staging.example.com"]);
        let again = dir.load_cert("staging").unwrap().unwrap();
        assert_eq!(again.info, info);
        assert_eq!(again.directory.as_deref(), Some(DIR));
        let certs = dir.cert_dir("staging");
        assert_eq!(mode(&certs.join("cert.pem")), 0o600);
        assert_eq!(mode(&certs.join("key.pem")), 0o600);
        assert_eq!(mode(&certs), 0o700);
        assert_eq!(mode(&state.path().join("acme")), 0o700);
        assert_eq!(mode(&state.path().join("acme/certs")), 0o700);
        assert_eq!(mode(&certs.join("directory")), 0o600);
        // no temporary file left behind
        assert_eq!(std::fs::read_dir(&certs).unwrap().count(), 3);

        // a key that is not the certificate's is refused and nothing is replaced
        let other = rcgen::KeyPair::generate().unwrap();
        let err = dir
            .save_cert("staging", DIR, &cert.pem(), &other.serialize_pem())
            .unwrap_err();
        assert!(err.to_string().contains("does not fit its key"), "{err}");
        assert_eq!(dir.load_cert("staging").unwrap().unwrap().info, info);

        // a pair broken on disk is an error, not "none"
        std::fs::write(certs.join("key.pem"), other.serialize_pem()).unwrap();
        let err = dir.load_cert("staging").err().unwrap();
        assert!(err.to_string().contains("does not belong"), "{err}");
    }
}

//! Certificate files (`tls = { cert, key }`): loaded into the [`CertStore`] at start and
//! reloaded when they change ([`load_and_watch`]), checked by `ferry check`.

use std::path::PathBuf;

use crate::config::{Config, Environment, Tls};
use crate::tls::{CertInfo, CertStore, load_pem_files};

/// What loading one environment's certificate files found.
#[derive(Debug)]
pub struct FileCheck {
    pub app: String,
    pub env: String,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The leaf's facts, or why the files cannot be served.
    pub result: Result<CertInfo, String>,
    /// Claimed hosts the certificate does not cover (browsers would refuse them).
    pub uncovered: Vec<String>,
}

/// Loads the certificate files of every environment with `tls = { cert, key }`.
pub fn check_files(config: &Config) -> Vec<FileCheck> {
    config
        .environments
        .iter()
        .filter_map(|env| check_env(&config.app.name, env))
        .collect()
}

fn check_env(app: &str, env: &Environment) -> Option<FileCheck> {
    let Some(Tls::Files { cert, key }) = &env.tls else {
        return None;
    };
    let result = load_pem_files(cert, key)
        .map(|(_, info)| info)
        .map_err(|e| e.to_string());
    let uncovered = match &result {
        Ok(info) => env
            .hosts
            .iter()
            .filter(|h| !info.covers(h))
            .map(ToString::to_string)
            .collect(),
        Err(_) => Vec::new(),
    };
    Some(FileCheck {
        app: app.to_string(),
        env: env.name.clone(),
        cert: cert.clone(),
        key: key.clone(),
        result,
        uncovered,
    })
}

/// How often certificate files are checked for changes (their modification time, size and
/// inode): a renewed certificate (certbot, a copied file) is served within this long,
/// without a restart.
pub const POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// One environment's certificate files, as the store knows them.
#[derive(Debug, Clone)]
pub struct Files {
    /// Its name in the store (see [`super::cert_name`]).
    pub name: String,
    /// For messages: `app demo, environment staging`.
    pub whose: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Files {
    /// The certificate files of `entries` (those with `tls = { cert, key }`).
    pub fn of(entries: &[super::Entry]) -> Vec<Files> {
        entries
            .iter()
            .filter_map(|e| match &e.tls {
                Some(Tls::Files { cert, key }) => Some(Files {
                    name: super::cert_name(&e.app, &e.env),
                    whose: format!("app {}, environment {}", e.app, e.env),
                    cert: cert.clone(),
                    key: key.clone(),
                }),
                _ => None,
            })
            .collect()
    }

    /// What identifies the files' current contents without reading them.
    fn stamp(&self) -> Option<Stamp> {
        use std::os::unix::fs::MetadataExt;
        let one = |p: &PathBuf| {
            std::fs::metadata(p)
                .ok()
                .map(|m| (m.mtime(), m.mtime_nsec(), m.len(), m.ino()))
        };
        Some((one(&self.cert)?, one(&self.key)?))
    }

    /// Loads the files into `store` (declared by [`super::FrontDoor::new`]); a failure is
    /// logged and recorded in the certificate's status, and what it served before stays.
    pub fn load(&self, store: &CertStore) -> bool {
        match load_pem_files(&self.cert, &self.key) {
            Ok((key, info)) => {
                store.install(&self.name, key, &info);
                tracing::info!(certificate = %self.name, file = %self.cert.display(), issuer = %info.issuer, expires = %info.not_after, "loaded a certificate");
                true
            }
            Err(e) => {
                let message = format!("{}: {e}", self.whose);
                tracing::error!(certificate = %self.name, error = %message, "cannot load a certificate");
                store.fail(&self.name, &message);
                false
            }
        }
    }
}

type Stamp = ((i64, i64, u64, u64), (i64, i64, u64, u64));

/// The certificate files being watched, as last loaded.
pub struct Watch {
    files: Vec<Files>,
    stamps: Vec<Option<Stamp>>,
    store: std::sync::Arc<CertStore>,
}

/// Loads every certificate now (before the https listener serves), for [`Watch::run`] to
/// reload those whose files change.
pub fn load(files: Vec<Files>, store: std::sync::Arc<CertStore>) -> Watch {
    let stamps = files
        .iter()
        .map(|f| {
            let stamp = f.stamp();
            f.load(&store);
            stamp
        })
        .collect();
    Watch {
        files,
        stamps,
        store,
    }
}

impl Watch {
    /// Checks the files every [`POLL`] and reloads those that changed, until `shutdown`;
    /// the file system is read on a blocking thread, never on the one serving requests.
    pub async fn run(mut self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        if self.files.is_empty() {
            return;
        }
        loop {
            tokio::select! {
                () = tokio::time::sleep(POLL) => {}
                () = crate::proxy::stopped(&mut shutdown) => return,
            }
            self = match tokio::task::spawn_blocking(move || {
                self.poll();
                self
            })
            .await
            {
                Ok(watch) => watch,
                Err(_) => return,
            };
        }
    }

    /// Reloads the certificates whose files changed since they were last seen.
    fn poll(&mut self) {
        for (f, seen) in self.files.iter().zip(self.stamps.iter_mut()) {
            let now = f.stamp();
            if now != *seen {
                // a file caught half-written fails to load; the end of the write changes its
                // stamp again, and the next poll loads it
                f.load(&self.store);
                *seen = now;
            }
        }
    }
}

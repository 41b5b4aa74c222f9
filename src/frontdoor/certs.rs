//! Certificate files (`tls = { cert, key }`): loaded into the [`CertStore`] at start, checked
//! by `ferry check`.

use std::path::PathBuf;

use crate::config::{Config, Environment, Tls};
use crate::tls::{CertInfo, load_pem_files};

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

//! Certificates obtained and renewed by ferry from an ACME CA (Let's Encrypt by default), for
//! environments with `tls = "acme"`.
//!
//! One certificate per environment (named after it) covers that environment's hosts. At the
//! start, the stored ones ([`files`]) are installed into the [`CertStore`] at once, so a
//! restarted ferry serves them before anything is ordered; then one task per certificate
//! orders what is missing, no longer covers the hosts, or expires within `renew_before`,
//! answering HTTP-01 through [`Challenges`] (the front door's http listener). Failures — the
//! CA unreachable, refusing, a challenge not validated — are recorded in the certificate's
//! status (the one held keeps being served) and tried again after 10 s, doubling up to
//! `check_interval` (at most an hour); each certificate on its own, none blocking the start.

pub mod files;
mod order;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{OnceCell, watch};
use tokio::task::JoinHandle;

use crate::config::Acme as Settings;
use crate::hosts::HostPattern;
use crate::tls::{CertInfo, CertSource, CertStore, Challenges};
use files::AcmeDir;

pub use order::describe;

/// Why a certificate could not be obtained.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("cannot reach the ACME directory {directory}: {reason}")]
    Unreachable { directory: String, reason: String },
    #[error("the ACME server refused: {reason}")]
    Refused { reason: String },
    #[error("HTTP-01 validation failed: {reason}")]
    Validation { reason: String },
    #[error("cannot set up the ACME client: {reason}")]
    Client { reason: String },
    #[error(
        "{0} is a wildcard: it needs a DNS-01 challenge, which ferry does not answer; give it a certificate from files (tls = {{ cert = \"…\", key = \"…\" }})"
    )]
    Wildcard(String),
    #[error("the ACME server did not finish within {0:?}")]
    Timeout(Duration),
    #[error("cannot store: {0}")]
    Files(#[from] files::FileError),
}

/// A certificate ferry keeps for an environment's hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// Its name in the [`CertStore`] (`app/env`), and its directory under `acme/certs/`.
    pub name: String,
    pub app: String,
    pub env: String,
    pub hosts: Vec<HostPattern>,
}

/// The first wait after a failure; doubled after each further one.
const FIRST_RETRY: Duration = Duration::from_secs(10);
/// The longest wait between attempts after failures (or `check_interval`, if shorter).
const MAX_RETRY: Duration = Duration::from_secs(3600);
/// An order (account, challenges, issuance) that takes longer is given up and tried again.
const ORDER_LIMIT: Duration = Duration::from_secs(300);

/// The ACME side of the front door: keeps the wanted certificates in the [`CertStore`].
pub struct Acme {
    settings: Settings,
    dir: AcmeDir,
    certs: Arc<CertStore>,
    challenges: Arc<Challenges>,
    /// Made (or restored) once, on the first order, and shared by every certificate.
    account: OnceCell<instant_acme::Account>,
}

impl std::fmt::Debug for Acme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acme")
            .field("directory", &self.settings.directory)
            .finish_non_exhaustive()
    }
}

impl Acme {
    pub fn new(
        settings: Settings,
        state_dir: &std::path::Path,
        certs: Arc<CertStore>,
        challenges: Arc<Challenges>,
    ) -> Arc<Acme> {
        Arc::new(Acme {
            settings,
            dir: AcmeDir::new(state_dir),
            certs,
            challenges,
            account: OnceCell::new(),
        })
    }

    /// Declares every wanted certificate, installs the stored ones at once (even expiring ones,
    /// or ones from another directory: they serve until replaced), and starts a task per
    /// certificate that orders and renews it. Returns without waiting for any order.
    /// The tasks end when `stop` turns true (the daemon's listeners stopping); the handle
    /// resolves once they all have.
    pub fn start(
        self: &Arc<Self>,
        wanted: Vec<Wanted>,
        stop: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        let mut tasks = Vec::new();
        for want in wanted {
            self.certs
                .declare(&want.name, &want.hosts, CertSource::Acme);
            let held = match self.dir.load_cert(&want.name) {
                Ok(Some(stored)) => {
                    let info = stored.info;
                    self.certs.install(&want.name, stored.served, &info);
                    tracing::info!(certificate = %want.name, serial = %info.serial, expires = %info.not_after, "serving the stored certificate");
                    if stored.directory.as_deref() == Some(self.settings.directory.as_str()) {
                        Some(info)
                    } else {
                        // issued by another CA (a test one before production): served until
                        // this directory's replaces it, at once
                        tracing::info!(certificate = %want.name, "the stored certificate comes from another ACME directory; ordering one from {}", self.settings.directory);
                        None
                    }
                }
                Ok(None) => None,
                Err(e) => {
                    tracing::warn!(certificate = %want.name, error = %e, "the stored certificate is unusable; ordering a new one");
                    None
                }
            };
            tasks.push(tokio::spawn(self.clone().keep(want, held, stop.clone())));
        }
        tokio::spawn(async move {
            for task in tasks {
                let _ = task.await;
            }
        })
    }

    /// Whether `held` must be replaced now: missing, not covering every host, or expiring
    /// within `renew_before`. Otherwise, how long until it must.
    fn due(&self, want: &Wanted, held: Option<&CertInfo>) -> Option<Duration> {
        let info = held?;
        if !want.hosts.iter().all(|h| info.covers(h)) {
            return None;
        }
        let renew_at =
            info.not_after - chrono::Duration::from_std(self.settings.renew_before).ok()?;
        (renew_at - Utc::now())
            .to_std()
            .ok()
            .filter(|d| !d.is_zero())
    }

    /// Keeps one certificate: orders it when due, waits, tries again after failures.
    async fn keep(
        self: Arc<Self>,
        want: Wanted,
        mut held: Option<CertInfo>,
        mut stop: watch::Receiver<bool>,
    ) {
        let hosts = want
            .hosts
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let mut failures: u32 = 0;
        loop {
            let wait = match self.due(&want, held.as_ref()) {
                // not yet due: look again then, or at the next check
                Some(until) => until.min(self.settings.check_interval),
                None => match self.renew(&want, &mut stop).await {
                    Some(Ok(info)) => {
                        tracing::info!(certificate = %want.name, hosts = %hosts, serial = %info.serial, expires = %info.not_after, "obtained a certificate");
                        held = Some(info);
                        failures = 0;
                        self.settings.check_interval
                    }
                    Some(Err(e)) => {
                        let message = format!(
                            "no certificate for app {} environment {} ({hosts}): {e}",
                            want.app, want.env
                        );
                        tracing::warn!(certificate = %want.name, "{message}");
                        self.certs.fail(&want.name, &message);
                        if matches!(e, AcmeError::Wildcard(_)) {
                            // nothing changes by trying again
                            self.certs.schedule(&want.name, None);
                            let _ = stop.wait_for(|s| *s).await;
                            return;
                        }
                        failures = failures.saturating_add(1);
                        retry_after(failures, self.settings.check_interval)
                    }
                    None => return,
                },
            };
            let next = Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default();
            self.certs.schedule(&want.name, Some(next));
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// One attempt: orders, stores and installs the certificate. `None` when stopped first.
    async fn renew(
        &self,
        want: &Wanted,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<Result<CertInfo, AcmeError>> {
        let attempt = async {
            if let Some(wild) = want.hosts.iter().find(|h| h.is_wildcard()) {
                return Err(AcmeError::Wildcard(wild.to_string()));
            }
            let hosts: Vec<String> = want.hosts.iter().map(ToString::to_string).collect();
            tokio::time::timeout(ORDER_LIMIT, async {
                let account = self
                    .account
                    .get_or_try_init(|| order::account(&self.settings, &self.dir))
                    .await?;
                let (chain, key) =
                    order::obtain(&self.settings, account, &hosts, &self.challenges).await?;
                let (served, info) =
                    self.dir
                        .save_cert(&want.name, &self.settings.directory, &chain, &key)?;
                self.certs.install(&want.name, served, &info);
                Ok(info)
            })
            .await
            .unwrap_or(Err(AcmeError::Timeout(ORDER_LIMIT)))
        };
        tokio::select! {
            result = attempt => Some(result),
            _ = stop.wait_for(|s| *s) => None,
        }
    }
}

/// The wait after the `failures`-th failure in a row: 10 s, doubling, at most `cap` (and at
/// most an hour).
fn retry_after(failures: u32, cap: Duration) -> Duration {
    let doubled = FIRST_RETRY.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    doubled.min(cap).min(MAX_RETRY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_to_a_cap() {
        let day = Duration::from_secs(86_400);
        let waits: Vec<u64> = (1..=12).map(|n| retry_after(n, day).as_secs()).collect();
        assert_eq!(
            waits,
            [10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600, 3600, 3600]
        );
        assert_eq!(retry_after(3, Duration::from_secs(15)).as_secs(), 15);
        assert_eq!(retry_after(u32::MAX, day).as_secs(), 3600);
    }
}

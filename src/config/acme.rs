//! `[acme]`: where certificates for environments with `tls = "acme"` come from — the ACME
//! directory (Let's Encrypt's production one by default), the account's contact address, a
//! root to trust for a private or test directory's HTTPS, and when to renew.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::Diagnostic;
use super::duration::HumanDuration;
use super::raw::Fail;

/// Let's Encrypt's production directory, the default.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// A certificate is renewed this long before it expires unless `renew_before` says otherwise.
pub const DEFAULT_RENEW_BEFORE: Duration = Duration::from_secs(30 * 86_400);

/// How often certificates are looked at unless `check_interval` says otherwise.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(12 * 3600);

/// `[acme]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acme {
    /// The account's contact address.
    pub email: String,
    /// The directory URL (https).
    pub directory: String,
    /// A PEM root trusted (alone) for the directory's HTTPS; `None`: the system's roots.
    pub ca: Option<PathBuf>,
    /// A certificate is renewed once it expires within this long.
    pub renew_before: Duration,
    /// How often each certificate's expiry is looked at (and the longest wait between two
    /// attempts after failures).
    pub check_interval: Duration,
}

/// `[acme]` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAcme {
    email: Option<Spanned<String>>,
    directory: Option<Spanned<String>>,
    ca: Option<Spanned<String>>,
    renew_before: Option<Spanned<HumanDuration>>,
    check_interval: Option<Spanned<HumanDuration>>,
}

/// Checks `[acme]` (its span: the table, for a missing key).
pub(super) fn validate(
    raw: Spanned<RawAcme>,
    fail: &Fail,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> Result<Acme, Diagnostic> {
    let table = raw.span();
    raw.into_inner().validate(table, fail, resolve)
}

impl RawAcme {
    fn validate(
        self,
        table: std::ops::Range<usize>,
        fail: &Fail,
        resolve: &dyn Fn(&str) -> PathBuf,
    ) -> Result<Acme, Diagnostic> {
        let email = match self.email {
            Some(e) if valid_email(e.get_ref()) => e.into_inner(),
            Some(e) => {
                return Err(fail(
                    e.span(),
                    format!("[acme] email \"{}\" is not an email address", e.get_ref()),
                    "write the address the certificate authority may write to, like \"ops@example.com\"",
                ));
            }
            None => {
                return Err(fail(
                    table,
                    "[acme] has no email".into(),
                    "add email = \"ops@example.com\" to [acme]: the ACME account's contact",
                ));
            }
        };
        let directory = match self.directory {
            None => LETS_ENCRYPT.to_string(),
            Some(d) => {
                let url = d.get_ref().trim();
                let host = url
                    .strip_prefix("https://")
                    .map(|rest| rest.split(['/', '?', '#']).next().unwrap_or(""));
                if !host.is_some_and(|h| !h.is_empty() && !h.contains(char::is_whitespace)) {
                    return Err(fail(
                        d.span(),
                        format!("[acme] directory \"{url}\" is not an https:// URL"),
                        &format!("write the ACME directory's URL, like \"{LETS_ENCRYPT}\""),
                    ));
                }
                url.to_string()
            }
        };
        let ca = match self.ca {
            None => None,
            Some(c) => {
                let path = resolve(c.get_ref());
                check_pem_root(&path).map_err(|reason| {
                    fail(
                        c.span(),
                        format!("[acme] ca {}: {reason}", path.display()),
                        "point ca at the PEM file of the root that signed the directory's HTTPS certificate",
                    )
                })?;
                Some(path)
            }
        };
        let renew_before = self
            .renew_before
            .as_ref()
            .map_or(DEFAULT_RENEW_BEFORE, |d| d.get_ref().0);
        if let Some(d) = self
            .renew_before
            .as_ref()
            .filter(|d| d.get_ref().0.is_zero())
        {
            return Err(fail(
                d.span(),
                "[acme] renew_before = \"0s\" would renew only once expired".into(),
                "write how long before expiry to renew, like \"30d\"",
            ));
        }
        let check_interval = match self.check_interval {
            None => DEFAULT_CHECK_INTERVAL,
            Some(d) if d.get_ref().0 >= Duration::from_secs(1) => d.get_ref().0,
            Some(d) => {
                return Err(fail(
                    d.span(),
                    "[acme] check_interval must be at least 1s".into(),
                    "write how often to look at expiry dates, like \"12h\"",
                ));
            }
        };
        Ok(Acme {
            email,
            directory,
            ca,
            renew_before,
            check_interval,
        })
    }
}

/// `tls = "acme"` needs `[acme]` (its email at least): the error points at the first
/// environment asking for it.
pub(super) fn check_needed(
    acme: Option<&Acme>,
    environments: &[super::Environment],
    fail: &Fail,
    text: &str,
) -> Result<(), Diagnostic> {
    if acme.is_some() {
        return Ok(());
    }
    let Some(env) = environments
        .iter()
        .find(|e| e.tls == Some(super::Tls::Acme))
    else {
        return Ok(());
    };
    let header = format!("[environments.{}]", env.group);
    let span = text
        .find(&header)
        .map_or(0..0, |at| at + 1..at + header.len() - 1);
    Err(fail(
        span,
        format!(
            "environment {} has tls = \"acme\" but there is no [acme] table",
            env.group
        ),
        "add [acme] with email = \"ops@example.com\" (the ACME account's contact); the CA is Let's Encrypt unless `directory` names another",
    ))
}

/// `local@domain.tld`, nothing around it (no `mailto:`, no spaces, one address).
fn valid_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    let ok_char = |c: char| c.is_ascii_graphic() && !matches!(c, '@' | ',' | ';' | '<' | '>');
    !local.is_empty()
        && email.len() <= 254
        && local.chars().all(ok_char)
        && !local.contains(':')
        && crate::hosts::HostPattern::parse(domain).is_ok_and(|d| !d.is_wildcard())
        && domain.contains('.')
}

/// Reads `path` as a PEM file holding at least one certificate.
fn check_pem_root(path: &Path) -> Result<(), String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let bytes = std::fs::read(path).map_err(|e| format!("cannot be read: {e}"))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("is not PEM: {e}"))?;
    if certs.is_empty() {
        return Err("holds no PEM certificate (\"-----BEGIN CERTIFICATE-----\")".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::valid_email;

    #[test]
    fn email_shapes() {
        for good in ["ops@example.com", "a.b+ferry@mail.example.co.uk"] {
            assert!(valid_email(good), "{good}");
        }
        for bad in [
            "",
            "ops",
            "ops@",
            "@example.com",
            "ops@localhost",
            "mailto:ops@example.com",
            "ops@example.com, dev@example.com",
            "ops @example.com",
            "ops@ex ample.com",
            "a@b@example.com",
        ] {
            assert!(!valid_email(bad), "{bad}");
        }
    }
}

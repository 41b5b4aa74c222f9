//! The front door's keys: `[server] http` and `https` (one pair of public ports for every
//! environment), and per environment `hosts`, `path_prefix`, `tls` and `redirect_https`.
//!
//! Rules checked here: an environment needs `listen` or `hosts`; `hosts` needs `[server] http`
//! or `https`; `tls` needs `[server] https` and `hosts`; a host name (with the same
//! `path_prefix`) is claimed once; a host gets its certificate from one environment only;
//! `tls = "acme"` takes no wildcard (HTTP-01 cannot prove one); `hosts` and several `slots`
//! do not mix (every slot would claim the same names). Certificate files are checked when
//! `serve` or `ferry check` loads them, not here: a missing file must not stop the others.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::Diagnostic;
use super::raw::{Fail, parse_addr};
use crate::hosts::HostPattern;

/// Where an environment's certificate comes from (`tls = { cert, key }` or `tls = "acme"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tls {
    /// PEM files (absolute paths), reloaded when they change.
    Files { cert: PathBuf, key: PathBuf },
    /// Obtained and renewed through `[acme]`.
    Acme,
}

/// `tls` as written.
#[derive(Deserialize)]
#[serde(
    untagged,
    expecting = "\"acme\" or a table like { cert = \"cert.pem\", key = \"key.pem\" }"
)]
pub(super) enum RawTls {
    Word(String),
    Files(RawTlsFiles),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTlsFiles {
    cert: String,
    key: String,
}

/// An environment's front door keys as written.
pub(super) struct RawFront<'a> {
    pub listen: Option<&'a Spanned<String>>,
    pub slots: Option<(std::ops::Range<usize>, u32)>,
    pub hosts: &'a [Spanned<String>],
    pub path_prefix: Option<&'a Spanned<String>>,
    pub tls: Option<&'a Spanned<RawTls>>,
    pub redirect_https: Option<&'a Spanned<bool>>,
}

/// An environment's front door keys, validated.
#[derive(Debug, Clone, Default)]
pub(super) struct Front {
    pub hosts: Vec<HostPattern>,
    pub path_prefix: Option<String>,
    pub tls: Option<Tls>,
    pub redirect_https: bool,
}

/// What the environments validated so far claimed: host names (with their path prefix) and
/// which environment gives each host its certificate.
pub(super) struct Claims {
    http: Option<SocketAddr>,
    https: Option<SocketAddr>,
    /// (host, prefix or "") → environment.
    routes: HashMap<(HostPattern, String), String>,
    /// host → the environment whose `tls` serves it.
    certs: HashMap<HostPattern, String>,
    /// preview host → the environment it previews: every path of it, so no route may share
    /// it whatever its prefix.
    previews: HashMap<HostPattern, String>,
}

/// `[server] http` and `https`, with their spans.
pub(super) fn server_addrs(
    http: Option<&Spanned<String>>,
    https: Option<&Spanned<String>>,
    fail: &Fail,
    taken: &mut HashMap<SocketAddr, String>,
) -> Result<(Option<SocketAddr>, Option<SocketAddr>), Diagnostic> {
    let mut one = |raw: Option<&Spanned<String>>, key: &str| -> Result<_, Diagnostic> {
        let Some(raw) = raw else { return Ok(None) };
        let addr = parse_addr(raw, fail)?;
        if let Some(other) = taken.get(&addr) {
            return Err(fail(
                raw.span(),
                format!("[server] {key} = \"{addr}\" is already used by {other}"),
                "give the front door's ports to it alone, like http = \"0.0.0.0:80\" and https = \"0.0.0.0:443\"",
            ));
        }
        taken.insert(addr, format!("[server] {key}"));
        Ok(Some(addr))
    };
    Ok((one(http, "http")?, one(https, "https")?))
}

impl Claims {
    pub(super) fn new(http: Option<SocketAddr>, https: Option<SocketAddr>) -> Claims {
        Claims {
            http,
            https,
            routes: HashMap::new(),
            previews: HashMap::new(),
            certs: HashMap::new(),
        }
    }

    /// Validates environment `name`'s keys and records its claims.
    pub(super) fn environment(
        &mut self,
        name: &str,
        raw: RawFront<'_>,
        env_span: std::ops::Range<usize>,
        fail: &Fail,
        resolve: &dyn Fn(&str) -> PathBuf,
    ) -> Result<Front, Diagnostic> {
        if raw.listen.is_none() && raw.hosts.is_empty() {
            return Err(fail(
                env_span,
                format!("environment {name} has neither `listen` nor `hosts`"),
                "add listen = \"127.0.0.1:8081\" (a port of its own), or hosts = [\"staging.example.com\"] (served on [server] http/https), or both",
            ));
        }
        let first_host_span = raw.hosts.first().map(Spanned::span);
        if let (Some(span), Some((_, slots))) = (first_host_span.clone(), &raw.slots)
            && *slots > 1
        {
            return Err(fail(
                span,
                format!(
                    "environment {name} has {slots} slots and `hosts`: every slot would claim the same names"
                ),
                "slots are separate environments on consecutive ports; give each its own [environments.NAME] table with its own hosts",
            ));
        }
        if raw.listen.is_none()
            && let Some((span, slots)) = &raw.slots
            && *slots > 1
        {
            return Err(fail(
                span.clone(),
                format!("environment {name} has {slots} slots but no `listen`"),
                "slots run on consecutive ports from `listen`: add listen = \"127.0.0.1:8081\"",
            ));
        }
        if let Some(span) = first_host_span.clone()
            && self.http.is_none()
            && self.https.is_none()
        {
            return Err(fail(
                span,
                format!("environment {name} has `hosts` but ferry has no front door"),
                "add http = \"0.0.0.0:80\" and/or https = \"0.0.0.0:443\" to [server]",
            ));
        }
        let mut hosts: Vec<HostPattern> = Vec::new();
        for h in raw.hosts {
            let host = HostPattern::parse(h.get_ref())
                .map_err(|e| fail(h.span(), e.to_string(), "write a name like \"staging.example.com\" or \"*.preview.example.com\", without scheme, port or path"))?;
            hosts.push(host);
        }
        let path_prefix = match raw.path_prefix {
            None => None,
            Some(p) => {
                if hosts.is_empty() {
                    return Err(fail(
                        p.span(),
                        format!("environment {name} has `path_prefix` but no `hosts`"),
                        "a path prefix routes requests on the front door: add hosts = [\"example.com\"]",
                    ));
                }
                Some(path_prefix(p, fail)?)
            }
        };
        for (h, host) in raw.hosts.iter().zip(&hosts) {
            if let Some(other) = self.previews.get(host) {
                return Err(fail(
                    h.span(),
                    format!(
                        "host {host} of environment {name} is the preview host of environment {other}"
                    ),
                    "a preview host routes every path to one environment's new instance: give one of them another name",
                ));
            }
            let key = (host.clone(), path_prefix.clone().unwrap_or_default());
            if let Some(other) = self.routes.get(&key) {
                let on = match &path_prefix {
                    Some(p) => format!("{host}{p}"),
                    None => host.to_string(),
                };
                let whom = if other == name {
                    format!("twice by environment {name}")
                } else {
                    format!("by environments {other} and {name}")
                };
                return Err(fail(
                    h.span(),
                    format!("host {on} is claimed {whom}"),
                    "a host name (and path_prefix) routes to one environment: remove it from one of them",
                ));
            }
            self.routes.insert(key, name.to_string());
        }
        let tls = match raw.tls {
            None => None,
            Some(t) => {
                let span = t.span();
                let tls = match t.get_ref() {
                    RawTls::Word(w) if w == "acme" => Tls::Acme,
                    RawTls::Word(w) => {
                        return Err(fail(
                            span,
                            format!("tls = \"{w}\" is not a certificate source"),
                            "write tls = \"acme\", or tls = { cert = \"cert.pem\", key = \"key.pem\" }",
                        ));
                    }
                    RawTls::Files(f) => {
                        for (file, key) in [(&f.cert, "cert"), (&f.key, "key")] {
                            if file.trim().is_empty() {
                                return Err(fail(
                                    span.clone(),
                                    format!("tls {key} is empty"),
                                    "name the PEM file, relative to this config or absolute",
                                ));
                            }
                        }
                        Tls::Files {
                            cert: resolve(&f.cert),
                            key: resolve(&f.key),
                        }
                    }
                };
                if hosts.is_empty() {
                    return Err(fail(
                        span,
                        format!("environment {name} has `tls` but no `hosts`"),
                        "certificates are served by host name on [server] https: add hosts = [\"example.com\"]",
                    ));
                }
                if self.https.is_none() {
                    return Err(fail(
                        span,
                        format!("environment {name} has `tls` but [server] has no `https`"),
                        "add https = \"0.0.0.0:443\" to [server]",
                    ));
                }
                if tls == Tls::Acme
                    && let Some(wild) = hosts.iter().position(HostPattern::is_wildcard)
                {
                    return Err(fail(
                        raw.hosts[wild].span(),
                        format!(
                            "tls = \"acme\" cannot obtain a certificate for {} (HTTP-01 cannot prove a wildcard)",
                            hosts[wild]
                        ),
                        "list the names themselves, or give this environment a wildcard certificate with tls = { cert, key }",
                    ));
                }
                for (h, host) in raw.hosts.iter().zip(&hosts) {
                    if let Some(other) = self.certs.get(host)
                        && other != name
                    {
                        return Err(fail(
                            h.span(),
                            format!(
                                "host {host} gets a certificate from environments {other} and {name}"
                            ),
                            "environments sharing a host (with different path_prefix) take its certificate from one `tls`: remove `tls` from one of them",
                        ));
                    }
                    self.certs.insert(host.clone(), name.to_string());
                }
                Some(tls)
            }
        };
        let redirect_https = match raw.redirect_https {
            None => tls.is_some(),
            Some(r) if *r.get_ref() && tls.is_none() => {
                return Err(fail(
                    r.span(),
                    format!("environment {name} has redirect_https = true but no `tls`"),
                    "redirecting to https needs a certificate: add tls, or remove redirect_https",
                ));
            }
            Some(r) => *r.get_ref(),
        };
        Ok(Front {
            hosts,
            path_prefix,
            tls,
            redirect_https,
        })
    }
}

impl Claims {
    /// Validates environment `name`'s `preview_hosts` (served on the front door like `hosts`,
    /// every path, reaching a new instance before the switch) and records their claims.
    pub(super) fn preview_hosts(
        &mut self,
        name: &str,
        raw: &[Spanned<String>],
        fail: &Fail,
    ) -> Result<Vec<HostPattern>, Diagnostic> {
        let mut hosts = Vec::new();
        for h in raw {
            // served on plain HTTP only: no certificate covers a preview host
            if self.http.is_none() {
                return Err(fail(
                    h.span(),
                    format!(
                        "environment {name} has `preview_hosts` but ferry's front door has no plain HTTP"
                    ),
                    "preview hosts are served on [server] http only (no certificate covers them): add http = \"0.0.0.0:80\" to [server], or use preview_listen = \"127.0.0.1:8182\"",
                ));
            }
            let host = HostPattern::parse(h.get_ref()).map_err(|e| {
                fail(
                    h.span(),
                    e.to_string(),
                    "write a name like \"preview.staging.example.com\", without scheme, port or path",
                )
            })?;
            let other = match self
                .routes
                .iter()
                .find(|((claimed, _), _)| *claimed == host)
            {
                Some(((_, prefix), env)) if prefix.is_empty() => {
                    Some(format!("claimed by environment {env}"))
                }
                Some(((_, prefix), env)) => Some(format!(
                    "claimed by environment {env} (path_prefix {prefix})"
                )),
                None => (self.previews.get(&host))
                    .map(|env| format!("the preview host of environment {env}")),
            };
            if let Some(other) = other {
                return Err(fail(
                    h.span(),
                    format!("preview host {host} of environment {name} is already {other}"),
                    "a preview host routes every path to one environment's new instance only: give it a name of its own",
                ));
            }
            self.previews.insert(host.clone(), name.to_string());
            hosts.push(host);
        }
        Ok(hosts)
    }
}

/// Environment names become listener names (systemd's `FileDescriptorName=`, the
/// handover), beside ferry's own: `api`, `http`, `https`.
pub(super) fn listener_name_free(
    name: &str,
    span: std::ops::Range<usize>,
    fail: &Fail,
) -> Result<(), Diagnostic> {
    if matches!(name, "api" | "http" | "https") {
        return Err(fail(
            span,
            format!("environment name \"{name}\" is the name of one of ferry's own listeners"),
            "name it otherwise, like \"backend\" or \"web\"",
        ));
    }
    Ok(())
}

/// A `path_prefix`: `/` and segments of URL-safe characters, kept without a trailing `/`.
fn path_prefix(p: &Spanned<String>, fail: &Fail) -> Result<String, Diagnostic> {
    let written = p.get_ref();
    let prefix = written.trim_end_matches('/');
    let ok = written.starts_with('/')
        && !prefix.is_empty()
        && prefix[1..].split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-._~".contains(c))
        });
    if !ok {
        return Err(fail(
            p.span(),
            format!("path_prefix = \"{written}\" is not a path prefix"),
            "write a path of plain segments starting with '/', like \"/api\" or \"/admin/v2\"",
        ));
    }
    Ok(prefix.to_string())
}

/// True when request path `path` is under `prefix` (segment-wise: `/api` takes `/api` and
/// `/api/x`, not `/apix`).
pub fn under_prefix(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'))
}

//! `[server]` and `[proxy]`: ferry's own listeners (the API, and each environment's proxy),
//! their connection budgets, and how the proxy treats requests and the app's connections.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::Diagnostic;
use super::duration::HumanDuration;
use super::raw::{Fail, parse_addr};
use super::size::HumanSize;

#[derive(Debug, Clone)]
pub struct Server {
    pub listen: SocketAddr,
    /// The front door's plain HTTP listener (`[server] http`), if any.
    pub http: Option<SocketAddr>,
    /// The front door's HTTPS listener (`[server] https`), if any.
    pub https: Option<SocketAddr>,
    /// Reads need no token from a loopback peer (`[server] open_reads`; default false).
    pub open_reads: bool,
    /// Names besides its own address that ferry is reached by (`[server] hosts`), lowercase,
    /// `name` or `name:port`; a request whose `Host` is none of them is refused.
    pub hosts: Vec<String>,
    /// The API's connection limits.
    pub connections: ConnLimits,
    /// Server-sent event streams (`/api/events`) and followed logs open at once, together.
    pub max_streams: usize,
    /// Stopping `serve` stops the apps too (`[server] stop_apps_on_exit`, or `serve
    /// --stop-apps`); by default they keep running and the next `serve` adopts them.
    pub stop_apps_on_exit: bool,
    /// The address people reach the dashboard by (`[server] public_url`), without a trailing
    /// '/': links in notifications start with it. `None`: `http://<listen>`.
    pub public_url: Option<String>,
}

impl Server {
    /// The base of links to the dashboard: `public_url`, or `http://<listen>`.
    pub fn public_base(&self) -> String {
        match &self.public_url {
            Some(u) => u.clone(),
            None => format!("http://{}", self.listen),
        }
    }
}

/// Streams the API serves at once when `[server] max_streams` is left out.
pub const DEFAULT_MAX_STREAMS: usize = 64;

/// One listener's connection limits (`[server]` for the API, `[proxy]` for each environment's
/// proxy, each proxy with its own budget); see [`crate::listener`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// Connections open at once.
    pub max_connections: usize,
    /// Connections open at once from one client address (an IPv6 /64).
    pub max_connections_per_client: usize,
    /// Time a client has to send a complete request header, from opening the connection or
    /// from the end of the previous response (so it also ends idle keep-alive connections).
    pub header_timeout: Duration,
}

impl ConnLimits {
    /// The API's defaults.
    pub const API: ConnLimits = ConnLimits {
        max_connections: 512,
        max_connections_per_client: 128,
        header_timeout: Duration::from_secs(10),
    };
    /// Each proxy's defaults (a proxied connection holds two descriptors).
    pub const PROXY: ConnLimits = ConnLimits {
        max_connections: 2048,
        max_connections_per_client: 256,
        header_timeout: Duration::from_secs(10),
    };
}

/// `[proxy]`: what every environment's proxy applies (each with budgets of its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxySettings {
    /// Its own client connections.
    pub connections: ConnLimits,
    /// Time the app has to start answering a request (504 after it; 502 is a refused or
    /// broken connection).
    pub upstream_timeout: Duration,
    /// Largest request body passed to the app (413 beyond); `None`: no limit.
    pub max_request_body: Option<u64>,
    /// Largest response body passed to a client (the response is cut beyond); `None`: no limit.
    pub max_response_body: Option<u64>,
    /// Largest request line and headers together (431 beyond, the app never sees it).
    pub max_request_headers: usize,
    /// Idle connections to each instance kept open for the next request.
    pub upstream_keepalive: usize,
    /// An idle pooled connection is closed after this long.
    pub upstream_idle_timeout: Duration,
    /// Connections to one instance open at once; further requests wait for one.
    pub upstream_max_connections: usize,
    /// How long a request waits for a connection to the app (503 with `Retry-After` after).
    pub upstream_queue_timeout: Duration,
}

impl ProxySettings {
    pub const DEFAULT: ProxySettings = ProxySettings {
        connections: ConnLimits::PROXY,
        upstream_timeout: Duration::from_secs(60),
        max_request_body: Some(100 << 20),
        max_response_body: None,
        max_request_headers: 32 << 10,
        upstream_keepalive: 32,
        upstream_idle_timeout: Duration::from_secs(60),
        upstream_max_connections: 256,
        upstream_queue_timeout: Duration::from_secs(10),
    };
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) listen: Option<Spanned<String>>,
    pub(super) http: Option<Spanned<String>>,
    pub(super) https: Option<Spanned<String>>,
    open_reads: Option<bool>,
    #[serde(default)]
    hosts: Vec<Spanned<String>>,
    max_connections: Option<Spanned<i64>>,
    max_connections_per_client: Option<Spanned<i64>>,
    header_timeout: Option<Spanned<HumanDuration>>,
    max_streams: Option<Spanned<i64>>,
    stop_apps_on_exit: Option<bool>,
    public_url: Option<Spanned<String>>,
}

/// `[proxy]` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProxy {
    max_connections: Option<Spanned<i64>>,
    max_connections_per_client: Option<Spanned<i64>>,
    header_timeout: Option<Spanned<HumanDuration>>,
    upstream_timeout: Option<Spanned<HumanDuration>>,
    max_request_body: Option<Spanned<HumanSize>>,
    max_response_body: Option<Spanned<HumanSize>>,
    max_request_headers: Option<Spanned<HumanSize>>,
    upstream_keepalive: Option<Spanned<i64>>,
    upstream_idle_timeout: Option<Spanned<HumanDuration>>,
    upstream_max_connections: Option<Spanned<i64>>,
    upstream_queue_timeout: Option<Spanned<HumanDuration>>,
}

impl RawServer {
    /// `[server] listen`, or 127.0.0.1:7070.
    pub(super) fn listen(&self, fail: &Fail) -> Result<SocketAddr, Diagnostic> {
        match &self.listen {
            Some(s) => parse_addr(s, fail),
            None => Ok(SocketAddr::from(([127, 0, 0, 1], 7070))),
        }
    }

    pub(super) fn validate(self, fail: &Fail) -> Result<Server, Diagnostic> {
        let listen = self.listen(fail)?;
        let mut hosts = self
            .hosts
            .iter()
            .map(|h| validate_host(h, fail))
            .collect::<Result<Vec<_>, _>>()?;
        let public_url = self.public_url.map(|u| public_url(&u, fail)).transpose()?;
        // the links in notifications must open: public_url's host is one of ferry's names
        if let Some(name) = public_url
            .as_deref()
            .and_then(|u| reqwest::Url::parse(u).ok())
            .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
            && !hosts
                .iter()
                .any(|h| h == &name || h.starts_with(&format!("{name}:")))
        {
            hosts.push(name);
        }
        Ok(Server {
            listen,
            http: self
                .http
                .as_ref()
                .map(|a| parse_addr(a, fail))
                .transpose()?,
            https: self
                .https
                .as_ref()
                .map(|a| parse_addr(a, fail))
                .transpose()?,
            open_reads: self.open_reads.unwrap_or(false),
            hosts,
            connections: validate_limits(
                "[server]",
                ConnLimits::API,
                (
                    self.max_connections,
                    self.max_connections_per_client,
                    self.header_timeout,
                ),
                fail,
            )?,
            max_streams: match self.max_streams {
                None => DEFAULT_MAX_STREAMS,
                Some(n) => count(n, "max_streams", fail)?,
            },
            stop_apps_on_exit: self.stop_apps_on_exit.unwrap_or(false),
            public_url,
        })
    }
}

/// `[server] public_url`: an http(s) URL with a host, no query or fragment.
fn public_url(u: &Spanned<String>, fail: &Fail) -> Result<String, Diagnostic> {
    let written = u.get_ref().trim();
    let ok = (written.starts_with("http://") || written.starts_with("https://"))
        && reqwest::Url::parse(written).is_ok_and(|p| {
            p.host_str().is_some_and(|h| !h.is_empty())
                && p.query().is_none()
                && p.fragment().is_none()
                && p.username().is_empty()
                && p.password().is_none()
        });
    if !ok {
        return Err(fail(
            u.span(),
            format!("public_url \"{}\" is not an http(s) URL", u.get_ref()),
            "write the address people open the dashboard at, like \"https://ferry.example.com\"",
        ));
    }
    Ok(written.trim_end_matches('/').to_string())
}

impl RawProxy {
    pub(super) fn validate(self, fail: &Fail) -> Result<ProxySettings, Diagnostic> {
        let d = ProxySettings::DEFAULT;
        let upstream_max_connections = match self.upstream_max_connections {
            None => d.upstream_max_connections,
            Some(n) => count(n, "upstream_max_connections", fail)?,
        };
        let upstream_keepalive = match self.upstream_keepalive {
            None => d.upstream_keepalive.min(upstream_max_connections),
            Some(n) if *n.get_ref() == 0 => 0,
            Some(n)
                if usize::try_from(*n.get_ref()).is_ok_and(|v| v > upstream_max_connections) =>
            {
                return Err(fail(
                    n.span(),
                    format!(
                        "upstream_keepalive = {} is more than upstream_max_connections ({upstream_max_connections})",
                        n.get_ref()
                    ),
                    "idle connections are part of all connections: lower it or raise upstream_max_connections",
                ));
            }
            Some(n) => count(n, "upstream_keepalive", fail)?,
        };
        let max_request_headers = match self.max_request_headers {
            None => d.max_request_headers,
            Some(s) if s.get_ref().0 < 1024 || s.get_ref().0 > 1 << 20 => {
                return Err(fail(
                    s.span(),
                    format!("max_request_headers = {:?} is out of range", s.get_ref()),
                    "write a size from 1KB to 1MB, like \"32KB\"",
                ));
            }
            Some(s) => s.get_ref().0 as usize,
        };
        Ok(ProxySettings {
            connections: validate_limits(
                "[proxy]",
                ConnLimits::PROXY,
                (
                    self.max_connections,
                    self.max_connections_per_client,
                    self.header_timeout,
                ),
                fail,
            )?,
            upstream_timeout: positive(
                self.upstream_timeout,
                "upstream_timeout",
                d.upstream_timeout,
                fail,
            )?,
            max_request_body: limit(self.max_request_body, d.max_request_body),
            max_response_body: limit(self.max_response_body, d.max_response_body),
            max_request_headers,
            upstream_keepalive,
            upstream_idle_timeout: positive(
                self.upstream_idle_timeout,
                "upstream_idle_timeout",
                d.upstream_idle_timeout,
                fail,
            )?,
            upstream_max_connections,
            upstream_queue_timeout: match self.upstream_queue_timeout {
                None => d.upstream_queue_timeout,
                Some(t) => t.into_inner().0,
            },
        })
    }
}

/// A body limit: `0` means none.
fn limit(raw: Option<Spanned<HumanSize>>, default: Option<u64>) -> Option<u64> {
    match raw {
        None => default,
        Some(s) if s.get_ref().0 == 0 => None,
        Some(s) => Some(s.get_ref().0),
    }
}

/// A duration that must not be zero.
fn positive(
    raw: Option<Spanned<HumanDuration>>,
    key: &str,
    default: Duration,
    fail: &Fail,
) -> Result<Duration, Diagnostic> {
    match raw {
        None => Ok(default),
        Some(d) if d.get_ref().0.is_zero() => Err(fail(
            d.span(),
            format!("{key} = \"0s\" would fail every request"),
            "write a duration, like \"30s\"",
        )),
        Some(d) => Ok(d.into_inner().0),
    }
}

/// A name the API is reached by (`[server] hosts`): a host name or IP, with an optional port,
/// as a browser writes it in the `Host` header. Kept lowercase.
fn validate_host(h: &Spanned<String>, fail: &Fail) -> Result<String, Diagnostic> {
    let host = h.get_ref().trim().to_ascii_lowercase();
    let ok = !host.is_empty()
        && host.len() <= 255
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.:[]_".contains(c))
        && crate::hosts::host_parts(&host).is_some();
    if !ok {
        return Err(fail(
            h.span(),
            format!("\"{}\" is not a host name", h.get_ref()),
            "write the name (and port, if not the default) people reach ferry by, like \"ferry.example.com\" or \"10.0.0.5:7070\"; no scheme or path",
        ));
    }
    Ok(host)
}

/// A positive count of a limit.
pub(super) fn count(n: Spanned<i64>, key: &str, fail: &Fail) -> Result<usize, Diagnostic> {
    match usize::try_from(*n.get_ref()) {
        Ok(v) if v > 0 => Ok(v),
        _ => Err(fail(
            n.span(),
            format!("{key} = {} is out of range", n.get_ref()),
            "write a number from 1 up",
        )),
    }
}

type RawLimits = (
    Option<Spanned<i64>>,
    Option<Spanned<i64>>,
    Option<Spanned<HumanDuration>>,
);

/// A listener's connection limits: `defaults` where a key is left out.
fn validate_limits(
    table: &str,
    defaults: ConnLimits,
    (max, per_client, header_timeout): RawLimits,
    fail: &Fail,
) -> Result<ConnLimits, Diagnostic> {
    let max_connections = match max {
        None => defaults.max_connections,
        Some(n) => count(n, "max_connections", fail)?,
    };
    let max_connections_per_client = match per_client {
        None => defaults.max_connections_per_client.min(max_connections),
        Some(n) if usize::try_from(*n.get_ref()).is_ok_and(|v| v > max_connections) => {
            return Err(fail(
                n.span(),
                format!(
                    "max_connections_per_client = {} is more than {table} max_connections ({max_connections})",
                    n.get_ref()
                ),
                "a client cannot hold more than all connections: lower it or raise max_connections",
            ));
        }
        Some(n) => count(n, "max_connections_per_client", fail)?,
    };
    let header_timeout = match header_timeout {
        None => defaults.header_timeout,
        Some(d) if d.get_ref().0.is_zero() => {
            return Err(fail(
                d.span(),
                "header_timeout = \"0s\" would cut every connection at once".into(),
                "give clients time to send a request header, like \"10s\"",
            ));
        }
        Some(d) => d.into_inner().0,
    };
    Ok(ConnLimits {
        max_connections,
        max_connections_per_client,
        header_timeout,
    })
}

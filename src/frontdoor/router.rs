//! Per request: the site a host and path go to, or ferry's own answer (an ACME challenge's,
//! a redirect to https, 404 for a host nobody claimed, 421 for a host another certificate
//! serves than the one the connection was made for).

use std::sync::Arc;

use super::{Site, Table};
use crate::hosts::normalize;
use crate::proxy::{Answer, Proxy, RequestInfo, Route, Router};
use crate::tls::{CertStore, Challenges};

/// What a host nobody claimed gets: no names, versions or anything else of ferry's.
pub const NOT_FOUND_PAGE: &str = "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Not found</title></head>\
<body style=\"font-family: sans-serif; max-width: 36em; margin: 4em auto; padding: 0 1em\">\
<h1>Not found</h1><p>Nothing is served at this address.</p></body></html>\n";

fn not_found() -> Route<'static> {
    Route::Answer(Answer {
        status: 404,
        content_type: "text/html; charset=utf-8",
        body: NOT_FOUND_PAGE.to_string(),
        headers: Vec::new(),
    })
}

/// The request's host, normalised, and its path (without the query).
fn host_and_path<'a>(req: &RequestInfo<'a>) -> (Option<String>, &'a str, &'a str) {
    let target = std::str::from_utf8(req.target).unwrap_or("/");
    let path = target.split('?').next().unwrap_or("/");
    let host = req
        .host
        .and_then(|h| std::str::from_utf8(h).ok())
        .and_then(normalize);
    (host, target, path)
}

/// The site for `host` and `path`: the longest prefix that matches segment-wise.
fn find<'t>(table: &'t Table, host: &str, path: &str) -> Option<&'t Site> {
    table.get(host)?.iter().find(|s| match &s.prefix {
        None => true,
        Some(p) => crate::config::under_prefix(path, p),
    })
}

fn to(site: &Site) -> Route<'_> {
    Route::Proxy {
        proxy: &site.proxy,
        prefix: site.prefix.as_deref(),
    }
}

/// The plain HTTP listener's routes.
pub struct HttpRouter {
    pub(super) table: Arc<Table>,
    pub(super) challenges: Arc<Challenges>,
    pub(super) https_port: Option<u16>,
}

impl Router for HttpRouter {
    fn route(&self, req: &RequestInfo<'_>) -> Route<'_> {
        let (host, target, path) = host_and_path(req);
        let challenge = Challenges::is_challenge_path(path);
        if challenge && let Some(answer) = self.challenges.answer(path) {
            return Route::Answer(Answer {
                status: 200,
                content_type: "application/octet-stream",
                body: answer,
                headers: Vec::new(),
            });
        }
        let Some(host) = host else { return not_found() };
        let Some(site) = find(&self.table, &host, path) else {
            return not_found();
        };
        if site.redirect_https
            && !challenge
            && let Some(port) = self.https_port
        {
            let port = if port == 443 {
                String::new()
            } else {
                format!(":{port}")
            };
            let target = if target.starts_with('/') { target } else { "/" };
            return Route::Answer(Answer {
                status: 308,
                content_type: "text/plain; charset=utf-8",
                body: "moved to https\n".into(),
                headers: vec![("location", format!("https://{host}{port}{target}"))],
            });
        }
        to(site)
    }

    fn fallback(&self) -> Option<&Proxy> {
        None
    }
}

/// The https listener's routes.
pub struct HttpsRouter {
    pub(super) table: Arc<Table>,
    pub(super) certs: Arc<CertStore>,
}

impl Router for HttpsRouter {
    fn route(&self, req: &RequestInfo<'_>) -> Route<'_> {
        let (host, _, path) = host_and_path(req);
        let Some(host) = host else { return not_found() };
        // the connection's certificate was chosen for its SNI: a request for a name another
        // certificate serves (a browser reusing a connection) must go to a new connection
        if let Some(sni) = req.sni.and_then(normalize)
            && sni != host
            && self.certs.name_for_host(&sni) != self.certs.name_for_host(&host)
        {
            return Route::Answer(Answer {
                status: 421,
                content_type: "text/plain; charset=utf-8",
                body: "this connection is for another host name\n".into(),
                headers: Vec::new(),
            });
        }
        match find(&self.table, &host, path) {
            Some(site) => to(site),
            None => not_found(),
        }
    }

    fn scheme(&self) -> &'static str {
        "https"
    }
}

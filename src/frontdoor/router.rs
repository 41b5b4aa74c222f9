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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frontdoor::{Entry, FrontDoor};
    use crate::hosts::HostPattern;

    fn entry(env: &str, hosts: &[&str], prefix: Option<&str>, redirect: bool) -> Entry {
        Entry {
            app: "shop".into(),
            env: env.into(),
            proxy: Proxy::new(env),
            hosts: hosts
                .iter()
                .map(|h| HostPattern::parse(h).unwrap())
                .collect(),
            prefix: prefix.map(str::to_string),
            tls: None,
            redirect_https: redirect,
        }
    }

    fn req<'a>(host: &'a str, target: &'a str) -> RequestInfo<'a> {
        RequestInfo {
            host: Some(host.as_bytes()),
            target: target.as_bytes(),
            sni: None,
        }
    }

    type Goes = Result<(String, Option<String>), (u16, Vec<(&'static str, String)>)>;

    /// The environment a request goes to, or the status of ferry's own answer.
    fn goes(router: &impl Router, host: &str, target: &str) -> Goes {
        match router.route(&req(host, target)) {
            Route::Proxy { proxy, prefix } => Ok((proxy.environment(), prefix.map(str::to_string))),
            Route::Answer(a) => Err((a.status, a.headers)),
        }
    }

    #[test]
    fn the_longest_prefix_on_a_host_wins_and_redirects_keep_path_and_query() {
        let entries = [
            entry("web", &["example.com", "*.example.com"], None, true),
            entry("api", &["example.com"], Some("/api"), false),
            entry("v2", &["example.com"], Some("/api/v2"), false),
        ];
        let https = "0.0.0.0:443".parse().ok();
        let front = FrontDoor::new(
            &entries,
            crate::tls::CertStore::new(),
            Challenges::new(),
            https,
        )
        .unwrap();
        let http = HttpRouter {
            table: front.table.clone(),
            challenges: front.challenges.clone(),
            https_port: Some(443),
        };
        assert_eq!(
            goes(&http, "example.com", "/api/x"),
            Ok(("api".into(), Some("/api".into())))
        );
        assert_eq!(
            goes(&http, "EXAMPLE.com:80", "/api"),
            Ok(("api".into(), Some("/api".into())))
        );
        assert_eq!(
            goes(&http, "example.com", "/api/v2/y?q"),
            Ok(("v2".into(), Some("/api/v2".into())))
        );
        // `/apix` is not under `/api`: the environment without a prefix, which redirects
        assert_eq!(
            goes(&http, "example.com", "/apix?a=1"),
            Err((
                308,
                vec![("location", "https://example.com/apix?a=1".to_string())]
            ))
        );
        assert_eq!(
            goes(&http, "a.example.com", "/"),
            Err((
                308,
                vec![("location", "https://a.example.com/".to_string())]
            ))
        );
        // challenges: answered when pending, never redirected
        front.challenges.insert("tok", "tok.key");
        assert!(
            matches!(http.route(&req("example.com", "/.well-known/acme-challenge/tok")), Route::Answer(Answer { status: 200, ref body, .. }) if body == "tok.key")
        );
        assert_eq!(
            goes(&http, "example.com", "/.well-known/acme-challenge/other"),
            Ok(("web".into(), None))
        );
        // a challenge's prefix with something else than a token is redirected like any path
        assert_eq!(
            goes(
                &http,
                "example.com",
                "/.well-known/acme-challenge/../../admin"
            ),
            Err((
                308,
                vec![(
                    "location",
                    "https://example.com/.well-known/acme-challenge/../../admin".to_string()
                )]
            ))
        );
        // a Host that is no name never reaches a wildcard, a Location or an app
        assert_eq!(
            goes(&http, "evil%2ecom/x.example.com", "/p?q=1").map_err(|e| e.0),
            Err(404)
        );
        assert_eq!(goes(&http, "nobody.test", "/").map_err(|e| e.0), Err(404));
        assert_eq!(
            goes(&http, "a.b.example.com", "/").map_err(|e| e.0),
            Err(404)
        );

        // the same host and prefix claimed by two apps' environments: refused, naming both
        let mut other = entry("admin", &["example.com"], Some("/api"), false);
        other.app = "admin".into();
        let err = FrontDoor::new(
            &[entries[1].clone(), other],
            crate::tls::CertStore::new(),
            Challenges::new(),
            None,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            err.contains("app shop environment api") && err.contains("app admin environment admin"),
            "{err}"
        );
    }
}

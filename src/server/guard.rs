//! Who may call what.
//!
//! - Every request but `/health` must name the server in its `Host` header: its listen
//!   address, `localhost`, `127.0.0.1` or `[::1]` with its port, or a name from
//!   `[server] hosts`. Anything else is answered 421 with no data, so a DNS-rebinding page
//!   reads nothing.
//! - Mutations need `Authorization: Bearer <token>` (and a token that is not read-only).
//! - Reads (the API and `/metrics`) need a token too, unless `[server] open_reads = true` and
//!   the peer itself is on loopback (decided from the connection, never the bind address; a
//!   request carrying `Forwarded`/`X-Forwarded-For` came through a proxy and is not local).
//! - `/health` is always open; webhooks carry their own signatures. Every mutation is written
//!   to the audit table with the token's name and the answer's status.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::{Method, StatusCode, header, request::Parts};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};
use crate::auth::{self, Scope};
use crate::hosts::host_parts;
use crate::store::{Actor, Token};

/// Who made a request: the token's name and the person the caller says is at the keyboard
/// (`X-Ferry-User`, or a name in the body). Only the token is proven.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    pub token: Option<String>,
    pub user: Option<String>,
}

impl Caller {
    /// The caller as recorded: the claimed name (else the token's) beside the token.
    pub fn actor(&self) -> Actor {
        Actor {
            name: self
                .user
                .clone()
                .or_else(|| self.token.clone())
                .unwrap_or_else(|| "api".to_string()),
            token: self.token.clone(),
        }
    }

    /// How the caller is written where one line holds it (locks, maintenance, checks):
    /// `alice (token ci)`, or `ci` when no other name was claimed.
    pub fn who(&self) -> String {
        self.actor().shown()
    }

    /// The same caller with `user` as the person (a name given in a request body).
    pub fn as_user(&self, user: Option<&str>) -> Caller {
        Caller {
            token: self.token.clone(),
            user: user.and_then(clean_user).or_else(|| self.user.clone()),
        }
    }
}

fn clean_user(u: &str) -> Option<String> {
    let u = u.trim();
    (!u.is_empty() && u.len() <= 100 && !u.chars().any(char::is_control)).then(|| u.to_string())
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Caller, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<Caller>()
            .cloned()
            .unwrap_or_default())
    }
}

fn unauthorized(message: &str) -> Response {
    let mut resp = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    resp
}

/// True when `host` (a `Host` header's value) names this server: its listen address, the
/// loopback names with its port, or one of `[server] hosts` (a name given without a port
/// matches it on any port).
pub fn host_allowed(server: &crate::config::Server, host: &str) -> bool {
    let host = host.trim().to_ascii_lowercase();
    let Some((name, port)) = host_parts(&host) else {
        return false;
    };
    let own_port = server.listen.port();
    let own_ip = match server.listen.ip() {
        IpAddr::V6(ip) => format!("[{ip}]"),
        IpAddr::V4(ip) => ip.to_string(),
    };
    let own = [own_ip.as_str(), "localhost", "127.0.0.1", "[::1]"];
    if port.unwrap_or(80) == own_port && own.contains(&name) {
        return true;
    }
    server.hosts.iter().any(|h| match host_parts(h) {
        Some((n, None)) => n == name,
        Some((n, Some(p))) => n == name && port.unwrap_or(80) == p,
        None => false,
    })
}

/// The name a request was sent to: its `Host`, else its absolute-form target's authority.
pub fn request_host(req: &Request) -> Option<String> {
    req.headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_string()))
}

/// Refuses a request whose `Host` is not one of the server's own names (421, no data).
/// `/health` answers whatever the name: it carries nothing private and load balancers probe
/// it by address.
pub async fn check_host(State(app): State<AppState>, req: Request, next: Next) -> Response {
    if req.uri().path() == "/health" {
        return next.run(req).await;
    }
    let host = request_host(&req);
    match host {
        Some(h) if host_allowed(&app.engine.config.server, &h) => next.run(req).await,
        Some(h) => {
            let shown: String = h.chars().filter(|c| !c.is_control()).take(100).collect();
            ApiError::new(
                StatusCode::MISDIRECTED_REQUEST,
                "unknown_host",
                format!(
                    "ferry does not answer to the name \"{shown}\"; if it is reached by that \
                     name, add it to [server] hosts"
                ),
            )
            .into_response()
        }
        None => ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "unknown_host",
            "the request has no Host header",
        )
        .into_response(),
    }
}

/// True when the request's peer is on this machine and no proxy says it forwarded it.
pub fn peer_is_local(req: &Request) -> bool {
    let Some(ConnectInfo(peer)) = req.extensions().get::<ConnectInfo<SocketAddr>>() else {
        return false;
    };
    let forwarded = ["forwarded", "x-forwarded-for", "x-real-ip"]
        .iter()
        .any(|h| req.headers().contains_key(*h));
    peer.ip().to_canonical().is_loopback() && !forwarded
}

/// Reads need no token here: `[server] open_reads` is on and the peer is local.
pub fn reads_open(app: &AppState, req: &Request) -> bool {
    app.engine.config.server.open_reads && peer_is_local(req)
}

/// The scope a mutation of the API at `path` needs: approving needs `approve`, signing off
/// `verify`, everything else that changes something (deploy, promote, roll back, restart, lock,
/// maintenance, check reports) `deploy`. Fetching the mirror (rate-limited, for a plan)
/// changes no deployment and needs only `read`. A route not listed here needs `admin`.
fn api_scope(path: &str) -> Scope {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match parts.as_slice() {
        ["api", "mirror", "fetch"] => Scope::Read,
        ["api", "deployments", _, "approve"] => Scope::Approve,
        ["api", "environments", _, "verify"] => Scope::Verify,
        // a shell with the environment's secrets: never part of `deploy`
        ["api", "environments", _, "exec"] => Scope::Exec,
        ["api", "deployments"] | ["api", "promote"] | ["api", "commits", _, "checks"] => {
            Scope::Deploy
        }
        // a message to the team (a chat line, an issue, a mail), as a deploy would send
        ["api", "notify", _, "test"] => Scope::Deploy,
        [
            "api",
            "environments",
            _,
            "rollback" | "restart" | "lock" | "maintenance" | "rollout",
        ]
        | ["api", "environments", _, "accessories", _] => Scope::Deploy,
        _ => Scope::Admin,
    }
}

/// The scope a dashboard action at `path` needs, as [`api_scope`] for the same action.
pub fn dashboard_scope(path: &str) -> Scope {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match parts.as_slice() {
        ["signout"] => Scope::Read,
        ["actions", "deployments", _, "approve"] => Scope::Approve,
        ["actions", "environments", _, "verify"] => Scope::Verify,
        ["actions", "environments", _, _] | ["actions", "promote"] => Scope::Deploy,
        _ => Scope::Admin,
    }
}

/// The 403 for a token without the scope an action needs.
pub fn refused(token: &Token, needed: Scope) -> ApiError {
    let what = if token.read_only() {
        "may only read".to_string()
    } else {
        format!(
            "lacks the {needed} scope (it has {}); this needs a token made with \
             ferry token create NAME --scope {needed}",
            token.scope_list()
        )
    };
    ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!("token \"{}\" {what}", token.name),
    )
}

pub async fn guard(State(app): State<AppState>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    if !(path.starts_with("/api/") || path == "/metrics") {
        // /health is open, webhooks carry signatures, the dashboard has its own gate
        return next.run(req).await;
    }
    let mutation = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let token = match presented {
        None => None,
        Some(secret) => match auth::check(&app.engine.store, secret) {
            Ok(Some(t)) => Some(t),
            Ok(None) => return unauthorized("the token is unknown or revoked"),
            Err(e) => return ApiError::from(e).into_response(),
        },
    };
    let Some(token) = token else {
        let open = reads_open(&app, &req);
        // a signed-in browser reads (the live stream) with its session cookie
        let signed_in = !mutation
            && !open
            && super::dashboard::session(&app, req.headers()).is_ok_and(|s| s.is_some());
        if signed_in {
            return next.run(req).await;
        }
        if mutation || !open {
            let what = if mutation {
                "changing anything"
            } else {
                "reading"
            };
            return unauthorized(&format!(
                "{what} needs a token: send Authorization: Bearer <token> \
                 (make one with ferry token create --name NAME)"
            ));
        }
        return next.run(req).await;
    };
    let needed = if mutation {
        api_scope(&path)
    } else {
        Scope::Read
    };
    if !token.allows(needed) {
        return refused(&token, needed).into_response();
    }
    let user = req
        .headers()
        .get("x-ferry-user")
        .and_then(|v| v.to_str().ok())
        .and_then(clean_user);
    req.extensions_mut().insert(Caller {
        token: Some(token.name.clone()),
        user,
    });
    let method = req.method().to_string();
    let resp = next.run(req).await;
    // an exec session writes its own, fuller entry (who, where, what, how it ended)
    let audited = resp.extensions().get::<super::exec::Audited>().is_some();
    if mutation
        && !audited
        && let Err(e) =
            app.engine
                .store
                .add_audit(&token.name, &method, &path, resp.status().as_u16())
    {
        tracing::error!(error = %e, "cannot write the audit entry");
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(listen: &str, hosts: &[&str]) -> crate::config::Server {
        crate::config::Server {
            http: None,
            https: None,
            listen: listen.parse().unwrap(),
            open_reads: false,
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            connections: crate::config::ConnLimits::API,
            max_streams: crate::config::DEFAULT_MAX_STREAMS,
            stop_apps_on_exit: false,
            public_url: None,
        }
    }

    #[test]
    fn only_the_servers_own_names_are_allowed_hosts() {
        let s = server(
            "127.0.0.1:7070",
            &["ferry.example.com", "ci.example.com:8443"],
        );
        for ok in [
            "127.0.0.1:7070",
            "localhost:7070",
            "LocalHost:7070",
            "[::1]:7070",
            "ferry.example.com",
            "ferry.example.com:443",
            "ci.example.com:8443",
        ] {
            assert!(host_allowed(&s, ok), "{ok}");
        }
        for bad in [
            "attacker.example:7070",
            "localhost",
            "localhost:7071",
            "127.0.0.2:7070",
            "ci.example.com",
            "ci.example.com:443",
            "ferry.example.com.attacker.example",
            "[::1",
            "",
            "::1:7070",
        ] {
            assert!(!host_allowed(&s, bad), "{bad}");
        }
        let v6 = server("[::]:80", &[]);
        assert!(host_allowed(&v6, "[::]") && host_allowed(&v6, "localhost"));
        assert!(host_allowed(&server("0.0.0.0:7070", &[]), "0.0.0.0:7070"));
    }

    #[test]
    fn every_mutating_route_needs_its_scope() {
        let mut seen = 0;
        for (method, path, _, _) in crate::server::ROUTES {
            if *method == "get" || path.starts_with("/hooks/") {
                continue;
            }
            let path = path
                .replace("{env}", "staging")
                .replace("{id}", "7")
                .replace("{sha}", "abc")
                .replace("{action}", "restart");
            let want = if path == "/api/mirror/fetch" {
                Scope::Read
            } else if path.ends_with("/approve") {
                Scope::Approve
            } else if path.ends_with("/verify") {
                Scope::Verify
            } else if path.ends_with("/exec") {
                Scope::Exec
            } else {
                Scope::Deploy
            };
            assert_eq!(api_scope(&path), want, "{method} {path}");
            seen += 1;
        }
        assert!(seen >= 9, "only {seen} mutating routes");
        assert_eq!(
            api_scope("/api/tokens"),
            Scope::Admin,
            "unknown: admin only"
        );
        assert_eq!(
            dashboard_scope("/actions/deployments/3/approve"),
            Scope::Approve
        );
        assert_eq!(
            dashboard_scope("/actions/environments/staging/verify"),
            Scope::Verify
        );
        for p in ["rollback", "lock", "unlock", "maintenance", "rollout"] {
            let path = format!("/actions/environments/staging/{p}");
            assert_eq!(dashboard_scope(&path), Scope::Deploy);
        }
        assert_eq!(dashboard_scope("/actions/promote"), Scope::Deploy);
        assert_eq!(dashboard_scope("/signout"), Scope::Read);
        assert_eq!(dashboard_scope("/actions/other/thing/x/y"), Scope::Admin);
    }
}

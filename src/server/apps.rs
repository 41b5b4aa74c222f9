//! One API for every app a serve hosts.
//!
//! Each app has its own router over its own [`AppState`] (engine, store, tokens, hooks), so
//! every handler stays written for one app. In front of them, [`Apps::dispatch`] picks the
//! app from the path and strips the prefix before routing:
//!
//! - `/api/apps/{app}/…` → that app's `/api/…`; `/hooks/apps/{app}/…` → its `/hooks/…`;
//!   `/apps/{app}/…` → its dashboard;
//! - un-prefixed paths → the only app; with several apps, `/api/…` is 400 naming them (a
//!   caller must say which), `/health` covers every app, `/metrics` labels each series with
//!   its app, webhooks go to the app whose repository the delivery names, and the
//!   dashboard's index lists the apps;
//! - `GET /api/apps` lists the apps the caller's token works for.
//!
//! Server-level answers (`/api/apps`, the 400) accept a token valid for any app; a route of
//! one app checks that app's store only, so a token made for one app is refused by another.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::Request;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tower::ServiceExt;

use super::{ApiError, AppState, guard};

/// Every app's state and router, in the config's order.
#[derive(Clone)]
pub struct Apps {
    apps: Arc<Vec<(AppState, Router)>>,
    /// Webhook bodies read at once to find their app (each up to [`super::hooks::MAX_BODY`]).
    reading: Arc<tokio::sync::Semaphore>,
}

/// Where a request goes.
enum Target {
    /// App `index`, at this path (the prefix stripped); its dashboard's links and redirects
    /// get the prefix back (`/apps/{app}`).
    App(usize, Option<String>, Option<String>),
    /// An un-prefixed dashboard page with several apps.
    NoApp,
    /// `GET /api/apps`.
    List,
    /// `/health` of every app.
    Health,
    /// `/metrics` of every app.
    Metrics,
    /// A webhook of whichever app's repository the delivery names.
    Hook,
    /// An un-prefixed API route with several apps.
    Ambiguous,
    /// The dashboard's index with several apps.
    Index,
    /// `/api/apps/{app}/…` of an app there is not.
    Unknown(String),
}

impl Apps {
    pub fn new(states: Vec<AppState>) -> Apps {
        let apps = states
            .into_iter()
            .map(|s| {
                let router = super::router(s.clone());
                (s, router)
            })
            .collect();
        Apps {
            apps: Arc::new(apps),
            reading: Arc::new(tokio::sync::Semaphore::new(4)),
        }
    }

    /// Every app's state.
    pub fn states(&self) -> impl Iterator<Item = &AppState> {
        self.apps.iter().map(|(s, _)| s)
    }

    /// The first app's state (what the API shares: `[server]`, the connection counters).
    pub fn first(&self) -> &AppState {
        &self.apps[0].0
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.apps
            .iter()
            .position(|(s, _)| s.engine.config.app.name == name)
    }

    fn target(&self, method: &axum::http::Method, path: &str) -> Target {
        let several = self.apps.len() > 1;
        let prefixed = |rest: &str, to: &str| -> Option<Target> {
            let (name, tail) = rest.split_once('/').unwrap_or((rest, ""));
            let links = (to == "/").then(|| format!("/apps/{name}"));
            Some(match self.index(name) {
                Some(i) => Target::App(i, Some(format!("{to}{tail}")), links),
                None => Target::Unknown(name.to_string()),
            })
        };
        if path == "/api/apps" && method == axum::http::Method::GET {
            return Target::List;
        }
        let found = if let Some(rest) = path.strip_prefix("/api/apps/") {
            prefixed(rest, "/api/")
        } else if let Some(rest) = path.strip_prefix("/hooks/apps/") {
            prefixed(rest, "/hooks/")
        } else if let Some(rest) = path.strip_prefix("/apps/") {
            prefixed(rest, "/")
        } else {
            None
        };
        if let Some(found) = found {
            return found;
        }
        if !several {
            return Target::App(0, None, None);
        }
        match path {
            "/health" => Target::Health,
            "/metrics" => Target::Metrics,
            "/" => Target::Index,
            p if p.starts_with("/hooks/") => Target::Hook,
            // the same document for every app
            "/api/openapi.json" => Target::App(0, None, None),
            p if p.starts_with("/api/") => Target::Ambiguous,
            // signing in and out (every app's store at once) and the assets: any app's
            "/signin" | "/signout" => Target::App(0, None, None),
            p if p.starts_with("/static/") => Target::App(0, None, None),
            _ => Target::NoApp,
        }
    }

    /// Routes `req` to its app (see the module doc).
    pub async fn dispatch(self, mut req: Request) -> Result<Response, Infallible> {
        let target = self.target(req.method(), req.uri().path());
        if !matches!(target, Target::App(..) | Target::Health | Target::NoApp)
            && let Some(refused) = self.wrong_host(&req)
        {
            return Ok(refused);
        }
        Ok(match target {
            Target::App(i, path, links) => {
                if let Some(path) = path {
                    rewrite(&mut req, &path);
                }
                let router = self.apps[i].1.clone();
                let resp = router.oneshot(req).await?;
                match links {
                    Some(prefix) => with_prefix(resp, &prefix).await,
                    None => resp,
                }
            }
            Target::NoApp => ApiError::new(
                StatusCode::NOT_FOUND,
                "app_required",
                "ferry serves several apps: their pages are under /apps/{app}/ (see /)",
            )
            .into_response(),
            Target::List => self.list(&req),
            Target::Health => self.health().await,
            Target::Metrics => self.metrics(req).await,
            Target::Hook => self.hook(req).await,
            Target::Index => self.index_page(req).await,
            Target::Ambiguous => self.ambiguous(&req),
            Target::Unknown(name) => {
                let shown: String = name.chars().filter(|c| !c.is_control()).take(100).collect();
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "unknown_app",
                    format!("ferry serves no app called \"{shown}\"; GET /api/apps lists them"),
                )
                .into_response()
            }
        })
    }

    /// The 421 for a `Host` that is not ferry's (every app shares `[server]`).
    fn wrong_host(&self, req: &Request) -> Option<Response> {
        let host = guard::request_host(req);
        match host {
            Some(h) if guard::host_allowed(&self.first().engine.config.server, &h) => None,
            _ => Some(
                ApiError::new(
                    StatusCode::MISDIRECTED_REQUEST,
                    "unknown_host",
                    "ferry does not answer to that name; if it is reached by it, add it to [server] hosts",
                )
                .into_response(),
            ),
        }
    }

    /// The apps the request's token (or dashboard session) works for; every app when reads
    /// are open to this peer.
    fn allowed(&self, req: &Request) -> Vec<usize> {
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        (0..self.apps.len())
            .filter(|&i| {
                let app = &self.apps[i].0;
                match presented {
                    Some(secret) => {
                        crate::auth::check(&app.engine.store, secret).is_ok_and(|t| t.is_some())
                    }
                    None => {
                        guard::reads_open(app, req)
                            || super::dashboard::session(app, req.headers())
                                .is_ok_and(|s| s.is_some())
                    }
                }
            })
            .collect()
    }

    fn unauthorized() -> Response {
        let mut resp = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this needs a token of one of ferry's apps: send Authorization: Bearer <token>",
        )
        .into_response();
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        resp
    }

    /// `GET /api/apps`: the apps the caller's token works for, with their environments.
    fn list(&self, req: &Request) -> Response {
        let allowed = self.allowed(req);
        if allowed.is_empty() {
            return Apps::unauthorized();
        }
        let apps: Vec<_> = allowed
            .iter()
            .map(|&i| {
                let config = &self.apps[i].0.engine.config;
                json!({
                    "name": config.app.name,
                    "environments": config.environment_names(),
                })
            })
            .collect();
        Json(apps).into_response()
    }

    /// An un-prefixed API route while several apps are served: which app is meant?
    fn ambiguous(&self, req: &Request) -> Response {
        let allowed = self.allowed(req);
        if allowed.is_empty() {
            return Apps::unauthorized();
        }
        let names: Vec<&str> = allowed
            .iter()
            .map(|&i| self.apps[i].0.engine.config.app.name.as_str())
            .collect();
        let path = req.uri().path();
        let example = format!(
            "/api/apps/{}/{}",
            names[0],
            path.strip_prefix("/api/").unwrap_or_default()
        );
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "app_required",
            format!(
                "ferry serves several apps ({}): address one with /api/apps/{{app}}/… (like {example}), or ferry -a APP",
                names.join(", ")
            ),
        )
        .into_response()
    }

    /// `/health` with several apps: every app's, under its name; 503 when one is not ok.
    async fn health(&self) -> Response {
        let mut ok = true;
        let mut apps = serde_json::Map::new();
        for (state, _) in self.apps.iter() {
            let (fine, body) = super::health_of(&state.engine).await;
            ok &= fine;
            apps.insert(state.engine.config.app.name.clone(), body);
        }
        let body = Json(json!({
            "status": if ok { "ok" } else { "degraded" },
            "apps": apps,
        }));
        if ok {
            body.into_response()
        } else {
            (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
        }
    }

    /// `/metrics` with several apps: those the token works for, each series labelled.
    async fn metrics(&self, req: Request) -> Response {
        let allowed = self.allowed(&req);
        if allowed.is_empty() {
            return Apps::unauthorized();
        }
        let states: Vec<&AppState> = allowed.iter().map(|&i| &self.apps[i].0).collect();
        super::metrics::merged(&states)
            .await
            .unwrap_or_else(IntoResponse::into_response)
    }

    /// `/hooks/github` or `/hooks/gitlab` with several apps: the delivery goes to each app
    /// whose repository it names (else to the apps that take any repository), which checks
    /// its signature as usual. A delivery no app takes is 202 once some app's secret signs
    /// it, else 401, so an unsigned request learns nothing.
    async fn hook(&self, req: Request) -> Response {
        let (parts, body) = req.into_parts();
        let bytes = {
            let Ok(_turn) = self.reading.acquire().await else {
                return StatusCode::SERVICE_UNAVAILABLE.into_response();
            };
            match axum::body::to_bytes(body, super::hooks::MAX_BODY).await {
                Ok(b) => b,
                Err(_) => {
                    return ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "payload_too_large",
                        format!("a delivery may be at most {} bytes", super::hooks::MAX_BODY),
                    )
                    .into_response();
                }
            }
        };
        let repository = delivery_repository(&parts.headers, &bytes);
        let takes = |want: Option<&str>| -> Vec<usize> {
            (0..self.apps.len())
                .filter(|&i| {
                    let own = self.apps[i].0.hooks.repository.as_deref();
                    match (own, want) {
                        (Some(own), Some(want)) => own.eq_ignore_ascii_case(want),
                        (None, None) => true,
                        _ => false,
                    }
                })
                .collect()
        };
        let mut chosen = takes(repository.as_deref());
        if chosen.is_empty() {
            chosen = takes(None);
        }
        if chosen.is_empty() {
            let signed = self.states().any(|app| hook_signed(app, &parts, &bytes));
            return if signed {
                (
                    StatusCode::ACCEPTED,
                    Json(
                        json!({"ignored": "no app of this ferry takes pushes of that repository"}),
                    ),
                )
                    .into_response()
            } else {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "bad_signature",
                    "the delivery is signed for none of ferry's apps",
                )
                .into_response()
            };
        }
        let mut answers = Vec::new();
        for i in chosen {
            let mut req = Request::new(axum::body::Body::from(bytes.clone()));
            *req.method_mut() = parts.method.clone();
            *req.uri_mut() = parts.uri.clone();
            *req.headers_mut() = parts.headers.clone();
            let router = self.apps[i].1.clone();
            let Ok(resp) = router.oneshot(req).await;
            answers.push((self.apps[i].0.engine.config.app.name.clone(), resp));
        }
        if answers.len() == 1 {
            return answers.pop().map(|(_, r)| r).unwrap_or_default();
        }
        let mut status = StatusCode::OK;
        let mut bodies = serde_json::Map::new();
        for (name, resp) in answers {
            status = status.max(resp.status());
            let bytes = axum::body::to_bytes(resp.into_body(), super::MAX_BODY)
                .await
                .unwrap_or_default();
            bodies.insert(
                name,
                serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
            );
        }
        (status, Json(json!({ "apps": bodies }))).into_response()
    }

    /// `/` with several apps: the apps the viewer may see (a session or token of theirs,
    /// or open reads); sign in first otherwise.
    async fn index_page(&self, req: Request) -> Response {
        let allowed = self.allowed(&req);
        if allowed.is_empty() {
            return axum::response::Redirect::to("/signin").into_response();
        }
        let session = allowed.iter().find_map(|&i| {
            super::dashboard::session(&self.apps[i].0, req.headers())
                .ok()
                .flatten()
        });
        let states: Vec<&AppState> = allowed.iter().map(|&i| &self.apps[i].0).collect();
        let viewer = super::dashboard::Viewer {
            session: session.map(Arc::new),
        };
        super::dashboard::apps_index(&states, viewer).await
    }
}

/// The repository a webhook delivery names (GitHub's `repository.full_name`, GitLab's
/// `project.path_with_namespace`), from a JSON or form-encoded (`payload=`) body.
fn delivery_repository(headers: &axum::http::HeaderMap, body: &[u8]) -> Option<String> {
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"));
    let value: serde_json::Value = if form {
        let fields: Vec<(String, String)> = serde_urlencoded::from_bytes(body).ok()?;
        let payload = fields.into_iter().find(|(k, _)| k == "payload")?.1;
        serde_json::from_str(&payload).ok()?
    } else {
        serde_json::from_slice(body).ok()?
    };
    value["repository"]["full_name"]
        .as_str()
        .or_else(|| value["project"]["path_with_namespace"].as_str())
        .map(str::to_string)
}

/// True when `app`'s webhook secret signs this delivery.
fn hook_signed(app: &AppState, parts: &axum::http::request::Parts, body: &[u8]) -> bool {
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    if parts.uri.path().ends_with("/github") {
        let (Some(secret), Some(signature)) =
            (app.hooks.github.as_deref(), header("x-hub-signature-256"))
        else {
            return false;
        };
        super::hooks::github_signature_ok(secret, body, signature)
    } else {
        use subtle::ConstantTimeEq;
        let (Some(secret), Some(token)) = (app.hooks.gitlab.as_deref(), header("x-gitlab-token"))
        else {
            return false;
        };
        bool::from(token.as_bytes().ct_eq(secret.as_bytes()))
    }
}

/// An app's dashboard answer reached under `prefix` (`/apps/{app}`): its redirects and the
/// links of its pages (`href`, `action`, `src` and the live parts' sources, all absolute
/// paths) get the prefix, so each app's pages stay under it.
async fn with_prefix(resp: Response, prefix: &str) -> Response {
    let (mut parts, body) = resp.into_parts();
    if let Some(location) = parts
        .headers
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .filter(|l| l.starts_with('/') && !l.starts_with("//"))
        .and_then(|l| header::HeaderValue::from_str(&format!("{prefix}{l}")).ok())
    {
        parts.headers.insert(header::LOCATION, location);
    }
    let html = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("text/html"));
    if !html {
        return Response::from_parts(parts, body);
    }
    let Ok(bytes) = axum::body::to_bytes(body, 16 << 20).await else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let mut text = String::from_utf8_lossy(&bytes).into_owned();
    // maud escapes quotes in text, so these only ever start an attribute ferry wrote
    for attr in ["href", "action", "src", "data-live-src", "data-live-events"] {
        text = text.replace(&format!(" {attr}=\"/"), &format!(" {attr}=\"{prefix}/"));
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(text))
}

/// Points `req` at `path`, keeping its query.
fn rewrite(req: &mut Request, path: &str) {
    let target = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let mut parts = req.uri().clone().into_parts();
    if let Ok(pq) = target.parse() {
        parts.path_and_query = Some(pq);
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
}

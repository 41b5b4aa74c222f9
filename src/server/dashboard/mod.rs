//! The dashboard at `/`: every environment at a glance, live deployments, history, health
//! over time, and the buttons people press (approve, verify, promote, roll back, maintenance,
//! lock).
//!
//! Server-rendered HTML (`maud`), readable without JavaScript; a few lines of embedded JS
//! (`static/ferry.js`) re-render the live parts from server fragments when the event stream
//! (`/api/events`) says something changed. Every asset is embedded in the binary.
//!
//! Reads need a session, unless the API's reads are open (`[server] open_reads` and a
//! loopback peer): an unsigned-in browser is sent to the sign-in page.
//! Changes need a session opened with an API token (`/signin`): the cookie is `HttpOnly`
//! and `SameSite=Strict`, every form carries the session's CSRF token, and a POST without
//! both answers 403; a POST (signing in too) whose `Origin` or `Referer` names another site
//! answers 403. Each change is written to the audit table under the token's name.
//!
//! Every answer carries [`SECURITY_HEADERS`]: no framing, a CSP allowing only ferry's own
//! stylesheet, script and requests, `nosniff`, `Referrer-Policy: same-origin`, and
//! `Cache-Control: no-store` (the embedded assets keep their own short cache).

mod chart;
mod forms;
mod pages;
mod views;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use tower_http::set_header::SetResponseHeaderLayer;

use super::AppState;
use crate::auth::{self, Session};

/// The largest form body a dashboard POST may send.
const FORM_LIMIT: usize = 64 * 1024;

/// Who is looking: the signed-in session, if any.
#[derive(Clone, Default)]
pub struct Viewer {
    pub session: Option<Arc<Session>>,
}

impl Viewer {
    /// Signed in with a token that may change something.
    pub fn can_act(&self) -> bool {
        self.session.as_ref().is_some_and(|s| !s.token.read_only())
    }

    fn csrf(&self) -> &str {
        self.session.as_ref().map_or("", |s| s.csrf.as_str())
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Viewer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Viewer, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<Viewer>()
            .cloned()
            .unwrap_or_default())
    }
}

/// The headers every dashboard answer carries. The pages have no inline script or style
/// attribute: `ferry.js` and `ferry.css` are all they load, and the script fetches fragments
/// and the event stream from ferry itself.
pub const SECURITY_HEADERS: &[(&str, &str)] = &[
    ("x-frame-options", "DENY"),
    (
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
         connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "same-origin"),
];

/// The dashboard's routes, behind [`gate`], with [`SECURITY_HEADERS`].
pub fn routes(app: AppState) -> Router<AppState> {
    let mut router = pages(app);
    for (name, value) in SECURITY_HEADERS {
        router = router.layer(SetResponseHeaderLayer::overriding(
            header::HeaderName::from_static(name),
            header::HeaderValue::from_static(value),
        ));
    }
    router.layer(SetResponseHeaderLayer::if_not_present(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    ))
}

fn pages(app: AppState) -> Router<AppState> {
    Router::new()
        .route("/", get(pages::overview))
        .route("/fragments/overview", get(pages::overview_fragment))
        .route("/environments/{env}", get(pages::environment))
        .route("/deployments/{id}", get(pages::deployment))
        .route("/deployments/{id}/live", get(pages::deployment_fragment))
        .route("/signin", get(forms::sign_in_page).post(forms::sign_in))
        .route("/signout", post(forms::sign_out))
        .route("/actions/deployments/{id}/approve", post(forms::approve))
        .route("/actions/environments/{env}/verify", post(forms::verify))
        .route(
            "/actions/environments/{env}/rollback",
            post(forms::rollback),
        )
        .route("/actions/environments/{env}/restart", post(forms::restart))
        .route(
            "/actions/environments/{env}/maintenance",
            post(forms::maintenance),
        )
        .route("/actions/environments/{env}/rollout", post(forms::rollout))
        .route("/actions/environments/{env}/lock", post(forms::lock))
        .route("/actions/environments/{env}/unlock", post(forms::unlock))
        .route("/actions/promote", post(forms::promote))
        .route("/static/ferry.css", get(css))
        .route("/static/ferry.js", get(js))
        .route_layer(axum::middleware::from_fn_with_state(app, gate))
}

/// The index of a serve of several apps: each app `viewer` may see, linking to its
/// dashboard (`/apps/{app}/`), with its environments and what they serve.
pub async fn apps_index(apps: &[&AppState], viewer: Viewer) -> Response {
    let mut cards = Vec::new();
    for app in apps {
        let engine = &app.engine;
        let mut envs = Vec::new();
        for env in &engine.config.environments {
            let version = engine.status(&env.name).await.ok().and_then(|s| s.version);
            envs.push((env.name.clone(), version));
        }
        cards.push((engine.config.app.name.clone(), envs));
    }
    let page = views::Page {
        app: "apps",
        title: "Apps".into(),
        environments: Vec::new(),
        refresh: false,
    };
    let body = maud::html! {
        h1 { "Apps" }
        section.cards aria-label="Apps" {
            @for (name, envs) in &cards {
                article.card {
                    h2 { a href={ "/apps/" (name) "/" } { (name) } }
                    ul {
                        @for (env, version) in envs {
                            li {
                                a href={ "/apps/" (name) "/environments/" (env) } { (env) }
                                " · " (version.as_deref().unwrap_or("nothing deployed"))
                            }
                        }
                    }
                }
            }
        }
    };
    let mut resp = views::layout(&page, &viewer, body).into_response();
    for (name, value) in SECURITY_HEADERS {
        resp.headers_mut().insert(
            header::HeaderName::from_static(name),
            header::HeaderValue::from_static(value),
        );
    }
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    resp
}

/// The session secret in the request's cookie, if any.
fn cookie_secret<'a>(app: &AppState, headers: &'a HeaderMap) -> Option<&'a str> {
    app.session_cookie.find(
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    )
}

/// The live session a request's cookie names.
pub fn session(
    app: &AppState,
    headers: &HeaderMap,
) -> Result<Option<Session>, crate::store::StoreError> {
    match cookie_secret(app, headers) {
        None => Ok(None),
        Some(secret) => auth::session(&app.engine.store, secret),
    }
}

/// Who may see and change what: reads need a session off loopback; a POST (other than
/// signing in) needs a session whose token may change things and the form's CSRF token.
/// Changes are audited.
async fn gate(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let session = match session(&app, req.headers()) {
        Ok(s) => s.map(Arc::new),
        Err(e) => {
            tracing::error!(error = %e, "cannot read the session");
            return views::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "ferry cannot read its sessions; see its log",
            );
        }
    };
    let path = req.uri().path().to_string();
    let public = path == "/signin" || path.starts_with("/static/");
    if req.method() == Method::POST && path == "/signin" && !same_origin(req.headers()) {
        // a login CSRF would sign the victim in as the attacker
        return views::error(
            StatusCode::FORBIDDEN,
            "this sign-in was sent from another site; sign in on ferry's own page",
        );
    }
    if req.method() != Method::POST || path == "/signin" {
        if session.is_none() && !public && !super::guard::reads_open(&app, &req) {
            return Redirect::to("/signin").into_response();
        }
        let mut req = req;
        req.extensions_mut().insert(Viewer { session });
        return next.run(req).await;
    }
    if !same_origin(req.headers()) {
        return views::error(
            StatusCode::FORBIDDEN,
            "this form was sent from another site; use ferry's own pages",
        );
    }
    let Some(session) = session else {
        return views::error(
            StatusCode::FORBIDDEN,
            "sign in first: changes need a session opened with an API token",
        );
    };
    let needed = super::guard::dashboard_scope(&path);
    if !session.token.allows(needed) {
        let e = super::guard::refused(&session.token, needed);
        return views::error(e.status, &e.message);
    }
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, FORM_LIMIT).await else {
        return views::error(StatusCode::PAYLOAD_TOO_LARGE, "the form is too large");
    };
    let csrf = serde_urlencoded::from_bytes::<Vec<(String, String)>>(&bytes)
        .ok()
        .and_then(|fields| fields.into_iter().find(|(k, _)| k == "csrf"))
        .map(|(_, v)| v);
    if !csrf.is_some_and(|c| session.csrf_ok(&c)) {
        return views::error(
            StatusCode::FORBIDDEN,
            "the form's CSRF token is missing or stale: reload the page and try again",
        );
    }
    let method = parts.method.to_string();
    let token = session.token.name.clone();
    let mut req = Request::from_parts(parts, Body::from(bytes));
    req.extensions_mut().insert(Viewer {
        session: Some(session),
    });
    let resp = next.run(req).await;
    if let Err(e) = app
        .engine
        .store
        .add_audit(&token, &method, &path, resp.status().as_u16())
    {
        tracing::error!(error = %e, "cannot write the audit entry");
    }
    resp
}

/// Whether a POST comes from ferry's own pages: its `Origin` (or, without one, its
/// `Referer`) names the host the request was sent to. Browsers send `Origin` with every
/// cross-site POST; a request carrying neither comes from no browser page (curl, a script),
/// which the session and CSRF token judge alone. `Origin: null` (a sandboxed or opaque
/// origin) is another site.
fn same_origin(headers: &HeaderMap) -> bool {
    let from = match (headers.get(header::ORIGIN), headers.get(header::REFERER)) {
        (Some(origin), _) => origin,
        (None, Some(referer)) => referer,
        (None, None) => return true,
    };
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let Ok(from) = from.to_str() else {
        return false;
    };
    let Some(rest) = from
        .strip_prefix("http://")
        .or_else(|| from.strip_prefix("https://"))
    else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    !authority.contains('@') && authority.eq_ignore_ascii_case(host)
}

async fn css() -> Response {
    asset("text/css; charset=utf-8", include_str!("static/ferry.css"))
}

async fn js() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("static/ferry.js"),
    )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

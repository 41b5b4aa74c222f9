//! What the dashboard's forms post to: signing in and out, and the actions. [`super::gate`]
//! has checked the session and its CSRF token before any action handler runs.

use axum::Form;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;

use super::pages::Notice;
use super::views::{self, Page};
use super::{Viewer, cookie_secret};
use crate::auth;
use crate::pipeline::EngineError;
use crate::server::{ApiError, AppState, parse_id};
use crate::store::Actor;

/// The signed-in token: a session claims no other name.
fn who(viewer: &Viewer) -> Actor {
    viewer.session.as_ref().map_or_else(
        || Actor::named("dashboard"),
        |s| Actor {
            name: s.token.name.clone(),
            token: Some(s.token.name.clone()),
        },
    )
}

fn refused(e: impl Into<ApiError>) -> Response {
    let e = e.into();
    views::error(e.status, &e.message)
}

fn engine_refused(e: EngineError) -> Response {
    match e {
        EngineError::Busy { message, .. } => views::error(StatusCode::CONFLICT, &message),
        e => refused(e),
    }
}

/// Back to `path` with a notice for the person who acted.
fn done(path: &str, notice: Notice) -> Response {
    Redirect::to(&format!("{path}?notice={}", notice.code())).into_response()
}

fn bad_request(message: &str) -> Response {
    views::error(StatusCode::BAD_REQUEST, message)
}

pub async fn sign_in_page(State(app): State<AppState>, viewer: Viewer) -> Response {
    sign_in_form(&app, &viewer, StatusCode::OK, None)
}

fn sign_in_form(
    app: &AppState,
    viewer: &Viewer,
    status: StatusCode,
    error: Option<&str>,
) -> Response {
    let page = Page {
        app: &app.engine.config.app.name,
        title: "Sign in".into(),
        environments: Vec::new(),
        refresh: false,
    };
    let body = html! {
        h1 { "Sign in" }
        @if let Some(s) = &viewer.session {
            p { "You are signed in as " strong { (s.token.name) } "." }
        }
        @if let Some(e) = error { p.error role="alert" { (e) } }
        form.stack.narrow method="post" action="/signin" {
            label for="token" { "API token" }
            input #token name="token" type="password" autocomplete="off" required placeholder="ferry_…";
            button type="submit" { "Sign in" }
        }
        p.hint {
            "Sign in with an API token: make one with " code { "ferry token create --name YOUR-NAME" }
            ". A read-only token can look but not act. The session lasts " (auth::SESSION_HOURS) " hours."
        }
    };
    (status, views::layout(&page, viewer, body)).into_response()
}

#[derive(Deserialize)]
pub struct SignIn {
    #[serde(default)]
    token: String,
}

pub async fn sign_in(
    State(app): State<AppState>,
    viewer: Viewer,
    Form(form): Form<SignIn>,
) -> Response {
    match auth::sign_in_many(&app.session_stores(), &form.token) {
        Ok(Some(secret)) => {
            let cookie = app.session_cookie.set(&secret);
            let mut resp = done("/", Notice::SignedIn);
            if let Ok(value) = header::HeaderValue::from_str(&cookie) {
                resp.headers_mut().insert(header::SET_COOKIE, value);
            }
            resp
        }
        Ok(None) => sign_in_form(
            &app,
            &viewer,
            StatusCode::UNAUTHORIZED,
            Some("That token is unknown or revoked."),
        ),
        Err(e) => {
            tracing::error!(error = %e, "cannot open a session");
            views::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot open a session; see ferry's log",
            )
        }
    }
}

pub async fn sign_out(State(app): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    if let Some(secret) = cookie_secret(&app, &headers) {
        for store in app.session_stores() {
            if let Err(e) = auth::sign_out(&store, secret) {
                tracing::error!(error = %e, "cannot end the session");
            }
        }
    }
    let mut resp = done("/", Notice::SignedOut);
    if let Ok(value) = header::HeaderValue::from_str(&app.session_cookie.clear()) {
        resp.headers_mut().insert(header::SET_COOKIE, value);
    }
    resp
}

pub async fn approve(
    State(app): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(e) => return refused(e),
    };
    match app.engine.approve(id, &who(&viewer)) {
        Ok(d) => done(&format!("/deployments/{}", d.id), Notice::Approved),
        Err(e) => engine_refused(e),
    }
}

pub async fn verify(
    State(app): State<AppState>,
    viewer: Viewer,
    Path(env): Path<String>,
) -> Response {
    match app.engine.verify(&env, None, &who(&viewer)).await {
        Ok(_) => done("/", Notice::Verified),
        Err(e) => engine_refused(e),
    }
}

#[derive(Deserialize)]
pub struct Rollback {
    #[serde(default)]
    to: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    confirm: String,
    #[serde(default)]
    restore_data: Option<String>,
    #[serde(default)]
    run_release: Option<String>,
}

pub async fn rollback(
    State(app): State<AppState>,
    viewer: Viewer,
    Path(env): Path<String>,
    Form(form): Form<Rollback>,
) -> Response {
    let word = match app.engine.env(&env) {
        Ok(state) => state.env.confirm_word().to_string(),
        Err(e) => return refused(e),
    };
    if form.confirm.trim() != word {
        return bad_request(&if word == env {
            format!("type the environment's name ({env}) to confirm the rollback")
        } else {
            format!("type {word} to confirm the rollback of {env}")
        });
    }
    let reason = form.reason.trim();
    if reason.is_empty() {
        return bad_request("a rollback needs a reason");
    }
    let to = Some(form.to.trim()).filter(|t| !t.is_empty());
    let restore = form.restore_data.is_some();
    match app
        .engine
        .request_rollback(
            &env,
            to,
            reason,
            restore,
            form.run_release.is_some(),
            &who(&viewer),
        )
        .await
    {
        Ok(d) => done(&format!("/deployments/{}", d.id), Notice::RollbackStarted),
        Err(e) => engine_refused(e),
    }
}

#[derive(Deserialize)]
pub struct Restart {
    #[serde(default)]
    reason: String,
}

/// The serving release started again (new instance, health, switch, drain).
pub async fn restart(
    State(app): State<AppState>,
    viewer: Viewer,
    Path(env): Path<String>,
    Form(form): Form<Restart>,
) -> Response {
    let reason = Some(form.reason.trim()).filter(|r| !r.is_empty());
    match app
        .engine
        .request_restart(&env, reason, &who(&viewer))
        .await
    {
        Ok(d) => done(&format!("/deployments/{}", d.id), Notice::RestartStarted),
        Err(e) => engine_refused(e),
    }
}

#[derive(Deserialize)]
pub struct Maintenance {
    on: bool,
    message: Option<String>,
}

pub async fn maintenance(
    State(app): State<AppState>,
    viewer: Viewer,
    Path(env): Path<String>,
    Form(form): Form<Maintenance>,
) -> Response {
    match app.engine.set_maintenance(
        &env,
        form.on,
        form.message.as_deref(),
        &who(&viewer).shown(),
    ) {
        Ok(_) => done(
            "/",
            if form.on {
                Notice::MaintenanceOn
            } else {
                Notice::MaintenanceOff
            },
        ),
        Err(e) => engine_refused(e),
    }
}

#[derive(Deserialize)]
pub struct RolloutForm {
    action: crate::pipeline::RolloutAction,
}

/// The Promote, Pause and Abort buttons of a rollout under way.
pub async fn rollout(
    State(app): State<AppState>,
    viewer: Viewer,
    Path(env): Path<String>,
    Form(form): Form<RolloutForm>,
) -> Response {
    use crate::pipeline::RolloutAction;
    match app
        .engine
        .rollout_action(&env, form.action, false, &who(&viewer).shown())
        .await
    {
        Ok(_) => done(
            &format!("/environments/{env}"),
            match form.action {
                RolloutAction::Promote => Notice::RolloutPromoted,
                RolloutAction::Pause => Notice::RolloutPaused,
                RolloutAction::Abort => Notice::RolloutAborted,
            },
        ),
        Err(e) => engine_refused(e),
    }
}

#[derive(Deserialize)]
pub struct Lock {
    #[serde(default)]
    reason: String,
}

pub async fn lock(
    State(app): State<AppState>,
    viewer: Viewer,
    Path(env): Path<String>,
    Form(form): Form<Lock>,
) -> Response {
    match app
        .engine
        .lock_env(&env, &who(&viewer).shown(), &form.reason)
    {
        Ok(_) => done("/", Notice::Locked),
        Err(e) => engine_refused(e),
    }
}

pub async fn unlock(State(app): State<AppState>, Path(env): Path<String>) -> Response {
    match app.engine.unlock_env(&env) {
        Ok(()) => done("/", Notice::Unlocked),
        Err(e) => engine_refused(e),
    }
}

#[derive(Deserialize)]
pub struct Promote {
    #[serde(default)]
    tag: String,
    to: Option<String>,
}

pub async fn promote(
    State(app): State<AppState>,
    viewer: Viewer,
    Form(form): Form<Promote>,
) -> Response {
    let to = Some(form.to.as_deref().unwrap_or("").trim()).filter(|t| !t.is_empty());
    let target = match app.engine.promotion_target(form.tag.trim(), to).await {
        Ok(t) => t,
        Err(e) => return engine_refused(e),
    };
    match app
        .engine
        .request(&target, form.tag.trim(), &who(&viewer), None)
    {
        Ok(d) => done(&format!("/deployments/{}", d.id), Notice::PromotionStarted),
        Err(e) => engine_refused(e),
    }
}

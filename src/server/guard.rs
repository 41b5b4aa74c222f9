//! Who may call what: mutations need `Authorization: Bearer <token>` (and a token that is not
//! read-only); reads are open when the API listens on loopback only, and need a token
//! otherwise. `/health` is always open; webhooks carry their own signatures. Every mutation is
//! written to the audit table with the token's name and the answer's status.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::{Method, StatusCode, header, request::Parts};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};
use crate::auth;

/// Who made a request: the token's name and the person the CLI says is at the keyboard.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    pub token: Option<String>,
    pub user: Option<String>,
}

impl Caller {
    /// How the caller is recorded: `alice via ci`, `ci`, `alice` (with the machine's own
    /// `local` token), or `api` for an open read. The audit table has the token regardless.
    pub fn who(&self) -> String {
        match (&self.user, &self.token) {
            (Some(u), Some(t)) if u != t && t != auth::LOCAL => format!("{u} via {t}"),
            (Some(u), _) => u.clone(),
            (None, Some(t)) => t.clone(),
            (None, None) => "api".to_string(),
        }
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
        // a signed-in browser reads (the live stream) with its session cookie
        let signed_in = !mutation
            && !app.open_reads
            && super::dashboard::session(&app, req.headers()).is_ok_and(|s| s.is_some());
        if signed_in {
            return next.run(req).await;
        }
        if mutation || !app.open_reads {
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
    if mutation && token.read_only {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("token \"{}\" may only read", token.name),
        )
        .into_response();
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
    if mutation
        && let Err(e) =
            app.engine
                .store
                .add_audit(&token.name, &method, &path, resp.status().as_u16())
    {
        tracing::error!(error = %e, "cannot write the audit entry");
    }
    resp
}

//! Webhooks: `POST /hooks/github` and `POST /hooks/gitlab`.
//!
//! In order: a body over 1 MiB is 413; a missing or wrong signature (GitHub's
//! `X-Hub-Signature-256`, an HMAC-SHA256 of the raw body) or token (GitLab's `X-Gitlab-Token`)
//! is 401 and leaves nothing but a counter; a delivery id seen before is acknowledged (200,
//! `duplicate`) and not acted on again; a body that is not the JSON the event needs is 400.
//! An accepted delivery is stored with what it triggered (see
//! [`crate::pipeline::Engine::on_push`]).

use axum::Json;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hmac::{KeyInit, Mac};
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;

use super::{ApiError, AppState};
use crate::pipeline::Pushed;

/// The largest delivery body taken.
pub const MAX_BODY: usize = super::MAX_BODY;

/// The shared secrets, read from the environment when `serve` starts. Never printed.
#[derive(Clone, Default)]
pub struct Secrets {
    pub github: Option<String>,
    pub gitlab: Option<String>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |s: &Option<String>| if s.is_some() { "<set>" } else { "<unset>" };
        f.debug_struct("Secrets")
            .field("github", &set(&self.github))
            .field("gitlab", &set(&self.gitlab))
            .finish()
    }
}

impl Secrets {
    /// Reads the variables `[webhooks]` names; a named variable that is unset or empty is an
    /// error, so a misconfigured server says so at start instead of refusing every delivery.
    pub fn from_env(config: &crate::config::Webhooks) -> Result<Secrets, String> {
        let read = |var: &Option<String>, key: &str| -> Result<Option<String>, String> {
            let Some(var) = var else { return Ok(None) };
            match std::env::var(var) {
                Ok(v) if !v.is_empty() => Ok(Some(v)),
                _ => Err(format!(
                    "[webhooks] {key} names the environment variable {var}, which is not set; \
                     export it before `ferry serve`, or remove the key"
                )),
            }
        };
        Ok(Secrets {
            github: read(&config.github_secret_env, "github_secret_env")?,
            gitlab: read(&config.gitlab_token_env, "gitlab_token_env")?,
        })
    }
}

#[derive(Deserialize)]
struct PushPayload {
    #[serde(rename = "ref")]
    git_ref: String,
    after: String,
    /// GitHub's pusher, GitLab's `user_username`.
    pusher: Option<Pusher>,
    user_username: Option<String>,
}

#[derive(Deserialize)]
struct Pusher {
    name: Option<String>,
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn bad(code: &'static str, message: impl Into<String>) -> Response {
    ApiError::new(StatusCode::BAD_REQUEST, code, message).into_response()
}

/// The body, or 413 when it is over [`MAX_BODY`].
async fn read_body(body: Body) -> Result<bytes::Bytes, Response> {
    axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("a delivery may be at most {MAX_BODY} bytes"),
        )
        .into_response()
    })
}

fn rejected(app: &AppState, provider: &str, why: &str) -> Response {
    // a counter and nothing else: a flood of forged requests must not fill the log or store
    app.metrics.webhook(provider, "bad_signature");
    ApiError::new(StatusCode::UNAUTHORIZED, "bad_signature", why).into_response()
}

fn not_configured(provider: &str, key: &str) -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_configured",
        format!("{provider} webhooks are not set up: add {key} to [webhooks]"),
    )
    .into_response()
}

/// True when `signature` (`sha256=<hex>`) is the HMAC-SHA256 of `body` under `secret`,
/// compared in constant time.
pub fn github_signature_ok(secret: &str, body: &[u8], signature: &str) -> bool {
    let Some(sig) = signature
        .strip_prefix("sha256=")
        .and_then(|h| hex::decode(h).ok())
    else {
        return false;
    };
    let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

pub async fn github(State(app): State<AppState>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = match read_body(body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(secret) = app.hooks.github.as_deref() else {
        return not_configured("GitHub", "github_secret_env");
    };
    let signature = header(&parts.headers, "x-hub-signature-256").unwrap_or("");
    if !github_signature_ok(secret, &body, signature) {
        return rejected(
            &app,
            "github",
            "X-Hub-Signature-256 does not match the body",
        );
    }
    let Some(delivery) = header(&parts.headers, "x-github-delivery") else {
        return bad("bad_request", "X-GitHub-Delivery is missing");
    };
    let event = header(&parts.headers, "x-github-event").unwrap_or("");
    accept(
        &app,
        "github",
        delivery,
        event,
        &body,
        |event| match event {
            "push" => Kind::Push,
            "ping" => Kind::Ping,
            _ => Kind::Other,
        },
    )
}

pub async fn gitlab(State(app): State<AppState>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = match read_body(body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(secret) = app.hooks.gitlab.as_deref() else {
        return not_configured("GitLab", "gitlab_token_env");
    };
    let token = header(&parts.headers, "x-gitlab-token").unwrap_or("");
    if !bool::from(token.as_bytes().ct_eq(secret.as_bytes())) {
        return rejected(&app, "gitlab", "X-Gitlab-Token is wrong");
    }
    let Some(delivery) = header(&parts.headers, "x-gitlab-event-uuid") else {
        return bad("bad_request", "X-Gitlab-Event-UUID is missing");
    };
    let event = header(&parts.headers, "x-gitlab-event").unwrap_or("");
    accept(
        &app,
        "gitlab",
        delivery,
        event,
        &body,
        |event| match event {
            "Push Hook" | "Tag Push Hook" => Kind::Push,
            _ => Kind::Other,
        },
    )
}

enum Kind {
    Push,
    Ping,
    Other,
}

enum Parsed {
    Push(PushPayload),
    Ping,
    Other,
}

/// Reads a delivery's body as the payload of its event kind.
fn parse(kind: Kind, body: &[u8]) -> Result<Parsed, String> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    Ok(match kind {
        Kind::Push => Parsed::Push(
            serde_json::from_value::<PushPayload>(value)
                .map_err(|e| format!("not a push payload: {e}"))?,
        ),
        Kind::Ping => Parsed::Ping,
        Kind::Other => Parsed::Other,
    })
}

/// The part both providers share once the sender is proven.
fn accept(
    app: &AppState,
    provider: &str,
    delivery: &str,
    event: &str,
    body: &[u8],
    kind: impl Fn(&str) -> Kind,
) -> Response {
    let store = &app.engine.store;
    if delivery.is_empty() || delivery.len() > 200 {
        return bad("bad_request", "the delivery id is empty or too long");
    }
    match store.delivery(provider, delivery) {
        Ok(Some(seen)) => return duplicate(app, provider, &seen.outcome),
        Ok(None) => {}
        Err(e) => return ApiError::from(e).into_response(),
    }
    let parsed = match parse(kind(event), body) {
        Ok(parsed) => parsed,
        Err(why) => {
            app.metrics.webhook(provider, "malformed");
            return bad("malformed", why);
        }
    };
    let push = match &parsed {
        Parsed::Push(p) => Some(p),
        _ => None,
    };
    let id = match store.add_delivery(
        provider,
        delivery,
        event,
        push.map(|p| p.git_ref.as_str()),
        push.map(|p| p.after.as_str()),
    ) {
        Ok(Some(id)) => id,
        // the same delivery raced in twice; the other one acts
        Ok(None) => return duplicate(app, provider, ""),
        Err(e) => return ApiError::from(e).into_response(),
    };
    let outcome = match &parsed {
        Parsed::Ping => "pong".to_string(),
        Parsed::Other => format!("ignored: event \"{event}\" is not handled"),
        Parsed::Push(p) => match Pushed::from_ref(&p.git_ref) {
            None => format!("ignored: {} is not a branch or tag", p.git_ref),
            Some(pushed) => {
                let by = p
                    .pusher
                    .as_ref()
                    .and_then(|u| u.name.clone())
                    .or_else(|| p.user_username.clone())
                    .map(|u| format!(" by {u}"))
                    .unwrap_or_default();
                let who = format!("{provider} push{by} (delivery {delivery})");
                app.engine.on_push(&pushed, &p.after, &who).join("; ")
            }
        },
    };
    if let Err(e) = store.set_delivery_outcome(id, &outcome) {
        tracing::error!(error = %e, "cannot record what a delivery triggered");
    }
    app.metrics.webhook(provider, "accepted");
    (
        StatusCode::ACCEPTED,
        Json(json!({"delivery": delivery, "outcome": outcome})),
    )
        .into_response()
}

fn duplicate(app: &AppState, provider: &str, outcome: &str) -> Response {
    app.metrics.webhook(provider, "duplicate");
    Json(json!({"duplicate": true, "outcome": outcome})).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_signatures_are_checked_against_the_raw_body() {
        let body = br#"{"zen":"Keep it logically awesome."}"#;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"s3cret").unwrap();
        mac.update(body);
        let good = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        assert!(github_signature_ok("s3cret", body, &good));
        assert!(!github_signature_ok("other", body, &good));
        assert!(!github_signature_ok("s3cret", b"{}", &good));
        assert!(!github_signature_ok("s3cret", body, "sha256=zz"));
        assert!(!github_signature_ok(
            "s3cret",
            body,
            &good.replace("sha256=", "sha1=")
        ));
        assert!(!github_signature_ok("s3cret", body, ""));
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let s = Secrets {
            github: Some("hunter2".into()),
            gitlab: None,
        };
        let shown = format!("{s:?}");
        assert!(!shown.contains("hunter2") && shown.contains("<set>"));
    }

    proptest::proptest! {
        #[test]
        fn any_body_is_parsed_or_refused_without_panic(
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..400),
        ) {
            for kind in [Kind::Push, Kind::Ping, Kind::Other] {
                let _ = parse(kind, &body);
            }
        }

        #[test]
        fn push_payloads_keep_hostile_refs_as_data(
            git_ref in "\\PC{0,80}",
            after in "\\PC{0,50}",
            name in "\\PC{0,20}",
            extra in "\\PC{0,20}",
        ) {
            let body = json!({
                "ref": git_ref, "after": after, "pusher": {"name": name}, extra: [1, {"x": null}],
            })
            .to_string();
            let Ok(Parsed::Push(p)) = parse(Kind::Push, body.as_bytes()) else {
                return Err(proptest::test_runner::TestCaseError::fail("a push payload was refused"));
            };
            proptest::prop_assert_eq!(&p.git_ref, &git_ref);
            // what a push would deploy is checked like any ref before it goes anywhere
            if let Some(crate::pipeline::Pushed::Branch(n) | crate::pipeline::Pushed::Tag(n)) =
                crate::pipeline::Pushed::from_ref(&p.git_ref)
            {
                let _ = crate::release::check_ref(&n);
            }
        }

        #[test]
        fn a_wrong_signature_is_never_accepted(
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
            signature in "(sha256=)?[0-9a-f]{0,70}",
        ) {
            proptest::prop_assert!(!github_signature_ok("s3cret", &body, &signature));
        }
    }
}

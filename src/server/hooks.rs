//! Webhooks: `POST /hooks/github` and `POST /hooks/gitlab`.
//!
//! In order: a body over 25 MiB (GitHub's cap) is 413; a missing or wrong signature (GitHub's
//! `X-Hub-Signature-256`, an HMAC-SHA256 of the raw body, computed as the body streams in) or
//! token (GitLab's `X-Gitlab-Token`) is 401 and leaves nothing but a counter; a delivery id
//! (or GitLab `Idempotency-Key`) seen before is acknowledged (200, `duplicate`) and not acted
//! on again; a body that is not the JSON the event needs (sent as JSON, or form-encoded in a
//! `payload` field) is 400. A push from a repository other than the configured one is
//! acknowledged and ignored. An accepted delivery is stored with what it triggered (see
//! [`crate::pipeline::Engine::on_push`], which also acts on a pushed commit only once).

use axum::Json;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use hmac::{KeyInit, Mac};
use serde::Deserialize;
use serde_json::json;
use sha2::Digest;
use subtle::ConstantTimeEq;

use super::{ApiError, AppState};
use crate::config::{Config, RepositorySource};
use crate::pipeline::{Push, Pushed};
use crate::store::NewDelivery;

/// The largest delivery body taken: GitHub caps payloads at 25 MB (a push of 2,048 commits is
/// over 1 MB). Other routes keep [`super::MAX_BODY`].
pub const MAX_BODY: usize = 25 * 1024 * 1024;

/// How many delivery bodies are read at once; more wait, so buffered bodies stay bounded
/// (`MAX_BODY` each).
const READING: usize = 4;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// What the webhook routes need: the shared secrets, read from the environment when `serve`
/// starts and never printed, and the repository whose pushes count.
pub struct Hooks {
    pub github: Option<String>,
    pub gitlab: Option<String>,
    /// `owner/name`; `None` takes pushes of any repository (`ferry check` warns).
    pub repository: Option<String>,
    reading: tokio::sync::Semaphore,
}

impl Default for Hooks {
    fn default() -> Self {
        Hooks {
            github: None,
            gitlab: None,
            repository: None,
            reading: tokio::sync::Semaphore::new(READING),
        }
    }
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |s: &Option<String>| if s.is_some() { "<set>" } else { "<unset>" };
        f.debug_struct("Hooks")
            .field("github", &set(&self.github))
            .field("gitlab", &set(&self.gitlab))
            .field("repository", &self.repository)
            .finish()
    }
}

impl Hooks {
    /// Reads the variables `[webhooks]` names; a named variable that is unset or empty is an
    /// error, so a misconfigured server says so at start instead of refusing every delivery.
    pub fn new(config: &Config) -> Result<Hooks, String> {
        let hooks = &config.webhooks;
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
        let github = read(&hooks.github_secret_env, "github_secret_env")?;
        let gitlab = read(&hooks.gitlab_token_env, "gitlab_token_env")?;
        let repository = config.webhook_repository();
        match &repository {
            None if github.is_some() || gitlab.is_some() => tracing::warn!(
                "webhooks act on pushes from any repository: set [webhooks] repository"
            ),
            Some((r, RepositorySource::AppRepo)) => {
                tracing::info!(repository = %r, "webhooks act on pushes of [app] repo")
            }
            _ => {}
        }
        Ok(Hooks {
            github,
            gitlab,
            repository: repository.map(|(r, _)| r),
            ..Hooks::default()
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
    /// GitHub's `repository.full_name`.
    repository: Option<Repository>,
    /// GitLab's `project.path_with_namespace`.
    project: Option<Project>,
    /// GitHub: the commit `after` is or points to (an annotated tag's commit).
    head_commit: Option<HeadCommit>,
    /// GitLab: the same.
    checkout_sha: Option<String>,
}

#[derive(Deserialize)]
struct Pusher {
    name: Option<String>,
}

#[derive(Deserialize)]
struct Repository {
    full_name: Option<String>,
}

#[derive(Deserialize)]
struct Project {
    path_with_namespace: Option<String>,
}

#[derive(Deserialize)]
struct HeadCommit {
    id: Option<String>,
}

impl PushPayload {
    /// The repository the push names, as `owner/name`.
    fn repository(&self) -> Option<&str> {
        self.repository
            .as_ref()
            .and_then(|r| r.full_name.as_deref())
            .or_else(|| {
                self.project
                    .as_ref()
                    .and_then(|p| p.path_with_namespace.as_deref())
            })
    }

    /// The pushed commit: `after` peeled to a commit where the payload says which (a tag
    /// push's `after` is the tag object for an annotated tag).
    fn commit(&self) -> &str {
        let peeled = self
            .head_commit
            .as_ref()
            .and_then(|c| c.id.as_deref())
            .or(self.checkout_sha.as_deref());
        match peeled {
            Some(c) if (7..=64).contains(&c.len()) && c.bytes().all(|b| b.is_ascii_hexdigit()) => c,
            _ => &self.after,
        }
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn bad(code: &'static str, message: impl Into<String>) -> Response {
    ApiError::new(StatusCode::BAD_REQUEST, code, message).into_response()
}

fn too_large() -> Response {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("a delivery may be at most {MAX_BODY} bytes"),
    )
    .into_response()
}

/// The body, fed to `mac` as it streams in; 413 past [`MAX_BODY`].
async fn read_body(
    hooks: &Hooks,
    body: Body,
    mut mac: Option<&mut HmacSha256>,
) -> Result<Vec<u8>, Response> {
    let _turn = hooks.reading.acquire().await.map_err(|_| too_large())?;
    let mut stream = body.into_data_stream();
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| bad("bad_request", format!("cannot read the body: {e}")))?;
        if out.len() + chunk.len() > MAX_BODY {
            return Err(too_large());
        }
        if let Some(mac) = mac.as_deref_mut() {
            mac.update(&chunk);
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
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

/// The HMAC-SHA256 of a GitHub delivery under `secret`, to be fed the body.
fn github_mac(secret: &str) -> HmacSha256 {
    // HMAC takes a key of any length
    HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length")
}

/// True when `signature` (`sha256=<hex>`) is what `mac`, fed the whole body, computed;
/// compared in constant time.
fn github_signature_matches(mac: HmacSha256, signature: &str) -> bool {
    let Some(sig) = signature
        .strip_prefix("sha256=")
        .and_then(|h| hex::decode(h).ok())
    else {
        return false;
    };
    mac.verify_slice(&sig).is_ok()
}

/// True when `signature` (`sha256=<hex>`) is the HMAC-SHA256 of `body` under `secret`,
/// compared in constant time.
pub fn github_signature_ok(secret: &str, body: &[u8], signature: &str) -> bool {
    let mut mac = github_mac(secret);
    mac.update(body);
    github_signature_matches(mac, signature)
}

/// How the body carries its JSON: as is, or form-encoded in a `payload` field (GitHub's
/// default content type, `application/x-www-form-urlencoded`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Encoding {
    Json,
    Form,
}

impl Encoding {
    fn of(headers: &HeaderMap) -> Encoding {
        let form = header(headers, "content-type").is_some_and(|t| {
            t.split(';').next().is_some_and(|m| {
                m.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            })
        });
        if form { Encoding::Form } else { Encoding::Json }
    }
}

pub async fn github(State(app): State<AppState>, req: Request) -> Response {
    let Some(secret) = app.hooks.github.as_deref() else {
        return not_configured("GitHub", "github_secret_env");
    };
    let (parts, body) = req.into_parts();
    let mut mac = github_mac(secret);
    let body = match read_body(&app.hooks, body, Some(&mut mac)).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let signature = header(&parts.headers, "x-hub-signature-256").unwrap_or("");
    if !github_signature_matches(mac, signature) {
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
    let kind = match event {
        "push" => Kind::Push,
        "ping" => Kind::Ping,
        _ => Kind::Other,
    };
    let delivery = Delivery {
        provider: "github",
        id: delivery.to_string(),
        key: None,
        event,
        kind,
        encoding: Encoding::of(&parts.headers),
    };
    accept(&app, &delivery, &body)
}

pub async fn gitlab(State(app): State<AppState>, req: Request) -> Response {
    let Some(secret) = app.hooks.gitlab.as_deref() else {
        return not_configured("GitLab", "gitlab_token_env");
    };
    let (parts, body) = req.into_parts();
    let token = header(&parts.headers, "x-gitlab-token").unwrap_or("");
    if !bool::from(token.as_bytes().ct_eq(secret.as_bytes())) {
        return rejected(&app, "gitlab", "X-Gitlab-Token is wrong");
    }
    let body = match read_body(&app.hooks, body, None).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let key = header(&parts.headers, "idempotency-key");
    // GitLab before 14.6 sends no event UUID: then the key, else the body names the delivery
    let id = match (header(&parts.headers, "x-gitlab-event-uuid"), key) {
        (Some(uuid), _) => uuid.to_string(),
        (None, Some(key)) => key.to_string(),
        (None, None) => format!(
            "body-sha256:{}",
            hex::encode(&sha2::Sha256::digest(&body)[..16])
        ),
    };
    let event = header(&parts.headers, "x-gitlab-event").unwrap_or("");
    let kind = match event {
        "Push Hook" | "Tag Push Hook" => Kind::Push,
        _ => Kind::Other,
    };
    let delivery = Delivery {
        provider: "gitlab",
        id,
        key,
        event,
        kind,
        encoding: Encoding::Json,
    };
    accept(&app, &delivery, &body)
}

/// A delivery whose sender is proven.
struct Delivery<'a> {
    provider: &'static str,
    id: String,
    /// GitLab's `Idempotency-Key`.
    key: Option<&'a str>,
    event: &'a str,
    kind: Kind,
    encoding: Encoding,
}

#[derive(Clone, Copy)]
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
fn parse(kind: Kind, encoding: Encoding, body: &[u8]) -> Result<Parsed, String> {
    let form;
    let json = match encoding {
        Encoding::Json => body,
        Encoding::Form => {
            let fields: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
                .map_err(|e| format!("the form-encoded body cannot be read: {e}"))?;
            form = fields
                .into_iter()
                .find(|(k, _)| k == "payload")
                .map(|(_, v)| v)
                .ok_or("the form-encoded body has no payload field")?;
            form.as_bytes()
        }
    };
    let value: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| format!("the body is not JSON: {e}"))?;
    Ok(match kind {
        Kind::Push => Parsed::Push(
            serde_json::from_value::<PushPayload>(value)
                .map_err(|e| format!("not a push payload: {e}"))?,
        ),
        Kind::Ping => Parsed::Ping,
        Kind::Other => Parsed::Other,
    })
}

/// Why a push of `named` is not for this app, when `expected` is set and differs.
fn foreign(expected: Option<&str>, named: Option<&str>) -> Option<String> {
    let expected = expected?;
    match named {
        Some(n) if n.eq_ignore_ascii_case(expected) => None,
        Some(n) => Some(format!("ignored: a push of repository {n}, not {expected}")),
        None => Some(format!(
            "ignored: the push names no repository (expected {expected})"
        )),
    }
}

/// The part both providers share once the sender is proven.
fn accept(app: &AppState, d: &Delivery<'_>, body: &[u8]) -> Response {
    let store = &app.engine.store;
    let provider = d.provider;
    let too_long = |s: &str| s.is_empty() || s.len() > 200;
    if too_long(&d.id) || d.key.is_some_and(too_long) {
        return bad(
            "bad_request",
            "the delivery id or idempotency key is empty or too long",
        );
    }
    match store.delivery(provider, &d.id, d.key) {
        Ok(Some(seen)) => return duplicate(app, provider, &seen.outcome),
        Ok(None) => {}
        Err(e) => return ApiError::from(e).into_response(),
    }
    let parsed = match parse(d.kind, d.encoding, body) {
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
    let id = match store.add_delivery(&NewDelivery {
        provider,
        delivery_id: &d.id,
        idempotency_key: d.key,
        event: d.event,
        git_ref: push.map(|p| p.git_ref.as_str()),
        commit_sha: push.map(|p| p.commit()),
    }) {
        Ok(Some(id)) => id,
        // the same delivery raced in twice; the other one acts
        Ok(None) => return duplicate(app, provider, ""),
        Err(e) => return ApiError::from(e).into_response(),
    };
    // a push of another repository is counted apart: an organisation hook sends many
    let mut counted = "accepted";
    let outcome = match &parsed {
        Parsed::Ping => "pong".to_string(),
        Parsed::Other => format!("ignored: event \"{}\" is not handled", d.event),
        Parsed::Push(p) => match (
            foreign(app.hooks.repository.as_deref(), p.repository()),
            Pushed::from_ref(&p.git_ref),
        ) {
            (Some(why), _) => {
                counted = "foreign";
                why
            }
            (None, None) => format!("ignored: {} is not a branch or tag", p.git_ref),
            (None, Some(pushed)) => {
                let by = p
                    .pusher
                    .as_ref()
                    .and_then(|u| u.name.clone())
                    .or_else(|| p.user_username.clone())
                    .map(|u| format!(" by {u}"))
                    .unwrap_or_default();
                let who = format!("{provider} push{by} (delivery {})", d.id);
                app.engine
                    .on_push(Push {
                        pushed: &pushed,
                        after: &p.after,
                        commit: p.commit(),
                        who: &who,
                    })
                    .join("; ")
            }
        },
    };
    if let Err(e) = store.set_delivery_outcome(id, &outcome) {
        tracing::error!(error = %e, "cannot record what a delivery triggered");
    }
    app.metrics.webhook(provider, counted);
    (
        StatusCode::ACCEPTED,
        Json(json!({"delivery": d.id, "outcome": outcome})),
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
    fn form_encoded_bodies_carry_their_json_in_payload() {
        let json = r#"{"ref":"refs/tags/v1.0.0","after":"abc","head_commit":{"id":"0123456789abcdef0123456789abcdef01234567"},"repository":{"full_name":"acme/shop"}}"#;
        let body = serde_urlencoded::to_string([("payload", json)]).unwrap();
        let Ok(Parsed::Push(p)) = parse(Kind::Push, Encoding::Form, body.as_bytes()) else {
            panic!("a form-encoded push was refused");
        };
        assert_eq!(p.repository(), Some("acme/shop"));
        assert_eq!(p.commit(), "0123456789abcdef0123456789abcdef01234567");
        assert!(parse(Kind::Push, Encoding::Json, body.as_bytes()).is_err());
        assert!(parse(Kind::Ping, Encoding::Form, b"zen=1").is_err());
        let mut headers = HeaderMap::new();
        headers.insert(
            "content-type",
            "application/x-www-form-urlencoded; charset=utf-8"
                .parse()
                .unwrap(),
        );
        assert_eq!(Encoding::of(&headers), Encoding::Form);
        assert_eq!(Encoding::of(&HeaderMap::new()), Encoding::Json);
    }

    #[test]
    fn only_the_configured_repository_counts() {
        assert_eq!(foreign(None, Some("any/thing")), None);
        assert_eq!(foreign(Some("acme/shop"), Some("ACME/Shop")), None);
        assert!(foreign(Some("acme/shop"), Some("acme/shop2")).is_some());
        assert!(foreign(Some("acme/shop"), None).is_some());
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let s = Hooks {
            github: Some("hunter2".into()),
            ..Hooks::default()
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
                for encoding in [Encoding::Json, Encoding::Form] {
                    let _ = parse(kind, encoding, &body);
                }
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
            let Ok(Parsed::Push(p)) = parse(Kind::Push, Encoding::Json, body.as_bytes()) else {
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

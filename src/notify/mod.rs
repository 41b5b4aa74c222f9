//! Outgoing notifications (`[[notify]]`; the design is docs/notifications.md).
//!
//! The pipeline only publishes events. [`run`] turns each into a [`Message`] for every
//! notifier that asked for that event, and [`deliver`] sends it the way the notifier's kind
//! says: a JSON POST (the generic webhook and the chat services), an issue in a tracker, or an
//! email. Deployments never wait for any of it.
//!
//! Webhook URLs often embed a secret (Slack's do), so logs and errors name only the scheme
//! and host.

pub mod chat;
pub mod email;
pub mod github;
pub mod gitlab;
pub mod outbox;
mod queue;
pub mod report;
pub mod tracker;

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::config::{Notify, NotifyKind, Target};
use crate::store::{Deployment, Probe, Step, Store};

pub use queue::{
    KEEP_DAYS, Said, deployment_link, deployment_message, environment_link, run, test,
};
pub use report::Report;

/// Attempts in all for one message (the first and the retries).
pub const ATTEMPTS: u32 = 5;
/// Wait before the first retry; doubled for each next one (1 s, 2 s, 4 s, 8 s).
pub const BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait a 429's `Retry-After` gets.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// One attempt's time limit.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// How much of an answer is kept (recorded, printed).
const ANSWER_MAX: usize = 500;

/// Called with `sent` or `failed` for each notification (metrics count them).
pub type Outcome = Arc<dyn Fn(&'static str) + Send + Sync>;

/// What one notifier is asked to send.
#[derive(Debug, Clone)]
pub struct Message {
    /// The canonical event name ([`crate::config::NOTIFY_EVENTS`]), or `test`.
    pub event: &'static str,
    pub app: String,
    pub environment: String,
    /// None for maintenance events and tests.
    pub deployment: Option<Deployment>,
    pub steps: Vec<Step>,
    /// The monitor's probes, for a rolled back deploy.
    pub probes: Vec<Probe>,
    /// Maintenance: the message shown to visitors; a test: what it is.
    pub detail: Option<String>,
    pub who: Option<String>,
    /// The dashboard page of the deployment (or of the environment).
    pub link: Option<String>,
    /// RFC 3339.
    pub at: String,
}

/// A message the receiver took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// What it answered (status and the start of its body), for `ferry show`.
    pub answer: String,
    /// The issue's URL, for an issue tracker.
    pub link: Option<String>,
}

/// Why a message was not delivered. Never holds a secret or a URL's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Worth trying again (a network error, a timeout, a 5xx, 408 or 429).
    Retry(String),
    /// Retrying cannot help (another 4xx, a missing credential, a bad answer).
    Fatal(String),
    /// A 429 with `Retry-After`: try again after this long (capped at [`MAX_RETRY_AFTER`]).
    RetryAfter(Duration, String),
}

impl Failure {
    /// The same failure with its text changed by `f`.
    pub fn map(self, f: impl FnOnce(String) -> String) -> Failure {
        match self {
            Failure::Retry(r) => Failure::Retry(f(r)),
            Failure::Fatal(r) => Failure::Fatal(f(r)),
            Failure::RetryAfter(d, r) => Failure::RetryAfter(d, f(r)),
        }
    }

    /// What went wrong, as recorded and shown.
    pub fn reason(&self) -> &str {
        match self {
            Failure::Retry(r) | Failure::Fatal(r) | Failure::RetryAfter(_, r) => r,
        }
    }
}

/// What every kind's `deliver` may use.
#[derive(Clone)]
pub struct Ctx {
    pub http: reqwest::Client,
    pub store: Store,
}

impl Ctx {
    pub fn new(store: Store) -> Result<Ctx, String> {
        Ok(Ctx {
            http: client()?,
            store,
        })
    }
}

/// The HTTP client messages go out with: rustls on ring, the system's roots, 10 s per attempt,
/// no proxy from the environment. Without a trust store on the system (a slim container),
/// a client that trusts nothing: http targets still work, https ones fail at once.
pub fn client() -> Result<reqwest::Client, String> {
    let setup = |b: reqwest::ClientBuilder| {
        b.no_proxy()
            .timeout(TIMEOUT)
            .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION")))
    };
    match setup(crate::https_builder()).build() {
        Ok(c) => Ok(c),
        Err(e) => {
            tracing::warn!(
                "no trust store for https notifications ({e}); http ones still work: install the \
                 system's CA certificates (ca-certificates) or set SSL_CERT_FILE"
            );
            setup(crate::http_builder())
                .build()
                .map_err(|e| format!("cannot make an HTTP client: {e}"))
        }
    }
}

/// Sends `msg` through `notifier` once.
pub async fn deliver(ctx: &Ctx, notifier: &Notify, msg: &Message) -> Result<Delivered, Failure> {
    match &notifier.kind {
        NotifyKind::Webhook(t) => post_json(ctx, t, &chat::webhook_body(msg)).await,
        NotifyKind::Slack(t) => post_json(ctx, t, &chat::slack_body(msg)).await,
        NotifyKind::Discord(t) => post_json(ctx, t, &chat::discord_body(msg)).await,
        NotifyKind::Teams(t) => post_json(ctx, t, &chat::teams_body(msg)).await,
        NotifyKind::GithubIssue(t) => github::deliver(ctx, notifier, t, msg).await,
        NotifyKind::GitlabIssue(t) => gitlab::deliver(ctx, notifier, t, msg).await,
        NotifyKind::Email(e) => email::deliver(ctx, notifier, e, msg).await,
    }
}

/// POSTs `body` to the target's URL; the answer says whether it was taken.
/// What the receiver says back is kept without the URL's secret parts (an error page often
/// echoes the path it was asked for).
pub async fn post_json(ctx: &Ctx, target: &Target, body: &Value) -> Result<Delivered, Failure> {
    let url = target.resolve().map_err(Failure::Fatal)?;
    let hide = |text: String| redact_url(&text, &url);
    let resp = ctx
        .http
        .post(&url)
        .json(body)
        .send()
        .await
        .map_err(|e| network(e).map(hide))?;
    let (status, text) = answer(resp).await.map_err(|f| f.map(hide))?;
    Ok(Delivered {
        answer: hide(summary(status, &text)),
        link: None,
    })
}

/// `text` without `url`, its path (as written and decoded), its query, or any path segment
/// longer than 6 characters (a token in a webhook URL is one).
pub fn redact_url(text: &str, url: &str) -> String {
    let Ok(u) = reqwest::Url::parse(url) else {
        return text.replace(url, "…");
    };
    let path = u.path().to_string();
    let mut secret = vec![url.to_string(), path.clone(), decode(&path)];
    if let Some(q) = u.query() {
        secret.push(q.to_string());
    }
    for seg in path.split('/').filter(|s| s.len() > 6) {
        secret.push(seg.to_string());
        secret.push(decode(seg));
    }
    // the longest first: a URL before the path inside it
    secret.sort_by_key(|s| std::cmp::Reverse(s.len()));
    secret
        .iter()
        .filter(|s| s.len() > 1)
        .fold(text.to_string(), |t, s| t.replace(s.as_str(), "…"))
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&a), Some(&b)) if hex(a).is_some() && hex(b).is_some() => {
                out.push((hex(a).unwrap() * 16 + hex(b).unwrap()) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A request that got no answer: retried. The text names no URL.
pub fn network(e: reqwest::Error) -> Failure {
    let e = e.without_url();
    if e.is_builder() {
        return Failure::Fatal("the URL is not one an HTTP request can be sent to".into());
    }
    if e.is_timeout() {
        return Failure::Retry(format!("no answer within {}s", TIMEOUT.as_secs()));
    }
    let mut why = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        why = format!("{why}: {s}");
        source = s.source();
    }
    if why.contains("certificate") {
        // a certificate the system does not trust stays untrusted
        return Failure::Fatal(why);
    }
    Failure::Retry(why)
}

/// A 2xx's status and body; anything else as a [`Failure`] (5xx, 408 and 429 retried, a 429's
/// `Retry-After` honoured).
pub async fn answer(resp: reqwest::Response) -> Result<(reqwest::StatusCode, String), Failure> {
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(retry_after)
        .map(|wait| wait.min(MAX_RETRY_AFTER));
    let text = read_some(resp).await;
    if status.is_success() {
        return Ok((status, text));
    }
    let why = summary(status, &text);
    Err(match status.as_u16() {
        429 => match retry_after {
            Some(wait) => Failure::RetryAfter(wait, why),
            None => Failure::Retry(why),
        },
        408 | 500..=599 => Failure::Retry(why),
        _ => Failure::Fatal(why),
    })
}

/// A `Retry-After` value: seconds (`120`, `1.5`) or an HTTP date.
fn retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(s) = v.parse::<f64>() {
        return (s.is_finite() && s >= 0.0).then(|| Duration::from_secs_f64(s.min(86400.0)));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    Some(
        (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
            .to_std()
            .unwrap_or_default(),
    )
}

/// The start of a body (64 KiB at most): only a few hundred characters are kept, and a
/// receiver streaming without end must not fill ferry's memory.
async fn read_some(mut resp: reqwest::Response) -> String {
    const MAX: usize = 64 << 10;
    let mut body = Vec::new();
    while body.len() < MAX {
        match resp.chunk().await {
            Ok(Some(c)) => body.extend_from_slice(&c[..c.len().min(MAX - body.len())]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&body).into_owned()
}

/// `answered 200 OK: ok`, the body cut to a few hundred characters on one line.
pub fn summary(status: reqwest::StatusCode, body: &str) -> String {
    let body = body.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut s = format!("answered {status}");
    if !body.is_empty() {
        let mut cut = body.len().min(ANSWER_MAX);
        while !body.is_char_boundary(cut) {
            cut -= 1;
        }
        s.push_str(": ");
        s.push_str(&body[..cut]);
        if cut < body.len() {
            s.push('…');
        }
    }
    s
}

#[cfg(test)]
#[path = "mod_tests.rs"]
mod tests;

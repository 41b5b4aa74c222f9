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
pub mod report;
pub mod tracker;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{broadcast, watch};

use crate::config::{Config, Notify, NotifyKind, Target};
use crate::events::Event;
use crate::store::{Deployment, DeploymentState, Notification, Probe, Step, Store};

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

/// The notification event a deployment transition is, if any. `started` remembers which
/// deployments have already been announced as started (an approved one runs again).
fn event_name(
    kind: &str,
    state: DeploymentState,
    id: i64,
    started: &mut HashSet<i64>,
) -> Option<&'static str> {
    let rollback = kind == "rollback";
    let name = match state {
        DeploymentState::Running if !rollback => {
            if !started.insert(id) {
                return None;
            }
            "deploy.started"
        }
        DeploymentState::AwaitingApproval => "approval.waiting",
        DeploymentState::Succeeded if rollback => "rolled_back",
        DeploymentState::Succeeded => "deploy.succeeded",
        DeploymentState::RolledBack => "rolled_back",
        DeploymentState::Failed | DeploymentState::Interrupted => "deploy.failed",
        DeploymentState::Refused => "deploy.refused",
        _ => return None,
    };
    if state.is_final() {
        started.remove(&id);
    }
    Some(name)
}

/// The dashboard page of deployment `id`.
pub fn deployment_link(config: &Config, id: i64) -> String {
    format!(
        "{}{}/deployments/{id}",
        config.server.public_base(),
        app_prefix(config)
    )
}

/// The dashboard page of environment `env`.
pub fn environment_link(config: &Config, env: &str) -> String {
    format!(
        "{}{}/environments/{env}",
        config.server.public_base(),
        app_prefix(config)
    )
}

/// `/apps/<app>` when the serve hosts several apps, else nothing.
fn app_prefix(config: &Config) -> String {
    if config.server_dir != config.state_dir {
        format!("/apps/{}", config.app.name)
    } else {
        String::new()
    }
}

/// The message about deployment `id` for `event`, read from the store.
pub fn deployment_message(
    config: &Config,
    store: &Store,
    event: &'static str,
    id: i64,
) -> crate::store::Result<Message> {
    let d = store.deployment(id)?;
    let steps = store.steps(id)?;
    let probes = if d.state == DeploymentState::RolledBack {
        store.deployment_probes(id).unwrap_or_default()
    } else {
        Vec::new()
    };
    Ok(Message {
        event,
        app: config.app.name.clone(),
        environment: d.environment.clone(),
        who: Some(d.by()),
        link: Some(deployment_link(config, id)),
        at: d
            .finished_at
            .clone()
            .unwrap_or_else(|| d.created_at.clone()),
        deployment: Some(d),
        steps,
        probes,
        detail: None,
    })
}

/// The message about a maintenance change.
fn maintenance_message(
    config: &Config,
    environment: &str,
    on: bool,
    message: Option<String>,
    by: String,
    at: String,
) -> Message {
    Message {
        event: if on {
            "maintenance.on"
        } else {
            "maintenance.off"
        },
        app: config.app.name.clone(),
        environment: environment.to_string(),
        deployment: None,
        steps: Vec::new(),
        probes: Vec::new(),
        detail: message,
        who: Some(by),
        link: Some(environment_link(config, environment)),
        at,
    }
}

/// Queues a notification for each event from `store` and each notifier that asked for it,
/// and runs a worker per notifier sending them, until `shutdown`. Pending rows of an earlier
/// `serve` are resumed (those older than [`outbox::RESUME_WITHIN`] are given up).
pub async fn run(
    config: Arc<Config>,
    store: Store,
    outcome: Outcome,
    mut shutdown: watch::Receiver<bool>,
) {
    if config.notify.is_empty() {
        return;
    }
    // subscribed before anything else, so nothing published from here on is missed
    let mut rx = store.events().subscribe();
    let ctx = match Ctx::new(store.clone()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}; notifications are off");
            return;
        }
    };
    let names: Vec<&str> = config.notify.iter().map(|n| n.name.as_str()).collect();
    let cutoff = (chrono::Utc::now()
        - chrono::Duration::from_std(outbox::RESUME_WITHIN).unwrap_or_default())
    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    match store.expire_notifications(&names, &cutoff) {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            count = n,
            "notifications given up: too old, or their notifier is gone"
        ),
        Err(e) => tracing::error!(error = %e, "cannot read the notifications outbox"),
    }
    let mut wakes = Vec::new();
    let mut workers = Vec::new();
    for n in &config.notify {
        let wake = Arc::new(tokio::sync::Notify::new());
        workers.push(tokio::spawn(outbox::work(
            ctx.clone(),
            n.clone(),
            wake.clone(),
            outcome.clone(),
            shutdown.clone(),
        )));
        wakes.push(wake);
    }
    let mut started = HashSet::new();
    loop {
        let event = tokio::select! {
            e = rx.recv() => e,
            () = crate::proxy::stopped(&mut shutdown) => break,
        };
        let msg = match event {
            Ok(Event::Deployment {
                deployment,
                kind,
                state,
                ..
            }) => {
                let Some(name) = event_name(&kind, state, deployment, &mut started) else {
                    continue;
                };
                if !config.notify.iter().any(|n| n.wants(name)) {
                    continue;
                }
                match deployment_message(&config, &store, name, deployment) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::error!(id = deployment, error = %e, "cannot read a deployment to notify about");
                        continue;
                    }
                }
            }
            Ok(Event::Maintenance {
                environment,
                on,
                message,
                by,
                at,
            }) => maintenance_message(&config, &environment, on, message, by, at),
            Ok(_) => continue,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "notifications fell behind; some were not sent");
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => break,
        };
        for (n, wake) in config.notify.iter().zip(&wakes) {
            if !n.wants(msg.event) {
                continue;
            }
            match outbox::enqueue(&store, n, &msg) {
                Ok(_) => wake.notify_one(),
                Err(e) => {
                    tracing::error!(notifier = %n.name, event = msg.event, error = %e, "cannot queue a notification");
                    outcome("failed");
                }
            }
        }
    }
    for w in workers {
        let _ = w.await;
    }
}

/// `ferry notify test`: one attempt at a sample message through `notifier`, now, recorded
/// with the event `test`.
pub async fn test(
    ctx: &Ctx,
    config: &Config,
    notifier: &Notify,
    who: &str,
) -> (
    crate::store::Result<Notification>,
    Result<Delivered, Failure>,
) {
    let environment = config
        .environments
        .first()
        .map(|e| e.name.clone())
        .unwrap_or_default();
    let msg = Message {
        event: "test",
        app: config.app.name.clone(),
        link: Some(format!(
            "{}{}/",
            config.server.public_base(),
            app_prefix(config)
        )),
        environment,
        deployment: None,
        steps: Vec::new(),
        probes: Vec::new(),
        detail: Some(format!(
            "sent by `ferry notify test {}` to check the notifier works",
            notifier.name
        )),
        who: Some(who.to_string()),
        at: crate::store::now(),
    };
    let result = deliver(ctx, notifier, &msg).await;
    let attempt = match &result {
        Ok(d) => crate::store::Attempt::Sent {
            answer: &d.answer,
            link: d.link.as_deref(),
        },
        Err(f) => crate::store::Attempt::Failed {
            error: f.reason(),
            last: true,
        },
    };
    let row = ctx.store.add_sent_notification(
        &crate::store::NewNotification {
            notifier: &notifier.name,
            kind: notifier.kind.name(),
            event: "test",
            environment: &msg.environment,
            deployment: None,
            message: &msg.to_json(),
        },
        &attempt,
    );
    (row, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_map_to_events_once() {
        let mut started = HashSet::new();
        let ev = |k, s, started: &mut HashSet<i64>| event_name(k, s, 1, started);
        assert_eq!(ev("deploy", DeploymentState::Queued, &mut started), None);
        assert_eq!(
            ev("deploy", DeploymentState::Running, &mut started),
            Some("deploy.started")
        );
        assert_eq!(
            ev("deploy", DeploymentState::AwaitingApproval, &mut started),
            Some("approval.waiting")
        );
        // running again after approval is not a second start
        assert_eq!(ev("deploy", DeploymentState::Running, &mut started), None);
        assert_eq!(
            ev("deploy", DeploymentState::Failed, &mut started),
            Some("deploy.failed")
        );
        assert!(started.is_empty());
        assert_eq!(
            ev("rollback", DeploymentState::Succeeded, &mut started),
            Some("rolled_back")
        );
        assert_eq!(
            ev("deploy", DeploymentState::RolledBack, &mut started),
            Some("rolled_back")
        );
        assert_eq!(
            ev("deploy", DeploymentState::Superseded, &mut started),
            None
        );
    }

    #[test]
    fn urls_are_logged_without_their_path() {
        assert_eq!(
            crate::config::host_of("https://hooks.slack.com/services/T0/B0/secret"),
            "https://hooks.slack.com/…"
        );
        let t = Target::Url("https://hooks.slack.com/services/T0/B0/secret".into());
        assert!(!format!("{t:?} {t}").contains("secret"));
    }

    #[test]
    fn answers_are_summed_up_on_one_short_line() {
        let long = "x ".repeat(600);
        let s = summary(reqwest::StatusCode::OK, &long);
        assert!(s.starts_with("answered 200 OK: x x"), "{s}");
        assert!(s.len() < ANSWER_MAX + 40 && s.ends_with('…'), "{s}");
        assert_eq!(
            summary(reqwest::StatusCode::NO_CONTENT, ""),
            "answered 204 No Content"
        );
    }

    /// https targets work: the client speaks TLS (rustls on ring) and checks the certificate,
    /// so a self-signed one is refused as such, not as an unsupported scheme.
    #[tokio::test]
    async fn https_targets_are_reached_over_tls_and_their_certificate_is_checked() {
        use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(signing_key.serialize_der())),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let handshake = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            acceptor
                .accept(tcp)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
        let http = client().unwrap();
        let err = http
            .post(format!("https://localhost:{port}/hook"))
            .send()
            .await
            .unwrap_err();
        let Failure::Fatal(why) = network(err) else {
            panic!("an untrusted certificate is not retried")
        };
        assert!(why.to_lowercase().contains("certificate"), "{why}");
        // the server saw a TLS client hello, and the client refused what it was shown
        let server = handshake.await.unwrap().unwrap_err();
        assert!(!server.is_empty());
    }

    /// A loopback server answering every request with `head` (status line and headers) and
    /// `body`.
    async fn answering(head: &'static str, body: String) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                let body = body.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0; 65536];
                    let _ = c.read(&mut buf).await;
                    let reply = format!(
                        "{head}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = c.write_all(reply.as_bytes()).await;
                });
            }
        });
        format!("http://{addr}")
    }

    async fn post(head: &'static str, body: &str, path: &str) -> Result<Delivered, Failure> {
        let base = answering(head, body.to_string()).await;
        let ctx = Ctx {
            http: client().unwrap(),
            store: Store::open(&tempfile::tempdir().unwrap().keep().join("db")).unwrap(),
        };
        post_json(
            &ctx,
            &Target::Url(format!("{base}{path}")),
            &serde_json::json!({}),
        )
        .await
    }

    #[tokio::test]
    async fn answers_are_sorted_into_taken_retried_and_refused() {
        let ok = post("HTTP/1.1 200 OK", "fine", "/h").await.unwrap();
        assert_eq!(ok.answer, "answered 200 OK: fine");
        let cases: [(&'static str, Failure); 6] = [
            (
                "HTTP/1.1 404 Not Found",
                Failure::Fatal("answered 404 Not Found: x".into()),
            ),
            (
                "HTTP/1.1 503 Busy",
                Failure::Retry("answered 503 Service Unavailable: x".into()),
            ),
            (
                "HTTP/1.1 408 Slow",
                Failure::Retry("answered 408 Request Timeout: x".into()),
            ),
            (
                "HTTP/1.1 429 Slow down",
                Failure::Retry("answered 429 Too Many Requests: x".into()),
            ),
            (
                "HTTP/1.1 429 Slow down\r\nretry-after: 120",
                Failure::RetryAfter(MAX_RETRY_AFTER, "answered 429 Too Many Requests: x".into()),
            ),
            (
                "HTTP/1.1 429 Slow down\r\nretry-after: 1.5",
                Failure::RetryAfter(
                    Duration::from_millis(1500),
                    "answered 429 Too Many Requests: x".into(),
                ),
            ),
        ];
        for (head, want) in cases {
            assert_eq!(post(head, "x", "/h").await.unwrap_err(), want, "{head}");
        }
    }

    #[tokio::test]
    async fn an_answer_echoing_the_secret_path_is_kept_without_it() {
        let path = "/services/T0/B0/XXXX%53ECRETXXXX?token=abc123";
        let said = format!("Cannot POST {path} (that is /services/T0/B0/XXXXSECRETXXXX)");
        let f = post("HTTP/1.1 404 Not Found", &said, path)
            .await
            .unwrap_err();
        let why = f.reason();
        assert!(
            why.starts_with("answered 404 Not Found: Cannot POST"),
            "{why}"
        );
        for secret in ["SECRET", "services/T0", "abc123", "%53"] {
            assert!(!why.contains(secret), "{secret} in {why}");
        }
        let taken = post("HTTP/1.1 200 OK", &said, path).await.unwrap();
        assert!(!taken.answer.contains("SECRET"), "{}", taken.answer);
    }
}

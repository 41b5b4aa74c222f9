//! `[[notify]]`: who is told what, and how (see docs/notifications.md).
//!
//! ```toml
//! [[notify]]
//! name = "team-chat"              # default: the kind, when only one notifier has it
//! kind = "slack"                  # webhook (default), slack, discord, teams,
//!                                 # github-issue, gitlab-issue, email
//! url_env = "FERRY_SLACK_URL"     # or url = "https://…"
//! events = ["deploy.failed", "rolled_back"]
//! ```
//!
//! Secrets (tokens, SMTP credentials, webhook URLs given by `url_env`) are named here and read
//! from ferry's environment when a message is sent; the config never holds them.

use std::fmt;
use std::net::IpAddr;
use std::ops::Range;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::Diagnostic;
use super::raw::Fail;

#[path = "notify_kinds.rs"]
mod kinds;
#[cfg(test)]
#[path = "notify_tests.rs"]
mod tests;

/// Events a notifier can ask for, by their canonical names.
pub const NOTIFY_EVENTS: &[&str] = &[
    "deploy.started",
    "deploy.succeeded",
    "deploy.failed",
    "deploy.refused",
    "rolled_back",
    "approval.waiting",
    "maintenance.on",
    "maintenance.off",
];

/// Old event names still read, and what they mean now.
const OLD_EVENTS: &[(&str, &str)] = &[
    ("rollback", "rolled_back"),
    ("approval.needed", "approval.waiting"),
];

/// The only events an issue tracker can act on (a failure opens or comments, a success closes).
pub const TRACKER_EVENTS: &[&str] = &["deploy.failed", "rolled_back", "deploy.succeeded"];

/// What email sends when `events` is left out.
const EMAIL_EVENTS: &[&str] = &["deploy.failed", "rolled_back"];

pub const GITHUB_API: &str = "https://api.github.com";
pub const GITLAB_API: &str = "https://gitlab.com/api/v4";

/// One `[[notify]]` table.
#[derive(Debug, Clone)]
pub struct Notify {
    /// Unique per app: `[a-z0-9][a-z0-9_-]*`.
    pub name: String,
    /// Canonical event names ([`NOTIFY_EVENTS`]), in the order written, without repeats.
    pub events: Vec<String>,
    pub kind: NotifyKind,
}

impl Notify {
    /// True when this notifier asked for `event`.
    pub fn wants(&self, event: &str) -> bool {
        self.events.iter().any(|e| e == event)
    }
}

#[derive(Debug, Clone)]
pub enum NotifyKind {
    Webhook(Target),
    Slack(Target),
    Discord(Target),
    Teams(Target),
    GithubIssue(Tracker),
    GitlabIssue(Tracker),
    Email(Email),
}

impl NotifyKind {
    /// The `kind` key's value.
    pub fn name(&self) -> &'static str {
        match self {
            NotifyKind::Webhook(_) => "webhook",
            NotifyKind::Slack(_) => "slack",
            NotifyKind::Discord(_) => "discord",
            NotifyKind::Teams(_) => "teams",
            NotifyKind::GithubIssue(_) => "github-issue",
            NotifyKind::GitlabIssue(_) => "gitlab-issue",
            NotifyKind::Email(_) => "email",
        }
    }

    /// Where messages go, for `ferry check` and `ferry notify list`: a host, a repository or
    /// the recipients; never a secret.
    pub fn destination(&self) -> String {
        match self {
            NotifyKind::Webhook(t)
            | NotifyKind::Slack(t)
            | NotifyKind::Discord(t)
            | NotifyKind::Teams(t) => t.to_string(),
            NotifyKind::GithubIssue(t) | NotifyKind::GitlabIssue(t) => {
                format!("{} at {}", t.repository, host_of(&t.api))
            }
            NotifyKind::Email(e) => format!("{} via {}", e.to.join(", "), e.smtp_host),
        }
    }
}

/// `url` or `url_env`; `Debug` and `Display` show the host only (a webhook URL is often a secret).
#[derive(Clone, PartialEq, Eq)]
pub enum Target {
    Url(String),
    Env(String),
}

impl Target {
    /// The URL to POST to. `Err` (no secret in it) when the variable is unset or holds no
    /// http(s) URL.
    pub fn resolve(&self) -> Result<String, String> {
        match self {
            Target::Url(u) => Ok(u.clone()),
            Target::Env(var) => match std::env::var(var) {
                Ok(u) if is_http_url(u.trim()) => Ok(u.trim().to_string()),
                Ok(_) => Err(format!(
                    "{var} does not hold an http(s) URL in ferry's environment"
                )),
                Err(_) => Err(format!("{var} is not set in ferry's environment")),
            },
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Url(u) => write!(f, "{}", host_of(u)),
            Target::Env(v) => write!(f, "${v}"),
        }
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Url(u) => write!(f, "Url({:?})", host_of(u)),
            Target::Env(v) => write!(f, "Env({v:?})"),
        }
    }
}

/// `scheme://host/…` of a URL: what logs and listings may show of it.
pub fn host_of(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => format!("{}://{}/…", u.scheme(), u.host_str().unwrap_or("?")),
        Err(_) => "(unparsable url)".to_string(),
    }
}

#[derive(Debug, Clone)]
pub struct Tracker {
    /// No trailing '/'.
    pub api: String,
    /// GitHub "owner/name"; GitLab path "group/sub/name" or a numeric id.
    pub repository: String,
    pub token_env: String,
    pub labels: Vec<String>,
    pub close_on_success: bool,
}

#[derive(Debug, Clone)]
pub struct Email {
    pub smtp_host: String,
    pub smtp_port: u16,
    pub tls: SmtpTls,
    pub from: String,
    pub to: Vec<String>,
    pub username_env: Option<String>,
    pub password_env: Option<String>,
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    StartTls,
    Tls,
    None,
}

/// One `[[notify]]` table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNotify {
    name: Option<Spanned<String>>,
    kind: Option<Spanned<String>>,
    format: Option<Spanned<String>>,
    url: Option<Spanned<String>>,
    url_env: Option<Spanned<String>>,
    events: Option<Spanned<Vec<Spanned<String>>>>,
    on: Option<Spanned<Vec<Spanned<String>>>>,
    // issue trackers
    repository: Option<Spanned<String>>,
    project: Option<Spanned<String>>,
    token_env: Option<Spanned<String>>,
    labels: Option<Spanned<Vec<Spanned<String>>>>,
    api: Option<Spanned<String>>,
    close_on_success: Option<Spanned<bool>>,
    // email
    smtp_host: Option<Spanned<String>>,
    smtp_port: Option<Spanned<i64>>,
    tls: Option<Spanned<String>>,
    from: Option<Spanned<String>>,
    to: Option<Spanned<Vec<Spanned<String>>>>,
    username_env: Option<Spanned<String>>,
    password_env: Option<Spanned<String>>,
    ca_file: Option<Spanned<String>>,
}

/// Every `[[notify]]` table, checked together (names are unique).
pub(super) fn validate(
    raw: Vec<Spanned<RawNotify>>,
    fail: &Fail,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> Result<Vec<Notify>, Diagnostic> {
    let mut parsed = Vec::new();
    for r in raw {
        let span = r.span();
        let r = r.into_inner();
        let name = r.name.clone();
        // written before kinds and names: `url` with `format` or nothing
        let old_style = r.kind.is_none();
        let n = validate_one(r, span.clone(), fail, resolve)?;
        parsed.push((n, name, span, old_style));
    }
    let mut out: Vec<Notify> = Vec::new();
    for (i, (mut n, written, span, old_style)) in parsed.iter().cloned().enumerate() {
        match &written {
            Some(w) => {
                let name = w.get_ref();
                if !valid_name(name) {
                    return Err(fail(
                        w.span(),
                        format!("\"{name}\" is not a notifier name"),
                        "use lowercase letters, digits, '-' and '_', starting with a letter or digit, like \"team-chat\"",
                    ));
                }
                n.name = name.clone();
            }
            None => {
                let kind = n.kind.name();
                let same = parsed
                    .iter()
                    .filter(|(o, _, _, _)| o.kind.name() == kind)
                    .count();
                // old configs had several unnamed webhooks: numbered in file order, as before
                let earlier = parsed[..i]
                    .iter()
                    .filter(|(o, w, _, old)| *old && w.is_none() && o.kind.name() == kind)
                    .count();
                if old_style && same > 1 {
                    n.name = match earlier {
                        0 => kind.to_string(),
                        k => format!("{kind}-{}", k + 1),
                    };
                } else if same > 1 {
                    return Err(fail(
                        first_line(&span),
                        format!("{same} notifiers have kind \"{kind}\"; this one needs a name"),
                        "add name = \"…\" to each, like name = \"ops-chat\"; deliveries are recorded by name",
                    ));
                } else {
                    n.name = kind.to_string();
                }
            }
        }
        if let Some(prev) = out.iter().position(|o| o.name == n.name) {
            let at = written.as_ref().map_or(first_line(&span), Spanned::span);
            return Err(fail(
                at,
                format!(
                    "two notifiers are named \"{}\" (tables {} and {})",
                    n.name,
                    prev + 1,
                    i + 1
                ),
                "give each [[notify]] its own name = \"…\"",
            ));
        }
        out.push(n);
    }
    Ok(out)
}

/// The start of a table's span (the `[[notify]]` header is not in it; its first key is).
pub(super) fn first_line(span: &Range<usize>) -> Range<usize> {
    span.start..span.start
}

fn validate_one(
    r: RawNotify,
    span: Range<usize>,
    fail: &Fail,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> Result<Notify, Diagnostic> {
    let kind_name = match (&r.kind, &r.format) {
        (Some(k), Some(_)) => {
            return Err(fail(
                k.span(),
                "both kind and format are set".into(),
                "format is the old key: keep kind alone",
            ));
        }
        (Some(k), None) => {
            let k = k.get_ref().as_str();
            if !KINDS.contains(&k) {
                return Err(fail(
                    r.kind.as_ref().unwrap().span(),
                    format!("unknown notify kind \"{k}\""),
                    &format!("kinds are {}", KINDS.join(", ")),
                ));
            }
            k.to_string()
        }
        (None, Some(f)) => match f.get_ref().as_str() {
            "json" => "webhook".to_string(),
            "slack" => "slack".to_string(),
            other => {
                return Err(fail(
                    f.span(),
                    format!("unknown notify format \"{other}\""),
                    "write kind = \"webhook\" or kind = \"slack\" (format is the old key)",
                ));
            }
        },
        (None, None) => "webhook".to_string(),
    };
    let kind_name = kind_name.as_str();
    refuse_foreign_keys(&r, kind_name, fail)?;
    let events = validate_events(&r, kind_name, fail)?;
    let kind = match kind_name {
        "webhook" => NotifyKind::Webhook(target(&r, kind_name, &span, fail)?),
        "slack" => NotifyKind::Slack(target(&r, kind_name, &span, fail)?),
        "discord" => NotifyKind::Discord(target(&r, kind_name, &span, fail)?),
        "teams" => NotifyKind::Teams(target(&r, kind_name, &span, fail)?),
        "github-issue" => NotifyKind::GithubIssue(kinds::tracker(&r, true, &span, fail)?),
        "gitlab-issue" => NotifyKind::GitlabIssue(kinds::tracker(&r, false, &span, fail)?),
        _ => NotifyKind::Email(kinds::email(&r, &span, fail, resolve)?),
    };
    Ok(Notify {
        name: String::new(),
        events,
        kind,
    })
}

const KINDS: &[&str] = &[
    "webhook",
    "slack",
    "discord",
    "teams",
    "github-issue",
    "gitlab-issue",
    "email",
];

/// Keys that belong to other kinds are refused, so a typo'd kind never silently drops them.
fn refuse_foreign_keys(r: &RawNotify, kind: &str, fail: &Fail) -> Result<(), Diagnostic> {
    fn at<T>(v: &Option<Spanned<T>>) -> Option<Range<usize>> {
        v.as_ref().map(Spanned::span)
    }
    let keys = [
        ("url", at(&r.url)),
        ("url_env", at(&r.url_env)),
        ("repository", at(&r.repository)),
        ("project", at(&r.project)),
        ("token_env", at(&r.token_env)),
        ("labels", at(&r.labels)),
        ("api", at(&r.api)),
        ("close_on_success", at(&r.close_on_success)),
        ("smtp_host", at(&r.smtp_host)),
        ("smtp_port", at(&r.smtp_port)),
        ("tls", at(&r.tls)),
        ("from", at(&r.from)),
        ("to", at(&r.to)),
        ("username_env", at(&r.username_env)),
        ("password_env", at(&r.password_env)),
        ("ca_file", at(&r.ca_file)),
    ];
    for (key, span) in keys {
        let kinds = owner(key);
        if let Some(span) = span
            && !kinds.split(", ").any(|k| k == kind)
        {
            return Err(fail(
                span,
                format!("{key} does not apply to a notifier of kind \"{kind}\""),
                &format!("remove it, or set the kind it belongs to ({kinds})"),
            ));
        }
    }
    Ok(())
}

fn owner(key: &str) -> &'static str {
    match key {
        "url" | "url_env" => "webhook, slack, discord, teams",
        "repository" => "github-issue",
        "project" => "gitlab-issue",
        "token_env" | "labels" | "api" | "close_on_success" => "github-issue, gitlab-issue",
        _ => "email",
    }
}

fn validate_events(r: &RawNotify, kind: &str, fail: &Fail) -> Result<Vec<String>, Diagnostic> {
    let list = match (&r.events, &r.on) {
        (Some(e), Some(_)) => {
            return Err(fail(
                e.span(),
                "both events and on are set".into(),
                "on is the old key: keep events alone",
            ));
        }
        (Some(l), None) | (None, Some(l)) => l,
        (None, None) => {
            let all: &[&str] = match kind {
                "github-issue" | "gitlab-issue" => TRACKER_EVENTS,
                "email" => EMAIL_EVENTS,
                _ => NOTIFY_EVENTS,
            };
            return Ok(all.iter().map(|e| e.to_string()).collect());
        }
    };
    if list.get_ref().is_empty() && r.on.is_some() {
        // the old key: an empty list meant every event
        return Ok(NOTIFY_EVENTS.iter().map(|e| e.to_string()).collect());
    }
    if list.get_ref().is_empty() {
        return Err(fail(
            list.span(),
            "the list of events is empty".into(),
            "leave the key out for the defaults, or name the events, like [\"deploy.failed\"]",
        ));
    }
    let mut events: Vec<String> = Vec::new();
    for e in list.get_ref() {
        let written = e.get_ref().as_str();
        let name = OLD_EVENTS
            .iter()
            .find(|(old, _)| *old == written)
            .map_or(written, |(_, new)| new);
        if !NOTIFY_EVENTS.contains(&name) {
            return Err(fail(
                e.span(),
                format!("unknown notify event \"{written}\""),
                &format!("events are {}", NOTIFY_EVENTS.join(", ")),
            ));
        }
        if kind.ends_with("-issue") && !TRACKER_EVENTS.contains(&name) {
            return Err(fail(
                e.span(),
                format!("an issue tracker cannot act on \"{written}\""),
                "a failure or rollback opens (or comments on) an issue and a success closes it: \
                 events can only be deploy.failed, rolled_back, deploy.succeeded",
            ));
        }
        if !events.iter().any(|x| x == name) {
            events.push(name.to_string());
        }
    }
    Ok(events)
}

fn target(
    r: &RawNotify,
    kind: &str,
    span: &Range<usize>,
    fail: &Fail,
) -> Result<Target, Diagnostic> {
    match (&r.url, &r.url_env) {
        (Some(u), Some(_)) => Err(fail(
            u.span(),
            "both url and url_env are set".into(),
            "keep one: url_env names the variable holding the URL",
        )),
        (Some(u), None) => {
            if !is_http_url(u.get_ref()) {
                return Err(fail(
                    u.span(),
                    format!("notify url \"{}\" is not an http(s) URL", u.get_ref()),
                    "write the full address, like \"https://hooks.slack.com/services/...\"",
                ));
            }
            Ok(Target::Url(u.get_ref().clone()))
        }
        (None, Some(v)) => Ok(Target::Env(env_name(v, fail)?)),
        (None, None) => Err(fail(
            first_line(span),
            format!("a notifier of kind \"{kind}\" needs url or url_env"),
            "add url_env = \"FERRY_CHAT_URL\" (the variable holding the webhook URL) or url = \"https://…\"",
        )),
    }
}

pub(super) fn env_name(v: &Spanned<String>, fail: &Fail) -> Result<String, Diagnostic> {
    env_var(v, "FERRY_GITHUB_TOKEN", fail)
}

/// A `*_env` key's value: the name of a variable holding a secret (`example`: one for the hint).
pub(super) fn env_var(
    v: &Spanned<String>,
    example: &str,
    fail: &Fail,
) -> Result<String, Diagnostic> {
    let name = v.get_ref();
    let ok = !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if !ok {
        return Err(fail(
            v.span(),
            format!("\"{name}\" is not an environment variable name"),
            &format!(
                "name the variable that holds the secret, like \"{example}\"; never the secret itself"
            ),
        ));
    }
    Ok(name.clone())
}

pub(super) fn is_http_url(url: &str) -> bool {
    (url.starts_with("http://") || url.starts_with("https://"))
        && reqwest::Url::parse(url).is_ok_and(|u| u.host_str().is_some_and(|h| !h.is_empty()))
}

pub(super) fn url_host(url: &str) -> String {
    reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_default()
}

pub(super) fn is_ipv6(host: &str) -> bool {
    host.trim_matches(['[', ']'])
        .parse::<std::net::Ipv6Addr>()
        .is_ok()
}

/// True for `localhost` and loopback addresses.
pub fn loopback(host: &str) -> bool {
    let h = host.trim_matches(['[', ']']);
    h.eq_ignore_ascii_case("localhost") || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn valid_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

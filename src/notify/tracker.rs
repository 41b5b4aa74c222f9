//! What GitHub and GitLab issues share: deciding from the issue remembered for a notifier and
//! environment (`store::notify_issues`) whether an event opens an issue, comments on it or
//! closes it, and turning the services' answers into [`Failure::Retry`] or [`Failure::Fatal`].
//!
//! - `deploy.failed`, or `rolled_back` by the monitor: a new issue whose title and body are the
//!   failure report, or a comment on the one still open for that environment. One that people
//!   closed or deleted meanwhile is left alone: a new one is opened.
//! - `deploy.succeeded` of a deploy (not a restart): a comment on the open issue, which is then
//!   closed when `close_on_success` (the default).
//! - a manual rollback (`rolled_back` without a failure report), a restart: skipped.
//! - `test` (`ferry notify test`): a sample issue, a comment, closed at once; nothing
//!   remembered.
//!
//! Errors name the service, what was asked and the token's variable, never a URL or a token.

use std::time::Duration;

use reqwest::header::HeaderMap;
use serde_json::Value;

use super::{Ctx, Delivered, Failure, Message};
use crate::config::{Notify, Tracker};
use crate::store::{IssueState, NotifyIssue};

/// GitHub's limit on a title (characters).
const TITLE_MAX: usize = 256;
/// GitHub's limit on a body is 65536 characters; GitLab's is higher.
const BODY_MAX: usize = 65_000;
/// How much of a service's own error message an error keeps.
const MESSAGE_MAX: usize = 300;

/// An issue as a tracker answers about it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Issue {
    /// GitHub's number, GitLab's iid.
    pub number: i64,
    /// Its page.
    pub url: String,
    pub open: bool,
}

/// One tracker's REST calls.
pub(crate) trait Api {
    /// Where issues go, as the config names it: the API and the repository or project.
    fn target(&self) -> String;
    async fn open(&self, title: &str, body: &str) -> Result<Issue, Failure>;
    /// `None` when the issue is gone (deleted, or moved where the token cannot see it).
    async fn get(&self, number: i64) -> Result<Option<Issue>, Failure>;
    async fn comment(&self, number: i64, body: &str) -> Result<(), Failure>;
    async fn close(&self, number: i64) -> Result<(), Failure>;
}

/// What an event does, given the remembered issue.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Plan {
    /// A failure: comment on the remembered issue if it is still open, else open one.
    Report,
    /// A success: report it on the open issue (and close it when asked).
    Resolve { comment: bool, close: bool },
    /// `ferry notify test`.
    Test,
    /// Nothing to do, and why.
    Nothing(&'static str),
}

/// What `msg` does to the remembered issue `row`.
pub(crate) fn plan(msg: &Message, row: Option<&NotifyIssue>, close_on_success: bool) -> Plan {
    let kind = msg.deployment.as_ref().map(|d| d.kind.as_str());
    match msg.event {
        "test" => Plan::Test,
        // a failure is what has a report: a failed deploy, or one the monitor rolled back
        "deploy.failed" | "rolled_back" if msg.report().is_some() => Plan::Report,
        "rolled_back" => Plan::Nothing("a manual rollback files no issue"),
        "deploy.failed" => Plan::Nothing("no deployment to report on"),
        "deploy.succeeded" if kind != Some("deploy") => {
            Plan::Nothing("only a deploy's success closes an issue")
        }
        "deploy.succeeded" => match row.map(|r| r.state) {
            Some(IssueState::Open) => Plan::Resolve {
                // a retry after the comment went out must not say it twice
                comment: row.and_then(|r| r.last_deployment)
                    != msg.deployment.as_ref().map(|d| d.id),
                close: close_on_success,
            },
            Some(IssueState::Recovered) if close_on_success => Plan::Resolve {
                comment: false,
                close: true,
            },
            Some(IssueState::Recovered) => Plan::Nothing("the success was already reported"),
            _ => Plan::Nothing("no open issue for this environment"),
        },
        _ => Plan::Nothing("issue trackers take deploy.failed, rolled_back and deploy.succeeded"),
    }
}

/// Sends `msg` through `api` for `notifier`.
pub(crate) async fn deliver(
    ctx: &Ctx,
    notifier: &Notify,
    cfg: &Tracker,
    api: &impl Api,
    msg: &Message,
) -> Result<Delivered, Failure> {
    let target = api.target();
    let row = ctx
        .store
        .notify_issue(&notifier.name, &msg.environment)
        .map_err(|e| Failure::Retry(format!("cannot read the remembered issue: {e}")))?
        // an issue in another repository or project is not this one's
        .filter(|r| r.target == target);
    let deployment = msg.deployment.as_ref().map(|d| d.id);
    let remember = |state: IssueState| {
        if let Err(e) =
            ctx.store
                .notify_issue_state(&notifier.name, &msg.environment, state, deployment)
        {
            tracing::error!(notifier = %notifier.name, error = %e, "cannot record an issue's state");
        }
    };
    let nothing = |why: &str| {
        Ok(Delivered {
            answer: format!("skipped: {why}"),
            link: None,
        })
    };
    match plan(msg, row.as_ref(), cfg.close_on_success) {
        Plan::Nothing(why) => nothing(why),
        Plan::Test => test(api, msg).await,
        Plan::Report => {
            let (title, body) = failure_report(msg);
            if let Some(row) = row.as_ref().filter(|r| r.state != IssueState::Closed) {
                match api.get(row.number).await? {
                    Some(issue) if issue.open => {
                        if row.last_deployment != deployment || deployment.is_none() {
                            api.comment(
                                row.number,
                                &cut(&format!("**Again:** {}\n\n{body}", code(&title)), BODY_MAX),
                            )
                            .await?;
                        }
                        remember(IssueState::Open);
                        return Ok(Delivered {
                            answer: format!("commented on #{}", row.number),
                            link: Some(issue.url),
                        });
                    }
                    _ => {} // closed or deleted by someone: a new one
                }
            }
            let issue = api
                .open(&cut(&title, TITLE_MAX), &cut(&body, BODY_MAX))
                .await?;
            if let Err(e) = ctx.store.notify_issue_opened(
                &notifier.name,
                &msg.environment,
                &target,
                issue.number,
                &issue.url,
                deployment,
            ) {
                tracing::error!(notifier = %notifier.name, error = %e, "cannot remember an opened issue");
            }
            let answer = match row {
                Some(r) if r.state != IssueState::Closed => {
                    format!(
                        "opened #{} (#{} was closed or deleted)",
                        issue.number, r.number
                    )
                }
                _ => format!("opened #{}", issue.number),
            };
            Ok(Delivered {
                answer,
                link: Some(issue.url),
            })
        }
        Plan::Resolve { comment, close } => {
            let Some(row) = row else {
                return nothing("no open issue for this environment");
            };
            let open = match api.get(row.number).await? {
                Some(issue) if issue.open => issue,
                _ => {
                    remember(IssueState::Closed);
                    return Ok(Delivered {
                        answer: format!("#{} was already closed or deleted", row.number),
                        link: Some(row.url),
                    });
                }
            };
            let mut did = Vec::new();
            if comment {
                api.comment(row.number, &success_comment(msg, close))
                    .await?;
                remember(IssueState::Recovered);
                did.push("commented on");
            }
            if close {
                api.close(row.number).await?;
                remember(IssueState::Closed);
                did.push("closed");
            }
            Ok(Delivered {
                answer: format!("{} #{}", did.join(" and "), row.number),
                link: Some(open.url),
            })
        }
    }
}

/// `ferry notify test`: a sample issue, commented on and closed at once.
async fn test(api: &impl Api, msg: &Message) -> Result<Delivered, Failure> {
    let title = format!(
        "[ferry test] {}: a sample failure issue (safe to ignore; closed at once)",
        msg.app
    );
    let mut body = format!(
        "This issue was opened by `ferry notify test` to check that ferry can open, comment \
         on and close issues here for **{}**; a failed deploy files its report like this. \
         Nothing is wrong: ferry closes it at once.\n",
        msg.app
    );
    if let Some(who) = &msg.who {
        body.push_str(&format!("\n- Asked by: {}\n- At: {}\n", code(who), msg.at));
    }
    if let Some(link) = &msg.link {
        body.push_str(&format!("- Dashboard: {link}\n"));
    }
    let issue = api.open(&cut(&title, TITLE_MAX), &body).await?;
    let after = |e: Failure| match e {
        Failure::Retry(m) | Failure::Fatal(m) | Failure::RetryAfter(_, m) => Failure::Fatal(
            format!("opened the test issue #{} but then: {m}", issue.number),
        ),
    };
    api.comment(
        issue.number,
        "A comment, as ferry adds for a failure that happens again.",
    )
    .await
    .map_err(after)?;
    api.close(issue.number).await.map_err(after)?;
    Ok(Delivered {
        answer: format!(
            "opened, commented on and closed test issue #{}",
            issue.number
        ),
        link: Some(issue.url),
    })
}

/// The title and body of the failure report, or of the event's line when it has none.
fn failure_report(msg: &Message) -> (String, String) {
    match msg.report() {
        Some(r) => (r.title, r.markdown),
        None => (msg.text(), msg.text()),
    }
}

/// What a deploy's version is called in comments: `v1.2.0 (abc1234)`.
fn version(msg: &Message) -> String {
    let Some(d) = &msg.deployment else {
        return "?".to_string();
    };
    let v = code(&super::report::version(d));
    match d.commit_sha.as_deref() {
        Some(sha) => format!("{v} ({})", code(&sha[..7.min(sha.len())])),
        None => v,
    }
}

/// `text` as a markdown code span: shown as written, never a mention (`@acme/ops`), a
/// reference (`#12`) or markup, however many backticks it holds.
pub(crate) fn code(text: &str) -> String {
    let text = text.replace(['\n', '\r'], " ");
    let longest = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let ticks = "`".repeat(longest + 1);
    let pad = if text.starts_with('`') || text.ends_with('`') {
        " "
    } else {
        ""
    };
    format!("{ticks}{pad}{text}{pad}{ticks}")
}

fn link_line(msg: &Message) -> String {
    msg.link
        .as_ref()
        .map(|l| format!("\n\nDetails: {l}"))
        .unwrap_or_default()
}

fn success_comment(msg: &Message, closing: bool) -> String {
    let (id, by) = msg
        .deployment
        .as_ref()
        .map_or((0, String::new()), |d| (d.id, code(&d.by())));
    format!(
        "✅ {} {} is live on **{}**: deployment {id} by {by} succeeded at {}.{}{}",
        msg.app,
        version(msg),
        msg.environment,
        msg.at,
        if closing { " Closing this issue." } else { "" },
        link_line(msg)
    )
}

/// `s` cut to at most `max` characters, marked when cut.
fn cut(s: &str, max: usize) -> String {
    match s.char_indices().nth(max.saturating_sub(1)) {
        Some((i, _)) if s.len() > i + 1 => format!("{}…", &s[..i]),
        _ => s.to_string(),
    }
}

/// Who is asking what, for errors: "the token in FERRY_GITHUB_TOKEN cannot open issues in
/// acme/shop (403)".
pub(crate) struct Asking<'a> {
    /// "GitHub" or "GitLab".
    pub service: &'static str,
    /// The repository or project as configured.
    pub target: &'a str,
    pub token_env: &'a str,
    /// Scrubbed from anything the service or the network says.
    pub token: &'a str,
    /// What a 403 means the token lacks.
    pub needs: &'static str,
}

/// The token named by `cfg.token_env`, from ferry's environment.
pub(crate) fn token(cfg: &Tracker, service: &str) -> Result<String, Failure> {
    match std::env::var(&cfg.token_env) {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_string()),
        _ => Err(Failure::Fatal(format!(
            "{} is not set in ferry's environment: set it to a {service} token that can edit \
             issues in {}",
            cfg.token_env, cfg.repository
        ))),
    }
}

/// A service's answer that was not a success, as `classify` needs it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Refusal {
    pub status: u16,
    /// `Retry-After`, in seconds.
    pub retry_after: Option<u64>,
    /// GitHub's primary rate limit: `x-ratelimit-remaining: 0`.
    pub limit_spent: bool,
    /// The service's own words, scrubbed and cut.
    pub message: String,
}

impl Refusal {
    /// `hidden`: the token, and the URL asked (an error body may echo its path).
    fn read(status: u16, headers: &HeaderMap, body: &str, hidden: &[&str]) -> Refusal {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        Refusal {
            status,
            retry_after: header("retry-after").and_then(|v| v.trim().parse().ok()),
            limit_spent: header("x-ratelimit-remaining").is_some_and(|v| v.trim() == "0"),
            message: scrub(&service_message(body), hidden),
        }
    }
}

/// The service's own explanation in an error body: GitHub's `message` and `errors`, GitLab's
/// `message` (a string, or field → problems) or `error`.
fn service_message(body: &str) -> String {
    let Ok(v) = serde_json::from_str::<Value>(body) else {
        return String::new();
    };
    let mut parts = Vec::new();
    match &v["message"] {
        Value::String(s) => parts.push(s.clone()),
        Value::Object(fields) => {
            for (field, problems) in fields {
                let problems = match problems {
                    Value::Array(a) => a
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(", "),
                    other => other.as_str().unwrap_or_default().to_string(),
                };
                parts.push(format!("{field} {problems}"));
            }
        }
        Value::Array(a) => parts.extend(a.iter().filter_map(Value::as_str).map(String::from)),
        _ => {}
    }
    if let Some(e) = v["error"].as_str() {
        parts.push(e.to_string());
    }
    if let Some(errors) = v["errors"].as_array() {
        for e in errors {
            let text = match (
                e["message"].as_str(),
                e["field"].as_str(),
                e["code"].as_str(),
            ) {
                (Some(m), _, _) => m.to_string(),
                (None, Some(f), Some(c)) => format!("{f} {c}"),
                _ => e.as_str().unwrap_or_default().to_string(),
            };
            if !text.is_empty() {
                parts.push(text);
            }
        }
    }
    parts.join("; ")
}

/// `text` on one line, without `token`, cut to [`MESSAGE_MAX`].
pub(crate) fn scrub(text: &str, hidden: &[&str]) -> String {
    let mut text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut hidden: Vec<&str> = hidden.iter().copied().filter(|h| h.len() >= 4).collect();
    // the longest first: a URL before the path inside it
    hidden.sort_by_key(|h| std::cmp::Reverse(h.len()));
    for h in hidden {
        text = text.replace(h, "…");
    }
    cut(&text, MESSAGE_MAX)
}

/// What an error about `url` must not show: the URL, its path, and the path decoded (a
/// service may echo either).
fn url_forms(url: &reqwest::Url) -> [String; 3] {
    let path = url.path().to_string();
    let decoded = percent_decode(&path);
    [url.to_string(), path, decoded]
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What to do about a refusal of `what` ("open issues in acme/shop").
pub(crate) fn classify(asking: &Asking<'_>, what: &str, r: &Refusal) -> Failure {
    let service = asking.service;
    let said = if r.message.is_empty() {
        String::new()
    } else {
        format!(": {}", r.message)
    };
    let status = r.status;
    let rate_limited =
        status == 429 || (status == 403 && (r.limit_spent || r.retry_after.is_some()));
    if rate_limited {
        let why = format!("{service} rate limit reached ({status}{said})");
        return match r.retry_after {
            Some(secs) => Failure::RetryAfter(Duration::from_secs(secs), why),
            None => Failure::Retry(why),
        };
    }
    match status {
        408 | 500..=599 => Failure::Retry(format!("{service} answered {status} to {what}{said}")),
        401 => Failure::Fatal(format!(
            "{service} refused the token in {} (401{said}): check that it is valid and not \
             expired",
            asking.token_env
        )),
        403 => Failure::Fatal(format!(
            "the token in {} cannot {what} (403{said}): {}",
            asking.token_env, asking.needs
        )),
        404 => Failure::Fatal(format!(
            "{service} has no {} that the token in {} can see (404{said}): check the name in \
             the config and the token's access",
            asking.target, asking.token_env
        )),
        410 => Failure::Fatal(format!(
            "{service} says issues are turned off in {} (410{said})",
            asking.target
        )),
        422 | 400 => Failure::Fatal(format!("{service} refused to {what} ({status}{said})")),
        _ => Failure::Fatal(format!("{service} answered {status} to {what}{said}")),
    }
}

/// Sends `req` and reads a JSON answer; any refusal goes through [`classify`].
pub(crate) async fn call(
    req: reqwest::RequestBuilder,
    asking: &Asking<'_>,
    what: &str,
) -> Result<Value, Failure> {
    send(req, asking, what)
        .await?
        .map_err(|r| classify(asking, what, &r))
}

/// Sends `req`: its JSON answer, or the service's refusal; `Err` when it is not worth
/// looking at (no answer, not JSON).
pub(crate) async fn send(
    req: reqwest::RequestBuilder,
    asking: &Asking<'_>,
    what: &str,
) -> Result<Result<Value, Refusal>, Failure> {
    let (client, req) = req.build_split();
    let req = req.map_err(|e| {
        Failure::Fatal(format!(
            "cannot make the request to {what}: {}",
            e.without_url()
        ))
    })?;
    let [url, path, decoded] = url_forms(req.url());
    let hidden = [asking.token, &url, &path, &decoded];
    let resp = client
        .execute(req)
        .await
        .map_err(|e| network(asking, what, e, &hidden))?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .text()
        .await
        .map_err(|e| network(asking, what, e, &hidden))?;
    if !(200..300).contains(&status) {
        return Ok(Err(Refusal::read(status, &headers, &body, &hidden)));
    }
    if body.trim().is_empty() {
        return Ok(Ok(Value::Null));
    }
    serde_json::from_str(&body).map(Ok).map_err(|_| {
        Failure::Fatal(format!(
            "{} answered {what} with something that is not JSON ({status})",
            asking.service
        ))
    })
}

/// A request that got no answer: worth another try.
fn network(asking: &Asking<'_>, what: &str, e: reqwest::Error, hidden: &[&str]) -> Failure {
    let e = e.without_url();
    if e.is_timeout() {
        return Failure::Retry(format!(
            "{} did not answer in time to {what}",
            asking.service
        ));
    }
    let mut why = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        why = format!("{why}: {s}");
        source = s.source();
    }
    let why = scrub(&why, hidden);
    let failure = format!("cannot reach {} to {what}: {why}", asking.service);
    if why.contains("certificate") {
        // a certificate the system does not trust stays untrusted
        return Failure::Fatal(failure);
    }
    Failure::Retry(failure)
}

/// The issue in a service's answer: `number_key` (`number`, `iid`) and `url_key` (`html_url`,
/// `web_url`); open unless `state` says `closed`.
pub(crate) fn issue_from(v: &Value, number_key: &str, url_key: &str) -> Option<Issue> {
    Some(Issue {
        number: v[number_key].as_i64()?,
        url: v[url_key].as_str()?.to_string(),
        open: v["state"].as_str() != Some("closed"),
    })
}

#[cfg(test)]
#[path = "tracker_tests.rs"]
mod tests;

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
//! Each opened issue carries a hidden marker naming its delivery, so a retry whose first answer
//! was lost finds the issue instead of opening a second one. The HTTP side (the client, what
//! answers mean) is `tracker_http.rs`; errors name the service, what was asked and the token's
//! variable, never a URL or a token.

use super::{Ctx, Delivered, Failure, Message};
use crate::config::{Notify, Tracker};
use crate::store::{IssueState, NotifyIssue};

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
    /// The longest title and body (or comment) the service takes, in characters.
    fn limits(&self) -> Limits;
    async fn open(&self, title: &str, body: &str) -> Result<Issue, Failure>;
    /// `None` when the issue is gone (deleted, or moved elsewhere).
    async fn get(&self, number: i64) -> Result<Option<Issue>, Failure>;
    /// The newest issue whose body holds `marker`, among the last few opened.
    async fn find(&self, marker: &str) -> Result<Option<Issue>, Failure>;
    /// `false` when the issue is gone.
    async fn comment(&self, number: i64, body: &str) -> Result<bool, Failure>;
    /// Whether a comment on issue `number` made since `since` (RFC 3339) holds `marker`.
    async fn commented(&self, number: i64, marker: &str, since: &str) -> Result<bool, Failure>;
    /// `false` when the issue is gone.
    async fn close(&self, number: i64) -> Result<bool, Failure>;
}

/// A service's limits, in characters.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub title: usize,
    pub body: usize,
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
        "deploy.failed" | "rolled_back" if msg.is_failure() => Plan::Report,
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
    let remembered = ctx
        .store
        .notify_issue(&notifier.name, &msg.environment)
        .map_err(|e| Failure::Retry(format!("cannot read the remembered issue: {e}")))?;
    // an issue in another repository or project is not this one's: left as it is
    let (row, elsewhere) = match remembered {
        Some(r) if r.target.eq_ignore_ascii_case(&target) => (Some(r), None),
        Some(r) => {
            tracing::info!(notifier = %notifier.name, env = %msg.environment, issue = r.number,
                "the remembered issue is in another repository or project; it is left as it is");
            (None, Some(r).filter(|r| r.state != IssueState::Closed))
        }
        None => (None, None),
    };
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
    let limits = api.limits();
    match plan(msg, row.as_ref(), cfg.close_on_success) {
        Plan::Nothing(why) => nothing(why),
        Plan::Test => test(api, msg).await,
        Plan::Report => {
            let (title, body) = failure_report(msg);
            let mut gone = None;
            if let Some(row) = row.as_ref().filter(|r| r.state != IssueState::Closed) {
                if let Some(issue) = api.get(row.number).await?.filter(|i| i.open) {
                    let again = format!("**Again:** {}\n\n{body}", code(&title));
                    let said = row.last_deployment == deployment && deployment.is_some()
                        || comment_once(api, row.number, &again, notifier, msg, "failure").await?;
                    if said {
                        remember(IssueState::Open);
                        return Ok(Delivered {
                            answer: format!("commented on #{}", row.number),
                            link: Some(issue.url),
                        });
                    }
                }
                gone = Some(row.number); // closed or deleted by someone: a new one
            }
            let marker = marker(notifier, msg);
            // a retry after an open whose answer was lost finds the issue it opened
            let found = match &marker {
                Some(m) => api.find(m).await?,
                None => None,
            };
            let (issue, opened) = match found {
                Some(issue) => (issue, "found"),
                None => {
                    let mark = marker
                        .as_deref()
                        .map(|m| format!("\n\n{m}"))
                        .unwrap_or_default();
                    let room = limits.body.saturating_sub(mark.chars().count());
                    let body = format!("{}{mark}", cut_markdown(&body, room, msg));
                    (api.open(&cut(&title, limits.title), &body).await?, "opened")
                }
            };
            ctx.store
                .notify_issue_opened(
                    &notifier.name,
                    &msg.environment,
                    &target,
                    issue.number,
                    &issue.url,
                    deployment,
                )
                .map_err(|e| {
                    // the next attempt finds the issue by its marker
                    Failure::Retry(format!(
                        "{opened} #{} but cannot remember it: {e}",
                        issue.number
                    ))
                })?;
            let mut answer = format!("opened #{}", issue.number);
            if let Some(n) = gone {
                answer.push_str(&format!(" (#{n} was closed or deleted)"));
            }
            if let Some(r) = &elsewhere {
                answer.push_str(&format!(
                    " (#{} of the repository configured before is left as it is)",
                    r.number
                ));
            }
            Ok(Delivered {
                answer,
                link: Some(issue.url),
            })
        }
        Plan::Resolve { comment, close } => {
            let Some(row) = row else {
                return nothing("no open issue for this environment");
            };
            let gone = || {
                remember(IssueState::Closed);
                Ok(Delivered {
                    answer: format!("#{} was already closed or deleted", row.number),
                    link: Some(row.url.clone()),
                })
            };
            let Some(open) = api.get(row.number).await?.filter(|i| i.open) else {
                return gone();
            };
            let mut did = Vec::new();
            if comment {
                let said = success_comment(msg, close);
                if !comment_once(api, row.number, &said, notifier, msg, "success").await? {
                    return gone();
                }
                remember(IssueState::Recovered);
                did.push("commented on");
            }
            if close {
                if !api.close(row.number).await? {
                    return gone();
                }
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

/// Posts `body` on issue `number` with a marker naming this delivery, unless a comment since
/// the deployment began already holds it (a retry whose first answer was lost). `false` when
/// the issue is gone.
async fn comment_once(
    api: &impl Api,
    number: i64,
    body: &str,
    notifier: &Notify,
    msg: &Message,
    kind: &str,
) -> Result<bool, Failure> {
    let limit = api.limits().body;
    let Some(d) = &msg.deployment else {
        return api.comment(number, &cut_markdown(body, limit, msg)).await;
    };
    let marker = format!(
        "<!-- ferry: notifier {} environment {} deployment {} created {} {kind} -->",
        notifier.name, msg.environment, d.id, d.created_at
    );
    if api.commented(number, &marker, &d.created_at).await? {
        return Ok(true);
    }
    let room = limit.saturating_sub(marker.chars().count() + 2);
    let body = format!("{}\n\n{marker}", cut_markdown(body, room, msg));
    api.comment(number, &body).await
}

/// The line hidden in an issue's body that names the delivery which opened it, so that a
/// retry whose first answer was lost finds the issue instead of opening another.
fn marker(notifier: &Notify, msg: &Message) -> Option<String> {
    let d = msg.deployment.as_ref()?;
    Some(format!(
        "<!-- ferry: notifier {} environment {} deployment {} created {} -->",
        notifier.name, msg.environment, d.id, d.created_at
    ))
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
    let issue = api.open(&cut(&title, api.limits().title), &body).await?;
    let after = |e: Failure| match e {
        Failure::Retry(m) | Failure::Fatal(m) | Failure::RetryAfter(_, m) => Failure::Fatal(
            format!("opened the test issue #{} but then: {m}", issue.number),
        ),
    };
    let commented = api
        .comment(
            issue.number,
            "A comment, as ferry adds for a failure that happens again.",
        )
        .await
        .map_err(after)?;
    if !commented || !api.close(issue.number).await.map_err(after)? {
        return Err(Failure::Fatal(format!(
            "opened the test issue #{} but then it was gone",
            issue.number
        )));
    }
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
        if closing {
            " ferry closes this issue now."
        } else {
            ""
        },
        link_line(msg)
    )
}

/// `s` cut to at most `max` characters, marked when cut.
pub(crate) fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let keep: String = s.chars().take(max.saturating_sub(1)).collect();
    format!("{keep}…")
}

/// Markdown `s` cut to at most `max` characters: a code fence open at the cut is closed, and
/// a last line says where the rest is (`ferry show`).
pub(crate) fn cut_markdown(s: &str, max: usize, msg: &Message) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let rest = match &msg.deployment {
        Some(d) => format!("`ferry show {}` has all of it", d.id),
        None => "ferry has all of it".to_string(),
    };
    let note = format!("\n\n*(cut here: the tracker takes {max} characters; {rest})*\n");
    // room for the note and a closing fence as long as any fence
    let longest_fence = s.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let room = max.saturating_sub(note.chars().count() + longest_fence + 2);
    let mut head: String = s.chars().take(room).collect();
    if let Some(nl) = head.rfind('\n') {
        head.truncate(nl);
    }
    // which fence, if any, is open at the cut
    let mut open: Option<String> = None;
    for line in head.lines() {
        let ticks: String = line.chars().take_while(|c| *c == '`').collect();
        match &open {
            None if ticks.len() >= 3 => open = Some(ticks),
            Some(f) if ticks.len() >= f.len() && line.trim_end() == ticks => open = None,
            _ => {}
        }
    }
    if let Some(fence) = open {
        head.push('\n');
        head.push_str(&fence);
    }
    head.push_str(&note);
    head
}

#[path = "tracker_http.rs"]
mod http;
pub(crate) use http::{
    Asking, act, call, classify, client, find_marked, holds, issue_from, send, token,
};

#[cfg(test)]
#[path = "tracker_tests.rs"]
mod tests;

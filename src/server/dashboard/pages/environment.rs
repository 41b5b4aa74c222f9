//! An environment's page: its card, the health chart, the rollback form and the paged history.

use std::collections::BTreeSet;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::{PageResult, card, fail, notice, page};
use crate::config::Environment;
use crate::pipeline::EnvStatus;
use crate::server::dashboard::views::{self, csrf, duration, short, state_badge, when};
use crate::server::dashboard::{Viewer, chart};
use crate::server::{ApiError, AppState};
use crate::store::Deployment;

/// History rows per page.
const PER_PAGE: usize = 25;

#[derive(Deserialize)]
pub struct EnvQuery {
    page: Option<usize>,
    hours: Option<i64>,
    notice: Option<String>,
}

pub async fn environment(
    State(app): State<AppState>,
    viewer: Viewer,
    Path(env): Path<String>,
    Query(q): Query<EnvQuery>,
) -> Response {
    match environment_body(&app, &viewer, &env, &q).await {
        Ok((body, busy)) => {
            views::layout(&page(&app, env.as_str(), busy), &viewer, body).into_response()
        }
        Err(e) => fail(e),
    }
}

async fn environment_body(
    app: &AppState,
    viewer: &Viewer,
    name: &str,
    q: &EnvQuery,
) -> Result<(Markup, bool), ApiError> {
    let engine = &app.engine;
    let env = engine.env(name)?.env.clone();
    let store = &engine.store;
    let s = engine.snapshot(name).await?;
    let unfinished = store.unfinished()?;
    let busy = unfinished.iter().any(|d| d.environment == name);
    let card = card(app, viewer, &env, &s, &unfinished)?;

    let hours = q.hours.unwrap_or(6).clamp(1, 72);
    let since = (chrono::Utc::now() - chrono::TimeDelta::hours(hours))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let probes = store.probes_since(name, &since)?;

    let page_no = q.page.unwrap_or(1).max(1);
    let (rows, total) = store.history_page(name, page_no - 1, PER_PAGE)?;
    let pages = total.div_ceil(PER_PAGE).max(1);

    let rollback = if viewer.can_act() && s.version.is_some() {
        Some(rollback_form(app, viewer, &env, &s)?)
    } else {
        None
    };
    let body = html! {
        h1 { (name) }
        (notice(q.notice.as_deref()))
        section.cards aria-label="Status" { (card) }
        section.panel aria-labelledby="health-title" {
            h2 #health-title { "Health, last " (hours) " h" }
            nav.range aria-label="Chart range" {
                @for h in [1, 6, 24, 72] {
                    @if h == hours { strong { (h) " h" } } @else { a href={ "?hours=" (h) } { (h) " h" } }
                }
            }
            (chart::health(&probes, hours))
        }
        @if s.processes.len() > 1 {
            section.panel aria-labelledby="processes-title" {
                h2 #processes-title { "Processes" }
                (processes_table(&s.processes))
            }
        }
        @if let Some(r) = &s.rollout { (rollout_panel(viewer, name, r)) }
        @if let Some(form) = rollback { (form) }
        @if viewer.can_act() && (s.port.is_some() || s.hosts.iter().any(|h| h.release.is_some())) { (restart_form(viewer, name)) }
        section.panel aria-labelledby="history-title" {
            h2 #history-title { "History" }
            (history_table(&rows))
            nav.pager aria-label="History pages" {
                @if page_no > 1 { a rel="prev" href={ "?page=" (page_no - 1) } { "← Newer" } }
                span { "page " (page_no) " of " (pages) " · " (total) " deployment(s)" }
                @if page_no < pages { a rel="next" href={ "?page=" (page_no + 1) } { "Older →" } }
            }
        }
    };
    Ok((body, busy))
}

/// Rolling back: the target (every earlier good release, by name), a reason, and the
/// environment's confirmation word typed.
fn rollback_form(app: &AppState, viewer: &Viewer, env: &Environment, s: &EnvStatus) -> PageResult {
    let name = &env.name;
    let word = env.confirm_word();
    let store = &app.engine.store;
    let good: BTreeSet<String> = store
        .releases(name)?
        .into_iter()
        .filter(|r| r.status == "good" && r.digest.is_some())
        .map(|r| r.name)
        .collect();
    let mut seen = BTreeSet::new();
    let targets: Vec<Deployment> = store
        .succeeded(name)?
        .into_iter()
        .filter(|d| d.release.is_some() && d.release != s.release)
        .filter(|d| d.release.as_ref().is_some_and(|r| good.contains(r)))
        .filter(|d| seen.insert(d.release.clone()))
        .take(10)
        .collect();
    Ok(html! {
        section.panel #rollback aria-labelledby="rollback-title" {
            h2 #rollback-title { "Roll back " (name) }
            @if targets.is_empty() {
                p.hint { "No earlier good release to go back to." }
            } @else {
                form.stack method="post" action={ "/actions/environments/" (name) "/rollback" } {
                    (csrf(viewer))
                    label for="rollback-to" { "Go back to" }
                    select #rollback-to name="to" {
                        @for d in &targets {
                            @let r = d.release.as_deref().unwrap_or("");
                            option value=(r) { (r) " — deployed " (d.finished_at.as_deref().unwrap_or("")) }
                        }
                    }
                    label for="rollback-reason" { "Reason" }
                    input #rollback-reason name="reason" type="text" required placeholder="why, for the audit trail";
                    @if !env.backup.is_empty() {
                        label.check {
                            input type="checkbox" name="restore_data" value="true";
                            " Also restore the data backed up before the deploy being undone"
                        }
                    }
                    @if app.engine.config.app.release.is_some() {
                        label.check {
                            input type="checkbox" name="run_release" value="true";
                            " Also run the release command in it before it starts"
                        }
                    }
                    label for="rollback-confirm" { "Type " strong { (word) } " to confirm" }
                    input #rollback-confirm name="confirm" type="text" required autocomplete="off" pattern=(regex_literal(word));
                    button.danger type="submit" { "Roll back " (name) }
                }
            }
        }
    })
}

/// Restarting: the serving release started again through the zero-downtime path.
fn restart_form(viewer: &Viewer, name: &str) -> Markup {
    html! {
        section.panel #restart aria-labelledby="restart-title" {
            h2 #restart-title { "Restart " (name) }
            p.hint { "Starts the release serving now again — a new instance with the variables and secrets read afresh, health-checked, then switched to; no request is dropped." }
            form.stack method="post" action={ "/actions/environments/" (name) "/restart" } {
                (csrf(viewer))
                label for="restart-reason" { "Reason" }
                input #restart-reason name="reason" type="text" placeholder="why (optional), e.g. rotated a secret";
                button type="submit" { "Restart " (name) }
            }
        }
    }
}

/// A canary rollout under way: the share, the steps, why it is paused, the analysis, and
/// for a viewer who may act the Promote, Pause and Abort buttons.
fn rollout_panel(viewer: &Viewer, name: &str, r: &crate::pipeline::RolloutStatus) -> Markup {
    html! {
        section.panel #rollout aria-labelledby="rollout-title" {
            h2 #rollout-title { "Rollout of " (r.release) }
            p {
                strong { (r.weight) "%" } " of clients on " code { (r.release) } ", the rest on "
                code { (r.previous) } " (step " (r.step) " of " (r.steps.len()) ", since " (when(&r.since)) ")"
            }
            ol.steps {
                @for (i, step) in r.steps.iter().enumerate() {
                    @if i + 1 == r.step { li aria-current="step" { strong { (step) } } } @else { li { (step) } }
                }
            }
            @if let Some(why) = &r.paused { p.notice role="status" { "Paused: " (why) } }
            @if let Some(a) = &r.analysis { p.hint { "Analysis: " (a) } }
            @if viewer.can_act() {
                form.inline method="post" action={ "/actions/environments/" (name) "/rollout" } {
                    (csrf(viewer))
                    button type="submit" name="action" value="promote" { "Promote" }
                    " "
                    button type="submit" name="action" value="pause" { "Pause" }
                    " "
                    button.danger type="submit" name="action" value="abort" { "Abort" }
                }
            }
        }
    }
}

/// `text` as an HTML `pattern` matching exactly it.
fn regex_literal(text: &str) -> String {
    regex::escape(text)
}

/// Each process type: instances running of those asked for, what runs them, restarts.
fn processes_table(all: &[crate::pipeline::ProcessStatus]) -> Markup {
    html! {
        div.scroll {
            table.history {
                thead { tr { th scope="col" { "Process" } th scope="col" { "Running" } th scope="col" { "Instances" } th scope="col" { "Restarts" } } }
                tbody {
                    @for p in all {
                        tr {
                            td { code { (p.name) } @if p.name == crate::config::WEB { " " span.badge.muted { "routed" } } }
                            td { (p.running) " of " (p.count) }
                            td {
                                @for pid in &p.pids { code { "pid " (pid) } " " }
                                @for c in &p.containers { code { (c) } " " }
                            }
                            td { (p.restarts) }
                        }
                    }
                }
            }
        }
    }
}

fn history_table(rows: &[Deployment]) -> Markup {
    html! {
        @if rows.is_empty() {
            p.hint { "No deployments yet." }
        } @else {
            div.scroll {
                table.history {
                    thead { tr { th scope="col" { "#" } th scope="col" { "Version" } th scope="col" { "Outcome" } th scope="col" { "Triggered by" } th scope="col" { "Reason" } th scope="col" { "Started" } th scope="col" { "Took" } } }
                    tbody {
                        @for d in rows {
                            tr {
                                td { a href={ "/deployments/" (d.id) } { "#" (d.id) } }
                                td {
                                    (d.release.as_deref().or(d.version.as_deref()).unwrap_or(&d.git_ref))
                                    @if d.kind != "deploy" { " " span.badge.muted { (d.kind) } }
                                    @if let Some(sha) = &d.commit_sha { br; code title=(sha) { (short(sha)) } }
                                }
                                td { (state_badge(d.state)) }
                                td { (d.by()) }
                                td { (d.note.as_deref().or(d.reason.as_deref()).unwrap_or("")) }
                                td { (when(&d.created_at)) }
                                td { (duration(&d.created_at, d.finished_at.as_deref()).unwrap_or_default()) }
                            }
                        }
                    }
                }
            }
        }
    }
}

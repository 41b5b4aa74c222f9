//! A deployment's page: the live timeline of its steps and, while or once it is monitored, the
//! monitoring against the rules.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};

use super::{PageResult, fail, page};
use crate::config::format_duration;
use crate::server::dashboard::views::{self, csrf, duration, short, state_badge, when};
use crate::server::dashboard::{Viewer, chart};
use crate::server::{AppState, parse_id};
use crate::store::{
    Deployment, DeploymentState, Notification, NotificationState, Probe, Step, StepState,
};

pub async fn deployment(
    State(app): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Response {
    let result = parse_id(&id).and_then(|id| Ok(app.engine.deployment(id)?));
    let (d, steps) = match result {
        Ok(found) => found,
        Err(e) => return fail(e),
    };
    let live = match deployment_live(&app, &viewer, &d, &steps) {
        Ok(m) => m,
        Err(e) => return fail(e),
    };
    let title = format!("#{} {} {}", d.id, d.kind, d.git_ref);
    views::layout(
        &page(&app, title, !d.state.is_final()),
        &viewer,
        html! {
            h1 { "#" (d.id) " " (d.kind) " " (d.git_ref) " to " a href={ "/environments/" (d.environment) } { (d.environment) } }
            div #live data-live-src={ "/deployments/" (d.id) "/live" } data-live-events={ "/api/events?deployment=" (d.id) } {
                (live)
            }
        },
    )
    .into_response()
}

pub async fn deployment_fragment(
    State(app): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Response {
    let result = parse_id(&id).and_then(|id| Ok(app.engine.deployment(id)?));
    match result.and_then(|(d, steps)| deployment_live(&app, &viewer, &d, &steps)) {
        Ok(m) => m.into_response(),
        Err(e) => fail(e),
    }
}

/// The parts of a deployment page that change while it runs.
fn deployment_live(app: &AppState, viewer: &Viewer, d: &Deployment, steps: &[Step]) -> PageResult {
    let probes = app.engine.store.deployment_probes(d.id)?;
    let notifications = app.engine.store.deployment_notifications(d.id)?;
    let issues: Vec<&str> = notifications
        .iter()
        .filter_map(|n| n.link.as_deref())
        .filter(|l| web_link(l))
        .fold(Vec::new(), |mut seen, l| {
            if !seen.contains(&l) {
                seen.push(l);
            }
            seen
        });
    let finished = d.state.is_final();
    Ok(html! {
        div.summary data-final[finished] data-state=(d.state.as_str()) {
            (state_badge(d.state))
            dl.facts {
                @if let Some(v) = &d.version { dt { "Version" } dd { (v) } }
                @if let Some(sha) = &d.commit_sha { dt { "Commit" } dd { code title=(sha) { (short(sha)) } } }
                dt { "Triggered by" } dd { (d.by()) }
                @if let Some(note) = &d.note { dt { "Reason given" } dd { (note) } }
                @if let Some(by) = d.approved() { dt { "Approved by" } dd { (by) } }
                @for link in &issues { dt { "Issue" } dd { a href=(link) rel="noreferrer" { (link) } } }
                dt { "Started" } dd { (when(&d.created_at)) }
                dt { "Took" } dd {
                    @if finished { (duration(&d.created_at, d.finished_at.as_deref()).unwrap_or_default()) }
                    @else { span data-since=(d.created_at) { (duration(&d.created_at, None).unwrap_or_default()) } " so far" }
                }
            }
            @if let Some(reason) = &d.reason {
                p class=(if d.state == DeploymentState::Succeeded { "note" } else { "error" }) { (reason) }
            }
            @if d.state == DeploymentState::AwaitingApproval {
                @if viewer.can_act() {
                    form method="post" action={ "/actions/deployments/" (d.id) "/approve" } {
                        (csrf(viewer))
                        button type="submit" { "Approve this deployment" }
                    }
                } @else {
                    p.hint { "Waiting for approval. " a href="/signin" { "Sign in" } " to approve it." }
                }
            }
        }
        h2 { "Steps" }
        (timeline(d, steps))
        @if !probes.is_empty() || steps.iter().any(|s| s.name == "monitor" && s.state != StepState::Skipped) {
            (monitoring(app, &probes))
        }
        @if !notifications.is_empty() {
            (deliveries(&notifications))
        }
    })
}

/// Only http(s) links become anchors (a tracker's answer is not trusted to be one).
fn web_link(link: &str) -> bool {
    link.starts_with("https://") || link.starts_with("http://")
}

/// The notifications about the deployment: who was told, how it went.
fn deliveries(notifications: &[Notification]) -> Markup {
    html! {
        section.panel aria-labelledby="notify-title" {
            h2 #notify-title { "Notifications" }
            table {
                thead { tr { th { "Notifier" } th { "Event" } th { "State" } th { "Attempts" } th { "Answer" } } }
                tbody {
                    @for n in notifications {
                        tr class=(n.state.as_str()) {
                            td { (n.notifier) " " span.meta { "(" (n.kind) ")" } }
                            td { (n.event) }
                            td { (n.state.as_str()) }
                            td { (n.attempts) }
                            td {
                                @if let Some(link) = n.link.as_deref().filter(|l| web_link(l)) {
                                    a href=(link) rel="noreferrer" { (link) } " "
                                }
                                @match n.state {
                                    NotificationState::Sent => { (n.answer.as_deref().unwrap_or("")) },
                                    _ => { span class=(if n.state == NotificationState::Failed { "error" } else { "meta" }) { (n.error.as_deref().unwrap_or("")) } },
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn timeline(d: &Deployment, steps: &[Step]) -> Markup {
    let planned = crate::pipeline::planned_steps(&d.kind);
    // on servers the steps are named per host as they run: the recorded ones in order, then
    // those still to come (none of this machine's start, health, check, rollout or switch)
    let on_hosts = steps.iter().any(|s| s.name == "hosts");
    let mut names: Vec<&str> = if on_hosts {
        Vec::new()
    } else {
        planned.to_vec()
    };
    for s in steps {
        if !names.contains(&s.name.as_str()) {
            names.push(&s.name);
        }
    }
    if on_hosts {
        let local = ["start", "health", "check", "rollout", "switch", "restore"];
        for step in planned.iter().filter(|p| !local.contains(p)) {
            if !names.contains(step) {
                names.push(step);
            }
        }
    }
    let finished = d.state.is_final();
    html! {
        ol.timeline {
            @for name in names {
                @let step = steps.iter().rev().find(|s| s.name == name);
                @match step {
                    None => li.pending { span.icon aria-hidden="true" { "•" } span.name { (name) } span.meta { @if finished { "not run" } @else { "pending" } } },
                    Some(s) => {
                        @let took = duration(&s.started_at, s.finished_at.as_deref()).unwrap_or_default();
                        @match s.state {
                            StepState::Running => li.running aria-current="step" {
                                span.icon { span.spinner aria-label="running" {} }
                                span.name { (name) }
                                span.meta { "running " span data-since=(s.started_at) { (took) } }
                                @if !s.output.is_empty() { pre.output { (crate::events::tail(&s.output, 2000)) } }
                            },
                            StepState::Ok => li.ok {
                                span.icon aria-label="done" { "✓" }
                                span.name { (name) }
                                span.meta { (took) }
                                @if !s.output.trim().is_empty() {
                                    details { summary { "output" } pre.output { (s.output) } }
                                }
                            },
                            StepState::Failed => li.failed {
                                span.icon aria-label="failed" { "✗" }
                                span.name { (name) }
                                span.meta { "failed after " (took) }
                                pre.output { (s.output) }
                                @if let Some(app) = &s.app_output {
                                    p.meta { "the app's last lines:" }
                                    pre.output.app { (app) }
                                }
                            },
                            StepState::Skipped => li.skipped {
                                span.icon aria-label="skipped" { "–" }
                                span.name { (name) }
                                span.meta { "skipped: " (s.output.trim()) }
                            },
                        }
                    },
                }
            }
        }
    }
}

/// Monitoring so far: probes, success rate and slowest against the rules.
fn monitoring(app: &AppState, probes: &[Probe]) -> Markup {
    let passed = probes.iter().filter(|p| p.ok).count();
    let rate = if probes.is_empty() {
        100.0
    } else {
        passed as f64 * 100.0 / probes.len() as f64
    };
    let in_a_row = probes.iter().rev().take_while(|p| !p.ok).count();
    let slowest = probes.iter().map(|p| p.response_ms).fold(0.0, f64::max);
    let rules = app.engine.config.monitor.as_ref();
    html! {
        section.panel aria-labelledby="monitor-title" {
            h2 #monitor-title { "Monitoring" }
            dl.facts.rules {
                dt { "Probes" }
                dd {
                    (probes.len())
                    @if let Some(m) = rules {
                        " of " ((m.duration.as_millis() / m.interval.as_millis().max(1)).max(1))
                        " (every " (format_duration(m.interval)) " for " (format_duration(m.duration)) ")"
                    }
                }
                dt { "Success rate" }
                dd { (format!("{rate:.0}")) "%" @if let Some(m) = rules { " (at least " (format!("{:.0}", m.min_success_rate * 100.0)) "%)" } }
                dt { "Failed in a row" }
                dd { (in_a_row) @if let Some(m) = rules { " (at most " (m.max_consecutive_failures.saturating_sub(1)) ")" } }
                dt { "Slowest probe" }
                dd { (format!("{slowest:.0}")) " ms" @if let Some(m) = rules { " (at most " (format_duration(m.max_response_time)) ")" } }
            }
            (chart::sparkline(probes))
        }
    }
}

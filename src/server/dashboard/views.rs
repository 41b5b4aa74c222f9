//! Markup shared by the dashboard's pages: the layout, times, badges, an environment's card.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};

use super::Viewer;
use crate::pipeline::EnvStatus;
use crate::store::{Deployment, DeploymentState};

/// What a page's `<head>` and header need besides the body.
pub struct Page<'a> {
    pub app: &'a str,
    pub title: String,
    pub environments: Vec<String>,
    /// Reload every few seconds when JavaScript is off (something is in progress).
    pub refresh: bool,
}

pub fn layout(page: &Page<'_>, viewer: &Viewer, body: Markup) -> Markup {
    let version = env!("CARGO_PKG_VERSION");
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (page.title) " · " (page.app) " · ferry" }
                link rel="stylesheet" href={ "/static/ferry.css?v=" (version) };
                script src={ "/static/ferry.js?v=" (version) } defer {}
                @if page.refresh {
                    noscript { meta http-equiv="refresh" content="5"; }
                }
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/" { "ferry" }
                    span.app { (page.app) }
                    nav aria-label="Environments" {
                        a href="/" { "Overview" }
                        @for env in &page.environments {
                            a href={ "/environments/" (env) } { (env) }
                        }
                    }
                    div.who {
                        @match &viewer.session {
                            Some(s) => {
                                span {
                                    "Signed in as " strong { (s.token.name) }
                                    @if s.token.read_only() { " (read-only)" }
                                }
                                form.inline method="post" action="/signout" {
                                    (csrf(viewer))
                                    button.link type="submit" { "Sign out" }
                                }
                            }
                            None => a href="/signin" { "Sign in" },
                        }
                    }
                }
                main #main { (body) }
            }
        }
    }
}

/// The hidden field every form of a session carries.
pub fn csrf(viewer: &Viewer) -> Markup {
    html! { input type="hidden" name="csrf" value=(viewer.csrf()); }
}

/// A bare page for errors: status, message and a way back.
pub fn error(status: StatusCode, message: &str) -> Response {
    let body = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (status.as_u16()) " · ferry" }
                link rel="stylesheet" href="/static/ferry.css";
            }
            body {
                header.top { a.brand href="/" { "ferry" } }
                main #main {
                    h1 { (status.canonical_reason().unwrap_or("Error")) }
                    p.error role="alert" { (message) }
                    p { a href="/" { "Back to the overview" } }
                }
            }
        }
    };
    (status, body).into_response()
}

fn parse(at: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(at)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// A human span: `850 ms`, `12 s`, `3 min 4 s`, `2 h 5 min`, `3 d`.
pub fn span(d: chrono::TimeDelta) -> String {
    let ms = d.num_milliseconds().max(0);
    let s = ms / 1000;
    match s {
        _ if ms < 1000 => format!("{ms} ms"),
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        3600..86400 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d", s / 86400),
    }
}

/// A time as `<time>`: relative (`4 min ago`), the exact UTC time on hover.
pub fn when(at: &str) -> Markup {
    let Some(t) = parse(at) else {
        return html! { (at) };
    };
    let ago = Utc::now() - t;
    let text = if ago.num_seconds() < 5 {
        "just now".to_string()
    } else {
        format!("{} ago", span(ago))
    };
    html! { time datetime=(at) title=(t.format("%Y-%m-%d %H:%M:%S UTC")) { (text) } }
}

/// How long from `from` to `to` (or to now while unfinished).
pub fn duration(from: &str, to: Option<&str>) -> Option<String> {
    let start = parse(from)?;
    let end = match to {
        Some(t) => parse(t)?,
        None => Utc::now(),
    };
    Some(span(end - start))
}

pub fn short(sha: &str) -> &str {
    sha.get(..7).unwrap_or(sha)
}

/// A deployment's state as a coloured word.
pub fn state_badge(state: DeploymentState) -> Markup {
    let class = match state {
        DeploymentState::Succeeded => "ok",
        DeploymentState::Failed | DeploymentState::RolledBack => "bad",
        DeploymentState::Refused | DeploymentState::Interrupted => "warn",
        DeploymentState::Running | DeploymentState::Monitoring | DeploymentState::Queued => "busy",
        DeploymentState::AwaitingApproval => "wait",
        DeploymentState::Superseded => "muted",
    };
    html! { span class={ "badge " (class) } { (state.as_str().replace('_', " ")) } }
}

fn health_badge(health: &str) -> Markup {
    let class = match health {
        "healthy" => "ok",
        "unhealthy" | "down" => "bad",
        _ => "muted",
    };
    let text = if health == "none" {
        "never deployed"
    } else {
        health
    };
    html! { span class={ "badge " (class) } { (text) } }
}

/// What the overview shows of one environment besides its status.
pub struct CardExtras {
    pub slots: usize,
    /// Unfinished deployments, oldest first.
    pub unfinished: Vec<Deployment>,
    /// Forms for the signed-in viewer.
    pub actions: Option<Markup>,
}

/// One environment as a card.
pub fn env_card(s: &EnvStatus, extras: &CardExtras, viewer: &Viewer) -> Markup {
    let name = &s.environment;
    html! {
        article.card id={ "env-" (name) } aria-labelledby={ "env-" (name) "-title" } {
            header {
                h2 id={ "env-" (name) "-title" } { a href={ "/environments/" (name) } { (name) } }
                @if extras.slots > 1 { span.badge.muted { "slot " (s.slot) } }
                (health_badge(&s.health))
                @if s.maintenance.is_some() { span.badge.warn { "maintenance" } }
                @if let Some(lock) = &s.deploying {
                    @if lock.kind == "manual" { span.badge.warn { "locked" } }
                }
            }
            p.version data-version=(s.version.as_deref().unwrap_or("")) {
                (s.version.as_deref().unwrap_or("nothing deployed"))
            }
            dl.facts {
                @if let Some(sha) = &s.commit_sha {
                    dt { "Commit" } dd { code title=(sha) { (short(sha)) } }
                }
                @if let Some(at) = &s.deployed_at {
                    dt { "Deployed" }
                    dd {
                        (when(at))
                        @if let Some(by) = &s.deployed_by { " by " (by) }
                        @if let Some(id) = s.deployment_id {
                            " · " a href={ "/deployments/" (id) } { "#" (id) }
                        }
                    }
                }
                dt { "Health" }
                dd {
                    @match (s.response_ms, &s.probed_at) {
                        (Some(ms), Some(at)) => { "last probe " (ms) " ms, " (when(at)) }
                        _ => { (s.health_detail.as_deref().unwrap_or("—")) }
                    }
                    @if s.health == "unhealthy" {
                        @if let Some(d) = &s.health_detail { br; small.error { (d) } }
                    }
                }
                dt { "Reached at" } dd {
                    @for (i, url) in s.urls.iter().enumerate() {
                        @if i > 0 { br; }
                        code { (url) }
                    }
                }
                @if let Some(c) = &s.certificate {
                    dt { "Certificate" } dd {
                        @if let (Some(issuer), Some(until)) = (&c.issuer, c.not_after) {
                            (issuer) ", expires " (until.format("%Y-%m-%d"))
                        } @else {
                            "none yet"
                        }
                        @if let Some(e) = &c.error { br; small.error { (e) } }
                    }
                }
            }
            @if let Some(r) = &s.rollout {
                p.note {
                    strong { "Rollout: " } (r.release) " on " (r.weight) "% of clients"
                    @if r.paused.is_some() { " — " a href={ "/environments/" (name) "#rollout" } { "paused" } }
                }
            }
            @if let Some(m) = &s.maintenance {
                p.note { strong { "Maintenance page on: " } (m) }
            }
            @if !s.preview.is_empty() {
                p.note {
                    strong { "Preview of the new release" } " (until the switch): "
                    @for url in &s.preview { a href=(url) { code { (url) } } " " }
                }
            }
            @if let Some(first) = s.traffic.first() {
                table.traffic {
                    caption { "Traffic over the last " (format!("{:.0}", first.window_seconds)) " s" }
                    thead { tr { th { "Instance" } th { "Requests" } th { "Error rate" } th { "p50" } th { "p99" } } }
                    tbody {
                        @for t in &s.traffic {
                            tr {
                                td { (t.release) " " small { code { (t.instance) } } }
                                td { (t.requests) }
                                td { (t.error_rate.map_or("-".to_string(), crate::proxy::metrics::percent)) }
                                td { (ms(t.p50_ms)) }
                                td { (ms(t.p99_ms)) }
                            }
                        }
                    }
                }
            }
            @if !s.hosts.is_empty() { (hosts_table(&s.hosts)) }
            @if let Some(lock) = &s.deploying {
                @if lock.kind == "manual" {
                    p.note { strong { "Locked" } " by " (lock.holder) ": " (lock.reason.as_deref().unwrap_or("")) }
                }
            }
            @for d in &extras.unfinished {
                p.now {
                    @if d.state == DeploymentState::Running || d.state == DeploymentState::Monitoring {
                        span.spinner aria-hidden="true" {}
                    }
                    a href={ "/deployments/" (d.id) } {
                        (d.kind) " " (d.git_ref) " · " (d.state.as_str().replace('_', " "))
                        @if let Some(step) = &d.step { " · " (step) }
                    }
                    @if let Some(until) = s.queue.iter().find(|q| q.id == d.id).and_then(|q| q.until.as_deref()) {
                        " · in line for the lock until " (until)
                    }
                    @if d.state == DeploymentState::AwaitingApproval && viewer.can_act() {
                        form.inline method="post" action={ "/actions/deployments/" (d.id) "/approve" } {
                            (csrf(viewer))
                            button type="submit" aria-label={ "Approve deployment " (d.id) " of " (d.git_ref) " to " (name) } { "Approve" }
                        }
                    }
                }
            }
            @if let Some(actions) = &extras.actions { (actions) }
        }
    }
}

/// Each host of an environment with `servers`: the release it serves, its state, when it
/// last answered, and why it is not `ok`.
fn hosts_table(hosts: &[crate::pipeline::HostStatus]) -> Markup {
    html! {
        table.traffic.hosts {
            caption { "Hosts" }
            thead { tr { th scope="col" { "Host" } th scope="col" { "Release" } th scope="col" { "State" } th scope="col" { "Last seen" } } }
            tbody {
                @for h in hosts {
                    tr {
                        td { code { (h.host) } }
                        td {
                            (h.release.as_deref().unwrap_or("—"))
                            @if let Some(w) = h.wanted.as_deref().filter(|w| Some(*w) != h.release.as_deref()) {
                                br; small { "must serve " (w) }
                            }
                        }
                        td {
                            (host_badge(&h.state))
                            @if h.state != "ok" { @if let Some(d) = &h.detail { br; small.error { (d) } } }
                        }
                        td { @match &h.last_seen { Some(at) => (when(at)), None => "never" } }
                    }
                }
            }
        }
    }
}

fn host_badge(state: &str) -> Markup {
    let class = match state {
        "ok" => "ok",
        "failed" => "bad",
        "unknown" => "warn",
        _ => "muted",
    };
    html! { span class={ "badge " (class) } { (state) } }
}

/// A latency in milliseconds for the traffic table ("-" without requests).
fn ms(v: Option<f64>) -> String {
    v.map_or("-".to_string(), |v| {
        crate::proxy::metrics::millis(std::time::Duration::from_secs_f64(v / 1000.0))
    })
}

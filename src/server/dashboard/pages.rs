//! The dashboard's pages: overview, environment (health chart, rollback, history) and
//! deployment (live timeline, monitoring), with the fragments the live parts re-render.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::views::{self, CardExtras, Page, csrf, duration, short, state_badge, when};
use super::{Viewer, chart};
use crate::config::{Environment, format_duration};
use crate::pipeline::EnvStatus;
use crate::server::{ApiError, AppState, parse_id};
use crate::store::{Deployment, DeploymentState, Probe, Step, StepState};

/// History rows per page.
const PER_PAGE: usize = 25;
/// Commits listed between two environments.
const COMMITS: usize = 30;

type PageResult = Result<Markup, ApiError>;

fn fail(e: ApiError) -> Response {
    views::error(e.status, &e.message)
}

fn page(app: &AppState, title: impl Into<String>, refresh: bool) -> Page<'_> {
    Page {
        app: &app.engine.config.app.name,
        title: title.into(),
        environments: ordered(&app.engine.config.environments)
            .map(|e| e.name.clone())
            .collect(),
        refresh,
    }
}

/// Environments in promotion order: those that require none first (staging before
/// production), then by file order.
fn ordered(envs: &[Environment]) -> impl Iterator<Item = &Environment> {
    let depth = |e: &Environment| {
        let mut depth = 0;
        let mut at = e;
        while let Some(next) = at
            .requires
            .as_deref()
            .and_then(|g| envs.iter().find(|o| o.group == g))
        {
            depth += 1;
            if depth > envs.len() {
                break;
            }
            at = next;
        }
        depth
    };
    let mut sorted: Vec<&Environment> = envs.iter().collect();
    sorted.sort_by_key(|e| depth(e));
    sorted.into_iter()
}

/// What an action's redirect tells the person who acted: `?notice=` takes one of these codes,
/// never text, so a link cannot put words of its choosing on ferry's pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    SignedIn,
    SignedOut,
    Approved,
    Verified,
    RollbackStarted,
    PromotionStarted,
    MaintenanceOn,
    MaintenanceOff,
    Locked,
    Unlocked,
}

impl Notice {
    const ALL: [Notice; 10] = [
        Notice::SignedIn,
        Notice::SignedOut,
        Notice::Approved,
        Notice::Verified,
        Notice::RollbackStarted,
        Notice::PromotionStarted,
        Notice::MaintenanceOn,
        Notice::MaintenanceOff,
        Notice::Locked,
        Notice::Unlocked,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Notice::SignedIn => "signed-in",
            Notice::SignedOut => "signed-out",
            Notice::Approved => "approved",
            Notice::Verified => "verified",
            Notice::RollbackStarted => "rollback-started",
            Notice::PromotionStarted => "promotion-started",
            Notice::MaintenanceOn => "maintenance-on",
            Notice::MaintenanceOff => "maintenance-off",
            Notice::Locked => "locked",
            Notice::Unlocked => "unlocked",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Notice::SignedIn => "Signed in.",
            Notice::SignedOut => "Signed out.",
            Notice::Approved => "Approved.",
            Notice::Verified => "Verified the version running.",
            Notice::RollbackStarted => "Rollback started.",
            Notice::PromotionStarted => "Promotion started.",
            Notice::MaintenanceOn => "Maintenance is on.",
            Notice::MaintenanceOff => "Maintenance is off.",
            Notice::Locked => "Locked.",
            Notice::Unlocked => "Unlocked.",
        }
    }

    /// The notice a code names; anything else shows nothing.
    fn from_code(code: &str) -> Option<Notice> {
        Notice::ALL.into_iter().find(|n| n.code() == code)
    }
}

#[derive(Deserialize)]
pub struct NoticeQuery {
    notice: Option<String>,
}

fn notice(code: Option<&str>) -> Markup {
    html! {
        @if let Some(n) = code.and_then(Notice::from_code) {
            p.notice role="status" { (n.message()) }
        }
    }
}

pub async fn overview(
    State(app): State<AppState>,
    viewer: Viewer,
    Query(n): Query<NoticeQuery>,
) -> Response {
    let body = match overview_body(&app, &viewer).await {
        Ok(b) => b,
        Err(e) => return fail(e),
    };
    let busy = app.engine.store.unfinished().is_ok_and(|u| !u.is_empty());
    views::layout(
        &page(&app, "Overview", busy),
        &viewer,
        html! {
            h1 { "Overview" }
            (notice(n.notice.as_deref()))
            div #overview data-live-src="/fragments/overview" data-live-events="/api/events" {
                (body)
            }
        },
    )
    .into_response()
}

pub async fn overview_fragment(State(app): State<AppState>, viewer: Viewer) -> Response {
    match overview_body(&app, &viewer).await {
        Ok(b) => b.into_response(),
        Err(e) => fail(e),
    }
}

async fn overview_body(app: &AppState, viewer: &Viewer) -> PageResult {
    let engine = &app.engine;
    let unfinished = engine.store.unfinished()?;
    let envs: Vec<&Environment> = ordered(&engine.config.environments).collect();
    let mut statuses = Vec::new();
    for env in &envs {
        statuses.push(engine.snapshot(&env.name).await?);
    }
    let mut cards = Vec::new();
    for (env, s) in envs.iter().zip(&statuses) {
        cards.push(card(app, viewer, env, s, &unfinished)?);
    }
    let mut comparisons = Vec::new();
    for (from, to) in pairs(&engine.config.environments) {
        let from = statuses.iter().find(|s| s.environment == from);
        let to = statuses.iter().find(|s| s.environment == to);
        if let (Some(from), Some(to)) = (from, to) {
            comparisons.push(compare(app, from, to).await);
        }
    }
    Ok(html! {
        section.cards aria-label="Environments" { @for c in &cards { (c) } }
        @for c in &comparisons { (c) }
    })
}

/// One environment's card with what is in flight there and, for a signed-in viewer, its
/// actions.
fn card(
    app: &AppState,
    viewer: &Viewer,
    env: &Environment,
    s: &EnvStatus,
    unfinished: &[Deployment],
) -> PageResult {
    let config = &app.engine.config;
    let actions = if viewer.can_act() {
        Some(actions(app, viewer, env, s)?)
    } else {
        None
    };
    let extras = CardExtras {
        slots: config.group(&env.group).len(),
        unfinished: unfinished
            .iter()
            .filter(|d| d.environment == env.name)
            .cloned()
            .collect(),
        actions,
    };
    Ok(views::env_card(s, &extras, viewer))
}

/// The forms on a card: verify (where another environment requires this one), promote
/// (where this one requires another), roll back, maintenance, lock.
fn actions(app: &AppState, viewer: &Viewer, env: &Environment, s: &EnvStatus) -> PageResult {
    let config = &app.engine.config;
    let name = &env.name;
    let verifies = config
        .environments
        .iter()
        .any(|e| e.requires.as_deref() == Some(env.group.as_str()));
    let promotable = match &env.requires {
        None => Vec::new(),
        Some(from) => {
            let mut seen = BTreeSet::new();
            app.engine
                .store
                .verifications(None)?
                .into_iter()
                .filter(|v| {
                    config
                        .environment(&v.environment)
                        .is_some_and(|e| e.group == *from)
                })
                .filter(|v| seen.insert(v.version.clone()))
                .take(10)
                .map(|v| v.version)
                .collect()
        }
    };
    let manual_lock = s.deploying.as_ref().is_some_and(|l| l.kind == "manual");
    let base = format!("/actions/environments/{name}");
    Ok(html! {
        details.actions {
            summary { "Actions" }
            div.action-list {
                @if verifies {
                    @if let Some(v) = &s.version {
                        form method="post" action={ (base) "/verify" } {
                            (csrf(viewer))
                            button type="submit" { "Verify " (v) }
                        }
                    }
                }
                @if let Some(from) = &env.requires {
                    @if promotable.is_empty() {
                        p.hint { "Nothing verified on " (from) " yet to promote." }
                    } @else {
                        form method="post" action="/actions/promote" {
                            (csrf(viewer))
                            input type="hidden" name="to" value=(name);
                            label for={ "promote-" (name) } { "Verified tag" }
                            select id={ "promote-" (name) } name="tag" {
                                @for v in &promotable { option value=(v) { (v) } }
                            }
                            button type="submit" { "Promote to " (name) }
                        }
                    }
                }
                @if s.version.is_some() {
                    a.button href={ "/environments/" (name) "#rollback" } { "Roll back…" }
                }
                form method="post" action={ (base) "/maintenance" } {
                    (csrf(viewer))
                    @if s.maintenance.is_some() {
                        input type="hidden" name="on" value="false";
                        button type="submit" { "Turn maintenance off" }
                    } @else {
                        input type="hidden" name="on" value="true";
                        label for={ "maint-" (name) } { "Maintenance message" }
                        input id={ "maint-" (name) } name="message" type="text" placeholder="Back shortly";
                        button type="submit" { "Turn maintenance on" }
                    }
                }
                @if manual_lock {
                    form method="post" action={ (base) "/unlock" } {
                        (csrf(viewer))
                        button type="submit" { "Unlock " (name) }
                    }
                } @else {
                    form method="post" action={ (base) "/lock" } {
                        (csrf(viewer))
                        label for={ "lock-" (name) } { "Lock reason" }
                        input id={ "lock-" (name) } name="reason" type="text" required;
                        button type="submit" { "Lock " (name) }
                    }
                }
            }
        }
    })
}

/// Which environments to compare: each that requires another with the first slot of what it
/// requires; without any `requires`, each group's first slot with the next group's.
fn pairs(envs: &[Environment]) -> Vec<(String, String)> {
    let first_of = |group: &str| {
        envs.iter()
            .find(|e| e.group == group)
            .map(|e| e.name.clone())
    };
    let required: Vec<_> = envs
        .iter()
        .filter_map(|e| Some((first_of(e.requires.as_deref()?)?, e.name.clone())))
        .collect();
    if !required.is_empty() {
        return required;
    }
    let mut firsts: Vec<String> = Vec::new();
    for e in envs {
        if !envs
            .iter()
            .any(|o| o.group == e.group && firsts.contains(&o.name))
        {
            firsts.push(e.name.clone());
        }
    }
    firsts
        .windows(2)
        .map(|w| (w[0].clone(), w[1].clone()))
        .collect()
}

/// What promoting `from`'s version to `to` would bring: the commits between them.
async fn compare(app: &AppState, from: &EnvStatus, to: &EnvStatus) -> Markup {
    let title = format!("{} → {}", from.environment, to.environment);
    let id = format!("compare-{}-{}", from.environment, to.environment);
    let body = match (&from.commit_sha, &to.commit_sha) {
        (None, _) => html! { p.hint { "Nothing is deployed on " (from.environment) " yet." } },
        (Some(a), Some(b)) if a == b => html! {
            p { (to.environment) " runs the same commit as " (from.environment) " (" code { (short(a)) } ")." }
        },
        (Some(a), b) => match app.commits_between(b.as_deref(), a).await {
            Err(e) => html! { p.error { "Cannot list the commits: " (e) } },
            Ok(found) if found.0.is_empty() => {
                let more = found.1;
                let behind = match b {
                    Some(b) => app
                        .commits_between(Some(a), b)
                        .await
                        .map(|c| c.0.len())
                        .unwrap_or(0),
                    None => 0,
                };
                html! {
                    p { (to.environment) " is ahead of " (from.environment) " by " (behind) @if more { "+" } " commit(s); promoting would bring nothing new." }
                }
            }
            Ok(found) => {
                let (commits, more) = (&found.0, found.1);
                let version = from.version.as_deref().unwrap_or("?");
                // a branch cannot go where only release tags are deployed: tag it first
                let tags_only = app
                    .engine
                    .config
                    .environment(&to.environment)
                    .is_some_and(|e| matches!(e.track, crate::config::Track::Tags));
                let needs_tag = tags_only && crate::policy::release_tag(version, true).is_err();
                html! {
                @if needs_tag {
                    p {
                        (from.environment) " runs " strong { (version) } ", not a release tag, and "
                        (to.environment) " deploys release tags only: tag a release ("
                        code { "ferry release" } ") to bring these "
                        strong { (commits.len()) @if more { "+" } " commit(s)" }
                        " to " (to.environment) ":"
                    }
                } @else {
                p {
                    "Promoting " strong { (version) }
                    " from " (from.environment) " would bring "
                    strong { (commits.len()) @if more { "+" } " commit(s)" }
                    " to " (to.environment)
                    @if let Some(v) = &to.version { " (now " (v) ")" }
                    ":"
                }
                }
                ol.commits {
                    @for c in commits.iter() {
                        li { code title=(c.sha) { (short(&c.sha)) } " " (c.subject) " " span.author { "— " (c.author) } }
                    }
                }
                @if more { p.hint { "… and more; the list stops at " (COMMITS) "." } }
                }
            }
        },
    };
    html! {
        section.compare aria-labelledby=(id) {
            h2 #(id) { (title) }
            (body)
        }
    }
}

impl AppState {
    /// The commits between two shas from the mirror, remembered (they never change).
    async fn commits_between(
        &self,
        from: Option<&str>,
        to: &str,
    ) -> Result<Arc<(Vec<crate::release::Commit>, bool)>, String> {
        let key = (from.map(str::to_string), to.to_string());
        if let Some(hit) = self
            .commits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(hit.clone());
        }
        let mirror = self.engine.config.state_dir.join("mirror.git");
        let found = crate::release::commits_between(&mirror, from, to, COMMITS)
            .await
            .map_err(|e| e.to_string())?;
        let found = Arc::new(found);
        let mut cache = self.commits.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() > 256 {
            cache.clear();
        }
        cache.insert(key, found.clone());
        Ok(found)
    }
}

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
        @if let Some(form) = rollback { (form) }
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
                    label for="rollback-confirm" { "Type " strong { (word) } " to confirm" }
                    input #rollback-confirm name="confirm" type="text" required autocomplete="off" pattern=(regex_literal(word));
                    button.danger type="submit" { "Roll back " (name) }
                }
            }
        }
    })
}

/// `text` as an HTML `pattern` matching exactly it.
fn regex_literal(text: &str) -> String {
    regex::escape(text)
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
    })
}

fn timeline(d: &Deployment, steps: &[Step]) -> Markup {
    let planned = crate::pipeline::planned_steps(&d.kind);
    let mut names: Vec<&str> = planned.to_vec();
    for s in steps {
        if !names.contains(&s.name.as_str()) {
            names.push(&s.name);
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

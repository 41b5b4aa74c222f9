//! The overview page: every environment's card, and what promoting each to the next would
//! bring (the commits between them, read from the mirror and remembered).

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};

use super::{NoticeQuery, PageResult, card, fail, notice, ordered, page};
use crate::config::Environment;
use crate::pipeline::EnvStatus;
use crate::server::AppState;
use crate::server::dashboard::Viewer;
use crate::server::dashboard::views::{self, short};

/// Commits listed between two environments.
const COMMITS: usize = 30;

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

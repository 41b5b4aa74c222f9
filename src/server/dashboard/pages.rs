//! The dashboard's pages: overview, environment (health chart, rollback, history) and
//! deployment (live timeline, monitoring), with the fragments the live parts re-render.
//!
//! Each page has its module; this one holds what they share: the layout's page frame,
//! the environment card with its actions, and the notices an action's redirect may show.

mod deployment;
mod environment;
mod overview;

use std::collections::BTreeSet;

use axum::response::Response;
use maud::{Markup, html};
use serde::Deserialize;

use super::Viewer;
use super::views::{self, CardExtras, Page, csrf};
use crate::config::Environment;
use crate::pipeline::EnvStatus;
use crate::server::{ApiError, AppState};
use crate::store::Deployment;

pub use deployment::{deployment, deployment_fragment};
pub use environment::environment;
pub use overview::{overview, overview_fragment};

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
    RestartStarted,
    PromotionStarted,
    MaintenanceOn,
    MaintenanceOff,
    Locked,
    Unlocked,
    RolloutPromoted,
    RolloutPaused,
    RolloutAborted,
}

impl Notice {
    const ALL: [Notice; 14] = [
        Notice::SignedIn,
        Notice::SignedOut,
        Notice::Approved,
        Notice::Verified,
        Notice::RollbackStarted,
        Notice::RestartStarted,
        Notice::PromotionStarted,
        Notice::MaintenanceOn,
        Notice::MaintenanceOff,
        Notice::Locked,
        Notice::Unlocked,
        Notice::RolloutPromoted,
        Notice::RolloutPaused,
        Notice::RolloutAborted,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Notice::SignedIn => "signed-in",
            Notice::SignedOut => "signed-out",
            Notice::Approved => "approved",
            Notice::Verified => "verified",
            Notice::RollbackStarted => "rollback-started",
            Notice::RestartStarted => "restart-started",
            Notice::PromotionStarted => "promotion-started",
            Notice::MaintenanceOn => "maintenance-on",
            Notice::MaintenanceOff => "maintenance-off",
            Notice::Locked => "locked",
            Notice::Unlocked => "unlocked",
            Notice::RolloutPromoted => "rollout-promoted",
            Notice::RolloutPaused => "rollout-paused",
            Notice::RolloutAborted => "rollout-aborted",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Notice::SignedIn => "Signed in.",
            Notice::SignedOut => "Signed out.",
            Notice::Approved => "Approved.",
            Notice::Verified => "Verified the version running.",
            Notice::RollbackStarted => "Rollback started.",
            Notice::RestartStarted => "Restart started.",
            Notice::PromotionStarted => "Promotion started.",
            Notice::MaintenanceOn => "Maintenance is on.",
            Notice::MaintenanceOff => "Maintenance is off.",
            Notice::Locked => "Locked.",
            Notice::Unlocked => "Unlocked.",
            Notice::RolloutPromoted => "The rollout goes on to its next step.",
            Notice::RolloutPaused => "The rollout is paused.",
            Notice::RolloutAborted => {
                "The rollout is aborted: every client is on the previous release."
            }
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

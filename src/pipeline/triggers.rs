//! Triggers: what a pushed branch or tag deploys.
//!
//! - An environment with `track = { branch = "main" }` deploys every push to `main`. When a
//!   deployment is already under way there, the push waits in the environment's queue; a newer
//!   push replaces the waiting one (which becomes `superseded`), so only the newest commit
//!   deploys once the environment is free. ferry's own work counts as under way too: the
//!   restore `serve` runs at start, and a crashed instance being started again.
//! - An environment with `track = { tags = true, auto = true }` deploys pushed release tags
//!   through every gate (typically it then waits for approval); without `auto` the tag is
//!   recorded and not deployed.
//! - A deleted branch or tag deploys nothing.
//! - A pushed (ref, commit) is acted on once per environment (see [`Engine::on_push`]): a
//!   signed body replayed under a new delivery id deploys nothing.

use std::sync::Arc;
use std::time::Duration;

use super::{Engine, EngineError};
use crate::config::Track;
use crate::store::{Actor, Deployment, DeploymentState};

/// How often a queued push looks whether its environment is free.
const QUEUE_POLL: Duration = Duration::from_millis(100);

/// What was pushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pushed {
    Branch(String),
    Tag(String),
}

impl Pushed {
    /// From a full ref (`refs/heads/main`, `refs/tags/v1.2.3`); `None` for other refs.
    pub fn from_ref(full: &str) -> Option<Pushed> {
        if let Some(b) = full.strip_prefix("refs/heads/") {
            Some(Pushed::Branch(b.to_string()))
        } else {
            full.strip_prefix("refs/tags/")
                .map(|t| Pushed::Tag(t.to_string()))
        }
    }

    fn name(&self) -> &str {
        match self {
            Pushed::Branch(n) | Pushed::Tag(n) => n,
        }
    }
}

/// What a tracked push became.
#[derive(Debug)]
pub enum Tracked {
    /// Under way now.
    Started(Deployment),
    /// Waiting for the environment's current deployment; with the id of the waiting one it
    /// replaced, if any.
    Queued(Deployment, Option<i64>),
}

/// True for git's "no commit" id, which a push of a deleted ref carries as its new commit.
pub fn is_deleted(sha: &str) -> bool {
    !sha.is_empty() && sha.bytes().all(|b| b == b'0')
}

/// A push to act on: the ref, its new commit as the provider sent it (`after`: for an
/// annotated tag, the tag object) and the commit that is (the tag peeled), and who pushed.
#[derive(Debug, Clone, Copy)]
pub struct Push<'a> {
    pub pushed: &'a Pushed,
    pub after: &'a str,
    pub commit: &'a str,
    pub who: &'a str,
}

impl Engine {
    /// Acts on `push`; returns one line per environment saying what happened, for the
    /// delivery's record.
    ///
    /// A pushed (ref, commit) is acted on once per environment: not again when an earlier
    /// push of it made a deployment there (unless that one was refused or interrupted before
    /// it could run), nor while that commit of the ref is under way or deployed there. So a
    /// signed body replayed with a fresh delivery id deploys nothing.
    pub fn on_push(self: &Arc<Self>, push: Push<'_>) -> Vec<String> {
        let Push { pushed, after, .. } = push;
        if is_deleted(after) {
            tracing::info!(
                git_ref = pushed.name(),
                "push deleted the ref; nothing to deploy"
            );
            return vec![format!("ignored: {} was deleted", pushed.name())];
        }
        // one push at a time, so two copies of one body cannot both pass the check
        let _one = self.pushes.lock().unwrap_or_else(|e| e.into_inner());
        let mut said = Vec::new();
        for state in self.environments() {
            let env = &state.env;
            let wanted = match (&env.track, pushed) {
                (Track::Branch(b), Pushed::Branch(p)) if b == p => Ok(p),
                (Track::Tags, Pushed::Tag(t)) => {
                    if let Err(why) = crate::policy::release_tag(t, env.prerelease) {
                        Err(format!("{}: ignored: {why}", env.name))
                    } else if !env.auto {
                        Err(format!(
                            "{}: tag {t} recorded, not deployed (track has no auto = true)",
                            env.name
                        ))
                    } else {
                        Ok(t)
                    }
                }
                _ => continue,
            };
            let line = match wanted {
                Err(line) => line,
                Ok(name) => match self.seen_push(&env.name, name, &push) {
                    Ok(Some(seen)) => format!("{}: not deployed again: {seen}", env.name),
                    Ok(None) => self.deploy_push(&env.name, name, &push),
                    Err(e) => format!("{}: not deployed: {e}", env.name),
                },
            };
            tracing::info!(environment = %env.name, "{line}");
            said.push(line);
        }
        if said.is_empty() {
            said.push(format!(
                "ignored: no environment tracks {}",
                match pushed {
                    Pushed::Branch(b) => format!("branch {b}"),
                    Pushed::Tag(t) => format!("tag {t}"),
                }
            ));
        }
        said
    }

    /// Why a push of `name` to `env` was acted on already, if it was.
    fn seen_push(
        &self,
        env: &str,
        name: &str,
        push: &Push<'_>,
    ) -> Result<Option<String>, EngineError> {
        let short = |sha: &str| sha.chars().take(7).collect::<String>();
        if let Some(d) = self.store.pushed_before(env, name, push.after)? {
            return Ok(Some(format!(
                "this push of {name} ({}) made deployment {} already ({})",
                short(push.after),
                d.id,
                d.state.as_str()
            )));
        }
        let same = |d: &Deployment| {
            d.environment == env
                && d.kind == "deploy"
                && d.git_ref == name
                && d.commit_sha.as_deref() == Some(push.commit)
        };
        if let Some(d) = self.store.unfinished()?.into_iter().find(same) {
            return Ok(Some(format!(
                "{name} at {} is under way in deployment {}",
                short(push.commit),
                d.id
            )));
        }
        if let Some(d) = self.store.last_succeeded(env)?.filter(same) {
            return Ok(Some(format!(
                "{name} at {} is deployed already (deployment {})",
                short(push.commit),
                d.id
            )));
        }
        Ok(None)
    }

    /// Deploys (or queues) a push of `name` to `env`; the line for the delivery's record.
    fn deploy_push(self: &Arc<Self>, env: &str, name: &str, push: &Push<'_>) -> String {
        let tracked = self.request_tracked(env, name, push.who);
        let id = match &tracked {
            Ok(Tracked::Started(d) | Tracked::Queued(d, _)) => Some(d.id),
            Err(EngineError::Busy { deployment, .. }) => Some(*deployment),
            Err(_) => None,
        };
        if let Some(id) = id
            && let Err(e) = self.store.set_pushed(id, push.after)
        {
            tracing::error!(id, error = %e, "cannot record the pushed commit");
        }
        match tracked {
            Ok(Tracked::Started(d)) => format!("deployment {} to {env}", d.id),
            Ok(Tracked::Queued(d, None)) => format!("deployment {} to {env} queued", d.id),
            Ok(Tracked::Queued(d, Some(old))) => {
                format!("deployment {} to {env} queued (supersedes {old})", d.id)
            }
            Err(e) => format!("{env}: not deployed: {e}"),
        }
    }

    /// Like [`Engine::request`], but when the environment is busy with another deployment the
    /// new one waits (queued) instead of being refused, replacing any push already waiting.
    pub fn request_tracked(
        self: &Arc<Self>,
        env: &str,
        git_ref: &str,
        who: &str,
    ) -> Result<Tracked, EngineError> {
        let state = self.env(env)?.clone();
        crate::release::check_ref(git_ref)?;
        // pushes carry no token: the name says which delivery it was
        let who = &Actor::named(who);
        let mut queue = self.queued.lock().unwrap_or_else(|e| e.into_inner());
        let busy = queue.contains_key(env) || self.busy_with(env, None)?;
        // a person's lock refuses at once, as for any deploy
        let manual = self
            .store
            .lock_holder(env)?
            .is_some_and(|h| h.kind == "manual");
        // `[webhooks] wait_lock`: a person's lock is waited for, not refused at once
        let wait = self.config.webhooks.wait_lock;
        if !busy || manual {
            drop(queue);
            return Ok(Tracked::Started(
                self.request_with(env, git_ref, who, None, wait)?,
            ));
        }
        let id = self.create(env, "deploy", git_ref, who)?;
        if let Some(wait) = wait {
            // started once free, it may still meet a lock taken meanwhile: it waits for it
            self.allow_wait(id, wait);
        }
        let superseded = queue.insert(env.to_string(), id);
        drop(queue);
        if let Some(old) = superseded {
            self.store.set_state(
                old,
                DeploymentState::Superseded,
                Some(&format!(
                    "superseded by deployment {id}, a newer push of {git_ref}"
                )),
            )?;
        }
        let engine = self.clone();
        let env = env.to_string();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(QUEUE_POLL).await;
                let mut queue = engine.queued.lock().unwrap_or_else(|e| e.into_inner());
                if queue.get(&env) != Some(&id) {
                    return; // superseded
                }
                match engine.busy_with(&env, Some(id)) {
                    Ok(true) => continue,
                    Ok(false) => {
                        queue.remove(&env);
                        drop(queue);
                        engine.launch(id, state);
                        return;
                    }
                    Err(e) => {
                        tracing::error!(id, error = %e, "cannot look at the queue; trying again");
                    }
                }
            }
        });
        Ok(Tracked::Queued(self.store.deployment(id)?, superseded))
    }

    /// True while `env` has an unfinished deployment other than `except`, or ferry itself
    /// holds its lock (restoring the last good release at start, restarting a crashed one).
    fn busy_with(&self, env: &str, except: Option<i64>) -> Result<bool, EngineError> {
        let ferry_holds = self.store.lock_holder(env)?.is_some_and(|h| {
            h.kind != "manual" && (h.deployment_id.is_none() || h.deployment_id != except)
        });
        Ok(ferry_holds
            || self
                .store
                .unfinished()?
                .iter()
                .any(|d| d.environment == env && Some(d.id) != except))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_and_deletions() {
        assert_eq!(
            Pushed::from_ref("refs/heads/feature/x"),
            Some(Pushed::Branch("feature/x".into()))
        );
        assert_eq!(
            Pushed::from_ref("refs/tags/v1.2.3"),
            Some(Pushed::Tag("v1.2.3".into()))
        );
        assert_eq!(Pushed::from_ref("refs/notes/x"), None);
        assert!(is_deleted("0000000000000000000000000000000000000000"));
        assert!(!is_deleted("0000000000000000000000000000000000000001"));
        assert!(!is_deleted(""));
    }
}

//! Triggers: what a pushed branch or tag deploys.
//!
//! - An environment with `track = { branch = "main" }` deploys every push to `main`. When a
//!   deployment is already under way there, the push waits in the environment's queue; a newer
//!   push replaces the waiting one (which becomes `superseded`), so only the newest commit
//!   deploys once the environment is free.
//! - An environment with `track = { tags = true, auto = true }` deploys pushed release tags
//!   through every gate (typically it then waits for approval); without `auto` the tag is
//!   recorded and not deployed.
//! - A deleted branch or tag deploys nothing.

use std::sync::Arc;
use std::time::Duration;

use super::{Engine, EngineError};
use crate::config::Track;
use crate::store::{Deployment, DeploymentState};

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

impl Engine {
    /// Acts on a push of `pushed` (now at `after`), by `who`; returns one line per
    /// environment saying what happened, for the delivery's record.
    pub fn on_push(self: &Arc<Self>, pushed: &Pushed, after: &str, who: &str) -> Vec<String> {
        if is_deleted(after) {
            tracing::info!(
                git_ref = pushed.name(),
                "push deleted the ref; nothing to deploy"
            );
            return vec![format!("ignored: {} was deleted", pushed.name())];
        }
        let mut said = Vec::new();
        for state in self.environments() {
            let env = &state.env;
            let line = match (&env.track, pushed) {
                (Track::Branch(b), Pushed::Branch(p)) if b == p => {
                    match self.request_tracked(&env.name, p, who) {
                        Ok(Tracked::Started(d)) => format!("deployment {} to {}", d.id, env.name),
                        Ok(Tracked::Queued(d, None)) => {
                            format!("deployment {} to {} queued", d.id, env.name)
                        }
                        Ok(Tracked::Queued(d, Some(old))) => format!(
                            "deployment {} to {} queued (supersedes {old})",
                            d.id, env.name
                        ),
                        Err(e) => format!("{}: not deployed: {e}", env.name),
                    }
                }
                (Track::Tags, Pushed::Tag(t)) => {
                    if let Err(why) = crate::policy::release_tag(t, env.prerelease) {
                        format!("{}: ignored: {why}", env.name)
                    } else if !env.auto {
                        format!(
                            "{}: tag {t} recorded, not deployed (track has no auto = true)",
                            env.name
                        )
                    } else {
                        match self.request_tracked(&env.name, t, who) {
                            Ok(Tracked::Started(d)) => {
                                format!("deployment {} to {}", d.id, env.name)
                            }
                            Ok(Tracked::Queued(d, _)) => {
                                format!("deployment {} to {} queued", d.id, env.name)
                            }
                            Err(e) => format!("{}: not deployed: {e}", env.name),
                        }
                    }
                }
                _ => continue,
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
        let mut queue = self.queued.lock().unwrap_or_else(|e| e.into_inner());
        let busy = queue.contains_key(env) || self.busy_with(env, None)?;
        // a person's lock refuses at once, as for any deploy
        let manual = self
            .store
            .lock_holder(env)?
            .is_some_and(|h| h.kind == "manual");
        if !busy || manual {
            drop(queue);
            return Ok(Tracked::Started(self.request(env, git_ref, who, None)?));
        }
        let id = self.create(env, "deploy", git_ref, who)?;
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

    /// True while `env` has an unfinished deployment other than `except`.
    fn busy_with(&self, env: &str, except: Option<i64>) -> Result<bool, EngineError> {
        Ok(self
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

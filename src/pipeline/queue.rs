//! Waiting for the lock instead of being refused (`ferry deploy --wait-lock 10m`, promote,
//! `[webhooks] wait_lock`).
//!
//! A deployment asked for with a wait is not refused when its environment is locked (by
//! another deployment, ferry itself, or `ferry lock`): it runs `resolve` and `policy` as any
//! other, then at the `lock` step it joins the environment's line and waits there in state
//! `queued`, the step saying whom it waits behind. The line is first come, first served by
//! arrival at the lock step: only its first may take the lock once it is free. When its
//! wait (counted from the request) runs out, it is `refused`, naming the holder. While a
//! line waits, a deploy without a wait is refused (it would jump the line); a rollback is
//! not held back by it (it still needs the lock free).
//!
//! The line lives in memory: a `serve` that stops marks its queued deployments
//! `interrupted`, as any unfinished one.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::steps::{Held, Stop};
use super::{Engine, EngineError, EnvState};
use crate::store::{Actor, Deployment, DeploymentState, LockHolder};

/// How often a waiting deployment looks whether it may take the lock.
const POLL: Duration = Duration::from_millis(100);

/// A deployment waiting (or allowed to wait) for its environment's lock, as status shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Queued {
    pub id: i64,
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub kind: String,
    pub triggered_by: String,
    /// When it was asked for.
    pub since: String,
    /// When its wait runs out; `None` for a push waiting behind a deployment, which waits
    /// as long as that takes.
    pub until: Option<String>,
}

/// How long a deployment may wait, and until when.
#[derive(Debug, Clone)]
struct Wait {
    wait: Duration,
    until: tokio::time::Instant,
    until_at: String,
}

/// Every deployment's wait, and per environment the line at its lock step.
#[derive(Default)]
pub(super) struct LockQueue {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    waits: BTreeMap<i64, Wait>,
    lines: BTreeMap<String, Vec<i64>>,
}

impl LockQueue {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Deployment `id` may wait `wait` from now.
    fn allow(&self, id: i64, wait: Duration) {
        let until_at = (chrono::Utc::now()
            + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        self.inner().waits.insert(
            id,
            Wait {
                wait,
                until: tokio::time::Instant::now() + wait,
                until_at,
            },
        );
    }

    fn wait_of(&self, id: i64) -> Option<Wait> {
        self.inner().waits.get(&id).cloned()
    }

    /// The deployments in `env`'s line, first first.
    fn line(&self, env: &str) -> Vec<i64> {
        self.inner().lines.get(env).cloned().unwrap_or_default()
    }

    fn join(&self, env: &str, id: i64) {
        let mut inner = self.inner();
        let line = inner.lines.entry(env.to_string()).or_default();
        if !line.contains(&id) {
            line.push(id);
        }
    }

    /// Forgets `id`: out of any line, its wait dropped.
    pub(super) fn forget(&self, id: i64) {
        let mut inner = self.inner();
        inner.waits.remove(&id);
        for line in inner.lines.values_mut() {
            line.retain(|d| *d != id);
        }
        inner.lines.retain(|_, line| !line.is_empty());
    }
}

/// `held`'s refusal, naming the deployment when one holds it.
fn holder_says(env: &str, held: &LockHolder) -> String {
    let mut said = held.refusal(env);
    if let Some(id) = held.deployment_id {
        said.push_str(&format!(" (deployment {id})"));
    }
    said
}

impl Engine {
    /// [`Engine::request`] that, given `wait`, queues behind a busy or locked environment
    /// for that long instead of being refused.
    pub fn request_waiting(
        self: &std::sync::Arc<Self>,
        env: &str,
        git_ref: &str,
        who: &Actor,
        force: Option<&str>,
        wait: Option<Duration>,
    ) -> Result<Deployment, EngineError> {
        let Some(wait) = wait else {
            return self.request(env, git_ref, who, force);
        };
        if wait > crate::config::MAX_WAIT_LOCK {
            return Err(EngineError::Invalid(
                "--wait-lock is longer than a day: wait at most 24h".into(),
            ));
        }
        self.request_with(env, git_ref, who, force, Some(wait))
    }

    /// Records the wait of a deployment just created, before it runs.
    pub(super) fn allow_wait(&self, id: i64, wait: Duration) {
        self.lock_queue.allow(id, wait);
    }

    /// The lock gate of deployment `id`, allowed to wait: a held lock is a wait, not a
    /// refusal.
    pub(super) fn lock_gate_waits(&self, id: i64, eval: &mut crate::policy::Evaluation) {
        let Some(wait) = self.lock_queue.wait_of(id) else {
            return;
        };
        for gate in eval.gates.iter_mut() {
            if gate.name == "lock" && gate.verdict == crate::policy::Verdict::Fail {
                gate.verdict = crate::policy::Verdict::Wait;
                gate.detail = format!(
                    "{}; waits in line at the lock step (--wait-lock {})",
                    gate.detail,
                    crate::config::format_duration(wait.wait)
                );
            }
        }
    }

    /// A deploy without a wait is refused while others wait in line for `env`'s lock: it
    /// would jump it. The refusal is recorded on deployment `id`.
    pub(super) fn refuse_if_queued(
        &self,
        env: &str,
        id: i64,
    ) -> Result<Option<EngineError>, EngineError> {
        let line = self.lock_queue.line(env);
        let Some(first) = line.first() else {
            return Ok(None);
        };
        let message = format!(
            "environment {env} has {} waiting for its lock (first: deployment {first}); add --wait-lock 10m to queue behind {}",
            if line.len() == 1 {
                "a deployment".to_string()
            } else {
                format!("{} deployments", line.len())
            },
            if line.len() == 1 { "it" } else { "them" }
        );
        self.store
            .set_state(id, DeploymentState::Refused, Some(&message))?;
        Ok(Some(EngineError::Busy {
            message,
            deployment: id,
        }))
    }

    /// The lock step of a deployment allowed to wait, `first` holding the lock when it
    /// came: waits in line in state `queued` until it is first and takes the lock, or until
    /// its wait runs out (refused, naming the holder then). Its output so far.
    pub(super) async fn wait_for_lock(
        &self,
        id: i64,
        state: &EnvState,
        who: &str,
        held: &mut Held,
    ) -> Option<Result<String, Stop>> {
        let wait = self.lock_queue.wait_of(id)?;
        let env = &state.env.name;
        Some(self.wait_in_line(id, env, who, held, wait).await)
    }

    async fn wait_in_line(
        &self,
        id: i64,
        env: &str,
        who: &str,
        held: &mut Held,
        wait: Wait,
    ) -> Result<String, Stop> {
        self.lock_queue.join(env, id);
        // out of the line whatever happens next (taken, refused, the task dropped)
        struct Leave<'a>(&'a LockQueue, i64);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                self.0.forget(self.1);
            }
        }
        let _leave = Leave(&self.lock_queue, id);
        let started = tokio::time::Instant::now();
        let mut out = String::new();
        let mut said = String::new();
        loop {
            let line = self.lock_queue.line(env);
            let blocker = match line.iter().position(|d| *d == id) {
                Some(0) => match self.store.acquire_lock(env, Some(id), "deploy", who)? {
                    Ok(()) => {
                        held.lock = true;
                        if !out.is_empty() {
                            self.store.set_state(id, DeploymentState::Running, None)?;
                        }
                        out.push_str(&format!(
                            "locked {env} for deployment {id}{}\n",
                            if out.is_empty() {
                                String::new()
                            } else {
                                format!(
                                    " after waiting {}",
                                    crate::config::format_duration(Duration::from_secs(
                                        started.elapsed().as_secs()
                                    ))
                                )
                            }
                        ));
                        return Ok(out);
                    }
                    Err(h) => holder_says(env, &h),
                },
                Some(n) => format!(
                    "deployment {} waits ahead of it in line ({} ahead)",
                    line[0], n
                ),
                None => unreachable!("joined above"),
            };
            if blocker != said {
                if out.is_empty() {
                    self.store.set_state(id, DeploymentState::Queued, None)?;
                }
                out.push_str(&format!(
                    "waiting: {blocker}; until {} (--wait-lock {})\n",
                    wait.until_at,
                    crate::config::format_duration(wait.wait)
                ));
                self.store.set_running_output(id, "lock", &out)?;
                said = blocker;
            }
            if tokio::time::Instant::now() >= wait.until {
                return Err(Stop::refused(format!(
                    "waited {} for the lock, in vain: {said}",
                    crate::config::format_duration(wait.wait)
                ))
                .with_output(&format!(
                    "{out}gave up after {}: {said}\n",
                    crate::config::format_duration(wait.wait)
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The deployments of `env` waiting to start or for its lock, first first.
    pub(super) fn queue_of(&self, env: &str) -> Result<Vec<Queued>, EngineError> {
        let waiting: Vec<Deployment> = self
            .store
            .unfinished()?
            .into_iter()
            .filter(|d| d.environment == env && d.state == DeploymentState::Queued)
            .collect();
        let line = self.lock_queue.line(env);
        let mut queued: Vec<Queued> = waiting
            .into_iter()
            .map(|d| Queued {
                until: self.lock_queue.wait_of(d.id).map(|w| w.until_at),
                id: d.id,
                git_ref: d.git_ref,
                kind: d.kind,
                triggered_by: d.triggered_by,
                since: d.created_at,
            })
            .collect();
        // those in line in its order, then the others (pushes waiting to start) by id
        queued.sort_by_key(|q| {
            (
                line.iter().position(|d| *d == q.id).unwrap_or(usize::MAX),
                q.id,
            )
        });
        Ok(queued)
    }
}

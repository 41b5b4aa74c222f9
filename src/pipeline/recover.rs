//! Bringing environments back after `serve` starts, and keeping them up while it runs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use nix::sys::signal::Signal;

use super::{Engine, EnvState};
use crate::runtime;
use crate::store::DeploymentState;

/// Holder name of the lock taken while an environment is being restored.
pub const RESTORE_HOLDER: &str = "ferry (restoring the last good release)";
/// Holder name of the lock taken while a crashed instance is started again.
pub const RESTART_HOLDER: &str = "ferry (restarting a crashed instance)";

impl Engine {
    /// Run once at `serve` start: deployments cut off by a stop are `interrupted`, their locks
    /// freed, instances left running by a previous ferry stopped.
    pub async fn recover_store(&self) -> Result<(), super::EngineError> {
        for d in self.store.unfinished()? {
            let step = d.step.as_deref().unwrap_or("queue");
            let reason = format!("ferry stopped during step {step}");
            tracing::warn!(id = d.id, env = %d.environment, "deployment interrupted: {reason}");
            self.store
                .set_state(d.id, DeploymentState::Interrupted, Some(&reason))?;
        }
        self.store.clear_deploy_locks()?;
        for instance in self.store.live_instances()? {
            // the same pid with the same start time is the process we started; anything else
            // reused the pid and is left alone
            let alive = runtime::process_start_time(instance.pid);
            if alive.is_some() && alive == instance.proc_start {
                tracing::info!(pid = instance.pid, env = %instance.environment, "stopping an instance left by a previous ferry");
                runtime::kill_group(instance.pid, Signal::SIGTERM);
                let deadline = tokio::time::Instant::now() + self.config.app.stop_timeout;
                while runtime::process_start_time(instance.pid) == alive
                    && tokio::time::Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                runtime::kill_group(instance.pid, Signal::SIGKILL);
            }
            self.store.instance_stopped(instance.id)?;
        }
        Ok(())
    }

    /// Starts every environment's last good release (from its built release dir, no
    /// rebuild). Environments are restored concurrently; failures are logged.
    pub async fn restore_all(self: &Arc<Self>) {
        let tasks = self.environments().cloned().map(|state| {
            let engine = self.clone();
            async move {
                let env = state.env.name.clone();
                match engine.restore(&state).await {
                    Ok(Some(release)) => tracing::info!(env = %env, release = %release, "restored"),
                    Ok(None) => tracing::info!(env = %env, "nothing deployed yet"),
                    Err(e) => tracing::error!(env = %env, error = %e, "could not restore"),
                }
            }
        });
        futures_util::future::join_all(tasks).await;
    }

    async fn restore(&self, state: &EnvState) -> Result<Option<String>, String> {
        let env = &state.env.name;
        let Some(last) = self.store.last_succeeded(env).map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        let (Some(release), Some(version), Some(commit)) = (
            last.release.clone(),
            last.version.clone(),
            last.commit_sha.clone(),
        ) else {
            return Ok(None);
        };
        self.run_release(state, &release, version, commit, RESTORE_HOLDER)
            .await?;
        Ok(Some(release))
    }

    /// Starts `release` from its built dir under a `restore` lock held by `holder`, waits
    /// until it is healthy, and switches traffic to it.
    async fn run_release(
        &self,
        state: &EnvState,
        release: &str,
        version: String,
        commit: String,
        holder: &str,
    ) -> Result<(), String> {
        let env = &state.env.name;
        let dir = self.config.env_dir(env).join("releases").join(release);
        if !dir.is_dir() {
            return Err(format!("release dir {} is gone", dir.display()));
        }
        match self.store.acquire_lock(env, None, "restore", holder) {
            Ok(Ok(())) => {}
            Ok(Err(h)) => return Err(format!("locked by {}", h.holder)),
            Err(e) => return Err(e.to_string()),
        }
        let vars = vec![
            ("ENVIRONMENT".to_string(), state.env.group.clone()),
            ("FERRY_SLOT".to_string(), env.clone()),
            ("APP_VERSION".to_string(), version),
            ("COMMIT_SHA".to_string(), commit),
        ];
        let result = match self.instance_spec(state, &dir, vars) {
            Ok(spec) => self.start_healthy(state, release, spec).await,
            Err(e) => Err(e),
        };
        let _ = self.store.release_lock(env, None, "restore");
        let active = result?;
        if let Some(old) = state.activate(active).await {
            self.retire(old).await;
        }
        Ok(())
    }

    /// Watches every environment's serving instance; one that exits on its own is started
    /// again from the same release, with a growing pause between failed attempts (1 s up to
    /// 60 s). A deployment in progress takes precedence: it will replace the instance anyway.
    pub async fn supervise(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut next_try: HashMap<String, (tokio::time::Instant, u32)> = HashMap::new();
        loop {
            tokio::select! {
                () = crate::proxy::stopped(&mut shutdown) => return,
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            for state in self.environments() {
                let env = state.env.name.clone();
                let crashed = state.active.lock().await.as_ref().and_then(|a| {
                    a.instance
                        .exited()
                        .map(|status| (a.release.clone(), status))
                });
                let Some((release, status)) = crashed else {
                    next_try.remove(&env);
                    continue;
                };
                let (at, failures) = next_try
                    .get(&env)
                    .copied()
                    .unwrap_or((tokio::time::Instant::now(), 0));
                if tokio::time::Instant::now() < at || *shutdown.borrow() {
                    continue;
                }
                if failures == 0 {
                    tracing::warn!(env = %env, release = %release, %status, "instance exited on its own; restarting it");
                }
                let Ok(Some(row)) = self.store.release(&env, &release) else {
                    continue;
                };
                let result = self
                    .run_release(state, &release, row.version, row.commit_sha, RESTART_HOLDER)
                    .await;
                match result {
                    Ok(()) => {
                        tracing::info!(env = %env, release = %release, "instance restarted");
                        next_try.remove(&env);
                    }
                    Err(e) => {
                        let pause =
                            Duration::from_secs(1 << failures.min(6)).min(Duration::from_secs(60));
                        tracing::error!(env = %env, error = %e, "restart failed; next try in {}s", pause.as_secs());
                        next_try.insert(env, (tokio::time::Instant::now() + pause, failures + 1));
                    }
                }
            }
        }
    }
}

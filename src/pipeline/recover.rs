//! Bringing environments back after `serve` starts, and keeping them up while it runs.

use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;

use super::{Engine, EnvState};
use crate::runtime;
use crate::store::DeploymentState;

/// Holder name of the lock taken while an environment is being restored.
pub const RESTORE_HOLDER: &str = "ferry (restoring the last good release)";

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
        let dir = self.config.env_dir(env).join("releases").join(&release);
        if !dir.is_dir() {
            return Err(format!("release dir {} is gone", dir.display()));
        }
        match self
            .store
            .acquire_lock(env, None, "restore", RESTORE_HOLDER)
        {
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
            Ok(spec) => self.start_healthy(state, &release, spec).await,
            Err(e) => Err(e),
        };
        let _ = self.store.release_lock(env, None, "restore");
        let active = result?;
        if let Some(old) = state.activate(active).await {
            self.retire(old).await;
        }
        Ok(Some(release))
    }
}

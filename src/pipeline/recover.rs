//! Bringing environments back after `serve` starts, and keeping them up while it runs.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use nix::sys::signal::Signal;

use super::environment::Active;
use super::{Engine, EnvState};
use crate::proxy::Upstream;
use crate::runtime;
use crate::store::DeploymentState;

/// Holder name of the lock taken while an environment is being restored.
pub const RESTORE_HOLDER: &str = "ferry (restoring the last good release)";
/// Holder name of the lock taken while a crashed instance is started again.
pub const RESTART_HOLDER: &str = "ferry (restarting a crashed instance)";

impl Engine {
    /// Run once at `serve` start, before the proxies listen: deployments cut off by a stop
    /// are `interrupted` and their locks freed; build and test commands they left running
    /// are killed. Per environment, an instance of the last good release still running from
    /// the previous ferry (same pid, same process start time) and healthy is adopted and
    /// serves at once; every other leftover instance is stopped.
    pub async fn recover_store(&self) -> Result<(), super::EngineError> {
        for d in self.store.unfinished()? {
            let step = d.step.as_deref().unwrap_or("queue");
            let (state, reason) = outcome_of_interrupted(step, &d.kind);
            tracing::warn!(id = d.id, env = %d.environment, state = state.as_str(), "deployment cut off by a stop: {reason}");
            self.store.set_state(d.id, state, Some(&reason))?;
        }
        self.store.clear_deploy_locks()?;
        for (deployment, pid, proc_start) in self.store.running_commands()? {
            if runtime::process_start_time(pid) == Some(proc_start) {
                tracing::info!(
                    pid,
                    deployment,
                    "killing a command left by a previous ferry"
                );
                runtime::kill_group(pid, Signal::SIGKILL);
            }
            self.store.commands_ended(deployment)?;
        }
        let mut live = self.store.live_instances()?;
        let docker = self.runtime.reachable().await;
        if !docker {
            // kept on record, neither adopted nor stopped: a later start, with docker
            // answering, decides (supervise starts the last good release meanwhile)
            live.retain(|i| i.container.is_none());
        }
        let mut adopted = HashSet::new();
        for state in self.environments() {
            let env = &state.env.name;
            let good = self.store.last_succeeded(env)?.and_then(|d| d.release);
            let mut candidate = None;
            for row in live.iter().filter(|i| {
                &i.environment == env
                    && Some(&i.release) == good.as_ref()
                    && i.process == crate::config::WEB
            }) {
                if self.runtime.is_running(&self.leftover(row)).await == Some(true)
                    && candidate.is_none_or(|c: &crate::store::Instance| c.id < row.id)
                {
                    candidate = Some(row);
                }
            }
            if let Some(row) = candidate {
                match self.adopt(state, row).await {
                    Ok(()) => {
                        tracing::info!(env = %env, pid = row.pid, release = %row.release, "adopted the instance left running by the previous ferry");
                        adopted.insert(row.id);
                    }
                    Err(e) => {
                        tracing::warn!(env = %env, pid = row.pid, "not adopting the instance left running: {e}")
                    }
                }
            }
            // the good release's workers, one per process type and replica, newest first
            let mut workers: Vec<&crate::store::Instance> = live
                .iter()
                .filter(|i| {
                    &i.environment == env
                        && i.process != crate::config::WEB
                        && self.wanted_worker(i, good.as_ref())
                })
                .collect();
            workers.sort_by_key(|i| std::cmp::Reverse(i.id));
            let mut taken = HashSet::new();
            for row in workers {
                if taken.contains(&(&row.process, row.replica))
                    || self.runtime.is_running(&self.leftover(row)).await != Some(true)
                {
                    continue;
                }
                match self.adopt_worker(state, row, &self.leftover(row)).await {
                    Ok(()) => {
                        tracing::info!(env = %env, process = %row.process, replica = row.replica, pid = row.pid, "adopted a worker left running by the previous ferry");
                        taken.insert((&row.process, row.replica));
                        adopted.insert(row.id);
                    }
                    Err(e) => {
                        tracing::warn!(env = %env, process = %row.process, pid = row.pid, "not adopting the worker left running: {e}")
                    }
                }
            }
        }
        for instance in live.iter().filter(|i| !adopted.contains(&i.id)) {
            if self
                .runtime
                .is_running(&self.leftover(instance))
                .await
                .is_none()
            {
                // kept on record: a later serve, with docker answering, stops it
                continue;
            }
            // only what this ferry's predecessor started is stopped: a pid reused since, or a
            // container replaced, is left alone
            let grace = self
                .config
                .app
                .processes
                .iter()
                .find(|p| p.name == instance.process)
                .map_or(self.config.app.stop_timeout, |p| p.stop_timeout);
            self.runtime
                .stop_leftover(&self.leftover(instance), grace)
                .await;
            self.store.instance_stopped(instance.id)?;
        }
        if !docker {
            return Ok(());
        }
        // containers started by a ferry that died before recording them
        let keep: Vec<String> = self
            .store
            .live_instances()?
            .into_iter()
            .filter_map(|i| i.container)
            .collect();
        self.runtime.sweep(&keep).await;
        Ok(())
    }

    /// What the runtime needs to know of an instance a previous ferry recorded.
    fn leftover(&self, row: &crate::store::Instance) -> runtime::Leftover {
        runtime::Leftover {
            pid: row.pid,
            proc_start: row.proc_start,
            port: row.port,
            container: row.container.clone(),
            output: self.output_pipe(&row.environment, row.port),
        }
    }

    /// Makes a leftover instance `env`'s serving one if every health path passes now.
    async fn adopt(&self, state: &EnvState, row: &crate::store::Instance) -> Result<(), String> {
        let health = &self.config.health;
        let client = crate::health::client();
        for path in &health.paths {
            let probe = crate::health::probe(&client, row.port, path, health.timeout).await;
            match probe.outcome {
                Ok(code) if code == health.expect_status => {}
                Ok(code) => return Err(format!("{path} answered {code}")),
                Err(e) => return Err(format!("{path}: {e}")),
            }
        }
        self.learn_secrets(&state.env, &self.leftover(row));
        let instance = self
            .runtime
            .adopt(&self.leftover(row), &state.log)
            .await
            .map_err(|e| e.to_string())?;
        self.track_instance(row.id, instance.clone());
        let upstream = Upstream::new(std::net::SocketAddr::from(([127, 0, 0, 1], row.port)));
        let active = Active {
            record: row.id,
            instance,
            release: row.release.clone(),
            upstream,
            deployed_at: row.started_at.clone(),
        };
        state.activate(active).await;
        Ok(())
    }

    /// Starts every environment's last good release (from its built release dir, no
    /// rebuild). Environments are restored concurrently; failures are logged.
    pub async fn restore_all(self: &Arc<Self>) {
        // an environment with servers runs on its hosts: the reconciler tends those
        let local = self.environments().filter(|s| s.env.servers.is_empty());
        let tasks = local.cloned().map(|state| {
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
        if let Some(release) = state.active_release().await {
            // its workers that were not adopted start now
            self.run_workers(state, &release, false).await;
            return Ok(Some(format!("{release} (adopted, still running)")));
        }
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
        let result = match self.instance_spec(state, &dir, vars, release).await {
            Ok(spec) => self.start_healthy(state, release, spec).await,
            Err(e) => Err(e),
        };
        let _ = self.store.release_lock(env, None, "restore");
        let active = result?;
        if let Some(old) = state.activate(active).await {
            self.retire(old).await;
        }
        // the release's workers that still run are kept: only the missing ones start
        self.run_workers(state, release, false).await;
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
            for state in self.environments().filter(|s| s.env.servers.is_empty()) {
                if *shutdown.borrow() {
                    break;
                }
                self.tend_workers(state).await;
                let env = state.env.name.clone();
                let crashed = match state.active.lock().await.as_ref() {
                    Some(a) => a
                        .instance
                        .exited()
                        .map(|status| (a.release.clone(), status.to_string())),
                    // nothing serves an environment that has a good release: its restore
                    // failed (a docker daemon down when serve started); try again
                    None if matches!(self.store.lock_holder(&env), Ok(None)) => self
                        .store
                        .last_succeeded(&env)
                        .ok()
                        .flatten()
                        .and_then(|d| d.release)
                        .map(|r| (r, "not running".to_string())),
                    None => None,
                };
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
                        self.web_restarted(state);
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

/// What a deployment cut off during `step` ends as. A hook run after the outcome (see
/// [`super::OUTCOME_HOOKS`]) means the outcome was decided, and traffic is where it put it:
/// recording it `interrupted` would make the restart bring back the release before it.
fn outcome_of_interrupted(step: &str, kind: &str) -> (DeploymentState, String) {
    let during = format!("ferry stopped during its {step} hook");
    match (step, kind) {
        ("post_deploy", _) | ("on_rollback", "rollback") => (
            DeploymentState::Succeeded,
            format!("{during}; the deployment had succeeded"),
        ),
        ("on_rollback", _) => (
            DeploymentState::RolledBack,
            format!("{during}; the monitor had switched traffic back (see the monitor step)"),
        ),
        ("on_failure", _) => (
            DeploymentState::Failed,
            format!("{during}; the deployment had failed (see its failed step)"),
        ),
        _ => (
            DeploymentState::Interrupted,
            format!("ferry stopped during step {step}"),
        ),
    }
}

//! Process types besides `web` (`[processes]`): workers run per release, never routed.
//!
//! An environment runs the workers of one release at a time, the release its web instance
//! serves. When traffic moves to another release (the switch of a deploy, a rollback or a
//! restart; a monitor breach switching back), the running workers are stopped first —
//! SIGTERM to each one's group, SIGKILL after its process type's `stop_timeout` — and only
//! then are the new release's started: never two schedulers at once, at the price of a short
//! gap. A worker that exits on its own is started again by the supervisor, at once the first
//! time, then after 1 s, 2 s… up to 60 s while it keeps dying within 30 s of its start.
//! Workers are recorded in the store's `instances` table with their process type and replica
//! (0-based), adopted after a crash of ferry like the web instance (without a health check),
//! and write to `logs/<process>.log` of the environment.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::steps::instance_vars;
use super::{Engine, EngineError, EnvState};
use crate::config::ProcessType;
use crate::runtime::{self, LogSink};

/// A worker that ran at least this long before dying is restarted at once.
const STABLE_RUN: Duration = Duration::from_secs(30);
/// The longest pause between two restarts of a worker that keeps dying.
const MAX_PAUSE: Duration = Duration::from_secs(60);

/// An environment's workers.
#[derive(Default)]
pub struct Workers {
    /// Held while workers are started or stopped (a switch, a restart by the supervisor), so
    /// two changes never interleave; reads do not take it.
    change: tokio::sync::Mutex<()>,
    set: Mutex<WorkerSet>,
}

#[derive(Default)]
struct WorkerSet {
    /// The release whose workers should run (`None`: none should).
    release: Option<String>,
    running: Vec<Worker>,
    /// Per (process, replica): failed starts in a row and when to try again.
    tries: HashMap<(String, u32), (u32, Instant)>,
    /// Restarts of each process type by the supervisor since `serve` started.
    restarts: HashMap<String, u32>,
    /// One log per process type, shared by its instances.
    logs: HashMap<String, LogSink>,
}

/// One running worker.
#[derive(Clone)]
struct Worker {
    process: String,
    replica: u32,
    release: String,
    /// Its row in the store's `instances` table.
    record: i64,
    instance: runtime::Instance,
    started: Instant,
}

/// What `ferry status` shows of one process type.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ProcessStatus {
    pub name: String,
    /// Instances asked for (`web`: 1).
    pub count: u32,
    /// Instances running now.
    pub running: u32,
    #[serde(default)]
    pub pids: Vec<u32>,
    /// Container ids (short), with a container runtime.
    #[serde(default)]
    pub containers: Vec<String>,
    /// Times the supervisor started one again since `serve` started.
    #[serde(default)]
    pub restarts: u32,
}

impl Workers {
    fn set(&self) -> std::sync::MutexGuard<'_, WorkerSet> {
        self.set.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The pause before the next start of a worker that failed `failures` times in a row.
fn pause(failures: u32) -> Duration {
    match failures {
        0 => Duration::ZERO,
        n => Duration::from_secs(1 << (n - 1).min(6)).min(MAX_PAUSE),
    }
}

impl Engine {
    /// The file holding the output of `process` of `env` (`web`: the app log).
    pub fn log_path(
        &self,
        env: &str,
        process: Option<&str>,
    ) -> Result<std::path::PathBuf, EngineError> {
        let state = self.env(env)?;
        match process {
            None | Some(crate::config::WEB) => Ok(state.log.path()),
            Some(name) if self.process_type(name).is_some() => Ok(self
                .config
                .env_dir(env)
                .join("logs")
                .join(format!("{name}.log"))),
            Some(name) => Err(EngineError::Invalid(format!(
                "no process type {name}: known are {}",
                std::iter::once(crate::config::WEB)
                    .chain(self.config.app.processes.iter().map(|p| p.name.as_str()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    fn process_type(&self, name: &str) -> Option<&ProcessType> {
        self.config.app.processes.iter().find(|p| p.name == name)
    }

    /// The log of `process` in `state`, opened once.
    fn process_log(&self, state: &EnvState, process: &str) -> Result<LogSink, String> {
        if let Some(log) = state.workers.set().logs.get(process) {
            return Ok(log.clone());
        }
        let path = self
            .log_path(&state.env.name, Some(process))
            .map_err(|e| e.to_string())?;
        let log = LogSink::open(path.clone())
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?
            .with_redactor(self.redactor.clone());
        // what the app prints is ferry's to show, as the app log is
        let _ =
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600));
        state
            .workers
            .set()
            .logs
            .insert(process.to_string(), log.clone());
        Ok(log)
    }

    /// Makes `release`'s workers the ones running in `state`: workers of any other release
    /// (and with `fresh`, of this one too: a deploy or restart gives new ones) are stopped
    /// first, each with its process type's `stop_timeout`, then the missing ones started.
    /// Returns what it did, a line each.
    pub(super) async fn run_workers(&self, state: &EnvState, release: &str, fresh: bool) -> String {
        let _change = state.workers.change.lock().await;
        let mut out = self.stop_workers_except(state, Some(release), fresh).await;
        {
            let mut set = state.workers.set();
            set.release = Some(release.to_string());
            // another release, or new instances: past failures say nothing of them
            set.tries.clear();
        }
        out.push_str(&self.start_missing(state, true).await);
        out
    }

    /// Stops every worker of `state` (the data is about to be restored under them).
    pub(super) async fn stop_workers(&self, state: &EnvState) -> String {
        let _change = state.workers.change.lock().await;
        let out = self.stop_workers_except(state, None, true).await;
        state.workers.set().release = None;
        out
    }

    /// Stops the workers that are not `keep`'s (or all of them, with `all`), or no longer
    /// asked for by the config, all at once; each is removed from the list once stopped.
    async fn stop_workers_except(&self, state: &EnvState, keep: Option<&str>, all: bool) -> String {
        let going: Vec<Worker> = state
            .workers
            .set()
            .running
            .iter()
            .filter(|w| {
                all || Some(w.release.as_str()) != keep
                    || self
                        .process_type(&w.process)
                        .is_none_or(|p| w.replica >= p.count)
            })
            .cloned()
            .collect();
        let stops = going.iter().map(|w| async move {
            let grace = self
                .process_type(&w.process)
                .map_or(self.config.app.stop_timeout, |p| p.stop_timeout);
            let started = Instant::now();
            self.stop_worker(w.record, &w.instance, grace).await;
            state.workers.set().running.retain(|r| r.record != w.record);
            let killed = if started.elapsed() >= grace {
                format!(
                    ", killed after its stop_timeout of {}",
                    crate::config::format_duration(grace)
                )
            } else {
                String::new()
            };
            format!(
                "stopped {}.{} of {} ({}){killed}\n",
                w.process,
                w.replica,
                w.release,
                w.instance.describe()
            )
        });
        futures_util::future::join_all(stops).await.concat()
    }

    /// Stops a worker and records it stopped.
    async fn stop_worker(&self, record: i64, instance: &runtime::Instance, grace: Duration) {
        instance.stop(grace).await;
        self.instances
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&record);
        if let Err(e) = self.store.instance_stopped(record) {
            tracing::error!(error = %e, "cannot record a stopped worker");
        }
    }

    /// Starts the workers of the wanted release that do not run (with `now`, whatever their
    /// pause; else only those whose pause is over). Called with `change` held.
    async fn start_missing(&self, state: &EnvState, now: bool) -> String {
        let Some(release) = state.workers.set().release.clone() else {
            return String::new();
        };
        let mut out = String::new();
        for p in &self.config.app.processes {
            for replica in 0..p.count {
                let key = (p.name.clone(), replica);
                {
                    let set = state.workers.set();
                    let runs = set
                        .running
                        .iter()
                        .any(|w| w.process == p.name && w.replica == replica);
                    let waiting = set
                        .tries
                        .get(&key)
                        .is_some_and(|(_, at)| *at > Instant::now());
                    if runs || (waiting && !now) {
                        continue;
                    }
                }
                match self.start_worker(state, &release, p, replica).await {
                    Ok(line) => {
                        out.push_str(&line);
                    }
                    Err(e) => {
                        let mut set = state.workers.set();
                        let failures = set.tries.get(&key).map_or(0, |(f, _)| *f) + 1;
                        let wait = pause(failures).max(Duration::from_secs(1));
                        set.tries.insert(key, (failures, Instant::now() + wait));
                        tracing::error!(env = %state.env.name, process = %p.name, replica, error = %e, "cannot start a worker; next try in {}s", wait.as_secs());
                        out.push_str(&format!("cannot start {}.{replica}: {e}\n", p.name));
                    }
                }
            }
        }
        out
    }

    /// Starts instance `replica` of `p` for `release` and records it.
    async fn start_worker(
        &self,
        state: &EnvState,
        release: &str,
        p: &ProcessType,
        replica: u32,
    ) -> Result<String, String> {
        let env = &state.env.name;
        let row = self
            .store
            .release(env, release)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("release {release} is not recorded"))?;
        let dir = self.config.env_dir(env).join("releases").join(release);
        let vars = instance_vars(state, &row.version, &row.commit_sha);
        let mut spec = self.instance_spec(state, &dir, vars, release).await?;
        spec.start = p.command.clone();
        spec.stop_timeout = p.stop_timeout;
        spec.identity.process = p.name.clone();
        for (k, v) in spec.vars.iter_mut().chain(spec.app_vars.iter_mut()) {
            if k == "FERRY_PROCESS" {
                *v = p.name.clone();
            }
        }
        let log = self.process_log(state, &p.name)?;
        let instance = self
            .runtime
            .start(&spec, &log)
            .await
            .map_err(|e| e.to_string())?;
        let row = crate::store::Instance {
            id: 0,
            environment: env.clone(),
            deployment_id: None,
            release: release.to_string(),
            pid: instance.pid().unwrap_or(0),
            port: instance.port,
            proc_start: instance.pid().and_then(runtime::process_start_time),
            started_at: super::environment::deployed_at(&spec),
            container: instance.container_id().map(str::to_string),
            process: p.name.clone(),
            replica,
        };
        let record = match self.store.insert_instance(&row) {
            Ok(id) => id,
            Err(e) => {
                instance.stop(p.stop_timeout).await;
                return Err(format!("cannot record the instance: {e}"));
            }
        };
        self.track_instance(record, instance.clone());
        let line = format!(
            "started {}.{replica} of {release} ({})\n",
            p.name,
            instance.describe()
        );
        state.workers.set().running.push(Worker {
            process: p.name.clone(),
            replica,
            release: release.to_string(),
            record,
            instance,
            started: Instant::now(),
        });
        Ok(line)
    }

    /// Takes over a worker a previous ferry left running (see `recover_store`).
    pub(super) async fn adopt_worker(
        &self,
        state: &EnvState,
        row: &crate::store::Instance,
        left: &runtime::Leftover,
    ) -> Result<(), String> {
        let log = self.process_log(state, &row.process)?;
        let instance = self
            .runtime
            .adopt(left, &log)
            .await
            .map_err(|e| e.to_string())?;
        self.track_instance(row.id, instance.clone());
        let mut set = state.workers.set();
        set.release = Some(row.release.clone());
        set.running.push(Worker {
            process: row.process.clone(),
            replica: row.replica,
            release: row.release.clone(),
            record: row.id,
            instance,
            started: Instant::now(),
        });
        Ok(())
    }

    /// True when `row` is a worker `recover_store` may adopt: of `good` (the last good
    /// release), a process type and replica the config still asks for.
    pub(super) fn wanted_worker(
        &self,
        row: &crate::store::Instance,
        good: Option<&String>,
    ) -> bool {
        Some(&row.release) == good
            && self
                .process_type(&row.process)
                .is_some_and(|p| row.replica < p.count)
    }

    /// The supervisor's round for `state`'s workers: one that exited is recorded stopped and
    /// started again, at once if it had run a while, else after a pause that doubles with
    /// each quick death (1 s up to 60 s). Skipped while workers are being changed.
    pub(super) async fn tend_workers(&self, state: &EnvState) {
        let Ok(_change) = state.workers.change.try_lock() else {
            return;
        };
        let dead: Vec<Worker> = state
            .workers
            .set()
            .running
            .iter()
            .filter(|w| w.instance.exited().is_some())
            .cloned()
            .collect();
        for w in dead {
            let status = w
                .instance
                .exited()
                .map(|s| s.to_string())
                .unwrap_or_default();
            self.stop_worker(w.record, &w.instance, Duration::ZERO)
                .await;
            let mut set = state.workers.set();
            set.running.retain(|r| r.record != w.record);
            *set.restarts.entry(w.process.clone()).or_default() += 1;
            let key = (w.process.clone(), w.replica);
            let failures = if w.started.elapsed() >= STABLE_RUN {
                0
            } else {
                set.tries.get(&key).map_or(0, |(f, _)| *f) + 1
            };
            let wait = pause(failures);
            set.tries.insert(key, (failures, Instant::now() + wait));
            tracing::warn!(env = %state.env.name, process = %w.process, replica = w.replica, %status, "worker exited on its own; starting it again in {}s", wait.as_secs());
        }
        let started = self.start_missing(state, false).await;
        for line in started.lines() {
            tracing::info!(env = %state.env.name, "{line}");
        }
    }

    /// Each process type of `state`: how many asked for, how many run.
    pub(super) fn process_status(
        &self,
        state: &EnvState,
        web: ProcessStatus,
    ) -> Vec<ProcessStatus> {
        let set = state.workers.set();
        let mut all = vec![ProcessStatus {
            restarts: set.restarts.get(crate::config::WEB).copied().unwrap_or(0),
            ..web
        }];
        for p in &self.config.app.processes {
            let live: Vec<&Worker> = set
                .running
                .iter()
                .filter(|w| w.process == p.name && w.instance.exited().is_none())
                .collect();
            all.push(ProcessStatus {
                name: p.name.clone(),
                count: p.count,
                running: live.len() as u32,
                pids: live.iter().filter_map(|w| w.instance.pid()).collect(),
                containers: live
                    .iter()
                    .filter_map(|w| w.instance.container_id())
                    .map(|c| runtime::container::short(c).to_string())
                    .collect(),
                restarts: set.restarts.get(&p.name).copied().unwrap_or(0),
            });
        }
        all
    }

    /// Counts a restart of the web instance by the supervisor.
    pub(super) fn web_restarted(&self, state: &EnvState) {
        *state
            .workers
            .set()
            .restarts
            .entry(crate::config::WEB.to_string())
            .or_default() += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pause_doubles_from_a_second_up_to_a_minute() {
        assert_eq!(pause(0), Duration::ZERO);
        assert_eq!(pause(1), Duration::from_secs(1));
        assert_eq!(pause(2), Duration::from_secs(2));
        assert_eq!(pause(6), Duration::from_secs(32));
        assert_eq!(pause(7), Duration::from_secs(60));
        assert_eq!(pause(100), Duration::from_secs(60));
    }
}

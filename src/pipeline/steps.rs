//! The steps of one deployment, in order.
//!
//! A deploy: resolve → policy (gates, then approval) → lock → prepare → build → test →
//! backup → start → health → switch → monitor → finish. A rollback (see `rollback.rs`)
//! reuses a built release: resolve → policy → lock → prepare → restore → start → health →
//! switch → finish.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use super::environment::Active;
use super::{Engine, EnvState};
use crate::policy::{self, Ask, Verdict};
use crate::release::{self, Resolved};
use crate::runtime::{InstanceSpec, Secrets};
use crate::sandbox;
use crate::store::{Deployment, DeploymentState, StepState, Verification};

/// Why a step stopped the deployment.
pub(super) struct Stop {
    pub state: DeploymentState,
    pub message: String,
    pub output: String,
    /// The judged instance's last output lines, kept with the step (`Step::app_output`).
    pub app_output: Option<String>,
}

impl Stop {
    pub fn failed(message: impl Into<String>) -> Stop {
        Stop {
            state: DeploymentState::Failed,
            message: message.into(),
            output: String::new(),
            app_output: None,
        }
    }

    pub fn refused(message: impl Into<String>) -> Stop {
        Stop {
            state: DeploymentState::Refused,
            ..Stop::failed(message)
        }
    }

    pub fn with_output(mut self, output: &str) -> Stop {
        self.output = output.to_string();
        self
    }

    /// Keeps `instance`'s last output lines with the failing step.
    pub async fn with_app_output(mut self, instance: &crate::runtime::Instance) -> Stop {
        let lines = instance.last_lines().await;
        if !lines.is_empty() {
            self.app_output = Some(lines.join("\n") + "\n");
        }
        self
    }
}

impl From<release::ReleaseError> for Stop {
    fn from(e: release::ReleaseError) -> Stop {
        let output = e.output().to_string();
        Stop::failed(e.to_string()).with_output(&output)
    }
}

fn sandbox_failed(e: sandbox::SandboxError) -> Stop {
    Stop::failed(e.to_string())
}

impl From<crate::store::StoreError> for Stop {
    fn from(e: crate::store::StoreError) -> Stop {
        Stop::failed(e.to_string())
    }
}

/// What a deployment holds that must be undone if it stops early.
#[derive(Default)]
pub(super) struct Held {
    pub lock: bool,
    /// Started and not yet serving.
    pub instance: Option<Active>,
    /// A rollback with `--restore-data` stopped the serving release: if it then fails, the
    /// data set aside goes back and this release is started again.
    pub stopped: Option<Stopped>,
}

pub(super) struct Stopped {
    pub release: String,
    /// (set-aside copy, live path) pairs to put back.
    pub data: Vec<(PathBuf, PathBuf)>,
}

impl Engine {
    /// Runs deployment `id` to its end; every outcome is recorded in the store.
    pub(super) async fn run(self: Arc<Self>, id: i64, state: Arc<EnvState>) {
        let env = state.env.name.clone();
        let d = match self.store.deployment(id).and_then(|d| {
            self.store.set_state(id, DeploymentState::Running, None)?;
            Ok(d)
        }) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(id, error = %e, "cannot start deployment");
                return;
            }
        };
        let mut held = Held::default();
        let outcome = if d.kind == "rollback" {
            self.rollback_steps(&d, &state, &mut held).await
        } else {
            self.steps(&d, &state, &mut held).await
        };
        if let Some(active) = held.instance.take() {
            self.stop_instance(active.record, &active.instance).await;
        }
        if outcome.is_err()
            && let Some(stopped) = held.stopped.take()
        {
            self.undo_restore(&state, stopped).await;
        }
        if held.lock
            && let Err(e) = self.store.release_lock(&env, Some(id), "deploy")
        {
            tracing::error!(id, error = %e, "cannot release the lock");
        }
        let result = match outcome {
            Ok(()) => {
                tracing::info!(id, env = %env, "deployment succeeded");
                self.store.set_state(id, DeploymentState::Succeeded, None)
            }
            Err(stop) => {
                tracing::warn!(id, env = %env, reason = %stop.message, "deployment {}", stop.state.as_str());
                self.store.set_state(id, stop.state, Some(&stop.message))
            }
        };
        if let Err(e) = result {
            tracing::error!(id, error = %e, "cannot record the outcome");
        }
    }

    /// Records step `name` around `work`, which returns its output.
    pub(super) async fn step<T>(
        &self,
        id: i64,
        name: &str,
        work: impl Future<Output = Result<(T, String), Stop>>,
    ) -> Result<T, Stop> {
        let step = self
            .store
            .step_started(id, name)
            .map_err(|e| Stop::failed(format!("cannot record step {name}: {e}")))?;
        hold_for_fault_injection(id, name).await;
        let result = work.await;
        let (state, output) = match &result {
            Ok((_, out)) => (StepState::Ok, out.clone()),
            Err(stop) if stop.output.is_empty() => (StepState::Failed, stop.message.clone()),
            Err(stop) => (StepState::Failed, stop.output.clone()),
        };
        let output = self.redactor.redact(&release::tail_text(output.as_bytes()));
        if let Err(stop) = &result
            && let Some(lines) = &stop.app_output
            && let Err(e) = self.store.set_step_app_output(step, lines)
        {
            tracing::error!(id, step = name, error = %e, "cannot record the app's output");
        }
        if let Err(e) = self.store.step_finished(step, state, &output) {
            tracing::error!(id, step = name, error = %e, "cannot record step outcome");
        }
        result.map(|(v, _)| v).map_err(|mut stop| {
            stop.message = self.redactor.redact(&format!("{name}: {}", stop.message));
            stop
        })
    }

    pub(super) fn skip(&self, id: i64, name: &str, why: &str) {
        if let Ok(step) = self.store.step_started(id, name) {
            let _ = self.store.step_finished(step, StepState::Skipped, why);
        }
    }

    async fn steps(&self, d: &Deployment, state: &EnvState, held: &mut Held) -> Result<(), Stop> {
        let id = d.id;
        let env = &state.env;
        let app = &self.config.app;

        let resolved: Resolved = self
            .step(id, "resolve", async {
                let mirror = self.config.state_dir.join("mirror.git");
                let _git = self.git.lock().await;
                // an unreachable repo says nothing about the release: refused, nothing changed
                super::actions::sync_private_mirror(&app.repo, &mirror)
                    .await
                    .map_err(|e| {
                        let output = e.output().to_string();
                        Stop::refused(format!("cannot fetch from the repo {}: {e}", app.repo))
                            .with_output(&output)
                    })?;
                let r = release::resolve(&mirror, &d.git_ref).await?;
                let out = format!("{} -> {} ({:?})\n", d.git_ref, r.commit, r.kind);
                Ok((r, out))
            })
            .await?;
        let name = resolved.release_name();
        self.store
            .set_resolved(id, &resolved.commit, &resolved.version, &name)?;

        let verified = self
            .step(id, "policy", self.policy(d, state, &resolved))
            .await?;

        self.lock(id, state, &d.triggered_by, held).await?;

        let env_dir = self.config.env_dir(&env.name);
        let dir = env_dir.join("releases").join(&name);
        let digest = self
            .prepare(id, state, &resolved, &dir, verified.as_ref())
            .await?;
        if let Some(v) = &verified
            && v.digest != digest
        {
            self.mark_release(&env.name, &name, "bad");
            return Err(Stop::refused(format!(
                "the release built for {} ({digest}) is not the one verified on {} ({}): its build is not reproducible",
                env.name, v.environment, v.digest
            )));
        }
        self.store.set_digest(id, &digest)?;

        if env.backup.is_empty() {
            self.skip(id, "backup", "no backup configured");
        } else {
            self.step(id, "backup", self.backup(id, state, &resolved, &name))
                .await?;
        }

        let vars = instance_vars(state, &resolved.version, &resolved.commit);
        let instance = self.start(id, state, &name, &dir, vars, held).await?;
        let previous = self.switch(id, state, &name, held).await?;

        let monitor = self.config.monitor.as_ref().filter(|_| env.monitor);
        let previous = match monitor {
            None => {
                self.skip(id, "monitor", "no [monitor] configured");
                previous
            }
            Some(cfg) => {
                self.store
                    .set_state(id, DeploymentState::Monitoring, None)?;
                let intro = match &previous {
                    Some(p) => format!(
                        "watching {name} for {}; {} keeps running out of traffic, and a breach switches back to it\n",
                        crate::config::format_duration(cfg.duration),
                        p.release
                    ),
                    None => format!(
                        "watching {name} for {}; it is the first release in {}: there is nothing to roll back to, so a breach leaves it serving and fails the deploy\n",
                        crate::config::format_duration(cfg.duration),
                        env.name
                    ),
                };
                self.step(id, "monitor", async {
                    match self.watch(id, &env.name, &instance, cfg, intro).await {
                        Ok(log) => Ok((previous, log)),
                        Err(breach) => {
                            let stop = self.roll_back_now(state, &name, previous, breach).await;
                            // traffic is back first; the stopped instance keeps its last lines
                            Err(stop.with_app_output(&instance).await)
                        }
                    }
                })
                .await?
            }
        };

        self.step(id, "finish", async {
            let mut out = match previous {
                Some(old) => self.retire(old).await,
                None => "first release in this environment\n".to_string(),
            };
            self.mark_release(&env.name, &name, "good");
            out.push_str(&self.prune(&env.name, &name));
            out.push_str(&self.prune_backups(&env.name));
            Ok(((), out))
        })
        .await
    }

    /// The policy step: every gate, then the wait for approval where it is required.
    async fn policy(
        &self,
        d: &Deployment,
        state: &EnvState,
        resolved: &Resolved,
    ) -> Result<(Option<Verification>, String), Stop> {
        let env = &state.env;
        let ask = Ask {
            env,
            resolved,
            force: d.note.as_deref().filter(|_| d.forced),
            now: chrono::Utc::now(),
        };
        let eval = policy::evaluate(&self.config, &self.store, &ask)?;
        let mut out = String::new();
        for gate in &eval.gates {
            let mark = match gate.verdict {
                Verdict::Pass => "ok",
                Verdict::Fail => "REFUSED",
                Verdict::Wait => "wait",
                Verdict::Note => "note",
            };
            out.push_str(&format!("{mark:>7} {:<9} {}\n", gate.name, gate.detail));
        }
        if let Some(reason) = eval.refusal() {
            // the last line is what the CLI shows for the step
            out.push_str(&format!("refused: {reason}\n"));
            return Err(Stop::refused(reason).with_output(&out));
        }
        if !env.approval {
            out.push_str("every gate passed\n");
        } else {
            self.store
                .set_state(d.id, DeploymentState::AwaitingApproval, None)?;
            out.push_str(&format!(
                "waiting for approval: run `ferry approve {}`\n",
                d.id
            ));
            self.store.set_running_output(d.id, "policy", &out)?;
            let who = self
                .approvals
                .wait(&self.store, d.id, env.approval_timeout)
                .await
                .map_err(|e| Stop::refused(e.to_string()).with_output(&out))?;
            self.store.set_state(d.id, DeploymentState::Running, None)?;
            out.push_str(&format!("approved by {who}\n"));
        }
        Ok((eval.verified, out))
    }

    /// The lock step: one deployment per environment.
    pub(super) async fn lock(
        &self,
        id: i64,
        state: &EnvState,
        who: &str,
        held: &mut Held,
    ) -> Result<(), Stop> {
        let env = &state.env.name;
        self.step(id, "lock", async {
            match self.store.acquire_lock(env, Some(id), "deploy", who)? {
                Ok(()) => {
                    held.lock = true;
                    Ok(((), format!("locked {env} for deployment {id}\n")))
                }
                Err(h) => Err(Stop::refused(h.refusal(env))),
            }
        })
        .await
    }

    /// prepare, build and test: a release dir for `resolved`, reused when built before,
    /// copied from the environment it was verified on when promoted, or built. Returns the
    /// release's digest.
    async fn prepare(
        &self,
        id: i64,
        state: &EnvState,
        resolved: &Resolved,
        dir: &Path,
        verified: Option<&Verification>,
    ) -> Result<String, Stop> {
        let env = &state.env;
        let app = &self.config.app;
        let name = resolved.release_name();
        let shared_dir = self.config.env_dir(&env.name).join("shared");
        let existing = self.store.release(&env.name, &name)?;
        let reusable = existing.as_ref().is_some_and(|r| {
            r.digest.is_some() && matches!(r.status.as_str(), "built" | "good" | "bad")
        }) && dir.is_dir();
        if reusable {
            self.step(id, "prepare", async {
                Ok(((), format!("reusing release {name}, built before\n")))
            })
            .await?;
            self.skip(id, "build", "release already built");
            self.skip(id, "test", "release already tested");
            return Ok(existing.and_then(|r| r.digest).unwrap_or_default());
        }
        // the very release verified, whatever it was named there (`main-<sha7>` on a
        // branch-tracking staging); it is recorded here under this deploy's name
        let source = verified
            .filter(|v| one_component(&v.release))
            .map(|v| {
                self.config
                    .env_dir(&v.environment)
                    .join("releases")
                    .join(&v.release)
            })
            .filter(|d| d.is_dir());
        let copied_from = verified.map(|v| {
            if v.release == name {
                v.environment.clone()
            } else {
                format!("{} (as {})", v.environment, v.release)
            }
        });
        self.step(id, "prepare", async {
            self.store
                .upsert_release(&env.name, &name, &resolved.version, &resolved.commit)?;
            if dir.exists() {
                // left over from an attempt that never finished
                std::fs::remove_dir_all(dir)
                    .map_err(|e| Stop::failed(format!("cannot clear {}: {e}", dir.display())))?;
            }
            let out = match &source {
                Some(from) => {
                    let (from, to, shared) = (from.clone(), dir.to_path_buf(), app.shared.clone());
                    tokio::task::spawn_blocking(move || release::copy_release(&from, &to, &shared))
                        .await
                        .map_err(|e| Stop::failed(e.to_string()))??;
                    format!(
                        "copied release {name} from {}, where it was verified: the same bytes, not rebuilt\n",
                        copied_from.as_deref().unwrap_or("?")
                    )
                }
                None => {
                    let mirror = self.config.state_dir.join("mirror.git");
                    release::export(&mirror, &resolved.commit, dir).await?;
                    // before any of it runs: no link out of the release or over shared paths
                    release::check_tree(dir, &app.shared)?;
                    if let Some(user) = &state.run_as {
                        // the build writes in the release as the environment's user
                        sandbox::own_tree(dir, user.uid, user.gid).map_err(sandbox_failed)?;
                    }
                    format!("exported {} into {}\n", resolved.commit, dir.display())
                }
            };
            release::link_shared(dir, &shared_dir, &app.shared)?;
            if let Some(user) = &state.run_as {
                sandbox::own_shared(&shared_dir, user, &app.shared).map_err(sandbox_failed)?;
            }
            Ok(((), out))
        })
        .await
        .inspect_err(|_| self.mark_release(&env.name, &name, "failed"))?;

        if let (Some(_), Some(from)) = (&source, &copied_from) {
            self.skip(id, "build", &format!("built on {from}"));
            self.skip(id, "test", &format!("tested on {from}"));
        } else {
            let mut vars = self.command_env(state);
            vars.extend(instance_vars(state, &resolved.version, &resolved.commit));
            for (step, commands) in [("build", &app.build), ("test", &app.test)] {
                self.step(id, step, self.run_commands(id, state, dir, commands, &vars))
                    .await
                    .inspect_err(|_| self.mark_release(&env.name, &name, "failed"))?;
            }
        }
        let (dir2, shared_dir2, shared, run_as) = (
            dir.to_path_buf(),
            shared_dir.clone(),
            app.shared.clone(),
            state.run_as.clone(),
        );
        let digest = tokio::task::spawn_blocking(move || {
            // whatever the build did to the shared paths is undone, and the release sealed:
            // the app writes only where `shared` says
            release::link_shared(&dir2, &shared_dir2, &shared)?;
            sandbox::seal_release(&dir2, run_as.as_ref())
                .map_err(|e| release::ReleaseError::Unsafe(e.to_string()))?;
            release::digest(&dir2, &shared)
        })
        .await
        .map_err(|e| Stop::failed(e.to_string()))?
        .inspect_err(|_| self.mark_release(&env.name, &name, "failed"))?;
        self.store
            .set_release_status(&env.name, &name, "built", Some(&digest))?;
        Ok(digest)
    }

    /// The backup step: each `backup` file of the shared dir snapshotted before start.
    async fn backup(
        &self,
        id: i64,
        state: &EnvState,
        resolved: &Resolved,
        release: &str,
    ) -> Result<((), String), Stop> {
        let env = &state.env;
        let env_dir = self.config.env_dir(&env.name);
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ").to_string();
        let version = resolved.version.replace('/', "-");
        let mut out = String::new();
        for file in &env.backup {
            let source = env_dir.join("shared").join(file);
            if !source.exists() {
                out.push_str(&format!("{file}: not there yet, nothing to back up\n"));
                continue;
            }
            let dest = env_dir
                .join("backups")
                .join(format!("{file}.{version}.{stamp}"));
            let started = Instant::now();
            let (src, dst) = (source.clone(), dest.clone());
            let (method, bytes) =
                tokio::task::spawn_blocking(move || crate::backup::snapshot(&src, &dst))
                    .await
                    .map_err(|e| Stop::failed(e.to_string()))?
                    .map_err(|e| Stop::failed(e.to_string()).with_output(&out))?;
            self.store.add_backup(
                &env.name,
                id,
                release,
                file,
                &dest.to_string_lossy(),
                method.as_str(),
                bytes,
            )?;
            out.push_str(&format!(
                "{file}: {} bytes into {} ({}{}, {} ms)\n",
                bytes,
                dest.display(),
                method.as_str(),
                if method == crate::backup::Method::Sqlite {
                    " online backup, integrity ok"
                } else {
                    ", fsynced"
                },
                started.elapsed().as_millis()
            ));
        }
        Ok(((), out))
    }

    /// start and health: a new instance of `release`, healthy, not yet serving.
    pub(super) async fn start(
        &self,
        id: i64,
        state: &EnvState,
        release: &str,
        dir: &Path,
        vars: Vec<(String, String)>,
        held: &mut Held,
    ) -> Result<crate::runtime::Instance, Stop> {
        let env = &state.env.name;
        let instance = self
            .step(id, "start", async {
                let spec = self.instance_spec(state, dir, vars).map_err(Stop::failed)?;
                let instance = crate::runtime::spawn(&spec, &state.log)
                    .map_err(|e| Stop::failed(e.to_string()))?;
                let out = format!(
                    "started {release}: pid {} on port {}\n",
                    instance.pid, instance.port
                );
                let active = self
                    .record_instance(
                        state,
                        release,
                        Some(id),
                        instance.clone(),
                        super::environment::deployed_at(&spec),
                    )
                    .await
                    .map_err(Stop::failed)?;
                held.instance = Some(active);
                Ok((instance, out))
            })
            .await?;
        let health = self.config.health.clone();
        self.step(id, "health", async {
            match crate::health::wait_healthy(&instance, &health).await {
                Ok(log) => Ok(((), log)),
                Err(e) => Err(Stop::failed(e.to_string()).with_app_output(&instance).await),
            }
        })
        .await
        .inspect_err(|_| self.mark_release(env, release, "bad"))?;
        Ok(instance)
    }

    /// switch: traffic to the held new instance; returns the previous one, still running.
    pub(super) async fn switch(
        &self,
        id: i64,
        state: &EnvState,
        release: &str,
        held: &mut Held,
    ) -> Result<Option<Active>, Stop> {
        self.step(id, "switch", async {
            let next = held.instance.take().expect("the started instance is held");
            let port = next.instance.port;
            let previous = state.activate(next).await;
            let out = match &previous {
                Some(p) => format!(
                    "traffic moved from {} to {release} (port {port})\n",
                    p.release
                ),
                None => format!("traffic now goes to {release} (port {port})\n"),
            };
            Ok((previous, out))
        })
        .await
    }

    /// A monitor breach: traffic goes back to the previous instance (warm, or started again
    /// if it died meanwhile), the new one is drained and stopped, its release marked bad.
    async fn roll_back_now(
        &self,
        state: &EnvState,
        release: &str,
        previous: Option<Active>,
        breach: super::monitor::Breach,
    ) -> Stop {
        let env = &state.env.name;
        let what = format!("{} breached: {}", breach.rule, breach.detail);
        let mut out = breach.log.clone();
        out.push_str(&format!("{what}\n"));
        self.mark_release(env, release, "bad");
        let (previous, warm) = match previous {
            Some(p) if p.instance.exited().is_none() => (Some(p), true),
            Some(dead) => {
                self.stop_instance(dead.record, &dead.instance).await;
                (self.start_again(state, &dead.release).await, false)
            }
            None => (None, false),
        };
        let Some(previous) = previous else {
            out.push_str(&format!(
                "no previous release to roll back to: {release} keeps serving\n"
            ));
            return Stop::failed(format!("{what}; no previous release to roll back to"))
                .with_output(&out);
        };
        let back_to = previous.release.clone();
        let failed = state.activate(previous).await;
        let took = breach.at.elapsed();
        if let Some(failed) = failed {
            out.push_str(&self.retire(failed).await);
        }
        // the last line is what the CLI shows for the step
        out.push_str(&format!(
            "rolled back: traffic on {back_to} ({}) {:.2} ms after the breach\n",
            if warm { "kept warm" } else { "started again" },
            took.as_secs_f64() * 1000.0
        ));
        Stop {
            state: DeploymentState::RolledBack,
            message: format!("{what}; rolled back to {back_to}"),
            output: out,
            app_output: None,
        }
    }

    /// Starts `release` again outside a deployment step (its built dir, health-checked).
    pub(super) async fn start_again(&self, state: &EnvState, release: &str) -> Option<Active> {
        let env = &state.env.name;
        let row = self.store.release(env, release).ok().flatten()?;
        let dir = self.config.env_dir(env).join("releases").join(release);
        let vars = instance_vars(state, &row.version, &row.commit_sha);
        let spec = self.instance_spec(state, &dir, vars).ok()?;
        match self.start_healthy(state, release, spec).await {
            Ok(active) => Some(active),
            Err(e) => {
                tracing::error!(env = %env, release, error = %e, "cannot start the previous release again");
                None
            }
        }
    }

    pub(super) fn mark_release(&self, env: &str, name: &str, status: &str) {
        if let Err(e) = self.store.set_release_status(env, name, status, None) {
            tracing::error!(env, release = name, error = %e, "cannot record release status");
        }
    }

    /// What a command of `state`'s environment in `release` may reach of the state dir: its
    /// release (writable while it builds), the shared dir and its home.
    fn confinement(&self, state: &EnvState, release: &Path, builds: bool) -> sandbox::Confinement {
        let env_dir = self.config.env_dir(&state.env.name);
        let mut write = vec![env_dir.join("shared"), sandbox::home_dir(&env_dir)];
        let mut read = Vec::new();
        if builds {
            write.push(release.to_path_buf());
        } else {
            read.push(release.to_path_buf());
        }
        sandbox::Confinement {
            run_as: state.run_as.clone(),
            state_dir: Some(self.config.state_dir.clone()),
            read,
            write,
        }
    }

    /// What every command of `state`'s environment starts with (see [`sandbox::command_env`]).
    fn command_env(&self, state: &EnvState) -> Vec<(String, String)> {
        let home = sandbox::home_dir(&self.config.env_dir(&state.env.name));
        sandbox::command_env(&home, state.run_as.as_ref(), &self.config.app.pass_env)
    }

    async fn run_commands(
        &self,
        id: i64,
        state: &EnvState,
        dir: &Path,
        commands: &[String],
        vars: &[(String, String)],
    ) -> Result<((), String), Stop> {
        let mut out = String::new();
        for command in commands {
            out.push_str(&format!("$ {command}\n"));
            // recorded, so a ferry that dies meanwhile leaves nothing running behind
            let record = |pid| {
                if let Some(at) = crate::runtime::process_start_time(pid)
                    && let Err(e) = self.store.command_started(id, pid, at)
                {
                    tracing::warn!(id, pid, error = %e, "cannot record a running command");
                }
            };
            let result = release::run_command(
                dir,
                command,
                vars,
                &self.confinement(state, dir, true),
                self.config.app.command_timeout,
                record,
            )
            .await;
            let _ = self.store.commands_ended(id);
            match result {
                Ok(text) => out.push_str(&text),
                Err(e) => {
                    out.push_str(e.output());
                    return Err(Stop::failed(e.to_string()).with_output(&out));
                }
            }
        }
        if commands.is_empty() {
            out.push_str("nothing to run\n");
        }
        Ok(((), out))
    }

    /// The instance's variables, `env` and secrets for `release_dir`.
    pub(super) fn instance_spec(
        &self,
        state: &EnvState,
        release_dir: &Path,
        mut vars: Vec<(String, String)>,
    ) -> Result<InstanceSpec, String> {
        let env = &state.env;
        let port = crate::runtime::free_port().map_err(|e| e.to_string())?;
        vars.push(("PORT".into(), port.to_string()));
        vars.push(("DEPLOYED_AT".into(), crate::store::now()));
        vars.extend(env.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        let mut all = self.command_env(state);
        all.extend(vars);
        let secrets = match super::env_file_path(&self.config, env) {
            None => Secrets::default(),
            Some(path) => Secrets::read(&path).map_err(|e| e.to_string())?,
        };
        self.redactor.add(secrets.values());
        Ok(InstanceSpec {
            release_dir: release_dir.to_path_buf(),
            start: self.config.app.start.clone(),
            port,
            vars: all,
            secrets,
            confinement: self.confinement(state, release_dir, false),
            output: self.output_pipe(&env.name, port),
        })
    }

    /// The named pipe carrying the output of `env`'s instance on `port`.
    pub(super) fn output_pipe(&self, env: &str, port: u16) -> PathBuf {
        self.config
            .env_dir(env)
            .join("run")
            .join(format!("{port}.out"))
    }

    /// Removes releases beyond `keep_releases`, oldest first by the order they were made,
    /// never the one serving or `keep`. Backups are pruned on their own (`prune_backups`).
    fn prune(&self, env: &str, keep: &str) -> String {
        let Ok(releases) = self.store.releases(env) else {
            return String::new();
        };
        let limit = self.config.app.keep_releases;
        let mut excess = releases.len().saturating_sub(limit);
        let mut out = String::new();
        for r in releases {
            if excess == 0 {
                break;
            }
            if r.name == keep {
                continue;
            }
            let dir = self.config.env_dir(env).join("releases").join(&r.name);
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    out.push_str(&format!("could not prune {}: {e}\n", r.name));
                    continue;
                }
            }
            self.mark_release(env, &r.name, "pruned");
            out.push_str(&format!("pruned {}\n", r.name));
            excess -= 1;
        }
        out
    }

    /// Removes the backups of all but the newest `keep_backups` deployments that took
    /// some, whether or not their releases are still kept.
    fn prune_backups(&self, env: &str) -> String {
        let Ok(deployments) = self.store.deployments_with_backups(env) else {
            return String::new();
        };
        let mut out = String::new();
        for id in deployments.into_iter().skip(self.config.app.keep_backups) {
            for b in self.store.backups(env, Some(id), None).unwrap_or_default() {
                match std::fs::remove_file(&b.path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        out.push_str(&format!("could not prune backup {}: {e}\n", b.path));
                        continue;
                    }
                }
                let _ = self.store.backup_pruned(b.id);
                out.push_str(&format!("pruned backup {} (deployment #{id})\n", b.path));
            }
        }
        out
    }
}

/// True when `name` is one plain path component (a release dir name from the store).
fn one_component(name: &str) -> bool {
    let mut parts = Path::new(name).components();
    matches!(parts.next(), Some(std::path::Component::Normal(_))) && parts.next().is_none()
}

/// Fault injection for the crash-recovery tests: with `FERRY_FAULT_PAUSE_AT=<step>` in its
/// environment, `ferry serve` holds every deployment for an hour once that step has started
/// (and is recorded as running), so a test can kill ferry there. Unset, it costs one lookup.
pub const FAULT_PAUSE_VAR: &str = "FERRY_FAULT_PAUSE_AT";

async fn hold_for_fault_injection(id: i64, step: &str) {
    if std::env::var(FAULT_PAUSE_VAR).is_ok_and(|at| at == step) {
        tracing::warn!(id, step, "{FAULT_PAUSE_VAR}: holding the deployment here");
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
    }
}

/// The variables ferry gives every instance of a release (PORT and DEPLOYED_AT come later).
pub(super) fn instance_vars(
    state: &EnvState,
    version: &str,
    commit: &str,
) -> Vec<(String, String)> {
    vec![
        ("ENVIRONMENT".to_string(), state.env.group.clone()),
        ("FERRY_SLOT".to_string(), state.env.name.clone()),
        ("APP_VERSION".to_string(), version.to_string()),
        ("COMMIT_SHA".to_string(), commit.to_string()),
    ]
}

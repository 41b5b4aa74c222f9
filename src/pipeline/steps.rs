//! The steps of one deployment, in order.
//!
//! A deploy: resolve → policy (gates, then approval) → lock → prepare → build → test →
//! pre_deploy → backup → release → start → health → check (`checks.rs`) → rollout → switch →
//! monitor → finish, then the hook for its outcome (`hooks.rs`). A rollback (see
//! `rollback.rs`) reuses a built release: resolve → policy → lock → prepare → restore →
//! release (with `--run-release`) → start → health → switch → finish.
//!
//! An environment with `servers` takes the host path after pre_deploy (`hosts.rs`): hosts →
//! ship <host> → release (on the first host) → start/health/switch <host>, `max_parallel` at a
//! time → monitor → finish.
//!
//! This file holds the sequence and what every step shares (recording a step, what stops a
//! deployment, what it holds); the steps with more to them live beside it: prepare, build
//! and test in `prepare.rs`; start, health, switch and the monitor's switch back in
//! `serving.rs`; backup and the finish step's pruning in `retention.rs`.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use super::environment::Active;
use super::{Engine, EnvState};
use crate::policy::{self, Ask, Verdict};
use crate::release::{self, Resolved};
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
    /// What was serving once the lock was taken: what the hooks are told.
    pub before: Option<super::hooks::Before>,
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
        let outcome = match d.kind.as_str() {
            "rollback" => self.rollback_steps(&d, &state, &mut held).await,
            "restart" => self.restart_steps(&d, &state, &mut held).await,
            _ => self.steps(&d, &state, &mut held).await,
        };
        self.lock_queue.forget(id);
        // nothing awaits traffic any more: the preview address answers 503
        state.preview_off();
        if let Some(active) = held.instance.take() {
            // a rollout's split may still send clients to it (a failure after the rollout
            // step): every client back on the serving instance first
            state.proxy.unsplit();
            self.stop_instance(active.record, &active.instance).await;
        }
        if outcome.is_err()
            && let Some(stopped) = held.stopped.take()
        {
            self.undo_restore(&state, stopped).await;
        }
        // post_deploy, on_failure or on_rollback: still under the lock, never the outcome; a
        // deployment that never held the lock (refused, or a ref not found) runs none, nor
        // does a restart (it deploys nothing)
        if d.kind != "restart"
            && held.lock
            && let Some(before) = &held.before
        {
            self.after_outcome(id, &state, &outcome, before).await;
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
        let output = self.shorten_paths(&output);
        // redacted whole, then cut: a secret across the cut would leak its end otherwise
        let output = release::tail_text(self.redactor.redact(&output).as_bytes());
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
            let message = self.shorten_paths(&stop.message);
            stop.message = self.redactor.redact(&format!("{name}: {message}"));
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
        self.pre_deploy(d, state, &dir, held.before.as_ref())
            .await?;
        if !env.servers.is_empty() {
            // the host path: hosts, ship, release, start/health/switch per host (hosts.rs)
            self.skip(
                id,
                "backup",
                "the data of an environment with servers lives on its hosts: ferry takes no backup of it",
            );
            let run = super::hosts::HostRun {
                release: super::hosts::HostRelease {
                    name: &name,
                    dir: &dir,
                    digest: &digest,
                    version: &resolved.version,
                    commit: &resolved.commit,
                },
                release_command: match app.release {
                    Some(_) => Ok(()),
                    None => Err(Some("no release command configured")),
                },
                monitor: self.config.monitor.as_ref().filter(|_| env.monitor),
            };
            return self.on_hosts(d, state, run).await;
        }

        if env.backup.is_empty() {
            self.skip(id, "backup", "no backup configured");
        } else {
            self.step(id, "backup", self.backup(id, state, &resolved, &name))
                .await?;
        }
        let of = super::release_command::ReleaseOf {
            dir: &dir,
            name: &name,
            version: &resolved.version,
            commit: &resolved.commit,
        };
        self.release_step(id, state, of).await?;

        let vars = instance_vars(state, &resolved.version, &resolved.commit);
        let instance = self.start(id, state, &name, &dir, vars, held).await?;
        // until the switch, the preview address reaches it (see checks.rs); a restart or a
        // rollback starts a release that served already and previews nothing
        state.preview_on(&instance);
        self.check(d, state, &instance, &dir, held.before.as_ref())
            .await
            .inspect_err(|_| self.mark_release(&env.name, &name, "bad"))?;
        // the moment the new release starts taking traffic (a rollout's first step, or the
        // switch): the previous release's figures up to it are the traffic rules' baseline
        let switched_at = std::time::Instant::now();
        self.rollout(id, state, &name, held).await?;
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
                let traffic = state.traffic_at_switch(cfg, switched_at, previous.as_ref());
                self.step(id, "monitor", async {
                    match self
                        .watch(id, &env.name, &instance, cfg, intro, traffic)
                        .await
                    {
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
            let mut images = Vec::new();
            out.push_str(&self.prune(&env.name, &name, &mut images));
            out.push_str(&self.prune_images(images).await);
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
        let mut eval = policy::evaluate(&self.config, &self.store, &ask)?;
        // one asked with a wait queues at the lock step instead (see queue.rs)
        self.lock_gate_waits(d.id, &mut eval);
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
            // one asked with a wait queues instead (see queue.rs)
            if let Some(waited) = self.wait_for_lock(id, state, who, held).await {
                return waited.map(|out| ((), out));
            }
            match self.store.acquire_lock(env, Some(id), "deploy", who)? {
                Ok(()) => {
                    held.lock = true;
                    Ok(((), format!("locked {env} for deployment {id}\n")))
                }
                Err(h) => Err(Stop::refused(h.refusal(env))),
            }
        })
        .await?;
        // under the lock nothing else changes what serves: the hooks' previous version
        held.before = Some(self.before(state).await);
        Ok(())
    }
}

/// Fault injection for the crash-recovery tests: with `FERRY_FAULT_PAUSE_AT=<step>` in its
/// environment, `ferry serve` holds every deployment for an hour once that step has started
/// (and is recorded as running), so a test can kill ferry there. Unset, it costs one lookup.
pub const FAULT_PAUSE_VAR: &str = "FERRY_FAULT_PAUSE_AT";
/// With [`FAULT_PAUSE_VAR`]: how many seconds the hold lasts (an hour unless set), so a test
/// can act meanwhile (take a host's link down) and let the step go on.
pub const FAULT_PAUSE_SECS_VAR: &str = "FERRY_FAULT_PAUSE_SECS";

async fn hold_for_fault_injection(id: i64, step: &str) {
    if std::env::var(FAULT_PAUSE_VAR).is_ok_and(|at| at == step) {
        let secs = std::env::var(FAULT_PAUSE_SECS_VAR)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3600);
        tracing::warn!(
            id,
            step,
            secs,
            "{FAULT_PAUSE_VAR}: holding the deployment here"
        );
        tokio::time::sleep(std::time::Duration::from_secs(secs)).await;
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

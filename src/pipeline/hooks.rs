//! `[hooks]`: commands run on the ferry host around a deployment, in its release dir (the
//! environment's shared dir when there is none yet), confined as the environment's user with
//! the cleared environment every command gets, ferry's `FERRY_*` variables and, with
//! `[hooks] secrets = true` only, the environment's `env` and `env_file` (as an instance).
//!
//! - `pre_deploy`: a step after build and test, before backup; a failure refuses the deploy
//!   (nothing was changed: no backup, no release command, no instance).
//! - `post_deploy` (a deploy succeeded), `on_failure` (a deploy or rollback failed; not one a
//!   gate, a lock or `pre_deploy` refused), `on_rollback` (a monitor breach switched traffic
//!   back, or a rollback succeeded): a step of their own once the outcome is decided, before
//!   it is written, the environment still locked. Their failure is recorded with the step and
//!   never changes the outcome.
//!
//! Each command gets `command_timeout`; its output is kept with the step, secrets masked.

use std::path::Path;

use super::steps::{Stop, instance_vars};
use super::{Engine, EnvState};
use crate::config::Hook;
use crate::store::{Deployment, DeploymentState};

/// The steps hooks run in after an outcome; `ferry deploy` does not take their failure for the
/// deployment's.
pub const OUTCOME_HOOKS: &[&str] = &["post_deploy", "on_failure", "on_rollback"];

/// What a deployment knew before it changed anything: what the hooks after it are told.
pub(super) struct Before {
    /// The version serving when the deployment started (empty: none).
    previous_version: String,
}

impl Engine {
    /// Taken once the deployment holds the environment's lock.
    pub(super) async fn before(&self, state: &EnvState) -> Before {
        let previous_version = match state.active_release().await {
            Some(name) => self
                .store
                .release(&state.env.name, &name)
                .ok()
                .flatten()
                .map(|r| r.version)
                .unwrap_or_default(),
            None => String::new(),
        };
        Before { previous_version }
    }

    /// The pre_deploy step (deploys only): after build and test, before backup; a failing
    /// hook refuses the deploy.
    pub(super) async fn pre_deploy(
        &self,
        d: &Deployment,
        state: &EnvState,
        dir: &Path,
        before: Option<&Before>,
    ) -> Result<(), Stop> {
        let hook = Hook::PreDeploy;
        if self.config.hooks.commands(hook).is_empty() {
            self.skip(d.id, hook.name(), "no pre_deploy hook configured");
            return Ok(());
        }
        let taken;
        let before = match before {
            Some(before) => before,
            None => {
                taken = self.before(state).await;
                &taken
            }
        };
        self.step(d.id, hook.name(), async {
            let d = self.store.deployment(d.id)?;
            let vars = self.hook_vars(&d, state, dir, before, hook, None).await?;
            self.run_hook(d.id, state, hook, dir, &vars)
                .await
                .map_err(|stop| Stop {
                    state: DeploymentState::Refused,
                    ..stop
                })
        })
        .await
    }

    /// Runs the hook for deployment `id`'s outcome, if one applies, as a step of its own. Its
    /// failure is recorded with the step; the outcome stays what it is.
    pub(super) async fn after_outcome(
        &self,
        id: i64,
        state: &EnvState,
        outcome: &Result<(), Stop>,
        before: &Before,
    ) {
        let Ok(d) = self.store.deployment(id) else {
            return;
        };
        let rollback = d.kind == "rollback";
        let (hook, planned) = match outcome {
            Ok(()) if rollback => (Hook::OnRollback, true),
            Ok(()) => (Hook::PostDeploy, true),
            Err(stop) if stop.state == DeploymentState::RolledBack => (Hook::OnRollback, false),
            Err(stop) if stop.state == DeploymentState::Failed => (Hook::OnFailure, false),
            Err(_) => return,
        };
        if self.config.hooks.commands(hook).is_empty() {
            if planned {
                self.skip(
                    id,
                    hook.name(),
                    &format!("no {} hook configured", hook.name()),
                );
            }
            return;
        }
        let reason = outcome.as_ref().err().map(|stop| {
            let state = if stop.state == DeploymentState::RolledBack {
                "rolled_back"
            } else {
                stop.state.as_str()
            };
            (state, stop.message.as_str())
        });
        let dir = d
            .release
            .as_deref()
            .map(|r| {
                self.config
                    .env_dir(&state.env.name)
                    .join("releases")
                    .join(r)
            })
            .filter(|dir| dir.is_dir())
            .unwrap_or_else(|| self.config.env_dir(&state.env.name).join("shared"));
        let ran = self
            .step(id, hook.name(), async {
                let vars = self
                    .hook_vars(&d, state, &dir, before, hook, reason)
                    .await?;
                self.run_hook(id, state, hook, &dir, &vars).await
            })
            .await;
        if let Err(stop) = ran {
            tracing::warn!(id, hook = hook.name(), reason = %stop.message, "hook failed; the deployment's outcome stands");
        }
    }

    /// What a hook's commands start with: the cleared environment of every command (or, with
    /// `[hooks] secrets = true`, an instance's: `env` and `env_file` too) and ferry's
    /// variables about the deployment.
    pub(super) async fn hook_vars(
        &self,
        d: &Deployment,
        state: &EnvState,
        dir: &Path,
        before: &Before,
        hook: Hook,
        outcome: Option<(&str, &str)>,
    ) -> Result<Vec<(String, String)>, Stop> {
        let version = d.version.clone().unwrap_or_else(|| d.git_ref.clone());
        let commit = d.commit_sha.clone().unwrap_or_default();
        let mut vars = if self.config.hooks.secrets {
            let release = d.release.clone().unwrap_or_default();
            let instance = instance_vars(state, &version, &commit);
            let spec = self
                .instance_spec(state, dir, instance, &release)
                .await
                .map_err(Stop::failed)?;
            let mut vars = spec.vars.clone();
            vars.retain(|(k, _)| k != "PORT");
            vars.extend(crate::runtime::secret_vars(&spec));
            vars
        } else {
            self.command_env(state)
        };
        let outcome_state = match outcome {
            Some((state, _)) => state.to_string(),
            None if hook == Hook::PreDeploy => String::new(),
            None => "succeeded".to_string(),
        };
        let set = [
            ("FERRY_APP", self.config.app.name.clone()),
            ("FERRY_ENVIRONMENT", state.env.name.clone()),
            ("FERRY_VERSION", version),
            ("FERRY_COMMIT", commit),
            ("FERRY_RELEASE", d.release.clone().unwrap_or_default()),
            ("FERRY_PREVIOUS_VERSION", before.previous_version.clone()),
            ("FERRY_DEPLOYMENT", d.id.to_string()),
            ("FERRY_KIND", d.kind.clone()),
            ("FERRY_TRIGGERED_BY", d.triggered_by.clone()),
            ("FERRY_DURATION", seconds_since(&d.created_at).to_string()),
            ("FERRY_HOOK", hook.name().to_string()),
            ("FERRY_OUTCOME", outcome_state),
            (
                "FERRY_REASON",
                outcome.map(|(_, why)| why.to_string()).unwrap_or_default(),
            ),
        ];
        vars.retain(|(k, _)| !set.iter().any(|(name, _)| name == k));
        vars.extend(set.into_iter().map(|(k, v)| (k.to_string(), v)));
        Ok(vars)
    }

    /// Runs `hook`'s commands in order in `dir`; the first failure stops it.
    async fn run_hook(
        &self,
        id: i64,
        state: &EnvState,
        hook: Hook,
        dir: &Path,
        vars: &[(String, String)],
    ) -> Result<((), String), Stop> {
        let mut out = String::new();
        for command in self.config.hooks.commands(hook) {
            out.push_str(&format!("$ {command}\n"));
            let record = |pid| {
                if let Some(at) = crate::runtime::process_start_time(pid)
                    && let Err(e) = self.store.command_started(id, pid, at)
                {
                    tracing::warn!(id, pid, error = %e, "cannot record a running hook");
                }
            };
            let result = crate::release::run_command(
                dir,
                command,
                vars,
                &self.confinement(state, dir, false),
                self.config.app.command_timeout,
                record,
            )
            .await;
            let _ = self.store.commands_ended(id);
            match result {
                Ok(text) => out.push_str(&text),
                Err(e) => {
                    out.push_str(e.output());
                    if !out.ends_with('\n') {
                        out.push('\n');
                    }
                    // the last line is what the CLI shows for the step
                    out.push_str(&format!("{} hook: {e}\n", hook.name()));
                    return Err(Stop::failed(e.to_string()).with_output(&out));
                }
            }
        }
        out.push_str(&format!("{} hook done\n", hook.name()));
        Ok(((), out))
    }
}

/// What `ferry plan` says a configured hook does.
pub(super) fn describe(hook: Hook, commands: &[String]) -> String {
    let list = commands
        .iter()
        .map(|c| format!("`{c}`"))
        .collect::<Vec<_>>()
        .join(", then ");
    match hook {
        Hook::PreDeploy => format!("run {list}; a failure refuses the deploy"),
        _ => format!("run {list}; a failure is recorded, the outcome stands"),
    }
}

/// Whole seconds from the stored timestamp `from` until now (0 when it cannot be read).
fn seconds_since(from: &str) -> u64 {
    chrono::DateTime::parse_from_rfc3339(from)
        .ok()
        .and_then(|t| {
            (chrono::Utc::now() - t.with_timezone(&chrono::Utc))
                .to_std()
                .ok()
        })
        .map_or(0, |d| d.as_secs())
}

//! The steps of one deployment, in order.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use super::environment::Active;
use super::{Engine, EnvState};
use crate::release::{self, Resolved};
use crate::runtime::{InstanceSpec, Secrets};
use crate::store::{DeploymentState, StepState};

/// Why a step stopped the deployment.
struct Stop {
    state: DeploymentState,
    message: String,
    output: String,
}

impl Stop {
    fn failed(message: impl Into<String>) -> Stop {
        Stop {
            state: DeploymentState::Failed,
            message: message.into(),
            output: String::new(),
        }
    }

    fn with_output(mut self, output: &str) -> Stop {
        self.output = output.to_string();
        self
    }
}

impl From<release::ReleaseError> for Stop {
    fn from(e: release::ReleaseError) -> Stop {
        let output = e.output().to_string();
        Stop::failed(e.to_string()).with_output(&output)
    }
}

/// What a deployment holds that must be undone if it stops early.
#[derive(Default)]
struct Held {
    lock: bool,
    instance: Option<Active>,
}

impl Engine {
    /// Runs deployment `id` to its end; every outcome is recorded in the store.
    pub(super) async fn run(self: Arc<Self>, id: i64, state: Arc<EnvState>) {
        let env = state.env.name.clone();
        if let Err(e) = self.store.set_state(id, DeploymentState::Running, None) {
            tracing::error!(id, error = %e, "cannot start deployment");
            return;
        }
        let mut held = Held::default();
        let outcome = self.steps(id, &state, &mut held).await;
        if let Some(active) = held.instance.take() {
            self.stop_instance(active.record, &active.instance).await;
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
    async fn step<T>(
        &self,
        id: i64,
        name: &str,
        work: impl Future<Output = Result<(T, String), Stop>>,
    ) -> Result<T, Stop> {
        let step = self
            .store
            .step_started(id, name)
            .map_err(|e| Stop::failed(format!("cannot record step {name}: {e}")))?;
        let result = work.await;
        let (state, output) = match &result {
            Ok((_, out)) => (StepState::Ok, out.clone()),
            Err(stop) if stop.output.is_empty() => (StepState::Failed, stop.message.clone()),
            Err(stop) => (StepState::Failed, stop.output.clone()),
        };
        let output = release::tail_text(output.as_bytes());
        if let Err(e) = self.store.step_finished(step, state, &output) {
            tracing::error!(id, step = name, error = %e, "cannot record step outcome");
        }
        result.map(|(v, _)| v).map_err(|mut stop| {
            stop.message = format!("{name}: {}", stop.message);
            stop
        })
    }

    fn skip(&self, id: i64, name: &str, why: &str) {
        if let Ok(step) = self.store.step_started(id, name) {
            let _ = self.store.step_finished(step, StepState::Skipped, why);
        }
    }

    async fn steps(&self, id: i64, state: &EnvState, held: &mut Held) -> Result<(), Stop> {
        let env = &state.env;
        let d = self
            .store
            .deployment(id)
            .map_err(|e| Stop::failed(e.to_string()))?;
        let app = &self.config.app;

        let resolved: Resolved = self
            .step(id, "resolve", async {
                let mirror = self.config.state_dir.join("mirror.git");
                let _git = self.git.lock().await;
                release::sync_mirror(&app.repo, &mirror).await?;
                let r = release::resolve(&mirror, &d.git_ref).await?;
                let out = format!("{} -> {} ({:?})\n", d.git_ref, r.commit, r.kind);
                Ok((r, out))
            })
            .await?;
        let name = resolved.release_name();
        self.store
            .set_resolved(id, &resolved.commit, &resolved.version, &name)
            .map_err(|e| Stop::failed(e.to_string()))?;

        self.step(id, "lock", async {
            match self
                .store
                .acquire_lock(&env.name, Some(id), "deploy", &d.triggered_by)
            {
                Ok(Ok(())) => {
                    held.lock = true;
                    Ok(((), format!("locked {} for deployment {id}\n", env.name)))
                }
                Ok(Err(h)) => Err(Stop {
                    state: DeploymentState::Refused,
                    message: h.refusal(&env.name),
                    output: String::new(),
                }),
                Err(e) => Err(Stop::failed(e.to_string())),
            }
        })
        .await?;

        let env_dir = self.config.env_dir(&env.name);
        let dir = env_dir.join("releases").join(&name);
        let existing = self
            .store
            .release(&env.name, &name)
            .map_err(|e| Stop::failed(e.to_string()))?;
        let reusable = existing
            .as_ref()
            .is_some_and(|r| r.digest.is_some() && matches!(r.status.as_str(), "built" | "good"))
            && dir.is_dir();
        let vars = vec![
            ("ENVIRONMENT".to_string(), env.group.clone()),
            ("FERRY_SLOT".to_string(), env.name.clone()),
            ("APP_VERSION".to_string(), resolved.version.clone()),
            ("COMMIT_SHA".to_string(), resolved.commit.clone()),
        ];

        let digest = if reusable {
            self.step(id, "prepare", async {
                Ok(((), format!("reusing release {name}, built before\n")))
            })
            .await?;
            self.skip(id, "build", "release already built");
            self.skip(id, "test", "release already tested");
            existing.and_then(|r| r.digest).unwrap_or_default()
        } else {
            self.step(id, "prepare", async {
                self.store
                    .upsert_release(&env.name, &name, &resolved.version, &resolved.commit)
                    .map_err(|e| Stop::failed(e.to_string()))?;
                if dir.exists() {
                    // left over from an attempt that never finished building
                    std::fs::remove_dir_all(&dir).map_err(|e| {
                        Stop::failed(format!("cannot clear {}: {e}", dir.display()))
                    })?;
                }
                let mirror = self.config.state_dir.join("mirror.git");
                release::export(&mirror, &resolved.commit, &dir).await?;
                release::link_shared(&dir, &env_dir.join("shared"), &app.shared)?;
                Ok((
                    (),
                    format!("exported {} into {}\n", resolved.commit, dir.display()),
                ))
            })
            .await
            .inspect_err(|_| self.mark_release(&env.name, &name, "failed"))?;
            for (step, commands) in [("build", &app.build), ("test", &app.test)] {
                self.step(id, step, self.run_commands(&dir, commands, &vars))
                    .await
                    .inspect_err(|_| self.mark_release(&env.name, &name, "failed"))?;
            }
            let dir2 = dir.clone();
            let digest = tokio::task::spawn_blocking(move || release::digest(&dir2))
                .await
                .map_err(|e| Stop::failed(e.to_string()))??;
            self.store
                .set_release_status(&env.name, &name, "built", Some(&digest))
                .map_err(|e| Stop::failed(e.to_string()))?;
            digest
        };
        self.store
            .set_digest(id, &digest)
            .map_err(|e| Stop::failed(e.to_string()))?;

        let release_name = name.clone();
        let instance = self
            .step(id, "start", async {
                let spec = self
                    .instance_spec(state, &dir, vars)
                    .map_err(Stop::failed)?;
                let instance = crate::runtime::spawn(&spec, &state.log)
                    .map_err(|e| Stop::failed(e.to_string()))?;
                let out = format!(
                    "started {release_name}: pid {} on port {}\n",
                    instance.pid, instance.port
                );
                let active = self
                    .record_instance(state, &release_name, Some(id), instance.clone())
                    .await
                    .map_err(Stop::failed)?;
                held.instance = Some(active);
                Ok((instance, out))
            })
            .await?;
        let health = self.config.health.clone();
        self.step(id, "health", async {
            crate::health::wait_healthy(&instance, &health)
                .await
                .map(|log| ((), log))
                .map_err(|e| Stop::failed(e.to_string()))
        })
        .await?;

        let previous = self
            .step(id, "switch", async {
                let next = held.instance.take().expect("the started instance is held");
                let port = next.instance.port;
                let previous = state.activate(next).await;
                let out = match &previous {
                    Some(p) => {
                        format!("traffic moved from {} to {name} (port {port})\n", p.release)
                    }
                    None => format!("traffic now goes to {name} (port {port})\n"),
                };
                Ok((previous, out))
            })
            .await?;

        self.step(id, "finish", async {
            let mut out = match previous {
                Some(old) => self.retire(old).await,
                None => "first release in this environment\n".to_string(),
            };
            self.mark_release(&env.name, &name, "good");
            out.push_str(&self.prune(&env.name, &name));
            Ok(((), out))
        })
        .await
    }

    fn mark_release(&self, env: &str, name: &str, status: &str) {
        if let Err(e) = self.store.set_release_status(env, name, status, None) {
            tracing::error!(env, release = name, error = %e, "cannot record release status");
        }
    }

    async fn run_commands(
        &self,
        dir: &std::path::Path,
        commands: &[String],
        vars: &[(String, String)],
    ) -> Result<((), String), Stop> {
        let mut out = String::new();
        for command in commands {
            out.push_str(&format!("$ {command}\n"));
            match release::run_command(dir, command, vars, self.config.app.command_timeout).await {
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
        release_dir: &std::path::Path,
        mut vars: Vec<(String, String)>,
    ) -> Result<InstanceSpec, String> {
        let env = &state.env;
        let port = crate::runtime::free_port().map_err(|e| e.to_string())?;
        vars.push(("PORT".into(), port.to_string()));
        vars.push(("DEPLOYED_AT".into(), crate::store::now()));
        vars.extend(env.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        let secrets = match &env.env_file {
            None => Secrets::default(),
            Some(path) => {
                let path: PathBuf = if path.is_absolute() {
                    path.clone()
                } else {
                    self.config.env_dir(&env.name).join("shared").join(path)
                };
                Secrets::read(&path).map_err(|e| e.to_string())?
            }
        };
        Ok(InstanceSpec {
            release_dir: release_dir.to_path_buf(),
            start: self.config.app.start.clone(),
            port,
            vars,
            secrets,
        })
    }

    /// Removes releases beyond `keep_releases`, oldest first by the order they were made,
    /// never the one serving or `keep`.
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
}

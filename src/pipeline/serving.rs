//! start, health and switch: a new instance of a release, healthy, then serving; switching
//! back on a monitor breach; starting a release again; the spec an instance runs with.

use std::path::{Path, PathBuf};

use super::environment::Active;
use super::steps::{Held, Stop, instance_vars};
use super::{Engine, EnvState};
use crate::runtime::{Identity, InstanceSpec};
use crate::store::DeploymentState;

impl Engine {
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
                let spec = self
                    .instance_spec(state, dir, vars, release)
                    .await
                    .map_err(Stop::failed)?;
                let instance = self
                    .runtime
                    .start(&spec, &state.log)
                    .await
                    .map_err(|e| Stop::failed(e.to_string()))?;
                let out = format!(
                    "started {release}: {} on port {}\n",
                    instance.describe(),
                    instance.port
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
            state.preview_off();
            let previous = state.activate(next).await;
            let mut out = match &previous {
                Some(p) => format!(
                    "traffic moved from {} to {release} (port {port})\n",
                    p.release
                ),
                None => format!("traffic now goes to {release} (port {port})\n"),
            };
            // the previous release's workers stop before this one's start: never both
            out.push_str(&self.run_workers(state, release, true).await);
            Ok((previous, out))
        })
        .await
    }

    /// A monitor breach: traffic goes back to the previous instance (warm, or started again
    /// if it died meanwhile), the new one is drained and stopped, its release marked bad.
    pub(super) async fn roll_back_now(
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
        out.push_str(&self.run_workers(state, &back_to, true).await);
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
        let spec = self.instance_spec(state, &dir, vars, release).await.ok()?;
        match self.start_healthy(state, release, spec).await {
            Ok(active) => Some(active),
            Err(e) => {
                tracing::error!(env = %env, release, error = %e, "cannot start the previous release again");
                None
            }
        }
    }

    /// The instance's variables, `env` and secrets for `release_dir`.
    pub(super) async fn instance_spec(
        &self,
        state: &EnvState,
        release_dir: &Path,
        mut vars: Vec<(String, String)>,
        release: &str,
    ) -> Result<InstanceSpec, String> {
        let env = &state.env;
        let var = |name: &str| {
            vars.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let identity = Identity {
            app: self.config.app.name.clone(),
            env: env.name.clone(),
            release: release.to_string(),
            version: var("APP_VERSION"),
            commit: var("COMMIT_SHA"),
            home: self.runtime.home().to_string(),
            process: String::new(),
        };
        // first: the commands may take a while, and the port is best taken just before use
        let secrets = self.secrets(env).await.map_err(|e| e.to_string())?;
        let port = crate::runtime::free_port().map_err(|e| e.to_string())?;
        vars.push(("PORT".into(), port.to_string()));
        vars.push(("DEPLOYED_AT".into(), crate::store::now()));
        vars.push(("FERRY_PROCESS".into(), crate::config::WEB.into()));
        vars.extend(env.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        let mut all = self.command_env(state);
        all.extend(vars.iter().cloned());
        let env_file = super::env_file_path(&self.config, env);
        Ok(InstanceSpec {
            release_dir: release_dir.to_path_buf(),
            start: self.config.app.start.clone(),
            port,
            vars: all,
            secrets,
            confinement: self.confinement(state, release_dir, false),
            output: self.output_pipe(&env.name, port),
            app_vars: vars,
            env_file,
            identity,
            image: self.image_of(&env.name, release),
            shared_dir: self.config.env_dir(&env.name).join("shared"),
            stop_timeout: self.config.app.stop_timeout,
        })
    }

    /// The image of `release` of `env` (its recorded digest) with a container runtime.
    fn image_of(&self, env: &str, release: &str) -> Option<String> {
        self.runtime.kind().container()?;
        self.store.release(env, release).ok().flatten()?.digest
    }

    /// The named pipe carrying the output of `env`'s instance on `port`.
    pub(super) fn output_pipe(&self, env: &str, port: u16) -> PathBuf {
        self.config
            .env_dir(env)
            .join("run")
            .join(format!("{port}.out"))
    }
}

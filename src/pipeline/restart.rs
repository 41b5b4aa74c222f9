//! Restart: the serving release started again through the zero-downtime path — a new
//! instance from its built dir (or image), health-checked, switched to, the old one drained
//! and stopped — e.g. after a secret was rotated. A recorded deployment (`kind: restart`, its
//! ref the release name): resolve → lock → prepare (digest re-checked, nothing rebuilt) →
//! start → health → switch → finish. No gate holds it back but the lock, as for a rollback.

use std::path::Path;
use std::sync::Arc;

use super::steps::{Held, Stop, instance_vars};
use super::{Engine, EngineError};
use crate::store::{Actor, Deployment, Release};

impl Engine {
    /// Records a restart of the release serving `env` and starts it in the background;
    /// refused at once when nothing serves there or the environment is locked.
    pub async fn request_restart(
        self: &Arc<Self>,
        env: &str,
        reason: Option<&str>,
        who: &Actor,
    ) -> Result<Deployment, EngineError> {
        let state = self.env(env)?.clone();
        let release = self.serving_release(env).await?;
        let id = self.create(env, "restart", &release.name, who)?;
        let reason = reason.map(str::trim).filter(|r| !r.is_empty());
        if reason.is_some() {
            self.store.set_request(id, reason, false, false)?;
        }
        if let Some(refused) = self.refuse_if_locked(env, id)? {
            return Err(refused);
        }
        self.launch(id, state);
        Ok(self.store.deployment(id)?)
    }

    /// The release serving `env` now, as recorded; a clear refusal when none does.
    async fn serving_release(&self, env: &str) -> Result<Release, EngineError> {
        let state = self.env(env)?;
        let serving = match state.serving_addr().await {
            Some(_) => state.active_release().await,
            // on servers: what the last deployment put on every host
            None if !state.env.servers.is_empty() => self.serving_name(state).await,
            None => None,
        };
        let Some(name) = serving else {
            return Err(EngineError::Conflict(format!(
                "nothing is serving {env}, so there is nothing to restart: deploy a release first (ferry deploy {env} <ref>)"
            )));
        };
        self.store
            .release(env, &name)?
            .filter(|r| r.digest.is_some())
            .ok_or_else(|| {
                EngineError::Conflict(format!(
                    "release {name} serving {env} has no recorded build: deploy it again instead"
                ))
            })
    }

    pub(super) async fn restart_steps(
        &self,
        d: &Deployment,
        state: &super::EnvState,
        held: &mut Held,
    ) -> Result<(), Stop> {
        let id = d.id;
        let env = &state.env.name;
        let release = self
            .step(id, "resolve", async {
                let release = self
                    .serving_release(env)
                    .await
                    .map_err(|e| Stop::refused(e.to_string()))?;
                if release.name != d.git_ref {
                    return Err(Stop::refused(format!(
                        "{} serves {env} now, not {}: nothing was restarted",
                        release.name, d.git_ref
                    )));
                }
                let out = format!(
                    "restarting {} (commit {}) on {env}\n",
                    release.name, release.commit_sha
                );
                Ok((release, out))
            })
            .await?;
        self.store
            .set_resolved(id, &release.commit_sha, &release.version, &release.name)?;
        self.lock(id, state, &d.triggered_by, held).await?;
        let dir = self
            .config
            .env_dir(env)
            .join("releases")
            .join(&release.name);
        self.step(id, "prepare", self.check_built(&release, &dir))
            .await?;
        let digest = release.digest.clone().unwrap_or_default();
        self.store.set_digest(id, &digest)?;
        if !state.env.servers.is_empty() {
            // the host path (hosts.rs): started again on every host, host by host
            let run = super::hosts::HostRun {
                release: super::hosts::HostRelease {
                    name: &release.name,
                    dir: &dir,
                    digest: &digest,
                    version: &release.version,
                    commit: &release.commit_sha,
                },
                release_command: Err(None),
                monitor: None,
            };
            return self.on_hosts(d, state, run).await;
        }
        let vars = instance_vars(state, &release.version, &release.commit_sha);
        self.start(id, state, &release.name, &dir, vars, held)
            .await?;
        let previous = self.switch(id, state, &release.name, held).await?;
        self.step(id, "finish", async {
            let out = match previous {
                Some(old) => self.retire(old).await,
                None => "nothing was serving before\n".to_string(),
            };
            Ok(((), out))
        })
        .await
    }

    /// The prepare step of a rollback or restart: `release` is used as it was built, never
    /// rebuilt — its image must still be in docker, or its dir must have its recorded digest.
    pub(super) async fn check_built(
        &self,
        release: &Release,
        dir: &Path,
    ) -> Result<((), String), Stop> {
        let expected = release.digest.clone().unwrap_or_default();
        if self.runtime.uses_images() {
            // the release is its image, run again as it is: never rebuilt
            return match self.runtime.has_image(&expected).await {
                Ok(true) => Ok((
                    (),
                    format!(
                        "reusing release {}, image {} still in docker\n",
                        release.name,
                        crate::runtime::container::short(&expected)
                    ),
                )),
                Ok(false) => Err(Stop::failed(format!(
                    "the image of release {} ({expected}) is no longer in docker",
                    release.name
                ))),
                Err(e) => Err(Stop::failed(e.to_string())),
            };
        }
        let (dir2, shared) = (dir.to_path_buf(), self.config.app.shared.clone());
        let digest = tokio::task::spawn_blocking(move || crate::release::digest(&dir2, &shared))
            .await
            .map_err(|e| Stop::failed(e.to_string()))??;
        if digest != expected {
            return Err(Stop::failed(format!(
                "release dir {} changed since it was built ({digest}, built as {expected})",
                dir.display()
            )));
        }
        Ok((
            (),
            format!("reusing release {}, digest unchanged\n", release.name),
        ))
    }
}

//! prepare, build and test: a release dir for the resolved commit, reused when built before,
//! copied from the environment it was verified on when promoted, or exported and built (its
//! commands confined to the environment's user and dirs); then sealed and digested.

use std::path::Path;

use super::steps::{Stop, instance_vars};
use super::{Engine, EnvState};
use crate::release::{self, Resolved};
use crate::sandbox;
use crate::store::Verification;

impl Engine {
    /// prepare, build and test: a release dir for `resolved`, reused when built before,
    /// copied from the environment it was verified on when promoted, or built. Returns the
    /// release's digest.
    pub(super) async fn prepare(
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
        let mut reusable = existing.as_ref().is_some_and(|r| {
            r.digest.is_some() && matches!(r.status.as_str(), "built" | "good" | "bad")
        }) && dir.is_dir();
        if reusable
            && self.runtime.uses_images()
            && let Some(image) = existing.as_ref().and_then(|r| r.digest.as_deref())
        {
            // an image removed from docker since is built again; a daemon that does not
            // answer stops the deploy (never a rebuild over the release serving now)
            reusable = self
                .runtime
                .has_image(image)
                .await
                .map_err(|e| Stop::failed(e.to_string()))?;
        }
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

        let mut image = None;
        // a verified image is promoted as it is, even when its release dir there is gone
        let promoted = source.is_some() || self.runtime.uses_images();
        if let (true, Some(from)) = (promoted, &copied_from) {
            if self.runtime.uses_images() {
                image = Some(self.verified_image(verified).await.inspect_err(|_| {
                    self.mark_release(&env.name, &name, "failed");
                })?);
            }
            self.skip(id, "build", &format!("built on {from}"));
            self.skip(id, "test", &format!("tested on {from}"));
        } else {
            let mut vars = self.command_env(state);
            vars.extend(instance_vars(state, &resolved.version, &resolved.commit));
            let build = async {
                let (_, mut out) = self.run_commands(id, state, dir, &app.build, &vars).await?;
                if self.runtime.uses_images() {
                    // the root docker CLI reads the context: nothing of the environment's
                    // user (a build command left running, a link made) may change it now
                    self.seal(state, dir).await?;
                    let (id, built) = self.build_image(state, resolved, dir).await?;
                    // a rebuild's previous image goes unless another release is it
                    let before = self.store.set_release_digest(&env.name, &name, &id)?;
                    let mut removed = String::new();
                    if let Some(old) = before.filter(|old| *old != id) {
                        removed = self.prune_images(vec![old]).await;
                    }
                    image = Some(id);
                    out.push_str(&removed);
                    out.push_str(&built);
                }
                Ok(((), out))
            };
            self.step(id, "build", build)
                .await
                .inspect_err(|_| self.mark_release(&env.name, &name, "failed"))?;
            self.step(
                id,
                "test",
                self.run_commands(id, state, dir, &app.test, &vars),
            )
            .await
            .inspect_err(|_| self.mark_release(&env.name, &name, "failed"))?;
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
        // a container app's release is its image: the id promotion checks
        let digest = image.unwrap_or(digest);
        self.store
            .set_release_status(&env.name, &name, "built", Some(&digest))?;
        Ok(digest)
    }

    /// Builds a container app's image from the release dir; its id and what to show of
    /// the build (the tail of its output).
    async fn build_image(
        &self,
        state: &EnvState,
        resolved: &Resolved,
        dir: &Path,
    ) -> Result<(String, String), Stop> {
        let identity = crate::runtime::Identity {
            app: self.config.app.name.clone(),
            env: state.env.name.clone(),
            release: resolved.release_name(),
            version: resolved.version.clone(),
            commit: resolved.commit.clone(),
            home: self.runtime.home().to_string(),
            process: String::new(),
        };
        let tag = crate::runtime::image_tag(&identity);
        let mut out = format!("$ docker build -t {tag}\n");
        match self
            .runtime
            .build_image(dir, &identity, self.config.app.command_timeout)
            .await
        {
            Ok(built) => {
                out.push_str(&crate::docker::last_lines(&built.output, 20));
                if !out.ends_with('\n') {
                    out.push('\n');
                }
                out.push_str(&format!("built image {} as {tag}\n", built.image_id));
                Ok((built.image_id, out))
            }
            Err(e) => {
                if let crate::runtime::RuntimeError::Docker(
                    crate::docker::DockerError::Build { tail, .. }
                    | crate::docker::DockerError::Timeout { tail, .. },
                ) = &e
                {
                    out.push_str(tail);
                    if !out.ends_with('\n') {
                        out.push('\n');
                    }
                }
                Err(Stop::failed(e.to_string()).with_output(&out))
            }
        }
    }

    /// Seals the release dir (root's, read-only to its user) and checks that no link leads
    /// out of it.
    async fn seal(&self, state: &EnvState, dir: &Path) -> Result<(), Stop> {
        let shared_dir = self.config.env_dir(&state.env.name).join("shared");
        let (dir, shared, run_as) = (
            dir.to_path_buf(),
            self.config.app.shared.clone(),
            state.run_as.clone(),
        );
        tokio::task::spawn_blocking(move || {
            release::link_shared(&dir, &shared_dir, &shared)?;
            sandbox::seal_release(&dir, run_as.as_ref())
                .map_err(|e| release::ReleaseError::Unsafe(e.to_string()))?;
            release::check_tree(&dir, &shared)
        })
        .await
        .map_err(|e| Stop::failed(e.to_string()))??;
        Ok(())
    }

    /// The image verified on another environment, still in docker: promotion runs that very
    /// image, never a rebuild.
    async fn verified_image(&self, verified: Option<&Verification>) -> Result<String, Stop> {
        let Some(v) = verified else {
            return Err(Stop::failed("no verified image to promote"));
        };
        match self.runtime.has_image(&v.digest).await {
            Ok(true) => Ok(v.digest.clone()),
            Ok(false) => Err(Stop::failed(format!(
                "the image verified on {} ({}) is no longer in docker: deploy {} to {} again to rebuild it",
                v.environment,
                crate::runtime::container::short(&v.digest),
                v.version,
                v.environment
            ))),
            Err(e) => Err(Stop::failed(e.to_string())),
        }
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

    /// What a command of `state`'s environment in `release` may reach of the state dir: its
    /// release (writable while it builds), the shared dir and its home.
    pub(super) fn confinement(
        &self,
        state: &EnvState,
        release: &Path,
        builds: bool,
    ) -> sandbox::Confinement {
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
            state_dir: Some(self.config.server_dir.clone()),
            read,
            write,
        }
    }

    /// What every command of `state`'s environment starts with (see [`sandbox::command_env`]).
    pub(super) fn command_env(&self, state: &EnvState) -> Vec<(String, String)> {
        let home = sandbox::home_dir(&self.config.env_dir(&state.env.name));
        sandbox::command_env(&home, state.run_as.as_ref(), &self.config.app.pass_env)
    }
}

/// True when `name` is one plain path component (a release dir name from the store).
fn one_component(name: &str) -> bool {
    let mut parts = Path::new(name).components();
    matches!(parts.next(), Some(std::path::Component::Normal(_))) && parts.next().is_none()
}

fn sandbox_failed(e: sandbox::SandboxError) -> Stop {
    Stop::failed(e.to_string())
}

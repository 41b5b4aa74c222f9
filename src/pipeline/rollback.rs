//! Manual rollback: a recorded deployment that starts a previous good release from its
//! built dir (no rebuild), health-checks it and switches to it; with `--restore-data` it
//! first puts back the data backed up before the deploy being undone.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::steps::{Held, Stop, Stopped, instance_vars};
use super::{Engine, EngineError, EnvState};
use crate::store::{Actor, Backup, Deployment, Release};

/// What a rollback will do, decided when it is asked for.
struct Target {
    release: Release,
    /// The succeeded deployment that put the serving release in place.
    current: Option<Deployment>,
}

/// A release as a rollback names it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReleaseRef {
    /// `<version>-<sha7>`: what `--to` takes.
    pub release: String,
    pub version: String,
    pub commit_sha: String,
}

impl From<Release> for ReleaseRef {
    fn from(r: Release) -> ReleaseRef {
        ReleaseRef {
            release: r.name,
            version: r.version,
            commit_sha: r.commit_sha,
        }
    }
}

/// What `GET /api/environments/{env}/rollback` answers: a rollback described, not started.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RollbackPreview {
    pub environment: String,
    /// The release serving now, if any.
    pub from: Option<ReleaseRef>,
    pub to: ReleaseRef,
    /// The deployment being undone (whose backups `--restore-data` puts back).
    pub undoes: Option<i64>,
    pub restore_data: bool,
    /// The data files put back, with `restore_data`.
    pub restores: Vec<String>,
    /// What a person types to confirm: `confirm` of the environment, else its name.
    pub confirm: String,
}

/// The release `to` names among `usable` (oldest first): a release name, or a version that
/// names one release other than the serving one.
fn pick_release(
    env: &str,
    usable: &[&Release],
    to: &str,
    serving: Option<&str>,
) -> Result<Release, EngineError> {
    if let Some(r) = usable.iter().find(|r| r.name == to) {
        return Ok((*r).clone());
    }
    let named: Vec<&Release> = usable
        .iter()
        .rev()
        .filter(|r| r.version == to)
        .copied()
        .collect();
    let others: Vec<&Release> = named
        .iter()
        .filter(|r| Some(r.name.as_str()) != serving)
        .copied()
        .collect();
    match (others.as_slice(), named.first()) {
        ([one], _) => Ok((*one).clone()),
        ([], Some(serving)) => Ok((*serving).clone()),
        ([], None) => {
            let known: Vec<&str> = usable.iter().rev().map(|r| r.name.as_str()).collect();
            Err(EngineError::NoRollbackTarget(format!(
                "no built release {to} in {env} to roll back to; built releases: {}",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )))
        }
        (many, _) => Err(EngineError::NoRollbackTarget(format!(
            "{to} names {} releases in {env}: {}; say which with --to <release>",
            many.len(),
            many.iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

impl Engine {
    /// Records a rollback of `env` to `to` (a release name, or a version naming one release)
    /// or to the previous good release. The deployment's ref is the target's release name.
    pub async fn request_rollback(
        self: &Arc<Self>,
        env: &str,
        to: Option<&str>,
        reason: &str,
        restore_data: bool,
        run_release: bool,
        who: &Actor,
    ) -> Result<Deployment, EngineError> {
        let state = self.env(env)?.clone();
        if run_release && self.config.app.release.is_none() {
            return Err(EngineError::Invalid(
                "--run-release: [app] has no release command to run".into(),
            ));
        }
        if restore_data && !state.env.servers.is_empty() {
            return Err(EngineError::Invalid(format!(
                "--restore-data: the data of {env} lives on its hosts, where ferry takes no backups; roll back without it"
            )));
        }
        let target = self.rollback_target(&state, to).await?;
        if restore_data {
            self.backups_to_restore(env, target.current.as_ref())?;
        }
        // recorded by release name: a version (a branch's, say) can name several releases
        let id = self.create(env, "rollback", &target.release.name, who)?;
        self.store
            .set_request(id, Some(reason), false, restore_data)?;
        if run_release {
            self.store.set_run_release(id)?;
        }
        if let Some(refused) = self.refuse_if_locked(env, id)? {
            return Err(refused);
        }
        self.launch(id, state);
        Ok(self.store.deployment(id)?)
    }

    /// The release to go back to: the newest good release before the serving one, or the
    /// one `to` names (see [`pick_release`]). Releases that failed, were rolled back or pruned are skipped.
    async fn rollback_target(
        &self,
        state: &EnvState,
        to: Option<&str>,
    ) -> Result<Target, EngineError> {
        let env = &state.env.name;
        let serving = self.serving_name(state).await;
        let current = self
            .store
            .succeeded(env)?
            .into_iter()
            .find(|d| serving.is_none() || d.release == serving);
        let on_disk = |r: &Release| {
            self.config
                .env_dir(env)
                .join("releases")
                .join(&r.name)
                .is_dir()
        };
        let releases = self.store.releases(env)?;
        let usable: Vec<&Release> = releases
            .iter()
            .filter(|r| r.digest.is_some() && r.status != "failed" && on_disk(r))
            .collect();
        let release = match to {
            Some(to) => pick_release(env, &usable, to, serving.as_deref())?,
            None => {
                // newest first by when each release last went live
                let mut seen = Vec::new();
                let mut found = None;
                for d in self.store.succeeded(env)? {
                    let Some(name) = d.release else { continue };
                    if Some(&name) == serving.as_ref() || seen.contains(&name) {
                        continue;
                    }
                    seen.push(name.clone());
                    if let Some(r) = usable.iter().find(|r| r.name == name && r.status == "good") {
                        found = Some((*r).clone());
                        break;
                    }
                }
                found.ok_or_else(|| {
                    EngineError::NoRollbackTarget(format!(
                        "{env} has no previous good release to roll back to{}",
                        serving
                            .as_deref()
                            .map(|s| format!(" (serving {s})"))
                            .unwrap_or_default()
                    ))
                })?
            }
        };
        if serving.as_deref() == Some(release.name.as_str()) {
            return Err(EngineError::NoRollbackTarget(format!(
                "{} is already serving {env}",
                release.name
            )));
        }
        Ok(Target { release, current })
    }

    /// What a rollback of `env` would do, changing nothing: from which release to which,
    /// whether data is restored, and the word `ferry rollback` asks to have typed.
    pub async fn rollback_preview(
        &self,
        env: &str,
        to: Option<&str>,
        restore_data: bool,
    ) -> Result<RollbackPreview, EngineError> {
        let state = self.env(env)?.clone();
        let target = self.rollback_target(&state, to).await?;
        let restores = if restore_data {
            self.backups_to_restore(env, target.current.as_ref())?
                .into_iter()
                .map(|b| b.file)
                .collect()
        } else {
            Vec::new()
        };
        let from = self.serving_name(&state).await;
        let from = match from {
            Some(name) => self.store.release(env, &name)?,
            None => None,
        };
        Ok(RollbackPreview {
            environment: env.to_string(),
            from: from.map(ReleaseRef::from),
            to: ReleaseRef::from(target.release),
            undoes: target.current.map(|d| d.id),
            restore_data,
            restores,
            confirm: state.env.confirm_word().to_string(),
        })
    }

    /// The backups taken before `current` (the deploy being undone); refuses when none.
    fn backups_to_restore(
        &self,
        env: &str,
        current: Option<&Deployment>,
    ) -> Result<Vec<Backup>, EngineError> {
        let Some(current) = current else {
            return Err(EngineError::NoRollbackTarget(format!(
                "nothing has been deployed to {env}, so there is no backup to restore"
            )));
        };
        let backups = self.store.backups(env, Some(current.id), None)?;
        if backups.is_empty() {
            return Err(EngineError::NoRollbackTarget(format!(
                "deployment #{} ({}) took no backup, so there is no data to restore; roll back without --restore-data",
                current.id,
                current.version.as_deref().unwrap_or("?")
            )));
        }
        Ok(backups)
    }

    pub(super) async fn rollback_steps(
        &self,
        d: &Deployment,
        state: &EnvState,
        held: &mut Held,
    ) -> Result<(), Stop> {
        let id = d.id;
        let env = &state.env;
        let target = self
            .step(id, "resolve", async {
                let target = self
                    .rollback_target(state, Some(&d.git_ref))
                    .await
                    .map_err(|e| Stop::refused(e.to_string()))?;
                let out = format!(
                    "rolling back {} to {} (commit {}), built before\n",
                    env.name, target.release.name, target.release.commit_sha
                );
                Ok((target, out))
            })
            .await?;
        let release = target.release.clone();
        self.store
            .set_resolved(id, &release.commit_sha, &release.version, &release.name)?;
        self.step(id, "policy", async {
            Ok((
                (),
                format!(
                    "rollbacks are always allowed: freeze windows, promotion, checks and approval do not apply\nreason: {}\n",
                    d.note.as_deref().unwrap_or("")
                ),
            ))
        })
        .await?;
        self.lock(id, state, &d.triggered_by, held).await?;

        let dir = self
            .config
            .env_dir(&env.name)
            .join("releases")
            .join(&release.name);
        let expected = release.digest.clone().unwrap_or_default();
        self.step(id, "prepare", self.check_built(&release, &dir))
            .await?;
        self.store.set_digest(id, &expected)?;
        self.skip(id, "build", "rollbacks reuse the built release");
        self.skip(id, "test", "tested when it was first deployed");
        if !env.servers.is_empty() {
            // the host path (hosts.rs): the release's bytes are here, and usually there already
            self.skip(id, "restore", "data left as it is (no --restore-data)");
            let run = super::hosts::HostRun {
                release: super::hosts::HostRelease {
                    name: &release.name,
                    dir: &dir,
                    digest: &expected,
                    version: &release.version,
                    commit: &release.commit_sha,
                },
                release_command: match self.store.run_release(id)? {
                    true => Ok(()),
                    false => Err(Some(
                        "rollbacks do not run the release command (--run-release does)",
                    )),
                },
                monitor: None,
            };
            return self.on_hosts(d, state, run).await;
        }

        if d.restore_data {
            self.step(
                id,
                "restore",
                self.restore_data(state, target.current.as_ref(), held),
            )
            .await?;
        } else {
            self.skip(id, "restore", "data left as it is (no --restore-data)");
        }
        if self.store.run_release(id)? {
            let of = super::release_command::ReleaseOf {
                dir: &dir,
                name: &release.name,
                version: &release.version,
                commit: &release.commit_sha,
            };
            self.release_step(id, state, of).await?;
        } else {
            self.skip(
                id,
                "release",
                "rollbacks do not run the release command (--run-release does)",
            );
        }

        let vars = instance_vars(state, &release.version, &release.commit_sha);
        self.start(id, state, &release.name, &dir, vars, held)
            .await?;
        let previous = self.switch(id, state, &release.name, held).await?;
        held.stopped = None;
        self.skip(
            id,
            "monitor",
            "rollbacks go back to a release that ran well before",
        );
        self.step(id, "finish", async {
            let mut out = String::new();
            let undone = previous
                .as_ref()
                .map(|p| p.release.clone())
                .or_else(|| target.current.as_ref().and_then(|c| c.release.clone()));
            if let Some(old) = previous {
                out.push_str(&self.retire(old).await);
            }
            if let Some(undone) = undone.filter(|u| u != &release.name) {
                self.mark_release(&env.name, &undone, "bad");
                out.push_str(&format!("{undone} marked bad: rollbacks skip it\n"));
            }
            self.mark_release(&env.name, &release.name, "good");
            Ok(((), out))
        })
        .await
    }

    /// The restore step: maintenance page on, the serving instance stopped, its data set
    /// aside and the backups put in place.
    async fn restore_data(
        &self,
        state: &EnvState,
        current: Option<&Deployment>,
        held: &mut Held,
    ) -> Result<((), String), Stop> {
        let env = &state.env.name;
        let backups = self
            .backups_to_restore(env, current)
            .map_err(|e| Stop::refused(e.to_string()))?;
        let env_dir = self.config.env_dir(env);
        let mut out = String::new();
        state.proxy.set_maintenance(Some(format!(
            "{env} is restoring its data for a rollback; back in a moment."
        )));
        out.push_str(&self.stop_workers(state).await);
        if let Some(old) = state.deactivate().await {
            let release = old.release.clone();
            out.push_str(&self.retire(old).await);
            held.stopped = Some(Stopped {
                release,
                data: Vec::new(),
            });
        }
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ").to_string();
        let suffix = format!(".before-restore.{stamp}");
        for b in backups {
            let live = env_dir.join("shared").join(&b.file);
            let aside = env_dir.join("backups").join(&b.file);
            let (from, l, a, s) = (
                PathBuf::from(&b.path),
                live.clone(),
                aside.clone(),
                suffix.clone(),
            );
            let moved =
                tokio::task::spawn_blocking(move || crate::backup::restore(&from, &l, &a, &s))
                    .await
                    .map_err(|e| Stop::failed(e.to_string()))?
                    .map_err(|e| Stop::failed(e.to_string()).with_output(&out))?;
            if let Some(stopped) = held.stopped.as_mut()
                && let Some(first) = moved.first()
            {
                stopped.data.push((first.clone(), live.clone()));
            }
            out.push_str(&format!("{}: restored from {}\n", b.file, b.path));
            for m in moved {
                out.push_str(&format!("  current data kept at {}\n", m.display()));
            }
        }
        state.proxy.set_maintenance(self.maintenance_message(env));
        Ok(((), out))
    }

    /// A rollback with `--restore-data` failed after stopping the serving release: its data
    /// goes back and it starts again.
    pub(super) async fn undo_restore(&self, state: &EnvState, stopped: Stopped) {
        let env = &state.env.name;
        for (aside, live) in &stopped.data {
            let tmp = format!("{}.failed-restore", live.display());
            let _ = std::fs::rename(live, &tmp);
            if let Err(e) = crate::backup::put_back(aside, live) {
                tracing::error!(env = %env, file = %live.display(), error = %e, "cannot put the data back");
            }
        }
        if let Some(active) = self.start_again(state, &stopped.release).await {
            if let Some(other) = state.activate(active).await {
                self.retire(other).await;
            }
            self.run_workers(state, &stopped.release, false).await;
        }
        state.proxy.set_maintenance(self.maintenance_message(env));
    }

    /// The stored maintenance message of `env`, if maintenance is on.
    pub(super) fn maintenance_message(&self, env: &str) -> Option<String> {
        self.store
            .maintenance()
            .ok()?
            .into_iter()
            .find(|m| m.environment == env)
            .map(|m| m.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(name: &str, version: &str) -> Release {
        Release {
            id: 0,
            environment: "staging".into(),
            name: name.into(),
            version: version.into(),
            commit_sha: "0".repeat(40),
            digest: Some("sha256:x".into()),
            status: "good".into(),
            created_at: String::new(),
        }
    }

    #[test]
    fn a_rollback_target_is_named_by_release_or_by_a_version_naming_one() {
        let all = [
            release("main-aaaaaaa", "main"),
            release("main-bbbbbbb", "main"),
            release("v1.0.0-ccccccc", "v1.0.0"),
            release("main-ddddddd", "main"),
        ];
        let usable: Vec<&Release> = all.iter().collect();
        let pick = |to: &str, serving: Option<&str>| {
            pick_release("staging", &usable, to, serving).map(|r| r.name)
        };
        assert_eq!(
            pick("main-bbbbbbb", Some("main-ddddddd")).unwrap(),
            "main-bbbbbbb"
        );
        assert_eq!(
            pick("v1.0.0", Some("main-ddddddd")).unwrap(),
            "v1.0.0-ccccccc"
        );
        let err = pick("main", Some("main-ddddddd")).unwrap_err().to_string();
        assert!(
            err.contains("main names 2 releases in staging: main-bbbbbbb, main-aaaaaaa")
                && err.contains("--to <release>"),
            "{err}"
        );
        // the version of the serving release alone: that one, which is then refused
        assert_eq!(
            pick("v1.0.0", Some("v1.0.0-ccccccc")).unwrap(),
            "v1.0.0-ccccccc"
        );
        let err = pick("v9.9.9", None).unwrap_err().to_string();
        assert!(err.contains("no built release v9.9.9 in staging"), "{err}");
        assert!(err.contains("main-ddddddd, v1.0.0-ccccccc"), "{err}");
    }
}

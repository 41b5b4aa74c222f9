//! What a deployment keeps: the backup step's snapshots of the shared data before start, the
//! release's status, and the pruning of old releases and backups once it succeeds.

use std::time::Instant;

use super::steps::Stop;
use super::{Engine, EnvState};
use crate::release::Resolved;

impl Engine {
    /// The backup step: each `backup` file of the shared dir snapshotted before start.
    pub(super) async fn backup(
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

    pub(super) fn mark_release(&self, env: &str, name: &str, status: &str) {
        if let Err(e) = self.store.set_release_status(env, name, status, None) {
            tracing::error!(env, release = name, error = %e, "cannot record release status");
        }
    }

    /// Removes releases beyond `keep_releases`, oldest first by the order they were made,
    /// never the one serving or `keep`. Backups are pruned on their own (`prune_backups`).
    pub(super) fn prune(&self, env: &str, keep: &str, images: &mut Vec<String>) -> String {
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
            images.extend(r.digest.filter(|_| self.runtime.uses_images()));
            excess -= 1;
        }
        out
    }

    /// Removes the images of pruned releases that no release kept in any environment is:
    /// production's release is staging's image too.
    pub(super) async fn prune_images(&self, images: Vec<String>) -> String {
        let mut out = String::new();
        for image in images {
            if self.store.digest_in_use(&image).unwrap_or(true) {
                continue;
            }
            let short = crate::runtime::container::short(&image);
            match self.runtime.remove_image(&image).await {
                Ok(()) => out.push_str(&format!("removed image {short}\n")),
                Err(e) => out.push_str(&format!("could not remove image {short}: {e}\n")),
            }
        }
        out
    }

    /// Removes the backups of all but the newest `keep_backups` deployments that took
    /// some, whether or not their releases are still kept.
    pub(super) fn prune_backups(&self, env: &str) -> String {
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

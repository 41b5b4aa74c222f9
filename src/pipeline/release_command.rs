//! The release step: `[app] release` (migrations, typically) run once per deploy in the new
//! release, after backup and before start, exactly as an instance of the release runs (the
//! spec `start` uses: user, confinement, variables, `env`, `env_file`; a container of the
//! release's image with a container runtime). A failure stops the deploy before anything
//! started: the old release keeps serving. ferry does not put the backups back by itself
//! (the release serving kept writing meanwhile): the step's output names them and says how.

use std::path::Path;

use super::steps::{Stop, instance_vars};
use super::{Engine, EnvState};

/// Which release the step runs for.
pub(super) struct ReleaseOf<'a> {
    pub dir: &'a Path,
    pub name: &'a str,
    pub version: &'a str,
    pub commit: &'a str,
}

impl Engine {
    /// The release step, or its skip when no release command is configured.
    pub(super) async fn release_step(
        &self,
        id: i64,
        state: &EnvState,
        release: ReleaseOf<'_>,
    ) -> Result<(), Stop> {
        let Some(command) = self.config.app.release.clone() else {
            self.skip(id, "release", "no release command configured");
            return Ok(());
        };
        let env = &state.env.name;
        self.step(
            id,
            "release",
            self.release_command(id, state, &release, &command),
        )
        .await
        .inspect_err(|_| {
            // a rollback's target ran well before: one failed migration does not make it bad
            // (it stays what `ferry rollback` goes back to)
            if self.store.deployment(id).is_ok_and(|d| d.kind == "deploy") {
                self.mark_release(env, release.name, "bad");
            }
        })
    }

    async fn release_command(
        &self,
        id: i64,
        state: &EnvState,
        release: &ReleaseOf<'_>,
        command: &str,
    ) -> Result<((), String), Stop> {
        let vars = instance_vars(state, release.version, release.commit);
        let spec = self
            .instance_spec(state, release.dir, vars, release.name)
            .await
            .map_err(Stop::failed)?;
        let timeout = self.config.app.release_timeout;
        let mut out = format!("$ {command}\n");
        // recorded, so a ferry that dies meanwhile leaves nothing running behind
        let record = |task: &crate::runtime::Instance| {
            if let Some(pid) = task.pid()
                && let Some(at) = crate::runtime::process_start_time(pid)
                && let Err(e) = self.store.command_started(id, pid, at)
            {
                tracing::warn!(id, pid, error = %e, "cannot record the running release command");
            }
        };
        let result = self
            .runtime
            .run_task(&spec, command, timeout, &state.log, record)
            .await;
        let _ = self.store.commands_ended(id);
        let task = result.map_err(|e| Stop::failed(e.to_string()).with_output(&out))?;
        for line in &task.lines {
            out.push_str(line);
            out.push('\n');
        }
        if task.success() {
            out.push_str(&format!("`{command}` done\n"));
            return Ok(((), out));
        }
        let serving = state.active_release().await;
        out.push_str(&self.backups_note(id, &state.env.name));
        let outcome = task.outcome(timeout);
        let message = match &serving {
            Some(s) => format!("`{command}` {outcome}; {s} keeps serving"),
            None => format!("`{command}` {outcome}; nothing was started"),
        };
        // the last line is what the CLI shows for the step
        out.push_str(&message);
        out.push('\n');
        Err(Stop::failed(message).with_output(&out))
    }

    /// What to do about data a failed release command may have changed: the backups this
    /// deployment took just before it, and how to put one back.
    fn backups_note(&self, id: i64, env: &str) -> String {
        let backups = self.store.backups(env, Some(id), None).unwrap_or_default();
        if backups.is_empty() {
            return "no backup was taken before it (no `backup` files configured, or none there yet): a command that committed part of its changes left them in place\n".into();
        }
        let shared = self.config.env_dir(env).join("shared");
        let mut out = String::from(
            "if it committed part of its changes before failing, they are still in the data; the backups taken just before it:\n",
        );
        for b in &backups {
            out.push_str(&format!("  {}: {}\n", b.file, b.path));
        }
        let first = &backups[0];
        out.push_str(&format!(
            "ferry does not put them back by itself: the release serving kept writing meanwhile. To put one back: `ferry maintenance {env} on`, then as the environment's user `sqlite3 {} \".restore '{}'\"` (other files: copy it over), then `ferry maintenance {env} off`\n",
            shared.join(&first.file).display(),
            first.path
        ));
        out
    }
}

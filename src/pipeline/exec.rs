//! `ferry exec`: a command in the serving release's environment — its dir, its user, the
//! variables and secrets an instance of it starts with (the same spec), confined like every
//! command (`ferry confine`); with a container runtime, `docker exec` into the serving
//! container (which runs as the instance's user, with its variables and secrets file).

use super::steps::instance_vars;
use super::{Engine, EngineError};

/// The process types `ferry exec --process` accepts.
pub const EXEC_PROCESSES: &[&str] = &["web"];

/// A command `ferry exec` runs, ready to spawn (with pipes, or on a pty).
pub struct ExecCommand {
    pub command: tokio::process::Command,
    /// The command as the audit trail shows it: shell-quoted, known secrets masked.
    pub shown: String,
    /// The release it runs in.
    pub release: String,
}

impl Engine {
    /// The command `argv` of `ferry exec` in the release serving `env`, beside its `process`
    /// (`web`). Refused when nothing serves there.
    pub async fn exec_command(
        &self,
        env: &str,
        process: &str,
        argv: &[String],
        tty: bool,
    ) -> Result<ExecCommand, EngineError> {
        let state = self.env(env)?;
        if argv.first().is_none_or(|c| c.is_empty()) {
            return Err(EngineError::Invalid(
                "ferry exec needs a command: ferry exec <env> -- <command> [args…]".into(),
            ));
        }
        if !EXEC_PROCESSES.contains(&process) {
            return Err(EngineError::Invalid(format!(
                "unknown process type \"{process}\": {env} runs {}",
                EXEC_PROCESSES.join(", ")
            )));
        }
        let (release, port, deployed_at, container) = {
            let active = state.active.lock().await;
            match active.as_ref().filter(|a| a.instance.exited().is_none()) {
                Some(a) => (
                    a.release.clone(),
                    a.instance.port,
                    a.deployed_at.clone(),
                    a.instance.container_id().map(str::to_string),
                ),
                None => {
                    return Err(EngineError::Conflict(format!(
                        "nothing is serving {env}, so there is no release to run a command in: deploy one first (ferry deploy {env} <ref>)"
                    )));
                }
            }
        };
        let shown = self.redactor.redact(&shell_words(argv));
        if self.runtime.uses_images() {
            let container = container.ok_or_else(|| {
                EngineError::Conflict(format!("the instance serving {env} has no container"))
            })?;
            // the container runs as the instance's user, with its variables and secrets file
            let mut command = crate::docker::Docker::new().command();
            command.arg("exec").arg("-i");
            if tty {
                command.arg("-t");
            }
            command.arg("--").arg(&container).args(argv);
            return Ok(ExecCommand {
                command,
                shown,
                release,
            });
        }
        let row = self.store.release(env, &release)?.ok_or_else(|| {
            EngineError::Conflict(format!("release {release} of {env} is not on record"))
        })?;
        let dir = self.config.env_dir(env).join("releases").join(&release);
        let vars = instance_vars(state, &row.version, &row.commit_sha);
        let mut spec = self
            .instance_spec(state, &dir, vars, &release)
            .await
            .map_err(EngineError::Conflict)?;
        // the serving instance's own PORT and DEPLOYED_AT, not a new instance's
        for (key, value) in spec.vars.iter_mut() {
            match key.as_str() {
                "PORT" => *value = port.to_string(),
                "DEPLOYED_AT" => value.clone_from(&deployed_at),
                _ => {}
            }
        }
        let script = format!("exec {}", shell_words(argv));
        let mut command = spec.confinement.command(&script, &spec.vars);
        command.envs(spec.secrets.iter());
        command.current_dir(&spec.release_dir);
        Ok(ExecCommand {
            command,
            shown,
            release,
        })
    }
}

/// `argv` as one shell command line: each word quoted unless it is plain.
pub fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|word| {
            let plain = !word.is_empty()
                && word
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
            if plain {
                word.clone()
            } else {
                format!("'{}'", word.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words_quote_what_a_shell_would_read_otherwise() {
        let argv: Vec<String> = ["python", "manage.py", "it's", "a b", "$HOME", ""]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            shell_words(&argv),
            r#"python manage.py 'it'\''s' 'a b' '$HOME' ''"#
        );
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf '%s|' {}", shell_words(&argv[2..])))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "it's|a b|$HOME||");
    }
}

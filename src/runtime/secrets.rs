//! An environment's secrets: the values of its `env_file` and those its `secrets` commands
//! print. They reach the app and are masked everywhere else.
//!
//! A secret's command is the operator's (from the config, never the repository): it runs as
//! ferry's own user with `serve`'s environment (a secret manager's CLI needs the operator's
//! credentials, such as `OP_SERVICE_ACCOUNT_TOKEN`), plus `FERRY_APP` and
//! `FERRY_ENVIRONMENT`, in the config file's directory, in its own process group, with its
//! timeout. Its stdout, less one trailing newline, is the value; it is never stored and
//! never part of a message, which says at most the last line of its stderr.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::process::Stdio;

use tokio::io::AsyncReadExt;

use super::RuntimeError;
use crate::config::SecretCommand;

/// The most a secret's command may print on stdout.
const MAX_SECRET_BYTES: u64 = 1024 * 1024;
/// The most of its stderr read (what a failure message quotes comes from its last line).
const MAX_STDERR_BYTES: u64 = 64 * 1024;

/// An environment's secret values. `Debug` shows the keys only, never the values.
#[derive(Clone, Default)]
pub struct Secrets {
    vars: BTreeMap<String, String>,
    /// The names whose value came from a command (not from the env file).
    commanded: BTreeSet<String>,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.vars.keys()).finish()
    }
}

impl Secrets {
    /// Reads `KEY=VALUE` lines; blank lines, `#` comments and a leading `export ` are allowed,
    /// and a value in matching quotes loses them.
    pub fn read(path: &Path) -> Result<Secrets, RuntimeError> {
        let text = std::fs::read_to_string(path).map_err(|source| RuntimeError::EnvFile {
            path: path.to_path_buf(),
            source,
        })?;
        let mut vars = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let line = line.strip_prefix("export ").unwrap_or(line);
            let Some((key, value)) = line.split_once('=') else {
                return Err(RuntimeError::EnvFileSyntax {
                    path: path.to_path_buf(),
                    line: i + 1,
                });
            };
            let key = key.trim();
            if key.is_empty() || key.contains(char::is_whitespace) {
                return Err(RuntimeError::EnvFileSyntax {
                    path: path.to_path_buf(),
                    line: i + 1,
                });
            }
            let value = value.trim();
            let unquoted = ['"', '\'']
                .iter()
                .find_map(|q| value.strip_prefix(*q).and_then(|v| v.strip_suffix(*q)))
                .unwrap_or(value);
            vars.insert(key.to_string(), unquoted.to_string());
        }
        Ok(Secrets {
            vars,
            commanded: BTreeSet::new(),
        })
    }

    /// Sets `name` to a value a command printed; it wins over the env file's.
    pub fn insert_from_command(&mut self, name: &str, value: String) {
        self.vars.insert(name.to_string(), value);
        self.commanded.insert(name.to_string());
    }

    /// Every variable and its value (the app's environment).
    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.vars.iter()
    }

    /// True when there is no secret at all.
    pub fn is_empty(&self) -> bool {
        self.vars.is_empty()
    }

    /// The values, for [`crate::sandbox::Redactor`] to mask.
    pub fn values(&self) -> impl Iterator<Item = &str> {
        self.vars.values().map(String::as_str)
    }

    /// The secrets file a container instance reads: the env file byte for byte (quoting and
    /// all, as the app's dotenv reader expects it), then a `NAME=value` line per value from a
    /// command — bare when it is made of plain characters, else in single quotes, which
    /// shells and dotenv readers both take literally (so a value holding a single quote is
    /// refused). Without an env file, every value that way.
    pub fn file_bytes(&self, env_file: Option<&Path>) -> Result<Vec<u8>, RuntimeError> {
        let mut out = Vec::new();
        let lines: Vec<&String> = match env_file {
            Some(path) => {
                out = std::fs::read(path).map_err(|source| RuntimeError::EnvFile {
                    path: path.to_path_buf(),
                    source,
                })?;
                if !out.is_empty() && !out.ends_with(b"\n") {
                    out.push(b'\n');
                }
                self.commanded.iter().collect()
            }
            None => self.vars.keys().collect(),
        };
        for name in lines {
            let value = &self.vars[name];
            let plain = !value.is_empty()
                && value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.,:/@%+=".contains(c));
            let line = if plain {
                format!("{name}={value}\n")
            } else if value.contains('\'') {
                return Err(RuntimeError::SecretCommand {
                    name: name.clone(),
                    why: "its value holds a single quote, which cannot be written to a container's secrets file so that shells and dotenv readers read it alike".into(),
                });
            } else {
                format!("{name}='{value}'\n")
            };
            out.extend_from_slice(line.as_bytes());
        }
        Ok(out)
    }
}

/// Runs `secret`'s command and returns what it printed, less one trailing newline (see the
/// module's documentation for who runs it and how). `vars` are added to its environment.
/// Errors never hold what it printed on stdout.
pub async fn run_command(
    secret: &SecretCommand,
    vars: &[(&str, &str)],
) -> Result<String, RuntimeError> {
    let fail = |why: String| RuntimeError::SecretCommand {
        name: secret.name.clone(),
        why,
    };
    let mut child = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(&secret.command)
        .current_dir(&secret.dir)
        .envs(vars.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(format!("cannot start `{}`: {e}", secret.command)))?;
    let pid = child.id().unwrap_or_default();
    let mut stdout = child
        .stdout
        .take()
        .expect("piped")
        .take(MAX_SECRET_BYTES + 1);
    let mut stderr = child.stderr.take().expect("piped").take(MAX_STDERR_BYTES);
    let run = async {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let (o, e, status) = tokio::join!(
            stdout.read_to_end(&mut out),
            stderr.read_to_end(&mut err),
            child.wait()
        );
        o.and(e).and(status).map(|status| (status, out, err))
    };
    let (status, out, err) = match tokio::time::timeout(secret.timeout, run).await {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => return Err(fail(format!("`{}`: {e}", secret.command))),
        Err(_) => {
            // the whole group: `sh -c` may have started the real command as a child
            super::kill_group(pid, nix::sys::signal::Signal::SIGKILL);
            return Err(fail(format!(
                "`{}` did not finish within {}",
                secret.command,
                crate::config::format_duration(secret.timeout)
            )));
        }
    };
    if !status.success() {
        let said = String::from_utf8_lossy(&err);
        let last = said.lines().rev().find(|l| !l.trim().is_empty());
        let mut last: String = last.unwrap_or("").trim().chars().take(200).collect();
        if !last.is_empty() {
            last = format!(": {last}");
        }
        let how = match status.code() {
            Some(code) => format!("exited with status {code}"),
            None => "was killed by a signal".to_string(),
        };
        return Err(fail(format!("`{}` {how}{last}", secret.command)));
    }
    if out.len() as u64 > MAX_SECRET_BYTES {
        return Err(fail(format!(
            "`{}` printed more than 1 MiB",
            secret.command
        )));
    }
    let mut value = String::from_utf8(out).map_err(|_| {
        fail(format!(
            "`{}` printed bytes that are not UTF-8",
            secret.command
        ))
    })?;
    if value.ends_with('\n') {
        value.pop();
        if value.ends_with('\r') {
            value.pop();
        }
    }
    if value.is_empty() {
        return Err(fail(format!("`{}` printed nothing", secret.command)));
    }
    if value.contains('\0') {
        return Err(fail(format!(
            "`{}` printed a NUL byte, which no variable can hold",
            secret.command
        )));
    }
    Ok(value)
}

/// The values of `names` an instance a previous ferry left running was started with, so
/// what it prints is masked once it is adopted (its commands' values may have changed
/// since): from its environment (`/proc/<pid>/environ`) for a process, from its secrets
/// file for a container. Whatever cannot be read is left out.
pub fn started_with(left: &super::Leftover, names: &[&str]) -> Vec<String> {
    if names.is_empty() {
        return Vec::new();
    }
    if left.container.is_some() {
        let [_, file] = super::container::instance_files(&left.run_dir(), left.port);
        return Secrets::read(&file)
            .map(|s| {
                s.vars
                    .into_iter()
                    .filter(|(k, _)| names.contains(&k.as_str()))
                    .map(|(_, v)| v)
                    .collect()
            })
            .unwrap_or_default();
    }
    let Ok(environ) = std::fs::read(format!("/proc/{}/environ", left.pid)) else {
        return Vec::new();
    };
    environ
        .split(|b| *b == 0)
        .filter_map(|var| {
            let var = String::from_utf8_lossy(var);
            let (k, v) = var.split_once('=')?;
            names.contains(&k).then(|| v.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn secret(command: &str) -> SecretCommand {
        SecretCommand {
            name: "DB_URL".into(),
            command: command.into(),
            timeout: Duration::from_secs(2),
            dir: std::env::temp_dir(),
        }
    }

    #[tokio::test]
    async fn a_command_s_stdout_is_the_value_less_one_newline() {
        let got = run_command(&secret("printf 'a b\\n\\n'"), &[])
            .await
            .unwrap();
        assert_eq!(got, "a b\n");
        let got = run_command(&secret("printf \"$X\""), &[("X", "from-vars")])
            .await
            .unwrap();
        assert_eq!(got, "from-vars");
    }

    #[tokio::test]
    async fn failures_say_why_without_the_stdout() {
        let cases = [
            (
                "echo lea''ked-value; echo nope >&2; exit 5",
                "exited with status 5: nope",
            ),
            ("true", "printed nothing"),
            ("sleep 30", "did not finish within 2s"),
            ("printf '\\377'", "not UTF-8"),
        ];
        for (command, want) in cases {
            let err = run_command(&secret(command), &[])
                .await
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("secret DB_URL: "), "{err}");
            assert!(err.contains(want), "{command}: {err}");
            assert!(!err.contains("leaked-value"), "{err}");
        }
    }

    #[test]
    fn the_container_file_is_the_env_file_then_the_commands_values_quoted() {
        let dir = tempfile::tempdir().unwrap();
        let env_file = dir.path().join(".env");
        std::fs::write(&env_file, "# kept\nA=\"x y\"").unwrap();
        let mut s = Secrets::read(&env_file).unwrap();
        s.insert_from_command("URL", "postgres://u:p@h/db".into());
        s.insert_from_command("PEM", "-----BEGIN-----\nabc $x\n".into());
        let text = String::from_utf8(s.file_bytes(Some(&env_file)).unwrap()).unwrap();
        assert_eq!(
            text,
            "# kept\nA=\"x y\"\nPEM='-----BEGIN-----\nabc $x\n'\nURL=postgres://u:p@h/db\n"
        );
        s.insert_from_command("Q", "it's".into());
        let err = s.file_bytes(Some(&env_file)).unwrap_err().to_string();
        assert!(err.contains("secret Q") && !err.contains("it's"), "{err}");
        assert_eq!(format!("{s:?}"), "{\"A\", \"PEM\", \"Q\", \"URL\"}");
    }
}

//! An environment's `secrets`: variables whose values come from a command of the operator's,
//! such as a secret manager's CLI, run at each start of an instance.
//!
//! ```toml
//! [environments.production]
//! secrets = { DATABASE_URL = { command = "op read op://prod/db/url" } }
//! # or, with a timeout (default 30s):
//! # secrets.DATABASE_URL = { command = "vault kv get -field=url secret/db", timeout = "1m" }
//! ```
//!
//! The command is the operator's (it comes from this file, never from the repository): it
//! runs as ferry's own user with `serve`'s environment, in the config file's directory. See
//! `crate::pipeline` (`secrets.rs`) for how it is run and `crate::runtime::Secrets` for what
//! is done with its value.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::Diagnostic;
use super::duration::HumanDuration;
use super::raw::Fail;

/// How long a secret's command may run when `timeout` is not given.
pub const DEFAULT_SECRET_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest `timeout` accepted.
const MAX_SECRET_TIMEOUT: Duration = Duration::from_secs(600);

/// One variable of `secrets`: its value is what `command` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretCommand {
    /// The variable the app gets.
    pub name: String,
    /// Run with `sh -c`; its stdout, less one trailing newline, is the value.
    pub command: String,
    pub timeout: Duration,
    /// Where it runs: the directory of the config file that names it.
    pub dir: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSecret {
    command: Spanned<String>,
    timeout: Option<Spanned<HumanDuration>>,
}

/// True for a name a shell and every dotenv reader take: a letter or `_`, then letters,
/// digits and `_`.
pub fn valid_secret_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `secrets` of an environment, checked: names a shell takes that neither ferry's own
/// variables nor the environment's `env` set, a command that is not empty, a timeout
/// from 1s to 10m.
pub(super) fn validate(
    raw: BTreeMap<Spanned<String>, RawSecret>,
    env: &BTreeMap<String, String>,
    base: &Path,
    fail: &Fail,
) -> Result<Vec<SecretCommand>, Diagnostic> {
    let mut out = Vec::new();
    for (name, secret) in raw {
        let span = name.span();
        let name = name.into_inner();
        if !valid_secret_name(&name) {
            return Err(fail(
                span,
                format!("secret name `{name}` is not a variable name"),
                "use letters, digits and '_', starting with a letter, like DATABASE_URL",
            ));
        }
        if super::RESERVED_VARS.contains(&name.as_str()) {
            return Err(fail(
                span,
                format!("`{name}` is set by ferry for every instance"),
                "give the secret another name",
            ));
        }
        if env.contains_key(&name) {
            return Err(fail(
                span,
                format!("`{name}` is in both `env` and `secrets`"),
                "keep it in one of them: `secrets` for a value from a command, `env` for a plain value",
            ));
        }
        let command = secret.command.get_ref().trim();
        if command.is_empty() {
            return Err(fail(
                secret.command.span(),
                format!("the command of secret `{name}` is empty"),
                "write the command that prints the value, like \"op read op://prod/db/url\"",
            ));
        }
        let timeout = match &secret.timeout {
            None => DEFAULT_SECRET_TIMEOUT,
            Some(t) => {
                let d = t.get_ref().0;
                if d < Duration::from_secs(1) || d > MAX_SECRET_TIMEOUT {
                    return Err(fail(
                        t.span(),
                        format!(
                            "timeout {} of secret `{name}` is out of range",
                            super::format_duration(d)
                        ),
                        "write a timeout from \"1s\" to \"10m\" (default \"30s\")",
                    ));
                }
                d
            }
        };
        out.push(SecretCommand {
            name,
            command: command.to_string(),
            timeout,
            dir: base.to_path_buf(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(env_keys: &str, webhooks: &str) -> Result<super::super::Config, String> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("repo/.git")).unwrap();
        let text = format!(
            "[app]\nname = \"demo\"\nrepo = \"repo\"\nstart = \"./run\"\n\n\
             [environments.staging]\nlisten = \"127.0.0.1:8081\"\n{env_keys}\n{webhooks}\n"
        );
        let path = dir.path().join("ferry.toml");
        super::super::Config::parse(&path, &text).map_err(|e| e.to_string())
    }

    #[test]
    fn secrets_from_commands_get_their_defaults_and_mistakes_are_located() {
        let config = parse(
            "secrets = { DATABASE_URL = { command = \"op read op://prod/db/url\" }, \
             KEY = { command = \"cat key\", timeout = \"1m\" } }",
            "[webhooks]\nwait_lock = \"10m\"",
        )
        .unwrap();
        let secrets = &config.environments[0].secrets;
        assert_eq!(secrets.len(), 2);
        assert_eq!(secrets[0].name, "DATABASE_URL");
        assert_eq!(secrets[0].command, "op read op://prod/db/url");
        assert_eq!(secrets[0].timeout, DEFAULT_SECRET_TIMEOUT);
        assert_eq!(secrets[1].timeout, Duration::from_secs(60));
        assert_eq!(config.webhooks.wait_lock, Some(Duration::from_secs(600)));
        assert_eq!(parse("", "").unwrap().webhooks.wait_lock, None);

        for (keys, want) in [
            (
                "secrets = { \"A-B\" = { command = \"x\" } }",
                "is not a variable name",
            ),
            (
                "secrets = { PORT = { command = \"x\" } }",
                "is set by ferry",
            ),
            (
                "env = { A = \"1\" }\nsecrets = { A = { command = \"x\" } }",
                "in both `env` and `secrets`",
            ),
            ("secrets = { A = { command = \" \" } }", "is empty"),
            (
                "secrets = { A = { command = \"x\", timeout = \"1h\" } }",
                "out of range",
            ),
            ("secrets = { A = { cmd = \"x\" } }", "unknown field"),
            ("secrets = { A = \"op read x\" }", ""),
        ] {
            let err = parse(keys, "").unwrap_err();
            assert!(err.contains(want), "{keys}: {err}");
            assert!(err.contains("ferry.toml:"), "{keys}: {err}");
        }
        let err = parse("", "[webhooks]\nwait_lock = \"2d\"").unwrap_err();
        assert!(err.contains("longer than a day"), "{err}");
    }

    #[test]
    fn secret_names_are_shell_variable_names() {
        for ok in ["DATABASE_URL", "_X", "a1"] {
            assert!(valid_secret_name(ok), "{ok}");
        }
        for bad in ["", "1A", "A-B", "A B", "A=B", "É"] {
            assert!(!valid_secret_name(bad), "{bad}");
        }
    }
}

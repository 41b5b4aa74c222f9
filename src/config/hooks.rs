//! `[app] release` (the release command, e.g. migrations) and `[hooks]` (commands run on the
//! ferry host around a deploy).
//!
//! ```toml
//! [app]
//! release = "python -m app.migrate"   # once per deploy, after backup, before start
//! release_timeout = "5m"              # default: command_timeout
//!
//! [hooks]
//! pre_deploy = "./scripts/check-capacity"     # a command, or a list run in order
//! post_deploy = ["./scripts/announce"]
//! on_failure = "./scripts/page-oncall"
//! on_rollback = "./scripts/announce-rollback"
//! secrets = false                             # true: hooks get env and env_file too
//! ```

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::Diagnostic;
use super::duration::HumanDuration;
use super::raw::Fail;

/// One command or a list of them, as written.
#[derive(Deserialize)]
#[serde(untagged, expecting = "a command (a string) or a list of commands")]
enum RawCommands {
    One(String),
    Many(Vec<String>),
}

/// `[hooks]` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawHooks {
    pre_deploy: Option<Spanned<RawCommands>>,
    post_deploy: Option<Spanned<RawCommands>>,
    on_failure: Option<Spanned<RawCommands>>,
    on_rollback: Option<Spanned<RawCommands>>,
    secrets: Option<bool>,
}

/// When a hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// After build and test, before backup: a failure refuses the deploy.
    PreDeploy,
    /// After a deploy succeeded.
    PostDeploy,
    /// After a deploy or rollback failed (not one refused by a gate).
    OnFailure,
    /// After a monitor breach switched traffic back, or a rollback succeeded.
    OnRollback,
}

impl Hook {
    /// Its key in `[hooks]`, also the name of the step that runs it.
    pub fn name(self) -> &'static str {
        match self {
            Hook::PreDeploy => "pre_deploy",
            Hook::PostDeploy => "post_deploy",
            Hook::OnFailure => "on_failure",
            Hook::OnRollback => "on_rollback",
        }
    }
}

/// `[hooks]`: commands run on the ferry host, in the release dir, as the environment's user.
#[derive(Debug, Clone, Default)]
pub struct Hooks {
    pub pre_deploy: Vec<String>,
    pub post_deploy: Vec<String>,
    pub on_failure: Vec<String>,
    pub on_rollback: Vec<String>,
    /// The environment's `env` and `env_file` reach the hooks too (off: nothing secret).
    pub secrets: bool,
}

impl Hooks {
    /// The commands of `hook`, in order (empty: not configured).
    pub fn commands(&self, hook: Hook) -> &[String] {
        match hook {
            Hook::PreDeploy => &self.pre_deploy,
            Hook::PostDeploy => &self.post_deploy,
            Hook::OnFailure => &self.on_failure,
            Hook::OnRollback => &self.on_rollback,
        }
    }
}

pub(super) fn validate(raw: RawHooks, fail: &Fail) -> Result<Hooks, Diagnostic> {
    let list = |value: Option<Spanned<RawCommands>>, key: &str| {
        let Some(value) = value else {
            return Ok(Vec::new());
        };
        let span = value.span();
        let commands = match value.into_inner() {
            RawCommands::One(c) => vec![c],
            RawCommands::Many(list) => list,
        };
        if commands.is_empty() || commands.iter().any(|c| c.trim().is_empty()) {
            return Err(fail(
                span,
                format!("[hooks] {key} has an empty command"),
                "write a command, like \"./scripts/notify\", or leave the key out",
            ));
        }
        Ok(commands)
    };
    Ok(Hooks {
        pre_deploy: list(raw.pre_deploy, "pre_deploy")?,
        post_deploy: list(raw.post_deploy, "post_deploy")?,
        on_failure: list(raw.on_failure, "on_failure")?,
        on_rollback: list(raw.on_rollback, "on_rollback")?,
        secrets: raw.secrets.unwrap_or(false),
    })
}

/// `[app] release` and `release_timeout`: the command, if any, and its limit
/// (`command_timeout` unless set).
pub(super) fn release_command(
    command: Option<Spanned<String>>,
    timeout: Option<HumanDuration>,
    command_timeout: Duration,
    fail: &Fail,
) -> Result<(Option<String>, Duration), Diagnostic> {
    let command = match command {
        None => None,
        Some(c) if c.get_ref().trim().is_empty() => {
            return Err(fail(
                c.span(),
                "[app] release is empty".into(),
                "write the command that prepares the data for a release, like \"python -m app.migrate\", or leave the key out",
            ));
        }
        Some(c) => Some(c.into_inner()),
    };
    Ok((command, timeout.map_or(command_timeout, |t| t.0)))
}

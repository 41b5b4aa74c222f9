//! The `ferry` command line: one module per subcommand, each with its args and `run`.
//!
//! Exit status: 0 success, 1 the operation failed or was refused (or the daemon is not
//! running), 2 usage or config error.

// Everything the CLI prints goes through `out!`/`outln!` (println! is refused here by
// clippy.toml): a reader that goes away (`ferry history --json | head -n 1`) ends the
// command quietly, with success, instead of a "Broken pipe" panic.
#![deny(clippy::disallowed_macros)]

/// `print!` to stdout through [`terminal::out`].
macro_rules! out {
    ($($arg:tt)*) => { $crate::cli::terminal::out(format_args!($($arg)*)) };
}

/// `println!` to stdout through [`terminal::out`].
macro_rules! outln {
    () => { $crate::cli::terminal::out(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::cli::terminal::out(format_args!("{}\n", format_args!($($arg)*))) };
}

pub mod agent;
mod check;
mod client;
pub mod confine;
mod demo;
mod deploy;
mod docs;
mod exec;
mod init;
mod install;
mod logs;
mod notify;
mod release;
mod restart;
mod rollout;
mod safety;
mod secrets;
mod serve;
mod show;
mod table;
mod terminal;
mod token;
mod upgrade;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use crate::config::{Config, ServerConfig};

pub use client::{ApiClient, ClientError};
pub use serve::wait_for_stop;

/// The config file read when `-c` is not given.
pub const DEFAULT_CONFIG: &str = "ferry.toml";

/// ferry: deploy a git ref to an environment, verify it, promote the same bytes.
#[derive(Debug, Parser)]
#[command(name = "ferry", version, about, disable_help_subcommand = true)]
pub struct Cli {
    /// The config file: an app's `ferry.toml`, or a server config listing apps (`apps =
    /// [...]`); several app configs may be given (`-c api.toml -c admin.toml`).
    #[arg(
        short = 'c',
        long = "config",
        global = true,
        default_value = DEFAULT_CONFIG,
        action = clap::ArgAction::Append
    )]
    pub config: Vec<PathBuf>,
    /// The app to act on, when ferry serves several (default: the only one).
    #[arg(short = 'a', long = "app", global = true, env = "FERRY_APP")]
    pub app: Option<String>,
    /// The daemon's API address, instead of `[server] listen` from the config.
    #[arg(long, global = true, env = "FERRY_SERVER")]
    pub server: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a commented ferry.toml to start from.
    Init(init::Init),
    /// Validate the config and print a summary.
    Check(check::Check),
    /// Run the daemon: API, proxies and instances.
    Serve(serve::Serve),
    /// Write service files: `install systemd` (a service and its socket units).
    Install(install::Install),
    /// Replace the running serve with a new binary's (`serve --takeover`): no connection is
    /// refused, the apps keep running.
    Upgrade(upgrade::Upgrade),
    /// Deploy a tag, branch or commit to an environment and follow it live.
    Deploy(deploy::Deploy),
    /// Deploy a verified release tag to the environment that requires it (e.g. production).
    Promote(safety::Promote),
    /// Every gate (tag, promotion, checks, freeze, lock, approval) and the steps a deploy
    /// would run; changes nothing.
    Plan(safety::PlanArgs),
    /// Go back to the previous good release (or --to a version) without rebuilding.
    Rollback(safety::Rollback),
    /// Run a command in the serving release's dir, as its user, with its variables and
    /// secrets: interactive on a terminal (a console), else piped; audited.
    Exec(exec::Exec),
    /// Start the serving release again with no dropped request (new instance, health,
    /// switch, drain): after rotating a secret, say.
    Restart(restart::Restart),
    /// Act on the canary rollout under way: promote (the next step now, or --full to 100%),
    /// pause, or abort (every client back on the previous release).
    Rollout(rollout::RolloutArgs),
    /// Approve a deployment waiting for approval.
    Approve(safety::Approve),
    /// Sign off the version running on an environment (the QA sign-off promotion needs).
    Verify(safety::Verify),
    /// Record a CI check result for a commit (for `require_checks`).
    CheckReport(safety::CheckReportArgs),
    /// Lock an environment: deploys are refused until it is unlocked.
    Lock(safety::Lock),
    /// Remove a lock taken with `ferry lock`.
    Unlock(safety::Unlock),
    /// Serve a maintenance page (503, Retry-After) instead of the app, or stop doing so.
    Maintenance(safety::Maintenance),
    /// A compose app's accessories (its other services: databases, caches): up, down,
    /// restart, logs.
    Accessories(safety::Accessories),
    /// Each environment's version, commit, deploy time and health.
    Status(show::Status),
    /// Deployments of one environment, newest first.
    History(show::History),
    /// One deployment with its steps and their output.
    Show(show::Show),
    /// The app log of an environment.
    Logs(logs::Logs),
    /// Cut a release of the app: CHANGELOG.md section from the commits since the last tag,
    /// committed, and an annotated tag (run in the app's working copy).
    Release(release::Release),
    /// Notifications (`[[notify]]`): the latest deliveries (`list`), or a sample message
    /// through one notifier (`test NAME`).
    Notify(notify::NotifyArgs),
    /// API tokens: create (shown once), list, revoke.
    Token(token::TokenArgs),
    /// An environment's secrets: set or unset one in its env file (the value read from
    /// stdin), or list their names and where each comes from.
    Secrets(secrets::SecretsArgs),
    /// Try ferry on a sample app: deploys, a zero-downtime switch and a refused broken release.
    Demo(demo::Demo),
    /// Print a shell completion script: `ferry completions bash > /etc/bash_completion.d/ferry`.
    Completions(docs::Completions),
    /// Print the man page (`ferry man | man -l -`), or write every page with --dir.
    Man(docs::Man),
    /// The sample app the demo deploys (serves $PORT).
    #[command(hide = true)]
    SampleApp,
    /// Starts a build, test or app command confined to its environment (used by `serve`).
    #[command(hide = true)]
    Confine(confine::Confine),
    /// The agent on a host of an environment with `servers` (ssh runs it): the relay to
    /// the host's daemon, the daemon (--daemon), or `receive` of a release.
    #[command(hide = true)]
    Agent(agent::Agent),
}

/// Help for arguments many commands share, where their own definition gives none.
const SHARED_HELP: &[(&str, &str)] = &[
    ("environment", "The environment (or slot, like staging-2)."),
    ("json", "Print JSON."),
    (
        "no_wait",
        "Return at once with the deployment's id instead of following it.",
    ),
    (
        "git_ref",
        "A tag, branch or commit sha of the app's repository.",
    ),
    ("state", "on or off."),
];

/// Subcommands that never talk to the daemon (`--server` does not apply), and those that
/// read no config either (`--config` does not apply).
const LOCAL_ONLY: &[&str] = &[
    "init",
    "check",
    "serve",
    "upgrade",
    "install",
    "token",
    "release",
    "demo",
    "completions",
    "man",
];
const NO_CONFIG: &[&str] = &["release", "demo", "completions", "man"];

/// The command line as `ferry` parses it: every argument with help text, and each
/// subcommand's help listing only the global options that apply to it.
pub fn command() -> clap::Command {
    fn fill(cmd: clap::Command) -> clap::Command {
        let names: Vec<String> = cmd
            .get_subcommands()
            .map(|c| c.get_name().to_string())
            .collect();
        let mut cmd = cmd.mut_args(|a| match a.get_help() {
            Some(_) => a,
            None => match SHARED_HELP
                .iter()
                .find(|(id, _)| a.get_id().as_str() == *id)
            {
                Some((_, help)) => a.help(*help),
                None => a,
            },
        });
        for name in names {
            cmd = cmd.mut_subcommand(&name, fill);
        }
        cmd
    }
    // a global option a subcommand already has is not copied into it: a hidden one of the
    // same name, accepted and ignored, keeps it out of that subcommand's help
    let hidden = |id: &'static str| clap::Arg::new(id).long(id).hide(true);
    let mut cmd = fill(Cli::command());
    for name in LOCAL_ONLY {
        cmd = cmd.mut_subcommand(name, |c| c.arg(hidden("server")));
    }
    for name in NO_CONFIG {
        cmd = cmd.mut_subcommand(name, |c| {
            c.arg(
                hidden("config")
                    .short('c')
                    .value_parser(clap::value_parser!(PathBuf)),
            )
        });
    }
    cmd
}

/// A command's failure, with the exit status it maps to.
#[derive(Debug)]
pub enum Failure {
    /// The operation failed or was refused: exit 1.
    Failed(String),
    /// Bad usage or config: exit 2.
    Usage(String),
    /// Exit with this status and say nothing (`ferry exec`: the command's own status).
    Status(u8),
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Failure {
        match e {
            ClientError::Api {
                status: 400 | 404, ..
            } => Failure::Usage(e.to_string()),
            e => Failure::Failed(e.to_string()),
        }
    }
}

impl From<crate::config::ConfigError> for Failure {
    fn from(e: crate::config::ConfigError) -> Failure {
        Failure::Usage(format!("error: {e}"))
    }
}

pub type CmdResult = Result<(), Failure>;

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> ExitCode {
    let result = match &cli.command {
        Command::Init(args) => init::run(&cli, args),
        Command::Check(args) => check::run(&cli, args),
        Command::Serve(args) => serve::run(&cli, args).await,
        Command::Upgrade(args) => upgrade::run(&cli, args).await,
        Command::Install(args) => install::run(&cli, args),
        Command::Deploy(args) => deploy::run(&cli, args).await,
        Command::Promote(args) => safety::promote(&cli, args).await,
        Command::Plan(args) => safety::plan(&cli, args).await,
        Command::Rollback(args) => safety::rollback(&cli, args).await,
        Command::Restart(args) => restart::run(&cli, args).await,
        Command::Exec(args) => exec::run(&cli, args).await,
        Command::Rollout(args) => rollout::run(&cli, args).await,
        Command::Approve(args) => safety::approve(&cli, args).await,
        Command::Verify(args) => safety::verify(&cli, args).await,
        Command::CheckReport(args) => safety::check_report(&cli, args).await,
        Command::Lock(args) => safety::lock(&cli, args).await,
        Command::Unlock(args) => safety::unlock(&cli, args).await,
        Command::Maintenance(args) => safety::maintenance(&cli, args).await,
        Command::Accessories(args) => safety::accessories(&cli, args).await,
        Command::Status(args) => show::status(&cli, args).await,
        Command::History(args) => show::history(&cli, args).await,
        Command::Notify(args) => notify::run(&cli, args).await,
        Command::Show(args) => show::show(&cli, args).await,
        Command::Logs(args) => logs::run(&cli, args).await,
        Command::Token(args) => token::run(&cli, args),
        Command::Secrets(args) => secrets::run(&cli, args),
        Command::Release(args) => release::run(args),
        Command::Demo(args) => demo::run(args).await,
        Command::Completions(args) => docs::completions(args),
        Command::Man(args) => docs::man(args),
        Command::Confine(args) => {
            // main.rs runs it before any thread starts; here only if called as a library
            return confine::run(args);
        }
        Command::Agent(args) => agent::run(&cli, args).await,
        Command::SampleApp => crate::sample_app::run()
            .await
            .map_err(|e| Failure::Failed(format!("sample app: {e}"))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Failed(message)) => {
            eprintln!("{message}");
            ExitCode::from(1)
        }
        Err(Failure::Usage(message)) => {
            eprintln!("{message}");
            ExitCode::from(2)
        }
        Err(Failure::Status(code)) => ExitCode::from(code),
    }
}

impl Cli {
    /// ` -c <file>` when the config is not the default one, for commands printed as hints.
    /// ` -a <app>` too when one was named.
    pub fn config_flag(&self) -> String {
        let mut flags = String::new();
        if self.config.len() != 1 || self.config[0] != std::path::Path::new(DEFAULT_CONFIG) {
            for c in &self.config {
                flags.push_str(&format!(" -c {}", c.display()));
            }
        }
        if let Some(app) = &self.app {
            flags.push_str(&format!(" -a {app}"));
        }
        flags
    }

    /// The first config file (where `init` writes, and what messages name).
    pub fn config_path(&self) -> &std::path::Path {
        self.config
            .first()
            .map_or(std::path::Path::new(DEFAULT_CONFIG), |p| p.as_path())
    }

    /// Every app the config files describe, and the server's part.
    pub fn load_servers(&self) -> Result<ServerConfig, Failure> {
        Ok(ServerConfig::load(&self.config)?)
    }

    /// The config of the app this command acts on: `-a`, or the only one.
    pub fn load_config(&self) -> Result<Config, Failure> {
        let servers = self.load_servers()?;
        servers
            .app(self.app.as_deref())
            .cloned()
            .map_err(|e| Failure::Usage(format!("error: {e}")))
    }

    /// A client for the daemon named by `--server` or the config.
    /// The token is `FERRY_TOKEN`, else the local token `serve` wrote into the state dir.
    pub fn client(&self) -> Result<ApiClient, Failure> {
        self.client_for(self.app.as_deref())
    }

    /// [`Cli::client`] for app `app` (`None`: the only one) whatever `-a` says.
    pub fn client_for(&self, app: Option<&str>) -> Result<ApiClient, Failure> {
        let api = |config: &ServerConfig| {
            let mut addr = config.server.listen;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("http://{addr}")
        };
        // the app's routes are prefixed (`/api/apps/{app}/…`) when apps share the serve
        let (base, state_dir, own, app) = match &self.server {
            // with --server the config may be elsewhere; its state dir is used if it loads
            Some(url) => {
                let config = ServerConfig::load(&self.config).ok();
                let own = config
                    .as_ref()
                    .is_some_and(|c| api(c) == url.trim_end_matches('/'));
                let app = match &config {
                    Some(c) if c.shared => Some(
                        c.app(app)
                            .map_err(|e| Failure::Usage(format!("error: {e}")))?
                            .app
                            .name
                            .clone(),
                    ),
                    _ => app.map(str::to_string),
                };
                (url.clone(), config.map(|c| c.state_dir), own, app)
            }
            None => {
                let config = self.load_servers()?;
                let chosen = config
                    .app(app)
                    .map_err(|e| Failure::Usage(format!("error: {e}")))?;
                let app = config.shared.then(|| chosen.app.name.clone());
                (api(&config), Some(config.state_dir), true, app)
            }
        };
        let token = crate::auth::cli_token(state_dir.as_deref());
        let mut client = ApiClient::new(&base, self.config_path(), token);
        client.set_flags(&self.config_flag());
        if let Some(app) = app {
            client = client.for_app(&app);
        }
        Ok(if own {
            client
        } else {
            client.with_server_flag()
        })
    }
}

/// Who is running this command, for the record.
pub fn current_user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map(|u| u.name)
        })
        .unwrap_or_else(|| "unknown".to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_argument_and_flag_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                if a.get_help().is_none() && !a.is_hide_set() {
                    missing.push(format!("{path} {}", a.get_id()));
                }
            }
            // hidden ones are ferry's own plumbing (sample-app, confine)
            for sub in cmd.get_subcommands().filter(|c| !c.is_hide_set()) {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::command(), "ferry", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:?}");
    }
}

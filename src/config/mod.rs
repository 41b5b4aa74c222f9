//! `ferry.toml`: parsing, defaults and validation.
//!
//! The file is read into raw serde types (`raw`), then turned once into the validated
//! [`Config`] the rest of ferry uses. Every error a user can cause names the file, line and
//! column and says what to write instead (see [`Diagnostic`]).

mod acme;
mod apps;
mod checks;
mod diagnostic;
mod duration;
mod freeze;
mod frontdoor;
mod hooks;
mod monitor;
mod notify;
mod processes;
mod raw;
mod rollout;
mod runtime;
mod secrets;
mod server;
mod size;
mod ssh;
mod template;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use acme::{Acme, DEFAULT_CHECK_INTERVAL, DEFAULT_RENEW_BEFORE, LETS_ENCRYPT};
pub use apps::ServerConfig;
pub use checks::{Check, CheckKind};
pub use diagnostic::Diagnostic;
pub use duration::{HumanDuration, format_duration, parse_duration};
pub use freeze::FreezeWindow;
pub use frontdoor::{Tls, under_prefix};
pub use hooks::{Hook, Hooks};
pub use monitor::{DEFAULT_MIN_REQUESTS, DEFAULT_WINDOW, Monitor, TrafficRules};
pub use notify::{
    Email, GITHUB_API, GITLAB_API, NOTIFY_EVENTS, Notify, NotifyKind, SmtpTls, TRACKER_EVENTS,
    Target, Tracker, host_of,
};
pub use processes::{ProcessType, WEB};
pub use raw::valid_check_name;
pub use rollout::{DEFAULT_INCONCLUSIVE_TIMEOUT, Rollout, RolloutStep, Sticky};
pub use runtime::{ComposeFile, Container, ContainerUser, ImageBuild, Network, Runtime};
pub use secrets::{DEFAULT_SECRET_TIMEOUT, SecretCommand, valid_secret_name};
pub use server::{ConnLimits, DEFAULT_MAX_STREAMS, ProxySettings, Server};
pub use size::{HumanSize, format_size, parse_size};
pub use ssh::{DEFAULT_AGENT_DIR, DEFAULT_CONNECT_TIMEOUT, SshOptions, SshServer};
pub use template::TEMPLATE;

/// Variables ferry sets for every instance; the `env` table may not override them.
pub const RESERVED_VARS: &[&str] = &[
    "PORT",
    "ENVIRONMENT",
    "FERRY_SLOT",
    "APP_VERSION",
    "COMMIT_SHA",
    "DEPLOYED_AT",
    "FERRY_PROCESS",
];

/// The longest a deployment may wait for a busy or locked environment (`--wait-lock`,
/// `[webhooks] wait_lock`).
pub const MAX_WAIT_LOCK: Duration = Duration::from_secs(24 * 3600);

/// A loaded, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
    /// Where ferry keeps this app's database, mirror, releases and logs.
    pub state_dir: PathBuf,
    /// The state dir of the `serve` hosting this app: `serve.lock`, `serve.sock` and the
    /// local token live there, and commands are shut out of all of it. The same as
    /// `state_dir` for one `ferry.toml`; the server's state dir (holding `apps/<app>/`)
    /// when several apps share a serve (see [`ServerConfig`]).
    pub server_dir: PathBuf,
    pub app: App,
    pub health: Health,
    /// Every environment, slots expanded (`staging-1`, `staging-2`), in file order by name.
    pub environments: Vec<Environment>,
    /// Post-deploy monitoring; `None` when the file has no `[monitor]` table.
    pub monitor: Option<Monitor>,
    pub server: Server,
    /// `[proxy]`: what each environment's proxy applies.
    pub proxy: ProxySettings,
    pub webhooks: Webhooks,
    /// Outgoing notifications (`[[notify]]`), in file order.
    pub notify: Vec<Notify>,
    /// `[acme]`: where `tls = "acme"` certificates come from; `None` without the table.
    pub acme: Option<Acme>,
    /// `[hooks]`: commands run on the ferry host around a deploy.
    pub hooks: Hooks,
    /// `[[check]]`: checks run against a new instance before it takes traffic, in file order.
    pub checks: Vec<Check>,
    /// `[ssh]`: how the environments' `servers` are reached.
    pub ssh: SshOptions,
}

/// `[webhooks]`: the names of the environment variables holding the shared secrets, and the
/// repository whose pushes count. The secrets themselves are read when `serve` starts and
/// never written anywhere.
#[derive(Debug, Clone, Default)]
pub struct Webhooks {
    pub github_secret_env: Option<String>,
    pub gitlab_token_env: Option<String>,
    /// `owner/name` (GitHub's `repository.full_name`, GitLab's `project.path_with_namespace`);
    /// see [`Config::webhook_repository`] for the default.
    pub repository: Option<String>,
    /// How long a pushed deployment waits for a busy or locked environment before it is
    /// refused (`wait_lock`); `None`: see [`crate::pipeline::Engine::request_tracked`].
    pub wait_lock: Option<Duration>,
}

/// True for a repository name as providers write it: two or more `/`-separated parts of
/// letters, digits, `.`, `_` and `-` (`owner/name`, `group/subgroup/name`).
pub fn valid_repository(name: &str) -> bool {
    let parts: Vec<&str> = name.split('/').collect();
    parts.len() >= 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && *p != "."
                && *p != ".."
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        })
}

/// The repository path in a remote URL: `owner/name` from `https://github.com/owner/name.git`,
/// `git@gitlab.com:group/sub/name.git`, `ssh://git@host:22/owner/name`. `None` for local paths,
/// `file://` URLs and anything else that names no host.
pub fn repository_from_url(url: &str) -> Option<String> {
    if !is_remote_repo(url) {
        return None;
    }
    let after_host = if let Some((scheme, rest)) = url.split_once("://") {
        if !matches!(
            scheme,
            "https" | "http" | "ssh" | "git" | "git+ssh" | "ssh+git"
        ) {
            return None;
        }
        let (host, path) = rest.split_once('/')?;
        if host.is_empty() {
            return None;
        }
        path
    } else {
        // scp-like: user@host:path
        let (_, path) = url.split_once(':')?;
        path
    };
    let path = after_host.trim_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path);
    valid_repository(path).then(|| path.to_string())
}

/// Where the repository webhooks must name comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepositorySource {
    /// `[webhooks] repository`.
    Configured,
    /// Derived from `[app] repo`.
    AppRepo,
}

impl Config {
    /// The repository whose pushes webhooks act on: `[webhooks] repository`, else the path of
    /// `[app] repo` when that is a remote URL; `None` (pushes from any repository count, and
    /// `ferry check` warns) when `[app] repo` is a local path and no repository is set.
    pub fn webhook_repository(&self) -> Option<(String, RepositorySource)> {
        if let Some(r) = &self.webhooks.repository {
            return Some((r.clone(), RepositorySource::Configured));
        }
        repository_from_url(&self.app.repo).map(|r| (r, RepositorySource::AppRepo))
    }
}

#[derive(Debug, Clone)]
pub struct App {
    pub name: String,
    /// A local path (made absolute) or any URL git can clone.
    pub repo: String,
    pub build: Vec<String>,
    pub test: Vec<String>,
    /// The command that runs one instance; with a container runtime, empty for the image's
    /// own command.
    pub start: String,
    /// How instances run: processes (the default), docker containers or a compose service.
    pub runtime: Runtime,
    /// `[processes]` other than `web`, in name order: run per release beside the web
    /// instance, never routed.
    pub processes: Vec<ProcessType>,
    /// Paths that live in the environment's `shared/` dir; a trailing `/` marks a directory.
    pub shared: Vec<String>,
    pub keep_releases: usize,
    /// Deployments whose backups are kept per environment, however many releases are kept.
    pub keep_backups: usize,
    /// Limit for each build or test command.
    pub command_timeout: Duration,
    /// Time an instance gets between SIGTERM and SIGKILL.
    pub stop_timeout: Duration,
    /// Time requests in flight on the old instance get to finish after a switch.
    pub drain_timeout: Duration,
    /// Variables of ferry's own environment that build, test and app commands inherit
    /// besides PATH and the locale (everything else is cleared).
    pub pass_env: Vec<String>,
    /// `release`: run once per deploy in the new release, as an instance would run, after
    /// backup and before start (migrations); `None` without one.
    pub release: Option<String>,
    /// Limit for the release command (`release_timeout`, default `command_timeout`).
    pub release_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct Health {
    pub paths: Vec<String>,
    pub expect_status: u16,
    pub startup_delay: Duration,
    pub interval: Duration,
    pub timeout: Duration,
    pub retries: u32,
    /// How often `serve` probes each environment's serving instance for the dashboard's
    /// health chart; zero turns the watcher off.
    pub watch_interval: Duration,
}

/// What an environment follows for automatic deploys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Track {
    /// Deployed by hand only.
    Manual,
    Branch(String),
    Tags,
}

/// One deployable environment (one slot of a `[environments.NAME]` table).
#[derive(Debug, Clone)]
pub struct Environment {
    /// `staging`, or `staging-1` for the first of several slots.
    pub name: String,
    /// The table name in the config (`staging` for both `staging-1` and `staging-2`).
    pub group: String,
    /// 1-based slot number.
    pub slot: u32,
    /// Its own port (`listen`; the next port for each further slot), if it has one.
    pub listen: Option<SocketAddr>,
    /// The names the front door routes to it (`hosts`), exact or `*.` wildcards.
    pub hosts: Vec<crate::hosts::HostPattern>,
    /// Requests on its hosts whose path is under this (`/api`) come here, the prefix stripped
    /// (longest prefix wins; `X-Forwarded-Prefix` tells the app). `None`: every path.
    pub path_prefix: Option<String>,
    /// Its certificate on `[server] https`, if it serves HTTPS.
    pub tls: Option<Tls>,
    /// Plain HTTP on its hosts is answered with 308 to https (default: on when `tls` is set).
    pub redirect_https: bool,
    pub track: Track,
    /// With `track = { tags = true, auto = true }`, pushed release tags are deployed (through
    /// every gate); without `auto` they are recorded only. Branch tracking always deploys.
    pub auto: bool,
    pub env: BTreeMap<String, String>,
    /// Secrets file; relative paths are read from the environment's `shared/` dir.
    pub env_file: Option<PathBuf>,
    /// Secrets from commands (`secrets = { NAME = { command = "…" } }`), run at each start.
    pub secrets: Vec<SecretCommand>,
    /// Pre-release tags (`v1.2.0-rc.1`) are accepted where tags are tracked.
    pub prerelease: bool,
    /// The environment (config table name) a tag must be verified on before it comes here.
    pub requires: Option<String>,
    /// Deployments wait for `ferry approve`.
    pub approval: bool,
    /// The approver must be another token and another person than whoever started the
    /// deploy (`approval = { not_by_deployer = true }`).
    pub approval_not_by_deployer: bool,
    /// How long a deployment waits for approval before it is refused.
    pub approval_timeout: Duration,
    /// Deploys are refused inside these windows unless forced with a reason.
    pub freeze: Vec<FreezeWindow>,
    /// The zone freeze windows are read in; `None` is the machine's local time.
    pub timezone: Option<chrono_tz::Tz>,
    /// Checks CI must have reported as passing for the commit.
    pub require_checks: Vec<String>,
    /// Files inside the shared dir snapshotted before each deploy.
    pub backup: Vec<String>,
    /// Whether `[monitor]` watches deploys here after the switch.
    pub monitor: bool,
    /// The unprivileged user its build, test and app commands run as when ferry runs as
    /// root; `None`: a dedicated `ferry-<app>-<env>` (see [`crate::sandbox`]).
    pub user: Option<String>,
    /// The word `ferry rollback` and the dashboard ask to have typed; `None`: the name.
    pub confirm: Option<String>,
    /// The proxy writes a JSON line per request to `logs/access.log` (`access_log = true`).
    pub access_log: bool,
    /// Its preview address (`preview_listen`): a new instance before the switch.
    pub preview_listen: Option<SocketAddr>,
    /// Front door names reaching a new instance before the switch (`preview_hosts`).
    pub preview_hosts: Vec<crate::hosts::HostPattern>,
    /// A canary rollout in steps instead of the instant switch (`rollout = [...]`).
    pub rollout: Option<Rollout>,
    /// The proxy counts requests, errors and latency per instance (`traffic_metrics`, on by
    /// default; the traffic rules of `[monitor]` need it).
    pub traffic_metrics: bool,
    /// The hosts it runs on, reached over SSH (`servers`); empty: this machine.
    pub servers: Vec<SshServer>,
    /// With servers: how many hosts are switched at a time (`max_parallel`, default 1).
    pub max_parallel: usize,
}

impl Environment {
    /// Where it is reached: `http://` its own `listen` address, then each host on the front
    /// door (`https://` when it has `tls`, else `http://`; the port when not 80/443, then the
    /// path prefix), e.g. `https://staging.example.com/api`.
    pub fn urls(&self, server: &Server) -> Vec<String> {
        let mut urls: Vec<String> = self.listen.iter().map(|a| format!("http://{a}")).collect();
        let (scheme, addr, default_port) = match (&self.tls, server.https, server.http) {
            (Some(_), Some(https), _) => ("https", https, 443),
            (_, _, Some(http)) => ("http", http, 80),
            (_, Some(https), None) => ("https", https, 443),
            _ => return urls,
        };
        let port = if addr.port() == default_port {
            String::new()
        } else {
            format!(":{}", addr.port())
        };
        let prefix = self.path_prefix.as_deref().unwrap_or("");
        for host in &self.hosts {
            urls.push(format!("{scheme}://{host}{port}{prefix}"));
        }
        urls
    }

    /// What a person types to confirm a manual rollback here.
    pub fn confirm_word(&self) -> &str {
        self.confirm.as_deref().unwrap_or(&self.name)
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {}: {source}\nhelp: pass the file with `-c PATH`, or write one with `ferry init`", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(Box<Diagnostic>),
    /// A conflict between the files of several apps (names, addresses, `[server]`).
    #[error("{0}")]
    Apps(String),
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(path, &text)
    }

    /// Validates `text` as if read from `path` (used for relative paths and messages).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let at = |span: Option<std::ops::Range<usize>>, message: String, help: Option<&str>| {
            ConfigError::Invalid(Box::new(Diagnostic::new(
                path,
                text,
                span,
                message,
                help.map(str::to_string),
            )))
        };
        let raw: raw::RawConfig = toml::from_str(text).map_err(|e| {
            let message = e.message().trim().to_string();
            let help = raw::help_for(&message);
            at(e.span(), message, help.as_deref())
        })?;
        let base = path
            .canonicalize()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| {
                path.parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| PathBuf::from("."))
            });
        raw.validate(path, text, &base)
            .map_err(|d| ConfigError::Invalid(Box::new(d)))
    }

    /// The environment called `name` (a slot name such as `staging-1`, or a plain name).
    pub fn environment(&self, name: &str) -> Option<&Environment> {
        self.environments.iter().find(|e| e.name == name)
    }

    /// The environments (slots) of config table `group`.
    pub fn group(&self, group: &str) -> Vec<&Environment> {
        self.environments
            .iter()
            .filter(|e| e.group == group)
            .collect()
    }

    /// The names of all environments, for messages.
    pub fn environment_names(&self) -> Vec<&str> {
        self.environments.iter().map(|e| e.name.as_str()).collect()
    }

    /// The `<state_dir>/environments/<env>` directory.
    pub fn env_dir(&self, env: &str) -> PathBuf {
        self.state_dir.join("environments").join(env)
    }
}

/// True when `repo` is something git clones over a network rather than a local path.
pub fn is_remote_repo(repo: &str) -> bool {
    repo.contains("://") || {
        // scp-like `user@host:path`, but not a Windows-style or local path with a colon later
        let before_colon = repo.split(':').next().unwrap_or("");
        repo.contains(':') && !before_colon.contains('/') && before_colon.contains('@')
    }
}

#[cfg(test)]
mod tests;

//! The file as written: serde types with `deny_unknown_fields`, spans kept where a later check
//! needs to point at a value, and `validate`, which turns them into [`super::Config`].

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::duration::HumanDuration;
use super::{App, Config, Diagnostic, Environment, Health, RESERVED_VARS, Track, Webhooks};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    state_dir: Option<String>,
    app: RawApp,
    #[serde(default)]
    health: RawHealth,
    #[serde(default)]
    environments: BTreeMap<Spanned<String>, RawEnvironment>,
    monitor: Option<super::monitor::RawMonitor>,
    #[serde(default)]
    server: super::server::RawServer,
    #[serde(default)]
    proxy: super::server::RawProxy,
    #[serde(default)]
    webhooks: RawWebhooks,
    #[serde(default)]
    notify: Vec<Spanned<super::notify::RawNotify>>,
    acme: Option<Spanned<super::acme::RawAcme>>,
    #[serde(default)]
    hooks: super::hooks::RawHooks,
    #[serde(default)]
    processes: super::processes::RawProcesses,
    #[serde(default)]
    check: Vec<Spanned<super::checks::RawCheck>>,
    #[serde(default)]
    ssh: super::ssh::RawSsh,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawWebhooks {
    github_secret_env: Option<Spanned<String>>,
    gitlab_token_env: Option<Spanned<String>>,
    repository: Option<Spanned<String>>,
    wait_lock: Option<Spanned<HumanDuration>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    name: Spanned<String>,
    repo: Spanned<String>,
    #[serde(default)]
    build: Vec<String>,
    #[serde(default)]
    test: Vec<String>,
    start: Option<Spanned<String>>,
    runtime: Option<Spanned<String>>,
    docker: Option<Spanned<super::runtime::RawDocker>>,
    compose: Option<Spanned<super::runtime::RawCompose>>,
    #[serde(default)]
    shared: Vec<Spanned<String>>,
    keep_releases: Option<Spanned<i64>>,
    keep_backups: Option<Spanned<i64>>,
    command_timeout: Option<HumanDuration>,
    stop_timeout: Option<HumanDuration>,
    drain_timeout: Option<HumanDuration>,
    #[serde(default)]
    pass_env: Vec<Spanned<String>>,
    release: Option<Spanned<String>>,
    release_timeout: Option<HumanDuration>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    paths: Option<Vec<Spanned<String>>>,
    expect_status: Option<Spanned<i64>>,
    startup_delay: Option<HumanDuration>,
    interval: Option<HumanDuration>,
    timeout: Option<HumanDuration>,
    retries: Option<Spanned<i64>>,
    watch_interval: Option<HumanDuration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnvironment {
    listen: Option<Spanned<String>>,
    #[serde(default)]
    hosts: Vec<Spanned<String>>,
    path_prefix: Option<Spanned<String>>,
    tls: Option<Spanned<super::frontdoor::RawTls>>,
    redirect_https: Option<Spanned<bool>>,
    slots: Option<Spanned<i64>>,
    track: Option<Spanned<RawTrack>>,
    #[serde(default)]
    env: BTreeMap<Spanned<String>, String>,
    env_file: Option<String>,
    #[serde(default)]
    secrets: BTreeMap<Spanned<String>, super::secrets::RawSecret>,
    prerelease: Option<bool>,
    requires: Option<Spanned<String>>,
    approval: Option<RawApproval>,
    approval_timeout: Option<HumanDuration>,
    #[serde(default)]
    freeze: Vec<Spanned<String>>,
    timezone: Option<Spanned<String>>,
    #[serde(default)]
    require_checks: Vec<Spanned<String>>,
    #[serde(default)]
    backup: Vec<Spanned<String>>,
    monitor: Option<bool>,
    user: Option<Spanned<String>>,
    confirm: Option<Spanned<String>>,
    access_log: Option<bool>,
    preview_listen: Option<Spanned<String>>,
    #[serde(default)]
    preview_hosts: Vec<Spanned<String>>,
    rollout: Option<Spanned<Vec<Spanned<String>>>>,
    inconclusive_timeout: Option<Spanned<HumanDuration>>,
    sticky_header: Option<Spanned<String>>,
    traffic_metrics: Option<bool>,
    servers: Option<Spanned<Vec<Spanned<String>>>>,
    max_parallel: Option<Spanned<i64>>,
}

/// `approval = true`, or `approval = { not_by_deployer = true }`.
#[derive(Deserialize)]
#[serde(
    untagged,
    expecting = "true, false or a table like { not_by_deployer = true }"
)]
enum RawApproval {
    On(bool),
    With(RawApprovalTable),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApprovalTable {
    not_by_deployer: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrack {
    branch: Option<String>,
    tags: Option<bool>,
    auto: Option<bool>,
}

/// A hint for serde's own messages, which already say what was expected.
pub fn help_for(message: &str) -> Option<String> {
    if let Some(rest) = message.strip_prefix("missing field `") {
        let field = rest.split('`').next().unwrap_or("");
        return Some(match field {
            "app" => "add an [app] table with name, repo and start (see `ferry init`)".into(),
            "name" => "add `name = \"my-app\"` to [app]".into(),
            "repo" => "add `repo = \"/path/to/repo\"` (a local path or git URL) to [app]".into(),
            "start" => "add `start = \"./server --port $PORT\"` to [app]".into(),
            "listen" => "add `listen = \"127.0.0.1:8080\"` to the environment".into(),
            other => format!("add `{other} = ...`"),
        });
    }
    if message.starts_with("unknown field") {
        return Some("check the spelling; `ferry init` writes a template with every key".into());
    }
    if message.starts_with("invalid type") {
        return Some("see `ferry init` for the expected form of each key".into());
    }
    None
}

pub(super) type Fail = Box<dyn Fn(Range<usize>, String, &str) -> Diagnostic>;

impl RawConfig {
    pub fn validate(self, path: &Path, text: &str, base: &Path) -> Result<Config, Diagnostic> {
        let owned_path = path.to_path_buf();
        let owned_text = text.to_string();
        let fail: Fail = Box::new(move |span, message, help| {
            Diagnostic::new(
                &owned_path,
                &owned_text,
                Some(span),
                message,
                Some(help.to_string()),
            )
        });
        let resolve = |p: &str| -> PathBuf {
            let p = Path::new(p);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };

        let mut raw_app = self.app;
        if let Some(web) =
            super::processes::web_start(&self.processes, raw_app.start.as_ref(), &fail)?
        {
            raw_app.start = Some(web);
        }
        let mut app = validate_app(raw_app, &fail, &resolve)?;
        app.processes = super::processes::validate(self.processes, app.stop_timeout, &fail)?;
        let health = validate_health(self.health, &fail)?;
        let server_listen = self.server.listen(&fail)?;
        let ssh = super::ssh::validate(self.ssh, &fail, &resolve)?;
        let mut with_servers = Vec::new();

        let monitor = self
            .monitor
            .map(|m| super::monitor::validate(m, &fail))
            .transpose()?;
        let mut environments = Vec::new();
        let mut requires = Vec::new();
        let mut users: HashMap<String, String> = HashMap::new();
        let mut taken: HashMap<SocketAddr, String> = HashMap::new();
        taken.insert(server_listen, "[server] listen".into());
        let (http, https) = super::frontdoor::server_addrs(
            self.server.http.as_ref(),
            self.server.https.as_ref(),
            &fail,
            &mut taken,
        )?;
        let mut claims = super::frontdoor::Claims::new(http, https);
        if self.environments.is_empty() {
            return Err(fail(
                text.len()..text.len(),
                "no environments are defined".into(),
                "add one, e.g. [environments.staging] with listen = \"127.0.0.1:8081\"",
            ));
        }
        for (name, env) in self.environments {
            let span = name.span();
            let name = name.into_inner();
            if !valid_name(&name) {
                return Err(fail(
                    span,
                    format!("environment name \"{name}\" is not allowed"),
                    "use lowercase letters, digits and '-', starting with a letter, like \"staging\"",
                ));
            }
            super::frontdoor::listener_name_free(&name, span.clone(), &fail)?;
            if let Some(r) = &env.requires {
                requires.push((name.clone(), r.clone()));
            }
            if let Some(user) = &env.user {
                check_user(user, &name, &mut users, &fail)?;
            }
            if let Some(servers) = &env.servers {
                with_servers.push((name.clone(), servers.span()));
            }
            environments.extend(validate_environment(
                (&name, span),
                env,
                &fail,
                &mut taken,
                (&mut claims, &resolve),
                &ssh,
            )?);
        }
        let groups: Vec<String> = environments.iter().map(|e| e.group.clone()).collect();
        check_requires(&requires, &groups, &fail)?;
        let checks = super::checks::validate(self.check, &groups, app.command_timeout, &fail)?;
        super::ssh::refuse_app(&with_servers, &app, &checks, &fail)?;
        super::ssh::check_listens(&with_servers, &environments, &fail)?;
        let state_dir = resolve(self.state_dir.as_deref().unwrap_or(".ferry"));
        let acme = self
            .acme
            .map(|a| super::acme::validate(a, &fail, &resolve))
            .transpose()?;
        super::acme::check_needed(acme.as_ref(), &environments, &fail, text)?;
        Ok(Config {
            path: path.to_path_buf(),
            server_dir: state_dir.clone(),
            state_dir,
            app,
            health,
            environments,
            monitor,
            server: self.server.validate(&fail)?,
            proxy: self.proxy.validate(&fail)?,
            webhooks: validate_webhooks(self.webhooks, &fail)?,
            notify: super::notify::validate(self.notify, &fail, &resolve)?,
            acme,
            hooks: super::hooks::validate(self.hooks, &fail)?,
            checks,
            ssh,
        })
    }
}

fn validate_app(
    raw: RawApp,
    fail: &Fail,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> Result<App, Diagnostic> {
    if !valid_name(raw.name.get_ref()) && !raw.name.get_ref().contains('_') {
        return Err(fail(
            raw.name.span(),
            format!("app name \"{}\" is not allowed", raw.name.get_ref()),
            "use letters, digits, '-' and '_', like \"job-search\"",
        ));
    }
    let repo = validate_repo(&raw.repo, fail, resolve)?;
    let runtime = super::runtime::validate(
        super::runtime::RawRuntime {
            runtime: raw.runtime.as_ref(),
            docker: raw.docker.as_ref(),
            compose: raw.compose.as_ref(),
            start: raw.start.as_ref(),
            app_span: raw.name.span(),
        },
        fail,
    )?;
    let mut shared = Vec::new();
    for s in raw.shared {
        let p = s.get_ref();
        if !relative_inside(p) {
            return Err(fail(
                s.span(),
                format!("shared path \"{p}\" must be relative and stay inside the release"),
                "write a path relative to the app's root, like \"data/\" or \"config/.env\"",
            ));
        }
        shared.push(s.into_inner());
    }
    let keep_releases = match raw.keep_releases {
        None => 5,
        Some(k) if *k.get_ref() >= 1 && *k.get_ref() <= 1000 => *k.get_ref() as usize,
        Some(k) => {
            return Err(fail(
                k.span(),
                format!("keep_releases = {} is out of range", k.get_ref()),
                "keep at least 1 release (the default is 5)",
            ));
        }
    };
    let mut pass_env = Vec::new();
    for v in raw.pass_env {
        let name = v.get_ref();
        let valid = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(fail(
                v.span(),
                format!("pass_env: \"{name}\" is not a variable name"),
                "list names of ferry's environment variables, like [\"HTTP_PROXY\"]",
            ));
        }
        pass_env.push(v.into_inner());
    }
    let keep_backups = match raw.keep_backups {
        None => keep_releases,
        Some(k) if *k.get_ref() >= 1 && *k.get_ref() <= 1000 => *k.get_ref() as usize,
        Some(k) => {
            return Err(fail(
                k.span(),
                format!("keep_backups = {} is out of range", k.get_ref()),
                "keep the backups of at least 1 deployment (the default is keep_releases)",
            ));
        }
    };
    let command_timeout = raw
        .command_timeout
        .map_or(std::time::Duration::from_secs(600), |d| d.0);
    let (release, release_timeout) =
        super::hooks::release_command(raw.release, raw.release_timeout, command_timeout, fail)?;
    Ok(App {
        name: raw.name.into_inner(),
        release,
        release_timeout,
        pass_env,
        repo,
        build: raw.build,
        test: raw.test,
        start: raw.start.map(Spanned::into_inner).unwrap_or_default(),
        runtime,
        processes: Vec::new(),
        shared,
        keep_releases,
        keep_backups,
        command_timeout,
        stop_timeout: raw
            .stop_timeout
            .map_or(std::time::Duration::from_secs(10), |d| d.0),
        drain_timeout: raw
            .drain_timeout
            .map_or(std::time::Duration::from_secs(30), |d| d.0),
    })
}

fn validate_repo(
    repo: &Spanned<String>,
    fail: &Fail,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> Result<String, Diagnostic> {
    let text = repo.get_ref().trim();
    if text.is_empty() || text.starts_with('-') {
        return Err(fail(
            repo.span(),
            format!("repo \"{text}\" is not a git repository"),
            "write a local path or a URL git can clone",
        ));
    }
    if super::is_remote_repo(text) {
        return Ok(text.to_string());
    }
    let local = resolve(text.strip_prefix("file://").unwrap_or(text));
    let is_repo = local.join(".git").exists()
        || (local.join("HEAD").is_file() && local.join("objects").is_dir());
    if !is_repo {
        return Err(fail(
            repo.span(),
            format!(
                "repo \"{text}\" is not a git repository ({} has no .git)",
                local.display()
            ),
            "point `repo` at a directory made by `git init` or `git clone`, or at a git URL",
        ));
    }
    Ok(local.to_string_lossy().into_owned())
}

fn validate_health(raw: RawHealth, fail: &Fail) -> Result<Health, Diagnostic> {
    let mut paths = Vec::new();
    for p in raw.paths.unwrap_or_default() {
        if !p.get_ref().starts_with('/') || p.get_ref().chars().any(char::is_whitespace) {
            return Err(fail(
                p.span(),
                format!("health path \"{}\" must start with '/'", p.get_ref()),
                "write an absolute URL path, like \"/health\"",
            ));
        }
        paths.push(p.into_inner());
    }
    if paths.is_empty() {
        paths.push("/".to_string());
    }
    let expect_status = match raw.expect_status {
        None => 200,
        Some(s) if (100..=599).contains(s.get_ref()) => *s.get_ref() as u16,
        Some(s) => {
            return Err(fail(
                s.span(),
                format!("expect_status = {} is not an HTTP status", s.get_ref()),
                "write a status between 100 and 599, like 200",
            ));
        }
    };
    let retries = match raw.retries {
        None => 30,
        Some(r) if (1..=100_000).contains(r.get_ref()) => *r.get_ref() as u32,
        Some(r) => {
            return Err(fail(
                r.span(),
                format!("retries = {} is out of range", r.get_ref()),
                "probe at least once: write a number from 1 up",
            ));
        }
    };
    let d = |v: Option<HumanDuration>, default_ms: u64| {
        v.map_or(std::time::Duration::from_millis(default_ms), |d| d.0)
    };
    Ok(Health {
        paths,
        expect_status,
        startup_delay: d(raw.startup_delay, 0),
        interval: d(raw.interval, 1000),
        timeout: d(raw.timeout, 5000),
        retries,
        watch_interval: d(raw.watch_interval, 10_000),
    })
}

fn validate_environment(
    (name, span): (&str, Range<usize>),
    raw: RawEnvironment,
    fail: &Fail,
    taken: &mut HashMap<SocketAddr, String>,
    (claims, resolve): (&mut super::frontdoor::Claims, &dyn Fn(&str) -> PathBuf),
    ssh: &super::SshOptions,
) -> Result<Vec<Environment>, Diagnostic> {
    let remote = super::ssh::environment(
        name,
        super::ssh::RawRemote {
            servers: raw.servers.as_ref(),
            max_parallel: raw.max_parallel.as_ref(),
            listen: raw.listen.as_ref(),
            hosts: &raw.hosts,
            preview_listen: raw.preview_listen.as_ref(),
            preview_hosts: &raw.preview_hosts,
            rollout: raw.rollout.as_ref().map(Spanned::span),
            backup: &raw.backup,
            slots: raw.slots.as_ref().map(|s| (s.span(), *s.get_ref())),
        },
        ssh,
        fail,
    )?;
    let listen = raw
        .listen
        .as_ref()
        .map(|l| parse_addr(l, fail))
        .transpose()?;
    let slots = match &raw.slots {
        None => 1,
        Some(s) if (1..=64).contains(s.get_ref()) => *s.get_ref() as u32,
        Some(s) => {
            return Err(fail(
                s.span(),
                format!("slots = {} is out of range", s.get_ref()),
                "write a number of slots from 1 to 64",
            ));
        }
    };
    let (track, auto) = match raw.track {
        None => (Track::Manual, false),
        Some(t) => {
            let span = t.span();
            match t.into_inner() {
                RawTrack {
                    branch: Some(b),
                    tags: None | Some(false),
                    auto: None | Some(true),
                } if !b.trim().is_empty() => (Track::Branch(b), true),
                RawTrack {
                    branch: None,
                    tags: Some(true),
                    auto,
                } => (Track::Tags, auto.unwrap_or(false)),
                _ => {
                    return Err(fail(
                        span,
                        "`track` must name one branch or release tags".into(),
                        "write track = { branch = \"main\" } or track = { tags = true } (add auto = true to deploy pushed tags)",
                    ));
                }
            }
        }
    };
    let mut env = BTreeMap::new();
    for (key, value) in raw.env {
        let span = key.span();
        let key = key.into_inner();
        if RESERVED_VARS.contains(&key.as_str()) {
            return Err(fail(
                span,
                format!("`{key}` is set by ferry for every instance"),
                "remove it from `env`; ferry sets PORT, ENVIRONMENT, FERRY_SLOT, APP_VERSION, COMMIT_SHA and DEPLOYED_AT",
            ));
        }
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(fail(
                span,
                format!("`{key}` is not a valid variable name"),
                "use letters, digits and '_'",
            ));
        }
        env.insert(key, value);
    }
    let secrets = super::secrets::validate(raw.secrets, &env, &resolve(""), fail)?;
    let rollout = super::rollout::validate(
        raw.rollout,
        raw.inconclusive_timeout,
        raw.sticky_header,
        fail,
    )?;
    let mut freeze = Vec::new();
    for w in &raw.freeze {
        freeze.push(super::FreezeWindow::parse(w.get_ref()).map_err(|e| {
            fail(
                w.span(),
                e,
                "times are in the environment's time zone (the `timezone` key, or local time)",
            )
        })?);
    }
    let timezone = match &raw.timezone {
        None => None,
        Some(tz) => Some(tz.get_ref().parse::<chrono_tz::Tz>().map_err(|_| {
            fail(
                tz.span(),
                format!("unknown time zone \"{}\"", tz.get_ref()),
                "write an IANA zone name, like \"Europe/Berlin\" or \"UTC\"",
            )
        })?),
    };
    let mut require_checks = Vec::new();
    for c in &raw.require_checks {
        if !valid_check_name(c.get_ref()) {
            return Err(fail(
                c.span(),
                format!("check name \"{}\" is not allowed", c.get_ref()),
                "use letters, digits, spaces and . _ - / :, like \"ci\"",
            ));
        }
        require_checks.push(c.get_ref().clone());
    }
    let mut backup = Vec::new();
    for b in &raw.backup {
        let p = b.get_ref();
        if !relative_inside(p) || p.ends_with('/') {
            return Err(fail(
                b.span(),
                format!("backup path \"{p}\" must name a file inside the shared dir"),
                "write a file path relative to the shared dir, like \"data/production.db\"",
            ));
        }
        backup.push(p.clone());
    }
    let confirm = match &raw.confirm {
        None => None,
        Some(c) if valid_confirm_word(c.get_ref()) => Some(c.get_ref().clone()),
        Some(c) => {
            return Err(fail(
                c.span(),
                format!("confirm = \"{}\" cannot be typed as a word", c.get_ref()),
                "write one word of 1 to 64 letters, digits or . _ -, like \"ROLLBACK\" (default: the environment's name)",
            ));
        }
    };
    let front = claims.environment(
        name,
        super::frontdoor::RawFront {
            listen: raw.listen.as_ref(),
            slots: raw.slots.as_ref().map(|s| (s.span(), slots)),
            hosts: &raw.hosts,
            path_prefix: raw.path_prefix.as_ref(),
            tls: raw.tls.as_ref(),
            redirect_https: raw.redirect_https.as_ref(),
        },
        span,
        fail,
        resolve,
    )?;
    let preview = super::checks::preview(
        name,
        (raw.preview_listen.as_ref(), &raw.preview_hosts),
        raw.slots.as_ref().map(|s| (s.span(), slots)),
        fail,
        (taken, claims),
    )?;
    // an environment with servers listens on its hosts, not here
    let mut on_hosts = HashMap::new();
    let taken = if remote.servers.is_empty() {
        taken
    } else {
        &mut on_hosts
    };
    let mut out = Vec::new();
    for slot in 1..=slots {
        let slot_name = if slots == 1 {
            name.to_string()
        } else {
            format!("{name}-{slot}")
        };
        let addr = match (&raw.listen, listen) {
            (Some(written), Some(listen)) => Some(slot_addr(
                written, listen, slot, slots, &slot_name, fail, taken,
            )?),
            _ => None,
        };
        out.push(Environment {
            name: slot_name,
            group: name.to_string(),
            slot,
            listen: addr,
            hosts: front.hosts.clone(),
            path_prefix: front.path_prefix.clone(),
            tls: front.tls.clone(),
            redirect_https: front.redirect_https,
            track: track.clone(),
            auto,
            env: env.clone(),
            env_file: raw.env_file.as_ref().map(PathBuf::from),
            secrets: secrets.clone(),
            prerelease: raw.prerelease.unwrap_or(false),
            requires: raw.requires.as_ref().map(|r| r.get_ref().clone()),
            approval: !matches!(raw.approval, None | Some(RawApproval::On(false))),
            approval_not_by_deployer: matches!(
                raw.approval,
                Some(RawApproval::With(RawApprovalTable {
                    not_by_deployer: Some(true)
                }))
            ),
            approval_timeout: raw
                .approval_timeout
                .map_or(std::time::Duration::from_secs(24 * 3600), |d| d.0),
            freeze: freeze.clone(),
            timezone,
            require_checks: require_checks.clone(),
            backup: backup.clone(),
            monitor: raw.monitor.unwrap_or(true),
            user: raw.user.as_ref().map(|u| u.get_ref().clone()),
            confirm: confirm.clone(),
            access_log: raw.access_log.unwrap_or(false),
            preview_listen: preview.0,
            preview_hosts: preview.1.clone(),
            rollout: rollout.clone(),
            traffic_metrics: raw.traffic_metrics.unwrap_or(true),
            servers: remote.servers.clone(),
            max_parallel: remote.max_parallel,
        });
    }
    Ok(out)
}

/// The address of slot `slot` of `slots` from `listen`: the next port per slot, each
/// address used once.
fn slot_addr(
    written: &Spanned<String>,
    listen: SocketAddr,
    slot: u32,
    slots: u32,
    slot_name: &str,
    fail: &Fail,
    taken: &mut HashMap<SocketAddr, String>,
) -> Result<SocketAddr, Diagnostic> {
    let port = u32::from(listen.port()) + slot - 1;
    let Ok(port) = u16::try_from(port) else {
        return Err(fail(
            written.span(),
            format!(
                "{slots} slots starting at port {} run past port 65535",
                listen.port()
            ),
            "pick a lower port or fewer slots",
        ));
    };
    let addr = SocketAddr::new(listen.ip(), port);
    if let Some(other) = taken.get(&addr) {
        return Err(fail(
            written.span(),
            format!("listen address {addr} of environment {slot_name} is already used by {other}"),
            "give every environment (and each of its slots) its own port",
        ));
    }
    taken.insert(addr, format!("environment {slot_name}"));
    Ok(addr)
}

/// A word a person can type to confirm: 1 to 64 of letters, digits and `. _ -`.
fn valid_confirm_word(word: &str) -> bool {
    (1..=64).contains(&word.len())
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn validate_webhooks(raw: RawWebhooks, fail: &Fail) -> Result<Webhooks, Diagnostic> {
    let var = |v: Option<Spanned<String>>| -> Result<Option<String>, Diagnostic> {
        v.map(|v| super::notify::env_var(&v, "FERRY_GITHUB_SECRET", fail))
            .transpose()
    };
    let repository = match raw.repository {
        None => None,
        Some(r) if super::valid_repository(r.get_ref()) => Some(r.into_inner()),
        Some(r) => {
            return Err(fail(
                r.span(),
                format!("\"{}\" is not a repository name", r.get_ref()),
                "write it as the provider shows it: \"owner/name\" (GitHub), \"group/subgroup/name\" (GitLab)",
            ));
        }
    };
    let wait_lock = match raw.wait_lock {
        Some(w) if w.get_ref().0 > super::MAX_WAIT_LOCK => {
            return Err(fail(
                w.span(),
                "wait_lock is longer than a day".into(),
                "write a wait of at most \"24h\", like \"10m\"",
            ));
        }
        w => w.map(|w| w.into_inner().0),
    };
    Ok(Webhooks {
        github_secret_env: var(raw.github_secret_env)?,
        gitlab_token_env: var(raw.gitlab_token_env)?,
        repository,
        wait_lock,
    })
}

pub(super) fn parse_addr(s: &Spanned<String>, fail: &Fail) -> Result<SocketAddr, Diagnostic> {
    s.get_ref().trim().parse().map_err(|_| {
        fail(
            s.span(),
            format!("\"{}\" is not an address with a port", s.get_ref()),
            "write an IP and port, like \"127.0.0.1:8080\"",
        )
    })
}

/// A relative path that stays inside its base: no `..`, no root, not empty.
pub(super) fn relative_inside(p: &str) -> bool {
    let trimmed = p.trim_end_matches('/');
    !trimmed.is_empty()
        && !Path::new(p).is_absolute()
        && Path::new(trimmed)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
}

/// Check names as CI systems write them ("ci", "build / test", "lint:rust").
pub fn valid_check_name(name: &str) -> bool {
    !name.trim().is_empty()
        && name.len() <= 100
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || " ._-/:".contains(c))
}

/// `requires` must name another environment, without cycles.
fn check_requires(
    requires: &[(String, Spanned<String>)],
    groups: &[String],
    fail: &Fail,
) -> Result<(), Diagnostic> {
    let target = |name: &str| {
        requires
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, r)| r.get_ref().as_str())
    };
    for (name, required) in requires {
        let r = required.get_ref();
        if r == name {
            return Err(fail(
                required.span(),
                format!("environment {name} requires itself"),
                "name the environment a release must be verified on first, like \"staging\"",
            ));
        }
        if !groups.contains(r) {
            return Err(fail(
                required.span(),
                format!("environment {name} requires \"{r}\", which is not defined"),
                &format!("name one of: {}", groups.join(", ")),
            ));
        }
        let mut seen = vec![name.as_str()];
        let mut at = r.as_str();
        while let Some(next) = target(at) {
            if seen.contains(&next) {
                return Err(fail(
                    required.span(),
                    format!(
                        "`requires` makes a loop: {} -> {at} -> {next}",
                        seen.join(" -> ")
                    ),
                    "promotion must flow one way, like staging -> production",
                ));
            }
            seen.push(at);
            at = next;
        }
    }
    Ok(())
}

/// An environment's `user`: a valid name, and no other environment's: a user shared by
/// staging and production would let code deployed to staging write production's data.
fn check_user(
    user: &Spanned<String>,
    env: &str,
    users: &mut HashMap<String, String>,
    fail: &Fail,
) -> Result<(), Diagnostic> {
    let name = user.get_ref();
    let mut chars = name.chars();
    let valid = matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && name.len() <= 32
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'));
    if !valid {
        return Err(fail(
            user.span(),
            format!("user \"{name}\" is not a valid user name"),
            "use lowercase letters, digits, '-' and '_' (at most 32), like \"app-staging\"",
        ));
    }
    if name == "root" {
        return Err(fail(
            user.span(),
            "user = \"root\" would give deployed code ferry's own powers".into(),
            "give the environment an unprivileged user of its own",
        ));
    }
    if let Some(other) = users.get(name) {
        return Err(fail(
            user.span(),
            format!("user \"{name}\" is already the user of environment {other}"),
            "give every environment its own user: code deployed to one could otherwise write the other's data",
        ));
    }
    users.insert(name.clone(), env.to_string());
    Ok(())
}

/// Environment names become directory names and URL segments.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && name.len() <= 63
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

//! Pipeline: deployments, one task each, running the steps in order under the environment's
//! lock, and the environments' live state (proxy, log, active instance).
//!
//! Steps: resolve → policy → lock → prepare → build → test → pre_deploy → backup → release →
//! start → health → check → rollout → switch → monitor → finish → post_deploy (`steps.rs`,
//! with `prepare.rs`, `release_command.rs`, `serving.rs`, `checks.rs`, `rollout.rs`,
//! `retention.rs` and `hooks.rs`); rollbacks reuse a built release (`rollback.rs`); restarts
//! start the serving release again (`restart.rs`). An environment with `servers` goes over its
//! hosts after pre_deploy (`hosts.rs`, with `host_conn.rs`, `host_monitor.rs`; lost hosts are
//! put back by `reconcile.rs`).
//! Each step is written to the store as running before it acts, and finished with its
//! outcome and output tail after. A failure before the switch stops the new instance (if one
//! was started) and leaves the old one serving; a monitor breach switches back to the old
//! one, kept warm until monitoring ends. The lock is always released.

mod accessories;
mod actions;
mod approval;
mod checks;
mod environment;
mod exec;
mod hooks;
mod host_conn;
mod host_finish;
mod host_monitor;
mod host_status;
mod hosts;
mod monitor;
mod prepare;
mod processes;
mod queue;
mod reconcile;
mod recover;
mod release_command;
mod restart;
mod retention;
mod rollback;
mod rollout;
mod secrets;
mod serving;
mod steps;
mod triggers;
mod watch;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::config::{Config, Environment};
use crate::proxy::Proxy;
use crate::release::{ReleaseError, check_ref};
use crate::runtime::{self, LogSink, Secrets};
use crate::sandbox::{self, Redactor};
use crate::store::{Actor, Deployment, DeploymentState, Store, StoreError};

pub use accessories::AccessoryAction;
pub use actions::{CheckReport, FETCH_INTERVAL, Mirror, Plan, check_sha};
pub use exec::{EXEC_PROCESSES, ExecCommand, shell_words};
pub use hooks::OUTCOME_HOOKS;
pub use host_status::HostStatus;
pub use queue::Queued;
pub use rollback::{ReleaseRef, RollbackPreview};
pub use rollout::{RolloutAction, RolloutAnswer, RolloutStatus};

/// The free space the state dir's disk needs before a deployment starts.
pub const MIN_FREE_BYTES: u64 = 64 * 1024 * 1024;

fn human_bytes(n: u64) -> String {
    if n >= 1024 * 1024 {
        format!("{} MiB", n / (1024 * 1024))
    } else {
        format!("{} KiB", n / 1024)
    }
}

/// The steps of a deploy, in the order they run.
pub const DEPLOY_STEPS: &[&str] = &[
    "resolve",
    "policy",
    "lock",
    "prepare",
    "build",
    "test",
    "pre_deploy",
    "backup",
    "release",
    "start",
    "health",
    "check",
    "rollout",
    "switch",
    "monitor",
    "finish",
    "post_deploy",
];
/// The steps of a rollback, in the order they run.
pub const ROLLBACK_STEPS: &[&str] = &[
    "resolve",
    "policy",
    "lock",
    "prepare",
    "build",
    "test",
    "restore",
    "release",
    "start",
    "health",
    "switch",
    "monitor",
    "finish",
    "on_rollback",
];

/// The steps of a restart (the serving release started again), in the order they run.
pub const RESTART_STEPS: &[&str] = &[
    "resolve", "lock", "prepare", "start", "health", "switch", "finish",
];

/// The steps a deployment of `kind` (`deploy`, `rollback` or `restart`) goes through.
pub fn planned_steps(kind: &str) -> &'static [&'static str] {
    match kind {
        "rollback" => ROLLBACK_STEPS,
        "restart" => RESTART_STEPS,
        _ => DEPLOY_STEPS,
    }
}
pub use approval::{ApprovalError, Approvals};
pub use environment::{EnvState, EnvStatus};
pub(crate) use environment::{Open as DrainOpen, drain_report};
pub use processes::ProcessStatus;
pub use triggers::{Push, Pushed, Tracked, is_deleted};

/// Errors answering a deployment request (the deployment itself records its own outcome).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("unknown environment \"{name}\"; environments: {known}")]
    UnknownEnvironment { name: String, known: String },
    #[error("{0}")]
    BadRef(#[from] ReleaseError),
    #[error("{message}")]
    Busy { message: String, deployment: i64 },
    #[error("deployment {0} not found")]
    NotFound(i64),
    #[error("{0}")]
    Store(StoreError),
    #[error("cannot listen on {addr} for environment {env}: {source} (is another program using port {port}?)", port = addr.port())]
    Bind {
        env: String,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot open the log of environment {env}: {source}")]
    Log { env: String, source: std::io::Error },
    #[error("{0}")]
    NoRollbackTarget(String),
    /// The request itself is wrong (a missing reason, a bad check report).
    #[error("{0}")]
    Invalid(String),
    /// The request is understood but not allowed now (not verified, not waiting, ...).
    #[error("{0}")]
    Conflict(String),
    /// The caller may not do this (the deployer approving their own deployment).
    #[error("{0}")]
    Forbidden(String),
    /// The state dir cannot take the writes a deployment makes (full disk, read-only).
    #[error("{0}")]
    Storage(String),
    /// An environment's user or directories cannot be set up.
    #[error("{0}")]
    Sandbox(#[from] crate::sandbox::SandboxError),
}

impl From<ApprovalError> for EngineError {
    fn from(e: ApprovalError) -> Self {
        match e {
            ApprovalError::Store(crate::store::StoreError::NotFound) => {
                EngineError::Conflict("no such deployment".into())
            }
            ApprovalError::Store(e) => EngineError::Store(e),
            e => EngineError::Conflict(e.to_string()),
        }
    }
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        if e.is_disk_full() {
            return EngineError::Storage(format!(
                "refused: the disk holding ferry's state dir is full ({e}); nothing was changed"
            ));
        }
        EngineError::Store(e)
    }
}

impl Engine {
    /// `text` with every path inside the app's state dir written relative to it
    /// (`environments/staging/releases/v1.2.0-1a2b3c4`): what a step records, so step
    /// lines stay short wherever they are shown.
    pub(super) fn shorten_paths(&self, text: &str) -> String {
        shorten_paths(text, &self.config.state_dir)
    }
}

fn shorten_paths(text: &str, state_dir: &std::path::Path) -> String {
    let prefix = format!("{}/", state_dir.display());
    if prefix.len() < 2 || !state_dir.is_absolute() {
        return text.to_string();
    }
    text.replace(&prefix, "")
}

/// The path of `env`'s env file: relative paths are read from its shared dir.
pub(crate) fn env_file_path(config: &Config, env: &Environment) -> Option<std::path::PathBuf> {
    let path = env.env_file.as_ref()?;
    Some(if path.is_absolute() {
        path.clone()
    } else {
        config.env_dir(&env.name).join("shared").join(path)
    })
}

/// `env`'s secrets when its env file can be read now (for the redactor; a start reads the
/// file again and reports what is wrong with it).
fn read_env_file(config: &Config, env: &Environment) -> Option<Secrets> {
    Secrets::read(&env_file_path(config, env)?).ok()
}

/// The deployment engine: owns every environment's proxy and instances.
pub struct Engine {
    pub config: Arc<Config>,
    pub store: Store,
    envs: BTreeMap<String, Arc<EnvState>>,
    /// Mirror fetches and lookups run one at a time; inside, when the API last asked for a
    /// fetch (see `fetch_mirror`).
    git: tokio::sync::Mutex<Option<std::time::Instant>>,
    /// Every instance started and not yet stopped, by store id, so shutdown stops them all.
    instances: Mutex<BTreeMap<i64, runtime::Instance>>,
    approvals: Approvals,
    /// Per environment, the pushed deployment waiting for the one under way to finish.
    queued: Mutex<BTreeMap<String, i64>>,
    /// Deployments allowed to wait for the lock, and each environment's line at it.
    lock_queue: queue::LockQueue,
    /// Held while a push is checked against earlier ones and acted on.
    pushes: Mutex<()>,
    /// Known secret values, masked in every step output, message and app log line.
    pub redactor: Arc<Redactor>,
    /// True while this engine hands over to a new `serve`: no deployment may start. Held
    /// while a deployment is recorded, so one is either recorded before the handover looks
    /// for running ones or refused.
    handing_over: Mutex<bool>,
    /// The certificates the front door serves (see [`crate::frontdoor`]), with their status.
    pub certs: Arc<crate::tls::CertStore>,
    /// ACME HTTP-01 answers the front door's http listener gives.
    pub challenges: Arc<crate::tls::Challenges>,
    /// What runs the app's instances (`[app] runtime`).
    pub runtime: runtime::Runtime,
}

impl Engine {
    /// Sets up environments (their users and dirs, proxies idle, logs open); nothing listens
    /// or runs yet.
    pub fn new(config: Arc<Config>, store: Store) -> Result<Arc<Engine>, EngineError> {
        let tls = (crate::tls::CertStore::new(), crate::tls::Challenges::new());
        Engine::sharing_tls(config, store, tls)
    }

    /// [`Engine::new`] with the front door's certificates and ACME answers given: one set
    /// for every app of a serve.
    pub fn sharing_tls(
        config: Arc<Config>,
        store: Store,
        (certs, challenges): (Arc<crate::tls::CertStore>, Arc<crate::tls::Challenges>),
    ) -> Result<Arc<Engine>, EngineError> {
        let redactor = Arc::new(Redactor::default());
        let webhook_vars: Vec<&str> = [
            config.webhooks.github_secret_env.as_deref(),
            config.webhooks.gitlab_token_env.as_deref(),
        ]
        .into_iter()
        .flatten()
        .collect();
        redactor.add_process_env(&webhook_vars);
        sandbox::secure_state_dir(&config.state_dir)?;
        let mut envs = BTreeMap::new();
        for env in &config.environments {
            let dir = config.env_dir(&env.name);
            let run_as = sandbox::resolve_user(&config.app.name, env)?;
            sandbox::prepare_env_dir(&dir, run_as.as_ref(), &config.app.shared)?;
            if let Some(secrets) = read_env_file(&config, env) {
                redactor.add(secrets.values());
            }
            let log = LogSink::open(dir.join("logs").join("app.log"))
                .map_err(|source| EngineError::Log {
                    env: env.name.clone(),
                    source,
                })?
                .with_redactor(redactor.clone());
            let proxy = if env.access_log {
                let path = dir.join("logs").join("access.log");
                let access =
                    crate::proxy::AccessLog::open(path).map_err(|source| EngineError::Log {
                        env: env.name.clone(),
                        source,
                    })?;
                Proxy::with_access_log(&env.name, access)
            } else {
                Proxy::new(&env.name)
            };
            proxy.set_metrics(env.traffic_metrics);
            envs.insert(
                env.name.clone(),
                Arc::new(EnvState::new(env.clone(), proxy, log, run_as)),
            );
        }
        if !sandbox::is_root() {
            tracing::warn!(
                "ferry is not running as root: build, test and app commands run as ferry's own user and can read its state dir (see the README, \"Trust boundaries\")"
            );
        }
        let runtime = runtime::Runtime::new(
            config.app.runtime.clone(),
            &config.app.name,
            &config.server_dir,
        );
        Ok(Arc::new(Engine {
            config,
            store,
            envs,
            git: tokio::sync::Mutex::new(None),
            instances: Mutex::new(BTreeMap::new()),
            approvals: Approvals::default(),
            queued: Mutex::new(BTreeMap::new()),
            lock_queue: queue::LockQueue::default(),
            pushes: Mutex::new(()),
            redactor,
            handing_over: Mutex::new(false),
            certs,
            challenges,
            runtime,
        }))
    }

    pub fn env(&self, name: &str) -> Result<&Arc<EnvState>, EngineError> {
        self.envs
            .get(name)
            .ok_or_else(|| EngineError::UnknownEnvironment {
                name: name.to_string(),
                known: self.config.environment_names().join(", "),
            })
    }

    pub fn environments(&self) -> impl Iterator<Item = &Arc<EnvState>> {
        self.envs.values()
    }

    /// Records a deployment of `git_ref` to `env` and starts it in the background.
    /// `force` is the reason given with `--force`: it lets the deploy through freeze windows.
    pub fn request(
        self: &Arc<Self>,
        env: &str,
        git_ref: &str,
        who: &Actor,
        force: Option<&str>,
    ) -> Result<Deployment, EngineError> {
        self.request_with(env, git_ref, who, force, None)
    }

    /// [`Engine::request`]; with `wait`, not refused when the environment is locked, but
    /// queued at the lock step for that long (see `queue.rs`).
    fn request_with(
        self: &Arc<Self>,
        env: &str,
        git_ref: &str,
        who: &Actor,
        force: Option<&str>,
        wait: Option<std::time::Duration>,
    ) -> Result<Deployment, EngineError> {
        let state = self.env(env)?.clone();
        check_ref(git_ref)?;
        if let Some(reason) = force
            && reason.trim().is_empty()
        {
            return Err(EngineError::Invalid(
                "--force needs --reason \"…\": say why the freeze is overridden".into(),
            ));
        }
        let id = self.create(env, "deploy", git_ref, who)?;
        if force.is_some() {
            self.store.set_request(id, force, true, false)?;
        }
        match wait {
            Some(wait) => self.allow_wait(id, wait),
            None => {
                if let Some(refused) = self.refuse_if_locked(env, id)? {
                    return Err(refused);
                }
                if let Some(refused) = self.refuse_if_queued(env, id)? {
                    return Err(refused);
                }
            }
        }
        self.launch(id, state);
        Ok(self.store.deployment(id)?)
    }

    fn create(
        &self,
        env: &str,
        kind: &str,
        git_ref: &str,
        who: &Actor,
    ) -> Result<i64, EngineError> {
        self.check_storage()?;
        let handing_over = self.handing_over.lock().unwrap_or_else(|e| e.into_inner());
        if *handing_over {
            return Err(EngineError::Conflict(
                "ferry is handing over to a new serve (a restart or an upgrade); try again in a few seconds".into(),
            ));
        }
        Ok(self
            .store
            .create_deployment_by(env, kind, git_ref, who, DeploymentState::Queued)?)
    }

    /// Why this engine cannot hand over to a new `serve` now, if it cannot: a deployment is
    /// under way (or queued, or waiting for approval), or ferry is bringing an environment
    /// back (a restore or a restart holds its lock).
    pub fn handover_blocker(&self) -> Result<Option<String>, EngineError> {
        if let Some(d) = self.store.unfinished()?.first() {
            let step = d
                .step
                .as_deref()
                .map(|s| format!(", step {s}"))
                .unwrap_or_default();
            return Ok(Some(format!(
                "deployment {} to {} is {}{step}; wait until it has finished (ferry show {}), then try again",
                d.id,
                d.environment,
                d.state.as_str(),
                d.id
            )));
        }
        for state in self.environments() {
            if let Some(h) = self.store.lock_holder(&state.env.name)?
                && h.kind == "restore"
            {
                return Ok(Some(format!(
                    "{} holds environment {} since {}; wait until it serves again, then try again",
                    h.holder, state.env.name, h.since
                )));
            }
        }
        Ok(None)
    }

    /// Stops new deployments for a handover, unless one is under way (see
    /// [`Engine::handover_blocker`]): then nothing changes and the reason is returned.
    pub fn begin_handover(&self) -> Result<(), String> {
        let mut handing_over = self.handing_over.lock().unwrap_or_else(|e| e.into_inner());
        match self.handover_blocker() {
            Ok(None) => {
                *handing_over = true;
                Ok(())
            }
            Ok(Some(reason)) => Err(reason),
            Err(e) => Err(format!("cannot read the store: {e}")),
        }
    }

    /// Lets deployments start again: the handover did not happen, and this engine goes on
    /// (its instances' output is read again).
    pub fn end_handover(&self) {
        *self.handing_over.lock().unwrap_or_else(|e| e.into_inner()) = false;
        for instance in self
            .instances
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            instance.reattach();
        }
    }

    /// Refuses to start anything when the state dir's disk is nearly full or not writable:
    /// a deployment that cannot record its steps, export its release or take its backups
    /// must not begin. Checked before the deployment is even recorded, so nothing changes.
    pub fn check_storage(&self) -> Result<(), EngineError> {
        let dir = &self.config.state_dir;
        let refuse = |what: String| {
            EngineError::Storage(format!(
                "refused: {what}; nothing was changed (free space under {} and try again)",
                dir.display()
            ))
        };
        let stat = nix::sys::statvfs::statvfs(dir.as_path()).map_err(|e| {
            refuse(format!(
                "cannot check the free space of {}: {e}",
                dir.display()
            ))
        })?;
        let free = stat.blocks_available() as u64 * stat.fragment_size() as u64;
        if free < MIN_FREE_BYTES {
            return Err(refuse(format!(
                "the disk holding the state dir {} has {} free; a deployment needs at least {}",
                dir.display(),
                human_bytes(free),
                human_bytes(MIN_FREE_BYTES)
            )));
        }
        // free space is not the only way to fail: a read-only or broken disk shows on a write
        let probe = dir.join(".write-check");
        let written = std::fs::File::create(&probe).and_then(|mut f| {
            std::io::Write::write_all(&mut f, &[0u8; 4096])?;
            f.sync_all()
        });
        let _ = std::fs::remove_file(&probe);
        written.map_err(|e| {
            refuse(format!(
                "cannot write to the state dir {}: {e}",
                dir.display()
            ))
        })
    }

    /// A deployment asked for while the environment is locked is recorded as refused at once.
    fn refuse_if_locked(&self, env: &str, id: i64) -> Result<Option<EngineError>, EngineError> {
        let Some(held) = self.store.lock_holder(env)? else {
            return Ok(None);
        };
        let message = held.refusal(env);
        self.store
            .set_state(id, DeploymentState::Refused, Some(&message))?;
        Ok(Some(EngineError::Busy {
            message,
            deployment: id,
        }))
    }

    fn launch(self: &Arc<Self>, id: i64, state: Arc<EnvState>) {
        let engine = self.clone();
        let span = tracing::info_span!("deploy", id, env = %state.env.name);
        tokio::spawn(tracing::Instrument::instrument(engine.run(id, state), span));
    }

    /// A deployment with its steps.
    pub fn deployment(
        &self,
        id: i64,
    ) -> Result<(Deployment, Vec<crate::store::Step>), EngineError> {
        let d = self.store.deployment(id).map_err(|e| match e {
            StoreError::NotFound => EngineError::NotFound(id),
            e => EngineError::Store(e),
        })?;
        let steps = self.store.steps(id)?;
        Ok((d, steps))
    }

    fn track_instance(&self, id: i64, instance: runtime::Instance) {
        self.instances
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, instance);
    }

    /// Stops an instance and records it stopped.
    async fn stop_instance(&self, id: i64, instance: &runtime::Instance) {
        instance.stop(self.config.app.stop_timeout).await;
        self.instances
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        if let Err(e) = self.store.instance_stopped(id) {
            tracing::error!(error = %e, "cannot record a stopped instance");
        }
    }

    /// Leaves every instance running for the next `serve` to adopt (on `serve` shutdown,
    /// by default, and on a takeover): their output is no longer read once what was read is
    /// in the log, and the store keeps them as running.
    pub async fn leave_running(&self) {
        let all: Vec<_> = self
            .instances
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        futures_util::future::join_all(all.iter().map(|i| i.detach())).await;
    }

    /// Stops every instance ferry started (on `serve` shutdown with `--stop-apps`).
    pub async fn shutdown(&self) {
        let all: Vec<_> =
            std::mem::take(&mut *self.instances.lock().unwrap_or_else(|e| e.into_inner()))
                .into_iter()
                .collect();
        let stops = all.iter().map(|(id, instance)| async move {
            instance.stop(self.config.app.stop_timeout).await;
            let _ = self.store.instance_stopped(*id);
        });
        futures_util::future::join_all(stops).await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn step_paths_are_shown_relative_to_the_state_dir() {
        let dir = std::path::Path::new("/var/lib/ferry/apps/shop");
        assert_eq!(
            super::shorten_paths(
                "exported 1a2b into /var/lib/ferry/apps/shop/environments/staging/releases/v1-1a2b\n",
                dir
            ),
            "exported 1a2b into environments/staging/releases/v1-1a2b\n"
        );
        // another dir, or the state dir's name alone, are left as they are
        let other = "/var/lib/ferry/apps/shopping/x and /var/lib/ferry/apps/shop";
        assert_eq!(super::shorten_paths(other, dir), other);
        assert_eq!(
            super::shorten_paths("a/b", std::path::Path::new("rel")),
            "a/b"
        );
    }
}

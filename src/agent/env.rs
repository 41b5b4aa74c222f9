//! One environment of one app on a host, as the agent daemon runs it: its instances
//! (through [`crate::runtime`], as `serve` runs them), its proxy on the environment's
//! `listen` address, its app log, and its state file, written at every change.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::files::{self, Layout, ReleaseMeta};
use super::protocol::{
    ErrorKind, InstanceId, InstanceInfo, ProbeAnswer, ReleaseInfo, RemoteError, SecretVars,
    StartAnswer, StartRequest, StatusAnswer, TaskAnswer, TaskRequest,
};
use super::state::{Recorded, StateFile, boot_id, secret_values};
use crate::proxy::{Proxy, Upstream};
use crate::runtime::{Identity, Instance, InstanceSpec, Leftover, LogSink, Runtime, Secrets};

/// An environment on the host.
pub struct Env {
    pub app: String,
    pub env: String,
    layout: Layout,
    runtime: Runtime,
    log: LogSink,
    redactor: Arc<crate::sandbox::Redactor>,
    proxy: Proxy,
    state: tokio::sync::Mutex<State>,
    /// Held while the environment's copy of a release is made.
    preparing: tokio::sync::Mutex<()>,
    /// The app's releases: held shared while an instance or task is started from one (and
    /// for a task's run), exclusively by a prune.
    releases: Arc<tokio::sync::RwLock<()>>,
}

#[derive(Default)]
struct State {
    instances: BTreeMap<InstanceId, Running>,
    serving: Option<InstanceId>,
    next_id: InstanceId,
    listening: Option<Listening>,
}

struct Listening {
    addr: String,
    stop: watch::Sender<bool>,
}

struct Running {
    instance: Instance,
    upstream: Arc<Upstream>,
    recorded: Recorded,
    /// Being drained and stopped: it takes no traffic, and its release stays.
    stopping: bool,
}

/// An instance being drained and stopped.
struct Stopping {
    instance: Instance,
    upstream: Arc<Upstream>,
    release: String,
    stop_timeout: Duration,
}

/// A runtime error as an answer: `disk_full` when the disk is full.
fn runtime_error(e: &crate::runtime::RuntimeError) -> RemoteError {
    let text = e.to_string();
    let kind = if files::text_says_full(&text) {
        ErrorKind::DiskFull
    } else {
        ErrorKind::Internal
    };
    RemoteError::new(kind, text)
}

/// What [`Env::spec`] makes a spec of.
struct Launch<'a> {
    release: &'a str,
    release_dir: PathBuf,
    command: &'a str,
    port: u16,
    /// ferry's variables and the environment's `env` (and `PORT`).
    app_vars: Vec<(String, String)>,
    secrets: &'a SecretVars,
    stop_timeout: Duration,
    output: PathBuf,
}

fn not_found(message: impl Into<String>) -> RemoteError {
    RemoteError::new(ErrorKind::NotFound, message)
}

fn bad(message: impl Into<String>) -> RemoteError {
    RemoteError::new(ErrorKind::BadRequest, message)
}

fn internal(message: impl Into<String>) -> RemoteError {
    RemoteError::new(ErrorKind::Internal, message)
}

impl Env {
    /// The environment `env` of `app`, its dirs made.
    pub fn open(
        layout: &Layout,
        app: &str,
        env: &str,
        releases: Arc<tokio::sync::RwLock<()>>,
    ) -> Result<Env, RemoteError> {
        for (what, name) in [("app", app), ("environment", env)] {
            if !super::protocol::valid_name(name) {
                return Err(bad(format!("{what} {name:?} is not a plain name")));
            }
        }
        if env == "releases" {
            return Err(bad(
                "an environment cannot be called \"releases\" on a host",
            ));
        }
        let dir = layout.env_dir(app, env);
        for part in ["shared", "home", "run", "releases"] {
            std::fs::create_dir_all(dir.join(part))
                .map_err(|e| internal(format!("creating {}: {e}", dir.join(part).display())))?;
        }
        let redactor = Arc::new(crate::sandbox::Redactor::default());
        let log = LogSink::open(dir.join("app.log"))
            .map_err(|e| internal(format!("opening the app log: {e}")))?
            .with_redactor(redactor.clone());
        Ok(Env {
            app: app.to_string(),
            env: env.to_string(),
            layout: layout.clone(),
            runtime: Runtime::new(crate::config::Runtime::Process, app, &layout.dir),
            log,
            redactor,
            proxy: Proxy::new(env),
            state: tokio::sync::Mutex::new(State {
                next_id: 1,
                ..State::default()
            }),
            preparing: tokio::sync::Mutex::new(()),
            releases,
        })
    }

    fn dir(&self) -> PathBuf {
        self.layout.env_dir(&self.app, &self.env)
    }

    /// Takes over what the state file records: the instances still alive (same pid and
    /// process start time) are adopted, and the proxy listens again and serves the
    /// recorded instance if it is among them. Dead ones are forgotten.
    pub async fn adopt(&self) {
        let path = self.layout.state_file(&self.app, &self.env);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot read the state file: its instances are not adopted");
                return;
            }
        };
        let mut file = match serde_json::from_slice::<StateFile>(&bytes) {
            Ok(file) => file,
            Err(e) => {
                // kept for a person to read, never overwritten
                let aside =
                    path.with_extension(format!("json.bad-{}", super::daemon::random_hex()));
                let _ = std::fs::rename(&path, &aside);
                tracing::error!(path = %path.display(), aside = %aside.display(), error = %e, "the state file is not valid: moved aside, its instances are not adopted");
                return;
            }
        };
        if file.boot_id != boot_id() {
            tracing::info!(app = %self.app, env = %self.env, "the host rebooted since the state file was written: no instance of it runs");
            file.instances.clear();
        }
        let mut state = self.state.lock().await;
        state.next_id = file.next_id.max(1);
        for rec in file.instances {
            let left = Leftover {
                pid: rec.pid,
                proc_start: rec.proc_start,
                port: rec.port,
                container: None,
                output: rec.output.clone(),
            };
            if self.runtime.is_running(&left).await != Some(true) {
                tracing::info!(app = %self.app, env = %self.env, pid = rec.pid, "an instance recorded is gone");
                continue;
            }
            // before its output is read again: what it printed meanwhile is masked too
            self.redactor.add(secret_values(rec.pid, &rec.secret_names));
            match self.runtime.adopt(&left, &self.log).await {
                Ok(instance) => {
                    tracing::info!(app = %self.app, env = %self.env, pid = rec.pid, release = %rec.release, "adopted an instance");
                    let upstream = Upstream::new(([127, 0, 0, 1], rec.port).into());
                    state.instances.insert(
                        rec.id,
                        Running {
                            instance,
                            upstream,
                            recorded: rec,
                            stopping: false,
                        },
                    );
                }
                Err(e) => {
                    tracing::warn!(app = %self.app, env = %self.env, pid = rec.pid, error = %e, "cannot adopt an instance")
                }
            }
        }
        if let (Some(id), Some(listen)) = (file.serving, file.listen)
            && let Some(upstream) = state.instances.get(&id).map(|r| r.upstream.clone())
        {
            match self.listen(&mut state, &listen).await {
                Ok(()) => {
                    self.proxy.switch(Some(upstream));
                    state.serving = Some(id);
                }
                Err(e) => {
                    tracing::error!(app = %self.app, env = %self.env, listen = %listen, error = %e.message, "cannot listen again")
                }
            }
        }
        if let Err(e) = self.save(&state) {
            tracing::error!(app = %self.app, env = %self.env, error = %e.message, "cannot write the state file");
        }
    }

    /// Writes the state file (temp file, rename).
    fn save(&self, state: &State) -> Result<(), RemoteError> {
        let file = StateFile {
            boot_id: boot_id(),
            listen: state.listening.as_ref().map(|l| l.addr.clone()),
            serving: state.serving,
            next_id: state.next_id,
            instances: state
                .instances
                .values()
                .map(|r| r.recorded.clone())
                .collect(),
        };
        let path = self.layout.state_file(&self.app, &self.env);
        serde_json::to_vec_pretty(&file)
            .map_err(std::io::Error::other)
            .and_then(|bytes| files::write_atomic(&path, &bytes))
            .map_err(|e| files::io_error(&format!("writing {}", path.display()), &e))
    }

    /// The release's record, if the host has it.
    fn release_meta(&self, release: &str) -> Result<ReleaseMeta, RemoteError> {
        if !super::protocol::valid_name(release) {
            return Err(bad(format!("release {release:?} is not a plain name")));
        }
        let dir = self.layout.release(&self.app, release);
        match ReleaseMeta::read(&self.layout.release_meta(&self.app, release)) {
            Some(meta) if dir.is_dir() => Ok(meta),
            _ => Err(not_found(format!(
                "release {release} of {} is not on this host: ship it first",
                self.app
            ))),
        }
    }

    /// The environment's copy of `release` (made when missing or from other bytes).
    async fn env_release(&self, release: &str) -> Result<PathBuf, RemoteError> {
        // two starts of one release in one environment make its copy once
        let _preparing = self.preparing.lock().await;
        let meta = self.release_meta(release)?;
        let view = self.layout.env_release(&self.app, &self.env, release);
        let marker = self
            .dir()
            .join("releases")
            .join(format!(".{release}.digest"));
        let current = std::fs::read_to_string(&marker).ok();
        if view.is_dir() && current.as_deref() == Some(meta.digest.as_str()) {
            return Ok(view);
        }
        if view.exists() {
            let state = self.state.lock().await;
            if state
                .instances
                .values()
                .any(|r| r.recorded.release == release && r.instance.exited().is_none())
            {
                return Err(bad(format!(
                    "release {release} runs in {} from other bytes than the host's copy: stop its instances first",
                    self.env
                )));
            }
            let _ = std::fs::remove_dir_all(&view);
        }
        let from = self.layout.release(&self.app, release);
        let shared_dir = self.dir().join("shared");
        let (to, shared) = (view.clone(), meta.shared.clone());
        tokio::task::spawn_blocking(move || {
            files::make_env_release(&from, &to, &shared_dir, &shared)
        })
        .await
        .map_err(|e| internal(e.to_string()))?
        .map_err(|e| {
            let kind = if files::text_says_full(&e) {
                ErrorKind::DiskFull
            } else {
                ErrorKind::BadRequest
            };
            RemoteError::new(
                kind,
                format!("cannot prepare release {release} for {}: {e}", self.env),
            )
        })?;
        files::write_atomic(&marker, meta.digest.as_bytes())
            .map_err(|e| internal(format!("writing {}: {e}", marker.display())))?;
        Ok(view)
    }

    /// What an instance or task is started with.
    fn spec(&self, launch: Launch<'_>) -> InstanceSpec {
        let Launch {
            release,
            release_dir,
            command,
            port,
            app_vars,
            secrets,
            stop_timeout,
            output,
        } = launch;
        let dir = self.dir();
        let home = crate::sandbox::home_dir(&dir);
        self.redactor.add(secrets.0.values());
        let mut vars = crate::sandbox::command_env(&home, None, &[]);
        vars.extend(app_vars.iter().cloned());
        let mut secret_values = Secrets::default();
        for (k, v) in &secrets.0 {
            secret_values.insert_from_command(k, v.clone());
        }
        let var = |name: &str| {
            app_vars
                .iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        InstanceSpec {
            release_dir: release_dir.clone(),
            start: command.to_string(),
            port,
            vars,
            app_vars: app_vars.clone(),
            secrets: secret_values,
            env_file: None,
            confinement: crate::sandbox::Confinement {
                run_as: None,
                state_dir: Some(self.layout.dir.clone()),
                read: vec![release_dir],
                write: vec![dir.join("shared"), home],
            },
            output,
            identity: Identity {
                app: self.app.clone(),
                env: self.env.clone(),
                release: release.to_string(),
                version: var("APP_VERSION"),
                commit: var("COMMIT_SHA"),
                home: self.runtime.home().to_string(),
                process: String::new(),
            },
            image: None,
            shared_dir: dir.join("shared"),
            stop_timeout,
        }
    }

    /// Starts an instance of a release the host has.
    pub async fn start(&self, req: &StartRequest) -> Result<StartAnswer, RemoteError> {
        // no prune removes the release until the instance is recorded
        let _release_kept = self.releases.read().await;
        let release_dir = self.env_release(&req.release).await?;
        let port = crate::runtime::free_port().map_err(|e| internal(e.to_string()))?;
        let mut app_vars = req.vars.clone();
        app_vars.push(("PORT".into(), port.to_string()));
        let stop_timeout = Duration::from_millis(req.stop_timeout_ms);
        let output = self.dir().join("run").join(format!("{port}.out"));
        let spec = self.spec(Launch {
            release: &req.release,
            release_dir,
            command: &req.start,
            port,
            app_vars,
            secrets: &req.secrets,
            stop_timeout,
            output: output.clone(),
        });
        let instance = self
            .runtime
            .start(&spec, &self.log)
            .await
            .map_err(|e| runtime_error(&e))?;
        let pid = instance.pid().unwrap_or_default();
        let mut state = self.state.lock().await;
        let id = state.next_id;
        state.next_id += 1;
        let recorded = Recorded {
            id,
            release: req.release.clone(),
            port,
            pid,
            proc_start: crate::runtime::process_start_time(pid),
            output,
            started_at: crate::store::now(),
            stop_timeout_ms: req.stop_timeout_ms,
            secret_names: req.secrets.0.keys().cloned().collect(),
        };
        state.instances.insert(
            id,
            Running {
                instance: instance.clone(),
                upstream: Upstream::new(([127, 0, 0, 1], port).into()),
                recorded,
                stopping: false,
            },
        );
        if let Err(e) = self.save(&state) {
            // not recorded, it would be lost at the next restart: it does not run at all
            state.instances.remove(&id);
            drop(state);
            instance.stop(stop_timeout).await;
            return Err(e);
        }
        tracing::info!(app = %self.app, env = %self.env, release = %req.release, id, pid, port, "started an instance");
        Ok(StartAnswer {
            instance: id,
            port,
            pid,
        })
    }

    async fn instance(&self, id: InstanceId) -> Result<Instance, RemoteError> {
        let state = self.state.lock().await;
        state
            .instances
            .get(&id)
            .map(|r| r.instance.clone())
            .ok_or_else(|| self.no_instance(id))
    }

    fn no_instance(&self, id: InstanceId) -> RemoteError {
        not_found(format!(
            "no instance {id} of {} in {} on this host",
            self.app, self.env
        ))
    }

    /// Waits until the instance answers its health paths.
    pub async fn health(
        &self,
        id: InstanceId,
        health: &crate::config::Health,
    ) -> Result<String, RemoteError> {
        let instance = self.instance(id).await?;
        match crate::health::wait_healthy(&instance, health).await {
            Ok(log) => Ok(log),
            Err(e) => Err(RemoteError {
                kind: ErrorKind::Unhealthy,
                message: e.to_string(),
                lines: instance.last_lines().await,
            }),
        }
    }

    /// Probes one path of an instance once.
    pub async fn probe(
        &self,
        id: InstanceId,
        path: &str,
        timeout: Duration,
    ) -> Result<ProbeAnswer, RemoteError> {
        let instance = self.instance(id).await?;
        if !path.starts_with('/') {
            return Err(bad(format!("probe path {path:?} must start with /")));
        }
        let probe =
            crate::health::probe(&crate::health::client(), instance.port, path, timeout).await;
        let ms = u64::try_from(probe.elapsed.as_millis()).unwrap_or(u64::MAX);
        Ok(match probe.outcome {
            Ok(status) => ProbeAnswer {
                ok: (200..400).contains(&status),
                status: Some(status),
                ms,
                error: None,
            },
            Err(e) => ProbeAnswer {
                ok: false,
                status: None,
                ms,
                error: Some(e),
            },
        })
    }

    /// Binds the proxy's listener on `addr` unless it listens there already (a listener on
    /// another address is closed once the new one listens).
    async fn listen(&self, state: &mut State, addr: &str) -> Result<(), RemoteError> {
        if state.listening.as_ref().is_some_and(|l| l.addr == addr) {
            return Ok(());
        }
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| bad(format!("cannot listen on {addr}: {e}")))?;
        let (stop, rx) = watch::channel(false);
        let proxy = self.proxy.clone();
        tokio::spawn(proxy.serve(listener, crate::config::ProxySettings::DEFAULT, rx));
        tracing::info!(app = %self.app, env = %self.env, listen = %addr, "the proxy listens");
        if let Some(old) = state.listening.replace(Listening {
            addr: addr.to_string(),
            stop,
        }) {
            old.stop.send_replace(true);
        }
        Ok(())
    }

    /// Sends the environment's traffic to `id`; the instance that served before.
    pub async fn switch(
        &self,
        id: InstanceId,
        listen: &str,
    ) -> Result<Option<InstanceId>, RemoteError> {
        let mut state = self.state.lock().await;
        let running = state
            .instances
            .get(&id)
            .ok_or_else(|| self.no_instance(id))?;
        if let Some(status) = running.instance.exited() {
            return Err(bad(format!(
                "instance {id} has exited ({status}): it cannot take traffic"
            )));
        }
        if running.stopping {
            return Err(bad(format!("instance {id} is being stopped")));
        }
        let upstream = running.upstream.clone();
        self.listen(&mut state, listen).await?;
        let before = self.proxy.switch(Some(upstream));
        let previous = state.serving.replace(id).filter(|p| *p != id);
        if let Err(e) = self.save(&state) {
            // not recorded: the traffic goes back where it was, as the state file says
            self.proxy.switch(before);
            state.serving = previous;
            return Err(e);
        }
        tracing::info!(app = %self.app, env = %self.env, id, "switched");
        Ok(previous)
    }

    /// Drains an instance that no longer serves and stops it; the drain report. With
    /// `unserve`, a serving instance is first taken out of traffic: the proxy serves nothing.
    pub async fn stop(
        &self,
        id: InstanceId,
        drain_timeout: Duration,
        unserve: bool,
    ) -> Result<String, RemoteError> {
        let running = {
            let mut state = self.state.lock().await;
            if state.serving == Some(id) && unserve {
                let before = self.proxy.switch(None);
                state.serving = None;
                if let Err(e) = self.save(&state) {
                    self.proxy.switch(before);
                    state.serving = Some(id);
                    return Err(e);
                }
                tracing::info!(app = %self.app, env = %self.env, id, "serves nothing");
            }
            if state.serving == Some(id) {
                return Err(bad(format!(
                    "instance {id} serves {}: switch to another one before stopping it",
                    self.env
                )));
            }
            let running = state
                .instances
                .get_mut(&id)
                .ok_or_else(|| self.no_instance(id))?;
            if running.stopping {
                return Err(bad(format!("instance {id} is being stopped already")));
            }
            running.stopping = true;
            Stopping {
                instance: running.instance.clone(),
                upstream: running.upstream.clone(),
                release: running.recorded.release.clone(),
                stop_timeout: Duration::from_millis(running.recorded.stop_timeout_ms),
            }
        };
        use crate::pipeline::DrainOpen;
        let open = DrainOpen::of(&running.upstream);
        let left = running.upstream.drain(drain_timeout).await;
        let still = DrainOpen::of(&running.upstream);
        running.instance.stop(running.stop_timeout).await;
        let mut state = self.state.lock().await;
        state.instances.remove(&id);
        if let Err(e) = self.save(&state) {
            tracing::error!(app = %self.app, env = %self.env, error = %e.message, "cannot write the state file");
        }
        tracing::info!(app = %self.app, env = %self.env, id, "stopped an instance");
        Ok(crate::pipeline::drain_report(
            &running.release,
            drain_timeout,
            open,
            (left > 0).then_some(still),
        ))
    }

    /// What runs and serves, and the app's releases on the host.
    pub async fn status(&self) -> StatusAnswer {
        let state = self.state.lock().await;
        let info = |r: &Running| InstanceInfo {
            id: r.recorded.id,
            release: r.recorded.release.clone(),
            port: r.recorded.port,
            pid: r.recorded.pid,
            alive: r.instance.exited().is_none(),
            started_at: r.recorded.started_at.clone(),
        };
        StatusAnswer {
            serving: state
                .serving
                .and_then(|id| state.instances.get(&id))
                .map(info),
            instances: state.instances.values().map(info).collect(),
            releases: self
                .layout
                .releases_present(&self.app)
                .into_iter()
                .map(|(name, meta)| ReleaseInfo {
                    name,
                    digest: meta.digest,
                })
                .collect(),
            listen: state.listening.as_ref().map(|l| l.addr.clone()),
        }
    }

    /// The releases its instances run.
    pub async fn releases_in_use(&self) -> Vec<String> {
        let state = self.state.lock().await;
        state
            .instances
            .values()
            .map(|r| r.recorded.release.clone())
            .collect()
    }

    /// Runs a command of a release once, as an instance would, to its end.
    pub async fn task(&self, req: &TaskRequest) -> Result<TaskAnswer, RemoteError> {
        let _release_kept = self.releases.read().await;
        let release_dir = self.env_release(&req.release).await?;
        let stop_timeout = Duration::from_millis(req.stop_timeout_ms);
        let timeout = Duration::from_millis(req.timeout_ms);
        let output = self
            .dir()
            .join("run")
            .join(format!("task-{}.out", super::daemon::random_hex()));
        let spec = self.spec(Launch {
            release: &req.release,
            release_dir,
            command: &req.command,
            port: 0,
            app_vars: req.vars.clone(),
            secrets: &req.secrets,
            stop_timeout,
            output,
        });
        let ran = self
            .runtime
            .run_task(&spec, &req.command, timeout, &self.log, |_| {})
            .await
            .map_err(|e| runtime_error(&e))?;
        Ok(TaskAnswer {
            status: ran.status.and_then(|s| s.code()),
            success: ran.success(),
            outcome: ran.outcome(timeout),
            output: ran.lines,
        })
    }

    /// The last `lines` lines of the app log.
    pub async fn logs(&self, lines: usize) -> Result<Vec<String>, RemoteError> {
        let path = self.dir().join("app.log");
        let lines = lines.min(10_000);
        tokio::task::spawn_blocking(move || {
            let text = match std::fs::read(&path) {
                Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                Err(e) => return Err(internal(format!("reading the app log: {e}"))),
            };
            let all: Vec<&str> = text.lines().collect();
            Ok(all[all.len().saturating_sub(lines)..]
                .iter()
                .map(|l| l.to_string())
                .collect())
        })
        .await
        .map_err(|e| internal(e.to_string()))?
    }

    /// Stops reading every instance's output (the next daemon reads on), before a retire.
    pub async fn detach(&self) {
        let state = self.state.lock().await;
        for running in state.instances.values() {
            running.instance.detach().await;
        }
    }
}

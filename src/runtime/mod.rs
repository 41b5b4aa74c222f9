//! Runtime: app instances, whatever runs them.
//!
//! An [`Instance`] is one running copy of a release, listening on its own port on 127.0.0.1
//! behind the environment's proxy. The pipeline starts, health-checks, switches to, stops and
//! adopts instances through this module only; which backend runs them is the app's
//! `runtime`:
//!
//! - [`process`]: `start` through `sh -c` in the release dir, in its own process group,
//!   confined to the environment's user and dirs (the default).
//! - [`container`]: a container of the release's image, made by `docker run` (`docker`) or by
//!   `docker compose run` of the routed service (`compose`), then driven with the docker CLI.
//!
//! Every backend sends the instance's output to the environment's rotated log ([`LogSink`])
//! in whole lines, secrets masked, keeping the last lines for failure reports.

use std::fmt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

pub mod container;
mod output;
pub mod process;
mod secrets;
mod task;

use output::LineTap;
pub use output::LogSink;
pub use process::{group_alive, kill_group, process_start_time};
pub use secrets::{Secrets, run_command as run_secret_command, started_with};
pub use task::{TaskOutput, secret_vars};

/// Size at which the app log is rotated.
pub const LOG_ROTATE_BYTES: u64 = 10 * 1024 * 1024;
/// Files kept: `app.log`, `app.log.1`, `app.log.2`.
pub const LOG_FILES_KEPT: usize = 3;
/// Output lines each instance keeps in memory for failure reports ([`Instance::last_lines`]).
pub const LAST_LINES: usize = 40;
/// The longest of those lines kept, in characters (the rest is cut after redaction).
const LAST_LINE_CHARS: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot read env_file {}: {source}", path.display())]
    EnvFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("env_file {}, line {line}: expected KEY=VALUE", path.display())]
    EnvFileSyntax { path: PathBuf, line: usize },
    /// A `secrets` command failed (never with what it printed on stdout).
    #[error("secret {name}: {why}")]
    SecretCommand { name: String, why: String },
    #[error("cannot start `{command}`: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("no free port: {0}")]
    Port(std::io::Error),
    #[error("cannot make the output pipe {}: {source}", path.display())]
    Pipe {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Docker(#[from] crate::docker::DockerError),
    #[error(transparent)]
    Compose(#[from] crate::docker::compose::ComposeError),
    #[error("{path}: {why}")]
    Unsafe { path: String, why: String },
    #[error("release {release} has no image recorded: deploy it again to build one")]
    NoImage { release: String },
}

/// A port on 127.0.0.1 that nothing listens on right now.
pub fn free_port() -> Result<u16, RuntimeError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(RuntimeError::Port)?;
    Ok(listener.local_addr().map_err(RuntimeError::Port)?.port())
}

/// Everything needed to start one instance.
#[derive(Debug, Clone, Default)]
pub struct InstanceSpec {
    pub release_dir: PathBuf,
    /// The command (process); with a container runtime, the container's command run by the
    /// image's `/bin/sh -c` (empty: the image's own).
    pub start: String,
    pub port: u16,
    /// The instance's whole environment but the secrets: the sandbox's allowlist, ferry's
    /// variables and the environment's `env`, in that order. Nothing else is inherited.
    pub vars: Vec<(String, String)>,
    /// ferry's variables and the environment's `env` only: what a container gets (the
    /// host's allowlist is no business of an image).
    pub app_vars: Vec<(String, String)>,
    pub secrets: Secrets,
    /// The env file the secrets came from (a container gets a copy of it, byte for byte).
    pub env_file: Option<PathBuf>,
    /// Who it runs as and what of the state dir it reaches.
    pub confinement: crate::sandbox::Confinement,
    /// Where the named pipe carrying the instance's output is made.
    pub output: PathBuf,
    /// Whose instance it is: container names and labels.
    pub identity: Identity,
    /// The release's image id (container runtimes).
    pub image: Option<String>,
    /// The environment's shared dir (mounted into a container).
    pub shared_dir: PathBuf,
    /// How long it gets between the polite signal and the kill.
    pub stop_timeout: Duration,
}

/// Whose an instance is.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    pub app: String,
    pub env: String,
    pub release: String,
    pub version: String,
    pub commit: String,
    /// Which ferry (see [`container::LABEL_HOME`]).
    pub home: String,
    /// Its process type (`[processes]`; empty: `web`).
    pub process: String,
}

/// An instance a previous ferry left running, as the store recorded it.
#[derive(Debug, Clone)]
pub struct Leftover {
    pub pid: u32,
    pub proc_start: Option<i64>,
    pub port: u16,
    pub container: Option<String>,
    /// Its output pipe.
    pub output: PathBuf,
}

impl Leftover {
    /// The run dir its output pipe and files are in.
    fn run_dir(&self) -> PathBuf {
        self.output.parent().map(PathBuf::from).unwrap_or_default()
    }
}

/// The app's runtime: starts, stops and adopts its instances, and builds and removes the
/// images of container apps. The pipeline drives every backend through this one interface.
pub struct Runtime {
    kind: crate::config::Runtime,
    app: String,
    /// See [`container::LABEL_HOME`].
    home: String,
    docker: crate::docker::Docker,
    /// `docker compose` or `docker-compose`, found at first use.
    compose: tokio::sync::OnceCell<crate::docker::compose::Compose>,
}

impl Runtime {
    /// The runtime of `app`, whose state lives in `state_dir`.
    pub fn new(kind: crate::config::Runtime, app: &str, state_dir: &std::path::Path) -> Runtime {
        use sha2::Digest;
        let dir = state_dir
            .canonicalize()
            .unwrap_or_else(|_| state_dir.to_path_buf());
        let digest = sha2::Sha256::digest(dir.to_string_lossy().as_bytes());
        Runtime {
            kind,
            app: app.to_string(),
            home: hex::encode(&digest[..8]),
            docker: crate::docker::Docker::new(),
            compose: tokio::sync::OnceCell::new(),
        }
    }

    /// This ferry's [`Identity::home`].
    pub fn home(&self) -> &str {
        &self.home
    }

    /// What the app's config says.
    pub fn kind(&self) -> &crate::config::Runtime {
        &self.kind
    }

    /// True for the container runtimes: a release is an image.
    pub fn uses_images(&self) -> bool {
        self.kind.container().is_some()
    }

    /// Whether what it needs is there: for containers, a docker daemon that answers.
    pub async fn check(&self) -> Result<String, RuntimeError> {
        match &self.kind {
            crate::config::Runtime::Process => Ok("processes".into()),
            crate::config::Runtime::Docker { .. } => {
                let version = self.docker.ping().await?;
                Ok(format!("docker {version}"))
            }
            crate::config::Runtime::Compose { .. } => {
                let version = self.docker.ping().await?;
                let compose = self.compose().await?;
                Ok(format!("docker {version}, compose {}", compose.version()))
            }
        }
    }

    /// True unless the app runs containers and no docker daemon answers within 5 s.
    pub async fn reachable(&self) -> bool {
        if !self.uses_images() {
            return true;
        }
        let quick = self.docker.clone().with_timeout(Duration::from_secs(5));
        match quick.ping().await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(error = %e, "the docker daemon does not answer");
                false
            }
        }
    }

    /// Starts an instance of `spec`; its output goes to `log`.
    pub async fn start(
        &self,
        spec: &InstanceSpec,
        log: &LogSink,
    ) -> Result<Instance, RuntimeError> {
        match &self.kind {
            crate::config::Runtime::Process => process::spawn(spec, log),
            crate::config::Runtime::Docker { container, .. } => {
                container::run(&self.docker, container, spec, log).await
            }
            crate::config::Runtime::Compose {
                compose: file,
                container,
            } => {
                let compose = self.compose().await?;
                let project = self.project(&spec.identity.env, &spec.release_dir, &spec.shared_dir);
                container::compose_run(
                    &self.docker,
                    compose,
                    &project,
                    &file.service,
                    container,
                    spec,
                    log,
                )
                .await
            }
        }
    }

    /// Takes over an instance a previous ferry left running.
    pub async fn adopt(&self, left: &Leftover, log: &LogSink) -> Result<Instance, RuntimeError> {
        let Some(id) = &left.container else {
            return process::adopt(
                left.pid,
                left.proc_start.unwrap_or_default(),
                left.port,
                &left.output,
                log,
            );
        };
        let info = self
            .docker
            .inspect(id)
            .await?
            .filter(|i| i.running)
            .ok_or_else(|| RuntimeError::Spawn {
                command: format!("adopt container {}", container::short(id)),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "it is not running"),
            })?;
        // what it printed while nobody read: from the log's last write on
        let since = std::fs::metadata(log.path())
            .and_then(|m| m.modified())
            .ok();
        let files = container::instance_files(&left.run_dir(), left.port).to_vec();
        container::attach(
            &self.docker,
            info.id,
            info.name,
            left.port,
            files,
            since,
            log,
        )
    }

    /// Whether the instance a previous ferry left is still the one it started, running: the
    /// same pid and process start time, or the same container, running, of this ferry's app.
    /// `None` when that cannot be told now (no docker daemon answers).
    pub async fn is_running(&self, left: &Leftover) -> Option<bool> {
        match &left.container {
            None => {
                Some(left.proc_start.is_some() && process_start_time(left.pid) == left.proc_start)
            }
            Some(id) => match self.docker.inspect(id).await {
                Ok(Some(info)) => Some(
                    info.running
                        && info.labels.get(container::LABEL_APP) == Some(&self.app)
                        && info.labels.get(container::LABEL_HOME) == Some(&self.home),
                ),
                Ok(None) => Some(false),
                Err(e) => {
                    tracing::warn!(container = %container::short(id), error = %e, "cannot tell whether a container left by a previous ferry runs");
                    None
                }
            },
        }
    }

    /// Stops an instance a previous ferry left running (not adopted): a grace period after
    /// the polite signal, then killed.
    pub async fn stop_leftover(&self, left: &Leftover, grace: Duration) {
        if let Some(id) = &left.container {
            if let Err(e) = self.docker.stop(id, grace).await {
                tracing::warn!(container = %container::short(id), error = %e, "cannot stop a container left by a previous ferry");
            }
            for file in container::instance_files(&left.run_dir(), left.port) {
                let _ = std::fs::remove_file(file);
            }
            return;
        }
        let alive = process_start_time(left.pid);
        if alive.is_some() && alive == left.proc_start {
            tracing::info!(
                pid = left.pid,
                "stopping an instance left by a previous ferry"
            );
            kill_group(left.pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = tokio::time::Instant::now() + grace;
            while process_start_time(left.pid) == alive && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            kill_group(left.pid, nix::sys::signal::Signal::SIGKILL);
        }
        let _ = std::fs::remove_file(&left.output);
    }

    /// Removes the app's containers that no instance the store knows of runs in (`keep`):
    /// left by a ferry that died between starting one and recording it.
    pub async fn sweep(&self, keep: &[String]) {
        if !self.uses_images() {
            return;
        }
        let mine = [
            (container::LABEL_APP.to_string(), self.app.clone()),
            (container::LABEL_HOME.to_string(), self.home.clone()),
        ];
        let Ok(found) = self.docker.list(&mine).await else {
            return;
        };
        for c in found.iter().filter(|c| !keep.contains(&c.id)) {
            tracing::info!(container = %c.name, "removing a container no instance is recorded for");
            let _ = self.docker.remove(&c.id).await;
        }
    }

    /// Builds the image of a docker app's release from `release_dir`, tagged
    /// `ferry/<app>:<version>-<sha7>` and labelled; its id and output.
    pub async fn build_image(
        &self,
        release_dir: &std::path::Path,
        identity: &Identity,
        timeout: Duration,
    ) -> Result<crate::docker::BuildOutput, RuntimeError> {
        let tag = image_tag(identity);
        let labels: Vec<(String, String)> = container::labels(identity, 0)
            .into_iter()
            .filter(|(k, _)| {
                ![
                    container::LABEL_PORT,
                    container::LABEL_PROCESS,
                    container::LABEL_RELEASE,
                    container::LABEL_HOME,
                ]
                .contains(&k.as_str())
            })
            .collect();
        match &self.kind {
            crate::config::Runtime::Docker { image, .. } => {
                let context = inside(release_dir, &image.context, false)?;
                let dockerfile = inside(release_dir, &image.dockerfile, true)?;
                Ok(self
                    .docker
                    .build(&context, &dockerfile, &tag, &labels, timeout)
                    .await?)
            }
            crate::config::Runtime::Compose { compose: file, .. } => {
                let compose = self.compose().await?;
                let project = crate::docker::compose::Project::new(
                    &format!("ferry-{}-build-{}", self.app, &self.home[..8]),
                    release_dir.join(&file.file),
                    release_dir,
                );
                compose.vet(&project, &[release_dir.to_path_buf()]).await?;
                let built = compose
                    .build(&project, &file.service, &tag, timeout)
                    .await?;
                Ok(crate::docker::BuildOutput {
                    image_id: built.image_id,
                    output: built.log,
                })
            }
            crate::config::Runtime::Process => Err(RuntimeError::NoImage {
                release: identity.release.clone(),
            }),
        }
    }

    /// The compose command, found once.
    pub async fn compose(&self) -> Result<&crate::docker::compose::Compose, RuntimeError> {
        Ok(self
            .compose
            .get_or_try_init(crate::docker::compose::Compose::detect)
            .await?)
    }

    /// `env`'s long-lived compose project: the compose file of `release_dir`, relative paths
    /// resolved in the environment's shared dir (so bind-mounted data outlives releases).
    pub fn project(
        &self,
        env: &str,
        release_dir: &std::path::Path,
        shared_dir: &std::path::Path,
    ) -> crate::docker::compose::Project {
        let file = match &self.kind {
            crate::config::Runtime::Compose { compose, .. } => compose.file.as_str(),
            _ => "docker-compose.yml",
        };
        crate::docker::compose::Project::new(
            &format!("ferry-{}-{env}-{}", self.app, &self.home[..8]),
            release_dir.join(file),
            shared_dir,
        )
    }

    /// True when the image `id` is still in docker.
    pub async fn has_image(&self, id: &str) -> Result<bool, RuntimeError> {
        Ok(self
            .docker
            .image_id(id)
            .await?
            .is_some_and(|found| found == id))
    }

    /// Removes the image `id` (a pruned release's); one still used by a container stays.
    pub async fn remove_image(&self, id: &str) -> Result<(), RuntimeError> {
        Ok(self.docker.remove_image(id).await?)
    }
}

/// `path` of the release, resolved: it must stay inside the release (a link to the shared
/// dir or out of the release would have docker read what is not the release's) and be a
/// regular file (`file`) or a directory.
fn inside(release_dir: &std::path::Path, path: &str, file: bool) -> Result<PathBuf, RuntimeError> {
    let unsafe_path = |why: String| RuntimeError::Unsafe {
        path: path.to_string(),
        why,
    };
    let root = release_dir
        .canonicalize()
        .map_err(|e| unsafe_path(e.to_string()))?;
    let resolved = release_dir
        .join(path)
        .canonicalize()
        .map_err(|e| unsafe_path(format!("not in the release ({e})")))?;
    if !resolved.starts_with(&root) {
        return Err(unsafe_path("it leads out of the release".into()));
    }
    let meta = std::fs::metadata(&resolved).map_err(|e| unsafe_path(e.to_string()))?;
    if file && !meta.is_file() {
        return Err(unsafe_path("not a regular file".into()));
    }
    if !file && !meta.is_dir() {
        return Err(unsafe_path("not a directory".into()));
    }
    Ok(resolved)
}

/// `ferry/<app>:<version>-<sha7>`, in the characters docker allows.
pub fn image_tag(identity: &Identity) -> String {
    let repo = container::docker_safe(&identity.app.to_ascii_lowercase());
    let sha7: String = identity.commit.chars().take(7).collect();
    let mut tag = container::docker_safe(&format!("{}-{sha7}", identity.version))
        .trim_start_matches(['.', '-'])
        .to_string();
    tag.truncate(128);
    if tag.is_empty() {
        tag = "release".into();
    }
    format!("ferry/{repo}:{tag}")
}

/// A running (or exited) instance.
#[derive(Clone)]
pub struct Instance {
    pub port: u16,
    handle: Handle,
    exit: watch::Receiver<Option<ExitStatus>>,
    lines: Arc<LineTap>,
}

/// What runs an instance.
#[derive(Clone)]
enum Handle {
    Process(process::Process),
    Container(Arc<container::Container>),
}

impl fmt::Debug for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Instance");
        match &self.handle {
            Handle::Process(p) => d.field("pid", &p.pid),
            Handle::Container(c) => d.field("container", &c),
        };
        d.field("port", &self.port).finish()
    }
}

impl Instance {
    /// From now on, counts output lines matching `pattern` (see [`Instance::matches_since`]).
    pub fn watch_lines(&self, pattern: regex::Regex) {
        *self.lines.watch.lock().unwrap_or_else(|e| e.into_inner()) = Some((pattern, Vec::new()));
    }

    /// Lines matching the watched pattern printed at or after `since`.
    pub fn matches_since(&self, since: std::time::Instant) -> usize {
        let watch = self.lines.watch.lock().unwrap_or_else(|e| e.into_inner());
        watch
            .as_ref()
            .map_or(0, |(_, hits)| hits.iter().filter(|&&t| t >= since).count())
    }

    /// The instance's last output lines (at most [`LAST_LINES`]), secrets masked as in the
    /// log. Once it has exited, waits up to a second for the rest of its output first.
    pub async fn last_lines(&self) -> Vec<String> {
        if self.exited().is_some() {
            let mut ended = self.lines.ended.subscribe();
            let _ = tokio::time::timeout(Duration::from_secs(1), ended.wait_for(|e| *e)).await;
        } else {
            // a line read just now may still be on its way through the pump
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let raw: Vec<Vec<u8>> = {
            let last = self.lines.last.lock().unwrap_or_else(|e| e.into_inner());
            last.iter().cloned().collect()
        };
        raw.iter()
            .map(|line| {
                // masked whole, then cut: a cut never leaves part of a secret unmasked
                let mut text = self.lines.redact(line);
                if let Some((cut, _)) = text.char_indices().nth(LAST_LINE_CHARS) {
                    text.truncate(cut);
                    text.push('…');
                }
                text
            })
            .collect()
    }

    /// Stops reading the instance's output, leaving it running and its pipe in place, once
    /// what was read is in the log: a new `serve` reopens the pipe and reads on from there
    /// (the instance holds the pipe open, so it keeps running while nobody reads).
    pub async fn detach(&self) {
        self.lines.detach.send_replace(true);
        let mut ended = self.lines.ended.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(2), ended.wait_for(|e| *e)).await;
        if let Handle::Container(c) = &self.handle {
            c.detached();
        }
    }

    /// Reads the instance's output again after [`Instance::detach`] (a takeover that did not
    /// happen after all).
    pub fn reattach(&self) {
        if !*self.lines.detach.borrow() {
            return;
        }
        match &self.handle {
            Handle::Process(p) => p.reattach(&self.lines),
            Handle::Container(c) => c.reattach(&self.lines),
        }
    }

    /// The exit status once the process has exited.
    pub fn exited(&self) -> Option<ExitStatus> {
        *self.exit.borrow()
    }

    /// Resolves when the process exits.
    pub async fn wait_exit(&self) -> Option<ExitStatus> {
        let mut rx = self.exit.clone();
        match rx.wait_for(Option::is_some).await {
            Ok(status) => *status,
            Err(_) => None,
        }
    }

    /// Stops the instance: a grace period after the polite signal, then killed; returns once
    /// it is gone.
    pub async fn stop(&self, grace: Duration) {
        match &self.handle {
            Handle::Process(p) => p.stop(self, grace).await,
            Handle::Container(c) => c.stop(self, grace).await,
        }
    }

    /// The pid of a process instance.
    pub fn pid(&self) -> Option<u32> {
        match &self.handle {
            Handle::Process(p) => Some(p.pid),
            Handle::Container(_) => None,
        }
    }

    /// The container id of a container instance.
    pub fn container_id(&self) -> Option<&str> {
        match &self.handle {
            Handle::Process(_) => None,
            Handle::Container(c) => Some(&c.id),
        }
    }

    /// What runs it, for messages: `pid 1234`.
    pub fn describe(&self) -> String {
        match &self.handle {
            Handle::Process(p) => format!("pid {}", p.pid),
            Handle::Container(c) => {
                format!("container {} ({})", c.name, container::short(&c.id))
            }
        }
    }
}

#[cfg(test)]
mod tests;

//! Runtime: app instances, whatever runs them.
//!
//! An [`Instance`] is one running copy of a release, listening on its own port on 127.0.0.1
//! behind the environment's proxy. The pipeline starts, health-checks, switches to, stops and
//! adopts instances through this module only; which backend runs them is the app's
//! `runtime`:
//!
//! - [`process`]: `start` through `sh -c` in the release dir, in its own process group,
//!   confined to the environment's user and dirs (the default).
//!
//! Every backend sends the instance's output to the environment's rotated log ([`LogSink`])
//! in whole lines, secrets masked, keeping the last lines for failure reports.

use std::fmt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

mod output;
pub mod process;
mod secrets;

use output::LineTap;
pub use output::LogSink;
pub use process::{group_alive, kill_group, process_start_time};
pub use secrets::Secrets;

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

/// The app's runtime: starts, stops and adopts its instances. The pipeline drives every
/// backend through this one interface.
pub struct Runtime {
    kind: crate::config::Runtime,
}

impl Runtime {
    pub fn new(kind: crate::config::Runtime) -> Runtime {
        Runtime { kind }
    }

    /// What the app's config says.
    pub fn kind(&self) -> &crate::config::Runtime {
        &self.kind
    }

    /// Starts an instance of `spec`; its output goes to `log`.
    pub async fn start(
        &self,
        spec: &InstanceSpec,
        log: &LogSink,
    ) -> Result<Instance, RuntimeError> {
        process::spawn(spec, log)
    }

    /// Takes over an instance a previous ferry left running.
    pub async fn adopt(&self, left: &Leftover, log: &LogSink) -> Result<Instance, RuntimeError> {
        process::adopt(
            left.pid,
            left.proc_start.unwrap_or_default(),
            left.port,
            &left.output,
            log,
        )
    }

    /// True while the instance a previous ferry left is still the one it started and runs.
    pub async fn is_running(&self, left: &Leftover) -> bool {
        left.proc_start.is_some() && process_start_time(left.pid) == left.proc_start
    }

    /// Stops an instance a previous ferry left running (not adopted): a grace period after
    /// the polite signal, then killed.
    pub async fn stop_leftover(&self, left: &Leftover, grace: Duration) {
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
}

impl fmt::Debug for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Instance");
        match &self.handle {
            Handle::Process(p) => d.field("pid", &p.pid),
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
    }

    /// Reads the instance's output again after [`Instance::detach`] (a takeover that did not
    /// happen after all).
    pub fn reattach(&self) {
        if !*self.lines.detach.borrow() {
            return;
        }
        match &self.handle {
            Handle::Process(p) => p.reattach(&self.lines),
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
        }
    }

    /// The pid of a process instance.
    pub fn pid(&self) -> Option<u32> {
        match &self.handle {
            Handle::Process(p) => Some(p.pid),
        }
    }

    /// The container id of a container instance.
    pub fn container_id(&self) -> Option<&str> {
        match &self.handle {
            Handle::Process(_) => None,
        }
    }

    /// What runs it, for messages: `pid 1234`.
    pub fn describe(&self) -> String {
        match &self.handle {
            Handle::Process(p) => format!("pid {}", p.pid),
        }
    }
}

#[cfg(test)]
mod tests;

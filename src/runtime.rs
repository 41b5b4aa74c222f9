//! Runtime: app instances as child processes.
//!
//! Each instance runs `start` through `sh -c` in its release dir, in its own process group,
//! with ferry's variables, the environment's `env` and the secrets of its `env_file`. Its
//! stdout and stderr go to the environment's rotated log ([`LogSink`]). Stopping sends
//! SIGTERM to the group, waits the grace period, then SIGKILLs the group.
//!
//! Output travels through a named pipe (`InstanceSpec::output`) that the instance holds open
//! for both reading and writing, so it never gets SIGPIPE: if ferry dies, the instance keeps
//! running (its writes wait in the pipe, then block once it is full) and the next ferry
//! [adopts](adopt) it, reopening the pipe and draining what was written meanwhile.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::watch;

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

/// Values from an `env_file`. `Debug` shows the keys only, never the values.
#[derive(Clone, Default)]
pub struct Secrets(BTreeMap<String, String>);

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
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
        Ok(Secrets(vars))
    }

    fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter()
    }

    /// The values, for [`crate::sandbox::Redactor`] to mask.
    pub fn values(&self) -> impl Iterator<Item = &str> {
        self.0.values().map(String::as_str)
    }
}

/// Sends `signal` to the process group led by `pid`; a group already gone is fine.
pub fn kill_group(pid: u32, signal: Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = killpg(Pid::from_raw(pid), signal);
    }
}

/// The start time of `pid` in clock ticks since boot (field 22 of `/proc/<pid>/stat`), to
/// tell a process from a later one that reused its pid. `None` when no such process runs
/// (a zombie waiting to be reaped counts as gone).
pub fn process_start_time(pid: u32) -> Option<i64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // the command name may hold spaces and parentheses: fields start after the last ')'
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    if matches!(fields.next(), Some("Z" | "X")) {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// A port on 127.0.0.1 that nothing listens on right now.
pub fn free_port() -> Result<u16, RuntimeError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(RuntimeError::Port)?;
    Ok(listener.local_addr().map_err(RuntimeError::Port)?.port())
}

/// The environment's app log, rotated at [`LOG_ROTATE_BYTES`]; shared by its instances.
#[derive(Clone)]
pub struct LogSink {
    inner: Arc<Mutex<LogFile>>,
    redactor: Option<Arc<crate::sandbox::Redactor>>,
}

struct LogFile {
    path: PathBuf,
    file: Option<File>,
    size: u64,
}

impl LogSink {
    pub fn open(path: PathBuf) -> std::io::Result<LogSink> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(LogSink {
            inner: Arc::new(Mutex::new(LogFile {
                path,
                file: Some(file),
                size,
            })),
            redactor: None,
        })
    }

    /// Masks known secrets in every line written from now on (writes are whole lines).
    pub fn with_redactor(mut self, redactor: Arc<crate::sandbox::Redactor>) -> LogSink {
        self.redactor = Some(redactor);
        self
    }

    pub fn path(&self) -> PathBuf {
        self.lock().path.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogFile> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `bytes`, rotating first when the file would pass the limit.
    pub fn write(&self, bytes: &[u8]) {
        let bytes = match &self.redactor {
            Some(r) => r.redact_bytes(bytes),
            None => std::borrow::Cow::Borrowed(bytes),
        };
        let bytes = &*bytes;
        let mut log = self.lock();
        if log.size > 0 && log.size + bytes.len() as u64 > LOG_ROTATE_BYTES {
            log.rotate();
        }
        if let Some(file) = log.file.as_mut()
            && file.write_all(bytes).is_ok()
        {
            log.size += bytes.len() as u64;
        }
    }
}

impl LogFile {
    fn rotate(&mut self) {
        self.file = None;
        let numbered = |n: usize| PathBuf::from(format!("{}.{n}", self.path.display()));
        for n in (1..LOG_FILES_KEPT).rev() {
            let from = if n == 1 {
                self.path.clone()
            } else {
                numbered(n - 1)
            };
            let _ = std::fs::rename(from, numbered(n));
        }
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .ok();
        self.size = 0;
    }
}

/// Everything needed to start one instance.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    pub release_dir: PathBuf,
    pub start: String,
    pub port: u16,
    /// The instance's whole environment but the secrets: the sandbox's allowlist, ferry's
    /// variables and the environment's `env`, in that order. Nothing else is inherited.
    pub vars: Vec<(String, String)>,
    pub secrets: Secrets,
    /// Who it runs as and what of the state dir it reaches.
    pub confinement: crate::sandbox::Confinement,
    /// Where the named pipe carrying the instance's output is made.
    pub output: PathBuf,
}

/// A running (or exited) instance.
#[derive(Clone)]
pub struct Instance {
    pub pid: u32,
    pub port: u16,
    /// The named pipe carrying its output, removed once it is stopped.
    output: PathBuf,
    exit: watch::Receiver<Option<ExitStatus>>,
    lines: Arc<LineTap>,
}

/// Watches an instance's output lines for a pattern once asked to (post-deploy monitoring),
/// and keeps its last [`LAST_LINES`] lines, redacted, for failure reports.
struct LineTap {
    watch: Mutex<Option<(regex::Regex, Vec<std::time::Instant>)>>,
    /// Raw, as read: masked when asked for ([`Instance::last_lines`]), so a flood of output
    /// costs one copy of the last lines of each chunk and nothing more.
    last: Mutex<std::collections::VecDeque<Vec<u8>>>,
    /// Set once the output pipe has ended (every line is in `last`), or the pump was detached.
    ended: watch::Sender<bool>,
    /// Set to stop reading the pipe (a new `serve` takes the instance over, see
    /// [`Instance::detach`]).
    detach: watch::Sender<bool>,
    /// The log's: lines are masked as the log masks them.
    redactor: Option<Arc<crate::sandbox::Redactor>>,
    /// Where the output goes (kept to read it again after a detach, see [`Instance::reattach`]).
    log: LogSink,
}

impl LineTap {
    fn new(log: &LogSink) -> LineTap {
        LineTap {
            watch: Mutex::default(),
            last: Mutex::default(),
            ended: watch::channel(false).0,
            detach: watch::channel(false).0,
            redactor: log.redactor.clone(),
            log: log.clone(),
        }
    }

    /// `line` as the log holds it: known secrets masked.
    fn redact(&self, line: &[u8]) -> String {
        let text = String::from_utf8_lossy(line);
        match &self.redactor {
            Some(r) => r.redact(&text),
            None => text.into_owned(),
        }
    }
}

impl LineTap {
    fn active(&self) -> bool {
        self.watch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// Keeps the last [`LAST_LINES`] lines of `chunk` (whole lines, as the pump writes them).
    fn keep(&self, chunk: &[u8]) {
        let mut newest: Vec<&[u8]> = chunk
            .rsplit(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .filter(|l| !l.is_empty())
            .take(LAST_LINES)
            .collect();
        newest.reverse();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        for line in newest {
            if last.len() >= LAST_LINES {
                last.pop_front();
            }
            last.push_back(line.to_vec());
        }
    }

    fn feed(&self, line: &[u8]) {
        let mut watch = self.watch.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((pattern, hits)) = watch.as_mut()
            && pattern.is_match(&String::from_utf8_lossy(line))
        {
            // a flood of matches is a breach long before this; keep memory bounded
            if hits.len() >= 100_000 {
                hits.drain(..50_000);
            }
            hits.push(std::time::Instant::now());
        }
    }
}

impl fmt::Debug for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Instance")
            .field("pid", &self.pid)
            .field("port", &self.port)
            .finish()
    }
}

/// Starts an instance; its output goes to `log`.
pub fn spawn(spec: &InstanceSpec, log: &LogSink) -> Result<Instance, RuntimeError> {
    let pipe_err = |source| RuntimeError::Pipe {
        path: spec.output.clone(),
        source,
    };
    let writer = make_pipe(&spec.output).map_err(pipe_err)?;
    let reader = open_pipe(&spec.output).map_err(pipe_err)?;
    // ferry's own settings (tokens, webhook secrets, cloud keys) are not the app's business
    let mut cmd = spec.confinement.command(&spec.start, &spec.vars);
    cmd.envs(spec.secrets.iter());
    cmd.current_dir(&spec.release_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(writer.try_clone().map_err(pipe_err)?))
        .stderr(Stdio::from(writer))
        .process_group(0);
    let spawned = cmd.spawn();
    // ferry's copies of the write end go now: the pipe ends when the instance's group exits
    drop(cmd);
    let mut child = spawned.map_err(|source| {
        let _ = std::fs::remove_file(&spec.output);
        RuntimeError::Spawn {
            command: spec.start.clone(),
            source,
        }
    })?;
    let pid = child.id().unwrap_or_default();
    let lines = Arc::new(LineTap::new(log));
    tokio::spawn(pump(reader, log.clone(), lines.clone()));
    let (tx, exit) = watch::channel(None);
    tokio::spawn(async move {
        let status = child.wait().await.ok();
        let _ = tx.send(status);
    });
    Ok(Instance {
        pid,
        port: spec.port,
        output: spec.output.clone(),
        exit,
        lines,
    })
}

/// Takes over an instance a previous ferry started: `pid` must still be the process that
/// started at `proc_start` (clock ticks since boot), so a reused pid is never adopted. Its
/// output pipe at `output` is reopened; what it wrote while nobody read goes to `log` now.
pub fn adopt(
    pid: u32,
    proc_start: i64,
    port: u16,
    output: &Path,
    log: &LogSink,
) -> Result<Instance, RuntimeError> {
    if process_start_time(pid) != Some(proc_start) {
        return Err(RuntimeError::Spawn {
            command: format!("adopt pid {pid}"),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "the process is gone"),
        });
    }
    let lines = Arc::new(LineTap::new(log));
    match open_pipe(output) {
        Ok(reader) => {
            tokio::spawn(pump(reader, log.clone(), lines.clone()));
        }
        Err(e) => {
            tracing::warn!(pid, pipe = %output.display(), error = %e, "cannot reopen an adopted instance's output; it is not logged")
        }
    }
    // not ferry's child any more: poll for its end; the exit status is not known
    let (tx, exit) = watch::channel(None);
    tokio::spawn(async move {
        while process_start_time(pid) == Some(proc_start) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = tx.send(Some(std::os::unix::process::ExitStatusExt::from_raw(0)));
    });
    Ok(Instance {
        pid,
        port,
        output: output.to_path_buf(),
        exit,
        lines,
    })
}

/// Makes a fresh named pipe at `path` and opens it for reading and writing: the instance
/// gets this end, so a reader always exists and its writes never fail with EPIPE.
fn make_pipe(path: &Path) -> std::io::Result<File> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    nix::unistd::mkfifo(
        path,
        nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
    )
    .map_err(std::io::Error::from)?;
    OpenOptions::new().read(true).write(true).open(path)
}

/// Opens ferry's reading end of an instance's pipe (it sees the end once every writer is gone).
fn open_pipe(path: &Path) -> std::io::Result<tokio::net::unix::pipe::Receiver> {
    tokio::net::unix::pipe::OpenOptions::new().open_receiver(path)
}

/// The longest partial line kept while waiting for its end.
const MAX_PENDING_LINE: usize = 64 * 1024;
/// How long a partial line waits for its end before it is written as it is.
const PARTIAL_LINE_WAIT: Duration = Duration::from_millis(200);

/// Copies an instance's output to the log in whole lines (so a secret is never split
/// between two writes and escapes the redactor), feeding each line to the monitor's tap.
/// A partial line is written once no more comes for [`PARTIAL_LINE_WAIT`], or at the end.
/// Detaching ([`Instance::detach`]) ends it between two reads, with what was read written.
async fn pump(mut from: impl AsyncRead + Unpin, log: LogSink, lines: Arc<LineTap>) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    let mut detach = lines.detach.subscribe();
    loop {
        let read = tokio::select! {
            biased;
            _ = detach.wait_for(|d| *d) => break,
            read = async {
                if pending.is_empty() {
                    Some(from.read(&mut buf).await)
                } else {
                    tokio::time::timeout(PARTIAL_LINE_WAIT, from.read(&mut buf)).await.ok()
                }
            } => read,
        };
        let read = match read {
            Some(read) => read,
            None => {
                // a prompt or a line still being written: write what there is
                flush(&log, &lines, std::mem::take(&mut pending)).await;
                continue;
            }
        };
        let n = match read {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        let whole = match pending.iter().rposition(|&b| b == b'\n') {
            Some(end) => end + 1,
            None if pending.len() > MAX_PENDING_LINE => pending.len(),
            None => continue,
        };
        let rest = pending.split_off(whole);
        flush(&log, &lines, std::mem::replace(&mut pending, rest)).await;
    }
    if !pending.is_empty() {
        flush(&log, &lines, pending).await;
    }
    lines.ended.send_replace(true);
}

async fn flush(log: &LogSink, lines: &LineTap, chunk: Vec<u8>) {
    if lines.active() {
        for line in chunk.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            lines.feed(line);
        }
    }
    lines.keep(&chunk);
    let log = log.clone();
    // file writes block; keep them off the async workers
    let _ = tokio::task::spawn_blocking(move || log.write(&chunk)).await;
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
        match open_pipe(&self.output) {
            Ok(reader) => {
                self.lines.detach.send_replace(false);
                self.lines.ended.send_replace(false);
                tokio::spawn(pump(reader, self.lines.log.clone(), self.lines.clone()));
            }
            Err(e) => {
                tracing::warn!(pid = self.pid, pipe = %self.output.display(), error = %e, "cannot reopen an instance's output; it is not logged")
            }
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

    /// SIGTERM to the group, SIGKILL after `grace` to whatever of the group is left; returns
    /// once the process is gone. The grace period covers the whole group: a shell leading it
    /// may die at once while the app under it is still finishing its requests.
    pub async fn stop(&self, grace: Duration) {
        if group_alive(self.pid) {
            kill_group(self.pid, Signal::SIGTERM);
            let deadline = tokio::time::Instant::now() + grace;
            while group_alive(self.pid) && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if group_alive(self.pid) {
                tracing::warn!(pid = self.pid, "instance ignored SIGTERM; killing it");
            }
        }
        // whatever else is left in the group goes too
        kill_group(self.pid, Signal::SIGKILL);
        self.wait_exit().await;
        let _ = std::fs::remove_file(&self.output);
    }
}

/// True while a process of group `pgid` runs (zombies do not count).
pub fn group_alive(pgid: u32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|entry| {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            return false;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            return false;
        };
        // after the name: state, ppid, pgrp
        let mut fields = rest.split_whitespace();
        let state = fields.next();
        let pgrp = fields.nth(1).and_then(|g| g.parse::<u32>().ok());
        pgrp == Some(pgid) && !matches!(state, Some("Z" | "X"))
    })
}

#[cfg(test)]
mod tests;

//! ferry's end of the protocol: [`Agent`] drives one host's agent through a command that
//! runs `ferry agent --dir D` there (ssh in production, the binary itself in tests), and
//! [`Agent::ship`] sends a release through a second one running `… receive`.
//!
//! One [`Agent`] serves several tasks at once: requests carry ids, a reader task hands each
//! answer to the call waiting for it, and a call that gets no answer within its timeout,
//! or whose channel closes, fails with [`AgentError::Lost`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::oneshot;

use super::files::Tree;
use super::protocol::{
    self, Answer, Done, ErrorKind, HasReleaseAnswer, HealthAnswer, HealthRequest, HelloAnswer,
    InstanceId, LogsAnswer, Op, ProbeAnswer, PruneAnswer, Request, StartAnswer, StartRequest,
    StatusAnswer, StopAnswer, SwitchAnswer, TaskAnswer, TaskRequest,
};

/// How long a plain call (status, switch…) waits for its answer.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Added to the time a long call (health, stop, task) is expected to take.
const SLACK: Duration = Duration::from_secs(30);
/// The most a release upload may take.
const SHIP_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Lines of the relay's stderr kept for messages.
const STDERR_LINES: usize = 20;

/// A call to a host's agent that failed. Every message names the host.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AgentError {
    /// The channel closed, or no answer came in time: the host may be gone.
    #[error("{host}: lost the agent: {detail}")]
    Lost { host: String, detail: String },
    /// The agent answered with an error.
    #[error("{host}: {message}")]
    Remote {
        host: String,
        kind: ErrorKind,
        message: String,
        /// The instance's last output lines (for `unhealthy`), secrets masked.
        lines: Vec<String>,
    },
}

impl AgentError {
    /// The error kind the agent answered, if it answered.
    pub fn kind(&self) -> Option<ErrorKind> {
        match self {
            AgentError::Lost { .. } => None,
            AgentError::Remote { kind, .. } => Some(*kind),
        }
    }

    /// True when the host could not be reached or stopped answering.
    pub fn is_lost(&self) -> bool {
        matches!(self, AgentError::Lost { .. })
    }
}

/// What shipping a release to a host did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShipReport {
    /// The release was there already (same name, same digest): nothing was sent.
    pub present: bool,
    /// Files whose content went over the wire.
    pub files_sent: u64,
    /// Bytes written to the receiving command (manifest, archive headers and contents).
    pub bytes_sent: u64,
}

/// A connection to one host's agent.
pub struct Agent {
    host: String,
    hello: HelloAnswer,
    inner: Arc<Inner>,
}

struct Inner {
    host: String,
    /// Lines to the agent, written whole by one task (a call given up half-way never
    /// leaves half a line).
    lines: tokio::sync::mpsc::UnboundedSender<Vec<u8>>,
    pending: Mutex<Pending>,
    next_id: AtomicU64,
    stderr: Arc<Mutex<VecDeque<String>>>,
    /// Killed when the agent is dropped (`kill_on_drop`).
    _child: Mutex<Child>,
}

#[derive(Default)]
struct Pending {
    waiting: HashMap<u64, oneshot::Sender<Answer>>,
    /// Why the channel is closed, once it is.
    closed: Option<String>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("host", &self.host)
            .field("version", &self.hello.version)
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// Runs `cmd` (which runs `ferry agent --dir D` on `host`), says hello and checks the
    /// protocol. `host` names the host in every message.
    pub async fn connect(mut cmd: Command, host: &str) -> Result<Agent, AgentError> {
        let lost = |detail: String| AgentError::Lost {
            host: host.to_string(),
            detail,
        };
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| lost(format!("cannot run the agent command: {e}")))?;
        let stdin = child.stdin.take().expect("stdin is piped");
        let (lines, queued) = tokio::sync::mpsc::unbounded_channel();
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let stderr_lines = Arc::new(Mutex::new(VecDeque::new()));
        let stderr_done = tokio::spawn(keep_lines(stderr, stderr_lines.clone()));
        let inner = Arc::new(Inner {
            host: host.to_string(),
            lines,
            pending: Mutex::default(),
            next_id: AtomicU64::new(1),
            stderr: stderr_lines,
            _child: Mutex::new(child),
        });
        tokio::spawn(write_lines(stdin, queued, Arc::downgrade(&inner)));
        tokio::spawn(read_answers(
            stdout,
            Arc::downgrade(&inner),
            inner.stderr.clone(),
            stderr_done,
        ));
        let hello: HelloAnswer = inner
            .call(
                Op::Hello {
                    protocol: protocol::PROTOCOL,
                    version: protocol::version(),
                },
                CALL_TIMEOUT,
            )
            .await?;
        if hello.protocol != protocol::PROTOCOL {
            return Err(AgentError::Remote {
                host: host.to_string(),
                kind: ErrorKind::Version,
                message: format!(
                    "the agent speaks protocol {}, this ferry {}",
                    hello.protocol,
                    protocol::PROTOCOL
                ),
                lines: Vec::new(),
            });
        }
        Ok(Agent {
            host: host.to_string(),
            hello,
            inner,
        })
    }

    /// The host's name as ferry calls it.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// What the agent said at hello (its version, the host's name, arch and free bytes).
    pub fn hello(&self) -> &HelloAnswer {
        &self.hello
    }

    /// Whether the channel is still open (a call may still fail).
    pub fn is_connected(&self) -> bool {
        self.inner.lock_pending().closed.is_none()
    }

    /// The environment's instances, which one serves, and the app's releases on the host.
    pub async fn status(&self, app: &str, env: &str) -> Result<StatusAnswer, AgentError> {
        let op = Op::Status {
            app: app.into(),
            env: env.into(),
        };
        self.inner.call(op, CALL_TIMEOUT).await
    }

    /// Whether the host has `release` of `app` with `digest`.
    pub async fn has_release(
        &self,
        app: &str,
        release: &str,
        digest: &str,
    ) -> Result<bool, AgentError> {
        let answer: HasReleaseAnswer = self
            .inner
            .call(
                Op::HasRelease {
                    app: app.into(),
                    release: release.into(),
                    digest: digest.into(),
                    manifest: None,
                },
                CALL_TIMEOUT,
            )
            .await?;
        Ok(answer.present)
    }

    /// Starts an instance of a release the host has.
    pub async fn start(&self, request: &StartRequest) -> Result<StartAnswer, AgentError> {
        self.inner
            .call(Op::Start(request.clone()), Duration::from_secs(60))
            .await
    }

    /// Waits until the instance is healthy; its log of probes. Error kind `unhealthy`
    /// (with the instance's last lines) when it is not.
    pub async fn health(&self, request: &HealthRequest) -> Result<String, AgentError> {
        let h = request.health();
        let round = h
            .interval
            .saturating_add(h.timeout.saturating_mul(h.paths.len().max(1) as u32));
        let limit = h
            .startup_delay
            .saturating_add(round.saturating_mul(h.retries))
            .saturating_add(SLACK);
        let answer: HealthAnswer = self.inner.call(Op::Health(request.clone()), limit).await?;
        Ok(answer.log)
    }

    /// Probes `path` of an instance once, on the host.
    pub async fn probe(
        &self,
        app: &str,
        env: &str,
        instance: InstanceId,
        path: &str,
        timeout: Duration,
    ) -> Result<ProbeAnswer, AgentError> {
        let op = Op::Probe {
            app: app.into(),
            env: env.into(),
            instance,
            path: path.into(),
            timeout_ms: protocol::ms(timeout),
        };
        self.inner.call(op, timeout.saturating_add(SLACK)).await
    }

    /// Sends the environment's traffic on the host to `instance`, its proxy listening on
    /// `listen`; the instance that served before.
    pub async fn switch(
        &self,
        app: &str,
        env: &str,
        instance: InstanceId,
        listen: &str,
    ) -> Result<Option<InstanceId>, AgentError> {
        let op = Op::Switch {
            app: app.into(),
            env: env.into(),
            instance,
            listen: listen.into(),
        };
        let answer: SwitchAnswer = self.inner.call(op, CALL_TIMEOUT).await?;
        Ok(answer.previous)
    }

    /// Drains an instance out of traffic (up to `drain_timeout`) and stops it; the drain
    /// report. `stop_timeout` is what the instance was started with (for the call's timeout).
    pub async fn stop(
        &self,
        app: &str,
        env: &str,
        instance: InstanceId,
        drain_timeout: Duration,
        stop_timeout: Duration,
    ) -> Result<String, AgentError> {
        self.stop_with(app, env, instance, (drain_timeout, stop_timeout), false)
            .await
    }

    /// [`Self::stop`], the instance first taken out of traffic if it serves (the proxy
    /// then serves nothing: it answers 503).
    pub async fn unserve_and_stop(
        &self,
        app: &str,
        env: &str,
        instance: InstanceId,
        drain_timeout: Duration,
        stop_timeout: Duration,
    ) -> Result<String, AgentError> {
        self.stop_with(app, env, instance, (drain_timeout, stop_timeout), true)
            .await
    }

    async fn stop_with(
        &self,
        app: &str,
        env: &str,
        instance: InstanceId,
        (drain_timeout, stop_timeout): (Duration, Duration),
        unserve: bool,
    ) -> Result<String, AgentError> {
        let op = Op::Stop {
            app: app.into(),
            env: env.into(),
            instance,
            drain_timeout_ms: protocol::ms(drain_timeout),
            unserve,
        };
        let answer: StopAnswer = self
            .inner
            .call(
                op,
                drain_timeout
                    .saturating_add(stop_timeout)
                    .saturating_add(SLACK),
            )
            .await?;
        Ok(answer.report)
    }

    /// Runs a command of a release once, as an instance would run, to its end.
    pub async fn task(&self, request: &TaskRequest) -> Result<TaskAnswer, AgentError> {
        let limit =
            Duration::from_millis(request.timeout_ms.saturating_add(request.stop_timeout_ms));
        self.inner
            .call(Op::Task(request.clone()), limit.saturating_add(SLACK))
            .await
    }

    /// The environment's last `lines` lines of app log on the host.
    pub async fn logs(
        &self,
        app: &str,
        env: &str,
        lines: usize,
    ) -> Result<Vec<String>, AgentError> {
        let op = Op::Logs {
            app: app.into(),
            env: env.into(),
            lines,
        };
        let answer: LogsAnswer = self.inner.call(op, CALL_TIMEOUT).await?;
        Ok(answer.lines)
    }

    /// Removes the app's releases on the host but `keep` (and any an instance runs); the
    /// ones removed.
    pub async fn prune(&self, app: &str, keep: &[String]) -> Result<Vec<String>, AgentError> {
        let op = Op::Prune {
            app: app.into(),
            keep: keep.to_vec(),
        };
        let answer: PruneAnswer = self.inner.call(op, Duration::from_secs(120)).await?;
        Ok(answer.removed)
    }

    /// Asks the daemon to exit, leaving its instances running (the next one adopts them).
    pub async fn retire(&self) -> Result<(), AgentError> {
        let _: Done = self.inner.call(Op::Retire, CALL_TIMEOUT).await?;
        Ok(())
    }

    /// Sends `release` of `app` (the built tree at `dir`, whose digest is `digest`, with the
    /// environment's `shared` paths left out) unless the host has it already. `receive`
    /// makes the command that runs `ferry agent --dir D receive <args>` on the host from
    /// `<args>` (called again for a second try). Only the contents the host has in none of
    /// its releases go over the wire; when the host's copy of one went meanwhile, the whole
    /// release is sent once more.
    pub async fn ship(
        &self,
        receive: impl Fn(Vec<String>) -> Command,
        app: &str,
        release: &str,
        dir: &Path,
        digest: &str,
        shared: &[String],
    ) -> Result<ShipReport, AgentError> {
        if self.has_release(app, release, digest).await? {
            return Ok(ShipReport {
                present: true,
                ..ShipReport::default()
            });
        }
        let lost = |detail: String| AgentError::Lost {
            host: self.host.clone(),
            detail,
        };
        let (dir_owned, shared_owned) = (dir.to_path_buf(), shared.to_vec());
        let tree = tokio::task::spawn_blocking(move || Tree::read(&dir_owned, &shared_owned))
            .await
            .map_err(|e| lost(format!("reading the release failed: {e}")))?
            .map_err(|e| lost(format!("cannot read the release {}: {e}", dir.display())))?;
        // a large manifest takes a while over a slow link: a second per 100 KB of it
        let manifest_bytes: usize = tree.manifest.iter().map(|m| m.path.len() + 100).sum();
        let answer: HasReleaseAnswer = self
            .inner
            .call(
                Op::HasRelease {
                    app: app.into(),
                    release: release.into(),
                    digest: digest.into(),
                    manifest: Some(tree.manifest.clone()),
                },
                CALL_TIMEOUT + Duration::from_secs((manifest_bytes / 100_000) as u64),
            )
            .await?;
        if answer.present {
            return Ok(ShipReport {
                present: true,
                ..ShipReport::default()
            });
        }
        let partial = answer.lacking.is_some();
        let lacking: Option<HashSet<String>> = answer.lacking.map(|l| l.into_iter().collect());
        let args = receive_args(app, release, digest, shared, tree.size());
        let tree = Arc::new(tree);
        let send = |cmd: Command, lacking: Option<HashSet<String>>| {
            let tree = tree.clone();
            async move {
                tokio::time::timeout(
                    SHIP_TIMEOUT,
                    super::ship::send_tree(cmd, &self.host, dir, tree, lacking),
                )
                .await
                .map_err(|_| {
                    lost(format!(
                        "the upload of {release} took over {}s",
                        SHIP_TIMEOUT.as_secs()
                    ))
                })?
            }
        };
        match send(receive(args.clone()), lacking).await {
            // the host's copy of a content it said it had went meanwhile (pruned, changed):
            // the whole release, once
            Err(AgentError::Remote {
                kind: ErrorKind::NotFound | ErrorKind::Digest,
                message,
                ..
            }) if partial => {
                tracing::warn!(host = %self.host, release, error = %message, "a partial upload failed; sending the whole release");
                send(receive(args), None).await
            }
            other => other,
        }
    }
}

/// The arguments of `ferry agent --dir D receive` for a release.
pub fn receive_args(
    app: &str,
    release: &str,
    digest: &str,
    shared: &[String],
    size: u64,
) -> Vec<String> {
    let mut args = vec![
        "--app".to_string(),
        app.to_string(),
        "--release".to_string(),
        release.to_string(),
        "--digest".to_string(),
        digest.to_string(),
        "--size".to_string(),
        size.to_string(),
    ];
    for path in shared {
        args.push("--shared".into());
        // as written: a trailing `/` says it is a dir
        args.push(path.clone());
    }
    args
}

impl Inner {
    fn lock_pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lost(&self, detail: String) -> AgentError {
        AgentError::Lost {
            host: self.host.clone(),
            detail,
        }
    }

    /// Sends `op` and waits up to `timeout` for its answer.
    async fn call<T: DeserializeOwned>(&self, op: Op, timeout: Duration) -> Result<T, AgentError> {
        let name = op.name();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.lock_pending();
            if let Some(why) = &pending.closed {
                return Err(self.lost(why.clone()));
            }
            pending.waiting.insert(id, tx);
        }
        let mut line = serde_json::to_vec(&Request { id, op })
            .map_err(|e| self.lost(format!("cannot encode {name}: {e}")))?;
        line.push(b'\n');
        if self.lines.send(line).is_err() {
            self.lock_pending().waiting.remove(&id);
            return Err(self.lost(format!(
                "cannot send {name}: the channel closed{}",
                self.stderr_tail()
            )));
        }
        let answer = tokio::time::timeout(timeout, async {
            rx.await.map_err(|_| {
                let why = self
                    .lock_pending()
                    .closed
                    .clone()
                    .unwrap_or_else(|| "the channel closed".into());
                self.lost(why)
            })
        })
        .await;
        let answer = match answer {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => {
                self.lock_pending().waiting.remove(&id);
                return Err(e);
            }
            Err(_) => {
                self.lock_pending().waiting.remove(&id);
                return Err(self.lost(format!(
                    "no answer to {name} within {}",
                    crate::config::format_duration(timeout)
                )));
            }
        };
        if let Some(e) = answer.error {
            return Err(AgentError::Remote {
                host: self.host.clone(),
                kind: e.kind,
                message: e.message,
                lines: e.lines,
            });
        }
        let ok = answer
            .ok
            .unwrap_or(serde_json::Value::Object(Default::default()));
        serde_json::from_value(ok).map_err(|e| AgentError::Remote {
            host: self.host.clone(),
            kind: ErrorKind::Internal,
            message: format!("the agent's answer to {name} is not understood: {e}"),
            lines: Vec::new(),
        })
    }

    /// `: <last lines of stderr>` when the relay said something.
    fn stderr_tail(&self) -> String {
        stderr_tail(&self.stderr)
    }
}

pub(super) fn stderr_tail(lines: &Mutex<VecDeque<String>>) -> String {
    let lines = lines.lock().unwrap_or_else(|e| e.into_inner());
    let last: Vec<&str> = lines
        .iter()
        .rev()
        .take(3)
        .rev()
        .map(String::as_str)
        .collect();
    if last.is_empty() {
        String::new()
    } else {
        format!(": {}", last.join(" / "))
    }
}

/// Keeps the last lines `from` prints.
pub(super) async fn keep_lines(from: impl AsyncRead + Unpin, into: Arc<Mutex<VecDeque<String>>>) {
    let mut lines = BufReader::new(from).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let mut kept = into.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() >= STDERR_LINES {
            kept.pop_front();
        }
        kept.push_back(line);
    }
}

/// Writes each queued line whole; once a write fails, closes the channel for every call.
async fn write_lines(
    mut stdin: ChildStdin,
    mut queued: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
    inner: std::sync::Weak<Inner>,
) {
    while let Some(line) = queued.recv().await {
        let written = async {
            stdin.write_all(&line).await?;
            stdin.flush().await
        }
        .await;
        if let Err(e) = written {
            if let Some(inner) = inner.upgrade() {
                let why = format!("cannot write to the agent: {e}{}", inner.stderr_tail());
                let mut pending = inner.lock_pending();
                pending.closed.get_or_insert(why);
                pending.waiting.clear();
            }
            return;
        }
    }
}

/// Hands each answer line to the call waiting for it; once the channel ends, fails every
/// call waiting and every later one.
async fn read_answers(
    stdout: impl AsyncRead + Unpin,
    inner: std::sync::Weak<Inner>,
    stderr: Arc<Mutex<VecDeque<String>>>,
    stderr_done: tokio::task::JoinHandle<()>,
) {
    let mut lines = BufReader::new(stdout).lines();
    let why = loop {
        match lines.next_line().await {
            Ok(Some(line)) => {
                let Some(inner) = inner.upgrade() else { return };
                match serde_json::from_str::<Answer>(&line) {
                    Ok(answer) => {
                        let waiting = inner.lock_pending().waiting.remove(&answer.id);
                        if let Some(tx) = waiting {
                            let _ = tx.send(answer);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(host = %inner.host, error = %e, "a line from the agent is not an answer")
                    }
                }
            }
            Ok(None) => break "the agent's channel closed".to_string(),
            Err(e) => break format!("reading from the agent failed: {e}"),
        }
    };
    // what the relay or ssh said on its way out
    let _ = tokio::time::timeout(Duration::from_millis(500), stderr_done).await;
    let Some(inner) = inner.upgrade() else { return };
    let why = format!("{why}{}", stderr_tail(&stderr));
    let mut pending = inner.lock_pending();
    pending.closed = Some(why);
    // dropping the senders fails every call waiting
    pending.waiting.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pipeline shares one agent between tasks.
    #[allow(dead_code)]
    fn agents_are_shared_between_tasks(agent: Arc<Agent>) {
        fn send_sync<T: Send + Sync>(_: &T) {}
        send_sync(&agent);
        tokio::spawn(async move { agent.status("shop", "production").await });
    }

    #[test]
    fn receive_args_name_everything_the_receive_needs() {
        let args = receive_args(
            "shop",
            "v1-abc",
            "sha256:00",
            &["data/".into(), "log".into()],
            42,
        );
        assert_eq!(
            args.join(" "),
            "--app shop --release v1-abc --digest sha256:00 --size 42 --shared data/ --shared log"
        );
    }
}

//! The agent daemon (`ferry agent --dir D --daemon`): owns what runs on the host.
//!
//! It listens on `D/agent.sock` (0600, `D` 0700) and serves each connection's JSON lines,
//! each request in its own task, answers written as they are ready. Per app and
//! environment an [`Env`] holds the instances, the proxy and the state file. Started, it
//! adopts what the state files record that still runs (a daemon killed, or retired for a
//! newer one). It never stops an instance on its way out.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

use super::env::Env;
use super::files::{self, Layout};
use super::protocol::{
    self, Answer, Done, ErrorKind, HasReleaseAnswer, HealthAnswer, HelloAnswer, LogsAnswer, Op,
    PruneAnswer, RemoteError, Request, StopAnswer, SwitchAnswer,
};

/// The longest request line taken (a manifest of a large release fits).
const MAX_LINE: u64 = 256 << 20;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("another agent daemon runs for {0}")]
    Running(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DaemonError {
    let what = what.into();
    move |source| DaemonError::Io { what, source }
}

/// The daemon's shared state.
pub struct Daemon {
    layout: Layout,
    envs: Mutex<HashMap<(String, String), Arc<Env>>>,
    /// Serializes the making of environments.
    making: tokio::sync::Mutex<()>,
    /// Per app: held shared while an instance or task starts from a release, exclusively
    /// by a prune.
    releases: Mutex<HashMap<String, Arc<tokio::sync::RwLock<()>>>>,
    /// Requests being carried out, and whether the daemon is retiring (it takes no more).
    in_flight: tokio::sync::watch::Sender<usize>,
    retiring: std::sync::atomic::AtomicBool,
}

/// The longest a duration in a request may be: more is refused, not overflowed.
const MAX_MS: u64 = 24 * 3600 * 1000;
/// How long a retiring daemon waits for the requests under way.
const RETIRE_WAIT: Duration = Duration::from_secs(60);

/// Sixteen random hex digits.
pub fn random_hex() -> String {
    let mut bytes = [0u8; 8];
    let _ = getrandom::fill(&mut bytes);
    hex::encode(bytes)
}

/// Runs the daemon for the agent dir `dir` until it is asked to retire.
pub async fn run(dir: &std::path::Path) -> Result<(), DaemonError> {
    // its own session: the ssh connection that started the relay may go, the daemon stays
    let _ = nix::unistd::setsid();
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let layout = Layout::new(dir);
    std::fs::create_dir_all(&layout.dir)
        .map_err(io_err(format!("creating {}", layout.dir.display())))?;
    std::fs::set_permissions(&layout.dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io_err(format!("securing {}", layout.dir.display())))?;
    let _lock = hold_daemon_lock(&layout).await?;
    let socket = layout.socket();
    match std::fs::remove_file(&socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(format!("removing {}", socket.display()))(e)),
    }
    let daemon = Arc::new(Daemon {
        layout: layout.clone(),
        envs: Mutex::default(),
        making: tokio::sync::Mutex::new(()),
        releases: Mutex::default(),
        in_flight: tokio::sync::watch::channel(0).0,
        retiring: std::sync::atomic::AtomicBool::new(false),
    });
    daemon.adopt_all().await;
    let listener = UnixListener::bind(&socket)
        .map_err(io_err(format!("listening on {}", socket.display())))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
        .map_err(io_err(format!("securing {}", socket.display())))?;
    tracing::info!(dir = %layout.dir.display(), version = %protocol::version(), "the agent daemon listens");
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        tokio::spawn(daemon.clone().serve(stream));
    }
}

/// The daemon lock, held for the daemon's life: a second daemon for the same dir waits a
/// while (one retiring), then gives up.
async fn hold_daemon_lock(
    layout: &Layout,
) -> Result<nix::fcntl::Flock<std::fs::File>, DaemonError> {
    let path = layout.daemon_lock();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(format!("opening {}", path.display())))?;
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(lock),
            Err((_, errno)) if errno == nix::errno::Errno::EWOULDBLOCK => {
                if tokio::time::Instant::now() >= deadline {
                    return Err(DaemonError::Running(layout.dir.display().to_string()));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err((_, errno)) => {
                return Err(io_err(format!("locking {}", path.display()))(errno.into()));
            }
        }
    }
}

fn bad(message: impl Into<String>) -> RemoteError {
    RemoteError::new(ErrorKind::BadRequest, message)
}

impl Daemon {
    /// Adopts what every state file records.
    async fn adopt_all(&self) {
        let state = self.layout.dir.join("state");
        let Ok(apps) = std::fs::read_dir(&state) else {
            return;
        };
        for app in apps.flatten() {
            let Some(app_name) = app.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let Ok(envs) = std::fs::read_dir(app.path()) else {
                continue;
            };
            for file in envs.flatten() {
                let name = file.file_name();
                let Some(env_name) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                    continue;
                };
                match self.env(&app_name, env_name).await {
                    Ok(env) => env.adopt().await,
                    Err(e) => {
                        tracing::warn!(app = %app_name, env = %env_name, error = %e.message, "cannot take over a state file")
                    }
                }
            }
        }
    }

    /// The environment, opened at first use.
    async fn env(&self, app: &str, env: &str) -> Result<Arc<Env>, RemoteError> {
        let key = (app.to_string(), env.to_string());
        if let Some(found) = self.lock_envs().get(&key) {
            return Ok(found.clone());
        }
        let _making = self.making.lock().await;
        if let Some(found) = self.lock_envs().get(&key) {
            return Ok(found.clone());
        }
        let made = Arc::new(Env::open(&self.layout, app, env, self.releases_lock(app))?);
        self.lock_envs().insert(key, made.clone());
        Ok(made)
    }

    fn releases_lock(&self, app: &str) -> Arc<tokio::sync::RwLock<()>> {
        self.releases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(app.to_string())
            .or_default()
            .clone()
    }

    fn lock_envs(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Arc<Env>>> {
        self.envs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Serves one connection: a task per request, answers as they are ready.
    async fn serve(self: Arc<Self>, stream: UnixStream) {
        let (read, mut write) = stream.into_split();
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let writer = tokio::spawn(async move {
            while let Some(line) = rx.recv().await {
                if write.write_all(&line).await.is_err() {
                    break;
                }
            }
        });
        let mut read = BufReader::new(read);
        let mut helloed = false;
        loop {
            let mut line = Vec::new();
            match (&mut read)
                .take(MAX_LINE)
                .read_until(b'\n', &mut line)
                .await
            {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if line.last() != Some(&b'\n') && line.len() as u64 >= MAX_LINE {
                let _ = tx.send(answer_line(0, Err(bad("request line too long"))));
                break;
            }
            let request = match serde_json::from_slice::<Request>(&line) {
                Ok(request) => request,
                Err(e) => {
                    let id = serde_json::from_slice::<serde_json::Value>(&line)
                        .ok()
                        .and_then(|v| v.get("id").and_then(serde_json::Value::as_u64))
                        .unwrap_or(0);
                    let _ = tx.send(answer_line(id, Err(bad(format!("not a request: {e}")))));
                    continue;
                }
            };
            let is_hello = matches!(request.op, Op::Hello { .. });
            if !is_hello && !helloed {
                let _ = tx.send(answer_line(request.id, Err(bad("say hello first"))));
                continue;
            }
            if self.retiring.load(std::sync::atomic::Ordering::SeqCst) {
                let _ = tx.send(answer_line(
                    request.id,
                    Err(RemoteError::new(
                        ErrorKind::Internal,
                        "this agent daemon is retiring: connect again",
                    )),
                ));
                continue;
            }
            if is_hello {
                helloed = true;
            }
            let (daemon, tx) = (self.clone(), tx.clone());
            let retire = matches!(request.op, Op::Retire);
            if retire {
                self.retiring
                    .store(true, std::sync::atomic::Ordering::SeqCst);
            } else {
                self.in_flight.send_modify(|n| *n += 1);
            }
            tokio::spawn(async move {
                let id = request.id;
                let name = request.op.name();
                let work = daemon.clone();
                // a request that panics fails alone, with an answer
                let answer = match tokio::spawn(async move { work.handle(request.op).await }).await
                {
                    Ok(answer) => answer,
                    Err(e) => {
                        tracing::error!(op = name, error = %e, "a request failed");
                        Err(RemoteError::new(
                            ErrorKind::Internal,
                            format!("the agent failed carrying out {name}"),
                        ))
                    }
                };
                if retire {
                    daemon.retire(&tx, id).await;
                } else {
                    let _ = tx.send(answer_line(id, answer));
                    daemon.in_flight.send_modify(|n| *n -= 1);
                }
            });
        }
        drop(tx);
        let _ = writer.await;
    }

    /// Leaves once the requests under way are done (at most [`RETIRE_WAIT`]): every
    /// instance's output left for the next daemon to read, the answer sent, then exits
    /// without stopping anything.
    async fn retire(&self, tx: &mpsc::UnboundedSender<Vec<u8>>, id: u64) {
        tracing::info!("retiring: the instances keep running for the next daemon");
        let mut in_flight = self.in_flight.subscribe();
        if tokio::time::timeout(RETIRE_WAIT, in_flight.wait_for(|n| *n == 0))
            .await
            .is_err()
        {
            tracing::warn!("retiring with requests still under way");
        }
        let envs: Vec<Arc<Env>> = self.lock_envs().values().cloned().collect();
        for env in envs {
            env.detach().await;
        }
        let _ = tx.send(answer_line(id, to_value(Done {})));
        // the answer is written by the connection's writer; give it a moment
        tokio::time::sleep(Duration::from_millis(100)).await;
        std::process::exit(0);
    }

    /// Carries out one request.
    async fn handle(&self, op: Op) -> Result<serde_json::Value, RemoteError> {
        let name = op.name();
        tracing::debug!(op = name, "request");
        check_durations(&op)?;
        match op {
            Op::Hello { protocol: p, .. } => {
                if p != protocol::PROTOCOL {
                    return Err(RemoteError::new(
                        ErrorKind::Version,
                        format!(
                            "this agent ({}) speaks protocol {}, not {p}",
                            protocol::version(),
                            protocol::PROTOCOL
                        ),
                    ));
                }
                to_value(HelloAnswer {
                    protocol: protocol::PROTOCOL,
                    version: protocol::version(),
                    host: std::fs::read_to_string("/proc/sys/kernel/hostname")
                        .map(|h| h.trim().to_string())
                        .unwrap_or_default(),
                    arch: std::env::consts::ARCH.to_string(),
                    free_bytes: files::free_bytes(&self.layout.dir),
                })
            }
            Op::Status { app, env } => to_value(self.env(&app, &env).await?.status().await),
            Op::HasRelease {
                app,
                release,
                digest,
                manifest,
            } => {
                if !protocol::valid_name(&app) || !protocol::valid_name(&release) {
                    return Err(bad("the app and release must be plain names"));
                }
                let present = self.layout.release(&app, &release).is_dir()
                    && files::ReleaseMeta::read(&self.layout.release_meta(&app, &release))
                        .is_some_and(|m| m.digest == digest);
                let lacking = match manifest {
                    Some(manifest) if !present => {
                        let layout = self.layout.clone();
                        let have =
                            tokio::task::spawn_blocking(move || files::contents(&layout, &app))
                                .await
                                .map_err(|e| {
                                    RemoteError::new(ErrorKind::Internal, e.to_string())
                                })?;
                        let mut lacking: Vec<String> = manifest
                            .into_iter()
                            .map(|m| m.sha256)
                            .filter(|sha| !have.contains_key(sha))
                            .collect();
                        lacking.sort();
                        lacking.dedup();
                        Some(lacking)
                    }
                    _ => None,
                };
                to_value(HasReleaseAnswer { present, lacking })
            }
            Op::Start(req) => to_value(self.env(&req.app, &req.env).await?.start(&req).await?),
            Op::Health(req) => {
                let env = self.env(&req.app, &req.env).await?;
                let log = env.health(req.instance, &req.health()).await?;
                to_value(HealthAnswer { log })
            }
            Op::Probe {
                app,
                env,
                instance,
                path,
                timeout_ms,
            } => {
                let env = self.env(&app, &env).await?;
                to_value(
                    env.probe(instance, &path, Duration::from_millis(timeout_ms))
                        .await?,
                )
            }
            Op::Switch {
                app,
                env,
                instance,
                listen,
            } => {
                let env = self.env(&app, &env).await?;
                let previous = env.switch(instance, &listen).await?;
                to_value(SwitchAnswer { previous })
            }
            Op::Stop {
                app,
                env,
                instance,
                drain_timeout_ms,
                unserve,
            } => {
                let env = self.env(&app, &env).await?;
                let report = env
                    .stop(instance, Duration::from_millis(drain_timeout_ms), unserve)
                    .await?;
                to_value(StopAnswer { report })
            }
            Op::Task(req) => to_value(self.env(&req.app, &req.env).await?.task(&req).await?),
            Op::Logs { app, env, lines } => {
                let lines = self.env(&app, &env).await?.logs(lines).await?;
                to_value(LogsAnswer { lines })
            }
            Op::Prune { app, keep } => to_value(PruneAnswer {
                removed: self.prune(&app, &keep).await?,
            }),
            Op::Retire => to_value(Done {}),
        }
    }

    /// Removes the app's releases but `keep` and those an instance of any of its
    /// environments runs; with each environment's copy of them.
    async fn prune(&self, app: &str, keep: &[String]) -> Result<Vec<String>, RemoteError> {
        if !protocol::valid_name(app) {
            return Err(bad("the app must be a plain name"));
        }
        let lock = self.releases_lock(app);
        let _pruning = lock.write().await;
        let envs: Vec<Arc<Env>> = self
            .lock_envs()
            .values()
            .filter(|e| e.app == app)
            .cloned()
            .collect();
        let mut in_use = Vec::new();
        for env in &envs {
            in_use.extend(env.releases_in_use().await);
        }
        let mut removed = Vec::new();
        for (name, _) in self.layout.releases_present(app) {
            if keep.contains(&name) || in_use.contains(&name) {
                continue;
            }
            // the record first: a release without one is not present
            let _ = std::fs::remove_file(self.layout.release_meta(app, &name));
            let _ = std::fs::remove_dir_all(self.layout.release(app, &name));
            if let Ok(dirs) = std::fs::read_dir(self.layout.dir.join("apps").join(app)) {
                for env_dir in dirs.flatten() {
                    if env_dir.file_name() == "releases" {
                        continue;
                    }
                    let copies = env_dir.path().join("releases");
                    let _ = std::fs::remove_dir_all(copies.join(&name));
                    let _ = std::fs::remove_file(copies.join(format!(".{name}.digest")));
                }
            }
            tracing::info!(app, release = %name, "pruned a release");
            removed.push(name);
        }
        Ok(removed)
    }
}

/// Refuses a duration over [`MAX_MS`] (it would overflow the clocks it is added to).
fn check_durations(op: &Op) -> Result<(), RemoteError> {
    let durations: Vec<u64> = match op {
        Op::Health(h) => vec![h.startup_delay_ms, h.interval_ms, h.timeout_ms],
        Op::Start(s) => vec![s.stop_timeout_ms],
        Op::Task(t) => vec![t.stop_timeout_ms, t.timeout_ms],
        Op::Probe { timeout_ms, .. } => vec![*timeout_ms],
        Op::Stop {
            drain_timeout_ms, ..
        } => vec![*drain_timeout_ms],
        _ => Vec::new(),
    };
    if durations.iter().any(|ms| *ms > MAX_MS) {
        return Err(bad(format!(
            "a duration of {} ms is more than ferry takes ({MAX_MS} ms)",
            durations.iter().max().copied().unwrap_or_default()
        )));
    }
    if let Op::Health(h) = op
        && h.retries > 100_000
    {
        return Err(bad("more than 100000 health retries"));
    }
    Ok(())
}

fn to_value<T: serde::Serialize>(answer: T) -> Result<serde_json::Value, RemoteError> {
    serde_json::to_value(answer)
        .map_err(|e| RemoteError::new(ErrorKind::Internal, format!("encoding the answer: {e}")))
}

/// An answer as its line.
fn answer_line(id: u64, answer: Result<serde_json::Value, RemoteError>) -> Vec<u8> {
    let answer = match answer {
        Ok(ok) => Answer {
            id,
            ok: Some(ok),
            error: None,
        },
        Err(error) => Answer {
            id,
            ok: None,
            error: Some(error),
        },
    };
    let mut line = serde_json::to_vec(&answer).unwrap_or_else(|_| {
        br#"{"id":0,"error":{"kind":"internal","message":"cannot encode an answer"}}"#.to_vec()
    });
    line.push(b'\n');
    line
}

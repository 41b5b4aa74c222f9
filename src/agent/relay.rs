//! `ferry agent --dir D`: what ssh runs. A relay between its stdin/stdout and the host's
//! agent daemon at `D/agent.sock`, which it starts when none answers (detached, in its own
//! session, output to `D/agent.log`; a lock file keeps two relays from starting two). A
//! daemon of another ferry build is asked to retire first, and a new one adopts its
//! instances. The relay ends with either side; the daemon stays.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::files::Layout;
use super::protocol::{self, Answer, HelloAnswer, Op, Request};

/// How long a relay waits for a daemon it started to listen.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// The size past which `agent.log` is moved to `agent.log.1` when a daemon starts.
const LOG_ROTATE_BYTES: u64 = 10 * 1024 * 1024;

/// Why the relay could not reach a daemon.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("the agent daemon did not start: {0}")]
    Start(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RelayError {
    let what = what.into();
    move |source| RelayError::Io { what, source }
}

/// Relays stdin/stdout to the daemon of `dir` (started if need be) until either side ends.
pub async fn run(dir: &Path) -> Result<(), RelayError> {
    let layout = Layout::new(dir);
    std::fs::create_dir_all(&layout.dir)
        .map_err(io_err(format!("creating {}", layout.dir.display())))?;
    std::fs::set_permissions(&layout.dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io_err(format!("securing {}", layout.dir.display())))?;
    let stream = current_daemon(&layout).await?;
    let (mut from_daemon, mut to_daemon) = stream.into_split();
    let mut stdin = tokio::io::stdin();
    let mut stdout = tokio::io::stdout();
    tokio::select! {
        _ = tokio::io::copy(&mut stdin, &mut to_daemon) => {}
        _ = tokio::io::copy(&mut from_daemon, &mut stdout) => {}
    }
    let _ = stdout.flush().await;
    Ok(())
}

/// A connection to a daemon of this build: one already running, or one started now (after
/// retiring one of another build).
async fn current_daemon(layout: &Layout) -> Result<UnixStream, RelayError> {
    for _ in 0..3 {
        let mut stream = connect_or_start(layout).await?;
        match hello(&mut stream).await {
            Ok(theirs) if theirs == protocol::version() => return Ok(stream),
            Ok(theirs) => {
                eprintln!(
                    "ferry agent: the daemon is ferry {theirs}, this is {}: retiring it",
                    protocol::version()
                );
                retire(stream).await;
            }
            Err(why) => {
                eprintln!("ferry agent: the daemon does not say hello ({why}): retiring it");
                retire(stream).await;
            }
        }
    }
    Err(RelayError::Start(
        "a daemon of this build could not be had after 3 tries".into(),
    ))
}

/// Says hello on the relay's own account (id 0); the daemon's version.
async fn hello(stream: &mut UnixStream) -> Result<String, String> {
    let request = Request {
        id: 0,
        op: Op::Hello {
            protocol: protocol::PROTOCOL,
            version: protocol::version(),
        },
    };
    let mut line = serde_json::to_vec(&request).map_err(|e| e.to_string())?;
    line.push(b'\n');
    stream.write_all(&line).await.map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(&mut *stream);
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut answer))
        .await
        .map_err(|_| "no answer within 10s".to_string())?
        .map_err(|e| e.to_string())?;
    if !reader.buffer().is_empty() {
        return Err("it said more than one answer".into());
    }
    let answer: Answer = serde_json::from_str(&answer).map_err(|e| e.to_string())?;
    match (answer.ok, answer.error) {
        (Some(ok), _) => serde_json::from_value::<HelloAnswer>(ok)
            .map(|h| h.version)
            .map_err(|e| e.to_string()),
        (None, Some(e)) => Err(e.message),
        (None, None) => Err("an empty answer".into()),
    }
}

/// Asks the daemon to retire and waits until it has gone.
async fn retire(mut stream: UnixStream) {
    let line = br#"{"id":0,"op":"retire"}
"#;
    if stream.write_all(line).await.is_err() {
        return;
    }
    // it closes the connection as it exits
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut rest),
    )
    .await;
}

/// Connects to the daemon, starting it when none answers.
async fn connect_or_start(layout: &Layout) -> Result<UnixStream, RelayError> {
    if let Ok(stream) = UnixStream::connect(layout.socket()).await {
        return Ok(stream);
    }
    let lock_path = layout.start_lock();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_err(format!("opening {}", lock_path.display())))?;
    let _lock = tokio::task::spawn_blocking(move || {
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| std::io::Error::from(e))
    })
    .await
    .map_err(|e| RelayError::Start(e.to_string()))?
    .map_err(io_err(format!("locking {}", lock_path.display())))?;
    // another relay may have started one while this one waited for the lock
    if let Ok(stream) = UnixStream::connect(layout.socket()).await {
        return Ok(stream);
    }
    let exe = std::env::current_exe().map_err(io_err("finding ferry's own binary"))?;
    // one older log kept: a daemon starts seldom, and says little
    if std::fs::metadata(layout.log()).is_ok_and(|m| m.len() > LOG_ROTATE_BYTES) {
        let _ = std::fs::rename(layout.log(), layout.dir.join("agent.log.1"));
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(layout.log())
        .map_err(io_err(format!("opening {}", layout.log().display())))?;
    let mut child = std::process::Command::new(exe)
        .arg("agent")
        .arg("--dir")
        .arg(&layout.dir)
        .arg("--daemon")
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(io_err("opening the agent log"))?)
        .stderr(log)
        .current_dir(&layout.dir)
        .spawn()
        .map_err(io_err("starting the agent daemon"))?;
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(stream) = UnixStream::connect(layout.socket()).await {
            // not waited for: it outlives this relay, and init reaps it
            drop(child);
            return Ok(stream);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(RelayError::Start(format!(
                "it exited ({status}); see {}",
                layout.log().display()
            )));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(RelayError::Start(format!(
                "it did not listen within {}s; see {}",
                START_TIMEOUT.as_secs(),
                layout.log().display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

//! Running compose and docker: a cleared environment, a timeout, bounded output, and the
//! whole process group killed when abandoned.

use super::*;

impl Compose {
    /// The program of a flavour's compose command line.
    pub(super) fn program(&self, flavor: Flavor) -> &Path {
        match flavor {
            Flavor::V2 => &self.docker,
            Flavor::V1 => &self.v1,
        }
    }

    /// The command as a person would type it (for messages; it holds no secret).
    pub(super) fn show(&self, flavor: Flavor, args: &[OsString]) -> String {
        show_command(self.program(flavor), args)
    }

    /// A command with compose's environment: [`PASSED_ENV`] from ferry's, plus `env`.
    pub(super) fn command(
        &self,
        flavor: Flavor,
        args: &[OsString],
        env: &[(String, String)],
    ) -> Command {
        command(self.program(flavor), args, env)
    }

    pub(super) async fn query(&self, args: &[OsString]) -> Result<Ran, ComposeError> {
        self.exec(self.flavor, args, &[], Capture::Split, QUERY_TIMEOUT)
            .await
    }

    pub(super) async fn docker(&self, args: &[OsString]) -> Result<Ran, ComposeError> {
        run_bounded(
            &self.docker,
            args,
            &[],
            Capture::Split,
            QUERY_TIMEOUT,
            STDOUT_CAP,
        )
        .await
    }

    pub(super) async fn exec(
        &self,
        flavor: Flavor,
        args: &[OsString],
        env: &[(String, String)],
        capture: Capture,
        timeout: Duration,
    ) -> Result<Ran, ComposeError> {
        run_bounded(
            self.program(flavor),
            args,
            env,
            capture,
            timeout,
            STDOUT_CAP,
        )
        .await
    }
}

/// How a command's output is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Capture {
    /// Standard output is data (kept up to a cap); standard error is the log.
    Split,
    /// Both go into one pipe, in order: the log.
    Merged,
}

/// A command that succeeded.
#[derive(Debug)]
pub(super) struct Ran {
    pub(super) stdout: String,
    /// The last [`TAIL_LINES`] lines of the log.
    pub(super) log: String,
}

pub(super) fn program_from_env(var: &str, default: &str) -> PathBuf {
    let name = std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.into());
    let name = PathBuf::from(name);
    if name.components().count() > 1 || name.is_absolute() {
        return name;
    }
    // resolved now, so an instance's own PATH (set in compose's environment) cannot change it
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(&name))
        .find(|candidate| candidate.is_file())
        .unwrap_or(name)
}

pub(super) fn command(program: &Path, args: &[OsString], env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args).env_clear();
    for key in PASSED_ENV {
        if let Some(value) = std::env::var_os(key) {
            cmd.env(key, value);
        }
    }
    if std::env::var_os("PATH").is_none() {
        cmd.env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
    }
    for (key, value) in env {
        cmd.env(key, value);
    }
    cmd.stdin(Stdio::null()).kill_on_drop(true).process_group(0);
    cmd
}

pub(super) fn show_command(program: &Path, args: &[OsString]) -> String {
    let mut shown = program.display().to_string();
    for arg in args {
        shown.push(' ');
        shown.push_str(&arg.to_string_lossy());
    }
    shown
}

/// Runs `program args` with compose's environment plus `env`, reads its output bounded, and kills
/// its process group when `timeout` passes.
pub(super) async fn run_bounded(
    program: &Path,
    args: &[OsString],
    env: &[(String, String)],
    capture: Capture,
    timeout: Duration,
    stdout_cap: usize,
) -> Result<Ran, ComposeError> {
    let shown = show_command(program, args);
    let spawn_error = |source| ComposeError::Spawn {
        command: shown.clone(),
        source,
    };
    let mut cmd = command(program, args, env);
    let (mut child, out, log): (Child, Option<Reader>, Reader) = match capture {
        Capture::Split => {
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            let mut child = cmd.spawn().map_err(spawn_error)?;
            let out = child.stdout.take().map(|o| spawn_tail(o, stdout_cap));
            let err = child.stderr.take().map(|e| spawn_tail(e, LOG_CAP));
            (
                child,
                out,
                err.ok_or_else(|| io::Error::other("no stderr"))?,
            )
        }
        Capture::Merged => {
            let (reader, writer) = io::pipe()?;
            cmd.stdout(writer.try_clone()?).stderr(writer);
            let child = cmd.spawn().map_err(spawn_error)?;
            // the command holds the pipe's write ends: dropped, the read end sees the end
            drop(cmd);
            let reader = tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(reader))?;
            (child, None, spawn_tail(reader, LOG_CAP))
        }
    };
    let pid = child.id();
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => Some(status?),
        Err(_) => {
            if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = child.kill().await;
            None
        }
    };
    let stdout = match out {
        Some(out) => finish_tail(out).await,
        None => Vec::new(),
    };
    let log = tail_lines(&finish_tail(log).await, TAIL_LINES);
    match status {
        None => Err(ComposeError::Timeout {
            command: shown,
            secs: timeout.as_secs(),
            tail: log,
        }),
        Some(status) if !status.success() => Err(ComposeError::Failed {
            command: shown,
            status: status.to_string(),
            tail: if log.trim().is_empty() {
                tail_lines(&stdout, TAIL_LINES)
            } else {
                log
            },
        }),
        Some(_) => Ok(Ran {
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            log,
        }),
    }
}

type Reader = JoinHandle<io::Result<Vec<u8>>>;

/// Reads `stream` to its end in a task, keeping its last `cap` bytes.
pub(super) fn spawn_tail<R: AsyncRead + Unpin + Send + 'static>(
    mut stream: R,
    cap: usize,
) -> Reader {
    tokio::spawn(async move {
        let mut kept = Vec::new();
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            kept.extend_from_slice(&chunk[..n]);
            if kept.len() > 2 * cap {
                kept.drain(..kept.len() - cap);
            }
        }
        if kept.len() > cap {
            kept.drain(..kept.len() - cap);
        }
        Ok(kept)
    })
}

/// What a reader kept; a stream still open [`DRAIN_TIMEOUT`] after its command ended (held by a
/// process that escaped the group) is given up.
pub(super) async fn finish_tail(mut reader: Reader) -> Vec<u8> {
    match tokio::time::timeout(DRAIN_TIMEOUT, &mut reader).await {
        Ok(Ok(Ok(kept))) => kept,
        Ok(_) => Vec::new(),
        Err(_) => {
            reader.abort();
            Vec::new()
        }
    }
}

/// The last `n` lines of `bytes`, as text.
pub(super) fn tail_lines(bytes: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub(super) fn first_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or_default()
        .to_string()
}

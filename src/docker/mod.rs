//! A thin, typed wrapper over the `docker` command line (and `docker compose` /
//! `docker-compose` in [`compose`]): what the container runtimes drive.
//!
//! Each call runs the CLI as a child process with explicit arguments (never through a
//! shell), under a timeout (the [`Docker`]'s default, 60 s, or the caller's for a build),
//! and is killed when the timeout passes or its future is dropped. A failure becomes a
//! [`DockerError`] whose `Display` is one line a user can act on: the daemon cannot be
//! reached, docker is not installed, or which command failed with docker's own message.
//! No secret is ever an argument: variables go in a file ([`write_env_file`]).

pub mod compose;
mod error;
mod spec;
#[cfg(test)]
mod tests;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

pub use error::{DockerError, failure, last_lines, one_line_tail, unreachable_message};
use error::{no_such, spawn_error};
pub use spec::{
    BuildOutput, ContainerInfo, Mount, Network, RunSpec, build_args, ceil_secs, label_filters,
    mount_arg, parse_inspect, run_args, write_env_file,
};

/// How long a docker command that should finish promptly may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// How much of a build's output is kept (its end).
pub const BUILD_OUTPUT_LIMIT: usize = 64 * 1024;
/// How many of a failed build's last lines its error carries.
pub const BUILD_TAIL_LINES: usize = 40;

/// The `docker` CLI ferry drives. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Docker {
    program: PathBuf,
    host: Option<String>,
    timeout: Duration,
}

impl Default for Docker {
    fn default() -> Self {
        Docker::new()
    }
}

impl Docker {
    /// `docker` from PATH, or the program the `FERRY_DOCKER` environment variable names.
    pub fn new() -> Docker {
        let program = std::env::var_os("FERRY_DOCKER")
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| OsString::from("docker"));
        Docker::with_program(program)
    }

    /// The docker CLI at `program` (a path, or a name looked up on PATH).
    pub fn with_program(program: impl Into<PathBuf>) -> Docker {
        Docker {
            program: program.into(),
            host: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Talks to the daemon at `host` (`DOCKER_HOST`, e.g. `unix:///run/other.sock`) instead
    /// of the one the environment names.
    pub fn with_host(mut self, host: impl Into<String>) -> Docker {
        self.host = Some(host.into());
        self
    }

    /// Sets how long commands other than `build`, `wait` and `follow_logs` may take.
    pub fn with_timeout(mut self, timeout: Duration) -> Docker {
        self.timeout = timeout;
        self
    }

    /// The docker program run.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// A command running this docker (with its host), its stdin closed, killed when dropped.
    /// For callers that need a docker command this module does not wrap (`docker compose`).
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        if let Some(host) = &self.host {
            cmd.env("DOCKER_HOST", host);
        }
        cmd.stdin(Stdio::null()).kill_on_drop(true);
        cmd
    }

    /// Runs `cmd` to its end with stdout and stderr captured, killing it after `timeout`.
    /// Whatever its exit status: see [`failure`] for the error of a failed one.
    pub async fn capture(
        &self,
        what: &str,
        mut cmd: Command,
        timeout: Duration,
    ) -> Result<Output, DockerError> {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let program = PathBuf::from(cmd.as_std().get_program());
        let child = cmd.spawn().map_err(|e| spawn_error(&program, what, e))?;
        drop(cmd);
        match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Ok(out) => out.map_err(|source| DockerError::Io {
                what: what.to_string(),
                source,
            }),
            // dropping the child killed it (kill_on_drop)
            Err(_) => Err(DockerError::Timeout {
                what: what.to_string(),
                after: timeout,
                tail: String::new(),
            }),
        }
    }

    /// Runs `docker <args>`; its stdout when it succeeds.
    async fn checked(
        &self,
        what: &str,
        args: Vec<OsString>,
        timeout: Duration,
    ) -> Result<String, DockerError> {
        let out = self.raw(what, args, timeout).await?;
        if !out.status.success() {
            return Err(failure(what, &out));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    async fn raw(
        &self,
        what: &str,
        args: Vec<OsString>,
        timeout: Duration,
    ) -> Result<Output, DockerError> {
        let mut cmd = self.command();
        cmd.args(args);
        self.capture(what, cmd, timeout).await
    }

    /// The daemon's version (`docker version --format {{.Server.Version}}`): whether docker
    /// is installed ([`DockerError::NotInstalled`]) and its daemon answers
    /// ([`DockerError::Unreachable`] with docker's message otherwise).
    pub async fn ping(&self) -> Result<String, DockerError> {
        let args = vec!["version".into(), "--format={{.Server.Version}}".into()];
        let out = match self.raw("version", args, self.timeout).await {
            Err(DockerError::Timeout { after, .. }) => {
                return Err(DockerError::Unreachable {
                    message: format!("no answer within {} s", ceil_secs(after)),
                });
            }
            r => r?,
        };
        let stderr = String::from_utf8_lossy(&out.stderr);
        let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() || version.is_empty() {
            let message = unreachable_message(&stderr).unwrap_or_else(|| {
                let tail = one_line_tail(&stderr);
                if tail.is_empty() {
                    format!("docker version gave no server version ({})", out.status)
                } else {
                    tail
                }
            });
            return Err(DockerError::Unreachable { message });
        }
        Ok(version)
    }

    /// Builds the image of `dockerfile` with `context` as its context, tagged `tag` and
    /// labelled `labels`, with the legacy builder (`DOCKER_BUILDKIT=0`: it works with every
    /// daemon and writes plain output). Its combined output is kept (the last 64 KiB); a
    /// failure carries its last 40 lines; past `timeout` the build is killed.
    pub async fn build(
        &self,
        context: &Path,
        dockerfile: &Path,
        tag: &str,
        labels: &[(String, String)],
        timeout: Duration,
    ) -> Result<BuildOutput, DockerError> {
        let io = |what: &str| {
            let what = what.to_string();
            move |source| DockerError::Io { what, source }
        };
        let iid = tempfile::Builder::new()
            .prefix(".ferry-iid-")
            .tempfile()
            .map_err(io("build: creating the image id file"))?;
        let args = build_args(context, dockerfile, tag, labels, iid.path())?;
        // one pipe for both streams, so the output reads as a terminal would show it
        let (tx, mut rx) = tokio::net::unix::pipe::pipe().map_err(io("build: pipe"))?;
        let w = tx.into_blocking_fd().map_err(io("build: pipe"))?;
        let w2 = w.try_clone().map_err(io("build: pipe"))?;
        let mut cmd = self.command();
        cmd.env("DOCKER_BUILDKIT", "0")
            .args(args)
            .stdout(Stdio::from(w))
            .stderr(Stdio::from(w2));
        let mut child = cmd
            .spawn()
            .map_err(|e| spawn_error(&self.program, "build", e))?;
        // our copies of the write end go with the command, so the pipe ends with the child
        drop(cmd);
        let mut output = TailBuffer::new(BUILD_OUTPUT_LIMIT);
        let run = tokio::time::timeout(timeout, async {
            let mut chunk = [0u8; 8192];
            loop {
                let n = rx.read(&mut chunk).await?;
                if n == 0 {
                    break;
                }
                output.push(&chunk[..n]);
            }
            child.wait().await
        })
        .await;
        let status = match run {
            Ok(status) => status.map_err(io("build"))?,
            Err(_) => {
                let _ = child.kill().await;
                return Err(DockerError::Timeout {
                    what: "build".to_string(),
                    after: timeout,
                    tail: last_lines(&output.text(), BUILD_TAIL_LINES),
                });
            }
        };
        let text = output.text();
        if !status.success() {
            if let Some(message) = unreachable_message(&text) {
                return Err(DockerError::Unreachable { message });
            }
            return Err(DockerError::Build {
                status,
                tail: last_lines(&text, BUILD_TAIL_LINES),
            });
        }
        let image_id = std::fs::read_to_string(iid.path())
            .map_err(io("build: reading the image id file"))?
            .trim()
            .to_string();
        if !image_id.starts_with("sha256:") {
            return Err(DockerError::Parse {
                what: "build".to_string(),
                message: format!("image id file holds {image_id:?}"),
            });
        }
        Ok(BuildOutput {
            image_id,
            output: text,
        })
    }

    /// The id (`sha256:…`) of the image `reference` names, `None` when there is none.
    pub async fn image_id(&self, reference: &str) -> Result<Option<String>, DockerError> {
        let args = vec![
            "image".into(),
            "inspect".into(),
            "--format={{.Id}}".into(),
            "--".into(),
            reference.into(),
        ];
        let out = self.raw("image inspect", args, self.timeout).await?;
        if !out.status.success() {
            if no_such(&String::from_utf8_lossy(&out.stderr)) {
                return Ok(None);
            }
            return Err(failure("image inspect", &out));
        }
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Ok(Some(id))
    }

    /// Tags `image` (an id or reference) as `tag`.
    pub async fn tag(&self, image: &str, tag: &str) -> Result<(), DockerError> {
        let args = vec!["tag".into(), "--".into(), image.into(), tag.into()];
        self.checked("tag", args, self.timeout).await.map(drop)
    }

    /// Removes the image `reference` (a tag: that tag; an id: the image, if no container
    /// uses it). One already absent is not an error.
    pub async fn remove_image(&self, reference: &str) -> Result<(), DockerError> {
        let args = vec!["image".into(), "rm".into(), "--".into(), reference.into()];
        let out = self.raw("image rm", args, self.timeout).await?;
        if out.status.success() || no_such(&String::from_utf8_lossy(&out.stderr)) {
            return Ok(());
        }
        Err(failure("image rm", &out))
    }

    /// Starts a container as `spec` says (`docker run --detach`); its id. A published port
    /// is refused up front when the daemon has no default bridge network (dockerd
    /// `--bridge=none`): docker would start the container unreachable, without a word.
    pub async fn run(&self, spec: &RunSpec) -> Result<String, DockerError> {
        let args = run_args(spec)?;
        if matches!(spec.network, Network::Publish { .. }) && !self.has_bridge().await? {
            return Err(DockerError::Invalid {
                what: "run".to_string(),
                reason: "a published port needs docker's default bridge network, which this \
                         daemon lacks (dockerd --bridge=none): use host networking"
                    .to_string(),
            });
        }
        let out = self.checked("run", args, self.timeout).await?;
        let id = out.lines().last().unwrap_or("").trim().to_string();
        if id.is_empty() {
            return Err(DockerError::Parse {
                what: "run".to_string(),
                message: "no container id printed".to_string(),
            });
        }
        Ok(id)
    }

    /// Whether the daemon has its default bridge network (`docker network inspect bridge`).
    pub async fn has_bridge(&self) -> Result<bool, DockerError> {
        let args = vec![
            "network".into(),
            "inspect".into(),
            "--format={{.Name}}".into(),
            "--".into(),
            "bridge".into(),
        ];
        let out = self.raw("network inspect", args, self.timeout).await?;
        if out.status.success() {
            return Ok(true);
        }
        let stderr = String::from_utf8_lossy(&out.stderr).to_ascii_lowercase();
        let missing =
            stderr.contains("network bridge not found") || stderr.contains("no such network");
        if missing && unreachable_message(&stderr).is_none() {
            return Ok(false);
        }
        Err(failure("network inspect", &out))
    }

    /// Spawns `docker logs --follow [--since=<since>] <container>` with its stdout and
    /// stderr (the container's) both written to `out`, e.g. the write end of a pipe. It ends
    /// when the container stops; it is killed if the returned child is dropped.
    pub fn follow_logs(
        &self,
        container: &str,
        since: Option<&str>,
        out: std::fs::File,
    ) -> Result<Child, DockerError> {
        let mut args: Vec<OsString> = vec!["logs".into(), "--follow".into()];
        if let Some(since) = since {
            args.push(format!("--since={since}").into());
        }
        args.push("--".into());
        args.push(container.into());
        let io = |source| DockerError::Io {
            what: "logs".to_string(),
            source,
        };
        let err = out.try_clone().map_err(io)?;
        let mut cmd = self.command();
        cmd.args(args).stdout(out).stderr(err);
        cmd.spawn()
            .map_err(|e| spawn_error(&self.program, "logs", e))
    }

    /// Waits for `container` to stop (`docker wait`, no timeout: wrap it in one, or drop
    /// it, which kills the `docker wait`); its exit code.
    pub async fn wait(&self, container: &str) -> Result<i32, DockerError> {
        let args = vec!["wait".into(), "--".into(), container.into()];
        let out = self.checked("wait", args, Duration::MAX).await?;
        let code = out.trim();
        code.parse().map_err(|_| DockerError::Parse {
            what: "wait".to_string(),
            message: format!("exit code {code:?}"),
        })
    }

    /// The container `container` (a name or id) as `docker inspect` shows it; `None` when
    /// there is no such container.
    pub async fn inspect(&self, container: &str) -> Result<Option<ContainerInfo>, DockerError> {
        Ok(self
            .inspect_many(&[container.to_string()])
            .await?
            .into_iter()
            .next())
    }

    /// The containers of `names` that exist.
    async fn inspect_many(&self, names: &[String]) -> Result<Vec<ContainerInfo>, DockerError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let mut args: Vec<OsString> = vec!["container".into(), "inspect".into(), "--".into()];
        args.extend(names.iter().map(OsString::from));
        let out = self.raw("inspect", args, self.timeout).await?;
        if !out.status.success() {
            // docker prints the ones it found and fails for the others
            let stderr = String::from_utf8_lossy(&out.stderr);
            let only_missing = stderr.lines().filter(|l| !l.trim().is_empty()).all(no_such);
            if !only_missing {
                return Err(failure("inspect", &out));
            }
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        if stdout.trim().is_empty() {
            return Ok(Vec::new());
        }
        parse_inspect(&stdout)
    }

    /// Stops `container`: `docker stop -t <grace, rounded up>` (SIGTERM, then SIGKILL after
    /// the grace), then removes it. A container already gone is not an error.
    pub async fn stop(&self, container: &str, grace: Duration) -> Result<(), DockerError> {
        self.stop_only(container, grace).await?;
        self.remove(container).await
    }

    /// Stops `container` as [`Docker::stop`] does but keeps it: the exit code it stopped
    /// with (143 for SIGTERM, 137 when killed after the grace, the app's own code if it
    /// exited by itself), `None` when there is no such container.
    pub async fn stop_only(
        &self,
        container: &str,
        grace: Duration,
    ) -> Result<Option<i32>, DockerError> {
        let args = vec![
            "stop".into(),
            "-t".into(),
            ceil_secs(grace).to_string().into(),
            "--".into(),
            container.into(),
        ];
        let out = self
            .raw("stop", args, grace.saturating_add(self.timeout))
            .await?;
        if !out.status.success() {
            if no_such(&String::from_utf8_lossy(&out.stderr)) {
                return Ok(None);
            }
            return Err(failure("stop", &out));
        }
        Ok(self.inspect(container).await?.and_then(|c| c.exit_code))
    }

    /// Removes `container` at once (`docker rm -f`: killed if it runs). A container
    /// already gone is not an error.
    pub async fn remove(&self, container: &str) -> Result<(), DockerError> {
        let args = vec!["rm".into(), "-f".into(), "--".into(), container.into()];
        let out = self.raw("rm", args, self.timeout).await?;
        if out.status.success() || no_such(&String::from_utf8_lossy(&out.stderr)) {
            return Ok(());
        }
        Err(failure("rm", &out))
    }

    /// The containers, running or not, that carry every label of `labels`, by name.
    pub async fn list(
        &self,
        labels: &[(String, String)],
    ) -> Result<Vec<ContainerInfo>, DockerError> {
        let mut args: Vec<OsString> = vec![
            "ps".into(),
            "--all".into(),
            "--no-trunc".into(),
            "--quiet".into(),
        ];
        args.extend(label_filters(labels)?);
        let ids: Vec<String> = self
            .checked("ps", args, self.timeout)
            .await?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        let mut found = self.inspect_many(&ids).await?;
        found.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(found)
    }
}

/// The end of a stream, at most `limit` bytes of it.
struct TailBuffer {
    buf: Vec<u8>,
    limit: usize,
    cut: bool,
}

impl TailBuffer {
    fn new(limit: usize) -> TailBuffer {
        TailBuffer {
            buf: Vec::new(),
            limit,
            cut: false,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() > 2 * self.limit {
            self.buf.drain(..self.buf.len() - self.limit);
            self.cut = true;
        }
    }

    /// The kept text; when the start was cut, from the first whole line kept.
    fn text(&self) -> String {
        let mut start = self.buf.len().saturating_sub(self.limit);
        if (self.cut || start > 0)
            && let Some(nl) = self.buf[start..].iter().position(|&b| b == b'\n')
        {
            start += nl + 1;
        }
        String::from_utf8_lossy(&self.buf[start..]).into_owned()
    }
}

//! The errors of docker calls, and how a failed call's output becomes one: docker's own
//! words, on one line, with the daemon being unreachable told apart from a failed command.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output};
use std::time::Duration;

use super::ceil_secs;

/// A failed docker call.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// The docker program is not there.
    #[error(
        "docker is not installed: {} was not found (install docker, or set FERRY_DOCKER to its path)",
        program.display()
    )]
    NotInstalled { program: PathBuf },
    /// The CLI runs but cannot talk to the daemon (down, absent, wrong socket, no
    /// permission); `message` is docker's own, on one line.
    #[error("cannot reach the docker daemon: {message}")]
    Unreachable { message: String },
    /// `docker build` failed; `tail` holds the last lines of its output (the failing step
    /// and its message), `Display` only the last of them.
    #[error("docker build failed ({status}): {}", last_line(tail))]
    Build { status: ExitStatus, tail: String },
    /// Another docker command failed; `stderr_tail` is the end of what it printed, one line.
    #[error("docker {what} failed ({status}): {stderr_tail}")]
    Command {
        what: String,
        status: ExitStatus,
        stderr_tail: String,
    },
    /// The command did not finish in time and was killed. `tail` is the end of a build's
    /// output (empty for other commands).
    #[error("docker {what} did not finish within {} s and was killed", ceil_secs(*after))]
    Timeout {
        what: String,
        after: Duration,
        tail: String,
    },
    /// ferry was asked something docker cannot be given safely (a name with a space, a
    /// label key with `=`, a relative mount…).
    #[error("docker {what}: {reason}")]
    Invalid { what: String, reason: String },
    #[error("docker {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// docker answered something ferry cannot read.
    #[error("docker {what}: unexpected output: {message}")]
    Parse { what: String, message: String },
}

fn last_line(text: &str) -> &str {
    text.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("(no output)")
}

/// The end of `text` on one line: its last few non-empty lines joined with ` | `, at most
/// ~1000 characters.
pub fn one_line_tail(text: &str) -> String {
    let mut lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines.drain(..lines.len().saturating_sub(3));
    let joined = lines.join(" | ");
    if joined.len() <= 1000 {
        return joined;
    }
    let mut start = joined.len() - 1000;
    while !joined.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &joined[start..])
}

/// The last `n` lines of `text`.
pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// docker's way of saying the daemon is not there (or not ours to talk to), whatever the
/// command: the line that says so.
pub fn unreachable_message(stderr: &str) -> Option<String> {
    const SIGNS: [&str; 5] = [
        "cannot connect to the docker daemon",
        "is the docker daemon running",
        "error during connect",
        "permission denied while trying to connect",
        "connect: connection refused",
    ];
    stderr
        .lines()
        .map(str::trim)
        .find(|l| {
            let l = l.to_ascii_lowercase();
            SIGNS.iter().any(|s| l.contains(s))
        })
        .map(str::to_string)
}

/// docker saying the object named does not exist.
pub(super) fn no_such(stderr: &str) -> bool {
    let s = stderr.to_ascii_lowercase();
    s.contains("no such container") || s.contains("no such image") || s.contains("no such object")
}

/// The error for a docker command `what` that ran and failed.
pub fn failure(what: &str, out: &Output) -> DockerError {
    let stderr = String::from_utf8_lossy(&out.stderr);
    if let Some(message) = unreachable_message(&stderr) {
        return DockerError::Unreachable { message };
    }
    let mut stderr_tail = one_line_tail(&stderr);
    if stderr_tail.is_empty() {
        stderr_tail = one_line_tail(&String::from_utf8_lossy(&out.stdout));
    }
    DockerError::Command {
        what: what.to_string(),
        status: out.status,
        stderr_tail,
    }
}

/// The error for a command that could not be started.
pub(super) fn spawn_error(program: &Path, what: &str, source: std::io::Error) -> DockerError {
    if source.kind() == std::io::ErrorKind::NotFound {
        DockerError::NotInstalled {
            program: program.to_path_buf(),
        }
    } else {
        DockerError::Io {
            what: format!("{what}: starting {}", program.display()),
            source,
        }
    }
}

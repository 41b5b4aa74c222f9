//! Releases: the git mirror, ref resolution, tree export, shared links, build and test
//! commands and the content digest of a built release.
//!
//! Refs never reach a shell: they are checked by [`check_ref`] and passed to git as single
//! arguments after `--end-of-options`.

mod git;
mod tree;

pub use git::{
    Commit, RefKind, Resolved, check_ref, commits_between, export, resolve, sync_mirror,
};
pub use tree::{check_tree, copy_release, digest, link_shared};

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;

/// How much of a command's output is kept for the record.
pub const OUTPUT_TAIL_BYTES: usize = 8 * 1024;
/// Limit for git operations (clone, fetch, archive).
/// How long a command's output is still read once the command itself has ended.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

const GIT_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("\"{0}\" is not a valid ref: {1}")]
    BadRef(String, &'static str),
    #[error(
        "ref \"{name}\" was not found in the repository (no such tag, branch or commit); {known}"
    )]
    UnknownRef {
        name: String,
        /// What the repository has instead: its branches and tags, or no commits at all.
        known: String,
    },
    #[error("git {action} failed: {output}")]
    Git { action: String, output: String },
    #[error(
        "shared path \"{0}\" does not exist in {1}: create it there (ferry never makes empty shared files)"
    )]
    MissingShared(String, PathBuf),
    #[error("`{command}` {outcome}")]
    Command {
        command: String,
        outcome: String,
        output: String,
    },
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// The tree would make ferry write, or the app reach, outside the release.
    #[error("{0}")]
    Unsafe(String),
}

impl ReleaseError {
    /// What the failing command printed, if anything.
    pub fn output(&self) -> &str {
        match self {
            ReleaseError::Command { output, .. } | ReleaseError::Git { output, .. } => output,
            _ => "",
        }
    }
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ReleaseError {
    let context = context.into();
    move |e| ReleaseError::Io(context, e)
}

/// Runs `command` through `sh -c` in `dir`, in its own process group, killed at `timeout`,
/// confined as `confinement` says, with exactly the environment `vars`. Returns the tail of
/// its combined output.
pub async fn run_command(
    dir: &Path,
    command: &str,
    vars: &[(String, String)],
    confinement: &crate::sandbox::Confinement,
    timeout: Duration,
    started: impl FnOnce(u32),
) -> Result<String, ReleaseError> {
    let mut child = confinement
        .command(&format!("exec 2>&1; {command}"), vars)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(io(format!("starting `{command}`")))?;
    let pid = child.id();
    if let Some(pid) = pid {
        started(pid);
    }
    let mut stdout = child.stdout.take().expect("stdout is piped");
    // shared, so what came before a background process kept the pipe open is not lost
    let tail = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let reading = tail.clone();
    let reader = tokio::spawn(async move {
        let mut buf = [0u8; 8192];
        while let Ok(n) = stdout.read(&mut buf).await {
            if n == 0 {
                break;
            }
            let mut tail = reading.lock().unwrap_or_else(|e| e.into_inner());
            tail.extend_from_slice(&buf[..n]);
            if tail.len() > 2 * OUTPUT_TAIL_BYTES {
                let cut = tail.len() - OUTPUT_TAIL_BYTES;
                tail.drain(..cut);
            }
        }
    });
    let waited = tokio::time::timeout(timeout, child.wait()).await;
    if let Some(pid) = pid {
        // the command is done (or out of time): nothing in its group may outlive it
        crate::runtime::kill_group(pid, nix::sys::signal::Signal::SIGKILL);
    }
    let status = match waited {
        Ok(status) => Some(status.map_err(io(format!("waiting for `{command}`")))?),
        Err(_) => None,
    };
    // a process that left the group (`setsid`, a build tool's daemon) may hold the output
    // open for as long as it runs: the step does not wait for it
    let held_open = tokio::time::timeout(OUTPUT_GRACE, reader).await.is_err();
    let mut output = tail_text(&tail.lock().unwrap_or_else(|e| e.into_inner()));
    if held_open {
        output.push_str(&format!(
            "[ferry: a background process that left the command's process group still holds its output open; stopped reading {} after the command ended]\n",
            crate::config::format_duration(OUTPUT_GRACE)
        ));
    }
    match status {
        Some(s) if s.success() => Ok(output),
        Some(s) => Err(ReleaseError::Command {
            command: command.to_string(),
            outcome: match s.code() {
                Some(code) => format!("exited with status {code}"),
                None => "was killed by a signal".to_string(),
            },
            output,
        }),
        None => Err(ReleaseError::Command {
            command: command.to_string(),
            outcome: format!(
                "timed out after {}",
                crate::config::format_duration(timeout)
            ),
            output,
        }),
    }
}

/// The last [`OUTPUT_TAIL_BYTES`] of `bytes` as text, starting at a line boundary.
pub fn tail_text(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(OUTPUT_TAIL_BYTES);
    let mut slice = &bytes[start..];
    if start > 0
        && let Some(nl) = slice.iter().position(|&b| b == b'\n')
    {
        slice = &slice[nl + 1..];
    }
    String::from_utf8_lossy(slice).into_owned()
}

#[cfg(test)]
mod tests;

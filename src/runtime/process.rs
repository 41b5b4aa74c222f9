//! The process runtime: an instance is `start` run through `sh -c` in its release dir, in its
//! own process group, confined to the environment's user and dirs. Stopping sends SIGTERM to
//! the group, waits the grace period, then SIGKILLs the group. After a crash of ferry, an
//! instance is adopted by its pid and process start time (a reused pid is never adopted).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::sync::watch;

use super::output::{LineTap, make_pipe, open_pipe, pump};
use super::{Handle, Instance, InstanceSpec, LogSink, RuntimeError};

/// A process instance: the leader of its process group, and the named pipe of its output.
#[derive(Debug, Clone)]
pub(super) struct Process {
    pub pid: u32,
    pub output: PathBuf,
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

/// Starts a process instance; its output goes to `log`.
pub(super) fn spawn(spec: &InstanceSpec, log: &LogSink) -> Result<Instance, RuntimeError> {
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
        port: spec.port,
        handle: Handle::Process(Process {
            pid,
            output: spec.output.clone(),
        }),
        exit,
        lines,
    })
}

/// Takes over an instance a previous ferry started: `pid` must still be the process that
/// started at `proc_start` (clock ticks since boot), so a reused pid is never adopted. Its
/// output pipe at `output` is reopened; what it wrote while nobody read goes to `log` now.
pub(super) fn adopt(
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
        port,
        handle: Handle::Process(Process {
            pid,
            output: output.to_path_buf(),
        }),
        exit,
        lines,
    })
}

impl Process {
    /// SIGTERM to the group, SIGKILL after `grace` to whatever of the group is left; returns
    /// once the process is gone. The grace period covers the whole group: a shell leading it
    /// may die at once while the app under it is still finishing its requests.
    pub(super) async fn stop(&self, instance: &Instance, grace: Duration) {
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
        instance.wait_exit().await;
        let _ = std::fs::remove_file(&self.output);
    }

    /// Reads the output pipe again after a detach.
    pub(super) fn reattach(&self, lines: &Arc<LineTap>) {
        match open_pipe(&self.output) {
            Ok(reader) => {
                lines.detach.send_replace(false);
                lines.ended.send_replace(false);
                tokio::spawn(pump(reader, lines.log.clone(), lines.clone()));
            }
            Err(e) => {
                tracing::warn!(pid = self.pid, pipe = %self.output.display(), error = %e, "cannot reopen an instance's output; it is not logged")
            }
        }
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

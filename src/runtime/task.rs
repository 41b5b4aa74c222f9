//! One-off tasks: a command of a release run once, to its end, exactly as an instance of the
//! release would run (the same user, confinement, variables, secrets and, with a container
//! runtime, the same image, mounts and secrets file). The release command (migrations) runs
//! this way.
//!
//! The task is started through the backend's own start (`sh -c` in the release dir; a
//! container of the release's image; a one-off of the routed compose service, its accessories
//! started first), its output goes to the environment's app log like an instance's, and its
//! last lines (secrets masked) come back with its exit status. A task out of time is stopped
//! like an instance (SIGTERM, `stop_timeout`, SIGKILL); whatever is left of it goes once it
//! ends.

use std::process::ExitStatus;
use std::time::Duration;

use super::{Instance, InstanceSpec, LogSink, Runtime, RuntimeError};

/// How a task ended.
#[derive(Debug)]
pub struct TaskOutput {
    /// Its exit status; `None` when it ran out of time and was stopped.
    pub status: Option<ExitStatus>,
    /// Its last output lines (at most [`super::LAST_LINES`]), secrets masked.
    pub lines: Vec<String>,
}

impl TaskOutput {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// What happened, for messages: `exited with status 3`, `timed out after 5m`.
    pub fn outcome(&self, timeout: Duration) -> String {
        use std::os::unix::process::ExitStatusExt;
        match self.status {
            None => format!(
                "timed out after {}",
                crate::config::format_duration(timeout)
            ),
            Some(s) => match (s.code(), s.signal()) {
                (Some(code), _) => format!("exited with status {code}"),
                (None, Some(signal)) => format!("was killed by signal {signal}"),
                (None, None) => "ended".to_string(),
            },
        }
    }
}

impl Runtime {
    /// Runs `command` once as an instance of `spec` would run (its `start` replaced), waits
    /// up to `timeout` for it to end and cleans up after it. `started` is told of the running
    /// task first (to record its pid, so a ferry that dies meanwhile leaves nothing behind).
    pub async fn run_task(
        &self,
        spec: &InstanceSpec,
        command: &str,
        timeout: Duration,
        log: &LogSink,
        started: impl FnOnce(&Instance),
    ) -> Result<TaskOutput, RuntimeError> {
        let mut spec = spec.clone();
        spec.start = command.to_string();
        let task = self.start(&spec, log).await?;
        started(&task);
        let status = match tokio::time::timeout(timeout, task.wait_exit()).await {
            Ok(status) => Some(status.unwrap_or_else(|| {
                use std::os::unix::process::ExitStatusExt;
                ExitStatus::from_raw(137 << 8)
            })),
            Err(_) => None,
        };
        if status.is_none() {
            task.stop(spec.stop_timeout).await;
        }
        let lines = task.last_lines().await;
        // what it left running in its group goes, with its pipe or container and files
        task.stop(Duration::ZERO).await;
        Ok(TaskOutput { status, lines })
    }
}

/// `spec`'s secrets as variables, for a command on the host that is given them (hooks with
/// `[hooks] secrets = true`).
pub fn secret_vars(spec: &InstanceSpec) -> Vec<(String, String)> {
    spec.secrets
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

//! The state file of an environment on a host (`D/state/<app>/<env>.json`): what the
//! daemon runs and serves, written atomically at every change, never with a secret in it, so
//! that the next daemon adopts it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::protocol::InstanceId;

/// An instance as the state file records it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Recorded {
    pub(super) id: InstanceId,
    pub(super) release: String,
    pub(super) port: u16,
    pub(super) pid: u32,
    pub(super) proc_start: Option<i64>,
    pub(super) output: PathBuf,
    pub(super) started_at: String,
    pub(super) stop_timeout_ms: u64,
    /// The names of its secret variables (never their values): a daemon adopting it reads
    /// the values back from the process's own environment, to mask them in its output.
    #[serde(default)]
    pub(super) secret_names: Vec<String>,
}

/// `D/state/<app>/<env>.json`: never a secret in it.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct StateFile {
    /// The boot the pids belong to: after a reboot none of them is ours.
    #[serde(default)]
    pub(super) boot_id: String,
    pub(super) listen: Option<String>,
    pub(super) serving: Option<InstanceId>,
    pub(super) next_id: InstanceId,
    pub(super) instances: Vec<Recorded>,
}

/// This boot of the host.
pub(super) fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|b| b.trim().to_string())
        .unwrap_or_default()
}

/// The values of the variables `names` in the environment `pid` started with.
pub(super) fn secret_values(pid: u32, names: &[String]) -> Vec<String> {
    if names.is_empty() {
        return Vec::new();
    }
    let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return Vec::new();
    };
    environ
        .split(|&b| b == 0)
        .filter_map(|pair| {
            let text = String::from_utf8_lossy(pair);
            let (name, value) = text.split_once('=')?;
            names.iter().any(|n| n == name).then(|| value.to_string())
        })
        .collect()
}

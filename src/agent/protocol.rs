//! The agent's protocol: JSON lines between ferry and the agent daemon on a host, through
//! the relay (`ferry agent --dir D`) that ssh runs.
//!
//! A request is `{"id": n, "op": "…", …}`; its answer `{"id": n, "ok": {…}}` or
//! `{"id": n, "error": {"kind": "…", "message": "…"}}`. Answers carry their request's id
//! and may come in another order than the requests (a long `health` does not hold up a
//! `status`). The first request is `hello` with [`PROTOCOL`]; a daemon of another
//! protocol answers kind `version`.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The protocol's version: a daemon speaking another answers `hello` with kind `version`.
pub const PROTOCOL: u32 = 1;

/// An instance's id on its host, unique per app and environment there.
pub type InstanceId = u64;

/// One request: its id (echoed in the answer) and what it asks.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    pub id: u64,
    #[serde(flatten)]
    pub op: Op,
}

/// What a request asks, tagged by `op`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    Hello {
        protocol: u32,
        version: String,
    },
    Status {
        app: String,
        env: String,
    },
    HasRelease {
        app: String,
        release: String,
        digest: String,
        /// The release's files: the answer says which contents the host has in no release.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        manifest: Option<Vec<ManifestEntry>>,
    },
    Start(StartRequest),
    Health(HealthRequest),
    Probe {
        app: String,
        env: String,
        instance: InstanceId,
        path: String,
        timeout_ms: u64,
    },
    Switch {
        app: String,
        env: String,
        instance: InstanceId,
        /// Where the environment's proxy listens on the host (`0.0.0.0:8080`).
        listen: String,
    },
    Stop {
        app: String,
        env: String,
        instance: InstanceId,
        drain_timeout_ms: u64,
        /// When the instance serves: the proxy first serves nothing (it answers 503), then
        /// the instance stops (a failed first deploy undone). Else a serving one is refused.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        unserve: bool,
    },
    Task(TaskRequest),
    Logs {
        app: String,
        env: String,
        lines: usize,
    },
    Prune {
        app: String,
        /// Release names kept (besides any an instance runs).
        keep: Vec<String>,
    },
    /// The daemon answers, then exits, leaving its instances running for the next one.
    Retire,
}

impl Op {
    /// Its name, for messages: `start`, `health`.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Hello { .. } => "hello",
            Op::Status { .. } => "status",
            Op::HasRelease { .. } => "has_release",
            Op::Start(_) => "start",
            Op::Health(_) => "health",
            Op::Probe { .. } => "probe",
            Op::Switch { .. } => "switch",
            Op::Stop { .. } => "stop",
            Op::Task(_) => "task",
            Op::Logs { .. } => "logs",
            Op::Prune { .. } => "prune",
            Op::Retire => "retire",
        }
    }
}

/// Secret variables (`NAME` → value). `Debug` shows the names only; they are never
/// written to disk, a log or a command line by the agent.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct SecretVars(pub BTreeMap<String, String>);

impl fmt::Debug for SecretVars {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// Starts an instance of a release present on the host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StartRequest {
    pub app: String,
    pub env: String,
    pub release: String,
    /// The start command (`sh -c` in the release dir).
    pub start: String,
    /// ferry's variables and the environment's `env`, in order; the agent adds its
    /// allowlist (PATH, HOME, locale) before them and `PORT` after.
    pub vars: Vec<(String, String)>,
    #[serde(default)]
    pub secrets: SecretVars,
    pub stop_timeout_ms: u64,
}

/// A one-off run of a command of a release (the release command), as an instance would run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskRequest {
    pub app: String,
    pub env: String,
    pub release: String,
    pub command: String,
    pub vars: Vec<(String, String)>,
    #[serde(default)]
    pub secrets: SecretVars,
    pub stop_timeout_ms: u64,
    pub timeout_ms: u64,
}

/// Waits until an instance answers its health paths.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HealthRequest {
    pub app: String,
    pub env: String,
    pub instance: InstanceId,
    pub paths: Vec<String>,
    pub expect_status: u16,
    pub startup_delay_ms: u64,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub retries: u32,
}

impl HealthRequest {
    /// The request for `instance` under the app's `[health]`.
    pub fn new(app: &str, env: &str, instance: InstanceId, health: &crate::config::Health) -> Self {
        HealthRequest {
            app: app.to_string(),
            env: env.to_string(),
            instance,
            paths: health.paths.clone(),
            expect_status: health.expect_status,
            startup_delay_ms: ms(health.startup_delay),
            interval_ms: ms(health.interval),
            timeout_ms: ms(health.timeout),
            retries: health.retries,
        }
    }

    /// The `[health]` it stands for.
    pub fn health(&self) -> crate::config::Health {
        use std::time::Duration;
        crate::config::Health {
            paths: self.paths.clone(),
            expect_status: self.expect_status,
            startup_delay: Duration::from_millis(self.startup_delay_ms),
            interval: Duration::from_millis(self.interval_ms),
            timeout: Duration::from_millis(self.timeout_ms),
            retries: self.retries.max(1),
            watch_interval: Duration::ZERO,
        }
    }
}

/// A duration in whole milliseconds, as the protocol carries them.
pub fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// One file of a release, for shipping only what a host lacks.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ManifestEntry {
    /// Relative to the release dir.
    pub path: String,
    pub mode: u32,
    pub size: u64,
    /// Hex SHA-256 of its content.
    pub sha256: String,
}

/// An answer line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Answer {
    pub id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ok: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RemoteError>,
}

/// What went wrong on the host.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RemoteError {
    pub kind: ErrorKind,
    pub message: String,
    /// The instance's last output lines (secrets masked), for `unhealthy`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lines: Vec<String>,
}

impl RemoteError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> RemoteError {
        RemoteError {
            kind,
            message: message.into(),
            lines: Vec::new(),
        }
    }
}

/// The kinds of error an agent answers.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Another protocol version.
    Version,
    /// No such instance, release or environment on the host.
    NotFound,
    /// The instance failed its health checks (its last lines come with it).
    Unhealthy,
    /// A received release is not the bytes it should be.
    Digest,
    /// No space left on the host's disk.
    DiskFull,
    /// A request that cannot be carried out as asked.
    BadRequest,
    /// Anything else that failed on the host.
    Internal,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::Version => "version",
            ErrorKind::NotFound => "not found",
            ErrorKind::Unhealthy => "unhealthy",
            ErrorKind::Digest => "digest",
            ErrorKind::DiskFull => "disk full",
            ErrorKind::BadRequest => "bad request",
            ErrorKind::Internal => "internal",
        })
    }
}

/// `hello`'s answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HelloAnswer {
    pub protocol: u32,
    /// The daemon's ferry build ([`version`]).
    pub version: String,
    /// The host's name.
    pub host: String,
    /// Its machine (`x86_64`).
    pub arch: String,
    /// Free bytes on the agent dir's filesystem.
    pub free_bytes: u64,
}

/// One instance the agent runs for an environment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InstanceInfo {
    pub id: InstanceId,
    pub release: String,
    pub port: u16,
    pub pid: u32,
    pub alive: bool,
    /// RFC 3339.
    pub started_at: String,
}

/// A release present on the host.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReleaseInfo {
    pub name: String,
    pub digest: String,
}

/// `status`'s answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatusAnswer {
    /// The instance the proxy sends traffic to.
    pub serving: Option<InstanceInfo>,
    /// Every instance of the environment, the serving one included.
    pub instances: Vec<InstanceInfo>,
    /// The app's releases on the host.
    pub releases: Vec<ReleaseInfo>,
    /// Where the environment's proxy listens, once switched to.
    pub listen: Option<String>,
}

/// `has_release`'s answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HasReleaseAnswer {
    pub present: bool,
    /// With a manifest: the contents (hex SHA-256) the host has in no release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lacking: Option<Vec<String>>,
}

/// `start`'s answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StartAnswer {
    pub instance: InstanceId,
    pub port: u16,
    pub pid: u32,
}

/// `health`'s answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HealthAnswer {
    /// As the local health step prints it.
    pub log: String,
}

/// `probe`'s answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProbeAnswer {
    pub ok: bool,
    pub status: Option<u16>,
    pub ms: u64,
    pub error: Option<String>,
}

/// `switch`'s answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SwitchAnswer {
    /// The instance that served before.
    pub previous: Option<InstanceId>,
}

/// `stop`'s answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StopAnswer {
    /// The drain report, as the local finish step words it.
    pub report: String,
}

/// `task`'s answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TaskAnswer {
    /// Its exit code; `None` when it was killed by a signal or ran out of time.
    pub status: Option<i32>,
    pub success: bool,
    /// What happened: `exited with status 3`, `timed out after 5m`.
    pub outcome: String,
    /// Its last output lines, secrets masked.
    pub output: Vec<String>,
}

/// `logs`' answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LogsAnswer {
    pub lines: Vec<String>,
}

/// `prune`'s answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PruneAnswer {
    pub removed: Vec<String>,
}

/// `retire`'s answer (and any answer with nothing to say).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Done {}

/// What `receive` prints on success.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Received {
    /// Files that came in the archive.
    pub files: u64,
    /// Bytes of their contents.
    pub bytes: u64,
    /// Files taken from releases already on the host.
    #[serde(default)]
    pub reused: u64,
}

/// This build of ferry: its package version and the identity of its binary, so two
/// builds of one version are told apart (a daemon of another build retires).
pub fn version() -> String {
    static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    VERSION
        .get_or_init(|| {
            use sha2::Digest;
            let build = std::env::current_exe()
                .ok()
                .and_then(|exe| std::fs::metadata(&exe).ok().map(|m| (exe, m)))
                .map(|(exe, m)| {
                    use std::os::unix::fs::MetadataExt;
                    let id = format!("{}:{}:{}:{}", exe.display(), m.len(), m.mtime(), m.ino());
                    hex::encode(&sha2::Sha256::digest(id.as_bytes())[..6])
                })
                .unwrap_or_else(|| "unknown".into());
            format!("{}+{build}", env!("CARGO_PKG_VERSION"))
        })
        .clone()
}

/// True when `name` may name an app, environment or release on a host: one plain path
/// component (no `/`, no control character), not starting with a dot (the agent's own
/// entries, such as `.incoming-…`, do).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && !name.chars().any(|c| c == '/' || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_tagged_by_op_and_carry_their_id() {
        let req = Request {
            id: 7,
            op: Op::Status {
                app: "shop".into(),
                env: "production".into(),
            },
        };
        let line = serde_json::to_string(&req).unwrap();
        assert_eq!(
            line,
            r#"{"id":7,"op":"status","app":"shop","env":"production"}"#
        );
        let back: Request = serde_json::from_str(&line).unwrap();
        assert_eq!(back.id, 7);
        assert!(matches!(back.op, Op::Status { .. }));
        let retire: Request = serde_json::from_str(r#"{"id":1,"op":"retire"}"#).unwrap();
        assert!(matches!(retire.op, Op::Retire));
    }

    #[test]
    fn secrets_are_sent_but_never_shown_by_debug() {
        let mut secrets = SecretVars::default();
        secrets
            .0
            .insert("API_KEY".into(), "hunter2-very-secret".into());
        let req = Request {
            id: 1,
            op: Op::Start(StartRequest {
                app: "a".into(),
                env: "e".into(),
                release: "r".into(),
                start: "run".into(),
                vars: vec![("APP_VERSION".into(), "1.0".into())],
                secrets,
                stop_timeout_ms: 1000,
            }),
        };
        let shown = format!("{req:?}");
        assert!(shown.contains("API_KEY"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        let line = serde_json::to_string(&req).unwrap();
        let back: Request = serde_json::from_str(&line).unwrap();
        let Op::Start(start) = back.op else {
            panic!("not a start")
        };
        assert_eq!(start.secrets.0["API_KEY"], "hunter2-very-secret");
    }

    #[test]
    fn errors_have_a_kind_in_snake_case() {
        let answer = Answer {
            id: 3,
            ok: None,
            error: Some(RemoteError::new(ErrorKind::DiskFull, "full")),
        };
        assert_eq!(
            serde_json::to_string(&answer).unwrap(),
            r#"{"id":3,"error":{"kind":"disk_full","message":"full"}}"#
        );
    }

    #[test]
    fn names_on_a_host_are_one_plain_component() {
        for good in ["shop", "v1.2.0-abc1234", "production", "feature@x-abc1234"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in ["", ".", "..", ".incoming-x", "a/b", "../x", "a\nb"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}

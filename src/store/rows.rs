//! One row type per table, as the API shows them.

use rusqlite::Row;
use serde::{Deserialize, Serialize};

/// Where a deployment is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Refused,
    Interrupted,
}

impl DeploymentState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentState::Queued => "queued",
            DeploymentState::Running => "running",
            DeploymentState::Succeeded => "succeeded",
            DeploymentState::Failed => "failed",
            DeploymentState::Refused => "refused",
            DeploymentState::Interrupted => "interrupted",
        }
    }

    pub fn parse(s: &str) -> Option<DeploymentState> {
        Some(match s {
            "queued" => DeploymentState::Queued,
            "running" => DeploymentState::Running,
            "succeeded" => DeploymentState::Succeeded,
            "failed" => DeploymentState::Failed,
            "refused" => DeploymentState::Refused,
            "interrupted" => DeploymentState::Interrupted,
            _ => return None,
        })
    }

    /// True once nothing more will happen to the deployment.
    pub fn is_final(self) -> bool {
        !matches!(self, DeploymentState::Queued | DeploymentState::Running)
    }
}

/// How a step ended (or that it is still running).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    Running,
    Ok,
    Failed,
    Skipped,
}

impl StepState {
    pub fn as_str(self) -> &'static str {
        match self {
            StepState::Running => "running",
            StepState::Ok => "ok",
            StepState::Failed => "failed",
            StepState::Skipped => "skipped",
        }
    }

    fn parse(s: &str) -> StepState {
        match s {
            "ok" => StepState::Ok,
            "failed" => StepState::Failed,
            "skipped" => StepState::Skipped,
            _ => StepState::Running,
        }
    }
}

fn bad_state(i: usize, s: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        i,
        rusqlite::types::Type::Text,
        format!("unknown state {s}").into(),
    )
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deployment {
    pub id: i64,
    pub environment: String,
    pub kind: String,
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub commit_sha: Option<String>,
    pub version: Option<String>,
    pub release: Option<String>,
    pub digest: Option<String>,
    pub state: DeploymentState,
    pub step: Option<String>,
    pub reason: Option<String>,
    pub triggered_by: String,
    pub created_at: String,
    pub finished_at: Option<String>,
}

impl Deployment {
    pub(super) const COLUMNS: &'static str = "id, environment, kind, git_ref, commit_sha, version, \
        release, digest, state, step, reason, triggered_by, created_at, finished_at";

    pub(super) fn from_row(r: &Row<'_>) -> rusqlite::Result<Deployment> {
        let state: String = r.get(8)?;
        Ok(Deployment {
            id: r.get(0)?,
            environment: r.get(1)?,
            kind: r.get(2)?,
            git_ref: r.get(3)?,
            commit_sha: r.get(4)?,
            version: r.get(5)?,
            release: r.get(6)?,
            digest: r.get(7)?,
            state: DeploymentState::parse(&state).ok_or_else(|| bad_state(8, &state))?,
            step: r.get(9)?,
            reason: r.get(10)?,
            triggered_by: r.get(11)?,
            created_at: r.get(12)?,
            finished_at: r.get(13)?,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    pub name: String,
    pub state: StepState,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub output: String,
}

impl Step {
    pub(super) fn from_row(r: &Row<'_>) -> rusqlite::Result<Step> {
        let state: String = r.get(1)?;
        Ok(Step {
            name: r.get(0)?,
            state: StepState::parse(&state),
            started_at: r.get(2)?,
            finished_at: r.get(3)?,
            output: r.get(4)?,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Release {
    pub id: i64,
    pub environment: String,
    pub name: String,
    pub version: String,
    pub commit_sha: String,
    pub digest: Option<String>,
    pub status: String,
    pub created_at: String,
}

impl Release {
    pub(super) const COLUMNS: &'static str =
        "id, environment, name, version, commit_sha, digest, status, created_at";

    pub(super) fn from_row(r: &Row<'_>) -> rusqlite::Result<Release> {
        Ok(Release {
            id: r.get(0)?,
            environment: r.get(1)?,
            name: r.get(2)?,
            version: r.get(3)?,
            commit_sha: r.get(4)?,
            digest: r.get(5)?,
            status: r.get(6)?,
            created_at: r.get(7)?,
        })
    }
}

/// Who holds an environment's deploy lock.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockHolder {
    pub deployment_id: Option<i64>,
    pub holder: String,
    pub since: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Instance {
    pub id: i64,
    pub environment: String,
    pub deployment_id: Option<i64>,
    pub release: String,
    pub pid: u32,
    pub port: u16,
    pub proc_start: Option<i64>,
    pub started_at: String,
}

impl Instance {
    pub(super) const COLUMNS: &'static str =
        "id, environment, deployment_id, release, pid, port, proc_start, started_at";

    pub(super) fn from_row(r: &Row<'_>) -> rusqlite::Result<Instance> {
        Ok(Instance {
            id: r.get(0)?,
            environment: r.get(1)?,
            deployment_id: r.get(2)?,
            release: r.get(3)?,
            pid: r.get(4)?,
            port: r.get(5)?,
            proc_start: r.get(6)?,
            started_at: r.get(7)?,
        })
    }
}

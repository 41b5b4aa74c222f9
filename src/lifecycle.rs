//! The life of a deployment and of its steps: the states the store records and events
//! announce. A module of its own so that events, which the store publishes on, do not
//! depend on the store.

use serde::{Deserialize, Serialize};

/// Where a deployment is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentState {
    Queued,
    AwaitingApproval,
    Running,
    Monitoring,
    Succeeded,
    Failed,
    Refused,
    RolledBack,
    Interrupted,
    /// Queued behind a running deployment and replaced by a newer push before it ran.
    Superseded,
}

impl DeploymentState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentState::Queued => "queued",
            DeploymentState::AwaitingApproval => "awaiting_approval",
            DeploymentState::Running => "running",
            DeploymentState::Monitoring => "monitoring",
            DeploymentState::Succeeded => "succeeded",
            DeploymentState::Failed => "failed",
            DeploymentState::Refused => "refused",
            DeploymentState::RolledBack => "rolled_back",
            DeploymentState::Interrupted => "interrupted",
            DeploymentState::Superseded => "superseded",
        }
    }

    pub fn parse(s: &str) -> Option<DeploymentState> {
        Some(match s {
            "queued" => DeploymentState::Queued,
            "awaiting_approval" => DeploymentState::AwaitingApproval,
            "running" => DeploymentState::Running,
            "monitoring" => DeploymentState::Monitoring,
            "succeeded" => DeploymentState::Succeeded,
            "failed" => DeploymentState::Failed,
            "refused" => DeploymentState::Refused,
            "rolled_back" => DeploymentState::RolledBack,
            "interrupted" => DeploymentState::Interrupted,
            "superseded" => DeploymentState::Superseded,
            _ => return None,
        })
    }

    /// True once nothing more will happen to the deployment.
    pub fn is_final(self) -> bool {
        !matches!(
            self,
            DeploymentState::Queued
                | DeploymentState::AwaitingApproval
                | DeploymentState::Running
                | DeploymentState::Monitoring
        )
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

    /// Reads a step state as the store wrote it; anything else reads as running.
    pub(crate) fn parse(s: &str) -> StepState {
        match s {
            "ok" => StepState::Ok,
            "failed" => StepState::Failed,
            "skipped" => StepState::Skipped,
            _ => StepState::Running,
        }
    }
}

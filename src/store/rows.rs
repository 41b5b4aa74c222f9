//! One row type per table, as the API shows them.

use rusqlite::Row;
use serde::{Deserialize, Serialize};

use crate::lifecycle::{DeploymentState, StepState};

pub(super) fn bad_state(i: usize, s: &str) -> rusqlite::Error {
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
    /// What the person asking said: the reason of a forced deploy or of a rollback.
    pub note: Option<String>,
    /// Freeze windows were overridden.
    pub forced: bool,
    /// A rollback that also restores data.
    pub restore_data: bool,
    pub approved_by: Option<String>,
    pub approved_at: Option<String>,
    /// The token that started it (`triggered_by` is the name it claimed); none for webhooks.
    pub triggered_token: Option<String>,
    /// The token that approved it (`approved_by` is the name it claimed).
    pub approved_token: Option<String>,
}

impl Deployment {
    pub(super) const COLUMNS: &'static str = "id, environment, kind, git_ref, commit_sha, version, \
        release, digest, state, step, reason, triggered_by, created_at, finished_at, note, forced, \
        restore_data, approved_by, approved_at, triggered_token, approved_token";

    /// Who started it, as people read it: `qa-lead (token ci)`, or the name alone.
    pub fn by(&self) -> String {
        shown(&self.triggered_by, self.triggered_token.as_deref())
    }

    /// Who approved it, as people read it.
    pub fn approved(&self) -> Option<String> {
        let by = self.approved_by.as_deref()?;
        Some(shown(by, self.approved_token.as_deref()))
    }

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
            note: r.get(14)?,
            forced: r.get(15)?,
            restore_data: r.get(16)?,
            approved_by: r.get(17)?,
            approved_at: r.get(18)?,
            triggered_token: r.get(19)?,
            approved_token: r.get(20)?,
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
    /// The new instance's last output lines (redacted) where this step failed it (`health`)
    /// or rolled it back (`monitor`): the app's own words about what went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_output: Option<String>,
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
            app_output: r.get(5)?,
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
    /// `deploy`, `restore` (ferry bringing a release back) or `manual` (`ferry lock`).
    pub kind: String,
    pub holder: String,
    pub since: String,
    /// Why a manual lock was taken.
    pub reason: Option<String>,
}

impl LockHolder {
    /// Why a deployment cannot take the lock now.
    pub fn refusal(&self, environment: &str) -> String {
        match (self.kind.as_str(), &self.reason) {
            ("manual", reason) => format!(
                "environment {environment} is locked by {} since {}{} (unlock it with `ferry unlock {environment}`)",
                self.holder,
                self.since,
                reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ),
            _ => format!(
                "environment {environment} is being deployed by {} since {}",
                self.holder, self.since
            ),
        }
    }
}

/// A QA sign-off.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verification {
    pub id: i64,
    pub environment: String,
    pub version: String,
    pub commit_sha: String,
    pub release: String,
    pub digest: String,
    pub deployment_id: Option<i64>,
    pub verified_by: String,
    pub verified_at: String,
    /// The token that signed off (`verified_by` is the name it claimed).
    pub verified_token: Option<String>,
}

impl Verification {
    pub(super) const COLUMNS: &'static str = "id, environment, version, commit_sha, release, digest, \
        deployment_id, verified_by, verified_at, verified_token";

    /// Who signed off, as people read it: `qa-lead (token ci)`, or the name alone.
    pub fn by(&self) -> String {
        shown(&self.verified_by, self.verified_token.as_deref())
    }

    pub(super) fn from_row(r: &Row<'_>) -> rusqlite::Result<Verification> {
        Ok(Verification {
            id: r.get(0)?,
            environment: r.get(1)?,
            version: r.get(2)?,
            commit_sha: r.get(3)?,
            release: r.get(4)?,
            digest: r.get(5)?,
            deployment_id: r.get(6)?,
            verified_by: r.get(7)?,
            verified_at: r.get(8)?,
            verified_token: r.get(9)?,
        })
    }
}

/// A commit check reported by CI.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Check {
    pub commit_sha: String,
    pub name: String,
    /// `success`, `failure`, `error` or `pending`.
    pub status: String,
    pub url: Option<String>,
    pub reported_by: String,
    pub reported_at: String,
}

impl Check {
    pub(super) const COLUMNS: &'static str =
        "commit_sha, name, status, url, reported_by, reported_at";

    pub(super) fn from_row(r: &Row<'_>) -> rusqlite::Result<Check> {
        Ok(Check {
            commit_sha: r.get(0)?,
            name: r.get(1)?,
            status: r.get(2)?,
            url: r.get(3)?,
            reported_by: r.get(4)?,
            reported_at: r.get(5)?,
        })
    }
}

/// A data snapshot taken before a deploy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Backup {
    pub id: i64,
    pub environment: String,
    pub deployment_id: i64,
    pub release: String,
    pub file: String,
    pub path: String,
    pub method: String,
    pub bytes: i64,
    pub created_at: String,
    pub pruned_at: Option<String>,
}

impl Backup {
    pub(super) const COLUMNS: &'static str =
        "id, environment, deployment_id, release, file, path, method, bytes, created_at, pruned_at";

    pub(super) fn from_row(r: &Row<'_>) -> rusqlite::Result<Backup> {
        Ok(Backup {
            id: r.get(0)?,
            environment: r.get(1)?,
            deployment_id: r.get(2)?,
            release: r.get(3)?,
            file: r.get(4)?,
            path: r.get(5)?,
            method: r.get(6)?,
            bytes: r.get(7)?,
            created_at: r.get(8)?,
            pruned_at: r.get(9)?,
        })
    }
}

/// An environment in maintenance mode.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Maintenance {
    pub environment: String,
    pub message: String,
    pub since: String,
    pub set_by: String,
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
    /// The container's id, for a container instance (its `pid` is 0).
    pub container: Option<String>,
    /// Its process type: `web` (routed) or another of `[processes]`.
    pub process: String,
    /// Which of the process type's instances it is (0-based).
    pub replica: u32,
}

impl Instance {
    pub(super) const COLUMNS: &'static str = "id, environment, deployment_id, release, pid, port, proc_start, started_at, container, process, replica";

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
            container: r.get(8)?,
            process: r.get(9)?,
            replica: r.get(10)?,
        })
    }
}

/// An API token as listed; the secret itself is never stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Token {
    pub id: i64,
    pub name: String,
    /// What it may do, sorted, without duplicates.
    pub scopes: Vec<Scope>,
    pub created_at: String,
    pub last_used_at: Option<String>,
    pub revoked_at: Option<String>,
}

impl Token {
    pub(super) const COLUMNS: &'static str =
        "id, name, scopes, created_at, last_used_at, revoked_at";

    pub(super) fn from_row(r: &Row<'_>) -> rusqlite::Result<Token> {
        let scopes: String = r.get(2)?;
        Ok(Token {
            id: r.get(0)?,
            name: r.get(1)?,
            // an unknown word (a newer ferry's scope) grants nothing here
            scopes: Scope::parse_list(&scopes).unwrap_or_default(),
            created_at: r.get(3)?,
            last_used_at: r.get(4)?,
            revoked_at: r.get(5)?,
        })
    }

    /// True when the token may do what `scope` covers: `admin` may do everything, every
    /// token may read, and otherwise the scope must be the token's own.
    pub fn allows(&self, scope: Scope) -> bool {
        scope == Scope::Read || self.scopes.contains(&Scope::Admin) || self.scopes.contains(&scope)
    }

    /// True when the token may only read.
    pub fn read_only(&self) -> bool {
        self.scopes.iter().all(|s| *s == Scope::Read)
    }

    /// The scopes as written: `deploy,verify`.
    pub fn scope_list(&self) -> String {
        Scope::join(&self.scopes)
    }
}

/// What a token may do. Scopes are a set, not levels: `verify` does not include `deploy`,
/// so one token cannot both ship a change and sign it off. Every token may read; `admin`
/// may do everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Every read: status, history, logs, metrics, the event stream.
    Read,
    /// Deploy, promote, roll back, lock and unlock, maintenance, report CI checks.
    Deploy,
    /// Sign off the version running on an environment.
    Verify,
    /// Approve a deployment waiting for approval.
    Approve,
    /// Run commands in an environment's serving release, with its secrets (`ferry exec`).
    Exec,
    /// Everything.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 6] = [
        Scope::Read,
        Scope::Deploy,
        Scope::Verify,
        Scope::Approve,
        Scope::Exec,
        Scope::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Deploy => "deploy",
            Scope::Verify => "verify",
            Scope::Approve => "approve",
            Scope::Exec => "exec",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|x| x.as_str() == s.trim())
    }

    /// `deploy,verify` → the sorted set; `None` when a word is not a scope or none is given.
    pub fn parse_list(s: &str) -> Option<Vec<Scope>> {
        let mut out = s
            .split(',')
            .filter(|w| !w.trim().is_empty())
            .map(Scope::parse)
            .collect::<Option<Vec<_>>>()?;
        out.sort();
        out.dedup();
        (!out.is_empty()).then_some(out)
    }

    pub fn join(scopes: &[Scope]) -> String {
        scopes
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who did something: the name they gave (or their token's, when they gave none) and the
/// token they used. Only the token is proven; the name is what the caller claimed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actor {
    pub name: String,
    pub token: Option<String>,
}

impl Actor {
    /// Someone or something without a token: a webhook delivery, ferry itself, a test.
    pub fn named(name: &str) -> Actor {
        Actor {
            name: name.to_string(),
            token: None,
        }
    }

    /// As people read it: `qa-lead (token ci)`, or the name alone when it is the token's.
    pub fn shown(&self) -> String {
        shown(&self.name, self.token.as_deref())
    }
}

fn shown(name: &str, token: Option<&str>) -> String {
    match token {
        Some(t) if t != name => format!("{name} (token {t})"),
        _ => name.to_string(),
    }
}

/// An accepted webhook delivery.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Delivery {
    pub id: i64,
    pub provider: String,
    pub delivery_id: String,
    /// GitLab's `Idempotency-Key`, when the delivery had one.
    pub idempotency_key: Option<String>,
    pub event: String,
    #[serde(rename = "ref")]
    pub git_ref: Option<String>,
    pub commit_sha: Option<String>,
    pub received_at: String,
    pub outcome: String,
}

impl Delivery {
    pub(super) const COLUMNS: &'static str = "id, provider, delivery_id, event, git_ref, commit_sha, received_at, outcome, \
         idempotency_key";

    pub(super) fn from_row(r: &Row<'_>) -> rusqlite::Result<Delivery> {
        Ok(Delivery {
            id: r.get(0)?,
            provider: r.get(1)?,
            delivery_id: r.get(2)?,
            idempotency_key: r.get(8)?,
            event: r.get(3)?,
            git_ref: r.get(4)?,
            commit_sha: r.get(5)?,
            received_at: r.get(6)?,
            outcome: r.get(7)?,
        })
    }
}

/// One audited API mutation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditEntry {
    pub at: String,
    pub token: String,
    pub method: String,
    pub path: String,
    pub status: u16,
    /// `ferry exec`: the name the caller gave (beside the token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `ferry exec`: the environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// `ferry exec`: the command as run, known secrets masked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// `ferry exec`: its exit status, once it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_status: Option<i32>,
    /// `ferry exec`: when it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}

/// A `ferry exec` session as the audit trail records it when it starts.
#[derive(Debug, Clone)]
pub struct ExecAudit<'a> {
    pub token: &'a str,
    pub user: Option<&'a str>,
    pub path: &'a str,
    pub environment: &'a str,
    /// Already redacted.
    pub command: &'a str,
}

//! Deployments: the request, its state transitions (each announced once committed), what
//! its ref resolved to, and the history queries over them.

use rusqlite::{Connection, OptionalExtension, params};

use super::{Actor, Deployment, DeploymentState, Result, Store, StoreError, now, rows};
use crate::events::Event;

impl Store {
    /// Announces deployment `id` as it now stands.
    fn publish_deployment(&self, conn: &Connection, id: i64) -> Result<()> {
        let event = conn.query_row(
            "SELECT environment, kind, state, reason FROM deployments WHERE id = ?1",
            [id],
            |r| {
                let state: String = r.get(2)?;
                Ok(Event::Deployment {
                    deployment: id,
                    environment: r.get(0)?,
                    kind: r.get(1)?,
                    state: DeploymentState::parse(&state)
                        .ok_or_else(|| rows::bad_state(2, &state))?,
                    reason: r.get(3)?,
                    at: now(),
                })
            },
        )?;
        self.bus.publish(event);
        Ok(())
    }

    /// Records a new deployment request and returns its id.
    pub fn create_deployment(
        &self,
        environment: &str,
        kind: &str,
        git_ref: &str,
        triggered_by: &str,
        state: DeploymentState,
    ) -> Result<i64> {
        self.create_deployment_by(
            environment,
            kind,
            git_ref,
            &Actor::named(triggered_by),
            state,
        )
    }

    /// Records a new deployment request by `by` (its name and token) and returns its id.
    pub fn create_deployment_by(
        &self,
        environment: &str,
        kind: &str,
        git_ref: &str,
        by: &Actor,
        state: DeploymentState,
    ) -> Result<i64> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO deployments
                 (environment, kind, git_ref, state, triggered_by, triggered_token, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                environment,
                kind,
                git_ref,
                state.as_str(),
                by.name,
                by.token,
                now()
            ],
        )?;
        let id = conn.last_insert_rowid();
        self.publish_deployment(&conn, id)?;
        Ok(id)
    }

    /// Moves a deployment to `state`; final states also record the finish time and reason.
    pub fn set_state(&self, id: i64, state: DeploymentState, reason: Option<&str>) -> Result<()> {
        let finished = state.is_final().then(now);
        let conn = self.conn();
        let changed = conn.execute(
            "UPDATE deployments SET state = ?2, reason = COALESCE(?3, reason),
                 finished_at = COALESCE(?4, finished_at) WHERE id = ?1",
            params![id, state.as_str(), reason, finished],
        )?;
        if changed == 0 {
            return Err(StoreError::NotFound);
        }
        self.publish_deployment(&conn, id)
    }

    /// Records what the ref resolved to.
    pub fn set_resolved(&self, id: i64, commit: &str, version: &str, release: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE deployments SET commit_sha = ?2, version = ?3, release = ?4 WHERE id = ?1",
            params![id, commit, version, release],
        )?;
        Ok(())
    }

    pub fn set_digest(&self, id: i64, digest: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE deployments SET digest = ?2 WHERE id = ?1",
            params![id, digest],
        )?;
        Ok(())
    }

    /// Records what the person asking said and how: a reason, `--force`, `--restore-data`.
    pub fn set_request(
        &self,
        id: i64,
        note: Option<&str>,
        forced: bool,
        restore_data: bool,
    ) -> Result<()> {
        self.conn().execute(
            "UPDATE deployments SET note = ?2, forced = ?3, restore_data = ?4 WHERE id = ?1",
            params![id, note, forced, restore_data],
        )?;
        Ok(())
    }

    /// Records that rollback `id` runs the release command (`--run-release`).
    pub fn set_run_release(&self, id: i64) -> Result<()> {
        self.conn().execute(
            "UPDATE deployments SET run_release = 1 WHERE id = ?1",
            params![id],
        )?;
        Ok(())
    }

    /// True when rollback `id` was asked to run the release command.
    pub fn run_release(&self, id: i64) -> Result<bool> {
        Ok(self.conn().query_row(
            "SELECT run_release FROM deployments WHERE id = ?1",
            params![id],
            |r| r.get(0),
        )?)
    }

    /// Records the approval of a deployment waiting for one; false when it was not waiting.
    pub fn approve(&self, id: i64, by: &Actor) -> Result<bool> {
        Ok(self.conn().execute(
            "UPDATE deployments SET approved_by = ?2, approved_token = ?3, approved_at = ?4
             WHERE id = ?1 AND state = 'awaiting_approval' AND approved_by IS NULL",
            params![id, by.name, by.token, now()],
        )? == 1)
    }

    pub fn deployment(&self, id: i64) -> Result<Deployment> {
        self.conn()
            .query_row(
                &format!(
                    "SELECT {} FROM deployments WHERE id = ?1",
                    Deployment::COLUMNS
                ),
                [id],
                Deployment::from_row,
            )
            .optional()?
            .ok_or(StoreError::NotFound)
    }

    /// Deployments of one environment (or all), newest first.
    pub fn history(&self, environment: Option<&str>, limit: usize) -> Result<Vec<Deployment>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {} FROM deployments WHERE (?1 IS NULL OR environment = ?1)
             ORDER BY id DESC LIMIT ?2",
            Deployment::COLUMNS
        ))?;
        let rows = stmt.query_map(params![environment, limit as i64], Deployment::from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The newest succeeded deployment of `environment`.
    pub fn last_succeeded(&self, environment: &str) -> Result<Option<Deployment>> {
        Ok(self
            .conn()
            .query_row(
                &format!(
                    "SELECT {} FROM deployments WHERE environment = ?1 AND state = 'succeeded'
                     ORDER BY id DESC LIMIT 1",
                    Deployment::COLUMNS
                ),
                [environment],
                Deployment::from_row,
            )
            .optional()?)
    }

    /// Deployments that were queued or running: ferry stopped before they ended.
    pub fn unfinished(&self) -> Result<Vec<Deployment>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {} FROM deployments
             WHERE state IN ('queued', 'awaiting_approval', 'running', 'monitoring') ORDER BY id",
            Deployment::COLUMNS
        ))?;
        let rows = stmt.query_map([], Deployment::from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Succeeded deployments of `environment`, newest first.
    pub fn succeeded(&self, environment: &str) -> Result<Vec<Deployment>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {} FROM deployments WHERE environment = ?1 AND state = 'succeeded'
             ORDER BY id DESC",
            Deployment::COLUMNS
        ))?;
        let rows = stmt.query_map([environment], Deployment::from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Succeeded deployments of `version` to any of `environments`, newest first.
    pub fn deployed_versions(
        &self,
        environments: &[String],
        version: &str,
    ) -> Result<Vec<Deployment>> {
        self.succeeded_with("version", version, environments)
    }

    /// Succeeded deployments of `commit` (under any ref) to any of `environments`, newest first.
    pub fn deployed_commit(
        &self,
        environments: &[String],
        commit: &str,
    ) -> Result<Vec<Deployment>> {
        self.succeeded_with("commit_sha", commit, environments)
    }

    /// Succeeded deployments whose `column` (one of ours, never input) is `value`, to any of
    /// `environments`, newest first.
    fn succeeded_with(
        &self,
        column: &'static str,
        value: &str,
        environments: &[String],
    ) -> Result<Vec<Deployment>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {} FROM deployments WHERE {} = ?1 AND state = 'succeeded'
             ORDER BY id DESC",
            Deployment::COLUMNS,
            column
        ))?;
        let rows = stmt.query_map([value], Deployment::from_row)?;
        let all: Vec<Deployment> = rows.collect::<rusqlite::Result<_>>()?;
        Ok(all
            .into_iter()
            .filter(|d| environments.contains(&d.environment))
            .collect())
    }
}

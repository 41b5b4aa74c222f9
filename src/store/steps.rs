//! The steps of a deployment (each announced once committed, with its output's tail) and the
//! build and test commands they run, recorded so a restarted ferry can stop leftovers.

use rusqlite::{Connection, OptionalExtension, params};

use super::{Result, Step, StepState, Store, now};
use crate::events::Event;

/// How much of a step's output an event carries.
const EVENT_OUTPUT: usize = 4000;

impl Store {
    /// Announces step row `step` as it now stands.
    fn publish_step(&self, conn: &Connection, step: i64, with_output: bool) -> Result<()> {
        let event = conn.query_row(
            "SELECT s.deployment_id, d.environment, s.name, s.state, s.started_at, s.finished_at,
                    s.output
             FROM steps s JOIN deployments d ON d.id = s.deployment_id WHERE s.id = ?1",
            [step],
            |r| {
                let state: String = r.get(3)?;
                let output: String = r.get(6)?;
                Ok(Event::Step {
                    deployment: r.get(0)?,
                    environment: r.get(1)?,
                    step: r.get(2)?,
                    state: StepState::parse(&state),
                    started_at: r.get(4)?,
                    finished_at: r.get(5)?,
                    output: with_output.then(|| crate::events::tail(&output, EVENT_OUTPUT)),
                })
            },
        )?;
        self.bus.publish(event);
        Ok(())
    }

    /// Marks a step as running (written before the step acts).
    pub fn step_started(&self, deployment: i64, name: &str) -> Result<i64> {
        let conn = self.conn();
        let tx = conn.unchecked_transaction()?;
        tx.execute(
            "INSERT INTO steps (deployment_id, name, state, started_at) VALUES (?1, ?2, 'running', ?3)",
            params![deployment, name, now()],
        )?;
        let id = tx.last_insert_rowid();
        tx.execute(
            "UPDATE deployments SET step = ?2 WHERE id = ?1",
            params![deployment, name],
        )?;
        tx.commit()?;
        self.publish_step(&conn, id, false)?;
        Ok(id)
    }

    pub fn step_finished(&self, step: i64, state: StepState, output: &str) -> Result<()> {
        let conn = self.conn();
        conn.execute(
            "UPDATE steps SET state = ?2, finished_at = ?3, output = ?4 WHERE id = ?1",
            params![step, state.as_str(), now(), output],
        )?;
        self.publish_step(&conn, step, true)
    }

    /// Replaces the output of the deployment's running step `name` (progress of a long step).
    pub fn set_running_output(&self, deployment: i64, name: &str, output: &str) -> Result<()> {
        let conn = self.conn();
        let step: Option<i64> = conn
            .query_row(
                "UPDATE steps SET output = ?3
                 WHERE deployment_id = ?1 AND name = ?2 AND state = 'running' RETURNING id",
                params![deployment, name, output],
                |r| r.get(0),
            )
            .optional()?;
        match step {
            Some(step) => self.publish_step(&conn, step, true),
            None => Ok(()),
        }
    }

    /// Keeps the last output lines of the instance step `step` judged (see `Step::app_output`).
    pub fn set_step_app_output(&self, step: i64, lines: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE steps SET app_output = ?2 WHERE id = ?1",
            params![step, lines],
        )?;
        Ok(())
    }

    pub fn steps(&self, deployment: i64) -> Result<Vec<Step>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT name, state, started_at, finished_at, output, app_output FROM steps
             WHERE deployment_id = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map([deployment], Step::from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Records a build or test command of `deployment` as running (before it is waited on).
    pub fn command_started(&self, deployment: i64, pid: u32, proc_start: i64) -> Result<()> {
        self.conn().execute(
            "INSERT INTO commands (deployment_id, pid, proc_start, started_at) VALUES (?1, ?2, ?3, ?4)",
            params![deployment, pid, proc_start, now()],
        )?;
        Ok(())
    }

    /// Forgets `deployment`'s commands: they have ended.
    pub fn commands_ended(&self, deployment: i64) -> Result<()> {
        self.conn().execute(
            "DELETE FROM commands WHERE deployment_id = ?1",
            [deployment],
        )?;
        Ok(())
    }

    /// Commands recorded as running: (deployment, pid, process start time).
    pub fn running_commands(&self) -> Result<Vec<(i64, u32, i64)>> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT deployment_id, pid, proc_start FROM commands ORDER BY id")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

//! The store: ferry's state in one SQLite file (`<state_dir>/ferry.db`).
//!
//! WAL mode with `synchronous=FULL`, numbered migrations applied at open (tracked in
//! `PRAGMA user_version`), explicit queries, one row type per table. Every deployment
//! transition is committed here before the pipeline acts on it, so a restarted ferry can tell
//! what was in flight.

mod dashboard;
mod rows;
mod server;

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, params};

use crate::events::{Bus, Event};

pub use dashboard::Probe;
pub use rows::{
    Actor, AuditEntry, Backup, Check, Delivery, Deployment, DeploymentState, Instance, LockHolder,
    Maintenance, Release, Scope, Step, StepState, Token, Verification,
};
pub use server::NewDelivery;

const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_init.sql"),
    include_str!("migrations/0002_promotion.sql"),
    include_str!("migrations/0003_server.sql"),
    include_str!("migrations/0004_dashboard.sql"),
    include_str!("migrations/0005_commands.sql"),
    include_str!("migrations/0006_access.sql"),
    include_str!("migrations/0008_webhooks.sql"),
    include_str!("migrations/0010_app_output.sql"),
];

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database at {path} is from a newer ferry (schema {found}, this ferry knows {known})")]
    TooNew {
        path: String,
        found: usize,
        known: usize,
    },
    #[error("cannot make {path} private (mode 0600): {source}")]
    Mode {
        path: String,
        source: std::io::Error,
    },
}

impl StoreError {
    /// SQLite could not write because the disk is full.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::DiskFull)
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// A handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    /// Transitions are announced here after they are committed.
    bus: Bus,
}

/// How much of a step's output an event carries.
const EVENT_OUTPUT: usize = 4000;

/// The current time as stored: RFC 3339, UTC, milliseconds.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Makes the database at `path` readable by its owner only: created empty with mode 0600
/// when missing (SQLite would make it 0644), else set to 0600 with its `-wal` and `-shm`
/// (SQLite gives those the database's mode). It holds token hashes and every record.
fn private(path: &Path) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let fail = |p: &Path| {
        let path = p.display().to_string();
        move |source| StoreError::Mode { path, source }
    };
    if !path.exists() {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(fail(path))?;
    }
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let file = std::path::PathBuf::from(name);
        match std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !suffix.is_empty() => {}
            Err(e) => return Err(fail(&file)(e)),
        }
    }
    Ok(())
}

impl Store {
    /// Opens (creating if needed) the database and applies pending migrations.
    pub fn open(path: &Path) -> Result<Store> {
        private(path)?;
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let version = version.max(0) as usize;
        if version > MIGRATIONS.len() {
            return Err(StoreError::TooNew {
                path: path.display().to_string(),
                found: version,
                known: MIGRATIONS.len(),
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
            bus: Bus::default(),
        })
    }

    /// The channel every committed transition is announced on.
    pub fn events(&self) -> &Bus {
        &self.bus
    }

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

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // a panic while holding the lock cannot leave SQLite inconsistent; keep going
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
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

    /// Takes the environment's deploy lock for `deployment`, or says who holds it.
    pub fn acquire_lock(
        &self,
        environment: &str,
        deployment: Option<i64>,
        kind: &str,
        holder: &str,
    ) -> Result<std::result::Result<(), LockHolder>> {
        self.take_lock(environment, deployment, kind, holder, None)
    }

    fn take_lock(
        &self,
        environment: &str,
        deployment: Option<i64>,
        kind: &str,
        holder: &str,
        reason: Option<&str>,
    ) -> Result<std::result::Result<(), LockHolder>> {
        let conn = self.conn();
        let tx = conn.unchecked_transaction()?;
        if let Some(held) = lock_holder(&tx, environment)? {
            return Ok(Err(held));
        }
        tx.execute(
            "INSERT INTO env_locks (environment, deployment_id, kind, holder, since, reason)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![environment, deployment, kind, holder, now(), reason],
        )?;
        tx.commit()?;
        Ok(Ok(()))
    }

    pub fn lock_holder(&self, environment: &str) -> Result<Option<LockHolder>> {
        lock_holder(&self.conn(), environment)
    }

    /// Drops every lock but manual ones: at start, nothing ferry did can still be running.
    pub fn clear_deploy_locks(&self) -> Result<usize> {
        Ok(self
            .conn()
            .execute("DELETE FROM env_locks WHERE kind != 'manual'", [])?)
    }

    /// Releases the lock of `kind` if `deployment` holds it.
    pub fn release_lock(
        &self,
        environment: &str,
        deployment: Option<i64>,
        kind: &str,
    ) -> Result<()> {
        self.conn().execute(
            "DELETE FROM env_locks WHERE environment = ?1 AND deployment_id IS ?2 AND kind = ?3",
            params![environment, deployment, kind],
        )?;
        Ok(())
    }

    /// Records a release being prepared (or returns the existing row for that name).
    pub fn upsert_release(
        &self,
        environment: &str,
        name: &str,
        version: &str,
        commit: &str,
    ) -> Result<Release> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO releases (environment, name, version, commit_sha, status, created_at)
             VALUES (?1, ?2, ?3, ?4, 'preparing', ?5)
             ON CONFLICT (environment, name) DO NOTHING",
            params![environment, name, version, commit, now()],
        )?;
        release(&conn, environment, name)?.ok_or(StoreError::NotFound)
    }

    pub fn release(&self, environment: &str, name: &str) -> Result<Option<Release>> {
        release(&self.conn(), environment, name)
    }

    pub fn set_release_status(
        &self,
        environment: &str,
        name: &str,
        status: &str,
        digest: Option<&str>,
    ) -> Result<()> {
        self.conn().execute(
            "UPDATE releases SET status = ?3, digest = COALESCE(?4, digest)
             WHERE environment = ?1 AND name = ?2",
            params![environment, name, status, digest],
        )?;
        Ok(())
    }

    /// The environment's releases still on disk, oldest first (the order they were made).
    pub fn releases(&self, environment: &str) -> Result<Vec<Release>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {} FROM releases WHERE environment = ?1 AND status != 'pruned' ORDER BY id",
            Release::COLUMNS
        ))?;
        let rows = stmt.query_map([environment], Release::from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn insert_instance(&self, instance: &Instance) -> Result<i64> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO instances (environment, deployment_id, release, pid, port, proc_start, started_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                instance.environment,
                instance.deployment_id,
                instance.release,
                instance.pid,
                instance.port,
                instance.proc_start,
                instance.started_at
            ],
        )?;
        Ok(conn.last_insert_rowid())
    }

    pub fn instance_stopped(&self, id: i64) -> Result<()> {
        self.conn().execute(
            "UPDATE instances SET stopped_at = ?2 WHERE id = ?1 AND stopped_at IS NULL",
            params![id, now()],
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

    /// Records the approval of a deployment waiting for one; false when it was not waiting.
    pub fn approve(&self, id: i64, by: &Actor) -> Result<bool> {
        Ok(self.conn().execute(
            "UPDATE deployments SET approved_by = ?2, approved_token = ?3, approved_at = ?4
             WHERE id = ?1 AND state = 'awaiting_approval' AND approved_by IS NULL",
            params![id, by.name, by.token, now()],
        )? == 1)
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
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {} FROM deployments WHERE version = ?1 AND state = 'succeeded'
             ORDER BY id DESC",
            Deployment::COLUMNS
        ))?;
        let rows = stmt.query_map([version], Deployment::from_row)?;
        let all: Vec<Deployment> = rows.collect::<rusqlite::Result<_>>()?;
        Ok(all
            .into_iter()
            .filter(|d| environments.contains(&d.environment))
            .collect())
    }

    /// Succeeded deployments of `commit` (under any ref) to any of `environments`, newest first.
    pub fn deployed_commit(
        &self,
        environments: &[String],
        commit: &str,
    ) -> Result<Vec<Deployment>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {} FROM deployments WHERE commit_sha = ?1 AND state = 'succeeded'
             ORDER BY id DESC",
            Deployment::COLUMNS
        ))?;
        let rows = stmt.query_map([commit], Deployment::from_row)?;
        let all: Vec<Deployment> = rows.collect::<rusqlite::Result<_>>()?;
        Ok(all
            .into_iter()
            .filter(|d| environments.contains(&d.environment))
            .collect())
    }

    /// Takes a manual lock; says who holds the environment when it is taken already.
    pub fn lock_manually(
        &self,
        environment: &str,
        holder: &str,
        reason: &str,
    ) -> Result<std::result::Result<(), LockHolder>> {
        self.take_lock(environment, None, "manual", holder, Some(reason))
    }

    /// Removes a manual lock; false when there was none.
    pub fn unlock_manually(&self, environment: &str) -> Result<bool> {
        Ok(self.conn().execute(
            "DELETE FROM env_locks WHERE environment = ?1 AND kind = 'manual'",
            [environment],
        )? == 1)
    }

    pub fn add_verification(&self, v: &Verification) -> Result<i64> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO verifications (environment, version, commit_sha, release, digest,
                 deployment_id, verified_by, verified_at, verified_token)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                v.environment,
                v.version,
                v.commit_sha,
                v.release,
                v.digest,
                v.deployment_id,
                v.verified_by,
                v.verified_at,
                v.verified_token
            ],
        )?;
        Ok(conn.last_insert_rowid())
    }

    /// Sign-offs of `version` (all environments when `version` is `None`), newest first.
    pub fn verifications(&self, version: Option<&str>) -> Result<Vec<Verification>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {} FROM verifications WHERE (?1 IS NULL OR version = ?1) ORDER BY id DESC",
            Verification::COLUMNS
        ))?;
        let rows = stmt.query_map([version], Verification::from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Sign-offs of `commit`, whatever ref it was deployed under, newest first.
    pub fn verifications_of_commit(&self, commit: &str) -> Result<Vec<Verification>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {} FROM verifications WHERE commit_sha = ?1 ORDER BY id DESC",
            Verification::COLUMNS
        ))?;
        let rows = stmt.query_map([commit], Verification::from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn add_check(&self, c: &Check) -> Result<()> {
        self.conn().execute(
            "INSERT INTO checks (commit_sha, name, status, url, reported_by, reported_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                c.commit_sha,
                c.name,
                c.status,
                c.url,
                c.reported_by,
                c.reported_at
            ],
        )?;
        Ok(())
    }

    /// The newest report of each check of `commit`, by name.
    pub fn checks(&self, commit: &str) -> Result<Vec<Check>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {} FROM checks WHERE id IN
                 (SELECT MAX(id) FROM checks WHERE commit_sha = ?1 GROUP BY name)
             ORDER BY name",
            Check::COLUMNS
        ))?;
        let rows = stmt.query_map([commit], Check::from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn add_backup(
        &self,
        environment: &str,
        deployment: i64,
        release: &str,
        file: &str,
        path: &str,
        method: &str,
        bytes: u64,
    ) -> Result<()> {
        self.conn().execute(
            "INSERT INTO backups (environment, deployment_id, release, file, path, method, bytes, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![environment, deployment, release, file, path, method, bytes as i64, now()],
        )?;
        Ok(())
    }

    /// Backups still on disk: of one deployment, or of one release of an environment.
    pub fn backups(
        &self,
        environment: &str,
        deployment: Option<i64>,
        release: Option<&str>,
    ) -> Result<Vec<Backup>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {} FROM backups WHERE environment = ?1 AND pruned_at IS NULL
                 AND (?2 IS NULL OR deployment_id = ?2) AND (?3 IS NULL OR release = ?3)
             ORDER BY id",
            Backup::COLUMNS
        ))?;
        let rows = stmt.query_map(params![environment, deployment, release], Backup::from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The deployments of an environment that have backups still on disk, newest first.
    pub fn deployments_with_backups(&self, environment: &str) -> Result<Vec<i64>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT DISTINCT deployment_id FROM backups
             WHERE environment = ?1 AND pruned_at IS NULL ORDER BY deployment_id DESC",
        )?;
        let rows = stmt.query_map(params![environment], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn backup_pruned(&self, id: i64) -> Result<()> {
        self.conn().execute(
            "UPDATE backups SET pruned_at = ?2 WHERE id = ?1",
            params![id, now()],
        )?;
        Ok(())
    }

    /// Turns maintenance on (with its message) or off.
    pub fn set_maintenance(&self, environment: &str, on: Option<(&str, &str)>) -> Result<()> {
        let conn = self.conn();
        match on {
            Some((message, by)) => conn.execute(
                "INSERT INTO maintenance (environment, message, since, set_by) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (environment) DO UPDATE SET message = ?2, since = ?3, set_by = ?4",
                params![environment, message, now(), by],
            )?,
            None => conn.execute(
                "DELETE FROM maintenance WHERE environment = ?1",
                [environment],
            )?,
        };
        Ok(())
    }

    pub fn maintenance(&self) -> Result<Vec<Maintenance>> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT environment, message, since, set_by FROM maintenance")?;
        let rows = stmt.query_map([], |r| {
            Ok(Maintenance {
                environment: r.get(0)?,
                message: r.get(1)?,
                since: r.get(2)?,
                set_by: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Instances not recorded as stopped.
    pub fn live_instances(&self) -> Result<Vec<Instance>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {} FROM instances WHERE stopped_at IS NULL ORDER BY id",
            Instance::COLUMNS
        ))?;
        let rows = stmt.query_map([], Instance::from_row)?;
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

fn lock_holder(conn: &Connection, environment: &str) -> Result<Option<LockHolder>> {
    Ok(conn
        .query_row(
            "SELECT deployment_id, kind, holder, since, reason FROM env_locks WHERE environment = ?1",
            [environment],
            |r| {
                Ok(LockHolder {
                    deployment_id: r.get(0)?,
                    kind: r.get(1)?,
                    holder: r.get(2)?,
                    since: r.get(3)?,
                    reason: r.get(4)?,
                })
            },
        )
        .optional()?)
}

fn release(conn: &Connection, environment: &str, name: &str) -> Result<Option<Release>> {
    Ok(conn
        .query_row(
            &format!(
                "SELECT {} FROM releases WHERE environment = ?1 AND name = ?2",
                Release::COLUMNS
            ),
            params![environment, name],
            Release::from_row,
        )
        .optional()?)
}

#[cfg(test)]
mod tests;

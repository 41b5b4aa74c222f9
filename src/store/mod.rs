//! The store: ferry's state in one SQLite file (`<state_dir>/ferry.db`).
//!
//! WAL mode with `synchronous=FULL`, numbered migrations applied at open (tracked in
//! `PRAGMA user_version`), explicit queries, one row type per table. Every deployment
//! transition is committed here before the pipeline acts on it, so a restarted ferry can tell
//! what was in flight.

mod dashboard;
mod deployments;
mod environments;
mod hosts;
mod notifications;
mod notify_issues;
mod promotion;
mod releases;
mod rows;
mod server;
mod steps;

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::Connection;

use crate::events::Bus;

pub use crate::lifecycle::{DeploymentState, StepState};
pub use dashboard::Probe;
pub use hosts::{HostRow, HostState};
pub use notifications::{Attempt, NewNotification, Notification, NotificationState};
pub use notify_issues::{IssueState, NotifyIssue};
pub use rows::{
    Actor, AuditEntry, Backup, Check, Delivery, Deployment, ExecAudit, Instance, LockHolder,
    Maintenance, Release, Scope, Step, Token, Verification,
};
pub use server::NewDelivery;

/// Applied in this order; a database's `user_version` counts those applied, so a new one is
/// appended at the end whatever its number.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_init.sql"),
    include_str!("migrations/0002_promotion.sql"),
    include_str!("migrations/0003_server.sql"),
    include_str!("migrations/0004_dashboard.sql"),
    include_str!("migrations/0005_commands.sql"),
    include_str!("migrations/0006_access.sql"),
    include_str!("migrations/0008_webhooks.sql"),
    include_str!("migrations/0010_app_output.sql"),
    include_str!("migrations/0011_containers.sql"),
    include_str!("migrations/0015_run_release.sql"),
    include_str!("migrations/0012_processes.sql"),
    include_str!("migrations/0013_exec_audit.sql"),
    include_str!("migrations/0016_hosts.sql"),
    include_str!("migrations/0017_notifications.sql"),
    include_str!("migrations/0018_notify_issues.sql"),
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

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // a panic while holding the lock cannot leave SQLite inconsistent; keep going
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests;

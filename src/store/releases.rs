//! What deployments leave on disk and running: releases, the instances started from them,
//! and backups of the shared data.

use rusqlite::{Connection, OptionalExtension, params};

use super::{Backup, Instance, Release, Result, Store, StoreError, now};

impl Store {
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

    /// Records `digest` on the release now (an image is recorded as soon as it is built, so
    /// a release failing later still has its image removed with it); the digest it had.
    pub fn set_release_digest(
        &self,
        environment: &str,
        name: &str,
        digest: &str,
    ) -> Result<Option<String>> {
        let conn = self.conn();
        let before: Option<String> = conn
            .query_row(
                "SELECT digest FROM releases WHERE environment = ?1 AND name = ?2",
                params![environment, name],
                |r| r.get(0),
            )
            .optional()?
            .flatten();
        conn.execute(
            "UPDATE releases SET digest = ?3 WHERE environment = ?1 AND name = ?2",
            params![environment, name, digest],
        )?;
        Ok(before)
    }

    /// True when a release of any environment not pruned has `digest` (an image still
    /// needed).
    pub fn digest_in_use(&self, digest: &str) -> Result<bool> {
        let found: Option<i64> = self
            .conn()
            .query_row(
                "SELECT 1 FROM releases WHERE digest = ?1 AND status != 'pruned' LIMIT 1",
                [digest],
                |r| r.get(0),
            )
            .optional()?;
        Ok(found.is_some())
    }

    pub fn insert_instance(&self, instance: &Instance) -> Result<i64> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO instances (environment, deployment_id, release, pid, port, proc_start, started_at, container, process, replica)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                instance.environment,
                instance.deployment_id,
                instance.release,
                instance.pid,
                instance.port,
                instance.proc_start,
                instance.started_at,
                instance.container,
                instance.process,
                instance.replica
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

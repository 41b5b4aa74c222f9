//! The evidence promotion asks for: sign-offs of a version (verifications) and the reports of
//! CI checks on a commit.

use rusqlite::params;

use super::{Check, Result, Store, Verification};

impl Store {
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
}

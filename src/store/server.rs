//! Tables of the server surface: API tokens, webhook deliveries, the audit trail.

use rusqlite::{OptionalExtension, params};

use super::{AuditEntry, Delivery, Result, Store, StoreError, Token, now};

impl Store {
    /// Stores a new token under `name`; fails with `Conflict` semantics (a unique-constraint
    /// error) when a live token already has that name.
    pub fn add_token(&self, name: &str, hash: &str, read_only: bool) -> Result<Token> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO tokens (name, hash, read_only, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![name, hash, read_only, now()],
        )?;
        let id = conn.last_insert_rowid();
        Ok(conn.query_row(
            &format!("SELECT {} FROM tokens WHERE id = ?1", Token::COLUMNS),
            [id],
            Token::from_row,
        )?)
    }

    /// Every token, revoked ones included, oldest first.
    pub fn tokens(&self) -> Result<Vec<Token>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {} FROM tokens ORDER BY id",
            Token::COLUMNS
        ))?;
        let rows = stmt.query_map([], Token::from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The live tokens with their hashes, for checking a presented secret.
    pub fn live_token_hashes(&self) -> Result<Vec<(Token, String)>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {}, hash FROM tokens WHERE revoked_at IS NULL ORDER BY id",
            Token::COLUMNS
        ))?;
        let rows = stmt.query_map([], |r| Ok((Token::from_row(r)?, r.get(6)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Records that token `id` was just used.
    pub fn token_used(&self, id: i64) -> Result<()> {
        self.conn().execute(
            "UPDATE tokens SET last_used_at = ?2 WHERE id = ?1",
            params![id, now()],
        )?;
        Ok(())
    }

    /// Revokes the live token called `name`; `NotFound` when there is none.
    pub fn revoke_token(&self, name: &str) -> Result<()> {
        let changed = self.conn().execute(
            "UPDATE tokens SET revoked_at = ?2 WHERE name = ?1 AND revoked_at IS NULL",
            params![name, now()],
        )?;
        if changed == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Deletes the revoked tokens called `name` (the `local` token is replaced at each start).
    pub fn forget_revoked_tokens(&self, name: &str) -> Result<()> {
        self.conn().execute(
            "DELETE FROM tokens WHERE name = ?1 AND revoked_at IS NOT NULL",
            [name],
        )?;
        Ok(())
    }

    /// Records a delivery; `None` when this provider's delivery id was seen before.
    pub fn add_delivery(
        &self,
        provider: &str,
        delivery_id: &str,
        event: &str,
        git_ref: Option<&str>,
        commit_sha: Option<&str>,
    ) -> Result<Option<i64>> {
        let conn = self.conn();
        let inserted = conn.execute(
            "INSERT INTO deliveries (provider, delivery_id, event, git_ref, commit_sha, received_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (provider, delivery_id) DO NOTHING",
            params![provider, delivery_id, event, git_ref, commit_sha, now()],
        )?;
        Ok((inserted == 1).then(|| conn.last_insert_rowid()))
    }

    /// Says what delivery `id` triggered.
    pub fn set_delivery_outcome(&self, id: i64, outcome: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE deliveries SET outcome = ?2 WHERE id = ?1",
            params![id, outcome],
        )?;
        Ok(())
    }

    pub fn delivery(&self, provider: &str, delivery_id: &str) -> Result<Option<Delivery>> {
        Ok(self
            .conn()
            .query_row(
                &format!(
                    "SELECT {} FROM deliveries WHERE provider = ?1 AND delivery_id = ?2",
                    Delivery::COLUMNS
                ),
                params![provider, delivery_id],
                Delivery::from_row,
            )
            .optional()?)
    }

    /// The newest deliveries first.
    pub fn deliveries(&self, limit: usize) -> Result<Vec<Delivery>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {} FROM deliveries ORDER BY id DESC LIMIT ?1",
            Delivery::COLUMNS
        ))?;
        let rows = stmt.query_map([limit as i64], Delivery::from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn add_audit(&self, token: &str, method: &str, path: &str, status: u16) -> Result<()> {
        self.conn().execute(
            "INSERT INTO audit (at, token, method, path, status) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![now(), token, method, path, status],
        )?;
        Ok(())
    }

    /// The newest audit entries first.
    pub fn audit(&self, limit: usize) -> Result<Vec<AuditEntry>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT at, token, method, path, status FROM audit ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map([limit as i64], |r| {
            Ok(AuditEntry {
                at: r.get(0)?,
                token: r.get(1)?,
                method: r.get(2)?,
                path: r.get(3)?,
                status: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// How many deployments each environment has in each state.
    pub fn deployment_counts(&self) -> Result<Vec<(String, String, i64)>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT environment, state, COUNT(*) FROM deployments
             GROUP BY environment, state ORDER BY environment, state",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

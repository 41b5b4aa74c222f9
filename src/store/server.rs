//! Tables of the server surface: API tokens, webhook deliveries, the audit trail.

use rusqlite::{OptionalExtension, params};

use super::{
    AuditEntry, Delivery, Deployment, ExecAudit, Result, Scope, Store, StoreError, Token, now,
};

impl Store {
    /// Stores a new token under `name`; fails with `Conflict` semantics (a unique-constraint
    /// error) when a live token already has that name.
    pub fn add_token(&self, name: &str, hash: &str, scopes: &[Scope]) -> Result<Token> {
        let conn = self.conn();
        let read_only = scopes.iter().all(|s| *s == Scope::Read);
        conn.execute(
            "INSERT INTO tokens (name, hash, read_only, scopes, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![name, hash, read_only, Scope::join(scopes), now()],
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

    /// Records a delivery; `None` when this provider's delivery id, or its idempotency key,
    /// was seen before.
    pub fn add_delivery(&self, new: &NewDelivery<'_>) -> Result<Option<i64>> {
        let conn = self.conn();
        let inserted = conn.execute(
            "INSERT INTO deliveries
                 (provider, delivery_id, idempotency_key, event, git_ref, commit_sha, received_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
            params![
                new.provider,
                new.delivery_id,
                new.idempotency_key,
                new.event,
                new.git_ref,
                new.commit_sha,
                now()
            ],
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

    /// The delivery of `provider` with this delivery id or, when given, this idempotency key.
    pub fn delivery(
        &self,
        provider: &str,
        delivery_id: &str,
        idempotency_key: Option<&str>,
    ) -> Result<Option<Delivery>> {
        Ok(self
            .conn()
            .query_row(
                &format!(
                    "SELECT {} FROM deliveries WHERE provider = ?1
                         AND (delivery_id = ?2 OR idempotency_key = ?3)
                     ORDER BY id LIMIT 1",
                    Delivery::COLUMNS
                ),
                params![provider, delivery_id, idempotency_key],
                Delivery::from_row,
            )
            .optional()?)
    }

    /// Marks deployment `id` as asked for by a push whose new commit (`after`) is `sha`.
    pub fn set_pushed(&self, id: i64, sha: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE deployments SET pushed_sha = ?2 WHERE id = ?1",
            params![id, sha],
        )?;
        Ok(())
    }

    /// The newest deployment of `git_ref` to `environment` that a push of `sha` asked for,
    /// unless it was refused or interrupted (then the push may be delivered again).
    pub fn pushed_before(
        &self,
        environment: &str,
        git_ref: &str,
        sha: &str,
    ) -> Result<Option<Deployment>> {
        Ok(self
            .conn()
            .query_row(
                &format!(
                    "SELECT {} FROM deployments
                     WHERE environment = ?1 AND git_ref = ?2 AND pushed_sha = ?3
                       AND state NOT IN ('refused', 'interrupted')
                     ORDER BY id DESC LIMIT 1",
                    Deployment::COLUMNS
                ),
                params![environment, git_ref, sha],
                Deployment::from_row,
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

    /// Records a `ferry exec` session as it starts (answered 101); returns its row, for
    /// [`Store::exec_ended`].
    pub fn exec_started(&self, e: &ExecAudit) -> Result<i64> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO audit (at, token, method, path, status, user, environment, command) \
             VALUES (?1, ?2, 'POST', ?3, 101, ?4, ?5, ?6)",
            params![now(), e.token, e.path, e.user, e.environment, e.command],
        )?;
        Ok(conn.last_insert_rowid())
    }

    /// Records how a `ferry exec` session ended.
    pub fn exec_ended(&self, id: i64, exit_status: i32) -> Result<()> {
        self.conn().execute(
            "UPDATE audit SET exit_status = ?1, finished_at = ?2 WHERE id = ?3",
            params![exit_status, now(), id],
        )?;
        Ok(())
    }

    /// The newest audit entries first.
    pub fn audit(&self, limit: usize) -> Result<Vec<AuditEntry>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT at, token, method, path, status, user, environment, command, exit_status, \
             finished_at FROM audit ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map([limit as i64], |r| {
            Ok(AuditEntry {
                at: r.get(0)?,
                token: r.get(1)?,
                method: r.get(2)?,
                path: r.get(3)?,
                status: r.get(4)?,
                user: r.get(5)?,
                environment: r.get(6)?,
                command: r.get(7)?,
                exit_status: r.get(8)?,
                finished_at: r.get(9)?,
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

/// A delivery to record.
#[derive(Debug, Clone, Copy)]
pub struct NewDelivery<'a> {
    pub provider: &'a str,
    pub delivery_id: &'a str,
    /// GitLab's `Idempotency-Key`, the same on a resend.
    pub idempotency_key: Option<&'a str>,
    pub event: &'a str,
    pub git_ref: Option<&'a str>,
    /// The pushed commit (an annotated tag's commit, not the tag object).
    pub commit_sha: Option<&'a str>,
}

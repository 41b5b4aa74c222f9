//! What holds or closes an environment: its deploy lock (a deployment's or a manual one) and
//! maintenance mode.

use rusqlite::{Connection, OptionalExtension, params};

use super::{LockHolder, Maintenance, Result, Store, now};

impl Store {
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

    /// Takes a manual lock; says who holds the environment when it is taken already.
    pub fn lock_manually(
        &self,
        environment: &str,
        holder: &str,
        reason: &str,
    ) -> Result<std::result::Result<(), LockHolder>> {
        self.take_lock(environment, None, "manual", holder, Some(reason))
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

    /// Removes a manual lock; false when there was none.
    pub fn unlock_manually(&self, environment: &str) -> Result<bool> {
        Ok(self.conn().execute(
            "DELETE FROM env_locks WHERE environment = ?1 AND kind = 'manual'",
            [environment],
        )? == 1)
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

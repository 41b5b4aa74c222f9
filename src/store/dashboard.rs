//! Tables the dashboard reads: health probes over time, browser sessions, paged history.

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use super::{Deployment, Result, Store, Token, now};
use crate::events::Event;

/// One health probe of an environment's serving instance.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Probe {
    pub environment: String,
    /// Set for the post-deploy monitor's probes.
    pub deployment_id: Option<i64>,
    pub at: String,
    pub ok: bool,
    pub response_ms: f64,
    pub detail: Option<String>,
}

impl Store {
    /// Records `probe` and announces it.
    pub fn add_probe(&self, probe: &Probe) -> Result<()> {
        self.conn().execute(
            "INSERT INTO probes (environment, deployment_id, at, ok, response_ms, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                probe.environment,
                probe.deployment_id,
                probe.at,
                probe.ok,
                probe.response_ms,
                probe.detail
            ],
        )?;
        self.bus.publish(Event::Probe {
            deployment: probe.deployment_id,
            environment: probe.environment.clone(),
            ok: probe.ok,
            response_ms: probe.response_ms,
            at: probe.at.clone(),
        });
        Ok(())
    }

    /// `environment`'s probes at or after `since` (an RFC 3339 time), oldest first.
    pub fn probes_since(&self, environment: &str, since: &str) -> Result<Vec<Probe>> {
        self.query_probes(
            "WHERE environment = ?1 AND at >= ?2 ORDER BY at",
            params![environment, since],
        )
    }

    /// The probes the monitor made for deployment `id`, oldest first.
    pub fn deployment_probes(&self, id: i64) -> Result<Vec<Probe>> {
        self.query_probes("WHERE deployment_id = ?1 ORDER BY id", params![id])
    }

    /// `environment`'s newest probe.
    pub fn last_probe(&self, environment: &str) -> Result<Option<Probe>> {
        let mut found = self.query_probes(
            "WHERE environment = ?1 ORDER BY at DESC LIMIT 1",
            params![environment],
        )?;
        Ok(found.pop())
    }

    fn query_probes(&self, rest: &str, args: impl rusqlite::Params) -> Result<Vec<Probe>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT environment, deployment_id, at, ok, response_ms, detail FROM probes {rest}"
        ))?;
        let rows = stmt.query_map(args, |r| {
            Ok(Probe {
                environment: r.get(0)?,
                deployment_id: r.get(1)?,
                at: r.get(2)?,
                ok: r.get(3)?,
                response_ms: r.get(4)?,
                detail: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Deletes probes older than `before` (an RFC 3339 time); returns how many.
    pub fn prune_probes(&self, before: &str) -> Result<usize> {
        Ok(self
            .conn()
            .execute("DELETE FROM probes WHERE at < ?1", [before])?)
    }

    /// Page `page` (from 0) of `environment`'s deployments, `per_page` to a page, newest
    /// first, with the number of deployments in all.
    pub fn history_page(
        &self,
        environment: &str,
        page: usize,
        per_page: usize,
    ) -> Result<(Vec<Deployment>, usize)> {
        let conn = self.conn();
        let total: i64 = conn.query_row(
            "SELECT COUNT(*) FROM deployments WHERE environment = ?1",
            [environment],
            |r| r.get(0),
        )?;
        let mut stmt = conn.prepare(&format!(
            "SELECT {} FROM deployments WHERE environment = ?1 ORDER BY id DESC LIMIT ?2 OFFSET ?3",
            Deployment::COLUMNS
        ))?;
        let rows = stmt.query_map(
            params![environment, per_page as i64, (page * per_page) as i64],
            Deployment::from_row,
        )?;
        Ok((rows.collect::<rusqlite::Result<_>>()?, total as usize))
    }

    /// Starts a session for token `token_id` (by the hash of its secret) until `expires_at`.
    pub fn add_session(&self, hash: &str, token_id: i64, expires_at: &str) -> Result<()> {
        let conn = self.conn();
        conn.execute("DELETE FROM sessions WHERE expires_at < ?1", [now()])?;
        conn.execute(
            "INSERT INTO sessions (hash, token_id, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
            params![hash, token_id, now(), expires_at],
        )?;
        Ok(())
    }

    /// The live token behind the unexpired session with `hash`.
    pub fn session_token(&self, hash: &str) -> Result<Option<Token>> {
        let columns = Token::COLUMNS
            .split(", ")
            .map(|c| format!("t.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        Ok(self
            .conn()
            .query_row(
                &format!(
                    "SELECT {columns} FROM sessions s JOIN tokens t ON t.id = s.token_id
                     WHERE s.hash = ?1 AND s.expires_at > ?2 AND t.revoked_at IS NULL"
                ),
                params![hash, now()],
                Token::from_row,
            )
            .optional()?)
    }

    /// Ends the session with `hash` (signing out).
    pub fn end_session(&self, hash: &str) -> Result<()> {
        self.conn()
            .execute("DELETE FROM sessions WHERE hash = ?1", [hash])?;
        Ok(())
    }
}

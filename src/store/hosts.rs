//! The hosts of environments with `servers`: one row per environment and host, with the
//! release it serves, the release it must serve, its state and when it last answered (see
//! docs/servers.md, "A host lost mid-rollout"). The reconciler's audit entries live here too.

use rusqlite::{OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};

use super::{Result, Store, now, rows::bad_state};
use crate::events::Event;

/// Where a host stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostState {
    /// It answered and serves the release it must.
    Ok,
    /// A call to it was cut (lost, unreachable): what it runs is not known until it answers.
    Unknown,
    /// It answered, and a step on it failed.
    Failed,
}

impl HostState {
    pub fn as_str(self) -> &'static str {
        match self {
            HostState::Ok => "ok",
            HostState::Unknown => "unknown",
            HostState::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Option<HostState> {
        Some(match s {
            "ok" => HostState::Ok,
            "unknown" => HostState::Unknown,
            "failed" => HostState::Failed,
            _ => return None,
        })
    }
}

/// One host of an environment, as `ferry status` and the dashboard show it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HostRow {
    pub environment: String,
    /// The server as written in `servers`.
    pub host: String,
    /// The release it was last seen serving.
    pub serving: Option<String>,
    /// The release it must serve.
    pub wanted: Option<String>,
    pub state: HostState,
    /// When it last answered.
    pub last_seen: Option<String>,
    /// Why it is not `ok`, or what was last done to it.
    pub detail: Option<String>,
    pub updated_at: String,
}

impl HostRow {
    const COLUMNS: &'static str =
        "environment, host, serving, wanted, state, last_seen, detail, updated_at";

    fn from_row(r: &Row<'_>) -> rusqlite::Result<HostRow> {
        let state: String = r.get(4)?;
        Ok(HostRow {
            environment: r.get(0)?,
            host: r.get(1)?,
            serving: r.get(2)?,
            wanted: r.get(3)?,
            state: HostState::parse(&state).ok_or_else(|| bad_state(4, &state))?,
            last_seen: r.get(5)?,
            detail: r.get(6)?,
            updated_at: r.get(7)?,
        })
    }
}

impl Store {
    /// `host` of `environment` answered and serves `serving`, which is what it must serve.
    pub fn host_ok(
        &self,
        environment: &str,
        host: &str,
        serving: Option<&str>,
        detail: Option<&str>,
    ) -> Result<()> {
        let at = now();
        self.conn().execute(
            "INSERT INTO hosts (environment, host, serving, wanted, state, last_seen, detail, updated_at)
             VALUES (?1, ?2, ?3, ?3, 'ok', ?4, ?5, ?4)
             ON CONFLICT (environment, host) DO UPDATE SET serving = ?3, wanted = ?3,
                 state = 'ok', last_seen = ?4, detail = ?5, updated_at = ?4",
            params![environment, host, serving, at, detail],
        )?;
        self.announce_host(environment, host, HostState::Ok, serving, detail, &at);
        Ok(())
    }

    /// A call to `host` was cut: it is `unknown` until it answers, and must then serve
    /// `wanted`. What it was last seen serving, and when, are kept.
    pub fn host_unknown(
        &self,
        environment: &str,
        host: &str,
        wanted: Option<&str>,
        detail: &str,
    ) -> Result<()> {
        let at = now();
        self.conn().execute(
            "INSERT INTO hosts (environment, host, wanted, state, detail, updated_at)
             VALUES (?1, ?2, ?3, 'unknown', ?4, ?5)
             ON CONFLICT (environment, host) DO UPDATE SET wanted = ?3, state = 'unknown',
                 detail = ?4, updated_at = ?5",
            params![environment, host, wanted, detail, at],
        )?;
        self.announce_host(
            environment,
            host,
            HostState::Unknown,
            wanted,
            Some(detail),
            &at,
        );
        Ok(())
    }

    /// `host` answered, serving `serving`, and a step on it failed; it must serve `wanted`.
    pub fn host_failed(
        &self,
        environment: &str,
        host: &str,
        serving: Option<&str>,
        wanted: Option<&str>,
        detail: &str,
    ) -> Result<()> {
        let at = now();
        self.conn().execute(
            "INSERT INTO hosts (environment, host, serving, wanted, state, last_seen, detail, updated_at)
             VALUES (?1, ?2, ?3, ?4, 'failed', ?5, ?6, ?5)
             ON CONFLICT (environment, host) DO UPDATE SET serving = ?3, wanted = ?4,
                 state = 'failed', last_seen = ?5, detail = ?6, updated_at = ?5",
            params![environment, host, serving, wanted, at, detail],
        )?;
        self.announce_host(
            environment,
            host,
            HostState::Failed,
            serving,
            Some(detail),
            &at,
        );
        Ok(())
    }

    fn announce_host(
        &self,
        environment: &str,
        host: &str,
        state: HostState,
        release: Option<&str>,
        detail: Option<&str>,
        at: &str,
    ) {
        self.bus.publish(Event::Host {
            environment: environment.to_string(),
            host: host.to_string(),
            state,
            release: release.map(str::to_string),
            detail: detail.map(str::to_string),
            at: at.to_string(),
        });
    }

    /// `environment`'s hosts, by name.
    pub fn hosts(&self, environment: &str) -> Result<Vec<HostRow>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {} FROM hosts WHERE environment = ?1 ORDER BY host",
            HostRow::COLUMNS
        ))?;
        let rows = stmt.query_map([environment], HostRow::from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// One host's row, if it has one.
    pub fn host(&self, environment: &str, host: &str) -> Result<Option<HostRow>> {
        Ok(self
            .conn()
            .query_row(
                &format!(
                    "SELECT {} FROM hosts WHERE environment = ?1 AND host = ?2",
                    HostRow::COLUMNS
                ),
                params![environment, host],
                HostRow::from_row,
            )
            .optional()?)
    }

    /// Forgets the hosts of `environment` no longer in `keep` (taken out of `servers`).
    pub fn forget_hosts(&self, environment: &str, keep: &[String]) -> Result<usize> {
        let conn = self.conn();
        let mut gone = 0;
        let names: Vec<String> = {
            let mut stmt = conn.prepare("SELECT host FROM hosts WHERE environment = ?1")?;
            let rows = stmt.query_map([environment], |r| r.get::<_, String>(0))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        for name in names.iter().filter(|n| !keep.contains(n)) {
            gone += conn.execute(
                "DELETE FROM hosts WHERE environment = ?1 AND host = ?2",
                params![environment, name],
            )?;
        }
        Ok(gone)
    }

    /// An entry of the audit trail for what ferry itself did to a host (the reconciler):
    /// token `ferry`, method `RECONCILE`, the host's path, and what was done.
    pub fn audit_host(&self, environment: &str, host: &str, what: &str) -> Result<()> {
        self.conn().execute(
            "INSERT INTO audit (at, token, method, path, status, environment, command)
             VALUES (?1, 'ferry', 'RECONCILE', ?2, 200, ?3, ?4)",
            params![
                now(),
                format!("/api/environments/{environment}/hosts/{host}"),
                environment,
                what
            ],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("ferry.db")).unwrap();
        (dir, store)
    }

    #[test]
    fn a_lost_host_keeps_what_it_was_seen_serving_until_it_answers() {
        let (_dir, store) = open();
        let mut events = store.events().subscribe();
        store.host_ok("prod", "app1", Some("v1-a"), None).unwrap();
        store.host_ok("prod", "app2", Some("v1-a"), None).unwrap();
        let seen = store.host("prod", "app1").unwrap().unwrap().last_seen;
        store
            .host_unknown("prod", "app1", Some("v1-a"), "lost during health")
            .unwrap();
        let row = store.host("prod", "app1").unwrap().unwrap();
        assert_eq!(row.state, HostState::Unknown);
        assert_eq!(row.serving.as_deref(), Some("v1-a"));
        assert_eq!(row.wanted.as_deref(), Some("v1-a"));
        assert_eq!(row.last_seen, seen);
        assert_eq!(row.detail.as_deref(), Some("lost during health"));
        store
            .host_failed("prod", "app2", Some("v1-a"), Some("v1-a"), "health failed")
            .unwrap();
        let all = store.hosts("prod").unwrap();
        let states: Vec<_> = all.iter().map(|h| (h.host.as_str(), h.state)).collect();
        assert_eq!(
            states,
            [("app1", HostState::Unknown), ("app2", HostState::Failed)]
        );
        store.host_ok("prod", "app1", Some("v1-a"), None).unwrap();
        assert_eq!(
            store.host("prod", "app1").unwrap().unwrap().state,
            HostState::Ok
        );
        // every change is announced
        let mut announced = Vec::new();
        while let Ok(Event::Host { host, state, .. }) = events.try_recv() {
            announced.push((host, state));
        }
        assert_eq!(announced.len(), 5, "{announced:?}");
        assert_eq!(announced[2], ("app1".to_string(), HostState::Unknown));
        // a host taken out of `servers` is forgotten
        assert_eq!(store.forget_hosts("prod", &["app2".into()]).unwrap(), 1);
        assert!(store.host("prod", "app1").unwrap().is_none());
        // a host never seen, lost at once, has no row to keep
        store
            .host_unknown("prod", "app3", None, "unreachable")
            .unwrap();
        let row = store.host("prod", "app3").unwrap().unwrap();
        assert_eq!((row.serving, row.last_seen), (None, None));
        store
            .audit_host("prod", "app3", "switched to v1-a")
            .unwrap();
        let audit = store.audit(1).unwrap();
        assert_eq!(audit[0].method, "RECONCILE");
        assert_eq!(audit[0].command.as_deref(), Some("switched to v1-a"));
    }
}

//! The notifications outbox (migration 0017; docs/notifications.md): a row per notifier and
//! event, `pending` until a worker sent it (`sent`) or gave up (`failed`).

use rusqlite::{OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};

use super::{Result, Store, now, rows::bad_state};

/// Where a notification stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationState {
    /// Not sent yet, or being retried.
    Pending,
    Sent,
    /// Given up: retrying could not help, the attempts ran out, or ferry stopped for too long.
    Failed,
}

impl NotificationState {
    pub fn as_str(self) -> &'static str {
        match self {
            NotificationState::Pending => "pending",
            NotificationState::Sent => "sent",
            NotificationState::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Option<NotificationState> {
        Some(match s {
            "pending" => NotificationState::Pending,
            "sent" => NotificationState::Sent,
            "failed" => NotificationState::Failed,
            _ => return None,
        })
    }
}

/// One delivery, as `ferry show`, `ferry notify list`, the API and the dashboard show it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Notification {
    pub id: i64,
    /// The notifier's name.
    pub notifier: String,
    /// Its kind (`webhook`, `slack`, `github-issue`, …).
    pub kind: String,
    pub event: String,
    pub environment: String,
    pub deployment: Option<i64>,
    pub state: NotificationState,
    pub attempts: i64,
    /// What the receiver answered (the last attempt that got an answer).
    pub answer: Option<String>,
    /// Why the last attempt failed.
    pub error: Option<String>,
    /// The issue a tracker filed or commented on.
    pub link: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

const COLUMNS: &str = "id, notifier, kind, event, environment, deployment, state, attempts, \
    answer, error, link, created_at, updated_at";

impl Notification {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Notification> {
        let state: String = r.get(6)?;
        Ok(Notification {
            id: r.get(0)?,
            notifier: r.get(1)?,
            kind: r.get(2)?,
            event: r.get(3)?,
            environment: r.get(4)?,
            deployment: r.get(5)?,
            state: NotificationState::parse(&state).ok_or_else(|| bad_state(6, &state))?,
            attempts: r.get(7)?,
            answer: r.get(8)?,
            error: r.get(9)?,
            link: r.get(10)?,
            created_at: r.get(11)?,
            updated_at: r.get(12)?,
        })
    }
}

/// A notification to queue.
pub struct NewNotification<'a> {
    pub notifier: &'a str,
    pub kind: &'a str,
    pub event: &'a str,
    pub environment: &'a str,
    pub deployment: Option<i64>,
    /// The message, as JSON.
    pub message: &'a str,
}

/// How one attempt went.
pub enum Attempt<'a> {
    /// Taken: the answer, and the link a tracker returned.
    Sent {
        answer: &'a str,
        link: Option<&'a str>,
    },
    /// Not taken; `last`: no more attempts will be made.
    Failed { error: &'a str, last: bool },
}

impl Store {
    /// Queues a notification (`pending`); returns its id.
    pub fn add_notification(&self, n: &NewNotification<'_>) -> Result<i64> {
        let conn = self.conn();
        insert_pending(&conn, n, &now())?;
        Ok(conn.last_insert_rowid())
    }

    /// Queues one event's notifications together (one transaction, one sync).
    pub fn add_notifications(&self, rows: &[NewNotification<'_>]) -> Result<()> {
        let at = now();
        let conn = self.conn();
        let tx = conn.unchecked_transaction()?;
        for n in rows {
            insert_pending(&tx, n, &at)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Records a notification already attempted once (`ferry notify test`), in its final
    /// state: no worker ever sees it pending.
    pub fn add_finished_notification(
        &self,
        n: &NewNotification<'_>,
        attempt: &Attempt<'_>,
    ) -> Result<Notification> {
        let at = now();
        let (state, answer, error, link) = match attempt {
            Attempt::Sent { answer, link } => ("sent", Some(*answer), None, *link),
            Attempt::Failed { error, .. } => ("failed", None, Some(*error), None),
        };
        let id = {
            let conn = self.conn();
            conn.execute(
                "INSERT INTO notifications (notifier, kind, event, environment, deployment,
                     state, attempts, answer, error, link, message, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1, ?7, ?8, ?9, '{}', ?10, ?10)",
                params![
                    n.notifier,
                    n.kind,
                    n.event,
                    n.environment,
                    n.deployment,
                    state,
                    answer,
                    error,
                    link,
                    at
                ],
            )?;
            conn.last_insert_rowid()
        };
        self.notification(id)
    }

    /// Deletes the notifications created before `cutoff` (RFC 3339) that are no longer
    /// pending; returns how many.
    pub fn delete_notifications_before(&self, cutoff: &str) -> Result<usize> {
        Ok(self.conn().execute(
            "DELETE FROM notifications WHERE created_at < ?1 AND state != 'pending'",
            [cutoff],
        )?)
    }

    /// The oldest pending notification of `notifier`, with its message.
    pub fn next_pending(&self, notifier: &str) -> Result<Option<(Notification, String)>> {
        Ok(self
            .conn()
            .query_row(
                &format!(
                    "SELECT {COLUMNS}, message FROM notifications
                     WHERE notifier = ?1 AND state = 'pending' ORDER BY id LIMIT 1"
                ),
                [notifier],
                |r| Ok((Notification::from_row(r)?, r.get(13)?)),
            )
            .optional()?)
    }

    /// Counts one attempt on notification `id`: `sent`, or its error (and `failed` when it
    /// was the `last`).
    pub fn record_attempt(&self, id: i64, attempt: &Attempt<'_>) -> Result<()> {
        let at = now();
        let conn = self.conn();
        match attempt {
            // a row that ended is never sent again: its message is not kept
            Attempt::Sent { answer, link } => conn.execute(
                "UPDATE notifications SET state = 'sent', attempts = attempts + 1, answer = ?2,
                     link = ?3, updated_at = ?4, message = '{}' WHERE id = ?1",
                params![id, answer, link, at],
            )?,
            Attempt::Failed { error, last } => conn.execute(
                "UPDATE notifications SET attempts = attempts + 1, error = ?2, updated_at = ?3,
                     state = CASE WHEN ?4 THEN 'failed' ELSE state END,
                     message = CASE WHEN ?4 THEN '{}' ELSE message END WHERE id = ?1",
                params![id, error, at, last],
            )?,
        };
        Ok(())
    }

    /// Gives up pending notifications that cannot be sent any more: those of notifiers not in
    /// `notifiers`, and those created before `cutoff` (RFC 3339). Returns how many.
    pub fn expire_notifications(&self, notifiers: &[&str], cutoff: &str) -> Result<usize> {
        let at = now();
        let conn = self.conn();
        let tx = conn.unchecked_transaction()?;
        // the last real error is kept, the reason it was given up added
        let stale = tx.execute(
            "UPDATE notifications SET state = 'failed', updated_at = ?2, message = '{}',
                 error = COALESCE(error || '; ', '') || 'ferry stopped before it was sent'
             WHERE state = 'pending' AND created_at < ?1",
            params![cutoff, at],
        )?;
        let names = serde_json::to_string(notifiers).unwrap_or_else(|_| "[]".into());
        let gone = tx.execute(
            "UPDATE notifications SET state = 'failed', updated_at = ?2, message = '{}',
                 error = COALESCE(error || '; ', '') || 'the notifier is no longer configured'
             WHERE state = 'pending' AND notifier NOT IN (SELECT value FROM json_each(?1))",
            params![names, at],
        )?;
        tx.commit()?;
        Ok(stale + gone)
    }

    pub fn notification(&self, id: i64) -> Result<Notification> {
        Ok(self.conn().query_row(
            &format!("SELECT {COLUMNS} FROM notifications WHERE id = ?1"),
            [id],
            Notification::from_row,
        )?)
    }

    /// The notifications about deployment `id`, oldest first.
    pub fn deployment_notifications(&self, id: i64) -> Result<Vec<Notification>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM notifications WHERE deployment = ?1 ORDER BY id"
        ))?;
        let rows = stmt.query_map([id], Notification::from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The newest notifications, newest first: of one notifier, or of all.
    pub fn latest_notifications(
        &self,
        notifier: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Notification>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM notifications WHERE ?1 IS NULL OR notifier = ?1
             ORDER BY id DESC LIMIT ?2"
        ))?;
        let rows = stmt.query_map(params![notifier, limit as i64], Notification::from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

/// Writes one pending delivery row.
fn insert_pending(conn: &rusqlite::Connection, n: &NewNotification<'_>, at: &str) -> Result<()> {
    conn.execute(
        "INSERT INTO notifications (notifier, kind, event, environment, deployment, state,
             message, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6, ?7, ?7)",
        params![
            n.notifier,
            n.kind,
            n.event,
            n.environment,
            n.deployment,
            n.message,
            at
        ],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("ferry.db")).unwrap();
        (dir, store)
    }

    fn new<'a>(notifier: &'a str, event: &'a str) -> NewNotification<'a> {
        NewNotification {
            notifier,
            kind: "webhook",
            event,
            environment: "staging",
            deployment: None,
            message: "{}",
        }
    }

    #[test]
    fn a_notifier_takes_its_rows_oldest_first_and_each_attempt_counts() {
        let (_dir, s) = store();
        let a = s.add_notification(&new("chat", "deploy.started")).unwrap();
        let b = s
            .add_notification(&new("chat", "deploy.succeeded"))
            .unwrap();
        s.add_notification(&new("other", "deploy.started")).unwrap();
        assert_eq!(s.next_pending("chat").unwrap().unwrap().0.id, a);
        s.record_attempt(
            a,
            &Attempt::Failed {
                error: "answered 500",
                last: false,
            },
        )
        .unwrap();
        let (row, _) = s.next_pending("chat").unwrap().unwrap();
        assert_eq!((row.id, row.attempts), (a, 1), "still first, retried");
        s.record_attempt(
            a,
            &Attempt::Sent {
                answer: "answered 200 OK",
                link: None,
            },
        )
        .unwrap();
        let sent = s.notification(a).unwrap();
        assert_eq!((sent.state, sent.attempts), (NotificationState::Sent, 2));
        assert_eq!(sent.error.as_deref(), Some("answered 500"));
        assert_eq!(s.next_pending("chat").unwrap().unwrap().0.id, b);
        s.record_attempt(
            b,
            &Attempt::Failed {
                error: "answered 404",
                last: true,
            },
        )
        .unwrap();
        assert_eq!(s.notification(b).unwrap().state, NotificationState::Failed);
        assert!(s.next_pending("chat").unwrap().is_none());
        let latest = s.latest_notifications(Some("chat"), 10).unwrap();
        assert_eq!(latest.iter().map(|n| n.id).collect::<Vec<_>>(), [b, a]);
        assert_eq!(s.latest_notifications(None, 10).unwrap().len(), 3);
    }

    #[test]
    fn stale_and_orphaned_pending_rows_are_given_up() {
        let (_dir, s) = store();
        let kept = s.add_notification(&new("chat", "deploy.started")).unwrap();
        let gone = s
            .add_notification(&new("removed", "deploy.started"))
            .unwrap();
        assert_eq!(
            s.expire_notifications(&["chat"], "2000-01-01T00:00:00Z")
                .unwrap(),
            1
        );
        assert_eq!(
            s.notification(kept).unwrap().state,
            NotificationState::Pending
        );
        let g = s.notification(gone).unwrap();
        assert_eq!(g.state, NotificationState::Failed);
        assert_eq!(
            g.error.as_deref(),
            Some("the notifier is no longer configured")
        );
        // a cutoff after it was created: ferry was stopped too long
        assert_eq!(
            s.expire_notifications(&["chat"], "2999-01-01T00:00:00Z")
                .unwrap(),
            1
        );
        assert_eq!(
            s.notification(kept).unwrap().error.as_deref(),
            Some("ferry stopped before it was sent")
        );
        // kept a while once ended, then deleted; never while pending
        let pending = s.add_notification(&new("chat", "deploy.started")).unwrap();
        assert_eq!(
            s.delete_notifications_before("2999-01-01T00:00:00Z")
                .unwrap(),
            2
        );
        assert_eq!(
            s.notification(pending).unwrap().state,
            NotificationState::Pending
        );
    }
}

//! The issue an issue-tracker notifier keeps open for an environment's failures: one row per
//! notifier and environment (see docs/notifications.md, "Issue trackers"). `notify::tracker`
//! reads it to decide whether an event opens an issue, comments on it or closes it.

use rusqlite::{OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};

use super::{Result, Store, now, rows::bad_state};

/// Where a remembered issue stands, as far as ferry knows (people may have closed or deleted
/// it since: the tracker is asked before it is used).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IssueState {
    /// Opened for a failure; nothing succeeded since.
    Open,
    /// A success was reported on it and it was left open (`close_on_success = false`, or
    /// closing it has not worked yet).
    Recovered,
    /// ferry closed it.
    Closed,
}

impl IssueState {
    pub fn as_str(self) -> &'static str {
        match self {
            IssueState::Open => "open",
            IssueState::Recovered => "recovered",
            IssueState::Closed => "closed",
        }
    }

    fn parse(s: &str) -> Option<IssueState> {
        Some(match s {
            "open" => IssueState::Open,
            "recovered" => IssueState::Recovered,
            "closed" => IssueState::Closed,
            _ => return None,
        })
    }
}

/// The issue a notifier opened for an environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NotifyIssue {
    pub notifier: String,
    pub environment: String,
    /// The API and the repository or project it lives in, as configured.
    pub target: String,
    /// GitHub's issue number, GitLab's iid.
    pub number: i64,
    /// The issue's page.
    pub url: String,
    /// The deployment whose failure opened it.
    pub opened_by: Option<i64>,
    /// The last deployment reported on it.
    pub last_deployment: Option<i64>,
    pub state: IssueState,
    pub opened_at: String,
    pub updated_at: String,
}

impl NotifyIssue {
    const COLUMNS: &'static str = "notifier, environment, target, number, url, opened_by, \
        last_deployment, state, opened_at, updated_at";

    fn from_row(r: &Row<'_>) -> rusqlite::Result<NotifyIssue> {
        let state: String = r.get(7)?;
        Ok(NotifyIssue {
            notifier: r.get(0)?,
            environment: r.get(1)?,
            target: r.get(2)?,
            number: r.get(3)?,
            url: r.get(4)?,
            opened_by: r.get(5)?,
            last_deployment: r.get(6)?,
            state: IssueState::parse(&state).ok_or_else(|| bad_state(7, &state))?,
            opened_at: r.get(8)?,
            updated_at: r.get(9)?,
        })
    }
}

impl Store {
    /// The issue `notifier` last opened for `environment`, whatever its state.
    pub fn notify_issue(&self, notifier: &str, environment: &str) -> Result<Option<NotifyIssue>> {
        Ok(self
            .conn()
            .query_row(
                &format!(
                    "SELECT {} FROM notify_issues WHERE notifier = ?1 AND environment = ?2",
                    NotifyIssue::COLUMNS
                ),
                params![notifier, environment],
                NotifyIssue::from_row,
            )
            .optional()?)
    }

    /// `notifier` opened issue `number` in `target` for `environment` (for the failure of
    /// `deployment`): it replaces whatever was remembered before.
    pub fn notify_issue_opened(
        &self,
        notifier: &str,
        environment: &str,
        target: &str,
        number: i64,
        url: &str,
        deployment: Option<i64>,
    ) -> Result<()> {
        let at = now();
        self.conn().execute(
            "INSERT INTO notify_issues (notifier, environment, target, number, url, opened_by,
                 last_deployment, state, opened_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, 'open', ?7, ?7)
             ON CONFLICT (notifier, environment) DO UPDATE SET target = ?3, number = ?4,
                 url = ?5, opened_by = ?6, last_deployment = ?6, state = 'open',
                 opened_at = ?7, updated_at = ?7",
            params![notifier, environment, target, number, url, deployment, at],
        )?;
        Ok(())
    }

    /// The remembered issue of `notifier` and `environment` is now `state`, last reported on
    /// for `deployment` (kept when `None`).
    pub fn notify_issue_state(
        &self,
        notifier: &str,
        environment: &str,
        state: IssueState,
        deployment: Option<i64>,
    ) -> Result<()> {
        let changed = self.conn().execute(
            "UPDATE notify_issues SET state = ?3, last_deployment = COALESCE(?4, last_deployment),
                 updated_at = ?5
             WHERE notifier = ?1 AND environment = ?2",
            params![notifier, environment, state.as_str(), deployment, now()],
        )?;
        if changed == 0 {
            return Err(super::StoreError::NotFound);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issue_is_remembered_per_notifier_and_environment_and_replaced_when_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("ferry.db")).unwrap();
        assert_eq!(store.notify_issue("gh", "staging").unwrap(), None);
        store
            .notify_issue_opened("gh", "staging", "t", 7, "https://x/7", Some(3))
            .unwrap();
        store
            .notify_issue_opened("gh", "production", "t", 8, "https://x/8", Some(4))
            .unwrap();
        let seven = store.notify_issue("gh", "staging").unwrap().unwrap();
        assert_eq!(
            (seven.number, seven.opened_by, seven.state),
            (7, Some(3), IssueState::Open)
        );
        assert_eq!(store.notify_issue("other", "staging").unwrap(), None);

        store
            .notify_issue_state("gh", "staging", IssueState::Recovered, Some(5))
            .unwrap();
        let seven = store.notify_issue("gh", "staging").unwrap().unwrap();
        assert_eq!(
            (seven.state, seven.opened_by, seven.last_deployment),
            (IssueState::Recovered, Some(3), Some(5))
        );
        store
            .notify_issue_state("gh", "staging", IssueState::Closed, None)
            .unwrap();
        assert_eq!(
            store
                .notify_issue("gh", "staging")
                .unwrap()
                .unwrap()
                .last_deployment,
            Some(5)
        );

        store
            .notify_issue_opened("gh", "staging", "t", 9, "https://x/9", Some(6))
            .unwrap();
        let nine = store.notify_issue("gh", "staging").unwrap().unwrap();
        assert_eq!(
            (
                nine.number,
                nine.url.as_str(),
                nine.state,
                nine.last_deployment
            ),
            (9, "https://x/9", IssueState::Open, Some(6))
        );
        assert!(matches!(
            store.notify_issue_state("gh", "dev", IssueState::Closed, None),
            Err(crate::store::StoreError::NotFound)
        ));
    }
}

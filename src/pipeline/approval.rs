//! Approvals: a deployment waiting in `awaiting_approval` until someone approves it or its
//! time runs out. The approval is written to the store first, then the waiter is woken, so
//! an approval is never lost between the two.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::store::{Actor, DeploymentState, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    #[error("deployment {id} is not waiting for approval (it is {state})")]
    NotWaiting { id: i64, state: String },
    #[error("no approval within {0}")]
    TimedOut(String),
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// The deployments waiting for approval, each with a bell to ring.
#[derive(Default)]
pub struct Approvals {
    waiting: Mutex<HashMap<i64, Arc<Notify>>>,
}

impl Approvals {
    fn bell(&self, id: i64) -> Arc<Notify> {
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id)
            .or_default()
            .clone()
    }

    fn forget(&self, id: i64) {
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    /// Waits until deployment `id` is approved (returns who approved) or `timeout` passes.
    pub async fn wait(
        &self,
        store: &Store,
        id: i64,
        timeout: Duration,
    ) -> Result<String, ApprovalError> {
        let bell = self.bell(id);
        let deadline = tokio::time::Instant::now() + timeout;
        let result = loop {
            if let Some(who) = store.deployment(id)?.approved_by {
                break Ok(who);
            }
            tokio::select! {
                () = bell.notified() => {}
                () = tokio::time::sleep_until(deadline) => {
                    break match store.deployment(id)?.approved_by {
                        Some(who) => Ok(who),
                        None => Err(ApprovalError::TimedOut(crate::config::format_duration(timeout))),
                    };
                }
            }
        };
        self.forget(id);
        result
    }

    /// Records `who` approving deployment `id` and wakes its waiter.
    pub fn approve(&self, store: &Store, id: i64, who: &Actor) -> Result<(), ApprovalError> {
        if !store.approve(id, who)? {
            let d = store.deployment(id)?;
            let state = match (d.state, d.approved_by) {
                (DeploymentState::AwaitingApproval, Some(by)) => format!("approved by {by}"),
                (state, _) => state.as_str().replace('_', " "),
            };
            return Err(ApprovalError::NotWaiting { id, state });
        }
        self.bell(id).notify_one();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting_deployment() -> (tempfile::TempDir, Store, i64) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("ferry.db")).unwrap();
        let id = store
            .create_deployment(
                "production",
                "deploy",
                "v1.0.0",
                "ann",
                DeploymentState::AwaitingApproval,
            )
            .unwrap();
        (dir, store, id)
    }

    #[tokio::test(start_paused = true)]
    async fn an_approval_an_hour_in_lets_the_deployment_go_on() {
        let (_dir, store, id) = waiting_deployment();
        let approvals = Arc::new(Approvals::default());
        let waiter = {
            let (approvals, store) = (approvals.clone(), store.clone());
            tokio::spawn(async move {
                approvals
                    .wait(&store, id, Duration::from_secs(24 * 3600))
                    .await
            })
        };
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(!waiter.is_finished());
        approvals.approve(&store, id, &Actor::named("bob")).unwrap();
        assert_eq!(waiter.await.unwrap().unwrap(), "bob");
        let again = approvals
            .approve(&store, id, &Actor::named("carol"))
            .unwrap_err();
        assert_eq!(
            again.to_string(),
            format!("deployment {id} is not waiting for approval (it is approved by bob)")
        );
        assert_eq!(
            store.deployment(id).unwrap().approved_by.as_deref(),
            Some("bob")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn without_an_approval_it_times_out_after_the_configured_time() {
        let (_dir, store, id) = waiting_deployment();
        let approvals = Approvals::default();
        let started = tokio::time::Instant::now();
        let err = approvals
            .wait(&store, id, Duration::from_secs(24 * 3600))
            .await
            .unwrap_err();
        assert!(matches!(err, ApprovalError::TimedOut(_)));
        assert_eq!(err.to_string(), "no approval within 24h");
        assert!(started.elapsed() >= Duration::from_secs(24 * 3600));
    }

    #[tokio::test]
    async fn only_a_waiting_deployment_can_be_approved() {
        let (_dir, store, id) = waiting_deployment();
        store
            .set_state(id, DeploymentState::Refused, Some("no"))
            .unwrap();
        let err = Approvals::default()
            .approve(&store, id, &Actor::named("bob"))
            .unwrap_err();
        assert!(err.to_string().contains("(it is refused)"), "{err}");
        assert!(matches!(
            Approvals::default().approve(&store, 999, &Actor::named("bob")),
            Err(ApprovalError::Store(StoreError::NotFound))
        ));
    }
}

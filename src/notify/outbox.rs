//! The outbox's workers: one per notifier, sending its pending rows oldest first, each retried
//! with backoff, every attempt recorded on its row. A worker stops between attempts (or mid
//! attempt) when `serve` stops; the row stays pending and the next `serve` resumes it.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify as Wake, watch};

use super::{ATTEMPTS, BACKOFF, Ctx, Failure, Message, Outcome, deliver};
use crate::config::{NOTIFY_EVENTS, Notify};
use crate::proxy::stopped;
use crate::store::{Attempt, Deployment, NewNotification, Probe, Step, Store};

/// How long a pending row waits for a stopped `serve`: older ones are given up at start.
pub const RESUME_WITHIN: Duration = Duration::from_secs(3600);

/// A [`Message`] as stored on its row.
#[derive(Serialize, Deserialize)]
struct Stored {
    event: String,
    app: String,
    environment: String,
    deployment: Option<Deployment>,
    steps: Vec<Step>,
    probes: Vec<Probe>,
    detail: Option<String>,
    who: Option<String>,
    link: Option<String>,
    at: String,
}

impl Message {
    /// The message as its row keeps it.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&Stored {
            event: self.event.to_string(),
            app: self.app.clone(),
            environment: self.environment.clone(),
            deployment: self.deployment.clone(),
            steps: self.steps.clone(),
            probes: self.probes.clone(),
            detail: self.detail.clone(),
            who: self.who.clone(),
            link: self.link.clone(),
            at: self.at.clone(),
        })
        .expect("a message is plain data")
    }

    /// The message a row keeps.
    pub fn from_json(json: &str) -> Result<Message, String> {
        let s: Stored = serde_json::from_str(json).map_err(|e| e.to_string())?;
        let event = NOTIFY_EVENTS
            .iter()
            .chain(&["test"])
            .find(|e| **e == s.event)
            .ok_or_else(|| format!("unknown event {}", s.event))?;
        Ok(Message {
            event,
            app: s.app,
            environment: s.environment,
            deployment: s.deployment,
            steps: s.steps,
            probes: s.probes,
            detail: s.detail,
            who: s.who,
            link: s.link,
            at: s.at,
        })
    }
}

/// Writes `msg` into `notifier`'s queue.
pub fn enqueue(store: &Store, notifier: &Notify, msg: &Message) -> crate::store::Result<i64> {
    store.add_notification(&NewNotification {
        notifier: &notifier.name,
        kind: notifier.kind.name(),
        event: msg.event,
        environment: &msg.environment,
        deployment: msg.deployment.as_ref().map(|d| d.id),
        message: &msg.to_json(),
    })
}

/// The wait after failed attempt `n` (1-based): 1 s, 2 s, 4 s, 8 s; at least a 429's
/// `Retry-After`.
pub fn backoff(n: u32, failure: &Failure) -> Duration {
    let wait = BACKOFF * 2u32.pow(n.saturating_sub(1).min(16));
    match failure {
        Failure::RetryAfter(after, _) => wait.max(*after),
        _ => wait,
    }
}

/// Sends `notifier`'s pending rows, oldest first, until `shutdown`; woken by `wake` when a
/// row is queued.
pub async fn work(
    ctx: Ctx,
    notifier: Notify,
    wake: Arc<Wake>,
    outcome: Outcome,
    mut shutdown: watch::Receiver<bool>,
) {
    let name = notifier.name.as_str();
    loop {
        if *shutdown.borrow() {
            return;
        }
        let (row, json) = match ctx.store.next_pending(name) {
            Ok(Some(next)) => next,
            Ok(None) => {
                tokio::select! {
                    () = wake.notified() => continue,
                    () = stopped(&mut shutdown) => return,
                }
            }
            Err(e) => {
                tracing::error!(notifier = name, error = %e, "cannot read the notifications outbox");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(5)) => continue,
                    () = stopped(&mut shutdown) => return,
                }
            }
        };
        let msg = match Message::from_json(&json) {
            Ok(m) => m,
            Err(e) => {
                let error = format!("unreadable message: {e}");
                record(
                    &ctx.store,
                    row.id,
                    &Attempt::Failed {
                        error: &error,
                        last: true,
                    },
                );
                outcome("failed");
                continue;
            }
        };
        // a resumed row goes on counting its attempts
        let mut attempt = u32::try_from(row.attempts).unwrap_or(ATTEMPTS) + 1;
        loop {
            let result = tokio::select! {
                r = deliver(&ctx, &notifier, &msg) => r,
                () = stopped(&mut shutdown) => return,
            };
            match result {
                Ok(d) => {
                    record(
                        &ctx.store,
                        row.id,
                        &Attempt::Sent {
                            answer: &d.answer,
                            link: d.link.as_deref(),
                        },
                    );
                    tracing::info!(
                        notifier = name,
                        event = msg.event,
                        id = row.id,
                        attempt,
                        "notification sent"
                    );
                    outcome("sent");
                    break;
                }
                Err(f) => {
                    let last = matches!(f, Failure::Fatal(_)) || attempt >= ATTEMPTS;
                    record(
                        &ctx.store,
                        row.id,
                        &Attempt::Failed {
                            error: f.reason(),
                            last,
                        },
                    );
                    if last {
                        tracing::error!(
                            notifier = name,
                            event = msg.event,
                            id = row.id,
                            attempt,
                            "notification given up: {}",
                            f.reason()
                        );
                        outcome("failed");
                        break;
                    }
                    let wait = backoff(attempt, &f);
                    tracing::warn!(notifier = name, event = msg.event, id = row.id, attempt, retry_in = ?wait, "notification not delivered: {}", f.reason());
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = stopped(&mut shutdown) => return,
                    }
                    attempt += 1;
                }
            }
        }
    }
}

fn record(store: &Store, id: i64, attempt: &Attempt<'_>) {
    if let Err(e) = store.record_attempt(id, attempt) {
        tracing::error!(id, error = %e, "cannot record a notification attempt");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_wait_1_2_4_8_seconds_or_what_a_429_asks() {
        let retry = Failure::Retry("x".into());
        let waits: Vec<u64> = (1..ATTEMPTS)
            .map(|n| backoff(n, &retry).as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 8]);
        let later = Failure::RetryAfter(Duration::from_secs(30), "x".into());
        assert_eq!(backoff(1, &later), Duration::from_secs(30));
        let sooner = Failure::RetryAfter(Duration::from_secs(1), "x".into());
        assert_eq!(backoff(3, &sooner), Duration::from_secs(4));
    }
}

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

/// The longest one attempt may take, all its requests together (each has [`super::TIMEOUT`]).
/// A stopping `serve` lets an attempt in flight finish (at most this long) rather than cut it
/// and send it again later.
pub const ATTEMPT_LIMIT: Duration = Duration::from_secs(30);

/// The failure of an attempt that took longer than [`ATTEMPT_LIMIT`].
pub fn too_long() -> Failure {
    Failure::Retry(format!("no answer within {}s", ATTEMPT_LIMIT.as_secs()))
}

/// The version of [`Stored`] written now.
const STORED_VERSION: u32 = 1;

/// A [`Message`] as stored on its row. Every field but `event` has a default, so a row a
/// later ferry finds still reads.
#[derive(Serialize, Deserialize)]
#[serde(default)]
struct Stored {
    v: u32,
    event: String,
    app: String,
    environment: String,
    deployment: Option<Box<Deployment>>,
    steps: Vec<Step>,
    probes: Vec<Probe>,
    detail: Option<String>,
    who: Option<String>,
    link: Option<String>,
    at: String,
}

impl Default for Stored {
    fn default() -> Stored {
        Stored {
            v: STORED_VERSION,
            event: String::new(),
            app: String::new(),
            environment: String::new(),
            deployment: None,
            steps: Vec::new(),
            probes: Vec::new(),
            detail: None,
            who: None,
            link: None,
            at: String::new(),
        }
    }
}

impl Message {
    /// The message as its row keeps it: the step outputs a message can show (the failing
    /// step's tail and the app's last lines), not every step's full output.
    pub fn to_json(&self) -> String {
        let failing = self
            .failing_step()
            .map(|s| (s.name.clone(), s.started_at.clone()));
        let steps = self
            .steps
            .iter()
            .map(|s| {
                let mut s = s.clone();
                if failing.as_ref() == Some(&(s.name.clone(), s.started_at.clone())) {
                    s.output = crate::events::tail(&s.output, super::report::OUTPUT_TAIL);
                } else {
                    s.output = String::new();
                    s.app_output = None;
                }
                s
            })
            .collect();
        serde_json::to_string(&Stored {
            v: STORED_VERSION,
            event: self.event.to_string(),
            app: self.app.clone(),
            environment: self.environment.clone(),
            deployment: self.deployment.clone().map(Box::new),
            steps,
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
            deployment: s.deployment.map(|d| *d),
            steps: s.steps,
            probes: s.probes,
            detail: s.detail,
            who: s.who,
            link: s.link,
            at: s.at,
        })
    }
}

/// Writes `msg` into the queues of `notifiers`, together.
pub fn enqueue(store: &Store, notifiers: &[&Notify], msg: &Message) -> crate::store::Result<()> {
    let json = msg.to_json();
    let rows: Vec<NewNotification<'_>> = notifiers
        .iter()
        .map(|n| NewNotification {
            notifier: &n.name,
            kind: n.kind.name(),
            event: msg.event,
            environment: &msg.environment,
            deployment: msg.deployment.as_ref().map(|d| d.id),
            message: &json,
        })
        .collect();
    store.add_notifications(&rows)
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
                let failed = Attempt::Failed {
                    error: &error,
                    last: true,
                };
                if !record(&ctx.store, row.id, &failed, &mut shutdown).await {
                    return;
                }
                outcome("failed");
                continue;
            }
        };
        // a resumed row goes on counting its attempts
        let mut attempt = u32::try_from(row.attempts).unwrap_or(ATTEMPTS) + 1;
        loop {
            // never cut: a request may already be with the receiver, and sending it again
            // later would say it twice (or open a second issue)
            let result = tokio::time::timeout(ATTEMPT_LIMIT, deliver(&ctx, &notifier, &msg))
                .await
                .unwrap_or_else(|_| Err(too_long()));
            match result {
                Ok(d) => {
                    let sent = Attempt::Sent {
                        answer: &d.answer,
                        link: d.link.as_deref(),
                    };
                    if !record(&ctx.store, row.id, &sent, &mut shutdown).await {
                        return;
                    }
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
                    let failed = Attempt::Failed {
                        error: f.reason(),
                        last,
                    };
                    if !record(&ctx.store, row.id, &failed, &mut shutdown).await {
                        return;
                    }
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

/// Records an attempt, trying again (1 s, 2 s, … 30 s apart) until it is written: a row
/// whose outcome is not written is never sent again meanwhile (a full disk would otherwise
/// repeat the message as fast as the receiver answers). False when `serve` stopped first.
async fn record(
    store: &Store,
    id: i64,
    attempt: &Attempt<'_>,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    let mut wait = Duration::from_secs(1);
    loop {
        match store.record_attempt(id, attempt) {
            Ok(()) => return true,
            Err(e) => {
                tracing::error!(id, error = %e, retry_in = ?wait, "cannot record a notification attempt; this notifier waits");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stopped(shutdown) => return false,
        }
        wait = (wait * 2).min(Duration::from_secs(30));
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

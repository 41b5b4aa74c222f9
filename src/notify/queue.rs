//! From events to the outbox: [`run`] queues a row per event and notifier that asked for it
//! and runs the workers; [`test`] is `ferry notify test`.

use std::collections::HashSet;
use std::sync::Arc;

use tokio::sync::{broadcast, watch};

use super::{Delivered, Failure, Message, Outcome, deliver, outbox};
use crate::config::{Config, Notify};
use crate::events::Event;
use crate::store::{DeploymentState, Notification, Store};

/// Rows are kept this long (then deleted at `serve` start).
pub const KEEP_DAYS: i64 = 90;

/// The notification event a deployment transition is, if any. `started` remembers which
/// deployments have already been announced as started (an approved one runs again).
pub(crate) fn event_name(
    kind: &str,
    state: DeploymentState,
    id: i64,
    started: &mut HashSet<i64>,
) -> Option<&'static str> {
    let rollback = kind == "rollback";
    let name = match state {
        DeploymentState::Running if !rollback => {
            if !started.insert(id) {
                return None;
            }
            "deploy.started"
        }
        DeploymentState::AwaitingApproval => "approval.waiting",
        DeploymentState::Succeeded if rollback => "rolled_back",
        DeploymentState::Succeeded => "deploy.succeeded",
        DeploymentState::RolledBack => "rolled_back",
        DeploymentState::Failed | DeploymentState::Interrupted => "deploy.failed",
        DeploymentState::Refused => "deploy.refused",
        _ => return None,
    };
    if state.is_final() {
        started.remove(&id);
    }
    Some(name)
}

/// The dashboard page of deployment `id`.
pub fn deployment_link(config: &Config, id: i64) -> String {
    format!(
        "{}{}/deployments/{id}",
        config.server.public_base(),
        app_prefix(config)
    )
}

/// The dashboard page of environment `env`.
pub fn environment_link(config: &Config, env: &str) -> String {
    format!(
        "{}{}/environments/{env}",
        config.server.public_base(),
        app_prefix(config)
    )
}

/// `/apps/<app>` when the serve hosts several apps, else nothing.
fn app_prefix(config: &Config) -> String {
    if config.server_dir != config.state_dir {
        format!("/apps/{}", config.app.name)
    } else {
        String::new()
    }
}

/// What a deployment event said: its state, reason and time, which the message keeps even
/// when the row has moved on by the time it is read.
pub struct Said {
    pub state: DeploymentState,
    pub reason: Option<String>,
    pub at: String,
}

/// The message about deployment `id` for `event`, read from the store (as `said`, when given).
pub fn deployment_message(
    config: &Config,
    store: &Store,
    event: &'static str,
    id: i64,
    said: Option<Said>,
) -> crate::store::Result<Message> {
    let mut d = store.deployment(id)?;
    let mut at = d
        .finished_at
        .clone()
        .unwrap_or_else(|| d.created_at.clone());
    if let Some(said) = said {
        d.state = said.state;
        d.reason = said.reason;
        at = said.at;
    }
    let steps = store.steps(id)?;
    let probes = if d.state == DeploymentState::RolledBack {
        store.deployment_probes(id).unwrap_or_default()
    } else {
        Vec::new()
    };
    Ok(Message {
        event,
        app: config.app.name.clone(),
        environment: d.environment.clone(),
        who: Some(d.by()),
        link: Some(deployment_link(config, id)),
        at,
        deployment: Some(d),
        steps,
        probes,
        detail: None,
    })
}

/// The message about a maintenance change.
fn maintenance_message(
    config: &Config,
    environment: &str,
    on: bool,
    message: Option<String>,
    by: String,
    at: String,
) -> Message {
    Message {
        event: if on {
            "maintenance.on"
        } else {
            "maintenance.off"
        },
        app: config.app.name.clone(),
        environment: environment.to_string(),
        deployment: None,
        steps: Vec::new(),
        probes: Vec::new(),
        detail: message,
        who: Some(by),
        link: Some(environment_link(config, environment)),
        at,
    }
}

/// The message `event` is for the notifiers, if any asked for it.
fn message_of(
    config: &Config,
    store: &Store,
    event: Event,
    started: &mut HashSet<i64>,
) -> Option<Message> {
    match event {
        Event::Deployment {
            deployment,
            kind,
            state,
            reason,
            at,
            ..
        } => {
            let name = event_name(&kind, state, deployment, started)?;
            if !config.notify.iter().any(|n| n.wants(name)) {
                return None;
            }
            let said = Said { state, reason, at };
            match deployment_message(config, store, name, deployment, Some(said)) {
                Ok(m) => Some(m),
                Err(e) => {
                    tracing::error!(id = deployment, event = name, error = %e, "cannot read a deployment to notify about; not sent");
                    None
                }
            }
        }
        Event::Maintenance {
            environment,
            on,
            message,
            by,
            at,
        } => Some(maintenance_message(
            config,
            &environment,
            on,
            message,
            by,
            at,
        )),
        _ => None,
    }
}

/// Queues `msg` for every notifier that wants it (one transaction) and wakes their workers.
fn queue(
    config: &Config,
    store: &Store,
    wakes: &[Arc<tokio::sync::Notify>],
    outcome: &Outcome,
    msg: &Message,
) {
    let wanted: Vec<(&Notify, &Arc<tokio::sync::Notify>)> = config
        .notify
        .iter()
        .zip(wakes)
        .filter(|(n, _)| n.wants(msg.event))
        .collect();
    if wanted.is_empty() {
        return;
    }
    let notifiers: Vec<&Notify> = wanted.iter().map(|(n, _)| *n).collect();
    match outbox::enqueue(store, &notifiers, msg) {
        Ok(()) => wanted.iter().for_each(|(_, w)| w.notify_one()),
        Err(e) => {
            tracing::error!(event = msg.event, error = %e, "cannot queue a notification; not sent");
            for _ in &wanted {
                outcome("failed");
            }
        }
    }
}

/// Queues a notification for each event from `store` and each notifier that asked for it,
/// and runs a worker per notifier sending them, until `shutdown`. Pending rows of an earlier
/// `serve` are resumed (those older than [`outbox::RESUME_WITHIN`] are given up, rows older
/// than [`KEEP_DAYS`] deleted). `early`: a receiver subscribed before the engine recovered
/// its store at start, so the failures recovery records are sent too.
pub async fn run(
    config: Arc<Config>,
    store: Store,
    outcome: Outcome,
    mut shutdown: watch::Receiver<bool>,
    early: Option<broadcast::Receiver<Event>>,
) {
    // subscribed before anything else, so nothing published from here on is missed
    let mut rx = early.unwrap_or_else(|| store.events().subscribe());
    let names: Vec<&str> = config.notify.iter().map(|n| n.name.as_str()).collect();
    let cutoff = (chrono::Utc::now()
        - chrono::Duration::from_std(outbox::RESUME_WITHIN).unwrap_or_default())
    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let old = (chrono::Utc::now() - chrono::Duration::days(KEEP_DAYS))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    match store
        .expire_notifications(&names, &cutoff)
        .and_then(|n| Ok((n, store.delete_notifications_before(&old)?)))
    {
        Ok((0, _)) => {}
        Ok((n, _)) => {
            tracing::warn!(
                count = n,
                "notifications given up: too old, or their notifier is gone"
            );
            (0..n).for_each(|_| outcome("failed"));
        }
        Err(e) => tracing::error!(error = %e, "cannot read the notifications outbox"),
    }
    if config.notify.is_empty() {
        return;
    }
    let ctx = match super::Ctx::new(store.clone()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}; notifications are off");
            return;
        }
    };
    let mut wakes = Vec::new();
    let mut workers = Vec::new();
    for n in &config.notify {
        let wake = Arc::new(tokio::sync::Notify::new());
        workers.push(tokio::spawn(outbox::work(
            ctx.clone(),
            n.clone(),
            wake.clone(),
            outcome.clone(),
            shutdown.clone(),
        )));
        wakes.push(wake);
    }
    let mut started = HashSet::new();
    loop {
        let event = tokio::select! {
            biased;
            e = rx.recv() => e,
            () = crate::proxy::stopped(&mut shutdown) => break,
        };
        match event {
            Ok(e) => {
                if let Some(msg) = message_of(&config, &store, e, &mut started) {
                    queue(&config, &store, &wakes, &outcome, &msg);
                }
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::error!(
                    missed = n,
                    "notifications fell behind the events; {n} events were not looked at"
                );
            }
            Err(broadcast::error::RecvError::Closed) => break,
        }
    }
    // what was published before the stop is queued (and sent by the next serve)
    while let Ok(e) = rx.try_recv() {
        if let Some(msg) = message_of(&config, &store, e, &mut started) {
            queue(&config, &store, &wakes, &outcome, &msg);
        }
    }
    for w in workers {
        let _ = w.await;
    }
}

/// `ferry notify test`: one attempt at a sample message through `notifier`, now, recorded
/// with the event `test`.
pub async fn test(
    ctx: &super::Ctx,
    config: &Config,
    notifier: &Notify,
    who: &str,
) -> (
    crate::store::Result<Notification>,
    Result<Delivered, Failure>,
) {
    let environment = config
        .environments
        .first()
        .map(|e| e.name.clone())
        .unwrap_or_default();
    let msg = Message {
        event: "test",
        app: config.app.name.clone(),
        link: Some(format!(
            "{}{}/",
            config.server.public_base(),
            app_prefix(config)
        )),
        environment,
        deployment: None,
        steps: Vec::new(),
        probes: Vec::new(),
        detail: Some(format!(
            "sent by `ferry notify test {}` to check the notifier works",
            notifier.name
        )),
        who: Some(who.to_string()),
        at: crate::store::now(),
    };
    let result = tokio::time::timeout(outbox::ATTEMPT_LIMIT, deliver(ctx, notifier, &msg))
        .await
        .unwrap_or_else(|_| Err(outbox::too_long()));
    let attempt = match &result {
        Ok(d) => crate::store::Attempt::Sent {
            answer: &d.answer,
            link: d.link.as_deref(),
        },
        Err(f) => crate::store::Attempt::Failed {
            error: f.reason(),
            last: true,
        },
    };
    let row = ctx.store.add_finished_notification(
        &crate::store::NewNotification {
            notifier: &notifier.name,
            kind: notifier.kind.name(),
            event: "test",
            environment: &msg.environment,
            deployment: None,
            message: "{}",
        },
        &attempt,
    );
    (row, result)
}

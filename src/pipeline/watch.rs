//! The health watcher: while `serve` runs, each environment's serving instance is probed
//! every `[health] watch_interval`, and at once when a deployment ends, and every probe is
//! recorded (the dashboard's health chart and the overview's last probe read them).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, watch};

use super::{Engine, EnvState};
use crate::events::Event;
use crate::store::Probe;

/// How long probes are kept.
const KEEP: chrono::TimeDelta = chrono::TimeDelta::days(3);
/// The longest one probe may take before it counts as failed.
const MAX_PROBE: Duration = Duration::from_secs(5);

impl Engine {
    /// Runs the watcher until `shutdown` flips; does nothing when the interval is zero.
    pub async fn watch_health(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let every = self.config.health.watch_interval;
        if every.is_zero() {
            return;
        }
        let mut events = self.store.events().subscribe();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut rounds: u64 = 0;
        loop {
            let only = tokio::select! {
                _ = tick.tick() => None,
                event = events.recv() => match event {
                    Ok(Event::Deployment { environment, state, .. }) if state.is_final() => {
                        Some(environment)
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                    _ => continue,
                },
                () = crate::proxy::stopped(&mut shutdown) => return,
            };
            let probes = self
                .environments()
                .filter(|s| only.as_ref().is_none_or(|name| *name == s.env.name))
                .map(|s| self.probe_serving(s));
            for probe in futures_util::future::join_all(probes)
                .await
                .into_iter()
                .flatten()
            {
                if let Err(e) = self.store.add_probe(&probe) {
                    tracing::warn!(env = %probe.environment, error = %e, "cannot record a probe");
                }
            }
            rounds += 1;
            if only.is_none() && rounds % 100 == 1 {
                let before = (chrono::Utc::now() - KEEP)
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
                if let Err(e) = self.store.prune_probes(&before) {
                    tracing::warn!(error = %e, "cannot prune old probes");
                }
            }
        }
    }

    /// One probe of what `state` serves: every health path must answer `expect_status`.
    /// `None` when the environment was never deployed; a failed probe when nothing runs.
    async fn probe_serving(&self, state: &Arc<EnvState>) -> Option<Probe> {
        let env = &state.env.name;
        let port = match state.active.lock().await.as_ref() {
            Some(a) if a.instance.exited().is_none() => Some(a.instance.port),
            _ => None,
        };
        let mut probe = Probe {
            environment: env.clone(),
            deployment_id: None,
            at: crate::store::now(),
            ok: false,
            response_ms: 0.0,
            detail: None,
        };
        let Some(port) = port else {
            self.store.last_succeeded(env).ok()??;
            probe.detail = Some("no instance is running".into());
            return Some(probe);
        };
        let health = &self.config.health;
        let client = crate::health::client();
        let mut failures = Vec::new();
        let mut took = Duration::ZERO;
        for path in &health.paths {
            let p = crate::health::probe(&client, port, path, health.timeout.min(MAX_PROBE)).await;
            took = took.max(p.elapsed);
            match p.outcome {
                Ok(code) if code == health.expect_status => {}
                Ok(code) => failures.push(format!("{path} answered {code}")),
                Err(e) => failures.push(format!("{path}: {e}")),
            }
        }
        probe.ok = failures.is_empty();
        probe.response_ms = took.as_secs_f64() * 1000.0;
        probe.detail = (!failures.is_empty()).then(|| failures.join("; "));
        Some(probe)
    }
}

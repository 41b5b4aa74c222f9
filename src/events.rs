//! Events: every deployment and step transition, and every health probe, as it happens.
//!
//! The store publishes a transition right after committing it, so a subscriber never sees an
//! event the database does not hold. Subscribers (the SSE stream, notifications, metrics)
//! each get a `tokio::sync::broadcast` receiver; one that falls behind misses events (and is
//! told how many) rather than slowing deployments down.

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::lifecycle::{DeploymentState, StepState};

/// How many events a slow subscriber may fall behind before it misses some.
const CAPACITY: usize = 1024;

/// One thing that happened.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A deployment was created or changed state.
    Deployment {
        deployment: i64,
        environment: String,
        kind: String,
        state: DeploymentState,
        reason: Option<String>,
        at: String,
    },
    /// A step started (`running`), reported progress (`running` with output) or finished.
    Step {
        deployment: i64,
        environment: String,
        step: String,
        state: StepState,
        started_at: String,
        finished_at: Option<String>,
        /// The last lines of the step's output (finished steps and progress reports).
        output: Option<String>,
    },
    /// One health probe of an environment's serving instance: the post-deploy monitor's
    /// (with its deployment) or the background watcher's.
    Probe {
        deployment: Option<i64>,
        environment: String,
        ok: bool,
        response_ms: f64,
        at: String,
    },
    /// A host of an environment with `servers` changed state (see docs/servers.md): `ok`
    /// with the release it serves, `unknown` with the release it must serve, or `failed`.
    Host {
        environment: String,
        host: String,
        state: crate::store::HostState,
        release: Option<String>,
        detail: Option<String>,
        at: String,
    },
    /// Maintenance was turned on (with the message visitors see) or off for an environment.
    Maintenance {
        environment: String,
        on: bool,
        message: Option<String>,
        by: String,
        at: String,
    },
}

impl Event {
    /// The SSE event name (`deployment`, `step`, `probe`, `host`, `maintenance`).
    pub fn name(&self) -> &'static str {
        match self {
            Event::Deployment { .. } => "deployment",
            Event::Step { .. } => "step",
            Event::Probe { .. } => "probe",
            Event::Host { .. } => "host",
            Event::Maintenance { .. } => "maintenance",
        }
    }
}

/// The broadcast channel events go out on; cheap to clone.
#[derive(Clone)]
pub struct Bus {
    tx: broadcast::Sender<Event>,
}

impl Default for Bus {
    fn default() -> Self {
        Bus {
            tx: broadcast::channel(CAPACITY).0,
        }
    }
}

impl Bus {
    /// Sends `event` to every current subscriber (none is fine).
    pub fn publish(&self, event: Event) {
        let _ = self.tx.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}

/// The last `max` bytes of `output`, cut at a line start where possible.
pub fn tail(output: &str, max: usize) -> String {
    if output.len() <= max {
        return output.to_string();
    }
    let mut start = output.len() - max;
    while !output.is_char_boundary(start) {
        start += 1;
    }
    let cut = &output[start..];
    match cut.find('\n') {
        Some(nl) if nl + 1 < cut.len() => cut[nl + 1..].to_string(),
        _ => cut.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_whole_lines_and_char_boundaries() {
        assert_eq!(tail("short", 100), "short");
        assert_eq!(tail("one\ntwo\nthree\n", 9), "three\n");
        let s = "ééééé";
        let t = tail(s, 3);
        assert!(s.ends_with(&t) && t.len() <= 3);
    }

    #[tokio::test]
    async fn subscribers_see_events_in_order() {
        let bus = Bus::default();
        let mut rx = bus.subscribe();
        for ok in [true, false] {
            bus.publish(Event::Probe {
                deployment: Some(1),
                environment: "staging".into(),
                ok,
                response_ms: 1.0,
                at: "t".into(),
            });
        }
        let first = rx.recv().await.unwrap();
        let second = rx.recv().await.unwrap();
        assert!(matches!(first, Event::Probe { ok: true, .. }));
        assert!(matches!(second, Event::Probe { ok: false, .. }));
        assert_eq!(first.name(), "probe");
    }
}

//! `GET /api/events`: every deployment and step transition and monitor probe, live, as
//! server-sent events (`event: deployment|step|probe`, `data:` the JSON of
//! [`crate::events::Event`]). `?environment=` and `?deployment=` narrow the stream. A client
//! too slow to keep up gets an `event: lagged` saying how many it missed. The stream ends when
//! ferry stops.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::Stream;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;

use super::{ApiResult, AppState};
use crate::events::Event;

#[derive(Deserialize)]
pub struct EventsQuery {
    environment: Option<String>,
    deployment: Option<i64>,
}

impl EventsQuery {
    fn wants(&self, e: &Event) -> bool {
        let (env, id) = match e {
            Event::Deployment {
                environment,
                deployment,
                ..
            }
            | Event::Step {
                environment,
                deployment,
                ..
            } => (environment, Some(*deployment)),
            Event::Probe {
                environment,
                deployment,
                ..
            } => (environment, *deployment),
        };
        self.environment.as_ref().is_none_or(|want| want == env)
            && self.deployment.is_none_or(|want| Some(want) == id)
    }
}

pub async fn events(
    State(app): State<AppState>,
    Query(q): Query<EventsQuery>,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    if let Some(env) = &q.environment {
        app.engine.env(env)?;
    }
    let rx = app.engine.store.events().subscribe();
    let shutdown = app.shutdown.clone();
    let stream =
        futures_util::stream::unfold((rx, shutdown, q), |(mut rx, mut shutdown, q)| async move {
            loop {
                let next = tokio::select! {
                    e = rx.recv() => e,
                    () = crate::proxy::stopped(&mut shutdown) => return None,
                };
                let sse = match next {
                    Ok(e) if q.wants(&e) => SseEvent::default()
                        .event(e.name())
                        .json_data(&e)
                        .unwrap_or_else(|_| SseEvent::default().comment("unencodable event")),
                    Ok(_) => continue,
                    Err(RecvError::Lagged(n)) => SseEvent::default()
                        .event("lagged")
                        .data(format!("{{\"missed\":{n}}}")),
                    Err(RecvError::Closed) => return None,
                };
                return Some((Ok(sse), (rx, shutdown, q)));
            }
        });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

//! `GET /api/events`: every deployment and step transition and monitor probe, live, as
//! server-sent events (`event: deployment|step|probe|host`, `data:` the JSON of
//! [`crate::events::Event`]). `?environment=` and `?deployment=` narrow the stream. A client
//! too slow to keep up gets an `event: lagged` saying how many it missed. The stream ends when
//! ferry stops. Streams are capped (`[server] max_streams`, with followed logs): past it, 503.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::Stream;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;

use axum::http::StatusCode;
use tokio::sync::OwnedSemaphorePermit;

use super::{ApiError, ApiResult, AppState};
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
            Event::Host { environment, .. } | Event::Maintenance { environment, .. } => {
                (environment, None)
            }
        };
        self.environment.as_ref().is_none_or(|want| want == env)
            && self.deployment.is_none_or(|want| Some(want) == id)
    }
}

/// A place among the streams open at once (`[server] max_streams`, event streams and
/// followed logs together), held until the stream ends; 503 when none is free.
pub(super) fn stream_permit(app: &AppState) -> ApiResult<OwnedSemaphorePermit> {
    app.streams.clone().try_acquire_owned().map_err(|_| {
        app.metrics
            .streams_refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_streams",
            format!(
                "{} event streams and followed logs are open, as many as [server] max_streams allows; try again later",
                app.engine.config.server.max_streams
            ),
        )
    })
}

pub async fn events(
    State(app): State<AppState>,
    Query(q): Query<EventsQuery>,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    if let Some(env) = &q.environment {
        app.engine.env(env)?;
    }
    let permit = stream_permit(&app)?;
    let rx = app.engine.store.events().subscribe();
    let shutdown = app.shutdown.clone();
    let stream = futures_util::stream::unfold(
        (rx, shutdown, q, permit),
        |(mut rx, mut shutdown, q, permit)| async move {
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
                return Some((Ok(sse), (rx, shutdown, q, permit)));
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

//! `GET /api/notifications` (the outbox) and `POST /api/notify/{name}/test`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiResult, Caller};
use crate::pipeline::Engine;
use crate::store::Notification;

#[derive(Debug, Deserialize)]
pub struct NotificationsQuery {
    /// One notifier's, by name.
    pub notifier: Option<String>,
    pub limit: Option<usize>,
}

/// `GET /api/notifications`: the newest deliveries, newest first (?notifier, ?limit).
pub async fn notifications(
    State(engine): State<Arc<Engine>>,
    Query(q): Query<NotificationsQuery>,
) -> ApiResult<Json<Vec<Notification>>> {
    if let Some(name) = &q.notifier {
        notifier(&engine, name)?;
    }
    Ok(Json(engine.store.latest_notifications(
        q.notifier.as_deref(),
        q.limit.unwrap_or(50).min(1000),
    )?))
}

/// What `POST /api/notify/{name}/test` answers (200 whether or not the notifier took it).
#[derive(Debug, Serialize, Deserialize)]
pub struct TestAnswer {
    pub notifier: String,
    pub kind: String,
    /// Where it went: a host, a repository or the recipients; never a secret.
    pub destination: String,
    /// The receiver took it.
    pub ok: bool,
    /// Its answer.
    pub answer: Option<String>,
    /// Why it was not delivered.
    pub error: Option<String>,
    /// Whether trying again could help.
    pub retryable: bool,
    /// What a tracker returned (an issue's URL).
    pub link: Option<String>,
    /// The recorded delivery (event `test`).
    pub notification: Option<Notification>,
}

/// `POST /api/notify/{name}/test`: one attempt at a sample message, now.
pub async fn test(
    State(engine): State<Arc<Engine>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<TestAnswer>> {
    let n = notifier(&engine, &name)?.clone();
    let ctx = crate::notify::Ctx::new(engine.store.clone())
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e))?;
    let (row, result) = crate::notify::test(&ctx, &engine.config, &n, &caller.who()).await;
    let notification = match row {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::error!(notifier = %n.name, error = %e, "cannot record a test notification");
            None
        }
    };
    let (ok, answer, error, retryable, link) = match result {
        Ok(d) => (true, Some(d.answer), None, false, d.link),
        Err(f) => (
            false,
            None,
            Some(f.reason().to_string()),
            !matches!(f, crate::notify::Failure::Fatal(_)),
            None,
        ),
    };
    Ok(Json(TestAnswer {
        notifier: n.name.clone(),
        kind: n.kind.name().to_string(),
        destination: n.kind.destination(),
        ok,
        answer,
        error,
        retryable,
        link,
        notification,
    }))
}

fn notifier<'a>(engine: &'a Engine, name: &str) -> ApiResult<&'a crate::config::Notify> {
    engine
        .config
        .notify
        .iter()
        .find(|n| n.name == name)
        .ok_or_else(|| {
            let names: Vec<&str> = engine
                .config
                .notify
                .iter()
                .map(|n| n.name.as_str())
                .collect();
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                if names.is_empty() {
                    format!("no notifier \"{name}\": the config has no [[notify]]")
                } else {
                    format!("no notifier \"{name}\"; there are: {}", names.join(", "))
                },
            )
        })
}

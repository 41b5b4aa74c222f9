//! Routes for what people do besides deploying: approve, verify, promote, roll back, lock,
//! maintenance, commit checks, plan.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{ApiError, ApiResult, Caller, JsonBody, created, parse_id};
use crate::pipeline::{
    CheckReport, Engine, Mirror, Plan, RollbackPreview, RolloutAction, RolloutAnswer,
};
use crate::store::{Backup, Check, Deployment, LockHolder, Verification};

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct VerifyRequest {
    /// Defaults to the version running.
    pub version: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RollbackRequest {
    /// A release built for this environment (`<version>-<sha7>`, or a version naming one
    /// release other than the serving one); defaults to the previous good release.
    pub to: Option<String>,
    pub reason: String,
    #[serde(default)]
    pub restore_data: bool,
    /// Also run `[app] release` in the release rolled back to, before it starts.
    #[serde(default)]
    pub run_release: bool,
}

/// What `POST /api/environments/{env}/restart` takes (the body may be empty).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct RestartRequest {
    /// Why (a rotated secret, say); recorded with the restart.
    pub reason: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct LockRequest {
    pub reason: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct MaintenanceRequest {
    pub on: bool,
    pub message: Option<String>,
}

/// What `POST /api/environments/{env}/rollout` takes.
#[derive(Debug, Serialize, Deserialize)]
pub struct RolloutRequest {
    pub action: RolloutAction,
    /// With `promote`: straight to 100% instead of the next step.
    #[serde(default)]
    pub full: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PromoteRequest {
    pub tag: String,
    pub to: Option<String>,
    /// Override freeze windows; needs `reason`.
    #[serde(default)]
    pub force: bool,
    pub reason: Option<String>,
    /// Queue this long behind a deployment or a lock instead of being refused (`"10m"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_lock: Option<String>,
}

pub async fn approve(
    State(engine): State<Arc<Engine>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Deployment>> {
    let id = parse_id(&id)?;
    Ok(Json(engine.approve(id, &caller.actor())?))
}

pub async fn verify(
    State(engine): State<Arc<Engine>>,
    caller: Caller,
    Path(env): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    // the body is optional: no version means the one running
    let req: VerifyRequest = if body.iter().all(u8::is_ascii_whitespace) {
        VerifyRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.to_string()))?
    };
    let v: Verification = engine
        .verify(&env, req.version.as_deref(), &caller.actor())
        .await?;
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

pub async fn verifications(
    State(engine): State<Arc<Engine>>,
    Query(q): Query<VerifyRequest>,
) -> ApiResult<Json<Vec<Verification>>> {
    Ok(Json(engine.store.verifications(q.version.as_deref())?))
}

pub async fn rollback(
    State(engine): State<Arc<Engine>>,
    caller: Caller,
    Path(env): Path<String>,
    JsonBody(req): JsonBody<RollbackRequest>,
) -> Response {
    if req.reason.trim().is_empty() {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "a rollback needs a reason: ferry rollback <env> --reason \"…\"",
        )
        .into_response();
    }
    let who = caller.actor();
    created(
        engine
            .request_rollback(
                &env,
                req.to.as_deref(),
                req.reason.trim(),
                req.restore_data,
                req.run_release,
                &who,
            )
            .await,
    )
}

/// `POST …/restart`: the serving release started again through the zero-downtime path.
pub async fn restart(
    State(engine): State<Arc<Engine>>,
    caller: Caller,
    Path(env): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let req: RestartRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RestartRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(req) => req,
            Err(e) => {
                return ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.to_string())
                    .into_response();
            }
        }
    };
    created(
        engine
            .request_restart(&env, req.reason.as_deref(), &caller.actor())
            .await,
    )
}

#[derive(Deserialize)]
pub struct RollbackQuery {
    to: Option<String>,
    #[serde(default)]
    restore_data: bool,
}

/// `GET …/rollback`: what a rollback would do (from, to, data), changing nothing.
pub async fn rollback_preview(
    State(engine): State<Arc<Engine>>,
    Path(env): Path<String>,
    Query(q): Query<RollbackQuery>,
) -> ApiResult<Json<RollbackPreview>> {
    let to = q.to.as_deref().map(str::trim).filter(|t| !t.is_empty());
    Ok(Json(
        engine.rollback_preview(&env, to, q.restore_data).await?,
    ))
}

pub async fn promote(
    State(engine): State<Arc<Engine>>,
    caller: Caller,
    JsonBody(req): JsonBody<PromoteRequest>,
) -> Response {
    let to = match engine.promotion_target(&req.tag, req.to.as_deref()).await {
        Ok(to) => to,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let force = req.force.then(|| req.reason.as_deref().unwrap_or(""));
    let wait = match super::wait_lock(req.wait_lock.as_deref()) {
        Ok(wait) => wait,
        Err(e) => return ApiError::from(e).into_response(),
    };
    created(engine.request_waiting(&to, &req.tag, &caller.actor(), force, wait))
}

pub async fn lock(
    State(engine): State<Arc<Engine>>,
    caller: Caller,
    Path(env): Path<String>,
    JsonBody(req): JsonBody<LockRequest>,
) -> ApiResult<Json<LockHolder>> {
    Ok(Json(engine.lock_env(&env, &caller.who(), &req.reason)?))
}

pub async fn unlock(
    State(engine): State<Arc<Engine>>,
    Path(env): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    engine.unlock_env(&env)?;
    Ok(Json(json!({"environment": env, "locked": false})))
}

pub async fn maintenance(
    State(engine): State<Arc<Engine>>,
    caller: Caller,
    Path(env): Path<String>,
    JsonBody(req): JsonBody<MaintenanceRequest>,
) -> ApiResult<Json<serde_json::Value>> {
    let message = engine.set_maintenance(&env, req.on, req.message.as_deref(), &caller.who())?;
    Ok(Json(
        json!({"environment": env, "maintenance": req.on, "message": message}),
    ))
}

/// `POST /api/environments/{env}/rollout`: promote, pause or abort the rollout under way.
pub async fn rollout(
    State(engine): State<Arc<Engine>>,
    caller: Caller,
    Path(env): Path<String>,
    JsonBody(req): JsonBody<RolloutRequest>,
) -> ApiResult<Json<RolloutAnswer>> {
    if req.full && req.action != RolloutAction::Promote {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            "`full` goes with the promote action only",
        ));
    }
    Ok(Json(
        engine
            .rollout_action(&env, req.action, req.full, &caller.who())
            .await?,
    ))
}

/// `POST /api/environments/{env}/accessories/{action}`: compose's output.
pub async fn accessories(
    State(engine): State<Arc<Engine>>,
    Path((env, action)): Path<(String, String)>,
) -> ApiResult<Json<serde_json::Value>> {
    let parsed = match action.as_str() {
        "up" => crate::pipeline::AccessoryAction::Up,
        "down" => crate::pipeline::AccessoryAction::Down,
        "restart" => crate::pipeline::AccessoryAction::Restart,
        "logs" => crate::pipeline::AccessoryAction::Logs,
        other => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("unknown accessories action \"{other}\": use up, down, restart or logs"),
            ));
        }
    };
    let output = engine.accessories(&env, parsed).await?;
    Ok(Json(
        json!({"environment": env, "action": action, "output": output}),
    ))
}

#[derive(Deserialize)]
pub struct PlanQuery {
    #[serde(rename = "ref")]
    git_ref: Option<String>,
    /// The reason a `--force` would give.
    force_reason: Option<String>,
}

pub async fn plan(
    State(engine): State<Arc<Engine>>,
    Path(env): Path<String>,
    Query(q): Query<PlanQuery>,
) -> ApiResult<Json<Plan>> {
    let Some(git_ref) = q.git_ref else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "say what to plan: ?ref=<tag, branch or commit>",
        ));
    };
    Ok(Json(
        engine
            .plan(&env, &git_ref, q.force_reason.as_deref())
            .await?,
    ))
}

/// `POST /api/mirror/fetch`: a mutation (it needs a token), at most one fetch per
/// [`crate::pipeline::FETCH_INTERVAL`].
pub async fn fetch_mirror(State(engine): State<Arc<Engine>>) -> ApiResult<Json<Mirror>> {
    Ok(Json(engine.fetch_mirror().await?))
}

pub async fn backups(
    State(engine): State<Arc<Engine>>,
    Path(env): Path<String>,
) -> ApiResult<Json<Vec<Backup>>> {
    engine.env(&env)?;
    Ok(Json(engine.store.backups(&env, None, None)?))
}

pub async fn report_check(
    State(engine): State<Arc<Engine>>,
    caller: Caller,
    Path(sha): Path<String>,
    JsonBody(report): JsonBody<CheckReport>,
) -> ApiResult<Response> {
    let check = engine.report_check(&sha, &report, &caller.who())?;
    Ok((StatusCode::CREATED, Json(check)).into_response())
}

pub async fn checks(
    State(engine): State<Arc<Engine>>,
    Path(sha): Path<String>,
) -> ApiResult<Json<Vec<Check>>> {
    crate::pipeline::check_sha(&sha)?;
    Ok(Json(engine.store.checks(&sha.to_ascii_lowercase())?))
}

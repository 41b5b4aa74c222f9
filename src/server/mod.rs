//! Server: the HTTP API (`[server] listen`) the CLI talks to.
//!
//! JSON in and out; errors are `{"error": {"code", "message"}}` with a fitting status, mapped
//! in one place ([`ApiError`]).

pub mod actions;
mod apps;
mod dashboard;
pub mod exec;
mod guard;
pub mod hooks;
mod logs;
pub mod metrics;
pub mod notify;
mod openapi;
mod stream;

pub use apps::Apps;
pub use guard::{Caller, host_allowed};
pub use metrics::Metrics;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, FromRef, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::pipeline::{Engine, EngineError};
use crate::store::{Deployment, Step};

/// An API error: a status, a stable code and a message for people.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> ApiError {
        let (status, code) = match &e {
            EngineError::UnknownEnvironment { .. } => {
                (StatusCode::NOT_FOUND, "unknown_environment")
            }
            EngineError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            EngineError::BadRef(_) => (StatusCode::BAD_REQUEST, "bad_ref"),
            EngineError::Busy { .. } => (StatusCode::CONFLICT, "environment_busy"),
            EngineError::NoRollbackTarget(_) => (StatusCode::CONFLICT, "no_rollback_target"),
            EngineError::Invalid(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            EngineError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            EngineError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            EngineError::Storage(_) => (StatusCode::INSUFFICIENT_STORAGE, "insufficient_storage"),
            EngineError::Store(_)
            | EngineError::Bind { .. }
            | EngineError::Log { .. }
            | EngineError::Sandbox(_) => {
                tracing::error!(error = %e, "internal error");
                return ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "ferry hit an internal error; see its log",
                );
            }
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> ApiError {
        EngineError::from(e).into()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// A deployment with its steps, as `GET /api/deployments/{id}` answers.
#[derive(Debug, Serialize, Deserialize)]
pub struct DeploymentDetail {
    pub deployment: Deployment,
    pub steps: Vec<Step>,
    /// The notifications about it (`[[notify]]`), oldest first.
    #[serde(default)]
    pub notifications: Vec<crate::store::Notification>,
}

/// What `POST /api/deployments` takes.
#[derive(Debug, Serialize, Deserialize)]
pub struct DeployRequest {
    pub environment: String,
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// Who asked (the CLI sends the user's name); defaults to "api".
    pub triggered_by: Option<String>,
    /// Override freeze windows; needs `reason`.
    #[serde(default)]
    pub force: bool,
    pub reason: Option<String>,
    /// Queue this long behind a deployment or a lock instead of being refused (`"10m"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_lock: Option<String>,
}

/// `wait_lock` of a request, parsed: a bad one is a 400.
pub(crate) fn wait_lock(text: Option<&str>) -> Result<Option<std::time::Duration>, EngineError> {
    text.map(|t| {
        crate::config::parse_duration(t)
            .map_err(|e| EngineError::Invalid(format!("wait_lock: {e}")))
    })
    .transpose()
}

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub engine: Arc<Engine>,
    pub metrics: Arc<Metrics>,
    /// Flips to true when ferry stops; long-lived streams end then.
    pub shutdown: watch::Receiver<bool>,
    pub hooks: Arc<hooks::Hooks>,
    /// Event streams and followed logs open at once ([`crate::config::Server::max_streams`]).
    pub streams: Arc<tokio::sync::Semaphore>,
    /// How the dashboard's session cookie is written; `secure` once the dashboard is served
    /// over TLS (it is not yet).
    pub session_cookie: crate::auth::SessionCookie,
    /// Commits between two shas, as the dashboard lists them (they never change).
    commits: Arc<std::sync::Mutex<CommitCache>>,
    /// Every app's store, when the serve hosts several: a dashboard sign-in opens its
    /// session in each whose tokens include the one given. Empty: this app's alone.
    pub peer_stores: Vec<crate::store::Store>,
}

impl AppState {
    /// The stores a dashboard sign-in (and sign-out) acts on.
    pub fn session_stores(&self) -> Vec<crate::store::Store> {
        if self.peer_stores.is_empty() {
            vec![self.engine.store.clone()]
        } else {
            self.peer_stores.clone()
        }
    }
}

type CommitCache =
    std::collections::HashMap<(Option<String>, String), Arc<(Vec<crate::release::Commit>, bool)>>;

impl AppState {
    /// Fails when `[webhooks]` names a variable that is not set.
    pub fn new(engine: Arc<Engine>, shutdown: watch::Receiver<bool>) -> Result<AppState, String> {
        let streams = Arc::new(tokio::sync::Semaphore::new(
            engine.config.server.max_streams,
        ));
        Ok(AppState {
            hooks: Arc::new(hooks::Hooks::new(&engine.config)?),
            engine,
            metrics: Arc::default(),
            session_cookie: crate::auth::SessionCookie::default(),
            streams,
            commits: Arc::default(),
            peer_stores: Vec::new(),
            shutdown,
        })
    }
}

impl FromRef<AppState> for Arc<Engine> {
    fn from_ref(app: &AppState) -> Arc<Engine> {
        app.engine.clone()
    }
}

/// Declares the routes once: the router is built from this table and so is the OpenAPI
/// document (`GET /api/openapi.json`), so the document cannot miss a route.
macro_rules! routes {
    ($( $method:ident $path:literal => $handler:expr, $tag:literal, $summary:literal; )*) => {
        /// Every route: method, path, tag and summary.
        pub const ROUTES: &[(&str, &str, &str, &str)] =
            &[ $( (stringify!($method), $path, $tag, $summary), )* ];

        fn add_routes(router: Router<AppState>) -> Router<AppState> {
            router $( .route($path, axum::routing::$method($handler)) )*
        }
    };
}

routes! {
    get "/health" => health, "ferry", "ferry itself: the store answers, every proxy accepts connections and has an instance answering once its environment has a release";
    get "/metrics" => metrics::metrics, "ferry", "Prometheus metrics";
    get "/api/openapi.json" => openapi::document, "ferry", "this document";
    get "/api/events" => stream::events, "events", "live server-sent events: deployment and step transitions, monitor probes (?environment, ?deployment)";
    get "/api/environments" => environments, "environments", "every environment with its version and health";
    get "/api/environments/{env}" => environment, "environments", "one environment";
    get "/api/environments/{env}/version" => version, "environments", "the version an environment serves";
    get "/api/environments/{env}/deployments" => env_history, "deployments", "an environment's deployments, newest first (?limit)";
    get "/api/environments/{env}/logs" => logs::logs, "environments", "the app log's tail (?n, ?follow)";
    get "/api/environments/{env}/plan" => actions::plan, "deployments", "the gates and steps a deploy of ?ref would meet, in the mirror as last fetched; changes nothing";
    post "/api/mirror/fetch" => actions::fetch_mirror, "deployments", "fetch the repository into ferry's mirror (at most once per 10 s)";
    get "/api/environments/{env}/backups" => actions::backups, "environments", "data backups taken before deploys";
    post "/api/environments/{env}/verify" => actions::verify, "promotion", "sign off the version running (or the one named)";
    get "/api/environments/{env}/rollback" => actions::rollback_preview, "deployments", "what a rollback (?to, ?restore_data) would do: from, to, data, the confirmation word; changes nothing";
    post "/api/environments/{env}/rollback" => actions::rollback, "deployments", "roll back to the previous good release or to a release by name";
    post "/api/environments/{env}/exec" => exec::exec, "environments", "run a command in the serving release's environment over an upgraded connection (Upgrade: ferry-exec; stdin, stdout, stderr, window size and exit status in frames); audited";
    post "/api/environments/{env}/restart" => actions::restart, "deployments", "start the serving release again: new instance, health, switch, drain (no rebuild)";
    post "/api/environments/{env}/lock" => actions::lock, "environments", "lock an environment against deploys";
    delete "/api/environments/{env}/lock" => actions::unlock, "environments", "remove a manual lock";
    post "/api/environments/{env}/maintenance" => actions::maintenance, "environments", "turn the maintenance page on or off";
    post "/api/environments/{env}/rollout" => actions::rollout, "deployments", "act on the canary rollout under way: promote (to the next step, or with full to 100%), pause or abort; answers what the rollout did";
    post "/api/environments/{env}/accessories/{action}" => actions::accessories, "environments", "a compose app's accessories: up, down, restart or logs";
    get "/api/deployments" => history, "deployments", "deployments, newest first (?environment, ?limit)";
    post "/api/deployments" => deploy, "deployments", "deploy a ref to an environment";
    get "/api/deployments/{id}" => deployment, "deployments", "one deployment with its steps";
    post "/api/deployments/{id}/approve" => actions::approve, "promotion", "approve a deployment waiting for approval";
    get "/api/verifications" => actions::verifications, "promotion", "QA sign-offs (?version)";
    post "/api/promote" => actions::promote, "promotion", "deploy a verified tag to the environment that requires it";
    get "/api/commits/{sha}/checks" => actions::checks, "promotion", "CI checks reported for a commit";
    post "/api/commits/{sha}/checks" => actions::report_check, "promotion", "report a CI check for a commit";
    get "/api/deliveries" => deliveries, "webhooks", "accepted webhook deliveries and what each triggered";
    get "/api/notifications" => notify::notifications, "notifications", "notifications sent (or being sent, or given up), newest first (?notifier, ?limit)";
    post "/api/notify/{name}/test" => notify::test, "notifications", "send a sample message through one notifier now; answers what it answered (recorded with the event test)";
    get "/api/audit" => audit, "ferry", "API mutations with the token that made each";
    post "/hooks/github" => hooks::github, "webhooks", "GitHub webhook (X-Hub-Signature-256): ping, push";
    post "/hooks/gitlab" => hooks::gitlab, "webhooks", "GitLab webhook (X-Gitlab-Token): Push Hook, Tag Push Hook";
}

/// The router over `app`.
pub fn router(app: AppState) -> Router {
    add_routes(Router::new())
        .merge(dashboard::routes(app.clone()))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            guard::guard,
        ))
        .layer(axum::middleware::from_fn(refuse_oversized))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            guard::check_host,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(app)
}

/// The largest request body ferry reads (API, dashboard forms); webhook deliveries may be
/// larger ([`hooks::MAX_BODY`]).
pub const MAX_BODY: usize = 1024 * 1024;

/// A body declared larger than [`MAX_BODY`] (or [`hooks::MAX_BODY`]) is refused from its headers, before any of it
/// is read (a body without a declared length is cut off at the limit as it is read).
async fn refuse_oversized(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // webhook deliveries may be as large as GitHub sends (they read their own bodies)
    let max = if req.uri().path().starts_with("/hooks/") {
        hooks::MAX_BODY
    } else {
        MAX_BODY
    };
    if declared.is_some_and(|n| n > max as u64) {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("a request body may be at most {max} bytes"),
        )
        .into_response();
    }
    next.run(req).await
}

/// Serves the API of every app in `apps` on `listener` until `shutdown` says stop: HTTP/1.1
/// under `[server]`'s connection limits, in a budget of its own ([`crate::listener`]); each
/// request carries its peer's address (`ConnectInfo<SocketAddr>`) and goes to its app
/// ([`Apps::dispatch`]).
pub async fn serve(apps: Apps, listener: TcpListener) -> std::io::Result<()> {
    let first = apps.first();
    let gate = crate::listener::Gate::new(
        "api",
        first.engine.config.server.connections,
        first.metrics.connections.clone(),
    );
    let shutdown = first.shutdown.clone();
    let service = move |peer: std::net::SocketAddr| {
        let apps = apps.clone();
        hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let mut req = req.map(axum::body::Body::new);
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            apps.clone().dispatch(req)
        })
    };
    crate::listener::serve(listener, gate, service, shutdown).await;
    Ok(())
}

/// `GET /health`: ferry itself. 200 when the store answers and every environment's proxy
/// accepts connections and, once the environment has a release, has an instance that answers
/// behind it (so a restarted ferry is not reported up while its apps are still booting); 503
/// naming what is wrong otherwise.
async fn health(State(engine): State<Arc<Engine>>) -> Response {
    let (ok, body) = health_of(&engine).await;
    if ok {
        Json(body).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

/// One app's health, as `/health` reports it: whether it is ok, and the body.
pub(crate) async fn health_of(engine: &Arc<Engine>) -> (bool, serde_json::Value) {
    let store = match engine.store.history(None, 1) {
        Ok(_) => "ok",
        Err(e) => {
            tracing::error!(error = %e, "store check failed");
            "unreachable"
        }
    };
    let reachable = |addr: std::net::SocketAddr| async move {
        tokio::time::timeout(
            std::time::Duration::from_secs(1),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        .is_ok_and(|c| c.is_ok())
    };
    let checks = engine.environments().map(|state| {
        let engine = engine.clone();
        async move {
            let name = state.env.name.clone();
            if !state.env.servers.is_empty() {
                // it runs on its hosts: `ferry status` shows each
                return (name, "up");
            }
            if let Some(listen) = state.env.listen
                && !reachable(listen).await
            {
                return (name, "down");
            }
            let deployed = engine.store.last_succeeded(&name).ok().flatten().is_some();
            let answering = match state.serving_addr().await {
                Some(addr) => reachable(addr).await,
                None => false,
            };
            let status = if !deployed || answering || state.proxy.maintenance().is_some() {
                "up"
            } else {
                "no instance answering"
            };
            (name, status)
        }
    });
    let proxies: std::collections::BTreeMap<String, &str> = futures_util::future::join_all(checks)
        .await
        .into_iter()
        .collect();
    let ok = store == "ok" && proxies.values().all(|p| *p == "up");
    let body = json!({
        "status": if ok { "ok" } else { "degraded" },
        "store": store,
        "proxies": proxies,
    });
    (ok, body)
}

async fn environments(
    State(engine): State<Arc<Engine>>,
) -> ApiResult<Json<Vec<crate::pipeline::EnvStatus>>> {
    let names: Vec<String> = engine.environments().map(|e| e.env.name.clone()).collect();
    let all = futures_util::future::join_all(names.iter().map(|n| engine.status(n))).await;
    Ok(Json(all.into_iter().collect::<Result<_, _>>()?))
}

async fn environment(
    State(engine): State<Arc<Engine>>,
    Path(env): Path<String>,
) -> ApiResult<Json<crate::pipeline::EnvStatus>> {
    Ok(Json(engine.status(&env).await?))
}

async fn version(
    State(engine): State<Arc<Engine>>,
    Path(env): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let s = engine.status(&env).await?;
    // named as the app's own variables name them: ENVIRONMENT, FERRY_SLOT, DEPLOYED_AT
    let group = engine.env(&env)?.env.group.clone();
    Ok(Json(json!({
        "environment": group,
        "slot": s.environment,
        "ref": s.git_ref,
        "commit_sha": s.commit_sha,
        "deployed_at": s.live_since.or(s.deployed_at),
    })))
}

#[derive(Deserialize)]
struct HistoryQuery {
    environment: Option<String>,
    limit: Option<usize>,
}

async fn history(
    State(engine): State<Arc<Engine>>,
    Query(q): Query<HistoryQuery>,
) -> ApiResult<Json<Vec<Deployment>>> {
    if let Some(env) = &q.environment {
        engine.env(env)?;
    }
    let limit = q.limit.unwrap_or(50).min(1000);
    Ok(Json(engine.store.history(q.environment.as_deref(), limit)?))
}

#[derive(Deserialize)]
struct LimitQuery {
    limit: Option<usize>,
}

/// `GET /api/deliveries`: accepted webhook deliveries and what each triggered, newest first.
async fn deliveries(
    State(engine): State<Arc<Engine>>,
    Query(q): Query<LimitQuery>,
) -> ApiResult<Json<Vec<crate::store::Delivery>>> {
    Ok(Json(
        engine.store.deliveries(q.limit.unwrap_or(50).min(1000))?,
    ))
}

/// `GET /api/audit`: API mutations with the token that made each, newest first.
async fn audit(
    State(engine): State<Arc<Engine>>,
    Query(q): Query<LimitQuery>,
) -> ApiResult<Json<Vec<crate::store::AuditEntry>>> {
    Ok(Json(engine.store.audit(q.limit.unwrap_or(50).min(1000))?))
}

async fn env_history(
    State(engine): State<Arc<Engine>>,
    Path(env): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> ApiResult<Json<Vec<Deployment>>> {
    engine.env(&env)?;
    let limit = q.limit.unwrap_or(50).min(1000);
    Ok(Json(engine.store.history(Some(&env), limit)?))
}

async fn deploy(
    State(engine): State<Arc<Engine>>,
    caller: Caller,
    JsonBody(req): JsonBody<DeployRequest>,
) -> Response {
    let who = caller.as_user(req.triggered_by.as_deref()).actor();
    let force = req.force.then(|| req.reason.as_deref().unwrap_or(""));
    let wait = match wait_lock(req.wait_lock.as_deref()) {
        Ok(wait) => wait,
        Err(e) => return ApiError::from(e).into_response(),
    };
    created(engine.request_waiting(&req.environment, &req.git_ref, &who, force, wait))
}

/// A new deployment as `201 Created`; a refusal on the spot carries the recorded id.
fn created(result: Result<Deployment, EngineError>) -> Response {
    match result {
        Ok(d) => (StatusCode::CREATED, Json(d)).into_response(),
        Err(EngineError::Busy { message, deployment }) => (
            StatusCode::CONFLICT,
            Json(json!({"error": {"code": "environment_busy", "message": message}, "deployment_id": deployment})),
        )
            .into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// A JSON body whose rejection is an [`ApiError`] (400 with the parser's words).
pub struct JsonBody<T>(pub T);

impl<S, T> axum::extract::FromRequest<S> for JsonBody<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(JsonBody(v)),
            Err(e) => Err(ApiError::new(e.status(), "bad_request", e.body_text())),
        }
    }
}

async fn deployment(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<String>,
) -> ApiResult<Json<DeploymentDetail>> {
    let id = parse_id(&id)?;
    let (deployment, steps) = engine.deployment(id)?;
    let notifications = engine.store.deployment_notifications(id)?;
    Ok(Json(DeploymentDetail {
        deployment,
        steps,
        notifications,
    }))
}

fn parse_id(id: &str) -> ApiResult<i64> {
    id.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_id",
            format!("\"{id}\" is not a deployment id"),
        )
    })
}

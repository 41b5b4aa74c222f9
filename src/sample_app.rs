//! The sample app that `ferry demo` and the tests deploy: `ferry sample-app`.
//!
//! It listens on `$PORT` and reads `app.conf` (`key = value` lines) from its working
//! directory, so each git tag of a sample repository can behave differently:
//! - `message`: what `/` answers before the version (default "hello");
//! - `health_status`: the status `/health` answers (default 200; a broken release uses 500);
//! - `exit_at_start`: `true` makes it exit with status 3 at once;
//! - `boot_ms`: wait this long before listening (a slow boot);
//! - `slow_ms`: `/slow` takes this long to answer (default 300).
//!
//! Routes: `/` (message, version, environment), `/health`, `/version` (JSON), `/slow`.
//! SIGTERM stops it after the requests in flight finish.

use std::collections::HashMap;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;

/// Reads `app.conf`; a missing file means defaults.
fn settings() -> HashMap<String, String> {
    std::fs::read_to_string("app.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        .collect()
}

pub async fn run() -> std::io::Result<()> {
    let conf = settings();
    let get_conf = |k: &str| conf.get(k).cloned();
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let version = var("APP_VERSION");
    let environment = var("ENVIRONMENT");
    let slot = var("FERRY_SLOT");
    let commit = var("COMMIT_SHA");
    println!(
        "sample app {version} starting in {slot} (pid {})",
        std::process::id()
    );
    if get_conf("exit_at_start").as_deref() == Some("true") {
        eprintln!("ERROR exit_at_start is set: exiting");
        std::process::exit(3);
    }
    if let Some(ms) = get_conf("boot_ms").and_then(|v| v.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let port: u16 = var("PORT")
        .parse()
        .map_err(|_| std::io::Error::other("PORT is not set to a port number"))?;
    let health = StatusCode::from_u16(
        get_conf("health_status")
            .and_then(|v| v.parse().ok())
            .unwrap_or(200),
    )
    .unwrap_or(StatusCode::OK);
    let message = get_conf("message").unwrap_or_else(|| "hello".into());
    let slow = Duration::from_millis(
        get_conf("slow_ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(300),
    );
    let index = format!("{message} from {version} ({environment}, {slot})\n");
    let version_json = serde_json::json!({
        "version": version, "commit": commit, "environment": environment,
        "slot": slot, "pid": std::process::id(),
    })
    .to_string();
    let app = Router::new()
        .route("/", get(move || async move { index }))
        .route(
            "/health",
            get(move || async move {
                (
                    health,
                    if health.is_success() {
                        "ok\n"
                    } else {
                        "unhealthy\n"
                    },
                )
            }),
        )
        .route(
            "/version",
            get(move || async move { ([("content-type", "application/json")], version_json) }),
        )
        .route(
            "/slow",
            get(move || async move {
                tokio::time::sleep(slow).await;
                "slow done\n"
            }),
        );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on 127.0.0.1:{port}");
    axum::serve(listener, app)
        .with_graceful_shutdown(crate::cli::wait_for_stop())
        .await?;
    println!("sample app {version} stopped");
    Ok(())
}

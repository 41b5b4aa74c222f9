//! The sample app that `ferry demo` and the tests deploy: `ferry sample-app`.
//!
//! It listens on `$PORT` and reads `app.conf` (`key = value` lines) from its working
//! directory, so each git tag of a sample repository can behave differently:
//! - `message`: what `/` answers before the version (default "hello");
//! - `health_status`: the status `/health` answers (default 200; a broken release uses 500);
//! - `exit_at_start`: `true` makes it exit with status 3 at once;
//! - `print_env`: the name of a variable it prints as `NAME=value` at start (its own words
//!   about its settings, as a misconfigured app would print them);
//! - `boot_ms`: wait this long before listening (a slow boot);
//! - `slow_ms`: `/slow` takes this long to answer (default 300).
//!
//! Faults that start a while after boot, for post-deploy monitoring:
//! - `fail_health_after_ms`: `/health` answers 500 from then on;
//! - `flaky_health`: `true` makes `/health` alternate between 200 and 500;
//! - `slow_health_after_ms` with `slow_health_ms`: `/health` takes that long from then on;
//! - `errors_after_ms`: prints an `ERROR` line every 20 ms from then on;
//! - `exit_after_ms`: exits with status 4 then.
//!
//! Faults of a broken app, for the fault-injection tests:
//! - `never_bind`: `true` makes it run without ever listening;
//! - `wrong_port`: `true` makes it listen on a port the system picks instead of `$PORT`;
//! - `ignore_sigterm`: `true` makes it ignore SIGTERM (only SIGKILL stops it);
//! - `log_flood_mb`: once listening, writes this many MiB of log lines as fast as it can.
//!
//! - `db`: a SQLite file (relative to the release, so usually a shared path) the app writes
//!   to all the time: each transaction adds the same number to tables `a` and `b`, so a
//!   consistent copy has as many rows in each. `/count` answers the row count of `a`.
//!
//! Routes: `/` (message, version, environment), `/health`, `/version` (JSON), `/slow`,
//! `/log?line=TEXT` (prints TEXT to stdout), `/headers` (the request's headers, one
//! `name: value` line each; every `?set_cookie=NAME=VALUE` is answered as a `Set-Cookie`).
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
    if let Some(name) = get_conf("print_env") {
        println!("{name}={}", var(&name));
    }
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
    let on = |key: &str| get_conf(key).as_deref() == Some("true");
    if on("never_bind") {
        println!("never_bind is set: not listening");
        std::future::pending::<()>().await;
    }
    let port = if on("wrong_port") { 0 } else { port };
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
    let after = |key: &str| {
        get_conf(key)
            .and_then(|v| v.parse::<u64>().ok())
            .map(|ms| std::time::Instant::now() + Duration::from_millis(ms))
    };
    let fail_after = after("fail_health_after_ms");
    let slow_after = after("slow_health_after_ms");
    let slow_health = Duration::from_millis(
        get_conf("slow_health_ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(2000),
    );
    let flaky = get_conf("flaky_health").as_deref() == Some("true");
    let probes = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    if let Some(at) = after("errors_after_ms") {
        tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            loop {
                eprintln!("ERROR something went wrong in the new release");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }
    if let Some(at) = after("exit_after_ms") {
        tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            eprintln!("exit_after_ms reached: exiting");
            std::process::exit(4);
        });
    }
    let db = get_conf("db").map(std::path::PathBuf::from);
    if let Some(path) = db.clone() {
        std::thread::spawn(move || {
            if let Err(e) = write_forever(&path) {
                eprintln!("ERROR database writer stopped: {e}");
            }
        });
    }
    let version_json = serde_json::json!({
        "version": version, "commit": commit, "environment": environment,
        "slot": slot, "pid": std::process::id(), "deployed_at": var("DEPLOYED_AT"),
    })
    .to_string();
    let app = Router::new()
        .route("/", get(move || async move { index }))
        .route(
            "/health",
            get(move || async move {
                let now = std::time::Instant::now();
                if slow_after.is_some_and(|at| now >= at) {
                    tokio::time::sleep(slow_health).await;
                }
                let n = probes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let status = if fail_after.is_some_and(|at| now >= at) || (flaky && n % 2 == 1) {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    health
                };
                (
                    status,
                    if status.is_success() {
                        "ok\n"
                    } else {
                        "unhealthy\n"
                    },
                )
            }),
        )
        .route(
            "/count",
            get(move || async move {
                let count = db.as_deref().and_then(|p| {
                    let conn = rusqlite::Connection::open(p).ok()?;
                    conn.query_row("SELECT COUNT(*) FROM a", [], |r| r.get::<_, i64>(0))
                        .ok()
                });
                count.map_or_else(|| "none\n".to_string(), |c| format!("{c}\n"))
            }),
        )
        .route(
            "/version",
            get(move || async move { ([("content-type", "application/json")], version_json) }),
        )
        .route(
            "/log",
            get(
                |q: axum::extract::Query<HashMap<String, String>>| async move {
                    println!("{}", q.get("line").map_or("", String::as_str));
                    "logged\n"
                },
            ),
        )
        .route("/headers", get(echo_headers))
        .route(
            "/slow",
            get(move || async move {
                tokio::time::sleep(slow).await;
                "slow done\n"
            }),
        );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on {}", listener.local_addr()?);
    // only now: the flood holds stdout's lock throughout, and a `println!` waiting for it
    // would keep the app from ever serving
    if let Some(mib) = get_conf("log_flood_mb").and_then(|v| v.parse::<usize>().ok()) {
        std::thread::spawn(move || flood(mib));
    }
    let ignore_sigterm = on("ignore_sigterm");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            crate::cli::wait_for_stop().await;
            if ignore_sigterm {
                println!("ignore_sigterm is set: not stopping");
                std::future::pending::<()>().await;
            }
        })
        .await?;
    println!("sample app {version} stopped");
    Ok(())
}

/// `/headers`: what the app received, so tests can see what the proxy forwards.
async fn echo_headers(
    axum::extract::Query(query): axum::extract::Query<Vec<(String, String)>>,
    headers: axum::http::HeaderMap,
) -> impl axum::response::IntoResponse {
    let text: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {}\n", String::from_utf8_lossy(value.as_bytes())))
        .collect();
    let set: Vec<(&'static str, String)> = query
        .into_iter()
        .filter(|(k, _)| k == "set_cookie")
        .map(|(_, v)| ("set-cookie", v))
        .collect();
    (axum::response::AppendHeaders(set), text)
}

/// Writes `mib` MiB of numbered log lines to stdout.
fn flood(mib: usize) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let line = "x".repeat(100);
    let mut written = 0;
    let mut n = 0u64;
    while written < mib << 20 {
        match writeln!(out, "flood {n:>10} {line}") {
            Ok(()) => written += 118,
            Err(_) => return,
        }
        n += 1;
    }
    let _ = out.flush();
}

/// Adds a row to `a` and `b` in one transaction every millisecond or so, until the process
/// ends.
fn write_forever(path: &std::path::Path) -> rusqlite::Result<()> {
    let mut conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS a (n INTEGER); CREATE TABLE IF NOT EXISTS b (n INTEGER);",
    )?;
    let mut n: i64 = conn.query_row("SELECT COUNT(*) FROM a", [], |r| r.get(0))?;
    loop {
        let tx = conn.transaction()?;
        tx.execute("INSERT INTO a VALUES (?1)", [n])?;
        tx.execute("INSERT INTO b VALUES (?1)", [n])?;
        tx.commit()?;
        n += 1;
        std::thread::sleep(Duration::from_millis(1));
    }
}

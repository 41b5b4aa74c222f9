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
//! - `unhealthy_if_file`: a path (relative to the release, so usually a shared file): `/health`
//!   answers 500 while that file is there and not empty (one host of several made unhealthy);
//! - `slow_health_after_ms` with `slow_health_ms`: `/health` takes that long from then on;
//! - `errors_after_ms`: prints an `ERROR` line every 20 ms from then on;
//! - `exit_after_ms`: exits with status 4 then.
//!
//! Faults in the traffic, for the traffic rules (`/health` stays well):
//! - `error_percent`: `/` answers 500 to this many of every 100 requests (spread evenly);
//! - `delay_ms`: `/` takes this much longer to answer.
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
//! - `max_connections`: accept at most this many connections at once (an app server with a
//!   fixed number of workers); further clients wait in the listen backlog.
//!
//! Routes: `/` (message, version, environment), `/health`, `/version` (JSON), `/slow`,
//! `/log?line=TEXT` (prints TEXT to stdout), `/headers` (the request's headers, one
//! `name: value` line each; every `?set_cookie=NAME=VALUE` is answered as a `Set-Cookie`).
//!
//! Routes for the proxy's conformance tests (tests/proxy_http.rs, bench/conformance.py):
//! - `/request`: JSON of the request as the app received it: `method`, `uri` (the target as
//!   sent), `version`, `headers` (`[name, value]` pairs in order);
//! - `/seen`: JSON list of the targets of every request the app received (the last 10,000),
//!   so a test can tell that a request never reached it;
//! - `/conns`: JSON `open` (connections open now), `accepted` (since start), `max_open`;
//! - `/ws`: a WebSocket that first sends the app's version as text, then echoes every message;
//! - `/upgrade`: any other `Upgrade`: answers 101 with the same `Upgrade` and echoes raw bytes;
//! - `/sse?n=5&gap_ms=200`: `n` server-sent events `data: <i>`, each flushed, `gap_ms` apart;
//! - `/upload` (POST): streams the body through SHA-256: answers `<sha256 hex> <length>`;
//! - `/download?mb=100`: `mb` MiB (with a Content-Length) of 64 KiB blocks whose byte `j` is
//!   `j % 251` ([`download_block`]); with `&cut` the connection breaks off half-way;
//! - `/status/{code}`: answers that status (no body for 1xx, 204 and 304);
//! - `/hang`: never answers; `/abort`: drops the connection without an answer.
//!
//! SIGTERM stops it after the requests in flight finish.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use sha2::Digest;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

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
    let error_percent: u64 = get_conf("error_percent")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let delay = Duration::from_millis(
        get_conf("delay_ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    );
    let served = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
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
    let unhealthy_if = get_conf("unhealthy_if_file").map(std::path::PathBuf::from);
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
        .route(
            "/",
            get(move || async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                // evenly spread: request n fails when the running share falls behind
                let n = served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if (n + 1) * error_percent / 100 > n * error_percent / 100 {
                    return (StatusCode::INTERNAL_SERVER_ERROR, "failed\n".to_string());
                }
                (StatusCode::OK, index)
            }),
        )
        .route(
            "/health",
            get(move || async move {
                let now = std::time::Instant::now();
                if slow_after.is_some_and(|at| now >= at) {
                    tokio::time::sleep(slow_health).await;
                }
                let n = probes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let marked = unhealthy_if
                    .as_ref()
                    .is_some_and(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0));
                let status =
                    if fail_after.is_some_and(|at| now >= at) || (flaky && n % 2 == 1) || marked {
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
        )
        .merge(conformance_routes(version.clone()))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .layer(axum::middleware::from_fn(record_target));
    let max_connections = get_conf("max_connections").and_then(|v| v.parse::<usize>().ok());
    let listener = Counting {
        inner: tokio::net::TcpListener::bind(("127.0.0.1", port)).await?,
        slots: max_connections.map(|n| Arc::new(tokio::sync::Semaphore::new(n))),
    };
    println!(
        "listening on {}",
        axum::serve::Listener::local_addr(&listener)?
    );
    // only now: the flood holds stdout's lock throughout, and a `println!` waiting for it
    // would keep the app from ever serving
    if let Some(mib) = get_conf("log_flood_mb").and_then(|v| v.parse::<usize>().ok()) {
        std::thread::spawn(move || flood(mib));
    }
    let ignore_sigterm = on("ignore_sigterm");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            crate::shutdown::wait_for_stop().await;
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

/// The targets of the requests the app received, oldest first (the last [`SEEN_KEPT`]).
static SEEN: Mutex<VecDeque<String>> = Mutex::new(VecDeque::new());
const SEEN_KEPT: usize = 10_000;

/// Connections accepted and open, for `/conns`.
static OPEN: AtomicU64 = AtomicU64::new(0);
static ACCEPTED: AtomicU64 = AtomicU64::new(0);
static MAX_OPEN: AtomicU64 = AtomicU64::new(0);

/// Remembers every request's target for `/seen`.
async fn record_target(req: Request, next: axum::middleware::Next) -> Response {
    {
        let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() == SEEN_KEPT {
            seen.pop_front();
        }
        seen.push_back(req.uri().to_string());
    }
    next.run(req).await
}

/// The routes the proxy's conformance tests use (see the module's documentation).
fn conformance_routes(version: String) -> Router {
    Router::new()
        .route("/request", get(echo_request).post(echo_request))
        .route(
            "/seen",
            get(|| async {
                let seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
                axum::Json(seen.iter().cloned().collect::<Vec<_>>())
            }),
        )
        .route(
            "/conns",
            get(|| async {
                axum::Json(serde_json::json!({
                    "open": OPEN.load(Ordering::SeqCst),
                    "accepted": ACCEPTED.load(Ordering::SeqCst),
                    "max_open": MAX_OPEN.load(Ordering::SeqCst),
                }))
            }),
        )
        .route(
            "/ws",
            get(move |ws: WebSocketUpgrade| async move {
                ws.on_upgrade(move |socket| ws_echo(socket, version))
            }),
        )
        .route("/upgrade", get(raw_upgrade).post(raw_upgrade))
        .route("/sse", get(sse))
        .route("/upload", post(upload))
        .route("/download", get(download))
        .route("/status/{code}", get(status).post(status))
        .route("/hang", get(std::future::pending::<()>))
        .route("/abort", get(abort))
}

/// `/abort`: the panic ends this connection's task, so the client gets no answer at all.
async fn abort() -> &'static str {
    panic!("/abort: dropping the connection without an answer")
}

/// `/request`: the request as the app received it.
async fn echo_request(req: Request) -> impl IntoResponse {
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    axum::Json(serde_json::json!({
        "method": req.method().as_str(),
        "uri": req.uri().to_string(),
        "version": format!("{:?}", req.version()),
        "headers": headers,
    }))
}

/// `/ws`: sends `version`, then echoes every message until the client closes.
async fn ws_echo(mut socket: WebSocket, version: String) {
    if socket.send(Message::Text(version.into())).await.is_err() {
        return;
    }
    while let Some(Ok(message)) = socket.recv().await {
        let echo = match message {
            Message::Text(_) | Message::Binary(_) => message,
            Message::Close(_) => return,
            Message::Ping(_) | Message::Pong(_) => continue,
        };
        if socket.send(echo).await.is_err() {
            return;
        }
    }
}

/// `/upgrade`: accepts whatever protocol the client asks for and echoes raw bytes on it.
async fn raw_upgrade(mut req: Request) -> Response {
    let Some(protocol) = req.headers().get(header::UPGRADE).cloned() else {
        return (StatusCode::BAD_REQUEST, "no Upgrade header\n").into_response();
    };
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(upgraded) = upgrade.await {
            let (mut read, mut write) = tokio::io::split(hyper_util::rt::TokioIo::new(upgraded));
            let _ = tokio::io::copy(&mut read, &mut write).await;
        }
    });
    let mut resp = StatusCode::SWITCHING_PROTOCOLS.into_response();
    resp.headers_mut().insert(header::UPGRADE, protocol);
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    resp
}

/// `/sse?n=5&gap_ms=200`: `n` events, each sent as soon as it is made.
async fn sse(Query(q): Query<HashMap<String, String>>) -> impl IntoResponse {
    let number = |k: &str, default: u64| q.get(k).and_then(|v| v.parse().ok()).unwrap_or(default);
    let (n, gap) = (number("n", 5), Duration::from_millis(number("gap_ms", 200)));
    let events = futures_util::stream::unfold(0u64, move |i| async move {
        if i >= n {
            return None;
        }
        if i > 0 {
            tokio::time::sleep(gap).await;
        }
        let event = axum::response::sse::Event::default().data(i.to_string());
        Some((Ok::<_, std::convert::Infallible>(event), i + 1))
    });
    axum::response::sse::Sse::new(events)
}

/// `/upload`: the body's SHA-256 and length, read frame by frame (never held whole).
async fn upload(body: Body) -> Response {
    let mut hasher = sha2::Sha256::new();
    let mut length = 0u64;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bytes) => {
                hasher.update(&bytes);
                length += bytes.len() as u64;
            }
            Err(e) => {
                return (StatusCode::BAD_REQUEST, format!("body cut short: {e}\n")).into_response();
            }
        }
    }
    format!("{} {length}\n", hex::encode(hasher.finalize())).into_response()
}

/// One 64 KiB block of `/download`: byte `j` is `j % 251`.
pub fn download_block() -> Vec<u8> {
    (0..64 * 1024).map(|j| (j % 251) as u8).collect()
}

/// `/download?mb=N`: `N` MiB of [`download_block`]s, streamed.
async fn download(Query(q): Query<HashMap<String, String>>) -> Response {
    let mib: u64 = q.get("mb").and_then(|v| v.parse().ok()).unwrap_or(1);
    // `?cut`: the connection breaks off half-way through the promised length
    let cut = q.contains_key("cut").then_some(mib * 8);
    let block = bytes::Bytes::from(download_block());
    let blocks = futures_util::stream::iter(0..mib * 16).map(move |i| match cut {
        Some(at) if i >= at => Err(std::io::Error::other("cut off on purpose")),
        _ => Ok(block.clone()),
    });
    let mut resp = Body::from_stream(blocks).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(mib << 20));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    resp
}

/// `/status/{code}`: that status, with a short body where one is allowed.
async fn status(Path(code): Path<u16>) -> Response {
    let Ok(status) = StatusCode::from_u16(code) else {
        return (StatusCode::BAD_REQUEST, "not a status code\n").into_response();
    };
    if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return status.into_response();
    }
    (status, format!("status {code}\n")).into_response()
}

/// The app's listener: counts connections for `/conns` and, with `max_connections`, accepts
/// no more than that many at once.
struct Counting {
    inner: tokio::net::TcpListener,
    slots: Option<Arc<tokio::sync::Semaphore>>,
}

impl axum::serve::Listener for Counting {
    type Io = Counted;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Counted, std::net::SocketAddr) {
        let slot = match &self.slots {
            Some(slots) => slots.clone().acquire_owned().await.ok(),
            None => None,
        };
        let (stream, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        ACCEPTED.fetch_add(1, Ordering::SeqCst);
        let open = OPEN.fetch_add(1, Ordering::SeqCst) + 1;
        MAX_OPEN.fetch_max(open, Ordering::SeqCst);
        (
            Counted {
                stream,
                _slot: slot,
            },
            addr,
        )
    }

    fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.inner.local_addr()
    }
}

/// An accepted connection: counted open, and holding its slot, until dropped.
struct Counted {
    stream: tokio::net::TcpStream,
    _slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Ordering::SeqCst);
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
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

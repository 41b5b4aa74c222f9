//! One client connection: read a request head, check it, forward it with its body to a
//! pooled connection of the current instance, and pass the response back, streaming both
//! bodies in bounded buffers; then the next request on the same connection (keep-alive and
//! pipelining: bytes read past one request are the start of the next).
//!
//! The request body is sent while the response head is awaited, so an app that answers
//! before reading the whole body (a 413 of its own) is passed on at once. A failure on a
//! reused pooled connection before any byte of the response came back (the app closed it
//! as it went idle) is retried on another connection when the request has no body.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::sync::watch;

use super::http::{self, Chunked, Framing, Reject, Request, Response};
use super::upstream::{CheckoutError, Conn, Lease};
use super::{Proxy, access_log};
use crate::config::ProxySettings;
use crate::listener::Ticket;

/// Largest response head ferry takes from an app.
const MAX_RESPONSE_HEAD: usize = 64 << 10;

/// Buffer a body is read into, per read.
const CHUNK: usize = 64 << 10;

/// Attempts at a request without a body whose pooled connection turned out closed.
const ATTEMPTS: usize = 3;

pub(super) struct Ctx {
    pub proxy: Proxy,
    pub settings: ProxySettings,
    pub shutdown: watch::Receiver<bool>,
}

impl Ctx {
    /// The proxy is stopping: answers say `connection: close`.
    fn stopping(&self) -> bool {
        *self.shutdown.borrow()
    }
}

/// What one exchange came to, for the access log and the next request.
struct Outcome {
    status: u16,
    /// The request id ferry made up (none when the client sent one).
    request_id: Option<String>,
    /// Response body bytes sent to the client.
    bytes: u64,
    upstream: Option<SocketAddr>,
    /// The connection can take another request.
    keep_alive: bool,
}

impl Outcome {
    fn close(status: u16) -> Outcome {
        Outcome {
            status,
            request_id: None,
            bytes: 0,
            upstream: None,
            keep_alive: false,
        }
    }
}

/// Serves one client connection until it closes, misbehaves, idles out, or `shutdown` says
/// stop (between requests).
pub(super) async fn serve(
    ctx: Arc<Ctx>,
    mut client: TcpStream,
    peer: SocketAddr,
    ticket: Ticket,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut buf = BytesMut::with_capacity(8 << 10);
    let evicted = ticket.evicted();
    let client_ip = peer.ip().to_canonical().to_string();
    loop {
        let req = read_request(
            &ctx.settings,
            &mut client,
            &mut buf,
            &evicted,
            &mut shutdown,
        );
        let req = match req.await {
            Ok(Some(req)) => req,
            Ok(None) => return,
            Err(ReadError::TimedOut) => {
                ticket.timed_out();
                return;
            }
            Err(ReadError::Rejected(reject)) => {
                ctx.proxy.count();
                let _ = client
                    .write_all(&plain(reject.status(), reject.reason(), false, &[]))
                    .await;
                return;
            }
        };
        let _busy = ticket.busy();
        let started = Instant::now();
        let outcome = exchange(&ctx, &mut client, &mut buf, &req, &client_ip).await;
        ctx.proxy.count();
        if let Some(log) = ctx.proxy.access_log() {
            log.record(&access_log::Entry {
                method: req.method(),
                target: req.target(),
                status: outcome.status,
                bytes: outcome.bytes,
                duration: started.elapsed(),
                upstream: outcome.upstream,
                request_id: request_id_of(&req).or(outcome.request_id).as_deref(),
                client: peer,
            });
        }
        // told to keep the connection: a stopping proxy answers one more request on it (with
        // `connection: close`) rather than close under a client that may be sending
        if !outcome.keep_alive {
            return;
        }
    }
}

enum ReadError {
    TimedOut,
    Rejected(Reject),
}

/// Reads until a whole request head is in `buf`. `Ok(None)`: the client closed the
/// connection (or sent garbage and went away) before sending one.
/// Until the head is complete the gate may close the connection to make room (`evicted`);
/// a stopping proxy closes it once nothing of a request has come within `CLOSE_GRACE`.
async fn read_request(
    settings: &ProxySettings,
    client: &mut TcpStream,
    buf: &mut BytesMut,
    evicted: &tokio::sync::Notify,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Option<Request>, ReadError> {
    let deadline = tokio::time::Instant::now() + settings.connections.header_timeout;
    loop {
        if !buf.is_empty() {
            match http::parse_request(buf) {
                Ok(Some(req)) => {
                    if req.head.raw.len() > settings.max_request_headers {
                        return Err(ReadError::Rejected(Reject::HeadersTooLarge));
                    }
                    return Ok(Some(req));
                }
                Ok(None) if buf.len() > settings.max_request_headers => {
                    return Err(ReadError::Rejected(Reject::HeadersTooLarge));
                }
                Ok(None) => {}
                Err(reject) => return Err(ReadError::Rejected(reject)),
            }
        }
        let idle = buf.is_empty();
        if idle && *shutdown.borrow() {
            // a request on its way (on a connection just accepted, or from a kept-alive client
            // about to send) is still answered, with `connection: close`, so a restart or a
            // takeover fails none; a connection that stays silent is closed after the grace
            match tokio::time::timeout(crate::listener::CLOSE_GRACE, client.read_buf(buf)).await {
                Ok(Ok(n)) if n > 0 => continue,
                _ => return Ok(None),
            }
        }
        buf.reserve(4 << 10);
        tokio::select! {
            biased;
            read = client.read_buf(buf) => match read {
                Ok(0) | Err(_) => return Ok(None),
                Ok(_) => {}
            },
            () = tokio::time::sleep_until(deadline) => return Err(ReadError::TimedOut),
            // a header still trickling in is idle to the gate too
            () = evicted.notified() => return Ok(None),
            changed = shutdown.changed(), if idle => {
                if changed.is_err() {
                    return Ok(None);
                }
            }
        }
    }
}

/// The request id the client sent, when it is a sane one.
fn request_id_of(req: &Request) -> Option<String> {
    let v = req.head.get("x-request-id")?;
    (!v.is_empty() && v.len() <= 200 && v.iter().all(|b| b.is_ascii_graphic()))
        .then(|| String::from_utf8_lossy(v).into_owned())
}

/// A new request id: unique per process run and across runs.
fn new_request_id() -> String {
    use std::sync::OnceLock;
    use std::sync::atomic::AtomicU64;
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| {
        let mut b = [0u8; 8];
        let _ = getrandom::fill(&mut b);
        u64::from_le_bytes(b)
    });
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&prefix.to_be_bytes());
    id[8..].copy_from_slice(&NEXT.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    hex::encode(id)
}

/// The target as the app gets it and the host it is for: an absolute-form target
/// (`http://host/path`) becomes `/path` with its host.
fn origin_form(req: &Request) -> Result<(&[u8], Option<&[u8]>), Reject> {
    let target = req.target();
    if target.first() == Some(&b'/') || target == b"*" {
        return Ok((target, None));
    }
    let rest = if target.len() > 7 && target[..7].eq_ignore_ascii_case(b"http://") {
        &target[7..]
    } else if target.len() > 8 && target[..8].eq_ignore_ascii_case(b"https://") {
        &target[8..]
    } else if req.method() == b"CONNECT" {
        return Err(Reject::NotImplemented("CONNECT is not served"));
    } else {
        return Err(Reject::Bad("an invalid request target"));
    };
    let end = rest
        .iter()
        .position(|b| matches!(b, b'/' | b'?'))
        .unwrap_or(rest.len());
    let (host, path) = rest.split_at(end);
    if host.is_empty() || host.contains(&b'@') {
        return Err(Reject::Bad("an invalid request target"));
    }
    let path: &[u8] = if path.is_empty() { b"/" } else { path };
    if path[0] == b'?' {
        // `http://host?q` is `/?q`; rare enough to answer plainly
        return Err(Reject::Bad("an absolute target needs a path"));
    }
    Ok((path, Some(host)))
}

/// Writes the request head the app gets into `out`.
fn upstream_head(
    out: &mut Vec<u8>,
    req: &Request,
    target: &[u8],
    host: &[u8],
    client_ip: &str,
    request_id: Option<&str>,
) {
    out.extend_from_slice(req.method());
    out.push(b' ');
    out.extend_from_slice(target);
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(host);
    out.extend_from_slice(b"\r\n");
    let mut forwarded_for: Option<&[u8]> = None;
    let mut via: Option<&[u8]> = None;
    for (name, value) in req.head.headers() {
        if http::is_hop_by_hop(&req.head, name)
            || name.eq_ignore_ascii_case(b"host")
            || name.eq_ignore_ascii_case(b"expect")
            || name.eq_ignore_ascii_case(b"x-forwarded-proto")
            || name.eq_ignore_ascii_case(b"x-forwarded-host")
        {
            continue;
        }
        if name.eq_ignore_ascii_case(b"x-forwarded-for") {
            forwarded_for = Some(value);
            continue;
        }
        if name.eq_ignore_ascii_case(b"via") {
            via = Some(value);
            continue;
        }
        if name.eq_ignore_ascii_case(b"x-request-id") && request_id.is_some() {
            continue;
        }
        if name.eq_ignore_ascii_case(b"cookie") {
            let kept = super::cookies::without_ferry_cookies(value);
            if kept.is_empty() {
                continue;
            }
            header(out, name, &kept);
            continue;
        }
        header(out, name, value);
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    if let Some(prior) = forwarded_for {
        out.extend_from_slice(prior);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(client_ip.as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(b"x-forwarded-proto: http\r\nx-forwarded-host: ");
    out.extend_from_slice(host);
    out.extend_from_slice(b"\r\nvia: ");
    if let Some(prior) = via {
        out.extend_from_slice(prior);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(if req.version == 0 {
        b"1.0 ferry\r\n"
    } else {
        b"1.1 ferry\r\n"
    });
    if let Some(id) = request_id {
        header(out, b"x-request-id", id.as_bytes());
    }
    match req.framing {
        Framing::Length(n) => {
            let _ = std::io::Write::write_fmt(out, format_args!("content-length: {n}\r\n"));
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Empty | Framing::Close => {}
    }
    if req.upgrade {
        out.extend_from_slice(b"connection: upgrade\r\n");
        if let Some(up) = req.head.get("upgrade") {
            header(out, b"upgrade", up);
        }
    }
    out.extend_from_slice(b"\r\n");
}

fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A short plain-text answer from ferry itself.
fn plain(status: u16, text: &str, keep_alive: bool, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(160 + text.len());
    let _ = std::io::Write::write_fmt(
        &mut out,
        format_args!(
            "HTTP/1.1 {status} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n",
            reason_phrase(status),
            text.len() + 1
        ),
    );
    for (name, value) in extra {
        header(&mut out, name.as_bytes(), value.as_bytes());
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(text.as_bytes());
    out.push(b'\n');
    out
}

fn reason_phrase(status: u16) -> &'static str {
    hyper::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("")
}

/// Why a request could not be passed to the app or its response back.
enum Failure {
    /// No connection to be had in time (503).
    Busy,
    /// Refused, reset, or a broken response (502).
    Upstream(String),
    /// No response head in `upstream_timeout` (504).
    Timeout,
    /// The client went away or stalled while sending its body.
    Client,
    TooLarge,
    /// The app's connection failed before sending any byte back: retry when allowed.
    Stale(String),
}

async fn exchange(
    ctx: &Ctx,
    client: &mut TcpStream,
    buf: &mut BytesMut,
    req: &Request,
    client_ip: &str,
) -> Outcome {
    let proxy = &ctx.proxy;
    let settings = &ctx.settings;
    let has_body = req.framing != Framing::Empty;
    let reply = |status: u16, text: &str, keep: bool, extra: &[(&str, &str)]| {
        (
            status,
            plain(status, text, keep && !has_body && req.keep_alive, extra),
            keep && !has_body && req.keep_alive,
        )
    };
    let early = if let Framing::Length(n) = req.framing
        && settings.max_request_body.is_some_and(|max| n > max)
    {
        Some(reply(413, Reject::TooLarge.reason(), false, &[]))
    } else if let Some(message) = proxy.maintenance() {
        let page = super::maintenance_page(&proxy.inner.environment, &message);
        let keep = !has_body && req.keep_alive;
        Some((
            503,
            page_bytes(
                503,
                "text/html; charset=utf-8",
                &page,
                keep,
                &[("retry-after", &super::MAINTENANCE_RETRY_AFTER.to_string())],
            ),
            keep,
        ))
    } else {
        None
    };
    let early = match early {
        Some(e) => Some(e),
        None => match origin_form(req) {
            Err(reject) => Some(reply(reject.status(), reject.reason(), false, &[])),
            Ok(_) => None,
        },
    };
    if let Some((status, bytes, keep)) = early {
        let _ = client.write_all(&bytes).await;
        return Outcome {
            status,
            request_id: None,
            bytes: 0,
            upstream: None,
            keep_alive: keep,
        };
    }
    let Ok((target, absolute_host)) = origin_form(req) else {
        return Outcome::close(400);
    };
    let Some(guard) = proxy.pick() else {
        let text = format!(
            "no release is running in environment {} yet",
            proxy.inner.environment
        );
        let (status, bytes, keep) = reply(503, &text, true, &[]);
        proxy.count_error();
        let _ = client.write_all(&bytes).await;
        return Outcome {
            status,
            request_id: None,
            bytes: 0,
            upstream: None,
            keep_alive: keep,
        };
    };
    let upstream = guard.0.clone();
    let host_owned;
    let host: &[u8] = match absolute_host.or_else(|| req.head.get("host")) {
        Some(h) => h,
        None => {
            host_owned = upstream.addr.to_string();
            host_owned.as_bytes()
        }
    };
    let generated = request_id_of(req).is_none().then(new_request_id);
    let mut head = Vec::with_capacity(req.head.raw.len() + 256);
    upstream_head(
        &mut head,
        req,
        target,
        host,
        client_ip,
        generated.as_deref(),
    );

    let mut attempt = 0;
    let result = loop {
        attempt += 1;
        let (lease, conn) = match upstream.checkout(settings).await {
            Ok(taken) => taken,
            Err(CheckoutError::Busy) => break Err(Failure::Busy),
            Err(CheckoutError::Connect(e)) => break Err(Failure::Upstream(e.to_string())),
        };
        match forward(ctx, client, buf, req, &head, lease, conn).await {
            Err(Failure::Stale(_)) if attempt < ATTEMPTS && req.retryable() => continue,
            Err(Failure::Stale(e)) => break Err(Failure::Upstream(e)),
            other => break other,
        }
    };
    drop(guard);
    match result {
        Ok(mut outcome) => {
            outcome.upstream = Some(upstream.addr);
            outcome.request_id = generated;
            outcome
        }
        Err(failure) => {
            let env = &proxy.inner.environment;
            let (status, text, extra): (u16, String, &[(&str, &str)]) = match &failure {
                Failure::Busy => (
                    503,
                    format!("the app in environment {env} is busy; try again"),
                    &[("retry-after", "1")],
                ),
                Failure::Timeout => (
                    504,
                    format!("the app in environment {env} did not answer in time"),
                    &[],
                ),
                Failure::TooLarge => (413, Reject::TooLarge.reason().to_string(), &[]),
                Failure::Client => (400, "the request body did not arrive".into(), &[]),
                Failure::Upstream(e) | Failure::Stale(e) => {
                    tracing::warn!(env = %env, upstream = %upstream.addr, error = %e, "upstream request failed");
                    (
                        502,
                        format!("the app in environment {env} did not answer"),
                        &[],
                    )
                }
            };
            if status >= 500 {
                proxy.count_error();
            }
            // a request whose body was (partly) read cannot be followed by another
            let keep = matches!(failure, Failure::Busy) && !has_body && req.keep_alive;
            if !matches!(failure, Failure::Client) {
                let _ = client.write_all(&plain(status, &text, keep, extra)).await;
            }
            Outcome {
                status,
                request_id: generated,
                bytes: 0,
                upstream: Some(upstream.addr),
                keep_alive: keep,
            }
        }
    }
}

fn page_bytes(
    status: u16,
    content_type: &str,
    body: &str,
    keep_alive: bool,
    extra: &[(&str, &str)],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(200 + body.len());
    let _ = std::io::Write::write_fmt(
        &mut out,
        format_args!(
            "HTTP/1.1 {status} {}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n",
            reason_phrase(status),
            body.len()
        ),
    );
    for (name, value) in extra {
        header(&mut out, name.as_bytes(), value.as_bytes());
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
    out
}

/// Sends the request on `lease` and passes the response back.
async fn forward(
    ctx: &Ctx,
    client: &mut TcpStream,
    buf: &mut BytesMut,
    req: &Request,
    head: &[u8],
    lease: Lease,
    mut conn: Conn,
) -> Result<Outcome, Failure> {
    let settings = &ctx.settings;
    let reused = conn.reused;
    let stale = |e: String| {
        if reused {
            Failure::Stale(e)
        } else {
            Failure::Upstream(e)
        }
    };
    // the head, with as much of a fixed-length body as is already here
    let mut first = std::borrow::Cow::Borrowed(head);
    let mut body_left = match req.framing {
        Framing::Length(n) => {
            let now = (n as usize).min(buf.len());
            first.to_mut().extend_from_slice(&buf.split_to(now));
            n - now as u64
        }
        _ => 0,
    };
    let body_to_come = body_left > 0 || req.framing == Framing::Chunked;
    if req.expect_continue && body_to_come && buf.is_empty() {
        client
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .map_err(|_| Failure::Client)?;
    }
    conn.stream
        .write_all(&first)
        .await
        .map_err(|e| stale(e.to_string()))?;
    let (mut client_r, mut client_w) = client.split();
    let (mut up_r, mut up_w) = conn.stream.split();
    let upbuf = &mut conn.buf;

    // the body goes up while the response head is awaited
    let mut sent =
        req.framing == Framing::Empty || (req.framing != Framing::Chunked && body_left == 0);
    let response = {
        let send = send_body(
            settings,
            &mut client_r,
            buf,
            &mut up_w,
            req.framing,
            &mut body_left,
        );
        tokio::pin!(send);
        let recv = read_response(&mut up_r, upbuf, req.is_head());
        tokio::pin!(recv);
        let timer = tokio::time::sleep(settings.upstream_timeout);
        tokio::pin!(timer);
        loop {
            tokio::select! {
                r = &mut send, if !sent => {
                    r?;
                    sent = true;
                    timer.as_mut().reset(tokio::time::Instant::now() + settings.upstream_timeout);
                }
                r = &mut recv => break r,
                () = &mut timer, if sent => return Err(Failure::Timeout),
            }
        }
    };
    let mut resp = match response {
        Ok(resp) => resp,
        Err(ReadFailure::Nothing(e)) => return Err(stale(e)),
        Err(ReadFailure::Broken(e)) => return Err(Failure::Upstream(e)),
    };
    // informational answers (103 Early Hints) go to the client as they come
    while (102..200).contains(&resp.code) {
        if req.version == 1 {
            let mut out = Vec::new();
            response_head(&mut out, req, &resp, Framing::Empty, true);
            client_w
                .write_all(&out)
                .await
                .map_err(|_| Failure::Client)?;
        }
        resp = read_response(&mut up_r, upbuf, req.is_head())
            .await
            .map_err(|e| Failure::Upstream(e.message()))?;
    }
    if resp.code == 100 {
        return Err(Failure::Upstream("an unasked 100 Continue".into()));
    }
    if resp.code == 101 {
        if !req.upgrade || !sent {
            return Err(Failure::Upstream("101 without an upgrade request".into()));
        }
        let mut out = Vec::new();
        response_head(&mut out, req, &resp, Framing::Empty, true);
        out.extend_from_slice(upbuf);
        upbuf.clear();
        client_w
            .write_all(&out)
            .await
            .map_err(|_| Failure::Client)?;
        let leftover = buf.split();
        let _detached = lease.detach();
        if !leftover.is_empty() && conn.stream.write_all(&leftover).await.is_err() {
            return Ok(done(101, 0, false));
        }
        let _ = tokio::io::copy_bidirectional(client, &mut conn.stream).await;
        return Ok(done(101, 0, false));
    }
    if let (Framing::Length(n), Some(max)) = (resp.framing, settings.max_response_body)
        && n > max
    {
        return Err(Failure::Upstream(format!(
            "a response of {n} bytes is over max_response_body"
        )));
    }
    // what the client gets: chunks for an HTTP/1.1 client when the app's body ends at close
    let to_client = match (resp.framing, req.version) {
        (Framing::Close, 1) => Framing::Chunked,
        (Framing::Chunked, 0) => Framing::Close,
        (f, _) => f,
    };
    let keep_alive = req.keep_alive && sent && to_client != Framing::Close && !ctx.stopping();
    let mut out = Vec::with_capacity(resp.head.raw.len() + 64);
    response_head(&mut out, req, &resp, to_client, keep_alive);
    let event_stream = resp
        .head
        .get("content-type")
        .is_some_and(|v| v.starts_with(b"text/event-stream"));
    let status = resp.code;
    // a stream of events may last as long as the page is open: it leaves the pool's count
    let (lease, _detached) = if event_stream {
        (None, Some(lease.detach()))
    } else {
        (Some(lease), None)
    };
    let limit = settings.max_response_body.unwrap_or(u64::MAX);
    let idle = settings.upstream_timeout;
    let relayed = relay_body(
        &mut up_r,
        upbuf,
        &mut client_w,
        out,
        resp.framing,
        to_client,
        limit,
        idle,
    )
    .await;
    let upstream_reusable = resp.keep_alive && sent && upbuf.is_empty() && !event_stream;
    match relayed {
        Ok(bytes) => {
            if upstream_reusable && let Some(lease) = lease {
                lease.give_back(conn, settings);
            }
            Ok(done(status, bytes, keep_alive))
        }
        // the response was started: nothing else can be said, the connection ends
        Err(bytes) => Ok(done(status, bytes, false)),
    }
}

fn done(status: u16, bytes: u64, keep_alive: bool) -> Outcome {
    Outcome {
        status,
        request_id: None,
        bytes,
        upstream: None,
        keep_alive,
    }
}

/// Copies the rest of the request body from the client to the app.
async fn send_body(
    settings: &ProxySettings,
    client: &mut ReadHalf<'_>,
    buf: &mut BytesMut,
    up: &mut WriteHalf<'_>,
    framing: Framing,
    left: &mut u64,
) -> Result<(), Failure> {
    let idle = settings.connections.header_timeout;
    match framing {
        Framing::Empty | Framing::Close => Ok(()),
        Framing::Length(_) => {
            while *left > 0 {
                if buf.is_empty() {
                    read_some(client, buf, idle).await?;
                }
                let n = (*left as usize).min(buf.len());
                let part = buf.split_to(n);
                up.write_all(&part)
                    .await
                    .map_err(|e| Failure::Upstream(e.to_string()))?;
                *left -= n as u64;
            }
            Ok(())
        }
        Framing::Chunked => {
            let mut chunked = Chunked::default();
            let mut data = 0u64;
            let max = settings.max_request_body.unwrap_or(u64::MAX);
            loop {
                if !buf.is_empty() {
                    let used = chunked
                        .feed(buf, |r| data += r.len() as u64)
                        .map_err(|_| Failure::Client)?;
                    if data > max {
                        return Err(Failure::TooLarge);
                    }
                    let part = buf.split_to(used);
                    up.write_all(&part)
                        .await
                        .map_err(|e| Failure::Upstream(e.to_string()))?;
                    if chunked.done() {
                        return Ok(());
                    }
                }
                read_some(client, buf, idle).await?;
            }
        }
    }
}

async fn read_some(
    client: &mut ReadHalf<'_>,
    buf: &mut BytesMut,
    idle: Duration,
) -> Result<(), Failure> {
    buf.reserve(CHUNK);
    match tokio::time::timeout(idle, client.read_buf(buf)).await {
        Ok(Ok(n)) if n > 0 => Ok(()),
        _ => Err(Failure::Client),
    }
}

enum ReadFailure {
    /// Nothing came back at all.
    Nothing(String),
    Broken(String),
}

impl ReadFailure {
    fn message(self) -> String {
        match self {
            ReadFailure::Nothing(e) | ReadFailure::Broken(e) => e,
        }
    }
}

async fn read_response(
    up: &mut ReadHalf<'_>,
    buf: &mut BytesMut,
    is_head: bool,
) -> Result<Response, ReadFailure> {
    let mut any = !buf.is_empty();
    loop {
        if !buf.is_empty() {
            match http::parse_response(buf, is_head) {
                Ok(Some(resp)) => return Ok(resp),
                Ok(None) if buf.len() > MAX_RESPONSE_HEAD => {
                    return Err(ReadFailure::Broken("a response head over 64KB".into()));
                }
                Ok(None) => {}
                Err(e) => return Err(ReadFailure::Broken(e.0.into())),
            }
        }
        buf.reserve(8 << 10);
        match up.read_buf(buf).await {
            Ok(0) if !any => {
                return Err(ReadFailure::Nothing("the app closed the connection".into()));
            }
            Ok(0) => {
                return Err(ReadFailure::Broken(
                    "the app closed the connection mid-response".into(),
                ));
            }
            Ok(_) => any = true,
            Err(e) if !any => return Err(ReadFailure::Nothing(e.to_string())),
            Err(e) => return Err(ReadFailure::Broken(e.to_string())),
        }
    }
}

/// The response head the client gets.
fn response_head(
    out: &mut Vec<u8>,
    req: &Request,
    resp: &Response,
    to_client: Framing,
    keep_alive: bool,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    let _ = std::io::Write::write_fmt(out, format_args!("{} ", resp.code));
    out.extend_from_slice(resp.reason());
    out.extend_from_slice(b"\r\n");
    let no_body = req.is_head() || resp.code == 304;
    for (name, value) in resp.head.headers() {
        let framing_header = name.eq_ignore_ascii_case(b"content-length")
            || name.eq_ignore_ascii_case(b"transfer-encoding");
        if framing_header && no_body {
            // what a GET would have got
            header(out, name, value);
            continue;
        }
        if resp.code == 101
            && (name.eq_ignore_ascii_case(b"upgrade") || name.eq_ignore_ascii_case(b"connection"))
        {
            header(out, name, value);
            continue;
        }
        if http::is_hop_by_hop(&resp.head, name) {
            continue;
        }
        if name.eq_ignore_ascii_case(b"set-cookie") && super::cookies::is_ferry_cookie(value) {
            continue;
        }
        header(out, name, value);
    }
    if resp.code == 101 {
        out.extend_from_slice(b"\r\n");
        return;
    }
    if !no_body && resp.code != 204 && resp.code >= 200 {
        match to_client {
            Framing::Empty => out.extend_from_slice(b"content-length: 0\r\n"),
            Framing::Length(n) => {
                let _ = std::io::Write::write_fmt(out, format_args!("content-length: {n}\r\n"));
            }
            Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
            Framing::Close => {}
        }
    }
    if resp.code >= 200 {
        if !keep_alive {
            out.extend_from_slice(b"connection: close\r\n");
        } else if req.version == 0 {
            out.extend_from_slice(b"connection: keep-alive\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// Passes the response body from the app to the client, starting with `out` (the head);
/// `Ok`: the body bytes sent, all of it; `Err`: what was sent before it broke off.
#[allow(clippy::too_many_arguments)]
async fn relay_body(
    up: &mut ReadHalf<'_>,
    upbuf: &mut BytesMut,
    client: &mut WriteHalf<'_>,
    mut out: Vec<u8>,
    from: Framing,
    to: Framing,
    limit: u64,
    idle: Duration,
) -> Result<u64, u64> {
    let mut sent = 0u64;
    let mut chunked = Chunked::default();
    let mut left = match from {
        Framing::Length(n) => n,
        _ => 0,
    };
    loop {
        // what is buffered now, as the client gets it
        let finished = match from {
            Framing::Empty => true,
            Framing::Length(_) => {
                let n = (left as usize).min(upbuf.len());
                out.extend_from_slice(&upbuf.split_to(n));
                left -= n as u64;
                sent += n as u64;
                left == 0
            }
            Framing::Chunked => {
                let mut data = Vec::new();
                let used = match chunked.feed(upbuf, |r| data.push(r)) {
                    Ok(used) => used,
                    Err(_) => {
                        let _ = client.write_all(&out).await;
                        return Err(sent);
                    }
                };
                let part = upbuf.split_to(used);
                if to == Framing::Chunked {
                    out.extend_from_slice(&part);
                }
                for r in data {
                    sent += r.len() as u64;
                    if to != Framing::Chunked {
                        out.extend_from_slice(&part[r]);
                    }
                }
                chunked.done()
            }
            Framing::Close => {
                let part = upbuf.split();
                if !part.is_empty() {
                    sent += part.len() as u64;
                    if to == Framing::Chunked {
                        let _ = std::io::Write::write_fmt(
                            &mut out,
                            format_args!("{:x}\r\n", part.len()),
                        );
                        out.extend_from_slice(&part);
                        out.extend_from_slice(b"\r\n");
                    } else {
                        out.extend_from_slice(&part);
                    }
                }
                false
            }
        };
        if sent > limit {
            return Err(sent);
        }
        if !out.is_empty() {
            if client.write_all(&out).await.is_err() {
                return Err(sent);
            }
            out.clear();
        }
        if finished {
            return Ok(sent);
        }
        upbuf.reserve(CHUNK);
        match tokio::time::timeout(idle, up.read_buf(upbuf)).await {
            Ok(Ok(0)) if from == Framing::Close => {
                if to == Framing::Chunked && client.write_all(b"0\r\n\r\n").await.is_err() {
                    return Err(sent);
                }
                return Ok(sent);
            }
            Ok(Ok(n)) if n > 0 => {}
            _ => return Err(sent),
        }
    }
}

impl Proxy {
    /// Counts a request answered.
    fn count(&self) {
        self.inner.stats.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an error of ferry's own (it could not pass a request on).
    fn count_error(&self) {
        self.inner.stats.errors.fetch_add(1, Ordering::Relaxed);
    }
}

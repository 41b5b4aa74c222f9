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
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use super::answer::{
    ReadFailure, for_method, page_bytes, plain, read_response, relay_body, response_head,
};
use super::http::{self, Framing, Reject, Request};
use super::metrics::Answered;
use super::outbound::{
    new_request_id, origin_form, request_id_of, send_body, strip_prefix, upstream_head,
};
use super::route::{Answer, ClientIo, RequestInfo, Route, Router};
use super::upstream::{CheckoutError, Conn, Lease};
use super::{Proxy, access_log};
use crate::config::ProxySettings;
use crate::listener::Ticket;

/// Buffer a body is read into, per read.
pub(super) const CHUNK: usize = 64 << 10;

/// Attempts at a request without a body whose pooled connection turned out closed.
const ATTEMPTS: usize = 3;

pub(crate) struct Ctx<R> {
    pub router: R,
    pub settings: ProxySettings,
    pub shutdown: watch::Receiver<bool>,
}

impl<R> Ctx<R> {
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
    /// When the app's response head came (none for ferry's own answers).
    head_at: Option<Instant>,
}

/// Time and bytes a closing connection may still send that are read and dropped.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;

/// Closes a connection as nginx's lingering close does: the answer is sent, the write side
/// shut, and what the client still sends (the rest of a refused body or header) read and
/// dropped for a while. Closing with unread bytes would reset the connection, and a reset
/// can destroy the answer before the client reads it.
async fn linger(mut client: impl AsyncRead + AsyncWrite + Unpin) {
    if client.shutdown().await.is_err() {
        return;
    }
    let mut sink = vec![0u8; 16 << 10];
    let mut dropped = 0;
    let _ = tokio::time::timeout(LINGER, async {
        while dropped < LINGER_BYTES {
            match client.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(n) => dropped += n,
            }
        }
    })
    .await;
}

impl Outcome {
    /// An answer of ferry's own, no body passed on.
    fn own(status: u16, keep_alive: bool) -> Outcome {
        Outcome {
            status,
            request_id: None,
            bytes: 0,
            upstream: None,
            keep_alive,
            head_at: None,
        }
    }
}

/// Serves one client connection until it closes, misbehaves, idles out, or `shutdown` says
/// stop (between requests).
pub(crate) async fn serve<R: Router, S: ClientIo>(
    ctx: Arc<Ctx<R>>,
    mut client: S,
    peer: SocketAddr,
    ticket: Ticket,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut buf = BytesMut::with_capacity(8 << 10);
    let evicted = ticket.evicted();
    let client_ip = peer.ip().to_canonical().to_string();
    let sni = client.server_name();
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
                if let Some(proxy) = ctx.router.fallback() {
                    proxy.count();
                }
                let _ = client
                    .write_all(&plain(reject.status(), reject.reason(), false, &[]))
                    .await;
                linger(client).await;
                return;
            }
        };
        let _busy = ticket.busy();
        let started = Instant::now();
        let (outcome, proxy) = match origin_form(&req) {
            Err(reject) => {
                let bytes = plain(reject.status(), reject.reason(), false, &[]);
                (
                    own_answer(&mut client, (reject.status(), bytes, false)).await,
                    ctx.router.fallback(),
                )
            }
            Ok((target, absolute_host)) => {
                let info = RequestInfo {
                    host: absolute_host.or_else(|| req.head.get("host")),
                    target,
                    sni: sni.as_deref(),
                };
                match ctx.router.route(&info) {
                    Route::Proxy { proxy, prefix } => {
                        let target = match prefix {
                            Some(p) => strip_prefix(target, p),
                            None => std::borrow::Cow::Borrowed(target),
                        };
                        let to = To {
                            proxy,
                            target: &target,
                            absolute_host,
                            prefix,
                            scheme: ctx.router.scheme(),
                        };
                        let outcome =
                            exchange(&ctx, to, &mut client, &mut buf, &req, &client_ip).await;
                        (outcome, Some(proxy))
                    }
                    Route::Answer(answer) => {
                        let keep = req.framing == Framing::Empty && req.keep_alive;
                        let bytes = for_method(answer_bytes(&answer, keep), req.is_head());
                        (
                            own_answer(&mut client, (answer.status, bytes, keep)).await,
                            None,
                        )
                    }
                }
            }
        };
        if let Some(proxy) = proxy {
            proxy.count();
        }
        if let Some(log) = proxy.and_then(Proxy::access_log) {
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
            linger(client).await;
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
    client: &mut (impl AsyncRead + Unpin),
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

/// Why a request could not be passed to the app or its response back.
pub(super) enum Failure {
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

/// Where a routed request goes and how it reaches the app.
struct To<'a> {
    proxy: &'a Proxy,
    /// In origin form, any path prefix taken off.
    target: &'a [u8],
    absolute_host: Option<&'a [u8]>,
    prefix: Option<&'a str>,
    scheme: &'static str,
}

/// An answer of ferry's own as bytes.
fn answer_bytes(answer: &Answer, keep_alive: bool) -> Vec<u8> {
    let extra: Vec<(&str, &str)> = answer
        .headers
        .iter()
        .map(|(n, v)| (*n, v.as_str()))
        .collect();
    page_bytes(
        answer.status,
        answer.content_type,
        &answer.body,
        keep_alive,
        &extra,
    )
}

async fn exchange<R>(
    ctx: &Ctx<R>,
    to: To<'_>,
    client: &mut impl ClientIo,
    buf: &mut BytesMut,
    req: &Request,
    client_ip: &str,
) -> Outcome {
    let proxy = to.proxy;
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
    if let Some((status, bytes, keep)) = early {
        return own_answer(client, (status, for_method(bytes, req.is_head()), keep)).await;
    }
    let Some(picked) = proxy.pick(|| req.head.headers()) else {
        proxy.count_error();
        return own_answer(client, reply(503, proxy.unserved(), true, &[])).await;
    };
    let (guard, set_cookie) = (picked.guard, picked.set_cookie);
    let upstream = guard.0.clone();
    let picked = Instant::now();
    let host_owned;
    let host: &[u8] = match to.absolute_host.or_else(|| req.head.get("host")) {
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
        to.target,
        host,
        client_ip,
        generated.as_deref(),
        (to.scheme, to.prefix),
    );

    let mut attempt = 0;
    let result = loop {
        attempt += 1;
        let (lease, conn) = match upstream.checkout(settings).await {
            Ok(taken) => taken,
            Err(CheckoutError::Busy) => break Err(Failure::Busy),
            Err(CheckoutError::Connect(e)) => break Err(Failure::Upstream(e.to_string())),
        };
        let cookie = set_cookie.as_deref();
        match forward(ctx, client, buf, req, (&head, cookie), lease, conn).await {
            Err(Failure::Stale(_)) if attempt < ATTEMPTS && req.retryable() => continue,
            Err(Failure::Stale(e)) => break Err(Failure::Upstream(e)),
            other => break other,
        }
    };
    drop(guard);
    match result {
        Ok(mut outcome) => {
            if let Some(head_at) = outcome.head_at {
                let latency = head_at.saturating_duration_since(picked);
                proxy.record(&upstream, Answered::App(outcome.status, latency));
            }
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
                proxy.record(&upstream, Answered::ProxyError(status));
            }
            // a request whose body was (partly) read cannot be followed by another
            let keep = matches!(failure, Failure::Busy) && !has_body && req.keep_alive;
            if !matches!(failure, Failure::Client) {
                let bytes = for_method(plain(status, &text, keep, extra), req.is_head());
                let _ = client.write_all(&bytes).await;
            }
            Outcome {
                request_id: generated,
                upstream: Some(upstream.addr),
                ..Outcome::own(status, keep)
            }
        }
    }
}

/// Sends an answer of ferry's own: (status, the bytes, whether the connection stays open).
async fn own_answer(
    client: &mut (impl AsyncWrite + Unpin),
    (status, bytes, keep): (u16, Vec<u8>, bool),
) -> Outcome {
    let _ = client.write_all(&bytes).await;
    Outcome::own(status, keep)
}

/// Sends the request on `lease` and passes the response back.
#[allow(clippy::too_many_arguments)]
async fn forward<R>(
    ctx: &Ctx<R>,
    client: &mut impl ClientIo,
    buf: &mut BytesMut,
    req: &Request,
    (head, set_cookie): (&[u8], Option<&str>),
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
    let (mut client_r, mut client_w) = client.halves();
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
    let head_at = Instant::now();
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
        drop((client_r, client_w));
        let leftover = buf.split();
        let _detached = lease.detach();
        if !leftover.is_empty() && conn.stream.write_all(&leftover).await.is_err() {
            return Ok(done(101, 0, false, head_at));
        }
        let _ = tokio::io::copy_bidirectional(client, &mut conn.stream).await;
        return Ok(done(101, 0, false, head_at));
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
    if let Some(cookie) = set_cookie {
        super::canary::add_set_cookie(&mut out, cookie);
    }
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
            Ok(done(status, bytes, keep_alive, head_at))
        }
        // the response was started: nothing else can be said, the connection ends
        Err(bytes) => Ok(done(status, bytes, false, head_at)),
    }
}

fn done(status: u16, bytes: u64, keep_alive: bool, head_at: Instant) -> Outcome {
    Outcome {
        status,
        request_id: None,
        bytes,
        upstream: None,
        keep_alive,
        head_at: Some(head_at),
    }
}

impl Proxy {
    /// Counts a request answered.
    pub(super) fn count(&self) {
        self.inner.stats.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an error of ferry's own (it could not pass a request on).
    pub(super) fn count_error(&self) {
        self.inner.stats.errors.fetch_add(1, Ordering::Relaxed);
    }
}

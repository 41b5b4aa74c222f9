//! HTTP/2 clients (ALPN `h2` on the front door's https): hyper's HTTP/2 server takes the
//! streams, and each request is forwarded as HTTP/1.1 through the environment's shared
//! bounded pool, as the HTTP/1.1 forwarder does: the same routing, maintenance page, limits,
//! forwarding headers, stats, access log and drain. Both bodies stream: the request's frames
//! go up as they come (chunked when the client gave no length), the app's body comes back
//! frame by frame from a task that holds the pooled connection (and the request's place in
//! the drain count) until the body is done.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, StreamBody, combinators::BoxBody};
use hyper::body::{Body, Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use super::answer::{ReadFailure, read_response};
use super::conn::{CHUNK, Ctx};
use super::http::{self, Chunked, Framing};
use super::metrics::Answered;
use super::outbound::{header, new_request_id};
use super::route::{RequestInfo, Route, Router};
use super::upstream::{CheckoutError, Conn, Upstream};
use super::{Proxy, access_log, stopped};
use crate::listener::{Busy, Ticket};

type Out = BoxBody<Bytes, std::io::Error>;

/// Serves one HTTP/2 connection until the client closes it or `shutdown` says stop (then
/// its streams finish, the client told to go away).
pub(super) async fn serve<R: Router>(
    ctx: Arc<Ctx<R>>,
    tls: tokio_rustls::server::TlsStream<TcpStream>,
    peer: SocketAddr,
    ticket: Ticket,
    mut shutdown: watch::Receiver<bool>,
) {
    let sni: Option<Arc<str>> = tls.get_ref().1.server_name().map(Arc::from);
    let client_ip: Arc<str> = Arc::from(peer.ip().to_canonical().to_string());
    let ticket = Arc::new(ticket);
    let evicted = ticket.evicted();
    let idle = ctx.settings.connections.header_timeout;
    // requests begun on this connection, for the idle timer below
    let begun = Arc::new(AtomicU64::new(0));
    let service = {
        let (ticket, begun, ctx) = (ticket.clone(), begun.clone(), ctx.clone());
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let (ctx, sni, client_ip) = (ctx.clone(), sni.clone(), client_ip.clone());
            // busy until the response body is done, not only its head: a stream being
            // relayed is never closed as idle to make room
            let busy = ticket.busy();
            begun.fetch_add(1, Ordering::Relaxed);
            async move {
                let resp = handle(&ctx, req, sni.as_deref(), &client_ip, peer, busy).await;
                Ok::<_, Infallible>(resp)
            }
        })
    };
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder.timer(TokioTimer::new()).max_concurrent_streams(128);
    let conn = builder.serve_connection(TokioIo::new(tls), service);
    tokio::pin!(conn);
    // a connection with no stream open and no new request for `header_timeout` is closed, as
    // an idle HTTP/1.1 connection is (the first request included)
    let mut seen = 0;
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            () = stopped(&mut shutdown) => break,
            () = evicted.notified() => break,
            () = tokio::time::sleep(idle) => {
                let now = begun.load(Ordering::Relaxed);
                if now == seen && !ticket.is_busy() {
                    ticket.timed_out();
                    break;
                }
                seen = now;
            }
        }
    }
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(super::FINISH_TIMEOUT, conn).await;
}

/// An answer of ferry's own; to a HEAD request without its body (`content-length` says what
/// a GET would get).
fn full(
    status: u16,
    content_type: &str,
    body: String,
    extra: &[(&str, &str)],
    is_head: bool,
) -> Response<Out> {
    let mut resp = Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len());
    let body = if is_head { String::new() } else { body };
    for (n, v) in extra {
        resp = resp.header(*n, *v);
    }
    resp.body(
        http_body_util::Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    )
    .unwrap_or_else(|_| Response::new(http_body_util::Empty::new().map_err(|n| match n {}).boxed()))
}

fn text(status: u16, message: &str, extra: &[(&str, &str)], is_head: bool) -> Response<Out> {
    full(
        status,
        "text/plain; charset=utf-8",
        format!("{message}\n"),
        extra,
        is_head,
    )
}

async fn handle<R: Router>(
    ctx: &Ctx<R>,
    req: Request<Incoming>,
    sni: Option<&str>,
    client_ip: &str,
    peer: SocketAddr,
    busy: Busy,
) -> Response<Out> {
    let started = Instant::now();
    let is_head = req.method() == hyper::Method::HEAD;
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers()
                .get("host")
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        });
    let target = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let info = RequestInfo {
        host: host.as_deref().map(str::as_bytes),
        target: target.as_bytes(),
        sni,
    };
    let (proxy, prefix) = match ctx.router.route(&info) {
        Route::Answer(a) => {
            let extra: Vec<(&str, &str)> =
                a.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            return full(a.status, a.content_type, a.body, &extra, is_head);
        }
        Route::Proxy { proxy, prefix } => (proxy.clone(), prefix.map(str::to_string)),
    };
    let target = match &prefix {
        Some(p) => super::outbound::strip_prefix(target.as_bytes(), p).into_owned(),
        None => target.into_bytes(),
    };
    let method = req.method().as_str().as_bytes().to_vec();
    let request_id = req
        .headers()
        .get("x-request-id")
        .map(|v| v.as_bytes())
        .filter(|v| !v.is_empty() && v.len() <= 200 && v.iter().all(u8::is_ascii_graphic))
        .map(|v| String::from_utf8_lossy(v).into_owned());
    let generated = request_id.is_none().then(new_request_id);
    let log_id = request_id.clone().or(generated.clone());
    let logged = Logged {
        proxy: proxy.clone(),
        method,
        target: target.clone(),
        started,
        peer,
        request_id: log_id,
        upstream: None,
    };
    let resp = forward(
        ctx,
        &proxy,
        req,
        Head {
            target: &target,
            host: host.as_deref().unwrap_or(""),
            client_ip,
            scheme: ctx.router.scheme(),
            prefix: prefix.as_deref(),
            generated: generated.as_deref(),
        },
        logged,
        busy,
    )
    .await;
    match resp {
        Ok(resp) => resp,
        Err((status, message, extra, logged)) => {
            if status >= 500 {
                proxy.count_error();
                if let Some(upstream) = &logged.upstream {
                    proxy.record(upstream, Answered::ProxyError(status));
                }
            }
            logged.done(status, 0, None);
            text(status, &message, extra, is_head)
        }
    }
}

/// What the access log gets once a response is done.
struct Logged {
    proxy: Proxy,
    method: Vec<u8>,
    target: Vec<u8>,
    started: Instant,
    peer: SocketAddr,
    request_id: Option<String>,
    /// The instance picked (a proxy error is counted on it).
    upstream: Option<Arc<Upstream>>,
}

impl Logged {
    fn done(&self, status: u16, bytes: u64, upstream: Option<SocketAddr>) {
        self.proxy.count();
        if let Some(log) = self.proxy.access_log() {
            log.record(&access_log::Entry {
                method: &self.method,
                target: &self.target,
                status,
                bytes,
                duration: self.started.elapsed(),
                upstream,
                request_id: self.request_id.as_deref(),
                client: self.peer,
            });
        }
    }
}

struct Head<'a> {
    target: &'a [u8],
    host: &'a str,
    client_ip: &'a str,
    scheme: &'a str,
    prefix: Option<&'a str>,
    generated: Option<&'a str>,
}

/// Headers an HTTP/2 request may carry that do not go to the app as they are.
fn dropped(name: &str) -> bool {
    matches!(
        name,
        "host"
            | "connection"
            | "keep-alive"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "expect"
            | "content-length"
            | "x-forwarded-for"
            | "x-forwarded-proto"
            | "x-forwarded-host"
            | "x-forwarded-prefix"
            | "via"
            | "cookie"
    ) || name.starts_with("proxy-")
}

/// The HTTP/1.1 head the app gets for an HTTP/2 request.
fn upstream_head(req: &Request<Incoming>, head: &Head<'_>, framing: Framing) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.target);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    header(&mut out, b"host", head.host.as_bytes());
    let mut forwarded_for = Vec::new();
    let mut via = Vec::new();
    let mut cookies: Vec<u8> = Vec::new();
    for (name, value) in req.headers() {
        let n = name.as_str();
        match n {
            "x-forwarded-for" => {
                forwarded_for.extend_from_slice(value.as_bytes());
                forwarded_for.extend_from_slice(b", ");
            }
            "via" => {
                via.extend_from_slice(value.as_bytes());
                via.extend_from_slice(b", ");
            }
            // HTTP/2 may split cookies into several fields: one header for HTTP/1.1
            "cookie" => {
                let kept = super::cookies::without_ferry_cookies(value.as_bytes());
                if !kept.is_empty() {
                    if !cookies.is_empty() {
                        cookies.extend_from_slice(b"; ");
                    }
                    cookies.extend_from_slice(&kept);
                }
            }
            "x-request-id" if head.generated.is_some() => {}
            _ if dropped(n) => {}
            _ => header(&mut out, name.as_str().as_bytes(), value.as_bytes()),
        }
    }
    if !cookies.is_empty() {
        header(&mut out, b"cookie", &cookies);
    }
    forwarded_for.extend_from_slice(head.client_ip.as_bytes());
    header(&mut out, b"x-forwarded-for", &forwarded_for);
    header(&mut out, b"x-forwarded-proto", head.scheme.as_bytes());
    if let Some(prefix) = head.prefix {
        header(&mut out, b"x-forwarded-prefix", prefix.as_bytes());
    }
    header(&mut out, b"x-forwarded-host", head.host.as_bytes());
    via.extend_from_slice(b"2 ferry");
    header(&mut out, b"via", &via);
    if let Some(id) = head.generated {
        header(&mut out, b"x-request-id", id.as_bytes());
    }
    match framing {
        Framing::Length(n) => {
            let _ = std::io::Write::write_fmt(&mut out, format_args!("content-length: {n}\r\n"));
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Empty | Framing::Close => {}
    }
    out.extend_from_slice(b"\r\n");
    out
}

type Failed = (u16, String, &'static [(&'static str, &'static str)], Logged);

async fn forward<R>(
    ctx: &Ctx<R>,
    proxy: &Proxy,
    req: Request<Incoming>,
    head: Head<'_>,
    mut logged: Logged,
    busy: Busy,
) -> Result<Response<Out>, Failed> {
    let is_head = req.method() == hyper::Method::HEAD;
    let settings = ctx.settings;
    let env = proxy.inner.environment.clone();
    let length = req
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let (Some(n), Some(max)) = (length, settings.max_request_body)
        && n > max
    {
        return Err((413, "the request body is too large".into(), &[], logged));
    }
    if let Some(message) = proxy.maintenance() {
        let page = super::maintenance_page(&env, &message);
        logged.done(503, 0, None);
        let retry = super::MAINTENANCE_RETRY_AFTER.to_string();
        return Ok(full(
            503,
            "text/html; charset=utf-8",
            page,
            &[("retry-after", &retry)],
            is_head,
        ));
    }
    let framing = match length {
        Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
        None if req.body().is_end_stream() => Framing::Empty,
        None => Framing::Chunked,
    };
    let headers = || {
        req.headers()
            .iter()
            .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()))
    };
    let Some(picked) = proxy.pick(headers) else {
        return Err((503, proxy.unserved().to_string(), &[], logged));
    };
    let (guard, set_cookie) = (picked.guard, picked.set_cookie);
    let upstream = guard.0.clone();
    logged.upstream = Some(upstream.clone());
    let bytes = upstream_head(&req, &head, framing);
    let mut body = req.into_body();
    let mut attempt = 0;
    let (lease, mut conn, resp) = loop {
        attempt += 1;
        let (lease, mut conn) = match upstream.checkout(&settings).await {
            Ok(taken) => taken,
            Err(CheckoutError::Busy) => {
                return Err((
                    503,
                    format!("the app in environment {env} is busy; try again"),
                    &[("retry-after", "1")],
                    logged,
                ));
            }
            Err(CheckoutError::Connect(e)) => {
                tracing::warn!(env = %env, error = %e, "upstream connect failed");
                return Err((
                    502,
                    format!("the app in environment {env} did not answer"),
                    &[],
                    logged,
                ));
            }
        };
        let reused = conn.reused;
        let sent = send_and_receive(&settings, &mut conn, &bytes, &mut body, framing, is_head);
        match sent.await {
            Ok(resp) => break (lease, conn, resp),
            Err(Sent::Stale) if reused && attempt < 3 && framing == Framing::Empty => continue,
            Err(Sent::TooLarge) => {
                return Err((413, "the request body is too large".into(), &[], logged));
            }
            Err(Sent::Client) => {
                return Err((400, "the request body did not arrive".into(), &[], logged));
            }
            Err(Sent::Timeout) => {
                return Err((
                    504,
                    format!("the app in environment {env} did not answer in time"),
                    &[],
                    logged,
                ));
            }
            Err(Sent::Stale | Sent::Upstream) => {
                return Err((
                    502,
                    format!("the app in environment {env} did not answer"),
                    &[],
                    logged,
                ));
            }
        }
    };
    let head_at = Instant::now();
    if (100..200).contains(&resp.code) {
        return Err((
            502,
            format!("the app in environment {env} did not answer"),
            &[],
            logged,
        ));
    }
    if let (Framing::Length(n), Some(max)) = (resp.framing, settings.max_response_body)
        && n > max
    {
        tracing::warn!(env = %env, bytes = n, "a response is over max_response_body");
        return Err((
            502,
            format!("the app in environment {env} did not answer"),
            &[],
            logged,
        ));
    }
    let mut builder = Response::builder().status(resp.code);
    for (name, value) in resp.head.headers() {
        let framing_header = name.eq_ignore_ascii_case(b"content-length")
            || name.eq_ignore_ascii_case(b"transfer-encoding");
        if framing_header && !(is_head || resp.code == 304) {
            continue;
        }
        if name.eq_ignore_ascii_case(b"transfer-encoding")
            || http::is_hop_by_hop(&resp.head, name)
            || (name.eq_ignore_ascii_case(b"set-cookie") && super::cookies::is_ferry_cookie(value))
        {
            continue;
        }
        builder = builder.header(name, value);
    }
    if let Framing::Length(n) = resp.framing {
        builder = builder.header("content-length", n);
    }
    if let Some(cookie) = set_cookie {
        builder = builder.header("set-cookie", cookie);
    }
    let event_stream = resp
        .head
        .get("content-type")
        .is_some_and(|v| v.starts_with(b"text/event-stream"));
    // a stream of events may last as long as the page is open: it leaves the pool's count
    let (lease, detached) = if event_stream {
        (None, Some(lease.detach()))
    } else {
        (Some(lease), None)
    };
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
    let complete = Arc::new(AtomicBool::new(false));
    let status = resp.code;
    let relay = Relay {
        settings,
        framing: resp.framing,
        reusable: resp.keep_alive,
        upstream: upstream.addr,
    };
    // the body ends cleanly only when the app's did: a response cut short (the app broke
    // off, over max_response_body, a client that stopped reading) ends in an error, so the
    // client's stream is reset instead of ending as if complete
    let relay_done = complete.clone();
    let stream = futures_util::stream::unfold(
        (rx, complete, false),
        |(mut rx, complete, failed)| async move {
            if failed {
                return None;
            }
            match rx.recv().await {
                Some(Ok(frame)) => Some((Ok(frame), (rx, complete, false))),
                Some(Err(e)) => Some((Err(e), (rx, complete, true))),
                None if complete.load(Ordering::Acquire) => None,
                None => Some((
                    Err(std::io::Error::other("the app's response broke off")),
                    (rx, complete, true),
                )),
            }
        },
    );
    let response = match builder.body(BodyExt::boxed(StreamBody::new(stream))) {
        Ok(response) => response,
        Err(e) => {
            // a head hyper cannot send: the app's connection is not reused
            return Err((
                502,
                format!("the app's response cannot be passed on: {e}"),
                &[][..],
                logged,
            ));
        }
    };
    let latency = head_at.saturating_duration_since(logged.started);
    proxy.record(&upstream, Answered::App(status, latency));
    tokio::spawn(async move {
        let (sent, end) = relay.run(&mut conn, &tx).await;
        relay_done.store(end != End::Broken, Ordering::Release);
        if end == End::Reusable
            && let Some(lease) = lease
        {
            lease.give_back(conn, &relay.settings);
        }
        drop((guard, detached, tx));
        logged.done(status, sent, Some(relay.upstream));
        drop(busy);
    });
    Ok(response)
}

enum Sent {
    Stale,
    Upstream,
    Client,
    TooLarge,
    Timeout,
}

/// Sends the head and the body, and reads the response head meanwhile.
async fn send_and_receive(
    settings: &crate::config::ProxySettings,
    conn: &mut Conn,
    head: &[u8],
    body: &mut Incoming,
    framing: Framing,
    is_head: bool,
) -> Result<http::Response, Sent> {
    if conn.stream.write_all(head).await.is_err() {
        return Err(Sent::Stale);
    }
    let (mut up_r, mut up_w) = conn.stream.split();
    let upbuf = &mut conn.buf;
    let mut sent = framing == Framing::Empty;
    let send = async {
        let max = settings.max_request_body.unwrap_or(u64::MAX);
        let idle = settings.connections.header_timeout;
        let mut total = 0u64;
        loop {
            let frame = match tokio::time::timeout(idle, body.frame()).await {
                Ok(Some(Ok(frame))) => frame,
                Ok(None) => break,
                Ok(Some(Err(_))) | Err(_) => return Err(Sent::Client),
            };
            let Ok(data) = frame.into_data() else {
                continue; // trailers are not passed on
            };
            total += data.len() as u64;
            if total > max {
                return Err(Sent::TooLarge);
            }
            if data.is_empty() {
                continue;
            }
            let w = if framing == Framing::Chunked {
                let mut chunk = format!("{:x}\r\n", data.len()).into_bytes();
                chunk.extend_from_slice(&data);
                chunk.extend_from_slice(b"\r\n");
                up_w.write_all(&chunk).await
            } else {
                up_w.write_all(&data).await
            };
            w.map_err(|_| Sent::Upstream)?;
        }
        if framing == Framing::Chunked {
            up_w.write_all(b"0\r\n\r\n")
                .await
                .map_err(|_| Sent::Upstream)?;
        }
        Ok(())
    };
    tokio::pin!(send);
    let recv = async {
        loop {
            let resp = read_response(&mut up_r, upbuf, is_head).await?;
            // informational answers are not passed on over HTTP/2 (hyper sends none)
            if !(102..200).contains(&resp.code) {
                return Ok(resp);
            }
        }
    };
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
            r = &mut recv => {
                return match r {
                    Ok(resp) if sent => Ok(resp),
                    // answered before the body was all sent: the connection is not reusable
                    Ok(mut resp) => { resp.keep_alive = false; Ok(resp) }
                    Err(ReadFailure::Nothing(_)) => Err(Sent::Stale),
                    Err(ReadFailure::Broken(_)) => Err(Sent::Upstream),
                };
            }
            () = &mut timer, if sent => return Err(Sent::Timeout),
        }
    }
}

/// How a relayed body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Complete, and the app's connection can serve another request.
    Reusable,
    /// Complete (to the app's close, or the connection is spent).
    Complete,
    /// Cut short: the app broke off, went over a limit, or the client stopped reading.
    Broken,
}

/// Passes the app's response body on as HTTP/2 data frames.
struct Relay {
    settings: crate::config::ProxySettings,
    framing: Framing,
    reusable: bool,
    upstream: SocketAddr,
}

impl Relay {
    /// The body bytes sent, and how the body ended.
    async fn run(
        &self,
        conn: &mut Conn,
        tx: &mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>,
    ) -> (u64, End) {
        let limit = self.settings.max_response_body.unwrap_or(u64::MAX);
        let idle = self.settings.upstream_timeout;
        let mut sent = 0u64;
        let mut chunked = Chunked::default();
        let mut left = match self.framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        let buf: &mut BytesMut = &mut conn.buf;
        loop {
            let mut out = BytesMut::new();
            let finished = match self.framing {
                Framing::Empty => true,
                Framing::Length(_) => {
                    let n = (left as usize).min(buf.len());
                    out.extend_from_slice(&buf.split_to(n));
                    left -= n as u64;
                    left == 0
                }
                Framing::Chunked => {
                    let mut ranges = Vec::new();
                    let Ok(used) = chunked.feed(buf, |r| ranges.push(r)) else {
                        return (sent, End::Broken);
                    };
                    let part = buf.split_to(used);
                    for r in ranges {
                        out.extend_from_slice(&part[r]);
                    }
                    chunked.done()
                }
                Framing::Close => {
                    out.extend_from_slice(&buf.split());
                    false
                }
            };
            sent += out.len() as u64;
            if sent > limit {
                return (sent, End::Broken);
            }
            // a client that takes nothing for `upstream_timeout` (a zero flow-control window)
            // gives its pooled connection back
            if !out.is_empty() {
                match tokio::time::timeout(idle, tx.send(Ok(Frame::data(out.freeze())))).await {
                    Ok(Ok(())) => {}
                    // the client reset the stream, or stopped reading
                    Ok(Err(_)) | Err(_) => return (sent, End::Broken),
                }
            }
            if finished {
                let reusable = self.reusable && buf.is_empty();
                return (
                    sent,
                    if reusable {
                        End::Reusable
                    } else {
                        End::Complete
                    },
                );
            }
            buf.reserve(CHUNK);
            match tokio::time::timeout(idle, conn.stream.read_buf(buf)).await {
                Ok(Ok(0)) if self.framing == Framing::Close => return (sent, End::Complete),
                Ok(Ok(n)) if n > 0 => {}
                _ => {
                    return (sent, End::Broken);
                }
            }
        }
    }
}

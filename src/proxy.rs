//! Proxy: one HTTP/1.1 listener per environment, forwarding to the active instance.
//!
//! The upstream is swapped atomically ([`Proxy::switch`]); every request counts itself in
//! flight on the upstream it picked until its response body is done, so the pipeline can wait
//! for the old instance to drain ([`Upstream::drain`]) before stopping it. No upstream yet
//! answers 503 with a plain message.
//!
//! Each client connection keeps its own keep-alive connection to the upstream it last used
//! (HTTP/1.1 serves one request at a time per connection), so forwarding takes no shared
//! pool lock; after a switch the next request on it opens a connection to the new upstream.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Body, Frame, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

use crate::config::ProxySettings;
use crate::listener::{ConnStats, Gate};

type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// One instance the proxy can send traffic to.
#[derive(Debug)]
pub struct Upstream {
    pub addr: SocketAddr,
    inflight: AtomicUsize,
    idle: Notify,
}

impl Upstream {
    pub fn new(addr: SocketAddr) -> Arc<Upstream> {
        Arc::new(Upstream {
            addr,
            inflight: AtomicUsize::new(0),
            idle: Notify::new(),
        })
    }

    /// Requests still being served by this upstream.
    pub fn in_flight(&self) -> usize {
        self.inflight.load(Ordering::SeqCst)
    }

    /// Waits until no request is in flight, or `timeout`; returns how many were left.
    pub async fn drain(&self, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let idle = self.idle.notified();
            let left = self.in_flight();
            if left == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return self.in_flight();
            }
        }
    }
}

/// Counts a request in flight until dropped.
struct InFlight(Arc<Upstream>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.inflight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// A response body that keeps its request counted until it is fully sent or dropped.
struct TrackedBody {
    inner: Incoming,
    _guard: InFlight,
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Counters a proxy keeps.
#[derive(Debug, Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    /// The proxy's own connections (open, refused, closed at its limits).
    pub connections: Arc<ConnStats>,
}

/// An environment's proxy: cheap to clone, shared by the listener and the pipeline.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

struct Inner {
    environment: String,
    upstream: RwLock<Option<Arc<Upstream>>>,
    /// The maintenance page's message while maintenance is on.
    maintenance: RwLock<Option<String>>,
    stats: Stats,
}

/// A client connection's own connection to an upstream.
struct UpstreamConn {
    upstream: Arc<Upstream>,
    sender: SendRequest<Incoming>,
}

/// The upstream connection a client connection holds between its requests.
type ConnCache = Arc<std::sync::Mutex<Option<UpstreamConn>>>;

async fn connect(upstream: &Arc<Upstream>) -> Result<UpstreamConn, String> {
    let stream = TcpStream::connect(upstream.addr)
        .await
        .map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .writev(false)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(UpstreamConn {
        upstream: upstream.clone(),
        sender,
    })
}

/// Headers that belong to one connection and are not forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

impl Proxy {
    pub fn new(environment: &str) -> Proxy {
        Proxy {
            inner: Arc::new(Inner {
                environment: environment.to_string(),
                upstream: RwLock::new(None),
                maintenance: RwLock::new(None),
                stats: Stats::default(),
            }),
        }
    }

    /// Sends new requests to `next` from now on; returns the upstream it replaces.
    pub fn switch(&self, next: Option<Arc<Upstream>>) -> Option<Arc<Upstream>> {
        let mut slot = self
            .inner
            .upstream
            .write()
            .unwrap_or_else(|e| e.into_inner());
        std::mem::replace(&mut *slot, next)
    }

    pub fn upstream(&self) -> Option<Arc<Upstream>> {
        self.inner
            .upstream
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Turns maintenance on (every request answers 503 with `message`) or off.
    pub fn set_maintenance(&self, message: Option<String>) {
        *self
            .inner
            .maintenance
            .write()
            .unwrap_or_else(|e| e.into_inner()) = message;
    }

    pub fn maintenance(&self) -> Option<String> {
        self.inner
            .maintenance
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }

    /// Picks the current upstream and counts the request on it, under the same read lock, so
    /// a switch either happens before (the request goes to the new one) or after (drain waits).
    fn pick(&self) -> Option<InFlight> {
        let slot = self
            .inner
            .upstream
            .read()
            .unwrap_or_else(|e| e.into_inner());
        let upstream = slot.as_ref()?;
        upstream.inflight.fetch_add(1, Ordering::SeqCst);
        Some(InFlight(upstream.clone()))
    }

    /// The cached connection if it goes to `upstream` and is still usable, else a new one.
    async fn upstream_conn(
        &self,
        cache: &ConnCache,
        upstream: &Arc<Upstream>,
    ) -> Result<UpstreamConn, String> {
        let cached = cache.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut conn) = cached
            && Arc::ptr_eq(&conn.upstream, upstream)
            && !conn.sender.is_closed()
            && conn.sender.ready().await.is_ok()
        {
            return Ok(conn);
        }
        connect(upstream).await
    }

    async fn handle(
        &self,
        mut req: Request<Incoming>,
        client: SocketAddr,
        cache: &ConnCache,
    ) -> Response<ProxyBody> {
        self.inner.stats.requests.fetch_add(1, Ordering::Relaxed);
        if let Some(message) = self.maintenance() {
            return maintenance_page(&self.inner.environment, &message);
        }
        let Some(guard) = self.pick() else {
            return self.plain(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "no release is running in environment {} yet\n",
                    self.inner.environment
                ),
            );
        };
        let headers = req.headers_mut();
        for name in HOP_BY_HOP {
            headers.remove(*name);
        }
        let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(prior) => format!("{prior}, {}", client.ip()),
            None => client.ip().to_string(),
        };
        if let Ok(v) = HeaderValue::from_str(&forwarded_for) {
            headers.insert(HeaderName::from_static("x-forwarded-for"), v);
        }
        headers.insert(
            HeaderName::from_static("x-forwarded-proto"),
            HeaderValue::from_static("http"),
        );
        strip_ferry_cookies(headers);
        let sent = match self.upstream_conn(cache, &guard.0).await {
            Ok(mut conn) => {
                let response = conn.sender.send_request(req);
                // the connection is free for this client's next request once this one is done
                *cache.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn);
                response.await.map_err(|e| e.to_string())
            }
            Err(e) => Err(e),
        };
        match sent {
            Ok(resp) => {
                let (mut parts, body) = resp.into_parts();
                for name in HOP_BY_HOP {
                    parts.headers.remove(*name);
                }
                strip_ferry_set_cookies(&mut parts.headers);
                let body = TrackedBody {
                    inner: body,
                    _guard: guard,
                };
                Response::from_parts(parts, body.boxed())
            }
            Err(e) => {
                tracing::warn!(env = %self.inner.environment, upstream = %guard.0.addr, error = %e, "upstream request failed");
                self.plain(
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "the app in environment {} did not answer\n",
                        self.inner.environment
                    ),
                )
            }
        }
    }

    fn plain(&self, status: StatusCode, text: String) -> Response<ProxyBody> {
        if status.is_server_error() {
            self.inner.stats.errors.fetch_add(1, Ordering::Relaxed);
        }
        let mut resp = Response::new(Full::new(Bytes::from(text)).map_err(|e| match e {}).boxed());
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        resp
    }

    /// Serves `listener` under `limits` (its own budget: another proxy's or the API's
    /// connections never take from it) until `shutdown` turns true, then lets open connections
    /// finish.
    pub async fn serve(
        self,
        listener: TcpListener,
        settings: ProxySettings,
        shutdown: watch::Receiver<bool>,
    ) {
        let gate = Gate::new(
            format!("proxy {}", self.inner.environment),
            settings.connections,
            self.inner.stats.connections.clone(),
        );
        let service = move |peer: SocketAddr| {
            let proxy = self.clone();
            let cache: ConnCache = Arc::default();
            hyper::service::service_fn(move |req| {
                let proxy = proxy.clone();
                let cache = cache.clone();
                async move { Ok::<_, Infallible>(proxy.handle(req, peer, &cache).await) }
            })
        };
        crate::listener::serve(listener, gate, service, shutdown).await;
    }
}

/// True when `pair` (`name=value` of a `Cookie` or `Set-Cookie` header) is one of ferry's own
/// cookies ([`crate::auth::COOKIES`]).
fn is_ferry_cookie(pair: &[u8]) -> bool {
    let name = pair
        .split(|b| *b == b'=')
        .next()
        .unwrap_or(pair)
        .trim_ascii();
    crate::auth::COOKIES.iter().any(|c| c.as_bytes() == name)
}

/// Removes ferry's own cookies from the `Cookie` headers of a request going to an app and keeps
/// the app's (in one header); the header goes when nothing is left. A browser sends the
/// dashboard's session cookie to every port of ferry's host, so without this any app would
/// receive it and could act as whoever signed in.
fn strip_ferry_cookies(headers: &mut hyper::HeaderMap) {
    let values = headers.get_all(header::COOKIE);
    let pairs = || {
        values
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
            .map(<[u8]>::trim_ascii)
            .filter(|pair| !pair.is_empty())
    };
    if !pairs().any(is_ferry_cookie) {
        return;
    }
    let kept: Vec<&[u8]> = pairs().filter(|pair| !is_ferry_cookie(pair)).collect();
    let kept = HeaderValue::from_bytes(&kept.join(&b"; "[..]));
    headers.remove(header::COOKIE);
    if let Ok(value) = kept
        && !value.is_empty()
    {
        headers.insert(header::COOKIE, value);
    }
}

/// Drops the `Set-Cookie` headers of an app's response that would set one of ferry's own
/// cookies (an app must not plant a session of its choosing in the dashboard's browser).
fn strip_ferry_set_cookies(headers: &mut hyper::HeaderMap) {
    if !headers
        .get_all(header::SET_COOKIE)
        .iter()
        .any(|v| is_ferry_cookie(v.as_bytes()))
    {
        return;
    }
    let kept: Vec<HeaderValue> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter(|v| !is_ferry_cookie(v.as_bytes()))
        .cloned()
        .collect();
    headers.remove(header::SET_COOKIE);
    for value in kept {
        headers.append(header::SET_COOKIE, value);
    }
}

/// Resolves once `shutdown` says stop (or its sender is gone).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Seconds clients are told to wait before trying again during maintenance.
pub const MAINTENANCE_RETRY_AFTER: u32 = 120;

/// The 503 page served while an environment is in maintenance.
fn maintenance_page(environment: &str, message: &str) -> Response<ProxyBody> {
    let escaped: String = message
        .chars()
        .map(|c| match c {
            '<' => "&lt;".to_string(),
            '>' => "&gt;".to_string(),
            '&' => "&amp;".to_string(),
            '"' => "&quot;".to_string(),
            c => c.to_string(),
        })
        .collect();
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Down for maintenance</title></head>\
         <body style=\"font-family: sans-serif; max-width: 36em; margin: 4em auto; padding: 0 1em\">\
         <h1>Down for maintenance</h1><p>{escaped}</p>\
         <p><small>{environment}</small></p></body></html>\n"
    );
    let mut resp = Response::new(Full::new(Bytes::from(html)).map_err(|e| match e {}).boxed());
    *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::RETRY_AFTER,
        HeaderValue::from(MAINTENANCE_RETRY_AFTER),
    );
    resp
}

#[cfg(test)]
mod tests;

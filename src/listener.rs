//! Serving HTTP/1.1 on one listener without letting connections starve ferry.
//!
//! The API and every environment's proxy each serve through their own [`Gate`]: a budget of
//! connections in all and per client address (an IPv6 client counts by its /64), so a flood on
//! one listener never takes what another needs. Every connection must send a complete request
//! header within `header_timeout` of opening, and again within it after each response (hyper's
//! `header_read_timeout`, which also ends idle keep-alive connections).
//!
//! At a limit, the oldest *idle* connection (no request in progress: half-open, trickling a
//! header, or kept alive between requests) in the exhausted budget is closed to make room, so a
//! client that sends its request promptly still gets in while a flood holds the rest; when every
//! connection is busy the new one gets a canned `503` and is closed. Either way it is counted
//! ([`ConnStats`], served at `/metrics`) and logged at most once per [`WARN_EVERY`].

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::{Body, Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

pub use crate::config::ConnLimits;

/// How often a listener at its limit logs that it is.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// What a listener's connections did, for `/metrics`.
#[derive(Debug, Default)]
pub struct ConnStats {
    /// Connections open now.
    pub open: AtomicU64,
    /// Connections turned away at a limit (every connection was busy).
    pub refused: AtomicU64,
    /// Idle connections closed to make room for a new one at a limit.
    pub evicted: AtomicU64,
    /// Connections closed because a request header did not arrive in time.
    pub timed_out: AtomicU64,
}

/// One open connection as its gate sees it.
struct Conn {
    client: IpAddr,
    /// Requests in progress on it (from a complete header until the response is sent).
    busy: Arc<AtomicUsize>,
    close: Arc<Notify>,
}

#[derive(Default)]
struct Table {
    next_id: u64,
    /// Open connections by id, so oldest first.
    conns: BTreeMap<u64, Conn>,
    per_client: HashMap<IpAddr, usize>,
}

impl Table {
    fn forget(&mut self, id: u64) -> bool {
        let Some(conn) = self.conns.remove(&id) else {
            return false;
        };
        if let Some(n) = self.per_client.get_mut(&conn.client) {
            *n -= 1;
            if *n == 0 {
                self.per_client.remove(&conn.client);
            }
        }
        true
    }
}

/// One listener's connection budget.
pub struct Gate {
    /// `api` or `proxy NAME`, for log lines.
    name: String,
    limits: ConnLimits,
    table: Mutex<Table>,
    stats: Arc<ConnStats>,
    last_warning: Mutex<Option<Instant>>,
}

/// Why a connection was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The listener's `max_connections` are all busy.
    Full,
    /// This client's `max_connections_per_client` are all busy.
    ClientFull,
}

/// A connection's place in its gate; gives it back when dropped.
pub struct Ticket {
    gate: Arc<Gate>,
    id: u64,
    busy: Arc<AtomicUsize>,
    close: Arc<Notify>,
}

impl Ticket {
    /// Marks the connection busy (a request in progress: never closed to make room) until
    /// the guard is dropped.
    pub fn busy(&self) -> Busy {
        Busy::new(&self.busy)
    }

    /// True while a request is in progress on the connection.
    pub fn is_busy(&self) -> bool {
        self.busy.load(Ordering::SeqCst) > 0
    }

    /// Notified when the gate closes this (idle) connection to make room for a new one.
    pub fn evicted(&self) -> Arc<Notify> {
        self.close.clone()
    }

    /// Counts the connection as closed for not sending a request header in time.
    pub fn timed_out(&self) {
        self.gate.stats.timed_out.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut table = self.gate.table.lock().unwrap_or_else(|e| e.into_inner());
        table.forget(self.id);
        self.gate.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The key a client is counted under: its address, or its /64 for IPv6 (one host usually
/// holds a whole /64).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & (!0u128 << 64))),
        v4 => v4,
    }
}

impl Gate {
    pub fn new(name: impl Into<String>, limits: ConnLimits, stats: Arc<ConnStats>) -> Arc<Gate> {
        Arc::new(Gate {
            name: name.into(),
            limits,
            table: Mutex::default(),
            stats,
            last_warning: Mutex::new(None),
        })
    }

    pub fn stats(&self) -> &ConnStats {
        &self.stats
    }

    /// Takes a place for a connection from `peer`, closing the oldest idle connection of the
    /// exhausted budget when at a limit; refused when every connection there is busy.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Ticket, Refused> {
        let client = client_key(peer);
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let client_full = table.per_client.get(&client).copied().unwrap_or(0)
            >= self.limits.max_connections_per_client;
        let full = table.conns.len() >= self.limits.max_connections;
        if client_full || full {
            // the client's own budget is the tighter one: make room in it (which makes room in
            // the whole as well); otherwise anyone's idle connection will do
            let victim = table
                .conns
                .iter()
                .find(|(_, c)| {
                    (!client_full || c.client == client) && c.busy.load(Ordering::SeqCst) == 0
                })
                .map(|(id, _)| *id);
            let Some(id) = victim else {
                drop(table);
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                self.warn();
                return Err(if client_full {
                    Refused::ClientFull
                } else {
                    Refused::Full
                });
            };
            if let Some(conn) = table.conns.get(&id) {
                conn.close.notify_one();
            }
            table.forget(id);
            self.stats.evicted.fetch_add(1, Ordering::Relaxed);
            self.warn();
        }
        let id = table.next_id;
        table.next_id += 1;
        let busy = Arc::new(AtomicUsize::new(0));
        let close = Arc::new(Notify::new());
        table.conns.insert(
            id,
            Conn {
                client,
                busy: busy.clone(),
                close: close.clone(),
            },
        );
        *table.per_client.entry(client).or_default() += 1;
        self.stats.open.fetch_add(1, Ordering::Relaxed);
        Ok(Ticket {
            gate: self.clone(),
            id,
            busy,
            close,
        })
    }

    /// Logs that the limit is reached, at most once per [`WARN_EVERY`].
    fn warn(&self) {
        let mut last = self.last_warning.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|at| at.elapsed() < WARN_EVERY) {
            return;
        }
        *last = Some(Instant::now());
        tracing::warn!(
            listener = %self.name,
            max_connections = self.limits.max_connections,
            max_connections_per_client = self.limits.max_connections_per_client,
            open = self.stats.open.load(Ordering::Relaxed),
            refused_total = self.stats.refused.load(Ordering::Relaxed),
            closed_idle_total = self.stats.evicted.load(Ordering::Relaxed),
            "connection limit reached: closing idle connections, refusing new ones while all are busy"
        );
    }
}

/// Counts a request in progress on its connection until dropped.
pub struct Busy(Arc<AtomicUsize>);

impl Busy {
    fn new(count: &Arc<AtomicUsize>) -> Busy {
        count.fetch_add(1, Ordering::SeqCst);
        Busy(count.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that keeps its connection busy until it is sent or dropped.
pub struct BusyBody<B> {
    inner: B,
    _busy: Busy,
}

impl<B: Body + Unpin> Body for BusyBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A connection's service, marking the connection busy while it serves a request; once the
/// listener stops, each response says `Connection: close`.
struct Tracked<S> {
    inner: S,
    busy: Arc<AtomicUsize>,
    closing: watch::Receiver<bool>,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for Tracked<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
{
    type Response = Response<BusyBody<B>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let busy = Busy::new(&self.busy);
        let answer = self.inner.call(req);
        let closing = self.closing.clone();
        Box::pin(async move {
            let mut resp = answer.await?;
            if *closing.borrow() {
                resp.headers_mut().insert(
                    hyper::header::CONNECTION,
                    hyper::header::HeaderValue::from_static("close"),
                );
            }
            Ok(resp.map(|inner| BusyBody { inner, _busy: busy }))
        })
    }
}

/// What a refused connection is sent before it is closed.
pub const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: text/plain; charset=utf-8\r\ncontent-length: 38\r\n\
retry-after: 1\r\nconnection: close\r\n\r\n\
too many connections; try again later\n";

/// How long kept-alive connections get, once the listener stops, to send one more request and
/// be told `Connection: close` with its response (the client then opens its next connection to
/// whoever accepts now — a new `serve` — instead of racing a close); then idle ones are closed.
pub const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Serves HTTP/1.1 on `listener` through `gate` until `shutdown` says stop, then stops
/// accepting, closes kept-alive connections after their next response (within
/// [`CLOSE_GRACE`]) and lets the requests in progress finish for up to 5 s. `service` makes
/// each connection's service from the peer's address.
pub async fn serve<F, S, B>(
    listener: TcpListener,
    gate: Arc<Gate>,
    service: F,
    mut shutdown: watch::Receiver<bool>,
) where
    F: Fn(SocketAddr) -> S,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // flipped once the kept-alive connections had their grace: the idle ones close then
    let (drain, draining) = watch::channel(false);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(gate.limits.header_timeout)
        .keep_alive(true)
        .writev(false);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // out of file descriptors, most likely: wait for some to be given back
                    tracing::warn!(listener = %gate.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = crate::proxy::stopped(&mut shutdown) => break,
        };
        let ticket = match gate.admit(peer.ip()) {
            Ok(ticket) => ticket,
            Err(_) => {
                // a best effort, never waited for: the socket is closed right after
                let _ = stream.try_write(REFUSED);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = Tracked {
            inner: service(peer),
            busy: ticket.busy.clone(),
            closing: shutdown.clone(),
        };
        // with upgrades: `ferry exec` switches protocols (the connection then leaves here)
        let conn = http
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let stats = gate.stats.clone();
        let mut draining = draining.clone();
        tokio::spawn(async move {
            let close = ticket.close.clone();
            let mut conn = std::pin::pin!(conn);
            let done = tokio::select! {
                done = conn.as_mut() => Some(done),
                () = close.notified() => None,
                () = crate::proxy::stopped(&mut draining) => {
                    conn.as_mut().graceful_shutdown();
                    tokio::select! {
                        done = conn.as_mut() => Some(done),
                        () = close.notified() => None,
                    }
                }
            };
            if done.is_some_and(|d| d.is_err_and(|e| e.is_timeout())) {
                stats.timed_out.fetch_add(1, Ordering::Relaxed);
            }
            drop(ticket);
        });
    }
    drop(listener);
    let grace = tokio::time::Instant::now() + CLOSE_GRACE;
    while gate.stats.open.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < grace {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drain.send_replace(true);
    let done = tokio::time::Instant::now() + Duration::from_secs(5);
    while gate.stats.open.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < done {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(max: usize, per_client: usize) -> Arc<Gate> {
        Gate::new(
            "test",
            ConnLimits {
                max_connections: max,
                max_connections_per_client: per_client,
                header_timeout: Duration::from_secs(1),
            },
            Arc::default(),
        )
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn at_a_client_limit_its_oldest_idle_connection_makes_room() {
        let g = gate(10, 2);
        let first = g.admit(A).unwrap();
        let second = g.admit(A).unwrap();
        let _busy = Busy::new(&first.busy);
        let _third = g.admit(A).unwrap();
        // the first is busy, so the second (idle) was closed for the third
        assert_eq!(g.stats().evicted.load(Ordering::Relaxed), 1);
        assert!(g.table.lock().unwrap().conns.contains_key(&first.id));
        assert!(!g.table.lock().unwrap().conns.contains_key(&second.id));
        // another client is not touched by A's budget
        let _b = g.admit(B).unwrap();
        assert_eq!(g.stats().evicted.load(Ordering::Relaxed), 1);
        drop(second);
        assert_eq!(g.stats().open.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn when_every_connection_is_busy_a_new_one_is_refused_and_counted() {
        let g = gate(3, 1);
        let a = g.admit(A).unwrap();
        let _x = Busy::new(&a.busy);
        assert_eq!(g.admit(A).err(), Some(Refused::ClientFull));
        assert!(g.admit(B).is_ok(), "another client still gets in");
        let g = gate(2, 5);
        let a = g.admit(A).unwrap();
        let b = g.admit(B).unwrap();
        let (_x, _y) = (Busy::new(&a.busy), Busy::new(&b.busy));
        assert_eq!(g.admit(A).err(), Some(Refused::Full));
        assert_eq!(g.stats().refused.load(Ordering::Relaxed), 1);
        drop((_x, a));
        assert!(g.admit(A).is_ok(), "a place was given back");
    }

    #[test]
    fn ipv6_clients_count_by_their_64() {
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let other_in_64: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(one), client_key(other_in_64));
        assert_ne!(client_key(one), client_key(other_64));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(client_key(mapped), A);
    }
}

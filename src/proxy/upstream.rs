//! An instance the proxy sends traffic to, and its pool of connections.
//!
//! Every client of an environment shares one pool per instance: a request takes an idle
//! connection (or opens one, up to `upstream_max_connections`), and gives it back when its
//! response is done, so an idle client holds none. Idle ones beyond `upstream_keepalive` are
//! closed once idle for [`TRIM_AFTER`] (under load they are wanted again at once, and closing
//! them would cost a new connection per request), and every one after
//! `upstream_idle_timeout`. When every connection is in use a request
//! waits in line (first come, first served) up to `upstream_queue_timeout`. An upgraded
//! connection (WebSocket) or a server-sent event stream leaves the pool's count for its
//! lifetime ([`Upstream::detach`]), so long-lived streams never starve plain requests.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::net::TcpStream;
use tokio::sync::{Notify, oneshot};

use super::metrics::{Traffic, Window};
use crate::config::ProxySettings;

/// Idle connections beyond `upstream_keepalive` are closed once idle this long (not at once:
/// under load they are wanted again in a moment).
const TRIM_AFTER: Duration = Duration::from_secs(1);

/// Idle connections taken after this long are checked for having been closed by the app.
const PROBE_AFTER: Duration = Duration::from_millis(100);

/// One connection to an instance.
#[derive(Debug)]
pub struct Conn {
    pub stream: TcpStream,
    /// Bytes read past the end of the last response (none on a healthy connection).
    pub buf: BytesMut,
    /// Whether it served a request before (a failure on it may be a keep-alive race).
    pub reused: bool,
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// What a waiting request is handed.
enum Grant {
    Conn(Conn),
    /// A place to open a new connection (already counted as open).
    Open,
}

#[derive(Default)]
struct PoolState {
    /// Most recently used last.
    idle: Vec<Idle>,
    /// Connections counted against `upstream_max_connections` (idle ones included).
    open: usize,
    waiters: VecDeque<oneshot::Sender<Grant>>,
    sweeper: bool,
}

/// Counters of an instance's pool, for `/metrics`.
#[derive(Debug, Default)]
pub struct PoolStats {
    /// Connections ever opened to the instance.
    pub opened: AtomicU64,
    /// Upgraded connections and event streams open now (outside the pool's count).
    pub detached: AtomicUsize,
    /// Requests that waited for a connection and got 503.
    pub queue_timeouts: AtomicU64,
}

/// One instance the proxy can send traffic to.
pub struct Upstream {
    pub addr: SocketAddr,
    inflight: AtomicUsize,
    drained: Notify,
    pool: Mutex<PoolState>,
    /// Replaced by a switch: connections given back are closed, not kept.
    retired: AtomicBool,
    pub stats: PoolStats,
    /// Its traffic figures (requests, classes, proxy errors, latency) per second.
    pub traffic: Traffic,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("addr", &self.addr)
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

/// Why no connection could be had.
#[derive(Debug)]
pub enum CheckoutError {
    /// Every connection stayed busy for `upstream_queue_timeout`.
    Busy,
    /// The instance refused or did not take the connection.
    Connect(std::io::Error),
}

impl Upstream {
    pub fn new(addr: SocketAddr) -> Arc<Upstream> {
        Arc::new(Upstream {
            addr,
            inflight: AtomicUsize::new(0),
            drained: Notify::new(),
            pool: Mutex::default(),
            retired: AtomicBool::new(false),
            stats: PoolStats::default(),
            traffic: Traffic::default(),
        })
    }

    /// Its traffic figures over the last `span` (at most [`super::metrics::MAX_WINDOW`]).
    pub fn window(&self, span: Duration) -> Window {
        self.traffic.window(span)
    }

    /// Its traffic figures over the `span` up to `end` (e.g. the moment of a switch).
    pub fn window_until(&self, end: Instant, span: Duration) -> Window {
        self.traffic.window_at(end, span)
    }

    /// Requests still being served by this upstream.
    pub fn in_flight(&self) -> usize {
        self.inflight.load(Ordering::SeqCst)
    }

    /// Waits until no request is in flight, or `timeout`; returns how many were left.
    pub async fn drain(&self, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let idle = self.drained.notified();
            let left = self.in_flight();
            if left == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return self.in_flight();
            }
        }
    }

    /// Counts a request in flight until the guard is dropped.
    pub(super) fn enter(self: &Arc<Self>) -> InFlight {
        self.inflight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.pool.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Connections open to it now: (in the pool's count, idle among them, detached).
    pub fn connections(&self) -> (usize, usize, usize) {
        let pool = self.lock();
        (
            pool.open,
            pool.idle.len(),
            self.stats.detached.load(Ordering::Relaxed),
        )
    }

    /// Takes traffic again (a rollback switches back to it).
    pub(super) fn activate(&self) {
        self.traffic.serving();
        self.retired.store(false, Ordering::SeqCst);
    }

    /// Stops keeping connections: idle ones are closed now, busy ones when given back.
    pub(super) fn retire(&self) {
        self.retired.store(true, Ordering::SeqCst);
        let idle = {
            let mut pool = self.lock();
            let idle = std::mem::take(&mut pool.idle);
            pool.open -= idle.len();
            idle
        };
        drop(idle);
    }

    /// An idle connection, a new one, or one given back by another request while this one
    /// waits in line.
    pub(super) async fn checkout(
        self: &Arc<Self>,
        settings: &ProxySettings,
    ) -> Result<(Lease, Conn), CheckoutError> {
        let conn = self.take(settings).await?;
        let lease = Lease {
            upstream: self.clone(),
            counted: true,
        };
        Ok((lease, conn))
    }

    async fn take(self: &Arc<Self>, settings: &ProxySettings) -> Result<Conn, CheckoutError> {
        let waiting = {
            let mut pool = self.lock();
            let now = Instant::now();
            while let Some(idle) = pool.idle.pop() {
                let quiet = now.duration_since(idle.since);
                // a connection back a moment ago is open: the probe (a syscall) is for
                // those the app may have closed while they sat idle
                if quiet < settings.upstream_idle_timeout
                    && (quiet < PROBE_AFTER || still_open(&idle.conn.stream))
                {
                    return Ok(idle.conn);
                }
                pool.open -= 1;
            }
            if pool.open < settings.upstream_max_connections {
                pool.open += 1;
                None
            } else {
                let (tx, rx) = oneshot::channel();
                pool.waiters.push_back(tx);
                Some(rx)
            }
        };
        if let Some(rx) = waiting {
            match tokio::time::timeout(settings.upstream_queue_timeout, rx).await {
                Ok(Ok(Grant::Conn(conn))) => return Ok(conn),
                Ok(Ok(Grant::Open)) => {}
                // the sender went away: the pool is gone with its proxy
                Ok(Err(_)) | Err(_) => {
                    self.stats.queue_timeouts.fetch_add(1, Ordering::Relaxed);
                    return Err(CheckoutError::Busy);
                }
            }
        }
        match TcpStream::connect(self.addr).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                self.stats.opened.fetch_add(1, Ordering::Relaxed);
                self.start_sweeper(settings);
                Ok(Conn {
                    stream,
                    buf: BytesMut::new(),
                    reused: false,
                })
            }
            Err(e) => {
                self.closed();
                Err(CheckoutError::Connect(e))
            }
        }
    }

    /// Gives a connection back after a complete exchange.
    fn give_back(&self, mut conn: Conn, settings: &ProxySettings) {
        conn.reused = true;
        let mut pool = self.lock();
        let mut grant = Grant::Conn(conn);
        while let Some(waiter) = pool.waiters.pop_front() {
            match waiter.send(grant) {
                Ok(()) => return,
                Err(back) => grant = back,
            }
        }
        let Grant::Conn(conn) = grant else { return };
        // beyond `upstream_keepalive` too: under load it is wanted again in a moment (closing
        // it would mean a new connection per request); the sweep closes it once it idles
        if self.retired.load(Ordering::SeqCst) || settings.upstream_keepalive == 0 {
            pool.open -= 1;
            drop(pool);
            drop(conn);
            return;
        }
        pool.idle.push(Idle {
            conn,
            since: Instant::now(),
        });
    }

    /// A connection of the pool's count was closed (or never opened): its place goes to the
    /// first request in line.
    fn closed(&self) {
        let mut pool = self.lock();
        while let Some(waiter) = pool.waiters.pop_front() {
            if waiter.send(Grant::Open).is_ok() {
                return;
            }
        }
        pool.open -= 1;
    }

    /// Closes idle connections past `upstream_idle_timeout`, and those beyond
    /// `upstream_keepalive` idle for [`TRIM_AFTER`], while the upstream lives, so the app
    /// sees them go even without traffic.
    fn start_sweeper(self: &Arc<Self>, settings: &ProxySettings) {
        {
            let mut pool = self.lock();
            if pool.sweeper {
                return;
            }
            pool.sweeper = true;
        }
        let weak: Weak<Upstream> = Arc::downgrade(self);
        let (timeout, keep) = (settings.upstream_idle_timeout, settings.upstream_keepalive);
        let every = (timeout / 2).clamp(Duration::from_millis(100), TRIM_AFTER);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(upstream) = weak.upgrade() else {
                    return;
                };
                let stale = upstream.sweep(timeout, keep);
                drop(stale);
            }
        });
    }

    /// Takes out of the pool what a sweep closes (dropped by the caller, outside the lock).
    fn sweep(&self, timeout: Duration, keep: usize) -> Vec<Idle> {
        let mut pool = self.lock();
        let now = Instant::now();
        // most recently used last: the excess to trim is at the front
        let mut excess = pool.idle.len().saturating_sub(keep);
        let (kept, stale): (Vec<Idle>, Vec<Idle>) =
            std::mem::take(&mut pool.idle).into_iter().partition(|i| {
                let quiet = now.duration_since(i.since);
                let trim = excess > 0 && quiet >= TRIM_AFTER;
                if trim {
                    excess -= 1;
                }
                !trim && quiet < timeout && still_open(&i.conn.stream)
            });
        pool.idle = kept;
        pool.open -= stale.len();
        stale
    }
}

/// False when the app closed the connection (or sent something unasked) while it was idle.
fn still_open(stream: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// A place in an upstream's pool, held by a connection taken from it: given back with the
/// connection after a complete exchange, detached, or (dropped) freed for the next request.
pub struct Lease {
    upstream: Arc<Upstream>,
    counted: bool,
}

impl Lease {
    pub fn give_back(mut self, conn: Conn, settings: &ProxySettings) {
        self.counted = false;
        self.upstream.give_back(conn, settings);
    }

    /// The connection leaves the pool's count for good (upgraded, or an event stream).
    pub fn detach(mut self) -> Detached {
        self.counted = false;
        self.upstream.closed();
        self.upstream.stats.detached.fetch_add(1, Ordering::Relaxed);
        Detached(self.upstream.clone())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.counted {
            self.upstream.closed();
        }
    }
}

/// Counts a request in flight on its upstream until dropped.
pub struct InFlight(pub Arc<Upstream>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.inflight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.drained.notify_waiters();
        }
    }
}

/// A connection outside the pool's count, until dropped.
pub struct Detached(Arc<Upstream>);

impl Drop for Detached {
    fn drop(&mut self) {
        self.0.stats.detached.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(max: usize, keepalive: usize) -> ProxySettings {
        ProxySettings {
            upstream_max_connections: max,
            upstream_keepalive: keepalive,
            upstream_queue_timeout: Duration::from_millis(300),
            ..ProxySettings::DEFAULT
        }
    }

    #[tokio::test]
    async fn the_pool_reuses_bounds_and_hands_over_connections() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                held.push(s);
            }
        });
        let up = Upstream::new(addr);
        let s = settings(2, 1);
        let a = up.checkout(&s).await.unwrap();
        let b = up.checkout(&s).await.unwrap();
        assert_eq!(up.connections().0, 2);
        // a third waits in line and gets the first connection given back
        let up2 = up.clone();
        let third = tokio::spawn(async move { up2.checkout(&s).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        a.0.give_back(a.1, &s);
        let c = third.await.unwrap().unwrap();
        assert!(c.1.reused);
        // at the limit with nothing given back: 503 after the queue timeout
        assert!(matches!(up.checkout(&s).await, Err(CheckoutError::Busy)));
        // idle connections beyond `upstream_keepalive` go once they idled for TRIM_AFTER
        b.0.give_back(b.1, &s);
        c.0.give_back(c.1, &s);
        assert_eq!(up.connections(), (2, 2, 0));
        drop(up.sweep(s.upstream_idle_timeout, s.upstream_keepalive));
        assert_eq!(
            up.connections(),
            (2, 2, 0),
            "not while they may be wanted again"
        );
        tokio::time::sleep(TRIM_AFTER).await;
        drop(up.sweep(s.upstream_idle_timeout, s.upstream_keepalive));
        assert_eq!(up.connections(), (1, 1, 0));
        let d = up.checkout(&s).await.unwrap();
        assert!(d.1.reused);
        // a detached connection frees its place; a dropped lease too
        let _ws = d.0.detach();
        assert_eq!(up.connections(), (0, 0, 1));
        drop(up.checkout(&s).await.unwrap());
        assert_eq!(up.connections(), (0, 0, 1));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        up.retire();
        assert_eq!(up.connections().1, 0);
    }
}

//! Proxy: one HTTP/1.1 listener per environment, forwarding to the active instance; the same
//! forwarder serves the front door's listeners (TLS, routed per request by a [`Router`], HTTP/2
//! through a bridge, [`h2`]).
//!
//! ferry's own forwarder ([`conn`]) rather than a general HTTP server and client pair: it
//! parses each head once (`httparse`), writes the app's head straight from the client's bytes,
//! and streams bodies through bounded buffers; README "The proxy" has the figures that chose
//! it over hyper.
//!
//! The upstream is swapped atomically ([`Proxy::switch`]); every request counts itself in
//! flight on the upstream it picked until its response is done, so the pipeline can wait for
//! the old instance to drain ([`Upstream::drain`]) before stopping it; the old instance's
//! idle pooled connections are closed at the switch. No upstream yet answers 503 with a
//! plain message. During a canary rollout a [`canary::Split`] sends a share of clients to
//! the new instance ([`Proxy::split`]); without one, picking costs what it always did.

mod access_log;
mod answer;
pub mod canary;
mod conn;
mod cookies;
mod h2;
mod http;
pub mod metrics;
mod outbound;
mod route;
mod serve;
mod upstream;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

pub use access_log::AccessLog;
pub use metrics::Window;
pub use route::{Answer, ClientIo, RequestInfo, Route, Router};
pub use serve::{Listening, serve};
pub use upstream::{PoolStats, Upstream};

use crate::config::{ProxySettings, Sticky};
use crate::listener::ConnStats;

/// Counters a proxy keeps.
#[derive(Debug, Default)]
pub struct Stats {
    pub requests: AtomicU64,
    /// Requests ferry itself could not pass on (502, 503, 504).
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
    upstream: RwLock<Slot>,
    /// The maintenance page's message while maintenance is on.
    maintenance: RwLock<Option<String>>,
    stats: Stats,
    access_log: Option<AccessLog>,
    /// What a request gets (503) while there is no upstream.
    unserved: String,
    /// Whether requests are counted per instance (`traffic_metrics`, on by default).
    metrics: AtomicBool,
}

/// Where new requests go: the current instance, and during a rollout the split.
#[derive(Default)]
struct Slot {
    current: Option<Arc<Upstream>>,
    split: Option<canary::Split>,
}

/// A request's upstream, counted in flight, and the canary cookie its response sets (a
/// client new to a rollout).
pub(crate) struct Picked {
    pub guard: upstream::InFlight,
    pub set_cookie: Option<String>,
}

impl Proxy {
    pub fn new(environment: &str) -> Proxy {
        Proxy::build(environment, None)
    }

    /// A proxy that writes a JSON line per request to `access_log`.
    pub fn with_access_log(environment: &str, access_log: AccessLog) -> Proxy {
        Proxy::build(environment, Some(access_log))
    }

    /// An environment's preview proxy: it reaches a deploy's new instance from the end of its
    /// health checks until the switch (see `pipeline/checks.rs`); otherwise it answers 503
    /// saying so.
    pub fn preview(environment: &str) -> Proxy {
        let mut proxy = Proxy::build(&format!("{environment} (preview)"), None);
        if let Some(inner) = Arc::get_mut(&mut proxy.inner) {
            inner.unserved = format!(
                "no new release of environment {environment} is waiting for traffic: its preview address reaches a deploy's new release from the end of its health checks until the switch"
            );
        }
        proxy
    }

    fn build(environment: &str, access_log: Option<AccessLog>) -> Proxy {
        Proxy {
            inner: Arc::new(Inner {
                environment: environment.to_string(),
                upstream: RwLock::new(Slot::default()),
                maintenance: RwLock::new(None),
                stats: Stats::default(),
                access_log,
                unserved: format!("no release is running in environment {environment} yet"),
                metrics: AtomicBool::new(true),
            }),
        }
    }

    /// Sends new requests to `next` from now on, ending any split; returns the upstream it
    /// replaces, whose idle connections are closed (requests in flight on it finish), as are
    /// those of a split's new instance when it is not `next`.
    pub fn switch(&self, next: Option<Arc<Upstream>>) -> Option<Arc<Upstream>> {
        if let Some(next) = &next {
            next.activate();
        }
        let (old, split) = {
            let mut slot = self.slot_mut();
            let split = slot.split.take();
            (std::mem::replace(&mut slot.current, next.clone()), split)
        };
        let is_next = |u: &Arc<Upstream>| next.as_ref().is_some_and(|n| Arc::ptr_eq(n, u));
        if let Some(old) = &old
            && !is_next(old)
        {
            old.retire();
        }
        if let Some(split) = split
            && !is_next(&split.upstream)
        {
            split.upstream.retire();
        }
        old
    }

    /// What a request gets (with 503) while there is no upstream.
    pub(crate) fn unserved(&self) -> &str {
        &self.inner.unserved
    }

    /// Sends `weight` percent of clients (sticky per `sticky`, shifted by `salt`) to
    /// `canary`, the others to the current upstream; called again, changes the weight.
    /// Ended by [`Proxy::unsplit`] or a [`Proxy::switch`].
    pub fn split(&self, canary: &Arc<Upstream>, weight: u8, salt: u16, sticky: &Sticky) {
        canary.activate();
        let split = canary::Split::new(
            canary.clone(),
            weight,
            salt,
            &self.inner.environment,
            sticky,
        );
        self.slot_mut().split = Some(split);
    }

    /// Ends the split: every new request goes to the current upstream again. Returns the
    /// new instance's upstream, its idle connections closed (requests in flight finish).
    pub fn unsplit(&self) -> Option<Arc<Upstream>> {
        let split = self.slot_mut().split.take()?;
        split.upstream.retire();
        Some(split.upstream)
    }

    /// The new instance of a rollout under way.
    pub fn split_upstream(&self) -> Option<Arc<Upstream>> {
        self.slot().split.as_ref().map(|s| s.upstream.clone())
    }

    /// The percentage of clients sent to the new instance, during a rollout.
    pub fn split_weight(&self) -> Option<u8> {
        self.slot().split.as_ref().map(canary::Split::weight)
    }

    fn slot(&self) -> std::sync::RwLockReadGuard<'_, Slot> {
        self.inner
            .upstream
            .read()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn slot_mut(&self) -> std::sync::RwLockWriteGuard<'_, Slot> {
        self.inner
            .upstream
            .write()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The environment it serves.
    pub fn environment(&self) -> String {
        self.inner.environment.clone()
    }

    pub fn upstream(&self) -> Option<Arc<Upstream>> {
        self.slot().current.clone()
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

    /// Turns the per-instance traffic figures on or off (`traffic_metrics`).
    pub fn set_metrics(&self, on: bool) {
        self.inner.metrics.store(on, Ordering::Relaxed);
    }

    /// Counts what a request to `upstream` came to, when traffic figures are on.
    fn record(&self, upstream: &Upstream, answered: metrics::Answered) {
        if self.inner.metrics.load(Ordering::Relaxed) {
            upstream.traffic.record(answered);
        }
    }

    fn access_log(&self) -> Option<&AccessLog> {
        self.inner.access_log.as_ref()
    }

    /// Picks the upstream of a request and counts the request on it, under the same read
    /// lock, so a switch either happens before (the request goes to the new one) or after
    /// (drain waits). During a rollout the client's bucket (from `headers()`, the request's
    /// name and value pairs, only then read) decides between the current and the new instance.
    fn pick<'a, H>(&self, headers: impl Fn() -> H) -> Option<Picked>
    where
        H: Iterator<Item = (&'a [u8], &'a [u8])>,
    {
        let slot = self.slot();
        let current = slot.current.as_ref()?;
        let Some(split) = &slot.split else {
            return Some(Picked {
                guard: current.enter(),
                set_cookie: None,
            });
        };
        let (bucket, set_cookie) = match split.bucket_of(headers) {
            Some(bucket) => (bucket, None),
            None => {
                let bucket = canary::random_bucket();
                (bucket, Some(canary::set_cookie(&split.cookie, bucket)))
            }
        };
        let to = if split.takes(bucket) {
            &split.upstream
        } else {
            current
        };
        Some(Picked {
            guard: to.enter(),
            set_cookie,
        })
    }

    /// Serves `listener` under `settings` (its own connection budget: another proxy's or the
    /// API's connections never take from it) until `shutdown` turns true; then connections
    /// finish the request they are serving (up to [`FINISH_TIMEOUT`]) and close.
    pub async fn serve(
        self,
        listener: TcpListener,
        settings: ProxySettings,
        shutdown: watch::Receiver<bool>,
    ) {
        let listening = Listening {
            name: format!("proxy {}", self.inner.environment),
            router: self.clone(),
            settings,
            stats: self.inner.stats.connections.clone(),
            tls: None,
        };
        serve(listening, listener, shutdown).await;
        if let Some(log) = self.access_log() {
            log.flush();
        }
    }
}

/// How long open connections get to finish their requests once a proxy stops.
pub const FINISH_TIMEOUT: Duration = Duration::from_secs(5);

/// Resolves once `shutdown` says stop (or its sender is gone).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Seconds clients are told to wait before trying again during maintenance.
pub const MAINTENANCE_RETRY_AFTER: u32 = 120;

/// The HTML of the 503 page served while an environment is in maintenance.
fn maintenance_page(environment: &str, message: &str) -> String {
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
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Down for maintenance</title></head>\
         <body style=\"font-family: sans-serif; max-width: 36em; margin: 4em auto; padding: 0 1em\">\
         <h1>Down for maintenance</h1><p>{escaped}</p>\
         <p><small>{environment}</small></p></body></html>\n"
    )
}

#[cfg(test)]
mod tests;

//! Traffic figures per instance: requests, responses by class, proxy errors and a latency
//! histogram ([`hdrhistogram`]), kept in a ring of one-second slices so that the figures of
//! any recent window (up to [`MAX_WINDOW`]) are a merge of the slices it covers.
//!
//! Recording is on every proxied request, so it is one lock of the current slice's own
//! mutex (never shared with the other slices, so a merge for `/metrics` or the monitor only
//! ever holds one slice at a time), a few additions and one histogram record. A slice is
//! reused once the ring comes round to it again, and its histogram is allocated only when a
//! request lands in it (about 13 KB: an idle instance costs next to nothing).
//!
//! What counts:
//! - `requests`: every request passed to the instance that came to an answer: the app's
//!   responses (any status, a WebSocket's 101 included) and the proxy errors.
//! - classes: the app's own responses by status class (2xx, 3xx, 4xx, 5xx).
//! - proxy errors: the 502, 503 and 504 ferry answered itself because the instance refused or
//!   broke the connection, had no free connection within `upstream_queue_timeout`, or did not
//!   answer within `upstream_timeout`.
//! - errors: the app's 5xx plus the proxy errors.
//! - latency: from the moment the request picked the instance to the app's response head
//!   (time to first byte); a slow client, a long download or an event stream does not count
//!   against the release. Proxy errors have no latency (the error rate covers them).
//!
//! A request the client broke off (a body that never arrived, one over `max_request_body`)
//! says nothing about the release and is not counted.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// The width of one slice of the ring.
pub const SLICE: Duration = Duration::from_secs(1);
/// The longest window the ring can answer for.
pub const MAX_WINDOW: Duration = Duration::from_secs(300);
const SLICES: usize = (MAX_WINDOW.as_secs() / SLICE.as_secs()) as usize + 1;

/// Latencies are recorded in microseconds, from 1 µs up to an hour (longer ones count as an
/// hour), to two significant figures (within 1 %).
const HIGHEST_US: u64 = 3_600_000_000;
const SIGFIG: u8 = 2;

/// Figures of one instance over a recent span of time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Window {
    /// The span the figures cover: the one asked for, or less when the instance has not been
    /// up that long.
    pub span: Duration,
    /// Requests that came to an answer (the app's responses and the proxy errors).
    pub requests: u64,
    /// The app's 5xx and the proxy errors.
    pub errors: u64,
    /// The app's responses by class: 2xx, 3xx, 4xx, 5xx.
    pub classes: [u64; 4],
    /// 502, 503 and 504 answered by ferry because the instance failed, was busy or too slow.
    pub proxy_errors: u64,
    pub p50: Option<Duration>,
    pub p90: Option<Duration>,
    pub p99: Option<Duration>,
}

/// One serving instance's figures over a window, as `ferry status --json`, the API and the
/// dashboard show them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceTraffic {
    pub release: String,
    /// The instance's address (127.0.0.1:port).
    pub instance: String,
    /// The seconds the figures cover.
    pub window_seconds: f64,
    pub requests: u64,
    /// The app's 5xx and the proxy errors.
    pub errors: u64,
    pub proxy_errors: u64,
    /// The app's responses: 2xx, 3xx, 4xx, 5xx.
    pub classes: [u64; 4],
    pub error_rate: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

impl InstanceTraffic {
    pub fn new(release: &str, instance: std::net::SocketAddr, w: &Window) -> InstanceTraffic {
        let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1000.0);
        InstanceTraffic {
            release: release.to_string(),
            instance: instance.to_string(),
            window_seconds: w.span.as_secs_f64(),
            requests: w.requests,
            errors: w.errors,
            proxy_errors: w.proxy_errors,
            classes: w.classes,
            error_rate: w.error_rate(),
            p50_ms: ms(w.p50),
            p90_ms: ms(w.p90),
            p99_ms: ms(w.p99),
        }
    }

    /// "v2: 120 requests, 0.8% errors, p50 3.10 ms, p99 41 ms over the last 60s".
    pub fn line(&self) -> String {
        let ms = |v: Option<f64>| {
            v.map_or("-".to_string(), |v| {
                millis(Duration::from_secs_f64(v / 1000.0))
            })
        };
        format!(
            "{}: {} request(s), {} errors, p50 {}, p99 {} over the last {:.0}s",
            self.release,
            self.requests,
            percent(self.error_rate.unwrap_or(0.0)),
            ms(self.p50_ms),
            ms(self.p99_ms),
            self.window_seconds
        )
    }
}

impl Window {
    /// Errors over requests; `None` without requests.
    pub fn error_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.errors as f64 / self.requests as f64)
    }

    /// "4.2% of 812 requests failed, p99 310 ms": the figures for a message.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} of {} request(s) failed",
            percent(self.error_rate().unwrap_or(0.0)),
            self.requests
        );
        if self.proxy_errors > 0 {
            s.push_str(&format!(" ({} by the proxy)", self.proxy_errors));
        }
        if let (Some(p50), Some(p99)) = (self.p50, self.p99) {
            s.push_str(&format!(", p50 {}, p99 {}", millis(p50), millis(p99)));
        }
        s
    }
}

/// A rate as a percentage with one decimal ("5.2%").
pub fn percent(rate: f64) -> String {
    format!("{:.1}%", rate * 100.0)
}

/// A latency in milliseconds for people ("310 ms", "0.42 ms").
pub fn millis(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

#[derive(Default)]
struct Counts {
    requests: u64,
    classes: [u64; 4],
    proxy_errors: u64,
}

impl Counts {
    fn add(&mut self, other: &Counts) {
        self.requests += other.requests;
        self.proxy_errors += other.proxy_errors;
        for (a, b) in self.classes.iter_mut().zip(other.classes) {
            *a += b;
        }
    }
}

/// One second of figures.
struct Slice {
    /// The second (since the ring's start) the figures are of.
    second: u64,
    counts: Counts,
    latency: Option<Histogram<u32>>,
}

fn histogram() -> Histogram<u32> {
    Histogram::new_with_bounds(1, HIGHEST_US, SIGFIG).expect("valid histogram bounds")
}

/// Totals since the instance started taking traffic, for `/metrics`' counters.
#[derive(Debug, Default)]
pub struct Totals {
    pub classes: [AtomicU64; 4],
    /// Informational answers (a WebSocket's 101).
    pub informational: AtomicU64,
    pub proxy_errors: AtomicU64,
    /// Responses with a latency, and their sum in microseconds.
    pub timed: AtomicU64,
    pub latency_us: AtomicU64,
}

/// An instance's traffic figures (see the module's doc).
pub struct Traffic {
    start: Instant,
    /// When it first took traffic (a window never claims to reach before).
    since: std::sync::OnceLock<Instant>,
    slices: Box<[Mutex<Slice>]>,
    pub totals: Totals,
}

impl std::fmt::Debug for Traffic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Traffic").finish_non_exhaustive()
    }
}

impl Default for Traffic {
    fn default() -> Self {
        Traffic::new(Instant::now())
    }
}

/// What one request came to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Answered {
    /// The app answered with this status, its head this long after the request.
    App(u16, Duration),
    /// ferry answered this 502, 503 or 504 because the instance failed it.
    ProxyError(u16),
}

impl Traffic {
    fn new(start: Instant) -> Traffic {
        let slices = (0..SLICES)
            .map(|_| {
                Mutex::new(Slice {
                    second: u64::MAX,
                    counts: Counts::default(),
                    latency: None,
                })
            })
            .collect();
        Traffic {
            start,
            since: std::sync::OnceLock::new(),
            slices,
            totals: Totals::default(),
        }
    }

    /// The instance takes traffic from now on (the first call counts).
    pub fn serving(&self) {
        let _ = self.since.set(Instant::now());
    }

    /// Counts one request.
    pub fn record(&self, answered: Answered) {
        self.record_at(Instant::now(), answered);
    }

    fn record_at(&self, now: Instant, answered: Answered) {
        let second = now.saturating_duration_since(self.start).as_secs();
        let t = &self.totals;
        match answered {
            Answered::App(status, latency) => {
                match class(status) {
                    Some(c) => t.classes[c].fetch_add(1, Ordering::Relaxed),
                    None => t.informational.fetch_add(1, Ordering::Relaxed),
                };
                t.timed.fetch_add(1, Ordering::Relaxed);
                t.latency_us
                    .fetch_add(latency.as_micros() as u64, Ordering::Relaxed);
            }
            Answered::ProxyError(_) => {
                t.proxy_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        let mut slice = self.slices[(second % SLICES as u64) as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if slice.second != second {
            slice.second = second;
            slice.counts = Counts::default();
            if let Some(h) = &mut slice.latency {
                h.reset();
            }
        }
        slice.counts.requests += 1;
        match answered {
            Answered::App(status, latency) => {
                if let Some(c) = class(status) {
                    slice.counts.classes[c] += 1;
                }
                slice
                    .latency
                    .get_or_insert_with(histogram)
                    .saturating_record((latency.as_micros() as u64).max(1));
            }
            Answered::ProxyError(_) => slice.counts.proxy_errors += 1,
        }
    }

    /// The figures over the last `span` (at most [`MAX_WINDOW`]): the current second and
    /// the whole seconds before it that `span` reaches into.
    pub fn window(&self, span: Duration) -> Window {
        self.window_at(Instant::now(), span)
    }

    /// The figures over `span` up to `end` (a moment in the last [`MAX_WINDOW`], such as a
    /// switch away from the instance).
    pub fn window_at(&self, now: Instant, span: Duration) -> Window {
        let span = span.min(MAX_WINDOW);
        let current = now.saturating_duration_since(self.start).as_secs();
        let up = now.saturating_duration_since(*self.since.get().unwrap_or(&self.start));
        let seconds = span
            .as_secs()
            .max(1)
            .div_ceil(SLICE.as_secs())
            .min(SLICES as u64);
        let first = (current + 1).saturating_sub(seconds);
        let mut counts = Counts::default();
        let mut latency: Option<Histogram<u32>> = None;
        for second in first..=current {
            let slice = self.slices[(second % SLICES as u64) as usize]
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if slice.second != second {
                continue;
            }
            counts.add(&slice.counts);
            if let Some(h) = &slice.latency
                && !h.is_empty()
            {
                // same bounds on both sides: adding cannot fail
                let _ = latency.get_or_insert_with(histogram).add(h);
            }
        }
        let at = |q: f64| {
            latency
                .as_ref()
                .map(|h| Duration::from_micros(h.value_at_quantile(q)))
        };
        Window {
            span: span.min(up.max(SLICE)),
            requests: counts.requests,
            errors: counts.classes[3] + counts.proxy_errors,
            classes: counts.classes,
            proxy_errors: counts.proxy_errors,
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
        }
    }
}

/// 2xx..5xx as 0..3; others (1xx) none.
fn class(status: u16) -> Option<usize> {
    match status {
        200..=599 => Some(usize::from(status / 100 - 2)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_window_merges_the_seconds_it_covers_and_forgets_older_ones() {
        let start = Instant::now();
        let t = Traffic::new(start);
        let at = |s: u64, ms: u64| start + Duration::from_secs(s) + MS * ms as u32;
        // second 0: 90 fast 200s, 10 app 500s, 2 proxy 502s
        for i in 0..90 {
            t.record_at(at(0, i), Answered::App(200, MS * 10));
        }
        for i in 0..10 {
            t.record_at(at(0, i), Answered::App(500, MS * 20));
        }
        t.record_at(at(0, 1), Answered::ProxyError(502));
        t.record_at(at(0, 2), Answered::ProxyError(504));
        // second 5: 100 slow 200s and a 404 and a 101
        for i in 0..100 {
            t.record_at(at(5, i), Answered::App(200, MS * 300));
        }
        t.record_at(at(5, 1), Answered::App(404, MS));
        t.record_at(at(5, 1), Answered::App(101, MS));

        let all = t.window_at(at(5, 999), Duration::from_secs(10));
        assert_eq!(all.requests, 204);
        assert_eq!(all.classes, [190, 0, 1, 10]);
        assert_eq!(all.proxy_errors, 2);
        assert_eq!(all.errors, 12);
        assert_eq!(
            all.span,
            Duration::from_millis(5999),
            "not longer than it has been up"
        );
        let p99 = all.p99.unwrap();
        assert!(p99 >= MS * 297 && p99 <= MS * 303, "{p99:?}");
        let p50 = all.p50.unwrap();
        assert!(p50 >= MS * 19 && p50 <= MS * 21, "{p50:?}");

        // the last 2 s: only second 5
        let recent = t.window_at(at(5, 999), Duration::from_secs(2));
        assert_eq!(recent.requests, 102);
        assert_eq!(recent.errors, 0);
        assert_eq!(recent.error_rate(), Some(0.0));
        assert!(recent.p50.unwrap() >= MS * 297);

        // a lap of the ring later, second 0's slot holds a new second: nothing old leaks in
        let lap = SLICES as u64;
        t.record_at(at(lap, 0), Answered::App(200, MS));
        let w = t.window_at(at(lap, 1), Duration::from_secs(1));
        assert_eq!((w.requests, w.errors), (1, 0));
        let p99 = w.p99.unwrap();
        assert!(p99 >= MS && p99 <= MS * 101 / 100, "within 1%: {p99:?}");
        let w = t.window_at(at(lap + 6, 0), MAX_WINDOW);
        assert_eq!(w.requests, 1, "second 5 is more than MAX_WINDOW ago");
        assert_eq!(w.span, MAX_WINDOW);

        // an empty window: no rate, no latency
        let none = t.window_at(at(lap + 100, 0), Duration::from_secs(30));
        assert_eq!(none.requests, 0);
        assert_eq!(none.error_rate(), None);
        assert_eq!(none.p99, None);

        // the totals keep counting for /metrics
        assert_eq!(t.totals.classes[0].load(Ordering::Relaxed), 191);
        assert_eq!(t.totals.informational.load(Ordering::Relaxed), 1);
        assert_eq!(t.totals.proxy_errors.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn summaries_read_well() {
        let w = Window {
            requests: 812,
            errors: 42,
            proxy_errors: 2,
            p50: Some(MS * 12),
            p99: Some(Duration::from_micros(310_400)),
            ..Window::default()
        };
        assert_eq!(
            w.summary(),
            "5.2% of 812 request(s) failed (2 by the proxy), p50 12 ms, p99 310 ms"
        );
        assert_eq!(millis(Duration::from_micros(420)), "0.42 ms");
    }
}

//! `GET /metrics`: Prometheus text format.
//!
//! Deployment counts come from the store (so they survive restarts); step durations and probe
//! results are counted from the event stream since `serve` started; proxy counters from the
//! proxies; webhook and notification outcomes from their handlers.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use tokio::sync::{broadcast, watch};

use super::{ApiError, AppState};
use crate::events::{Bus, Event};
use crate::listener::ConnStats;
use crate::store::StepState;

/// Upper bounds (seconds) of the step duration histogram's buckets.
const BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

#[derive(Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, v: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS.len()];
        }
        for (i, le) in BUCKETS.iter().enumerate() {
            if v <= *le {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }
}

/// Counters kept in memory while `serve` runs.
#[derive(Default)]
pub struct Metrics {
    steps: Mutex<BTreeMap<String, Histogram>>,
    /// (environment, "ok" | "failed") → probes.
    probes: Mutex<BTreeMap<(String, &'static str), u64>>,
    /// (provider, outcome) → deliveries, rejected ones included.
    webhooks: Mutex<BTreeMap<(String, &'static str), u64>>,
    /// outcome → notifications.
    notifications: Mutex<BTreeMap<&'static str, u64>>,
    /// The API's own connections.
    pub connections: Arc<ConnStats>,
    /// Event streams and followed logs refused at `[server] max_streams`.
    pub streams_refused: AtomicU64,
}

fn bump<K: Ord>(map: &Mutex<BTreeMap<K, u64>>, key: K) {
    *map.lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(key)
        .or_default() += 1;
}

impl Metrics {
    /// Counters of their own, but the API's connections counted in `connections` (shared by
    /// every app of a serve: there is one API listener).
    pub fn with_connections(connections: Arc<ConnStats>) -> Metrics {
        Metrics {
            connections,
            ..Metrics::default()
        }
    }

    pub fn webhook(&self, provider: &str, outcome: &'static str) {
        bump(&self.webhooks, (provider.to_string(), outcome));
    }

    pub fn notification(&self, outcome: &'static str) {
        bump(&self.notifications, outcome);
    }

    fn observe(&self, event: &Event) {
        match event {
            Event::Step {
                step,
                state,
                started_at,
                finished_at: Some(finished),
                ..
            } if *state != StepState::Running => {
                let (Ok(a), Ok(b)) = (
                    chrono::DateTime::parse_from_rfc3339(started_at),
                    chrono::DateTime::parse_from_rfc3339(finished),
                ) else {
                    return;
                };
                let secs = (b - a).num_milliseconds().max(0) as f64 / 1000.0;
                self.steps
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(step.clone())
                    .or_default()
                    .observe(secs);
            }
            Event::Probe {
                environment,
                ok,
                deployment: Some(_),
                ..
            } => bump(
                &self.probes,
                (environment.clone(), if *ok { "ok" } else { "failed" }),
            ),
            _ => {}
        }
    }

    /// Counts events from `bus` until `shutdown`.
    pub async fn follow(&self, bus: &Bus, mut shutdown: watch::Receiver<bool>) {
        let mut rx = bus.subscribe();
        loop {
            tokio::select! {
                event = rx.recv() => match event {
                    Ok(e) => self.observe(&e),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "metrics fell behind the event stream");
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                () = crate::proxy::stopped(&mut shutdown) => return,
            }
        }
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

pub async fn metrics(State(app): State<AppState>) -> Result<Response, ApiError> {
    Ok(text(render(&app).await?))
}

/// `/metrics` of a serve of several apps: each app's series with an `app` label, under one
/// `# HELP`/`# TYPE` per metric; what the apps share (`ferry_up`, the API listener's
/// connections) once, unlabelled.
pub async fn merged(apps: &[&AppState]) -> Result<Response, ApiError> {
    let mut families: Vec<(String, String, Vec<String>)> = Vec::new();
    for (i, app) in apps.iter().enumerate() {
        let name = label(&app.engine.config.app.name);
        let mut current = String::new();
        let mut head = String::new();
        for line in render(app).await?.lines() {
            if let Some(rest) = line
                .strip_prefix("# HELP ")
                .or_else(|| line.strip_prefix("# TYPE "))
            {
                let family = rest.split(' ').next().unwrap_or_default().to_string();
                if family != current {
                    head.clear();
                    current = family;
                }
                head.push_str(line);
                head.push('\n');
                continue;
            }
            let at = match families.iter().position(|(f, _, _)| *f == current) {
                Some(at) => at,
                None => {
                    families.push((current.clone(), head.clone(), Vec::new()));
                    families.len() - 1
                }
            };
            let shared = line.starts_with("ferry_up ") || line.contains("listener=\"api\"");
            if shared {
                if i == 0 {
                    families[at].2.push(line.to_string());
                }
                continue;
            }
            let labelled = match line.split_once('{') {
                Some((metric, rest)) => format!("{metric}{{app=\"{name}\",{rest}"),
                None => match line.split_once(' ') {
                    Some((metric, value)) => format!("{metric}{{app=\"{name}\"}} {value}"),
                    None => continue,
                },
            };
            families[at].2.push(labelled);
        }
    }
    let mut out = String::new();
    for (_, head, samples) in families {
        out.push_str(&head);
        for s in samples {
            out.push_str(&s);
            out.push('\n');
        }
    }
    Ok(text(out))
}

fn text(out: String) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

/// One app's metrics in Prometheus text.
async fn render(app: &AppState) -> Result<String, ApiError> {
    let engine = &app.engine;
    let mut out = String::new();
    header(&mut out, "ferry_up", "gauge", "1 while ferry serves.");
    out.push_str("ferry_up 1\n");

    header(
        &mut out,
        "ferry_deployments_total",
        "counter",
        "Deployments by environment and outcome (state).",
    );
    for (env, state, n) in engine.store.deployment_counts()? {
        let _ = writeln!(
            out,
            "ferry_deployments_total{{environment=\"{}\",outcome=\"{}\"}} {n}",
            label(&env),
            label(&state)
        );
    }

    header(
        &mut out,
        "ferry_step_duration_seconds",
        "histogram",
        "How long each deployment step took (since serve started).",
    );
    for (step, h) in app
        .metrics
        .steps
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
    {
        let step = label(step);
        for (le, n) in BUCKETS.iter().zip(&h.counts) {
            let _ = writeln!(
                out,
                "ferry_step_duration_seconds_bucket{{step=\"{step}\",le=\"{le}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "ferry_step_duration_seconds_bucket{{step=\"{step}\",le=\"+Inf\"}} {}\n\
             ferry_step_duration_seconds_sum{{step=\"{step}\"}} {}\n\
             ferry_step_duration_seconds_count{{step=\"{step}\"}} {}",
            h.count, h.sum, h.count
        );
    }

    header(
        &mut out,
        "ferry_version_info",
        "gauge",
        "The version each environment serves (value 1).",
    );
    let mut proxies = String::new();
    let mut pools = String::new();
    let mut traffic: [String; 5] = Default::default();
    let window = engine.traffic_window();
    let mut conns = vec![(
        "listener=\"api\"".to_string(),
        app.metrics.connections.clone(),
    )];
    for state in engine.environments() {
        let name = &state.env.name;
        let s = engine.status(name).await?;
        if let Some(version) = &s.version {
            let _ = writeln!(
                out,
                "ferry_version_info{{environment=\"{}\",slot=\"{}\",version=\"{}\",commit_sha=\"{}\"}} 1",
                label(name),
                s.slot,
                label(version),
                label(s.commit_sha.as_deref().unwrap_or("")),
            );
        }
        let stats = state.proxy.stats();
        conns.push((
            format!("listener=\"proxy\",environment=\"{}\"", label(name)),
            stats.connections.clone(),
        ));
        let _ = writeln!(
            proxies,
            "ferry_proxy_requests_total{{environment=\"{0}\"}} {1}\n\
             ferry_proxy_errors_total{{environment=\"{0}\"}} {2}",
            label(name),
            stats.requests.load(std::sync::atomic::Ordering::Relaxed),
            stats.errors.load(std::sync::atomic::Ordering::Relaxed),
        );
        if let Some(upstream) = state.proxy.upstream() {
            pool_lines(&mut pools, name, &upstream);
        }
        if state.env.traffic_metrics {
            for (release, upstream) in state.serving().await {
                traffic_lines(&mut traffic, name, &release, &upstream, window);
            }
        }
    }
    connections(&mut out, app, &conns);
    header(
        &mut out,
        "ferry_proxy_requests_total",
        "counter",
        "Requests the environment's proxy answered.",
    );
    header(
        &mut out,
        "ferry_proxy_errors_total",
        "counter",
        "Requests the proxy answered with an error of its own (502, 503).",
    );
    out.push_str(&proxies);
    header(
        &mut out,
        "ferry_upstream_connections",
        "gauge",
        "Connections from the proxy to the serving instance: busy and idle ones in its pool, and detached ones (upgraded, event streams).",
    );
    header(
        &mut out,
        "ferry_upstream_connections_opened_total",
        "counter",
        "Connections the proxy opened to the serving instance.",
    );
    header(
        &mut out,
        "ferry_upstream_queue_timeouts_total",
        "counter",
        "Requests that waited upstream_queue_timeout for a connection to the serving instance and got 503.",
    );
    out.push_str(&pools);
    traffic_families(&mut out, window, &traffic);

    header(
        &mut out,
        "ferry_monitor_probes_total",
        "counter",
        "Post-deploy monitor probes by environment and result.",
    );
    counters(
        &mut out,
        "ferry_monitor_probes_total",
        &app.metrics.probes,
        |(env, r)| format!("environment=\"{}\",result=\"{r}\"", label(env)),
    );
    header(
        &mut out,
        "ferry_webhook_deliveries_total",
        "counter",
        "Webhook deliveries by provider and outcome, rejected ones included.",
    );
    counters(
        &mut out,
        "ferry_webhook_deliveries_total",
        &app.metrics.webhooks,
        |(p, o)| format!("provider=\"{}\",outcome=\"{o}\"", label(p)),
    );
    header(
        &mut out,
        "ferry_notifications_total",
        "counter",
        "Outgoing notifications by outcome.",
    );
    counters(
        &mut out,
        "ferry_notifications_total",
        &app.metrics.notifications,
        |o| format!("outcome=\"{o}\""),
    );
    Ok(out)
}

/// A connection series: name, type, help, and the counter it reads.
type Series = (
    &'static str,
    &'static str,
    &'static str,
    fn(&ConnStats) -> &AtomicU64,
);

/// Each listener's connections, and the API's streams.
fn connections(out: &mut String, app: &AppState, conns: &[(String, Arc<ConnStats>)]) {
    let series: [Series; 4] = [
        (
            "ferry_connections_open",
            "gauge",
            "Connections open now, by listener (the API, each environment's proxy).",
            |s| &s.open,
        ),
        (
            "ferry_connections_refused_total",
            "counter",
            "Connections answered 503 and closed at a connection limit (every connection busy).",
            |s| &s.refused,
        ),
        (
            "ferry_connections_closed_idle_total",
            "counter",
            "Idle connections (half-open, or kept alive) closed to make room at a connection limit.",
            |s| &s.evicted,
        ),
        (
            "ferry_connections_header_timeouts_total",
            "counter",
            "Connections closed because no complete request header came within header_timeout.",
            |s| &s.timed_out,
        ),
    ];
    for (name, kind, help, field) in series {
        header(out, name, kind, help);
        for (labels, stats) in conns {
            let _ = writeln!(
                out,
                "{name}{{{labels}}} {}",
                field(stats).load(Ordering::Relaxed)
            );
        }
    }
    let max = app.engine.config.server.max_streams;
    header(
        out,
        "ferry_streams_open",
        "gauge",
        "Event streams and followed logs open now ([server] max_streams at most).",
    );
    let _ = writeln!(
        out,
        "ferry_streams_open {}",
        max.saturating_sub(app.streams.available_permits())
    );
    header(
        out,
        "ferry_streams_refused_total",
        "counter",
        "Event streams and followed logs refused at [server] max_streams.",
    );
    let _ = writeln!(
        out,
        "ferry_streams_refused_total {}",
        app.metrics.streams_refused.load(Ordering::Relaxed)
    );
}

fn counters<K>(
    out: &mut String,
    name: &str,
    map: &Mutex<BTreeMap<K, u64>>,
    labels: impl Fn(&K) -> String,
) {
    for (k, n) in map.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        let _ = writeln!(out, "{name}{{{}}} {n}", labels(k));
    }
}

/// The pool figures of the instance an environment serves from.
fn pool_lines(out: &mut String, env: &str, upstream: &crate::proxy::Upstream) {
    use std::sync::atomic::Ordering::Relaxed;
    let (open, idle, detached) = upstream.connections();
    let labels = format!(
        "environment=\"{}\",instance=\"{}\"",
        label(env),
        upstream.addr
    );
    for (state, n) in [
        ("busy", open - idle.min(open)),
        ("idle", idle),
        ("detached", detached),
    ] {
        let _ = writeln!(
            out,
            "ferry_upstream_connections{{{labels},state=\"{state}\"}} {n}"
        );
    }
    let _ = writeln!(
        out,
        "ferry_upstream_connections_opened_total{{{labels}}} {}\n\
         ferry_upstream_queue_timeouts_total{{{labels}}} {}",
        upstream.stats.opened.load(Relaxed),
        upstream.stats.queue_timeouts.load(Relaxed),
    );
}

/// The traffic families, each header followed by its samples (`merged` reads them so).
fn traffic_families(out: &mut String, window: std::time::Duration, samples: &[String; 5]) {
    let over = crate::config::format_duration(window);
    for ((name, kind, help), lines) in [
        (
            "ferry_upstream_requests_total",
            "counter",
            "Requests the proxy passed to a serving instance that came to an answer.".to_string(),
        ),
        (
            "ferry_upstream_responses_total",
            "counter",
            "The app's responses by status class.".to_string(),
        ),
        (
            "ferry_upstream_proxy_errors_total",
            "counter",
            "502, 503 and 504 the proxy answered because the instance failed, was busy or too slow."
                .to_string(),
        ),
        (
            "ferry_upstream_error_ratio",
            "gauge",
            format!("The app's 5xx and the proxy errors over requests, over the last {over}."),
        ),
        (
            "ferry_upstream_latency_seconds",
            "summary",
            format!(
                "Time to the app's response head; quantiles over the last {over}, sum and count since the instance started."
            ),
        ),
    ]
    .into_iter()
    .zip(samples)
    {
        header(out, name, kind, &help);
        out.push_str(lines);
    }
}

/// A serving instance's traffic: counters since it started, the error ratio and latency
/// quantiles over `window`, into the five families' samples.
fn traffic_lines(
    out: &mut [String; 5],
    env: &str,
    release: &str,
    upstream: &crate::proxy::Upstream,
    window: std::time::Duration,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let t = &upstream.traffic.totals;
    let labels = format!(
        "environment=\"{}\",release=\"{}\",instance=\"{}\"",
        label(env),
        label(release),
        upstream.addr
    );
    let classes: Vec<u64> = t.classes.iter().map(|c| c.load(Relaxed)).collect();
    let informational = t.informational.load(Relaxed);
    let proxy_errors = t.proxy_errors.load(Relaxed);
    let requests = classes.iter().sum::<u64>() + informational + proxy_errors;
    let _ = writeln!(
        out[0],
        "ferry_upstream_requests_total{{{labels}}} {requests}"
    );
    for (class, n) in ["1xx", "2xx", "3xx", "4xx", "5xx"]
        .iter()
        .zip(std::iter::once(informational).chain(classes))
    {
        let _ = writeln!(
            out[1],
            "ferry_upstream_responses_total{{{labels},class=\"{class}\"}} {n}"
        );
    }
    let _ = writeln!(
        out[2],
        "ferry_upstream_proxy_errors_total{{{labels}}} {proxy_errors}"
    );
    let w = upstream.window(window);
    if let Some(rate) = w.error_rate() {
        let _ = writeln!(out[3], "ferry_upstream_error_ratio{{{labels}}} {rate}");
    }
    for (q, v) in [("0.5", w.p50), ("0.9", w.p90), ("0.99", w.p99)] {
        if let Some(v) = v {
            let _ = writeln!(
                out[4],
                "ferry_upstream_latency_seconds{{{labels},quantile=\"{q}\"}} {}",
                v.as_secs_f64()
            );
        }
    }
    let _ = writeln!(
        out[4],
        "ferry_upstream_latency_seconds_sum{{{labels}}} {}\n\
         ferry_upstream_latency_seconds_count{{{labels}}} {}",
        t.latency_us.load(Relaxed) as f64 / 1e6,
        t.timed.load(Relaxed)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = Histogram::default();
        for v in [0.01, 0.3, 7.0, 1000.0] {
            h.observe(v);
        }
        assert_eq!(h.count, 4);
        assert_eq!(h.counts[0], 1); // <= 0.05
        assert_eq!(h.counts[3], 2); // <= 0.5
        assert_eq!(h.counts[7], 3); // <= 10
        assert_eq!(*h.counts.last().unwrap(), 3); // <= 300; 1000 only in +Inf
        assert!(h.counts.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}

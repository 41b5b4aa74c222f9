//! Health: probing a new instance until every health path answers as expected.

use std::time::{Duration, Instant};

use crate::config::Health;
use crate::runtime::Instance;

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("the instance exited during health checks ({0})")]
    Exited(String),
    #[error("not healthy after {attempts} probes: {last}")]
    Unhealthy { attempts: u32, last: String },
}

/// One probe of one path.
#[derive(Debug, Clone)]
pub struct Probe {
    pub path: String,
    pub outcome: Result<u16, String>,
    pub elapsed: Duration,
}

/// A client for probes: no proxy from the environment, no pooling surprises.
pub fn client() -> reqwest::Client {
    crate::http_builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()
        .expect("a plain HTTP client builds")
}

/// Probes `path` on `port` once.
pub async fn probe(client: &reqwest::Client, port: u16, path: &str, timeout: Duration) -> Probe {
    let started = Instant::now();
    let outcome = client
        .get(format!("http://127.0.0.1:{port}{path}"))
        .timeout(timeout)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| {
            if e.is_timeout() {
                format!(
                    "no answer within {}",
                    crate::config::format_duration(timeout)
                )
            } else if e.is_connect() {
                format!("connection refused on port {port} (does the app listen on $PORT?)")
            } else {
                e.to_string()
            }
        });
    Probe {
        path: path.to_string(),
        outcome,
        elapsed: started.elapsed(),
    }
}

/// How soon a probe is tried again while the instance does not accept connections yet.
const NOT_LISTENING_RETRY: std::time::Duration = std::time::Duration::from_millis(20);

/// Waits `startup_delay`, then probes every path each `interval` until all answer
/// `expect_status`, the instance exits, or `retries` rounds fail. Returns a log of the rounds.
///
/// While the instance does not accept connections yet, probes are tried again every 20 ms
/// within the round, so a release is switched to as soon as it listens, not up to one
/// `interval` later.
pub async fn wait_healthy(instance: &Instance, cfg: &Health) -> Result<String, HealthError> {
    let exited = |status: Option<std::process::ExitStatus>| {
        HealthError::Exited(status.map_or_else(|| "unknown status".into(), |s| s.to_string()))
    };
    tokio::select! {
        status = instance.wait_exit() => return Err(exited(status)),
        () = tokio::time::sleep(cfg.startup_delay) => {}
    }
    let client = client();
    let mut log = String::new();
    let mut last = String::new();
    let started = Instant::now();
    for attempt in 1..=cfg.retries {
        let round_ends = Instant::now() + cfg.interval;
        let failures = loop {
            if let Some(status) = instance.exited() {
                return Err(exited(Some(status)));
            }
            let mut failures = Vec::new();
            let mut refused = true;
            for path in &cfg.paths {
                let p = probe(&client, instance.port, path, cfg.timeout).await;
                match p.outcome {
                    Ok(code) if code == cfg.expect_status => {}
                    Ok(code) => {
                        refused = false;
                        failures.push(format!(
                            "{path} answered {code}, expected {}",
                            cfg.expect_status
                        ));
                    }
                    Err(e) => {
                        refused &= e.starts_with("connection refused");
                        failures.push(format!("{path}: {e}"));
                    }
                }
            }
            if failures.is_empty() || !refused || Instant::now() + NOT_LISTENING_RETRY >= round_ends
            {
                break failures;
            }
            tokio::select! {
                status = instance.wait_exit() => return Err(exited(status)),
                () = tokio::time::sleep(NOT_LISTENING_RETRY) => {}
            }
        };
        if failures.is_empty() {
            log.push_str(&format!(
                "healthy after {attempt} probe round(s), {} ms: {}\n",
                started.elapsed().as_millis(),
                cfg.paths.join(", ")
            ));
            return Ok(log);
        }
        last = failures.join("; ");
        log.push_str(&format!("probe {attempt}: {last}\n"));
        if attempt < cfg.retries {
            let wait = round_ends.saturating_duration_since(Instant::now());
            tokio::select! {
                status = instance.wait_exit() => return Err(exited(status)),
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
    Err(HealthError::Unhealthy {
        attempts: cfg.retries,
        last,
    })
}

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
    reqwest::Client::builder()
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
                "connection refused".to_string()
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

/// Waits `startup_delay`, then probes every path each `interval` until all answer
/// `expect_status`, the instance exits, or `retries` rounds fail. Returns a log of the rounds.
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
    for attempt in 1..=cfg.retries {
        if let Some(status) = instance.exited() {
            return Err(exited(Some(status)));
        }
        let mut failures = Vec::new();
        for path in &cfg.paths {
            let p = probe(&client, instance.port, path, cfg.timeout).await;
            match p.outcome {
                Ok(code) if code == cfg.expect_status => {}
                Ok(code) => failures.push(format!(
                    "{path} answered {code}, expected {}",
                    cfg.expect_status
                )),
                Err(e) => failures.push(format!("{path}: {e}")),
            }
        }
        if failures.is_empty() {
            log.push_str(&format!(
                "healthy after {attempt} probe(s): {}\n",
                cfg.paths.join(", ")
            ));
            return Ok(log);
        }
        last = failures.join("; ");
        log.push_str(&format!("probe {attempt}: {last}\n"));
        if attempt < cfg.retries {
            tokio::select! {
                status = instance.wait_exit() => return Err(exited(status)),
                () = tokio::time::sleep(cfg.interval) => {}
            }
        }
    }
    Err(HealthError::Unhealthy {
        attempts: cfg.retries,
        last,
    })
}

//! Post-deploy monitoring: after the switch, the new instance is probed every `interval`
//! for `duration`; the first rule breached ends monitoring with a [`Breach`].
//!
//! Rules: the process exiting (seen at once), `max_consecutive_failures`, `min_success_rate`
//! (over all probes so far, judged from the tenth probe on and at the end),
//! `max_response_time` (any one probe), and more than `max_error_lines` lines matching
//! `error_pattern` in the instance's output within the last `error_window` (checked every
//! 100 ms).

use std::time::{Duration, Instant};

use super::Engine;
use crate::config::{Monitor, format_duration};
use crate::runtime::Instance;

/// Probes needed before the success rate alone can fail a deploy.
const RATE_MIN_PROBES: u32 = 10;
/// How often exit and error lines are looked at between probes.
const TICK: Duration = Duration::from_millis(100);

/// Which rule fired, with the figures, and when it was seen.
#[derive(Debug)]
pub struct Breach {
    pub rule: &'static str,
    pub detail: String,
    pub at: Instant,
    /// The progress lines up to the breach.
    pub log: String,
}

/// The running tally, shown as the monitor step's progress.
#[derive(Default)]
struct Tally {
    probes: u32,
    passed: u32,
    consecutive_failures: u32,
    slowest: Duration,
    error_lines: usize,
}

impl Tally {
    fn rate(&self) -> f64 {
        if self.probes == 0 {
            1.0
        } else {
            f64::from(self.passed) / f64::from(self.probes)
        }
    }

    fn line(&self, planned: u32, last: &str) -> String {
        format!(
            "probe {}/{planned}: {last}; success {:.0}%, {} failed in a row, slowest {} ms, {} error line(s)\n",
            self.probes,
            self.rate() * 100.0,
            self.consecutive_failures,
            self.slowest.as_millis(),
            self.error_lines
        )
    }
}

impl Engine {
    /// Watches `instance` per `cfg`, writing progress to deployment `id`'s monitor step,
    /// after `intro` (what a breach would do).
    pub(super) async fn watch(
        &self,
        id: i64,
        environment: &str,
        instance: &Instance,
        cfg: &Monitor,
        intro: String,
    ) -> Result<String, Breach> {
        instance.watch_lines(cfg.error_pattern.clone());
        let started = Instant::now();
        let planned = (cfg.duration.as_millis() / cfg.interval.as_millis()).max(1) as u32;
        let client = crate::health::client();
        let health = &self.config.health;
        let mut tally = Tally::default();
        let mut log = intro;
        if let Err(e) = self.store.set_running_output(id, "monitor", &log) {
            tracing::warn!(id, error = %e, "cannot record monitor progress");
        }
        let breach = |rule, detail: String, log: &str| Breach {
            rule,
            detail,
            at: Instant::now(),
            log: log.to_string(),
        };
        for round in 1..=planned {
            let probe_at = started + cfg.interval * round;
            loop {
                let now = Instant::now();
                if now >= probe_at {
                    break;
                }
                tokio::select! {
                    status = instance.wait_exit() => {
                        let status = status.map_or_else(|| "unknown status".into(), |s| s.to_string());
                        return Err(breach(
                            "process_exited",
                            format!("the new instance exited ({status}) {} after the switch", format_duration(started.elapsed())),
                            &log,
                        ));
                    }
                    () = tokio::time::sleep(TICK.min(probe_at - now)) => {}
                }
                let since = Instant::now()
                    .checked_sub(cfg.error_window)
                    .map_or(started, |t| t.max(started));
                tally.error_lines = instance.matches_since(since);
                if tally.error_lines > cfg.max_error_lines as usize {
                    return Err(breach(
                        "max_error_lines",
                        format!(
                            "{} log lines matched \"{}\" within {}, more than the {} allowed",
                            tally.error_lines,
                            cfg.error_pattern,
                            format_duration(cfg.error_window),
                            cfg.max_error_lines
                        ),
                        &log,
                    ));
                }
            }

            let mut failures = Vec::new();
            let mut took = Duration::ZERO;
            for path in &health.paths {
                let p = crate::health::probe(
                    &client,
                    instance.port,
                    path,
                    cfg.max_response_time + Duration::from_secs(1),
                )
                .await;
                took = took.max(p.elapsed);
                match p.outcome {
                    Ok(code) if code == health.expect_status => {}
                    Ok(code) => failures.push(format!("{path} answered {code}")),
                    Err(e) => failures.push(format!("{path}: {e}")),
                }
            }
            tally.probes += 1;
            tally.slowest = tally.slowest.max(took);
            let probe = crate::store::Probe {
                environment: environment.to_string(),
                deployment_id: Some(id),
                at: crate::store::now(),
                ok: failures.is_empty(),
                response_ms: took.as_secs_f64() * 1000.0,
                detail: (!failures.is_empty()).then(|| failures.join("; ")),
            };
            if let Err(e) = self.store.add_probe(&probe) {
                tracing::warn!(id, error = %e, "cannot record a monitor probe");
            }
            let last = if failures.is_empty() {
                tally.passed += 1;
                tally.consecutive_failures = 0;
                format!("ok in {} ms", took.as_millis())
            } else {
                tally.consecutive_failures += 1;
                failures.join("; ")
            };
            log.push_str(&tally.line(planned, &last));
            if let Err(e) = self.store.set_running_output(id, "monitor", &log) {
                tracing::warn!(id, error = %e, "cannot record monitor progress");
            }

            if took > cfg.max_response_time {
                return Err(breach(
                    "max_response_time",
                    format!(
                        "a probe took {} ms, more than the {} allowed",
                        took.as_millis(),
                        format_duration(cfg.max_response_time)
                    ),
                    &log,
                ));
            }
            if tally.consecutive_failures >= cfg.max_consecutive_failures {
                return Err(breach(
                    "max_consecutive_failures",
                    format!(
                        "{} probes failed in a row (last: {last})",
                        tally.consecutive_failures
                    ),
                    &log,
                ));
            }
            if (tally.probes >= RATE_MIN_PROBES || round == planned)
                && tally.rate() < cfg.min_success_rate
            {
                return Err(breach(
                    "min_success_rate",
                    format!(
                        "{:.0}% of {} probes passed, below the {:.0}% required",
                        tally.rate() * 100.0,
                        tally.probes,
                        cfg.min_success_rate * 100.0
                    ),
                    &log,
                ));
            }
        }
        log.push_str(&format!(
            "healthy for {}: {}/{} probes passed, slowest {} ms, {} error line(s)\n",
            format_duration(cfg.duration),
            tally.passed,
            tally.probes,
            tally.slowest.as_millis(),
            tally.error_lines
        ));
        Ok(log)
    }
}

//! Post-deploy monitoring: after the switch, the new instance is probed every `interval`
//! for `duration`; the first rule breached ends monitoring with a [`Breach`].
//!
//! Rules: the process exiting (seen at once), `max_consecutive_failures`, `min_success_rate`
//! (over all probes so far, judged from the tenth probe on and at the end),
//! `max_response_time` (any one probe), and more than `max_error_lines` lines matching
//! `error_pattern` in the instance's output within the last `error_window` (checked every
//! 100 ms).
//!
//! Traffic rules (`max_error_rate`, `max_p99`, `max_error_rate_increase`, see
//! [`judge_traffic`]) are judged four times a second from the figures the proxy kept for the new
//! instance over the last `window`, against those of the previous instance over the same
//! window length just before the switch ([`Traffic::baseline`]). Below `min_requests` they are
//! inconclusive: never a breach; at the end of monitoring an inconclusive verdict passes with
//! a note (a rollout pauses instead).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Engine;
use crate::config::{Monitor, format_duration};
use crate::proxy::metrics::{millis, percent};
use crate::proxy::{Upstream, Window};
use crate::runtime::Instance;

/// How often the traffic rules are judged during monitoring.
const TRAFFIC_EVERY: Duration = Duration::from_millis(250);

/// What the traffic rules say of a window of the new release's traffic.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum TrafficVerdict {
    /// Every rule holds: the figures, for the progress line.
    Pass(String),
    /// Too little traffic to judge (fewer than `min_requests`): why.
    Inconclusive(String),
    /// A rule is breached: which, and the figures of both releases.
    Breach { rule: &'static str, detail: String },
}

/// "1%", "0.5%", "1.29%": a configured rate.
fn limit(rate: f64) -> String {
    // at most two decimals, no trailing zeros: 0.0129 is "1.29%", not "1.2899999999999998%"
    let p = format!("{:.2}", rate * 100.0);
    let p = p.trim_end_matches('0').trim_end_matches('.');
    format!("{p}%")
}

/// The span of a window for people, in whole seconds ("30s", "1m").
fn span(w: &Window) -> String {
    format_duration(Duration::from_secs(
        w.span.as_secs_f64().round().max(1.0) as u64
    ))
}

/// Judges `new` (the new release's figures over the last `window`) by `cfg`'s traffic
/// rules, against `previous` (the previous release's over the same window length just before
/// the switch; `None`: no previous release, or it had no figures).
pub(super) fn judge_traffic(
    cfg: &Monitor,
    new: &Window,
    previous: Option<&Window>,
) -> TrafficVerdict {
    let rules = &cfg.traffic;
    let figures = format!("{} over the last {}", new.summary(), span(new));
    if new.requests < rules.min_requests {
        return TrafficVerdict::Inconclusive(format!(
            "{} request(s) over the last {}, fewer than the {} needed to judge (min_requests)",
            new.requests,
            span(new),
            rules.min_requests
        ));
    }
    let rate = new.error_rate().unwrap_or(0.0);
    let before = match previous {
        Some(p) if p.requests > 0 => format!(
            "the previous release: {} of {}",
            percent(p.error_rate().unwrap_or(0.0)),
            p.requests
        ),
        Some(_) => "the previous release had no traffic before the switch".to_string(),
        None => "no previous release to compare with".to_string(),
    };
    if let Some(max) = rules.max_error_rate
        && rate > max
    {
        return TrafficVerdict::Breach {
            rule: "max_error_rate",
            detail: format!(
                "{} of {} requests failed over the last {} ({before}), more than the {} allowed",
                percent(rate),
                new.requests,
                span(new),
                limit(max)
            ),
        };
    }
    if let (Some(max), Some(p99)) = (rules.max_p99, new.p99)
        && p99 > max
    {
        let before = match previous.and_then(|p| p.p99) {
            Some(old) => format!("the previous release: {}", millis(old)),
            None => "no previous figure to compare with".to_string(),
        };
        return TrafficVerdict::Breach {
            rule: "max_p99",
            detail: format!(
                "p99 {} over the last {} ({} requests; {before}), above the {} allowed",
                millis(p99),
                span(new),
                new.requests,
                format_duration(max)
            ),
        };
    }
    let mut notes = String::new();
    if let Some(max) = rules.max_error_rate_increase {
        match previous {
            Some(p) if p.requests >= rules.min_requests => {
                let old = p.error_rate().unwrap_or(0.0);
                if rate - old > max + 1e-12 {
                    return TrafficVerdict::Breach {
                        rule: "max_error_rate_increase",
                        detail: format!(
                            "{} of {} requests failed over the last {} (the previous release: {} of {}), a rise of more than the {} allowed",
                            percent(rate),
                            new.requests,
                            span(new),
                            percent(old),
                            p.requests,
                            limit(max)
                        ),
                    };
                }
            }
            Some(p) => notes.push_str(&format!(
                "; max_error_rate_increase not judged: the previous release served {} request(s) before the switch, fewer than {}",
                p.requests, rules.min_requests
            )),
            None => notes.push_str("; max_error_rate_increase not judged: no previous figures"),
        }
    }
    TrafficVerdict::Pass(format!("{figures}{notes}"))
}

/// The traffic the monitor judges: the new instance's figures, and the previous one's
/// taken at the switch.
pub(super) struct Traffic {
    pub upstream: Arc<Upstream>,
    /// The previous instance's figures over `window` just before the switch.
    pub baseline: Option<Window>,
}

impl Traffic {
    /// The new instance, with the previous one's `cfg.traffic.window` up to `switched_at`
    /// as the baseline.
    pub(super) fn at_switch(
        cfg: &Monitor,
        switched_at: Instant,
        new: Arc<Upstream>,
        previous: Option<&Upstream>,
    ) -> Traffic {
        Traffic {
            baseline: previous.map(|p| p.window_until(switched_at, cfg.traffic.window)),
            upstream: new,
        }
    }

    fn judge(&self, cfg: &Monitor) -> (Window, TrafficVerdict) {
        let now = self.upstream.window(cfg.traffic.window);
        let verdict = judge_traffic(cfg, &now, self.baseline.as_ref());
        (now, verdict)
    }

    /// The line the monitor's intro gets.
    fn intro(&self, cfg: &Monitor) -> String {
        let r = &cfg.traffic;
        let mut rules = Vec::new();
        if let Some(m) = r.max_error_rate {
            rules.push(format!("max_error_rate {}", limit(m)));
        }
        if let Some(m) = r.max_p99 {
            rules.push(format!("max_p99 {}", format_duration(m)));
        }
        if let Some(m) = r.max_error_rate_increase {
            rules.push(format!("max_error_rate_increase {}", limit(m)));
        }
        let mut line = format!(
            "traffic rules over the last {}: {} (judged from {} requests on)\n",
            format_duration(r.window),
            rules.join(", "),
            r.min_requests
        );
        if let Some(b) = &self.baseline {
            line.push_str(&format!(
                "the previous release before the switch: {} over the last {}\n",
                b.summary(),
                span(b)
            ));
        }
        line
    }
}

/// Probes needed before the success rate alone can fail a deploy.
const RATE_MIN_PROBES: u32 = 10;
/// How long a failed probe waits to see whether the instance is exiting (the exit, not the
/// probe, is then the breach).
const EXIT_GRACE: Duration = Duration::from_millis(300);
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
        traffic: Option<Traffic>,
    ) -> Result<String, Breach> {
        instance.watch_lines(cfg.error_pattern.clone());
        let started = Instant::now();
        let planned = (cfg.duration.as_millis() / cfg.interval.as_millis()).max(1) as u32;
        let client = crate::health::client();
        let health = &self.config.health;
        let mut tally = Tally::default();
        let mut log = intro;
        // traffic rules are judged only when some are set; figures are shown whenever kept
        let judged = cfg.traffic.any();
        match traffic.as_ref() {
            Some(t) if judged => log.push_str(&t.intro(cfg)),
            None if judged => log.push_str(
                "traffic rules not judged: this environment keeps no traffic figures (traffic_metrics = false)\n",
            ),
            _ => {}
        }
        let mut next_judgement = started + TRAFFIC_EVERY;
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
                if let Some(t) = traffic.as_ref().filter(|_| judged)
                    && Instant::now() >= next_judgement
                {
                    next_judgement = Instant::now() + TRAFFIC_EVERY;
                    if let (_, TrafficVerdict::Breach { rule, detail }) = t.judge(cfg) {
                        return Err(breach(rule, detail, &log));
                    }
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
            // a probe failing as the instance goes down: the exit is the cause, and is named
            if !failures.is_empty()
                && let Ok(status) = tokio::time::timeout(EXIT_GRACE, instance.wait_exit()).await
            {
                let status = status.map_or_else(|| "unknown status".into(), |s| s.to_string());
                return Err(breach(
                    "process_exited",
                    format!(
                        "the new instance exited ({status}) {} after the switch",
                        format_duration(started.elapsed())
                    ),
                    &log,
                ));
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
            if let Some(t) = &traffic {
                let (window, verdict) = t.judge(cfg);
                let line = match verdict {
                    TrafficVerdict::Breach { rule, detail } => {
                        return Err(breach(rule, detail, &log));
                    }
                    _ if !judged && window.requests == 0 => None,
                    _ if !judged => Some(format!(
                        "{} over the last {}",
                        window.summary(),
                        span(&window)
                    )),
                    TrafficVerdict::Pass(line) => Some(line),
                    TrafficVerdict::Inconclusive(why) => Some(format!("inconclusive: {why}")),
                };
                if let Some(line) = line {
                    log.push_str(&format!("  traffic: {line}\n"));
                }
            }
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
        if let Some(t) = traffic.as_ref().filter(|_| judged) {
            match t.judge(cfg).1 {
                TrafficVerdict::Breach { rule, detail } => return Err(breach(rule, detail, &log)),
                TrafficVerdict::Pass(line) => {
                    log.push_str(&format!("traffic rules held: {line}\n"))
                }
                TrafficVerdict::Inconclusive(why) => log.push_str(&format!(
                    "traffic rules inconclusive at the end ({why}): passed on the probes alone\n"
                )),
            }
        }
        Ok(log)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TrafficRules;

    fn cfg(traffic: TrafficRules) -> Monitor {
        Monitor {
            duration: Duration::from_secs(60),
            interval: Duration::from_secs(1),
            max_consecutive_failures: 3,
            min_success_rate: 0.95,
            max_response_time: Duration::from_secs(10),
            max_error_lines: 5,
            error_window: Duration::from_secs(60),
            error_pattern: regex::Regex::new("ERROR").unwrap(),
            traffic,
        }
    }

    #[test]
    fn configured_rates_read_as_people_write_them() {
        assert_eq!(limit(0.01), "1%");
        assert_eq!(limit(0.005), "0.5%");
        assert_eq!(limit(0.0129), "1.29%");
        assert_eq!(limit(0.0), "0%");
        assert_eq!(limit(1.0), "100%");
    }

    fn window(requests: u64, errors: u64, p99_ms: u64) -> Window {
        Window {
            span: Duration::from_secs(30),
            requests,
            errors,
            classes: [requests - errors, 0, 0, errors],
            proxy_errors: 0,
            p50: Some(Duration::from_millis(p99_ms / 2)),
            p90: Some(Duration::from_millis(p99_ms)),
            p99: Some(Duration::from_millis(p99_ms)),
        }
    }

    #[test]
    fn the_judge_names_the_rule_and_both_figures() {
        let rules = TrafficRules {
            max_error_rate: Some(0.01),
            max_p99: Some(Duration::from_millis(800)),
            max_error_rate_increase: Some(0.005),
            min_requests: 100,
            window: Duration::from_secs(30),
        };
        let c = cfg(rules.clone());
        let before = window(790, 0, 40);
        assert_eq!(
            judge_traffic(&c, &window(812, 42, 50), Some(&before)),
            TrafficVerdict::Breach {
                rule: "max_error_rate",
                detail: "5.2% of 812 requests failed over the last 30s (the previous release: \
                         0.0% of 790), more than the 1% allowed"
                    .into()
            }
        );
        let TrafficVerdict::Breach { rule, detail } =
            judge_traffic(&c, &window(812, 0, 900), Some(&before))
        else {
            panic!("a slow release passed")
        };
        assert_eq!(rule, "max_p99");
        assert!(detail.contains("p99 900 ms") && detail.contains("previous release: 40 ms"));
        assert!(detail.contains("the 800ms allowed"), "{detail}");
        // under max_error_rate, but a rise of 0.8 points over the previous release
        let TrafficVerdict::Breach { rule, detail } =
            judge_traffic(&c, &window(1000, 8, 50), Some(&before))
        else {
            panic!("a rise passed")
        };
        assert_eq!(rule, "max_error_rate_increase");
        assert!(detail.contains("0.8% of 1000") && detail.contains("0.0% of 790"));
        // the same figures with the same rate before: a pass
        let TrafficVerdict::Pass(line) =
            judge_traffic(&c, &window(1000, 8, 50), Some(&window(900, 7, 50)))
        else {
            panic!("no pass")
        };
        assert!(line.starts_with("0.8% of 1000 request(s) failed"), "{line}");
        // too little traffic: inconclusive however bad it looks
        let TrafficVerdict::Inconclusive(why) = judge_traffic(&c, &window(99, 99, 5000), None)
        else {
            panic!("judged on too little traffic")
        };
        assert!(
            why.contains("99 request(s)") && why.contains("100"),
            "{why}"
        );
        // no previous figures to compare with: the increase rule is not judged, and says so
        let TrafficVerdict::Pass(line) =
            judge_traffic(&c, &window(500, 4, 50), Some(&window(10, 0, 5)))
        else {
            panic!("no pass")
        };
        assert!(
            line.contains("max_error_rate_increase not judged"),
            "{line}"
        );
        // exactly at the limit holds
        let at_limit = cfg(TrafficRules {
            max_error_rate: Some(0.05),
            ..rules
        });
        assert!(matches!(
            judge_traffic(&at_limit, &window(100, 5, 50), None),
            TrafficVerdict::Pass(_)
        ));
    }
}

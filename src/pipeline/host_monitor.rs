//! The monitor step of a deployment to servers: every `interval` for `duration`, each host's
//! new instance is asked whether it still runs (`status`) and probed on every health path
//! through its agent (`probe`). The probe rules of `[monitor]` hold per host
//! (`max_consecutive_failures`, `max_response_time`, the process exiting) and over every
//! probe (`min_success_rate`, from the tenth on and at the end). A host lost meanwhile is a
//! breach too. Traffic rules and error lines are not judged for servers: ferry's proxy does
//! not carry their traffic, and their output stays on each host; the step says so.

use std::time::{Duration, Instant};

use super::hosts::{Connected, HostRelease, Up};
use super::steps::Stop;
use super::{Engine, EnvState};
use crate::config::{Monitor, format_duration};

/// Probes needed before the success rate alone can fail a deploy (as on one machine).
const RATE_MIN_PROBES: u32 = 10;

/// The monitor's tally over every host.
#[derive(Default)]
struct Tally {
    probes: u32,
    passed: u32,
    slowest: Duration,
}

impl Engine {
    /// Watches every host's new instance per `cfg`; `Err` is the breach (the caller switches
    /// every host back). A host lost meanwhile is marked so in `ups`.
    pub(super) async fn watch_hosts(
        &self,
        id: i64,
        state: &EnvState,
        hosts: &[Connected],
        ups: &mut [Up],
        rel: HostRelease<'_>,
        cfg: &Monitor,
    ) -> Result<((), String), Stop> {
        let (app, env) = (&self.config.app.name, &state.env.name);
        let health = &self.config.health;
        let previous = hosts.iter().find_map(|h| h.before());
        let mut log = format!(
            "watching {} on {} host(s) for {}; {}\n",
            rel.name,
            hosts.len(),
            format_duration(cfg.duration),
            match previous {
                Some(p) => format!(
                    "{p} keeps running out of traffic on each, and a breach on any host switches every host back to it"
                ),
                None => "it is the first release here: a breach stops it on every host".to_string(),
            }
        );
        log.push_str("probe rules judged on each host; traffic rules and error lines are not judged for servers (ferry's proxy does not carry their traffic, and their output stays on each host)\n");
        let _ = self.store.set_running_output(id, "monitor", &log);
        let planned = (cfg.duration.as_millis() / cfg.interval.as_millis().max(1)).max(1) as u32;
        let started = Instant::now();
        let mut tally = Tally::default();
        let mut in_a_row = vec![0u32; ups.len()];
        for round in 1..=planned {
            tokio::time::sleep_until((started + cfg.interval * round).into()).await;
            let checks = ups.iter().map(|up| {
                let h = &hosts[up.host];
                let instance = up.instance.unwrap_or_default();
                async move {
                    let seen = h.conn.status(app, env).await?;
                    let alive = seen.instances.iter().any(|r| r.id == instance && r.alive);
                    let mut probes = Vec::new();
                    if alive {
                        for path in &health.paths {
                            let p = h
                                .conn
                                .probe(
                                    app,
                                    env,
                                    instance,
                                    path,
                                    cfg.max_response_time + Duration::from_secs(1),
                                )
                                .await?;
                            probes.push((path.clone(), p));
                        }
                    }
                    Ok::<_, super::host_conn::HostError>((alive, probes))
                }
            });
            let results = futures_util::future::join_all(checks).await;
            let mut line = Vec::new();
            for (k, result) in results.into_iter().enumerate() {
                let name = hosts[ups[k].host].conn.name.clone();
                let breach = |rule: &str, detail: String, log: &str| {
                    let message = format!("{rule} breached on {name}: {detail}");
                    Stop::failed(message.clone()).with_output(&format!("{log}{message}\n"))
                };
                let (alive, probes) = match result {
                    Ok(r) => r,
                    Err(e) => {
                        let (lost, message) = (e.is_lost(), e.message());
                        ups[k].failed = Some((Stop::failed(message.clone()), lost));
                        let rule = if lost { "host_lost" } else { "agent_error" };
                        return Err(breach(rule, message, &log));
                    }
                };
                if !alive {
                    return Err(breach(
                        "process_exited",
                        format!(
                            "the new instance is no longer running, {} after the switch",
                            format_duration(started.elapsed())
                        ),
                        &log,
                    ));
                }
                let mut failures = Vec::new();
                let mut took = Duration::ZERO;
                for (path, p) in &probes {
                    took = took.max(p.elapsed);
                    if let Some(why) = p.failure(path, health.expect_status) {
                        failures.push(why);
                    }
                }
                tally.probes += 1;
                tally.slowest = tally.slowest.max(took);
                let _ = self.store.add_probe(&crate::store::Probe {
                    environment: env.clone(),
                    deployment_id: Some(id),
                    at: crate::store::now(),
                    ok: failures.is_empty(),
                    response_ms: took.as_secs_f64() * 1000.0,
                    detail: (!failures.is_empty())
                        .then(|| format!("{name}: {}", failures.join("; "))),
                });
                if failures.is_empty() {
                    tally.passed += 1;
                    in_a_row[k] = 0;
                    line.push(format!("{name} ok in {} ms", took.as_millis()));
                } else {
                    in_a_row[k] += 1;
                    line.push(format!("{name} {}", failures.join("; ")));
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
                if in_a_row[k] > cfg.max_consecutive_failures {
                    return Err(breach(
                        "max_consecutive_failures",
                        format!(
                            "{} probe rounds failed in a row, more than the {} allowed",
                            in_a_row[k], cfg.max_consecutive_failures
                        ),
                        &log,
                    ));
                }
            }
            let rate = f64::from(tally.passed) / f64::from(tally.probes.max(1));
            log.push_str(&format!(
                "round {round}/{planned}: {}; success {:.0}%, slowest {} ms\n",
                line.join(", "),
                rate * 100.0,
                tally.slowest.as_millis()
            ));
            let _ = self.store.set_running_output(id, "monitor", &log);
            if (tally.probes >= RATE_MIN_PROBES || round == planned) && rate < cfg.min_success_rate
            {
                let message = format!(
                    "min_success_rate breached: {:.0}% of {} probes passed over every host, below the {:.0}% required",
                    rate * 100.0,
                    tally.probes,
                    cfg.min_success_rate * 100.0
                );
                return Err(Stop::failed(message.clone()).with_output(&format!("{log}{message}\n")));
            }
        }
        log.push_str(&format!(
            "{} held on every host for {}\n",
            rel.name,
            format_duration(cfg.duration)
        ));
        Ok(((), log))
    }
}

//! The rollout step: with `rollout = ["10%", "wait 2m", …]` the new instance takes a growing
//! share of clients (the proxy's split, sticky per client) instead of all of them at once,
//! and the traffic it serves is judged at every step against the previous instance's over
//! the same window.
//!
//! `N%` sets the weight; `wait D` holds it while the analysis runs; `pause` holds it until a
//! person promotes. The analysis: the new instance exiting (at once), and the traffic rules
//! of `[monitor]` (a breach aborts, too few requests is inconclusive: the wait goes on, and
//! after `inconclusive_timeout` more the rollout pauses for a person instead of guessing).
//! An abort (a breach, or `ferry rollout <env> abort`) ends the split at once — every client
//! back on the previous instance, which never stopped — then drains and stops the new one and
//! marks its release bad: `rolled_back`. At `100%` the usual switch and monitor follow.
//!
//! People act through [`Engine::rollout_action`] (`ferry rollout`, the API, the dashboard):
//! the step takes the action at its next look (at once while it waits) and answers with
//! what it did.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, oneshot};

use super::monitor::TrafficVerdict;
use super::steps::{Held, Stop};
use super::{Engine, EngineError, EnvState};
use crate::config::{Rollout, RolloutStep, Sticky, format_duration};
use crate::proxy::Upstream;
use crate::store::DeploymentState;

/// How often a holding step looks at the analysis.
const TICK: Duration = Duration::from_millis(250);
/// How long a person's action waits for the rollout to take it.
const ACTION_TIMEOUT: Duration = Duration::from_secs(15);

/// What a person asks of a rollout under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RolloutAction {
    /// Go on to the next step now (resuming a paused rollout).
    Promote,
    /// Hold the current weight until promoted.
    Pause,
    /// Every client back on the previous release; the new one stopped.
    Abort,
}

impl RolloutAction {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutAction::Promote => "promote",
            RolloutAction::Pause => "pause",
            RolloutAction::Abort => "abort",
        }
    }
}

/// A rollout under way, as `ferry status`, the API and the dashboard show it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RolloutStatus {
    pub deployment_id: i64,
    /// The new release, taking `weight` percent of clients.
    pub release: String,
    /// The release serving everyone else.
    pub previous: String,
    pub weight: u8,
    /// The step under way, 1-based, of `steps`.
    pub step: usize,
    /// Every step as written (`10%`, `wait 2m`, …, `100%`).
    pub steps: Vec<String>,
    /// Why it waits for a person, while it does.
    pub paused: Option<String>,
    /// The last analysis: the verdict and both instances' figures.
    pub analysis: Option<String>,
    /// When the step under way began (RFC 3339).
    pub since: String,
}

impl RolloutStatus {
    /// One line: `v2 at 10% of clients (step 2/5: wait 2m), paused: …`.
    pub fn line(&self) -> String {
        let step = self
            .steps
            .get(self.step.saturating_sub(1))
            .map_or_else(String::new, |s| format!(": {s}"));
        let mut out = format!(
            "rollout of {} at {}% of clients, {} on the rest (step {}/{}{step})",
            self.release,
            self.weight,
            self.previous,
            self.step,
            self.steps.len()
        );
        if let Some(why) = &self.paused {
            out.push_str(&format!("; PAUSED: {why}"));
        }
        if let Some(a) = &self.analysis {
            out.push_str(&format!("; {a}"));
        }
        out
    }
}

/// What the rollout step says back to a person's action.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolloutAnswer {
    pub environment: String,
    pub action: RolloutAction,
    /// What was done (or that the rollout had not taken it yet).
    pub message: String,
    /// The rollout afterwards (none once it ended).
    pub rollout: Option<RolloutStatus>,
}

/// What became of an action: taken (what it did), or not (why).
type Taken = Result<String, String>;

struct Asked {
    action: RolloutAction,
    /// `--full`: promote straight to 100%.
    full: bool,
    who: String,
    done: oneshot::Sender<Taken>,
}

/// An environment's rollout, shared by its step and the people acting on it.
#[derive(Default)]
pub(super) struct Control {
    status: std::sync::Mutex<Option<RolloutStatus>>,
    asked: std::sync::Mutex<Option<Asked>>,
    wake: Notify,
}

impl Control {
    pub fn status(&self) -> Option<RolloutStatus> {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn update(&self, f: impl FnOnce(&mut RolloutStatus)) {
        if let Some(s) = self
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            f(s);
        }
    }

    fn set(&self, status: Option<RolloutStatus>) {
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = status;
    }

    fn take(&self) -> Option<Asked> {
        self.asked.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// A verdict of the analysis.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Judged {
    Pass(String),
    /// Too little traffic to tell.
    Inconclusive(String),
    Breach {
        rule: String,
        detail: String,
    },
}

/// How a rollout ended early.
enum Ended {
    Breach {
        rule: String,
        detail: String,
    },
    /// By a person, answered once every client is back.
    Aborted {
        who: String,
        done: oneshot::Sender<Taken>,
    },
}

/// What happens after a holding step.
enum Next {
    Step,
    /// `promote --full`: straight to 100%.
    Full,
}

/// What the rollout runs with.
struct Run<'a> {
    id: i64,
    state: &'a EnvState,
    cfg: &'a Rollout,
    new: Arc<Upstream>,
    old: Arc<Upstream>,
    instance: crate::runtime::Instance,
    /// The previous instance: if it exits, the new one takes every client.
    old_instance: crate::runtime::Instance,
    log: String,
    weight: u8,
    salt: u16,
}

impl Run<'_> {
    fn note(&mut self, engine: &Engine, line: &str) {
        self.log.push_str(line);
        self.log.push('\n');
        if let Err(e) = engine
            .store
            .set_running_output(self.id, "rollout", &self.log)
        {
            tracing::warn!(id = self.id, error = %e, "cannot record rollout progress");
        }
    }
}

impl Engine {
    /// A person's `promote`, `pause` or `abort` for `env`'s rollout; waits until the rollout
    /// took it (a few seconds at most) and says what it did.
    pub async fn rollout_action(
        &self,
        env: &str,
        action: RolloutAction,
        full: bool,
        who: &str,
    ) -> Result<RolloutAnswer, EngineError> {
        let state = self.env(env)?;
        let control = &state.rollout;
        if control.status().is_none() {
            return Err(EngineError::Conflict(format!(
                "no rollout is under way in {env}: `ferry rollout` acts on a deployment taking traffic step by step (see `rollout` in the environment's config)"
            )));
        }
        let (done, answer) = oneshot::channel();
        let replaced = {
            let mut asked = control.asked.lock().unwrap_or_else(|e| e.into_inner());
            // nothing replaces an abort on its way
            if let Some(pending) = asked.as_ref()
                && pending.action == RolloutAction::Abort
                && action != RolloutAction::Abort
            {
                return Err(EngineError::Conflict(format!(
                    "an abort of {env}'s rollout by {} is on its way: nothing else is taken",
                    pending.who
                )));
            }
            asked.replace(Asked {
                action,
                full,
                who: who.to_string(),
                done,
            })
        };
        if let Some(replaced) = replaced {
            let _ = replaced.done.send(Err(format!(
                "replaced by a later {} from {who} before the rollout took it",
                action.as_str()
            )));
        }
        control.wake.notify_one();
        tracing::info!(
            env,
            action = action.as_str(),
            full,
            by = who,
            "rollout action"
        );
        let message = match tokio::time::timeout(ACTION_TIMEOUT, answer).await {
            Ok(Ok(Ok(message))) => message,
            // not taken: said as a conflict (the API's 409, the CLI's exit 1)
            Ok(Ok(Err(why))) => {
                return Err(EngineError::Conflict(format!(
                    "{} not taken: {why}",
                    action.as_str()
                )));
            }
            Ok(Err(_)) => {
                return Err(EngineError::Conflict(format!(
                    "{} not taken: the rollout ended without answering",
                    action.as_str()
                )));
            }
            Err(_) => format!("asked; the rollout has not taken it yet (see `ferry status {env}`)"),
        };
        Ok(RolloutAnswer {
            environment: env.to_string(),
            action,
            message,
            rollout: control.status(),
        })
    }

    /// The rollout step, between health and the switch: returns once the new instance may
    /// take every client (the switch follows), or stops the deployment rolled back.
    pub(super) async fn rollout(
        &self,
        id: i64,
        state: &EnvState,
        release: &str,
        held: &mut Held,
    ) -> Result<(), Stop> {
        let env = &state.env;
        let Some(cfg) = &env.rollout else {
            self.skip(id, "rollout", "no rollout configured");
            return Ok(());
        };
        let new = held
            .instance
            .as_ref()
            .expect("the started instance is held");
        let (new_upstream, instance) = (new.upstream.clone(), new.instance.clone());
        let previous = {
            let active = state.active.lock().await;
            active
                .as_ref()
                .filter(|a| a.instance.exited().is_none())
                .map(|a| (a.release.clone(), a.upstream.clone(), a.instance.clone()))
        };
        let Some((previous, old_upstream, old_instance)) = previous else {
            self.skip(
                id,
                "rollout",
                &format!(
                    "no previous instance serving in {}: nothing to split with, {release} takes every client at once",
                    env.name
                ),
            );
            return Ok(());
        };
        let mut run = Run {
            id,
            state,
            cfg,
            new: new_upstream,
            old: old_upstream,
            old_instance,
            instance,
            log: String::new(),
            weight: 0,
            salt: (id.unsigned_abs() % 10_007 * 7_919 % u64::from(crate::proxy::canary::BUCKETS))
                as u16,
        };
        // an action left from an earlier rollout (asked as it ended) is not this one's
        if let Some(stale) = state.rollout.take() {
            let _ = stale
                .done
                .send(Err("the rollout it was asked of had ended".into()));
        }
        state.rollout.set(Some(RolloutStatus {
            deployment_id: id,
            release: release.to_string(),
            previous: previous.clone(),
            weight: 0,
            step: 1,
            steps: cfg.steps.iter().map(ToString::to_string).collect(),
            paused: None,
            analysis: None,
            since: crate::store::now(),
        }));
        let sticky = match &cfg.sticky {
            Sticky::Cookie => format!(
                "sticky by the cookie {}",
                crate::proxy::canary::cookie_name(&env.name)
            ),
            Sticky::Header(h) => format!("sticky by the {h} header (else a cookie)"),
        };
        let intro = format!(
            "rolling out {release} in steps: {}; {previous} keeps serving the rest, {sticky}",
            cfg.describe()
        );
        let result = self
            .step(id, "rollout", async {
                run.note(self, &intro);
                match self.roll_out(&mut run).await {
                    Ok(()) => Ok(((), run.log.clone())),
                    Err(ended) => Err(self
                        .abort_rollout(&mut run, release, &previous, ended, held)
                        .await),
                }
            })
            .await;
        state.rollout.set(None);
        // an action still waiting is answered
        if let Some(asked) = state.rollout.take() {
            let _ = asked.done.send(Err("the rollout had already ended".into()));
        }
        result
    }

    async fn roll_out(&self, run: &mut Run<'_>) -> Result<(), Ended> {
        let steps = run.cfg.steps.clone();
        let mut i = 0;
        while i < steps.len() {
            let step = steps[i];
            run.state.rollout.update(|s| {
                s.step = i + 1;
                s.since = crate::store::now();
            });
            // an action asked between holding steps
            if let Some(asked) = run.state.rollout.take() {
                match self.between_steps(run, asked).await? {
                    Some(Next::Full) => break,
                    Some(Next::Step) | None => {}
                }
            }
            match step {
                RolloutStep::Weight(100) => break,
                RolloutStep::Weight(w) => {
                    self.set_weight(run, w);
                    i += 1;
                    continue;
                }
                RolloutStep::Wait(d) => {
                    if let Next::Full = self.hold(run, Some(d), None).await? {
                        break;
                    }
                }
                RolloutStep::Pause => {
                    let why = format!("a pause step at {}%: promote to go on", run.weight);
                    if let Next::Full = self.hold(run, None, Some(why)).await? {
                        break;
                    }
                }
            }
            i += 1;
        }
        run.state.rollout.update(|s| s.step = steps.len());
        run.note(
            self,
            "100%: the switch follows, every client on the new release",
        );
        Ok(())
    }

    fn set_weight(&self, run: &mut Run<'_>, weight: u8) {
        run.state
            .proxy
            .split(&run.new, weight, run.salt, &run.cfg.sticky);
        run.weight = weight;
        run.state.rollout.update(|s| s.weight = weight);
        run.note(
            self,
            &format!("{weight}%: {weight}% of clients on the new release"),
        );
    }

    /// An action taken before a step: abort ends it, pause holds here, promote --full
    /// ends the steps.
    async fn between_steps(&self, run: &mut Run<'_>, asked: Asked) -> Result<Option<Next>, Ended> {
        match asked.action {
            RolloutAction::Abort => Err(Ended::Aborted {
                who: asked.who,
                done: asked.done,
            }),
            RolloutAction::Promote if asked.full => {
                let _ = asked
                    .done
                    .send(Ok("promoted to 100%: the switch follows".into()));
                run.note(self, &format!("promoted to 100% by {}", asked.who));
                Ok(Some(Next::Full))
            }
            RolloutAction::Promote => {
                let _ = asked.done.send(Ok(format!("at {}%: going on", run.weight)));
                Ok(None)
            }
            RolloutAction::Pause => {
                let why = format!("paused by {} at {}%", asked.who, run.weight);
                let _ = asked.done.send(Ok(why.clone()));
                self.hold(run, None, Some(why)).await.map(Some)
            }
        }
    }

    /// Holds the current weight for `wait` (none: until promoted), `paused` from the start
    /// when given, judging the traffic all along. Past the wait an inconclusive analysis
    /// keeps holding, and after `inconclusive_timeout` more pauses for a person.
    async fn hold(
        &self,
        run: &mut Run<'_>,
        wait: Option<Duration>,
        mut paused: Option<String>,
    ) -> Result<Next, Ended> {
        let started = Instant::now();
        let end = wait.map(|d| started + d);
        match (&paused, wait) {
            (Some(why), _) => run.note(self, &format!("paused: {why}")),
            (None, Some(d)) => run.note(self, &format!("wait {}", format_duration(d))),
            (None, None) => {}
        }
        run.state.rollout.update(|s| s.paused = paused.clone());
        let monitor = self
            .config
            .monitor
            .as_ref()
            .filter(|_| run.state.env.monitor);
        let mut last: Option<Judged> = None;
        let mut watch_old = true;
        loop {
            tokio::select! {
                status = run.instance.wait_exit() => {
                    let status = status.map_or_else(|| "unknown status".into(), |s| s.to_string());
                    return Err(Ended::Breach {
                        rule: "process_exited".into(),
                        detail: format!("the new instance exited ({status}) at {}% of clients", run.weight),
                    });
                }
                status = run.old_instance.wait_exit(), if watch_old => {
                    if run.old_instance.exited().is_none() {
                        // nothing watches it any more: nothing more to learn here
                        watch_old = false;
                        continue;
                    }
                    let status = status.map_or_else(|| "unknown status".into(), |s| s.to_string());
                    run.note(self, &format!(
                        "the previous instance exited ({status}) at {}%: every client goes to the new release now, watched by [monitor]",
                        run.weight
                    ));
                    return Ok(Next::Full);
                }
                () = run.state.rollout.wake.notified() => {}
                () = tokio::time::sleep(TICK) => {}
            }
            if let Some(asked) = run.state.rollout.take() {
                match asked.action {
                    RolloutAction::Abort => {
                        return Err(Ended::Aborted {
                            who: asked.who,
                            done: asked.done,
                        });
                    }
                    RolloutAction::Promote => {
                        let next = if asked.full { Next::Full } else { Next::Step };
                        let what = if asked.full {
                            "to 100%".to_string()
                        } else {
                            "to the next step".to_string()
                        };
                        run.note(self, &format!("promoted {what} by {}", asked.who));
                        let _ = asked
                            .done
                            .send(Ok(format!("promoted {what} from {}%", run.weight)));
                        run.state.rollout.update(|s| s.paused = None);
                        return Ok(next);
                    }
                    RolloutAction::Pause => {
                        let why = format!("paused by {} at {}%", asked.who, run.weight);
                        run.note(self, &why);
                        let _ = asked.done.send(Ok(why.clone()));
                        paused = Some(why);
                        run.state.rollout.update(|s| s.paused = paused.clone());
                    }
                }
            }
            let span = started.elapsed();
            let judged = analyse(&run.state.env, monitor, (&run.new, &run.old), span);
            if last.as_ref() != Some(&judged) {
                match &judged {
                    Judged::Breach { rule, detail } => {
                        return Err(Ended::Breach {
                            rule: rule.clone(),
                            detail: detail.clone(),
                        });
                    }
                    Judged::Pass(figures) | Judged::Inconclusive(figures) => {
                        let figures = figures.clone();
                        run.state.rollout.update(|s| s.analysis = Some(figures));
                    }
                }
                last = Some(judged.clone());
            }
            if paused.is_some() {
                continue;
            }
            let Some(end) = end else { continue };
            let now = Instant::now();
            if now < end {
                continue;
            }
            match &judged {
                Judged::Inconclusive(figures) => {
                    let over = now - end;
                    if over >= run.cfg.inconclusive_timeout {
                        let why = format!(
                            "too little traffic to judge at {}% for {} past the wait ({figures}): promote to go on, or abort",
                            run.weight,
                            format_duration(run.cfg.inconclusive_timeout)
                        );
                        run.note(self, &format!("paused: {why}"));
                        paused = Some(why);
                        run.state.rollout.update(|s| s.paused = paused.clone());
                    }
                }
                Judged::Pass(figures) => {
                    run.note(
                        self,
                        &format!(
                            "{}% held for {}: {figures}",
                            run.weight,
                            format_duration(span)
                        ),
                    );
                    return Ok(Next::Step);
                }
                Judged::Breach { .. } => unreachable!("a breach returned above"),
            }
        }
    }

    /// Ends a rollout early: the split first (every client on the previous instance), then
    /// the new instance drained and stopped, its release marked bad.
    async fn abort_rollout(
        &self,
        run: &mut Run<'_>,
        release: &str,
        previous: &str,
        ended: Ended,
        held: &mut Held,
    ) -> Stop {
        let env = &run.state.env.name;
        let at = Instant::now();
        let weight = run.weight;
        run.state.proxy.unsplit();
        let took = at.elapsed();
        let (what, rule) = match ended {
            Ended::Breach { rule, detail } => (
                format!("{rule} breached at {weight}%: {detail}"),
                Some(rule),
            ),
            Ended::Aborted { who, done } => {
                let _ = done.send(Ok(format!(
                    "aborted at {weight}%: every client is on {previous} again; {release} is being drained and stopped"
                )));
                (format!("aborted by {who} at {weight}%"), None)
            }
        };
        tracing::warn!(env = %env, release, weight, rule = rule.as_deref().unwrap_or("none"), "rollout aborted");
        run.note(self, &what);
        self.mark_release(env, release, "bad");
        if let Some(active) = held.instance.take() {
            let out = self.retire(active).await;
            run.log.push_str(&out);
        }
        // the last line is what the CLI shows for the step
        run.note(
            self,
            &format!(
                "rolled back: every client on {previous} ({:.2} ms after the abort), {release} drained and stopped",
                took.as_secs_f64() * 1000.0
            ),
        );
        Stop {
            state: DeploymentState::RolledBack,
            message: format!("{what}; rolled back to {previous}"),
            output: run.log.clone(),
            app_output: None,
        }
    }
}

/// The analysis of one holding step: the traffic rules of `[monitor]` judged on the new
/// instance's figures over the time at this share (at most the rules' `window`), against the
/// previous instance's over the same window, at the same moment.
fn analyse(
    env: &crate::config::Environment,
    monitor: Option<&crate::config::Monitor>,
    (new, old): (&Upstream, &Upstream),
    span: Duration,
) -> Judged {
    let Some(cfg) = monitor.filter(|m| m.traffic.any()) else {
        return Judged::Pass(
            "no traffic rules in [monitor]: only the new instance exiting is watched".into(),
        );
    };
    if !env.traffic_metrics {
        return Judged::Pass(
            "traffic_metrics = false: the traffic rules cannot be judged, only the new instance exiting is watched"
                .into(),
        );
    }
    let span = span
        .min(cfg.traffic.window)
        .min(crate::proxy::metrics::MAX_WINDOW);
    let (now, before) = (new.window(span), old.window(span));
    match super::monitor::judge_traffic(cfg, &now, Some(&before)) {
        TrafficVerdict::Pass(figures) => Judged::Pass(format!(
            "{figures}; the previous release: {}",
            before.summary()
        )),
        TrafficVerdict::Inconclusive(why) => Judged::Inconclusive(why),
        TrafficVerdict::Breach { rule, detail } => Judged::Breach {
            rule: rule.to_string(),
            detail,
        },
    }
}

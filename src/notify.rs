//! Outgoing notifications (`[[notify]]`): a POST per deployment event to each target that
//! asked for it.
//!
//! Events: `deploy.started`, `deploy.succeeded`, `deploy.failed`,
//! `deploy.refused`, `rollback` (a monitor breach that switched
//! back, or a manual rollback that went through) and `approval.needed`. The `json` format is
//! ferry's own object with a Slack-compatible `text`; `slack` sends `text` alone. A failed
//! deploy, and a deploy the monitor rolled back, also carry `report`: a title and a markdown
//! body (reason, steps, the failing output, the monitor's probes, the new instance's last
//! output lines), ready to file as an issue.
//!
//! Each POST runs in its own task: 10 s timeout, retried 3 times with doubling backoff on an
//! error or a non-2xx answer, then given up with a log line. Deployments never wait for it.
//! Target URLs often embed a secret (Slack's do), so logs name only the scheme and host.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};

use crate::config::{Config, Notify, NotifyFormat};
use crate::events::{Event, tail};
use crate::store::{Deployment, DeploymentState, Probe, Step, StepState, Store};

/// Retries after the first attempt.
const RETRIES: u32 = 3;
/// Wait before the first retry; doubled for each next one.
const BACKOFF: Duration = Duration::from_millis(250);
/// How much of the failing step's output a notification carries.
const OUTPUT_TAIL: usize = 2000;
/// The newest monitor probes a report lists (the figures count them all).
const REPORT_PROBES: usize = 30;

/// Called with `sent` or `failed` for each notification (metrics count them).
pub type Outcome = Arc<dyn Fn(&'static str) + Send + Sync>;

/// The notification event a deployment transition is, if any. `started` remembers which
/// deployments have already been announced as started (an approved one runs again).
fn event_name(
    kind: &str,
    state: DeploymentState,
    id: i64,
    started: &mut HashSet<i64>,
) -> Option<&'static str> {
    let rollback = kind == "rollback";
    let name = match state {
        DeploymentState::Running if !rollback => {
            if !started.insert(id) {
                return None;
            }
            "deploy.started"
        }
        DeploymentState::AwaitingApproval => "approval.needed",
        DeploymentState::Succeeded if rollback => "rollback",
        DeploymentState::Succeeded => "deploy.succeeded",
        DeploymentState::RolledBack => "rollback",
        DeploymentState::Failed | DeploymentState::Interrupted => "deploy.failed",
        DeploymentState::Refused => "deploy.refused",
        _ => return None,
    };
    if state.is_final() {
        started.remove(&id);
    }
    Some(name)
}

/// Sends notifications for events from `store` until `shutdown`.
pub async fn run(
    config: Arc<Config>,
    store: Store,
    outcome: Outcome,
    mut shutdown: watch::Receiver<bool>,
) {
    if config.notify.is_empty() {
        return;
    }
    let client = match reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot make an HTTP client; notifications are off");
            return;
        }
    };
    let mut rx = store.events().subscribe();
    let mut started = HashSet::new();
    loop {
        let event = tokio::select! {
            e = rx.recv() => e,
            () = crate::proxy::stopped(&mut shutdown) => return,
        };
        let (id, kind, state) = match event {
            Ok(Event::Deployment {
                deployment,
                kind,
                state,
                ..
            }) => (deployment, kind, state),
            Ok(_) => continue,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "notifications fell behind; some were not sent");
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let Some(name) = event_name(&kind, state, id, &mut started) else {
            continue;
        };
        let targets: Vec<&Notify> = config
            .notify
            .iter()
            .filter(|n| n.on.iter().any(|e| e == name))
            .collect();
        if targets.is_empty() {
            continue;
        }
        let (d, steps) = match (store.deployment(id), store.steps(id)) {
            (Ok(d), Ok(s)) => (d, s),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(id, error = %e, "cannot read a deployment to notify about");
                continue;
            }
        };
        let probes = if d.state == DeploymentState::RolledBack {
            store.deployment_probes(id).unwrap_or_default()
        } else {
            Vec::new()
        };
        let payload = payload(name, &config.app.name, &d, &steps, &probes);
        for target in targets {
            let body = match target.format {
                NotifyFormat::Json => payload.clone(),
                NotifyFormat::Slack => json!({"text": payload["text"]}),
            };
            tokio::spawn(send(
                client.clone(),
                target.url.clone(),
                body,
                outcome.clone(),
            ));
        }
    }
}

/// The scheme and host of `url`, for logs (the path may hold a secret).
fn redacted(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => format!("{}://{}/…", u.scheme(), u.host_str().unwrap_or("?")),
        Err(_) => "(unparsable url)".to_string(),
    }
}

async fn send(client: reqwest::Client, url: String, body: Value, outcome: Outcome) {
    let mut wait = BACKOFF;
    for attempt in 0..=RETRIES {
        if attempt > 0 {
            tokio::time::sleep(wait).await;
            wait *= 2;
        }
        let why = match client.post(&url).json(&body).send().await {
            Ok(r) if r.status().is_success() => {
                outcome("sent");
                return;
            }
            Ok(r) => format!("answered {}", r.status()),
            Err(e) => e.without_url().to_string(),
        };
        tracing::warn!(target = %redacted(&url), attempt = attempt + 1, "notification not delivered: {why}");
    }
    tracing::error!(target = %redacted(&url), event = %body["event"], "notification given up after {} attempts", RETRIES + 1);
    outcome("failed");
}

fn seconds_between(start: &str, end: Option<&str>) -> Option<f64> {
    let a = chrono::DateTime::parse_from_rfc3339(start).ok()?;
    let b = chrono::DateTime::parse_from_rfc3339(end?).ok()?;
    Some((b - a).num_milliseconds() as f64 / 1000.0)
}

/// The `json` body for event `name` about `d` (`probes`: the monitor's, for a rolled back one).
pub fn payload(name: &str, app: &str, d: &Deployment, steps: &[Step], probes: &[Probe]) -> Value {
    let version = d.version.clone().unwrap_or_else(|| d.git_ref.clone());
    let short = d.commit_sha.as_deref().map(|s| &s[..7.min(s.len())]);
    let at = short.map(|s| format!(" ({s})")).unwrap_or_default();
    let env = &d.environment;
    // a hook run after the outcome (post_deploy, on_failure...) is never the cause of it
    let failing = steps.iter().rev().find(|s| {
        s.state == StepState::Failed && !crate::pipeline::OUTCOME_HOOKS.contains(&s.name.as_str())
    });
    let why = d.reason.as_deref().unwrap_or("no reason recorded");
    let duration = seconds_between(&d.created_at, d.finished_at.as_deref());
    let took = duration.map(|s| format!(" in {s:.1}s")).unwrap_or_default();
    let text = match name {
        "deploy.started" if d.kind == "restart" => {
            format!("🔄 {app} {version}{at} is restarting on {env} ({})", d.by())
        }
        "deploy.succeeded" if d.kind == "restart" => {
            format!(
                "🔄 {app} {version}{at} restarted on {env}{took} ({})",
                d.by()
            )
        }
        "deploy.started" => format!("🚀 {app} {version}{at} is deploying to {env} ({})", d.by()),
        "deploy.succeeded" => format!("✅ {app} {version}{at} is live on {env}{took} ({})", d.by()),
        "deploy.failed" => format!("❌ {app} {version}{at} failed on {env}: {why}"),
        "deploy.refused" => format!("⛔ {app} {version} refused for {env}: {why}"),
        "rollback" if d.kind == "rollback" => {
            format!("↩️ {env} rolled back to {version}{at} ({})", d.by())
        }
        "rollback" => format!("↩️ {app} {version}{at} was rolled back on {env}: {why}"),
        "approval.needed" => format!(
            "✋ {app} {version}{at} to {env} waits for approval: ferry approve {}",
            d.id
        ),
        other => format!("{other}: {app} {version} on {env}"),
    };
    let mut body = json!({
        "event": name,
        "text": text,
        "app": app,
        "environment": env,
        "deployment": d.id,
        "kind": d.kind,
        "state": d.state,
        "version": version,
        "ref": d.git_ref,
        "commit": d.commit_sha,
        "who": d.triggered_by,
        "token": d.triggered_token,
        "reason": d.reason,
        "duration_seconds": duration,
        "failing_step": failing.map(|s| json!({"name": s.name, "output_tail": tail(&s.output, OUTPUT_TAIL)})),
    });
    if name == "deploy.failed" || d.state == DeploymentState::RolledBack {
        body["report"] = report(app, d, &version, failing, steps, probes);
    }
    body
}

/// A ready-to-file issue for a failed or rolled back deploy: a title and a markdown body.
fn report(
    app: &str,
    d: &Deployment,
    version: &str,
    failing: Option<&Step>,
    steps: &[Step],
    probes: &[Probe],
) -> Value {
    let step = failing.map_or("(no step failed; see the reason)", |s| s.name.as_str());
    let rolled_back = d.state == DeploymentState::RolledBack;
    let title = if rolled_back {
        // the rule, as the monitor named it: "max_consecutive_failures breached: …"
        let rule = d
            .reason
            .as_deref()
            .and_then(|r| r.split(" breached").next())
            .map(|r| r.trim_start_matches("monitor: "))
            .unwrap_or("a monitoring rule");
        format!(
            "Deploy of {app} {version} to {} rolled back by the monitor ({rule})",
            d.environment
        )
    } else {
        format!(
            "Deploy of {app} {version} to {} failed at {step}",
            d.environment
        )
    };
    let mut md = format!(
        "## What happened\n\nDeployment {} of `{}` to **{}** ended `{}`.\n\n\
         - Reason: {}\n- Commit: `{}`\n- Triggered by: {}\n- Started: {}\n- Finished: {}\n\n\
         ## Steps\n\n| step | state | took |\n|---|---|---|\n",
        d.id,
        d.git_ref,
        d.environment,
        d.state.as_str(),
        d.reason.as_deref().unwrap_or("-"),
        d.commit_sha.as_deref().unwrap_or("-"),
        d.triggered_by,
        d.created_at,
        d.finished_at.as_deref().unwrap_or("-"),
    );
    for s in steps {
        let took = seconds_between(&s.started_at, s.finished_at.as_deref())
            .map_or("-".to_string(), |t| format!("{t:.1}s"));
        md.push_str(&format!("| {} | {} | {took} |\n", s.name, s.state.as_str()));
    }
    if let Some(s) = failing {
        md.push_str(&format!(
            "\n## Output of `{}` (last lines)\n\n```\n{}\n```\n",
            s.name,
            tail(&s.output, OUTPUT_TAIL).trim_end()
        ));
    }
    if !probes.is_empty() {
        md.push_str(&probe_table(probes));
    }
    if let Some(lines) = failing.and_then(|s| s.app_output.as_deref()) {
        md.push_str(&format!(
            "\n## The app's last lines (`{}`)\n\n```\n{}\n```\n",
            d.release.as_deref().unwrap_or(version),
            lines.trim_end()
        ));
    }
    md.push_str(&format!(
        "\n{} Details: `ferry show {}`.\n",
        if rolled_back {
            "Traffic went back to the previous release."
        } else {
            "The previous release kept serving."
        },
        d.id
    ));
    json!({"title": title, "body": md})
}

/// The monitor's figures and its newest probes, as a markdown section.
fn probe_table(probes: &[Probe]) -> String {
    let passed = probes.iter().filter(|p| p.ok).count();
    let in_a_row = probes.iter().rev().take_while(|p| !p.ok).count();
    let slowest = probes.iter().map(|p| p.response_ms).fold(0.0, f64::max);
    let mut md = format!(
        "\n## Monitoring\n\n{} probes, {passed} passed ({:.1}%), {in_a_row} failed in a row at the end, slowest {slowest:.1} ms.\n\n\
         | at | result | ms | detail |\n|---|---|---|---|\n",
        probes.len(),
        100.0 * passed as f64 / probes.len() as f64,
    );
    let skipped = probes.len().saturating_sub(REPORT_PROBES);
    if skipped > 0 {
        md.push_str(&format!("| … | {skipped} earlier probes | | |\n"));
    }
    for p in &probes[skipped..] {
        let detail = p.detail.as_deref().unwrap_or("").replace('|', "\\|");
        md.push_str(&format!(
            "| {} | {} | {:.1} | {detail} |\n",
            p.at,
            if p.ok { "ok" } else { "failed" },
            p.response_ms
        ));
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_map_to_events_once() {
        let mut started = HashSet::new();
        let ev = |k, s, started: &mut HashSet<i64>| event_name(k, s, 1, started);
        assert_eq!(ev("deploy", DeploymentState::Queued, &mut started), None);
        assert_eq!(
            ev("deploy", DeploymentState::Running, &mut started),
            Some("deploy.started")
        );
        assert_eq!(
            ev("deploy", DeploymentState::AwaitingApproval, &mut started),
            Some("approval.needed")
        );
        // running again after approval is not a second start
        assert_eq!(ev("deploy", DeploymentState::Running, &mut started), None);
        assert_eq!(
            ev("deploy", DeploymentState::Failed, &mut started),
            Some("deploy.failed")
        );
        assert!(started.is_empty());
        assert_eq!(
            ev("rollback", DeploymentState::Succeeded, &mut started),
            Some("rollback")
        );
        assert_eq!(
            ev("deploy", DeploymentState::RolledBack, &mut started),
            Some("rollback")
        );
        assert_eq!(
            ev("deploy", DeploymentState::Superseded, &mut started),
            None
        );
    }

    #[test]
    fn urls_are_logged_without_their_path() {
        assert_eq!(
            redacted("https://hooks.slack.com/services/T0/B0/secret"),
            "https://hooks.slack.com/…"
        );
    }
}

//! `ferry deploy <env> <ref>`: request a deployment and follow its steps live.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use super::{ApiClient, Cli, ClientError, CmdResult, Failure};
use crate::server::{DeployRequest, DeploymentDetail};
use crate::store::{Deployment, DeploymentState, Step, StepState};

#[derive(Debug, clap::Args)]
pub struct Deploy {
    /// The environment (or slot, like staging-2).
    pub environment: String,
    /// A tag, branch or commit sha of the app's repository.
    #[arg(value_name = "REF")]
    pub git_ref: String,
    /// Deploy inside a freeze window (needs --reason).
    #[arg(long, requires = "reason")]
    pub force: bool,
    /// Why the freeze window is overridden; recorded with the deployment.
    #[arg(long)]
    pub reason: Option<String>,
    /// Return at once with the deployment's id instead of following it.
    #[arg(long)]
    pub no_wait: bool,
    /// Print the final deployment as JSON instead of live steps.
    #[arg(long)]
    pub json: bool,
    /// When another deployment or a lock holds the environment, wait in line this long
    /// (like "10m", at most "24h") instead of being refused.
    #[arg(long, value_name = "DURATION", value_parser = parse_wait)]
    pub wait_lock: Option<std::time::Duration>,
}

/// `--wait-lock`'s value.
pub fn parse_wait(text: &str) -> Result<std::time::Duration, String> {
    let wait = crate::config::parse_duration(text)?;
    if wait > crate::config::MAX_WAIT_LOCK {
        return Err("wait at most 24h".into());
    }
    Ok(wait)
}

pub async fn run(cli: &Cli, args: &Deploy) -> CmdResult {
    let client = cli.client()?;
    let request = DeployRequest {
        environment: args.environment.clone(),
        git_ref: args.git_ref.clone(),
        triggered_by: Some(super::current_user()),
        force: args.force,
        reason: args.reason.clone(),
        wait_lock: args.wait_lock.map(crate::config::format_duration),
    };
    let created = create(&client, "/api/deployments", &request).await?;
    finish(&client, created, args.no_wait, args.json).await
}

/// After a deployment was created: print its id (`no_wait`), or follow it to its end and
/// exit by its outcome.
pub async fn finish(
    client: &ApiClient,
    created: Deployment,
    no_wait: bool,
    json: bool,
) -> CmdResult {
    if no_wait {
        if json {
            outln!(
                "{}",
                serde_json::to_string_pretty(&created).unwrap_or_default()
            );
        } else {
            outln!(
                "deployment #{}: {} to {} is {} (follow it with `ferry show {}`)",
                created.id,
                created.git_ref,
                created.environment,
                created.state.as_str().replace('_', " "),
                created.id
            );
        }
        return Ok(());
    }
    if !json {
        outln!(
            "deployment #{}: {} {} to {}",
            created.id,
            match created.kind.as_str() {
                "rollback" | "restart" => created.kind.as_str(),
                _ => "deploy",
            },
            created.git_ref,
            created.environment
        );
    }
    let d = follow(client, created.id, !json).await?;
    if json {
        let detail: DeploymentDetail = client.get(&format!("/api/deployments/{}", d.id)).await?;
        outln!(
            "{}",
            serde_json::to_string_pretty(&detail).unwrap_or_default()
        );
    }
    match d.state {
        DeploymentState::Succeeded => Ok(()),
        _ => Err(Failure::Failed(String::new())),
    }
}

/// Requests a deployment and follows it to its end, printing steps when `live`.
pub async fn deploy(
    client: &ApiClient,
    env: &str,
    git_ref: &str,
    live: bool,
) -> Result<Deployment, Failure> {
    let request = DeployRequest {
        environment: env.to_string(),
        git_ref: git_ref.to_string(),
        triggered_by: Some(super::current_user()),
        force: false,
        reason: None,
        wait_lock: None,
    };
    let created = create(client, "/api/deployments", &request).await?;
    if live {
        outln!("deployment #{}: {} to {}", created.id, git_ref, env);
    }
    follow(client, created.id, live).await
}

/// POSTs a request that creates a deployment; a refusal on the spot (409) exits 1.
pub async fn create<B: serde::Serialize>(
    client: &ApiClient,
    path: &str,
    body: &B,
) -> Result<Deployment, Failure> {
    match client.post(path, body).await {
        Ok(d) => Ok(d),
        Err(ClientError::Api {
            status: 409,
            message,
            ..
        }) => Err(Failure::Failed(format!("refused: {message}"))),
        Err(e) => Err(e.into()),
    }
}

/// Polls deployment `id` until it ends, printing each step as it finishes.
pub async fn follow(client: &ApiClient, id: i64, live: bool) -> Result<Deployment, Failure> {
    let started = Instant::now();
    let tty = live && std::io::stdout().is_terminal();
    let mut printed = 0;
    let mut frame = 0usize;
    let mut said_waiting = false;
    let mut said_monitoring = false;
    let mut said_rolling = false;
    let mut progress_lines = 0;
    loop {
        let detail: DeploymentDetail = client.get(&format!("/api/deployments/{id}")).await?;
        if live && detail.deployment.state == DeploymentState::AwaitingApproval && !said_waiting {
            said_waiting = true;
            if tty {
                out!("\r\x1b[2K");
            }
            outln!(
                "  waiting for approval: someone runs `ferry approve {id}` (Ctrl-C stops following; the deployment keeps waiting)"
            );
        }
        if live {
            let clear = || {
                if tty {
                    out!("\r\x1b[2K");
                }
            };
            for step in detail.steps.iter().skip(printed) {
                // the monitor writes a line per probe as it goes: each is printed, the last
                // ones too; its final line is the step's summary, printed with it
                // so does the lock step while it waits in line (`--wait-lock`)
                // and the rollout, a line per step of it
                let streams = matches!(step.name.as_str(), "monitor" | "lock" | "rollout");
                if streams && step.state != StepState::Skipped {
                    if step.name == "rollout" && !said_rolling {
                        said_rolling = true;
                        clear();
                        outln!(
                            "  rolling out: `ferry rollout {} promote|pause|abort` acts on it; Ctrl-C stops following, not the deployment",
                            detail.deployment.environment
                        );
                    }
                    if step.name == "monitor" && !said_monitoring {
                        said_monitoring = true;
                        clear();
                        outln!(
                            "  monitoring: Ctrl-C stops following, not the deployment (`ferry show {id}` later)"
                        );
                    }
                    let lines: Vec<&str> = step.output.lines().collect();
                    let upto = match step.state {
                        StepState::Running => lines.len(),
                        _ => lines.len().saturating_sub(1),
                    };
                    for line in lines.iter().take(upto).skip(progress_lines) {
                        clear();
                        outln!("    {line}");
                        progress_lines += 1;
                    }
                }
                if step.state == StepState::Running {
                    break;
                }
                clear();
                print_step(step);
                printed += 1;
                progress_lines = 0;
            }
            if tty && let Some(step) = detail.steps.get(printed) {
                const SPIN: [&str; 4] = ["|", "/", "-", "\\"];
                frame += 1;
                let last = step.output.lines().last().unwrap_or("");
                out!(
                    "\r\x1b[2K  {} {:<11} {}  {}",
                    SPIN[frame % SPIN.len()],
                    step.name,
                    seconds(elapsed(&step.started_at, None)),
                    last.chars().take(100).collect::<String>()
                );
                let _ = std::io::stdout().flush();
            }
        }
        let d = detail.deployment;
        if d.state.is_final() {
            if live {
                if tty {
                    out!("\r\x1b[2K");
                }
                print_outcome(client, &d, &detail.steps, started.elapsed());
            }
            return Ok(d);
        }
        tokio::time::sleep(Duration::from_millis(if tty { 100 } else { 150 })).await;
    }
}

fn print_step(step: &Step) {
    let mark = match step.state {
        StepState::Ok => "✓",
        StepState::Failed => "✗",
        StepState::Skipped => "-",
        StepState::Running => "…",
    };
    // the last line says how the step ended
    let summary = step
        .output
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    outln!(
        "  {mark} {:<11} {:>7}  {}",
        step.name,
        seconds(elapsed(&step.started_at, step.finished_at.as_deref())),
        summary
    );
}

fn print_outcome(client: &ApiClient, d: &Deployment, steps: &[Step], took: Duration) {
    let version = d.version.as_deref().unwrap_or(&d.git_ref);
    let short = d.commit_sha.as_deref().map_or("", |s| &s[..7.min(s.len())]);
    match d.state {
        DeploymentState::Succeeded if d.kind == "rollback" => outln!(
            "rolled back {} to {} (deployment #{}, {})",
            d.environment,
            d.release.as_deref().unwrap_or(version),
            d.id,
            seconds(took)
        ),
        DeploymentState::Succeeded if d.kind == "restart" => outln!(
            "restarted {}: {} serves from a new instance (deployment #{}, {})",
            d.environment,
            d.release.as_deref().unwrap_or(version),
            d.id,
            seconds(took)
        ),
        DeploymentState::Succeeded => outln!(
            "{version} ({short}) is live on {} (deployment #{}, {})",
            d.environment,
            d.id,
            seconds(took)
        ),
        state => {
            // what stopped it, not a hook that ran after (on_failure) and failed too
            let cause = |s: &&Step| {
                s.state == StepState::Failed
                    && !crate::pipeline::OUTCOME_HOOKS.contains(&s.name.as_str())
            };
            if let Some(step) = steps.iter().rev().find(cause) {
                let lines: Vec<&str> = step.output.lines().collect();
                let tail = &lines[lines.len().saturating_sub(20)..];
                let reason = d.reason.as_deref().unwrap_or("");
                if tail.len() > 1 || tail.first().is_some_and(|l| !reason.ends_with(l)) {
                    outln!("  output of {}:", step.name);
                    for line in tail {
                        outln!("    | {line}");
                    }
                }
                if let Some(app) = &step.app_output {
                    outln!("  the app's last lines:");
                    for line in app.lines() {
                        outln!("    > {line}");
                    }
                }
            }
            outln!(
                "{}: {} (deployment #{}; details: ferry show {}{})",
                state.as_str(),
                d.reason.as_deref().unwrap_or("no reason recorded"),
                d.id,
                d.id,
                client.flags()
            );
        }
    }
}

/// Time between two stored timestamps (or until now).
pub fn elapsed(from: &str, to: Option<&str>) -> Duration {
    let parse = |s: &str| chrono::DateTime::parse_from_rfc3339(s).ok();
    let Some(start) = parse(from) else {
        return Duration::ZERO;
    };
    let end = to
        .and_then(parse)
        .map(|t| t.with_timezone(&chrono::Utc))
        .unwrap_or_else(chrono::Utc::now);
    (end - start.with_timezone(&chrono::Utc))
        .to_std()
        .unwrap_or_default()
}

pub fn seconds(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

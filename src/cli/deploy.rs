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
    /// Print the final deployment as JSON instead of live steps.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(cli: &Cli, args: &Deploy) -> CmdResult {
    let client = cli.client()?;
    let d = deploy(&client, &args.environment, &args.git_ref, !args.json).await?;
    if args.json {
        let detail: DeploymentDetail = client.get(&format!("/api/deployments/{}", d.id)).await?;
        println!(
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
    };
    let created: Deployment = match client.post("/api/deployments", &request).await {
        Ok(d) => d,
        Err(ClientError::Api {
            status: 409,
            message,
            ..
        }) => {
            return Err(Failure::Failed(format!("refused: {message}")));
        }
        Err(e) => return Err(e.into()),
    };
    if live {
        println!("deployment #{}: {} to {}", created.id, git_ref, env);
    }
    follow(client, created.id, live).await
}

/// Polls deployment `id` until it ends, printing each step as it finishes.
pub async fn follow(client: &ApiClient, id: i64, live: bool) -> Result<Deployment, Failure> {
    let started = Instant::now();
    let tty = live && std::io::stdout().is_terminal();
    let mut printed = 0;
    let mut frame = 0usize;
    loop {
        let detail: DeploymentDetail = client.get(&format!("/api/deployments/{id}")).await?;
        if live {
            for step in detail.steps.iter().skip(printed) {
                if step.state == StepState::Running {
                    break;
                }
                if tty {
                    print!("\r\x1b[2K");
                }
                print_step(step);
                printed += 1;
            }
            if tty && let Some(step) = detail.steps.get(printed) {
                const SPIN: [&str; 4] = ["|", "/", "-", "\\"];
                frame += 1;
                print!(
                    "\r\x1b[2K  {} {:<8} {}",
                    SPIN[frame % SPIN.len()],
                    step.name,
                    seconds(elapsed(&step.started_at, None))
                );
                let _ = std::io::stdout().flush();
            }
        }
        let d = detail.deployment;
        if d.state.is_final() {
            if live {
                if tty {
                    print!("\r\x1b[2K");
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
    println!(
        "  {mark} {:<8} {:>7}  {}",
        step.name,
        seconds(elapsed(&step.started_at, step.finished_at.as_deref())),
        summary
    );
}

fn print_outcome(client: &ApiClient, d: &Deployment, steps: &[Step], took: Duration) {
    let version = d.version.as_deref().unwrap_or(&d.git_ref);
    let short = d.commit_sha.as_deref().map_or("", |s| &s[..7.min(s.len())]);
    match d.state {
        DeploymentState::Succeeded => println!(
            "{version} ({short}) is live on {} (deployment #{}, {})",
            d.environment,
            d.id,
            seconds(took)
        ),
        state => {
            if let Some(step) = steps.iter().rev().find(|s| s.state == StepState::Failed) {
                let lines: Vec<&str> = step.output.lines().collect();
                let tail = &lines[lines.len().saturating_sub(20)..];
                let reason = d.reason.as_deref().unwrap_or("");
                if tail.len() > 1 || tail.first().is_some_and(|l| !reason.ends_with(l)) {
                    println!("  output of {}:", step.name);
                    for line in tail {
                        println!("    | {line}");
                    }
                }
            }
            println!(
                "{}: {} (deployment #{}; details: ferry show {} --server {})",
                state.as_str(),
                d.reason.as_deref().unwrap_or("no reason recorded"),
                d.id,
                d.id,
                client.base()
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

//! Read commands: `ferry status`, `ferry history <env>`, `ferry show <id>`.

use super::deploy::{elapsed, seconds};
use super::{Cli, CmdResult};
use crate::pipeline::EnvStatus;
use crate::server::DeploymentDetail;
use crate::store::Deployment;

#[derive(Debug, clap::Args)]
pub struct Status {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct History {
    pub environment: String,
    /// How many deployments to show.
    #[arg(short = 'n', long, default_value_t = 20)]
    pub limit: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct Show {
    /// The deployment id (as `ferry deploy` and `ferry history` print it).
    pub id: i64,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

fn json(value: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

fn short(sha: Option<&str>) -> &str {
    sha.map_or("-", |s| &s[..7.min(s.len())])
}

pub async fn status(cli: &Cli, args: &Status) -> CmdResult {
    let all: Vec<EnvStatus> = cli.client()?.get("/api/environments").await?;
    if args.json {
        json(&all);
        return Ok(());
    }
    println!(
        "{:<14} {:<12} {:<8} {:<25} {:<10} URL",
        "ENVIRONMENT", "VERSION", "COMMIT", "DEPLOYED", "HEALTH"
    );
    for s in all {
        let health = match (s.health.as_str(), s.response_ms) {
            ("healthy", Some(ms)) => format!("healthy {ms}ms"),
            (h, _) => h.to_string(),
        };
        let deployed = s
            .deployed_at
            .as_deref()
            .map(|t| {
                format!(
                    "{} by {}",
                    &t[..19.min(t.len())],
                    s.deployed_by.as_deref().unwrap_or("?")
                )
            })
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<14} {:<12} {:<8} {:<25} {:<10} http://{}",
            s.environment,
            s.version.as_deref().unwrap_or("-"),
            short(s.commit_sha.as_deref()),
            deployed,
            health,
            s.listen
        );
        match s.deploying {
            Some(lock) if lock.kind == "manual" => println!(
                "{:<14} locked by {} since {}: {}",
                "",
                lock.holder,
                lock.since,
                lock.reason.as_deref().unwrap_or("")
            ),
            Some(lock) => println!("{:<14} deploying: {} since {}", "", lock.holder, lock.since),
            None => {}
        }
        if let Some(message) = &s.maintenance {
            println!("{:<14} maintenance: {message}", "");
        }
    }
    Ok(())
}

pub async fn history(cli: &Cli, args: &History) -> CmdResult {
    let list: Vec<Deployment> = cli
        .client()?
        .get(&format!(
            "/api/environments/{}/deployments?limit={}",
            args.environment, args.limit
        ))
        .await?;
    if args.json {
        json(&list);
        return Ok(());
    }
    println!(
        "{:<5} {:<12} {:<9} {:<20} {:<10} {:<20} REASON",
        "ID", "STATE", "KIND", "RELEASE", "BY", "CREATED"
    );
    for d in list {
        // a release is named `<version>-<sha7>`, as `ferry rollback --to` takes it
        println!(
            "{:<5} {:<12} {:<9} {:<20} {:<10} {:<20} {}",
            d.id,
            d.state.as_str(),
            d.kind,
            d.release
                .as_deref()
                .or(d.version.as_deref())
                .unwrap_or(&d.git_ref),
            d.by(),
            &d.created_at[..19.min(d.created_at.len())],
            d.reason.as_deref().unwrap_or("")
        );
    }
    Ok(())
}

pub async fn show(cli: &Cli, args: &Show) -> CmdResult {
    let detail: DeploymentDetail = cli
        .client()?
        .get(&format!("/api/deployments/{}", args.id))
        .await?;
    if args.json {
        json(&detail);
        return Ok(());
    }
    let d = &detail.deployment;
    println!(
        "deployment #{} to {}: {}",
        d.id,
        d.environment,
        d.state.as_str()
    );
    println!("  ref       {}", d.git_ref);
    println!("  commit    {}", d.commit_sha.as_deref().unwrap_or("-"));
    println!("  release   {}", d.release.as_deref().unwrap_or("-"));
    println!("  digest    {}", d.digest.as_deref().unwrap_or("-"));
    println!("  by        {} at {}", d.by(), d.created_at);
    if let (Some(by), Some(at)) = (d.approved(), &d.approved_at) {
        println!("  approved  {by} at {at}");
    }
    if let Some(reason) = &d.reason {
        println!("  reason    {reason}");
    }
    for step in &detail.steps {
        println!(
            "  [{}] {} ({})",
            step.state.as_str(),
            step.name,
            seconds(elapsed(&step.started_at, step.finished_at.as_deref()))
        );
        for line in step.output.lines() {
            println!("      | {line}");
        }
        if let Some(app) = &step.app_output {
            println!("      the app's last lines:");
            for line in app.lines() {
                println!("      > {line}");
            }
        }
    }
    Ok(())
}

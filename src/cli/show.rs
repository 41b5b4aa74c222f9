//! Read commands: `ferry status`, `ferry history [env]`, `ferry show <id>`. Times are shown
//! in local time with their UTC offset.

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
    /// The environment (or slot); every environment's when left out.
    pub environment: Option<String>,
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

/// A stored (RFC 3339) time in local time with its offset: `2026-12-01 17:05:03 +01:00`.
pub fn local(at: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(at).map_or_else(
        |_| at.to_string(),
        |t| {
            t.with_timezone(&chrono::Local)
                .format("%Y-%m-%d %H:%M:%S %:z")
                .to_string()
        },
    )
}

fn short(sha: Option<&str>) -> &str {
    sha.map_or("-", |s| &s[..7.min(s.len())])
}

pub async fn status(cli: &Cli, args: &Status) -> CmdResult {
    // several apps and none named: each app's environments, under its name
    let apps = match (&cli.app, &cli.server) {
        (None, None) => cli
            .load_servers()
            .ok()
            .filter(|s| s.apps.len() > 1)
            .map(|s| s.names().iter().map(|n| n.to_string()).collect::<Vec<_>>()),
        _ => None,
    };
    let Some(apps) = apps else {
        let all: Vec<EnvStatus> = cli.client()?.get("/api/environments").await?;
        if args.json {
            json(&all);
        } else {
            print_statuses(all);
        }
        return Ok(());
    };
    let mut by_app = serde_json::Map::new();
    for (i, app) in apps.iter().enumerate() {
        let all: Vec<EnvStatus> = cli.client_for(Some(app))?.get("/api/environments").await?;
        if args.json {
            by_app.insert(app.clone(), serde_json::to_value(&all).unwrap_or_default());
            continue;
        }
        if i > 0 {
            println!();
        }
        println!("app {app}");
        print_statuses(all);
    }
    if args.json {
        json(&by_app);
    }
    Ok(())
}

/// The table `ferry status` prints for one app's environments.
fn print_statuses(all: Vec<EnvStatus>) {
    println!(
        "{:<14} {:<12} {:<8} {:<38} {:<10} URL",
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
                    local(t),
                    s.deployed_by.as_deref().unwrap_or("?")
                )
            })
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<14} {:<12} {:<8} {:<38} {:<10} {}",
            s.environment,
            s.version.as_deref().unwrap_or("-"),
            short(s.commit_sha.as_deref()),
            deployed,
            health,
            s.urls.join(" ")
        );
        match s.deploying {
            Some(lock) if lock.kind == "manual" => println!(
                "{:<14} locked by {} since {}: {}",
                "",
                lock.holder,
                local(&lock.since),
                lock.reason.as_deref().unwrap_or("")
            ),
            Some(lock) => println!(
                "{:<14} deploying: {} since {}",
                "",
                lock.holder,
                local(&lock.since)
            ),
            None => {}
        }
        if let Some(message) = &s.maintenance {
            println!("{:<14} maintenance: {message}", "");
        }
        if let Some(c) = &s.certificate {
            match (&c.issuer, c.not_after) {
                (Some(issuer), Some(until)) => println!(
                    "{:<14} certificate: {issuer}, expires {}",
                    "",
                    until.format("%Y-%m-%d")
                ),
                _ => println!("{:<14} certificate: none yet", ""),
            }
            if let Some(error) = &c.error {
                // ACME tries again on its own
                let next = c
                    .next_attempt
                    .map(|t| format!(" (next attempt {})", t.format("%Y-%m-%d %H:%M:%S UTC")))
                    .unwrap_or_default();
                println!("{:<14} certificate error: {error}{next}", "");
            }
        }
    }
}

pub async fn history(cli: &Cli, args: &History) -> CmdResult {
    let path = match &args.environment {
        Some(env) => format!("/api/environments/{env}/deployments?limit={}", args.limit),
        None => format!("/api/deployments?limit={}", args.limit),
    };
    let list: Vec<Deployment> = cli.client()?.get(&path).await?;
    if args.json {
        json(&list);
        return Ok(());
    }
    println!(
        "{:<5} {:<14} {:<12} {:<9} {:<20} {:<10} {:<26} REASON",
        "ID", "ENVIRONMENT", "STATE", "KIND", "RELEASE", "BY", "CREATED"
    );
    for d in list {
        // a release is named `<version>-<sha7>`, as `ferry rollback --to` takes it
        println!(
            "{:<5} {:<14} {:<12} {:<9} {:<20} {:<10} {:<26} {}",
            d.id,
            d.environment,
            d.state.as_str(),
            d.kind,
            d.release
                .as_deref()
                .or(d.version.as_deref())
                .unwrap_or(&d.git_ref),
            d.by(),
            local(&d.created_at),
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
    println!("  by        {} at {}", d.by(), local(&d.created_at));
    if let Some(end) = &d.finished_at {
        println!("  finished  {}", local(end));
    }
    if let (Some(by), Some(at)) = (d.approved(), &d.approved_at) {
        println!("  approved  {by} at {}", local(at));
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

//! Read commands: `ferry status`, `ferry history [env]`, `ferry show <id>`. Times are shown
//! in local time with their UTC offset.

use super::deploy::{elapsed, seconds};
use super::table::Table;
use super::{Cli, CmdResult};
use crate::pipeline::EnvStatus;
use crate::server::DeploymentDetail;
use crate::store::Deployment;

#[derive(Debug, clap::Args)]
pub struct Status {
    /// Only this environment (with `servers`: a line per host).
    pub environment: Option<String>,
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
    outln!(
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
    if let Some(env) = &args.environment {
        let one: EnvStatus = cli
            .client()?
            .get(&format!("/api/environments/{env}"))
            .await?;
        if args.json {
            json(&one);
        } else {
            print_statuses(vec![one]);
        }
        return Ok(());
    }
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
            outln!();
        }
        outln!("app {app}");
        print_statuses(all);
    }
    if args.json {
        json(&by_app);
    }
    Ok(())
}

/// The table `ferry status` prints for one app's environments.
fn print_statuses(all: Vec<EnvStatus>) {
    out!("{}", status_table(all).render());
}

fn status_table(all: Vec<EnvStatus>) -> Table {
    let mut table = Table::new(&[
        "ENVIRONMENT",
        "VERSION",
        "COMMIT",
        "DEPLOYED",
        "HEALTH",
        "URL",
    ]);
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
        table.row(vec![
            s.environment.clone(),
            s.version.clone().unwrap_or_else(|| "-".into()),
            short(s.commit_sha.as_deref()).to_string(),
            deployed,
            health,
            s.urls.join(" "),
        ]);
        match s.deploying {
            Some(lock) if lock.kind == "manual" => table.note(format!(
                "locked by {} since {}: {}",
                lock.holder,
                local(&lock.since),
                lock.reason.as_deref().unwrap_or("")
            )),
            Some(lock) => table.note(format!(
                "deploying: {} since {}",
                lock.holder,
                local(&lock.since)
            )),
            None => {}
        }
        if let Some(rollout) = &s.rollout {
            table.note(rollout.line());
        }
        if let Some(message) = &s.maintenance {
            table.note(format!("maintenance: {message}"));
        }
        if !s.preview.is_empty() {
            table.note(format!(
                "preview of the new release (until the switch): {}",
                s.preview.join(" ")
            ));
        }
        for h in &s.hosts {
            table.note(h.line(local));
        }
        for t in s.traffic.iter().filter(|t| t.requests > 0) {
            table.note(format!("traffic {}", t.line()));
        }
        if s.processes.len() > 1 {
            let each: Vec<String> = s
                .processes
                .iter()
                .map(|p| match p.restarts {
                    0 => format!("{} {}/{}", p.name, p.running, p.count),
                    n => format!("{} {}/{} ({n} restarts)", p.name, p.running, p.count),
                })
                .collect();
            table.note(format!("processes: {}", each.join(", ")));
        }
        for q in &s.queue {
            let until = q
                .until
                .as_deref()
                .map(|t| format!(", waits until {}", local(t)))
                .unwrap_or_default();
            table.note(format!(
                "queued: deployment {} ({} {} by {}{until})",
                q.id, q.kind, q.git_ref, q.triggered_by
            ));
        }
        if let Some(c) = &s.certificate {
            match (&c.issuer, c.not_after) {
                (Some(issuer), Some(until)) => table.note(format!(
                    "certificate: {issuer}, expires {}",
                    until.format("%Y-%m-%d")
                )),
                _ => table.note("certificate: none yet".into()),
            }
            if let Some(error) = &c.error {
                // ACME tries again on its own
                let next = c
                    .next_attempt
                    .map(|t| format!(" (next attempt {})", t.format("%Y-%m-%d %H:%M:%S UTC")))
                    .unwrap_or_default();
                table.note(format!("certificate error: {error}{next}"));
            }
        }
    }
    table
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
    let mut table = Table::new(&[
        "ID",
        "ENVIRONMENT",
        "STATE",
        "KIND",
        "RELEASE",
        "BY",
        "CREATED",
        "REASON",
    ]);
    for d in list {
        // a release is named `<version>-<sha7>`, as `ferry rollback --to` takes it
        table.row(vec![
            d.id.to_string(),
            d.environment.clone(),
            d.state.as_str().to_string(),
            d.kind.clone(),
            d.release
                .as_deref()
                .or(d.version.as_deref())
                .unwrap_or(&d.git_ref)
                .to_string(),
            d.by().to_string(),
            local(&d.created_at),
            d.reason.clone().unwrap_or_default(),
        ]);
    }
    out!("{}", table.render());
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
    outln!(
        "deployment #{} to {}: {}",
        d.id,
        d.environment,
        d.state.as_str()
    );
    outln!("  ref       {}", d.git_ref);
    outln!("  commit    {}", d.commit_sha.as_deref().unwrap_or("-"));
    outln!("  release   {}", d.release.as_deref().unwrap_or("-"));
    outln!("  digest    {}", d.digest.as_deref().unwrap_or("-"));
    outln!("  by        {} at {}", d.by(), local(&d.created_at));
    if let Some(end) = &d.finished_at {
        outln!("  finished  {}", local(end));
    }
    if let (Some(by), Some(at)) = (d.approved(), &d.approved_at) {
        outln!("  approved  {by} at {}", local(at));
    }
    if let Some(reason) = &d.reason {
        outln!("  reason    {reason}");
    }
    for step in &detail.steps {
        outln!(
            "  [{}] {} ({})",
            step.state.as_str(),
            step.name,
            seconds(elapsed(&step.started_at, step.finished_at.as_deref()))
        );
        for line in step.output.lines() {
            outln!("      | {line}");
        }
        if let Some(app) = &step.app_output {
            outln!("      the app's last lines:");
            for line in app.lines() {
                outln!("      > {line}");
            }
        }
    }
    if !detail.notifications.is_empty() {
        outln!("  notifications");
        for n in &detail.notifications {
            outln!(
                "  [{}] {} ({}) {}, {} attempt{}: {}",
                n.state.as_str(),
                n.notifier,
                n.kind,
                n.event,
                n.attempts,
                if n.attempts == 1 { "" } else { "s" },
                super::notify::outcome(n)
            );
        }
    }
    Ok(())
}

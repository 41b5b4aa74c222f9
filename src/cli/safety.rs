//! Promotion and safety commands: promote, rollback, approve, verify, check-report, lock,
//! unlock, maintenance, plan.

use super::deploy::{create, finish};
use super::{Cli, CmdResult, Failure};
use crate::pipeline::{CheckReport, Mirror, Plan, ReleaseRef, RollbackPreview};
use crate::policy::Verdict;
use crate::server::actions::{
    LockRequest, MaintenanceRequest, PromoteRequest, RollbackRequest, VerifyRequest,
};
use crate::store::{Check, Deployment, LockHolder, Verification};

#[derive(Debug, clap::Args)]
pub struct Promote {
    /// The release tag verified on an earlier environment.
    pub tag: String,
    /// The environment to promote to (default: the one that requires where the tag is verified).
    #[arg(long)]
    pub to: Option<String>,
    /// Promote inside a freeze window (needs --reason).
    #[arg(long, requires = "reason")]
    pub force: bool,
    /// Why the freeze window is overridden; recorded with the deployment.
    #[arg(long)]
    pub reason: Option<String>,
    #[arg(long)]
    pub no_wait: bool,
    #[arg(long)]
    pub json: bool,
    /// When another deployment or a lock holds the environment, wait in line this long
    /// (like "10m", at most "24h") instead of being refused.
    #[arg(long, value_name = "DURATION", value_parser = super::deploy::parse_wait)]
    pub wait_lock: Option<std::time::Duration>,
}

pub async fn promote(cli: &Cli, args: &Promote) -> CmdResult {
    let client = cli.client()?;
    let body = PromoteRequest {
        tag: args.tag.clone(),
        to: args.to.clone(),
        force: args.force,
        reason: args.reason.clone(),
        wait_lock: args.wait_lock.map(crate::config::format_duration),
    };
    let created = create(&client, "/api/promote", &body).await?;
    finish(&client, created, args.no_wait, args.json).await
}

#[derive(Debug, clap::Args)]
pub struct Rollback {
    pub environment: String,
    /// The release to go back to, by name (`main-1a2b3c4`, `v1.2.0-1a2b3c4`), or a version
    /// naming one release (default: the previous good release).
    #[arg(long)]
    pub to: Option<String>,
    /// Why; recorded with the rollback (asked for on a terminal when left out).
    #[arg(long)]
    pub reason: Option<String>,
    /// Also put back the data backed up before the deploy being undone (the app is stopped
    /// while it is restored; the current data is kept aside).
    #[arg(long)]
    pub restore_data: bool,
    /// Also run the release command (`[app] release`, e.g. migrations) in the release rolled
    /// back to, before it starts (rollbacks skip it otherwise).
    #[arg(long)]
    pub run_release: bool,
    /// Roll back without asking for the typed confirmation (needed without a terminal).
    #[arg(short = 'y', long)]
    pub yes: bool,
    #[arg(long)]
    pub no_wait: bool,
    #[arg(long)]
    pub json: bool,
}

pub async fn rollback(cli: &Cli, args: &Rollback) -> CmdResult {
    use std::io::IsTerminal;
    if !args.yes && !std::io::stdin().is_terminal() {
        return Err(Failure::Usage(
            "ferry rollback asks for the environment's confirmation word typed, and there is no terminal to ask on: pass --yes to roll back without asking".into(),
        ));
    }
    let reason = match &args.reason {
        Some(reason) => reason.clone(),
        None if std::io::stdin().is_terminal() => {
            let reason = ask("Why roll back? (recorded with the rollback): ").await?;
            if reason.trim().is_empty() {
                return Err(Failure::Failed(
                    "no reason given: nothing rolled back".into(),
                ));
            }
            reason.trim().to_string()
        }
        None => {
            return Err(Failure::Usage(
                "ferry rollback needs --reason \"…\" (it is recorded): there is no terminal to ask for one on".into(),
            ));
        }
    };
    let client = cli.client()?;
    let env = segment(&args.environment)?;
    if !args.yes {
        let mut path = format!(
            "/api/environments/{env}/rollback?restore_data={}",
            args.restore_data
        );
        if let Some(to) = &args.to {
            path.push_str(&format!("&to={}", query(to)));
        }
        let preview: RollbackPreview = client.get(&path).await.map_err(conflict)?;
        confirm_rollback(&preview, args.run_release).await?;
    }
    let body = RollbackRequest {
        to: args.to.clone(),
        reason,
        restore_data: args.restore_data,
        run_release: args.run_release,
    };
    let path = format!("/api/environments/{env}/rollback");
    let created = create(&client, &path, &body).await?;
    finish(&client, created, args.no_wait, args.json).await
}

/// Asks `question` on stderr and reads one line of the terminal.
async fn ask(question: &str) -> Result<String, Failure> {
    eprint!("{question}");
    let _ = std::io::Write::flush(&mut std::io::stderr());
    tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|_| line)
    })
    .await
    .map_err(|e| Failure::Failed(e.to_string()))?
    .map_err(|e| Failure::Failed(format!("cannot read the answer: {e}")))
}

/// Shows what the rollback will do and asks for the confirmation word typed on the terminal.
async fn confirm_rollback(p: &RollbackPreview, run_release: bool) -> CmdResult {
    let release = |r: &ReleaseRef| {
        format!(
            "{} (commit {})",
            r.release,
            &r.commit_sha[..7.min(r.commit_sha.len())]
        )
    };
    let mut text = format!("Rolling back {}:\n", p.environment);
    match &p.from {
        Some(from) => text.push_str(&format!("  from  {}, serving now\n", release(from))),
        None => text.push_str("  from  nothing serving now\n"),
    }
    text.push_str(&format!(
        "  to    {}, built before: not rebuilt\n",
        release(&p.to)
    ));
    if p.restore_data {
        text.push_str(&format!(
            "  data  RESTORED from the backups taken before deployment #{}: {} (the app stops meanwhile; the current data is kept aside)\n",
            p.undoes.map_or("?".to_string(), |id| id.to_string()),
            p.restores.join(", ")
        ));
    } else {
        text.push_str("  data  left as it is (no --restore-data)\n");
    }
    if run_release {
        text.push_str("  release command  runs in it before it starts (--run-release)\n");
    }
    text.push_str(&format!(
        "Type {} to roll back (anything else cancels): ",
        p.confirm
    ));
    let typed = ask(&text).await?;
    if typed.trim() == p.confirm {
        Ok(())
    } else {
        Err(Failure::Failed(format!(
            "rollback cancelled: {} was not typed; nothing was changed",
            p.confirm
        )))
    }
}

#[derive(Debug, clap::Args)]
pub struct Approve {
    /// The deployment waiting for approval.
    pub id: i64,
}

pub async fn approve(cli: &Cli, args: &Approve) -> CmdResult {
    let client = cli.client()?;
    let d: Deployment = client
        .post(&format!("/api/deployments/{}/approve", args.id), &())
        .await
        .map_err(conflict)?;
    outln!(
        "approved deployment #{} ({} to {}); it goes on now",
        d.id,
        d.git_ref,
        d.environment
    );
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct Verify {
    pub environment: String,
    /// The version to sign off (default: the one running; it must be the one running).
    pub version: Option<String>,
    #[arg(long)]
    pub json: bool,
}

pub async fn verify(cli: &Cli, args: &Verify) -> CmdResult {
    let client = cli.client()?;
    let body = VerifyRequest {
        version: args.version.clone(),
    };
    let path = format!("/api/environments/{}/verify", segment(&args.environment)?);
    let v: Verification = client.post(&path, &body).await.map_err(conflict)?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        outln!(
            "verified {} ({}) on {} as {}; it can be promoted with `ferry promote {}`",
            v.version,
            &v.commit_sha[..7.min(v.commit_sha.len())],
            v.environment,
            v.by(),
            v.version
        );
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct CheckReportArgs {
    /// The full commit sha the check ran on.
    pub sha: String,
    /// The check's name, as `require_checks` lists it.
    #[arg(long)]
    pub name: String,
    /// success, failure, error or pending.
    #[arg(long)]
    pub status: String,
    /// A link to the CI run.
    #[arg(long)]
    pub url: Option<String>,
}

pub async fn check_report(cli: &Cli, args: &CheckReportArgs) -> CmdResult {
    let client = cli.client()?;
    let body = CheckReport {
        name: args.name.clone(),
        status: args.status.clone(),
        url: args.url.clone(),
    };
    let sha = segment(&args.sha)?;
    let c: Check = client
        .post(&format!("/api/commits/{sha}/checks"), &body)
        .await?;
    outln!(
        "recorded check \"{}\" = {} for {}",
        c.name,
        c.status,
        &c.commit_sha[..7]
    );
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct Lock {
    pub environment: String,
    /// Why; shown to anyone whose deploy is refused.
    #[arg(long)]
    pub reason: String,
}

pub async fn lock(cli: &Cli, args: &Lock) -> CmdResult {
    let client = cli.client()?;
    let path = format!("/api/environments/{}/lock", segment(&args.environment)?);
    let h: LockHolder = client
        .post(
            &path,
            &LockRequest {
                reason: args.reason.clone(),
            },
        )
        .await
        .map_err(conflict)?;
    outln!(
        "{} is locked by {} since {}: deploys are refused until `ferry unlock {}`",
        args.environment,
        h.holder,
        h.since,
        args.environment
    );
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct Unlock {
    pub environment: String,
}

pub async fn unlock(cli: &Cli, args: &Unlock) -> CmdResult {
    let client = cli.client()?;
    let path = format!("/api/environments/{}/lock", segment(&args.environment)?);
    let _: serde_json::Value = client.delete(&path).await.map_err(conflict)?;
    outln!("{} is unlocked", args.environment);
    Ok(())
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Switch {
    On,
    Off,
}

#[derive(Debug, clap::Args)]
pub struct Maintenance {
    pub environment: String,
    #[arg(value_enum)]
    pub state: Switch,
    /// What the maintenance page says.
    #[arg(long)]
    pub message: Option<String>,
}

pub async fn maintenance(cli: &Cli, args: &Maintenance) -> CmdResult {
    let client = cli.client()?;
    let path = format!(
        "/api/environments/{}/maintenance",
        segment(&args.environment)?
    );
    let on = matches!(args.state, Switch::On);
    let _: serde_json::Value = client
        .post(
            &path,
            &MaintenanceRequest {
                on,
                message: args.message.clone(),
            },
        )
        .await?;
    if on {
        outln!(
            "{} answers 503 with a maintenance page now; deploys still run and are health-checked",
            args.environment
        );
    } else {
        outln!("{} serves its app again", args.environment);
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct Accessories {
    pub environment: String,
    /// What to do with them.
    #[arg(value_enum)]
    pub action: AccessoryVerb,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum AccessoryVerb {
    /// Start them; recreate those whose definition or image changed.
    Up,
    /// Stop and remove them; their volumes and data stay.
    Down,
    Restart,
    /// Their last 200 lines.
    Logs,
}

pub async fn accessories(cli: &Cli, args: &Accessories) -> CmdResult {
    let client = cli.client()?;
    let action = match args.action {
        AccessoryVerb::Up => "up",
        AccessoryVerb::Down => "down",
        AccessoryVerb::Restart => "restart",
        AccessoryVerb::Logs => "logs",
    };
    let path = format!(
        "/api/environments/{}/accessories/{action}",
        segment(&args.environment)?
    );
    let answer: serde_json::Value = client.post(&path, &serde_json::json!({})).await?;
    out!("{}", answer["output"].as_str().unwrap_or_default());
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    pub environment: String,
    #[arg(value_name = "REF")]
    pub git_ref: String,
    /// Plan as if deployed with --force --reason.
    #[arg(long)]
    pub force_reason: Option<String>,
    #[arg(long)]
    pub json: bool,
}

pub async fn plan(cli: &Cli, args: &PlanArgs) -> CmdResult {
    let client = cli.client()?;
    // the plan itself is a read and never fetches: fetch first where our token may
    let fetched = match client
        .post::<_, Mirror>("/api/mirror/fetch", &serde_json::json!({}))
        .await
    {
        Ok(_) => None,
        // a read-only token, or an unreachable repository: plan on the mirror as it is
        Err(super::ClientError::Api { message, .. }) => Some(message),
        Err(e) => return Err(e.into()),
    };
    let mut path = format!(
        "/api/environments/{}/plan?ref={}",
        segment(&args.environment)?,
        query(&args.git_ref)
    );
    if let Some(r) = &args.force_reason {
        path.push_str(&format!("&force_reason={}", query(r)));
    }
    let plan: Plan = client.get(&path).await?;
    if args.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&plan).unwrap_or_default()
        );
    } else {
        outln!(
            "plan: {} ({}) to {}",
            plan.version,
            &plan.commit_sha[..7],
            plan.environment
        );
        if let Some(at) = &plan.mirror_fetched_at {
            outln!("  resolved in ferry's mirror of the repository as fetched at {at}");
        }
        if let Some(why) = &fetched {
            let why = why.lines().next().unwrap_or("");
            outln!("  (not fetched now: {why})");
        }
        outln!("gates:");
        for g in &plan.gates {
            let mark = match g.verdict {
                Verdict::Pass => "✓",
                Verdict::Fail => "✗",
                Verdict::Wait => "…",
                Verdict::Note => "·",
            };
            outln!("  {mark} {:<9} {}", g.name, g.detail);
        }
        outln!("steps:");
        for s in &plan.steps {
            outln!("    {:<9} {}", s.name, s.detail);
        }
        if plan.allowed {
            outln!("a deploy would go ahead (nothing was changed)");
        } else {
            outln!("a deploy would be refused (nothing was changed)");
        }
    }
    if plan.allowed {
        Ok(())
    } else {
        Err(Failure::Failed(String::new()))
    }
}

/// A 409 from these routes is a refusal: exit 1 with the message.
fn conflict(e: super::ClientError) -> Failure {
    match e {
        super::ClientError::Api {
            status: 409,
            message,
            ..
        } => Failure::Failed(format!("refused: {message}")),
        e => e.into(),
    }
}

/// A name that goes into a URL path as one segment.
pub(super) fn segment(s: &str) -> Result<&str, Failure> {
    if s.is_empty() || s.contains(['/', '?', '#', '%']) || s.chars().any(char::is_whitespace) {
        return Err(Failure::Usage(format!("\"{s}\" is not a valid name")));
    }
    Ok(s)
}

/// Percent-encodes a query value.
fn query(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect()
}

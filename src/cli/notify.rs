//! `ferry notify list | test NAME`: the notifiers' latest deliveries, and a sample message
//! through one of them.

use super::show::local;
use super::table::Table;
use super::{Cli, CmdResult, Failure};
use crate::server::notify::TestAnswer;
use crate::store::Notification;

#[derive(Debug, clap::Args)]
pub struct NotifyArgs {
    #[command(subcommand)]
    pub command: NotifyCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum NotifyCommand {
    /// The latest deliveries of every notifier (or of one), newest first: event, state,
    /// attempts, and the answer or the error.
    List {
        /// Only this notifier's deliveries (its `name`, or its kind when unnamed).
        #[arg(long)]
        notifier: Option<String>,
        /// How many to show.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Send a sample message through one notifier now and print what it answered; exits 1
    /// when it was not delivered. Recorded with the event `test`.
    Test {
        /// The notifier's name (`ferry check` lists them).
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(cli: &Cli, args: &NotifyArgs) -> CmdResult {
    match &args.command {
        NotifyCommand::List {
            notifier,
            limit,
            json,
        } => list(cli, notifier.as_deref(), *limit, *json).await,
        NotifyCommand::Test { name, json } => test(cli, name, *json).await,
    }
}

async fn list(cli: &Cli, notifier: Option<&str>, limit: usize, json: bool) -> CmdResult {
    let mut path = format!("/api/notifications?limit={limit}");
    if let Some(n) = notifier {
        path.push_str(&format!("&notifier={}", urlencoding(n)));
    }
    let rows: Vec<Notification> = cli.client()?.get(&path).await?;
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        );
        return Ok(());
    }
    if rows.is_empty() {
        outln!("no notifications yet");
        return Ok(());
    }
    out!("{}", table(&rows, true).render());
    Ok(())
}

/// Deliveries as a table; `notifier`: with the notifier's column.
pub fn table(rows: &[Notification], notifier: bool) -> Table {
    let mut header = vec![
        "ID", "NOTIFIER", "EVENT", "ENV", "DEPLOY", "STATE", "TRIES", "AT", "ANSWER",
    ];
    if !notifier {
        header.remove(1);
    }
    let mut t = Table::new(&header);
    for n in rows {
        let mut row = vec![
            n.id.to_string(),
            format!("{} ({})", n.notifier, n.kind),
            n.event.clone(),
            n.environment.clone(),
            n.deployment.map_or("-".into(), |d| format!("#{d}")),
            n.state.as_str().to_string(),
            n.attempts.to_string(),
            local(&n.updated_at),
            outcome(n),
        ];
        if !notifier {
            row.remove(1);
        }
        t.row(row);
    }
    t
}

/// What became of a delivery, on one line: the link and answer, or the error.
pub fn outcome(n: &Notification) -> String {
    let said = match n.state {
        crate::store::NotificationState::Sent => n.answer.as_deref(),
        _ => n.error.as_deref(),
    }
    .unwrap_or("-");
    match &n.link {
        Some(link) => format!("{link} {said}"),
        None => said.to_string(),
    }
}

async fn test(cli: &Cli, name: &str, json: bool) -> CmdResult {
    let answer: TestAnswer = cli
        .client()?
        .post(
            &format!("/api/notify/{}/test", urlencoding(name)),
            &serde_json::json!({}),
        )
        .await?;
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&answer).unwrap_or_default()
        );
    } else if answer.ok {
        outln!(
            "{} ({}, {}) took the test message: {}",
            answer.notifier,
            answer.kind,
            answer.destination,
            answer.answer.as_deref().unwrap_or("-")
        );
        if let Some(link) = &answer.link {
            outln!("  {link}");
        }
    }
    if answer.ok {
        return Ok(());
    }
    Err(Failure::Failed(format!(
        "{} ({}, {}) did not take the test message: {}{}",
        answer.notifier,
        answer.kind,
        answer.destination,
        answer.error.as_deref().unwrap_or("no reason given"),
        if answer.retryable {
            " (it may work when tried again)"
        } else {
            ""
        }
    )))
}

/// `name` for a URL path or query (notifier names are `[a-z0-9_-]`; anything else is escaped).
fn urlencoding(name: &str) -> String {
    name.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

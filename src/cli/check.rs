//! `ferry check`: validate the config and summarise it.

use super::{Cli, CmdResult};
use crate::config::{RepositorySource, Track, format_duration};

#[derive(Debug, clap::Args)]
pub struct Check {}

pub fn run(cli: &Cli, _args: &Check) -> CmdResult {
    let config = cli.load_config()?;
    let app = &config.app;
    println!("{}: ok", config.path.display());
    println!("  app        {} from {}", app.name, app.repo);
    println!("  start      {}", app.start);
    println!(
        "  build      {} command(s), test {} command(s), timeout {}",
        app.build.len(),
        app.test.len(),
        format_duration(app.command_timeout)
    );
    println!(
        "  shared     {}",
        if app.shared.is_empty() {
            "-".to_string()
        } else {
            app.shared.join(", ")
        }
    );
    println!("  releases   keep {}", app.keep_releases);
    println!(
        "  backups    keep those of the last {} deploys",
        app.keep_backups
    );
    let h = &config.health;
    println!(
        "  health     {} -> {} every {} (timeout {}, {} tries, first after {})",
        h.paths.join(", "),
        h.expect_status,
        format_duration(h.interval),
        format_duration(h.timeout),
        h.retries,
        format_duration(h.startup_delay)
    );
    match &config.monitor {
        Some(m) => println!(
            "  monitor    {} every {} for {} (rolls back on {} failures in a row, success < {:.0}%, > {}, > {} error lines in {})",
            h.paths.join(", "),
            format_duration(m.interval),
            format_duration(m.duration),
            m.max_consecutive_failures,
            m.min_success_rate * 100.0,
            format_duration(m.max_response_time),
            m.max_error_lines,
            format_duration(m.error_window)
        ),
        None => println!("  monitor    off (no [monitor] table)"),
    }
    println!("  state dir  {}", config.state_dir.display());
    println!("  api        http://{}", config.server.listen);
    let hooks: Vec<String> = [
        ("github", &config.webhooks.github_secret_env),
        ("gitlab", &config.webhooks.gitlab_token_env),
    ]
    .iter()
    .filter_map(|(p, var)| var.as_ref().map(|v| format!("{p} (secret from ${v})")))
    .collect();
    if !hooks.is_empty() {
        let from = match config.webhook_repository() {
            Some((r, RepositorySource::Configured)) => format!("pushes of {r}"),
            Some((r, RepositorySource::AppRepo)) => format!("pushes of {r} (from [app] repo)"),
            None => {
                eprintln!(
                    "warning: webhooks act on pushes from any repository, as [app] repo is not a \
                     URL naming one: set [webhooks] repository = \"owner/name\""
                );
                "pushes of any repository".to_string()
            }
        };
        println!("  webhooks   {}; {from}", hooks.join(", "));
    }
    for n in &config.notify {
        let format = match n.format {
            crate::config::NotifyFormat::Json => "json",
            crate::config::NotifyFormat::Slack => "slack",
        };
        let host = n.url.split('/').nth(2).unwrap_or("?");
        println!("  notify     {host} ({format}): {}", n.on.join(", "));
    }
    for env in &config.environments {
        let track = match &env.track {
            Track::Manual => "manual deploys".to_string(),
            Track::Branch(b) => format!("branch {b}"),
            Track::Tags if env.auto => "release tags, pushed ones deployed".to_string(),
            Track::Tags => "release tags (pushed ones recorded only)".to_string(),
        };
        let mut rules = Vec::new();
        if let Some(r) = &env.requires {
            rules.push(format!("verified on {r} first"));
        }
        if env.approval {
            rules.push(format!(
                "approval (within {})",
                format_duration(env.approval_timeout)
            ));
        }
        if !env.freeze.is_empty() {
            let windows: Vec<String> = env.freeze.iter().map(|w| format!("\"{w}\"")).collect();
            rules.push(format!("frozen {}", windows.join(", ")));
        }
        if !env.require_checks.is_empty() {
            rules.push(format!("checks {}", env.require_checks.join(", ")));
        }
        if !env.backup.is_empty() {
            rules.push(format!("backup {}", env.backup.join(", ")));
        }
        let rules = if rules.is_empty() {
            String::new()
        } else {
            format!("; {}", rules.join("; "))
        };
        println!(
            "  env        {:<14} http://{:<21} {track}{rules}",
            env.name, env.listen
        );
    }
    Ok(())
}

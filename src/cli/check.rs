//! `ferry check`: validate the config and summarise it.

use super::{Cli, CmdResult, Failure};
use crate::config::{RepositorySource, Track, format_duration};

#[derive(Debug, clap::Args)]
pub struct Check {}

/// Warnings about a local `repo` a first deploy would trip on: no commits yet, or a `start`
/// program (a path into the repo, like `./server`) that is not in the commit at HEAD.
fn repo_warnings(repo: &str, start: &str) -> Vec<String> {
    if crate::config::is_remote_repo(repo) {
        return Vec::new();
    }
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(repo)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
    };
    let Some(head) = git(&["rev-parse", "--verify", "--quiet", "HEAD^{commit}"]) else {
        return vec![format!(
            "the repo {repo} has no commits yet: nothing can be deployed until you commit your app"
        )];
    };
    let head = String::from_utf8_lossy(&head.stdout).trim().to_string();
    // the program: the first word that is not a variable assignment or `exec`
    let program = start
        .split_whitespace()
        .find(|w| !w.contains('=') && *w != "exec")
        .unwrap_or("")
        .trim_matches(|c| c == '\'' || c == '"');
    let Some(rel) = program.strip_prefix("./").or_else(|| {
        (program.contains('/') && !program.starts_with('/') && !program.starts_with('$'))
            .then_some(program)
    }) else {
        return Vec::new();
    };
    let short = &head[..7.min(head.len())];
    match git(&["cat-file", "-e", &format!("{head}:{rel}")]) {
        Some(_) => Vec::new(),
        // a build may make it: say so rather than fail
        None => vec![format!(
            "start runs {program}, which is not in the repo at HEAD ({short}); unless a build command makes it, the first deploy will fail"
        )],
    }
}

pub fn run(cli: &Cli, _args: &Check) -> CmdResult {
    let servers = cli.load_servers()?;
    if servers.shared {
        outln!(
            "{}: ok, {} app(s) sharing the API on http://{} and the state dir {}",
            servers.path.display(),
            servers.apps.len(),
            servers.server.listen,
            servers.state_dir.display()
        );
    }
    for config in &servers.apps {
        if cli.app.as_ref().is_some_and(|a| *a != config.app.name) {
            continue;
        }
        check_app(config)?;
    }
    if let Some(app) = &cli.app {
        servers
            .app(Some(app))
            .map_err(|e| super::Failure::Usage(format!("error: {e}")))?;
    }
    Ok(())
}

/// Prints one app's summary, with warnings about its repo.
/// The app's runtime in a line; for containers, whether the docker daemon answers.
fn runtime_summary(runtime: &crate::config::Runtime) -> Result<String, String> {
    use crate::config::Runtime;
    let what = match runtime {
        Runtime::Process => return Ok("process".into()),
        Runtime::Docker { image, .. } => format!(
            "docker (image from {}, context {})",
            image.dockerfile, image.context
        ),
        Runtime::Compose { compose, .. } => {
            format!("compose (service {} of {})", compose.service, compose.file)
        }
    };
    // `check` runs outside the async runtime's workers: ask on a thread of its own
    let ping = std::thread::spawn(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?
            .block_on(crate::docker::Docker::new().ping())
            .map_err(|e| e.to_string())
    })
    .join()
    .unwrap_or_else(|_| Err("the docker check failed".into()));
    match ping {
        Ok(version) => Ok(format!("{what}; docker daemon {version}")),
        Err(e) => Err(format!("{what}; {e}")),
    }
}

fn check_app(config: &crate::config::Config) -> super::CmdResult {
    let app = &config.app;
    let mut warnings = if app.runtime.container().is_some() {
        repo_warnings(&app.repo, "")
    } else {
        repo_warnings(&app.repo, &app.start)
    };
    let runtime = runtime_summary(&app.runtime);
    if let Err(e) = &runtime {
        warnings.push(format!("{e}: nothing can be deployed until it answers"));
    }
    let certs = crate::frontdoor::certs::check_files(config);
    let mut cert_errors = Vec::new();
    for c in &certs {
        match &c.result {
            Err(e) => cert_errors.push(format!("app {}, environment {}: {e}", c.app, c.env)),
            Ok(_) if !c.uncovered.is_empty() => warnings.push(format!(
                "app {}, environment {}: the certificate {} does not cover {}: browsers will refuse it there",
                c.app,
                c.env,
                c.cert.display(),
                c.uncovered.join(", ")
            )),
            Ok(_) => {}
        }
    }
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    if !cert_errors.is_empty() {
        return Err(Failure::Failed(format!(
            "{}: certificate files cannot be served:\n  {}\nhelp: point tls = {{ cert, key }} at a PEM certificate chain and its private key",
            config.path.display(),
            cert_errors.join("\n  ")
        )));
    }
    if warnings.is_empty() {
        outln!("{}: ok", config.path.display());
    } else {
        outln!(
            "{}: ok, with {} warning(s)",
            config.path.display(),
            warnings.len()
        );
    }
    outln!("  app        {} from {}", app.name, app.repo);
    match &runtime {
        Ok(summary) | Err(summary) => outln!("  runtime    {summary}"),
    }
    if !app.start.is_empty() {
        outln!("  start      {}", app.start);
    }
    for p in &app.processes {
        outln!(
            "  process    {} ×{}: {} (stop_timeout {})",
            p.name,
            p.count,
            p.command,
            format_duration(p.stop_timeout)
        );
    }
    outln!(
        "  build      {} command(s), test {} command(s), timeout {}",
        app.build.len(),
        app.test.len(),
        format_duration(app.command_timeout)
    );
    outln!(
        "  shared     {}",
        if app.shared.is_empty() {
            "-".to_string()
        } else {
            app.shared.join(", ")
        }
    );
    outln!("  releases   keep {}", app.keep_releases);
    outln!(
        "  backups    keep those of the last {} deploys",
        app.keep_backups
    );
    let h = &config.health;
    outln!(
        "  health     {} -> {} every {} (timeout {}, {} tries, first after {})",
        h.paths.join(", "),
        h.expect_status,
        format_duration(h.interval),
        format_duration(h.timeout),
        h.retries,
        format_duration(h.startup_delay)
    );
    match &config.monitor {
        Some(m) => outln!(
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
        None => outln!("  monitor    off (no [monitor] table)"),
    }
    for c in &config.checks {
        let what = match &c.kind {
            crate::config::CheckKind::Http { expect_status, .. } => {
                format!("expects {expect_status}")
            }
            crate::config::CheckKind::Command(_) => "a command given URL".to_string(),
        };
        let envs = if c.environments.is_empty() {
            "every environment".to_string()
        } else {
            c.environments.join(", ")
        };
        outln!(
            "  check      {}: {what}, before the switch in {envs} (timeout {})",
            c.name,
            format_duration(c.timeout)
        );
    }
    outln!("  state dir  {}", config.state_dir.display());
    outln!("  api        http://{}", config.server.listen);
    if let Some(http) = config.server.http {
        outln!("  http       {http} (front door)");
    }
    if let Some(https) = config.server.https {
        outln!("  https      {https} (front door)");
    }
    for c in &certs {
        if let Ok(info) = &c.result {
            outln!(
                "  tls        {:<14} {} (issuer {}, expires {})",
                c.env,
                c.cert.display(),
                info.issuer,
                info.not_after.format("%Y-%m-%d")
            );
        }
    }
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
        outln!("  webhooks   {}; {from}", hooks.join(", "));
    }
    if !config.notify.is_empty()
        && config.server.public_url.is_none()
        && config.server.listen.ip().is_unspecified()
    {
        eprintln!(
            "warning: notifications link to http://{} which nobody can open: set [server] \
             public_url = \"https://ferry.example.com\" (the address people reach ferry at)",
            config.server.listen
        );
    }
    for n in &config.notify {
        outln!(
            "  notify     {} ({}, {}): {}",
            n.name,
            n.kind.name(),
            n.kind.destination(),
            n.events.join(", ")
        );
    }
    if let Some(a) = &config.acme {
        let ca =
            a.ca.as_ref()
                .map(|c| format!(" (trusting {})", c.display()))
                .unwrap_or_default();
        outln!(
            "  acme       {} at {}{ca}; renewed {} before expiry, checked every {}",
            a.email,
            a.directory,
            format_duration(a.renew_before),
            format_duration(a.check_interval)
        );
        if !config
            .environments
            .iter()
            .any(|e| e.tls == Some(crate::config::Tls::Acme))
        {
            eprintln!(
                "warning: [acme] is set but no environment has tls = \"acme\": no certificate will be ordered"
            );
        }
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
        outln!(
            "  env        {:<14} {:<28} {track}{rules}",
            env.name,
            env.urls(&config.server).join(" ")
        );
    }
    Ok(())
}

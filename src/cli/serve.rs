//! `ferry serve`: the daemon, until Ctrl-C or SIGTERM.

use super::{Cli, CmdResult, Failure};
use crate::daemon::Daemon;

#[derive(Debug, clap::Args)]
pub struct Serve {}

pub async fn run(cli: &Cli, _args: &Serve) -> CmdResult {
    let config = cli.load_config()?;
    // ferry's own files (its database, logs, backups, mirror) are for ferry alone. As root,
    // release dirs that app users must pass through are made under the usual umask, and
    // ferry's own files get their modes explicitly (see `sandbox`, `store`, `backup`).
    if !nix::unistd::geteuid().is_root() {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    }
    let envs: Vec<String> = config
        .environments
        .iter()
        .map(|e| format!("{} on http://{}", e.name, e.listen))
        .collect();
    let daemon = Daemon::start(config)
        .await
        .map_err(|e| Failure::Failed(format!("error: {e}")))?;
    println!(
        "ferry serving {}: API on http://{}",
        daemon.engine.config.app.name, daemon.api_addr
    );
    for env in envs {
        println!("  {env}");
    }
    wait_for_stop().await;
    println!("stopping: draining requests and stopping instances");
    daemon.stop().await;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn wait_for_stop() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match term.as_mut() {
                Some(t) => { t.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}

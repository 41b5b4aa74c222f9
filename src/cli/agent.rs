//! `ferry agent` (hidden): the agent on a host of an environment with `servers`, run by
//! ssh (see [`crate::agent`]). Without a subcommand, the relay between stdin/stdout and the
//! host's daemon; `--daemon` is the daemon itself; `receive` takes a release on stdin.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{Cli, CmdResult, Failure};

#[derive(Debug, Args)]
pub struct Agent {
    /// The agent dir on this host (releases, state files, the daemon's socket and log);
    /// relative to the current dir, which ssh makes the user's home.
    #[arg(long)]
    pub dir: PathBuf,
    /// Run as the daemon that owns the host's instances (the relay starts it).
    #[arg(long)]
    pub daemon: bool,
    #[command(subcommand)]
    pub command: Option<AgentCommand>,
}

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Receive a release on stdin (a manifest line, then a tar stream) for the app named
    /// by --app; prints one JSON answer line.
    Receive(Receive),
}

#[derive(Debug, Args)]
pub struct Receive {
    /// The release's name (its dir under the app's releases).
    #[arg(long)]
    pub release: String,
    /// The digest the release must have once unpacked (`sha256:…`).
    #[arg(long)]
    pub digest: String,
    /// An environment's shared path (repeated for each), left out of the archive and
    /// linked instead.
    #[arg(long)]
    pub shared: Vec<String>,
    /// The bytes of the release's files, for the message of a full disk.
    #[arg(long)]
    pub size: Option<u64>,
}

/// Runs the relay, the daemon or a receive.
pub async fn run(cli: &Cli, args: &Agent) -> CmdResult {
    if args.daemon {
        return crate::agent::daemon::run(&args.dir)
            .await
            .map_err(|e| Failure::Failed(format!("ferry agent: {e}")));
    }
    match &args.command {
        None => {
            crate::agent::relay::run(&args.dir)
                .await
                .map_err(|e| Failure::Failed(format!("ferry agent: {e}")))?;
            // now, not once the runtime is dropped: that waits for the blocking read of
            // stdin, and ferry's end would not see this end close until its next request
            std::process::exit(0)
        }
        Some(AgentCommand::Receive(r)) => receive(cli, &args.dir, r).await,
    }
}

async fn receive(cli: &Cli, dir: &std::path::Path, r: &Receive) -> CmdResult {
    let Some(app) = cli.app.clone() else {
        return Err(Failure::Usage(
            "ferry agent receive: --app is required".into(),
        ));
    };
    let want = crate::agent::receive::Incoming {
        app,
        release: r.release.clone(),
        digest: r.digest.clone(),
        shared: r.shared.iter().filter(|s| !s.is_empty()).cloned().collect(),
        size: r.size,
    };
    let dir = dir.to_path_buf();
    let result = tokio::task::spawn_blocking(move || {
        crate::agent::receive::receive(&dir, &want, std::io::stdin().lock())
    })
    .await
    .map_err(|e| Failure::Failed(format!("ferry agent receive: {e}")))?;
    let (answer, failed) = match result {
        Ok(received) => (
            crate::agent::protocol::Answer {
                id: 0,
                ok: serde_json::to_value(received).ok(),
                error: None,
            },
            None,
        ),
        Err(e) => {
            let message = e.message.clone();
            (
                crate::agent::protocol::Answer {
                    id: 0,
                    ok: None,
                    error: Some(e),
                },
                Some(message),
            )
        }
    };
    let line = serde_json::to_string(&answer)
        .map_err(|e| Failure::Failed(format!("ferry agent receive: {e}")))?;
    outln!("{line}");
    match failed {
        None => Ok(()),
        Some(message) => Err(Failure::Failed(format!("ferry agent receive: {message}"))),
    }
}

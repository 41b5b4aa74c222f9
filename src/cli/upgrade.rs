//! `ferry upgrade`: the running serve starts a new binary's `serve --takeover`, which takes
//! over its listening sockets, state dir and apps without a refused connection.

use std::path::PathBuf;

use super::{Cli, CmdResult, Failure};
use crate::daemon::handover::{Channel, Message, socket_path};

#[derive(Debug, clap::Args)]
pub struct Upgrade {
    /// The new ferry binary (default: this one, e.g. just installed over the old one).
    #[arg(long)]
    pub binary: Option<PathBuf>,
}

pub async fn run(cli: &Cli, args: &Upgrade) -> CmdResult {
    let config = cli.load_servers()?;
    let binary = match &args.binary {
        Some(path) => std::path::absolute(path)
            .map_err(|e| Failure::Usage(format!("error: {}: {e}", path.display())))?,
        None => std::env::current_exe()
            .map_err(|e| Failure::Failed(format!("error: cannot find this binary: {e}")))?,
    };
    if !binary.is_file() {
        return Err(Failure::Usage(format!(
            "error: {} is not a file",
            binary.display()
        )));
    }
    let path = socket_path(&config.state_dir);
    let mut chan = Channel::connect(&path).await.map_err(|_| {
        Failure::Failed(format!(
            "error: no ferry serve is running on the state dir {} (nothing answers on {}); start one with `ferry serve`",
            config.state_dir.display(),
            path.display()
        ))
    })?;
    let lost =
        |e: std::io::Error| Failure::Failed(format!("error: the running serve went away: {e}"));
    chan.send(&Message::Upgrade { binary })
        .await
        .map_err(lost)?;
    loop {
        match chan.recv().await.map_err(lost)? {
            Message::Progress { message } => outln!("{message}"),
            Message::Done { message } => {
                outln!("{message}");
                return Ok(());
            }
            Message::Refused { message } => {
                return Err(Failure::Failed(format!(
                    "error: upgrade refused: {message}"
                )));
            }
            other => {
                return Err(Failure::Failed(format!(
                    "error: unexpected answer from the running serve: {other:?}"
                )));
            }
        }
    }
}

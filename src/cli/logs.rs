//! `ferry logs <env> [-f] [-n N] [--process P]`: the app log of an environment, or the log of
//! one of its process types.

use std::io::Write;

use super::{Cli, CmdResult, Failure};

#[derive(Debug, clap::Args)]
pub struct Logs {
    pub environment: String,
    /// Keep printing lines as they are written.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// How many lines to show first.
    #[arg(short = 'n', long, default_value_t = 100)]
    pub lines: usize,
    /// A process type of `[processes]` (`worker`): its own log; `web` is the app log.
    #[arg(short = 'p', long)]
    pub process: Option<String>,
}

pub async fn run(cli: &Cli, args: &Logs) -> CmdResult {
    let client = cli.client()?;
    let process = match &args.process {
        Some(p) => format!(
            "&{}",
            serde_urlencoded::to_string([("process", p)]).unwrap_or_default()
        ),
        None => String::new(),
    };
    let mut resp = client
        .stream(&format!(
            "/api/environments/{}/logs?n={}&follow={}{process}",
            args.environment, args.lines, args.follow
        ))
        .await?;
    let mut out = std::io::stdout();
    // the app writes what it likes: no escape sequence of it reaches the terminal
    let mut strip = super::terminal::Strip::default();
    loop {
        tokio::select! {
            chunk = resp.chunk() => match chunk {
                Ok(Some(bytes)) => {
                    let text = strip.feed(&bytes);
                    if out.write_all(&text).and_then(|()| out.flush()).is_err() {
                        return Ok(()); // the reader went away (a closed pipe)
                    }
                }
                Ok(None) => return Ok(()),
                Err(e) => return Err(Failure::Failed(format!("log stream ended: {e}"))),
            },
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

//! `ferry exec <env> [--process web] -- <command…>`: a command in the serving release's
//! environment, over an upgraded connection to the daemon (see [`crate::server::exec`]).
//!
//! When stdin and stdout are a terminal the command gets a pty of its own and this terminal
//! is put in raw mode meanwhile (a console: keys, Ctrl-C and window size changes go to the
//! command); otherwise stdin, stdout and stderr are piped through. Either way ferry exits
//! with the command's exit status. The command's output is passed through as it is: it is
//! the terminal of the person who asked to run it.

use std::io::{IsTerminal, Write};

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::{Cli, CmdResult, Failure};
use crate::server::exec::{ExecRequest, Frame, PROTOCOL};

#[derive(Debug, clap::Args)]
pub struct Exec {
    pub environment: String,
    /// The process type whose environment the command gets.
    #[arg(long, default_value = "web")]
    pub process: String,
    /// The command and its arguments, after `--` (`ferry exec production -- python manage.py shell`).
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

pub async fn run(cli: &Cli, args: &Exec) -> CmdResult {
    let client = cli.client()?;
    let env = super::safety::segment(&args.environment)?;
    let tty = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let (rows, cols) = if tty { window_size() } else { (0, 0) };
    let ask = ExecRequest {
        command: args.command.clone(),
        process: args.process.clone(),
        tty,
        rows,
        cols,
    };
    let upgraded = client
        .upgrade(&format!("/api/environments/{env}/exec"), PROTOCOL, &ask)
        .await
        .map_err(|e| match e {
            super::ClientError::Api {
                status: 409,
                message,
                ..
            } => Failure::Failed(format!("refused: {message}")),
            e => e.into(),
        })?;
    let raw = if tty { RawMode::enter() } else { None };
    let ended = talk(upgraded, tty).await;
    drop(raw);
    match ended {
        Ok(0) => Ok(()),
        Ok(code) => Err(Failure::Status(u8::try_from(code).unwrap_or(1).max(1))),
        Err(message) => Err(Failure::Failed(message)),
    }
}

/// Carries stdin (and window sizes) to the command and its output back until it exits;
/// returns its exit status, or why the session ended without one.
async fn talk(upgraded: reqwest::Upgraded, tty: bool) -> Result<i32, String> {
    let (mut rd, mut wr) = tokio::io::split(upgraded);
    let (tx, mut rx) = mpsc::channel::<Frame>(32);
    read_stdin(tx.clone());
    if tty {
        tokio::spawn(window_changes(tx.clone()));
    }
    drop(tx);
    let writer = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if frame.write(&mut wr).await.is_err() {
                break;
            }
        }
    });
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    let ended = loop {
        match Frame::read(&mut rd).await {
            Ok(Some(Frame::Stdout(b))) => {
                if stdout.write_all(&b).await.is_err() || stdout.flush().await.is_err() {
                    break Err("cannot write the output: stdout is closed".to_string());
                }
            }
            Ok(Some(Frame::Stderr(b))) => {
                let _ = stderr.write_all(&b).await;
                let _ = stderr.flush().await;
            }
            Ok(Some(Frame::Exit(code))) => break Ok(code),
            Ok(Some(Frame::Error(m))) => {
                break Err(format!("error: {}", crate::cli::terminal::clean(&m)));
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => {
                break Err("the connection to ferry ended before the command did".to_string());
            }
        }
    };
    writer.abort();
    ended
}

/// Reads stdin on a thread of its own (a blocked read must not hold up the exit) and sends
/// it as frames; at its end, an empty frame.
fn read_stdin(tx: mpsc::Sender<Frame>) {
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match std::io::Read::read(&mut stdin, &mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => 0,
            };
            if tx.blocking_send(Frame::Stdin(buf[..n].to_vec())).is_err() || n == 0 {
                break;
            }
        }
    });
}

/// Sends the terminal's size each time it changes (SIGWINCH).
async fn window_changes(tx: mpsc::Sender<Frame>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut changes) = signal(SignalKind::window_change()) else {
        return;
    };
    while changes.recv().await.is_some() {
        let (rows, cols) = window_size();
        if tx.send(Frame::Resize { rows, cols }).await.is_err() {
            break;
        }
    }
}

/// The terminal's rows and columns (0, 0 when unknown).
fn window_size() -> (u16, u16) {
    rustix::termios::tcgetwinsize(std::io::stdout())
        .map(|w| (w.ws_row, w.ws_col))
        .unwrap_or((0, 0))
}

/// The terminal in raw mode (keys go to the command as typed); restored when dropped.
struct RawMode(rustix::termios::Termios);

impl RawMode {
    fn enter() -> Option<RawMode> {
        use rustix::termios::{OptionalActions, tcgetattr, tcsetattr};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        raw.make_raw();
        tcsetattr(&stdin, OptionalActions::Now, &raw).ok()?;
        Some(RawMode(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = std::io::stdout().flush();
        let _ = rustix::termios::tcsetattr(
            std::io::stdin(),
            rustix::termios::OptionalActions::Now,
            &self.0,
        );
    }
}

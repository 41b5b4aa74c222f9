//! `POST /api/environments/{env}/exec`: `ferry exec`, a command in the serving release's
//! environment (see [`crate::pipeline::ExecCommand`]).
//!
//! The request asks to switch protocols (`Connection: Upgrade`, `Upgrade: ferry-exec`) with
//! a JSON body ([`ExecRequest`]); once the command is ready ferry answers 101 and both sides
//! speak [`Frame`]s over the connection: stdin and window sizes in, stdout, stderr and the
//! exit status out. With `tty` the command runs on a pty (its stdout carries both streams);
//! else on pipes, in its own process group. When the connection drops (or ferry stops) the
//! command's process group gets SIGHUP, then SIGKILL; when the command ends, whatever it left
//! in its group is killed. Each session is one audit entry: token, claimed user,
//! environment, the command (secrets masked), exit status and when it ended.

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use super::{ApiError, AppState, Caller, MAX_BODY};
use crate::runtime::kill_group;

/// The protocol named in `Upgrade:`.
pub const PROTOCOL: &str = "ferry-exec";
/// The largest frame either side sends or accepts.
const MAX_FRAME: usize = 1024 * 1024;
/// How long a command gets after SIGHUP (its connection dropped) before SIGKILL.
const HANGUP_GRACE: Duration = Duration::from_secs(2);

/// What `POST …/exec` takes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecRequest {
    /// The command and its arguments (run as they are, through no shell of the caller's).
    pub command: Vec<String>,
    /// The process type whose environment it gets (`web`).
    #[serde(default = "web")]
    pub process: String,
    /// Run it on a pty (an interactive console).
    #[serde(default)]
    pub tty: bool,
    /// The terminal's size, with `tty`.
    #[serde(default)]
    pub rows: u16,
    #[serde(default)]
    pub cols: u16,
}

fn web() -> String {
    "web".into()
}

/// Marks a response whose audit entry its handler wrote (the guard writes none then).
#[derive(Debug, Clone, Copy)]
pub struct Audited;

/// One message of the exec protocol: a kind byte, a big-endian `u32` length, the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Client → ferry: bytes for the command's stdin; empty: stdin ends.
    Stdin(Vec<u8>),
    /// Client → ferry: the terminal's new size.
    Resize {
        rows: u16,
        cols: u16,
    },
    /// ferry → client: the command's output (with a tty, all of it).
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// ferry → client: the command ended with this status (128 + the signal that ended it).
    Exit(i32),
    /// ferry → client: the command could not run, or was stopped (why).
    Error(String),
}

impl Frame {
    fn encode(&self) -> (u8, Vec<u8>) {
        match self {
            Frame::Stdin(b) => (0, b.clone()),
            Frame::Resize { rows, cols } => {
                let mut p = rows.to_be_bytes().to_vec();
                p.extend_from_slice(&cols.to_be_bytes());
                (1, p)
            }
            Frame::Stdout(b) => (2, b.clone()),
            Frame::Stderr(b) => (3, b.clone()),
            Frame::Exit(code) => (4, code.to_be_bytes().to_vec()),
            Frame::Error(m) => (5, m.as_bytes().to_vec()),
        }
    }

    /// Writes the frame and flushes it.
    pub async fn write<W: AsyncWrite + Unpin>(&self, w: &mut W) -> std::io::Result<()> {
        let (kind, payload) = self.encode();
        let mut out = Vec::with_capacity(5 + payload.len());
        out.push(kind);
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(&payload);
        w.write_all(&out).await?;
        w.flush().await
    }

    /// The next frame; `None` when the connection ended between frames.
    pub async fn read<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<Frame>> {
        let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
        let kind = match r.read_u8().await {
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        };
        let len = r.read_u32().await? as usize;
        if len > MAX_FRAME {
            return Err(bad(format!("a frame of {len} bytes (at most {MAX_FRAME})")));
        }
        let mut p = vec![0u8; len];
        r.read_exact(&mut p).await?;
        let pair = |p: &[u8]| -> Option<(u16, u16)> {
            Some((
                u16::from_be_bytes(p.get(0..2)?.try_into().ok()?),
                u16::from_be_bytes(p.get(2..4)?.try_into().ok()?),
            ))
        };
        Ok(Some(match kind {
            0 => Frame::Stdin(p),
            1 => {
                let (rows, cols) = pair(&p).ok_or_else(|| bad("a short resize frame".into()))?;
                Frame::Resize { rows, cols }
            }
            2 => Frame::Stdout(p),
            3 => Frame::Stderr(p),
            4 => Frame::Exit(i32::from_be_bytes(
                p.as_slice()
                    .try_into()
                    .map_err(|_| bad("a bad exit frame".into()))?,
            )),
            5 => Frame::Error(String::from_utf8_lossy(&p).into_owned()),
            k => return Err(bad(format!("unknown frame kind {k}"))),
        }))
    }
}

fn bad_request(message: impl Into<String>) -> Response {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message).into_response()
}

/// `POST /api/environments/{env}/exec` (scope `exec`): see the module's doc.
pub async fn exec(
    State(app): State<AppState>,
    caller: Caller,
    Path(env): Path<String>,
    mut req: Request,
) -> Response {
    if let Err(e) = app.engine.env(&env) {
        return ApiError::from(e).into_response();
    }
    let asks_upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(PROTOCOL));
    let on_upgrade = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>();
    let Some(on_upgrade) = on_upgrade.filter(|_| asks_upgrade) else {
        return ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
            format!("exec runs over an upgraded connection: send Connection: Upgrade and Upgrade: {PROTOCOL} (ferry exec does)"),
        )
        .into_response();
    };
    let body = match axum::body::to_bytes(req.into_body(), MAX_BODY).await {
        Ok(b) => b,
        Err(e) => return bad_request(format!("cannot read the request: {e}")),
    };
    let ask: ExecRequest = match serde_json::from_slice(&body) {
        Ok(a) => a,
        Err(e) => return bad_request(e.to_string()),
    };
    let engine = app.engine.clone();
    let cmd = match engine
        .exec_command(&env, &ask.process, &ask.command, ask.tty)
        .await
    {
        Ok(c) => c,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let token = caller.token.clone().unwrap_or_default();
    let path = format!("/api/environments/{env}/exec");
    let entry = crate::store::ExecAudit {
        token: &token,
        user: caller.user.as_deref(),
        path: &path,
        environment: &env,
        command: &cmd.shown,
    };
    let audit = match engine.store.exec_started(&entry) {
        Ok(id) => id,
        Err(e) => return ApiError::from(e).into_response(),
    };
    tracing::info!(env = %env, token = %token, user = caller.user.as_deref().unwrap_or(""), release = %cmd.release, tty = ask.tty, "exec session");
    let shutdown = app.shutdown.clone();
    tokio::spawn(async move {
        let status = match on_upgrade.await {
            Ok(upgraded) => session(TokioIo::new(upgraded), cmd.command, &ask, shutdown).await,
            Err(e) => {
                tracing::warn!(env = %env, error = %e, "exec: the connection was not upgraded");
                -1
            }
        };
        tracing::info!(env = %env, token = %token, status, "exec session ended");
        if let Err(e) = engine.store.exec_ended(audit, status) {
            tracing::error!(error = %e, "cannot record the end of an exec session");
        }
    });
    let mut resp = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, PROTOCOL)
        .body(Body::empty())
        .unwrap_or_default();
    resp.extensions_mut().insert(Audited);
    resp
}

/// Runs `cmd` for the client at the other end of `io`; returns its exit status (-1: it
/// could not start).
async fn session<S>(
    io: S,
    cmd: tokio::process::Command,
    ask: &ExecRequest,
    mut shutdown: watch::Receiver<bool>,
) -> i32
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let (tx, mut rx) = mpsc::channel::<Frame>(32);
    let writer = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if frame.write(&mut wr).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    let ran = if ask.tty {
        on_pty(cmd, ask, &mut rd, &tx, &mut shutdown).await
    } else {
        on_pipes(cmd, &mut rd, &tx, &mut shutdown).await
    };
    let code = match ran {
        Ok(code) => {
            let _ = tx.send(Frame::Exit(code)).await;
            code
        }
        Err(message) => {
            let _ = tx.send(Frame::Error(message)).await;
            -1
        }
    };
    drop(tx);
    let _ = writer.await;
    code
}

/// What came in from the client while the command runs.
enum Input {
    Frame(Frame),
    /// The connection ended or broke: nobody is there any more.
    Gone,
    /// ferry is stopping.
    Stopping,
}

async fn next_input<R: AsyncRead + Unpin>(
    rd: &mut R,
    shutdown: &mut watch::Receiver<bool>,
) -> Input {
    tokio::select! {
        frame = Frame::read(rd) => match frame {
            Ok(Some(frame)) => Input::Frame(frame),
            Ok(None) | Err(_) => Input::Gone,
        },
        () = crate::proxy::stopped(shutdown) => Input::Stopping,
    }
}

/// SIGHUP to `pgid`'s group, SIGKILL after [`HANGUP_GRACE`]; returns its leader's status.
async fn hang_up(
    child: &mut tokio::process::Child,
    pgid: u32,
) -> std::io::Result<std::process::ExitStatus> {
    kill_group(pgid, Signal::SIGHUP);
    match tokio::time::timeout(HANGUP_GRACE, child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            kill_group(pgid, Signal::SIGKILL);
            child.wait().await
        }
    }
}

fn exit_code(status: std::io::Result<std::process::ExitStatus>) -> i32 {
    match status {
        Ok(s) => s
            .code()
            .unwrap_or_else(|| 128 + s.signal().unwrap_or_default()),
        Err(_) => -1,
    }
}

/// Sends what `from` gives as frames made by `frame` until it ends or the client is gone.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    tx: mpsc::Sender<Frame>,
    frame: fn(Vec<u8>) -> Frame,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx.send(frame(buf[..n].to_vec())).await.is_err() {
                    break;
                }
            }
        }
    }
}

/// The command on pipes, in its own process group.
async fn on_pipes<R: AsyncRead + Unpin>(
    mut cmd: tokio::process::Command,
    rd: &mut R,
    tx: &mpsc::Sender<Frame>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<i32, String> {
    use std::process::Stdio;
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start the command: {e}"))?;
    let pgid = child.id().unwrap_or_default();
    let mut stdin = child.stdin.take();
    let out = child
        .stdout
        .take()
        .map(|o| tokio::spawn(pump(o, tx.clone(), Frame::Stdout)));
    let err = child
        .stderr
        .take()
        .map(|e| tokio::spawn(pump(e, tx.clone(), Frame::Stderr)));
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            input = next_input(rd, shutdown) => match input {
                Input::Frame(Frame::Stdin(data)) if data.is_empty() => stdin = None,
                Input::Frame(Frame::Stdin(data)) => {
                    if let Some(w) = stdin.as_mut()
                        && w.write_all(&data).await.is_err()
                    {
                        stdin = None;
                    }
                }
                Input::Frame(_) => {}
                Input::Gone => break hang_up(&mut child, pgid).await,
                Input::Stopping => {
                    let _ = tx.send(Frame::Error("ferry is stopping: the command was ended".into())).await;
                    break hang_up(&mut child, pgid).await;
                }
            },
        }
    };
    // what the command left running in its group goes with it
    kill_group(pgid, Signal::SIGKILL);
    for pump in [out, err].into_iter().flatten() {
        let _ = pump.await;
    }
    Ok(exit_code(status))
}

/// The command on a pty of its own (its controlling terminal, in a session of its own).
async fn on_pty<R: AsyncRead + Unpin>(
    cmd: tokio::process::Command,
    ask: &ExecRequest,
    rd: &mut R,
    tx: &mpsc::Sender<Frame>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<i32, String> {
    let size = |rows: u16, cols: u16| pty_process::Size::new(rows.max(1), cols.max(1));
    let (pty, pts) = pty_process::open().map_err(|e| format!("cannot open a pty: {e}"))?;
    let rows = if ask.rows == 0 { 24 } else { ask.rows };
    let cols = if ask.cols == 0 { 80 } else { ask.cols };
    pty.resize(size(rows, cols))
        .map_err(|e| format!("cannot size the pty: {e}"))?;
    let mut child = pty_process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn(pts)
        .map_err(|e| format!("cannot start the command: {e}"))?;
    let pgid = child.id().unwrap_or_default();
    let (reader, mut writer) = pty.into_split();
    let out = tokio::spawn(pump(reader, tx.clone(), Frame::Stdout));
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            input = next_input(rd, shutdown) => match input {
                Input::Frame(Frame::Stdin(data)) => {
                    if !data.is_empty() {
                        let _ = writer.write_all(&data).await;
                    }
                }
                Input::Frame(Frame::Resize { rows, cols }) => {
                    let _ = writer.resize(size(rows, cols));
                }
                Input::Frame(_) => {}
                Input::Gone => break hang_up(&mut child, pgid).await,
                Input::Stopping => {
                    let _ = tx.send(Frame::Error("ferry is stopping: the command was ended".into())).await;
                    break hang_up(&mut child, pgid).await;
                }
            },
        }
    };
    kill_group(pgid, Signal::SIGKILL);
    // the pty's last output; a process of another group still holding it is not waited for
    let mut out = out;
    if tokio::time::timeout(Duration::from_secs(2), &mut out)
        .await
        .is_err()
    {
        out.abort();
    }
    drop(writer);
    Ok(exit_code(status))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_read_back_as_written() {
        let frames = [
            Frame::Stdin(b"print(1)\n".to_vec()),
            Frame::Stdin(Vec::new()),
            Frame::Resize {
                rows: 40,
                cols: 120,
            },
            Frame::Stdout(b"1\n".to_vec()),
            Frame::Stderr(b"oops".to_vec()),
            Frame::Exit(137),
            Frame::Error("nothing is serving".into()),
        ];
        let mut buf = Vec::new();
        for f in &frames {
            f.write(&mut buf).await.unwrap();
        }
        let mut r = buf.as_slice();
        for f in &frames {
            assert_eq!(Frame::read(&mut r).await.unwrap().as_ref(), Some(f));
        }
        assert_eq!(Frame::read(&mut r).await.unwrap(), None);
        let mut huge = vec![2u8];
        huge.extend_from_slice(&(MAX_FRAME as u32 + 1).to_be_bytes());
        assert!(Frame::read(&mut huge.as_slice()).await.is_err());
    }
}

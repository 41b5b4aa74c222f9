//! Handing a running `serve`'s listening sockets to a new one (`serve --takeover`,
//! `ferry upgrade`), so no connection is refused and no request fails across the change.
//!
//! The running serve listens on `<state_dir>/serve.sock` (0600, in the 0700/0711 state dir:
//! ferry's own user only). Over one connection, as JSON lines:
//!
//! 1. new → old: `takeover`.
//! 2. old: refuses (`refused`, with why) while a deployment is under way or an environment is
//!    being restored; else stops starting deployments, stops its background work (supervisor,
//!    health watcher, notifications), stops reading its apps' output (what was read is in the
//!    log), and sends `sockets` — the names, in order — with every listening socket attached
//!    (SCM_RIGHTS); both now accept on the same sockets.
//! 3. old: releases `serve.lock` and says `lock_released`.
//! 4. new: takes the lock, opens the store, adopts the instances (as after a crash: same pid
//!    and start time, healthy), starts accepting, and says `ready`.
//! 5. old: stops accepting, answers the requests it has (each with `Connection: close`), and
//!    exits without stopping the apps.
//!
//! There is never a moment with nobody accepting, and never two engines at work on the store.
//! If the new serve goes away before `ready`, the old one takes the lock back and carries on.
//!
//! `upgrade` asks the running serve to start `<binary> serve --takeover` itself (so under
//! systemd the new serve stays in the service) and reports until the takeover is done.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::UnixStream;

/// The most sockets one handover carries (the API and up to 63 environments).
const MAX_FDS: usize = 64;

/// The socket the running serve answers on.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("serve.sock")
}

/// One message of the handover, a JSON line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// A new serve asks for the sockets.
    Takeover {
        pid: u32,
    },
    /// `ferry upgrade` asks the running serve to start `binary` and hand over to it.
    Upgrade {
        binary: PathBuf,
    },
    /// The running serve says no, and why.
    Refused {
        message: String,
    },
    /// The listening sockets, attached in this order.
    Sockets {
        names: Vec<String>,
    },
    LockReleased,
    /// The new serve accepts and serves.
    Ready {
        pid: u32,
    },
    /// How an upgrade is going.
    Progress {
        message: String,
    },
    /// The upgrade is done.
    Done {
        message: String,
    },
}

/// A handover connection: JSON lines, and once the sockets.
pub struct Channel {
    stream: UnixStream,
    buf: Vec<u8>,
}

fn protocol(what: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.into())
}

impl Channel {
    pub fn new(stream: UnixStream) -> Channel {
        Channel {
            stream,
            buf: Vec::new(),
        }
    }

    pub async fn connect(path: &Path) -> std::io::Result<Channel> {
        Ok(Channel::new(UnixStream::connect(path).await?))
    }

    pub async fn send(&mut self, msg: &Message) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(msg).map_err(|e| protocol(e.to_string()))?;
        line.push(b'\n');
        self.stream.write_all(&line).await
    }

    /// The next message; an error when the other side went away first.
    pub async fn recv(&mut self) -> std::io::Result<Message> {
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                return serde_json::from_slice(&line).map_err(|e| protocol(e.to_string()));
            }
            if self.buf.len() > 64 * 1024 {
                return Err(protocol("a handover message is too long"));
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends `msg` with `fds` attached to its first byte.
    pub async fn send_fds(&mut self, msg: &Message, fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
        use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, sendmsg};
        let mut line = serde_json::to_vec(msg).map_err(|e| protocol(e.to_string()))?;
        line.push(b'\n');
        let stream = &self.stream;
        let sent = stream
            .async_io(Interest::WRITABLE, || {
                let mut space =
                    vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
                let mut control = SendAncillaryBuffer::new(&mut space);
                if !control.push(SendAncillaryMessage::ScmRights(fds)) {
                    return Err(protocol("too many sockets for one message"));
                }
                sendmsg(
                    stream.as_fd(),
                    &[IoSlice::new(&line)],
                    &mut control,
                    SendFlags::NOSIGNAL,
                )
                .map_err(std::io::Error::from)
            })
            .await?;
        // the sockets went with the first byte; the rest of the line is plain data
        self.stream.write_all(&line[sent..]).await
    }

    /// Receives a message with sockets attached (nothing may have been read ahead).
    pub async fn recv_fds(&mut self) -> std::io::Result<(Message, Vec<OwnedFd>)> {
        use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, recvmsg};
        let stream = &self.stream;
        let mut chunk = vec![0u8; 64 * 1024];
        let (n, fds) = stream
            .async_io(Interest::READABLE, || {
                let mut space =
                    vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
                let mut control = RecvAncillaryBuffer::new(&mut space);
                let got = recvmsg(
                    stream.as_fd(),
                    &mut [IoSliceMut::new(&mut chunk)],
                    &mut control,
                    RecvFlags::CMSG_CLOEXEC,
                )
                .map_err(std::io::Error::from)?;
                let mut fds = Vec::new();
                for message in control.drain() {
                    if let RecvAncillaryMessage::ScmRights(received) = message {
                        fds.extend(received);
                    }
                }
                Ok((got.bytes, fds))
            })
            .await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        let msg = self.recv().await?;
        Ok((msg, fds))
    }
}

/// The sockets a takeover brought, by name.
pub fn named_sockets(
    names: Vec<String>,
    fds: Vec<OwnedFd>,
) -> std::io::Result<Vec<super::sockets::Passed>> {
    if names.len() != fds.len() {
        return Err(protocol(format!(
            "the running serve described {} sockets and passed {}",
            names.len(),
            fds.len()
        )));
    }
    Ok(names
        .into_iter()
        .zip(fds)
        .map(|(name, fd)| super::sockets::Passed {
            name: Some(name),
            listener: std::net::TcpListener::from(fd),
        })
        .collect())
}

//! `serve`'s listening sockets — the API's and each environment's proxy's — passed in by
//! systemd (socket activation), handed over by the `serve` being replaced, or bound here.
//!
//! A listener is named `api` or after its environment (`app.env` when apps share a serve). systemd's sockets are matched by
//! their `FileDescriptorName=` or, unnamed, by their local address; one that matches nothing
//! is an error (a socket unit out of step with the config). Handed-over sockets are used when
//! their name and address still match the config (an environment removed or moved since is
//! bound anew, the old socket closed). Every listener ferry keeps is close-on-exec, so no app
//! or command it starts inherits one.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsFd;
use std::sync::Mutex;

use crate::config::ServerConfig;

/// The API's listener name (`FileDescriptorName=api`).
pub const API: &str = "api";
/// The front door's listener names (`[server] http`, `https`).
pub const HTTP: &str = "http";
pub const HTTPS: &str = "https";

/// Connections the kernel queues while nobody accepts (a restart): plenty for a burst.
const BACKLOG: u32 = 1024;

/// A listening socket given to `serve`, with the name it came under.
#[derive(Debug)]
pub struct Passed {
    pub name: Option<String>,
    pub listener: TcpListener,
}

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error(
        "socket {index} passed by systemd (LISTEN_FDS) is not a listening TCP socket: {source}"
    )]
    NotTcp {
        index: usize,
        source: std::io::Error,
    },
    #[error(
        "the socket passed by systemd{name} on {addr} matches none of ferry's listeners ({wanted}): name it with FileDescriptorName= in the socket unit, or make its address one of the config's"
    )]
    Unmatched {
        name: String,
        addr: String,
        wanted: String,
    },
    #[error("systemd passed two sockets for ferry's listener {0}")]
    Twice(String),
    #[error("cannot listen on {addr} for environment {env}: {source} (is another program using port {port}?)", port = addr.port())]
    Env {
        env: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "cannot listen on {addr} for the front door ([server] {key}): {source} (is another program, a web server, using port {port}?)", port = addr.port()
    )]
    FrontDoor {
        key: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "cannot listen on {addr} for ferry's API ([server] listen): {source} (is another ferry running?)"
    )]
    Api {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Where passed sockets came from: they are matched differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Systemd,
    Takeover,
}

static SYSTEMD: Mutex<Option<Vec<Passed>>> = Mutex::new(None);

/// Takes the sockets systemd passed (`LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`) and keeps
/// them for [`systemd`]. Call it before any thread starts: it clears `LISTEN_FDS` and
/// `LISTEN_PID` from the environment (the `listenfd` crate does).
pub fn take_systemd() -> Result<(), SocketError> {
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() == 0 {
        return Ok(());
    }
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|n| n.split(':').map(str::to_string).collect())
        .unwrap_or_default();
    let mut passed = Vec::new();
    for index in 0..fds.len() {
        let listener = fds
            .take_tcp_listener(index)
            .map_err(|source| SocketError::NotTcp { index, source })?;
        let Some(listener) = listener else { continue };
        close_on_exec(&listener).map_err(|source| SocketError::NotTcp { index, source })?;
        passed.push(Passed {
            name: names.get(index).filter(|n| !n.is_empty()).cloned(),
            listener,
        });
    }
    *SYSTEMD.lock().unwrap_or_else(|e| e.into_inner()) = Some(passed);
    Ok(())
}

/// The sockets systemd passed (taken once).
pub fn systemd() -> Vec<Passed> {
    SYSTEMD
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .unwrap_or_default()
}

/// Marks `fd` close-on-exec: an inherited socket is not, and apps must not get it.
pub fn close_on_exec(fd: impl AsFd) -> std::io::Result<()> {
    use nix::fcntl::{F_SETFD, FdFlag, fcntl};
    fcntl(fd, F_SETFD(FdFlag::FD_CLOEXEC))
        .map(|_| ())
        .map_err(std::io::Error::from)
}

/// Every listener of `config`: the passed one where one fits (see the module doc), else
/// bound now. Fails on a systemd socket that fits nothing, and naming the first address that
/// cannot be bound.
pub fn assign(
    config: &ServerConfig,
    passed: Vec<Passed>,
    source: Source,
) -> Result<BTreeMap<String, TcpListener>, SocketError> {
    let wanted = config.listeners();
    let mut out: BTreeMap<String, TcpListener> = BTreeMap::new();
    for p in passed {
        let addr = p.listener.local_addr().ok();
        let by_name = p
            .name
            .as_ref()
            .and_then(|n| wanted.iter().find(|(w, _)| w == n));
        let fit = match source {
            Source::Systemd => by_name.or_else(|| {
                wanted
                    .iter()
                    .find(|(name, want)| Some(*want) == addr && !out.contains_key(name))
            }),
            // the config may have changed since the old serve bound it
            Source::Takeover => by_name.filter(|(_, want)| Some(*want) == addr || want.port() == 0),
        };
        match (fit, source) {
            (Some((name, want)), _) => {
                if out.contains_key(name) {
                    return Err(SocketError::Twice(name.clone()));
                }
                if Some(*want) != addr {
                    tracing::warn!(listener = %name, configured = %want, passed = ?addr, "using the socket passed by systemd, whose address is not the configured one");
                }
                out.insert(name.clone(), p.listener);
            }
            (None, Source::Systemd) => {
                return Err(SocketError::Unmatched {
                    name: p.name.map(|n| format!(" as {n}")).unwrap_or_default(),
                    addr: addr.map_or_else(|| "an unknown address".into(), |a| a.to_string()),
                    wanted: wanted
                        .iter()
                        .map(|(n, a)| format!("{n} on {a}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            (None, Source::Takeover) => {
                tracing::info!(name = ?p.name, addr = ?addr, "closing a handed-over socket the config no longer has");
            }
        }
    }
    for (name, addr) in wanted {
        if out.contains_key(&name) {
            continue;
        }
        let listener = bind(addr).map_err(|source| {
            if name == API {
                SocketError::Api { addr, source }
            } else if name == HTTP || name == HTTPS {
                SocketError::FrontDoor {
                    key: name.clone(),
                    addr,
                    source,
                }
            } else {
                SocketError::Env {
                    env: name.clone(),
                    addr,
                    source,
                }
            }
        })?;
        out.insert(name, listener);
    }
    Ok(out)
}

/// Binds `addr` as tokio does (address reuse) with a deep backlog, close-on-exec.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)?.into_std()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn config(api: u16, staging: u16) -> ServerConfig {
        let text = format!(
            "[app]\nname = \"a\"\nrepo = \"https://example.com/r.git\"\nstart = \"true\"\n[health]\npaths = [\"/\"]\n\
             [environments.staging]\nlisten = \"127.0.0.1:{staging}\"\n[server]\nlisten = \"127.0.0.1:{api}\"\n"
        );
        ServerConfig::single(Config::parse(std::path::Path::new("/tmp/ferry.toml"), &text).unwrap())
    }

    fn listener() -> TcpListener {
        TcpListener::bind("127.0.0.1:0").unwrap()
    }

    fn port(l: &TcpListener) -> u16 {
        l.local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn systemd_sockets_match_by_name_then_by_address() {
        let (named, unnamed) = (listener(), listener());
        let (named_port, unnamed_port) = (port(&named), port(&unnamed));
        // the API's socket named, staging's found by its address
        let c = config(named_port + 1, unnamed_port);
        let passed = vec![
            Passed {
                name: Some("api".into()),
                listener: named,
            },
            Passed {
                name: Some("ferry.socket".into()),
                listener: unnamed,
            },
        ];
        let got = assign(&c, passed, Source::Systemd).unwrap();
        assert_eq!(port(&got["api"]), named_port);
        assert_eq!(port(&got["staging"]), unnamed_port);
    }

    #[tokio::test]
    async fn a_systemd_socket_matching_nothing_is_an_error_and_unpassed_ones_are_bound() {
        let stray = listener();
        let (a, b) = (listener(), listener());
        let c = config(port(&a), port(&b));
        drop((a, b));
        let err = assign(
            &c,
            vec![Passed {
                name: None,
                listener: stray,
            }],
            Source::Systemd,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("matches none of ferry's listeners"),
            "{err}"
        );
        let got = assign(&c, Vec::new(), Source::Systemd).unwrap();
        assert_eq!(got.len(), 2, "api and staging bound");
    }

    #[tokio::test]
    async fn a_handed_over_socket_the_config_moved_is_replaced() {
        let old = listener();
        let moved = listener();
        let moved_port = port(&moved);
        drop(moved);
        let c = config(0, moved_port);
        let got = assign(
            &c,
            vec![Passed {
                name: Some("staging".into()),
                listener: old,
            }],
            Source::Takeover,
        )
        .unwrap();
        assert_eq!(port(&got["staging"]), moved_port);
    }
}

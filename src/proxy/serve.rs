//! A listener's accept loop: each connection admitted through the listener's own [`Gate`],
//! TLS terminated first when the listener has a certificate resolver (the front door's https),
//! then served by the HTTP/1.1 forwarder ([`super::conn`]) or, when ALPN chose `h2`, by
//! hyper's HTTP/2 server and the bridge ([`super::h2`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::conn::{self, Ctx};
use super::route::Router;
use super::{FINISH_TIMEOUT, stopped};
use crate::config::ProxySettings;
use crate::listener::{ConnStats, Gate, Ticket};

/// What a listener serves with.
pub struct Listening<R> {
    /// For logs: `proxy staging`, `front door https`.
    pub name: String,
    pub router: R,
    pub settings: ProxySettings,
    pub stats: Arc<ConnStats>,
    /// Terminates TLS on every connection (ALPN `h2`, `http/1.1`).
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Serves `listener` until `shutdown` turns true; then open connections finish the request
/// they are serving (up to [`FINISH_TIMEOUT`]) and close.
pub async fn serve<R: Router>(
    listening: Listening<R>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) {
    let Listening {
        name,
        router,
        settings,
        stats,
        tls,
    } = listening;
    let gate = Gate::new(name.clone(), settings.connections, stats);
    let ctx = Arc::new(Ctx {
        router,
        settings,
        shutdown: shutdown.clone(),
    });
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // out of file descriptors, most likely: wait for some to be given back
                    tracing::warn!(listener = %name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopped(&mut shutdown) => break,
        };
        let ticket = match gate.admit(peer.ip()) {
            Ok(ticket) => ticket,
            Err(_) => {
                // a best effort, never waited for: the socket is closed right after
                if tls.is_none() {
                    let _ = stream.try_write(crate::listener::REFUSED);
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        match &tls {
            None => {
                tasks.spawn(conn::serve(
                    ctx.clone(),
                    stream,
                    peer,
                    ticket,
                    shutdown.clone(),
                ));
            }
            Some(acceptor) => {
                tasks.spawn(serve_tls(
                    ctx.clone(),
                    acceptor.clone(),
                    stream,
                    peer,
                    ticket,
                    shutdown.clone(),
                ));
            }
        }
        // reap finished connections as they go so the set stays small
        while tasks.try_join_next().is_some() {}
    }
    drop(listener);
    let _ = tokio::time::timeout(FINISH_TIMEOUT, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
}

/// The TLS handshake (within `header_timeout`, so a silent client is not kept), then HTTP/2
/// or HTTP/1.1 as ALPN chose.
async fn serve_tls<R: Router>(
    ctx: Arc<Ctx<R>>,
    acceptor: tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    ticket: Ticket,
    shutdown: watch::Receiver<bool>,
) {
    let limit = ctx.settings.connections.header_timeout;
    let tls = match tokio::time::timeout(limit, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(client = %peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            ticket.timed_out();
            return;
        }
    };
    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
        super::h2::serve(ctx, tls, peer, ticket, shutdown).await;
    } else {
        conn::serve(ctx, tls, peer, ticket, shutdown).await;
    }
}

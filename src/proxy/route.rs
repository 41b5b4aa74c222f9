//! What a connection's requests are for: the [`Router`] a listener serves with (an
//! environment's own listener routes everything to its [`Proxy`]; the front door looks the
//! request's host up), and the client streams the forwarder reads ([`ClientIo`]: plain TCP,
//! or TLS terminated by the front door).

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::Proxy;

/// Where one request goes.
pub enum Route<'a> {
    /// To an environment's proxy; `prefix` (its `path_prefix`) is stripped from the path and
    /// sent as `X-Forwarded-Prefix`.
    Proxy {
        proxy: &'a Proxy,
        prefix: Option<&'a str>,
    },
    /// An answer of ferry's own (a redirect, a 404 page, an ACME challenge's answer).
    Answer(Answer),
}

/// A complete small response of ferry's own.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
    pub headers: Vec<(&'static str, String)>,
}

/// What the router knows of a request.
pub struct RequestInfo<'a> {
    /// The host asked for (`Host`, or an absolute target's), as sent.
    pub host: Option<&'a [u8]>,
    /// The request target in origin form (`/path?query`).
    pub target: &'a [u8],
    /// The TLS server name the client gave, on an HTTPS connection.
    pub sni: Option<&'a str>,
}

/// Picks the route of each request on a listener.
pub trait Router: Send + Sync + 'static {
    fn route(&self, req: &RequestInfo<'_>) -> Route<'_>;

    /// The proxy that counts requests refused before they could be routed (a malformed
    /// head): an environment's listener counts them as its own.
    fn fallback(&self) -> Option<&Proxy> {
        None
    }

    /// `http` or `https`: what the app is told in `X-Forwarded-Proto`.
    fn scheme(&self) -> &'static str {
        "http"
    }
}

/// An environment's own listener: every request is its proxy's.
impl Router for Proxy {
    #[inline]
    fn route(&self, _req: &RequestInfo<'_>) -> Route<'_> {
        Route::Proxy {
            proxy: self,
            prefix: None,
        }
    }

    fn fallback(&self) -> Option<&Proxy> {
        Some(self)
    }
}

/// A client connection the forwarder can read and write at once.
pub trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    type Read<'a>: AsyncRead + Unpin + Send
    where
        Self: 'a;
    type Write<'a>: AsyncWrite + Unpin + Send
    where
        Self: 'a;

    /// Its read and write halves, borrowed.
    fn halves(&mut self) -> (Self::Read<'_>, Self::Write<'_>);

    /// The TLS server name (SNI) the client asked for, on a TLS connection.
    fn server_name(&self) -> Option<String> {
        None
    }
}

impl ClientIo for TcpStream {
    type Read<'a> = tokio::net::tcp::ReadHalf<'a>;
    type Write<'a> = tokio::net::tcp::WriteHalf<'a>;

    #[inline]
    fn halves(&mut self) -> (Self::Read<'_>, Self::Write<'_>) {
        self.split()
    }
}

impl<S> ClientIo for tokio_rustls::server::TlsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Read<'a> = tokio::io::ReadHalf<&'a mut Self>;
    type Write<'a> = tokio::io::WriteHalf<&'a mut Self>;

    fn halves(&mut self) -> (Self::Read<'_>, Self::Write<'_>) {
        tokio::io::split(self)
    }

    fn server_name(&self) -> Option<String> {
        self.get_ref().1.server_name().map(str::to_string)
    }
}

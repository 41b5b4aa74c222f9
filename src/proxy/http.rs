//! HTTP/1.1 message heads and body framing, as the proxy reads and rewrites them.
//!
//! Heads are parsed with `httparse` and then held to the rules a proxy needs so that the app
//! and ferry never disagree on where a message ends (RFC 9112 §6): a request with both
//! `Content-Length` and `Transfer-Encoding`, several or invalid lengths, a transfer coding
//! other than a final `chunked`, obs-fold or bytes `httparse` refuses is rejected with 400
//! before anything reaches the app. Chunked bodies are passed through chunk by chunk
//! ([`Chunked`]) and checked as they go.

use std::ops::Range;

use bytes::{Bytes, BytesMut};

/// Headers a message may carry; more is answered 431.
pub const MAX_HEADERS: usize = 128;

/// Why a request was refused before it reached the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// 400: a malformed or ambiguous message.
    Bad(&'static str),
    /// 431: the request line and headers are over `max_request_headers`.
    HeadersTooLarge,
    /// 501: a transfer coding ferry does not pass on.
    NotImplemented(&'static str),
    /// 413: the body is over `max_request_body`.
    TooLarge,
}

impl Reject {
    pub fn status(self) -> u16 {
        match self {
            Reject::Bad(_) => 400,
            Reject::HeadersTooLarge => 431,
            Reject::NotImplemented(_) => 501,
            Reject::TooLarge => 413,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Reject::Bad(why) | Reject::NotImplemented(why) => why,
            Reject::HeadersTooLarge => "the request's headers are too large",
            Reject::TooLarge => "the request's body is too large",
        }
    }
}

/// How a message's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    Length(u64),
    Chunked,
    /// Until the connection closes (responses only).
    Close,
}

/// A parsed head: the bytes as received and where each header is in them.
#[derive(Debug)]
pub struct Head {
    pub raw: Bytes,
    headers: Vec<(Range<usize>, Range<usize>)>,
}

impl Head {
    pub fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.headers
            .iter()
            .map(|(n, v)| (&self.raw[n.clone()], &self.raw[v.clone()]))
    }

    /// The value of every header line named `name` (any case), in order.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> {
        self.headers()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// The first value of `name`.
    pub fn get<'a>(&'a self, name: &'a str) -> Option<&'a [u8]> {
        self.all(name).next()
    }

    /// The items of every list header `name` (`Connection`, `Transfer-Encoding`), in order.
    pub fn list<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> {
        self.all(name).flat_map(split_list)
    }

    /// Where `headers` (parsed from a buffer at `base`) are, as ranges of that buffer.
    fn ranges(base: usize, headers: &[httparse::Header<'_>]) -> Vec<(Range<usize>, Range<usize>)> {
        headers
            .iter()
            .map(|h| (range_in(base, h.name.as_bytes()), range_in(base, h.value)))
            .collect()
    }
}

fn range_in(base: usize, s: &[u8]) -> Range<usize> {
    if s.is_empty() {
        return 0..0;
    }
    let start = s.as_ptr() as usize - base;
    start..start + s.len()
}

/// A request head and what the proxy needs to know of it.
#[derive(Debug)]
pub struct Request {
    pub head: Head,
    pub method: Range<usize>,
    pub target: Range<usize>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    pub framing: Framing,
    /// The client wants the connection kept open after this exchange.
    pub keep_alive: bool,
    /// `Connection: upgrade` with an `Upgrade` header (HTTP/1.1 only).
    pub upgrade: bool,
    pub expect_continue: bool,
}

impl Request {
    pub fn method(&self) -> &[u8] {
        &self.head.raw[self.method.clone()]
    }

    pub fn target(&self) -> &[u8] {
        &self.head.raw[self.target.clone()]
    }

    pub fn is_head(&self) -> bool {
        self.method() == b"HEAD"
    }

    /// Safe to send again on another connection when nothing of it reached the app.
    pub fn retryable(&self) -> bool {
        self.framing == Framing::Empty
            && matches!(
                self.method(),
                b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE" | b"PUT" | b"DELETE"
            )
    }
}

/// Takes a complete request head off the front of `buf`; `Ok(None)`: not complete yet.
pub fn parse_request(buf: &mut BytesMut) -> Result<Option<Request>, Reject> {
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut storage);
    let used = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Reject::HeadersTooLarge),
        Err(httparse::Error::Version) => return Err(Reject::Bad("unsupported HTTP version")),
        Err(_) => return Err(Reject::Bad("malformed request")),
    };
    let base = buf.as_ptr() as usize;
    let method = range_in(base, req.method.unwrap_or_default().as_bytes());
    let target = range_in(base, req.path.unwrap_or_default().as_bytes());
    let version = req.version.unwrap_or(1);
    let headers = Head::ranges(base, req.headers);
    let head = Head {
        raw: buf.split_to(used).freeze(),
        headers,
    };
    let length = {
        let mut lengths = head.all("content-length");
        match (lengths.next(), lengths.next()) {
            (None, _) => None,
            (Some(_), Some(_)) => return Err(Reject::Bad("more than one Content-Length")),
            (Some(v), None) => Some(parse_length(v).ok_or(Reject::Bad("invalid Content-Length"))?),
        }
    };
    let codings: Vec<&[u8]> = head.list("transfer-encoding").collect();
    let framing = if head.get("transfer-encoding").is_some() {
        if length.is_some() {
            return Err(Reject::Bad("both Content-Length and Transfer-Encoding"));
        }
        if version == 0 {
            return Err(Reject::Bad("Transfer-Encoding in an HTTP/1.0 request"));
        }
        match codings.as_slice() {
            [one] if one.eq_ignore_ascii_case(b"chunked") => Framing::Chunked,
            list if list
                .iter()
                .filter(|c| c.eq_ignore_ascii_case(b"chunked"))
                .count()
                > 1 =>
            {
                return Err(Reject::Bad("chunked applied more than once"));
            }
            [.., last] if last.eq_ignore_ascii_case(b"chunked") => {
                return Err(Reject::NotImplemented("unsupported transfer coding"));
            }
            _ => return Err(Reject::Bad("chunked is not the final transfer coding")),
        }
    } else {
        match length {
            None | Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
        }
    };
    let hosts = head.all("host").count();
    if hosts > 1 || (hosts == 0 && version == 1) {
        return Err(Reject::Bad("a request needs exactly one Host header"));
    }
    let connection = |token: &[u8]| has_token(&head, "connection", token);
    let keep_alive = if version == 1 {
        !connection(b"close")
    } else {
        connection(b"keep-alive") && !connection(b"close")
    };
    let upgrade = version == 1 && connection(b"upgrade") && head.get("upgrade").is_some();
    let expect_continue = version == 1
        && head
            .get("expect")
            .is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"100-continue"));
    Ok(Some(Request {
        head,
        method,
        target,
        version,
        framing,
        keep_alive,
        upgrade,
        expect_continue,
    }))
}

/// A response head from the app.
#[derive(Debug)]
pub struct Response {
    pub head: Head,
    pub code: u16,
    pub reason: Range<usize>,
    pub framing: Framing,
    /// The app keeps the connection open after this response.
    pub keep_alive: bool,
}

impl Response {
    pub fn reason(&self) -> &[u8] {
        &self.head.raw[self.reason.clone()]
    }
}

/// Why an app's response cannot be passed on (answered 502).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadResponse(pub &'static str);

/// Takes the app's complete response head (to a `HEAD` request when `request_is_head`) off
/// the front of `buf`; `Ok(None)`: not complete yet.
pub fn parse_response(
    buf: &mut BytesMut,
    request_is_head: bool,
) -> Result<Option<Response>, BadResponse> {
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut storage);
    let used = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(BadResponse("a malformed response head")),
    };
    let base = buf.as_ptr() as usize;
    let reason = range_in(base, resp.reason.unwrap_or_default().as_bytes());
    let code = resp.code.unwrap_or(0);
    let version = resp.version.unwrap_or(1);
    let headers = Head::ranges(base, resp.headers);
    let head = Head {
        raw: buf.split_to(used).freeze(),
        headers,
    };
    let length = {
        let mut lengths = head.all("content-length");
        match (lengths.next(), lengths.next()) {
            (None, _) => None,
            (Some(a), Some(b)) if a != b => {
                return Err(BadResponse("several Content-Length values"));
            }
            (Some(v), _) => Some(parse_length(v).ok_or(BadResponse("an invalid Content-Length"))?),
        }
    };
    let te = head.get("transfer-encoding").is_some();
    let framing = if request_is_head || (100..200).contains(&code) || code == 204 || code == 304 {
        Framing::Empty
    } else if te {
        if length.is_some() {
            return Err(BadResponse("both Content-Length and Transfer-Encoding"));
        }
        let last = head.list("transfer-encoding").last();
        if last.is_some_and(|c| c.eq_ignore_ascii_case(b"chunked")) {
            Framing::Chunked
        } else {
            Framing::Close
        }
    } else {
        match length {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::Close,
        }
    };
    let keep_alive = framing != Framing::Close
        && if version == 1 {
            !has_token(&head, "connection", b"close")
        } else {
            has_token(&head, "connection", b"keep-alive")
        };
    Ok(Some(Response {
        head,
        code,
        reason,
        framing,
        keep_alive,
    }))
}

/// A `Content-Length` value: digits only, at most 18 of them.
fn parse_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// The items of a comma-separated header value, trimmed, empty ones skipped.
pub fn split_list(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Whether a list header `name` holds `token` (case-insensitive).
pub fn has_token(head: &Head, name: &str, token: &[u8]) -> bool {
    head.list(name).any(|t| t.eq_ignore_ascii_case(token))
}

/// Headers that belong to one connection and are never forwarded (besides those a
/// `Connection` header names). Framing headers are written by the proxy itself.
pub const HOP_BY_HOP: &[&[u8]] = &[
    b"connection",
    b"keep-alive",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
    b"content-length",
];

/// Whether header `name` is this connection's own: hop-by-hop, or named in `Connection`.
pub fn is_hop_by_hop(head: &Head, name: &[u8]) -> bool {
    HOP_BY_HOP.iter().any(|h| h.eq_ignore_ascii_case(name)) || has_token(head, "connection", name)
}

/// Where a chunked body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size,
    SizeLf,
    Ext,
    Data,
    DataCr,
    DataLf,
    Trailer,
    TrailerLf,
    TrailerLine,
    TrailerLineLf,
    Done,
}

/// Follows a chunked body byte by byte to find its end and check its syntax; the data
/// itself is handed out for a client that cannot take chunks (HTTP/1.0).
#[derive(Debug)]
pub struct Chunked {
    state: ChunkState,
    size: u64,
    digits: u8,
    /// Bytes of chunk extensions and trailers seen (bounded).
    extra: usize,
}

/// Chunk extensions and trailers a body may carry in all.
const MAX_CHUNK_EXTRA: usize = 16 << 10;

impl Default for Chunked {
    fn default() -> Self {
        Chunked {
            state: ChunkState::Size,
            size: 0,
            digits: 0,
            extra: 0,
        }
    }
}

impl Chunked {
    pub fn done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// A byte of a chunk extension or a trailer line, which ends at CR (then `next`); their
    /// bytes count against [`MAX_CHUNK_EXTRA`] (past it: `too_large`).
    fn line_byte(
        &mut self,
        b: u8,
        next: ChunkState,
        too_large: &'static str,
    ) -> Result<(), &'static str> {
        self.extra += 1;
        if self.extra > MAX_CHUNK_EXTRA {
            return Err(too_large);
        }
        match b {
            b'\r' => self.state = next,
            b'\n' | 0 => return Err("a bare LF or NUL in a chunk extension or trailer"),
            _ => {}
        }
        Ok(())
    }

    /// Reads `input` up to the end of the body at most; returns how many bytes belong to the
    /// body. `data` receives the ranges of `input` that are chunk data.
    pub fn feed(
        &mut self,
        input: &[u8],
        mut data: impl FnMut(Range<usize>),
    ) -> Result<usize, &'static str> {
        use ChunkState::*;
        let mut i = 0;
        while i < input.len() && self.state != Done {
            let b = input[i];
            match self.state {
                Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        self.digits += 1;
                        if self.digits > 15 {
                            return Err("a chunk size is too large");
                        }
                        self.size =
                            self.size * 16 + u64::from((b as char).to_digit(16).unwrap_or(0));
                    }
                    b'\r' if self.digits > 0 => self.state = SizeLf,
                    b';' if self.digits > 0 => self.state = Ext,
                    _ => return Err("an invalid chunk size"),
                },
                Ext => self.line_byte(b, SizeLf, "chunk extensions are too large")?,
                SizeLf => {
                    if b != b'\n' {
                        return Err("a chunk size line without CRLF");
                    }
                    self.digits = 0;
                    self.state = if self.size == 0 { Trailer } else { Data };
                }
                Data => {
                    let take = (self.size as usize).min(input.len() - i);
                    data(i..i + take);
                    self.size -= take as u64;
                    i += take;
                    if self.size == 0 {
                        self.state = DataCr;
                    }
                    continue;
                }
                DataCr => {
                    if b != b'\r' {
                        return Err("chunk data longer than its size");
                    }
                    self.state = DataLf;
                }
                DataLf => {
                    if b != b'\n' {
                        return Err("chunk data without CRLF");
                    }
                    self.state = Size;
                }
                Trailer => match b {
                    b'\r' => self.state = TrailerLf,
                    _ => {
                        self.state = TrailerLine;
                        continue;
                    }
                },
                TrailerLf => {
                    if b != b'\n' {
                        return Err("a chunked body without its final CRLF");
                    }
                    self.state = Done;
                }
                TrailerLine => self.line_byte(b, TrailerLineLf, "trailers are too large")?,
                TrailerLineLf => {
                    if b != b'\n' {
                        return Err("a trailer without CRLF");
                    }
                    self.state = Trailer;
                }
                Done => break,
            }
            i += 1;
        }
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(text: &str) -> Result<Option<Request>, Reject> {
        parse_request(&mut BytesMut::from(text))
    }

    #[test]
    fn smuggling_shapes_are_rejected() {
        for (text, why) in [
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
                "both",
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n",
                "both",
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n",
                "more than one",
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\n",
                "more than one",
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +4\r\n\r\n",
                "invalid",
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x4\r\n\r\n",
                "invalid",
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
                "final",
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n",
                "final",
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
                "more than once",
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n",
                "malformed",
            ),
            ("GET / HTTP/1.1\r\nHost: a\r\nX-A : b\r\n\r\n", "malformed"),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\0c\r\n\r\n",
                "malformed",
            ),
            ("GET / HTTP/1.1\r\n\r\n", "exactly one Host"),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
                "exactly one Host",
            ),
            (
                "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
                "HTTP/1.0",
            ),
        ] {
            match req(text) {
                Err(Reject::Bad(said)) => assert!(said.contains(why), "{text:?}: {said}"),
                other => panic!("{text:?} was not refused: {other:?}"),
            }
        }
        assert_eq!(
            req("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
                .unwrap_err(),
            Reject::NotImplemented("unsupported transfer coding")
        );
    }

    #[test]
    fn requests_are_framed_and_keep_alive_is_read() {
        let r = req("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(r.framing, Framing::Length(12));
        assert!(r.keep_alive && !r.upgrade);
        let r = req("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert_eq!((r.framing, r.keep_alive), (Framing::Empty, false));
        let r = req("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(r.keep_alive);
        let r = req("GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(r.upgrade);
        let r = req("PUT / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\nExpect: 100-continue\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(r.framing, Framing::Chunked);
        assert!(r.expect_continue);
        assert!(req("GET / HTTP/1.1\r\nHost: a\r\n").unwrap().is_none());
    }

    #[test]
    fn responses_are_framed() {
        let resp = |text: &str, head: bool| {
            parse_response(&mut BytesMut::from(text), head).map(|r| r.map(|r| r.framing))
        };
        assert_eq!(
            resp("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", false),
            Ok(Some(Framing::Length(3)))
        );
        assert_eq!(
            resp("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", true),
            Ok(Some(Framing::Empty))
        );
        assert_eq!(
            resp("HTTP/1.1 204 No Content\r\n\r\n", false),
            Ok(Some(Framing::Empty))
        );
        assert_eq!(
            resp("HTTP/1.1 200 OK\r\n\r\n", false),
            Ok(Some(Framing::Close))
        );
        assert_eq!(
            resp(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                false
            ),
            Ok(Some(Framing::Chunked))
        );
        assert!(
            resp(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
                false
            )
            .is_err()
        );
        assert!(
            resp(
                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
                false
            )
            .is_err()
        );
    }

    #[test]
    fn chunked_bodies_are_followed_to_their_end() {
        let body = b"4\r\nWiki\r\n5;x=y\r\npedia\r\n0\r\nT: v\r\n\r\nGET / HTTP/1.1";
        let mut c = Chunked::default();
        let mut data = Vec::new();
        // fed a byte at a time, as a slow client sends it
        let mut used = 0;
        for (i, b) in body.iter().enumerate() {
            if c.done() {
                break;
            }
            let n = c
                .feed(std::slice::from_ref(b), |r| {
                    data.extend_from_slice(&body[i..][r])
                })
                .unwrap();
            used += n;
        }
        assert!(c.done());
        assert_eq!(&body[used..], b"GET / HTTP/1.1");
        assert_eq!(data, b"Wikipedia");
        for bad in [
            &b"g\r\n"[..],
            b"4\r\nWikiX\r\n",
            b"4\nWiki",
            b"ffffffffffffffff1\r\n",
            b"\r\n",
        ] {
            assert!(
                Chunked::default().feed(bad, |_| {}).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}

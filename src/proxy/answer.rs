//! What the client gets: ferry's own short answers, and the app's response, its head
//! rewritten and its body passed on as it comes (re-chunked or de-chunked as the client
//! needs).

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWrite;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::ReadHalf;

use super::conn::CHUNK;
use super::http::{self, Chunked, Framing, Request, Response};
use super::outbound::header;

/// Largest response head ferry takes from an app.
const MAX_RESPONSE_HEAD: usize = 64 << 10;

/// A short plain-text answer from ferry itself.
pub(super) fn plain(status: u16, text: &str, keep_alive: bool, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(160 + text.len());
    let _ = std::io::Write::write_fmt(
        &mut out,
        format_args!(
            "HTTP/1.1 {status} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n",
            reason_phrase(status),
            text.len() + 1
        ),
    );
    for (name, value) in extra {
        header(&mut out, name.as_bytes(), value.as_bytes());
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(text.as_bytes());
    out.push(b'\n');
    out
}

pub(super) fn reason_phrase(status: u16) -> &'static str {
    hyper::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("")
}

/// An answer of ferry's own to a HEAD request: its head alone, whose `content-length` says
/// what a GET would get (RFC 9110 9.3.2); a body would be read as the next response.
pub(super) fn for_method(mut bytes: Vec<u8>, is_head: bool) -> Vec<u8> {
    if is_head && let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
        bytes.truncate(end + 4);
    }
    bytes
}

pub(super) fn page_bytes(
    status: u16,
    content_type: &str,
    body: &str,
    keep_alive: bool,
    extra: &[(&str, &str)],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(200 + body.len());
    let _ = std::io::Write::write_fmt(
        &mut out,
        format_args!(
            "HTTP/1.1 {status} {}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n",
            reason_phrase(status),
            body.len()
        ),
    );
    for (name, value) in extra {
        header(&mut out, name.as_bytes(), value.as_bytes());
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
    out
}

pub(super) enum ReadFailure {
    /// Nothing came back at all.
    Nothing(String),
    Broken(String),
}

impl ReadFailure {
    pub(super) fn message(self) -> String {
        match self {
            ReadFailure::Nothing(e) | ReadFailure::Broken(e) => e,
        }
    }
}

pub(super) async fn read_response(
    up: &mut ReadHalf<'_>,
    buf: &mut BytesMut,
    is_head: bool,
) -> Result<Response, ReadFailure> {
    let mut any = !buf.is_empty();
    loop {
        if !buf.is_empty() {
            match http::parse_response(buf, is_head) {
                Ok(Some(resp)) => return Ok(resp),
                Ok(None) if buf.len() > MAX_RESPONSE_HEAD => {
                    return Err(ReadFailure::Broken("a response head over 64KB".into()));
                }
                Ok(None) => {}
                Err(e) => return Err(ReadFailure::Broken(e.0.into())),
            }
        }
        buf.reserve(8 << 10);
        match up.read_buf(buf).await {
            Ok(0) if !any => {
                return Err(ReadFailure::Nothing("the app closed the connection".into()));
            }
            Ok(0) => {
                return Err(ReadFailure::Broken(
                    "the app closed the connection mid-response".into(),
                ));
            }
            Ok(_) => any = true,
            Err(e) if !any => return Err(ReadFailure::Nothing(e.to_string())),
            Err(e) => return Err(ReadFailure::Broken(e.to_string())),
        }
    }
}

/// The response head the client gets.
pub(super) fn response_head(
    out: &mut Vec<u8>,
    req: &Request,
    resp: &Response,
    to_client: Framing,
    keep_alive: bool,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    let _ = std::io::Write::write_fmt(out, format_args!("{} ", resp.code));
    out.extend_from_slice(resp.reason());
    out.extend_from_slice(b"\r\n");
    let no_body = req.is_head() || resp.code == 304;
    for (name, value) in resp.head.headers() {
        let framing_header = name.eq_ignore_ascii_case(b"content-length")
            || name.eq_ignore_ascii_case(b"transfer-encoding");
        if framing_header && no_body {
            // what a GET would have got
            header(out, name, value);
            continue;
        }
        if resp.code == 101
            && (name.eq_ignore_ascii_case(b"upgrade") || name.eq_ignore_ascii_case(b"connection"))
        {
            header(out, name, value);
            continue;
        }
        if http::is_hop_by_hop(&resp.head, name) {
            continue;
        }
        if name.eq_ignore_ascii_case(b"set-cookie") && super::cookies::is_ferry_cookie(value) {
            continue;
        }
        header(out, name, value);
    }
    if resp.code == 101 {
        out.extend_from_slice(b"\r\n");
        return;
    }
    if !no_body && resp.code != 204 && resp.code >= 200 {
        match to_client {
            Framing::Empty => out.extend_from_slice(b"content-length: 0\r\n"),
            Framing::Length(n) => {
                let _ = std::io::Write::write_fmt(out, format_args!("content-length: {n}\r\n"));
            }
            Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
            Framing::Close => {}
        }
    }
    if resp.code >= 200 {
        if !keep_alive {
            out.extend_from_slice(b"connection: close\r\n");
        } else if req.version == 0 {
            out.extend_from_slice(b"connection: keep-alive\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// Passes the response body from the app to the client, starting with `out` (the head);
/// `Ok`: the body bytes sent, all of it; `Err`: what was sent before it broke off.
#[allow(clippy::too_many_arguments)]
pub(super) async fn relay_body(
    up: &mut ReadHalf<'_>,
    upbuf: &mut BytesMut,
    client: &mut (impl AsyncWrite + Unpin),
    mut out: Vec<u8>,
    from: Framing,
    to: Framing,
    limit: u64,
    idle: Duration,
) -> Result<u64, u64> {
    let mut sent = 0u64;
    let mut chunked = Chunked::default();
    let mut left = match from {
        Framing::Length(n) => n,
        _ => 0,
    };
    loop {
        // what is buffered now, as the client gets it
        let finished = match from {
            Framing::Empty => true,
            Framing::Length(_) => {
                let n = (left as usize).min(upbuf.len());
                out.extend_from_slice(&upbuf.split_to(n));
                left -= n as u64;
                sent += n as u64;
                left == 0
            }
            Framing::Chunked => {
                let mut data = Vec::new();
                let used = match chunked.feed(upbuf, |r| data.push(r)) {
                    Ok(used) => used,
                    Err(_) => {
                        let _ = client.write_all(&out).await;
                        return Err(sent);
                    }
                };
                let part = upbuf.split_to(used);
                if to == Framing::Chunked {
                    out.extend_from_slice(&part);
                }
                for r in data {
                    sent += r.len() as u64;
                    if to != Framing::Chunked {
                        out.extend_from_slice(&part[r]);
                    }
                }
                chunked.done()
            }
            Framing::Close => {
                let part = upbuf.split();
                if !part.is_empty() {
                    sent += part.len() as u64;
                    if to == Framing::Chunked {
                        let _ = std::io::Write::write_fmt(
                            &mut out,
                            format_args!("{:x}\r\n", part.len()),
                        );
                        out.extend_from_slice(&part);
                        out.extend_from_slice(b"\r\n");
                    } else {
                        out.extend_from_slice(&part);
                    }
                }
                false
            }
        };
        if sent > limit {
            return Err(sent);
        }
        if !out.is_empty() {
            if client.write_all(&out).await.is_err() {
                return Err(sent);
            }
            out.clear();
        }
        if finished {
            return Ok(sent);
        }
        upbuf.reserve(CHUNK);
        match tokio::time::timeout(idle, up.read_buf(upbuf)).await {
            Ok(Ok(0)) if from == Framing::Close => {
                if to == Framing::Chunked && client.write_all(b"0\r\n\r\n").await.is_err() {
                    return Err(sent);
                }
                return Ok(sent);
            }
            Ok(Ok(n)) if n > 0 => {}
            _ => return Err(sent),
        }
    }
}

//! The request as the app gets it: its head, written from the client's bytes with the
//! forwarding headers, and its body, copied from the client as it comes.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncRead;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::conn::{CHUNK, Failure};
use super::http::{self, Chunked, Framing, Reject, Request};
use crate::config::ProxySettings;

/// The request id the client sent, when it is a sane one.
pub(super) fn request_id_of(req: &Request) -> Option<String> {
    let v = req.head.get("x-request-id")?;
    (!v.is_empty() && v.len() <= 200 && v.iter().all(|b| b.is_ascii_graphic()))
        .then(|| String::from_utf8_lossy(v).into_owned())
}

/// A new request id: unique per process run and across runs.
pub(super) fn new_request_id() -> String {
    use std::sync::OnceLock;
    use std::sync::atomic::AtomicU64;
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| {
        let mut b = [0u8; 8];
        let _ = getrandom::fill(&mut b);
        u64::from_le_bytes(b)
    });
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&prefix.to_be_bytes());
    id[8..].copy_from_slice(&NEXT.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    hex::encode(id)
}

/// The target as the app gets it and the host it is for: an absolute-form target
/// (`http://host/path`) becomes `/path` with its host.
pub(super) fn origin_form(req: &Request) -> Result<(&[u8], Option<&[u8]>), Reject> {
    let target = req.target();
    if target.first() == Some(&b'/') || target == b"*" {
        return Ok((target, None));
    }
    let rest = if target.len() > 7 && target[..7].eq_ignore_ascii_case(b"http://") {
        &target[7..]
    } else if target.len() > 8 && target[..8].eq_ignore_ascii_case(b"https://") {
        &target[8..]
    } else if req.method() == b"CONNECT" {
        return Err(Reject::NotImplemented("CONNECT is not served"));
    } else {
        return Err(Reject::Bad("an invalid request target"));
    };
    let end = rest
        .iter()
        .position(|b| matches!(b, b'/' | b'?'))
        .unwrap_or(rest.len());
    let (host, path) = rest.split_at(end);
    if host.is_empty() || host.contains(&b'@') {
        return Err(Reject::Bad("an invalid request target"));
    }
    let path: &[u8] = if path.is_empty() { b"/" } else { path };
    if path[0] == b'?' {
        // `http://host?q` is `/?q`; rare enough to answer plainly
        return Err(Reject::Bad("an absolute target needs a path"));
    }
    Ok((path, Some(host)))
}

/// `target` with `prefix` taken off its path (`/api/x?q` → `/x?q`, `/api` → `/`); the
/// router has matched it segment-wise.
pub(super) fn strip_prefix<'a>(target: &'a [u8], prefix: &str) -> std::borrow::Cow<'a, [u8]> {
    let rest = target.get(prefix.len()..).unwrap_or_default();
    if rest.first() == Some(&b'/') {
        std::borrow::Cow::Borrowed(rest)
    } else {
        let mut t = Vec::with_capacity(rest.len() + 1);
        t.push(b'/');
        t.extend_from_slice(rest);
        std::borrow::Cow::Owned(t)
    }
}

/// Writes the request head the app gets into `out`: the app is told the client's scheme
/// and, routed by a path prefix, the prefix taken off (`X-Forwarded-Prefix`).
pub(super) fn upstream_head(
    out: &mut Vec<u8>,
    req: &Request,
    target: &[u8],
    host: &[u8],
    client_ip: &str,
    request_id: Option<&str>,
    (scheme, prefix): (&str, Option<&str>),
) {
    out.extend_from_slice(req.method());
    out.push(b' ');
    out.extend_from_slice(target);
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(host);
    out.extend_from_slice(b"\r\n");
    let mut forwarded_for: Option<&[u8]> = None;
    let mut via: Option<&[u8]> = None;
    for (name, value) in req.head.headers() {
        if http::is_hop_by_hop(&req.head, name)
            || name.eq_ignore_ascii_case(b"host")
            || name.eq_ignore_ascii_case(b"expect")
            || name.eq_ignore_ascii_case(b"x-forwarded-proto")
            || name.eq_ignore_ascii_case(b"x-forwarded-host")
            || name.eq_ignore_ascii_case(b"x-forwarded-prefix")
        {
            continue;
        }
        if name.eq_ignore_ascii_case(b"x-forwarded-for") {
            forwarded_for = Some(value);
            continue;
        }
        if name.eq_ignore_ascii_case(b"via") {
            via = Some(value);
            continue;
        }
        if name.eq_ignore_ascii_case(b"x-request-id") && request_id.is_some() {
            continue;
        }
        if name.eq_ignore_ascii_case(b"cookie") {
            let kept = super::cookies::without_ferry_cookies(value);
            if kept.is_empty() {
                continue;
            }
            header(out, name, &kept);
            continue;
        }
        header(out, name, value);
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    if let Some(prior) = forwarded_for {
        out.extend_from_slice(prior);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(client_ip.as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(b"x-forwarded-proto: ");
    out.extend_from_slice(scheme.as_bytes());
    if let Some(prefix) = prefix {
        out.extend_from_slice(b"\r\nx-forwarded-prefix: ");
        out.extend_from_slice(prefix.as_bytes());
    }
    out.extend_from_slice(b"\r\nx-forwarded-host: ");
    out.extend_from_slice(host);
    out.extend_from_slice(b"\r\nvia: ");
    if let Some(prior) = via {
        out.extend_from_slice(prior);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(if req.version == 0 {
        b"1.0 ferry\r\n"
    } else {
        b"1.1 ferry\r\n"
    });
    if let Some(id) = request_id {
        header(out, b"x-request-id", id.as_bytes());
    }
    match req.framing {
        Framing::Length(n) => {
            let _ = std::io::Write::write_fmt(out, format_args!("content-length: {n}\r\n"));
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Empty | Framing::Close => {}
    }
    if req.upgrade {
        out.extend_from_slice(b"connection: upgrade\r\n");
        if let Some(up) = req.head.get("upgrade") {
            header(out, b"upgrade", up);
        }
    }
    out.extend_from_slice(b"\r\n");
}

pub(super) fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Copies the rest of the request body from the client to the app.
pub(super) async fn send_body(
    settings: &ProxySettings,
    client: &mut (impl AsyncRead + Unpin),
    buf: &mut BytesMut,
    up: &mut tokio::net::tcp::WriteHalf<'_>,
    framing: Framing,
    left: &mut u64,
) -> Result<(), Failure> {
    let idle = settings.connections.header_timeout;
    match framing {
        Framing::Empty | Framing::Close => Ok(()),
        Framing::Length(_) => {
            while *left > 0 {
                if buf.is_empty() {
                    read_some(client, buf, idle).await?;
                }
                let n = (*left as usize).min(buf.len());
                let part = buf.split_to(n);
                up.write_all(&part)
                    .await
                    .map_err(|e| Failure::Upstream(e.to_string()))?;
                *left -= n as u64;
            }
            Ok(())
        }
        Framing::Chunked => {
            let mut chunked = Chunked::default();
            let mut data = 0u64;
            let max = settings.max_request_body.unwrap_or(u64::MAX);
            loop {
                if !buf.is_empty() {
                    let used = chunked
                        .feed(buf, |r| data += r.len() as u64)
                        .map_err(|_| Failure::Client)?;
                    if data > max {
                        return Err(Failure::TooLarge);
                    }
                    let part = buf.split_to(used);
                    up.write_all(&part)
                        .await
                        .map_err(|e| Failure::Upstream(e.to_string()))?;
                    if chunked.done() {
                        return Ok(());
                    }
                }
                read_some(client, buf, idle).await?;
            }
        }
    }
}

pub(super) async fn read_some(
    client: &mut (impl AsyncRead + Unpin),
    buf: &mut BytesMut,
    idle: Duration,
) -> Result<(), Failure> {
    buf.reserve(CHUNK);
    match tokio::time::timeout(idle, client.read_buf(buf)).await {
        Ok(Ok(n)) if n > 0 => Ok(()),
        _ => Err(Failure::Client),
    }
}

//! Everything HTTP/1.1 clients rely on passes through ferry's proxy (issue 15, item 2) and
//! its upstream pool is shared and bounded (issue 22): each test runs a real `ferry serve`
//! deploying the sample app, and speaks to the environment's proxy over raw TCP where the
//! shape on the wire is what matters. The sample app's `/seen` lists every request it got,
//! so a test can tell that a rejected request never reached it.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use sha2::Digest;
use support::{GOOD, Options, Rel, Sandbox};

/// How long a read may block before the test gives up: a guard against hanging forever when
/// the proxy holds back what it should pass on, never a measure of speed.
const STUCK: Duration = Duration::from_secs(20);

/// A sandbox with `releases`, `opts`, serving and with the first release deployed to staging.
fn deployed(releases: &[Rel], opts: Options) -> Sandbox {
    let mut s = Sandbox::with(releases, opts);
    s.serve();
    s.deploy_ok("staging", releases[0].0);
    s
}

fn staging() -> Sandbox {
    deployed(&[Rel("v1.0.0", GOOD)], Options::default())
}

/// `host:port` of the environment's proxy.
fn addr(s: &Sandbox) -> String {
    s.url("staging").trim_start_matches("http://").to_string()
}

fn connect(s: &Sandbox) -> TcpStream {
    let c = TcpStream::connect(addr(s)).unwrap();
    c.set_read_timeout(Some(STUCK)).unwrap();
    c
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// One response read off the wire.
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Headers,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
}

/// Header names (lower-case) and values, in order.
type Headers = Vec<(String, String)>;

/// Reads a status line and headers; `None` when the connection closed before any byte.
fn read_head(r: &mut impl BufRead) -> Option<(u16, Headers)> {
    let mut line = String::new();
    if r.read_line(&mut line).expect("reading a status line") == 0 {
        return None;
    }
    let mut parts = line.trim_end().splitn(3, ' ');
    parts.next();
    let status = parts
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a status line: {line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).expect("reading a header");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').expect("a header line");
        headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
    }
    Some((status, headers))
}

/// Reads one whole response (framed by its length, chunks or the connection's end); `head`
/// for the answer to a HEAD request. Panics when the connection closes before an answer.
fn read_response(r: &mut impl BufRead, head: bool) -> Resp {
    let (status, headers) = read_head(r).expect("an answer, not a closed connection");
    let get = |n: &str| headers.iter().find(|(h, _)| h == n).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    if head || status < 200 || status == 204 || status == 304 {
    } else if get("transfer-encoding").is_some_and(|te| te.contains("chunked")) {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).unwrap();
            let size = usize::from_str_radix(size.trim().split(';').next().unwrap(), 16)
                .unwrap_or_else(|_| panic!("bad chunk size {size:?}"));
            let mut chunk = vec![0; size + 2];
            r.read_exact(&mut chunk).unwrap();
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(len) = get("content-length") {
        body.resize(len.parse().unwrap(), 0);
        r.read_exact(&mut body).unwrap();
    } else {
        r.read_to_end(&mut body).unwrap();
    }
    Resp {
        status,
        headers,
        body,
    }
}

#[test]
fn server_sent_events_arrive_before_the_response_ends() {
    let s = staging();
    // the second event comes ten minutes later: the first must pass on its own
    let mut c = connect(&s);
    c.write_all(b"GET /sse?n=2&gap_ms=600000 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0; 4096];
    while !String::from_utf8_lossy(&got).contains("data: 0\n\n") {
        match c.read(&mut buf) {
            Ok(0) => panic!(
                "the response ended before its second event:\n{}",
                String::from_utf8_lossy(&got)
            ),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!(
                "the first event was held back ({e}); got:\n{}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(text.contains("content-type: text/event-stream"), "{text}");
    assert!(!text.contains("data: 1"), "{text}");
    drop(c);
    // and a whole stream arrives in order
    let body = client()
        .get(format!("{}/sse?n=5&gap_ms=20", s.url("staging")))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert_eq!(
        body,
        "data: 0\n\ndata: 1\n\ndata: 2\n\ndata: 3\n\ndata: 4\n\n"
    );
}

/// Samples `pid`'s resident memory (KiB) every 20 ms until `done`; the highest seen.
fn peak_rss(pid: u32, done: &std::sync::atomic::AtomicBool) -> u64 {
    let mut peak = 0;
    while !done.load(std::sync::atomic::Ordering::SeqCst) {
        peak = peak.max(rss(pid));
        std::thread::sleep(Duration::from_millis(20));
    }
    peak
}

fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

const MIB: usize = 1 << 20;

/// `len` bytes to upload: a pseudo-random MiB, repeated.
struct Upload {
    mib: std::sync::Arc<Vec<u8>>,
    at: usize,
    len: usize,
}

impl Upload {
    fn new(len: usize) -> Upload {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mib = (0..MIB)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        Upload {
            mib: std::sync::Arc::new(mib),
            at: 0,
            len,
        }
    }
}

impl Read for Upload {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let from = self.at % MIB;
        let n = buf.len().min(MIB - from).min(self.len - self.at);
        buf[..n].copy_from_slice(&self.mib[from..from + n]);
        self.at += n;
        Ok(n)
    }
}

/// The SHA-256 (hex) of everything `r` reads, and how many bytes that was.
fn sha256_of(mut r: impl Read) -> (String, u64) {
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0; 64 * 1024];
    let mut total = 0;
    loop {
        let n = r.read(&mut buf).unwrap();
        if n == 0 {
            return (hex::encode(hasher.finalize()), total);
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
}

#[test]
fn a_50mb_upload_and_a_100mb_download_stream_through_in_bounded_memory() {
    const UP: u64 = 50 << 20;
    const DOWN_MB: u64 = 100;
    let s = staging();
    let pid = s.serve_pid().unwrap();
    let before = rss(pid);
    let done = std::sync::atomic::AtomicBool::new(false);
    let peak = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| peak_rss(pid, &done));
        // upload: the app answers the SHA-256 and length of what it received
        let (expected, _) = sha256_of(Upload::new(UP as usize));
        let resp = client()
            .post(format!("{}/upload", s.url("staging")))
            .body(reqwest::blocking::Body::sized(Upload::new(UP as usize), UP))
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().unwrap(), format!("{expected} {UP}\n"));

        // download: a known stream, hashed as it arrives
        let resp = client()
            .get(format!("{}/download?mb={DOWN_MB}", s.url("staging")))
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200);
        let (got, n) = sha256_of(resp);
        assert_eq!(n, DOWN_MB << 20);
        let mut want = sha2::Sha256::new();
        let block = ferry::sample_app::download_block();
        for _ in 0..DOWN_MB * 16 {
            want.update(&block);
        }
        assert_eq!(got, hex::encode(want.finalize()));
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        sampler.join().unwrap()
    });
    let grown_kib = peak.saturating_sub(before);
    assert!(
        grown_kib < 20 * 1024,
        "serve's RSS grew by {grown_kib} KiB ({before} → {peak})"
    );
}

#[test]
fn expect_100_continue_is_answered_before_the_body_is_sent() {
    let s = staging();
    let mut c = connect(&s);
    c.write_all(
        b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    let (status, _) = read_head(&mut r).expect("an interim answer");
    assert_eq!(
        status, 100,
        "the client waits for 100 Continue before its body"
    );
    c.write_all(b"hello world").unwrap();
    let resp = read_response(&mut r, false);
    assert_eq!(resp.status, 200);
    let want = hex::encode(sha2::Sha256::digest(b"hello world"));
    assert_eq!(resp.text(), format!("{want} 11\n"));
}

#[test]
fn head_204_and_304_answers_have_no_body() {
    let s = staging();
    let c = connect(&s);
    let mut w = c.try_clone().unwrap();
    let mut r = BufReader::new(c);
    // one connection: a body sent where none belongs would be read as the next status line
    w.write_all(b"HEAD /download?mb=1 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let resp = read_response(&mut r, true);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-length"), Some("1048576"));
    for code in [204, 304] {
        w.write_all(format!("GET /status/{code} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .unwrap();
        let resp = read_response(&mut r, false);
        assert_eq!(resp.status, code);
    }
    w.write_all(b"GET /version HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let resp = read_response(&mut r, false);
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.json()["version"], "v1.0.0");
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let s = staging();
    let c = connect(&s);
    let mut w = c.try_clone().unwrap();
    let mut r = BufReader::new(c);
    w.write_all(
        b"GET /request?n=1 HTTP/1.1\r\nHost: t\r\n\r\n\
          POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello\
          GET /request?n=3 HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .unwrap();
    assert_eq!(read_response(&mut r, false).json()["uri"], "/request?n=1");
    let want = hex::encode(sha2::Sha256::digest(b"hello"));
    assert_eq!(read_response(&mut r, false).text(), format!("{want} 5\n"));
    assert_eq!(read_response(&mut r, false).json()["uri"], "/request?n=3");
}

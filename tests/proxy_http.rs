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
use support::{GOOD, Options, Rel, Sandbox, eventually};

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
    crate::support::blocking_http()
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

/// Writes `request` on a new connection and reads one response.
fn raw(s: &Sandbox, request: &[u8]) -> Resp {
    let mut c = connect(s);
    c.write_all(request).unwrap();
    read_response(&mut BufReader::new(c), request.starts_with(b"HEAD"))
}

/// The targets of every request the app received.
fn seen(s: &Sandbox) -> Vec<String> {
    let resp = raw(
        s,
        b"GET /seen HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    serde_json::from_slice(&resp.body).unwrap()
}

/// What the app received for `request` (sent to `/request`): its headers by lower-case name.
fn as_received(s: &Sandbox, request: &str) -> (serde_json::Value, Headers) {
    let resp = raw(s, request.as_bytes());
    assert_eq!(resp.status, 200, "{}", resp.text());
    let json = resp.json();
    let headers = json["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pair| {
            (
                pair[0].as_str().unwrap().to_string(),
                pair[1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    (json, headers)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// A WebSocket to the sample app's `/ws` through the proxy, and the version it greets with.
fn websocket(s: &Sandbox) -> (tungstenite::WebSocket<TcpStream>, String) {
    let url = format!("ws://{}/ws", addr(s));
    let (mut ws, resp) = tungstenite::client(url.as_str(), connect(s)).expect("the handshake");
    assert_eq!(resp.status(), 101);
    let greeting = ws.read().expect("the greeting");
    (ws, greeting.into_text().unwrap().to_string())
}

fn echo(ws: &mut tungstenite::WebSocket<TcpStream>, text: &str) {
    ws.send(tungstenite::Message::text(text))
        .unwrap_or_else(|e| panic!("sending {text:?}: {e}"));
    let back = ws
        .read()
        .unwrap_or_else(|e| panic!("reading the echo of {text:?}: {e}"));
    assert_eq!(back.into_text().unwrap().as_str(), text);
}

#[test]
fn websocket_echo_passes_through_and_outlives_a_deploy() {
    let mut s = Sandbox::with(
        &[Rel("v1.0.0", GOOD), Rel("v1.1.0", GOOD)],
        Options::default(),
    );
    // the old instance drains for longer than the test: only its open socket keeps it up
    let text = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(
        &s.config,
        text.replace("drain_timeout = \"5s\"", "drain_timeout = \"60s\""),
    )
    .unwrap();
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    let (mut old, version) = websocket(&s);
    assert_eq!(version, "v1.0.0");
    echo(&mut old, "before the deploy");

    std::thread::scope(|scope| {
        let deploy = scope.spawn(|| s.ferry(&["deploy", "staging", "v1.1.0"]));
        let mut n = 0;
        assert!(
            eventually(Duration::from_secs(60), || {
                n += 1;
                echo(&mut old, &format!("during the deploy {n}"));
                s.serving("staging").0 == "v1.1.0"
            }),
            "the deploy never switched:\n{}",
            s.serve_log()
        );
        // switched: the open socket still reaches the old release, a new one the new release
        echo(&mut old, "after the switch");
        let (mut new, version) = websocket(&s);
        assert_eq!(version, "v1.1.0");
        echo(&mut new, "on the new release");
        echo(&mut old, "still on the old release");
        // the client goes: the old instance's drain can end
        old.close(None).unwrap();
        let _ = old.flush();
        drop(old);
        let run = deploy.join().unwrap();
        assert_eq!(run.code(), 0, "{run}\n{}", s.serve_log());
        echo(&mut new, "after the deploy");
    });
}

#[test]
fn any_upgrade_passes_through() {
    let s = staging();
    let mut c = connect(&s);
    c.write_all(
        b"GET /upgrade HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: ferry-echo/1\r\n\r\n",
    )
    .unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    let (status, headers) = read_head(&mut r).expect("an answer");
    assert_eq!(status, 101, "{headers:?}");
    assert_eq!(header(&headers, "upgrade"), Some("ferry-echo/1"));
    for word in ["ping", "raw bytes \0\x01\x7f both ways"] {
        c.write_all(word.as_bytes()).unwrap();
        let mut back = vec![0; word.len()];
        r.read_exact(&mut back).unwrap();
        assert_eq!(back, word.as_bytes());
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
fn http_1_0_clients_get_answers_they_can_read() {
    let s = staging();
    // no keep-alive unless asked: the answer ends with the connection
    let mut c = connect(&s);
    c.write_all(b"GET /version HTTP/1.0\r\n\r\n").unwrap();
    let mut all = Vec::new();
    c.read_to_end(&mut all)
        .expect("the connection closes after the answer");
    let resp = read_response(&mut &all[..], false);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["version"], "v1.0.0");

    // a streamed answer of unknown length: no chunked framing, the end is the connection's
    let mut c = connect(&s);
    c.write_all(b"GET /sse?n=3&gap_ms=10 HTTP/1.0\r\n\r\n")
        .unwrap();
    let mut all = Vec::new();
    c.read_to_end(&mut all)
        .expect("the connection closes after the answer");
    let resp = read_response(&mut &all[..], false);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("transfer-encoding"), None, "{resp:?}");
    assert_eq!(resp.text(), "data: 0\n\ndata: 1\n\ndata: 2\n\n");

    // asked for keep-alive: a second request on the same connection
    let c = connect(&s);
    let mut w = c.try_clone().unwrap();
    let mut r = BufReader::new(c);
    for _ in 0..2 {
        w.write_all(b"GET /version HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap();
        let resp = read_response(&mut r, false);
        assert_eq!(resp.status, 200);
        assert_eq!(resp.json()["version"], "v1.0.0");
    }
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

#[test]
fn request_smuggling_shapes_are_refused_and_never_reach_the_app() {
    let s = staging();
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n";
    // (shape, request, the answer): 400, but 501 for a coding before a final chunked (gzip),
    // which ferry does not pass on (README, "The proxy")
    let shapes: &[(&str, String, u16)] = &[
        (
            "Content-Length and Transfer-Encoding",
            format!(
                "POST /smuggle-cl-te HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            400,
        ),
        (
            "Transfer-Encoding and Content-Length",
            format!(
                "POST /smuggle-te-cl HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            400,
        ),
        (
            "two differing Content-Length",
            format!(
                "POST /smuggle-cl-cl HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nContent-Length: 36\r\n\r\n{smuggled}"
            ),
            400,
        ),
        (
            "a Content-Length list",
            format!(
                "POST /smuggle-cl-list HTTP/1.1\r\nHost: t\r\nContent-Length: 0, 36\r\n\r\n{smuggled}"
            ),
            400,
        ),
        (
            "a signed Content-Length",
            format!(
                "POST /smuggle-cl-plus HTTP/1.1\r\nHost: t\r\nContent-Length: +36\r\n\r\n{smuggled}"
            ),
            400,
        ),
        (
            "a Content-Length that is not a number",
            format!(
                "POST /smuggle-cl-nan HTTP/1.1\r\nHost: t\r\nContent-Length: 3x\r\n\r\n{smuggled}"
            ),
            400,
        ),
        (
            "a negative Content-Length",
            format!(
                "POST /smuggle-cl-neg HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n{smuggled}"
            ),
            400,
        ),
        (
            "an obs-fold continuation line",
            "GET /smuggle-fold HTTP/1.1\r\nHost: t\r\nX-Folded: a\r\n b\r\n\r\n".to_string(),
            400,
        ),
        (
            "a folded Transfer-Encoding",
            format!(
                "POST /smuggle-fold-te HTTP/1.1\r\nHost: t\r\nContent-Length: 36\r\nTransfer-Encoding:\r\n chunked\r\n\r\n{smuggled}"
            ),
            400,
        ),
        (
            "a NUL in a header value",
            "GET /smuggle-nul HTTP/1.1\r\nHost: t\r\nX-Nul: a\0b\r\n\r\n".to_string(),
            400,
        ),
        (
            "a space before the colon",
            format!(
                "POST /smuggle-space HTTP/1.1\r\nHost: t\r\nContent-Length: 36\r\nTransfer-Encoding : chunked\r\n\r\n{smuggled}"
            ),
            400,
        ),
        (
            "a control byte in a header name",
            "GET /smuggle-name HTTP/1.1\r\nHost: t\r\nX-B\x01d: 1\r\n\r\n".to_string(),
            400,
        ),
        (
            "chunked, then identity",
            format!(
                "POST /smuggle-te-identity HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            400,
        ),
        (
            "chunked twice",
            format!(
                "POST /smuggle-te-twice HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            400,
        ),
        (
            "gzip, then chunked",
            format!(
                "POST /smuggle-te-gzip HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            501,
        ),
        (
            "an unknown transfer coding",
            format!(
                "POST /smuggle-te-x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            400,
        ),
    ];
    let mut failures = Vec::new();
    for (name, request, want) in shapes {
        let mut c = connect(&s);
        c.write_all(request.as_bytes()).unwrap();
        let mut r = BufReader::new(c);
        match read_head(&mut r) {
            Some((status, _)) if status == *want => {}
            Some((status, _)) => failures.push(format!("{name}: answered {status}, not {want}")),
            None => failures.push(format!("{name}: closed without an answer")),
        }
    }
    let reached: Vec<String> = seen(&s)
        .into_iter()
        .filter(|t| t.contains("smuggle"))
        .collect();
    assert!(
        failures.is_empty() && reached.is_empty(),
        "not refused: {failures:#?}\nreached the app: {reached:?}"
    );
}

#[test]
fn a_hanging_upstream_is_answered_504_and_a_broken_one_502() {
    let s = deployed(
        &[Rel("v1.0.0", GOOD)],
        Options {
            tables: "[proxy]\nupstream_timeout = \"1s\"\n",
            ..Options::default()
        },
    );
    let get = |path: &str| {
        client()
            .get(format!("{}{path}", s.url("staging")))
            .send()
            .unwrap_or_else(|e| panic!("{path}: no answer: {e}"))
            .status()
            .as_u16()
    };
    assert_eq!(get("/hang"), 504);
    // the app drops the connection without an answer
    assert_eq!(get("/abort"), 502);
    assert_eq!(get("/version"), 200, "the app still serves");
}

#[test]
fn forwarded_headers_via_and_request_ids() {
    let s = staging();
    let host = addr(&s);
    // none sent: the proxy says who asked, how, for which host, and names the request
    let plain = format!("GET /request HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let (_, first) = as_received(&s, &plain);
    assert_eq!(header(&first, "x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(header(&first, "x-forwarded-proto"), Some("http"));
    assert_eq!(header(&first, "x-forwarded-host"), Some(host.as_str()));
    let via = header(&first, "via").expect("a Via header");
    assert!(via.starts_with("1.1 "), "{via}");
    let id = header(&first, "x-request-id").expect("a generated request id");
    assert!(id.len() >= 16, "{id}");
    let (_, second) = as_received(&s, &plain);
    assert_ne!(
        header(&second, "x-request-id"),
        Some(id),
        "one id per request"
    );

    // sent: the chain is extended, the id kept, the scheme is the proxy's own
    let (_, sent) = as_received(
        &s,
        &format!(
            "GET /request HTTP/1.1\r\nHost: {host}\r\nX-Forwarded-For: 203.0.113.7\r\n\
             X-Forwarded-Proto: https\r\nVia: 1.0 fred\r\nX-Request-Id: req-42-abc\r\n\r\n"
        ),
    );
    assert_eq!(
        header(&sent, "x-forwarded-for"),
        Some("203.0.113.7, 127.0.0.1")
    );
    assert_eq!(header(&sent, "x-forwarded-proto"), Some("http"));
    let via = header(&sent, "via").unwrap();
    assert!(via.starts_with("1.0 fred, 1.1 "), "{via}");
    assert_eq!(header(&sent, "x-request-id"), Some("req-42-abc"));
}

#[test]
fn hop_by_hop_headers_do_not_reach_the_app() {
    let s = staging();
    let (_, got) = as_received(
        &s,
        "GET /request HTTP/1.1\r\nHost: t\r\nConnection: keep-alive, X-Hop-Secret\r\n\
         X-Hop-Secret: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nTrailer: X-Sum\r\n\
         Upgrade: h2c\r\nProxy-Authorization: Basic dXNlcjpwYXNz\r\nX-End-To-End: kept\r\n\r\n",
    );
    let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    for hop in [
        "x-hop-secret",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
    ] {
        assert!(!names.contains(&hop), "{hop} reached the app: {got:?}");
    }
    // the proxy's own connection to the app may say keep-alive, never the client's tokens
    if let Some(connection) = header(&got, "connection") {
        assert!(
            !connection.to_ascii_lowercase().contains("x-hop-secret"),
            "{connection}"
        );
    }
    assert_eq!(header(&got, "x-end-to-end"), Some("kept"));
}

#[test]
fn a_body_over_max_request_body_is_answered_413() {
    let s = deployed(
        &[Rel("v1.0.0", GOOD)],
        Options {
            tables: "[proxy]\nmax_request_body = \"1MB\"\n",
            ..Options::default()
        },
    );
    // declared too long: answered before the body is sent
    let resp = raw(
        &s,
        b"POST /upload?declared HTTP/1.1\r\nHost: t\r\nContent-Length: 2097152\r\n\r\n",
    );
    assert_eq!(resp.status, 413);
    // chunked, too long once read
    let mut c = connect(&s);
    c.write_all(b"POST /upload?chunked HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    let mut w = c.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = format!("10000\r\n{}\r\n", "x".repeat(0x10000));
        for _ in 0..32 {
            if w.write_all(chunk.as_bytes()).is_err() {
                return;
            }
        }
        let _ = w.write_all(b"0\r\n\r\n");
    });
    let resp = read_response(&mut BufReader::new(c), false);
    assert_eq!(resp.status, 413);
    writer.join().unwrap();
    // under the limit passes
    let resp = client()
        .post(format!("{}/upload", s.url("staging")))
        .body(vec![b'y'; 500_000])
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(!seen(&s).iter().any(|t| t == "/upload?declared"));
}

#[test]
fn a_response_over_max_response_body_is_not_passed_on() {
    let s = deployed(
        &[Rel("v1.0.0", GOOD)],
        Options {
            tables: "[proxy]\nmax_response_body = \"1MB\"\n",
            ..Options::default()
        },
    );
    let resp = raw(
        &s,
        b"GET /download?mb=2 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(resp.status, 502, "{:?}", resp.headers);
    assert!(resp.body.len() < 1 << 20);
    assert_eq!(s.serving("staging").0, "v1.0.0", "small answers pass");
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_header_timeout() {
    let s = deployed(
        &[Rel("v1.0.0", GOOD)],
        Options {
            tables: "[proxy]\nheader_timeout = \"1s\"\n",
            ..Options::default()
        },
    );
    let c = connect(&s);
    let mut w = c.try_clone().unwrap();
    let mut r = BufReader::new(c);
    w.write_all(b"GET /version HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut r, false).status, 200);
    // no next request: the proxy closes the connection (well before the read guard)
    let mut rest = Vec::new();
    r.read_to_end(&mut rest)
        .expect("the proxy closes an idle keep-alive connection");
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
}

#[test]
fn headers_over_the_limit_are_answered_431_without_reaching_the_app() {
    let s = staging();
    // the default limit is 32 KB in all
    let big = |path: &str, n: usize| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
            "b".repeat(n)
        )
    };
    assert_eq!(
        raw(&s, big("/headers?small", 16_000).as_bytes()).status,
        200
    );
    let mut c = connect(&s);
    c.write_all(b"GET /headers?many HTTP/1.1\r\nHost: t\r\n")
        .unwrap();
    for i in 0..400 {
        c.write_all(format!("X-Many-{i}: {}\r\n", "m".repeat(100)).as_bytes())
            .unwrap();
    }
    c.write_all(b"\r\n").unwrap();
    assert_eq!(read_response(&mut BufReader::new(c), false).status, 431);
    assert_eq!(raw(&s, big("/headers?big", 40_000).as_bytes()).status, 431);
    let seen = seen(&s);
    assert!(seen.iter().any(|t| t == "/headers?small"), "{seen:?}");
    assert!(
        !seen
            .iter()
            .any(|t| t == "/headers?big" || t == "/headers?many"),
        "{seen:?}"
    );
}

#[test]
fn an_absolute_form_request_reaches_the_app_in_origin_form() {
    let s = staging();
    let (json, headers) = as_received(
        &s,
        "GET http://example.test/request?abs=1 HTTP/1.1\r\nHost: other.test\r\n\r\n",
    );
    assert_eq!(json["uri"], "/request?abs=1");
    assert_eq!(header(&headers, "host"), Some("example.test"));
}

/// Lets this test process open `n` descriptors; `ferry serve` inherits the limit.
fn allow_open_files(n: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft >= n {
        return;
    }
    setrlimit(Resource::RLIMIT_NOFILE, n, hard.max(n))
        .unwrap_or_else(|e| panic!("this test needs {n} open files (soft {soft}): {e}"));
}

/// The sample app's `/conns`, through the proxy.
fn conns(s: &Sandbox) -> serde_json::Value {
    let resp = raw(
        s,
        b"GET /conns HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    resp.json()
}

#[test]
fn idle_keep_alive_clients_hold_no_upstream_connection() {
    const CLIENTS: usize = 2000;
    const KEEPALIVE: u64 = 8;
    allow_open_files(3 * CLIENTS as u64 + 1024);
    let mut s = Sandbox::with(
        &[Rel("v1.0.0", GOOD)],
        Options {
            // idle clients stay connected for longer than the test
            tables: "[proxy]\nupstream_keepalive = 8\nmax_connections = 5000\n\
                     max_connections_per_client = 5000\nheader_timeout = \"5m\"\n",
            ..Options::default()
        },
    );
    s.serve_open_files = Some(3 * CLIENTS as u64 + 1024);
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    // 2,000 clients, 16 at a time, each making one request and then staying connected
    let idle: Vec<TcpStream> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..16)
            .map(|_| {
                scope.spawn(|| {
                    let clients: Vec<TcpStream> = (0..CLIENTS / 16).map(|_| connect(&s)).collect();
                    for mut c in &clients {
                        c.write_all(b"GET /version HTTP/1.1\r\nHost: t\r\n\r\n")
                            .unwrap();
                    }
                    for c in &clients {
                        let resp = read_response(&mut BufReader::new(c), false);
                        assert_eq!(resp.status, 200, "{}", resp.text());
                    }
                    clients
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    assert_eq!(idle.len(), CLIENTS);
    let mut last = serde_json::Value::Null;
    let bounded = eventually(Duration::from_secs(15), || {
        last = conns(&s);
        last["open"].as_u64().unwrap() <= KEEPALIVE
    });
    assert!(
        bounded,
        "{CLIENTS} idle clients keep app connections open: {last}"
    );
    // they were idle, not gone: each can make its next request
    for mut c in idle.iter().step_by(100) {
        c.write_all(b"GET /version HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let resp = read_response(&mut BufReader::new(c), false);
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
}

#[test]
fn sixty_four_clients_share_an_app_limited_to_eight_connections() {
    const CLIENTS: usize = 64;
    let s = deployed(
        &[Rel(
            "v1.0.0",
            "health_status = 200\nmax_connections = 8\nslow_ms = 20\n",
        )],
        Options {
            tables: "[proxy]\nupstream_max_connections = 8\nupstream_keepalive = 8\n",
            // post-deploy probes would wait for one of the app's 8 connections like any client
            extra_env: "monitor = false",
            ..Options::default()
        },
    );
    let url = s.url("staging");
    // every client stays connected until all are done, as browsers keep their connections
    let all_done = std::sync::Barrier::new(CLIENTS);
    let failures: Vec<String> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..CLIENTS)
            .map(|_| {
                scope.spawn(|| {
                    // one keep-alive client each: it holds its connection to the proxy
                    let client = client();
                    let failures = (0..10)
                        .filter_map(|_| match client.get(format!("{url}/slow")).send() {
                            Ok(r) if r.status() == 200 => None,
                            Ok(r) => Some(format!("answered {}", r.status())),
                            Err(e) => Some(format!("no answer: {e}")),
                        })
                        .collect::<Vec<_>>();
                    all_done.wait();
                    failures
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
}

#[test]
fn the_access_log_has_a_json_line_per_request() {
    let s = deployed(
        &[Rel("v1.0.0", GOOD)],
        Options {
            extra_env: "access_log = true",
            ..Options::default()
        },
    );
    let resp = raw(
        &s,
        b"GET /status/418?from=test HTTP/1.1\r\nHost: t\r\nX-Request-Id: logged-1\r\n\r\n",
    );
    assert_eq!(resp.status, 418);
    let log = s.state_dir().join("environments/staging/logs/access.log");
    let mut line = serde_json::Value::Null;
    let found = eventually(Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines().any(|l| {
            let json: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"));
            let mine = json["request_id"] == "logged-1";
            if mine {
                line = json;
            }
            mine
        })
    });
    assert!(found, "no line for the request in {}", log.display());
    assert!(line["time"].is_string(), "{line}");
    assert_eq!(line["method"], "GET", "{line}");
    assert!(
        line["path"].as_str().unwrap().starts_with("/status/418"),
        "{line}"
    );
    assert_eq!(line["status"], 418, "{line}");
    assert!(line["bytes"].is_u64(), "{line}");
    assert!(line["duration_ms"].is_number(), "{line}");
    assert!(
        line["upstream"]
            .as_str()
            .is_some_and(|u| u.contains("127.0.0.1:")),
        "{line}"
    );
}

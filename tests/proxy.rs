//! What ferry's listeners let through, against a real `ferry serve` and the sample app: the
//! dashboard's session cookie never reaches an app, and a flood of half-open connections on one
//! listener starves neither the API, nor another environment, nor a deploy.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::{GOOD, Options, Rel, Sandbox};

fn client() -> reqwest::blocking::Client {
    crate::support::blocking_http()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Signs in to the dashboard with the local token: the session cookie's `name=value`.
fn sign_in(s: &Sandbox) -> String {
    let resp = client()
        .post(format!("{}/signin", s.api))
        .header("origin", &s.api)
        .form(&[("token", s.token())])
        .send()
        .unwrap();
    let set = resp
        .headers()
        .get("set-cookie")
        .unwrap_or_else(|| panic!("no session cookie: {}", resp.status()))
        .to_str()
        .unwrap()
        .to_string();
    set.split(';').next().unwrap().to_string()
}

#[test]
fn an_app_never_sees_the_dashboard_session_but_sees_its_own_cookies() {
    let mut s = Sandbox::new(&[Rel("v1.0.0", GOOD)]);
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    let session = sign_in(&s);
    let secret = session.split_once('=').unwrap().1.to_string();
    assert!(
        session.starts_with("ferry_session=ferrysession_"),
        "{session}"
    );
    // the same browser visits the app: cookies ignore ports, so it sends the session too
    let echo = |cookie: &str, query: &str| {
        let resp = client()
            .get(format!("{}/headers{query}", s.url("staging")))
            .header("cookie", cookie)
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200);
        let set: Vec<String> = resp
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        (resp.text().unwrap(), set)
    };
    let (seen, _) = echo(&format!("cart=3; {session}; theme=dark"), "");
    assert!(!seen.contains(&secret), "the app saw the session:\n{seen}");
    assert!(seen.contains("cookie: cart=3; theme=dark\n"), "{seen}");
    let (seen, _) = echo(&session, "");
    assert!(
        !seen.contains("cookie:") && !seen.contains(&secret),
        "only ferry's cookie: no Cookie header left\n{seen}"
    );
    // and the app cannot plant a session of its choosing in the browser
    let (_, set) = echo(
        "cart=3",
        "?set_cookie=ferry_session%3Dplanted&set_cookie=cart%3D4",
    );
    assert_eq!(set, ["cart=4"]);
    // the session still works on the dashboard
    let page = client()
        .get(format!("{}/signin", s.api))
        .header("cookie", &session)
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(page.contains("You are signed in as"), "{page}");
}

/// Lets this test process open `n` descriptors (it holds the flood's client ends), raising the
/// hard limit too when it may (root).
fn allow_open_files(n: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft >= n {
        return;
    }
    let hard = hard.max(n);
    setrlimit(Resource::RLIMIT_NOFILE, n, hard)
        .unwrap_or_else(|e| panic!("this test needs {n} open files (soft {soft}): {e}"));
}

/// `n` connections to `addr` that never finish a request: every other one sends half a
/// header, the rest nothing. A connection ferry already closed is kept all the same.
fn half_open(addr: &str, n: usize) -> Vec<TcpStream> {
    let addr = addr.trim_start_matches("http://");
    (0..n)
        .map(|i| {
            let mut c = TcpStream::connect(addr).unwrap();
            if i % 2 == 0 {
                let _ = c.write_all(b"GET / HTTP/1.1\r\nHost: flood\r\nX-Half: ");
            }
            c
        })
        .collect()
}

/// The value of the series `name{labels}` in Prometheus text.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .parse()
        .unwrap()
}

#[test]
fn half_open_floods_starve_neither_the_api_nor_another_environment_nor_a_deploy() {
    const FLOOD: usize = 3000;
    const API_FLOOD: usize = 1000;
    allow_open_files(FLOOD as u64 + API_FLOOD as u64 + 1024);
    let mut s = Sandbox::with(
        &[Rel("v1.0.0", GOOD), Rel("v1.1.0", GOOD)],
        Options {
            envs: &["staging", "production"],
            tables: "[proxy]\nmax_connections = 200\nmax_connections_per_client = 200\n",
            ..Options::default()
        },
    );
    // header timeouts longer than the test: only the connection limits can save ferry here
    let text = std::fs::read_to_string(&s.config).unwrap();
    let text = text.replace("[server]\n", "[server]\nheader_timeout = \"5m\"\n")
        + "header_timeout = \"5m\"\n";
    std::fs::write(&s.config, text).unwrap();
    // fewer descriptors than the flood: without limits it would exhaust them
    s.serve_open_files = Some(2000);
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    s.deploy_ok("production", "v1.0.0");
    let started = Instant::now();

    let flood = half_open(&s.url("staging"), FLOOD);
    let api_flood = half_open(&s.api, API_FLOOD);

    // the API answers, a deploy of the other environment succeeds and its traffic flows
    let (status, _) = s.get("/api/environments").expect("the API answers");
    assert_eq!(status, 200);
    s.deploy_ok("production", "v1.1.0");
    assert_eq!(s.serving("production").0, "v1.1.0");
    for _ in 0..20 {
        assert_eq!(s.serving("production").0, "v1.1.0");
    }
    // a prompt client of the flooded environment still gets in: an idle connection makes room
    assert_eq!(s.serving("staging").0, "v1.0.0");

    let (_, metrics) = s.get("/metrics").expect("metrics");
    let closed = |labels: &str| {
        metric(
            &metrics,
            &format!("ferry_connections_closed_idle_total{{{labels}}}"),
        )
    };
    let staging = "listener=\"proxy\",environment=\"staging\"";
    let production = "listener=\"proxy\",environment=\"production\"";
    assert!(closed(staging) >= (FLOOD - 200) as f64, "{metrics}");
    assert!(
        closed("listener=\"api\"") >= (API_FLOOD - 128) as f64,
        "{metrics}"
    );
    assert_eq!(
        closed(production),
        0.0,
        "another proxy's budget is untouched"
    );
    assert!(metric(&metrics, &format!("ferry_connections_open{{{staging}}}")) <= 200.0);
    // logged once per interval, not once per connection
    let log = s.serve_log();
    let warnings = log.matches("connection limit reached").count() as u64;
    let intervals = started.elapsed().as_secs() / 10 + 1;
    assert!(
        (1..=2 * intervals).contains(&warnings),
        "{warnings} warnings in {intervals} intervals:\n{log}"
    );
    drop((flood, api_flood));
}

#[test]
fn a_header_trickled_slower_than_the_timeout_is_cut() {
    let mut s = Sandbox::with(
        &[Rel("v1.0.0", GOOD)],
        Options {
            tables: "[proxy]\nheader_timeout = \"1s\"\n",
            ..Options::default()
        },
    );
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    let request = format!(
        "GET /version HTTP/1.1\r\nHost: slow\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(40)
    );
    let mut conn = TcpStream::connect(s.url("staging").trim_start_matches("http://")).unwrap();
    conn.set_read_timeout(Some(Duration::from_millis(1)))
        .unwrap();
    let mut sent = 0;
    let mut answer = Vec::new();
    let mut closed = false;
    for byte in request.as_bytes() {
        // one byte every 100 ms: the whole header would take over 6 s
        std::thread::sleep(Duration::from_millis(100));
        if conn.write_all(&[*byte]).is_err() {
            closed = true;
            break;
        }
        sent += 1;
        let mut buf = [0u8; 512];
        match conn.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    assert!(
        closed && sent < request.len(),
        "the connection was not cut ({sent} of {} bytes sent)",
        request.len()
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(!answer.contains(" 200 "), "{answer}");
    let (_, metrics) = s.get("/metrics").expect("metrics");
    assert!(
        metric(
            &metrics,
            "ferry_connections_header_timeouts_total{listener=\"proxy\",environment=\"staging\"}"
        ) >= 1.0,
        "{metrics}"
    );
    // a prompt client is served as ever
    assert_eq!(s.serving("staging").0, "v1.0.0");
}

#[test]
fn clients_that_stay_connected_share_one_app_connection_and_metrics_show_the_pool() {
    let mut s = Sandbox::new(&[Rel("v1.0.0", GOOD)]);
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    let addr = s.url("staging").trim_start_matches("http://").to_string();
    // 20 clients one after another, each keeping its connection open after its request
    let mut held = Vec::new();
    for _ in 0..20 {
        let mut c = TcpStream::connect(&addr).unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: pool\r\n\r\n")
            .unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&seen).contains("v1.0.0") {
            let n = c.read(&mut buf).unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&buf[..n]);
        }
        held.push(c);
    }
    let (_, metrics) = s.get("/metrics").expect("metrics");
    let series = |name: &str, state: Option<&str>| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{environment=\"staging\"")))
            .filter(|l| state.is_none_or(|st| l.contains(&format!("state=\"{st}\""))))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    };
    // sequential requests reuse the one pooled connection, whoever sends them
    assert_eq!(
        series("ferry_upstream_connections_opened_total", None),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        series("ferry_upstream_connections", Some("idle")),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        series("ferry_upstream_connections", Some("busy")),
        0.0,
        "{metrics}"
    );
    assert_eq!(series("ferry_upstream_queue_timeouts_total", None), 0.0);
    drop(held);
}

//! Who may read and do what (issue 14, items 5 and 9): the `Host` header must name ferry,
//! reads need a token unless opened on loopback, tokens carry scopes, the audit keeps the
//! token beside any claimed name, and an approver may be required to differ from the deployer.

mod support;

use std::io::{Read, Write};
use std::time::Duration;

use support::{GOOD, Options, Rel, Sandbox, get, get_with};

/// A raw HTTP/1.1 GET with the given `Host` and headers: status and body.
fn raw_get(api: &str, host: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let addr = api.trim_start_matches("http://");
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    conn.write_all(req.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn port(api: &str) -> u16 {
    api.rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn a_rebinding_host_header_is_refused_while_the_right_ones_work() {
    let mut s = Sandbox::with(
        &[Rel("v1.0.0", GOOD)],
        Options {
            server: "hosts = [\"ferry.example.test\", \"Deploy.Example.Test:8443\"]",
            ..Options::default()
        },
    );
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    let token = s.token();
    let bearer = format!("Bearer {token}");
    let auth = [("authorization", bearer.as_str())];
    let p = port(&s.api);

    // a page on attacker.example whose name now resolves to 127.0.0.1: even with a token
    // (as a browser never has one) nothing is answered but the refusal
    for host in [
        format!("attacker.example:{p}"),
        "attacker.example".to_string(),
        format!("127.0.0.1:{}", p + 1),
        format!("ferry.example.test.attacker.example:{p}"),
        "deploy.example.test:8080".to_string(),
        "[::1".to_string(),
    ] {
        for path in ["/api/environments", "/api/deployments", "/metrics", "/"] {
            let (status, body) = raw_get(&s.api, &host, path, &auth);
            assert_eq!(status, 421, "{host} {path}: {body}");
            assert!(body.contains("unknown_host"), "{body}");
            assert!(
                !body.contains("v1.0.0") && !body.contains("staging"),
                "{body}"
            );
        }
    }
    // the server's own names, and the configured ones, are answered
    for host in [
        format!("127.0.0.1:{p}"),
        format!("localhost:{p}"),
        format!("LOCALHOST:{p}"),
        format!("[::1]:{p}"),
        "ferry.example.test".to_string(),
        format!("ferry.example.test:{p}"),
        "deploy.example.test:8443".to_string(),
    ] {
        let (status, body) = raw_get(&s.api, &host, "/api/environments", &auth);
        assert_eq!(status, 200, "{host}: {body}");
        assert!(body.contains("v1.0.0"), "{body}");
    }
    // /health answers whatever the name (load balancers probe it by address)
    assert_eq!(raw_get(&s.api, "attacker.example", "/health", &[]).0, 200);
    // the CLI goes on working
    assert_eq!(s.ferry(&["status"]).code(), 0);
}

#[test]
fn reads_need_a_token_unless_opened_on_loopback() {
    let mut s = Sandbox::new(&[Rel("v1.0.0", GOOD)]);
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    for path in [
        "/api/environments",
        "/api/deployments",
        "/api/deployments/1",
        "/api/environments/staging/logs",
        "/api/events",
        "/api/audit",
        "/metrics",
    ] {
        let (status, body) = get(&format!("{}{path}", s.api)).unwrap();
        assert_eq!(status, 401, "{path}: {body}");
        assert!(!body.contains("v1.0.0"), "{body}");
    }
    // the dashboard sends a browser without a session to sign in
    let (status, body) = get(&format!("{}/", s.api)).unwrap();
    assert_eq!(status, 200, "the redirect is followed to the sign-in page");
    assert!(body.contains("token") && !body.contains("v1.0.0"), "{body}");
    assert_eq!(get(&format!("{}/health", s.api)).unwrap().0, 200);
    // with the local token every read works, and so do the CLI's read commands
    let (status, body) = s.get("/api/deployments").unwrap();
    assert_eq!((status, body.contains("v1.0.0")), (200, true), "{body}");
    assert_eq!(s.get("/metrics").unwrap().0, 200);
    for args in [
        &["status"][..],
        &["history", "staging"],
        &["show", "1"],
        &["logs", "staging"],
        &["plan", "staging", "v1.0.0"],
    ] {
        let run = s.ferry(args);
        assert_eq!(run.code(), 0, "ferry {args:?}: {run}");
    }
}

#[test]
fn open_reads_are_open_to_a_loopback_peer_only() {
    let mut s = Sandbox::with(
        &[Rel("v1.0.0", GOOD)],
        Options {
            server: "open_reads = true",
            ..Options::default()
        },
    );
    // listen on every address, so a peer on another address can be tried
    let p = port(&s.api);
    let outside = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|u| u.connect("192.0.2.1:9").map(|()| u))
        .and_then(|u| u.local_addr())
        .map(|a| a.ip())
        .ok()
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified());
    let text = std::fs::read_to_string(&s.config).unwrap();
    let hosts = outside.map_or(String::new(), |ip| format!("\nhosts = [\"{ip}\"]"));
    let text = text.replace(
        &format!("listen = \"127.0.0.1:{p}\"\n"),
        &format!("listen = \"0.0.0.0:{p}\"{hosts}\n"),
    );
    std::fs::write(&s.config, text).unwrap();
    s.serve();
    s.deploy_ok("staging", "v1.0.0");

    let (status, body) = get(&format!("{}/api/environments", s.api)).unwrap();
    assert_eq!((status, body.contains("v1.0.0")), (200, true), "{body}");
    assert_eq!(get(&format!("{}/metrics", s.api)).unwrap().0, 200);
    // a request a local reverse proxy forwarded is not local
    let forwarded = [("x-forwarded-for", "203.0.113.9")];
    let host = format!("127.0.0.1:{p}");
    assert_eq!(
        raw_get(&s.api, &host, "/api/environments", &forwarded).0,
        401
    );
    let forwarded = [("forwarded", "for=203.0.113.9")];
    assert_eq!(
        raw_get(&s.api, &host, "/api/environments", &forwarded).0,
        401
    );
    // mutations need a token all the same
    let (status, _) = support::post(
        &format!("{}/api/environments/staging/lock", s.api),
        None,
        &serde_json::json!({"reason": "x"}),
    );
    assert_eq!(status, 401);

    // a peer on another address of this machine: the bind address is not the peer's
    let Some(ip) = outside else {
        println!("skipped the non-loopback peer: this machine has no non-loopback address");
        return;
    };
    let url = format!("http://{ip}:{p}/api/environments");
    let (status, body) = get(&url).unwrap();
    assert_eq!(status, 401, "{body}");
    let (status, body) = get_with(&url, Some(&s.token())).unwrap();
    assert_eq!(status, 200, "{body}");
}

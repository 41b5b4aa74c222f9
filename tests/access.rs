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

/// A JSON call with `token` and a claimed `X-Ferry-User`: status and body.
fn call(
    s: &Sandbox,
    method: reqwest::Method,
    path: &str,
    token: &str,
    user: Option<&str>,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let client = crate::support::blocking_http()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut req = client
        .request(method, format!("{}{path}", s.api))
        .bearer_auth(token)
        .json(&body);
    if let Some(u) = user {
        req = req.header("x-ferry-user", u);
    }
    let resp = req.send().unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or_default())
}

fn token(s: &Sandbox, name: &str, scope: &str) -> String {
    let run = s.ferry(&["token", "create", name, "--scope", scope, "--json"]);
    assert_eq!(run.code(), 0, "{run}");
    assert_eq!(
        run.json()["scopes"],
        serde_json::json!(scope.split(',').collect::<Vec<_>>())
    );
    run.json()["token"].as_str().unwrap().to_string()
}

fn state_of(s: &Sandbox, id: i64) -> String {
    s.api(&format!("/api/deployments/{id}"))["deployment"]["state"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn scopes_separate_duties_and_the_token_is_recorded_beside_the_claimed_name() {
    use reqwest::Method;
    use serde_json::json;
    let mut s = Sandbox::with(
        &[Rel("v1.0.0", GOOD)],
        Options {
            envs: &["staging", "production"],
            env_extra: &[(
                "production",
                "requires = \"staging\"\napproval = { not_by_deployer = true }",
            )],
            ..Options::default()
        },
    );
    s.serve();
    let reader = token(&s, "reader", "read");
    let ci = token(&s, "ci-bot", "deploy");
    let qa = token(&s, "qa", "verify");
    let approver = token(&s, "approver", "approve");
    let lead = token(&s, "lead", "deploy,approve");
    assert!(
        s.ferry(&["token", "list"])
            .stdout()
            .contains("deploy,approve")
    );
    let bad = s.ferry(&["token", "create", "x", "--scope", "deploy,root"]);
    assert_eq!(bad.code(), 2, "{bad}");
    assert!(bad.stderr().contains("is not a scope"), "{bad}");

    // a reader reads, and cannot deploy
    let deploy = json!({"environment": "staging", "ref": "v1.0.0"});
    let (status, body) = call(
        &s,
        Method::POST,
        "/api/deployments",
        &reader,
        None,
        deploy.clone(),
    );
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("may only read")
    );
    assert_eq!(
        get_with(&format!("{}/api/deployments", s.api), Some(&reader))
            .unwrap()
            .0,
        200
    );
    // a verifier cannot deploy either; the deploy token can
    assert_eq!(
        call(
            &s,
            Method::POST,
            "/api/deployments",
            &qa,
            None,
            deploy.clone()
        )
        .0,
        403
    );
    let (status, d) = call(
        &s,
        Method::POST,
        "/api/deployments",
        &ci,
        Some("dev-dan"),
        deploy,
    );
    assert_eq!(status, 201, "{d}");
    let id = d["id"].as_i64().unwrap();
    assert!(support::eventually(Duration::from_secs(30), || state_of(
        &s, id
    ) == "succeeded"));
    let d = &s.api(&format!("/api/deployments/{id}"))["deployment"];
    assert_eq!(
        (d["triggered_by"].as_str(), d["triggered_token"].as_str()),
        (Some("dev-dan"), Some("ci-bot"))
    );

    // the deploy token cannot sign off; the QA token, claiming to be someone else, can, and
    // the record keeps the token it really used
    let verify = "/api/environments/staging/verify";
    let (status, body) = call(&s, Method::POST, verify, &ci, Some("qa-lead"), json!({}));
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("lacks the verify scope"),
        "{body}"
    );
    let (status, v) = call(
        &s,
        Method::POST,
        verify,
        &qa,
        Some("release-manager-bob"),
        json!({}),
    );
    assert_eq!(status, 201, "{v}");
    assert_eq!(
        (v["verified_by"].as_str(), v["verified_token"].as_str()),
        (Some("release-manager-bob"), Some("qa"))
    );
    let listed = s.api("/api/verifications");
    assert_eq!(listed[0]["verified_token"], "qa");

    // promotion waits for an approval; the verifier cannot give it
    let (status, p) = call(
        &s,
        Method::POST,
        "/api/promote",
        &lead,
        Some("lena"),
        json!({"tag": "v1.0.0"}),
    );
    assert_eq!(status, 201, "{p}");
    let pid = p["id"].as_i64().unwrap();
    assert!(support::eventually(Duration::from_secs(30), || state_of(
        &s, pid
    ) == "awaiting_approval"));
    let approve = format!("/api/deployments/{pid}/approve");
    let (status, body) = call(
        &s,
        Method::POST,
        &approve,
        &qa,
        Some("release-manager-bob"),
        json!({}),
    );
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("lacks the approve scope"),
        "{body}"
    );
    // not by the deployer: not with the same token under another name, nor another token
    // under the deployer's name
    let (status, body) = call(
        &s,
        Method::POST,
        &approve,
        &lead,
        Some("someone-else"),
        json!({}),
    );
    assert_eq!(status, 403, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("started by lena (token lead)") && message.contains("someone else"),
        "{message}"
    );
    let (status, body) = call(
        &s,
        Method::POST,
        &approve,
        &approver,
        Some("lena"),
        json!({}),
    );
    assert_eq!(status, 403, "{body}");
    assert_eq!(state_of(&s, pid), "awaiting_approval");
    // another person with their own token approves
    let (status, body) = call(
        &s,
        Method::POST,
        &approve,
        &approver,
        Some("rita"),
        json!({}),
    );
    assert_eq!(status, 200, "{body}");
    assert!(support::eventually(Duration::from_secs(30), || state_of(
        &s, pid
    ) == "succeeded"));
    let d = &s.api(&format!("/api/deployments/{pid}"))["deployment"];
    assert_eq!(
        (d["approved_by"].as_str(), d["approved_token"].as_str()),
        (Some("rita"), Some("approver"))
    );

    // history and show say which token stood behind each name
    let history = s.ferry(&["history", "production"]);
    assert!(history.stdout().contains("lena (token lead)"), "{history}");
    let show = s.ferry(&["show", &pid.to_string()]);
    assert!(show.stdout().contains("lena (token lead)"), "{show}");
    assert!(show.stdout().contains("rita (token approver)"), "{show}");
}

#[test]
fn not_by_deployer_refuses_the_deployers_own_approval_through_the_cli() {
    let mut s = Sandbox::with(
        &[Rel("v1.0.0", GOOD)],
        Options {
            env_extra: &[("staging", "approval = { not_by_deployer = true }")],
            ..Options::default()
        },
    );
    s.serve();
    let run = s.ferry(&["deploy", "staging", "v1.0.0", "--no-wait"]);
    assert_eq!(run.code(), 0, "{run}");
    assert!(support::eventually(Duration::from_secs(30), || state_of(
        &s, 1
    ) == "awaiting_approval"));
    // the same local token, whatever name the shell claims
    let run = s.ferry(&["approve", "1"]);
    assert_eq!(run.code(), 1, "{run}");
    assert!(
        run.stderr().contains("needs someone else to approve it"),
        "{run}"
    );
    assert_eq!(state_of(&s, 1), "awaiting_approval");
    let other = token(&s, "bob", "approve");
    let out = std::process::Command::new(support::FERRY)
        .args(["-c", s.config.to_str().unwrap(), "approve", "1"])
        .env("FERRY_TOKEN", &other)
        .env("USER", "bob")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(support::eventually(Duration::from_secs(30), || state_of(
        &s, 1
    ) == "succeeded"));
}

#[test]
fn dashboard_actions_check_the_signed_in_tokens_scopes() {
    let mut s = Sandbox::new(&[Rel("v1.0.0", GOOD)]);
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    let qa = token(&s, "qa", "verify");
    let client = crate::support::blocking_http()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let signed_in = client
        .post(format!("{}/signin", s.api))
        .form(&[("token", qa.as_str())])
        .send()
        .unwrap();
    assert_eq!(signed_in.status(), 303);
    let cookie = signed_in.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let page = client
        .get(format!("{}/", s.api))
        .header("cookie", &cookie)
        .send()
        .unwrap()
        .text()
        .unwrap();
    let csrf = regex::Regex::new(r#"name="csrf" value="([0-9a-f]{32})""#)
        .unwrap()
        .captures(&page)
        .expect("a form with the session's CSRF token")[1]
        .to_string();
    let act = |path: &str, fields: &[(&str, &str)]| {
        let mut form = fields.to_vec();
        form.push(("csrf", &csrf));
        let r = client
            .post(format!("{}{path}", s.api))
            .header("cookie", &cookie)
            .form(&form)
            .send()
            .unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    // a verifier may not lock or roll back
    let (status, body) = act("/actions/environments/staging/lock", &[("reason", "x")]);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("lacks the deploy scope"), "{body}");
    assert!(s.api("/api/environments/staging")["deploying"].is_null());
    // and may sign off, recorded under its own token
    let (status, body) = act("/actions/environments/staging/verify", &[]);
    assert_eq!(status, 303, "{body}");
    let v = s.api("/api/verifications");
    assert_eq!(
        (
            v[0]["verified_by"].as_str(),
            v[0]["verified_token"].as_str()
        ),
        (Some("qa"), Some("qa"))
    );
}

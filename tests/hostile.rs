//! Hostile input over HTTP: hostile refs, oversized bodies, forged webhooks in bulk, and path
//! traversal on every route that takes a name. (Property tests of the parsers are unit tests
//! next to them: config, durations, webhook payloads, refs.)

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;

const HOOKS: &str =
    "[webhooks]\ngithub_secret_env = \"FERRY_TEST_GH\"\ngitlab_token_env = \"FERRY_TEST_GL\"\n";

fn sandbox() -> Sandbox {
    let mut s = Sandbox::with(
        &[Rel("v1.0.0", GOOD)],
        Options {
            tables: HOOKS,
            ..Options::default()
        },
    );
    s.serve_env
        .push(("FERRY_TEST_GH".into(), "gh-s3cret".into()));
    s.serve_env
        .push(("FERRY_TEST_GL".into(), "gl-t0ken".into()));
    s.serve();
    s
}

/// One HTTP/1.1 request written by hand, so the path reaches ferry exactly as given (a client
/// library would resolve `..`): status and body.
fn raw(
    api: &str,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &str,
) -> (u16, String) {
    use std::io::{Read, Write};
    let addr = api.trim_start_matches("http://");
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !headers.iter().any(|(k, _)| *k == "content-length") {
        req.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    conn.write_all(req.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

fn client() -> reqwest::blocking::Client {
    crate::support::blocking_http()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Row counts of every table in the store.
fn table_counts(s: &Sandbox) -> Vec<(String, i64)> {
    let db = rusqlite::Connection::open(s.state_dir().join("ferry.db")).unwrap();
    let names: Vec<String> = db
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    names
        .into_iter()
        .map(|n| {
            let count = db
                .query_row(&format!("SELECT COUNT(*) FROM \"{n}\""), [], |r| r.get(0))
                .unwrap();
            (n, count)
        })
        .collect()
}

#[test]
fn hostile_refs_never_reach_git_or_a_shell_and_record_nothing() {
    let s = sandbox();
    let marker = s.dir.path().join("pwned");
    let m = marker.display();
    let refs = [
        "../../../../etc".to_string(),
        "v1/../../x".into(),
        "--upload-pack=touch {m}".into(),
        "-c core.pager=touch".into(),
        "main; touch {m}".into(),
        "$(touch {m})".into(),
        "`touch {m}`".into(),
        "main && touch {m}".into(),
        "main | touch {m}".into(),
        "a b".into(),
        "/etc/passwd".into(),
        "main\ntouch".into(),
        "x".repeat(5000),
    ];
    for r in refs {
        let r = r.replace("{m}", &m.to_string());
        let (status, body) = s.post(
            "/api/deployments",
            &json!({"environment": "staging", "ref": r}),
        );
        assert_eq!(status, 400, "{r:?}: {body}");
        assert_eq!(body["error"]["code"], "bad_ref", "{r:?}: {body}");
        let plan = s
            .get(&format!(
                "/api/environments/staging/plan?ref={}",
                urlencode(&r)
            ))
            .unwrap();
        assert_eq!(plan.0, 400, "{r:?}: {}", plan.1);
    }
    // through the CLI too, where a leading '-' could pass for an option
    let run = s.ferry(&["deploy", "staging", "--", "--upload-pack=touch /tmp/x"]);
    assert_ne!(run.code(), 0, "{run}");
    assert!(!marker.exists(), "a hostile ref ran a command");
    assert!(s.api("/api/deployments").as_array().unwrap().is_empty());
    let releases = s.state_dir().join("environments/staging/releases");
    assert!(!releases.exists() || std::fs::read_dir(releases).unwrap().count() == 0);
}

fn urlencode(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}

#[test]
fn bodies_over_the_limits_get_413_and_change_nothing() {
    let s = sandbox();
    let before = table_counts(&s);
    // a body declared over the limit is refused from its headers, before it is read
    let token = s.token();
    // webhook routes take up to GitHub's 25 MB, every other route 1 MiB
    let api = 2 * 1024 * 1024;
    let hooks = 26 * 1024 * 1024;
    let cases = [
        ("/api/deployments", api),
        ("/api/environments/staging/lock", api),
        (
            "/api/commits/0123456789abcdef0123456789abcdef01234567/checks",
            api,
        ),
        ("/hooks/github", hooks),
        ("/hooks/gitlab", hooks),
        ("/signin", api),
    ];
    for (path, declared) in cases {
        let headers = [
            ("content-type", "application/json".to_string()),
            ("authorization", format!("Bearer {token}")),
            ("x-github-event", "push".into()),
            ("x-github-delivery", "big-1".into()),
            ("x-gitlab-event", "Push Hook".into()),
            ("x-gitlab-token", "gl-t0ken".into()),
            ("content-length", declared.to_string()),
        ];
        let (status, body) = raw(&s.api, "POST", path, &headers, "{\"ref\": \"");
        assert_eq!(status, 413, "{path}: {body}");
    }
    // and one sent in full, without saying its length, is cut off at the limit
    let big = format!("{{\"ref\": \"{}\"}}", "x".repeat(2 * 1024 * 1024));
    let status = client()
        .post(format!("{}/api/deployments", s.api))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(reqwest::blocking::Body::new(std::io::Cursor::new(big)))
        .send()
        .map(|r| r.status().as_u16());
    assert!(matches!(status, Ok(413) | Err(_)), "{status:?}");
    let mut after = table_counts(&s);
    // the API's own calls are audited; nothing else may change
    after.retain(|(n, _)| n != "audit");
    let mut before = before;
    before.retain(|(n, _)| n != "audit");
    assert_eq!(before, after);
}

#[test]
fn a_thousand_forged_webhooks_leave_only_a_counter() {
    let s = sandbox();
    let before = table_counts(&s);
    // serve restores its environments in the background once it answers: the last thing it
    // logs on its own; what comes after is the deliveries'
    let restored = (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        s.serve_log().contains("nothing deployed yet")
    });
    assert!(restored, "serve never said it restored:\n{}", s.serve_log());
    let log_before = s.serve_log().len();
    let client = client();
    for i in 0..1000 {
        let (path, header, value) = if i % 2 == 0 {
            (
                "/hooks/github",
                "x-hub-signature-256",
                format!("sha256={:064x}", i),
            )
        } else {
            ("/hooks/gitlab", "x-gitlab-token", format!("guess-{i}"))
        };
        let status = client
            .post(format!("{}{path}", s.api))
            .header(header, value)
            .header("x-github-event", "push")
            .header("x-github-delivery", format!("forged-{i}"))
            .header("x-gitlab-event", "Push Hook")
            .body(r#"{"ref": "refs/heads/main", "after": "0123456789abcdef0123456789abcdef01234567"}"#)
            .send()
            .unwrap()
            .status()
            .as_u16();
        assert_eq!(status, 401, "{path}");
    }
    assert_eq!(table_counts(&s), before, "a forged delivery left a row");
    assert_eq!(
        s.serve_log().len(),
        log_before,
        "forged deliveries were logged:\n{}",
        &s.serve_log()[log_before..]
    );
    let metrics = s.get("/metrics").unwrap().1;
    for provider in ["github", "gitlab"] {
        let line = format!(
            "ferry_webhook_deliveries_total{{provider=\"{provider}\",outcome=\"bad_signature\"}} 500"
        );
        assert!(metrics.contains(&line), "{line} not in:\n{metrics}");
    }
    assert!(s.api("/api/deployments").as_array().unwrap().is_empty());
}

#[test]
fn path_traversal_on_every_named_route_finds_nothing() {
    let s = sandbox();
    s.deploy_ok("staging", "v1.0.0");
    let token = s.token();
    // a signed-in session, so the dashboard's pages are reached rather than the sign-in page
    let signed_in = crate::support::blocking_http()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(format!("{}/signin", s.api))
        .form(&[("token", token.as_str())])
        .send()
        .unwrap();
    let session = signed_in.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let hostile = [
        "..",
        "%2e%2e",
        "..%2f..%2f..%2fetc%2fpasswd",
        "%2e%2e%2f%2e%2e%2fferry.db",
        "staging%2f..%2f..%2fferry.db",
        "staging%00",
        ".",
        "%2f",
        "~root",
        "-1",
        "99999999999999999999999",
    ];
    let before = table_counts(&s);
    let mut tried = 0;
    // every API route with a path parameter, and the dashboard's
    let mut routes: Vec<(String, String)> = ferry::server::ROUTES
        .iter()
        .filter(|(_, path, _, _)| path.contains('{'))
        .map(|(m, p, _, _)| (m.to_string(), p.to_string()))
        .collect();
    for p in [
        "/environments/{env}",
        "/deployments/{id}",
        "/deployments/{id}/live",
    ] {
        routes.push(("get".into(), p.into()));
    }
    let param = regex::Regex::new(r"\{[a-z]+\}").unwrap();
    for (method, route) in &routes {
        for name in hostile {
            let path = param.replace_all(route, name).into_owned();
            let (status, body) = raw(
                &s.api,
                &method.to_uppercase(),
                &path,
                &[
                    ("authorization", format!("Bearer {token}")),
                    ("cookie", session.clone()),
                    ("content-type", "application/json".into()),
                ],
                r#"{"reason": "x", "name": "x", "status": "success", "on": true, "action": "pause"}"#,
            );
            assert!(
                (400..=405).contains(&status),
                "{method} {path}: {status} {body}"
            );
            assert!(!body.contains("root:x:0"), "{method} {path}");
            assert!(!body.contains("SQLite format"), "{method} {path}");
            tried += 1;
        }
    }
    let mut after = table_counts(&s);
    after.retain(|(n, _)| n != "audit" && n != "probes");
    let mut before = before;
    before.retain(|(n, _)| n != "audit" && n != "probes");
    assert_eq!(before, after);
    println!(
        "{tried} traversal attempts on {} routes: none found anything",
        routes.len()
    );
}

#[test]
fn escape_sequences_in_command_output_and_app_logs_never_reach_the_terminal() {
    // a build that clears the screen, retitles the window, forges a link and rewrites its
    // own line into a fake "✓" (CR), and an app that logs the same
    let mut s = Sandbox::with(
        &[Rel("v1.0.0", GOOD)],
        Options {
            extra_app: r#"build = ["printf '\\033[2J\\033]0;pwned\\007\\033]8;;http://evil\\033\\\\link\\033]8;;\\033\\\\ real\\rforged\\033[31m red \\302\\233 c1\\n'"]"#,
            ..Options::default()
        },
    );
    s.serve();
    let deploy = s.deploy_ok("staging", "v1.0.0");
    let show = s.ferry(&["show", "1"]);
    let json = s.ferry(&["show", "1", "--json"]);
    let stored = s.api("/api/deployments/1").to_string();
    assert!(
        stored.contains("\\u001b") && stored.contains("\\r"),
        "the API keeps the raw output: {stored}"
    );
    let hostile = |c: char| c.is_control() && c != '\n' && c != '\t';
    for (what, out) in [
        ("deploy", deploy.stdout()),
        ("show", show.stdout()),
        ("show --json", json.stdout()),
    ] {
        assert!(out.contains("link realforged red  c1"), "{what}: {out:?}");
        assert!(!out.contains("\\u001b"), "{what}: {out:?}");
        assert!(!out.chars().any(hostile), "{what}: {out:?}");
    }

    let (status, _) = get(&format!(
        "{}/log?line=%1B%5D0%3Bpwned%07%1B%5B2Jlogged%0Dover%1B%5B1m",
        s.url("staging")
    ))
    .unwrap();
    assert_eq!(status, 200);
    let mut logs = String::new();
    assert!(eventually(Duration::from_secs(10), || {
        logs = s.ferry(&["logs", "staging", "-n", "20"]).stdout();
        logs.contains("loggedover")
    }));
    assert!(!logs.contains("pwned"), "{logs:?}");
    assert!(!logs.chars().any(hostile), "{logs:?}");
}

//! The server surface end to end: signed webhooks and the triggers they fire, tokens, the
//! event stream, metrics and notifications, against a real `ferry serve`.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{KeyInit, Mac};
use serde_json::{Value, json};
use support::{BROKEN, GOOD, Options, Rel, Sandbox, eventually, get, get_with, post, sh};

const GH_SECRET: &str = "gh-secret-for-tests";
const GL_TOKEN: &str = "gl-token-for-tests";
const WEBHOOKS: &str =
    "[webhooks]\ngithub_secret_env = \"FERRY_TEST_GH\"\ngitlab_token_env = \"FERRY_TEST_GL\"\n";

fn with_hooks(mut s: Sandbox) -> Sandbox {
    s.serve_env.push(("FERRY_TEST_GH".into(), GH_SECRET.into()));
    s.serve_env.push(("FERRY_TEST_GL".into(), GL_TOKEN.into()));
    s
}

fn sign(body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(GH_SECRET.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn client() -> reqwest::blocking::Client {
    crate::support::blocking_http()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn answer(resp: reqwest::blocking::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or_default())
}

/// A GitHub delivery: `signature` `None` signs the body correctly.
fn github(
    s: &Sandbox,
    event: &str,
    delivery: &str,
    body: &[u8],
    signature: Option<&str>,
) -> (u16, Value) {
    let sig = signature.map_or_else(|| sign(body), str::to_string);
    answer(
        client()
            .post(format!("{}/hooks/github", s.api))
            .header("x-github-event", event)
            .header("x-github-delivery", delivery)
            .header("x-hub-signature-256", sig)
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .unwrap(),
    )
}

fn gitlab(s: &Sandbox, event: &str, uuid: &str, token: &str, body: &Value) -> (u16, Value) {
    answer(
        client()
            .post(format!("{}/hooks/gitlab", s.api))
            .header("x-gitlab-event", event)
            .header("x-gitlab-event-uuid", uuid)
            .header("x-gitlab-token", token)
            .json(body)
            .send()
            .unwrap(),
    )
}

fn push(git_ref: &str, after: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "ref": git_ref,
        "before": "1111111111111111111111111111111111111111",
        "after": after,
        "pusher": {"name": "octocat"},
        "repository": {"full_name": "acme/sample"},
    }))
    .unwrap()
}

fn commit(s: &Sandbox, note: &str) -> String {
    std::fs::write(s.repo.join("note.txt"), note).unwrap();
    sh(&s.repo, &format!("git add . && git commit -qm '{note}'"));
    let out = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(&s.repo)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn deployments(s: &Sandbox) -> Vec<Value> {
    s.api("/api/deployments").as_array().unwrap().clone()
}

fn state(s: &Sandbox, id: i64) -> String {
    s.api(&format!("/api/deployments/{id}"))["deployment"]["state"]
        .as_str()
        .unwrap()
        .to_string()
}

fn wait_state(s: &Sandbox, id: i64, want: &str) {
    assert!(
        eventually(Duration::from_secs(30), || state(s, id) == want),
        "deployment {id} is {}, not {want}\n{}",
        state(s, id),
        s.serve_log()
    );
}

fn first_id(outcome: &Value) -> i64 {
    let text = outcome["outcome"].as_str().unwrap();
    let rest = text
        .split("deployment ")
        .nth(1)
        .unwrap_or_else(|| panic!("no deployment in {text}"));
    rest.split(' ').next().unwrap().parse().unwrap()
}

fn metric(s: &Sandbox, line_start: &str) -> Option<f64> {
    let (_, text) = s.get("/metrics").unwrap();
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn signed_push_deploys_staging_and_bad_deliveries_change_nothing() {
    let mut s = with_hooks(Sandbox::with(
        &[Rel("v1.0.0", GOOD)],
        Options {
            env_extra: &[("staging", "track = { branch = \"main\" }")],
            tables: WEBHOOKS,
            ..Options::default()
        },
    ));
    s.serve();

    let (status, body) = github(&s, "ping", "d-ping", br#"{"zen":"hi"}"#, None);
    assert_eq!((status, body["outcome"].as_str()), (202, Some("pong")));

    let head = commit(&s, "first change");
    let (status, body) = github(&s, "push", "d-1", &push("refs/heads/main", &head), None);
    assert_eq!(status, 202, "{body}");
    let id = first_id(&body);
    wait_state(&s, id, "succeeded");
    let d = s.api(&format!("/api/deployments/{id}"))["deployment"].clone();
    assert_eq!(d["commit_sha"], head.as_str());
    assert!(
        d["triggered_by"]
            .as_str()
            .unwrap()
            .contains("github push by octocat (delivery d-1)")
    );

    // the same delivery again: acknowledged, not acted on
    let (status, body) = github(&s, "push", "d-1", &push("refs/heads/main", &head), None);
    assert_eq!(
        (status, body["duplicate"].as_bool()),
        (200, Some(true)),
        "{body}"
    );

    // forged and unsigned deliveries: 401, nothing recorded but the counter
    let (status, _) = github(
        &s,
        "push",
        "d-2",
        &push("refs/heads/main", &head),
        Some("sha256=00"),
    );
    assert_eq!(status, 401);
    let forged = sign(b"another body");
    let (status, _) = github(
        &s,
        "push",
        "d-3",
        &push("refs/heads/main", &head),
        Some(&forged),
    );
    assert_eq!(status, 401);
    assert_eq!(
        metric(
            &s,
            "ferry_webhook_deliveries_total{provider=\"github\",outcome=\"bad_signature\"}"
        ),
        Some(2.0)
    );

    // over GitHub's 25 MB: 413 before anything else is looked at
    // (refused from its declared length, so the client may not get to send it all)
    let big = vec![b' '; 25 * 1024 * 1024 + 1];
    let status = client()
        .post(format!("{}/hooks/github", s.api))
        .header("x-github-event", "push")
        .header("x-github-delivery", "d-4")
        .header("x-hub-signature-256", sign(&big))
        .body(big)
        .send()
        .map(|r| r.status().as_u16());
    assert!(matches!(status, Ok(413) | Err(_)), "{status:?}");
    // not JSON, or not a push payload: 400
    let (status, body) = github(&s, "push", "d-5", b"{not json", None);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("malformed"))
    );
    let (status, _) = github(&s, "push", "d-6", br#"{"ref":"refs/heads/main"}"#, None);
    assert_eq!(status, 400);

    // a deleted branch and a branch nobody tracks deploy nothing
    let zeros = "0".repeat(40);
    let (_, body) = github(&s, "push", "d-7", &push("refs/heads/main", &zeros), None);
    assert_eq!(body["outcome"], "ignored: main was deleted");
    let (_, body) = github(&s, "push", "d-8", &push("refs/heads/feature", &head), None);
    assert_eq!(
        body["outcome"],
        "ignored: no environment tracks branch feature"
    );

    // GitLab: the token must match; a Push Hook deploys; its uuid is not acted on twice
    let head2 = commit(&s, "second change");
    let gl_push = json!({"object_kind": "push", "ref": "refs/heads/main", "before": head,
                         "after": head2, "user_username": "gitlabber"});
    assert_eq!(gitlab(&s, "Push Hook", "u-1", "wrong", &gl_push).0, 401);
    let (status, body) = gitlab(&s, "Push Hook", "u-1", GL_TOKEN, &gl_push);
    assert_eq!(status, 202, "{body}");
    let id2 = first_id(&body);
    wait_state(&s, id2, "succeeded");
    let (status, body) = gitlab(&s, "Push Hook", "u-1", GL_TOKEN, &gl_push);
    assert_eq!((status, body["duplicate"].as_bool()), (200, Some(true)));

    // only the two pushes deployed; only accepted deliveries are stored, with their outcome
    assert_eq!(deployments(&s).len(), 2);
    let stored = s.api("/api/deliveries");
    let ids: Vec<&str> = stored
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["delivery_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["u-1", "d-8", "d-7", "d-1", "d-ping"]);
    assert_eq!(stored[3]["outcome"], format!("deployment {id} to staging"));
    assert_eq!(stored[3]["commit_sha"], head.as_str());
}

#[test]
fn a_pushed_tag_waits_for_approval_where_auto_and_is_only_recorded_elsewhere() {
    let mut s = with_hooks(Sandbox::with(
        &[Rel("v1.0.0", GOOD)],
        Options {
            envs: &["staging", "production"],
            env_extra: &[
                ("staging", "track = { tags = true }"),
                (
                    "production",
                    "track = { tags = true, auto = true }\napproval = true",
                ),
            ],
            tables: WEBHOOKS,
            ..Options::default()
        },
    ));
    s.serve();
    let (status, body) = github(
        &s,
        "push",
        "t-1",
        &push("refs/tags/v1.0.0", &"a".repeat(40)),
        None,
    );
    assert_eq!(status, 202, "{body}");
    let outcome = body["outcome"].as_str().unwrap();
    assert!(
        outcome.contains("staging: tag v1.0.0 recorded, not deployed"),
        "{outcome}"
    );
    let id = first_id(&body);
    wait_state(&s, id, "awaiting_approval");
    assert_eq!(deployments(&s).len(), 1);
    assert_eq!(
        get(&s.url("production")).unwrap().0,
        503,
        "nothing deployed yet"
    );

    // a tag that is not a release is ignored everywhere
    let (_, body) = github(
        &s,
        "push",
        "t-2",
        &push("refs/tags/nightly", &"b".repeat(40)),
        None,
    );
    assert!(
        body["outcome"]
            .as_str()
            .unwrap()
            .contains("production: ignored: \"nightly\" is not a release tag"),
        "{body}"
    );
    assert_eq!(deployments(&s).len(), 1);
}

#[test]
fn a_newer_push_supersedes_the_one_waiting_and_only_the_newest_commit_deploys() {
    let mut s = with_hooks(Sandbox::with(
        &[Rel("v1.0.0", GOOD)],
        Options {
            extra_app: "build = [\"sleep 1\"]",
            env_extra: &[("staging", "track = { branch = \"main\" }")],
            tables: WEBHOOKS,
            ..Options::default()
        },
    ));
    s.serve();
    let c1 = commit(&s, "one");
    let (_, body) = github(&s, "push", "p-1", &push("refs/heads/main", &c1), None);
    let first = first_id(&body);
    // the first deployment follows main's head: it must have resolved c1 before c2 exists
    // (else it deploys c2 itself, and the second push rightly finds c2 under way)
    let resolved = |s: &Sandbox| {
        s.api(&format!("/api/deployments/{first}"))["deployment"]["commit_sha"]
            .as_str()
            .map(str::to_string)
    };
    assert!(
        eventually(Duration::from_secs(30), || resolved(&s).is_some()),
        "deployment {first} never resolved\n{}",
        s.serve_log()
    );
    assert_eq!(resolved(&s).as_deref(), Some(c1.as_str()));
    let c2 = commit(&s, "two");
    let (_, body) = github(&s, "push", "p-2", &push("refs/heads/main", &c2), None);
    let second = first_id(&body);
    assert!(
        body["outcome"].as_str().unwrap().contains("queued"),
        "{body} {}",
        s.api(&format!("/api/deployments/{first}"))
    );
    let c3 = commit(&s, "three");
    let (_, body) = github(&s, "push", "p-3", &push("refs/heads/main", &c3), None);
    let third = first_id(&body);
    assert!(
        body["outcome"]
            .as_str()
            .unwrap()
            .contains(&format!("supersedes {second}")),
        "{body}"
    );

    wait_state(&s, first, "succeeded");
    wait_state(&s, third, "succeeded");
    assert_eq!(state(&s, second), "superseded");
    let d2 = s.api(&format!("/api/deployments/{second}"));
    assert!(
        d2["steps"].as_array().unwrap().is_empty(),
        "a superseded push never ran"
    );
    assert!(
        d2["deployment"]["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("deployment {third}"))
    );
    let d3 = s.api(&format!("/api/deployments/{third}"))["deployment"].clone();
    assert_eq!(d3["commit_sha"], c3.as_str());
    assert_eq!(
        s.api("/api/environments/staging/version")["commit_sha"],
        c3.as_str()
    );
    let _ = c2;
}

#[test]
fn tokens_guard_mutations_and_every_mutation_records_its_token() {
    let mut s = Sandbox::new(&[Rel("v1.0.0", GOOD)]);
    s.serve();
    let run = s.ferry(&["token", "create", "--name", "ci", "--json"]);
    assert_eq!(run.code(), 0, "{run}");
    let ci = run.json()["token"].as_str().unwrap().to_string();
    let run = s.ferry(&[
        "token",
        "create",
        "--name",
        "viewer",
        "--read-only",
        "--json",
    ]);
    let viewer = run.json()["token"].as_str().unwrap().to_string();
    // the secret is shown once and is never listed
    let listed = s.ferry(&["token", "list", "--json"]);
    assert!(!listed.stdout().contains(&ci) && !listed.stdout().contains(&viewer));
    let names: Vec<String> = listed
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["local", "ci", "viewer"]);
    assert_eq!(
        s.ferry(&["token", "create", "--name", "ci"]).code(),
        1,
        "names are unique"
    );
    assert_eq!(
        s.ferry(&["token", "create", "--name", "Bad Name"]).code(),
        2
    );

    let lock = format!("{}/api/environments/staging/lock", s.api);
    let body = json!({"reason": "testing tokens"});
    let resp = client().post(&lock).json(&body).send().unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    assert_eq!(post(&lock, Some("ferry_not_a_token"), &body).0, 401);
    let (status, answer) = post(&lock, Some(&viewer), &body);
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    let (status, answer) = post(&lock, Some(&ci), &body);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["holder"], "ci");
    // reads need a token, a read-only one will do
    assert_eq!(get(&format!("{}/api/environments", s.api)).unwrap().0, 401);
    let environments = format!("{}/api/environments", s.api);
    assert_eq!(get_with(&environments, Some(&viewer)).unwrap().0, 200);

    // the CLI takes FERRY_TOKEN before the local token file
    let out = std::process::Command::new(support::FERRY)
        .args(["-c", s.config.to_str().unwrap(), "unlock", "staging"])
        .env("FERRY_TOKEN", &viewer)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("may only read"));
    assert_eq!(s.ferry(&["unlock", "staging"]).code(), 0);

    let audit = s.api("/api/audit");
    let entries: Vec<(String, String, u64)> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["token"].as_str().unwrap().into(),
                a["method"].as_str().unwrap().into(),
                a["status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        entries,
        [
            ("local".into(), "DELETE".into(), 200),
            ("ci".into(), "POST".into(), 200)
        ]
    );

    assert_eq!(s.ferry(&["token", "revoke", "ci"]).code(), 0);
    assert_eq!(post(&lock, Some(&ci), &body).0, 401);
    assert_eq!(s.ferry(&["token", "revoke", "ci"]).code(), 1);
    // nothing about the secrets reached the database file
    let db = std::fs::read(s.state_dir().join("ferry.db")).unwrap();
    let db = String::from_utf8_lossy(&db);
    assert!(!db.contains(&ci) && !db.contains(&viewer) && !db.contains(&s.token()));
}

#[test]
fn the_event_stream_shows_every_step_of_a_deployment_in_order() {
    let mut s = Sandbox::new(&[Rel("v1.0.0", GOOD)]);
    s.serve();
    let resp = client()
        .get(format!("{}/api/events?environment=staging", s.api))
        .bearer_auth(s.token())
        .timeout(Duration::from_secs(60))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let seen = Arc::new(Mutex::new(Vec::<(String, Value)>::new()));
    let reader = std::thread::spawn({
        let seen = seen.clone();
        move || {
            let mut name = String::new();
            for line in BufReader::new(resp).lines() {
                let Ok(line) = line else { return };
                if let Some(n) = line.strip_prefix("event: ") {
                    name = n.to_string();
                } else if let Some(data) = line.strip_prefix("data: ") {
                    let v: Value = serde_json::from_str(data).unwrap();
                    let done = name == "deployment" && v["state"] == "succeeded";
                    seen.lock().unwrap().push((name.clone(), v));
                    if done {
                        return;
                    }
                }
            }
        }
    });
    let run = s.deploy_ok("staging", "v1.0.0");
    reader.join().unwrap();
    let seen = seen.lock().unwrap().clone();
    let states: Vec<&str> = seen
        .iter()
        .filter(|(n, _)| n == "deployment")
        .map(|(_, v)| v["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["queued", "running", "succeeded"], "{run}");

    // each step is seen running, then finished, in the order the deployment lists them
    let steps: Vec<(String, String)> = seen
        .iter()
        .filter(|(n, _)| n == "step")
        .map(|(_, v)| {
            (
                v["step"].as_str().unwrap().into(),
                v["state"].as_str().unwrap().into(),
            )
        })
        .collect();
    let listed = s.api("/api/deployments/1")["steps"]
        .as_array()
        .unwrap()
        .clone();
    let mut expected = Vec::new();
    for st in &listed {
        let name = st["name"].as_str().unwrap().to_string();
        expected.push((name.clone(), "running".to_string()));
        expected.push((name, st["state"].as_str().unwrap().to_string()));
    }
    assert_eq!(steps, expected);
    let names: Vec<&str> = listed.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(&names[..3], ["resolve", "policy", "lock"]);
    // the hook planned after finish is recorded too (skipped: none configured)
    assert_eq!(names.last(), Some(&"post_deploy"));
    assert_eq!(listed.last().unwrap()["state"], "skipped");
}

#[test]
fn metrics_are_valid_prometheus_text() {
    let mut s = Sandbox::new(&[Rel("v1.0.0", GOOD), Rel("v2.0.0", BROKEN)]);
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    assert_eq!(s.ferry(&["deploy", "staging", "v2.0.0"]).code(), 1);
    for _ in 0..3 {
        get(&s.url("staging")).unwrap();
    }
    let (status, text) = s.get("/metrics").unwrap();
    assert_eq!(status, 200);

    // a strict look at every line: comments are HELP/TYPE, samples are name{labels} value
    let sample = regex::Regex::new(
        r#"^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\.)*",?)*\})? (-?[0-9.eE+-]+|\+Inf|NaN)$"#,
    ).unwrap();
    for line in text.lines() {
        assert!(
            line.starts_with("# HELP ") || line.starts_with("# TYPE ") || sample.is_match(line),
            "not Prometheus text: {line:?}"
        );
    }
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    let value = |name: &str, labels: &[(&str, &str)]| -> Option<f64> {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
    };
    let outcome = |o| {
        value(
            "ferry_deployments_total",
            &[("environment", "staging"), ("outcome", o)],
        )
    };
    assert_eq!(outcome("succeeded"), Some(1.0));
    assert_eq!(outcome("failed"), Some(1.0));
    assert_eq!(
        value(
            "ferry_version_info",
            &[("environment", "staging"), ("version", "v1.0.0")]
        ),
        Some(1.0)
    );
    assert!(value("ferry_proxy_requests_total", &[("environment", "staging")]).unwrap() >= 3.0);
    let health = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "ferry_step_duration_seconds" && s.labels.get("step") == Some("health")
        })
        .expect("a health step histogram");
    match &health.value {
        prometheus_parse::Value::Histogram(buckets) => {
            assert_eq!(
                buckets.last().unwrap().count,
                2.0,
                "two deploys probed health"
            );
        }
        other => panic!("not a histogram: {other:?}"),
    }
}

/// A local HTTP listener that records each request body and answers 500 to the first
/// `fail_first` requests, 200 after.
struct Listener {
    url: String,
    bodies: Arc<Mutex<Vec<Value>>>,
}

fn listener(fail_first: usize) -> Listener {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let seen = bodies.clone();
    std::thread::spawn(move || {
        let mut n = 0;
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            seen.lock()
                .unwrap()
                .push(serde_json::from_slice(&body).unwrap());
            n += 1;
            let status = if n <= fail_first {
                "500 Internal Server Error"
            } else {
                "200 OK"
            };
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
    });
    Listener { url, bodies }
}

#[test]
fn notifications_are_posted_retried_after_a_500_and_carry_a_failure_report() {
    let json_target = listener(1);
    let slack_target = listener(0);
    let tables = Box::leak(
        format!(
            "[[notify]]\nurl = \"{}\"\non = [\"deploy.succeeded\", \"deploy.failed\"]\n\n\
             [[notify]]\nurl = \"{}\"\non = [\"deploy.failed\"]\nformat = \"slack\"\n",
            json_target.url, slack_target.url
        )
        .into_boxed_str(),
    );
    let mut s = Sandbox::with(
        &[Rel("v1.0.0", GOOD), Rel("v2.0.0", BROKEN)],
        Options {
            tables,
            ..Options::default()
        },
    );
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    // the first POST got a 500; the retry was taken
    assert!(eventually(Duration::from_secs(10), || json_target
        .bodies
        .lock()
        .unwrap()
        .len()
        == 2));
    let got = json_target.bodies.lock().unwrap().clone();
    assert_eq!(got[0], got[1], "the retry sends the same notification");
    let ok = &got[0];
    assert_eq!(ok["event"], "deploy.succeeded");
    assert_eq!(
        (
            ok["environment"].as_str(),
            ok["version"].as_str(),
            ok["who"].as_str()
        ),
        (Some("staging"), Some("v1.0.0"), Some("tester"))
    );
    assert_eq!(ok["commit"].as_str().unwrap().len(), 40);
    assert!(ok["duration_seconds"].as_f64().unwrap() > 0.0);
    assert!(ok["text"].as_str().unwrap().contains("is live on staging"));
    assert!(
        slack_target.bodies.lock().unwrap().is_empty(),
        "slack target wants failures only"
    );

    assert_eq!(s.ferry(&["deploy", "staging", "v2.0.0"]).code(), 1);
    assert!(eventually(Duration::from_secs(10), || json_target
        .bodies
        .lock()
        .unwrap()
        .len()
        == 3));
    let failed = json_target.bodies.lock().unwrap()[2].clone();
    assert_eq!(failed["event"], "deploy.failed");
    assert_eq!(failed["failing_step"]["name"], "health");
    assert!(
        failed["failing_step"]["output_tail"]
            .as_str()
            .unwrap()
            .contains("500")
    );
    let title = failed["report"]["title"].as_str().unwrap();
    assert_eq!(title, "Deploy of sample v2.0.0 to staging failed at health");
    let body = failed["report"]["body"].as_str().unwrap();
    assert!(
        body.contains("## Steps")
            && body.contains("| health | failed |")
            && body.contains("ferry show 2"),
        "{body}"
    );
    assert!(eventually(Duration::from_secs(10), || slack_target
        .bodies
        .lock()
        .unwrap()
        .len()
        == 1));
    // the old format = "slack" is kind = "slack": Block Kit, with the text line as fallback
    let slack = slack_target.bodies.lock().unwrap()[0].clone();
    assert_eq!(
        slack.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["blocks", "text"]
    );
    assert_eq!(slack["blocks"][0]["type"], "header");
    assert!(
        slack["text"]
            .as_str()
            .unwrap()
            .contains("failed on staging")
    );
}

#[test]
fn the_openapi_document_lists_every_route_and_each_answers() {
    let mut s = Sandbox::new(&[Rel("v1.0.0", GOOD)]);
    s.serve();
    let doc = s.api("/api/openapi.json");
    assert_eq!(doc["openapi"], "3.1.0");
    let token = s.token();
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            operations += 1;
            assert!(
                op["summary"].as_str().is_some_and(|s| !s.is_empty()),
                "{method} {path}"
            );
            let url = format!(
                "{}{}",
                s.api,
                path.replace("{env}", "staging")
                    .replace("{id}", "1")
                    .replace("{sha}", &"a".repeat(40))
            );
            let req = match method.as_str() {
                "get" => client().get(&url),
                "post" => client().post(&url).json(&json!({})),
                "delete" => client().delete(&url),
                other => panic!("unexpected method {other}"),
            };
            let resp = req
                .bearer_auth(&token)
                .timeout(Duration::from_secs(5))
                .send()
                .unwrap();
            let status = resp.status().as_u16();
            assert_ne!(status, 405, "{method} {path} is documented but not routed");
            if status == 404 && path != "/api/events" {
                let body: Value = resp.json().unwrap_or_default();
                assert_ne!(
                    body["error"]["message"], "no such route",
                    "{method} {path} is documented but not routed"
                );
            }
        }
    }
    assert!(operations >= 28, "only {operations} operations documented");
    // the check above can fail: an undocumented path gets the fallback
    let (status, body) = s.get("/api/nope").unwrap();
    assert_eq!(status, 404);
    assert!(body.contains("no such route"));
    // mutations are marked as needing the bearer token; webhooks carry their own signature
    assert_eq!(
        doc["paths"]["/api/deployments"]["post"]["security"][0]["bearer"],
        json!([])
    );
    assert!(doc["paths"]["/hooks/github"]["post"]["security"].is_null());
}

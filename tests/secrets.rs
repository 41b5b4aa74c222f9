//! Secrets never leak: a full scenario runs with known secrets in an `env_file`, an API token,
//! a dashboard session and a webhook secret; then the whole state dir (except the app's own
//! log), ferry's log, every API answer and every dashboard page are searched for them.

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use support::*;

const ENV_SECRET: &str = "envfile-secret-7c1e55a09b";
const HOOK_SECRET: &str = "webhook-secret-d41f0e2c88";

fn files_under(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            files_under(&path, out);
        } else if kind.is_file() {
            out.push(path);
        }
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

fn wait_final(s: &Sandbox, id: i64) -> String {
    let path = format!("/api/deployments/{id}");
    assert!(eventually(Duration::from_secs(30), || !matches!(
        s.api(&path)["deployment"]["state"].as_str(),
        Some("queued" | "running" | "monitoring")
    )));
    s.api(&path)["deployment"]["state"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn known_secrets_appear_nowhere_after_a_full_scenario() {
    let mut s = Sandbox::with(
        &[
            Rel("v1.0.0", GOOD),
            Rel("v1.1.0", GOOD),
            Rel("v1.2.0", BROKEN),
        ],
        Options {
            tables: "[webhooks]\ngithub_secret_env = \"FERRY_TEST_GH\"\n",
            ..Options::default()
        },
    );
    let env_file = s.dir.path().join("staging.env");
    std::fs::write(&env_file, format!("API_KEY={ENV_SECRET}\n")).unwrap();
    let config = std::fs::read_to_string(&s.config).unwrap().replace(
        "[environments.staging]\n",
        &format!(
            "[environments.staging]\nenv_file = \"{}\"\n",
            env_file.display()
        ),
    );
    std::fs::write(&s.config, config).unwrap();
    s.serve_env
        .push(("FERRY_TEST_GH".into(), HOOK_SECRET.into()));
    // everything ferry and its libraries log, down to debug
    s.serve_env.push(("FERRY_LOG".into(), "debug".into()));
    s.serve();
    let run = s.ferry(&["token", "create", "--name", "alice", "--json"]);
    assert_eq!(run.code(), 0, "{run}");
    let token = run.json()["token"].as_str().unwrap().to_string();
    assert!(
        !s.ferry(&["token", "list", "--json"])
            .stdout()
            .contains(&token)
    );

    // deploys, a failure, verify, lock, rollback: all with alice's token
    let client = crate::support::blocking_http()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let post = |path: &str, body: serde_json::Value| {
        let r = client
            .post(format!("{}{path}", s.api))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json::<serde_json::Value>().unwrap_or_default())
    };
    let mut ids = Vec::new();
    for (tag, expect) in [
        ("v1.0.0", "succeeded"),
        ("v1.1.0", "succeeded"),
        ("v1.2.0", "failed"),
    ] {
        let (status, d) = post(
            "/api/deployments",
            json!({"environment": "staging", "ref": tag}),
        );
        assert_eq!(status, 201, "{d}");
        let id = d["id"].as_i64().unwrap();
        assert_eq!(wait_final(&s, id), expect, "{tag}");
        ids.push(id);
    }
    // the app got the secret: it is in its environment
    let pid = s.serving("staging").1;
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(
        contains(&environ, ENV_SECRET),
        "the env_file reached the app"
    );
    assert!(post("/api/environments/staging/verify", json!({})).0 < 300);
    assert!(post("/api/environments/staging/lock", json!({"reason": "scan"})).0 < 300);
    let unlock = client
        .delete(format!("{}/api/environments/staging/lock", s.api))
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert!(unlock.status().is_success());
    let (status, d) = post(
        "/api/environments/staging/rollback",
        json!({"reason": "scan", "to": "v1.0.0"}),
    );
    assert!(status < 300, "{d}");
    let id = d["id"].as_i64().unwrap();
    assert_eq!(wait_final(&s, id), "succeeded");
    ids.push(id);
    // a webhook signed with the secret, and a forged one
    let body = r#"{"zen": "hi"}"#;
    let sign = |secret: &str| {
        use hmac::{KeyInit, Mac};
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(body.as_bytes());
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    };
    for (n, (secret, expect)) in [(HOOK_SECRET, 202), ("wrong", 401)].into_iter().enumerate() {
        let r = client
            .post(format!("{}/hooks/github", s.api))
            .header("x-github-event", "ping")
            .header("x-github-delivery", format!("delivery-{n}"))
            .header("x-hub-signature-256", sign(secret))
            .body(body)
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), expect);
    }
    // a dashboard session
    let signin = client
        .post(format!("{}/signin", s.api))
        .form(&[("token", token.as_str())])
        .send()
        .unwrap();
    assert_eq!(signin.status().as_u16(), 303);
    let cookie = signin.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let session = cookie.split_once('=').unwrap().1.to_string();

    // every answer: API reads (with the token) and dashboard pages (with the session)
    let commit = s.api(&format!("/api/deployments/{}", ids[0]))["deployment"]["commit_sha"]
        .as_str()
        .unwrap()
        .to_string();
    let mut paths: Vec<String> = Vec::new();
    for (method, route, _, _) in ferry::server::ROUTES {
        // the live stream never ends; plan needs ?ref, the rollback preview a target (below)
        if *method != "get"
            || matches!(
                *route,
                "/api/events" | "/api/environments/{env}/plan" | "/api/environments/{env}/rollback"
            )
        {
            continue;
        }
        for id in &ids {
            paths.push(
                route
                    .replace("{env}", "staging")
                    .replace("{id}", &id.to_string())
                    .replace("{sha}", &commit),
            );
        }
    }
    paths.push("/api/environments/staging/logs?n=1000".into());
    paths.push("/api/environments/staging/plan?ref=v1.1.0".into());
    paths.push("/api/environments/staging/rollback?to=v1.1.0".into());
    for p in [
        "/",
        "/environments/staging",
        "/fragments/overview",
        "/signin",
    ] {
        paths.push(p.into());
    }
    for id in &ids {
        paths.push(format!("/deployments/{id}"));
        paths.push(format!("/deployments/{id}/live"));
    }
    paths.sort();
    paths.dedup();
    let secrets = [ENV_SECRET, HOOK_SECRET, token.as_str(), session.as_str()];
    for path in &paths {
        let r = client
            .get(format!("{}{path}", s.api))
            .bearer_auth(&token)
            .header("cookie", &cookie)
            .send()
            .unwrap();
        let status = r.status().as_u16();
        let body = r.bytes().unwrap();
        assert!(status < 400, "{path}: {status}");
        for secret in secrets {
            assert!(!contains(&body, secret), "{path} shows a secret");
        }
    }

    // ferry's own log, and every file of the state dir but the app's log
    s.stop(nix::sys::signal::Signal::SIGTERM);
    let log = s.serve_log();
    assert!(log.len() > 1000, "ferry logged the scenario");
    for secret in secrets {
        assert!(!log.contains(secret), "ferry's log shows a secret");
    }
    let mut files = Vec::new();
    files_under(&s.state_dir(), &mut files);
    let app_logs = s.state_dir().join("environments/staging/logs");
    files.retain(|f| !f.starts_with(&app_logs));
    assert!(files.iter().any(|f| f.ends_with("ferry.db")));
    let mut bytes = 0;
    for file in &files {
        let content = std::fs::read(file).unwrap();
        bytes += content.len();
        for secret in secrets {
            assert!(
                !contains(&content, secret),
                "{} holds a secret",
                file.display()
            );
        }
    }
    println!(
        "4 secrets searched in {} answers, {} bytes of ferry's log and {} files ({bytes} bytes) of the state dir: found nowhere",
        paths.len(),
        log.len(),
        files.len()
    );
}

//! Several apps under one `ferry serve`: a server config listing two app configs (two sample
//! repositories, two environments each), addressed with `ferry -a` and `/api/apps/{app}/…`,
//! each with its own history and tokens; and the config errors between apps.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use support::{FERRY, GOOD, Rel, Sandbox, free_port, get, get_with, post, sh};

/// An app config for the sample app of `repo` (relative to `apps/`), with staging and
/// production on free ports: (text, [(env, url)]).
fn app_config(name: &str, repo: &str) -> (String, Vec<(String, String)>) {
    app_config_with(name, repo, "", "")
}

/// [`app_config`] with `staging_extra` added to its staging table and `tail` to the file.
fn app_config_with(
    name: &str,
    repo: &str,
    staging_extra: &str,
    tail: &str,
) -> (String, Vec<(String, String)>) {
    let (staging, production) = (free_port(), free_port());
    let text = format!(
        r#"[app]
name = "{name}"
repo = "{repo}"
start = "'{FERRY}' sample-app"
stop_timeout = "2s"
drain_timeout = "5s"

[health]
paths = ["/health"]
interval = "100ms"
timeout = "1s"
retries = 15

[environments.staging]
listen = "127.0.0.1:{staging}"
{staging_extra}

[environments.production]
listen = "127.0.0.1:{production}"

{tail}
"#
    );
    let envs = vec![
        (
            format!("{name}/staging"),
            format!("http://127.0.0.1:{staging}"),
        ),
        (
            format!("{name}/production"),
            format!("http://127.0.0.1:{production}"),
        ),
    ];
    (text, envs)
}

/// A second repository of sample-app releases beside the sandbox's.
fn second_repo(dir: &Path, tags: &[&str]) {
    let repo = dir.join("repo2");
    std::fs::create_dir(&repo).unwrap();
    sh(&repo, "git init -q -b main");
    for tag in tags {
        std::fs::write(repo.join("app.conf"), GOOD).unwrap();
        std::fs::write(repo.join("release.txt"), tag).unwrap();
        sh(
            &repo,
            &format!("git add . && git commit -qm {tag} && git tag {tag}"),
        );
    }
}

/// A sandbox whose `ferry.toml` is a server config listing `apps/*.toml`: app `api` from the
/// sandbox's repo (v1.0.0, v1.1.0), app `admin` from a second one (v2.0.0). Environments are
/// named `app/env` in `envs`.
fn two_apps() -> Sandbox {
    two_apps_with(["", ""], ["", ""])
}

/// [`two_apps`] with `staging` added to each app's staging table and `tail` to each file
/// (api's first).
fn two_apps_with(staging: [&str; 2], tail: [&str; 2]) -> Sandbox {
    let mut s = Sandbox::new(&[Rel("v1.0.0", GOOD), Rel("v1.1.0", GOOD)]);
    second_repo(s.dir.path(), &["v2.0.0"]);
    std::fs::create_dir(s.dir.path().join("apps")).unwrap();
    let (api, mut envs) = app_config_with("api", "../repo", staging[0], tail[0]);
    let (admin, admin_envs) = app_config_with("admin", "../repo2", staging[1], tail[1]);
    envs.extend(admin_envs);
    std::fs::write(s.dir.path().join("apps/api.toml"), api).unwrap();
    std::fs::write(s.dir.path().join("apps/admin.toml"), admin).unwrap();
    let port: u16 = s.api.rsplit(':').next().unwrap().parse().unwrap();
    std::fs::write(
        &s.config,
        format!("apps = [\"apps/*.toml\"]\n\n[server]\nlisten = \"127.0.0.1:{port}\"\n"),
    )
    .unwrap();
    s.envs = envs;
    s
}

fn version(url: &str) -> String {
    let (status, body) = get(&format!("{url}/version")).expect("the proxy answers");
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["version"].as_str().unwrap().to_string()
}

#[test]
fn two_apps_deploy_apart_with_their_own_history_and_tokens() {
    let mut s = two_apps();
    s.serve();
    let deployed = |app: &str, env: &str, r: &str| {
        let run = s.ferry(&["-a", app, "deploy", env, r]);
        assert_eq!(run.code(), 0, "{run}\n{}", s.serve_log());
    };
    deployed("api", "staging", "v1.0.0");
    deployed("admin", "staging", "v2.0.0");
    deployed("admin", "production", "v2.0.0");
    assert_eq!(version(&s.url("api/staging")), "v1.0.0");
    assert_eq!(version(&s.url("admin/staging")), "v2.0.0");
    assert_eq!(version(&s.url("admin/production")), "v2.0.0");

    // each app's history is its own
    let history = |app: &str| s.ferry(&["-a", app, "history", "--json"]).json();
    let api = history("api");
    let admin = history("admin");
    assert_eq!(api.as_array().unwrap().len(), 1, "{api}");
    assert_eq!(admin.as_array().unwrap().len(), 2, "{admin}");
    assert!(admin.to_string().contains("v2.0.0") && !admin.to_string().contains("v1.0.0"));
    // each its own state dir under the server's
    let state = s.state_dir();
    assert!(state.join("apps/api/ferry.db").is_file());
    assert!(state.join("apps/admin/ferry.db").is_file());
    assert!(state.join("local-token").is_file());

    // `status` shows every app; other commands must be told which, and say which there are
    let run = s.ferry(&["status"]);
    assert_eq!(run.code(), 0, "{run}");
    let out = run.stdout();
    let (admin_at, api_at) = (
        out.find("app admin\n").unwrap(),
        out.find("app api\n").unwrap(),
    );
    assert!(
        out[admin_at..api_at].contains("v2.0.0") && out[api_at..].contains("v1.0.0"),
        "{run}"
    );
    let by_app = s.ferry(&["status", "--json"]).json();
    assert_eq!(by_app["api"].as_array().unwrap().len(), 2, "{by_app}");
    let run = s.ferry(&["history"]);
    assert_eq!(run.code(), 2, "{run}");
    assert!(
        run.stderr().contains("several apps (admin, api)") && run.stderr().contains("-a APP"),
        "{run}"
    );
    let run = s.ferry(&["-a", "shop", "status"]);
    assert_eq!(run.code(), 2, "{run}");
    assert!(run.stderr().contains("no app is called \"shop\""), "{run}");

    // the API: prefixed routes, the list, and un-prefixed ones refused with the way out
    let local = s.token();
    let (status, body) = s.get("/api/apps/api/environments").unwrap();
    assert_eq!(status, 200, "{body}");
    let envs: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(envs.as_array().unwrap().len(), 2);
    let staging = envs
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["environment"] == "staging");
    assert_eq!(staging.unwrap()["version"], "v1.0.0", "{envs}");
    let apps: Value = serde_json::from_str(&s.get("/api/apps").unwrap().1).unwrap();
    assert_eq!(
        apps,
        json!([
            {"name": "admin", "environments": ["production", "staging"]},
            {"name": "api", "environments": ["production", "staging"]},
        ])
    );
    let (status, body) = s.get("/api/environments").unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("several apps (admin, api)") && body.contains("/api/apps/{app}/"),
        "{body}"
    );
    let (status, _) = get_with(&format!("{}/api/environments", s.api), None).unwrap();
    assert_eq!(status, 401, "no token: nothing named");
    let (status, _) = s.get("/api/apps/shop/environments").unwrap();
    assert_eq!(status, 404);
    // a deploy through the prefixed API
    let (status, body) = post(
        &format!("{}/api/apps/api/deployments", s.api),
        Some(&local),
        &json!({"environment": "production", "ref": "v1.0.0"}),
    );
    assert_eq!(status, 201, "{body}");

    // a token of admin's works for admin only
    let run = s.ferry(&["-a", "admin", "token", "create", "ci", "--json"]);
    assert_eq!(run.code(), 0, "{run}");
    let secret = run.json()["token"].as_str().unwrap().to_string();
    let on = |app: &str| {
        get_with(
            &format!("{}/api/apps/{app}/environments", s.api),
            Some(&secret),
        )
        .unwrap()
        .0
    };
    assert_eq!(on("admin"), 200);
    assert_eq!(on("api"), 401, "admin's token is unknown to api");
    let (status, _) = post(
        &format!("{}/api/apps/api/deployments", s.api),
        Some(&secret),
        &json!({"environment": "staging", "ref": "v1.1.0"}),
    );
    assert_eq!(status, 401, "nor may it deploy api");
    let (_, body) = get_with(&format!("{}/api/apps", s.api), Some(&secret)).unwrap();
    let listed: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["name"], "admin");
    // /health covers both
    let (status, body) = get(&format!("{}/health", s.api)).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"admin\"") && body.contains("\"api\""),
        "{body}"
    );
    // /metrics: every app's series, labelled, one family each, what is shared once
    let (status, text) = s.get("/metrics").unwrap();
    assert_eq!(status, 200, "{text}");
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    let info: Vec<(String, String)> = scrape
        .samples
        .iter()
        .filter(|m| m.metric == "ferry_version_info")
        .map(|m| {
            let l = |k: &str| m.labels.get(k).unwrap_or_default().to_string();
            (l("app"), l("version"))
        })
        .collect();
    assert!(info.contains(&("api".into(), "v1.0.0".into())), "{info:?}");
    assert!(
        info.contains(&("admin".into(), "v2.0.0".into())),
        "{info:?}"
    );
    assert_eq!(
        text.matches("# TYPE ferry_version_info ").count(),
        1,
        "{text}"
    );
    assert_eq!(text.matches("\nferry_up 1").count(), 1, "{text}");
    // admin's token sees admin's series only
    let (status, text) = get_with(&format!("{}/metrics", s.api), Some(&secret)).unwrap();
    assert_eq!(status, 200);
    assert!(
        text.contains("app=\"admin\"") && !text.contains("app=\"api\""),
        "{text}"
    );
    assert_eq!(get(&format!("{}/metrics", s.api)).unwrap().0, 401);
}

const GH_SECRET: &str = "gh-secret-for-apps";

fn sign(body: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(GH_SECRET.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn github_push(s: &Sandbox, repository: &str, sha: &str, signature: Option<&str>) -> (u16, Value) {
    let body = serde_json::to_vec(&json!({
        "ref": "refs/heads/main",
        "after": sha,
        "repository": {"full_name": repository},
        "pusher": {"name": "dev"},
    }))
    .unwrap();
    let resp = crate::support::blocking_http()
        .no_proxy()
        .build()
        .unwrap()
        .post(format!("{}/hooks/github", s.api))
        .header("x-github-event", "push")
        .header("x-github-delivery", format!("d-{repository}-{sha}"))
        .header(
            "x-hub-signature-256",
            signature.map_or_else(|| sign(&body), str::to_string),
        )
        .header("content-type", "application/json")
        .body(body)
        .send()
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or_default())
}

#[test]
fn a_webhook_goes_to_the_app_whose_repository_the_push_names() {
    let hooks = |repo: &str| {
        format!("[webhooks]\ngithub_secret_env = \"FERRY_TEST_GH\"\nrepository = \"acme/{repo}\"\n")
    };
    let track = "track = { branch = \"main\" }";
    let (api_hooks, admin_hooks) = (hooks("api"), hooks("admin"));
    let mut s = two_apps_with([track, track], [&api_hooks, &admin_hooks]);
    s.serve_env.push(("FERRY_TEST_GH".into(), GH_SECRET.into()));
    s.serve();
    let out = std::process::Command::new("git")
        .args(["rev-parse", "main"])
        .current_dir(s.dir.path().join("repo2"))
        .output()
        .unwrap();
    let sha = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // signed by nobody: refused without a word about the apps
    let (status, _) = github_push(&s, "acme/admin", &sha, Some("sha256=00"));
    assert_eq!(status, 401);
    let (status, _) = github_push(&s, "acme/other", &sha, Some("sha256=00"));
    assert_eq!(status, 401);
    let (status, body) = github_push(&s, "acme/other", &sha, None);
    assert_eq!(status, 202, "{body}");
    assert!(body.to_string().contains("no app"), "{body}");
    let (status, body) = github_push(&s, "ACME/admin", &sha, None);
    assert!(status < 300, "{status} {body}");
    assert!(
        support::eventually(Duration::from_secs(30), || {
            get(&format!("{}/version", s.url("admin/staging")))
                .is_some_and(|(st, b)| st == 200 && b.contains(&sha))
        }),
        "admin's staging deploys the push\n{}",
        s.serve_log()
    );
    let api = s.ferry(&["-a", "api", "history", "--json"]).json();
    assert_eq!(
        api.as_array().unwrap().len(),
        0,
        "api deployed nothing: {api}"
    );
    let admin = s.ferry(&["-a", "admin", "history", "--json"]).json();
    assert_eq!(admin.as_array().unwrap().len(), 1, "{admin}");
}

#[test]
fn a_deploy_of_one_app_fails_no_request_of_the_other() {
    let mut s = two_apps();
    s.serve();
    for (app, r) in [("admin", "v2.0.0"), ("api", "v1.0.0")] {
        let run = s.ferry(&["-a", app, "deploy", "staging", r]);
        assert_eq!(run.code(), 0, "{run}\n{}", s.serve_log());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let url = format!("{}/version", s.url("admin/staging"));
    let client = std::thread::spawn({
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        move || {
            let http = crate::support::blocking_http()
                .no_proxy()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            while !stop.load(Ordering::Relaxed) {
                let served = http
                    .get(&url)
                    .send()
                    .ok()
                    .filter(|r| r.status() == 200)
                    .and_then(|r| r.text().ok())
                    .is_some_and(|t| t.contains("v2.0.0"));
                let counter = if served { &ok } else { &failed };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    for r in ["v1.1.0", "v1.0.0"] {
        let run = s.ferry(&["-a", "api", "deploy", "staging", r]);
        assert_eq!(run.code(), 0, "{run}\n{}", s.serve_log());
    }
    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();
    assert!(ok.load(Ordering::Relaxed) > 0, "the client made requests");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "failed requests on admin"
    );
    assert_eq!(version(&s.url("api/staging")), "v1.0.0");
}

/// `ferry check` with `files`, which must fail naming `needles`.
fn refused(dir: &Path, files: &[&str], needles: &[&str]) {
    let mut cmd = std::process::Command::new(FERRY);
    for f in files {
        cmd.arg("-c").arg(dir.join(f));
    }
    let out = cmd.arg("check").output().unwrap();
    let run = support::Run(out);
    assert_eq!(run.code(), 2, "{run}");
    for n in needles {
        assert!(run.stderr().contains(n), "{n} missing: {run}");
    }
}

#[test]
fn conflicts_between_apps_are_config_errors_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let write = |name: &str, text: &str| std::fs::write(d.join(name), text).unwrap();
    let (api, _) = app_config("api", "https://example.com/api.git");
    let (admin, _) = app_config("admin", "https://example.com/admin.git");
    write("api.toml", &api);
    write("admin.toml", &admin);
    write("api2.toml", &api);
    refused(
        d,
        &["api.toml", "api2.toml"],
        &["two apps are named \"api\"", "api.toml", "api2.toml"],
    );
    // the same addresses as api's, under another name
    write(
        "shop.toml",
        &api.replace("name = \"api\"", "name = \"shop\""),
    );
    refused(
        d,
        &["api.toml", "shop.toml"],
        &[
            "environment production of app api",
            "of app shop",
            "both listen on",
        ],
    );
    let server = "\n[server]\nlisten = \"127.0.0.1:1\"\n";
    write("api_s.toml", &format!("{api}{server}"));
    write("admin_s.toml", &format!("{admin}{server}"));
    refused(
        d,
        &["api_s.toml", "admin_s.toml"],
        &[
            "api_s.toml has [server]",
            "admin_s.toml has [server]",
            "at most one",
        ],
    );
    // together they are fine
    let mut cmd = std::process::Command::new(FERRY);
    let out = cmd
        .args(["-c"])
        .arg(d.join("api_s.toml"))
        .arg("-c")
        .arg(d.join("admin.toml"))
        .arg("check")
        .output()
        .unwrap();
    let run = support::Run(out);
    assert_eq!(run.code(), 0, "{run}");
    assert!(run.stdout().contains("2 app(s)"), "{run}");
}

/// A client that shows redirects instead of following them.
fn browser() -> reqwest::blocking::Client {
    crate::support::blocking_http()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Signs in at `/signin` with `token`: the session cookie's `name=value`.
fn sign_in(s: &Sandbox, token: &str) -> String {
    let resp = browser()
        .post(format!("{}/signin", s.api))
        .header("origin", &s.api)
        .form(&[("token", token)])
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

/// `GET path` with `cookie`: status, `Location` and body.
fn page(s: &Sandbox, path: &str, cookie: Option<&str>) -> (u16, String, String) {
    let mut req = browser().get(format!("{}{path}", s.api));
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    let resp = req.send().unwrap();
    let status = resp.status().as_u16();
    let location = resp
        .headers()
        .get("location")
        .map(|l| l.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, location, resp.text().unwrap())
}

#[test]
fn the_dashboard_lists_the_apps_and_keeps_each_under_its_prefix() {
    let mut s = two_apps();
    s.serve();
    let run = s.ferry(&["-a", "admin", "deploy", "staging", "v2.0.0"]);
    assert_eq!(run.code(), 0, "{run}");
    // signed out: to the sign-in page, each app's under its prefix
    let (status, location, _) = page(&s, "/", None);
    assert!(status == 303 || status == 302 || status == 307, "{status}");
    assert_eq!(location, "/signin");
    let (_, location, _) = page(&s, "/apps/admin/", None);
    assert_eq!(location, "/apps/admin/signin");

    // the local token works for both: one sign-in opens both
    let cookie = sign_in(&s, &s.token());
    let (status, _, index) = page(&s, "/", Some(&cookie));
    assert_eq!(status, 200, "{index}");
    assert!(
        index.contains("href=\"/apps/api/\"") && index.contains("href=\"/apps/admin/\""),
        "{index}"
    );
    assert!(index.contains("v2.0.0"), "admin's staging version: {index}");
    let (status, _, overview) = page(&s, "/apps/admin/", Some(&cookie));
    assert_eq!(status, 200, "{overview}");
    assert!(
        overview.contains("href=\"/apps/admin/environments/staging\""),
        "{overview}"
    );
    assert!(
        !overview.contains("href=\"/environments/"),
        "unprefixed link: {overview}"
    );
    assert!(overview.contains("data-live-events=\"/apps/admin/api/events\""));
    let (status, _, env) = page(&s, "/apps/api/environments/staging", Some(&cookie));
    assert_eq!(status, 200, "{env}");
    let (status, _, _) = page(&s, "/environments/staging", Some(&cookie));
    assert_eq!(status, 404, "which app's? there are two");

    // a token of admin's signs in to admin only
    let run = s.ferry(&[
        "-a", "admin", "token", "create", "qa", "--scope", "verify", "--json",
    ]);
    let secret = run.json()["token"].as_str().unwrap().to_string();
    let cookie = sign_in(&s, &secret);
    let (_, _, index) = page(&s, "/", Some(&cookie));
    assert!(
        index.contains("/apps/admin/") && !index.contains("/apps/api/"),
        "{index}"
    );
    let (status, location, _) = page(&s, "/apps/api/", Some(&cookie));
    assert!((300..400).contains(&status), "{status}");
    assert_eq!(location, "/apps/api/signin");
    let (status, _, _) = page(&s, "/apps/admin/", Some(&cookie));
    assert_eq!(status, 200);
}

#[test]
fn an_apps_commands_reach_neither_another_app_nor_the_servers_files() {
    let mut s = two_apps();
    let state = s.state_dir();
    let state = state.display();
    // api's build tries to reach what is the server's or admin's: the deploy goes through
    // only if every attempt fails
    let build = format!(
        "build = [\"! cat '{state}/local-token'\", \"! ls '{state}/apps'\", \
         \"! ls '{state}/apps/admin'\", \"! cat '{state}/apps/admin/ferry.db'\", \
         \"! cat '{state}/serve.lock'\"]"
    );
    let path = s.dir.path().join("apps/api.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.replacen(
        "stop_timeout = \"2s\"",
        &format!("stop_timeout = \"2s\"\n{build}"),
        1,
    );
    std::fs::write(&path, text).unwrap();
    s.serve();
    let run = s.ferry(&["-a", "admin", "deploy", "staging", "v2.0.0"]);
    assert_eq!(run.code(), 0, "{run}");
    let run = s.ferry(&["-a", "api", "deploy", "staging", "v1.0.0"]);
    assert_eq!(
        run.code(),
        0,
        "api's build reached another app's files:\n{run}"
    );
    assert_eq!(version(&s.url("api/staging")), "v1.0.0");
}

#[test]
fn the_front_door_routes_each_apps_hosts_and_a_deploy_of_one_fails_no_request_of_the_other() {
    let mut s = two_apps_with(
        [
            "hosts = [\"api.test\"]",
            "hosts = [\"admin.test\", \"*.admin.test\"]",
        ],
        ["", ""],
    );
    let http = free_port();
    let mut server = std::fs::read_to_string(&s.config).unwrap();
    server.push_str(&format!("http = \"127.0.0.1:{http}\"\n"));
    std::fs::write(&s.config, server).unwrap();
    s.serve();
    for (app, r) in [("admin", "v2.0.0"), ("api", "v1.0.0")] {
        let run = s.ferry(&["-a", app, "deploy", "staging", r]);
        assert_eq!(run.code(), 0, "{run}\n{}", s.serve_log());
    }
    let front = format!("http://127.0.0.1:{http}/version");
    let http_client = crate::support::blocking_http()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let via = |host: &str| {
        let resp = http_client.get(&front).header("host", host).send().unwrap();
        (resp.status().as_u16(), resp.text().unwrap())
    };
    let (status, body) = via("api.test");
    assert!(status == 200 && body.contains("v1.0.0"), "{status} {body}");
    let (status, body) = via("admin.test");
    assert!(status == 200 && body.contains("v2.0.0"), "{status} {body}");
    let (status, body) = via("eu.admin.test");
    assert!(
        status == 200 && body.contains("v2.0.0"),
        "wildcard: {status} {body}"
    );
    let (status, _) = via("shop.test");
    assert_eq!(status, 404, "a host no app claims");

    // admin keeps answering through the front door while api deploys twice
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let client = std::thread::spawn({
        let (stop, ok, failed, front) = (stop.clone(), ok.clone(), failed.clone(), front.clone());
        move || {
            let http = crate::support::blocking_http()
                .no_proxy()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            while !stop.load(Ordering::Relaxed) {
                let served = http
                    .get(&front)
                    .header("host", "admin.test")
                    .send()
                    .ok()
                    .filter(|r| r.status() == 200)
                    .and_then(|r| r.text().ok())
                    .is_some_and(|t| t.contains("v2.0.0"));
                let counter = if served { &ok } else { &failed };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    for r in ["v1.1.0", "v1.0.0"] {
        let run = s.ferry(&["-a", "api", "deploy", "staging", r]);
        assert_eq!(run.code(), 0, "{run}\n{}", s.serve_log());
    }
    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();
    assert!(ok.load(Ordering::Relaxed) > 0, "the client made requests");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "failed requests on admin.test"
    );
    let (status, body) = via("api.test");
    assert!(status == 200 && body.contains("v1.0.0"), "{status} {body}");
}

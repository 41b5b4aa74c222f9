//! Webhooks as the providers really send them, against a real `ferry serve`: only the
//! configured repository acts, a pushed commit deploys once whatever the delivery id, GitHub's
//! form-encoded default, GitLab resends and old GitLab without an event UUID, pushes over
//! 1 MiB, annotated tags.

mod support;

use std::time::Duration;

use hmac::{KeyInit, Mac};
use serde_json::{Value, json};
use support::{GOOD, Options, Rel, Sandbox, eventually, sh};

const GH_SECRET: &str = "gh-secret-for-webhook-tests";
const GL_TOKEN: &str = "gl-token-for-webhook-tests";
/// `[webhooks]` naming no repository.
const ANY_REPO: &str =
    "[webhooks]\ngithub_secret_env = \"FERRY_TEST_GH\"\ngitlab_token_env = \"FERRY_TEST_GL\"\n";
/// `[webhooks]` naming the sandbox repository as GitHub and GitLab would.
const WEBHOOKS: &str = "[webhooks]\ngithub_secret_env = \"FERRY_TEST_GH\"\n\
                        gitlab_token_env = \"FERRY_TEST_GL\"\nrepository = \"acme/sample\"\n";

fn sandbox(env_extra: &'static [(&'static str, &'static str)], tables: &'static str) -> Sandbox {
    let mut s = Sandbox::with(
        &[Rel("v1.0.0", GOOD)],
        Options {
            env_extra,
            tables,
            ..Options::default()
        },
    );
    s.serve_env.push(("FERRY_TEST_GH".into(), GH_SECRET.into()));
    s.serve_env.push(("FERRY_TEST_GL".into(), GL_TOKEN.into()));
    s
}

const MAIN: &[(&str, &str)] = &[("staging", "track = { branch = \"main\" }")];

fn sign(body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(GH_SECRET.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn client() -> reqwest::blocking::Client {
    crate::support::blocking_http()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn answer(resp: reqwest::blocking::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or_default())
}

/// A GitHub delivery of `body` as sent, signed over exactly those bytes.
fn github(
    s: &Sandbox,
    event: &str,
    delivery: &str,
    content_type: &str,
    body: &[u8],
) -> (u16, Value) {
    answer(
        client()
            .post(format!("{}/hooks/github", s.api))
            .header("x-github-event", event)
            .header("x-github-delivery", delivery)
            .header("x-hub-signature-256", sign(body))
            .header("content-type", content_type)
            .body(body.to_vec())
            .send()
            .unwrap(),
    )
}

fn github_json(s: &Sandbox, event: &str, delivery: &str, body: &Value) -> (u16, Value) {
    github(
        s,
        event,
        delivery,
        "application/json",
        &serde_json::to_vec(body).unwrap(),
    )
}

/// A GitLab delivery with the given optional headers.
fn gitlab(
    s: &Sandbox,
    event: &str,
    uuid: Option<&str>,
    idempotency_key: Option<&str>,
    body: &Value,
) -> (u16, Value) {
    let mut req = client()
        .post(format!("{}/hooks/gitlab", s.api))
        .header("x-gitlab-event", event)
        .header("x-gitlab-token", GL_TOKEN)
        .json(body);
    if let Some(uuid) = uuid {
        req = req.header("x-gitlab-event-uuid", uuid);
    }
    if let Some(key) = idempotency_key {
        req = req.header("idempotency-key", key);
    }
    answer(req.send().unwrap())
}

/// A GitHub push payload as GitHub shapes it.
fn gh_push(repo: &str, git_ref: &str, after: &str) -> Value {
    json!({
        "ref": git_ref,
        "before": "1111111111111111111111111111111111111111",
        "after": after,
        "repository": {"full_name": repo, "name": repo.rsplit('/').next()},
        "pusher": {"name": "octocat"},
        "head_commit": {"id": after, "message": "a change"},
        "commits": [{"id": after, "message": "a change"}],
    })
}

fn gl_push(project: &str, git_ref: &str, after: &str) -> Value {
    json!({
        "object_kind": "push",
        "ref": git_ref,
        "before": "1111111111111111111111111111111111111111",
        "after": after,
        "checkout_sha": after,
        "user_username": "gitlabber",
        "project": {"path_with_namespace": project},
    })
}

fn git(s: &Sandbox, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(&s.repo)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn commit(s: &Sandbox, note: &str) -> String {
    std::fs::write(s.repo.join("note.txt"), note).unwrap();
    sh(&s.repo, &format!("git add . && git commit -qm '{note}'"));
    git(s, &["rev-parse", "HEAD"])
}

fn deployments(s: &Sandbox) -> Vec<Value> {
    s.api("/api/deployments").as_array().unwrap().clone()
}

fn deliveries(s: &Sandbox) -> Vec<Value> {
    s.api("/api/deliveries").as_array().unwrap().clone()
}

fn outcome(body: &Value) -> String {
    body["outcome"].as_str().unwrap_or_default().to_string()
}

/// The id in an outcome such as "deployment 3 to staging".
fn deployment_id(body: &Value) -> i64 {
    let text = outcome(body);
    text.strip_prefix("deployment ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no deployment in {body}"))
}

fn wait_succeeded(s: &Sandbox, id: i64) -> Value {
    let state =
        |s: &Sandbox| s.api(&format!("/api/deployments/{id}"))["deployment"]["state"].clone();
    assert!(
        eventually(Duration::from_secs(60), || state(s) == "succeeded"),
        "deployment {id} is {}\n{}",
        state(s),
        s.serve_log()
    );
    s.api(&format!("/api/deployments/{id}"))["deployment"].clone()
}

#[test]
fn a_push_from_another_repository_is_acknowledged_and_ignored() {
    let mut s = sandbox(MAIN, WEBHOOKS);
    s.serve();
    let head = commit(&s, "a change");

    // an organisation hook delivers every repository's pushes: only acme/sample's count
    let (status, body) = github_json(
        &s,
        "push",
        "other-1",
        &gh_push("acme/other", "refs/heads/main", &head),
    );
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        outcome(&body),
        "ignored: a push of repository acme/other, not acme/sample"
    );
    let (status, body) = gitlab(
        &s,
        "Push Hook",
        Some("other-2"),
        None,
        &gl_push("acme/sub/other", "refs/heads/main", &head),
    );
    assert_eq!(status, 202, "{body}");
    assert!(outcome(&body).contains("not acme/sample"), "{body}");
    // a push that names no repository at all is not taken for this one
    let (_, body) = github_json(
        &s,
        "push",
        "other-3",
        &json!({"ref": "refs/heads/main", "after": head}),
    );
    assert!(outcome(&body).contains("names no repository"), "{body}");
    assert!(deployments(&s).is_empty(), "a foreign push deployed");
    let (_, metrics) = s.get("/metrics").unwrap();
    assert!(
        metrics
            .contains("ferry_webhook_deliveries_total{provider=\"github\",outcome=\"foreign\"} 2"),
        "{metrics}"
    );
    let stored = deliveries(&s);
    assert_eq!(stored.len(), 3, "ignored deliveries are recorded");
    assert!(
        stored[2]["outcome"]
            .as_str()
            .unwrap()
            .starts_with("ignored: a push of repository acme/other")
    );

    // the configured repository deploys (names compare as GitHub does, ignoring case)
    let (status, body) = github_json(
        &s,
        "push",
        "own-1",
        &gh_push("Acme/Sample", "refs/heads/main", &head),
    );
    assert_eq!(status, 202, "{body}");
    let d = wait_succeeded(&s, deployment_id(&body));
    assert_eq!(d["commit_sha"], head.as_str());
}

#[test]
fn the_repository_defaults_to_the_one_app_repo_names() {
    let mut s = sandbox(MAIN, ANY_REPO);
    // `[app] repo` is a GitHub URL; git is told to fetch it from the sandbox repository
    let text = std::fs::read_to_string(&s.config).unwrap().replace(
        "repo = \"repo\"",
        "repo = \"https://github.com/acme/sample.git\"",
    );
    std::fs::write(&s.config, text).unwrap();
    let local = s.repo.display().to_string();
    for (k, v) in [
        ("GIT_CONFIG_COUNT", "1"),
        ("GIT_CONFIG_KEY_0", &format!("url.{local}.insteadOf")),
        ("GIT_CONFIG_VALUE_0", "https://github.com/acme/sample.git"),
    ] {
        s.serve_env.push((k.into(), v.into()));
    }
    let check = s.ferry(&["check"]);
    assert_eq!(check.code(), 0, "{check}");
    assert!(
        check
            .stdout()
            .contains("pushes of acme/sample (from [app] repo)"),
        "{check}"
    );
    s.serve();
    let head = commit(&s, "a change");
    let (_, body) = github_json(
        &s,
        "push",
        "other",
        &gh_push("evil/sample", "refs/heads/main", &head),
    );
    assert_eq!(
        outcome(&body),
        "ignored: a push of repository evil/sample, not acme/sample"
    );
    let (_, body) = github_json(
        &s,
        "push",
        "own",
        &gh_push("acme/sample", "refs/heads/main", &head),
    );
    let d = wait_succeeded(&s, deployment_id(&body));
    assert_eq!(d["commit_sha"], head.as_str());
    assert_eq!(deployments(&s).len(), 1);
}

#[test]
fn without_a_known_repository_check_warns_that_any_repository_counts() {
    let s = sandbox(MAIN, ANY_REPO);
    let check = s.ferry(&["check"]);
    assert_eq!(check.code(), 0, "{check}");
    assert!(
        check.stdout().contains("pushes of any repository"),
        "{check}"
    );
    assert!(
        check
            .stderr()
            .contains("warning: webhooks act on pushes from any repository"),
        "{check}"
    );
}

#[test]
fn a_replayed_body_with_a_fresh_delivery_id_deploys_once() {
    let mut s = sandbox(MAIN, WEBHOOKS);
    s.serve();
    let head = commit(&s, "a change");
    let body = serde_json::to_vec(&gh_push("acme/sample", "refs/heads/main", &head)).unwrap();

    let (status, first) = github(&s, "push", "d-1", "application/json", &body);
    assert_eq!(status, 202, "{first}");
    let id = deployment_id(&first);
    // the same signed body at once (the deployment is queued or running) ...
    let (status, again) = github(&s, "push", "d-2", "application/json", &body);
    assert_eq!(status, 202, "{again}");
    assert!(
        outcome(&again).starts_with("staging: not deployed again: this push of main"),
        "{again}"
    );
    wait_succeeded(&s, id);
    // ... and after it is deployed, under other delivery ids and through the other provider
    for n in 3..6 {
        let (_, again) = github(&s, "push", &format!("d-{n}"), "application/json", &body);
        assert!(
            outcome(&again).contains(&format!("made deployment {id} already (succeeded)")),
            "{again}"
        );
    }
    let (_, again) = gitlab(
        &s,
        "Push Hook",
        Some("u-1"),
        None,
        &gl_push("acme/sample", "refs/heads/main", &head),
    );
    assert!(outcome(&again).contains("not deployed again"), "{again}");
    assert_eq!(deployments(&s).len(), 1, "the replays deployed");
    assert_eq!(deliveries(&s).len(), 6, "every delivery is recorded");

    // a new commit deploys, once, however many copies of its push arrive at the same time
    let next = commit(&s, "another change");
    let body = serde_json::to_vec(&gh_push("acme/sample", "refs/heads/main", &next)).unwrap();
    let answers: Vec<Value> = std::thread::scope(|scope| {
        let copies: Vec<_> = (0..6)
            .map(|n| {
                let (s, body) = (&s, &body);
                scope.spawn(move || github(s, "push", &format!("c-{n}"), "application/json", body))
            })
            .collect();
        copies.into_iter().map(|c| c.join().unwrap().1).collect()
    });
    let started: Vec<&Value> = answers
        .iter()
        .filter(|a| outcome(a).starts_with("deployment "))
        .collect();
    assert_eq!(started.len(), 1, "{answers:?}");
    let d = wait_succeeded(&s, deployment_id(started[0]));
    assert_eq!(d["commit_sha"], next.as_str());
    assert_eq!(deployments(&s).len(), 2);
}

#[test]
fn github_form_encoded_ping_and_push_work() {
    let mut s = sandbox(MAIN, WEBHOOKS);
    s.serve();
    let form = "application/x-www-form-urlencoded";
    let encode = |payload: &Value| {
        serde_urlencoded::to_string([("payload", payload.to_string())])
            .unwrap()
            .into_bytes()
    };

    let ping = encode(&json!({"zen": "Design for failure.", "hook_id": 1,
                              "repository": {"full_name": "acme/sample"}}));
    let (status, body) = github(&s, "ping", "f-ping", form, &ping);
    assert_eq!((status, outcome(&body).as_str()), (202, "pong"), "{body}");

    let head = commit(&s, "a change");
    let push = encode(&gh_push("acme/sample", "refs/heads/main", &head));
    let (status, body) = github(&s, "push", "f-push", form, &push);
    assert_eq!(status, 202, "{body}");
    let d = wait_succeeded(&s, deployment_id(&body));
    assert_eq!(d["commit_sha"], head.as_str());

    // the signature is over the raw body, not the JSON inside it
    let json_only = gh_push("acme/sample", "refs/heads/main", &head).to_string();
    let status = client()
        .post(format!("{}/hooks/github", s.api))
        .header("x-github-event", "push")
        .header("x-github-delivery", "f-forged")
        .header("x-hub-signature-256", sign(json_only.as_bytes()))
        .header("content-type", form)
        .body(push.clone())
        .send()
        .unwrap()
        .status()
        .as_u16();
    assert_eq!(status, 401);
    // a form without a payload field is malformed
    let (status, body) = github(&s, "push", "f-empty", form, b"other=1");
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("malformed")),
        "{body}"
    );
}

#[test]
fn a_gitlab_resend_is_a_duplicate_and_old_gitlab_without_uuid_works() {
    let mut s = sandbox(MAIN, WEBHOOKS);
    s.serve();
    // GitLab before 14.6: no X-Gitlab-Event-UUID
    let head = commit(&s, "a change");
    let push = gl_push("acme/sample", "refs/heads/main", &head);
    let (status, body) = gitlab(&s, "Push Hook", None, None, &push);
    assert_eq!(status, 202, "{body}");
    let d = wait_succeeded(&s, deployment_id(&body));
    assert_eq!(d["commit_sha"], head.as_str());

    // "Resend request": the same Idempotency-Key with a new event UUID
    let next = commit(&s, "another change");
    let push = gl_push("acme/sample", "refs/heads/main", &next);
    let key = "5f0b3c1e-0000-4000-8000-000000000001";
    let (status, body) = gitlab(&s, "Push Hook", Some("uuid-1"), Some(key), &push);
    assert_eq!(status, 202, "{body}");
    let id = deployment_id(&body);
    let (status, body) = gitlab(&s, "Push Hook", Some("uuid-2"), Some(key), &push);
    assert_eq!(
        (status, body["duplicate"].as_bool()),
        (200, Some(true)),
        "{body}"
    );
    wait_succeeded(&s, id);
    assert_eq!(deployments(&s).len(), 2);
    let stored = deliveries(&s);
    assert_eq!(stored.len(), 2, "a resend is not stored again");
    assert_eq!(stored[0]["delivery_id"], "uuid-1");
    assert_eq!(stored[0]["idempotency_key"], key);
}

#[test]
fn a_two_megabyte_push_is_accepted() {
    let mut s = sandbox(MAIN, WEBHOOKS);
    s.serve();
    let head = commit(&s, "a change");
    // GitHub lists up to 2,048 commits in a push; with long messages that is over 1 MiB
    let mut payload = gh_push("acme/sample", "refs/heads/main", &head);
    payload["commits"] = (0..2048)
        .map(|i| json!({"id": format!("{i:040x}"), "message": "m".repeat(1000)}))
        .collect();
    let body = serde_json::to_vec(&payload).unwrap();
    assert!(body.len() > 2 * 1024 * 1024, "{}", body.len());
    let (status, answer) = github(&s, "push", "big-1", "application/json", &body);
    assert_eq!(status, 202, "{answer}");
    let d = wait_succeeded(&s, deployment_id(&answer));
    assert_eq!(d["commit_sha"], head.as_str());
    // the API keeps its own limit
    let status = client()
        .post(format!("{}/api/deployments", s.api))
        .bearer_auth(s.token())
        .header("content-type", "application/json")
        .body(body)
        .send()
        .map(|r| r.status().as_u16());
    assert!(matches!(status, Ok(413) | Err(_)), "{status:?}");
}

#[test]
fn an_annotated_tag_push_records_the_commit() {
    let mut s = sandbox(
        &[("staging", "track = { tags = true, auto = true }")],
        WEBHOOKS,
    );
    s.serve();
    let head = commit(&s, "release 1.1");
    sh(&s.repo, "git tag -a v1.1.0 -m 'release 1.1.0'");
    let tag_object = git(&s, &["rev-parse", "v1.1.0"]);
    assert_ne!(tag_object, head, "an annotated tag is an object of its own");

    // GitHub: `after` is the tag object, `head_commit` the commit it points to
    let mut payload = gh_push("acme/sample", "refs/tags/v1.1.0", &tag_object);
    payload["head_commit"] = json!({"id": head, "message": "release 1.1"});
    let (status, body) = github_json(&s, "push", "tag-1", &payload);
    assert_eq!(status, 202, "{body}");
    let d = wait_succeeded(&s, deployment_id(&body));
    assert_eq!(d["commit_sha"], head.as_str());
    let stored = deliveries(&s);
    assert_eq!(stored[0]["commit_sha"], head.as_str(), "{stored:?}");

    // GitLab: `after` is the tag object, `checkout_sha` the commit; this one is deployed already
    let mut payload = gl_push("acme/sample", "refs/tags/v1.1.0", &tag_object);
    payload["object_kind"] = json!("tag_push");
    payload["checkout_sha"] = json!(head);
    let (status, body) = gitlab(&s, "Tag Push Hook", Some("tag-2"), None, &payload);
    assert_eq!(status, 202, "{body}");
    assert!(outcome(&body).contains("not deployed again"), "{body}");
    assert_eq!(deliveries(&s)[0]["commit_sha"], head.as_str());
    assert_eq!(deployments(&s).len(), 1);
}

#[test]
fn a_push_during_a_running_deploy_or_the_restore_at_start_deploys_afterwards() {
    let mut s = Sandbox::with(
        &[Rel("v1.0.0", "boot_ms = 1500\n")],
        Options {
            env_extra: MAIN,
            tables: WEBHOOKS,
            ..Options::default()
        },
    );
    // slow to boot, and given the time to: every deployment and the restore take a while
    let config = std::fs::read_to_string(&s.config)
        .unwrap()
        .replace("retries = 15", "retries = 200");
    std::fs::write(&s.config, config).unwrap();
    s.serve_env.push(("FERRY_TEST_GH".into(), GH_SECRET.into()));
    s.serve_env.push(("FERRY_TEST_GL".into(), GL_TOKEN.into()));
    // the restart below must bring the release back (not adopt it)
    s.serve_args.push("--stop-apps".into());
    s.serve();
    s.deploy_ok("staging", "v1.0.0");

    // a person's deploy is under way: the push waits for it, then deploys
    let run = s.ferry(&["deploy", "staging", "v1.0.0", "--no-wait"]);
    assert_eq!(run.code(), 0, "{run}");
    let c1 = commit(&s, "one");
    let (status, body) = github_json(
        &s,
        "push",
        "d-1",
        &gh_push("acme/sample", "refs/heads/main", &c1),
    );
    assert_eq!(status, 202, "{body}");
    assert!(outcome(&body).contains("queued"), "{body}");
    assert_eq!(
        wait_succeeded(&s, deployment_id(&body))["commit_sha"],
        c1.as_str()
    );

    // ferry restarts: the restore of the last good release holds the environment
    s.stop(nix::sys::signal::Signal::SIGTERM);
    s.serve();
    let restoring = || {
        s.api("/api/environments")[0]["deploying"]["holder"]
            .as_str()
            .is_some_and(|h| h.contains("restoring"))
    };
    assert!(
        eventually(Duration::from_secs(20), restoring),
        "{}",
        s.serve_log()
    );
    let c2 = commit(&s, "two");
    let push = gh_push("acme/sample", "refs/heads/main", &c2);
    let (status, body) = github_json(&s, "push", "d-2", &push);
    assert_eq!(status, 202, "{body}");
    assert!(outcome(&body).contains("queued"), "{body}");
    let id = deployment_id(&body);
    // the provider's redelivery is a duplicate, not a second deployment
    let (_, again) = github_json(&s, "push", "d-2", &push);
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(wait_succeeded(&s, id)["commit_sha"], c2.as_str());
    assert_eq!(
        s.api("/api/environments/staging/version")["commit_sha"],
        c2.as_str()
    );
}

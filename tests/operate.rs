//! Operating an app: the release command (migrations) and hooks, with a real `ferry serve`,
//! real git tags, the real sample app and a real SQLite file in the environment's shared dir
//! (written by the `sqlite3` CLI from the release command, as the environment's user).

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use support::*;

const SECRET: &str = "envfile-secret-5b2e9d41c7";

/// A sandbox with no tags yet, `data/` shared, and an env file holding [`SECRET`].
fn sandbox(extra_app: &'static str, tables: &'static str) -> Sandbox {
    let s = Sandbox::with(
        &[],
        Options {
            extra_app,
            tables,
            extra_env: "env = { GREETING = \"hi-there\" }\nbackup = [\"data/app.db\"]",
            ..Options::default()
        },
    );
    let env_file = s.dir.path().join("staging.env");
    std::fs::write(&env_file, format!("API_KEY={SECRET}\n")).unwrap();
    let config = std::fs::read_to_string(&s.config).unwrap().replace(
        "[environments.staging]\n",
        &format!(
            "[environments.staging]\nenv_file = \"{}\"\n",
            env_file.display()
        ),
    );
    std::fs::write(&s.config, config).unwrap();
    s
}

/// Commits `app.conf` and `migrate.sh` and tags the commit `tag`.
fn tag(s: &Sandbox, tag: &str, conf: &str, migrate: &str) {
    std::fs::write(s.repo.join("app.conf"), conf).unwrap();
    std::fs::write(s.repo.join("release.txt"), tag).unwrap();
    std::fs::write(s.repo.join("migrate.sh"), migrate).unwrap();
    sh(
        &s.repo,
        &format!("git add . && git commit -qm {tag} && git tag {tag}"),
    );
}

fn shared(s: &Sandbox) -> PathBuf {
    s.state_dir().join("environments/staging/shared/data")
}

/// The rows of `items` and its columns, read from the shared SQLite file.
fn items(s: &Sandbox) -> (Vec<String>, Vec<String>) {
    let conn = rusqlite::Connection::open_with_flags(
        shared(s).join("app.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut stmt = conn
        .prepare("SELECT name FROM items ORDER BY rowid")
        .unwrap();
    let rows = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut stmt = conn
        .prepare("SELECT name FROM pragma_table_info('items')")
        .unwrap();
    let columns = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    (rows, columns)
}

/// The newest deployment of staging and its steps, by name.
fn last(s: &Sandbox) -> (serde_json::Value, BTreeMap<String, serde_json::Value>) {
    let d = s.ferry(&["history", "staging", "--json"]).json()[0].clone();
    let detail = s.api(&format!("/api/deployments/{}", d["id"]));
    let steps = detail["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|st| (st["name"].as_str().unwrap().to_string(), st.clone()))
        .collect();
    (d, steps)
}

/// `KEY=VALUE` lines of a file a command wrote with `env`.
fn env_of(path: &std::path::Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn a_failing_migration_leaves_the_old_release_serving_and_the_data_untouched() {
    let mut s = sandbox("shared = [\"data/\"]\nrelease = \"sh migrate.sh\"", "");
    tag(
        &s,
        "v1.0.0",
        GOOD,
        "sqlite3 -bail data/app.db \"CREATE TABLE items(name TEXT); INSERT INTO items VALUES ('one');\"\necho migrated to v1\n",
    );
    // half its changes written, then a statement that fails: nothing of it may stay
    tag(
        &s,
        "v2.0.0",
        GOOD,
        "echo adding a price\nsqlite3 -bail data/app.db \"BEGIN; INSERT INTO items VALUES ('half'); ALTER TABLE items ADD COLUMN price INTEGER; INSERT INTO missing VALUES (1); COMMIT;\"\n",
    );
    s.serve();
    let run = s.deploy_ok("staging", "v1.0.0");
    assert!(run.stdout().contains("release"), "{run}");
    let (_, steps) = last(&s);
    assert_eq!(steps["release"]["state"], "ok", "{steps:?}");
    assert!(
        steps["release"]["output"]
            .as_str()
            .unwrap()
            .contains("migrated to v1"),
        "{steps:?}"
    );
    let before = items(&s);
    assert_eq!(before, (vec!["one".to_string()], vec!["name".to_string()]));
    let (_, pid) = s.serving("staging");

    // requests keep answering the old version all through the failed deploy
    let stop = Arc::new(AtomicBool::new(false));
    let url = format!("{}/version", s.url("staging"));
    let client = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut answers = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                answers.push(get(&url).map(|(status, body)| (status, body.contains("v1.0.0"))));
                std::thread::sleep(Duration::from_millis(20));
            }
            answers
        })
    };
    let run = s.ferry(&["deploy", "staging", "v2.0.0"]);
    stop.store(true, Ordering::Relaxed);
    let answers = client.join().unwrap();
    assert_eq!(run.code(), 1, "{run}");
    assert!(run.stdout().contains("exited with status 1"), "{run}");
    assert!(
        run.stdout().contains("v1.0.0-") && run.stdout().contains("keeps serving"),
        "{run}"
    );
    assert!(!answers.is_empty());
    assert!(
        answers.iter().all(|a| *a == Some((200, true))),
        "{answers:?}"
    );

    let (d, steps) = last(&s);
    assert_eq!(d["state"], "failed");
    assert_eq!(steps["backup"]["state"], "ok", "{steps:?}");
    assert_eq!(steps["release"]["state"], "failed", "{steps:?}");
    assert!(!steps.contains_key("start"), "{steps:?}");
    // the step says which backup was taken just before and how to put it back
    let out = steps["release"]["output"].as_str().unwrap();
    assert!(out.contains("no such table: missing"), "{out}");
    assert!(
        out.contains("data/app.db: ") && out.contains("/backups/"),
        "{out}"
    );
    assert!(out.contains("ferry maintenance staging on"), "{out}");

    assert_eq!(s.serving("staging"), ("v1.0.0".to_string(), pid));
    assert_eq!(items(&s), before);
}

#[test]
fn a_release_command_sees_the_environments_variables_and_secrets_and_reruns_only_when_asked() {
    let mut s = sandbox("shared = [\"data/\"]\nrelease = \"sh migrate.sh\"", "");
    let migrate = "env > data/release-$APP_VERSION.env\necho \"$APP_VERSION\" >> data/migrations.log\necho \"key is $API_KEY\"\n";
    tag(&s, "v1.0.0", GOOD, migrate);
    tag(&s, "v2.0.0", GOOD, migrate);
    s.serve_env
        .push(("FERRY_TEST_NOT_PASSED".into(), "serve-only".into()));
    s.serve();
    s.deploy_ok("staging", "v1.0.0");

    let vars = env_of(&shared(&s).join("release-v1.0.0.env"));
    assert_eq!(vars["GREETING"], "hi-there");
    assert_eq!(vars["API_KEY"], SECRET);
    assert_eq!(vars["FERRY_SLOT"], "staging");
    assert_eq!(vars["APP_VERSION"], "v1.0.0");
    assert!(!vars.contains_key("FERRY_TEST_NOT_PASSED"), "{vars:?}");
    // its output is masked like any step's
    let (_, steps) = last(&s);
    let out = steps["release"]["output"].as_str().unwrap();
    assert!(out.contains("key is ***") && !out.contains(SECRET), "{out}");

    s.deploy_ok("staging", "v2.0.0");
    let log = || std::fs::read_to_string(shared(&s).join("migrations.log")).unwrap();
    assert_eq!(log(), "v1.0.0\nv2.0.0\n");

    // a rollback leaves the data as it is
    let run = s.ferry(&["rollback", "staging", "--yes", "--reason", "back"]);
    assert_eq!(run.code(), 0, "{run}");
    assert_eq!(s.serving("staging").0, "v1.0.0");
    let (d, steps) = last(&s);
    assert_eq!(d["kind"], "rollback");
    assert_eq!(steps["release"]["state"], "skipped", "{steps:?}");
    assert_eq!(log(), "v1.0.0\nv2.0.0\n");

    // ... unless asked
    let run = s.ferry(&[
        "rollback",
        "staging",
        "--yes",
        "--to",
        "v2.0.0",
        "--run-release",
        "--reason",
        "forward again",
    ]);
    assert_eq!(run.code(), 0, "{run}");
    assert_eq!(s.serving("staging").0, "v2.0.0");
    let (_, steps) = last(&s);
    assert_eq!(steps["release"]["state"], "ok", "{steps:?}");
    assert_eq!(log(), "v1.0.0\nv2.0.0\nv2.0.0\n");
}

#[test]
fn hooks_receive_their_variables_and_a_failing_pre_deploy_refuses() {
    let mut s = sandbox(
        "shared = [\"data/\"]",
        "[hooks]\npre_deploy = [\"env > data/$FERRY_HOOK.env\", \"case \\\"$FERRY_VERSION\\\" in v3*) echo not v3; exit 1;; esac\"]\npost_deploy = \"env > data/$FERRY_HOOK.env\"\non_failure = \"env > data/$FERRY_HOOK.env\"\n",
    );
    tag(&s, "v1.0.0", GOOD, "");
    tag(&s, "v2.0.0", GOOD, "");
    tag(&s, "v3.0.0", GOOD, "");
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    let run = s.deploy_ok("staging", "v2.0.0");
    assert!(run.stdout().contains("post_deploy"), "{run}");
    let (d, steps) = last(&s);
    assert_eq!(steps["pre_deploy"]["state"], "ok", "{steps:?}");
    assert_eq!(steps["post_deploy"]["state"], "ok", "{steps:?}");

    for hook in ["pre_deploy", "post_deploy"] {
        let vars = env_of(&shared(&s).join(format!("{hook}.env")));
        assert_eq!(vars["FERRY_APP"], "sample", "{hook}");
        assert_eq!(vars["FERRY_ENVIRONMENT"], "staging", "{hook}");
        assert_eq!(vars["FERRY_VERSION"], "v2.0.0", "{hook}");
        assert_eq!(
            vars["FERRY_COMMIT"],
            d["commit_sha"].as_str().unwrap(),
            "{hook}"
        );
        assert_eq!(vars["FERRY_PREVIOUS_VERSION"], "v1.0.0", "{hook}");
        assert_eq!(vars["FERRY_DEPLOYMENT"], d["id"].to_string(), "{hook}");
        assert_eq!(
            vars["FERRY_TRIGGERED_BY"],
            d["triggered_by"].as_str().unwrap(),
            "{hook}"
        );
        assert!(vars["FERRY_DURATION"].parse::<u64>().is_ok(), "{vars:?}");
        // nothing of the environment's env or env_file without `secrets = true`
        assert!(!vars.contains_key("API_KEY"), "{hook}: {vars:?}");
        assert!(!vars.contains_key("GREETING"), "{hook}: {vars:?}");
        assert!(!vars.values().any(|v| v.contains(SECRET)), "{hook}");
    }
    assert_eq!(
        env_of(&shared(&s).join("post_deploy.env"))["FERRY_OUTCOME"],
        "succeeded"
    );
    let (_, pid) = s.serving("staging");

    let run = s.ferry(&["deploy", "staging", "v3.0.0"]);
    assert_ne!(run.code(), 0, "{run}");
    assert!(run.stdout().contains("not v3"), "{run}");
    let (d, steps) = last(&s);
    assert_eq!(d["state"], "refused");
    assert_eq!(steps["pre_deploy"]["state"], "failed", "{steps:?}");
    for never in ["backup", "release", "start", "on_failure", "post_deploy"] {
        assert!(!steps.contains_key(never), "{never}: {steps:?}");
    }
    assert!(!shared(&s).join("on_failure.env").exists());
    assert_eq!(s.serving("staging"), ("v2.0.0".to_string(), pid));
}

#[test]
fn a_failing_post_deploy_leaves_the_deployment_succeeded_and_on_failure_runs_for_a_failed_one() {
    let mut s = sandbox(
        "shared = [\"data/\"]",
        "[hooks]\nsecrets = true\npost_deploy = [\"env > data/$FERRY_HOOK.env\", \"echo cannot announce; exit 7\"]\non_failure = \"env > data/$FERRY_HOOK.env\"\n",
    );
    tag(&s, "v1.0.0", GOOD, "");
    tag(&s, "v2.0.0", BROKEN, "");
    s.serve();
    let run = s.deploy_ok("staging", "v1.0.0");
    assert!(run.stdout().contains("is live on staging"), "{run}");
    let (d, steps) = last(&s);
    assert_eq!(d["state"], "succeeded");
    assert_eq!(steps["post_deploy"]["state"], "failed", "{steps:?}");
    let out = steps["post_deploy"]["output"].as_str().unwrap();
    assert!(
        out.contains("cannot announce") && out.contains("status 7"),
        "{out}"
    );
    // secrets = true: the environment's env and env_file, as the app gets them
    let vars = env_of(&shared(&s).join("post_deploy.env"));
    assert_eq!(vars["API_KEY"], SECRET);
    assert_eq!(vars["GREETING"], "hi-there");
    assert_eq!(vars["FERRY_VERSION"], "v1.0.0");
    assert_eq!(vars["FERRY_PREVIOUS_VERSION"], "");
    assert_eq!(s.serving("staging").0, "v1.0.0");

    let run = s.ferry(&["deploy", "staging", "v2.0.0"]);
    assert_eq!(run.code(), 1, "{run}");
    let (d, steps) = last(&s);
    assert_eq!(d["state"], "failed");
    assert_eq!(steps["on_failure"]["state"], "ok", "{steps:?}");
    let vars = env_of(&shared(&s).join("on_failure.env"));
    assert_eq!(vars["FERRY_OUTCOME"], "failed");
    assert_eq!(vars["FERRY_VERSION"], "v2.0.0");
    assert!(vars["FERRY_REASON"].starts_with("health"), "{vars:?}");
    assert_eq!(s.serving("staging").0, "v1.0.0");
}

#[test]
fn on_rollback_runs_when_the_monitor_switches_back() {
    let mut s = sandbox(
        "shared = [\"data/\"]",
        "[hooks]\non_rollback = \"env > data/$FERRY_HOOK.env\"\n\n[monitor]\nduration = \"3s\"\ninterval = \"100ms\"\nmax_consecutive_failures = 3\n",
    );
    tag(&s, "v1.0.0", GOOD, "");
    tag(&s, "v2.0.0", "fail_health_after_ms = 300\n", "");
    tag(&s, "v3.0.0", GOOD, "");
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    let run = s.ferry(&["deploy", "staging", "v2.0.0"]);
    assert_eq!(run.code(), 1, "{run}");
    let (d, steps) = last(&s);
    assert_eq!(d["state"], "rolled_back");
    assert_eq!(steps["on_rollback"]["state"], "ok", "{steps:?}");
    let vars = env_of(&shared(&s).join("on_rollback.env"));
    assert_eq!(vars["FERRY_OUTCOME"], "rolled_back");
    assert_eq!(vars["FERRY_VERSION"], "v2.0.0");
    assert_eq!(vars["FERRY_PREVIOUS_VERSION"], "v1.0.0");
    assert_eq!(vars["FERRY_KIND"], "deploy");
    assert_eq!(s.serving("staging").0, "v1.0.0");

    // and for a rollback that succeeded
    s.deploy_ok("staging", "v3.0.0");
    let run = s.ferry(&["rollback", "staging", "--yes", "--reason", "back"]);
    assert_eq!(run.code(), 0, "{run}");
    assert!(run.stdout().contains("on_rollback"), "{run}");
    let (d, steps) = last(&s);
    assert_eq!(d["kind"], "rollback");
    assert_eq!(steps["on_rollback"]["state"], "ok", "{steps:?}");
    let vars = env_of(&shared(&s).join("on_rollback.env"));
    assert_eq!(vars["FERRY_KIND"], "rollback");
    assert_eq!(vars["FERRY_OUTCOME"], "succeeded");
    assert_eq!(vars["FERRY_VERSION"], "v1.0.0");
    assert_eq!(vars["FERRY_PREVIOUS_VERSION"], "v3.0.0");
    assert_eq!(s.serving("staging").0, "v1.0.0");
}

#[test]
fn a_serve_killed_during_post_deploy_keeps_the_new_release_and_its_outcome() {
    let mut s = sandbox(
        "shared = [\"data/\"]",
        "[hooks]\npost_deploy = \"env > data/$FERRY_HOOK.env\"\non_rollback = \"true\"\n",
    );
    tag(&s, "v1.0.0", GOOD, "");
    tag(&s, "v2.0.0", GOOD, "");
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    s.stop(nix::sys::signal::Signal::SIGTERM);
    // the next serve holds every deployment once post_deploy has started
    s.serve_env = vec![("FERRY_FAULT_PAUSE_AT".into(), "post_deploy".into())];
    s.serve();
    let (status, d) = s.post(
        "/api/deployments",
        &serde_json::json!({"environment": "staging", "ref": "v2.0.0"}),
    );
    assert_eq!(status, 201, "{d}");
    let id = d["id"].as_i64().unwrap();
    assert!(
        eventually(Duration::from_secs(30), || {
            s.api(&format!("/api/deployments/{id}"))["deployment"]["step"] == "post_deploy"
        }),
        "never reached post_deploy: {}",
        s.serve_log()
    );
    let (version, pid) = s.serving("staging");
    assert_eq!(version, "v2.0.0", "switched before the hook");
    s.stop(nix::sys::signal::Signal::SIGKILL);
    s.serve_env.clear();
    s.serve();
    // the outcome was decided before the hook: v2.0.0 stays, the same instance, adopted
    let d = &s.api(&format!("/api/deployments/{id}"))["deployment"];
    assert_eq!(d["state"], "succeeded", "{d}");
    assert_eq!(s.serving("staging"), ("v2.0.0".to_string(), pid));
}

/// A docker release: `/srv/migrate` is its release command (failing with `migrate_exit`),
/// then busybox httpd serves `/version` on 127.0.0.1:$PORT.
fn docker_release(base: &str, version: &str, migrate_exit: i32) -> String {
    format!(
        "FROM {base}\n\
         RUN mkdir -p /srv && echo {version} > /srv/health && echo {version} > /srv/version && \
         printf '#!/bin/sh\\necho migrating to $APP_VERSION as $(id -u)\\necho \"$APP_VERSION $GREETING\" >> /shared/migrations.log\\ncat \"$FERRY_ENV_FILE\" > /shared/secrets-seen\\nexit {migrate_exit}\\n' > /srv/migrate && chmod 755 /srv/migrate\n\
         CMD exec httpd -f -p \"127.0.0.1:$PORT\" -h /srv\n"
    )
}

#[test]
fn a_docker_release_command_runs_in_the_image_with_the_instances_mounts_variables_and_secrets() {
    use support::docker::{docker, docker_or_skip};
    let test = "a_docker_release_command_runs_in_the_image_with_the_instances_mounts_variables_and_secrets";
    let Some(kit) = docker_or_skip(test) else {
        return;
    };
    let base = kit.base_image();
    // a container app has no `shared` links: the shared dir itself is mounted at /shared,
    // writable to the image's user (root in busybox)
    let mut s = sandbox(
        "release = \"/srv/migrate\"\n\n[app.docker]\nuser = \"image\"",
        "",
    );
    for (tag, exit) in [("v1.0.0", 0), ("v2.0.0", 3)] {
        std::fs::write(s.repo.join("Dockerfile"), docker_release(&base, tag, exit)).unwrap();
        sh(
            &s.repo,
            &format!("git add . && git commit -qm {tag} && git tag {tag}"),
        );
    }
    let text = std::fs::read_to_string(&s.config).unwrap();
    let start = text.lines().find(|l| l.starts_with("start = ")).unwrap();
    let text = text
        .replace(start, "runtime = \"docker\"")
        .replace("name = \"sample\"", &format!("name = \"{}\"", kit.prefix()));
    std::fs::write(&s.config, text).unwrap();
    s.serve();
    let containers = || {
        docker(&[
            "ps",
            "-a",
            "-q",
            "--filter",
            &format!("label=ferry.app={}", kit.prefix()),
        ])
        .lines()
        .count()
    };

    let run = s.deploy_ok("staging", "v1.0.0");
    assert!(run.stdout().contains("/srv/migrate"), "{run}");
    let (_, steps) = last(&s);
    let out = steps["release"]["output"].as_str().unwrap();
    assert!(out.contains("migrating to v1.0.0"), "{out}");
    let shared = s.state_dir().join("environments/staging/shared");
    let log = || std::fs::read_to_string(shared.join("migrations.log")).unwrap();
    assert_eq!(log(), "v1.0.0 hi-there\n");
    let seen = std::fs::read_to_string(shared.join("secrets-seen")).unwrap();
    assert_eq!(seen, format!("API_KEY={SECRET}\n"));
    // the one-off container is gone; the instance alone runs
    assert_eq!(containers(), 1);

    let run = s.ferry(&["deploy", "staging", "v2.0.0"]);
    assert_eq!(run.code(), 1, "{run}");
    assert!(run.stdout().contains("exited with status 3"), "{run}");
    assert_eq!(log(), "v1.0.0 hi-there\nv2.0.0 hi-there\n");
    let (status, body) = get(&format!("{}/version", s.url("staging"))).unwrap();
    assert_eq!((status, body.trim()), (200, "v1.0.0"));
    assert_eq!(containers(), 1);
}

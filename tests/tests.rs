//! End-to-end tests: real git repositories, a real `ferry serve` process, the real CLI, real
//! HTTP on 127.0.0.1.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use nix::sys::signal::Signal;
use support::*;

#[test]
fn deploy_serves_the_app_with_its_version_and_redeploy_switches() {
    let mut s = Sandbox::new(&[Rel("v1.0.0", GOOD), Rel("v1.1.0", GOOD)]);
    s.serve();
    let url = s.url("staging");
    assert_eq!(get(&url).unwrap().0, 503, "no instance yet");

    let run = s.deploy_ok("staging", "v1.0.0");
    for step in [
        "resolve", "lock", "prepare", "build", "test", "start", "health", "switch", "finish",
    ] {
        assert!(run.stdout().contains(step), "step {step} not shown:\n{run}");
    }
    let (status, body) = get(&format!("{url}/version")).unwrap();
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["version"], "v1.0.0");
    assert_eq!(v["environment"], "staging");
    assert_eq!(v["commit"].as_str().unwrap().len(), 40);
    let first_pid = v["pid"].as_u64().unwrap();

    s.deploy_ok("staging", "v1.1.0");
    let (_, body) = get(&format!("{url}/version")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["version"], "v1.1.0");
    // the old instance was stopped after the switch
    assert!(eventually(
        Duration::from_secs(5),
        || !std::path::Path::new(&format!("/proc/{first_pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{first_pid}/stat"))
                .is_ok_and(|s| s.contains(") Z "))
    ));

    let status = s.ferry(&["status", "--json"]).json();
    assert_eq!(status[0]["environment"], "staging");
    assert_eq!(status[0]["version"], "v1.1.0");
    assert_eq!(status[0]["health"], "healthy");
    assert_eq!(status[0]["deployed_by"], "tester");

    let version = s.get("/api/environments/staging/version").unwrap().1;
    let version: serde_json::Value = serde_json::from_str(&version).unwrap();
    assert_eq!(version["ref"], "v1.1.0");
    // named as the app's ENVIRONMENT and FERRY_SLOT name them
    assert_eq!(version["environment"], "staging");
    assert_eq!(version["slot"], "staging");
    assert!(version["deployed_at"].is_string());

    let history = s.ferry(&["history", "staging", "--json"]).json();
    assert_eq!(history.as_array().unwrap().len(), 2);
    assert_eq!(history[0]["version"], "v1.1.0");
    assert_eq!(history[0]["state"], "succeeded");

    let show = s.ferry(&["show", "1", "--json"]).json();
    let steps: Vec<&str> = show["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            "resolve",
            "policy",
            "lock",
            "prepare",
            "build",
            "test",
            "pre_deploy",
            "backup",
            "release",
            "start",
            "health",
            "check",
            "rollout",
            "switch",
            "monitor",
            "finish",
            "post_deploy"
        ]
    );
    assert!(
        show["deployment"]["digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    let text = s.ferry(&["show", "1"]).stdout();
    assert!(
        text.contains("deployment #1 to staging: succeeded"),
        "{text}"
    );
}

#[test]
fn no_request_fails_across_three_consecutive_deploys() {
    let mut s = Sandbox::new(&[
        Rel("v1.0.0", GOOD),
        Rel("v1.1.0", GOOD),
        Rel("v1.2.0", GOOD),
        Rel("v1.3.0", GOOD),
    ]);
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    let url = s.url("staging");
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..6)
        .map(|i| {
            let (url, stop, total, failures) =
                (url.clone(), stop.clone(), total.clone(), failures.clone());
            std::thread::spawn(move || {
                // keep-alive connections, and some slow requests in flight across switches
                let client = crate::support::blocking_http().no_proxy().build().unwrap();
                let path = if i % 3 == 0 { "/slow" } else { "/" };
                while !stop.load(Ordering::Relaxed) {
                    total.fetch_add(1, Ordering::Relaxed);
                    match client.get(format!("{url}{path}")).send() {
                        Ok(r) if r.status() == 200 => {
                            let _ = r.text();
                        }
                        Ok(r) => failures
                            .lock()
                            .unwrap()
                            .push(format!("status {}", r.status())),
                        Err(e) => failures.lock().unwrap().push(e.to_string()),
                    }
                }
            })
        })
        .collect();
    for tag in ["v1.1.0", "v1.2.0", "v1.3.0"] {
        s.deploy_ok("staging", tag);
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let failures = failures.lock().unwrap();
    assert!(
        total.load(Ordering::Relaxed) > 50,
        "too few requests to mean anything"
    );
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}",
        failures.len(),
        total.load(Ordering::Relaxed),
        &failures[..failures.len().min(5)]
    );
    assert!(get(&url).unwrap().1.contains("v1.3.0"));
}

#[test]
fn broken_release_fails_and_the_previous_version_keeps_answering() {
    let mut s = Sandbox::new(&[
        Rel("v1.1.0", GOOD),
        Rel("v1.2.0", BROKEN),
        Rel("v1.3.0", EXITS),
    ]);
    s.serve();
    s.deploy_ok("staging", "v1.1.0");
    let run = s.ferry(&["deploy", "staging", "v1.2.0"]);
    assert_eq!(run.code(), 1, "{run}");
    assert!(
        run.stdout().contains("/health answered 500, expected 200"),
        "{run}"
    );
    assert!(get(&s.url("staging")).unwrap().1.contains("v1.1.0"));

    // an app that exits at start fails fast, with the exit named
    let run = s.ferry(&["deploy", "staging", "v1.3.0"]);
    assert_eq!(run.code(), 1, "{run}");
    assert!(run.stdout().contains("exited"), "{run}");
    assert!(get(&s.url("staging")).unwrap().1.contains("v1.1.0"));

    let history = s.ferry(&["history", "staging", "--json"]).json();
    let states: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["failed", "failed", "succeeded"]);
    assert!(
        history[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("health:")
    );
    let status = s.ferry(&["status", "--json"]).json();
    assert_eq!(status[0]["version"], "v1.1.0");
    assert_eq!(status[0]["health"], "healthy");
}

#[test]
fn a_second_deploy_to_a_busy_environment_is_refused_with_the_holder() {
    let mut s = Sandbox::with(
        &[Rel("v1.0.0", GOOD), Rel("v1.1.0", GOOD)],
        Options {
            extra_app: "build = [\"sleep 3\"]",
            ..Options::default()
        },
    );
    s.serve();
    let config = s.config.clone();
    let first = std::thread::spawn(move || {
        std::process::Command::new(FERRY)
            .args(["deploy", "staging", "v1.0.0", "-c"])
            .arg(&config)
            .env("USER", "alice")
            .output()
            .unwrap()
    });
    assert!(eventually(Duration::from_secs(10), || {
        s.ferry(&["status", "--json"]).json()[0]["deploying"].is_object()
    }));
    let second = s.ferry(&["deploy", "staging", "v1.1.0"]);
    assert_eq!(second.code(), 1, "{second}");
    assert!(
        second
            .stderr()
            .contains("environment staging is being deployed by alice since"),
        "{second}"
    );
    assert!(first.join().unwrap().status.success());
    let history = s.ferry(&["history", "staging", "--json"]).json();
    // newest first: the refusal came after the first deploy was requested
    assert_eq!(history[0]["state"], "refused");
    assert_eq!(history[1]["state"], "succeeded");
    // the lock is free again
    s.deploy_ok("staging", "v1.1.0");
}

#[test]
fn shared_paths_are_linked_and_never_overwritten() {
    let mut s = Sandbox::with(
        &[Rel("v1.0.0", GOOD), Rel("v1.1.0", GOOD)],
        Options {
            extra_app: "shared = [\"data/\", \"config/settings\"]\nbuild = [\"cat config/settings >> data/builds\"]",
            ..Options::default()
        },
    );
    // the repo carries its own data/ and config/settings, which must not win
    std::fs::create_dir_all(s.repo.join("data")).unwrap();
    std::fs::create_dir_all(s.repo.join("config")).unwrap();
    std::fs::write(s.repo.join("data/builds"), "from repo\n").unwrap();
    std::fs::write(s.repo.join("config/settings"), "repo settings\n").unwrap();
    sh(
        &s.repo,
        "git add . && git commit -qm data && git tag v1.2.0",
    );
    s.serve();

    // a missing shared file is an error naming it, not an empty file
    let run = s.ferry(&["deploy", "staging", "v1.0.0"]);
    assert_eq!(run.code(), 1, "{run}");
    assert!(run.stdout().contains("config/settings"), "{run}");
    let shared = s.state_dir().join("environments/staging/shared");
    assert!(!shared.join("config/settings").exists());

    std::fs::create_dir_all(shared.join("config")).unwrap();
    std::fs::write(shared.join("config/settings"), "live settings\n").unwrap();
    s.deploy_ok("staging", "v1.1.0");
    s.deploy_ok("staging", "v1.2.0");
    assert_eq!(
        std::fs::read_to_string(shared.join("config/settings")).unwrap(),
        "live settings\n"
    );
    assert_eq!(
        std::fs::read_to_string(shared.join("data/builds")).unwrap(),
        "live settings\nlive settings\n"
    );
}

#[test]
fn serve_restarted_brings_environments_back_on_their_last_good_release() {
    let mut s = Sandbox::with(
        &[
            Rel("v1.0.0", GOOD),
            Rel("v1.1.0", GOOD),
            Rel("v1.2.0", BROKEN),
        ],
        Options {
            envs: &["staging", "production"],
            ..Options::default()
        },
    );
    s.serve_args.push("--stop-apps".into());
    s.serve();
    s.deploy_ok("staging", "v1.1.0");
    s.deploy_ok("production", "v1.0.0");
    assert_eq!(s.ferry(&["deploy", "staging", "v1.2.0"]).code(), 1);

    // a graceful stop with --stop-apps takes the apps down with it
    s.stop(Signal::SIGTERM);
    assert!(get(&s.url("staging")).is_none());
    s.serve();
    let staging = s.url("staging");
    let production = s.url("production");
    assert!(eventually(Duration::from_secs(15), || get(&staging)
        .is_some_and(|(c, b)| c == 200 && b.contains("v1.1.0"))));
    assert!(eventually(Duration::from_secs(15), || get(&production)
        .is_some_and(|(c, b)| c == 200 && b.contains("v1.0.0"))));

    // a crash (SIGKILL) leaves the apps running; the next serve adopts them (same pid) and
    // the proxy serves at once, with what they logged meanwhile still reaching the log
    let old_pid = s.ferry(&["status", "--json"]).json()[1]["pid"]
        .as_u64()
        .unwrap();
    s.stop(Signal::SIGKILL);
    assert!(get(&staging).is_none());
    s.serve();
    let (status, body) = get(&staging).expect("the proxy serves as soon as serve is up");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("v1.1.0"), "{body}");
    let new_pid = s.ferry(&["status", "--json"]).json()[1]["pid"]
        .as_u64()
        .unwrap();
    assert_eq!(new_pid, old_pid, "the instance was adopted, not restarted");
    assert!(s.serve_log().contains("adopted the instance left running"));
    get(&format!("{staging}/log?line=after-the-crash"));
    let log = s.state_dir().join("environments/staging/logs/app.log");
    assert!(
        eventually(Duration::from_secs(5), || std::fs::read_to_string(&log)
            .is_ok_and(|t| t.contains("after-the-crash"))),
        "the adopted instance's output is logged"
    );

    // an instance whose pid now belongs to another process is never adopted
    s.stop(Signal::SIGKILL);
    let db = rusqlite::Connection::open(s.state_dir().join("ferry.db")).unwrap();
    db.execute(
        "UPDATE instances SET proc_start = proc_start + 1 WHERE pid = ?1 AND stopped_at IS NULL",
        [old_pid as i64],
    )
    .unwrap();
    drop(db);
    s.serve();
    assert!(eventually(Duration::from_secs(15), || get(&staging)
        .is_some_and(|(c, b)| c == 200 && b.contains("v1.1.0"))));
    let new_pid = s.ferry(&["status", "--json"]).json()[1]["pid"]
        .as_u64()
        .unwrap();
    assert_ne!(
        new_pid, old_pid,
        "a pid with another start time is not adopted"
    );
    assert!(
        alive(old_pid as u32),
        "a process that is not ours is left alone"
    );
    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(old_pid as i32), Signal::SIGKILL).unwrap();
}

#[test]
fn an_interrupted_deployment_is_recorded_and_its_lock_freed() {
    let mut s = Sandbox::with(
        &[Rel("v1.0.0", GOOD)],
        Options {
            extra_app: "build = [\"sleep 30\"]",
            ..Options::default()
        },
    );
    s.serve();
    let out = std::process::Command::new(FERRY)
        .args(["deploy", "staging", "v1.0.0", "-c"])
        .arg(&s.config)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(eventually(Duration::from_secs(10), || {
        s.ferry(&["show", "1", "--json"])
            .stdout()
            .contains("\"step\": \"build\"")
    }));
    s.stop(Signal::SIGKILL);
    drop(out);
    s.serve();
    let d = s.ferry(&["show", "1", "--json"]).json();
    assert_eq!(d["deployment"]["state"], "interrupted");
    assert_eq!(d["deployment"]["reason"], "ferry stopped during step build");
    assert!(s.ferry(&["status", "--json"]).json()[0]["deploying"].is_null());
}

#[test]
fn old_releases_are_pruned_in_recorded_order_and_built_ones_reused() {
    let mut s = Sandbox::with(
        &[
            Rel("v1.0.0", GOOD),
            Rel("v1.1.0", GOOD),
            Rel("v1.2.0", GOOD),
        ],
        Options {
            extra_app: "keep_releases = 2\nbuild = [\"echo built >> $HOME/builds.log\"]",
            ..Options::default()
        },
    );
    s.serve();
    s.deploy_ok("staging", "v1.1.0");
    s.deploy_ok("staging", "v1.0.0");
    // redeploying a built release skips build and test
    let run = s.deploy_ok("staging", "v1.1.0");
    assert!(run.stdout().contains("reusing release v1.1.0"), "{run}");
    let builds = s.state_dir().join("environments/staging/home/builds.log");
    assert_eq!(std::fs::read_to_string(&builds).unwrap().lines().count(), 2);
    s.deploy_ok("staging", "v1.2.0");
    let releases = s.state_dir().join("environments/staging/releases");
    let mut names: Vec<String> = std::fs::read_dir(&releases)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('v'))
        .collect();
    names.sort();
    // v1.1.0 was made first (recorded order), so it goes, though it was deployed more recently
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(
        names[0].starts_with("v1.0.0-") && names[1].starts_with("v1.2.0-"),
        "{names:?}"
    );
    assert!(get(&s.url("staging")).unwrap().1.contains("v1.2.0"));
}

#[test]
fn bad_input_gets_clear_messages_and_exit_codes() {
    let mut s = Sandbox::new(&[Rel("v1.0.0", GOOD)]);
    // no daemon: say how to start it
    let run = s.ferry(&["status"]);
    assert_eq!(run.code(), 1, "{run}");
    assert!(
        run.stderr().contains("ferry is not running") && run.stderr().contains("ferry serve"),
        "{run}"
    );

    s.serve();
    let run = s.ferry(&["deploy", "prod", "v1.0.0"]);
    assert_eq!(run.code(), 2, "{run}");
    assert!(
        run.stderr()
            .contains("unknown environment \"prod\"; environments: staging"),
        "{run}"
    );
    let run = s.ferry(&["deploy", "staging", "--", "-rf"]);
    assert_eq!(run.code(), 2, "{run}");
    assert!(run.stderr().contains("must not start with '-'"), "{run}");
    let run = s.ferry(&["deploy", "staging", "v9.9.9"]);
    assert_eq!(run.code(), 1, "{run}");
    assert!(
        run.stdout().contains("not found in the repository"),
        "{run}"
    );
    let run = s.ferry(&["show", "999"]);
    assert_eq!(run.code(), 2, "{run}");
    assert!(run.stderr().contains("deployment 999 not found"), "{run}");

    // a broken config: file, line, column, exit 2
    std::fs::write(
        s.dir.path().join("bad.toml"),
        "[app]\nname = \"x\"\nrepo = \"repo\"\nstart = \"x\"\ncolour = 1\n",
    )
    .unwrap();
    let run = support::Run(
        std::process::Command::new(FERRY)
            .args(["check", "-c"])
            .arg(s.dir.path().join("bad.toml"))
            .output()
            .unwrap(),
    );
    assert_eq!(run.code(), 2, "{run}");
    assert!(
        run.stderr().contains("bad.toml:5:1") && run.stderr().contains("unknown field `colour`"),
        "{run}"
    );
}

#[test]
fn init_writes_a_template_that_check_accepts() {
    let dir = tempfile::tempdir().unwrap();
    sh(dir.path(), "git init -q");
    let config = dir.path().join("ferry.toml");
    let run = |args: &[&str]| {
        support::Run(
            std::process::Command::new(FERRY)
                .args(args)
                .arg("-c")
                .arg(&config)
                .output()
                .unwrap(),
        )
    };
    assert_eq!(run(&["init"]).code(), 0);
    let check = run(&["check"]);
    assert_eq!(check.code(), 0, "{check}");
    assert!(
        check.stdout().contains("staging") && check.stdout().contains("production"),
        "{check}"
    );
    // never overwrites without --force
    assert_eq!(run(&["init"]).code(), 2);
}

#[test]
fn logs_show_the_app_output() {
    let mut s = Sandbox::new(&[Rel("v1.0.0", GOOD), Rel("v1.1.0", GOOD)]);
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    assert!(eventually(Duration::from_secs(5), || {
        s.ferry(&["logs", "staging", "-n", "5"])
            .stdout()
            .contains("sample app v1.0.0 starting")
    }));
    let log = s.state_dir().join("environments/staging/logs/app.log");
    assert!(
        std::fs::read_to_string(log)
            .unwrap()
            .contains("listening on 127.0.0.1:")
    );
}

#[test]
fn secrets_from_env_file_reach_the_app_but_not_ferry_records() {
    let mut s = Sandbox::with(
        &[Rel("v1.0.0", GOOD)],
        Options {
            extra_env: "env_file = \"app.env\"\nenv = { GREETING = \"hi\" }",
            ..Options::default()
        },
    );
    let shared = s.state_dir().join("environments/staging/shared");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::write(shared.join("app.env"), "API_TOKEN=tok-4f9a-very-secret\n").unwrap();
    s.config = s.config.clone();
    let text = std::fs::read_to_string(&s.config).unwrap().replace(
        "start = \"'",
        "start = \"echo token-length=${#API_TOKEN} greeting=$GREETING; '",
    );
    std::fs::write(&s.config, text).unwrap();
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    assert!(eventually(Duration::from_secs(5), || {
        s.ferry(&["logs", "staging"])
            .stdout()
            .contains("token-length=20 greeting=hi")
    }));
    let db = std::fs::read(s.state_dir().join("ferry.db")).unwrap();
    let wal = std::fs::read(s.state_dir().join("ferry.db-wal")).unwrap_or_default();
    for bytes in [&db, &wal] {
        assert!(
            !String::from_utf8_lossy(bytes).contains("tok-4f9a"),
            "secret in the store"
        );
    }
    assert!(!s.serve_log().contains("tok-4f9a"));
    assert!(
        !s.ferry(&["show", "1", "--json"])
            .stdout()
            .contains("tok-4f9a")
    );
}

#[test]
fn serve_names_the_environment_whose_port_is_taken() {
    let s = Sandbox::new(&[Rel("v1.0.0", GOOD)]);
    let port = s.url("staging").rsplit(':').next().unwrap().to_string();
    let _holder = std::net::TcpListener::bind(format!("127.0.0.1:{port}")).unwrap();
    let run = s.ferry(&["serve"]);
    assert_eq!(run.code(), 1, "{run}");
    assert!(
        run.stderr().contains(&"environment staging".to_string()) && run.stderr().contains(&port),
        "{run}"
    );
}

#[test]
fn demo_runs_its_walkthrough_without_a_failed_request() {
    let run = support::Run(
        std::process::Command::new(FERRY)
            .args(["demo", "--no-wait"])
            .output()
            .unwrap(),
    );
    assert_eq!(run.code(), 0, "{run}");
    let out = run.stdout();
    assert!(
        out.contains("v1.1.0") && out.contains("is live on staging"),
        "{out}"
    );
    assert!(out.contains("/health answered 500"), "{out}");
    assert!(
        out.contains("staging answers: 200 hello again from v1.1.0"),
        "{out}"
    );
    assert!(out.contains(": 0 failed."), "{out}");
    // the promotion gate: verified on staging, promoted with the same bytes, v1.2.0 refused
    assert!(out.contains("verified v1.1.0"), "{out}");
    assert!(out.contains("the same bytes, not rebuilt"), "{out}");
    assert!(
        out.contains("production answers: 200 hello again from v1.1.0"),
        "{out}"
    );
    assert!(out.contains("refused: v1.2.0 is not verified"), "{out}");
}

#[test]
fn an_instance_that_dies_is_started_again_from_the_same_release() {
    let mut s = Sandbox::new(&[Rel("v1.0.0", GOOD)]);
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    let pid = s.ferry(&["status", "--json"]).json()[0]["pid"]
        .as_u64()
        .unwrap();
    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    let url = s.url("staging");
    assert!(
        eventually(Duration::from_secs(15), || {
            let status = s.ferry(&["status", "--json"]).json();
            status[0]["pid"].as_u64().is_some_and(|p| p != pid)
                && get(&url).is_some_and(|(c, b)| c == 200 && b.contains("v1.0.0"))
        }),
        "not restarted:\n{}",
        s.serve_log()
    );
    assert!(s.serve_log().contains("instance exited on its own"));
}

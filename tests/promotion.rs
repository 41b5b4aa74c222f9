//! Promotion and safety, end to end: gates, verify and promote, approval, freeze windows,
//! commit checks, backups, post-deploy monitoring with automatic rollback, manual rollback,
//! locks, maintenance, plan and hotfixes. Each test runs a real `ferry serve` on a real repo.

mod support;

use std::time::Duration;

use support::{GOOD, Options, Rel, Sandbox, alive, eventually, get, sh};

/// One staging environment with `extra` in its table, served.
fn staging_with(releases: &[Rel], extra: &'static str) -> Sandbox {
    let env_extra = Box::leak(Box::new([("staging", extra)]));
    let mut s = Sandbox::with(
        releases,
        Options {
            env_extra,
            ..Options::default()
        },
    );
    s.serve();
    s
}

const STAGING_PRODUCTION: &[&str] = &["staging", "production"];

/// staging takes anything; production takes verified release tags.
fn promotion_sandbox(releases: &[Rel], production: &'static str) -> Sandbox {
    let env_extra: &'static [(&'static str, &'static str)] = match production {
        "" => &[(
            "production",
            "track = { tags = true }\nrequires = \"staging\"",
        )],
        "approval" => &[(
            "production",
            "track = { tags = true }\nrequires = \"staging\"\napproval = true",
        )],
        other => panic!("no preset {other}"),
    };
    let mut s = Sandbox::with(
        releases,
        Options {
            envs: STAGING_PRODUCTION,
            env_extra,
            ..Options::default()
        },
    );
    s.serve();
    s
}

#[test]
fn production_takes_only_release_tags() {
    let s = promotion_sandbox(&[Rel("v1.0.0", GOOD), Rel("v1.1.0-rc.1", GOOD)], "");
    sh(&s.repo, "git tag nightly");
    for (git_ref, says) in [
        (
            "main",
            "production takes release tags only, and \"main\" is a branch",
        ),
        ("v1.1.0-rc.1", "v1.1.0-rc.1 is a pre-release"),
        ("nightly", "\"nightly\" is not a release tag"),
    ] {
        let run = s.ferry(&["deploy", "production", git_ref]);
        assert_eq!(run.code(), 1, "{run}");
        assert!(run.stdout().contains("refused: policy:"), "{run}");
        assert!(run.stdout().contains(says), "{git_ref}: {run}");
    }
    let history = s.ferry(&["history", "production", "--json"]).json();
    let states: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["refused", "refused", "refused"]);
    // nothing was started for production
    assert_eq!(get(&s.url("production")).unwrap().0, 503);
}

#[test]
fn verify_then_promote_ships_the_same_bytes_to_production() {
    let s = promotion_sandbox(&[Rel("v1.0.0", GOOD)], "");

    let run = s.ferry(&["promote", "v1.0.0"]);
    assert_eq!(run.code(), 1, "{run}");
    assert!(
        run.stderr()
            .contains("v1.0.0 is not verified on any environment"),
        "{run}"
    );
    let run = s.ferry(&["deploy", "production", "v1.0.0"]);
    assert_eq!(run.code(), 1);
    assert!(
        run.stdout()
            .contains("v1.0.0 was never deployed to staging"),
        "{run}"
    );

    s.deploy_ok("staging", "v1.0.0");
    let run = s.ferry(&["promote", "v1.0.0", "--to", "production"]);
    assert_eq!(run.code(), 1);
    assert!(
        run.stdout()
            .contains("v1.0.0 on staging is not verified: run `ferry verify staging v1.0.0`"),
        "{run}"
    );

    let run = s.ferry(&["verify", "staging", "v2.0.0"]);
    assert_eq!(run.code(), 1);
    assert!(
        run.stderr().contains("staging runs v1.0.0, not v2.0.0"),
        "{run}"
    );
    let run = s.ferry(&["verify", "staging"]);
    assert_eq!(run.code(), 0, "{run}");
    assert!(run.stdout().contains("verified v1.0.0"), "{run}");

    let run = s.ferry(&["promote", "v1.0.0"]);
    assert_eq!(run.code(), 0, "{run}\n{}", s.serve_log());
    assert!(run.stdout().contains("is live on production"), "{run}");
    assert_eq!(s.serving("production").0, "v1.0.0");

    let staging = s.ferry(&["history", "staging", "--json"]).json();
    let production = s.ferry(&["history", "production", "--json"]).json();
    let promoted = &production[0];
    assert_eq!(promoted["state"], "succeeded");
    assert_eq!(promoted["digest"], staging[0]["digest"]);
    assert_eq!(promoted["commit_sha"], staging[0]["commit_sha"]);
    let id = promoted["id"].as_i64().unwrap().to_string();
    let show = s.ferry(&["show", &id, "--json"]).json();
    let step = |name: &str| {
        show["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|st| st["name"] == name)
            .cloned()
            .unwrap()
    };
    assert!(
        step("prepare")["output"]
            .as_str()
            .unwrap()
            .contains("copied release v1.0.0-")
    );
    assert_eq!(step("build")["state"], "skipped");
    assert_eq!(step("build")["output"], "built on staging");
    assert!(
        step("policy")["output"]
            .as_str()
            .unwrap()
            .contains("verified on staging by tester")
    );

    // the sign-off is recorded with who and when
    let v = s.api("/api/verifications?version=v1.0.0");
    assert_eq!(v[0]["verified_by"], "tester");
    assert_eq!(v[0]["environment"], "staging");
}

#[test]
fn approval_waits_then_goes_on_and_times_out_when_nobody_approves() {
    let s = promotion_sandbox(&[Rel("v1.0.0", GOOD)], "approval");
    s.deploy_ok("staging", "v1.0.0");
    assert_eq!(s.ferry(&["verify", "staging"]).code(), 0);

    let run = s.ferry(&["promote", "v1.0.0", "--no-wait", "--json"]);
    assert_eq!(run.code(), 0, "{run}");
    let id = run.json()["id"].as_i64().unwrap();
    let waiting =
        || s.api(&format!("/api/deployments/{id}"))["deployment"]["state"] == "awaiting_approval";
    assert!(eventually(Duration::from_secs(10), waiting));
    // nothing happens while it waits
    std::thread::sleep(Duration::from_millis(300));
    assert!(waiting());
    assert_eq!(get(&s.url("production")).unwrap().0, 503);

    let run = s.ferry(&["approve", &id.to_string()]);
    assert_eq!(run.code(), 0, "{run}");
    let done = || s.api(&format!("/api/deployments/{id}"))["deployment"]["state"] == "succeeded";
    assert!(
        eventually(Duration::from_secs(20), done),
        "{}",
        s.serve_log()
    );
    let d = s.api(&format!("/api/deployments/{id}"));
    assert_eq!(d["deployment"]["approved_by"], "tester");
    assert_eq!(s.serving("production").0, "v1.0.0");

    let again = s.ferry(&["approve", &id.to_string()]);
    assert_eq!(again.code(), 1);
    assert!(
        again
            .stderr()
            .contains("is not waiting for approval (it is succeeded)"),
        "{again}"
    );
}

#[test]
fn approval_timeout_refuses_the_deployment() {
    let s = staging_with(
        &[Rel("v1.0.0", GOOD)],
        "approval = true\napproval_timeout = \"500ms\"",
    );
    let run = s.ferry(&["deploy", "staging", "v1.0.0"]);
    assert_eq!(run.code(), 1, "{run}");
    assert!(run.stdout().contains("waiting for approval"), "{run}");
    assert!(
        run.stdout()
            .contains("refused: policy: no approval within 500ms"),
        "{run}"
    );
}

#[test]
fn freeze_refuses_unless_forced_with_a_reason_and_rollbacks_pass() {
    let s = staging_with(
        &[Rel("v1.0.0", GOOD), Rel("v1.1.0", GOOD)],
        "freeze = [\"2000-01-01 - 2999-12-31\"]",
    );
    let run = s.ferry(&["deploy", "staging", "v1.0.0"]);
    assert_eq!(run.code(), 1);
    assert!(run.stdout().contains("staging is frozen"), "{run}");
    assert!(run.stdout().contains("--force --reason"), "{run}");

    let run = s.ferry(&["deploy", "staging", "v1.0.0", "--force"]);
    assert_eq!(
        run.code(),
        2,
        "--force without --reason is a usage error: {run}"
    );

    let run = s.ferry(&[
        "deploy",
        "staging",
        "v1.0.0",
        "--force",
        "--reason",
        "fix login outage",
    ]);
    assert_eq!(run.code(), 0, "{run}");
    s.ferry(&[
        "deploy",
        "staging",
        "v1.1.0",
        "--force",
        "--reason",
        "second fix",
    ]);
    let d = &s.ferry(&["history", "staging", "--json"]).json()[0];
    assert_eq!(d["forced"], true);
    assert_eq!(d["note"], "second fix");

    let run = s.ferry(&[
        "rollback",
        "staging",
        "--yes",
        "--reason",
        "second fix broke search",
    ]);
    assert_eq!(run.code(), 0, "{run}");
    assert_eq!(s.serving("staging").0, "v1.0.0");
}

#[test]
fn commit_checks_gate_deploys_until_ci_reports_success() {
    let s = staging_with(&[Rel("v1.0.0", GOOD)], "require_checks = [\"ci\"]");
    let sha = String::from_utf8(
        std::process::Command::new("git")
            .args([
                "-C",
                s.repo.to_str().unwrap(),
                "rev-parse",
                "v1.0.0^{commit}",
            ])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_string();

    let run = s.ferry(&["deploy", "staging", "v1.0.0"]);
    assert_eq!(run.code(), 1);
    assert!(
        run.stdout().contains("check \"ci\" was never reported"),
        "{run}"
    );

    let run = s.ferry(&["check-report", &sha, "--name", "ci", "--status", "failure"]);
    assert_eq!(run.code(), 0, "{run}");
    let run = s.ferry(&["deploy", "staging", "v1.0.0"]);
    assert_eq!(run.code(), 1);
    assert!(run.stdout().contains("check \"ci\" is failure"), "{run}");

    // CI reports over the API
    let (status, body) = s.post(
        &format!("/api/commits/{sha}/checks"),
        &serde_json::json!({"name": "ci", "status": "success", "url": "https://ci.example/1"}),
    );
    assert_eq!(status, 201, "{body}");
    s.deploy_ok("staging", "v1.0.0");

    for (path_sha, body, says) in [
        (
            "abc",
            serde_json::json!({"name": "ci", "status": "success"}),
            "not a full commit sha",
        ),
        (
            sha.as_str(),
            serde_json::json!({"name": "ci", "status": "green"}),
            "is not one of",
        ),
        (
            sha.as_str(),
            serde_json::json!({"name": "ci"}),
            "missing field",
        ),
    ] {
        let (status, answer) = s.post(&format!("/api/commits/{path_sha}/checks"), &body);
        assert!(status == 400 || status == 422, "{status} {answer}");
        assert!(
            answer["error"]["message"].as_str().unwrap().contains(says),
            "{answer}"
        );
    }
}

#[test]
fn manual_lock_refuses_deploys_with_holder_and_reason_until_unlocked() {
    let mut s = Sandbox::new(&[Rel("v1.0.0", GOOD)]);
    s.serve();
    let run = s.ferry(&["lock", "staging", "--reason", "db migration"]);
    assert_eq!(run.code(), 0, "{run}");
    let run = s.ferry(&["deploy", "staging", "v1.0.0"]);
    assert_eq!(run.code(), 1);
    assert!(run.stderr().contains("locked by tester"), "{run}");
    assert!(run.stderr().contains("db migration"), "{run}");
    let status = s.ferry(&["status"]).stdout();
    assert!(
        status.contains("locked by tester") && status.contains("db migration"),
        "{status}"
    );
    assert_eq!(s.ferry(&["lock", "staging", "--reason", "again"]).code(), 1);

    assert_eq!(s.ferry(&["unlock", "staging"]).code(), 0);
    s.deploy_ok("staging", "v1.0.0");
    let run = s.ferry(&["unlock", "staging"]);
    assert_eq!(run.code(), 1);
    assert!(run.stderr().contains("staging is not locked"), "{run}");
}

#[test]
fn maintenance_serves_a_page_while_deploys_still_run() {
    let mut s = Sandbox::new(&[Rel("v1.0.0", GOOD), Rel("v1.1.0", GOOD)]);
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    let run = s.ferry(&[
        "maintenance",
        "staging",
        "on",
        "--message",
        "Upgrading the database",
    ]);
    assert_eq!(run.code(), 0, "{run}");
    let resp = crate::support::blocking_http()
        .no_proxy()
        .build()
        .unwrap()
        .get(s.url("staging"))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "120");
    assert!(resp.text().unwrap().contains("Upgrading the database"));

    // a health-checked deploy still goes through behind the page
    s.deploy_ok("staging", "v1.1.0");
    assert_eq!(get(&s.url("staging")).unwrap().0, 503);

    // maintenance survives a restart of ferry
    s.stop(nix::sys::signal::Signal::SIGTERM);
    s.serve();
    assert!(eventually(Duration::from_secs(10), || {
        get(&s.url("staging")).is_some_and(|(code, body)| code == 503 && body.contains("Upgrading"))
    }));
    assert_eq!(s.ferry(&["maintenance", "staging", "off"]).code(), 0);
    assert!(eventually(Duration::from_secs(10), || {
        get(&format!("{}/version", s.url("staging")))
            .is_some_and(|(c, b)| c == 200 && b.contains("v1.1.0"))
    }));
}

#[test]
fn plan_lists_every_gate_and_step_and_changes_nothing() {
    let s = promotion_sandbox(&[Rel("v1.0.0", GOOD)], "approval");
    let run = s.ferry(&["plan", "production", "v1.0.0"]);
    assert_eq!(run.code(), 1, "{run}");
    let out = run.stdout();
    for line in [
        "✓ tag       v1.0.0 is a release tag",
        "✗ promotion v1.0.0 was never deployed to staging",
        "✓ checks    no commit checks required",
        "✓ freeze    outside every freeze window",
        "✓ lock      production is not locked",
        "… approval  waits for `ferry approve`",
        "a deploy would be refused",
    ] {
        assert!(out.contains(line), "missing {line:?} in\n{out}");
    }
    assert!(out.contains("prepare   export"), "{out}");

    s.deploy_ok("staging", "v1.0.0");
    s.ferry(&["verify", "staging"]);
    let plan = s.ferry(&["plan", "production", "v1.0.0", "--json"]).json();
    assert_eq!(plan["allowed"], true);
    let prepare = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|st| st["name"] == "prepare")
        .unwrap();
    assert!(
        prepare["detail"]
            .as_str()
            .unwrap()
            .contains("copy release v1.0.0-")
    );
    // nothing was deployed or recorded for production
    assert_eq!(
        s.ferry(&["history", "production", "--json"]).json(),
        serde_json::json!([])
    );
}

#[test]
fn a_hotfix_tag_on_a_branch_from_the_production_tag_goes_through_the_same_gates() {
    let s = promotion_sandbox(&[Rel("v1.2.3", GOOD)], "");
    s.deploy_ok("staging", "v1.2.3");
    s.ferry(&["verify", "staging"]);
    assert_eq!(s.ferry(&["promote", "v1.2.3"]).code(), 0);

    // main moves on; the fix is cut from the production tag
    std::fs::write(s.repo.join("feature.txt"), "unreleased work").unwrap();
    sh(&s.repo, "git add . && git commit -qm 'feat: unreleased'");
    sh(
        &s.repo,
        "git checkout -q -b hotfix/login v1.2.3 && echo 'message = hotfixed' >> app.conf \
         && git commit -qam 'fix: login' && git tag v1.2.4 && git checkout -q main",
    );

    let run = s.ferry(&["deploy", "production", "v1.2.4"]);
    assert_eq!(run.code(), 1);
    assert!(
        run.stdout()
            .contains("v1.2.4 was never deployed to staging"),
        "{run}"
    );
    s.deploy_ok("staging", "v1.2.4");
    let run = s.ferry(&["promote", "v1.2.4"]);
    assert_eq!(run.code(), 1);
    assert!(run.stderr().contains("not verified"), "{run}");
    s.ferry(&["verify", "staging", "v1.2.4"]);
    let run = s.ferry(&["promote", "v1.2.4"]);
    assert_eq!(run.code(), 0, "{run}");
    let (version, _) = s.serving("production");
    assert_eq!(version, "v1.2.4");
    let (_, body) = get(&s.url("production")).unwrap();
    assert!(body.starts_with("hotfixed from v1.2.4"), "{body}");
    assert!(
        !s.state_dir()
            .join("environments/production/releases")
            .read_dir()
            .unwrap()
            .any(|e| e.unwrap().path().join("feature.txt").exists())
    );
}

#[test]
fn manual_rollback_goes_to_the_previous_good_release_and_skips_bad_ones() {
    let mut s = Sandbox::new(&[
        Rel("v1.0.0", GOOD),
        Rel("v1.1.0", GOOD),
        Rel("v1.2.0", GOOD),
    ]);
    s.serve();
    for tag in ["v1.0.0", "v1.1.0", "v1.2.0"] {
        s.deploy_ok("staging", tag);
    }
    let run = s.ferry(&["rollback", "staging"]);
    assert_eq!(run.code(), 2, "--reason is required: {run}");

    let run = s.ferry(&[
        "rollback",
        "staging",
        "--yes",
        "--reason",
        "v1.2.0 breaks checkout",
    ]);
    assert_eq!(run.code(), 0, "{run}");
    assert!(
        run.stdout().contains("rolled back staging to v1.1.0"),
        "{run}"
    );
    assert_eq!(s.serving("staging").0, "v1.1.0");
    let d = &s.ferry(&["history", "staging", "--json"]).json()[0];
    assert_eq!(d["kind"], "rollback");
    assert_eq!(d["note"], "v1.2.0 breaks checkout");
    let id = d["id"].as_i64().unwrap().to_string();
    let show = s.ferry(&["show", &id, "--json"]).json();
    let states: Vec<(String, String)> = show["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|st| {
            (
                st["name"].as_str().unwrap().into(),
                st["state"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(
        states.contains(&("build".into(), "skipped".into())),
        "{states:?}"
    );
    assert!(
        states.contains(&("health".into(), "ok".into())),
        "{states:?}"
    );

    // rolling back again goes to v1.0.0: v1.2.0 was rolled back, so it is bad and skipped
    let run = s.ferry(&["rollback", "staging", "--yes", "--reason", "v1.1.0 too"]);
    assert_eq!(run.code(), 0, "{run}");
    assert_eq!(s.serving("staging").0, "v1.0.0");
    let run = s.ferry(&["rollback", "staging", "--yes", "--reason", "nothing left"]);
    assert_eq!(run.code(), 1, "{run}");
    assert!(run.stderr().contains("no previous good release"), "{run}");

    // a named version works, even one marked bad, when a person asks for it
    let run = s.ferry(&[
        "rollback",
        "staging",
        "--yes",
        "--to",
        "v1.2.0",
        "--reason",
        "it was fine",
    ]);
    assert_eq!(run.code(), 0, "{run}");
    assert_eq!(s.serving("staging").0, "v1.2.0");
    let run = s.ferry(&[
        "rollback", "staging", "--yes", "--to", "v9.9.9", "--reason", "x",
    ]);
    assert_eq!(run.code(), 1);
    assert!(run.stderr().contains("no built release v9.9.9"), "{run}");
}

const MONITOR: &str = "[monitor]
duration = \"2s\"
interval = \"100ms\"
max_consecutive_failures = 3
min_success_rate = 0.9
max_response_time = \"500ms\"
max_error_lines = 5
error_window = \"1m\"
";

#[test]
fn monitor_rolls_back_to_the_warm_previous_instance_for_each_rule() {
    let mut s = Sandbox::with(
        &[
            Rel("v1.0.0", GOOD),
            Rel("v2.0.0-health", "fail_health_after_ms = 400\n"),
            Rel(
                "v2.0.0-slow",
                "slow_health_after_ms = 400\nslow_health_ms = 900\n",
            ),
            Rel("v2.0.0-errors", "errors_after_ms = 400\n"),
            Rel("v2.0.0-exits", "exit_after_ms = 400\n"),
            Rel("v2.0.0-flaky", "flaky_health = true\n"),
            Rel("v1.1.0", GOOD),
        ],
        Options {
            tables: MONITOR,
            ..Options::default()
        },
    );
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    let (_, first_pid) = s.serving("staging");

    for (tag, rule) in [
        ("v2.0.0-health", "max_consecutive_failures breached"),
        ("v2.0.0-slow", "max_response_time breached"),
        ("v2.0.0-errors", "max_error_lines breached"),
        ("v2.0.0-exits", "process_exited breached"),
        ("v2.0.0-flaky", "min_success_rate breached"),
    ] {
        let run = s.ferry(&["deploy", "staging", tag]);
        assert_eq!(run.code(), 1, "{tag}: {run}");
        assert!(run.stdout().contains(rule), "{tag}: {run}");
        assert!(
            run.stdout().contains("rolled back to v1.0.0"),
            "{tag}: {run}"
        );
        let d = &s.ferry(&["history", "staging", "--json"]).json()[0];
        assert_eq!(d["state"], "rolled_back", "{tag}");
        // the same v1.0.0 process serves again: it was kept warm, not restarted
        assert_eq!(
            s.serving("staging"),
            ("v1.0.0".to_string(), first_pid),
            "{tag}"
        );
        let id = d["id"].as_i64().unwrap().to_string();
        let show = s.ferry(&["show", &id, "--json"]).json();
        let monitor = show["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|st| st["name"] == "monitor")
            .unwrap()
            .clone();
        assert!(
            monitor["output"].as_str().unwrap().contains("(kept warm)"),
            "{tag}: {monitor}"
        );
    }
    let releases = s.api("/api/environments/staging/deployments");
    assert_eq!(releases.as_array().unwrap().len(), 6);

    // a healthy release passes monitoring; the old instance stops only then
    let run = s.ferry(&["deploy", "staging", "v1.1.0", "--no-wait", "--json"]);
    let id = run.json()["id"].as_i64().unwrap();
    assert!(eventually(Duration::from_secs(20), || {
        s.api(&format!("/api/deployments/{id}"))["deployment"]["state"] == "monitoring"
    }));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(s.serving("staging").0, "v1.1.0");
    assert!(
        alive(first_pid),
        "the previous instance stays up during monitoring"
    );
    let (status, body) = get(&format!(
        "http://127.0.0.1:{}/version",
        listening_port(first_pid)
    ))
    .expect("the previous instance still answers on its own port");
    assert_eq!(status, 200);
    assert!(body.contains("v1.0.0"));
    assert!(eventually(Duration::from_secs(20), || {
        s.api(&format!("/api/deployments/{id}"))["deployment"]["state"] == "succeeded"
    }));
    assert!(eventually(Duration::from_secs(10), || !alive(first_pid)));
    let show = s.ferry(&["show", &id.to_string(), "--json"]).json();
    let monitor = show["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|st| st["name"] == "monitor")
        .unwrap()
        .clone();
    assert!(
        monitor["output"]
            .as_str()
            .unwrap()
            .contains("healthy for 2s: 20/20 probes passed"),
        "{monitor}"
    );
}

/// The port a sample-app process listens on, read from /proc.
fn listening_port(pid: u32) -> u16 {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().to_string();
            l.strip_prefix("socket:[")?
                .strip_suffix(']')
                .map(str::to_string)
        })
        .collect();
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    for line in table.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        // state 0A is LISTEN
        if cols.get(3) == Some(&"0A") && cols.get(9).is_some_and(|i| inodes.iter().any(|x| x == i))
        {
            let port = cols[1].rsplit(':').next().unwrap();
            return u16::from_str_radix(port, 16).unwrap();
        }
    }
    panic!("process {pid} listens on no TCP port");
}

#[test]
fn backup_of_a_live_sqlite_db_is_consistent_and_restorable() {
    let mut s = Sandbox::with(
        &[
            Rel("v1.0.0", "db = data/app.db\n"),
            Rel("v1.1.0", "db = data/app.db\nmessage = new\n"),
        ],
        Options {
            extra_app: "shared = [\"data/\"]",
            env_extra: &[("staging", "backup = [\"data/app.db\"]")],
            ..Options::default()
        },
    );
    s.serve();
    let run = s.deploy_ok("staging", "v1.0.0");
    assert!(run.stdout().contains("not there yet"), "{run}");
    let count = || -> u64 {
        let (_, body) = get(&format!("{}/count", s.url("staging"))).unwrap();
        body.trim().parse().unwrap_or(0)
    };
    assert!(eventually(Duration::from_secs(10), || count() > 200));

    // v1.0.0 keeps writing while v1.1.0's deploy snapshots the database
    let run = s.deploy_ok("staging", "v1.1.0");
    assert!(
        run.stdout().contains("sqlite online backup, integrity ok"),
        "{run}"
    );
    let backups = s.api("/api/environments/staging/backups");
    let backup = backups.as_array().unwrap().last().unwrap().clone();
    assert_eq!(backup["method"], "sqlite");
    let path = backup["path"].as_str().unwrap().to_string();
    assert!(path.contains("/backups/data/app.db.v1.1.0."), "{path}");
    let copy = rusqlite_count(&path);
    assert_eq!(copy.0, copy.1, "the snapshot holds whole transactions only");
    assert!(copy.0 > 200);

    // the new release goes on writing; restoring puts the snapshot back and keeps the rest
    assert!(eventually(Duration::from_secs(10), || count() > copy.0 + 200));
    let run = s.ferry(&[
        "rollback",
        "staging",
        "--yes",
        "--restore-data",
        "--reason",
        "bad migration",
    ]);
    assert_eq!(run.code(), 0, "{run}\n{}", s.serve_log());
    assert_eq!(s.serving("staging").0, "v1.0.0");
    let aside: Vec<_> = std::fs::read_dir(s.state_dir().join("environments/staging/backups/data"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| {
            n.starts_with("app.db.before-restore.") && !n.ends_with("-wal") && !n.ends_with("-shm")
        })
        .collect();
    assert!(
        !aside.is_empty(),
        "the data replaced by the restore is kept"
    );
    let kept = rusqlite_count(
        &s.state_dir()
            .join("environments/staging/backups/data")
            .join(&aside[0])
            .to_string_lossy(),
    );
    assert!(kept.0 > copy.0 + 200, "{kept:?} vs {copy:?}");
    // the restored database starts from the snapshot: the new release's rows are gone
    let restored = count();
    assert!(
        restored >= copy.0 && restored < kept.0,
        "{restored} {copy:?} {kept:?}"
    );

    // no backup before a rollback deployment: --restore-data is refused with a reason
    let run = s.ferry(&[
        "rollback",
        "staging",
        "--yes",
        "--to",
        "v1.1.0",
        "--restore-data",
        "--reason",
        "x",
    ]);
    assert_eq!(run.code(), 1, "{run}");
    assert!(run.stderr().contains("took no backup"), "{run}");
}

/// Rows in tables a and b of a sample-app database (checked whole first).
fn rusqlite_count(path: &str) -> (u64, u64) {
    let conn = rusqlite::Connection::open(path).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let count = |t: &str| -> u64 {
        conn.query_row(&format!("SELECT COUNT(*) FROM {t}"), [], |r| {
            r.get::<_, i64>(0)
        })
        .unwrap() as u64
    };
    (count("a"), count("b"))
}

#[test]
fn a_plan_over_get_never_fetches_and_fetching_needs_a_token_and_is_rate_limited() {
    let mut s = Sandbox::new(&[Rel("v1.0.0", GOOD)]);
    s.serve();
    let plan = |r: &str| {
        s.get(&format!("/api/environments/staging/plan?ref={r}"))
            .unwrap()
    };
    // nothing fetched yet: a plan over GET says so instead of cloning the repository
    let (status, body) = plan("v1.0.0");
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("has not fetched the repository"), "{body}");
    assert!(!s.state_dir().join("mirror.git").exists());

    s.deploy_ok("staging", "v1.0.0");
    let fetch_head = s.state_dir().join("mirror.git/FETCH_HEAD");
    let fetched = || {
        std::fs::metadata(&fetch_head)
            .and_then(|m| m.modified())
            .ok()
    };
    let before = fetched();
    // a new tag in the repository: GET plans do not see it, and do not fetch it
    sh(
        &s.repo,
        "git commit -q --allow-empty -m next && git tag v1.1.0",
    );
    for _ in 0..3 {
        let (status, body) = plan("v1.1.0");
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("not in ferry's mirror"), "{body}");
    }
    let (status, body) = plan("v1.0.0");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v["mirror_fetched_at"].is_string(), "{v}");
    assert_eq!(fetched(), before, "a GET fetched the repository");

    // a fetch is a mutation: no token, no fetch; with one, one fetch per 10 s at most
    let url = format!("{}/api/mirror/fetch", s.api);
    assert_eq!(support::post(&url, None, &serde_json::json!({})).0, 401);
    let (status, first) = s.post("/api/mirror/fetch", &serde_json::json!({}));
    assert_eq!(
        (status, first["fetched"].as_bool()),
        (200, Some(true)),
        "{first}"
    );
    let (_, again) = s.post("/api/mirror/fetch", &serde_json::json!({}));
    assert_eq!(again["fetched"], false, "rate-limited: {again}");
    assert_eq!(plan("v1.1.0").0, 200);

    // `ferry plan` asks for the fetch itself, and says which mirror state it planned on
    let run = s.ferry(&["plan", "staging", "v1.1.0"]);
    assert!(
        run.stdout()
            .contains("resolved in ferry's mirror of the repository as fetched at"),
        "{run}"
    );
}

//! `--wait-lock`: a deploy queues behind a running deployment or a `ferry lock` instead of
//! being refused, in order, visible in status, and is refused naming the holder when its
//! wait runs out.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::*;

/// `ferry deploy` (or any command) running in the background.
fn spawn(s: &Sandbox, args: &[&str]) -> Child {
    Command::new(FERRY)
        .arg("-c")
        .arg(&s.config)
        .args(args)
        .env("USER", "tester")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn queue(s: &Sandbox) -> Vec<serde_json::Value> {
    s.api("/api/environments/staging")["queue"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn deployment(s: &Sandbox, id: i64) -> serde_json::Value {
    s.api(&format!("/api/deployments/{id}"))
}

fn step_output(s: &Sandbox, id: i64, step: &str) -> String {
    deployment(s, id)["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|st| st["name"] == step)
        .map(|st| st["output"].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

#[test]
fn a_deploy_waiting_for_a_lock_runs_once_it_is_released() {
    let mut s = Sandbox::new(&[Rel("v1.0.0", GOOD), Rel("v1.1.0", GOOD)]);
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    let run = s.ferry(&["lock", "staging", "--reason", "db maintenance"]);
    assert_eq!(run.code(), 0, "{run}");

    // refused without a wait, as before
    let run = s.ferry(&["deploy", "staging", "v1.1.0"]);
    assert_eq!(run.code(), 1, "{run}");

    let waiting = spawn(&s, &["deploy", "staging", "v1.1.0", "--wait-lock", "5m"]);
    assert!(
        eventually(Duration::from_secs(20), || queue(&s).len() == 1),
        "{}",
        s.serve_log()
    );
    let queued = &queue(&s)[0];
    assert_eq!(queued["ref"], "v1.1.0");
    assert!(queued["until"].is_string(), "{queued}");
    let id = queued["id"].as_i64().unwrap();
    assert_eq!(deployment(&s, id)["deployment"]["state"], "queued");
    let lock = step_output(&s, id, "lock");
    assert!(
        lock.contains("waiting: environment staging is locked by tester"),
        "{lock}"
    );
    assert!(lock.contains("db maintenance"), "{lock}");
    let status = s.ferry(&["status"]);
    assert!(
        status
            .stdout()
            .contains(&format!("queued: deployment {id}")),
        "{status}"
    );
    assert_eq!(s.serving("staging").0, "v1.0.0");

    let run = s.ferry(&["unlock", "staging"]);
    assert_eq!(run.code(), 0, "{run}");
    let out = waiting.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("waiting: environment staging is locked"),
        "{said}"
    );
    assert_eq!(s.serving("staging").0, "v1.1.0");
    assert!(queue(&s).is_empty());
    let lock = step_output(&s, id, "lock");
    assert!(
        lock.contains(&format!("locked staging for deployment {id} after waiting")),
        "{lock}"
    );
}

#[test]
fn deploys_waiting_behind_a_slow_build_run_in_order() {
    let mut s = Sandbox::with(
        &[
            Rel("v1.0.0", GOOD),
            Rel("v1.1.0", "health_status = 200\nslow_build = yes\n"),
            Rel("v1.2.0", GOOD),
        ],
        Options {
            extra_app: "build = [\"if grep -q slow_build app.conf; then sleep 4; fi\"]",
            ..Options::default()
        },
    );
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    let slow = s.ferry(&["deploy", "staging", "v1.1.0", "--no-wait"]);
    assert_eq!(slow.code(), 0, "{slow}");
    let slow_id: i64 = 2;
    assert!(eventually(Duration::from_secs(10), || {
        step_output(&s, slow_id, "lock").contains("locked")
    }));

    let second = spawn(&s, &["deploy", "staging", "v1.2.0", "--wait-lock", "2m"]);
    assert!(eventually(Duration::from_secs(10), || queue(&s).len() == 1));
    let third = spawn(&s, &["deploy", "staging", "v1.0.0", "--wait-lock", "2m"]);
    assert!(eventually(Duration::from_secs(10), || queue(&s).len() == 2));
    // first come, first served
    let line: Vec<String> = queue(&s)
        .iter()
        .map(|q| q["ref"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(line, ["v1.2.0", "v1.0.0"]);
    let ids: Vec<i64> = queue(&s)
        .iter()
        .map(|q| q["id"].as_i64().unwrap())
        .collect();
    let first = step_output(&s, ids[0], "lock");
    assert!(
        first.contains(&format!("(deployment {slow_id})")),
        "{first}"
    );
    // a deploy without a wait does not jump the line
    let run = s.ferry(&["deploy", "staging", "v1.2.0"]);
    assert_eq!(run.code(), 1, "{run}");

    for child in [second, third] {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let done = |id: i64| {
        let d = deployment(&s, id)["deployment"].clone();
        assert_eq!(d["state"], "succeeded", "{d}");
        d["finished_at"].as_str().unwrap().to_string()
    };
    let (slow_done, second_done, third_done) = (done(slow_id), done(ids[0]), done(ids[1]));
    assert!(slow_done < second_done && second_done < third_done);
    let behind = step_output(&s, ids[1], "lock");
    assert!(
        behind.contains(&format!("deployment {} waits ahead", ids[0])),
        "{behind}"
    );
    assert_eq!(s.serving("staging").0, "v1.0.0");
}

#[test]
fn a_wait_that_runs_out_is_refused_naming_the_holder() {
    let mut s = Sandbox::new(&[Rel("v1.0.0", GOOD), Rel("v1.1.0", GOOD)]);
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    let run = s.ferry(&["lock", "staging", "--reason", "release freeze"]);
    assert_eq!(run.code(), 0, "{run}");
    let run = s.ferry(&["deploy", "staging", "v1.1.0", "--wait-lock", "1s"]);
    assert_eq!(run.code(), 1, "{run}");
    let said = format!("{}{}", run.stdout(), run.stderr());
    assert!(said.contains("waited 1s for the lock"), "{run}");
    assert!(said.contains("locked by tester"), "{run}");
    assert!(said.contains("release freeze"), "{run}");
    let d = deployment(&s, 2)["deployment"].clone();
    assert_eq!(d["state"], "refused", "{d}");
    assert!(queue(&s).is_empty());
    assert_eq!(s.serving("staging").0, "v1.0.0");

    // a wait past a day is a usage error
    let run = s.ferry(&["deploy", "staging", "v1.1.0", "--wait-lock", "2d"]);
    assert_eq!(run.code(), 2, "{run}");
}

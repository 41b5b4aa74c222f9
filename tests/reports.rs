//! What a failed or rolled back deploy tells people: the new instance's own last lines (kept
//! per instance, redacted) under the failure in `ferry deploy`, `ferry show` and the report a
//! notification carries, for failures and automatic rollbacks alike.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use support::*;

const SECRET: &str = "sk-live-app-secret-0123456789";

/// A local HTTP listener recording each JSON body it is sent, answering 200.
fn listener() -> (String, Arc<Mutex<Vec<Value>>>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let seen = bodies.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
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
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
    });
    (url, bodies)
}

fn notify_table(url: &str, on: &str) -> &'static str {
    Box::leak(format!("[[notify]]\nurl = \"{url}\"\non = [\"{on}\"]\n").into_boxed_str())
}

/// The first notification once one came.
fn first(bodies: &Arc<Mutex<Vec<Value>>>) -> Value {
    assert!(
        eventually(Duration::from_secs(10), || !bodies
            .lock()
            .unwrap()
            .is_empty()),
        "no notification"
    );
    bodies.lock().unwrap()[0].clone()
}

#[test]
fn a_broken_releases_own_output_appears_in_deploy_show_and_the_failure_report() {
    let (url, bodies) = listener();
    let mut s = Sandbox::with(
        &[
            Rel("v1.0.0", GOOD),
            Rel("v1.1.0", "print_env = API_KEY\nexit_at_start = true\n"),
        ],
        Options {
            tables: notify_table(&url, "deploy.failed"),
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
    s.serve();
    s.deploy_ok("staging", "v1.0.0");

    let run = s.ferry(&["deploy", "staging", "v1.1.0"]);
    assert_eq!(run.code(), 1, "{run}");
    let own_words = "ERROR exit_at_start is set: exiting";
    for out in [run.stdout(), s.ferry(&["show", "2"]).stdout()] {
        assert!(out.contains("the app's last lines"), "{out}");
        assert!(out.contains(own_words), "{out}");
        assert!(out.contains("sample app v1.1.0 starting"), "{out}");
        // its own lines only, not the live instance's, and secrets masked as in the log
        assert!(!out.contains("sample app v1.0.0 starting"), "{out}");
        assert!(out.contains("API_KEY=***"), "{out}");
        assert!(!out.contains(SECRET), "{out}");
    }
    let detail = s.api("/api/deployments/2");
    let health = detail["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|st| st["name"] == "health")
        .unwrap();
    assert!(health["app_output"].as_str().unwrap().contains(own_words));

    let failed = first(&bodies);
    assert_eq!(failed["event"], "deploy.failed");
    let body = failed["report"]["body"].as_str().unwrap();
    assert!(
        body.contains("## The app's last lines (`v1.1.0-") && body.contains(own_words),
        "{body}"
    );
    assert!(!body.contains(SECRET), "{body}");
}

#[test]
fn a_rolled_back_deploy_sends_the_same_ready_to_file_report() {
    let (url, bodies) = listener();
    let mut s = Sandbox::with(
        &[
            Rel("v1.0.0", GOOD),
            Rel("v1.1.0", "fail_health_after_ms = 1500\n"),
        ],
        Options {
            tables: Box::leak(
                format!(
                    "[monitor]\nduration = \"20s\"\ninterval = \"200ms\"\n\n{}",
                    notify_table(&url, "rolled_back")
                )
                .into_boxed_str(),
            ),
            ..Options::default()
        },
    );
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    let run = s.ferry(&["deploy", "staging", "v1.1.0"]);
    assert_eq!(run.code(), 1, "{run}");
    assert!(run.stdout().contains("rolled_back"), "{run}");
    assert!(
        run.stdout().contains("sample app v1.1.0 starting"),
        "the new instance's own lines under the rollback:\n{run}"
    );
    assert_eq!(s.serving("staging").0, "v1.0.0");

    let rolled = first(&bodies);
    assert_eq!(rolled["event"], "rolled_back");
    assert_eq!(rolled["state"], "rolled_back");
    let title = rolled["report"]["title"].as_str().unwrap();
    assert_eq!(
        title,
        "Deploy of sample v1.1.0 to staging rolled back by the monitor (max_consecutive_failures)"
    );
    let body = rolled["report"]["body"].as_str().unwrap();
    for part in [
        "max_consecutive_failures breached: 3 probes failed in a row",
        "| monitor | failed |",
        "## Monitoring",
        "| at | result | ms | detail |",
        "| failed |",
        "/health answered 500",
        "## The app's last lines (`v1.1.0-",
        "sample app v1.1.0 starting",
        "Traffic went back to the previous release.",
    ] {
        assert!(body.contains(part), "{part:?} not in:\n{body}");
    }
}

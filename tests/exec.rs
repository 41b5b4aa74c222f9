//! Operating a running app: `ferry restart` (the serving release started again through the
//! zero-downtime path) and `ferry exec` (a command in the serving release's environment).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use support::*;

/// A client looping requests through `url` until stopped: (served by `version`, anything else).
fn hammer(
    url: String,
    version: &'static str,
) -> (Arc<AtomicBool>, std::thread::JoinHandle<(u64, u64)>) {
    let stop = Arc::new(AtomicBool::new(false));
    let handle = std::thread::spawn({
        let stop = stop.clone();
        move || {
            let (ok, failed) = (AtomicU64::new(0), AtomicU64::new(0));
            let http = reqwest::blocking::Client::builder()
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
                    .is_some_and(|t| t.contains(version));
                let counter = if served { &ok } else { &failed };
                counter.fetch_add(1, Ordering::Relaxed);
            }
            (ok.into_inner(), failed.into_inner())
        }
    });
    (stop, handle)
}

#[test]
fn restart_under_load_fails_no_request_and_serves_the_same_release_from_a_new_instance() {
    let mut s = Sandbox::new(&[Rel("v1.0.0", GOOD)]);
    s.serve();
    let refused = s.ferry(&["restart", "staging"]);
    assert_eq!(refused.code(), 1, "{refused}");
    assert!(
        refused.stderr().contains("nothing is serving staging"),
        "{refused}"
    );

    s.deploy_ok("staging", "v1.0.0");
    let (version, pid) = s.serving("staging");
    assert_eq!(version, "v1.0.0");
    let (stop, client) = hammer(format!("{}/version", s.url("staging")), "v1.0.0");
    std::thread::sleep(Duration::from_millis(200));
    let run = s.ferry(&["restart", "staging", "--reason", "rotated the API key"]);
    assert_eq!(run.code(), 0, "{run}\n{}", s.serve_log());
    assert!(run.stdout().contains("restart v1.0.0-"), "{run}");
    assert!(run.stdout().contains("restarted staging: v1.0.0-"), "{run}");
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = client.join().unwrap();
    assert!(ok > 0, "the client made requests");
    assert_eq!(failed, 0, "failed requests during the restart ({ok} ok)");

    let (version, new_pid) = s.serving("staging");
    assert_eq!(version, "v1.0.0");
    assert_ne!(new_pid, pid, "a new instance serves");
    assert!(
        eventually(Duration::from_secs(10), || !alive(pid)),
        "the old instance was stopped"
    );

    let history = s.ferry(&["history", "staging", "--json"]).json();
    let restart = &history[0];
    assert_eq!(restart["kind"], "restart", "{history}");
    assert_eq!(restart["state"], "succeeded", "{history}");
    assert_eq!(restart["release"], history[1]["release"], "{history}");
    let id = restart["id"].as_i64().unwrap();
    let detail = s.api(&format!("/api/deployments/{id}"));
    let steps: Vec<&str> = detail["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            "resolve", "lock", "prepare", "start", "health", "switch", "finish"
        ]
    );
    assert!(
        detail["steps"][2]["output"]
            .as_str()
            .unwrap()
            .contains("digest unchanged"),
        "{detail}"
    );
}

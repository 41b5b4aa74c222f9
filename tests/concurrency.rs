//! Concurrency: 20 `ferry deploy` processes at once, to one environment and spread over
//! several. Within an environment deployments never overlap (one holds the lock, the others
//! are refused with the holder's name); across environments they run at the same time; every
//! process ends (no deadlock) and every environment ends healthy and unlocked.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

/// Runs `ferry deploy env ref` for each pair at once; returns each exit code and output.
fn deploy_all(s: &Sandbox, targets: &[(String, &str)]) -> Vec<(i32, String)> {
    let children: Vec<_> = targets
        .iter()
        .map(|(env, git_ref)| {
            Command::new(FERRY)
                .arg("-c")
                .arg(&s.config)
                .args(["deploy", env, git_ref])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            (
                out.status.code().unwrap_or(-1),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            )
        })
        .collect()
}

/// The deployments that took `env`'s lock: (id, from the lock step's start, to the end).
fn lock_windows(s: &Sandbox, env: &str) -> Vec<(i64, String, String)> {
    let rows = s.api(&format!("/api/environments/{env}/deployments?limit=100"));
    let mut windows = Vec::new();
    for d in rows.as_array().unwrap() {
        let id = d["id"].as_i64().unwrap();
        let full = s.api(&format!("/api/deployments/{id}"));
        let locked = full["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|st| st["name"] == "lock" && st["state"] == "ok");
        if let Some(lock) = locked {
            windows.push((
                id,
                lock["started_at"].as_str().unwrap().to_string(),
                full["deployment"]["finished_at"]
                    .as_str()
                    .expect("a finished deployment")
                    .to_string(),
            ));
        }
    }
    windows.sort_by(|a, b| a.1.cmp(&b.1));
    windows
}

/// The largest number of windows open at one instant.
fn most_at_once(windows: &[(i64, String, String)]) -> usize {
    let mut edges: Vec<(&str, i32)> = Vec::new();
    for (_, from, to) in windows {
        edges.push((from, 1));
        edges.push((to, -1));
    }
    // at the same instant, an end comes before a start
    edges.sort();
    let (mut open, mut most) = (0, 0);
    for (_, d) in edges {
        open += d;
        most = most.max(open);
    }
    most as usize
}

fn check_outcomes(results: &[(i32, String)]) -> (usize, usize) {
    let mut ok = 0;
    let mut refused = 0;
    for (code, out) in results {
        match code {
            0 => ok += 1,
            1 if out.contains("is being deployed") || out.contains("locked") => refused += 1,
            _ => panic!("unexpected outcome {code}:\n{out}"),
        }
    }
    (ok, refused)
}

#[test]
fn twenty_deploys_at_once_serialize_per_environment_and_run_in_parallel_across() {
    const ENVS: &[&str] = &["e1", "e2", "e3", "e4", "e5"];
    let mut s = Sandbox::with(
        &[Rel("v1.0.0", GOOD), Rel("v1.1.0", GOOD)],
        Options {
            envs: ENVS,
            extra_app: "build = [\"sleep 1\"]",
            ..Options::default()
        },
    );
    s.serve();

    // 20 to one environment
    let started = Instant::now();
    let targets: Vec<_> = (0..20)
        .map(|i| {
            (
                "e1".to_string(),
                if i % 2 == 0 { "v1.0.0" } else { "v1.1.0" },
            )
        })
        .collect();
    let results = deploy_all(&s, &targets);
    let one_env = started.elapsed();
    let (ok, refused) = check_outcomes(&results);
    assert!(ok >= 1, "{results:?}");
    assert_eq!(ok + refused, 20);
    let windows = lock_windows(&s, "e1");
    assert_eq!(windows.len(), ok, "{windows:?}");
    assert_eq!(
        most_at_once(&windows),
        1,
        "deployments of e1 overlapped: {windows:?}"
    );

    // 20 spread over five environments, four each
    let started = Instant::now();
    let targets: Vec<_> = (0..20)
        .map(|i| (ENVS[i % ENVS.len()].to_string(), "v1.1.0"))
        .collect();
    let results = deploy_all(&s, &targets);
    let spread = started.elapsed();
    let (ok2, refused2) = check_outcomes(&results);
    assert_eq!(ok2 + refused2, 20);
    let mut all = Vec::new();
    for env in ENVS {
        let windows = lock_windows(&s, env);
        assert_eq!(
            most_at_once(&windows),
            1,
            "deployments of {env} overlapped: {windows:?}"
        );
        // the second round reached every environment
        assert!(!windows.is_empty(), "{env}");
        all.extend(windows.into_iter().filter(|(id, _, _)| {
            s.api(&format!("/api/deployments/{id}"))["deployment"]["ref"] == "v1.1.0"
        }));
    }
    let parallel = most_at_once(&all);
    assert!(
        parallel > 1,
        "different environments never overlapped: {all:?}"
    );

    // every environment serves, healthy and unlocked
    for env in ENVS {
        assert!(eventually(Duration::from_secs(10), || get(&s.url(env))
            .is_some_and(|(c, _)| c == 200)));
    }
    let status = s.api("/api/environments");
    for env in status.as_array().unwrap() {
        assert_eq!(env["health"], "healthy", "{env}");
        assert!(env["deploying"].is_null(), "{env}");
    }
    println!(
        "20 deploys to one environment: {ok} ran one after another, {refused} refused as busy, all done in {one_env:?}"
    );
    println!(
        "20 deploys over 5 environments: {ok2} ran, {refused2} refused, up to {parallel} at once, all done in {spread:?}"
    );
}

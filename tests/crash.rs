//! Crash recovery: `ferry serve` is killed with SIGKILL at every step of a deployment in
//! turn and started again. Each time the environment must serve its last good release (the
//! instance that was serving, adopted with the same pid), nothing may answer 502, the
//! deployment reads `interrupted`, the lock is free, history and backups are intact and no
//! process of the interrupted deployment is left running.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::json;
use support::*;

const STEPS: &[&str] = &[
    "resolve", "policy", "lock", "prepare", "build", "test", "backup", "start", "health", "check",
    "switch", "monitor", "finish",
];

/// When a request was answered, and its status (`None`: the connection was refused).
type Answers = Vec<(Instant, Option<u16>)>;

/// Requests the proxy every 10 ms until stopped.
struct Prober {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Answers>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Prober {
    fn start(url: String) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let thread = std::thread::spawn({
            let (stop, seen) = (stop.clone(), seen.clone());
            move || {
                let client = crate::support::blocking_http()
                    .no_proxy()
                    .timeout(Duration::from_secs(2))
                    .build()
                    .unwrap();
                while !stop.load(Ordering::Relaxed) {
                    let status = client.get(&url).send().ok().map(|r| r.status().as_u16());
                    seen.lock().unwrap().push((Instant::now(), status));
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        });
        Prober {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Answers {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

struct Row {
    step: &'static str,
    restart_ms: u128,
    serving_ms: u128,
    answers_502: usize,
    outcome: String,
}

#[test]
fn serve_killed_at_every_step_comes_back_on_the_last_good_release() {
    let mut s = Sandbox::with(
        &[Rel("v1.0.0", GOOD)],
        Options {
            // with the hold file there, build runs a command that takes a minute
            extra_app: "build = [\"echo building; if [ -f ../../hold ]; then sleep 60; fi\"]\ntest = [\"echo testing\"]",
            env_extra: &[("staging", "backup = [\"data.txt\"]")],
            tables: "[monitor]\nduration = \"1s\"\ninterval = \"200ms\"\n[[check]]\npath = \"/health\"\n",
            ..Options::default()
        },
    );
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    let shared = s.state_dir().join("environments/staging/shared");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::write(shared.join("data.txt"), "precious data\n").unwrap();
    let staging = s.url("staging");
    let state_dir = s.state_dir();
    let mut rows = Vec::new();

    // each step held at its start, then build again while its command runs
    let rounds = STEPS.iter().map(|&s| (s, false)).chain([("build", true)]);
    for (round, (step, hold)) in rounds.enumerate() {
        s.stop(Signal::SIGKILL);
        let hold_file = state_dir.join("environments/staging/hold");
        if hold {
            std::fs::write(&hold_file, "").unwrap();
            s.serve_env.clear();
        } else {
            s.serve_env = vec![("FERRY_FAULT_PAUSE_AT".into(), step.into())];
        }
        s.serve();
        let (version, pid) = s.serving("staging");
        assert_eq!(version, "v1.0.0");
        std::fs::write(s.repo.join("round.txt"), format!("{round}\n")).unwrap();
        sh(
            &s.repo,
            &format!("git add round.txt && git commit -qm 'round {step}'"),
        );
        let (status, d) = s.post(
            "/api/deployments",
            &json!({"environment": "staging", "ref": "main"}),
        );
        assert_eq!(status, 201, "{d}");
        let id = d["id"].as_i64().unwrap();
        assert!(
            eventually(Duration::from_secs(30), || {
                let d = s.api(&format!("/api/deployments/{id}"))["deployment"].clone();
                d["step"] == step && matches!(d["state"].as_str(), Some("running" | "monitoring"))
            }),
            "deployment {id} never reached {step}: {}\n{}",
            s.api(&format!("/api/deployments/{id}")),
            s.serve_log()
        );
        if hold {
            // the build command is running, in the new release's dir, and has seen the hold
            // file: its `sleep` runs (counting processes there would count the serving
            // instance too, and the hold file could go before the command looked at it)
            assert!(eventually(Duration::from_secs(10), || processes_in(
                &state_dir.join("environments/staging/releases")
            )
            .iter()
            .any(
                |(pid, _)| std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|comm| comm.trim() == "sleep")
            )));
            std::fs::remove_file(&hold_file).unwrap();
        }
        let history = s.api("/api/environments/staging/deployments?limit=100");
        let backups = s.api("/api/environments/staging/backups");

        s.stop(Signal::SIGKILL);
        let prober = Prober::start(format!("{staging}/health"));
        let restarted = Instant::now();
        s.serve_env.clear();
        s.serve();
        let restart = restarted.elapsed();
        let serving = eventually(Duration::from_secs(20), || {
            get(&format!("{staging}/health")).is_some_and(|(c, _)| c == 200)
        });
        let serving_after = restarted.elapsed();
        std::thread::sleep(Duration::from_millis(300));
        let seen = prober.finish();
        assert!(
            serving,
            "{step}: staging never served again\n{}",
            s.serve_log()
        );

        // the release that was serving, adopted: same pid
        let (version, new_pid) = s.serving("staging");
        assert_eq!(version, "v1.0.0", "{step}");
        assert_eq!(
            new_pid, pid,
            "{step}: the serving instance was restarted, not adopted"
        );
        // no 502, ever; nothing but refused connections before serve was back, and 200 after
        let answers_502 = seen.iter().filter(|(_, c)| *c == Some(502)).count();
        assert_eq!(answers_502, 0, "{step}: {seen:?}");
        assert!(
            seen.iter().all(|(_, c)| c.is_none() || *c == Some(200)),
            "{step}: {:?}",
            seen.iter().map(|(_, c)| c).collect::<Vec<_>>()
        );

        let d = s.api(&format!("/api/deployments/{id}"))["deployment"].clone();
        assert_eq!(d["state"], "interrupted", "{step}: {d}");
        assert_eq!(
            d["reason"],
            format!("ferry stopped during step {step}"),
            "{step}"
        );
        let status = s.ferry(&["status", "--json"]).json();
        assert!(status[0]["deploying"].is_null(), "{step}: {status}");
        assert_eq!(status[0]["health"], "healthy", "{step}: {status}");

        // history: every earlier row unchanged, this one now interrupted
        let after = s.api("/api/environments/staging/deployments?limit=100");
        let (before, after) = (history.as_array().unwrap(), after.as_array().unwrap());
        assert_eq!(before.len(), after.len(), "{step}");
        for (b, a) in before.iter().zip(after) {
            if b["id"] != id {
                assert_eq!(a, b, "{step}: history changed");
            }
        }
        // backups: every one recorded is still there, with its bytes
        let kept = s.api("/api/environments/staging/backups");
        assert_eq!(kept, backups, "{step}");
        for b in kept.as_array().unwrap() {
            let path = b["path"].as_str().unwrap();
            assert_eq!(
                std::fs::read_to_string(path).unwrap(),
                "precious data\n",
                "{step}: {path}"
            );
        }
        assert_eq!(
            std::fs::read_to_string(shared.join("data.txt")).unwrap(),
            "precious data\n"
        );
        // nothing left over: only the serving instance's process group runs in the state dir
        let all = processes_in(&state_dir);
        let group = all.iter().find(|(p, _)| *p == pid).map(|(_, g)| *g);
        let left: Vec<_> = all.iter().filter(|(_, g)| Some(*g) != group).collect();
        assert!(group.is_some(), "{step}: {all:?}");
        assert!(left.is_empty(), "{step}: processes left running: {left:?}");

        rows.push(Row {
            step: if hold {
                "build (command running)"
            } else {
                step
            },
            restart_ms: restart.as_millis(),
            serving_ms: serving_after.as_millis(),
            answers_502,
            outcome: format!(
                "interrupted; v1.0.0 adopted (pid {pid}); {} backup(s) intact",
                kept.as_array().unwrap().len()
            ),
        });
    }

    // after all that, the environment deploys normally
    s.deploy_ok("staging", "main");
    assert_eq!(s.serving("staging").0, "main");

    println!("| killed at | serve restart | staging serving 200 | 502s | outcome |");
    println!("|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} ms | {} ms | {} | {} |",
            r.step, r.restart_ms, r.serving_ms, r.answers_502, r.outcome
        );
    }
}

//! Store durability: `ferry serve` loses power (SIGKILL) in the middle of a burst of writes.
//! The store must open, pass SQLite's integrity and foreign-key checks, and hold every change
//! that was acknowledged before the kill.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::json;
use support::*;

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

#[test]
fn a_kill_during_a_burst_of_writes_loses_nothing_acknowledged() {
    let mut s = Sandbox::new(&[Rel("v1.0.0", GOOD)]);
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    let token = s.token();
    let stop = Arc::new(AtomicBool::new(false));
    // check reports acknowledged (name), and the last acknowledged lock state
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let last_lock: Arc<Mutex<Option<bool>>> = Arc::default();
    let client = || {
        crate::support::blocking_http()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap()
    };
    let mut threads = Vec::new();
    for t in 0..3 {
        let (stop, acked, token, api) = (stop.clone(), acked.clone(), token.clone(), s.api.clone());
        threads.push(std::thread::spawn(move || {
            let client = client();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("burst-{t}-{n}");
                let sent = client
                    .post(format!("{api}/api/commits/{SHA}/checks"))
                    .bearer_auth(&token)
                    .json(&json!({"name": name, "status": "success"}))
                    .send();
                match sent {
                    Ok(r) if r.status().is_success() => acked.lock().unwrap().push(name),
                    Ok(r) => panic!("check report answered {}", r.status()),
                    Err(_) => break, // ferry is gone
                }
                n += 1;
            }
        }));
    }
    {
        let (stop, last_lock, token, api) = (
            stop.clone(),
            last_lock.clone(),
            token.clone(),
            s.api.clone(),
        );
        threads.push(std::thread::spawn(move || {
            let client = client();
            let url = format!("{api}/api/environments/staging/lock");
            let mut lock = true;
            while !stop.load(Ordering::Relaxed) {
                let req = if lock {
                    client.post(&url).json(&json!({"reason": "burst"}))
                } else {
                    client.delete(&url)
                };
                match req.bearer_auth(&token).send() {
                    Ok(r) if r.status().is_success() => *last_lock.lock().unwrap() = Some(lock),
                    Ok(r) => panic!("lock answered {}", r.status()),
                    Err(_) => break,
                }
                lock = !lock;
            }
        }));
    }
    // the kill lands mid-burst once enough writes were acknowledged, however slow the machine
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < 60 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    s.stop(Signal::SIGKILL);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 50, "the burst was too small: {}", acked.len());

    let db = rusqlite::Connection::open(s.state_dir().join("ferry.db")).unwrap();
    let integrity: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    let broken_keys: i64 = db
        .query_row("SELECT COUNT(*) FROM pragma_foreign_key_check", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(broken_keys, 0);
    let mode: String = db
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let stored: std::collections::HashSet<String> = db
        .prepare("SELECT name FROM checks WHERE commit_sha = ?1")
        .unwrap()
        .query_map([SHA], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let lost: Vec<_> = acked.iter().filter(|n| !stored.contains(*n)).collect();
    assert!(lost.is_empty(), "acknowledged and lost: {lost:?}");
    // the lock: as last acknowledged, unless the one request in flight changed it (reported)
    let locked: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM env_locks WHERE environment = 'staging' AND kind = 'manual'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    println!(
        "{} check reports acknowledged before the kill, all {} stored; lock last acknowledged {:?}, stored {}",
        acked.len(),
        stored.len(),
        last_lock.lock().unwrap(),
        locked == 1
    );
    drop(db);

    // and ferry starts on it, serving what it served
    s.serve();
    assert!(eventually(Duration::from_secs(15), || get(
        &s.url("staging")
    )
    .is_some_and(|(c, _)| c == 200)));
    let status = s.api("/api/environments");
    assert_eq!(status[0]["version"], "v1.0.0");
}

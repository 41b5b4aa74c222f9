//! Canary rollouts: real releases of the sample app through the real proxy, the split by
//! weight and sticky per client, promote / pause / abort from the CLI, and what a stop of
//! ferry mid-rollout leaves serving.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use support::{GOOD, Options, Rel, Sandbox, eventually};

const RELEASES: &[Rel] = &[Rel("v1.0.0", GOOD), Rel("v2.0.0", GOOD)];

/// One answer of the proxy: status, the canary cookie it set (name=value), the version.
struct Got {
    status: u16,
    set_cookie: Option<String>,
    version: Option<String>,
}

/// `GET /version` on a connection of its own, with `cookie` sent as the Cookie header.
fn version(base: &str, cookie: Option<&str>, header: Option<(&str, &str)>) -> Got {
    let addr = base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).expect("proxy accepts");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut req = format!("GET /version HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(c) = cookie {
        req.push_str(&format!("Cookie: {c}\r\n"));
    }
    if let Some((n, v)) = header {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let set_cookie = head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case("set-cookie")
            .then(|| v.trim().split(';').next().unwrap_or("").to_string())
    });
    let version = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["version"].as_str().map(str::to_string));
    Got {
        status,
        set_cookie,
        version,
    }
}

fn sandbox(rollout: &'static str) -> Sandbox {
    let mut s = Sandbox::with(
        RELEASES,
        Options {
            extra_env: rollout,
            ..Options::default()
        },
    );
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    s
}

/// The environment's rollout as `ferry status --json` shows it.
fn rollout_of(s: &Sandbox) -> serde_json::Value {
    let run = s.ferry(&["status", "--json"]);
    assert_eq!(run.code(), 0, "{run}");
    let all = run.json();
    let env = all
        .as_array()
        .and_then(|a| a.iter().find(|e| e["environment"] == "staging"))
        .cloned()
        .unwrap_or_else(|| all.clone());
    env["rollout"].clone()
}

fn wait_for(s: &Sandbox, what: &str, check: impl Fn(&serde_json::Value) -> bool) {
    assert!(
        eventually(Duration::from_secs(60), || check(&rollout_of(s))),
        "{what}: rollout is {}\n{}",
        rollout_of(s),
        s.serve_log()
    );
}

fn deployment_state(s: &Sandbox, id: i64) -> String {
    s.api(&format!("/api/deployments/{id}"))["deployment"]["state"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| s.api(&format!("/api/deployments/{id}"))["state"].to_string())
}

fn start_v2(s: &Sandbox) -> i64 {
    let run = s.ferry(&["deploy", "staging", "v2.0.0", "--no-wait", "--json"]);
    assert_eq!(run.code(), 0, "{run}");
    run.json()["id"].as_i64().unwrap()
}

/// Of `n` cookie-less requests, how many reached v2.
fn share_on_v2(url: &str, n: usize) -> usize {
    let mut on_v2 = 0;
    for _ in 0..n {
        let got = version(url, None, None);
        assert_eq!(got.status, 200);
        assert!(
            got.set_cookie
                .as_deref()
                .is_some_and(|c| c.starts_with("ferry_canary_staging=")),
            "a client without a bucket gets one"
        );
        if got.version.as_deref() == Some("v2.0.0") {
            on_v2 += 1;
        }
    }
    on_v2
}

#[test]
fn canary_weights_hold_over_2000_requests_and_clients_stay_on_their_version() {
    let s = sandbox("rollout = [\"10%\", \"pause\", \"50%\", \"pause\"]");
    let url = s.url("staging");
    let id = start_v2(&s);
    wait_for(&s, "10% and paused", |r| {
        r["weight"] == 10 && r["paused"].is_string()
    });

    // cookie-less clients: 10% ± 5% of 2,000
    let on_v2 = share_on_v2(&url, 2000);
    assert!((100..=300).contains(&on_v2), "{on_v2} of 2000 on v2 at 10%");

    // every client with a cookie stays on its version, request after request
    let clients: Vec<(String, String)> = (0..200)
        .map(|_| {
            let got = version(&url, None, None);
            (got.set_cookie.unwrap(), got.version.unwrap())
        })
        .collect();
    assert!(clients.iter().any(|(_, v)| v == "v2.0.0"));
    for (cookie, was) in &clients {
        for _ in 0..3 {
            let got = version(&url, Some(&format!("a=1; {cookie}")), None);
            assert_eq!(got.version.as_ref(), Some(was), "{cookie}");
            assert!(got.set_cookie.is_none(), "a client with a bucket keeps it");
        }
    }

    // promote: 50%; nobody on v2 goes back, and the share holds
    let run = s.ferry(&["rollout", "staging", "promote"]);
    assert_eq!(run.code(), 0, "{run}");
    wait_for(&s, "50% and paused", |r| {
        r["weight"] == 50 && r["paused"].is_string()
    });
    for (cookie, was) in clients.iter().filter(|(_, v)| v == "v2.0.0") {
        let got = version(&url, Some(cookie), None);
        assert_eq!(got.version.as_ref(), Some(was), "{cookie} went back");
    }
    let on_v2 = share_on_v2(&url, 2000);
    assert!(
        (900..=1100).contains(&on_v2),
        "{on_v2} of 2000 on v2 at 50%"
    );
    // both instances' traffic in /metrics
    let (_, metrics) = s.get("/metrics").unwrap();
    for release in ["release=\"v1.0.0-", "release=\"v2.0.0-"] {
        assert!(metrics.contains(release), "{release} missing:\n{metrics}");
    }
    let status = s.ferry(&["status"]);
    assert!(status.stdout().contains("rollout of v2.0.0-"), "{status}");

    // the app never sees ferry's cookie
    let addr = url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET /headers HTTP/1.1\r\nHost: {addr}\r\nCookie: a=1; ferry_canary_staging=42\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut headers = String::new();
    stream.read_to_string(&mut headers).unwrap();
    assert!(headers.contains("a=1"), "{headers}");
    assert!(!headers.contains("ferry_canary"), "{headers}");

    // the last promote: the switch, every client on v2, no cookie set any more
    let run = s.ferry(&["rollout", "staging", "promote"]);
    assert_eq!(run.code(), 0, "{run}");
    assert!(eventually(Duration::from_secs(60), || deployment_state(
        &s, id
    ) == "succeeded"));
    assert!(rollout_of(&s).is_null());
    for (cookie, _) in clients.iter().take(20) {
        let got = version(&url, Some(cookie), None);
        assert_eq!(got.version.as_deref(), Some("v2.0.0"));
        assert!(got.set_cookie.is_none());
    }
}

#[test]
fn a_sticky_header_keeps_each_user_on_one_version() {
    let s = sandbox("rollout = [\"30%\", \"pause\"]\nsticky_header = \"X-User-Id\"");
    let url = s.url("staging");
    start_v2(&s);
    wait_for(&s, "30%", |r| r["weight"] == 30);
    let mut on_v2 = 0;
    for user in 0..300 {
        let user = format!("user-{user}");
        let first = version(&url, None, Some(("X-User-Id", &user)));
        assert!(first.set_cookie.is_none(), "the header is the bucket");
        for _ in 0..2 {
            let again = version(&url, None, Some(("X-User-Id", &user)));
            assert_eq!(again.version, first.version, "{user}");
        }
        if first.version.as_deref() == Some("v2.0.0") {
            on_v2 += 1;
        }
    }
    assert!((30..=150).contains(&on_v2), "{on_v2} of 300 users on v2");
}

#[test]
fn aborting_mid_rollout_under_load_puts_every_client_back_with_no_failed_request() {
    let s = sandbox("rollout = [\"50%\", \"pause\"]");
    let url = s.url("staging");
    let id = start_v2(&s);
    wait_for(&s, "50%", |r| r["weight"] == 50);

    let stop = Arc::new(AtomicBool::new(false));
    let (served, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load: Vec<_> = (0..6)
        .map(|_| {
            let (url, stop, served, failed) =
                (url.clone(), stop.clone(), served.clone(), failed.clone());
            std::thread::spawn(move || {
                let mut cookie: Option<String> = None;
                while !stop.load(Ordering::Relaxed) {
                    let got = version(&url, cookie.as_deref(), None);
                    if got.status == 200 {
                        served.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    if cookie.is_none() {
                        cookie = got.set_cookie;
                    }
                }
            })
        })
        .collect();
    assert!(eventually(Duration::from_secs(30), || served
        .load(Ordering::Relaxed)
        > 200));

    // clients on v2 before the abort
    let on_v2: Vec<String> = (0..40)
        .filter_map(|_| {
            let got = version(&url, None, None);
            (got.version.as_deref() == Some("v2.0.0")).then(|| got.set_cookie.unwrap())
        })
        .collect();
    assert!(!on_v2.is_empty());

    let run = s.ferry(&["rollout", "staging", "abort"]);
    assert_eq!(run.code(), 0, "{run}");
    assert!(run.stdout().contains("aborted at 50%"), "{run}");
    // once abort answered, every client is on v1: those that were on v2 too
    for cookie in &on_v2 {
        assert_eq!(
            version(&url, Some(cookie), None).version.as_deref(),
            Some("v1.0.0")
        );
    }
    for _ in 0..200 {
        let got = version(&url, None, None);
        assert_eq!(got.version.as_deref(), Some("v1.0.0"));
        assert!(got.set_cookie.is_none(), "no split, no cookie");
    }
    let before = served.load(Ordering::Relaxed);
    assert!(eventually(Duration::from_secs(30), || served
        .load(Ordering::Relaxed)
        > before + 200));
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed around the abort"
    );

    assert!(eventually(Duration::from_secs(30), || deployment_state(
        &s, id
    ) == "rolled_back"));
    let d = s.api(&format!("/api/deployments/{id}"));
    let text = d.to_string();
    assert!(text.contains("aborted by"), "{text}");
    assert!(rollout_of(&s).is_null());
    // the aborted release is not a rollback target
    let releases = s.ferry(&["status"]);
    assert!(releases.stdout().contains("v1.0.0"), "{releases}");
}

#[test]
fn pause_and_promote_from_the_cli_and_promote_full() {
    let s = sandbox("rollout = [\"10%\", \"wait 1h\", \"50%\", \"wait 1h\"]");
    let url = s.url("staging");

    let none = s.ferry(&["rollout", "staging", "promote"]);
    assert_eq!(none.code(), 1, "{none}");
    assert!(none.stderr().contains("no rollout is under way"), "{none}");

    let id = start_v2(&s);
    wait_for(&s, "10%, waiting", |r| {
        r["weight"] == 10 && r["paused"].is_null() && r["step"] == 2
    });
    let run = s.ferry(&["rollout", "staging", "pause"]);
    assert_eq!(run.code(), 0, "{run}");
    assert!(run.stdout().contains("paused by"), "{run}");
    let r = rollout_of(&s);
    assert!(r["paused"].as_str().unwrap().contains("paused by"), "{r}");
    assert!(s.ferry(&["status"]).stdout().contains("PAUSED"));

    // promote resumes: the next step (50%), then its wait
    let run = s.ferry(&["rollout", "staging", "promote"]);
    assert_eq!(run.code(), 0, "{run}");
    wait_for(&s, "50%, waiting", |r| {
        r["weight"] == 50 && r["paused"].is_null() && r["step"] == 4
    });

    let bad = s.ferry(&["rollout", "staging", "abort", "--full"]);
    assert_eq!(bad.code(), 2, "{bad}");

    let run = s.ferry(&["rollout", "staging", "promote", "--full"]);
    assert_eq!(run.code(), 0, "{run}");
    assert!(eventually(Duration::from_secs(60), || deployment_state(
        &s, id
    ) == "succeeded"));
    assert_eq!(version(&url, None, None).version.as_deref(), Some("v2.0.0"));
    let shown = s.ferry(&["show", &id.to_string()]);
    assert!(shown.stdout().contains("rollout"), "{shown}");
}

#[test]
fn ferry_killed_mid_rollout_comes_back_on_the_old_release() {
    let mut s = sandbox("rollout = [\"50%\", \"wait 1h\"]");
    let url = s.url("staging");
    let id = start_v2(&s);
    wait_for(&s, "50%", |r| r["weight"] == 50);
    s.stop(nix::sys::signal::Signal::SIGKILL);
    s.serve();
    assert_eq!(deployment_state(&s, id), "interrupted");
    for _ in 0..100 {
        let got = version(&url, None, None);
        assert_eq!(got.version.as_deref(), Some("v1.0.0"));
        assert!(got.set_cookie.is_none());
    }
    assert!(rollout_of(&s).is_null());
}

#[test]
fn the_dashboard_shows_the_rollout_and_its_buttons_act() {
    let s = sandbox("rollout = [\"20%\", \"pause\"]");
    let id = start_v2(&s);
    wait_for(&s, "20% and paused", |r| {
        r["weight"] == 20 && r["paused"].is_string()
    });

    let run = s.ferry(&["token", "create", "--name", "operator", "--json"]);
    assert_eq!(run.code(), 0, "{run}");
    let token = run.json()["token"].as_str().unwrap().to_string();
    let client = crate::support::blocking_http()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let signed_in = client
        .post(format!("{}/signin", s.api))
        .form(&[("token", token.as_str())])
        .send()
        .unwrap();
    let session = signed_in
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let page = client
        .get(format!("{}/environments/staging", s.api))
        .header("cookie", &session)
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(page.contains("Rollout of v2.0.0-"), "{page}");
    assert!(page.contains("20%") && page.contains("Paused: "), "{page}");
    let csrf = regex::Regex::new(r#"name="csrf" value="([0-9a-f]{32})""#)
        .unwrap()
        .captures(&page)
        .expect("the rollout form carries a CSRF token")[1]
        .to_string();
    assert!(page.contains(r#"value="abort""#), "{page}");

    // without the CSRF token nothing happens
    let forged = client
        .post(format!("{}/actions/environments/staging/rollout", s.api))
        .header("cookie", &session)
        .form(&[("action", "abort")])
        .send()
        .unwrap();
    assert_eq!(forged.status().as_u16(), 403);
    assert_eq!(rollout_of(&s)["weight"], 20);

    let aborted = client
        .post(format!("{}/actions/environments/staging/rollout", s.api))
        .header("cookie", &session)
        .form(&[("csrf", csrf.as_str()), ("action", "abort")])
        .send()
        .unwrap();
    assert_eq!(aborted.status().as_u16(), 303);
    let to = aborted.headers()["location"].to_str().unwrap().to_string();
    assert_eq!(to, "/environments/staging?notice=rollout-aborted");
    assert!(eventually(Duration::from_secs(30), || deployment_state(
        &s, id
    ) == "rolled_back"));
    assert_eq!(
        version(&s.url("staging"), None, None).version.as_deref(),
        Some("v1.0.0")
    );
}

#[test]
fn the_previous_instance_dying_mid_rollout_hands_every_client_to_the_new_one() {
    let s = sandbox("rollout = [\"20%\", \"wait 1h\"]");
    let url = s.url("staging");
    let old_pid = s.ferry(&["status", "--json"]).json()[0]["pid"]
        .as_u64()
        .unwrap() as i32;
    let id = start_v2(&s);
    wait_for(&s, "20%", |r| r["weight"] == 20);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(eventually(Duration::from_secs(60), || deployment_state(
        &s, id
    ) == "succeeded"));
    for _ in 0..50 {
        assert_eq!(version(&url, None, None).version.as_deref(), Some("v2.0.0"));
    }
    let shown = s.ferry(&["show", &id.to_string()]);
    assert!(
        shown.stdout().contains("the previous instance exited"),
        "{shown}"
    );
}

/// A sandbox with `[monitor]` traffic rules and v2 configured by `v2` (its `app.conf`).
fn judged_sandbox(rollout: &'static str, monitor: &'static str, v2: &'static str) -> Sandbox {
    let mut s = Sandbox::with(
        &[Rel("v1.0.0", GOOD), Rel("v2.0.0", v2)],
        Options {
            extra_env: rollout,
            tables: monitor,
            ..Options::default()
        },
    );
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    s
}

#[test]
fn an_inconclusive_step_waits_then_pauses_for_a_person() {
    let s = judged_sandbox(
        "rollout = [\"10%\", \"wait 1s\", \"100%\"]\ninconclusive_timeout = \"1s\"",
        "[monitor]\nduration = \"1s\"\ninterval = \"500ms\"\nmax_error_rate = 0.5\nmin_requests = 1000000",
        GOOD,
    );
    let id = start_v2(&s);
    wait_for(&s, "paused for too little traffic", |r| {
        r["weight"] == 10
            && r["paused"]
                .as_str()
                .is_some_and(|p| p.contains("too little traffic"))
    });
    // it stays there: paused, not guessing
    let r = rollout_of(&s);
    assert_eq!(r["step"], 2, "{r}");
    assert!(
        r["analysis"].as_str().unwrap().contains("min_requests"),
        "{r}"
    );
    assert!(
        s.ferry(&["status"])
            .stdout()
            .contains("PAUSED: too little traffic")
    );
    assert_eq!(deployment_state(&s, id), "running");
    let run = s.ferry(&["rollout", "staging", "abort"]);
    assert_eq!(run.code(), 0, "{run}");
    assert!(eventually(Duration::from_secs(30), || deployment_state(
        &s, id
    ) == "rolled_back"));
}

#[test]
fn a_release_answering_500_breaches_and_is_aborted_to_0_percent() {
    let s = judged_sandbox(
        "rollout = [\"50%\", \"wait 1h\"]",
        "[monitor]\nduration = \"1s\"\ninterval = \"500ms\"\nmax_error_rate = 0.1\nmin_requests = 20\nwindow = \"1m\"",
        "health_status = 200\nerror_percent = 100\n",
    );
    let url = s.url("staging");
    let id = start_v2(&s);
    wait_for(&s, "50%", |r| r["weight"] == 50);
    // cookie-less clients on `/` until the rule breaches
    let mut served = 0;
    while deployment_state(&s, id) == "running" {
        for _ in 0..20 {
            let _ = support::get(&format!("{url}/"));
            served += 1;
        }
        assert!(served < 20_000, "no breach after {served} requests");
    }
    assert_eq!(deployment_state(&s, id), "rolled_back");
    let d = s.api(&format!("/api/deployments/{id}")).to_string();
    assert!(d.contains("max_error_rate breached at 50%"), "{d}");
    for _ in 0..100 {
        let got = version(&url, None, None);
        assert_eq!(got.version.as_deref(), Some("v1.0.0"));
        assert!(got.set_cookie.is_none());
    }
}

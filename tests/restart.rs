//! Restarts and upgrades of ferry itself without a failed request: the apps outlive a stopped
//! `serve` and the next one adopts them; listening sockets outlive the process (held by
//! systemd, or handed to a new serve by `ferry upgrade`).
//!
//! Clients hammer staging's proxy over keep-alive connections through each restart. What
//! counts as failed is spelled out in [`Hammer`]: anything but a 200, a refused or reset new
//! connection, a timeout, a cut response. The one thing retried is what every browser and
//! HTTP library retries for an idempotent request: a *reused* keep-alive connection that the
//! server closed (or that died) before a single byte of the response came back — counted
//! apart and printed.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use support::*;

/// What the hammering clients saw.
#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    /// Requests retried on a fresh connection because their reused one was closed or died
    /// before any byte of the response.
    retried: u64,
    failed: u64,
    /// The first reasons for failures.
    reasons: Vec<String>,
    /// Distinct app pids that answered (from `/version`).
    pids: std::collections::BTreeSet<u64>,
}

enum Attempt {
    Ok(String),
    /// No byte of a response on a reused connection.
    Unanswered(String),
    Failed(String),
}

/// `clients` threads, each on its own keep-alive connection, requesting `/version` through
/// the proxy back to back until stopped.
struct Hammer {
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

struct Conn {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
    used: bool,
}

fn connect(addr: &str) -> Result<Conn, String> {
    let stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let _ = stream.set_nodelay(true);
    Ok(Conn {
        reader: BufReader::new(stream.try_clone().unwrap()),
        writer: stream,
        used: false,
    })
}

/// One request on `conn`; `close` is set when the response says `Connection: close`.
fn request(conn: &mut Conn, close: &mut bool) -> Attempt {
    let reused = conn.used;
    conn.used = true;
    let fail = |what: String| {
        if reused {
            Attempt::Unanswered(what)
        } else {
            Attempt::Failed(what)
        }
    };
    if let Err(e) = conn
        .writer
        .write_all(b"GET /version HTTP/1.1\r\nHost: restart.test\r\n\r\n")
    {
        return fail(format!("write: {e}"));
    }
    let mut status = String::new();
    match conn.reader.read_line(&mut status) {
        Ok(0) => return fail("closed before the response".into()),
        Err(e) if status.is_empty() => return fail(format!("read: {e}")),
        Err(e) => return Attempt::Failed(format!("read: {e}")),
        Ok(_) => {}
    }
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        match conn.reader.read_line(&mut line) {
            Ok(0) => return Attempt::Failed("cut in the headers".into()),
            Err(e) => return Attempt::Failed(format!("headers: {e}")),
            Ok(_) => {}
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if lower.starts_with("connection:") && lower.contains("close") {
            *close = true;
        }
    }
    let mut body = vec![0u8; length];
    if let Err(e) = conn.reader.read_exact(&mut body) {
        return Attempt::Failed(format!("body: {e}"));
    }
    let body = String::from_utf8_lossy(&body).into_owned();
    if !status.starts_with("HTTP/1.1 200") {
        return Attempt::Failed(format!("{} {body}", status.trim()));
    }
    Attempt::Ok(body)
}

impl Hammer {
    fn start(url: &str, clients: usize) -> Hammer {
        let addr = url.trim_start_matches("http://").to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Mutex::new(Tally::default()));
        let threads = (0..clients)
            .map(|_| {
                let (addr, stop, tally) = (addr.clone(), stop.clone(), tally.clone());
                std::thread::spawn(move || {
                    let mut conn: Option<Conn> = None;
                    while !stop.load(Ordering::Relaxed) {
                        let mut retried = false;
                        let outcome = loop {
                            let c = match conn.take() {
                                Some(c) => c,
                                None => match connect(&addr) {
                                    Ok(c) => c,
                                    Err(e) => break Attempt::Failed(e),
                                },
                            };
                            let mut c = c;
                            let mut close = false;
                            match request(&mut c, &mut close) {
                                Attempt::Unanswered(_) if !retried => {
                                    retried = true;
                                    continue;
                                }
                                Attempt::Unanswered(e) => break Attempt::Failed(e),
                                other => {
                                    if !close && matches!(other, Attempt::Ok(_)) {
                                        conn = Some(c);
                                    }
                                    break other;
                                }
                            }
                        };
                        let mut t = tally.lock().unwrap();
                        if retried {
                            t.retried += 1;
                        }
                        match outcome {
                            Attempt::Ok(body) => {
                                t.ok += 1;
                                if let Some(pid) = serde_json::from_str::<serde_json::Value>(&body)
                                    .ok()
                                    .and_then(|v| v["pid"].as_u64())
                                {
                                    t.pids.insert(pid);
                                }
                            }
                            Attempt::Failed(reason) | Attempt::Unanswered(reason) => {
                                t.failed += 1;
                                if t.reasons.len() < 10 {
                                    t.reasons.push(reason);
                                }
                                drop(t);
                                std::thread::sleep(Duration::from_millis(5));
                            }
                        }
                    }
                })
            })
            .collect();
        Hammer {
            stop,
            tally,
            threads,
        }
    }

    fn ok(&self) -> u64 {
        self.tally.lock().unwrap().ok
    }

    /// Waits until `n` more requests have succeeded (load before and after a restart).
    fn wait_for(&self, n: u64) {
        let from = self.ok();
        assert!(
            eventually(Duration::from_secs(30), || self.ok() >= from + n),
            "the clients got no answers: {:?}",
            self.tally.lock().unwrap()
        );
    }

    fn finish(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        std::mem::take(&mut *self.tally.lock().unwrap())
    }
}

/// As [`assert_none_failed`], and not one retry either: a stopping serve tells each kept-alive
/// client `Connection: close` with its next answer instead of closing under it.
fn assert_none_failed_or_retried(what: &str, t: &Tally, log: &str) {
    assert_none_failed(what, t, log);
    assert_eq!(
        t.retried, 0,
        "{what}: a kept-alive connection was closed under its client"
    );
}

fn assert_none_failed(what: &str, t: &Tally, log: &str) {
    println!(
        "{what}: {} of {} requests failed ({} retried after a reused connection closed unanswered)",
        t.failed,
        t.ok + t.failed,
        t.retried
    );
    assert_eq!(t.failed, 0, "{what}: {:?}\n{log}", t.reasons);
    assert!(t.ok > 100, "{what}: too few requests to tell: {t:?}");
}

/// The pid of the app process serving `env` (its own, from `/version`).
fn app_pid(s: &Sandbox, env: &str) -> u64 {
    s.serving(env).1 as u64
}

/// True while `pid` runs (a zombie waiting to be reaped does not count).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

fn health(s: &Sandbox) -> Option<(u16, String)> {
    get(&format!("{}/health", s.api))
}

#[test]
fn stopping_serve_leaves_the_apps_running_and_the_next_serve_adopts_them() {
    let mut s = Sandbox::new(&[Rel("v1.0.0", GOOD)]);
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    let pid = app_pid(&s, "staging");
    s.stop(Signal::SIGTERM);
    assert!(
        s.serve_log().contains("the apps keep running"),
        "{}",
        s.serve_log()
    );
    assert!(alive(pid as u32), "the app outlived serve");
    // the store still has it running: nothing recorded it stopped
    let db = rusqlite::Connection::open(s.state_dir().join("ferry.db")).unwrap();
    let open_rows: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM instances WHERE environment = 'staging' AND stopped_at IS NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(open_rows, 1);
    drop(db);
    s.serve();
    // adopted before the proxy took a request: /health is up and the first request answers
    let (code, body) = health(&s).unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(s.serving("staging"), ("v1.0.0".to_string(), pid as u32));
    assert!(s.serve_log().contains("adopted the instance left running"));
    get(&format!(
        "{}/log?line=after-a-clean-restart",
        s.url("staging")
    ));
    let log = s.state_dir().join("environments/staging/logs/app.log");
    assert!(
        eventually(Duration::from_secs(30), || std::fs::read_to_string(&log)
            .is_ok_and(|t| t.contains("after-a-clean-restart"))),
        "the adopted instance's output is logged"
    );

    // --stop-apps: the old behaviour
    s.serve_args.push("--stop-apps".into());
    s.stop(Signal::SIGTERM);
    s.serve();
    s.stop(Signal::SIGTERM);
    assert!(
        eventually(Duration::from_secs(15), || !running(pid as u32)),
        "--stop-apps stops the app:\n{}",
        s.serve_log()
    );
    assert!(get(&s.url("staging")).is_none());
}

#[test]
fn stop_apps_on_exit_in_the_config_stops_them_and_health_waits_for_the_release() {
    let mut s = Sandbox::with(
        &[Rel("v1.0.0", "boot_ms = 1500\n")],
        Options {
            server: "stop_apps_on_exit = true",
            ..Options::default()
        },
    );
    // slow to boot, and given the time to
    let config = std::fs::read_to_string(&s.config)
        .unwrap()
        .replace("retries = 15", "retries = 200");
    std::fs::write(&s.config, config).unwrap();
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    let pid = app_pid(&s, "staging");
    s.stop(Signal::SIGTERM);
    assert!(
        eventually(Duration::from_secs(5), || !running(pid as u32)),
        "stop_apps_on_exit stops the app"
    );
    // the next serve restores the release, booting for 1.5 s: not up until it answers
    s.serve();
    let (code, body) = health(&s).unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("no instance answering"), "{body}");
    assert!(eventually(Duration::from_secs(20), || health(&s)
        .is_some_and(|(c, _)| c == 200)));
    assert_eq!(s.serving("staging").0, "v1.0.0");
}

/// A running `tests/support/socket_activate.py`: systemd's part for a socket unit.
struct Activator {
    child: Child,
    pidfile: PathBuf,
}

impl Activator {
    /// Holds the API's and every environment's socket, named, and runs `ferry serve` on them.
    fn start(s: &Sandbox) -> Activator {
        let pidfile = s.dir.path().join("serve.pid");
        let mut names = vec![format!("api={}", s.api.trim_start_matches("http://"))];
        for (env, url) in &s.envs {
            names.push(format!("{env}={}", url.trim_start_matches("http://")));
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(s.dir.path().join("serve.log"))
            .unwrap();
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/support/socket_activate.py"
        );
        let child = Command::new("python3")
            .arg(script)
            .arg(&pidfile)
            .args(&names)
            .arg("--")
            .arg(FERRY)
            .arg("serve")
            .arg("-c")
            .arg(&s.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("python3 runs the socket-activation harness");
        let a = Activator { child, pidfile };
        assert!(
            eventually(Duration::from_secs(20), || a.pid().is_some()
                && health(s).is_some()),
            "serve did not come up under the harness:\n{}",
            s.serve_log()
        );
        a
    }

    fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(&self.pidfile)
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Sends `signal` to serve and waits for the harness to have started the next one.
    fn restart(&self, signal: Signal, s: &Sandbox) {
        let old = self.pid().unwrap();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(old as i32), signal).unwrap();
        assert!(
            eventually(Duration::from_secs(30), || self
                .pid()
                .is_some_and(|p| p != old)
                && !running(old)
                && health(s).is_some_and(|(c, _)| c == 200)),
            "no new serve:\n{}",
            s.serve_log()
        );
    }
}

impl Drop for Activator {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

fn have_python() -> bool {
    let ok = Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        println!("skipped: python3 (the socket-activation harness) is not installed");
    }
    ok
}

#[test]
fn a_sigterm_restart_with_systemd_holding_the_sockets_fails_no_request() {
    if !have_python() {
        return;
    }
    let s = Sandbox::new(&[Rel("v1.0.0", GOOD)]);
    let harness = Activator::start(&s);
    s.deploy_ok("staging", "v1.0.0");
    let pid = app_pid(&s, "staging");
    let hammer = Hammer::start(&s.url("staging"), 8);
    hammer.wait_for(200);
    // systemctl restart: SIGTERM, then the service again on the same sockets
    harness.restart(Signal::SIGTERM, &s);
    hammer.wait_for(200);
    harness.restart(Signal::SIGTERM, &s);
    hammer.wait_for(200);
    let t = hammer.finish();
    assert_none_failed_or_retried("two SIGTERM restarts", &t, &s.serve_log());
    assert_eq!(t.pids.iter().copied().collect::<Vec<_>>(), vec![pid]);
    assert!(s.serve_log().contains("adopted the instance left running"));
}

#[test]
fn a_sigkill_with_systemd_holding_the_sockets_fails_no_request() {
    if !have_python() {
        return;
    }
    let s = Sandbox::new(&[Rel("v1.0.0", GOOD)]);
    let harness = Activator::start(&s);
    s.deploy_ok("staging", "v1.0.0");
    let pid = app_pid(&s, "staging");
    let hammer = Hammer::start(&s.url("staging"), 8);
    hammer.wait_for(200);
    harness.restart(Signal::SIGKILL, &s);
    hammer.wait_for(200);
    harness.restart(Signal::SIGKILL, &s);
    hammer.wait_for(200);
    let t = hammer.finish();
    // the killed serve's connections die with it: a request on one is retried on a new
    // connection, as browsers do (counted in `retried`); a new connection waits in the backlog
    assert_none_failed("two kill -9 restarts", &t, &s.serve_log());
    assert_eq!(t.pids.iter().copied().collect::<Vec<_>>(), vec![pid]);
}

#[test]
fn ferry_upgrade_hands_the_sockets_over_and_fails_no_request() {
    let mut s = Sandbox::new(&[Rel("v1.0.0", GOOD)]);
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    let pid = app_pid(&s, "staging");
    let hammer = Hammer::start(&s.url("staging"), 8);
    hammer.wait_for(200);
    for round in 0..2 {
        let old = s.locked_serve_pid().expect("serve holds the lock");
        let run = s.ferry(&["upgrade", "--binary", FERRY]);
        assert_eq!(run.code(), 0, "{run}\n{}", s.serve_log());
        assert!(run.stdout().contains("serves now"), "{run}");
        let new = s.locked_serve_pid().expect("the new serve holds the lock");
        assert_ne!(new, old, "round {round}");
        assert!(
            eventually(Duration::from_secs(15), || !running(old)),
            "the old serve exits once it has handed over"
        );
        hammer.wait_for(200);
    }
    let t = hammer.finish();
    assert_none_failed_or_retried("two upgrades", &t, &s.serve_log());
    assert_eq!(t.pids.iter().copied().collect::<Vec<_>>(), vec![pid]);
    assert_eq!(health(&s).unwrap().0, 200);
    // the new serve deploys, and reads the app's output
    get(&format!("{}/log?line=after-the-upgrade", s.url("staging")));
    let log = s.state_dir().join("environments/staging/logs/app.log");
    assert!(eventually(Duration::from_secs(5), || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("after-the-upgrade"))
    }));
    s.deploy_ok("staging", "v1.0.0");
    // the first serve was the sandbox's child: reap it
    s.stop(Signal::SIGTERM);
}

#[test]
fn a_takeover_is_refused_clearly_with_no_serve_or_during_a_deployment() {
    let mut s = Sandbox::with(
        &[Rel("v1.0.0", GOOD)],
        Options {
            extra_app: "build = [\"if [ -f ../../hold ]; then sleep 30; fi\"]",
            ..Options::default()
        },
    );
    let run = s.ferry(&["serve", "--takeover"]);
    assert_eq!(run.code(), 1, "{run}");
    assert!(
        run.stderr()
            .contains("no ferry serve is running on the state dir"),
        "{run}"
    );
    let run = s.ferry(&["upgrade"]);
    assert_eq!(run.code(), 1, "{run}");
    assert!(run.stderr().contains("no ferry serve is running"), "{run}");

    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    let env_dir = s.state_dir().join("environments/staging");
    std::fs::write(env_dir.join("hold"), "").unwrap();
    // a new release (main's), so its build runs, and holds
    let run = s.ferry(&["deploy", "staging", "main", "--no-wait"]);
    assert_eq!(run.code(), 0, "{run}");
    assert!(eventually(Duration::from_secs(20), || {
        s.ferry(&["history", "staging", "--json"]).json()[0]["state"] == "running"
    }));
    let run = s.ferry(&["serve", "--takeover"]);
    assert_eq!(run.code(), 1, "{run}");
    assert!(
        run.stderr().contains("refused the takeover: deployment"),
        "{run}"
    );
    let run = s.ferry(&["upgrade"]);
    assert_eq!(run.code(), 1, "{run}");
    assert!(
        run.stderr().contains("upgrade refused: deployment") && run.stderr().contains("is running"),
        "{run}"
    );
    // nothing changed: the serve running goes on
    assert_eq!(health(&s).unwrap().0, 200);
    std::fs::remove_file(env_dir.join("hold")).unwrap();
}

#[test]
fn install_systemd_writes_units_systemd_accepts_and_never_overwrites_silently() {
    let s = Sandbox::with(
        &[Rel("v1.0.0", GOOD)],
        Options {
            envs: &["staging", "production"],
            ..Options::default()
        },
    );
    let dir = s.dir.path().join("units");
    let dir_arg = dir.to_str().unwrap();
    let run = s.ferry(&["install", "systemd", "--dir", dir_arg]);
    assert_eq!(run.code(), 0, "{run}");
    let service = std::fs::read_to_string(dir.join("ferry.service")).unwrap();
    assert!(
        service.contains(&format!(
            "ExecStart={FERRY} serve -c {}",
            s.config.display()
        )),
        "{service}"
    );
    for line in [
        "KillMode=process",
        "Type=notify",
        "NotifyAccess=all",
        "ExecReload=",
        "Restart=on-failure",
        "LimitNOFILE=",
    ] {
        assert!(service.contains(line), "{line} in\n{service}");
    }
    for (name, url) in [("api".to_string(), s.api.clone())]
        .into_iter()
        .chain(s.envs.iter().cloned())
    {
        let unit = std::fs::read_to_string(dir.join(format!("ferry-{name}.socket"))).unwrap();
        let addr = url.trim_start_matches("http://");
        assert!(unit.contains(&format!("ListenStream={addr}\n")), "{unit}");
        assert!(
            unit.contains(&format!("FileDescriptorName={name}\n")),
            "{unit}"
        );
        assert!(unit.contains("Service=ferry.service"), "{unit}");
        assert!(
            service.contains(&format!("ferry-{name}.socket")),
            "{service}"
        );
    }

    // the same again changes nothing; a file changed by hand is kept without --force
    let again = s.ferry(&["install", "systemd", "--dir", dir_arg]);
    assert_eq!(again.code(), 0, "{again}");
    assert!(again.stdout().contains("unchanged"), "{again}");
    std::fs::write(dir.join("ferry-api.socket"), "edited\n").unwrap();
    let refused = s.ferry(&["install", "systemd", "--dir", dir_arg]);
    assert_eq!(refused.code(), 1, "{refused}");
    assert!(refused.stderr().contains("--force"), "{refused}");
    assert_eq!(
        std::fs::read_to_string(dir.join("ferry-api.socket")).unwrap(),
        "edited\n"
    );
    let forced = s.ferry(&["install", "systemd", "--dir", dir_arg, "--force"]);
    assert_eq!(forced.code(), 0, "{forced}");
    assert!(
        std::fs::read_to_string(dir.join("ferry-api.socket"))
            .unwrap()
            .contains("FileDescriptorName=api")
    );

    let analyze = Command::new("systemd-analyze").arg("--version").output();
    if !analyze.is_ok_and(|o| o.status.success()) {
        println!("skipped systemd-analyze verify: systemd-analyze is not installed");
        return;
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg("--man=no")
        .args(&files)
        .env("SYSTEMD_UNIT_PATH", format!("{}:", dir.display()))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && !text.contains("ferry"),
        "systemd-analyze verify:\n{text}"
    );
}

#[test]
fn a_new_serve_that_fails_during_the_takeover_leaves_the_old_one_serving() {
    let mut s = Sandbox::new(&[Rel("v1.0.0", GOOD)]);
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    let pid = app_pid(&s, "staging");
    let old = s.locked_serve_pid().unwrap();
    // the new serve's config has an environment whose port is taken: it fails once it has
    // the sockets and the lock
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = squatter.local_addr().unwrap().port();
    let text = std::fs::read_to_string(&s.config).unwrap();
    let moved = s.dir.path().join("next.toml");
    std::fs::write(
        &moved,
        format!("{text}\n[environments.extra]\nlisten = \"127.0.0.1:{port}\"\n"),
    )
    .unwrap();
    // same state dir: the default is beside the config file
    let hammer = Hammer::start(&s.url("staging"), 4);
    hammer.wait_for(100);
    let run = Command::new(FERRY)
        .args(["serve", "--takeover", "-c"])
        .arg(&moved)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
    hammer.wait_for(100);
    let t = hammer.finish();
    assert_none_failed("a failed takeover", &t, &s.serve_log());
    // the old serve goes on: it holds the state dir again, deploys, and logs its app
    assert_eq!(s.locked_serve_pid(), Some(old));
    assert!(
        s.serve_log().contains("this serve goes on"),
        "{}",
        s.serve_log()
    );
    let second = s.ferry(&["serve"]);
    assert!(
        second.stderr().contains("another ferry serve is running"),
        "{second}"
    );
    get(&format!(
        "{}/log?line=after-a-failed-takeover",
        s.url("staging")
    ));
    let log = s.state_dir().join("environments/staging/logs/app.log");
    assert!(eventually(Duration::from_secs(5), || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("after-a-failed-takeover"))
    }));
    assert_eq!(app_pid(&s, "staging"), pid);
    s.deploy_ok("staging", "v1.0.0");
}

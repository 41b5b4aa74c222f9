//! Notifications through the outbox, end to end: a real `ferry serve`, real deploys, and
//! HTTP receivers on loopback that answer as each test scripts (an error, a hang, nothing).

mod support;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{GOOD, Options, Rel, Sandbox, eventually};

/// A loopback HTTP receiver. Answers each request with the next scripted status (200 once
/// the script runs out); while `hold` is set it keeps a request open without answering.
#[derive(Clone)]
struct Receiver {
    url: String,
    bodies: Arc<Mutex<Vec<Value>>>,
    script: Arc<Mutex<VecDeque<u16>>>,
    hold: Arc<AtomicBool>,
    /// Requests answered.
    answered: Arc<AtomicUsize>,
}

impl Receiver {
    fn new(script: &[u16]) -> Receiver {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let r = Receiver {
            url: format!("http://{}/hook", l.local_addr().unwrap()),
            bodies: Arc::default(),
            script: Arc::new(Mutex::new(script.iter().copied().collect())),
            hold: Arc::default(),
            answered: Arc::default(),
        };
        let me = r.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(conn) = conn else { return };
                let me = me.clone();
                std::thread::spawn(move || me.answer(conn));
            }
        });
        r
    }

    fn answer(&self, mut conn: std::net::TcpStream) {
        let mut reader = BufReader::new(conn.try_clone().unwrap());
        let mut length = 0;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        self.bodies
            .lock()
            .unwrap()
            .push(serde_json::from_slice(&body).unwrap_or(Value::Null));
        while self.hold.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let status = self.script.lock().unwrap().pop_front().unwrap_or(200);
        self.answered.fetch_add(1, Ordering::SeqCst);
        let _ = write!(
            conn,
            "HTTP/1.1 {status} Scripted\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
        );
    }

    fn bodies(&self) -> Vec<Value> {
        self.bodies.lock().unwrap().clone()
    }

    fn events(&self) -> Vec<String> {
        self.bodies()
            .iter()
            .map(|b| b["event"].as_str().unwrap_or("?").to_string())
            .collect()
    }
}

/// An address nothing listens on.
fn nowhere() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}/hook", l.local_addr().unwrap())
}

fn sandbox(tables: String) -> Sandbox {
    Sandbox::with(
        &[Rel("v1.0.0", GOOD), Rel("v1.1.0", GOOD)],
        Options {
            tables: Box::leak(tables.into_boxed_str()),
            server: "open_reads = true",
            ..Options::default()
        },
    )
}

/// The deliveries `GET /api/notifications` lists, oldest first.
fn deliveries(s: &Sandbox) -> Vec<Value> {
    let mut all = s
        .api("/api/notifications?limit=100")
        .as_array()
        .unwrap()
        .clone();
    all.reverse();
    all
}

fn of<'a>(all: &'a [Value], notifier: &str) -> Vec<&'a Value> {
    all.iter().filter(|n| n["notifier"] == notifier).collect()
}

#[test]
fn events_are_delivered_in_order_and_shown_without_the_secret_url() {
    let hook = Receiver::new(&[]);
    let chat = Receiver::new(&[]);
    // the chat's URL is a secret: named by url_env, read from serve's environment
    let secret_url = chat.url.replace("/hook", "/services/T0SECRETPATH");
    let mut s = sandbox(format!(
        "[[notify]]\nurl = \"{}\"\n\n\
         [[notify]]\nname = \"team-chat\"\nkind = \"slack\"\nurl_env = \"FERRY_TEST_CHAT_URL\"\n\
         events = [\"deploy.succeeded\", \"rollback\"]\n",
        hook.url
    ));
    s.serve_env
        .push(("FERRY_TEST_CHAT_URL".into(), secret_url.clone()));
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    s.deploy_ok("staging", "v1.1.0");
    assert!(eventually(Duration::from_secs(20), || hook.bodies().len()
        == 4
        && chat.bodies().len() == 2));
    assert_eq!(
        hook.events(),
        [
            "deploy.started",
            "deploy.succeeded",
            "deploy.started",
            "deploy.succeeded"
        ],
        "in the order they happened"
    );
    let versions: Vec<String> = hook
        .bodies()
        .iter()
        .map(|b| b["version"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(versions, ["v1.0.0", "v1.0.0", "v1.1.0", "v1.1.0"]);
    let live = &hook.bodies()[1];
    assert!(
        live["link"].as_str().unwrap().ends_with("/deployments/1"),
        "{live}"
    );
    // slack gets its own body
    let said = chat.bodies()[1]["text"].as_str().unwrap().to_string();
    assert!(
        said.contains("v1.1.0 (") && said.contains("is live on staging"),
        "{said}"
    );

    // recorded: the API, `ferry show`, `ferry notify list`, the dashboard
    assert!(eventually(Duration::from_secs(10), || deliveries(&s)
        .iter()
        .all(|n| n["state"] == "sent")));
    let all = deliveries(&s);
    assert_eq!(of(&all, "webhook").len(), 4);
    assert_eq!(of(&all, "team-chat").len(), 2);
    let detail = s.api("/api/deployments/2");
    let about: Vec<(String, String)> = detail["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["notifier"].as_str().unwrap().to_string(),
                n["event"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(about.len(), 3, "{detail}");
    assert!(about.contains(&("team-chat".into(), "deploy.succeeded".into())));
    let show = s.ferry(&["show", "2"]);
    assert_eq!(show.code(), 0, "{show}");
    assert!(
        show.stdout()
            .contains("[sent] team-chat (slack) deploy.succeeded, 1 attempt: answered 200"),
        "{show}"
    );
    let list = s.ferry(&["notify", "list"]);
    assert_eq!(list.code(), 0, "{list}");
    assert!(list.stdout().contains("team-chat (slack)"), "{list}");
    let page = s.get("/deployments/2").unwrap();
    assert_eq!(page.0, 200, "{}", page.1);
    assert!(
        page.1.contains("Notifications") && page.1.contains("team-chat"),
        "{}",
        page.1
    );

    // the secret part of the URL is nowhere: not in the log, the API, the config check, the
    // database
    let api = format!(
        "{} {} {}",
        s.api("/api/notifications"),
        detail,
        s.ferry(&["check"]).stdout()
    );
    assert!(!api.contains("T0SECRETPATH"), "{api}");
    assert!(!s.serve_log().contains("T0SECRETPATH"), "{}", s.serve_log());
    for f in ["ferry.db", "ferry.db-wal"] {
        let bytes = std::fs::read(s.state_dir().join(f)).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains("T0SECRETPATH"), "{f} holds the secret");
    }
}

#[test]
fn errors_are_retried_with_backoff_and_refusals_recorded_at_once() {
    // two 5xx then taken; a 404 is not retried
    let flaky = Receiver::new(&[500, 503]);
    let gone = Receiver::new(&[404]);
    let mut s = sandbox(format!(
        "[[notify]]\nname = \"flaky\"\nurl = \"{}\"\nevents = [\"deploy.succeeded\"]\n\n\
         [[notify]]\nname = \"gone\"\nurl = \"{}\"\nevents = [\"deploy.succeeded\"]\n",
        flaky.url, gone.url
    ));
    // a machine without CA certificates (a slim container) still deploys and sends over http
    for var in ["SSL_CERT_FILE", "SSL_CERT_DIR"] {
        s.serve_env
            .push((var.into(), "/nonexistent/ferry-test-ca".into()));
    }
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    assert!(eventually(Duration::from_secs(20), || {
        let all = deliveries(&s);
        all.len() == 2 && all.iter().all(|n| n["state"] != "pending")
    }));
    let all = deliveries(&s);
    let flaky_row = of(&all, "flaky")[0];
    assert_eq!(
        (&flaky_row["state"], &flaky_row["attempts"]),
        (&Value::from("sent"), &Value::from(3)),
        "{flaky_row}"
    );
    assert_eq!(flaky.bodies().len(), 3, "the same message, three times");
    assert!(flaky.bodies().windows(2).all(|w| w[0] == w[1]));
    let gone_row = of(&all, "gone")[0];
    assert_eq!(
        (&gone_row["state"], &gone_row["attempts"]),
        (&Value::from("failed"), &Value::from(1)),
        "{gone_row}"
    );
    assert_eq!(gone.bodies().len(), 1, "a 404 is not retried");
    let show = s.ferry(&["show", "1"]);
    assert!(
        show.stdout()
            .contains("[failed] gone (webhook) deploy.succeeded, 1 attempt: answered 404"),
        "{show}"
    );
    assert!(
        s.serve_log()
            .contains("no trust store for https notifications"),
        "{}",
        s.serve_log()
    );
    // the metric counts them
    let (_, metrics) = s.get("/metrics").unwrap();
    assert!(
        metrics.contains("ferry_notifications_total{outcome=\"failed\"} 1")
            && metrics.contains("ferry_notifications_total{outcome=\"sent\"} 1"),
        "{metrics}"
    );
}

#[test]
fn a_receiver_that_hangs_or_is_down_never_delays_a_deploy() {
    let hanging = Receiver::new(&[]);
    hanging.hold.store(true, Ordering::SeqCst);
    let down = nowhere();
    let mut s = sandbox(format!(
        "[[notify]]\nname = \"hanging\"\nurl = \"{}\"\n\n\
         [[notify]]\nname = \"down\"\nurl = \"{down}\"\nevents = [\"deploy.started\"]\n",
        hanging.url
    ));
    s.serve();
    let started = Instant::now();
    let run = s.ferry(&["deploy", "staging", "v1.0.0"]);
    let took = started.elapsed();
    // the deploy is over, and the hanging receiver has not answered anything yet
    assert_eq!(run.code(), 0, "{run}\n{}", s.serve_log());
    assert_eq!(
        hanging.answered.load(Ordering::SeqCst),
        0,
        "the deploy finished while the receiver holds its request"
    );
    assert!(eventually(Duration::from_secs(10), || !hanging
        .bodies()
        .is_empty()));
    assert_eq!(hanging.events()[0], "deploy.started");
    let d = s.api("/api/deployments/1");
    assert_eq!(d["deployment"]["state"], "succeeded");

    // the down one is given up after 5 attempts (1 + 2 + 4 + 8 s apart), and says why
    assert!(eventually(Duration::from_secs(40), || {
        of(&deliveries(&s), "down")
            .first()
            .is_some_and(|n| n["state"] == "failed")
    }));
    let all = deliveries(&s);
    let row = of(&all, "down")[0];
    assert_eq!(row["attempts"], 5, "{row}");
    assert!(
        row["error"].as_str().unwrap().contains("connect")
            || row["error"].as_str().unwrap().contains("refused"),
        "{row}"
    );
    assert!(
        !row.to_string().contains("127.0.0.1"),
        "errors name no URL: {row}"
    );
    let show = s.ferry(&["show", "1"]);
    assert!(
        show.stdout()
            .contains("[failed] down (webhook) deploy.started, 5 attempts"),
        "{show}"
    );

    // a deploy with nothing to notify, for the figures
    let hanging_took = took;
    hanging.hold.store(false, Ordering::SeqCst);
    let started = Instant::now();
    s.deploy_ok("staging", "v1.1.0");
    eprintln!(
        "deploy with a hanging and a down receiver: {:.1}s; after the receiver answers again: {:.1}s",
        hanging_took.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn pending_notifications_are_resumed_after_a_serve_restart() {
    let hook = Receiver::new(&[]);
    hook.hold.store(true, Ordering::SeqCst);
    let mut s = sandbox(format!(
        "[[notify]]\nurl = \"{}\"\nevents = [\"deploy.succeeded\"]\n",
        hook.url
    ));
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    assert!(eventually(Duration::from_secs(10), || hook.bodies().len() == 1));
    let row = &deliveries(&s)[0];
    assert_eq!(row["state"], "pending", "{row}");
    // serve stops while the receiver holds the request: the row stays pending
    s.stop(nix::sys::signal::Signal::SIGTERM);
    hook.hold.store(false, Ordering::SeqCst);
    s.serve();
    assert!(eventually(
        Duration::from_secs(20),
        || deliveries(&s)[0]["state"] == "sent"
    ));
    let row = &deliveries(&s)[0];
    assert_eq!(row["event"], "deploy.succeeded");
    assert_eq!(deliveries(&s).len(), 1, "resumed, not queued again");
    let bodies = hook.bodies();
    assert!(bodies.len() >= 2, "sent again after the restart");
    assert!(
        bodies.iter().all(|b| b == &bodies[0]),
        "the same message as when it happened"
    );
}

#[test]
fn maintenance_on_and_off_are_sent() {
    let hook = Receiver::new(&[]);
    let mut s = sandbox(format!(
        "[[notify]]\nurl = \"{}\"\nevents = [\"maintenance.on\", \"maintenance.off\"]\n",
        hook.url
    ));
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    // said twice, each is announced once: only a change is news
    for _ in 0..2 {
        let on = s.ferry(&[
            "maintenance",
            "staging",
            "on",
            "--message",
            "database upgrade",
        ]);
        assert_eq!(on.code(), 0, "{on}");
    }
    for _ in 0..2 {
        let off = s.ferry(&["maintenance", "staging", "off"]);
        assert_eq!(off.code(), 0, "{off}");
    }
    assert!(eventually(Duration::from_secs(10), || hook.bodies().len() == 2));
    let b = hook.bodies();
    assert_eq!(hook.events(), ["maintenance.on", "maintenance.off"]);
    assert_eq!(b[0]["environment"], "staging");
    assert_eq!(b[0]["detail"], "database upgrade");
    assert_eq!(b[0]["who"], "tester (token local)");
    assert!(
        b[0]["text"].as_str().unwrap().contains("in maintenance"),
        "{}",
        b[0]
    );
    assert!(
        b[0]["link"]
            .as_str()
            .unwrap()
            .ends_with("/environments/staging")
    );
    let all = deliveries(&s);
    assert!(all.iter().all(|n| n["deployment"].is_null()), "{all:?}");
    assert_eq!(all.len(), 2, "{all:?}");
}

#[test]
fn a_deploy_cut_off_by_a_crash_is_announced_as_failed_by_the_next_serve() {
    let hook = Receiver::new(&[]);
    let mut s = sandbox(format!(
        "[[notify]]\nurl = \"{}\"\nevents = [\"deploy.failed\"]\n",
        hook.url
    ));
    s.serve_env = vec![("FERRY_FAULT_PAUSE_AT".into(), "build".into())];
    s.serve();
    let (status, d) = s.post(
        "/api/deployments",
        &serde_json::json!({"environment": "staging", "ref": "v1.0.0"}),
    );
    assert_eq!(status, 201, "{d}");
    let id = d["id"].as_i64().unwrap();
    assert!(eventually(Duration::from_secs(30), || {
        let d = s.api(&format!("/api/deployments/{id}"))["deployment"].clone();
        d["step"] == "build" && d["state"] == "running"
    }));
    s.stop(nix::sys::signal::Signal::SIGKILL);
    s.serve_env.clear();
    s.serve();
    // recovery marks it failed before the notifications run; they hear it all the same
    assert!(
        eventually(Duration::from_secs(20), || hook.bodies().len() == 1),
        "{}",
        s.serve_log()
    );
    let b = &hook.bodies()[0];
    assert_eq!(
        (b["event"].as_str(), b["deployment"].as_i64()),
        (Some("deploy.failed"), Some(id))
    );
    assert!(eventually(Duration::from_secs(10), || deliveries(&s)
        .first()
        .is_some_and(|n| n["state"] == "sent")));
}

#[test]
fn notify_test_sends_one_message_now_and_says_how_it_went() {
    let ok = Receiver::new(&[]);
    let refusing = Receiver::new(&[403]);
    let mut s = sandbox(format!(
        "[[notify]]\nname = \"ops\"\nurl = \"{}\"\n\n\
         [[notify]]\nname = \"refusing\"\nkind = \"discord\"\nurl = \"{}\"\n",
        ok.url, refusing.url
    ));
    s.serve();
    let run = s.ferry(&["notify", "test", "ops"]);
    assert_eq!(run.code(), 0, "{run}");
    assert!(
        run.stdout().contains(
            "ops (webhook, http://127.0.0.1/…) took the test message: answered 200 OK: ok"
        ),
        "{run}"
    );
    assert_eq!(ok.events(), ["test"]);
    assert!(
        ok.bodies()[0]["text"]
            .as_str()
            .unwrap()
            .contains("test message")
    );

    let run = s.ferry(&["notify", "test", "refusing"]);
    assert_eq!(run.code(), 1, "{run}");
    assert!(
        run.stderr()
            .contains("did not take the test message: answered 403"),
        "{run}"
    );
    assert_eq!(refusing.bodies().len(), 1, "one attempt, no retry");

    let run = s.ferry(&["notify", "test", "nobody"]);
    assert_eq!(run.code(), 2, "bad usage: {run}");
    assert!(
        run.stderr()
            .contains("no notifier \"nobody\"; there are: ops, refusing"),
        "{run}"
    );

    // both recorded with the event `test`
    let list = s.ferry(&["notify", "list", "--json"]).json();
    let rows = list.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{list}");
    assert!(rows.iter().all(|r| r["event"] == "test"));
    assert_eq!(rows[0]["state"], "failed");
    assert_eq!(rows[1]["state"], "sent");
}

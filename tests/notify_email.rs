//! `kind = "email"` through a real `ferry serve` and real deploys, to the fake SMTP relay in
//! tests/support/smtp.rs: STARTTLS and implicit TLS with a test CA given as `ca_file`, a
//! login from the environment, both parts of the message, a busy relay tried again, a refused
//! login recorded as a failure, and the password nowhere ferry writes.

#[path = "support/smtp.rs"]
mod smtp;
mod support;

use std::time::Duration;

use mail_parser::{MessageParser, MimeHeaders};
use smtp::{Mode, Smtp};
use support::*;

/// A release whose release command prints its hostile `app.conf` and fails.
const HOSTILE: &str = "hostile = <script>alert('owned')</script> <img src=x onerror=alert(1)> & ``` not a fence </pre>\n";

/// The release command: fails, printing app.conf, for a release marked hostile.
const RELEASE: &str =
    "release = '''if grep -q '^hostile' app.conf; then cat app.conf; exit 1; fi'''";

/// A sandbox whose one notifier emails through `relay` (`tls`: starttls or tls).
fn sandbox(relay: &Smtp, tls: &str, events: Option<&str>) -> Sandbox {
    let port = match tls {
        "tls" => relay.tls_port,
        _ => relay.starttls_port,
    };
    let events = events
        .map(|e| format!("events = {e}\n"))
        .unwrap_or_default();
    let table = format!(
        r#"[[notify]]
name = "ops-mail"
kind = "email"
smtp_host = "127.0.0.1"
smtp_port = {port}
tls = "{tls}"
from = "ferry <ferry@example.test>"
to = ["ops@example.test", "Dev Team <dev@example.test>"]
username_env = "FERRY_SMTP_USER"
password_env = "FERRY_SMTP_PASSWORD"
ca_file = "{ca}"
{events}"#,
        ca = relay.ca_file.display()
    );
    let mut s = Sandbox::with(
        &[Rel("v1.0.0", GOOD), Rel("v1.1.0", HOSTILE)],
        Options {
            extra_app: RELEASE,
            tables: Box::leak(table.into_boxed_str()),
            ..Options::default()
        },
    );
    s.serve_env
        .push(("FERRY_SMTP_USER".into(), smtp::USER.into()));
    s.serve_env
        .push(("FERRY_SMTP_PASSWORD".into(), smtp::PASSWORD.into()));
    s
}

fn deploy_fails(s: &Sandbox, git_ref: &str) {
    let run = s.ferry(&["deploy", "staging", git_ref]);
    assert_eq!(run.code(), 1, "{run}\n{}", s.serve_log());
}

/// The one message `relay` got, waiting for it.
fn the_one(relay: &Smtp, s: &Sandbox) -> smtp::Received {
    let got = relay.wait_for(1, Duration::from_secs(30));
    assert_eq!(
        got.len(),
        1,
        "{got:?}\nrefusals: {:?}\n{}",
        relay.refusals(),
        s.serve_log()
    );
    got[0].clone()
}

/// A delivery as the outbox recorded it: (event, state, attempts, error, answer, notifier).
type Row = (String, String, i64, Option<String>, Option<String>, String);

/// The outbox rows of `deployment` once none is pending (read from the store's file).
fn recorded(s: &Sandbox, deployment: i64) -> Vec<Row> {
    let read = || -> Vec<Row> {
        let Ok(db) = rusqlite::Connection::open(s.state_dir().join("ferry.db")) else {
            return Vec::new();
        };
        let Ok(mut q) = db.prepare(
            "SELECT event, state, attempts, error, answer, notifier FROM notifications \
             WHERE deployment = ?1 ORDER BY id",
        ) else {
            return Vec::new();
        };
        q.query_map([deployment], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })
        .map(|rows| rows.flatten().collect())
        .unwrap_or_default()
    };
    let mut rows = Vec::new();
    let settled = eventually(Duration::from_secs(40), || {
        rows = read();
        !rows.is_empty() && rows.iter().all(|r| r.1 != "pending")
    });
    assert!(settled, "{rows:?}\n{}", s.serve_log());
    rows
}

/// The password is in none of what ferry writes or answers.
fn password_nowhere(s: &Sandbox, ids: &[u32]) {
    assert!(!s.serve_log().contains(smtp::PASSWORD));
    let mut answers = s
        .get("/api/notifications")
        .map(|(_, b)| b)
        .unwrap_or_default();
    for id in ids {
        answers.push_str(&s.get(&format!("/api/deployments/{id}")).unwrap().1);
        answers.push_str(&s.ferry(&["show", &id.to_string()]).stdout());
    }
    assert!(!answers.contains(smtp::PASSWORD), "{answers}");
    let mut checked = 0;
    for entry in walk(&s.state_dir()) {
        if let Ok(bytes) = std::fs::read(&entry) {
            checked += 1;
            assert!(
                !bytes
                    .windows(smtp::PASSWORD.len())
                    .any(|w| w == smtp::PASSWORD.as_bytes()),
                "the password is in {}",
                entry.display()
            );
        }
    }
    assert!(checked > 0, "the state dir has files");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        let Ok(kind) = e.file_type() else { continue };
        if kind.is_dir() {
            // the releases hold the app's own files, not ferry's
            if !p.ends_with("releases") {
                out.extend(walk(&p));
            }
        } else if kind.is_file() {
            // sockets and fifos would block a read
            out.push(p);
        }
    }
    out
}

#[test]
fn a_failed_deploy_emails_its_report_in_both_parts_over_starttls() {
    let relay = Smtp::start(Mode::default());
    let mut s = sandbox(&relay, "starttls", None);
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    deploy_fails(&s, "v1.1.0");

    let m = the_one(&relay, &s);
    // by default email is only for failures: the first deploy sent nothing
    assert!(m.tls, "STARTTLS was used");
    assert_eq!(m.user.as_deref(), Some(smtp::USER));
    assert_eq!(m.mechanism.as_deref(), Some("PLAIN"));
    assert_eq!(m.from, "ferry@example.test");
    assert_eq!(m.to, ["ops@example.test", "dev@example.test"]);

    let mail = MessageParser::default().parse(m.data.as_bytes()).unwrap();
    assert_eq!(
        mail.subject(),
        Some("Deploy of sample v1.1.0 to staging failed at release")
    );
    let types: Vec<String> = mail
        .parts
        .iter()
        .filter_map(|p| p.content_type())
        .map(|c| format!("{}/{}", c.ctype(), c.subtype().unwrap_or("")))
        .collect();
    assert_eq!(types, ["multipart/alternative", "text/plain", "text/html"]);

    let plain = mail.body_text(0).unwrap();
    assert!(plain.contains("| release | failed |"), "{plain}");
    assert!(plain.contains("<script>alert('owned')</script>"), "{plain}");
    assert!(plain.contains("ferry show 2"), "{plain}");

    let html = mail.body_html(0).unwrap();
    assert!(
        html.contains("<tr><td>release</td><td>failed</td>"),
        "{html}"
    );
    assert!(
        html.contains(
            "&lt;script&gt;alert('owned')&lt;/script&gt; &lt;img src=x onerror=alert(1)&gt; &amp;"
        ),
        "{html}"
    );
    assert!(
        !html.contains("<script") && !html.contains("<img"),
        "{html}"
    );
    assert!(html.contains(&format!("<a href=\"{}/", s.api)), "{html}");
    assert!(
        plain.contains(&format!("In the dashboard: {}/", s.api)),
        "{plain}"
    );

    let rows = recorded(&s, 2);
    assert_eq!(rows.len(), 1, "{rows:?}");
    let (event, state, attempts, _, answer, _) = &rows[0];
    assert_eq!(
        (event.as_str(), state.as_str(), *attempts),
        ("deploy.failed", "sent", 1)
    );
    assert!(
        answer.as_deref().unwrap_or("").starts_with("250 "),
        "{answer:?}"
    );
    password_nowhere(&s, &[1, 2]);
}

#[test]
fn over_implicit_tls_a_success_sends_a_summary_when_asked() {
    // this relay takes AUTH LOGIN only
    let relay = Smtp::start(Mode {
        login_only: true,
        ..Mode::default()
    });
    let mut s = sandbox(&relay, "tls", Some(r#"["deploy.succeeded"]"#));
    s.serve();
    s.deploy_ok("staging", "v1.0.0");

    let m = the_one(&relay, &s);
    assert!(m.tls);
    assert_eq!(m.mechanism.as_deref(), Some("LOGIN"));
    let mail = MessageParser::default().parse(m.data.as_bytes()).unwrap();
    let subject = mail.subject().unwrap();
    assert!(
        subject.contains("sample v1.0.0") && subject.contains("is live on staging"),
        "{subject}"
    );
    let plain = mail.body_text(0).unwrap();
    for part in [
        "- **Environment:** staging",
        "- **Triggered by:** tester",
        "| health | ok |",
    ] {
        assert!(plain.contains(part), "{part} in {plain}");
    }
    let html = mail.body_html(0).unwrap();
    assert!(html.contains("<strong>Version:</strong> v1.0.0"), "{html}");

    // a failure is not asked for here
    deploy_fails(&s, "v1.1.0");

    // `ferry notify test` sends a sample now and prints the relay's answer
    let run = s.ferry(&["notify", "test", "ops-mail"]);
    assert_eq!(run.code(), 0, "{run}");
    assert!(run.stdout().contains("250 2.0.0 Ok: queued"), "{run}");
    let got = relay.wait_for(2, Duration::from_secs(10));
    assert_eq!(got.len(), 2, "{got:?}");
    // the failure was not asked for: the outbox (written before sending) has nothing for it
    let db = rusqlite::Connection::open(s.state_dir().join("ferry.db")).unwrap();
    let rows: i64 = db
        .query_row(
            "SELECT count(*) FROM notifications WHERE deployment = 2",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(rows, 0);
    let test = MessageParser::default()
        .parse(got[1].data.as_bytes())
        .unwrap();
    let subject = test.subject().unwrap();
    assert!(
        subject.starts_with("🧪 a test message from ferry for sample"),
        "{subject}"
    );
}

#[test]
fn a_relay_without_starttls_an_unknown_certificate_or_a_missing_password_is_never_used() {
    let plain = Smtp::start(Mode {
        no_starttls: true,
        ..Mode::default()
    });
    let unknown = Smtp::start(Mode::default());
    let unset = Smtp::start(Mode::default());
    let table = |name: &str, relay: &Smtp, ca: bool| {
        let password = match name {
            "no-password" => "FERRY_TEST_SMTP_PASSWORD_UNSET",
            _ => "FERRY_SMTP_PASSWORD",
        };
        format!(
            "[[notify]]\nname = \"{name}\"\nkind = \"email\"\nsmtp_host = \"127.0.0.1\"\n\
             smtp_port = {}\nfrom = \"ferry@example.test\"\nto = [\"ops@example.test\"]\n\
             username_env = \"FERRY_SMTP_USER\"\npassword_env = \"{password}\"\n{}\n",
            relay.starttls_port,
            if ca {
                format!("ca_file = \"{}\"", relay.ca_file.display())
            } else {
                String::new()
            }
        )
    };
    let tables = format!(
        "{}\n{}\n{}",
        table("plain-relay", &plain, true),
        table("unknown-ca", &unknown, false),
        table("no-password", &unset, true)
    );
    let mut s = Sandbox::with(
        &[Rel("v1.0.0", HOSTILE)],
        Options {
            extra_app: RELEASE,
            tables: Box::leak(tables.into_boxed_str()),
            ..Options::default()
        },
    );
    s.serve_env
        .push(("FERRY_SMTP_USER".into(), smtp::USER.into()));
    s.serve_env
        .push(("FERRY_SMTP_PASSWORD".into(), smtp::PASSWORD.into()));
    s.serve();
    deploy_fails(&s, "v1.0.0");

    let rows = recorded(&s, 1);
    assert_eq!(rows.len(), 3, "{rows:?}");
    for (_, state, attempts, error, _, notifier) in &rows {
        assert_eq!((state.as_str(), *attempts), ("failed", 1), "{rows:?}");
        let error = error.as_deref().unwrap_or_default();
        let why = match notifier.as_str() {
            "plain-relay" => "STARTTLS",
            "unknown-ca" => "certificate is not trusted (give its CA in ca_file)",
            _ => "FERRY_TEST_SMTP_PASSWORD_UNSET is not set in ferry's environment",
        };
        assert!(error.contains(why), "{notifier}: {error}");
    }
    // none got a login, in clear or at all, nor a message; without a password none was called
    assert_eq!(plain.auths(), (0, 0));
    assert_eq!(unknown.auths(), (0, 0));
    assert_eq!(unset.sessions(), 0);
    assert!(plain.received().is_empty() && unknown.received().is_empty());
}

#[test]
fn a_relay_that_hangs_up_or_is_busy_is_tried_again() {
    let relay = Smtp::start(Mode {
        drop_first: 1,
        fail_first: 1,
        ..Mode::default()
    });
    let mut s = sandbox(&relay, "starttls", None);
    s.serve();
    deploy_fails(&s, "v1.1.0");
    let m = the_one(&relay, &s);
    assert!(
        m.data
            .contains("Subject: Deploy of sample v1.1.0 to staging failed at release")
    );
    assert_eq!(relay.refusals(), ["(hung up)", "451 4.3.0 Try again later"]);
    assert_eq!(relay.sessions(), 3, "hung up, refused, then sent");
    let rows = recorded(&s, 1);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!((rows[0].1.as_str(), rows[0].2), ("sent", 3), "{rows:?}");
}

#[test]
fn a_refused_login_is_recorded_as_a_failure_at_once_and_the_password_shows_nowhere() {
    let relay = Smtp::start(Mode {
        refuse_auth: true,
        ..Mode::default()
    });
    let mut s = sandbox(&relay, "starttls", None);
    s.serve();
    deploy_fails(&s, "v1.1.0");
    assert!(
        eventually(Duration::from_secs(20), || !relay.refusals().is_empty()),
        "{}",
        s.serve_log()
    );
    // a 535 is not worth retrying: past the first backoff (1 s) nothing came again
    let rows = recorded(&s, 1);
    assert_eq!(rows.len(), 1, "{rows:?}");
    let (_, state, attempts, error, _, _) = &rows[0];
    assert_eq!((state.as_str(), *attempts), ("failed", 1), "{rows:?}");
    let error = error.as_deref().unwrap_or_default();
    assert!(
        error.contains("refused the login (check FERRY_SMTP_USER and FERRY_SMTP_PASSWORD)")
            && error.contains("535"),
        "{error}"
    );
    assert_eq!(
        relay.refusals(),
        ["535 5.7.8 Authentication credentials invalid"]
    );
    assert_eq!(relay.sessions(), 1);
    assert!(relay.received().is_empty());
    password_nowhere(&s, &[1]);
}

#[test]
fn a_loopback_relay_without_tls_gets_the_login_in_clear_only_when_the_config_says_none() {
    let relay = Smtp::start(Mode {
        no_starttls: true,
        ..Mode::default()
    });
    let table = format!(
        "[[notify]]\nkind = \"email\"\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {}\ntls = \"none\"\n\
         from = \"ferry@example.test\"\nto = [\"ops@example.test\"]\n\
         username_env = \"FERRY_SMTP_USER\"\npassword_env = \"FERRY_SMTP_PASSWORD\"\n",
        relay.starttls_port
    );
    let mut s = Sandbox::with(
        &[Rel("v1.0.0", HOSTILE)],
        Options {
            extra_app: RELEASE,
            tables: Box::leak(table.into_boxed_str()),
            ..Options::default()
        },
    );
    s.serve_env
        .push(("FERRY_SMTP_USER".into(), smtp::USER.into()));
    s.serve_env
        .push(("FERRY_SMTP_PASSWORD".into(), smtp::PASSWORD.into()));
    s.serve();
    deploy_fails(&s, "v1.0.0");
    let m = the_one(&relay, &s);
    assert!(!m.tls);
    assert_eq!(m.user.as_deref(), Some(smtp::USER));
    assert_eq!(relay.auths(), (1, 1));
    let rows = recorded(&s, 1);
    assert_eq!((rows[0].1.as_str(), rows[0].2), ("sent", 1), "{rows:?}");
}

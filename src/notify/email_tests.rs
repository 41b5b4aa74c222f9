use super::*;
use crate::notify::chat::tests::{huge_output, message};

fn cfg() -> Email {
    Email {
        smtp_host: "smtp.example.com".into(),
        smtp_port: 587,
        tls: SmtpTls::StartTls,
        from: "ferry <ferry@example.com>".into(),
        to: vec![
            "ops@example.com".into(),
            "Dev Team <dev@example.com>".into(),
        ],
        username_env: None,
        password_env: None,
        ca_file: None,
    }
}

#[test]
fn a_failure_sends_its_report_and_a_success_a_summary() {
    let failed = message("deploy.failed", Some("boom"));
    let c = content(&failed);
    let report = failed.report().unwrap();
    assert_eq!(c.subject, report.title);
    assert_eq!(c.markdown, report.markdown);

    let ok = message("deploy.succeeded", None);
    let c = content(&ok);
    assert_eq!(c.subject, ok.text());
    for part in [
        "- **Version:** v1.1.0 (`0123456789ab`)",
        "- **Environment:** staging",
        "- **Triggered by:** qa_lead",
        "- **Took:** 42.5s",
        "| health | ok | 2.0s |",
    ] {
        assert!(c.markdown.contains(part), "{part} in\n{}", c.markdown);
    }
}

#[test]
fn raw_html_in_the_markdown_is_shown_as_text() {
    let md = "Reason: <img src=x onerror=alert(1)> & <b>bold</b>\n\n\
              <script>alert('block')</script>\n\n\
              ```\n</pre><script>alert('fence')</script>\n```\n";
    let html = html("A <title>", md, None);
    assert!(
        !html.contains("<script") && !html.contains("<img") && !html.contains("<b>"),
        "{html}"
    );
    assert!(
        html.contains("&lt;img src=x onerror=alert(1)&gt; &amp; &lt;b&gt;bold&lt;/b&gt;"),
        "{html}"
    );
    assert!(
        html.contains("&lt;script&gt;alert('block')&lt;/script&gt;"),
        "{html}"
    );
    assert!(
        html.contains("&lt;/pre&gt;&lt;script&gt;alert('fence')"),
        "{html}"
    );
    assert!(html.contains("<title>A &lt;title&gt;</title>"), "{html}");
}

#[test]
fn tables_render_and_only_the_dashboard_link_is_clickable() {
    let md = "| step | state |\n|---|---|\n| build | ok |\n\n\
              [bad](javascript:alert(1)) [phish](https://e.example/x) <https://auto.example> \
              ![pixel](https://t.example/p.png)\n";
    let html = html(
        "t",
        md,
        Some("https://ferry.example.com/deployments/3?a=1&b=\"2\""),
    );
    assert!(
        html.contains("<table>") && html.contains("<td>build</td>"),
        "{html}"
    );
    assert!(
        html.contains(
            "bad (javascript:alert(1)) phish (https://e.example/x) https://auto.example pixel"
        ),
        "{html}"
    );
    assert!(!html.contains("<img"), "{html}");
    assert_eq!(html.matches("<a ").count(), 1, "{html}");
    assert!(
        html.contains("<a href=\"https://ferry.example.com/deployments/3?a=1&amp;b=%222%22\">Open it in the ferry dashboard</a>"),
        "{html}"
    );
    assert!(!super::html("t", "x", Some("javascript:alert(1)")).contains("javascript"));
}

#[test]
fn the_email_has_both_parts_and_its_headers() {
    let msg = message("deploy.failed", Some(&huge_output()));
    let mail = compose(&cfg(), "ops-mail", &msg).unwrap();
    let raw = mail.formatted();
    let parsed = mail_parser::MessageParser::default().parse(&raw).unwrap();
    assert_eq!(parsed.subject(), Some(msg.report().unwrap().title.as_str()));
    let to: Vec<&str> = parsed
        .to()
        .unwrap()
        .iter()
        .filter_map(|a| a.address())
        .collect();
    assert_eq!(to, ["ops@example.com", "dev@example.com"]);
    let id = parsed.message_id().unwrap();
    assert!(
        id.starts_with("ferry.shop.ops-mail.12.deploy.failed."),
        "{id}"
    );
    assert!(id.ends_with("@example.com"), "{id}");
    let types: Vec<String> = parsed
        .parts
        .iter()
        .filter_map(|p| {
            use mail_parser::MimeHeaders;
            p.content_type()
                .map(|c| format!("{}/{}", c.ctype(), c.subtype().unwrap_or("")))
        })
        .collect();
    assert_eq!(types, ["multipart/alternative", "text/plain", "text/html"]);
    let plain = parsed.body_text(0).unwrap();
    assert!(plain.contains("| release | failed |"), "{plain}");
    assert!(plain.contains("In the dashboard: https://ferry.example.com/deployments/12"));
    let html = parsed.body_html(0).unwrap();
    assert!(html.contains("<td>release</td>"));
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(!html.contains("<script>"));
    assert!(html.contains("THE LAST LINE"));
}

#[test]
fn a_missing_credential_names_its_variable() {
    let mut c = cfg();
    c.username_env = Some("FERRY_TEST_MAIL_USER_NOT_SET".into());
    c.password_env = Some("FERRY_TEST_MAIL_PASSWORD_NOT_SET".into());
    match transport(&c, ClientId::default()) {
        Err(Failure::Fatal(why)) => {
            assert_eq!(
                why,
                "FERRY_TEST_MAIL_USER_NOT_SET is not set in ferry's environment"
            )
        }
        Err(other) => panic!("{other:?}"),
        Ok(_) => panic!("a transport without its credentials"),
    }
}

#[test]
fn a_bad_address_or_ca_file_fails_for_good() {
    let mut c = cfg();
    c.to = vec!["not an address".into()];
    let msg = message("deploy.succeeded", None);
    assert!(
        matches!(compose(&c, "m", &msg), Err(Failure::Fatal(w)) if w.contains("not an address"))
    );
    let mut c = cfg();
    c.ca_file = Some("/nonexistent/ca.pem".into());
    assert!(
        matches!(transport(&c, ClientId::default()), Err(Failure::Fatal(w)) if w.contains("cannot read ca_file /nonexistent/ca.pem"))
    );
}

#[test]
fn a_subject_is_one_short_line() {
    assert_eq!(one_line("a\r\nBcc: x@y"), "a  Bcc: x@y");
    let long = one_line(&"x".repeat(500));
    assert_eq!(long.chars().count(), SUBJECT_MAX);
    assert!(long.ends_with('…'));
}

#[test]
fn a_manual_rollback_sends_a_summary_not_a_report() {
    let mut m = message("rolled_back", None);
    let d = m.deployment.as_mut().unwrap();
    d.kind = "rollback".into();
    d.state = crate::store::DeploymentState::Succeeded;
    assert!(m.report().is_none());
    let c = content(&m);
    assert!(
        c.subject.contains("staging rolled back to v1.1.0"),
        "{}",
        c.subject
    );
    assert!(
        c.markdown.contains("- **Deployment:** 12 (succeeded)"),
        "{}",
        c.markdown
    );
}

#[test]
fn ferry_says_hello_with_its_public_name_or_its_machines() {
    let name = |l: Option<&str>, sys: Option<&str>| hello_from(l, sys).to_string();
    let public = Some("https://ferry.example.com/deployments/3");
    assert_eq!(
        name(public, Some("web1.internal.example")),
        "ferry.example.com"
    );
    assert_eq!(
        name(
            Some("http://127.0.0.1:8080/"),
            Some("web1.internal.example")
        ),
        "web1.internal.example"
    );
    assert_eq!(
        name(Some("http://localhost:8080/"), Some("web1")),
        "[127.0.0.1]"
    );
    assert_eq!(name(None, None), "[127.0.0.1]");
    assert_eq!(name(None, Some("bad name.example")), "[127.0.0.1]");
}

#[test]
fn a_reason_with_line_breaks_cannot_add_a_header() {
    let mut m = message("deploy.refused", None);
    m.deployment.as_mut().unwrap().reason =
        Some("frozen\r\nBcc: evil@example.net\r\n\r\nbody".into());
    let raw = compose(&cfg(), "m", &m).unwrap().formatted();
    let parsed = mail_parser::MessageParser::default().parse(&raw).unwrap();
    assert!(parsed.bcc().is_none());
    let headers: Vec<&str> = parsed.headers_raw().map(|(name, _)| name).collect();
    assert_eq!(
        headers
            .iter()
            .filter(|h| h.eq_ignore_ascii_case("subject"))
            .count(),
        1
    );
    assert!(
        parsed
            .subject()
            .unwrap()
            .contains("frozen  Bcc: evil@example.net"),
        "{:?}",
        parsed.subject()
    );
}

/// A relay that takes the connection and never says a word: an attempt ends, to be retried.
#[tokio::test(start_paused = true)]
async fn a_relay_that_says_nothing_is_given_up_on_after_the_attempt_limit() {
    let tarpit = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = tarpit.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let held: Vec<_> = tarpit.incoming().take(1).collect();
        std::thread::sleep(std::time::Duration::from_secs(300));
        drop(held);
    });
    let mut c = cfg();
    c.smtp_host = "127.0.0.1".into();
    c.smtp_port = port;
    c.tls = SmtpTls::None;
    let started = tokio::time::Instant::now();
    match send("m", &c, &message("deploy.succeeded", None)).await {
        Err(Failure::Retry(why)) => {
            assert_eq!(
                why,
                format!("the relay 127.0.0.1:{port} took longer than 30s")
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() >= ATTEMPT_LIMIT);
}

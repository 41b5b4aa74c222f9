//! `[[notify]]` and `[server] public_url`.

use std::process::Command;

use super::*;
use crate::config::{Config, ConfigError};

fn load(tables: &str) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new("git")
        .args(["init", "-q"])
        .arg(dir.path().join("repo"))
        .status()
        .unwrap();
    assert!(status.success());
    let text = format!(
        "[app]\nname = \"demo\"\nrepo = \"repo\"\nstart = \"./run\"\n\n\
         [environments.staging]\nlisten = \"127.0.0.1:8081\"\n\n{tables}"
    );
    let path = dir.path().join("ferry.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(&path)
}

fn refused(tables: &str) -> Diagnostic {
    match load(tables) {
        Err(ConfigError::Invalid(d)) => *d,
        Err(other) => panic!("expected a diagnostic, got {other}"),
        Ok(_) => panic!("config was accepted:\n{tables}"),
    }
}

#[test]
fn every_kind_is_read_with_its_defaults() {
    let config = load(
        "[server]\npublic_url = \"https://ferry.example.com/\"\n\n\
         [[notify]]\nurl = \"https://hooks.example.com/ferry\"\nevents = [\"deploy.failed\", \"rollback\", \"approval.needed\"]\n\n\
         [[notify]]\nname = \"team-chat\"\nkind = \"slack\"\nurl_env = \"FERRY_SLACK_URL\"\n\n\
         [[notify]]\nkind = \"github-issue\"\nrepository = \"acme/shop\"\ntoken_env = \"FERRY_GITHUB_TOKEN\"\nlabels = [\"deploy-failure\"]\n\n\
         [[notify]]\nkind = \"gitlab-issue\"\nproject = \"1234\"\ntoken_env = \"FERRY_GITLAB_TOKEN\"\napi = \"http://127.0.0.1:9/api/v4/\"\nclose_on_success = false\n\n\
         [[notify]]\nkind = \"email\"\nsmtp_host = \"smtp.example.com\"\nfrom = \"ferry <ferry@example.com>\"\nto = [\"ops@example.com\"]\nusername_env = \"U\"\npassword_env = \"P\"\n",
    )
    .unwrap();
    assert_eq!(
        config.server.public_url.as_deref(),
        Some("https://ferry.example.com")
    );
    let names: Vec<&str> = config.notify.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "webhook",
            "team-chat",
            "github-issue",
            "gitlab-issue",
            "email"
        ]
    );
    let [webhook, chat, github, gitlab, email] = &config.notify[..] else {
        panic!("five notifiers");
    };
    // old names are read as the new ones
    assert_eq!(
        webhook.events,
        ["deploy.failed", "rolled_back", "approval.waiting"]
    );
    assert!(
        matches!(&webhook.kind, NotifyKind::Webhook(Target::Url(u)) if u == "https://hooks.example.com/ferry")
    );
    assert_eq!(chat.events.len(), NOTIFY_EVENTS.len(), "every event");
    assert!(matches!(&chat.kind, NotifyKind::Slack(Target::Env(v)) if v == "FERRY_SLACK_URL"));
    assert_eq!(github.events, TRACKER_EVENTS);
    let NotifyKind::GithubIssue(t) = &github.kind else {
        panic!("github")
    };
    assert_eq!(
        (t.api.as_str(), t.repository.as_str(), t.close_on_success),
        (GITHUB_API, "acme/shop", true)
    );
    assert_eq!(t.labels, ["deploy-failure"]);
    let NotifyKind::GitlabIssue(t) = &gitlab.kind else {
        panic!("gitlab")
    };
    assert_eq!(
        (t.api.as_str(), t.repository.as_str(), t.close_on_success),
        ("http://127.0.0.1:9/api/v4", "1234", false)
    );
    assert_eq!(email.events, ["deploy.failed", "rolled_back"]);
    let NotifyKind::Email(e) = &email.kind else {
        panic!("email")
    };
    assert_eq!((e.smtp_port, e.tls), (587, SmtpTls::StartTls));
    assert_eq!(e.username_env.as_deref(), Some("U"));
}

#[test]
fn the_old_format_key_is_still_read() {
    let config = load(
        "[[notify]]\nurl = \"https://hooks.slack.com/services/x\"\non = [\"deploy.failed\"]\nformat = \"slack\"\n\n\
         [[notify]]\nurl = \"http://127.0.0.1:9000/hook\"\nformat = \"json\"\n",
    )
    .unwrap();
    assert!(matches!(config.notify[0].kind, NotifyKind::Slack(_)));
    assert!(matches!(config.notify[1].kind, NotifyKind::Webhook(_)));
    assert_eq!(config.notify[0].name, "slack");
}

#[test]
fn what_makes_no_sense_is_refused_with_where_and_what_to_do() {
    let hook = "url = \"https://h.example.com/x\"\n";
    let tracker = "kind = \"github-issue\"\nrepository = \"acme/shop\"\ntoken_env = \"T\"\n";
    let mail = "kind = \"email\"\nsmtp_host = \"mail.example.com\"\nfrom = \"f@example.com\"\nto = [\"o@example.com\"]\n";
    for (bad, says) in [
        (format!("kind = \"pager\"\n{hook}"), "unknown notify kind \"pager\""),
        (format!("kind = \"slack\"\nformat = \"slack\"\n{hook}"), "both kind and format"),
        (format!("{hook}events = [\"deploy.failed\"]\non = [\"deploy.failed\"]\n"), "both events and on"),
        (format!("{hook}events = []\n"), "list of events is empty"),
        (format!("{hook}events = [\"deploy.done\"]\n"), "unknown notify event \"deploy.done\""),
        (format!("{hook}url_env = \"X\"\n"), "both url and url_env"),
        ("kind = \"discord\"\n".to_string(), "needs url or url_env"),
        ("url = \"ftp://x/y\"\n".to_string(), "is not an http(s) URL"),
        ("url_env = \"not a var\"\n".to_string(), "not an environment variable name"),
        (format!("{hook}repository = \"a/b\"\n"), "repository does not apply to a notifier of kind \"webhook\""),
        (format!("{tracker}events = [\"deploy.started\"]\n"), "an issue tracker cannot act on \"deploy.started\""),
        (format!("{tracker}url = \"https://x.example.com/\"\n"), "url does not apply"),
        ("kind = \"github-issue\"\nrepository = \"a/b/c\"\ntoken_env = \"T\"\n".into(), "not a repository name"),
        ("kind = \"github-issue\"\nrepository = \"a/b\"\n".into(), "needs token_env"),
        ("kind = \"gitlab-issue\"\ntoken_env = \"T\"\n".into(), "needs project"),
        (format!("{tracker}api = \"http://github.example.com/api/v3\"\n"), "unencrypted"),
        (format!("{tracker}api = \"https://bot:ghp_x@ghe.example.com/api/v3\"\n"), "api holds a user"),
        (format!("{tracker}api = \"https://ghe.example.com/api/v3?private_token=x\"\n"), "api holds a user"),
        (format!("{mail}tls = \"none\"\nusername_env = \"U\"\npassword_env = \"P\"\n"), "password unencrypted to mail.example.com"),
        (format!("{mail}username_env = \"U\"\n"), "without password_env"),
        (format!("{mail}tls = \"ssl\"\n"), "unknown tls \"ssl\""),
        (format!("{mail}smtp_port = 70000\n"), "is not a port"),
        (format!("{mail}tls = \"none\"\nca_file = \"ca.pem\"\n"), "ca_file is set but tls = \"none\""),
        ("kind = \"email\"\nsmtp_host = \"m.example.com\"\nfrom = \"nobody\"\nto = [\"o@example.com\"]\n".into(), "\"nobody\" is not an email address"),
        ("kind = \"email\"\nsmtp_host = \"m.example.com\"\nfrom = \"f@example.com\"\nto = []\n".into(), "list of recipients is empty"),
        (format!("name = \"Team Chat\"\n{hook}"), "is not a notifier name"),
        (format!("{mail}ca_file = \"missing-ca.pem\"\n"), "cannot read"),
        (
            "kind = \"email\"\nsmtp_host = \"m.example.com\"\nfrom = \"Ops, Team <f@example.com>\"\nto = [\"o@example.com\"]\n".into(),
            "is not an email address",
        ),
    ] {
        let d = refused(&format!("[[notify]]\n{bad}"));
        assert!(d.message.contains(says), "{says}: {}", d.message);
        assert!(d.help.is_some(), "{says}: a hint");
        assert!(d.line > 8, "{says}: points into the table, not at the top: {d}");
    }
    // two of a kind need names (old-style tables are numbered); two of one name are refused
    let old = load(&format!(
        "[[notify]]\n{hook}on = []\n\n[[notify]]\n{hook}\n[[notify]]\n{hook}format = \"slack\"\n\n[[notify]]\n{hook}"
    ))
    .unwrap();
    let names: Vec<&str> = old.notify.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["webhook", "webhook-2", "slack", "webhook-3"]);
    assert_eq!(
        old.notify[0].events.len(),
        NOTIFY_EVENTS.len(),
        "on = [] meant every event"
    );
    let d = refused(&format!(
        "[[notify]]\nkind = \"webhook\"\n{hook}\n[[notify]]\nkind = \"webhook\"\n{hook}"
    ));
    assert!(
        d.message.contains("2 notifiers have kind \"webhook\""),
        "{}",
        d.message
    );
    let d = refused(&format!(
        "[[notify]]\nname = \"ops\"\n{hook}\n[[notify]]\nname = \"ops\"\nkind = \"slack\"\n{hook}"
    ));
    assert!(
        d.message.contains("two notifiers are named \"ops\""),
        "{}",
        d.message
    );
    assert_eq!(d.line, 14, "the second name: {d}");
    // an unnamed one takes its kind's name, which may clash with a named one
    let d = refused(&format!(
        "[[notify]]\nname = \"slack\"\n{hook}\n[[notify]]\nkind = \"slack\"\n{hook}"
    ));
    assert!(
        d.message.contains("two notifiers are named \"slack\""),
        "{}",
        d.message
    );
    // no credentials over plain SMTP is fine, and credentials to a loopback relay too
    load(&format!("[[notify]]\n{mail}tls = \"none\"\n")).unwrap();
    load("[[notify]]\nkind = \"email\"\nsmtp_host = \"127.0.0.1\"\ntls = \"none\"\nfrom = \"f@example.com\"\nto = [\"o@example.com\"]\nusername_env = \"U\"\npassword_env = \"P\"\n").unwrap();
}

#[test]
fn a_public_url_must_be_one() {
    let d = refused("[server]\npublic_url = \"ferry.example.com\"\n");
    assert!(d.message.contains("not an http(s) URL"), "{}", d.message);
    let d = refused("[server]\npublic_url = \"https://:s3cret@ferry.example.com\"\n");
    assert!(d.message.contains("not an http(s) URL"), "{}", d.message);
    let config = load("[server]\npublic_url = \"https://Ferry.example.com:8443/\"\n").unwrap();
    assert_eq!(
        config.server.public_url.as_deref(),
        Some("https://Ferry.example.com:8443")
    );
    assert!(
        config
            .server
            .hosts
            .contains(&"ferry.example.com".to_string()),
        "links to it open: {:?}",
        config.server.hosts
    );
    let config = load("").unwrap();
    assert_eq!(config.server.public_url, None);
    assert_eq!(config.server.public_base(), "http://127.0.0.1:7070");
}

#[test]
fn a_webhook_url_shows_its_host_only() {
    let t = Target::Url("https://hooks.slack.com/services/T0/B0/secret".into());
    assert_eq!(t.to_string(), "https://hooks.slack.com/…");
    assert!(!format!("{t:?}").contains("secret"));
    let missing = Target::Env("FERRY_TEST_SURELY_UNSET_URL".into());
    assert_eq!(
        missing.resolve().unwrap_err(),
        "FERRY_TEST_SURELY_UNSET_URL is not set in ferry's environment"
    );
}

use std::path::Path;
use std::process::Command;

use super::*;

/// A temp dir holding an empty git repository at `repo/`.
fn sandbox() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new("git")
        .args(["init", "-q"])
        .arg(dir.path().join("repo"))
        .status()
        .unwrap();
    assert!(status.success());
    dir
}

fn parse(dir: &Path, text: &str) -> Result<Config, ConfigError> {
    let path = dir.join("ferry.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(&path)
}

fn diagnostic(dir: &Path, text: &str) -> Diagnostic {
    match parse(dir, text) {
        Err(ConfigError::Invalid(d)) => *d,
        Err(other) => panic!("expected a diagnostic, got {other}"),
        Ok(_) => panic!("config was accepted:\n{text}"),
    }
}

const MINIMAL: &str = r#"[app]
name = "demo"
repo = "repo"
start = "./run"

[environments.staging]
listen = "127.0.0.1:8081"
"#;

#[test]
fn minimal_config_gets_documented_defaults() {
    let dir = sandbox();
    let config = parse(dir.path(), MINIMAL).unwrap();
    let base = dir.path().canonicalize().unwrap();
    assert_eq!(config.state_dir, base.join(".ferry"));
    assert_eq!(config.app.repo, base.join("repo").to_string_lossy());
    assert_eq!(config.app.keep_releases, 5);
    assert_eq!(
        config.app.keep_backups, 5,
        "keep_backups follows keep_releases"
    );
    assert!(config.app.build.is_empty() && config.app.test.is_empty());
    assert_eq!(config.app.drain_timeout, Duration::from_secs(30));
    assert_eq!(config.health.paths, vec!["/".to_string()]);
    assert_eq!(config.health.expect_status, 200);
    assert_eq!(config.health.retries, 30);
    assert_eq!(config.server.listen.to_string(), "127.0.0.1:7070");
    let env = config.environment("staging").unwrap();
    assert_eq!(env.track, Track::Manual);
    assert_eq!(env.slot, 1);
}

#[test]
fn slots_expand_into_numbered_environments_on_consecutive_ports() {
    let dir = sandbox();
    let text = MINIMAL.replace(
        "listen = \"127.0.0.1:8081\"",
        "listen = \"127.0.0.1:8081\"\nslots = 2\ntrack = { branch = \"main\" }",
    );
    let config = parse(dir.path(), &text).unwrap();
    assert_eq!(config.environment_names(), vec!["staging-1", "staging-2"]);
    let second = config.environment("staging-2").unwrap();
    assert_eq!(second.listen.map(|a| a.port()), Some(8082));
    assert_eq!(second.group, "staging");
    assert_eq!(second.track, Track::Branch("main".into()));
}

#[test]
fn init_template_passes_check() {
    let dir = sandbox();
    let path = dir.path().join("repo/ferry.toml");
    std::fs::write(&path, TEMPLATE).unwrap();
    let config = Config::load(&path).unwrap();
    assert_eq!(config.environment_names(), vec!["production", "staging"]);
}

#[test]
fn unknown_key_names_line_column_and_the_keys_allowed() {
    let dir = sandbox();
    let d = diagnostic(
        dir.path(),
        &MINIMAL.replace("start =", "strat = \"x\"\nstart ="),
    );
    assert_eq!((d.line, d.column), (4, 1));
    assert!(d.message.contains("unknown field `strat`"), "{}", d.message);
    assert!(d.message.contains("`start`"), "{}", d.message);
    let rendered = d.to_string();
    assert!(rendered.contains("ferry.toml:4:1"), "{rendered}");
    assert!(rendered.contains("help:"), "{rendered}");
}

#[test]
fn wrong_type_is_located() {
    let dir = sandbox();
    let d = diagnostic(
        dir.path(),
        &format!("{MINIMAL}\n[health]\nretries = \"many\"\n"),
    );
    assert_eq!((d.line, d.column), (10, 11));
    assert!(d.message.contains("invalid type"), "{}", d.message);
}

#[test]
fn bad_duration_says_how_to_write_one() {
    let dir = sandbox();
    let d = diagnostic(
        dir.path(),
        &format!("{MINIMAL}\n[health]\ninterval = \"5 minutes\"\n"),
    );
    assert_eq!((d.line, d.column), (10, 12));
    assert!(d.message.contains("like \"500ms\""), "{}", d.message);
    let d = diagnostic(dir.path(), &format!("{MINIMAL}\n[health]\ntimeout = 5\n"));
    assert!(d.message.contains("\"5s\""), "{}", d.message);
}

#[test]
fn duplicate_listen_address_is_refused() {
    let dir = sandbox();
    let text = format!("{MINIMAL}\n[environments.production]\nlisten = \"127.0.0.1:8081\"\n");
    let d = diagnostic(dir.path(), &text);
    assert_eq!((d.line, d.column), (7, 10));
    assert!(d.message.contains("already used"), "{}", d.message);
    // a slot running into the next environment's port counts too
    let text = MINIMAL.replace("8081\"", "8081\"\nslots = 3")
        + "\n[environments.production]\nlisten = \"127.0.0.1:8083\"\n";
    let d = diagnostic(dir.path(), &text);
    assert!(d.message.contains("127.0.0.1:8083"), "{}", d.message);
    // and the server's own port
    let d = diagnostic(dir.path(), &MINIMAL.replace("8081", "7070"));
    assert!(d.message.contains("[server] listen"), "{}", d.message);
}

#[test]
fn repo_that_is_not_git_is_refused() {
    let dir = sandbox();
    std::fs::create_dir(dir.path().join("plain")).unwrap();
    let d = diagnostic(dir.path(), &MINIMAL.replace("\"repo\"", "\"plain\""));
    assert_eq!((d.line, d.column), (3, 8));
    assert!(d.message.contains("not a git repository"), "{}", d.message);
}

#[test]
fn remote_repos_are_accepted_without_checking() {
    let dir = sandbox();
    for url in ["https://example.com/a.git", "git@github.com:a/b.git"] {
        let config = parse(
            dir.path(),
            &MINIMAL.replace("\"repo\"", &format!("\"{url}\"")),
        )
        .unwrap();
        assert_eq!(config.app.repo, url);
    }
}

#[test]
fn other_rejections_each_point_at_their_value() {
    let dir = sandbox();
    let cases: &[(&str, &str, &str)] = &[
        (
            "listen = \"127.0.0.1:8081\"",
            "listen = \"localhost\"",
            "not an address",
        ),
        ("[app]", "[app]\nkeep_releases = 0", "keep_releases"),
        ("[app]", "[app]\nkeep_backups = 0", "keep_backups"),
        ("[app]", "[app]\nshared = [\"../etc\"]", "shared path"),
        (
            "listen = \"127.0.0.1:8081\"",
            "listen = \"127.0.0.1:8081\"\ntrack = { branch = \"main\", tags = true }",
            "`track`",
        ),
        (
            "listen = \"127.0.0.1:8081\"",
            "listen = \"127.0.0.1:8081\"\nenv = { PORT = \"1\" }",
            "set by ferry",
        ),
        (
            "[environments.staging]",
            "[environments.Staging]",
            "environment name",
        ),
        ("start = \"./run\"", "start = \" \"", "`start` is empty"),
        (
            "listen = \"127.0.0.1:8081\"",
            "listen = \"127.0.0.1:8081\"\nconfirm = \"roll back\"",
            "cannot be typed as a word",
        ),
    ];
    for (from, to, expected) in cases {
        let d = diagnostic(dir.path(), &MINIMAL.replace(from, to));
        assert!(d.message.contains(expected), "{to}: {}", d.message);
        assert!(d.help.is_some(), "{to}: no help");
    }
    let d = diagnostic(
        dir.path(),
        "[app]\nname = \"a\"\nrepo = \"repo\"\n[environments.s]\nlisten = \"127.0.0.1:1\"\n",
    );
    assert!(d.message.contains("no `start`"), "{}", d.message);
}

#[test]
fn missing_file_says_how_to_make_one() {
    let err = Config::load(Path::new("/nonexistent/ferry.toml")).unwrap_err();
    assert!(err.to_string().contains("ferry init"), "{err}");
}

#[test]
fn promotion_keys_have_safe_defaults_and_are_read() {
    let dir = sandbox();
    let config = parse(dir.path(), MINIMAL).unwrap();
    let env = config.environment("staging").unwrap();
    assert!(!env.approval && !env.prerelease && env.requires.is_none());
    assert_eq!(env.approval_timeout, Duration::from_secs(24 * 3600));
    assert!(env.freeze.is_empty() && env.require_checks.is_empty() && env.backup.is_empty());
    assert!(config.monitor.is_none());

    let text = format!(
        r#"{MINIMAL}
[environments.production]
listen = "127.0.0.1:8080"
track = {{ tags = true }}
prerelease = false
requires = "staging"
approval = true
approval_timeout = "2h"
freeze = ["Fri 17:00 - Mon 09:00", "2026-12-24 - 2026-12-27"]
timezone = "Europe/Berlin"
require_checks = ["ci", "build / test"]
backup = ["data/production.db"]

[monitor]
interval = "10s"
"#
    );
    let config = parse(dir.path(), &text).unwrap();
    let prod = config.environment("production").unwrap();
    assert_eq!(prod.requires.as_deref(), Some("staging"));
    assert!(prod.approval);
    assert_eq!(prod.approval_timeout, Duration::from_secs(7200));
    assert_eq!(prod.freeze.len(), 2);
    assert_eq!(prod.timezone, Some(chrono_tz::Europe::Berlin));
    assert_eq!(prod.require_checks, ["ci", "build / test"]);
    assert_eq!(prod.backup, ["data/production.db"]);
    let m = config.monitor.unwrap();
    assert_eq!(m.duration, Duration::from_secs(300));
    assert_eq!(m.interval, Duration::from_secs(10));
    assert_eq!((m.max_consecutive_failures, m.max_error_lines), (3, 5));
    assert_eq!(m.min_success_rate, 0.95);
    assert!(
        m.error_pattern
            .is_match("Traceback (most recent call last)")
    );
}

#[test]
fn promotion_key_mistakes_point_at_their_value() {
    let dir = sandbox();
    let prod = |extra: &str| {
        format!("{MINIMAL}\n[environments.production]\nlisten = \"127.0.0.1:8080\"\n{extra}\n")
    };
    for (text, says) in [
        (
            prod("requires = \"qa\""),
            "requires \"qa\", which is not defined",
        ),
        (prod("requires = \"production\""), "requires itself"),
        (prod("freeze = [\"Fri 17:00 to Mon 09:00\"]"), "no \" - \""),
        (prod("timezone = \"Mars/Olympus\""), "unknown time zone"),
        (prod("require_checks = [\"ci;rm\"]"), "check name \"ci;rm\""),
        (
            prod("backup = [\"../etc/passwd\"]"),
            "must name a file inside the shared dir",
        ),
        (prod("approval_timeout = 5"), "has no unit"),
        (
            format!("{MINIMAL}\n[monitor]\nerror_pattern = \"(\"\n"),
            "not a valid regular expression",
        ),
        (
            format!("{MINIMAL}\n[monitor]\nmin_success_rate = 1.5\n"),
            "not a fraction",
        ),
        (
            format!("{MINIMAL}\n[monitor]\ninterval = \"10m\"\nduration = \"1m\"\n"),
            "no longer than duration",
        ),
    ] {
        let d = diagnostic(dir.path(), &text);
        assert!(d.message.contains(says), "{says}: {}", d.message);
    }
    // a loop through two environments
    let text = format!(
        "{}requires = \"production\"\n\n[environments.production]\nlisten = \"127.0.0.1:8080\"\nrequires = \"staging\"\n",
        MINIMAL
    );
    let d = diagnostic(dir.path(), &text);
    assert!(d.message.contains("makes a loop"), "{}", d.message);
}

#[test]
fn webhooks_notify_and_auto_tags_are_read_and_checked() {
    let dir = sandbox();
    let text = format!(
        "{MINIMAL}\n[environments.production]\nlisten = \"127.0.0.1:9999\"\n\
         track = {{ tags = true, auto = true }}\n\n\
         [webhooks]\ngithub_secret_env = \"FERRY_GITHUB_SECRET\"\n\n\
         [[notify]]\nurl = \"https://hooks.slack.com/services/x\"\non = [\"deploy.failed\", \"rollback\"]\nformat = \"slack\"\n\n\
         [[notify]]\nurl = \"http://127.0.0.1:9000/hook\"\n"
    );
    let config = parse(dir.path(), &text).unwrap();
    let prod = config.environment("production").unwrap();
    assert_eq!((prod.track.clone(), prod.auto), (Track::Tags, true));
    assert!(!config.environment("staging").unwrap().auto);
    assert_eq!(
        config.webhooks.github_secret_env.as_deref(),
        Some("FERRY_GITHUB_SECRET")
    );
    assert_eq!(config.webhooks.gitlab_token_env, None);
    assert_eq!(config.notify.len(), 2);
    assert!(matches!(config.notify[0].kind, NotifyKind::Slack(_)));
    assert_eq!(config.notify[0].events, ["deploy.failed", "rolled_back"]);
    assert!(matches!(config.notify[1].kind, NotifyKind::Webhook(_)));
    assert_eq!(
        config.notify[1].events.len(),
        NOTIFY_EVENTS.len(),
        "all events by default"
    );

    for (bad, says) in [
        ("[[notify]]\nurl = \"ftp://x/y\"\n", "is not an http(s) URL"),
        (
            "[[notify]]\nurl = \"http://127.0.0.1:9/h\"\non = [\"deploy.done\"]\n",
            "unknown notify event \"deploy.done\"",
        ),
        (
            "[[notify]]\nurl = \"http://127.0.0.1:9/h\"\nformat = \"xml\"\n",
            "unknown notify format",
        ),
        (
            "[webhooks]\ngithub_secret_env = \"my secret value\"\n",
            "is not an environment variable name",
        ),
    ] {
        let d = diagnostic(dir.path(), &format!("{MINIMAL}\n{bad}"));
        assert!(d.message.contains(says), "{}", d.message);
    }
    let d = diagnostic(
        dir.path(),
        &MINIMAL.replace(
            "listen = \"127.0.0.1:8081\"",
            "listen = \"127.0.0.1:8081\"\ntrack = { branch = \"main\", auto = false }",
        ),
    );
    assert!(d.message.contains("`track`"), "{}", d.message);
}

/// A valid config with every kind of key: the one `ferry init` writes, for [`sandbox`].
fn valid() -> String {
    crate::config::TEMPLATE.replacen("repo = \".\"", "repo = \"repo\"", 1)
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

    /// Any text, and any splice into a valid config: an error or a config, never a panic.
    #[test]
    fn hostile_config_text_never_panics(
        text in "\\PC{0,200}",
        at in 0usize..4000,
        cut in 0usize..40,
        insert in "(\\PC|\n|\"|\\[|\\]|=){0,40}",
    ) {
        let dir = sandbox();
        let _ = parse(dir.path(), &text);
        let valid = valid();
        let at = (0..=at.min(valid.len())).rev().find(|&i| valid.is_char_boundary(i)).unwrap_or(0);
        let end = (at + cut).min(valid.len());
        let end = (end..=valid.len()).find(|&i| valid.is_char_boundary(i)).unwrap();
        let spliced = format!("{}{insert}{}", &valid[..at], &valid[end..]);
        if let Err(ConfigError::Invalid(d)) = parse(dir.path(), &spliced) {
            // a diagnostic renders, whatever the text it points into
            let _ = d.to_string();
        }
    }
}

#[test]
fn the_valid_config_of_the_property_test_is_valid() {
    let dir = sandbox();
    parse(dir.path(), &valid()).unwrap();
}

#[test]
fn the_webhook_repository_is_configured_or_derived_from_a_remote_repo() {
    for (url, want) in [
        ("https://github.com/acme/shop", Some("acme/shop")),
        ("https://github.com/acme/shop.git", Some("acme/shop")),
        ("https://github.com/acme/shop/", Some("acme/shop")),
        ("git@github.com:acme/shop.git", Some("acme/shop")),
        ("git@gitlab.com:group/sub/shop", Some("group/sub/shop")),
        (
            "ssh://git@gitlab.example.com:2222/group/shop.git",
            Some("group/shop"),
        ),
        (
            "https://user@gitlab.example.com/group/shop.git",
            Some("group/shop"),
        ),
        ("https://github.com/acme", None),
        ("file:///srv/git/shop.git", None),
        ("/srv/git/shop.git", None),
        ("repo", None),
    ] {
        assert_eq!(
            crate::config::repository_from_url(url).as_deref(),
            want,
            "{url}"
        );
    }
    let dir = sandbox();
    let local = parse(dir.path(), MINIMAL).unwrap();
    assert_eq!(local.webhook_repository(), None, "a local repo names none");
    let set = parse(
        dir.path(),
        &format!("{MINIMAL}\n[webhooks]\nrepository = \"acme/shop\"\n"),
    )
    .unwrap();
    assert_eq!(
        set.webhook_repository(),
        Some((
            "acme/shop".to_string(),
            crate::config::RepositorySource::Configured
        ))
    );
    for bad in [
        "acme",
        "acme/",
        "https://github.com/acme/shop",
        "acme/../x",
        "a b/c",
    ] {
        let d = diagnostic(
            dir.path(),
            &format!("{MINIMAL}\n[webhooks]\nrepository = \"{bad}\"\n"),
        );
        assert!(
            d.message.contains("is not a repository name"),
            "{bad}: {}",
            d.message
        );
    }
}

#[test]
fn environment_users_and_pass_env_are_read_and_checked() {
    let dir = sandbox();
    let text = format!(
        "{MINIMAL}user = \"app-staging\"\n[environments.production]\nlisten = \"127.0.0.1:8082\"\n"
    )
    .replace(
        "start = \"./run\"",
        "start = \"./run\"\npass_env = [\"HTTP_PROXY\"]",
    );
    let config = parse(dir.path(), &text).unwrap();
    assert_eq!(config.app.pass_env, ["HTTP_PROXY"]);
    let staging = config.environment("staging").unwrap();
    assert_eq!(staging.user.as_deref(), Some("app-staging"));
    assert_eq!(config.environment("production").unwrap().user, None);

    for (user, expected) in [
        ("root", "would give deployed code ferry's own powers"),
        ("App Staging", "is not a valid user name"),
    ] {
        let d = diagnostic(dir.path(), &format!("{MINIMAL}user = \"{user}\"\n"));
        assert!(d.to_string().contains(expected), "{d}");
    }
    // one user for staging and production would let staging's code write production's data
    let shared = format!(
        "{MINIMAL}user = \"app\"\n[environments.production]\nlisten = \"127.0.0.1:8082\"\nuser = \"app\"\n"
    );
    let d = diagnostic(dir.path(), &shared);
    assert!(
        d.to_string()
            .contains("user \"app\" is already the user of environment"),
        "{d}"
    );
    let bad = MINIMAL.replace(
        "start = \"./run\"",
        "start = \"./run\"\npass_env = [\"A B\"]",
    );
    let d = diagnostic(dir.path(), &bad);
    assert!(d.to_string().contains("is not a variable name"), "{d}");
}

#[test]
fn server_access_keys_default_closed_and_are_checked() {
    let dir = sandbox();
    let config = parse(dir.path(), MINIMAL).unwrap();
    assert!(!config.server.open_reads, "reads need a token by default");
    assert!(config.server.hosts.is_empty());
    let env = config.environment("staging").unwrap();
    assert!(!env.approval && !env.approval_not_by_deployer);

    let text = format!(
        "{MINIMAL}approval = {{ not_by_deployer = true }}\n\n[server]\nopen_reads = true\nhosts = [\"Ferry.Example.com\", \"10.0.0.5:7070\", \"[::1]:8443\"]\n"
    );
    let config = parse(dir.path(), &text).unwrap();
    assert!(config.server.open_reads);
    assert_eq!(
        config.server.hosts,
        ["ferry.example.com", "10.0.0.5:7070", "[::1]:8443"]
    );
    let env = config.environment("staging").unwrap();
    assert!(env.approval && env.approval_not_by_deployer);
    for (approval, on) in [("true", true), ("false", false), ("{}", true)] {
        let config = parse(dir.path(), &format!("{MINIMAL}approval = {approval}\n")).unwrap();
        let env = config.environment("staging").unwrap();
        assert_eq!((env.approval, env.approval_not_by_deployer), (on, false));
    }

    for bad in [
        "https://ferry.example.com",
        "ferry.example.com/x",
        "",
        "a:b:c",
        "x:99999",
    ] {
        let text = format!("{MINIMAL}\n[server]\nhosts = [\"{bad}\"]\n");
        let d = diagnostic(dir.path(), &text);
        assert!(
            d.message.contains("is not a host name"),
            "{bad}: {}",
            d.message
        );
    }
    let d = diagnostic(
        dir.path(),
        &format!("{MINIMAL}approval = {{ not_by = true }}\n"),
    );
    assert!(d.message.contains("not_by_deployer"), "{}", d.message);
}

#[test]
fn connection_limits_have_defaults_and_are_read_and_checked() {
    let dir = sandbox();
    let config = parse(dir.path(), MINIMAL).unwrap();
    assert_eq!(config.server.connections, ConnLimits::API);
    assert_eq!(config.server.max_streams, 64);
    assert_eq!(config.proxy, crate::config::ProxySettings::DEFAULT);
    let text = format!(
        "{MINIMAL}\n[server]\nmax_connections = 100\nmax_connections_per_client = 10\n\
         header_timeout = \"2s\"\nmax_streams = 5\n\n[proxy]\nmax_connections = 50\n"
    );
    let config = parse(dir.path(), &text).unwrap();
    assert_eq!(
        config.server.connections,
        ConnLimits {
            max_connections: 100,
            max_connections_per_client: 10,
            header_timeout: Duration::from_secs(2),
        }
    );
    assert_eq!(config.server.max_streams, 5);
    // a per-client default above the whole is brought down to it
    assert_eq!(config.proxy.connections.max_connections, 50);
    assert_eq!(config.proxy.connections.max_connections_per_client, 50);
    for (table, says) in [
        (
            "[server]\nmax_connections = 0",
            "max_connections = 0 is out of range",
        ),
        ("[proxy]\nmax_connections_per_client = -1", "out of range"),
        (
            "[proxy]\nmax_connections = 10\nmax_connections_per_client = 11",
            "is more than [proxy] max_connections (10)",
        ),
        (
            "[server]\nheader_timeout = \"0s\"",
            "would cut every connection",
        ),
        (
            "[server]\nmax_streams = 0",
            "max_streams = 0 is out of range",
        ),
        ("[proxy]\nmax_streams = 3", "unknown field"),
    ] {
        let d = diagnostic(dir.path(), &format!("{MINIMAL}\n{table}\n"));
        assert!(d.message.contains(says), "{says}: {}", d.message);
    }
}

#[test]
fn proxy_request_and_pool_settings_are_read_and_checked() {
    let dir = sandbox();
    let text = format!(
        "{MINIMAL}access_log = true\n\n[server]\nstop_apps_on_exit = true\n\n[proxy]\n\
         upstream_timeout = \"5s\"\nmax_request_body = \"1MB\"\nmax_response_body = 0\n\
         max_request_headers = \"8KB\"\nupstream_keepalive = 4\nupstream_max_connections = 8\n\
         upstream_idle_timeout = \"2s\"\nupstream_queue_timeout = \"0s\"\n"
    );
    let config = parse(dir.path(), &text).unwrap();
    assert!(config.server.stop_apps_on_exit);
    assert!(config.environment("staging").unwrap().access_log);
    let p = config.proxy;
    assert_eq!(p.upstream_timeout, Duration::from_secs(5));
    assert_eq!(p.max_request_body, Some(1 << 20));
    assert_eq!(p.max_response_body, None, "0 is no limit");
    assert_eq!(p.max_request_headers, 8 << 10);
    assert_eq!((p.upstream_keepalive, p.upstream_max_connections), (4, 8));
    assert_eq!(p.upstream_idle_timeout, Duration::from_secs(2));
    assert_eq!(p.upstream_queue_timeout, Duration::ZERO);
    let defaults = parse(dir.path(), MINIMAL).unwrap();
    assert!(!defaults.server.stop_apps_on_exit);
    assert!(!defaults.environment("staging").unwrap().access_log);
    for (table, says) in [
        (
            "upstream_keepalive = 9\nupstream_max_connections = 8",
            "more than upstream_max_connections (8)",
        ),
        ("upstream_timeout = \"0s\"", "would fail every request"),
        ("max_request_headers = \"100B\"", "out of range"),
        ("max_request_body = \"2 furlongs\"", "invalid size"),
        ("max_request_body = -1", "negative"),
        ("upstream_max_connections = 0", "out of range"),
    ] {
        let d = diagnostic(dir.path(), &format!("{MINIMAL}\n[proxy]\n{table}\n"));
        assert!(d.message.contains(says), "{says}: {}", d.message);
    }
}

#[test]
fn rollback_confirmation_word_defaults_to_the_environment_name() {
    let dir = sandbox();
    let text = MINIMAL.replace(
        "listen = \"127.0.0.1:8081\"",
        "listen = \"127.0.0.1:8081\"\nslots = 2",
    );
    let config = parse(dir.path(), &text).unwrap();
    assert_eq!(
        config.environment("staging-2").unwrap().confirm_word(),
        "staging-2"
    );
    let text = MINIMAL.replace(
        "listen = \"127.0.0.1:8081\"",
        "listen = \"127.0.0.1:8081\"\nconfirm = \"ROLLBACK\"",
    );
    let config = parse(dir.path(), &text).unwrap();
    assert_eq!(
        config.environment("staging").unwrap().confirm_word(),
        "ROLLBACK"
    );
}

#[test]
fn acme_settings_have_defaults_and_are_checked() {
    let dir = sandbox();
    assert!(parse(dir.path(), MINIMAL).unwrap().acme.is_none());
    let with = |table: &str| format!("{MINIMAL}\n[acme]\n{table}\n");
    let acme = parse(dir.path(), &with("email = \"ops@example.com\""))
        .unwrap()
        .acme
        .unwrap();
    assert_eq!(acme.email, "ops@example.com");
    assert_eq!(
        acme.directory,
        "https://acme-v02.api.letsencrypt.org/directory"
    );
    assert_eq!(acme.ca, None);
    assert_eq!(acme.renew_before, Duration::from_secs(30 * 86_400));
    assert_eq!(acme.check_interval, Duration::from_secs(12 * 3600));

    let root = rcgen::generate_simple_self_signed(vec!["acme.test".to_string()]).unwrap();
    std::fs::write(dir.path().join("root.pem"), root.cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), root.signing_key.serialize_pem()).unwrap();
    let acme = parse(
        dir.path(),
        &with(
            "email = \"ops@example.com\"\ndirectory = \"https://127.0.0.1:14000/dir\"\nca = \"root.pem\"\nrenew_before = \"60d\"\ncheck_interval = \"1h\"",
        ),
    )
    .unwrap()
    .acme
    .unwrap();
    assert_eq!(acme.directory, "https://127.0.0.1:14000/dir");
    assert_eq!(
        acme.ca,
        Some(dir.path().canonicalize().unwrap().join("root.pem"))
    );
    assert_eq!(acme.renew_before, Duration::from_secs(60 * 86_400));
    assert_eq!(acme.check_interval, Duration::from_secs(3600));

    let cases: &[(&str, &str)] = &[
        ("directory = \"https://x.test/dir\"", "[acme] has no email"),
        ("email = \"ops\"", "is not an email address"),
        (
            "email = \"mailto:ops@example.com\"",
            "is not an email address",
        ),
        (
            "email = \"ops@example.com\"\ndirectory = \"http://x.test/dir\"",
            "is not an https:// URL",
        ),
        (
            "email = \"ops@example.com\"\nca = \"missing.pem\"",
            "cannot be read",
        ),
        (
            "email = \"ops@example.com\"\nca = \"key.pem\"",
            "holds no PEM certificate",
        ),
        (
            "email = \"ops@example.com\"\nrenew_before = \"0s\"",
            "renew_before",
        ),
        (
            "email = \"ops@example.com\"\ncheck_interval = \"10ms\"",
            "check_interval",
        ),
        (
            "email = \"ops@example.com\"\nemial = \"x\"",
            "unknown field",
        ),
    ];
    for (table, expected) in cases {
        let d = diagnostic(dir.path(), &with(table));
        assert!(d.message.contains(expected), "{table}: {}", d.message);
        assert!(d.help.is_some(), "{table}: no help");
    }
    let d = diagnostic(
        dir.path(),
        &with("email = \"ops@example.com\"\nca = \"missing.pem\""),
    );
    assert!(d.message.contains("missing.pem"), "{}", d.message);
}

const FRONT: &str = r#"[app]
name = "demo"
repo = "repo"
start = "./run"

[server]
http = "0.0.0.0:8080"
https = "0.0.0.0:8443"

[environments.staging]
hosts = ["Staging.Example.com", "*.preview.example.com"]
tls = { cert = "certs/staging.pem", key = "/etc/keys/staging.key" }

[environments.backend]
listen = "127.0.0.1:8081"
hosts = ["staging.example.com"]
path_prefix = "/api/"
redirect_https = false

[environments.production]
hosts = ["example.com"]
tls = "acme"

[acme]
email = "ops@example.com"
"#;

#[test]
fn front_door_keys_are_read_with_their_defaults() {
    let dir = sandbox();
    let config = parse(dir.path(), FRONT).unwrap();
    let base = dir.path().canonicalize().unwrap();
    assert_eq!(config.server.http.map(|a| a.port()), Some(8080));
    assert_eq!(config.server.https.map(|a| a.port()), Some(8443));
    let staging = config.environment("staging").unwrap();
    assert_eq!(staging.listen, None, "listen is optional with hosts");
    let hosts: Vec<&str> = staging.hosts.iter().map(|h| h.as_str()).collect();
    assert_eq!(hosts, ["staging.example.com", "*.preview.example.com"]);
    assert_eq!(
        staging.tls,
        Some(Tls::Files {
            cert: base.join("certs/staging.pem"),
            key: "/etc/keys/staging.key".into(),
        }),
        "cert paths are relative to the config file"
    );
    assert!(staging.redirect_https, "on by default with tls");
    assert_eq!(
        staging.urls(&config.server),
        [
            "https://staging.example.com:8443",
            "https://*.preview.example.com:8443"
        ]
    );
    let api = config.environment("backend").unwrap();
    assert_eq!(
        api.path_prefix.as_deref(),
        Some("/api"),
        "trailing / dropped"
    );
    assert_eq!(api.tls, None);
    assert!(!api.redirect_https);
    assert_eq!(
        api.urls(&config.server),
        [
            "http://127.0.0.1:8081",
            "http://staging.example.com:8080/api"
        ]
    );
    let production = config.environment("production").unwrap();
    assert_eq!(production.tls, Some(Tls::Acme));
    assert!(production.redirect_https);
    // the front door is optional: none of it is needed for a plain config
    let plain = parse(dir.path(), MINIMAL).unwrap();
    assert_eq!((plain.server.http, plain.server.https), (None, None));
    let env = plain.environment("staging").unwrap();
    assert!(env.hosts.is_empty() && env.tls.is_none() && !env.redirect_https);
    assert_eq!(env.urls(&plain.server), ["http://127.0.0.1:8081"]);
}

#[test]
fn front_door_mistakes_are_refused_and_located() {
    let dir = sandbox();
    let check = |text: &str, wanted: &str, at: &str| {
        let d = diagnostic(dir.path(), text);
        let shown = d.to_string();
        assert!(
            d.message.contains(wanted),
            "{wanted:?} not in {}",
            d.message
        );
        assert!(shown.contains(at), "{at:?} not in\n{shown}");
        assert!(d.help.is_some());
    };
    // a host claimed by two environments names both; twice in one names it
    check(
        &FRONT.replace(
            "hosts = [\"example.com\"]",
            "hosts = [\"STAGING.example.com.\"]\npath_prefix = \"/api\"",
        ),
        "host staging.example.com/api is claimed by environments backend and production",
        "STAGING.example.com.",
    );
    check(
        &FRONT.replace(
            "hosts = [\"example.com\"]",
            "hosts = [\"example.com\", \"example.com\"]",
        ),
        "host example.com is claimed twice by environment production",
        "hosts = [",
    );
    check(
        &FRONT.replace("path_prefix = \"/api/\"\n", ""),
        "host staging.example.com is claimed by environments backend and staging",
        "staging.example.com",
    );
    // neither listen nor hosts
    check(
        &MINIMAL.replace("listen = \"127.0.0.1:8081\"", "track = { tags = true }"),
        "environment staging has neither `listen` nor `hosts`",
        "[environments.staging]",
    );
    // hosts without a front door
    check(
        &MINIMAL.replace("listen = \"127.0.0.1:8081\"", "hosts = [\"a.example.com\"]"),
        "has `hosts` but ferry has no front door",
        "a.example.com",
    );
    check(
        &FRONT.replace("https = \"0.0.0.0:8443\"\n", ""),
        "has `tls` but [server] has no `https`",
        "tls = \"acme\"",
    );
    check(
        &FRONT.replace("hosts = [\"example.com\"]", "listen = \"127.0.0.1:9000\""),
        "has `tls` but no `hosts`",
        "tls = \"acme\"",
    );
    check(
        &FRONT.replace("hosts = [\"example.com\"]", "hosts = [\"*.example.com\"]"),
        "tls = \"acme\" cannot obtain a certificate for *.example.com",
        "*.example.com",
    );
    check(
        &FRONT.replace("tls = \"acme\"", "tls = \"letsencrypt\""),
        "is not a certificate source",
        "letsencrypt",
    );
    check(
        &FRONT.replace("redirect_https = false", "redirect_https = true"),
        "redirect_https = true but no `tls`",
        "redirect_https = true",
    );
    check(
        &FRONT.replace("/api/", "/a?b"),
        "is not a path prefix",
        "/a?b",
    );
    check(
        &FRONT.replace("/api/", "/"),
        "is not a path prefix",
        "\"/\"",
    );
    check(
        &FRONT.replace(
            "path_prefix = \"/api/\"\nredirect_https = false",
            "path_prefix = \"/api\"\ntls = \"acme\"",
        ),
        "host staging.example.com gets a certificate from environments backend and staging",
        "staging.example.com",
    );
    check(
        &FRONT.replace("\"*.preview.example.com\"", "\"*.example\""),
        "",
        "*.example",
    );
    check(
        &FRONT.replace("https = \"0.0.0.0:8443\"", "https = \"0.0.0.0:8080\""),
        "[server] https = \"0.0.0.0:8080\" is already used by [server] http",
        "0.0.0.0:8080",
    );
    check(
        &MINIMAL.replace("[environments.staging]", "[environments.https]"),
        "is the name of one of ferry's own listeners",
        "[environments.https]",
    );
    // several slots: each would claim the same names
    check(
        &FRONT.replace(
            "redirect_https = false",
            "redirect_https = false\nslots = 2",
        ),
        "has 2 slots and `hosts`",
        "staging.example.com",
    );
}

#[test]
fn tls_acme_needs_an_acme_table() {
    let dir = sandbox();
    let text = MINIMAL.replace(
        "listen = \"127.0.0.1:8081\"",
        "hosts = [\"staging.example.com\"]\ntls = \"acme\"",
    ) + "[server]\nhttp = \"127.0.0.1:8080\"\nhttps = \"127.0.0.1:8443\"\n";
    let d = diagnostic(dir.path(), &text);
    assert!(
        d.message
            .contains("environment staging has tls = \"acme\" but there is no [acme] table"),
        "{}",
        d.message
    );
    assert!(d.help.as_deref().unwrap_or("").contains("email"));
    let config = parse(
        dir.path(),
        &format!("{text}[acme]\nemail = \"ops@example.com\"\n"),
    )
    .unwrap();
    assert_eq!(config.environments[0].tls, Some(Tls::Acme));
    assert_eq!(config.acme.unwrap().email, "ops@example.com");
}

#[path = "runtime_tests.rs"]
mod runtime_tests;

#[test]
fn release_command_and_hooks_take_a_command_or_a_list() {
    let dir = sandbox();
    let config = parse(dir.path(), MINIMAL).unwrap();
    assert_eq!(config.app.release, None);
    assert_eq!(config.app.release_timeout, config.app.command_timeout);
    assert!(config.hooks.commands(Hook::PreDeploy).is_empty());
    assert!(!config.hooks.secrets);

    let text = MINIMAL.replace(
        "start = \"./run\"\n",
        "start = \"./run\"\nrelease = \"./migrate\"\nrelease_timeout = \"2m\"\n",
    ) + "\n[hooks]\npre_deploy = \"./check\"\non_failure = [\"./page\", \"./log\"]\nsecrets = true\n";
    let config = parse(dir.path(), &text).unwrap();
    assert_eq!(config.app.release.as_deref(), Some("./migrate"));
    assert_eq!(config.app.release_timeout, Duration::from_secs(120));
    assert_eq!(config.hooks.commands(Hook::PreDeploy), ["./check"]);
    assert_eq!(config.hooks.commands(Hook::OnFailure), ["./page", "./log"]);
    assert!(config.hooks.commands(Hook::PostDeploy).is_empty());
    assert!(config.hooks.secrets);

    let d = diagnostic(
        dir.path(),
        &(MINIMAL.to_string() + "\n[hooks]\npost_deploy = [\"\"]\n"),
    );
    assert!(
        d.message.contains("post_deploy has an empty command"),
        "{d}"
    );
    let d = diagnostic(
        dir.path(),
        &(MINIMAL.to_string() + "\n[hooks]\npost_deploy = 3\n"),
    );
    assert!(
        d.to_string()
            .contains("a command (a string) or a list of commands"),
        "{d}"
    );
    let d = diagnostic(
        dir.path(),
        &(MINIMAL.to_string() + "\n[hooks]\nbefore = \"x\"\n"),
    );
    assert!(d.message.contains("unknown field"), "{d}");
    let d = diagnostic(
        dir.path(),
        &MINIMAL.replace(
            "start = \"./run\"\n",
            "start = \"./run\"\nrelease = \" \"\n",
        ),
    );
    assert!(d.message.contains("[app] release is empty"), "{d}");
}

#[path = "processes_tests.rs"]
mod processes_tests;

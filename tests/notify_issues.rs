//! Issue trackers as notifiers, through real deploys (a real `ferry serve`, a real git repo, the
//! sample app made to fail its health check) against a fake GitHub and GitLab REST API on
//! loopback: a failure opens an issue with the report, the next failure comments, the next
//! success comments and closes; an issue closed by someone is left alone; a 500 is retried, a
//! 401 fails with a clear message; the token goes nowhere but the header.

#[path = "support/fake_tracker.rs"]
mod fake_tracker;
mod support;

use std::time::Duration;

use fake_tracker::{FakeIssue, FakeTracker};
use support::*;

const GITHUB_TOKEN: &str = "ghp_fake_token_0123456789abcdef";
const GITLAB_TOKEN: &str = "glpat-fake-token-0123456789";

fn releases() -> [Rel; 4] {
    [
        Rel("v1.0.0", GOOD),
        Rel("v1.1.0", BROKEN),
        Rel("v1.2.0", BROKEN),
        Rel("v1.3.0", GOOD),
    ]
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// A sandbox whose `[[notify]]` tables are `tables`, served with `env`.
fn sandbox(tables: String, env: &[(&str, &str)]) -> Sandbox {
    sandbox_of(&releases(), tables, env)
}

fn sandbox_of(releases: &[Rel], tables: String, env: &[(&str, &str)]) -> Sandbox {
    let mut s = Sandbox::with(
        releases,
        Options {
            tables: leak(tables),
            ..Options::default()
        },
    );
    s.serve_env = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    s.serve();
    s
}

fn github_table(name: &str, api: &str, token_env: &str) -> String {
    format!(
        "[[notify]]\nname = \"{name}\"\nkind = \"github-issue\"\nrepository = \"acme/shop\"\n\
         token_env = \"{token_env}\"\napi = \"{api}\"\nlabels = [\"deploy-failure\", \"ferry\"]\n\n"
    )
}

/// Waits until the fake's issues satisfy `check`; fails with them and the serve log if not.
fn wait_issues(s: &Sandbox, fake: &FakeTracker, what: &str, check: impl Fn(&[FakeIssue]) -> bool) {
    let ok = eventually(Duration::from_secs(30), || check(&fake.issues()));
    assert!(
        ok,
        "{what}: issues are {:#?}\n{}",
        fake.issues(),
        s.serve_log()
    );
}

/// A delivery row of the outbox, read from ferry's database.
#[derive(Debug, Clone)]
struct Delivery {
    notifier: String,
    event: String,
    deployment: Option<i64>,
    state: String,
    attempts: i64,
    answer: Option<String>,
    error: Option<String>,
    link: Option<String>,
}

fn deliveries(s: &Sandbox) -> Vec<Delivery> {
    let db = rusqlite::Connection::open_with_flags(
        s.state_dir().join("ferry.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut q = db
        .prepare(
            "SELECT notifier, event, deployment, state, attempts, answer, error, link
             FROM notifications ORDER BY id",
        )
        .unwrap();
    q.query_map([], |r| {
        Ok(Delivery {
            notifier: r.get(0)?,
            event: r.get(1)?,
            deployment: r.get(2)?,
            state: r.get(3)?,
            attempts: r.get(4)?,
            answer: r.get(5)?,
            error: r.get(6)?,
            link: r.get(7)?,
        })
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// The finished delivery of `notifier` about `deployment`, once there is one.
fn delivery(s: &Sandbox, notifier: &str, deployment: i64) -> Delivery {
    let find = || {
        deliveries(s).into_iter().find(|d| {
            d.notifier == notifier && d.deployment == Some(deployment) && d.state != "pending"
        })
    };
    assert!(
        eventually(Duration::from_secs(30), || find().is_some()),
        "no finished delivery of {notifier} for {deployment}: {:#?}\n{}",
        deliveries(s),
        s.serve_log()
    );
    find().unwrap()
}

fn deploy_fails(s: &Sandbox, version: &str) {
    let run = s.ferry(&["deploy", "staging", version]);
    assert_eq!(run.code(), 1, "{version} must fail:\n{run}");
}

/// The token appears nowhere but where it belongs: not in the serve log, the database, or
/// what the API answers about `deployments`.
fn token_nowhere(s: &Sandbox, token: &str, deployments: &[i64]) {
    assert!(!s.serve_log().contains(token), "token in the log");
    for entry in std::fs::read_dir(s.state_dir()).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("ferry.db") {
            let bytes = std::fs::read(entry.path()).unwrap();
            assert!(
                !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
                "token in {name}"
            );
        }
    }
    for id in deployments {
        let (_, body) = s.get(&format!("/api/deployments/{id}")).unwrap();
        assert!(!body.contains(token), "token in /api/deployments/{id}");
        let shown = s.ferry(&["show", &id.to_string()]);
        assert!(!shown.stdout().contains(token) && !shown.stderr().contains(token));
    }
}

#[test]
fn a_failure_opens_an_issue_with_the_report_the_next_comments_and_a_success_closes_it() {
    let fake = FakeTracker::github("acme/shop", GITHUB_TOKEN);
    let s = sandbox(
        github_table("tracker", &fake.api, "FERRY_GITHUB_TOKEN"),
        &[("FERRY_GITHUB_TOKEN", GITHUB_TOKEN)],
    );
    s.deploy_ok("staging", "v1.0.0");

    deploy_fails(&s, "v1.1.0");
    wait_issues(&s, &fake, "an issue for the failure", |i| i.len() == 1);
    let issue = &fake.issues()[0];
    assert_eq!(
        issue.title,
        "Deploy of sample v1.1.0 to staging failed at health"
    );
    for part in [
        "## Steps",
        "| step | state | took |",
        "| health | failed |",
        "## Output of `health` (last lines)",
        "answered 500",
        "## The app's last lines (`v1.1.0-",
        "sample app v1.1.0 starting",
        "ferry show 2",
    ] {
        assert!(
            issue.body.contains(part),
            "{part:?} not in:\n{}",
            issue.body
        );
    }
    assert_eq!(issue.labels, ["deploy-failure", "ferry"]);
    assert!(issue.open && issue.comments.is_empty());
    // the success before the failure had nothing to close, and opened nothing
    assert_eq!(fake.seen().iter().filter(|r| r.method == "POST").count(), 1);

    deploy_fails(&s, "v1.2.0");
    wait_issues(&s, &fake, "a comment for the second failure", |i| {
        i.len() == 1 && i[0].comments.len() == 1
    });
    let comment = &fake.issues()[0].comments[0];
    assert!(
        comment.contains("Deploy of sample v1.2.0 to staging failed at health")
            && comment.contains("| health | failed |"),
        "{comment}"
    );

    s.deploy_ok("staging", "v1.3.0");
    wait_issues(&s, &fake, "closed by the success", |i| !i[0].open);
    let issue = &fake.issues()[0];
    assert_eq!(issue.state_reason.as_deref(), Some("completed"));
    assert_eq!(issue.comments.len(), 2);
    assert!(
        issue.comments[1].contains("v1.3.0")
            && issue.comments[1].contains("is live on **staging**"),
        "{}",
        issue.comments[1]
    );
    assert_eq!(fake.issues().len(), 1);

    // each delivery answered what it did, with the issue's page as its link
    let url = "https://github.test/acme/shop/issues/1";
    let first = delivery(&s, "tracker", 1);
    assert_eq!(
        (first.state.as_str(), first.link.as_deref()),
        ("sent", None),
        "{first:?}"
    );
    assert_eq!(
        first.answer.as_deref(),
        Some("skipped: no open issue for this environment")
    );
    for (id, answer) in [
        (2, "opened #1"),
        (3, "commented on #1"),
        (4, "commented on and closed #1"),
    ] {
        let d = delivery(&s, "tracker", id);
        assert_eq!(
            (d.state.as_str(), d.answer.as_deref(), d.link.as_deref()),
            ("sent", Some(answer), Some(url)),
            "{d:?}"
        );
    }
    assert_eq!(delivery(&s, "tracker", 2).event, "deploy.failed");
    // where people look: ferry show and the API
    let shown = s.ferry(&["show", "2"]).stdout();
    assert!(shown.contains(&format!("{url} opened #1")), "{shown}");
    let detail = s.api("/api/deployments/4");
    assert!(
        detail["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["link"] == url && n["answer"] == "commented on and closed #1"),
        "{detail}"
    );

    // every request carried the token in its header, and only there
    for r in fake.seen() {
        assert_eq!(r.token_in, ["authorization"], "{r:?}");
        assert!(!r.path.contains(GITHUB_TOKEN));
    }
    token_nowhere(&s, GITHUB_TOKEN, &[1, 2, 3, 4]);
}

#[test]
fn an_issue_closed_or_deleted_by_someone_is_left_alone_and_a_new_one_opened() {
    let fake = FakeTracker::github("acme/shop", GITHUB_TOKEN);
    let s = sandbox(
        github_table("tracker", &fake.api, "FERRY_GITHUB_TOKEN"),
        &[("FERRY_GITHUB_TOKEN", GITHUB_TOKEN)],
    );
    s.deploy_ok("staging", "v1.0.0");
    deploy_fails(&s, "v1.1.0");
    wait_issues(&s, &fake, "the first issue", |i| i.len() == 1);

    fake.close_by_hand(1);
    deploy_fails(&s, "v1.2.0");
    wait_issues(&s, &fake, "a new issue", |i| i.len() == 2);
    let issues = fake.issues();
    assert!(
        issues[0].comments.is_empty() && !issues[0].open,
        "#1 left alone"
    );
    assert_eq!(
        issues[0].state_reason.as_deref(),
        Some("not_planned"),
        "ferry did not touch the closed issue"
    );
    assert!(issues[1].open && issues[1].title.contains("v1.2.0"));

    fake.delete(2);
    deploy_fails(&s, "v1.1.0");
    wait_issues(&s, &fake, "another issue", |i| i.len() == 3);
    assert!(fake.issues()[2].title.contains("v1.1.0"));
}

#[test]
fn gitlab_opens_comments_on_a_monitor_rollback_and_closes_the_same_way() {
    let fake = FakeTracker::gitlab("acme/web/shop", GITLAB_TOKEN);
    let s = sandbox_of(
        &[
            Rel("v1.0.0", GOOD),
            Rel("v1.1.0", BROKEN),
            Rel("v1.2.0", "fail_health_after_ms = 1000\n"),
            Rel("v1.3.0", GOOD),
        ],
        format!(
            "[monitor]\nduration = \"4s\"\ninterval = \"200ms\"\n\n\
             [[notify]]\nkind = \"gitlab-issue\"\nproject = \"acme/web/shop\"\n\
             token_env = \"FERRY_GITLAB_TOKEN\"\napi = \"{}\"\nlabels = [\"deploy-failure\", \"ferry\"]\n",
            fake.api
        ),
        &[("FERRY_GITLAB_TOKEN", GITLAB_TOKEN)],
    );
    s.deploy_ok("staging", "v1.0.0");
    deploy_fails(&s, "v1.1.0");
    wait_issues(&s, &fake, "an issue", |i| i.len() == 1);
    let issue = &fake.issues()[0];
    assert_eq!(
        issue.title,
        "Deploy of sample v1.1.0 to staging failed at health"
    );
    assert!(issue.body.contains("| health | failed |"), "{}", issue.body);
    assert_eq!(issue.labels, ["deploy-failure", "ferry"]);
    assert!(
        fake.seen().iter().all(|r| r
            .path
            .starts_with("/api/v4/projects/acme%2Fweb%2Fshop/issues")),
        "{:#?}",
        fake.seen()
    );

    // rolled back by the monitor: the same issue gets the rollback's report
    deploy_fails(&s, "v1.2.0");
    wait_issues(&s, &fake, "a note", |i| i[0].comments.len() == 1);
    let note = &fake.issues()[0].comments[0];
    for part in [
        "Deploy of sample v1.2.0 to staging rolled back by the monitor",
        "## Monitoring",
        "Traffic went back to the previous release.",
    ] {
        assert!(note.contains(part), "{part:?} not in:\n{note}");
    }

    s.deploy_ok("staging", "v1.3.0");
    wait_issues(&s, &fake, "closed", |i| !i[0].open);
    assert_eq!(fake.issues()[0].comments.len(), 2);
    assert_eq!(fake.issues().len(), 1);

    // closed by ferry: the next failure opens #2; closed by someone: a new one again
    deploy_fails(&s, "v1.1.0");
    wait_issues(&s, &fake, "#2", |i| i.len() == 2);
    fake.close_by_hand(2);
    deploy_fails(&s, "v1.1.0");
    wait_issues(&s, &fake, "#3", |i| i.len() == 3);
    assert!(fake.issues()[1].comments.is_empty());
    assert_eq!(
        delivery(&s, "gitlab-issue", 6).answer.as_deref(),
        Some("opened #3 (#2 was closed or deleted)")
    );
    // deleted: GitLab answers 404; the success says so and touches nothing
    fake.delete(3);
    s.deploy_ok("staging", "v1.3.0");
    assert_eq!(
        delivery(&s, "gitlab-issue", 7).answer.as_deref(),
        Some("#3 was already closed or deleted")
    );
    token_nowhere(&s, GITLAB_TOKEN, &[1, 2, 3, 4, 5, 6, 7]);
}

#[test]
fn a_500_is_retried_and_a_refused_or_missing_token_fails_the_delivery_with_what_to_fix() {
    let good = FakeTracker::github("acme/shop", GITHUB_TOKEN);
    let refusing = FakeTracker::github("acme/shop", "the-token-it-wants");
    let s = sandbox(
        github_table("good", &good.api, "FERRY_GITHUB_TOKEN")
            + &github_table("refused", &refusing.api, "FERRY_OTHER_TOKEN")
            + &github_table("unset", &refusing.api, "FERRY_UNSET_TOKEN"),
        &[
            ("FERRY_GITHUB_TOKEN", GITHUB_TOKEN),
            ("FERRY_OTHER_TOKEN", "ghp_wrong_token_abcdef"),
        ],
    );
    s.deploy_ok("staging", "v1.0.0");
    good.fail_next(500, 1);
    deploy_fails(&s, "v1.1.0");
    wait_issues(&s, &good, "opened after a 500", |i| i.len() == 1);
    let sent = delivery(&s, "good", 2);
    assert_eq!(
        (sent.state.as_str(), sent.attempts, sent.answer.as_deref()),
        ("sent", 2, Some("opened #1")),
        "{sent:?}"
    );
    let refused = delivery(&s, "refused", 2);
    assert_eq!(
        (refused.state.as_str(), refused.attempts),
        ("failed", 1),
        "{refused:?}"
    );
    assert_eq!(
        refused.error.as_deref(),
        Some(
            "GitHub refused the token in FERRY_OTHER_TOKEN (401: Bad credentials): check that \
             it is valid and not expired"
        )
    );
    // the first call (the look for an issue this delivery may have opened) got the 500
    let calls: Vec<(String, u16)> = good
        .seen()
        .iter()
        .map(|r| (r.method.clone(), r.status))
        .collect();
    assert_eq!(
        calls,
        [
            ("GET".to_string(), 500),
            ("GET".to_string(), 200),
            ("POST".to_string(), 201)
        ]
    );

    let unset = delivery(&s, "unset", 2);
    assert_eq!(
        (unset.state.as_str(), unset.attempts),
        ("failed", 1),
        "{unset:?}"
    );
    assert_eq!(
        unset.error.as_deref(),
        Some(
            "FERRY_UNSET_TOKEN is not set in ferry's environment: set it to a GitHub token that \
             can edit issues in acme/shop"
        )
    );
    // the refused one tried once, the unset one not at all (a 401 is not worth another try; its row is final)
    assert_eq!(refusing.seen().len(), 1, "{:#?}", refusing.seen());
    assert_eq!(refusing.seen()[0].status, 401);
    assert!(refusing.issues().is_empty());
    let log = s.serve_log();
    assert!(
        log.contains(
            "GitHub refused the token in FERRY_OTHER_TOKEN (401: Bad credentials): check that it \
             is valid and not expired"
        ),
        "{log}"
    );
    assert!(
        !log.contains(&refusing.api) && !log.contains(&good.api),
        "no URL in the log:\n{log}"
    );
    token_nowhere(&s, "ghp_wrong_token_abcdef", &[1, 2]);
}

#[test]
fn notify_test_opens_comments_on_and_closes_a_test_issue_and_says_why_when_it_cannot() {
    let fake = FakeTracker::github("acme/shop", GITHUB_TOKEN);
    let refusing = FakeTracker::github("acme/shop", "the-token-it-wants");
    let s = sandbox(
        github_table("tracker", &fake.api, "FERRY_GITHUB_TOKEN")
            + &github_table("refused", &refusing.api, "FERRY_OTHER_TOKEN"),
        &[
            ("FERRY_GITHUB_TOKEN", GITHUB_TOKEN),
            ("FERRY_OTHER_TOKEN", "ghp_wrong_token_abcdef"),
        ],
    );
    let run = s.ferry(&["notify", "test", "tracker"]);
    assert_eq!(run.code(), 0, "{run}\n{}", s.serve_log());
    assert!(
        run.stdout()
            .contains("opened, commented on and closed test issue #1")
            && run
                .stdout()
                .contains("https://github.test/acme/shop/issues/1"),
        "{run}"
    );
    let issues = fake.issues();
    assert_eq!(issues.len(), 1);
    assert!(
        issues[0]
            .title
            .starts_with("[ferry test] sample: a sample failure issue"),
        "{}",
        issues[0].title
    );
    assert!(!issues[0].open && issues[0].comments.len() == 1);
    assert_eq!(issues[0].state_reason.as_deref(), Some("completed"));

    // the test issue is not the environment's: a failure opens its own
    s.deploy_ok("staging", "v1.0.0");
    deploy_fails(&s, "v1.1.0");
    wait_issues(&s, &fake, "the failure's issue", |i| i.len() == 2);
    assert_eq!(
        fake.issues()[0].comments.len(),
        1,
        "the test issue untouched"
    );

    let run = s.ferry(&["notify", "test", "refused"]);
    assert_eq!(run.code(), 1, "{run}");
    assert!(
        run.stderr().contains(
            "GitHub refused the token in FERRY_OTHER_TOKEN (401: Bad credentials): check that \
             it is valid and not expired"
        ),
        "{run}"
    );
    assert!(!run.stderr().contains(&refusing.api), "{run}");
    assert!(refusing.issues().is_empty());
    token_nowhere(&s, "ghp_wrong_token_abcdef", &[1, 2]);
}

#[test]
fn a_lost_answer_opens_one_issue_a_redirect_elsewhere_and_a_down_api_say_so_without_urls() {
    let good = FakeTracker::github("acme/shop", GITHUB_TOKEN);
    let moved = FakeTracker::github("acme/shop", GITHUB_TOKEN);
    let elsewhere = FakeTracker::github("acme/shop", GITHUB_TOKEN);
    moved.redirect_to(&elsewhere.api);
    let down = format!("http://127.0.0.1:{}", free_port());
    let s = sandbox(
        github_table("good", &good.api, "FERRY_GITHUB_TOKEN")
            + &github_table("moved", &moved.api, "FERRY_GITHUB_TOKEN")
            + &github_table("down", &down, "FERRY_GITHUB_TOKEN"),
        &[("FERRY_GITHUB_TOKEN", GITHUB_TOKEN)],
    );
    s.deploy_ok("staging", "v1.0.0");
    // rate limited once (Retry-After: 1), then the issue is made but its answer lost (502)
    good.fail_next(429, 1);
    good.fail_after_create(502);
    deploy_fails(&s, "v1.1.0");
    let sent = delivery(&s, "good", 2);
    assert_eq!(
        (sent.state.as_str(), sent.attempts, sent.answer.as_deref()),
        ("sent", 3, Some("opened #1")),
        "{sent:?}\n{:#?}",
        good.seen()
    );
    assert_eq!(
        good.issues().len(),
        1,
        "one issue, found again by the retry"
    );
    let statuses: Vec<(String, u16)> = good
        .seen()
        .iter()
        .map(|r| (r.method.clone(), r.status))
        .collect();
    assert!(
        statuses.contains(&("GET".into(), 429)) && statuses.contains(&("POST".into(), 502)),
        "{statuses:?}"
    );

    // a redirect to another server is not followed: the token stays home
    let redirected = delivery(&s, "moved", 2);
    assert_eq!(redirected.state, "failed", "{redirected:?}");
    let error = redirected.error.unwrap();
    assert!(
        error.contains("redirects elsewhere (to 127.0.0.1); set `api` to where it lives"),
        "{error}"
    );
    assert!(elsewhere.seen().is_empty(), "{:#?}", elsewhere.seen());

    // nothing listening: retried, and the error names no URL
    assert!(eventually(Duration::from_secs(20), || deliveries(&s)
        .iter()
        .any(|d| d.notifier == "down" && d.error.is_some())));
    let d = deliveries(&s)
        .into_iter()
        .find(|d| d.notifier == "down" && d.error.is_some())
        .unwrap();
    let error = d.error.unwrap();
    assert!(error.starts_with("cannot reach GitHub to "), "{error}");
    assert!(
        !error.contains("/repos/") && !error.contains(&down),
        "{error}"
    );
    token_nowhere(&s, GITHUB_TOKEN, &[1, 2]);
}

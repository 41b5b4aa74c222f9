use std::cell::RefCell;

use super::*;
use crate::store::{Deployment, DeploymentState, Store};

fn deployment(id: i64, kind: &str, state: DeploymentState) -> Deployment {
    Deployment {
        id,
        environment: "staging".into(),
        kind: kind.into(),
        git_ref: "v1.1.0".into(),
        commit_sha: Some("0123456789abcdef".into()),
        version: Some("v1.1.0".into()),
        release: None,
        digest: None,
        state,
        step: None,
        reason: Some("health failed".into()),
        triggered_by: "alice".into(),
        created_at: "2026-12-02T12:00:00.000Z".into(),
        finished_at: Some("2026-12-02T12:00:05.000Z".into()),
        note: None,
        forced: false,
        restore_data: false,
        approved_by: None,
        approved_at: None,
        triggered_token: None,
        approved_token: None,
    }
}

fn message(event: &'static str, d: Option<Deployment>) -> Message {
    Message {
        event,
        app: "shop".into(),
        environment: "staging".into(),
        deployment: d,
        steps: Vec::new(),
        probes: Vec::new(),
        detail: None,
        who: Some("alice".into()),
        link: Some("http://ferry.test/deployments/1".into()),
        at: "2026-12-02T12:00:05.000Z".into(),
    }
}

fn failed(id: i64) -> Message {
    message(
        "deploy.failed",
        Some(deployment(id, "deploy", DeploymentState::Failed)),
    )
}

fn succeeded(id: i64) -> Message {
    message(
        "deploy.succeeded",
        Some(deployment(id, "deploy", DeploymentState::Succeeded)),
    )
}

fn row(state: IssueState, last: Option<i64>) -> NotifyIssue {
    NotifyIssue {
        notifier: "gh".into(),
        environment: "staging".into(),
        target: "t".into(),
        number: 1,
        url: "u".into(),
        opened_by: Some(1),
        last_deployment: last,
        state,
        opened_at: String::new(),
        updated_at: String::new(),
    }
}

#[test]
fn failures_report_and_only_a_deploys_success_resolves() {
    let open = row(IssueState::Open, Some(1));
    assert_eq!(plan(&failed(2), None, true), Plan::Report);
    assert_eq!(plan(&failed(2), Some(&open), true), Plan::Report);
    let monitor = message(
        "rolled_back",
        Some(deployment(2, "deploy", DeploymentState::RolledBack)),
    );
    assert_eq!(plan(&monitor, None, true), Plan::Report);
    assert_eq!(
        plan(&succeeded(2), Some(&open), true),
        Plan::Resolve {
            comment: true,
            close: true
        }
    );
    assert_eq!(
        plan(&succeeded(2), Some(&open), false),
        Plan::Resolve {
            comment: true,
            close: false
        }
    );
    // a retry of the same success after its comment went out closes without a second one
    let commented = row(IssueState::Recovered, Some(2));
    assert_eq!(
        plan(&succeeded(2), Some(&commented), true),
        Plan::Resolve {
            comment: false,
            close: true
        }
    );
    assert!(matches!(
        plan(&succeeded(3), Some(&commented), false),
        Plan::Nothing(_)
    ));
    assert!(matches!(plan(&succeeded(2), None, true), Plan::Nothing(_)));
    let closed = row(IssueState::Closed, Some(2));
    assert!(matches!(
        plan(&succeeded(3), Some(&closed), true),
        Plan::Nothing(_)
    ));
    let restart = message(
        "deploy.succeeded",
        Some(deployment(2, "restart", DeploymentState::Succeeded)),
    );
    assert!(matches!(
        plan(&restart, Some(&open), true),
        Plan::Nothing(_)
    ));
    let manual = message(
        "rolled_back",
        Some(deployment(2, "rollback", DeploymentState::Succeeded)),
    );
    assert_eq!(
        plan(&manual, Some(&open), true),
        Plan::Nothing("a manual rollback files no issue")
    );
    assert!(matches!(
        plan(&message("deploy.started", None), Some(&open), true),
        Plan::Nothing(_)
    ));
    assert_eq!(plan(&message("test", None), None, true), Plan::Test);
}

/// An in-memory tracker: issues (open?), comments, and what each call should answer instead.
#[derive(Default)]
struct Memory {
    issues: RefCell<Vec<(Issue, Vec<String>, String)>>,
    calls: RefCell<Vec<String>>,
    fail: RefCell<Vec<(&'static str, Failure)>>,
}

impl Memory {
    fn take_failure(&self, call: &'static str) -> Result<(), Failure> {
        self.calls.borrow_mut().push(call.to_string());
        let mut fail = self.fail.borrow_mut();
        match fail.iter().position(|(c, _)| *c == call) {
            Some(i) => Err(fail.remove(i).1),
            None => Ok(()),
        }
    }
}

impl Api for Memory {
    fn target(&self) -> String {
        "memory acme/shop".into()
    }
    fn limits(&self) -> Limits {
        Limits {
            title: 40,
            body: 2000,
        }
    }
    async fn open(&self, title: &str, body: &str) -> Result<Issue, Failure> {
        self.take_failure("open")?;
        assert!(title.chars().count() <= 40 && body.chars().count() <= 2000);
        let mut issues = self.issues.borrow_mut();
        let n = issues.len() as i64 + 1;
        let issue = Issue {
            number: n,
            url: format!("https://tracker.test/acme/shop/issues/{n}"),
            open: true,
        };
        issues.push((issue.clone(), Vec::new(), format!("{title}\n{body}")));
        drop(issues);
        // the issue is made, and then the answer is lost
        self.take_failure("opened")?;
        Ok(issue)
    }
    async fn get(&self, number: i64) -> Result<Option<Issue>, Failure> {
        self.take_failure("get")?;
        Ok(self
            .issues
            .borrow()
            .iter()
            .find(|(i, _, _)| i.number == number)
            .map(|(i, _, _)| i.clone()))
    }
    async fn find(&self, marker: &str) -> Result<Option<Issue>, Failure> {
        self.take_failure("find")?;
        Ok(self
            .issues
            .borrow()
            .iter()
            .rev()
            .find(|(_, _, text)| text.contains(marker))
            .map(|(i, _, _)| i.clone()))
    }
    async fn comment(&self, number: i64, body: &str) -> Result<bool, Failure> {
        self.take_failure("comment")?;
        assert!(body.chars().count() <= 2000);
        let mut issues = self.issues.borrow_mut();
        match issues.iter_mut().find(|(i, _, _)| i.number == number) {
            Some(i) => {
                i.1.push(body.to_string());
                drop(issues);
                // the comment is made, and then the answer is lost
                self.take_failure("commented")?;
                Ok(true)
            }
            None => Ok(false),
        }
    }
    async fn commented(&self, number: i64, marker: &str, _since: &str) -> Result<bool, Failure> {
        self.take_failure("list comments")?;
        Ok(self
            .issues
            .borrow()
            .iter()
            .filter(|(i, _, _)| i.number == number)
            .any(|(_, comments, _)| comments.iter().any(|c| c.contains(marker))))
    }
    async fn close(&self, number: i64) -> Result<bool, Failure> {
        self.take_failure("close")?;
        let mut issues = self.issues.borrow_mut();
        match issues.iter_mut().find(|(i, _, _)| i.number == number) {
            Some(i) => {
                i.0.open = false;
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    ctx: Ctx,
    notifier: Notify,
    cfg: Tracker,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("ferry.db")).unwrap();
    let cfg = Tracker {
        api: "https://api.github.com".into(),
        repository: "acme/shop".into(),
        token_env: "FERRY_GITHUB_TOKEN".into(),
        labels: Vec::new(),
        close_on_success: true,
    };
    Setup {
        _dir: dir,
        ctx: Ctx {
            http: crate::notify::client().unwrap(),
            store,
        },
        notifier: Notify {
            name: "gh".into(),
            events: Vec::new(),
            kind: crate::config::NotifyKind::GithubIssue(cfg.clone()),
        },
        cfg,
    }
}

impl Setup {
    async fn send(&self, api: &Memory, msg: &Message) -> Result<Delivered, Failure> {
        deliver(&self.ctx, &self.notifier, &self.cfg, api, msg).await
    }
}

#[tokio::test]
async fn a_failure_opens_the_next_comments_and_a_success_comments_and_closes() {
    let s = setup();
    let api = Memory::default();
    let first = s.send(&api, &failed(1)).await.unwrap();
    assert_eq!(first.answer, "opened #1");
    assert_eq!(
        first.link.as_deref(),
        Some("https://tracker.test/acme/shop/issues/1")
    );
    let again = s.send(&api, &failed(2)).await.unwrap();
    assert_eq!(again.answer, "commented on #1");
    let fixed = s.send(&api, &succeeded(3)).await.unwrap();
    assert_eq!(fixed.answer, "commented on and closed #1");
    assert_eq!(
        fixed.link.as_deref(),
        Some("https://tracker.test/acme/shop/issues/1")
    );
    {
        let issues = api.issues.borrow();
        assert_eq!(issues.len(), 1);
        let (issue, comments, _) = &issues[0];
        assert!(!issue.open);
        assert_eq!(comments.len(), 2);
        assert!(
            comments[1].starts_with("✅ shop `v1.1.0` (`0123456`) is live on **staging**"),
            "{}",
            comments[1]
        );
        assert!(comments[1].contains("ferry closes this issue now."));
    }
    // nothing open: a success does nothing, the next failure opens a new one
    let quiet = s.send(&api, &succeeded(4)).await.unwrap();
    assert!(quiet.answer.starts_with("skipped"), "{}", quiet.answer);
    assert_eq!(quiet.link, None);
    assert_eq!(s.send(&api, &failed(5)).await.unwrap().answer, "opened #2");
    let row = s.ctx.store.notify_issue("gh", "staging").unwrap().unwrap();
    assert_eq!(
        (row.number, row.opened_by, row.state),
        (2, Some(5), IssueState::Open)
    );
}

#[tokio::test]
async fn an_issue_closed_by_someone_is_left_alone_and_a_new_one_opened() {
    let s = setup();
    let api = Memory::default();
    s.send(&api, &failed(1)).await.unwrap();
    api.issues.borrow_mut()[0].0.open = false;
    let next = s.send(&api, &failed(2)).await.unwrap();
    assert_eq!(next.answer, "opened #2 (#1 was closed or deleted)");
    assert!(
        api.issues.borrow()[0].1.is_empty(),
        "no comment on the closed one"
    );
    // deleted (the tracker no longer knows it): the success says so and touches nothing
    api.issues.borrow_mut().clear();
    let fixed = s.send(&api, &succeeded(3)).await.unwrap();
    assert_eq!(fixed.answer, "#2 was already closed or deleted");
    assert_eq!(
        s.ctx
            .store
            .notify_issue("gh", "staging")
            .unwrap()
            .unwrap()
            .state,
        IssueState::Closed
    );
}

#[tokio::test]
async fn without_close_on_success_a_success_only_comments_once() {
    let mut s = setup();
    s.cfg.close_on_success = false;
    let api = Memory::default();
    s.send(&api, &failed(1)).await.unwrap();
    assert_eq!(
        s.send(&api, &succeeded(2)).await.unwrap().answer,
        "commented on #1"
    );
    assert!(
        s.send(&api, &succeeded(3))
            .await
            .unwrap()
            .answer
            .starts_with("skipped")
    );
    assert!(api.issues.borrow()[0].0.open);
    // failing again while it is still open comments on it
    assert_eq!(
        s.send(&api, &failed(4)).await.unwrap().answer,
        "commented on #1"
    );
    assert_eq!(api.issues.borrow()[0].1.len(), 2);
}

#[tokio::test]
async fn a_retried_success_does_not_comment_twice_and_a_refused_one_changes_nothing() {
    let s = setup();
    let api = Memory::default();
    s.send(&api, &failed(1)).await.unwrap();
    api.fail
        .borrow_mut()
        .push(("close", Failure::Retry("GitHub answered 502".into())));
    assert_eq!(
        s.send(&api, &succeeded(2)).await.unwrap_err(),
        Failure::Retry("GitHub answered 502".into())
    );
    assert_eq!(
        s.send(&api, &succeeded(2)).await.unwrap().answer,
        "closed #1"
    );
    assert_eq!(api.issues.borrow()[0].1.len(), 1, "one success comment");
    assert!(!api.issues.borrow()[0].0.open);

    // a refused open remembers nothing
    api.fail.borrow_mut().push((
        "open",
        Failure::Fatal("the token cannot open issues".into()),
    ));
    assert!(matches!(
        s.send(&api, &failed(3)).await,
        Err(Failure::Fatal(_))
    ));
    assert_eq!(
        s.ctx
            .store
            .notify_issue("gh", "staging")
            .unwrap()
            .unwrap()
            .number,
        1
    );
}

#[tokio::test]
async fn a_manual_rollback_is_skipped_and_a_test_closes_its_own_issue() {
    let s = setup();
    let api = Memory::default();
    s.send(&api, &failed(1)).await.unwrap();
    let manual = message(
        "rolled_back",
        Some(deployment(2, "rollback", DeploymentState::Succeeded)),
    );
    let skipped = s.send(&api, &manual).await.unwrap();
    assert_eq!(skipped.answer, "skipped: a manual rollback files no issue");
    assert_eq!(skipped.link, None);
    assert!(api.issues.borrow()[0].0.open);
    assert!(api.issues.borrow()[0].1.is_empty());

    let test = s.send(&api, &message("test", None)).await.unwrap();
    assert_eq!(test.answer, "opened, commented on and closed test issue #2");
    let issues = api.issues.borrow();
    assert!(!issues[1].0.open);
    assert!(
        issues[1].2.starts_with("[ferry test] shop: "),
        "{}",
        issues[1].2
    );
    assert!(
        issues[1].2.contains("- Asked by: `alice`"),
        "{}",
        issues[1].2
    );
    // the test is not remembered: the environment's issue is still #1
    assert_eq!(
        s.ctx
            .store
            .notify_issue("gh", "staging")
            .unwrap()
            .unwrap()
            .number,
        1
    );
}

#[tokio::test]
async fn an_issue_remembered_for_another_repository_is_not_used() {
    let s = setup();
    let api = Memory::default();
    s.send(&api, &failed(1)).await.unwrap();
    s.ctx
        .store
        .notify_issue_opened("gh", "staging", "elsewhere", 1, "u", Some(1))
        .unwrap();
    assert_eq!(
        s.send(&api, &failed(2)).await.unwrap().answer,
        "opened #2 (#1 of the repository configured before is left as it is)"
    );
    assert!(api.issues.borrow()[0].1.is_empty());
}

#[test]
fn names_people_chose_are_code_spans_never_mentions_or_markup() {
    assert_eq!(code("v1.2.0"), "`v1.2.0`");
    assert_eq!(code("@acme/ops"), "`@acme/ops`");
    assert_eq!(code("a`b``c"), "```a`b``c```");
    assert_eq!(code("`x"), "`` `x ``");
    assert_eq!(code("two\nlines"), "`two lines`");

    let mut d = deployment(2, "deploy", DeploymentState::Succeeded);
    d.triggered_by = "@acme/ops".into();
    d.version = Some("@acme/team`#1".into());
    let comment = success_comment(&message("deploy.succeeded", Some(d)), true);
    assert!(
        comment.contains("shop ``@acme/team`#1`` (`0123456`) is live on **staging**")
            && comment.contains("by `@acme/ops` succeeded"),
        "{comment}"
    );
}

#[tokio::test]
async fn an_open_whose_answer_was_lost_is_found_again_not_opened_twice() {
    let s = setup();
    let api = Memory::default();
    api.fail
        .borrow_mut()
        .push(("opened", Failure::Retry("GitHub answered 502".into())));
    assert!(matches!(
        s.send(&api, &failed(1)).await,
        Err(Failure::Retry(_))
    ));
    assert_eq!(
        api.issues.borrow().len(),
        1,
        "made, though the answer was lost"
    );
    let retried = s.send(&api, &failed(1)).await.unwrap();
    assert_eq!(retried.answer, "opened #1");
    assert_eq!(api.issues.borrow().len(), 1, "found, not opened again");
    let row = s.ctx.store.notify_issue("gh", "staging").unwrap().unwrap();
    assert_eq!((row.number, row.opened_by), (1, Some(1)));
    // another deployment's failure is not that issue's marker: it comments
    assert_eq!(
        s.send(&api, &failed(2)).await.unwrap().answer,
        "commented on #1"
    );
}

#[tokio::test]
async fn an_issue_deleted_between_the_read_and_the_comment_gets_a_new_one() {
    let s = setup();
    let api = Memory::default();
    s.send(&api, &failed(1)).await.unwrap();
    // the tracker still shows #1 open, and then it is gone when ferry comments on it
    let shown = api.issues.borrow_mut().remove(0).0;
    struct Vanishing<'a>(&'a Memory, Issue);
    impl Api for Vanishing<'_> {
        fn target(&self) -> String {
            self.0.target()
        }
        fn limits(&self) -> Limits {
            self.0.limits()
        }
        async fn open(&self, t: &str, b: &str) -> Result<Issue, Failure> {
            self.0.open(t, b).await
        }
        async fn get(&self, _: i64) -> Result<Option<Issue>, Failure> {
            Ok(Some(self.1.clone()))
        }
        async fn find(&self, m: &str) -> Result<Option<Issue>, Failure> {
            self.0.find(m).await
        }
        async fn comment(&self, n: i64, b: &str) -> Result<bool, Failure> {
            self.0.comment(n, b).await
        }
        async fn commented(&self, n: i64, m: &str, since: &str) -> Result<bool, Failure> {
            self.0.commented(n, m, since).await
        }
        async fn close(&self, n: i64) -> Result<bool, Failure> {
            self.0.close(n).await
        }
    }
    let api = Vanishing(&api, shown);
    let d = deliver(&s.ctx, &s.notifier, &s.cfg, &api, &failed(2))
        .await
        .unwrap();
    assert_eq!(d.answer, "opened #1 (#1 was closed or deleted)");
}

#[test]
fn a_long_report_is_cut_with_its_code_fence_closed_and_a_pointer_to_the_rest() {
    let msg = failed(7);
    let body = format!(
        "## Output\n\n````\n{}\n````\n\n## End\n",
        "a very long line ``` with backticks\n".repeat(200)
    );
    let cut = cut_markdown(&body, 1000, &msg);
    assert!(cut.chars().count() <= 1000, "{}", cut.chars().count());
    assert!(
        cut.ends_with("\n````\n\n*(cut here: the tracker takes 1000 characters; `ferry show 7` has all of it)*\n"),
        "{cut}"
    );
    assert_eq!(cut_markdown("short", 1000, &msg), "short");
    // outside a fence nothing is added but the note
    let plain = "word ".repeat(500);
    let cut = cut_markdown(&plain, 300, &msg);
    assert!(!cut.contains("```") && cut.chars().count() <= 300, "{cut}");
    assert_eq!(cut_two("hé"), "hé");
}

fn cut_two(s: &str) -> String {
    cut(s, 2)
}

#[tokio::test]
async fn a_comment_whose_answer_was_lost_is_not_posted_twice() {
    let s = setup();
    let api = Memory::default();
    s.send(&api, &failed(1)).await.unwrap();
    api.fail
        .borrow_mut()
        .push(("commented", Failure::Retry("GitHub answered 502".into())));
    assert!(s.send(&api, &failed(2)).await.is_err());
    assert_eq!(
        s.send(&api, &failed(2)).await.unwrap().answer,
        "commented on #1"
    );
    assert_eq!(
        api.issues.borrow()[0].1.len(),
        1,
        "one comment for deployment 2"
    );
    // the same for the success's comment
    api.fail
        .borrow_mut()
        .push(("commented", Failure::Retry("GitHub answered 502".into())));
    assert!(s.send(&api, &succeeded(3)).await.is_err());
    assert_eq!(
        s.send(&api, &succeeded(3)).await.unwrap().answer,
        "commented on and closed #1"
    );
    assert_eq!(api.issues.borrow()[0].1.len(), 2);
    assert!(!api.issues.borrow()[0].0.open);
}

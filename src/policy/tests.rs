use super::*;
use crate::release::{RefKind, Resolved};
use crate::store::{Check, DeploymentState, Store};

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";
const OTHER: &str = "fedcba9876543210fedcba9876543210fedcba98";

struct Fixture {
    _dir: tempfile::TempDir,
    config: Config,
    store: Store,
}

fn fixture(production: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let ok = std::process::Command::new("git")
        .args(["init", "-q"])
        .arg(dir.path().join("repo"))
        .status()
        .unwrap();
    assert!(ok.success());
    let text = format!(
        r#"[app]
name = "demo"
repo = "repo"
start = "./run"

[environments.staging]
listen = "127.0.0.1:18081"
slots = 2

[environments.production]
listen = "127.0.0.1:18080"
track = {{ tags = true }}
requires = "staging"
{production}
"#
    );
    let path = dir.path().join("ferry.toml");
    std::fs::write(&path, text).unwrap();
    let config = Config::load(&path).unwrap();
    let store = Store::open(&dir.path().join("ferry.db")).unwrap();
    Fixture {
        _dir: dir,
        config,
        store,
    }
}

fn tag(version: &str, commit: &str) -> Resolved {
    Resolved {
        commit: commit.to_string(),
        version: version.to_string(),
        kind: RefKind::Tag,
    }
}

impl Fixture {
    fn gates(&self, resolved: &Resolved, force: Option<&str>) -> Evaluation {
        let env = self.config.environment("production").unwrap();
        let ask = Ask {
            env,
            resolved,
            force,
            now: Utc::now(),
        };
        evaluate(&self.config, &self.store, &ask).unwrap()
    }

    fn gate(&self, resolved: &Resolved, name: &str) -> Gate {
        let eval = self.gates(resolved, None);
        eval.gates.into_iter().find(|g| g.name == name).unwrap()
    }

    fn deployed(&self, env: &str, version: &str, commit: &str) -> i64 {
        let id = self
            .store
            .create_deployment(env, "deploy", version, "ann", DeploymentState::Running)
            .unwrap();
        let release = format!("{version}-{}", &commit[..7]);
        self.store
            .set_resolved(id, commit, version, &release)
            .unwrap();
        self.store
            .set_state(id, DeploymentState::Succeeded, None)
            .unwrap();
        id
    }

    fn verify(&self, env: &str, version: &str, commit: &str) {
        self.store
            .add_verification(&Verification {
                id: 0,
                environment: env.into(),
                version: version.into(),
                commit_sha: commit.into(),
                release: format!("{version}-{}", &commit[..7]),
                digest: "sha256:x".into(),
                deployment_id: None,
                verified_by: "qa".into(),
                verified_at: crate::store::now(),
                verified_token: None,
            })
            .unwrap();
    }
}

#[test]
fn release_tags_are_plain_semver_with_a_v() {
    assert!(release_tag("v1.2.3", false).is_ok());
    assert!(release_tag("v0.10.0", false).is_ok());
    for bad in [
        "1.2.3",
        "v1.2",
        "v1.2.3.4",
        "v01.2.3",
        "v1.2.3+build.5",
        "release-1",
        "main",
    ] {
        let err = release_tag(bad, true).unwrap_err();
        assert!(err.contains("is not a release tag"), "{bad}: {err}");
    }
    let err = release_tag("v1.2.0-rc.1", false).unwrap_err();
    assert!(
        err.contains("pre-release") && err.contains("prerelease = true"),
        "{err}"
    );
    assert!(release_tag("v1.2.0-rc.1", true).is_ok());
}

#[test]
fn tag_gate_refuses_branches_commits_and_non_release_tags() {
    let f = fixture("");
    let branch = Resolved {
        commit: SHA.into(),
        version: "main".into(),
        kind: RefKind::Branch,
    };
    let g = f.gate(&branch, "tag");
    assert_eq!(g.verdict, Verdict::Fail);
    assert!(g.detail.contains("takes release tags only") && g.detail.contains("branch"));
    assert_eq!(f.gate(&tag("nightly", SHA), "tag").verdict, Verdict::Fail);
    assert_eq!(f.gate(&tag("v1.0.0", SHA), "tag").verdict, Verdict::Pass);
}

#[test]
fn promotion_gate_says_what_is_missing() {
    let f = fixture("");
    let t = tag("v1.2.3", SHA);
    let g = f.gate(&t, "promotion");
    assert_eq!(g.verdict, Verdict::Fail);
    assert_eq!(g.detail, "v1.2.3 was never deployed to staging");

    f.deployed("staging-1", "v1.2.3", SHA);
    let g = f.gate(&t, "promotion");
    assert_eq!(
        g.detail,
        "v1.2.3 on staging-1 is not verified: run `ferry verify staging-1 v1.2.3`"
    );

    // a sign-off of the same tag at another commit (the tag was moved) does not count
    f.verify("staging-2", "v1.2.3", OTHER);
    let g = f.gate(&t, "promotion");
    assert_eq!(g.verdict, Verdict::Fail);
    assert!(
        g.detail
            .contains("at commit fedcba9, but it is now commit 0123456"),
        "{}",
        g.detail
    );

    f.verify("staging-1", "v1.2.3", SHA);
    let eval = f.gates(&t, None);
    let g = eval.gates.iter().find(|g| g.name == "promotion").unwrap();
    assert_eq!(g.verdict, Verdict::Pass, "{}", g.detail);
    assert!(g.detail.contains("verified on staging-1 by qa"));
    assert!(eval.refusal().is_none());
    assert_eq!(eval.verified.unwrap().environment, "staging-1");
}

#[test]
fn checks_gate_needs_the_newest_report_to_pass() {
    let f = fixture("require_checks = [\"ci\", \"lint\"]");
    f.deployed("staging-1", "v1.0.0", SHA);
    f.verify("staging-1", "v1.0.0", SHA);
    let t = tag("v1.0.0", SHA);
    let report = |name: &str, status: &str| {
        f.store
            .add_check(&Check {
                commit_sha: SHA.into(),
                name: name.into(),
                status: status.into(),
                url: None,
                reported_by: "ci".into(),
                reported_at: crate::store::now(),
            })
            .unwrap();
    };
    let g = f.gate(&t, "checks");
    assert_eq!(g.verdict, Verdict::Fail);
    assert!(
        g.detail
            .contains("check \"ci\" was never reported for 0123456")
    );
    report("ci", "success");
    report("lint", "failure");
    let g = f.gate(&t, "checks");
    assert_eq!(g.detail, "check \"lint\" is failure on 0123456");
    report("lint", "success");
    assert_eq!(f.gate(&t, "checks").verdict, Verdict::Pass);
    report("ci", "failure");
    assert_eq!(f.gate(&t, "checks").verdict, Verdict::Fail);
}

#[test]
fn freeze_gate_refuses_unless_forced_with_a_reason() {
    let f = fixture("freeze = [\"2000-01-01 - 2999-12-31\"]\ntimezone = \"Europe/Berlin\"");
    let t = tag("v1.0.0", SHA);
    let g = f.gate(&t, "freeze");
    assert_eq!(g.verdict, Verdict::Fail);
    assert!(g.detail.contains("--force --reason"), "{}", g.detail);
    let eval = f.gates(&t, Some("hotfix for outage"));
    let g = eval.gates.iter().find(|g| g.name == "freeze").unwrap();
    assert_eq!(g.verdict, Verdict::Pass);
    assert!(g.detail.contains("forced: hotfix for outage"));
}

#[test]
fn lock_gate_names_the_holder_and_reason() {
    let f = fixture("approval = true\nbackup = [\"data/app.db\"]");
    f.store
        .lock_manually("production", "alice", "db migration")
        .unwrap()
        .unwrap();
    let eval = f.gates(&tag("v1.0.0", SHA), None);
    let lock = eval.gates.iter().find(|g| g.name == "lock").unwrap();
    assert_eq!(lock.verdict, Verdict::Fail);
    assert!(lock.detail.contains("locked by alice") && lock.detail.contains("db migration"));
    let approval = eval.gates.iter().find(|g| g.name == "approval").unwrap();
    assert_eq!(approval.verdict, Verdict::Wait);
    let backup = eval.gates.iter().find(|g| g.name == "backup").unwrap();
    assert_eq!(backup.detail, "snapshots data/app.db before start");
    assert!(eval.refusal().unwrap().contains("locked by alice"));
}

#[test]
fn promotion_gate_takes_the_commit_verified_under_a_branch() {
    let f = fixture("");
    f.deployed("staging-1", "main", SHA);
    f.verify("staging-1", "main", SHA);
    let eval = f.gates(&tag("v1.2.0", SHA), None);
    let g = eval.gates.iter().find(|g| g.name == "promotion").unwrap();
    assert_eq!(g.verdict, Verdict::Pass, "{}", g.detail);
    assert!(
        g.detail
            .starts_with("v1.2.0 (0123456) verified on staging-1 as main-0123456 by qa"),
        "{}",
        g.detail
    );
    let v = eval.verified.unwrap();
    assert_eq!(
        (v.release.as_str(), v.version.as_str()),
        ("main-0123456", "main")
    );

    // a tag at a commit never verified names both commits
    let g = f.gate(&tag("v1.3.0", OTHER), "promotion");
    assert_eq!(g.verdict, Verdict::Fail);
    assert_eq!(
        g.detail,
        "v1.3.0 was never deployed to staging: v1.3.0 is commit fedcba9, and the newest commit verified on staging is 0123456 (main-0123456 on staging-1); tag that commit, or deploy v1.3.0 to staging and verify it"
    );
    // deployed under the branch but not signed off
    f.deployed("staging-2", "main", OTHER);
    let g = f.gate(&tag("v1.3.0", OTHER), "promotion");
    assert_eq!(
        g.detail,
        "v1.3.0 is commit fedcba9, deployed to staging-2 as main-fedcba9 but not verified: run `ferry verify staging-2` while it runs there"
    );
}

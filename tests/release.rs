//! `ferry release` in a real git repository: the CHANGELOG.md section, the commit, the
//! annotated tag, the push, and the refusals.

mod support;

use std::path::Path;
use std::process::Command;

use support::{FERRY, git_identity, sh};

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn release(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = git_identity(
        Command::new(FERRY)
            .arg("release")
            .args(args)
            .current_dir(dir),
    )
    .output()
    .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn commit(dir: &Path, file: &str, message: &str) {
    std::fs::write(dir.join(file), message).unwrap();
    sh(
        dir,
        &format!("git add . && git commit -q -F - <<'EOF'\n{message}\nEOF"),
    );
}

#[test]
fn release_notes_from_feat_fix_and_breaking_commits() {
    let tmp = tempfile::tempdir().unwrap();
    let origin = tmp.path().join("origin.git");
    let repo = tmp.path().join("app");
    std::fs::create_dir(&repo).unwrap();
    sh(tmp.path(), "git init -q --bare origin.git");
    sh(
        &repo,
        "git init -q -b main && git remote add origin ../origin.git",
    );
    commit(&repo, "a", "first");
    sh(&repo, "git tag -a v1.2.0 -m v1.2.0");
    commit(&repo, "b", "feat(search): filter by city");
    // another author, with a co-author: both are named in the section
    std::fs::write(repo.join("c"), "c").unwrap();
    sh(
        &repo,
        "git add . && git commit -q --author 'Bob Builder <bob@example.com>' \
         -m 'fix: crash on an empty query' -m 'Co-authored-by: Carol <carol@example.com>'",
    );
    commit(&repo, "d", "feat!: drop the v1 API");
    commit(
        &repo,
        "e",
        "refactor: rename settings\n\nBREAKING CHANGE: SETTINGS_PATH is now CONFIG_PATH",
    );
    commit(&repo, "f", "docs: explain deploys");

    let (code, out, err) = release(&repo, &["minor", "--push"]);
    assert_eq!(code, 0, "{out}{err}");
    let changelog = std::fs::read_to_string(repo.join("CHANGELOG.md")).unwrap();
    let today = chrono::Local::now().format("%Y-%m-%d").to_string();
    let sha = |subject: &str| {
        git(&repo, &["log", "--format=%h", "--grep", subject, "-n1"])
            .trim()
            .to_string()
    };
    let section = format!(
        "## [1.3.0] - {today}\n\n\
         ### Breaking\n\n- drop the v1 API ({})\n- rename settings ({})\n\n\
         ### Added\n\n- **search:** filter by city ({})\n\n\
         ### Fixed\n\n- crash on an empty query ({})\n\n\
         ### Changed\n\n- explain deploys ({})\n\n\
         ### Contributors\n\n- t\n- Bob Builder\n- Carol\n",
        sha("drop the v1"),
        sha("rename settings"),
        sha("filter by city"),
        sha("empty query"),
        sha("explain deploys")
    );
    assert!(changelog.starts_with("# Changelog\n"), "{changelog}");
    assert!(changelog.contains("[Keep a Changelog]"));
    assert!(changelog.ends_with(&section), "{changelog}");

    // committed, tree clean, the tag annotated with the section as its message
    assert_eq!(git(&repo, &["status", "--porcelain"]), "");
    assert_eq!(
        git(&repo, &["log", "-1", "--format=%s"]).trim(),
        "chore(release): v1.3.0"
    );
    assert_eq!(git(&repo, &["cat-file", "-t", "v1.3.0"]).trim(), "tag");
    let message = git(&repo, &["tag", "-l", "--format=%(contents)", "v1.3.0"]);
    assert_eq!(message.trim_end(), section.trim_end());
    // pushed: the remote has the tag and the commit
    assert_eq!(
        git(&origin, &["rev-parse", "v1.3.0^{commit}"]),
        git(&repo, &["rev-parse", "HEAD"])
    );

    // the next release lists only what came after, above the previous section
    commit(&repo, "g", "fix: second fix");
    let (code, out, err) = release(&repo, &["patch"]);
    assert_eq!(code, 0, "{out}{err}");
    let changelog = std::fs::read_to_string(repo.join("CHANGELOG.md")).unwrap();
    let newer = changelog.find("## [1.3.1]").unwrap();
    assert!(newer < changelog.find("## [1.3.0]").unwrap());
    assert!(!changelog[newer..changelog.find("## [1.3.0]").unwrap()].contains("drop the v1 API"));
}

#[test]
fn release_refuses_dirty_trees_other_branches_and_old_versions() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path();
    sh(repo, "git init -q -b main");
    commit(repo, "a", "feat: one");
    sh(repo, "git tag v2.0.0");
    commit(repo, "b", "fix: two");

    std::fs::write(repo.join("b"), "edited").unwrap();
    let (code, _, err) = release(repo, &["patch"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("uncommitted changes") && err.contains("--allow-dirty"),
        "{err}"
    );
    // with --allow-dirty only CHANGELOG.md is committed
    let (code, _, err) = release(repo, &["patch", "--allow-dirty"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(git(repo, &["status", "--porcelain"]).trim(), "M b");
    sh(repo, "git checkout -q b");

    commit(repo, "c", "fix: three");
    let (code, _, err) = release(repo, &["1.0.0"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("not newer than the last release v2.0.1"),
        "{err}"
    );
    let (code, _, err) = release(repo, &["huge"]);
    assert_eq!(code, 2, "{err}");

    sh(repo, "git checkout -q -b feature/x");
    let (code, _, err) = release(repo, &["patch"]);
    assert_eq!(code, 1);
    assert!(err.contains("this is feature/x"), "{err}");
    let (code, out, err) = release(repo, &["3.0.0", "--allow-branch", "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("## [3.0.0]") && out.contains("- three"),
        "{out}"
    );
    assert!(
        git(repo, &["tag", "-l", "v3.0.0"]).is_empty(),
        "a dry run tags nothing"
    );

    let (code, _, _) = release(&repo.join(".git"), &["patch"]);
    assert_ne!(code, 0);
}

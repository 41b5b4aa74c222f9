use std::process::Command;

use super::*;

fn sh(dir: &Path, script: &str) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A repo with `v1.0.0` on the first commit and `main` one commit ahead.
fn repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    sh(
        dir.path(),
        "git init -q -b main repo && cd repo && git config user.email t@t && git config user.name t \
         && echo one > app.txt && mkdir data && echo repo > data/db && git add . && git commit -qm one \
         && git tag v1.0.0 && echo two > app.txt && git commit -qam two",
    );
    dir
}

#[test]
fn refs_that_could_escape_or_inject_are_refused() {
    for bad in [
        "",
        "-rf",
        "../x",
        "a/../b",
        "a b",
        "v1;rm -rf /",
        "$(id)",
        "a`b`",
        "/abs",
        "x/",
        "a..b",
        "HEAD@{1}",
        "x.lock",
    ] {
        assert!(check_ref(bad).is_err(), "{bad:?} was accepted");
    }
    for good in [
        "v1.0.0",
        "main",
        "feature/login",
        "v2.0.0-rc.1",
        "v1.0.0+build.5",
        "abc1234",
    ] {
        check_ref(good).unwrap();
    }
}

#[tokio::test]
async fn resolves_tags_branches_and_shas_through_the_mirror() {
    let dir = repo();
    let mirror = dir.path().join("state/mirror.git");
    let repo = dir.path().join("repo");
    sync_mirror(repo.to_str().unwrap(), &mirror).await.unwrap();
    let tag = resolve(&mirror, "v1.0.0").await.unwrap();
    assert_eq!(tag.kind, RefKind::Tag);
    let main = resolve(&mirror, "main").await.unwrap();
    assert_eq!(main.kind, RefKind::Branch);
    assert_ne!(tag.commit, main.commit);
    let by_sha = resolve(&mirror, &main.commit[..10]).await.unwrap();
    assert_eq!(
        (by_sha.kind, by_sha.commit.as_str()),
        (RefKind::Commit, main.commit.as_str())
    );
    assert_eq!(tag.release_name(), format!("v1.0.0-{}", &tag.commit[..7]));
    assert!(matches!(
        resolve(&mirror, "v9.9.9").await,
        Err(ReleaseError::UnknownRef { .. })
    ));

    // a new tag in the repo is seen after the next sync
    sh(&repo, "git tag v1.1.0");
    assert!(resolve(&mirror, "v1.1.0").await.is_err());
    sync_mirror(repo.to_str().unwrap(), &mirror).await.unwrap();
    assert_eq!(
        resolve(&mirror, "v1.1.0").await.unwrap().commit,
        main.commit
    );
}

#[tokio::test]
async fn export_links_shared_paths_without_overwriting_them() {
    let dir = repo();
    let mirror = dir.path().join("mirror.git");
    sync_mirror(dir.path().join("repo").to_str().unwrap(), &mirror)
        .await
        .unwrap();
    let tag = resolve(&mirror, "v1.0.0").await.unwrap();
    let dest = dir.path().join("releases").join(tag.release_name());
    export(&mirror, &tag.commit, &dest).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(dest.join("app.txt")).unwrap(),
        "one\n"
    );
    assert!(!dest.join(".git").exists());

    let shared = dir.path().join("shared");
    std::fs::create_dir_all(shared.join("config")).unwrap();
    std::fs::write(shared.join("config/.env"), "SECRET=1\n").unwrap();
    link_shared(&dest, &shared, &["data/".into(), "config/.env".into()]).unwrap();
    // the repo's data/ went away in favour of the (new, empty) shared one
    assert!(
        std::fs::symlink_metadata(dest.join("data"))
            .unwrap()
            .is_symlink()
    );
    assert!(!shared.join("data/db").exists());
    std::fs::write(dest.join("data/live.db"), "live").unwrap();
    assert_eq!(
        std::fs::read_to_string(shared.join("data/live.db")).unwrap(),
        "live"
    );

    let err = link_shared(&dest, &shared, &["config/missing.env".into()]).unwrap_err();
    assert!(err.to_string().contains("config/missing.env"), "{err}");
    assert!(!shared.join("config/missing.env").exists());
}

#[tokio::test]
async fn commands_report_failure_output_and_time_out() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_command(
        dir.path(),
        "echo hello; echo oops >&2",
        &[],
        &Default::default(),
        Duration::from_secs(5),
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(out, "hello\noops\n");
    let vars = [("GREETING".to_string(), "hi".to_string())];
    let err = run_command(
        dir.path(),
        "echo $GREETING; exit 3",
        &vars,
        &Default::default(),
        Duration::from_secs(5),
        |_| {},
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("exited with status 3"), "{err}");
    assert_eq!(err.output(), "hi\n");
    // a timed-out command's background children die with it
    let err = run_command(
        dir.path(),
        "sleep 30 & sleep 30",
        &[],
        &Default::default(),
        Duration::from_millis(200),
        |_| {},
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("timed out after 200ms"), "{err}");
}

#[tokio::test]
async fn a_daemon_holding_the_output_open_does_not_hold_the_command() {
    let dir = tempfile::tempdir().unwrap();
    // a build tool's daemon: out of the process group, stdout still open
    let pidfile = dir.path().join("daemon.pid");
    let command = format!(
        "echo building; setsid sh -c 'echo $$ > {0}; exec sleep 60' & \
         while [ ! -s {0} ]; do sleep 0.01; done; echo built",
        pidfile.display()
    );
    let confinement = crate::sandbox::Confinement::default();
    let run = run_command(
        dir.path(),
        &command,
        &[],
        &confinement,
        Duration::from_secs(30),
        |_| {},
    );
    // bounded only so a regression fails instead of hanging the suite
    let out = tokio::time::timeout(Duration::from_secs(25), run)
        .await
        .expect("run_command waited for the daemon's output")
        .unwrap();
    assert!(out.starts_with("building\nbuilt\n"), "{out}");
    assert!(out.contains("still holds its output open"), "{out}");
    if let Ok(pid) = std::fs::read_to_string(&pidfile) {
        let _ = std::process::Command::new("kill").arg(pid.trim()).status();
    }
}

#[test]
fn digest_changes_with_content_and_not_with_mtime() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::write(dir.path().join("sub/a"), "a").unwrap();
    let first = digest(dir.path(), &[]).unwrap();
    std::fs::write(dir.path().join("sub/a"), "a").unwrap();
    assert_eq!(digest(dir.path(), &[]).unwrap(), first);
    std::fs::write(dir.path().join("sub/a"), "b").unwrap();
    assert_ne!(digest(dir.path(), &[]).unwrap(), first);
}

#[test]
fn output_tail_starts_on_a_line() {
    let long = "x".repeat(OUTPUT_TAIL_BYTES) + "\nlast line\n";
    assert_eq!(tail_text(long.as_bytes()), "last line\n");
}

#[test]
fn copied_release_has_the_same_digest_once_shared_paths_are_linked_again() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        dir.path().join("a/v1.0.0-abc"),
        dir.path().join("b/v1.0.0-abc"),
    );
    std::fs::create_dir_all(a.join("bin")).unwrap();
    std::fs::create_dir_all(dir.path().join("b")).unwrap();
    std::fs::write(a.join("bin/run"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(
        a.join("bin/run"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("bin/run", a.join("start")).unwrap();
    let shared = vec!["data/".to_string()];
    link_shared(&a, &dir.path().join("shared-a"), &shared).unwrap();
    copy_release(&a, &b, &shared).unwrap();
    assert!(!b.join("data").exists(), "shared paths are not copied");
    link_shared(&b, &dir.path().join("shared-b"), &shared).unwrap();
    assert_eq!(digest(&a, &shared).unwrap(), digest(&b, &shared).unwrap());
    // without naming the shared path, the differing link targets show
    assert_ne!(digest(&a, &[]).unwrap(), digest(&b, &[]).unwrap());
    let mode = std::fs::metadata(b.join("bin/run")).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o755
    );
}

/// Characters a shell would act on.
const SHELL_META: &[char] = &[
    ' ', '\t', '\n', ';', '&', '|', '$', '`', '(', ')', '<', '>', '*', '?', '[', ']', '{', '}',
    '\'', '"', '\\', '!', '#', '~', '=', '%', '^', ',',
];

/// What a ref accepted by [`check_ref`] may be: no option, no shell syntax, no way out of a
/// directory, and a release name that is one plain path component.
fn assert_safe(r: &str) {
    assert!(!r.starts_with('-'), "{r}");
    assert!(!r.contains(".."), "{r}");
    assert!(!r.contains(SHELL_META), "{r}");
    let resolved = Resolved {
        commit: "0123456789abcdef0123456789abcdef01234567".into(),
        version: r.to_string(),
        kind: RefKind::Tag,
    };
    let name = resolved.release_name();
    let mut parts = Path::new(&name).components();
    assert!(
        matches!(parts.next(), Some(std::path::Component::Normal(_))) && parts.next().is_none(),
        "{r} -> {name}"
    );
    let releases = Path::new("/srv/ferry/environments/prod/releases");
    assert_eq!(releases.join(&name).parent(), Some(releases), "{r}");
}

#[test]
fn hostile_refs_are_refused_before_anything_runs() {
    for r in [
        "..",
        "../../etc",
        "v1/../../x",
        "a..b",
        "/etc/passwd",
        "main/",
        "a//b",
        "-x",
        "--upload-pack=touch /tmp/pwned",
        "v1 2",
        " main",
        "main;rm -rf /",
        "$(id)",
        "`id`",
        "a|b",
        "a&b",
        "v1>x",
        "v1\nx",
        "x@{1}",
        "x.lock",
        "",
    ] {
        assert!(check_ref(r).is_err(), "{r:?} was accepted");
    }
    for r in [
        "main",
        "v1.2.3",
        "feature/login",
        "release/v1.2.3+build.5",
        "a_b-c",
    ] {
        check_ref(r).unwrap();
        assert_safe(r);
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

    #[test]
    fn any_ref_accepted_is_safe(r in "\\PC{0,40}") {
        if check_ref(&r).is_ok() {
            assert_safe(&r);
        }
    }

    #[test]
    fn any_ref_of_ref_characters_accepted_is_safe(r in "[a-z0-9./_+-]{1,30}") {
        if check_ref(&r).is_ok() {
            assert_safe(&r);
        }
    }
}

#[test]
fn trees_with_links_out_of_the_release_or_over_shared_paths_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let release = dir.path().join("release");
    std::fs::create_dir_all(release.join("src")).unwrap();
    let outside = dir.path().join("production-shared");
    std::fs::create_dir_all(&outside).unwrap();
    let shared = ["config/.env".to_string(), "data/".to_string()];
    // links inside the tree are fine, dangling ones too
    std::os::unix::fs::symlink("../README", release.join("src/readme")).unwrap();
    std::os::unix::fs::symlink("generated/later", release.join("soon")).unwrap();
    check_tree(&release, &shared).unwrap();

    let bad = |link: &str, target: &Path| {
        let at = release.join(link);
        std::os::unix::fs::symlink(target, &at).unwrap();
        let err = check_tree(&release, &shared).unwrap_err();
        std::fs::remove_file(&at).unwrap();
        err.to_string()
    };
    let err = bad("config", &outside);
    assert!(
        err.contains("at or above the shared path \"config/.env\""),
        "{err}"
    );
    let err = bad("data", Path::new("src"));
    assert!(err.contains("shared path \"data/\""), "{err}");
    let err = bad("etc", Path::new("/etc"));
    assert!(err.contains("etc -> /etc pointing out of it"), "{err}");
    let err = bad("src/up", Path::new("../../production-shared"));
    assert!(err.contains("pointing out of it"), "{err}");
    // a link to the tree's root, then `..` through it: each looks inside, together they escape
    std::os::unix::fs::symlink(".", release.join("here")).unwrap();
    let err = bad("sneaky", Path::new("here/.."));
    assert!(err.contains("sneaky"), "{err}");
}

#[test]
fn linking_shared_paths_never_writes_through_a_link() {
    let dir = tempfile::tempdir().unwrap();
    let release = dir.path().join("release");
    std::fs::create_dir_all(&release).unwrap();
    let production = dir.path().join("production/shared");
    std::fs::create_dir_all(production.join("config")).unwrap();
    std::fs::write(production.join("config/.env"), "PROD=1\n").unwrap();
    let staging = dir.path().join("staging/shared");
    std::fs::create_dir_all(staging.join("config")).unwrap();
    std::fs::write(staging.join("config/.env"), "STAGING=1\n").unwrap();
    // what a build could leave behind: config pointing at production's shared config
    std::os::unix::fs::symlink(production.join("config"), release.join("config")).unwrap();
    let err = link_shared(&release, &staging, &["config/.env".into()]).unwrap_err();
    assert!(err.to_string().contains("symlink config"), "{err}");
    assert_eq!(
        std::fs::read_to_string(production.join("config/.env")).unwrap(),
        "PROD=1\n",
        "production's env file is untouched"
    );
}

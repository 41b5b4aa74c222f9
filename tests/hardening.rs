//! Code deployed to staging gains nothing over production: the attacks of issue 14, items
//! 1, 2 and 4, replayed. A hostile branch's build reads for ferry's token and state, a
//! symlinked `config` aims at production's shared dir, a build runs `env` and prints a
//! secret file. Tests that need separate users run as root (CI) and say so when skipped.

mod support;

use std::os::unix::fs::MetadataExt;

use std::path::Path;

use support::*;

/// Whether this test process can run the app as other users; prints why a test is skipped.
fn root_or_skip(test: &str) -> bool {
    let root = nix::unistd::Uid::effective().is_root();
    if !root {
        println!(
            "SKIPPED {test}: needs root to run commands as the environment's user (CI runs as root)"
        );
    }
    root
}

/// `git add`, commit and tag everything in the sandbox's repo.
fn commit(s: &Sandbox, tag: &str) {
    sh(
        &s.repo,
        &format!("git add -A . && git commit -qm {tag} && git tag {tag}"),
    );
}

fn show(s: &Sandbox, id: &str) -> String {
    let run = s.ferry(&["show", id]);
    format!("{}{}", run.stdout(), run.stderr())
}

fn uid_of(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .unwrap()
}

#[test]
fn a_staging_build_cannot_read_ferrys_token_state_or_production() {
    if !root_or_skip("a_staging_build_cannot_read_ferrys_token_state_or_production") {
        return;
    }
    let mut s = Sandbox::with(
        &[Rel("v1.0.0", GOOD)],
        Options {
            envs: &["staging", "production"],
            extra_app: "shared = [\"data/\"]",
            ..Options::default()
        },
    );
    let state = s.state_dir();
    let state = state.display();
    // the hostile branch: its build goes looking for what makes it ferry
    let build = [
        "id -un".to_string(),
        "cat ../../../../local-token || echo LOOT-relative-token-unreadable".to_string(),
        format!("cat {state}/local-token || echo LOOT-absolute-token-unreadable"),
        format!("ls {state} || echo LOOT-state-unlistable"),
        format!("cat {state}/ferry.db > /dev/null || echo LOOT-db-unreadable"),
        format!("ls {state}/environments/production || echo LOOT-production-unreachable"),
        "touch ../planted || echo LOOT-releases-unwritable".to_string(),
        "echo built > built.txt".to_string(),
    ];
    let list: Vec<String> = build.iter().map(|c| format!("{c:?}")).collect();
    let config = std::fs::read_to_string(&s.config).unwrap().replace(
        "[app]\n",
        &format!("[app]\nbuild = [{}]\n", list.join(", ")),
    );
    std::fs::write(&s.config, config).unwrap();
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    let token = s.token();
    let out = show(&s, "1");
    assert!(out.contains("ferry-sample-staging"), "{out}");
    for marker in [
        "LOOT-relative-token-unreadable",
        "LOOT-absolute-token-unreadable",
        "LOOT-state-unlistable",
        "LOOT-db-unreadable",
        "LOOT-production-unreachable",
        "LOOT-releases-unwritable",
    ] {
        assert!(out.contains(marker), "{marker} missing: {out}");
    }
    assert!(
        !out.contains(token.trim()),
        "the build read the token: {out}"
    );
    assert!(
        !out.contains("mirror.git"),
        "the build listed the state dir: {out}"
    );

    // the app runs as the environment's user too, and cannot write its release
    let (_, pid) = s.serving("staging");
    let user = nix::unistd::User::from_name("ferry-sample-staging")
        .unwrap()
        .expect("the environment's user was created");
    assert_eq!(uid_of(pid), user.uid.as_raw());
    let releases = s.state_dir().join("environments/staging/releases");
    let release = std::fs::read_dir(&releases)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("v1.0.0-"))
        .unwrap()
        .path();
    for path in [release.clone(), release.join("built.txt")] {
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.uid(), 0, "{} is root's once built", path.display());
        assert_eq!(
            meta.mode() & 0o022,
            0,
            "{} is writable by others",
            path.display()
        );
    }
    // ... but its shared data belongs to it, and ferry's own files stay private
    let data = s.state_dir().join("environments/staging/shared/data");
    assert_eq!(std::fs::metadata(&data).unwrap().uid(), user.uid.as_raw());
    assert_eq!(
        std::fs::metadata(s.state_dir()).unwrap().mode() & 0o777,
        0o711
    );
    let token_mode = std::fs::metadata(s.state_dir().join("local-token"))
        .unwrap()
        .mode();
    assert_eq!(token_mode & 0o077, 0);
    // production has a user of its own
    assert!(
        nix::unistd::User::from_name("ferry-sample-production")
            .unwrap()
            .is_some()
    );
}

#[test]
fn a_configured_user_that_does_not_exist_stops_serve_with_a_clear_message() {
    if !root_or_skip("a_configured_user_that_does_not_exist_stops_serve_with_a_clear_message") {
        return;
    }
    let s = Sandbox::with(
        &[Rel("v1.0.0", GOOD)],
        Options {
            env_extra: &[("staging", "user = \"no-such-ferry-user\"")],
            ..Options::default()
        },
    );
    let out = std::process::Command::new(FERRY)
        .args(["serve", "-c"])
        .arg(&s.config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("user \"no-such-ferry-user\" does not exist") && err.contains("useradd"),
        "{err}"
    );
}

#[test]
fn a_symlinked_config_cannot_replace_production_shared_files() {
    let mut s = Sandbox::with(
        &[Rel("v1.0.0", GOOD)],
        Options {
            envs: &["staging", "production"],
            extra_app: "shared = [\"config/.env\"]",
            ..Options::default()
        },
    );
    let prod_config = s.state_dir().join("environments/production/shared/config");
    let stage_config = s.state_dir().join("environments/staging/shared/config");
    for (dir, text) in [
        (&prod_config, "PROD_DB=secret-prod\n"),
        (&stage_config, "X=1\n"),
    ] {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(".env"), text).unwrap();
    }
    // the hostile branch: `config` points at production's shared config
    std::os::unix::fs::symlink(&prod_config, s.repo.join("config")).unwrap();
    commit(&s, "v1.1.0");
    s.serve();
    let run = s.ferry(&["deploy", "staging", "v1.1.0"]);
    assert_eq!(run.code(), 1, "{run}");
    assert!(
        run.stdout().contains("symlink config -> ")
            && run.stdout().contains("shared path \"config/.env\""),
        "{run}"
    );
    assert_eq!(
        std::fs::read_to_string(prod_config.join(".env")).unwrap(),
        "PROD_DB=secret-prod\n",
        "production's env file is untouched"
    );
    assert!(
        std::fs::symlink_metadata(&prod_config)
            .unwrap()
            .file_type()
            .is_dir()
    );

    // a link anywhere else out of the release is refused before any of it runs
    std::fs::remove_file(s.repo.join("config")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", s.repo.join("passwords")).unwrap();
    commit(&s, "v1.2.0");
    let run = s.ferry(&["deploy", "staging", "v1.2.0"]);
    assert_eq!(run.code(), 1, "{run}");
    assert!(
        run.stdout()
            .contains("passwords -> /etc/passwd pointing out of it"),
        "{run}"
    );
}

const HOOK_SECRET: &str = "hook-secret-5f2a9c77e1";
const CLOUD_KEY: &str = "cloud-key-8b3d1e6f40";
const ENV_SECRET: &str = "db-password-0e7c2a91d3";

#[test]
fn a_build_running_env_sees_no_secret_of_ferry_and_printed_ones_are_masked() {
    let mut s = Sandbox::with(
        &[Rel("v1.0.0", GOOD)],
        Options {
            extra_app: "shared = [\"config/.env\"]\nbuild = [\"env\", \"cat config/.env\"]",
            env_extra: &[("staging", "env_file = \"config/.env\"")],
            tables: "[webhooks]\ngithub_secret_env = \"FERRY_TEST_GH\"\n",
            ..Options::default()
        },
    );
    let config = s.state_dir().join("environments/staging/shared/config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(config.join(".env"), format!("DB_PASSWORD={ENV_SECRET}\n")).unwrap();
    s.serve_env
        .push(("FERRY_TEST_GH".into(), HOOK_SECRET.into()));
    s.serve_env
        .push(("AWS_SECRET_ACCESS_KEY".into(), CLOUD_KEY.into()));
    s.serve_env
        .push(("FERRY_TOKEN".into(), "not-for-builds".into()));
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    let out = show(&s, "1");
    // the build ran `env`: it saw its own variables and nothing of ferry's environment
    assert!(out.contains("COMMIT_SHA="), "{out}");
    assert!(out.contains("HOME="), "{out}");
    for leaked in [
        HOOK_SECRET,
        CLOUD_KEY,
        "FERRY_TEST_GH",
        "AWS_SECRET",
        "FERRY_TOKEN",
    ] {
        assert!(!out.contains(leaked), "{leaked} reached the build: {out}");
    }
    // it printed the env file it can read: the value is masked in what ferry keeps
    assert!(out.contains("DB_PASSWORD=***"), "{out}");
    assert!(!out.contains(ENV_SECRET), "{out}");
    // the app prints it into its log: masked there too
    let (status, _) = get(&format!(
        "{}/log?line=app%20says%20DB_PASSWORD={ENV_SECRET}",
        s.url("staging")
    ))
    .unwrap();
    assert_eq!(status, 200);
    let log = s.state_dir().join("environments/staging/logs/app.log");
    assert!(
        eventually(std::time::Duration::from_secs(5), || {
            std::fs::read_to_string(&log).is_ok_and(|t| t.contains("app says DB_PASSWORD=***"))
        }),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(!std::fs::read_to_string(&log).unwrap().contains(ENV_SECRET));
    for file in ["ferry.db", "ferry.db-wal"] {
        let Ok(bytes) = std::fs::read(s.state_dir().join(file)) else {
            continue;
        };
        assert!(
            !bytes
                .windows(ENV_SECRET.len())
                .any(|w| w == ENV_SECRET.as_bytes()),
            "the secret is in {file}"
        );
    }
}

/// Runs `script` through `ferry confine` shutting `state` but for `read` and `write`.
fn confined(state: &Path, read: &Path, write: &Path, script: &str) -> (bool, String) {
    let out = std::process::Command::new(FERRY)
        .arg("confine")
        .arg("--state-dir")
        .arg(state)
        .arg("--read")
        .arg(read)
        .arg("--write")
        .arg(write)
        .args(["--", "sh", "-c", script])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn confined_commands_reach_only_their_own_paths_even_as_a_user_who_could_read_everything() {
    // whoever runs this (root, or ferry's own user without root): Landlock shuts the state
    // dir to the command though file permissions would let it in
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let env = state.join("environments/staging");
    let release = env.join("releases/v1");
    let shared = env.join("shared");
    for d in [
        &release,
        &shared,
        &state.join("environments/production/shared"),
    ] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(state.join("local-token"), "the-local-token").unwrap();
    std::fs::write(release.join("app.txt"), "code").unwrap();
    std::fs::write(dir.path().join("beside.txt"), "beside").unwrap();
    let (ok, out) = confined(&state, &release, &shared, "true");
    if out.contains("does not enforce Landlock") {
        println!(
            "SKIPPED confined_commands_reach_only_their_own_paths: this kernel has no Landlock"
        );
        return;
    }
    let run = |script: String| {
        confined(
            &state,
            &release,
            &shared,
            &format!("cd {} && {script}", release.display()),
        )
    };
    let (ok2, out2) = run("cat app.txt".into());
    assert!(ok && ok2, "{out}{out2}");
    let state = state.display();
    for denied in [
        format!("cat {state}/local-token"),
        "cat ../../../../local-token".to_string(),
        format!("ls {state}/environments/production"),
        "echo x > app.txt".to_string(),
        "touch new-file".to_string(),
    ] {
        let (ok, out) = run(denied.clone());
        assert!(!ok, "`{denied}` was allowed: {out}");
        assert!(!out.contains("the-local-token"), "{out}");
    }
    for allowed in [
        format!("echo data > {}/data.txt", shared.display()),
        format!("cat {}", dir.path().join("beside.txt").display()),
        "ls /usr/bin > /dev/null".to_string(),
    ] {
        let (ok, out) = run(allowed.clone());
        assert!(ok, "`{allowed}` was refused: {out}");
    }
}

//! The first ten minutes of a new user, from `git init` on: `ferry init` in a `master` repo,
//! `ferry check` warning about what a first deploy would trip on, the first deploy (nothing to
//! roll back to, every probe shown), and what the CLI, the API and the app then say.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::{FERRY, Run, eventually, free_port, get, get_with, sh};

/// The CLI run in `dir` as a person would: no `-c`, local time in UTC.
fn ferry(dir: &Path, args: &[&str]) -> Run {
    Run(Command::new(FERRY)
        .args(args)
        .current_dir(dir)
        .env("USER", "newcomer")
        .env("TZ", "UTC")
        .env_remove("FERRY_SERVER")
        .stdin(Stdio::null())
        .output()
        .unwrap())
}

/// `ferry serve`, stopped with SIGTERM when dropped.
struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.0.wait();
    }
}

#[test]
fn init_in_a_master_repo_then_check_then_the_first_deploy_works() {
    let tmp = tempfile::tempdir().unwrap();
    // as root, the app runs as another user who must pass through to its release
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .unwrap();
    let repo = tmp.path().join("shop");
    std::fs::create_dir(&repo).unwrap();
    sh(&repo, "git init -q -b master");

    let run = ferry(&repo, &["init"]);
    assert_eq!(run.code(), 0, "{run}");
    assert!(run.stdout().contains("staging tracks master"), "{run}");
    assert!(
        run.stdout().contains("run `ferry check`"),
        "no -c for the default config: {run}"
    );
    let text = std::fs::read_to_string(repo.join("ferry.toml")).unwrap();
    assert!(text.contains("track = { branch = \"master\" }"), "{text}");
    assert!(text.contains("nothing to roll back to"), "{text}");

    // an empty repo: check says so
    let run = ferry(&repo, &["check"]);
    assert_eq!(run.code(), 0, "{run}");
    assert!(run.stderr().contains("has no commits yet"), "{run}");

    // the template's start program is not in the repo
    std::fs::write(repo.join(".gitignore"), ".ferry/\n").unwrap();
    std::fs::write(repo.join("app.conf"), "health_status = 200\n").unwrap();
    sh(&repo, "git add . && git commit -qm 'first'");
    let run = ferry(&repo, &["check"]);
    assert!(
        run.stderr()
            .contains("start runs ./server, which is not in the repo at HEAD"),
        "{run}"
    );

    // the user's own settings: their app, free ports, a short watch
    let (staging, production, api) = (free_port(), free_port(), free_port());
    let text = text
        .replace(
            "start = \"./server --port $PORT\"",
            &format!("start = \"'{FERRY}' sample-app\""),
        )
        .replace("127.0.0.1:8081", &format!("127.0.0.1:{staging}"))
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{production}"))
        .replace("127.0.0.1:7070", &format!("127.0.0.1:{api}"))
        .replace("duration = \"5m\"", "duration = \"1s\"")
        .replace("interval = \"30s\"", "interval = \"200ms\"")
        .replace("interval = \"1s\"", "interval = \"100ms\"");
    std::fs::write(repo.join("ferry.toml"), text).unwrap();
    let run = ferry(&repo, &["check"]);
    assert_eq!(run.code(), 0, "{run}");
    assert!(run.stderr().is_empty(), "no warning left: {run}");

    let log = std::fs::File::create(tmp.path().join("serve.log")).unwrap();
    let _serve = Serve(
        Command::new(FERRY)
            .arg("serve")
            // the app goes with it (by default it would outlive serve)
            .arg("--stop-apps")
            .current_dir(&repo)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let api_url = format!("http://127.0.0.1:{api}");
    assert!(eventually(Duration::from_secs(20), || get(&format!(
        "{api_url}/health"
    ))
    .is_some()));

    // a ref the repo does not have: what it has instead, and a hint without defaults
    let run = ferry(&repo, &["deploy", "staging", "main"]);
    assert_eq!(run.code(), 1, "{run}");
    assert!(
        run.stdout().contains("ref \"main\" was not found")
            && run.stdout().contains("branches: master"),
        "{run}"
    );
    assert!(run.stdout().contains("details: ferry show 1)"), "{run}");

    let run = ferry(&repo, &["deploy", "staging", "master"]);
    assert_eq!(run.code(), 0, "{run}");
    let out = run.stdout();
    let said = out
        .find("nothing to roll back to")
        .unwrap_or_else(|| panic!("{run}"));
    let first_probe = out.find("probe 1/5").unwrap_or_else(|| panic!("{run}"));
    assert!(said < first_probe, "said before monitoring:\n{run}");
    assert!(out.contains("Ctrl-C stops following"), "{run}");
    for n in 1..=5 {
        assert!(out.contains(&format!("probe {n}/5")), "probe {n}:\n{run}");
    }

    // the API says what the app was given
    let (_, body) = get(&format!("http://127.0.0.1:{staging}/version")).unwrap();
    let app: serde_json::Value = serde_json::from_str(&body).unwrap();
    let token = std::fs::read_to_string(repo.join(".ferry/local-token")).unwrap();
    let (_, body) = get_with(
        &format!("{api_url}/api/environments/staging/version"),
        Some(&token),
    )
    .unwrap();
    let version: serde_json::Value = serde_json::from_str(&body).unwrap();
    for key in ["environment", "slot", "deployed_at"] {
        assert!(app[key].is_string(), "{key}: {app}");
        assert_eq!(version[key], app[key], "{key}: {version} vs {app}");
    }

    // history of every environment, times with their offset
    let run = ferry(&repo, &["history"]);
    assert_eq!(run.code(), 0, "{run}");
    assert!(
        run.stdout().contains("staging") && run.stdout().contains("+00:00"),
        "{run}"
    );
    let run = ferry(&repo, &["status"]);
    assert!(run.stdout().contains("+00:00 by newcomer"), "{run}");

    let serve_log = std::fs::read_to_string(tmp.path().join("serve.log")).unwrap();
    assert!(!serve_log.contains('\x1b'), "colour codes in serve.log");
}

#[test]
fn every_argument_has_help_and_init_lists_only_what_applies() {
    let help = |args: &[&str]| {
        let run = Run(Command::new(FERRY).args(args).output().unwrap());
        assert_eq!(run.code(), 0, "{run}");
        run.stdout()
    };
    let init = help(&["init", "--help"]);
    assert!(
        init.contains("--force") && init.contains("--config"),
        "{init}"
    );
    assert!(!init.contains("--server"), "{init}");
    let release = help(&["release", "--help"]);
    assert!(!release.contains("--server"), "{release}");
    assert!(help(&["deploy", "--help"]).contains("--server"));
}

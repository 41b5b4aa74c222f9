//! The CLI a person enjoys: completions and man pages generated from the command line, a
//! closed pipe ending quietly, tables that stay aligned, short step lines, and a rollback
//! that asks for its reason on a terminal.

mod support;

use std::process::{Command, Stdio};

use support::*;

/// Runs `ferry <args>` (no config needed).
fn ferry(args: &[&str]) -> Run {
    Run(Command::new(FERRY)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap())
}

#[test]
fn completions_generate_for_bash_zsh_and_fish() {
    let dir = tempfile::tempdir().unwrap();
    for (shell, marker, checker) in [
        ("bash", "complete -F", "bash"),
        ("zsh", "#compdef ferry", "zsh"),
        ("fish", "complete -c ferry", "fish"),
    ] {
        let run = ferry(&["completions", shell]);
        assert_eq!(run.code(), 0, "{shell}: {run}");
        let script = run.stdout();
        assert!(
            script.contains(marker),
            "{shell}: no {marker:?} in\n{script}"
        );
        for sub in ["deploy", "promote", "rollback", "completions"] {
            assert!(script.contains(sub), "{shell}: {sub} not completed");
        }
        // ferry's own plumbing is not offered
        assert!(
            !script.contains("sample-app"),
            "{shell} offers a hidden command"
        );
        let file = dir.path().join(format!("ferry.{shell}"));
        std::fs::write(&file, &script).unwrap();
        let parsed = Command::new(checker).arg("-n").arg(&file).output();
        match parsed {
            Ok(out) => assert!(
                out.status.success(),
                "{checker} -n rejects the script: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => println!("{shell}: syntax check skipped, no {checker} here ({e})"),
        }
    }
    let run = ferry(&["completions", "tcsh"]);
    assert_eq!(run.code(), 2, "an unknown shell is a usage error: {run}");
    assert!(
        run.stderr().contains("bash"),
        "the shells are listed: {run}"
    );
}

#[test]
fn the_man_page_renders_and_a_page_per_subcommand_is_written() {
    let run = ferry(&["man"]);
    assert_eq!(run.code(), 0, "{run}");
    assert!(run.stdout().starts_with(".ie") || run.stdout().contains(".TH ferry 1"));
    assert!(run.stdout().contains("deploy"), "{run}");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("man1");
    let run = ferry(&["man", "--dir", out.to_str().unwrap()]);
    assert_eq!(run.code(), 0, "{run}");
    for page in [
        "ferry.1",
        "ferry-deploy.1",
        "ferry-rollback.1",
        "ferry-token-create.1",
    ] {
        let text = std::fs::read_to_string(out.join(page)).unwrap_or_default();
        assert!(text.contains(".TH"), "{page} missing or empty");
    }
    assert!(
        !out.join("ferry-confine.1").exists(),
        "a hidden command got a page"
    );
}

/// Runs `ferry -c <config> <args>` with its stdout a pipe whose reader is already gone.
fn into_closed_pipe(s: &Sandbox, args: &[&str]) -> Run {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    Run(Command::new(FERRY)
        .arg("-c")
        .arg(&s.config)
        .args(args)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap())
}

#[test]
fn a_closed_pipe_ends_quietly_and_tables_stay_aligned() {
    let mut s = Sandbox::new(&[Rel("v1.0.0", GOOD), Rel("v1.1.0", GOOD)]);
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    // a deployer whose name is longer than any fixed column
    let long_user = "release-bot-of-the-platform-team-in-ci";
    let run = Run(Command::new(FERRY)
        .arg("-c")
        .arg(&s.config)
        .args(["deploy", "staging", "v1.1.0"])
        .env("USER", long_user)
        .stdin(Stdio::null())
        .output()
        .unwrap());
    assert_eq!(run.code(), 0, "{run}");

    // the step lines name release dirs relative to the state dir
    let state = s.state_dir().display().to_string();
    assert!(
        run.stdout()
            .contains("environments/staging/releases/v1.1.0-"),
        "{run}"
    );
    assert!(
        !run.stdout().contains(&state),
        "a full path in the step lines:\n{run}"
    );
    let show = s.ferry(&["show", "2"]);
    assert!(
        !show.stdout().contains(&state),
        "a full path in ferry show:\n{show}"
    );

    for args in [
        &["history", "--json"][..],
        &["history"],
        &["status"],
        &["status", "--json"],
        &["show", "1"],
        &["completions", "bash"],
        &["man"],
    ] {
        let run = into_closed_pipe(&s, args);
        assert_eq!(run.code(), 0, "ferry {args:?} into a closed pipe: {run}");
        assert!(
            run.stderr().is_empty(),
            "ferry {args:?} said something: {run}"
        );
    }
    // the way people write it
    let piped = Command::new("bash")
        .arg("-c")
        .arg(r#"set -o pipefail; "$0" -c "$1" history --json | head -n 1"#)
        .arg(FERRY)
        .arg(&s.config)
        .output()
        .unwrap();
    assert!(piped.status.success(), "{piped:?}");
    assert_eq!(String::from_utf8_lossy(&piped.stdout), "[\n");

    let status = s.ferry(&["status"]).stdout();
    let lines: Vec<&str> = status.lines().collect();
    let header = lines[0];
    let row = lines
        .iter()
        .find(|l| l.starts_with("staging"))
        .expect("a row for staging");
    assert!(row.contains(long_user), "{status}");
    let health_at = header.find("HEALTH").unwrap();
    assert_eq!(
        row.get(health_at..health_at + 7),
        Some("healthy"),
        "HEALTH is not under its header:\n{status}"
    );
    let url_at = header.find("URL").unwrap();
    assert_eq!(row.get(url_at..url_at + 7), Some("http://"), "{status}");

    let history = s.ferry(&["history"]).stdout();
    let header = history.lines().next().unwrap();
    let created_at = header.find("CREATED").unwrap();
    for row in history.lines().skip(1) {
        assert!(
            row.get(created_at..created_at + 2) == Some("20"),
            "CREATED is not under its header:\n{history}"
        );
    }
}

#[test]
fn rollback_without_a_reason_asks_for_one_on_a_terminal() {
    if Command::new("script").arg("--version").output().is_err() {
        println!("SKIPPED rollback_without_a_reason_asks_for_one_on_a_terminal: no script(1)");
        return;
    }
    let mut s = Sandbox::new(&[Rel("v1.0.0", GOOD), Rel("v1.1.0", GOOD)]);
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    s.deploy_ok("staging", "v1.1.0");

    // script(1) gives ferry a terminal; the answers are typed into it
    let line = format!(
        "{} -c {} rollback staging --no-wait",
        FERRY,
        s.config.display()
    );
    let mut child = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"the checkout page is slow\nstaging\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("Why roll back?"), "{text}");
    let history = s.ferry(&["history", "staging", "--json"]).json();
    assert_eq!(history[0]["kind"], "rollback", "{history}");
    assert_eq!(history[0]["note"], "the checkout page is slow", "{history}");

    // an empty answer rolls nothing back
    let mut child = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let history = s.ferry(&["history", "staging", "--json"]).json();
    assert_eq!(history.as_array().unwrap().len(), 3, "{history}");
}

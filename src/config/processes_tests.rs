//! `[processes]`.

use super::*;

fn with(processes: &str) -> String {
    format!("{MINIMAL}\n[processes]\n{processes}\n").replace("start = \"./run\"\n", "")
}

#[test]
fn a_web_process_is_start_and_the_others_get_defaults() {
    let dir = sandbox();
    let text = with(
        "web = \"./server\"\nworker = \"./work\"\nscheduler = { command = \"./cron\", count = 0, stop_timeout = \"30s\" }",
    );
    let config = parse(dir.path(), &text).unwrap();
    assert_eq!(config.app.start, "./server");
    assert_eq!(
        config.app.processes,
        vec![
            ProcessType {
                name: "scheduler".into(),
                command: "./cron".into(),
                count: 0,
                stop_timeout: std::time::Duration::from_secs(30),
            },
            ProcessType {
                name: "worker".into(),
                command: "./work".into(),
                count: 1,
                stop_timeout: std::time::Duration::from_secs(10),
            },
        ]
    );
    // `start` alone is web, and a worker's grace defaults to [app] stop_timeout
    let text = format!("{MINIMAL}\n[processes]\nworker = {{ command = \"./w\", count = 64 }}\n")
        .replace(
            "start = \"./run\"",
            "start = \"./run\"\nstop_timeout = \"3s\"",
        );
    let config = parse(dir.path(), &text).unwrap();
    assert_eq!(config.app.start, "./run");
    assert_eq!(config.app.processes[0].count, 64);
    assert_eq!(
        config.app.processes[0].stop_timeout,
        std::time::Duration::from_secs(3)
    );
    assert!(parse(dir.path(), MINIMAL).unwrap().app.processes.is_empty());
}

#[test]
fn start_and_web_together_are_refused_at_web() {
    let dir = sandbox();
    let text = format!("{MINIMAL}\n[processes]\nweb = \"./server\"\n");
    let d = diagnostic(dir.path(), &text);
    assert!(d.message.contains("given twice"), "{d}");
    assert_eq!(
        d.line,
        text.lines().position(|l| l.starts_with("web")).unwrap() + 1
    );
    assert_eq!(d.column, 1);
}

#[test]
fn bad_process_types_are_refused_with_their_place() {
    let dir = sandbox();
    for (processes, expect, at) in [
        (
            "web = \"./s\"\nWorker = \"./w\"",
            "process name \"Worker\"",
            "Worker",
        ),
        (
            "web = \"./s\"\napp = \"./w\"",
            "process name \"app\"",
            "app",
        ),
        (
            "web = \"./s\"\nworker = { command = \"./w\", count = 65 }",
            "count = 65",
            "65",
        ),
        (
            "web = \"./s\"\nworker = { command = \"./w\", count = -1 }",
            "count = -1",
            "-1",
        ),
        (
            "web = \"./s\"\nworker = \"  \"",
            "the command is empty",
            "\"  \"",
        ),
        (
            "web = \"./s\"\nworker = { count = 2 }",
            "`command` is missing",
            "{",
        ),
        (
            "web = { command = \"./s\", count = 2 }",
            "web: count = 2",
            "2",
        ),
        (
            "web = { command = \"./s\", stop_timeout = \"1s\" }",
            "belongs to [app]",
            "\"1s\"",
        ),
        (
            "web = \"./s\"\nworker = { command = \"./w\", every = \"1m\" }",
            "unknown field",
            "every",
        ),
        ("web = \"./s\"\nworker = 3", "a command, or a table", "3"),
        (
            "web = \"./s\"\nworker = { command = \"./w\", stop_timeout = \"soon\" }",
            "duration",
            "\"soon\"",
        ),
    ] {
        let text = with(processes);
        let d = diagnostic(dir.path(), &text);
        assert!(d.message.contains(expect), "{processes}: {d}");
        let line = text.lines().nth(d.line - 1).unwrap();
        let col: usize = line.chars().take(d.column - 1).count();
        assert!(
            line[col..].starts_with(at),
            "{processes}: pointed at {:?} in {line:?}\n{d}",
            &line[col..]
        );
    }
    // no web and no start: the app has nothing to route to
    let d = diagnostic(dir.path(), &with("worker = \"./w\""));
    assert!(d.message.contains("no `start`"), "{d}");
}

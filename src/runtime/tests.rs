use std::time::Instant;

use super::process::spawn;
use super::*;
use std::path::Path;

fn spec(dir: &Path, start: &str) -> InstanceSpec {
    InstanceSpec {
        release_dir: dir.to_path_buf(),
        start: start.to_string(),
        port: 4321,
        vars: vec![
            ("PORT".into(), "4321".into()),
            ("APP_VERSION".into(), "v1".into()),
        ],
        secrets: Secrets::default(),
        confinement: Default::default(),
        output: dir.join("run/4321.out"),
        ..Default::default()
    }
}

#[tokio::test]
async fn instance_gets_its_variables_and_secrets_and_logs_its_output() {
    let dir = tempfile::tempdir().unwrap();
    let env_file = dir.path().join(".env");
    std::fs::write(&env_file, "# secrets\nexport API_KEY=\"s3cr3t\"\nOTHER=x\n").unwrap();
    let secrets = Secrets::read(&env_file).unwrap();
    assert_eq!(format!("{secrets:?}"), "{\"API_KEY\", \"OTHER\"}");
    let log = LogSink::open(dir.path().join("logs/app.log")).unwrap();
    let mut spec = spec(
        dir.path(),
        "echo port=$PORT version=$APP_VERSION key=$API_KEY; echo err >&2",
    );
    spec.secrets = secrets;
    let instance = spawn(&spec, &log).unwrap();
    assert!(instance.wait_exit().await.unwrap().success());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let text = std::fs::read_to_string(log.path()).unwrap();
    assert!(text.contains("port=4321 version=v1 key=s3cr3t"), "{text}");
    assert!(text.contains("err"), "{text}");
}

#[test]
fn env_file_syntax_errors_name_the_line_not_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(".env");
    std::fs::write(&path, "A=1\nthis-is-secret\n").unwrap();
    let err = Secrets::read(&path).unwrap_err().to_string();
    assert!(err.contains("line 2"), "{err}");
    assert!(!err.contains("this-is-secret"), "{err}");
}

#[tokio::test]
async fn stop_kills_the_group_of_an_instance_that_ignores_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let log = LogSink::open(dir.path().join("app.log")).unwrap();
    let marker = dir.path().join("child.pid");
    let start = format!(
        "trap '' TERM; sleep 60 & echo $! > {}; wait",
        marker.display()
    );
    let instance = spawn(&spec(dir.path(), &start), &log).unwrap();
    while !marker.exists() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let child: u32 = std::fs::read_to_string(&marker)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let started = Instant::now();
    instance.stop(Duration::from_millis(300)).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(instance.exited().is_some());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        process_start_time(child).is_none(),
        "background child survived"
    );
}

#[test]
fn log_rotates_and_keeps_three_files() {
    let dir = tempfile::tempdir().unwrap();
    let log = LogSink::open(dir.path().join("app.log")).unwrap();
    let chunk = vec![b'x'; 1024 * 1024];
    for _ in 0..35 {
        log.write(&chunk);
    }
    let size = |name: &str| std::fs::metadata(dir.path().join(name)).map(|m| m.len());
    assert!(size("app.log").unwrap() <= LOG_ROTATE_BYTES);
    assert_eq!(size("app.log.1").unwrap(), 10 * 1024 * 1024);
    assert_eq!(size("app.log.2").unwrap(), 10 * 1024 * 1024);
    assert!(size("app.log.3").is_err());
}

#[test]
fn process_start_time_is_read_for_live_pids_only() {
    assert!(process_start_time(std::process::id()).is_some());
    assert!(process_start_time(u32::MAX - 1).is_none());
}

#[tokio::test]
async fn a_secret_written_in_two_pieces_is_masked_whole_and_a_prompt_still_reaches_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let redactor = Arc::new(crate::sandbox::Redactor::default());
    redactor.add(["abc-secret-xyz"]);
    let log = LogSink::open(dir.path().join("app.log"))
        .unwrap()
        .with_redactor(redactor);
    let start = "printf 'key=abc-sec'; sleep 0.05; printf 'ret-xyz\\n'; printf 'prompt> '; sleep 1";
    let instance = spawn(&spec(dir.path(), start), &log).unwrap();
    // the unfinished prompt line is written once nothing more comes for a moment
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut text = String::new();
    while Instant::now() < deadline && !text.contains("prompt> ") {
        tokio::time::sleep(Duration::from_millis(50)).await;
        text = std::fs::read_to_string(log.path()).unwrap_or_default();
    }
    assert!(text.contains("key=***\n"), "{text}");
    assert!(text.contains("prompt> "), "{text}");
    assert!(!text.contains("abc-sec"), "{text}");
    instance.stop(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn an_instance_keeps_its_last_lines_masked_and_cut() {
    let dir = tempfile::tempdir().unwrap();
    let redactor = Arc::new(crate::sandbox::Redactor::default());
    redactor.add(["hunter2-secret-value"]);
    let log = LogSink::open(dir.path().join("logs/app.log"))
        .unwrap()
        .with_redactor(redactor);
    let long = "x".repeat(LAST_LINE_CHARS + 100);
    let script = format!(
        "i=1; while [ $i -le 50 ]; do echo line $i; i=$((i+1)); done; \
         echo {long}; printf 'key=hunter2-secret-value\\r\\n'"
    );
    let instance = spawn(&spec(dir.path(), &script), &log).unwrap();
    instance.wait_exit().await;
    let lines = instance.last_lines().await;
    assert_eq!(lines.len(), LAST_LINES, "{lines:?}");
    assert_eq!(lines[0], "line 13");
    assert_eq!(lines[LAST_LINES - 3], "line 50");
    assert_eq!(lines[LAST_LINES - 2].chars().count(), LAST_LINE_CHARS + 1);
    assert_eq!(lines[LAST_LINES - 1], "key=***");
}

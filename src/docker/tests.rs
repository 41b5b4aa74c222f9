//! The docker command lines ferry builds and the answers it reads, without a daemon; and the
//! wrapper's behaviour around a stand-in `docker` program (missing, hung, failing).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

fn strings(args: Vec<OsString>) -> Vec<String> {
    args.into_iter().map(|a| a.into_string().unwrap()).collect()
}

fn spec() -> RunSpec {
    RunSpec {
        name: "ferry-shop-staging-4100".into(),
        image: "sha256:abc".into(),
        labels: vec![
            ("ferry.app".into(), "shop".into()),
            ("ferry.env".into(), "staging".into()),
        ],
        network: Network::Host,
        env_file: Some(PathBuf::from("/var/lib/ferry/env/staging.env")),
        mounts: vec![Mount {
            source: PathBuf::from("/var/lib/ferry/shared"),
            target: "/app/shared".into(),
            readonly: true,
        }],
        user: Some("1000:1000".into()),
        stop_timeout: Duration::from_millis(1500),
        init: true,
        workdir: Some("/app".into()),
        command: Some(vec!["httpd".into(), "-f".into()]),
        log_max_size: Some("10m".into()),
    }
}

#[test]
fn run_args_are_flag_equals_value_with_the_image_after_a_double_dash() {
    let args = strings(run_args(&spec()).unwrap());
    assert_eq!(
        args,
        [
            "run",
            "--detach",
            "--pull=never",
            "--name=ferry-shop-staging-4100",
            "--label=ferry.app=shop",
            "--label=ferry.env=staging",
            "--network=host",
            "--env-file=/var/lib/ferry/env/staging.env",
            "--mount=type=bind,source=/var/lib/ferry/shared,target=/app/shared,readonly",
            "--user=1000:1000",
            "--stop-timeout=2",
            "--security-opt=no-new-privileges",
            "--cap-drop=NET_RAW",
            "--init",
            "--workdir=/app",
            "--log-driver=json-file",
            "--log-opt=max-size=10m",
            "--log-opt=max-file=3",
            "--",
            "sha256:abc",
            "httpd",
            "-f",
        ]
    );
    assert!(!args.contains(&"--rm".to_string()));
}

#[test]
fn the_minimal_run_runs_the_images_cmd() {
    let s = RunSpec {
        labels: vec![],
        env_file: None,
        mounts: vec![],
        user: None,
        init: false,
        workdir: None,
        command: None,
        log_max_size: None,
        stop_timeout: Duration::from_secs(10),
        ..spec()
    };
    let args = strings(run_args(&s).unwrap());
    assert_eq!(
        args,
        [
            "run",
            "--detach",
            "--pull=never",
            "--name=ferry-shop-staging-4100",
            "--network=host",
            "--stop-timeout=10",
            "--security-opt=no-new-privileges",
            "--cap-drop=NET_RAW",
            "--",
            "sha256:abc",
        ]
    );
}

#[test]
fn a_published_port_is_on_loopback_only() {
    let s = RunSpec {
        network: Network::Publish {
            host_port: 4100,
            container_port: 8080,
        },
        ..spec()
    };
    let args = strings(run_args(&s).unwrap());
    assert!(args.contains(&"--publish=127.0.0.1:4100:8080".to_string()));
    assert!(!args.iter().any(|a| a.contains("--network")));
}

#[test]
fn mount_paths_with_commas_or_quotes_are_quoted_as_csv() {
    let m = Mount {
        source: PathBuf::from("/srv/a,b \"c\""),
        target: "/data".into(),
        readonly: false,
    };
    assert_eq!(
        mount_arg(&m).unwrap(),
        "type=bind,\"source=/srv/a,b \"\"c\"\"\",target=/data"
    );
}

#[test]
fn relative_or_multiline_mounts_are_refused() {
    let relative = Mount {
        source: PathBuf::from("shared"),
        target: "/data".into(),
        readonly: false,
    };
    assert!(matches!(
        mount_arg(&relative),
        Err(DockerError::Invalid { .. })
    ));
    let target = Mount {
        source: PathBuf::from("/srv"),
        target: "data".into(),
        readonly: false,
    };
    assert!(matches!(
        mount_arg(&target),
        Err(DockerError::Invalid { .. })
    ));
    let newline = Mount {
        source: PathBuf::from("/srv/a\nb"),
        target: "/data".into(),
        readonly: false,
    };
    assert!(matches!(
        mount_arg(&newline),
        Err(DockerError::Invalid { .. })
    ));
}

#[test]
fn names_with_spaces_and_label_keys_with_equals_are_refused() {
    let bad_name = RunSpec {
        name: "a b".into(),
        ..spec()
    };
    let e = run_args(&bad_name).unwrap_err();
    assert!(e.to_string().contains("container name"), "{e}");
    let empty = RunSpec {
        image: String::new(),
        ..spec()
    };
    assert!(run_args(&empty).is_err());
    let bad_label = RunSpec {
        labels: vec![("a=b".into(), "c".into())],
        ..spec()
    };
    assert!(run_args(&bad_label).is_err());
    assert!(label_filters(&[("k=".into(), "v".into())]).is_err());
}

#[test]
fn build_args_name_file_tag_labels_and_iidfile_then_the_context() {
    let args = strings(
        build_args(
            Path::new("/tmp/ctx"),
            Path::new("/tmp/ctx/Dockerfile"),
            "ferry/shop:v1.2.0-abcdef0",
            &[("ferry.version".into(), "v1.2.0".into())],
            Path::new("/tmp/iid"),
        )
        .unwrap(),
    );
    assert_eq!(
        args,
        [
            "build",
            "--force-rm",
            "--file=/tmp/ctx/Dockerfile",
            "--tag=ferry/shop:v1.2.0-abcdef0",
            "--label=ferry.version=v1.2.0",
            "--iidfile=/tmp/iid",
            "--",
            "/tmp/ctx",
        ]
    );
}

#[test]
fn label_filters_select_every_label() {
    let args = strings(
        label_filters(&[("ferry.app".into(), "shop".into()), ("x".into(), "".into())]).unwrap(),
    );
    assert_eq!(args, ["--filter=label=ferry.app=shop", "--filter=label=x="]);
}

#[test]
fn grace_is_rounded_up_to_whole_seconds() {
    assert_eq!(ceil_secs(Duration::ZERO), 0);
    assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
    assert_eq!(ceil_secs(Duration::from_secs(10)), 10);
    assert_eq!(ceil_secs(Duration::from_millis(10_001)), 11);
}

#[test]
fn env_file_is_literal_lines_and_private() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.env");
    std::fs::write(&path, "OLD=1\n").unwrap();
    write_env_file(
        &path,
        &[
            ("PORT".into(), "4100".into()),
            ("GREETING".into(), "a \"quoted\" = value ".into()),
        ],
    )
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "PORT=4100\nGREETING=a \"quoted\" = value \n"
    );
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn env_file_refuses_what_docker_would_misread_without_echoing_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.env");
    for name in ["", "A B", "1A", "A=B", "-x"] {
        let e = write_env_file(&path, &[(name.into(), "v".into())]).unwrap_err();
        assert!(matches!(e, DockerError::Invalid { .. }), "{name}: {e}");
    }
    let e = write_env_file(&path, &[("TOKEN".into(), "s3cret\nX=1".into())]).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("TOKEN") && !msg.contains("s3cret"), "{msg}");
}

#[test]
fn run_spec_debug_shows_the_env_file_path_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.env");
    write_env_file(&path, &[("API_KEY".into(), "hunter2-value".into())]).unwrap();
    let s = RunSpec {
        env_file: Some(path.clone()),
        ..spec()
    };
    let debug = format!("{s:?}");
    assert!(debug.contains("app.env"));
    assert!(!debug.contains("hunter2") && !debug.contains("API_KEY"));
    let args = format!("{:?}", run_args(&s).unwrap());
    assert!(!args.contains("hunter2"));
}

#[test]
fn inspect_json_becomes_container_info() {
    let json = r#"[
      {"Id":"abc123","Name":"/ferry-shop-1","Image":"sha256:img",
       "State":{"Status":"running","Running":true,"ExitCode":0,
                "StartedAt":"2026-12-01T23:09:22Z","FinishedAt":"0001-01-01T00:00:00Z"},
       "Config":{"Image":"ferry/shop:v1","Labels":{"ferry.app":"shop"}}},
      {"Id":"def456","Name":"/ferry-shop-2","Image":"sha256:img",
       "State":{"Status":"exited","Running":false,"ExitCode":137,
                "StartedAt":"2026-12-01T23:09:22Z","FinishedAt":"2026-12-01T23:10:00Z"},
       "Config":{"Labels":null}},
      {"Id":"ghi789","Name":"/ferry-shop-3","Image":"sha256:img",
       "State":{"Status":"created","Running":false,"ExitCode":0,
                "StartedAt":"0001-01-01T00:00:00Z","FinishedAt":"0001-01-01T00:00:00Z"},
       "Config":{}}
    ]"#;
    let all = parse_inspect(json).unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all[0].name, "ferry-shop-1");
    assert!(all[0].running);
    assert_eq!(all[0].exit_code, None);
    assert_eq!(
        all[0].labels,
        BTreeMap::from([("ferry.app".to_string(), "shop".to_string())])
    );
    assert_eq!(all[1].exit_code, Some(137));
    assert_eq!(all[1].status, "exited");
    assert!(all[1].labels.is_empty());
    assert_eq!(all[2].exit_code, None, "never started");
    assert!(matches!(
        parse_inspect("{not json"),
        Err(DockerError::Parse { .. })
    ));
}

#[test]
fn a_daemon_that_is_not_there_reads_as_unreachable_whatever_the_command() {
    let msg =
        "Cannot connect to the Docker daemon at unix:///nonexistent. Is the docker daemon running?";
    assert_eq!(
        unreachable_message(&format!("{msg}\n")).as_deref(),
        Some(msg)
    );
    assert!(
        unreachable_message(
            "permission denied while trying to connect to the Docker daemon socket at unix:///var/run/docker.sock: ..."
        )
        .is_some()
    );
    assert_eq!(
        unreachable_message("Error response from daemon: No such container: x"),
        None
    );
    let e = DockerError::Unreachable {
        message: msg.into(),
    };
    assert_eq!(
        e.to_string(),
        format!("cannot reach the docker daemon: {msg}")
    );
}

#[test]
fn a_failed_commands_message_is_one_line_ending_with_dockers_words() {
    let text = "line 1\n\n  line 2  \nline 3\nError response from daemon: conflict\n";
    assert_eq!(
        one_line_tail(text),
        "line 2 | line 3 | Error response from daemon: conflict"
    );
    let long = "é".repeat(2000);
    let t = one_line_tail(&long);
    assert!(t.starts_with('…') && t.len() < 1100);
    let lines: String = (1..=100).map(|i| format!("step {i}\n")).collect();
    let tail = last_lines(&lines, BUILD_TAIL_LINES);
    assert_eq!(tail.lines().count(), 40);
    assert!(tail.starts_with("step 61\n") && tail.ends_with("step 100"));
}

#[test]
fn the_build_output_keeps_its_end_from_a_whole_line() {
    let mut t = TailBuffer::new(100);
    for i in 0..1000 {
        t.push(format!("line {i}\n").as_bytes());
    }
    let text = t.text();
    assert!(text.len() <= 100);
    assert!(text.starts_with("line "), "{text:?}");
    assert!(text.ends_with("line 999\n"));
    let mut small = TailBuffer::new(100);
    small.push(b"a\nb\n");
    assert_eq!(small.text(), "a\nb\n");
}

/// A stand-in `docker`: a shell script in a temp dir.
fn fake_docker(dir: &Path, script: &str) -> Docker {
    let path = dir.join("docker");
    std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    Docker::with_program(path)
}

#[tokio::test]
async fn a_missing_docker_is_not_installed() {
    let d = Docker::with_program("/nonexistent/docker");
    let e = d.ping().await.unwrap_err();
    assert!(matches!(e, DockerError::NotInstalled { .. }), "{e:?}");
    assert!(e.to_string().starts_with("docker is not installed"), "{e}");
}

#[tokio::test]
async fn a_hung_docker_is_killed_at_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let d = fake_docker(
        dir.path(),
        &format!("echo $$ > {}; exec sleep 60", pid_file.display()),
    )
    .with_timeout(Duration::from_millis(500));
    let e = d.tag("a", "b").await.unwrap_err();
    assert!(matches!(e, DockerError::Timeout { .. }), "{e:?}");
    assert!(e.to_string().contains("did not finish"), "{e}");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // killed and reaped by tokio: gone (or a zombie for an instant)
    let gone = (0..100).any(|_| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.is_empty() || stat.contains(") Z ") {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
        false
    });
    assert!(gone, "docker stand-in {pid} still runs");
    let e = d.ping().await.unwrap_err();
    assert!(matches!(e, DockerError::Unreachable { .. }), "{e:?}");
}

#[tokio::test]
async fn a_hung_build_is_killed_and_its_output_so_far_kept() {
    let dir = tempfile::tempdir().unwrap();
    let d = fake_docker(
        dir.path(),
        "echo \"Step 1/2 : RUN $DOCKER_BUILDKIT\"; exec sleep 60",
    );
    let e = d
        .build(
            dir.path(),
            &dir.path().join("Dockerfile"),
            "t:1",
            &[],
            Duration::from_millis(500),
        )
        .await
        .unwrap_err();
    match e {
        DockerError::Timeout { what, tail, .. } => {
            assert_eq!(what, "build");
            assert_eq!(tail, "Step 1/2 : RUN 0", "legacy builder asked for");
        }
        e => panic!("{e:?}"),
    }
}

#[tokio::test]
async fn a_failed_build_carries_the_tail_of_both_streams() {
    let dir = tempfile::tempdir().unwrap();
    let d = fake_docker(
        dir.path(),
        "for i in $(seq 1 100); do echo out $i; done; echo 'RUN false: returned a non-zero code: 1' >&2; exit 1",
    );
    let e = d
        .build(
            dir.path(),
            &dir.path().join("Dockerfile"),
            "t:1",
            &[],
            Duration::from_secs(30),
        )
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "docker build failed (exit status: 1): RUN false: returned a non-zero code: 1"
    );
    match e {
        DockerError::Build { tail, .. } => {
            assert_eq!(tail.lines().count(), 40);
            assert!(tail.starts_with("out 62\n"), "{tail}");
        }
        e => panic!("{e:?}"),
    }
}

#[tokio::test]
async fn a_command_failure_names_the_command_and_dockers_message() {
    let dir = tempfile::tempdir().unwrap();
    let d = fake_docker(
        dir.path(),
        "echo 'Error response from daemon: conflict: the name is in use' >&2; exit 125",
    );
    let e = d.run(&spec()).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "docker run failed (exit status: 125): Error response from daemon: conflict: the name is in use"
    );
    let gone = fake_docker(
        dir.path(),
        "echo 'Error response from daemon: No such container: x' >&2; exit 1",
    );
    assert!(gone.inspect("x").await.unwrap().is_none());
    gone.remove("x").await.unwrap();
    gone.stop("x", Duration::from_secs(1)).await.unwrap();
    gone.remove_image("x").await.unwrap();
}

#[tokio::test]
async fn a_published_port_without_a_bridge_network_is_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let calls = dir.path().join("calls");
    let d = fake_docker(
        dir.path(),
        &format!(
            "echo \"$1\" >> {}; \
             if [ \"$1\" = network ]; then echo 'Error response from daemon: network bridge not found' >&2; exit 1; fi; \
             echo 0123abcd",
            calls.display()
        ),
    );
    let published = RunSpec {
        network: Network::Publish {
            host_port: 4100,
            container_port: 8080,
        },
        ..spec()
    };
    let e = d.run(&published).await.unwrap_err();
    assert!(e.to_string().contains("use host networking"), "{e}");
    assert_eq!(std::fs::read_to_string(&calls).unwrap(), "network\n");
    // host networking needs no bridge
    assert_eq!(d.run(&spec()).await.unwrap(), "0123abcd");
    assert_eq!(std::fs::read_to_string(&calls).unwrap(), "network\nrun\n");
}

//! The docker wrapper (`ferry::docker`) against a real daemon: images built from `FROM
//! scratch` plus busybox (no registry), containers on host networking. Each test skips with
//! a printed reason when no daemon answers, and removes what it made (a Drop guard).

mod support;

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use ferry::docker::{Docker, DockerError, Mount, Network, RunSpec, write_env_file};
use support::docker::*;
use support::{eventually, free_port};

/// A plain container of `image` for the test of `kit`, labelled with its test label.
fn spec(kit: &DockerKit, name: &str, image: &str, command: &[&str]) -> RunSpec {
    RunSpec {
        name: kit.name(name),
        image: image.to_string(),
        labels: vec![kit.label()],
        network: Network::Host,
        env_file: None,
        mounts: vec![],
        user: None,
        stop_timeout: Duration::from_secs(10),
        init: false,
        workdir: None,
        command: Some(command.iter().map(|s| s.to_string()).collect()),
        log_max_size: Some("1m".to_string()),
    }
}

/// A GET of `path` on 127.0.0.1:`port` over a plain TcpStream: status and body.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

#[tokio::test]
async fn ping_gives_the_daemon_version() {
    let Some(kit) = docker_or_skip("ping_gives_the_daemon_version") else {
        return;
    };
    let version = kit.docker.ping().await.unwrap();
    assert!(
        version.chars().next().is_some_and(|c| c.is_ascii_digit()),
        "{version}"
    );
}

#[tokio::test]
async fn build_gives_the_image_id_with_its_labels_and_tags_come_and_go() {
    let Some(kit) = docker_or_skip("build_gives_the_image_id_with_its_labels") else {
        return;
    };
    let base = kit.base_image();
    let ctx = tempfile::tempdir().unwrap();
    // the Dockerfile outside the context, as ferry keeps it in the release tree
    let df_dir = tempfile::tempdir().unwrap();
    write(
        df_dir.path(),
        "Dockerfile",
        &app_dockerfile(&base, "v1.0.0"),
    );
    write(ctx.path(), "hello.txt", "hello\n");
    let tag = format!("{}:v1.0.0-abcdef0", kit.name("app"));
    let labels = vec![
        kit.label(),
        ("ferry.app".to_string(), "shop".to_string()),
        ("ferry.version".to_string(), "v1.0.0".to_string()),
    ];
    let built = kit
        .docker
        .build(
            ctx.path(),
            &df_dir.path().join("Dockerfile"),
            &tag,
            &labels,
            Duration::from_secs(120),
        )
        .await
        .unwrap();
    assert!(built.image_id.starts_with("sha256:"), "{built:?}");
    assert_eq!(built.image_id.len(), "sha256:".len() + 64);
    assert!(built.output.contains("Step 1/"), "{}", built.output);
    assert_eq!(
        kit.docker.image_id(&tag).await.unwrap().as_deref(),
        Some(built.image_id.as_str())
    );
    let shown = docker(&[
        "image",
        "inspect",
        "--format",
        "{{index .Config.Labels \"ferry.app\"}} {{index .Config.Labels \"ferry.version\"}}",
        &built.image_id,
    ]);
    assert_eq!(shown.trim(), "shop v1.0.0");

    let other = format!("{}:promoted", kit.name("app"));
    kit.docker.tag(&built.image_id, &other).await.unwrap();
    assert_eq!(
        kit.docker.image_id(&other).await.unwrap(),
        Some(built.image_id.clone())
    );
    kit.docker.remove_image(&other).await.unwrap();
    assert_eq!(kit.docker.image_id(&other).await.unwrap(), None);
    assert!(
        kit.docker.image_id(&tag).await.unwrap().is_some(),
        "removing a tag keeps the image's other tags"
    );
    kit.docker.remove_image(&other).await.unwrap();
    assert_eq!(
        kit.docker
            .image_id(&format!("{}:never-built", kit.name("app")))
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn a_failed_build_carries_the_failing_runs_output() {
    let Some(kit) = docker_or_skip("a_failed_build_carries_the_failing_runs_output") else {
        return;
    };
    let base = kit.base_image();
    let ctx = tempfile::tempdir().unwrap();
    write(
        ctx.path(),
        "Dockerfile",
        &failing_dockerfile(&base, &format!("the tests of {} do not pass", kit.prefix())),
    );
    let e = kit
        .docker
        .build(
            ctx.path(),
            &ctx.path().join("Dockerfile"),
            &format!("{}:broken", kit.name("app")),
            &[kit.label()],
            Duration::from_secs(120),
        )
        .await
        .unwrap_err();
    let DockerError::Build { ref tail, .. } = e else {
        panic!("{e:?}")
    };
    let said = format!("the tests of {} do not pass", kit.prefix());
    assert!(tail.lines().any(|l| l == said), "{tail}");
    assert!(tail.lines().count() <= 40);
    let msg = e.to_string();
    assert!(msg.starts_with("docker build failed"), "{msg}");
    assert!(!msg.contains('\n'), "one line: {msg}");
    // the failed step's container is not left behind
    let commands = docker(&["ps", "-a", "--no-trunc", "--format", "{{.Command}}"]);
    assert!(!commands.contains(kit.prefix()), "{commands}");
}

#[tokio::test]
async fn run_serves_on_the_host_network_with_its_env_file_and_a_read_only_mount() {
    let Some(kit) = docker_or_skip("run_serves_on_the_host_network") else {
        return;
    };
    let base = kit.base_image();
    let dir = tempfile::tempdir().unwrap();
    let www = dir.path().join("www");
    std::fs::create_dir(&www).unwrap();
    write(&www, "index.html", "from the host\n");
    let port = free_port();
    let env_file = dir.path().join("app.env");
    write_env_file(
        &env_file,
        &[
            ("PORT".to_string(), port.to_string()),
            ("GREETING".to_string(), "hello there".to_string()),
        ],
    )
    .unwrap();
    let mut s = spec(
        &kit,
        "web",
        &base,
        &[
            "sh",
            "-c",
            "echo \"greeting: $GREETING\"; \
             if touch /data/x 2>/dev/null; then echo data writable; else echo data read-only; fi; \
             exec httpd -f -p \"127.0.0.1:$PORT\" -h /data",
        ],
    );
    s.env_file = Some(env_file);
    s.init = true;
    s.mounts = vec![Mount {
        source: www.clone(),
        target: "/data".to_string(),
        readonly: true,
    }];
    let id = kit.docker.run(&s).await.unwrap();
    assert_eq!(id.len(), 64, "{id}");
    let mut answer = None;
    assert!(
        eventually(Duration::from_secs(20), || {
            answer = http_get(port, "/index.html");
            answer.is_some()
        }),
        "nothing answers on 127.0.0.1:{port}: {}",
        logs(&id)
    );
    assert_eq!(answer.unwrap(), (200, "from the host\n".to_string()));
    let out = logs(&id);
    assert!(out.contains("greeting: hello there"), "{out}");
    assert!(out.contains("data read-only"), "{out}");
    assert!(!www.join("x").exists());

    let info = kit.docker.inspect(&s.name).await.unwrap().unwrap();
    assert_eq!(info.id, id);
    assert_eq!(info.name, s.name);
    assert!(info.running && info.exit_code.is_none(), "{info:?}");
    assert_eq!(
        info.image,
        kit.docker.image_id(&base).await.unwrap().unwrap()
    );
    assert_eq!(
        info.labels.get("ferry.test"),
        Some(&kit.prefix().to_string())
    );
    // the values of the env file are not on docker's record of the command line
    let args = docker(&["inspect", "--format", "{{json .Args}} {{json .Path}}", &id]);
    assert!(!args.contains("hello there"), "{args}");

    kit.docker.stop(&id, Duration::from_secs(10)).await.unwrap();
    assert!(kit.docker.inspect(&id).await.unwrap().is_none());
    assert!(http_get(port, "/index.html").is_none());
}

#[tokio::test]
async fn follow_logs_writes_both_streams_to_the_file_and_wait_gives_the_exit_code() {
    let Some(kit) = docker_or_skip("follow_logs_writes_both_streams") else {
        return;
    };
    let base = kit.base_image();
    let s = spec(
        &kit,
        "job",
        &base,
        &[
            "sh",
            "-c",
            "echo to stdout; echo to stderr >&2; sleep 1; echo done; exit 3",
        ],
    );
    let id = kit.docker.run(&s).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut follower = kit.docker.follow_logs(&id, None, file).unwrap();
    assert_eq!(kit.docker.wait(&id).await.unwrap(), 3);
    // it ends by itself once the container has stopped
    let status = tokio::time::timeout(Duration::from_secs(30), follower.wait())
        .await
        .expect("docker logs --follow ends with its container")
        .unwrap();
    assert!(status.success(), "{status}");
    let text = std::fs::read_to_string(&log).unwrap();
    for line in ["to stdout", "to stderr", "done"] {
        assert!(text.contains(line), "{line} missing from {text:?}");
    }
    let info = kit.docker.inspect(&id).await.unwrap().unwrap();
    assert!(!info.running);
    assert_eq!(info.exit_code, Some(3));
    assert_eq!(info.status, "exited");
    kit.docker.remove(&id).await.unwrap();
    kit.docker.remove(&id).await.unwrap();
    assert!(kit.docker.inspect(&id).await.unwrap().is_none());
}

#[tokio::test]
async fn stop_kills_a_container_that_ignores_sigterm_after_the_grace() {
    let Some(kit) = docker_or_skip("stop_kills_a_container_that_ignores_sigterm") else {
        return;
    };
    let base = kit.base_image();
    let stubborn = spec(
        &kit,
        "stubborn",
        &base,
        &["sh", "-c", "trap '' TERM; echo trapped; sleep 1000"],
    );
    // with --init a PID 1 without handlers stops on SIGTERM
    let mut polite = spec(&kit, "polite", &base, &["sleep", "1000"]);
    polite.init = true;
    let stubborn_id = kit.docker.run(&stubborn).await.unwrap();
    let polite_id = kit.docker.run(&polite).await.unwrap();
    assert!(
        eventually(Duration::from_secs(20), || logs(&stubborn_id)
            .contains("trapped")),
        "the trap is set"
    );
    assert_eq!(
        kit.docker
            .stop_only(&stubborn_id, Duration::from_millis(1500))
            .await
            .unwrap(),
        Some(137),
        "SIGKILLed after the grace"
    );
    assert_eq!(
        kit.docker
            .stop_only(&polite_id, Duration::from_secs(60))
            .await
            .unwrap(),
        Some(143),
        "stopped by SIGTERM"
    );
    // stop: the same, and removed; a second stop of what is gone is no error
    for id in [&stubborn_id, &polite_id] {
        kit.docker.stop(id, Duration::from_secs(1)).await.unwrap();
    }
    for id in [&stubborn_id, &polite_id] {
        assert!(kit.docker.inspect(id).await.unwrap().is_none(), "removed");
    }
    kit.docker
        .stop(&stubborn_id, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(
        kit.docker
            .stop_only(&stubborn_id, Duration::from_secs(1))
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn list_finds_the_containers_carrying_every_label() {
    let Some(kit) = docker_or_skip("list_finds_the_containers_carrying_every_label") else {
        return;
    };
    let base = kit.base_image();
    let role = |r: &str| ("ferry.role".to_string(), r.to_string());
    for (name, labels) in [
        ("a", vec![kit.label(), role("web")]),
        ("b", vec![kit.label(), role("worker")]),
        (
            "c",
            vec![kit.label(), role("web"), ("x".into(), "1".into())],
        ),
    ] {
        let mut s = spec(&kit, name, &base, &["true"]);
        s.labels = labels;
        kit.docker.run(&s).await.unwrap();
    }
    let names = |found: Vec<ferry::docker::ContainerInfo>| -> Vec<String> {
        found.into_iter().map(|c| c.name).collect()
    };
    let web = kit.docker.list(&[kit.label(), role("web")]).await.unwrap();
    assert_eq!(names(web), [kit.name("a"), kit.name("c")]);
    let all = kit.docker.list(&[kit.label()]).await.unwrap();
    assert_eq!(names(all), [kit.name("a"), kit.name("b"), kit.name("c")]);
    let none = kit
        .docker
        .list(&[kit.label(), role("nothing")])
        .await
        .unwrap();
    assert!(none.is_empty());
}

#[tokio::test]
async fn a_dead_socket_is_unreachable_with_a_clear_message() {
    let docker = Docker::new().with_host("unix:///nonexistent");
    let e = match docker.ping().await {
        Err(DockerError::NotInstalled { .. }) => {
            eprintln!("SKIPPED a_dead_socket_is_unreachable: no docker CLI");
            return;
        }
        r => r.unwrap_err(),
    };
    let msg = e.to_string();
    assert!(matches!(e, DockerError::Unreachable { .. }), "{e:?}");
    assert!(
        msg.starts_with("cannot reach the docker daemon: ") && msg.contains("/nonexistent"),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "{msg}");
    // whatever the command
    let e = docker.list(&[]).await.unwrap_err();
    assert!(matches!(e, DockerError::Unreachable { .. }), "{e:?}");
    let e = docker.inspect("x").await.unwrap_err();
    assert!(matches!(e, DockerError::Unreachable { .. }), "{e:?}");
}

#[tokio::test]
async fn a_published_port_is_on_loopback_or_refused_without_a_bridge_network() {
    let Some(kit) = docker_or_skip("a_published_port_is_on_loopback_or_refused") else {
        return;
    };
    let base = kit.base_image();
    let port = free_port();
    let mut s = spec(
        &kit,
        "published",
        &base,
        &[
            "sh",
            "-c",
            "echo published > /www/health; exec httpd -f -p 8080 -h /www",
        ],
    );
    s.network = Network::Publish {
        host_port: port,
        container_port: 8080,
    };
    s.init = true;
    if kit.docker.has_bridge().await.unwrap() {
        let id = kit.docker.run(&s).await.unwrap();
        let mut answer = None;
        assert!(
            eventually(Duration::from_secs(20), || {
                answer = http_get(port, "/health");
                answer.is_some()
            }),
            "nothing answers on 127.0.0.1:{port}: {}",
            logs(&id)
        );
        assert_eq!(answer.unwrap(), (200, "published\n".to_string()));
        let ports = docker(&[
            "inspect",
            "--format",
            "{{json .NetworkSettings.Ports}}",
            &id,
        ]);
        assert!(ports.contains("\"HostIp\":\"127.0.0.1\""), "{ports}");
        assert!(!ports.contains("0.0.0.0"), "{ports}");
    } else {
        // dockerd --bridge=none: docker would start it unreachable; ferry refuses instead
        let e = kit.docker.run(&s).await.unwrap_err();
        assert!(matches!(e, DockerError::Invalid { .. }), "{e:?}");
        assert!(e.to_string().contains("use host networking"), "{e}");
        assert!(kit.docker.inspect(&s.name).await.unwrap().is_none());
    }
}

#[test]
fn no_kit_prefix_is_inside_another_kits_names() {
    // cleanup removes what contains a kit's prefix: another kit's objects must never match
    let prefixes: Vec<String> = [1, 12, 123, 1234]
        .iter()
        .flat_map(|&pid| (0..120).map(move |n| kit_prefix(pid, n)))
        .collect();
    for a in &prefixes {
        for b in &prefixes {
            let name = format!("ferry-{b}-staging-4100");
            assert_eq!(name.contains(a.as_str()), a == b, "{a} in {name}");
        }
    }
}

#[test]
fn a_dynamically_linked_busybox_is_told_apart_from_busybox_static() {
    // this test binary itself is dynamically linked
    let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    assert!(!is_static(&me));
    assert!(!is_static(b"#!/bin/sh\n"));
    if let Ok(busybox) = std::fs::read("/bin/busybox") {
        // Debian's busybox-static, as .ci/run installs it
        assert!(is_static(&busybox));
    }
}

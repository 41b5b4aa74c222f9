//! The compose wrapper against the real daemon and the installed compose (v1 1.29 here and in
//! CI): a stack with a routed `web` service built from a Dockerfile and a `store` accessory
//! keeping its data in a named volume, every service on host networking (dockerd runs with
//! `--bridge=none --iptables=false`). Skipped, with a printed reason, without a daemon, compose
//! or busybox-static.

mod support;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferry::docker::compose::{Compose, ComposeError, Project, RunSpec};
use support::docker::{DockerKit, docker_or_skip, docker_program};

const BUSYBOX: &str = "/bin/busybox";
const LIMIT: Duration = Duration::from_secs(60);

/// The daemon (`support::docker::docker_or_skip`) and the installed compose, or `None` after
/// printing `SKIPPED <test>: <reason>`. With `FERRY_TESTS_REQUIRE_DOCKER=1` a missing daemon or
/// compose fails the test instead.
async fn compose_or_skip(test: &str) -> Option<(DockerKit, Compose)> {
    let kit = docker_or_skip(test)?;
    match Compose::detect().await {
        Ok(compose) => Some((kit, compose)),
        Err(reason) => {
            if std::env::var_os("FERRY_TESTS_REQUIRE_DOCKER").is_some_and(|v| v == "1") {
                panic!(
                    "{test}: docker compose is required (FERRY_TESTS_REQUIRE_DOCKER=1): {reason}"
                );
            }
            eprintln!("SKIPPED {test}: {reason}");
            None
        }
    }
}

/// `docker <args>`: whether it succeeded, and its output.
fn docker(args: &[&str]) -> (bool, String) {
    let out = Command::new(docker_program()).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Removes, when dropped, everything of the compose project `name` and the image `tag`: its
/// containers (one-off ones included), volumes and network (the kit removes containers and
/// images by name, not volumes).
struct Cleanup {
    project: String,
    tags: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let label = format!("label=com.docker.compose.project={}", self.project);
        let (_, ids) = docker(&["ps", "-aq", "--filter", &label]);
        for id in ids.split_whitespace() {
            docker(&["rm", "-f", "-v", id]);
        }
        let (_, volumes) = docker(&["volume", "ls", "-q", "--filter", &label]);
        for volume in volumes.split_whitespace() {
            docker(&["volume", "rm", "-f", volume]);
        }
        let (_, networks) = docker(&["network", "ls", "-q", "--filter", &label]);
        for network in networks.split_whitespace() {
            docker(&["network", "rm", network]);
        }
        for tag in &self.tags {
            docker(&["image", "rm", "-f", tag]);
        }
    }
}

/// A build context: the busybox image of the tests, with a Dockerfile that may fail.
fn context(dir: &Path, run: &str) {
    std::fs::copy(BUSYBOX, dir.join("busybox")).unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        format!(
            "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\",\"--install\",\"-s\",\"/bin\"]\n{run}\n"
        ),
    )
    .unwrap();
}

/// The stack: `web` (routed, built here) and `store` (an accessory running the same image,
/// counting its boots into a named volume and serving it over HTTP).
fn stack_file(dir: &Path, tag: &str, store_port: u16) -> PathBuf {
    let file = dir.join("docker-compose.yml");
    std::fs::write(
        &file,
        format!(
            r#"services:
  web:
    build: .
    network_mode: host
    command: ["sh", "-c", "mkdir -p /www && echo web-ok > /www/index.html && exec httpd -f -p 127.0.0.1:$${{PORT}} -h /www"]
  store:
    image: {tag}
    network_mode: host
    stop_grace_period: 1s
    volumes:
      - data:/data
    command: ["sh", "-c", "echo boot >> /data/boots && exec httpd -f -p 127.0.0.1:{store_port} -h /data"]
volumes:
  data:
"#
        ),
    )
    .unwrap();
    file
}

/// The body of `GET /path` on loopback, once something answers with 200 (within `LIMIT`).
fn http_get(port: u16, path: &str) -> String {
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
            let mut answer = String::new();
            if s.read_to_string(&mut answer).is_ok() && answer.split(' ').nth(1) == Some("200") {
                return answer.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
            }
        }
        if Instant::now() > deadline {
            let (_, containers) = docker(&["ps", "-a", "--format", "{{.Names}} {{.Status}}"]);
            panic!("nothing answered on port {port}; containers:\n{containers}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Watches every process's command line while it runs: what held `needle`, and whether any held
/// `witness` (so the watch saw the command it was meant to see).
struct CmdlineWatch {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(Vec<String>, bool)>,
}

impl CmdlineWatch {
    fn start(needle: String, witness: String) -> CmdlineWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut leaks, mut seen) = (Vec::new(), false);
            while !flag.load(Ordering::Relaxed) {
                for entry in std::fs::read_dir("/proc").unwrap().flatten() {
                    let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
                        continue;
                    };
                    let line = String::from_utf8_lossy(&raw).replace('\0', " ");
                    seen |= line.contains(&witness);
                    if line.contains(&needle) {
                        leaks.push(line);
                    }
                }
            }
            (leaks, seen)
        });
        CmdlineWatch { stop, thread }
    }

    fn finish(self) -> (Vec<String>, bool) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stack_builds_runs_its_instance_and_keeps_accessory_data() {
    let test = "a_stack_builds_runs_its_instance_and_keeps_accessory_data";
    let Some((kit, compose)) = compose_or_skip(test).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let name = kit.prefix().to_string();
    let tag = format!("{name}/web:1.0.0-abcdef1");
    let _cleanup = Cleanup {
        project: name.clone(),
        tags: vec![tag.clone()],
    };
    context(dir.path(), "");
    let store_port = support::free_port();
    let file = stack_file(dir.path(), &tag, store_port);
    let p = Project::new(&name, &file, dir.path());

    assert_eq!(compose.services(&p).await.unwrap(), ["web", "store"]);
    assert_eq!(compose.accessories(&p, "web").await.unwrap(), ["store"]);

    let built = compose.build(&p, "web", &tag, LIMIT).await.unwrap();
    assert!(built.image_id.starts_with("sha256:"), "{built:?}");
    assert_eq!(compose.image_id(&tag).await.unwrap(), built.image_id);

    let accessories = vec!["store".to_string()];
    compose
        .accessories_up(&p, &accessories, false, LIMIT)
        .await
        .unwrap();
    assert_eq!(http_get(store_port, "/boots"), "boot\n");

    // the routed instance: a one-off in the same project, its secret in the environment only
    let port = support::free_port();
    let secret = format!("s3cret-{name}");
    let spec = RunSpec {
        service: "web".into(),
        name: format!("{name}-web-{port}"),
        labels: vec![kit.label()],
        env: vec![
            ("PORT".into(), port.to_string()),
            ("FERRY_TEST_SECRET".into(), secret.clone()),
        ],
        mounts: Vec::new(),
        publish: None,
        image: tag.clone(),
        command: None,
        timeout: LIMIT,
    };
    let watch = CmdlineWatch::start(secret.clone(), spec.name.clone());
    let id = compose.run(&p, &spec).await.unwrap();
    let (leaks, seen) = watch.finish();
    assert!(seen, "the watch never saw compose's command line");
    assert!(
        leaks.is_empty(),
        "a command line held the secret: {leaks:?}"
    );
    assert_eq!(http_get(port, "/"), "web-ok\n");
    let (_, env) = docker(&["inspect", "--format", "{{json .Config.Env}}", &id]);
    assert!(env.contains(&secret), "the container got its environment");

    let states = compose.ps(&p).await.unwrap();
    let web = states.iter().find(|s| s.service == "web").unwrap();
    assert!(web.running() && web.one_off && web.id == id, "{states:?}");
    let store = states.iter().find(|s| s.service == "store").unwrap();
    assert!(store.running() && !store.one_off, "{states:?}");

    // down keeps the named volume: up again and the data is there
    compose
        .accessories_down(&p, &accessories, LIMIT)
        .await
        .unwrap();
    let states = compose.ps(&p).await.unwrap();
    assert!(!states.iter().any(|s| s.service == "store"), "{states:?}");
    assert!(
        states.iter().any(|s| s.id == id && s.running()),
        "{states:?}"
    );
    compose
        .accessories_up(&p, &accessories, false, LIMIT)
        .await
        .unwrap();
    assert_eq!(http_get(store_port, "/boots"), "boot\nboot\n");

    compose
        .accessories_restart(&p, &accessories, LIMIT)
        .await
        .unwrap();
    assert_eq!(http_get(store_port, "/boots"), "boot\nboot\nboot\n");

    // logs into a file the caller gives
    let log_path = dir.path().join("accessories.log");
    let out = std::fs::File::create(&log_path).unwrap();
    let mut logs = compose
        .accessories_logs(&p, &accessories, 50, false, out)
        .unwrap();
    assert!(logs.wait().await.unwrap().success());
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("store"), "{log}");

    // a second instance under a taken name is refused, and the first keeps running
    let err = compose.run(&p, &spec).await.unwrap_err();
    assert!(matches!(err, ComposeError::NameInUse(_)), "{err}");
    assert_eq!(http_get(port, "/"), "web-ok\n");
}

#[tokio::test]
async fn bad_files_and_builds_are_reported_clearly() {
    let test = "bad_files_and_builds_are_reported_clearly";
    let Some((kit, compose)) = compose_or_skip(test).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let name = kit.prefix().to_string();
    let tag = format!("{name}/web:1");
    let _cleanup = Cleanup {
        project: name.clone(),
        tags: vec![tag.clone()],
    };
    context(
        dir.path(),
        "RUN [\"sh\", \"-c\", \"echo compiling; exit 7\"]",
    );
    let file = stack_file(dir.path(), "busybox-of-nowhere:1", 1);
    let p = Project::new(&name, &file, dir.path());

    // the routed service is not in the file
    let err = compose.accessories(&p, "api").await.unwrap_err();
    assert!(
        matches!(err, ComposeError::NoService { .. }) && err.to_string().contains("web, store"),
        "{err}"
    );
    let err = compose.build(&p, "api", &tag, LIMIT).await.unwrap_err();
    assert!(matches!(err, ComposeError::NoService { .. }), "{err}");

    // the routed service has no build section
    let err = compose.build(&p, "store", &tag, LIMIT).await.unwrap_err();
    assert!(matches!(err, ComposeError::NoBuild(_)), "{err}");
    assert!(err.to_string().contains("build:"), "{err}");

    // a Dockerfile that fails: the error ends with the build's own output
    let err = compose.build(&p, "web", &tag, LIMIT).await.unwrap_err();
    let ComposeError::Failed { tail, .. } = &err else {
        panic!("{err}")
    };
    assert!(tail.contains("compiling"), "{tail}");
    assert!(tail.lines().count() <= 40, "{tail}");

    // a broken file
    let broken = dir.path().join("broken.yml");
    std::fs::write(
        &broken,
        "services:\n  web:\n    build: .\n    netwrk_mode: host\n",
    )
    .unwrap();
    let err = compose
        .services(&Project::new(&name, &broken, dir.path()))
        .await
        .unwrap_err();
    let ComposeError::File { message, .. } = &err else {
        panic!("{err}")
    };
    assert!(message.contains("netwrk_mode"), "{message}");
    let unparsable = dir.path().join("unparsable.yml");
    std::fs::write(
        &unparsable,
        "services:\n  web:\n    build: .\n   image: x\n",
    )
    .unwrap();
    let err = compose
        .services(&Project::new(&name, &unparsable, dir.path()))
        .await
        .unwrap_err();
    assert!(matches!(err, ComposeError::File { .. }), "{err}");
    assert!(err.to_string().contains("unparsable.yml"), "{err}");
}

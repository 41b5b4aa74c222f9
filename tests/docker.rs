//! Docker apps end to end, with a real dockerd: the release is an image built from the
//! Dockerfile at the release commit; production runs the very image verified on staging;
//! monitoring, warm rollback, manual rollback without a rebuild, adoption after `kill -9`,
//! and what goes wrong (a failing build, an image that exits, no daemon).
//!
//! Skipped, with the reason printed, where no docker daemon answers.

mod support;

use std::time::Duration;

use nix::sys::signal::Signal;
use support::docker::{DockerKit, docker, docker_or_skip};
use support::*;

const MONITOR: &str = "[monitor]
duration = \"4s\"
interval = \"100ms\"
max_consecutive_failures = 3
";

/// A release serving `/health` and `/version` with `version` on 127.0.0.1:$PORT.
fn good(base: &str, version: &str) -> String {
    format!(
        "FROM {base}\n\
         RUN mkdir -p /srv && echo {version} > /srv/health && echo {version} > /srv/version\n\
         CMD echo \"app {version} starting on $PORT\"; exec httpd -f -v -p \"$HOST:$PORT\" -h /srv\n"
    )
}

/// A release healthy at start that stops answering `/health` two seconds later.
fn sickens(base: &str, version: &str) -> String {
    format!(
        "FROM {base}\n\
         RUN mkdir -p /srv && echo {version} > /srv/health && echo {version} > /srv/version\n\
         CMD cp -r /srv /tmp/www; (sleep 2; rm /tmp/www/health; echo sick) & \
         exec httpd -f -p \"$HOST:$PORT\" -h /tmp/www\n"
    )
}

/// A sandbox whose app (named after the test's docker prefix, so the kit cleans up its
/// containers and images) is a docker app with one commit per release.
fn docker_sandbox(kit: &DockerKit, releases: &[(&str, String)], staging_extra: &str) -> Sandbox {
    let s = Sandbox::with(
        &[],
        Options {
            envs: &["staging", "production"],
            env_extra: &[("production", "requires = \"staging\"")],
            tables: MONITOR,
            ..Options::default()
        },
    );
    for (tag, dockerfile) in releases {
        std::fs::write(s.repo.join("Dockerfile"), dockerfile).unwrap();
        sh(
            &s.repo,
            &format!("git add . && git commit -qm {tag} && git tag {tag}"),
        );
    }
    let text = std::fs::read_to_string(&s.config).unwrap();
    let start = text.lines().find(|l| l.starts_with("start = ")).unwrap();
    let text = text
        .replace(start, "runtime = \"docker\"")
        .replace("name = \"sample\"", &format!("name = \"{}\"", kit.prefix()))
        .replace(
            "[environments.staging]\n",
            &format!("[environments.staging]\n{staging_extra}\n"),
        );
    std::fs::write(&s.config, text).unwrap();
    s
}

fn body(s: &Sandbox, env: &str, path: &str) -> String {
    let (status, body) = get(&format!("{}{path}", s.url(env))).expect("proxy answers");
    assert_eq!(status, 200, "{env}{path}: {body}");
    body.trim().to_string()
}

/// The running containers of the test's app: (id, name, image id).
fn containers(kit: &DockerKit) -> Vec<(String, String, String)> {
    let label = format!("label=ferry.app={}", kit.prefix());
    docker(&[
        "ps",
        "--no-trunc",
        "--filter",
        &label,
        "--format",
        "{{.ID}} {{.Names}}",
    ])
    .lines()
    .map(|l| {
        let (id, name) = l.split_once(' ').unwrap();
        let image = docker(&["inspect", "--format", "{{.Image}}", id])
            .trim()
            .to_string();
        (id.to_string(), name.to_string(), image)
    })
    .collect()
}

/// The images ferry built for the test's app.
fn images(kit: &DockerKit) -> Vec<String> {
    let label = format!("label=ferry.app={}", kit.prefix());
    let mut ids: Vec<String> = docker(&["images", "-q", "--no-trunc", "--filter", &label])
        .lines()
        .map(str::to_string)
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

fn last_deployment(s: &Sandbox, env: &str) -> serde_json::Value {
    let history = s.ferry(&["history", env, "--json"]).json();
    history[0].clone()
}

#[test]
fn a_docker_app_is_verified_promoted_as_the_same_image_rolled_back_warm_and_adopted() {
    let Some(kit) = docker_or_skip(
        "a_docker_app_is_verified_promoted_as_the_same_image_rolled_back_warm_and_adopted",
    ) else {
        return;
    };
    let base = kit.base_image();
    let secrets = tempfile::tempdir().unwrap();
    let env_file = secrets.path().join("staging.env");
    std::fs::write(&env_file, "API_KEY=s3cret-value-42\n").unwrap();
    let mut s = docker_sandbox(
        &kit,
        &[
            ("v1.0.0", good(&base, "v1.0.0")),
            ("v2.0.0", sickens(&base, "v2.0.0")),
            ("v3.0.0", good(&base, "v3.0.0")),
        ],
        &format!("env_file = \"{}\"", env_file.display()),
    );
    s.serve();

    let run = s.deploy_ok("staging", "v1.0.0");
    assert!(run.stdout().contains("built image sha256:"), "{run}");
    assert_eq!(body(&s, "staging", "/version"), "v1.0.0");
    let running = containers(&kit);
    assert_eq!(running.len(), 1, "{running:?}");
    let (staging_id, name, image) = running[0].clone();
    assert!(
        name.starts_with(&format!("ferry-{}-staging-", kit.prefix())),
        "{name}"
    );
    let d = last_deployment(&s, "staging");
    assert_eq!(d["digest"].as_str().unwrap(), image, "{d}");
    // the secret reaches the app as a file, never in docker's view of the container
    let inspect = docker(&["inspect", &staging_id]);
    assert!(!inspect.contains("s3cret-value-42"), "{inspect}");
    let file = docker(&["exec", &staging_id, "cat", "/run/secrets/ferry.env"]);
    assert!(file.contains("API_KEY=s3cret-value-42"), "{file}");
    let log = std::fs::read_to_string(s.state_dir().join("environments/staging/logs/app.log"))
        .unwrap_or_default();
    assert!(
        eventually(Duration::from_secs(5), || {
            std::fs::read_to_string(s.state_dir().join("environments/staging/logs/app.log"))
                .is_ok_and(|l| l.contains("app v1.0.0 starting on"))
        }),
        "{log}"
    );

    // production runs the image verified on staging: nothing is built again
    assert_eq!(s.ferry(&["verify", "staging", "v1.0.0"]).code(), 0);
    let run = s.ferry(&["promote", "v1.0.0", "--to", "production"]);
    assert_eq!(run.code(), 0, "{run}\n{}", s.serve_log());
    assert_eq!(body(&s, "production", "/version"), "v1.0.0");
    let production = containers(&kit)
        .into_iter()
        .find(|(_, n, _)| n.contains("-production-"))
        .expect("a production container");
    assert_eq!(production.2, image);
    assert_eq!(images(&kit), vec![image.clone()]);
    assert_eq!(last_deployment(&s, "production")["digest"], image.as_str());

    // a release that sickens after the switch: back to the warm v1 container
    let run = s.ferry(&["deploy", "staging", "v2.0.0"]);
    assert_eq!(run.code(), 1, "{run}");
    assert_eq!(last_deployment(&s, "staging")["state"], "rolled_back");
    assert_eq!(body(&s, "staging", "/version"), "v1.0.0");
    let staging: Vec<_> = containers(&kit)
        .into_iter()
        .filter(|(_, n, _)| n.contains("-staging-"))
        .collect();
    assert_eq!(
        staging.len(),
        1,
        "the failed release's container is gone: {staging:?}"
    );
    assert_eq!(staging[0].0, staging_id, "v1 kept warm, not started again");

    // a manual rollback reuses the image: no build
    s.deploy_ok("staging", "v3.0.0");
    let built = images(&kit).len();
    let run = s.ferry(&[
        "rollback", "staging", "--yes", "--to", "v1.0.0", "--reason", "test",
    ]);
    assert_eq!(run.code(), 0, "{run}\n{}", s.serve_log());
    assert!(run.stdout().contains("still in docker"), "{run}");
    assert_eq!(body(&s, "staging", "/version"), "v1.0.0");
    assert_eq!(images(&kit).len(), built);

    // kill -9 of serve: the containers keep serving and the next serve adopts them
    let before: Vec<String> = containers(&kit).into_iter().map(|c| c.0).collect();
    s.stop(Signal::SIGKILL);
    s.serve();
    assert_eq!(body(&s, "staging", "/version"), "v1.0.0");
    assert_eq!(body(&s, "production", "/version"), "v1.0.0");
    let after: Vec<String> = containers(&kit).into_iter().map(|c| c.0).collect();
    assert_eq!(after, before, "adopted, not started again");
    assert!(s.serve_log().contains("adopted"), "{}", s.serve_log());
    s.deploy_ok("staging", "v3.0.0");
    assert_eq!(body(&s, "staging", "/version"), "v3.0.0");
    s.stop(Signal::SIGTERM);
}

#[test]
fn a_failing_build_an_exiting_image_and_a_dead_daemon_leave_the_previous_release_serving() {
    let Some(kit) = docker_or_skip(
        "a_failing_build_an_exiting_image_and_a_dead_daemon_leave_the_previous_release_serving",
    ) else {
        return;
    };
    let base = kit.base_image();
    let mut s = docker_sandbox(
        &kit,
        &[
            ("v1.0.0", good(&base, "v1.0.0")),
            (
                "broken",
                format!("FROM {base}\nRUN echo 'compiling... error: no such crate' && false\n"),
            ),
            (
                "exits",
                format!("FROM {base}\nCMD echo 'cannot open the database'; exit 3\n"),
            ),
        ],
        "",
    );
    s.serve();
    s.deploy_ok("staging", "v1.0.0");

    let run = s.ferry(&["deploy", "staging", "broken"]);
    assert_eq!(run.code(), 1, "{run}");
    let d = last_deployment(&s, "staging");
    assert_eq!(d["state"], "failed", "{d}");
    let show = s.ferry(&["show", &d["id"].to_string()]);
    assert!(show.stdout().contains("no such crate"), "{show}");
    assert_eq!(body(&s, "staging", "/version"), "v1.0.0");

    let run = s.ferry(&["deploy", "staging", "exits"]);
    assert_eq!(run.code(), 1, "{run}");
    let d = last_deployment(&s, "staging");
    assert_eq!(d["state"], "failed", "{d}");
    let show = s.ferry(&["show", &d["id"].to_string()]);
    assert!(show.stdout().contains("cannot open the database"), "{show}");
    assert_eq!(body(&s, "staging", "/version"), "v1.0.0");
    assert_eq!(
        containers(&kit).len(),
        1,
        "nothing of the failed release runs"
    );

    s.stop(Signal::SIGTERM);

    // a daemon that does not answer: the deploy fails with docker's reason, nothing runs
    let mut s = docker_sandbox(&kit, &[("v1.0.0", good(&base, "v1.0.0"))], "");
    s.serve_env.push((
        "DOCKER_HOST".into(),
        "unix:///nonexistent/docker.sock".into(),
    ));
    s.serve();
    let run = s.ferry(&["deploy", "staging", "v1.0.0"]);
    assert_eq!(run.code(), 1, "{run}");
    let d = last_deployment(&s, "staging");
    let show = s.ferry(&["show", &d["id"].to_string()]);
    assert!(
        show.stdout().contains("cannot reach the docker daemon"),
        "{show}"
    );
    let check = std::process::Command::new(FERRY)
        .arg("-c")
        .arg(&s.config)
        .arg("check")
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&check.stderr);
    assert!(said.contains("cannot reach the docker daemon"), "{said}");
    s.stop(Signal::SIGTERM);
}

#[test]
fn no_request_fails_across_deploys_of_a_docker_app() {
    let Some(kit) = docker_or_skip("no_request_fails_across_deploys_of_a_docker_app") else {
        return;
    };
    let base = kit.base_image();
    let mut s = docker_sandbox(
        &kit,
        &[
            ("v1.0.0", good(&base, "v1.0.0")),
            ("v2.0.0", good(&base, "v2.0.0")),
        ],
        "",
    );
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    s.deploy_ok("staging", "v2.0.0");
    let url = format!("{}/version", s.url("staging"));
    let load = Load::expecting(&url, 4, "v");
    for r in ["v1.0.0", "v2.0.0", "v1.0.0", "v2.0.0"] {
        s.deploy_ok("staging", r);
    }
    let Tally {
        ok,
        failed,
        failures,
    } = load.stop();
    println!("{ok} requests served across 4 deploys, {failed} failed");
    assert!(ok > 0, "the clients made requests");
    assert_eq!(
        failed, 0,
        "failed requests across deploys ({ok} served): {failures:?}"
    );
    assert_eq!(body(&s, "staging", "/version"), "v2.0.0");
    let staging = containers(&kit);
    assert_eq!(
        staging.len(),
        1,
        "only the serving container runs: {staging:?}"
    );
    s.stop(Signal::SIGTERM);
}

/// A compose app: `web` (built from the release's Dockerfile, routed) and an accessory `store`
/// (busybox httpd serving its named volume on `store_port`), both on the host's network.
fn compose_file(base: &str, store_port: u16, routed: &str) -> String {
    format!(
        "services:\n\
         \x20 {routed}:\n\
         \x20   build: .\n\
         \x20   network_mode: host\n\
         \x20 store:\n\
         \x20   image: {base}\n\
         \x20   network_mode: host\n\
         \x20   volumes:\n\
         \x20     - data:/data\n\
         \x20   command: [\"sh\", \"-c\", \"echo booted >> /data/boots; echo store up; exec httpd -f -p 127.0.0.1:{store_port} -h /data\"]\n\
         volumes:\n\
         \x20 data:\n"
    )
}

/// Removes the named volumes of the test's compose projects when dropped.
struct Volumes(String);

impl Drop for Volumes {
    fn drop(&mut self) {
        let filter = format!("name={}", self.0);
        for v in docker(&["volume", "ls", "-q", "--filter", &filter]).lines() {
            let _ = std::process::Command::new(support::docker::docker_program())
                .args(["volume", "rm", "-f", v])
                .output();
        }
    }
}

/// The accessory's container id and the boots its volume recorded.
fn store(kit: &DockerKit, store_port: u16) -> (String, usize) {
    let label = "label=com.docker.compose.service=store";
    let name = format!("name={}", kit.prefix());
    let id = docker(&[
        "ps",
        "-q",
        "--no-trunc",
        "--filter",
        label,
        "--filter",
        &name,
    ])
    .trim()
    .to_string();
    let boots = get(&format!("http://127.0.0.1:{store_port}/boots"))
        .map(|(_, b)| b.lines().count())
        .unwrap_or(0);
    (id, boots)
}

#[test]
fn a_compose_app_deploys_its_routed_service_per_release_and_keeps_its_accessory() {
    let Some(kit) = docker_or_skip(
        "a_compose_app_deploys_its_routed_service_per_release_and_keeps_its_accessory",
    ) else {
        return;
    };
    let _volumes = Volumes(kit.prefix().to_string());
    let base = kit.base_image();
    let store_port = free_port();
    let mut s = docker_sandbox(&kit, &[], "");
    for v in ["v1.0.0", "v2.0.0", "v3.0.0"] {
        std::fs::write(s.repo.join("Dockerfile"), good(&base, v)).unwrap();
        std::fs::write(
            s.repo.join("docker-compose.yml"),
            compose_file(&base, store_port, "web"),
        )
        .unwrap();
        sh(
            &s.repo,
            &format!("git add . && git commit -qm {v} && git tag {v}"),
        );
    }
    std::fs::write(
        s.repo.join("docker-compose.yml"),
        compose_file(&base, store_port, "api"),
    )
    .unwrap();
    sh(&s.repo, "git commit -qam renamed && git tag no-web");
    // a committer's compose file handing the accessory ferry's state (tokens, every env's
    // secrets) through the root daemon
    let hostile = compose_file(&base, store_port, "web").replace(
        "      - data:/data\n",
        &format!(
            "      - data:/data\n      - {}:/state:ro\n",
            s.state_dir().display()
        ),
    );
    assert!(hostile.contains("/state:ro"), "{hostile}");
    std::fs::write(s.repo.join("docker-compose.yml"), hostile).unwrap();
    sh(&s.repo, "git commit -qam hostile && git tag hostile");
    let text = std::fs::read_to_string(&s.config).unwrap().replace(
        "runtime = \"docker\"",
        "compose = { file = \"docker-compose.yml\", service = \"web\" }",
    );
    std::fs::write(&s.config, text).unwrap();
    s.serve();

    s.deploy_ok("staging", "v1.0.0");
    assert_eq!(body(&s, "staging", "/version"), "v1.0.0");
    let (accessory, boots) = store(&kit, store_port);
    assert!(!accessory.is_empty(), "the accessory runs");
    assert_eq!(boots, 1);

    // three deploys and a rollback: the routed service is replaced, the accessory never is
    s.deploy_ok("staging", "v2.0.0");
    assert_eq!(body(&s, "staging", "/version"), "v2.0.0");
    s.deploy_ok("staging", "v3.0.0");
    let run = s.ferry(&[
        "rollback", "staging", "--yes", "--to", "v2.0.0", "--reason", "test",
    ]);
    assert_eq!(run.code(), 0, "{run}\n{}", s.serve_log());
    assert_eq!(body(&s, "staging", "/version"), "v2.0.0");
    assert_eq!(store(&kit, store_port), (accessory.clone(), 1));
    let web: Vec<_> = containers(&kit)
        .into_iter()
        .filter(|(_, n, _)| n.starts_with(&format!("ferry-{}-staging-", kit.prefix())))
        .collect();
    assert_eq!(web.len(), 1, "one routed instance: {web:?}");

    // a person restarts, stops and starts the accessories; their data stays
    let run = s.ferry(&["accessories", "staging", "restart"]);
    assert_eq!(run.code(), 0, "{run}");
    assert!(
        eventually(Duration::from_secs(10), || store(&kit, store_port).1 == 2),
        "restarted once"
    );
    let run = s.ferry(&["accessories", "staging", "logs"]);
    assert_eq!(run.code(), 0, "{run}");
    assert!(run.stdout().contains("store up"), "{run}");
    let run = s.ferry(&["accessories", "staging", "down"]);
    assert_eq!(run.code(), 0, "{run}");
    assert_eq!(store(&kit, store_port).0, "", "stopped");
    assert_eq!(
        body(&s, "staging", "/version"),
        "v2.0.0",
        "the app keeps serving"
    );
    let run = s.ferry(&["accessories", "staging", "up"]);
    assert_eq!(run.code(), 0, "{run}");
    assert!(
        eventually(Duration::from_secs(10), || store(&kit, store_port).1 == 3),
        "the volume kept the boots"
    );

    // a compose file without the routed service: the deploy fails, v2 keeps serving
    let run = s.ferry(&["deploy", "staging", "no-web"]);
    assert_eq!(run.code(), 1, "{run}");
    let d = last_deployment(&s, "staging");
    let show = s.ferry(&["show", &d["id"].to_string()]);
    assert!(show.stdout().contains("no service `web`"), "{show}");
    assert_eq!(body(&s, "staging", "/version"), "v2.0.0");

    // a compose file bind-mounting the state dir: refused before the daemon sees it
    let run = s.ferry(&["deploy", "staging", "hostile"]);
    assert_eq!(run.code(), 1, "{run}");
    let d = last_deployment(&s, "staging");
    assert_eq!(d["state"], "failed", "{d}");
    let show = s.ferry(&["show", &d["id"].to_string()]);
    let said = show.stdout();
    assert!(said.contains("is refused"), "{show}");
    assert!(
        said.contains("service `store`")
            && said.contains(&format!("bind mount of {}", s.state_dir().display())),
        "{show}"
    );
    assert_eq!(body(&s, "staging", "/version"), "v2.0.0");
    let mounts = docker(&[
        "inspect",
        "--format",
        "{{json .Mounts}}",
        &store(&kit, store_port).0,
    ]);
    assert!(!mounts.contains("/state"), "{mounts}");
    s.stop(Signal::SIGTERM);
}

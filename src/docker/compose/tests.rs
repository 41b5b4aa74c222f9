//! Argument lists of both flavours, parsing, validation and the bounded runner, without a daemon.

use super::*;

fn project() -> Project {
    Project {
        name: "Ferry-Shop.staging".to_string(),
        file: "/rel/docker-compose.yml".into(),
        directory: "/shared".into(),
        overrides: vec!["/rel/extra.yml".into()],
    }
}

fn strings(args: &[OsString]) -> Vec<String> {
    args.iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect()
}

const BASE: [&str; 10] = [
    "--ansi",
    "never",
    "-p",
    "ferry-shop-staging",
    "--project-directory",
    "/shared",
    "-f",
    "/rel/docker-compose.yml",
    "-f",
    "/rel/extra.yml",
];

/// The expected arguments: the flavour's prefix, the project's, `rest`.
fn expect(flavor: Flavor, extra_file: Option<&str>, rest: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    if flavor == Flavor::V2 {
        v.push("compose".into());
    }
    v.extend(BASE.iter().map(|s| s.to_string()));
    if let Some(file) = extra_file {
        v.extend(["-f".to_string(), file.to_string()]);
    }
    v.extend(rest.iter().map(|s| s.to_string()));
    v
}

fn spec() -> RunSpec {
    RunSpec {
        service: "web".into(),
        name: "ferry-shop-staging-18001".into(),
        labels: vec![
            ("ferry.app".into(), "shop".into()),
            ("ferry.port".into(), "18001".into()),
        ],
        env: vec![
            ("PORT".into(), "8080".into()),
            ("DATABASE_URL".into(), "postgres://u:hunter2@db/x".into()),
        ],
        mounts: vec![
            ("/srv/shared/uploads".into(), "/app/uploads".into(), false),
            ("/srv/env/config".into(), "/config".into(), true),
        ],
        publish: Some((18001, 8080)),
        image: "ferry/shop:1.2.0-abcdef1".into(),
        command: Some(vec!["serve".into(), "--fast".into()]),
        timeout: Duration::from_secs(30),
    }
}

#[test]
fn queries_of_both_flavours_select_the_project_then_the_subcommand() {
    for flavor in [Flavor::V1, Flavor::V2] {
        let c = Compose::new(flavor, "/usr/bin/docker", "/usr/bin/docker-compose");
        let p = project();
        assert_eq!(
            strings(&c.services_args(&p).unwrap()),
            expect(flavor, None, &["config", "--services"])
        );
        assert_eq!(
            strings(&c.config_args(&p).unwrap()),
            expect(flavor, None, &["config"])
        );
        assert_eq!(
            strings(
                &c.build_args(&p, Path::new("/tmp/o/image.yml"), "web")
                    .unwrap()
            ),
            expect(
                flavor,
                Some("/tmp/o/image.yml"),
                match flavor {
                    Flavor::V1 => &["build", "--force-rm", "--", "web"][..],
                    Flavor::V2 => &["build", "--", "web"][..],
                }
            )
        );
    }
    let v1 = Compose::new(Flavor::V1, "/d/docker", "/d/docker-compose");
    let v2 = Compose::new(Flavor::V2, "/d/docker", "/d/docker-compose");
    assert_eq!(v1.program(v1.flavor()), Path::new("/d/docker-compose"));
    assert_eq!(v2.program(v2.flavor()), Path::new("/d/docker"));
}

#[test]
fn run_names_the_environment_but_never_holds_its_values() {
    for flavor in [Flavor::V1, Flavor::V2] {
        let c = Compose::new(flavor, "docker", "docker-compose");
        let args = strings(
            &c.run_args(&project(), Path::new("/tmp/o/image.yml"), &spec())
                .unwrap(),
        );
        let rest = [
            "run",
            "-d",
            "--no-deps",
            "--name",
            "ferry-shop-staging-18001",
            "-l",
            "ferry.app=shop",
            "-l",
            "ferry.port=18001",
            "--publish",
            "127.0.0.1:18001:8080",
            "-v",
            "/srv/shared/uploads:/app/uploads",
            "-v",
            "/srv/env/config:/config:ro",
            "-e",
            "PORT",
            "-e",
            "DATABASE_URL",
            "--",
            "web",
            "serve",
            "--fast",
        ];
        assert_eq!(args, expect(flavor, Some("/tmp/o/image.yml"), &rest));
        assert!(!args.iter().any(|a| a.contains("hunter2")));
    }
    let debug = format!("{:?}", spec());
    assert!(debug.contains("DATABASE_URL") && !debug.contains("hunter2"));
}

#[test]
fn a_run_without_publish_or_command_ends_with_the_service() {
    let c = Compose::new(Flavor::V1, "docker", "docker-compose");
    let mut s = spec();
    s.publish = None;
    s.command = None;
    s.mounts.clear();
    s.labels.clear();
    let args = strings(&c.run_args(&project(), Path::new("/o.yml"), &s).unwrap());
    assert!(!args.iter().any(|a| a == "--publish"));
    assert_eq!(args.last().map(String::as_str), Some("web"));
    assert_eq!(args[args.len() - 2], "--");
}

#[test]
fn accessories_commands_of_both_flavours() {
    let services = vec!["db".to_string(), "cache".to_string()];
    for flavor in [Flavor::V1, Flavor::V2] {
        let c = Compose::new(flavor, "docker", "docker-compose");
        let p = project();
        assert_eq!(
            strings(&c.up_args(&p, &services, false).unwrap()),
            expect(
                flavor,
                None,
                &[
                    "up",
                    "-d",
                    "--no-deps",
                    "--no-recreate",
                    "--",
                    "db",
                    "cache"
                ]
            )
        );
        assert_eq!(
            strings(&c.up_args(&p, &services, true).unwrap()),
            expect(
                flavor,
                None,
                &["up", "-d", "--no-deps", "--", "db", "cache"]
            )
        );
        assert_eq!(
            strings(&c.stop_args(&p, &services).unwrap()),
            expect(flavor, None, &["stop", "--", "db", "cache"])
        );
        assert_eq!(
            strings(&c.rm_args(&p, &services).unwrap()),
            expect(flavor, None, &["rm", "-f", "--", "db", "cache"])
        );
        assert_eq!(
            strings(&c.restart_args(&p, &services).unwrap()),
            expect(flavor, None, &["restart", "--", "db", "cache"])
        );
        assert_eq!(
            strings(&c.logs_args(&p, &services, 100, true).unwrap()),
            expect(
                flavor,
                None,
                &[
                    "logs",
                    "--no-color",
                    "--tail",
                    "100",
                    "-f",
                    "--",
                    "db",
                    "cache"
                ]
            )
        );
        assert_eq!(
            strings(&c.logs_args(&p, &services, 5, false).unwrap()),
            expect(
                flavor,
                None,
                &["logs", "--no-color", "--tail", "5", "--", "db", "cache"]
            )
        );
    }
}

#[test]
fn ps_filters_on_the_sanitized_project_label() {
    let args = strings(&ps_args(&project()));
    assert_eq!(&args[..4], &["ps", "-a", "--no-trunc", "--filter"]);
    assert_eq!(
        args[4],
        "label=com.docker.compose.project=ferry-shop-staging"
    );
    let out = "abc123\tferry_store_1\trunning\tstore\tFalse\tUp 3 seconds\n\
               def456\tferry-web-1\texited\tweb\tTrue\tExited (1) 2 seconds ago\n\n";
    let states = parse_ps(out);
    assert_eq!(states.len(), 2);
    assert!(states[0].running() && !states[0].one_off);
    assert_eq!(states[0].service, "store");
    assert!(!states[1].running() && states[1].one_off);
    assert_eq!(states[1].status, "Exited (1) 2 seconds ago");
}

#[test]
fn project_names_follow_compose_rules() {
    assert_eq!(project_name("ferry-Shop-staging"), "ferry-shop-staging");
    assert_eq!(project_name("my app.prod"), "my-app-prod");
    assert_eq!(project_name("-_x"), "x");
    assert_eq!(project_name("été"), "t-");
    assert_eq!(project_name("..."), "ferry");
    assert_eq!(
        Project::new("A B", "/f.yml", "/d").name,
        "a-b",
        "Project::new sanitizes"
    );
}

#[test]
fn values_that_would_be_read_as_options_or_split_are_refused() {
    let c = Compose::new(Flavor::V1, "docker", "docker-compose");
    let p = project();
    let o = Path::new("/o.yml");
    let refused = |s: RunSpec| match c.run_args(&p, o, &s) {
        Err(ComposeError::Invalid { .. }) => {}
        other => panic!("{s:?} gave {other:?}"),
    };
    refused(RunSpec {
        service: "--privileged".into(),
        ..spec()
    });
    refused(RunSpec {
        name: "-x".into(),
        ..spec()
    });
    refused(RunSpec {
        image: "--entrypoint=sh".into(),
        ..spec()
    });
    refused(RunSpec {
        env: vec![("A=B".into(), "v".into())],
        ..spec()
    });
    refused(RunSpec {
        mounts: vec![("/a:/etc".into(), "/x".into(), true)],
        ..spec()
    });
    refused(RunSpec {
        mounts: vec![("relative".into(), "/x".into(), true)],
        ..spec()
    });
    refused(RunSpec {
        labels: vec![("k".into(), "line\nbreak".into())],
        ..spec()
    });
    assert!(matches!(
        c.up_args(&p, &["-d".to_string()], true),
        Err(ComposeError::Invalid { .. })
    ));
    let relative = Project {
        file: "docker-compose.yml".into(),
        ..project()
    };
    assert!(matches!(
        c.services_args(&relative),
        Err(ComposeError::Invalid { .. })
    ));
}

#[test]
fn the_image_override_sets_only_the_image_of_the_service() {
    let body = image_override("web", "ferry/shop:1.0.0-abc");
    let parsed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        parsed,
        serde_json::json!({"services": {"web": {"image": "ferry/shop:1.0.0-abc"}}})
    );
    let written = ImageOverride::write("web", "ferry/shop:1").unwrap();
    let path = written.path().to_path_buf();
    assert!(
        std::fs::read_to_string(&path)
            .unwrap()
            .contains("ferry/shop:1")
    );
    drop(written);
    assert!(!path.exists(), "the override is removed with its guard");
}

#[test]
fn config_output_tells_which_services_build_and_how_they_network() {
    // as v1 1.29 prints it
    let out = "services:\n  store:\n    command:\n    - sh\n    image: busybox-x\n    network_mode: host\n    volumes:\n    - data:/data:rw\n  web:\n    build:\n      context: /tmp/app\n    network_mode: host\n  '8080':\n    image: y\nversion: '3.8'\nvolumes:\n  data: {}\n";
    let services = parse_config(out).unwrap();
    assert_eq!(services.len(), 3);
    assert_eq!(
        services[0],
        ServiceInfo {
            name: "store".into(),
            build: false,
            image: Some("busybox-x".into()),
            network_mode: Some("host".into()),
        }
    );
    assert!(services[1].build && services[1].image.is_none());
    assert_eq!(services[2].name, "8080");
    assert!(parse_config("services: [").is_err());
    assert!(parse_config("").unwrap().is_empty());
}

#[tokio::test]
async fn a_failing_command_keeps_the_last_lines_of_its_output() {
    let args: Vec<OsString> = [
        "-c",
        "for i in $(seq 1 100); do echo line $i; done >&2; exit 3",
    ]
    .map(OsString::from)
    .to_vec();
    let err = run_bounded(
        Path::new("/bin/sh"),
        &args,
        &[],
        Capture::Split,
        Duration::from_secs(30),
        1024,
    )
    .await
    .unwrap_err();
    let ComposeError::Failed { tail, status, .. } = err else {
        panic!("{err:?}")
    };
    assert!(status.contains('3'), "{status}");
    let lines: Vec<&str> = tail.lines().collect();
    assert_eq!(lines.len(), TAIL_LINES);
    assert_eq!(lines[0], "line 61");
    assert_eq!(lines[TAIL_LINES - 1], "line 100");
}

#[tokio::test]
async fn merged_output_keeps_its_order_and_stdout_stays_data() {
    let args: Vec<OsString> = ["-c", "echo one; echo two >&2; echo three"]
        .map(OsString::from)
        .to_vec();
    let sh = Path::new("/bin/sh");
    let t = Duration::from_secs(30);
    let merged = run_bounded(sh, &args, &[], Capture::Merged, t, 1024)
        .await
        .unwrap();
    assert_eq!(merged.log, "one\ntwo\nthree");
    let split = run_bounded(sh, &args, &[], Capture::Split, t, 1024)
        .await
        .unwrap();
    assert_eq!(split.stdout, "one\nthree\n");
    assert_eq!(split.log, "two");
}

#[tokio::test]
async fn compose_sees_only_its_allowlist_and_the_values_given() {
    // FERRY_API_TOKEN-like variables of ferry's own environment are not passed; `HOME` is
    let args: Vec<OsString> = ["-c", "env"].map(OsString::from).to_vec();
    let env = vec![("APP_SECRET".to_string(), "s3cr3t".to_string())];
    let ran = run_bounded(
        Path::new("/bin/sh"),
        &args,
        &env,
        Capture::Split,
        Duration::from_secs(30),
        1 << 20,
    )
    .await
    .unwrap();
    assert!(ran.stdout.contains("APP_SECRET=s3cr3t"));
    for line in ran.stdout.lines() {
        let name = line.split('=').next().unwrap_or_default();
        assert!(
            name == "APP_SECRET"
                || name == "PWD"
                || name == "SHLVL"
                || name == "_"
                || PASSED_ENV.contains(&name),
            "{name} leaked into compose's environment"
        );
    }
    assert!(ran.stdout.contains("PATH="));
}

#[tokio::test]
async fn a_command_past_its_timeout_is_killed_with_its_children() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("grandchild");
    let script = format!(
        "sleep 300 & echo $! > {}; echo started; wait",
        pidfile.display()
    );
    let args = vec![OsString::from("-c"), OsString::from(script)];
    let err = run_bounded(
        Path::new("/bin/sh"),
        &args,
        &[],
        Capture::Merged,
        // long enough for a loaded machine to start the shell and its child
        Duration::from_secs(3),
        1024,
    )
    .await
    .unwrap_err();
    let ComposeError::Timeout { tail, .. } = err else {
        panic!("{err:?}")
    };
    assert_eq!(tail, "started");
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // the grandchild was killed with the group: reaped by init, or at worst a zombie (a
    // SIGKILL is delivered at once, but a loaded machine may take a moment to act on it)
    let alive = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
    };
    for _ in 0..50 {
        if !alive() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!alive(), "the build's children outlived the timeout");
}

/// A fake `docker` with the v2 plugin: it records its arguments and the value of `DATABASE_URL`
/// it was given, and answers `compose version`, `compose run` and `container inspect`.
fn fake_docker(dir: &Path) -> PathBuf {
    let path = dir.join("docker");
    let d = dir.display();
    let script = format!(
        r#"#!/bin/sh
printf '%s\n' "$*" >> {d}/calls
case "$1 $2" in
  "compose version") echo "Docker Compose version v2.99.0" ;;
  "container inspect")
    if [ -f {d}/created ]; then echo 0123abcdef; else echo "Error: No such container: $6" >&2; exit 1; fi ;;
  "compose --ansi")
    case " $* " in
      *" run "*) touch {d}/created; printf '%s' "$DATABASE_URL" > {d}/env; echo 0123abcdef ;;
    esac ;;
esac
"#
    );
    std::fs::write(&path, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[tokio::test]
async fn v2_is_preferred_and_run_passes_values_through_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let docker = fake_docker(dir.path());
    let c = Compose::detect_programs(docker, dir.path().join("no-docker-compose"))
        .await
        .unwrap();
    assert_eq!(c.flavor(), Flavor::V2);
    assert_eq!(c.version(), "Docker Compose version v2.99.0");
    let id = c.run(&project(), &spec()).await.unwrap();
    assert_eq!(id, "0123abcdef");
    let env = std::fs::read_to_string(dir.path().join("env")).unwrap();
    assert_eq!(env, "postgres://u:hunter2@db/x");
    let calls = std::fs::read_to_string(dir.path().join("calls")).unwrap();
    assert!(
        calls.contains("-e DATABASE_URL -- web serve --fast"),
        "{calls}"
    );
    assert!(!calls.contains("hunter2"), "{calls}");
    // a taken name is refused before compose runs
    let err = c.run(&project(), &spec()).await.unwrap_err();
    assert!(matches!(err, ComposeError::NameInUse(_)), "{err:?}");
}

#[tokio::test]
async fn no_compose_at_all_names_both_commands_tried() {
    let dir = tempfile::tempdir().unwrap();
    let err = Compose::detect_programs(dir.path().join("docker"), dir.path().join("dc"))
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, ComposeError::NotInstalled { .. }));
    assert!(message.contains("docker compose version"), "{message}");
    assert!(message.contains("dc version"), "{message}");
    assert!(message.contains("not found"), "{message}");
}

// ---- vet: what a release's compose file may ask of the daemon ----

const SHARED: &str = "/srv/ferry-vet-test/shared";
const RELEASE: &str = "/srv/ferry-vet-test/releases/r1";

fn allowed() -> Vec<PathBuf> {
    vec![SHARED.into(), RELEASE.into()]
}

/// The problems `config` output with `service`'s body (indented YAML) gets.
fn vet_service(body: &str) -> Vec<String> {
    let yaml = format!("services:\n  evil:\n    image: busybox\n{body}");
    vet::config_problems(&yaml, "ferry-shop-staging", &allowed())
}

fn refused(body: &str, needle: &str) {
    let problems = vet_service(body);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("service `evil`") && p.contains(needle)),
        "{body:?} should be refused naming the service and `{needle}`: {problems:?}"
    );
}

#[test]
fn vet_accepts_a_realistic_stack_in_both_flavours_output() {
    // docker-compose v1's `config`
    let v1 = format!(
        r#"services:
  web:
    build:
      context: {RELEASE}
      dockerfile: Dockerfile
      args:
        MODE: prod
    command: ["/bin/app", "serve"]
    depends_on: [db, cache]
    environment:
      DATABASE_URL: postgres://db/app
    expose: ["8080"]
    healthcheck:
      test: ["CMD", "wget", "-q", "-O-", "http://127.0.0.1:8080/health"]
      interval: 10s
    init: true
    network_mode: host
    read_only: true
    cap_drop: [ALL]
    security_opt: ["no-new-privileges:true"]
    tmpfs: [/tmp]
    user: "1000:1000"
    working_dir: /app
    stop_grace_period: 20s
    stop_signal: SIGTERM
    labels: {{team: shop}}
    logging: {{driver: json-file, options: {{max-size: 10m}}}}
    ulimits: {{nofile: {{soft: 1024, hard: 2048}}}}
    mem_limit: 512m
    cpus: 0.5
    privileged: false
  db:
    image: postgres:16
    restart: unless-stopped
    ports: ["127.0.0.1:5432:5432/tcp"]
    volumes:
    - pgdata:/var/lib/postgresql/data:rw
    - {SHARED}/initdb:/docker-entrypoint-initdb.d:ro
    - {RELEASE}/conf/pg.conf:/etc/pg.conf:ro
  cache:
    image: redis:7
    entrypoint: redis-server
    networks: [back]
    ports:
    - {{target: 6379, published: 6379, host_ip: 127.0.0.1, protocol: tcp}}
    volumes:
    - {{type: volume, source: cachedata, target: /data}}
    - {{type: bind, source: {SHARED}/redis, target: /conf, read_only: true}}
    - {{type: tmpfs, target: /run}}
version: '3.8'
volumes:
  pgdata: {{}}
  cachedata:
    driver: local
networks:
  back: {{}}
"#
    );
    assert_eq!(
        vet::config_problems(&v1, "ferry-shop-staging", &allowed()),
        Vec::<String>::new()
    );
    // compose v2 names the project's own volumes and networks
    let v2 = "name: ferry-shop-staging\nservices:\n  db:\n    image: postgres:16\n    networks:\n      default: null\n    volumes:\n    - type: volume\n      source: pgdata\n      target: /data\n      volume: {}\nvolumes:\n  pgdata:\n    name: ferry-shop-staging_pgdata\nnetworks:\n  default:\n    name: ferry-shop-staging_default\n";
    assert_eq!(
        vet::config_problems(v2, "ferry-shop-staging", &allowed()),
        Vec::<String>::new()
    );
}

#[test]
fn vet_refuses_each_dangerous_service_key_naming_the_service() {
    for (body, needle) in [
        ("    privileged: true\n", "privileged"),
        ("    cap_add: [SYS_ADMIN]\n", "cap_add"),
        ("    pid: host\n", "pid: host"),
        ("    ipc: host\n", "ipc: host"),
        ("    uts: host\n", "uts: host"),
        ("    userns_mode: host\n", "userns_mode: host"),
        ("    pid: container:prod\n", "pid: container:prod"),
        ("    devices: [\"/dev/sda:/dev/sda\"]\n", "devices"),
        (
            "    deploy: {resources: {reservations: {devices: [{capabilities: [gpu]}]}}}\n",
            "deploy.resources.reservations.devices",
        ),
        (
            "    security_opt: [\"seccomp:unconfined\"]\n",
            "seccomp:unconfined",
        ),
        (
            "    security_opt: [\"apparmor:unconfined\"]\n",
            "apparmor:unconfined",
        ),
        (
            "    volumes_from: [\"container:ferry-shop-production\"]\n",
            "volumes_from",
        ),
        (
            "    network_mode: container:ferry-shop-production\n",
            "network_mode",
        ),
        (
            "    container_name: ferry-shop-production-db\n",
            "container_name",
        ),
        ("    sysctls: {net.core.somaxconn: 1024}\n", "sysctls"),
        ("    cgroup_parent: /\n", "cgroup_parent"),
        ("    runtime: runc\n", "runtime"),
        ("    some_future_key: 1\n", "some_future_key"),
        (
            "    env_file: [/var/lib/ferry/production/env]\n",
            "env_file",
        ),
        // bind mounts: the state dir, the root, the daemon's socket, short and long syntax
        (
            "    volumes: [\"/var/lib/ferry:/state:rw\"]\n",
            "/var/lib/ferry",
        ),
        ("    volumes: [\"/:/host\"]\n", "bind mount of /:"),
        (
            "    volumes: [\"/var/run/docker.sock:/var/run/docker.sock\"]\n",
            "docker.sock",
        ),
        (
            "    volumes:\n    - {type: bind, source: /etc, target: /e}\n",
            "bind mount of /etc",
        ),
        (
            &format!("    volumes: [\"{SHARED}/../../production/shared:/p\"]\n"),
            "..",
        ),
        (
            &format!(
                "    volumes:\n    - {{type: bind, source: {SHARED}, target: /s, bind: {{propagation: rshared}}}}\n"
            ),
            "propagation",
        ),
        // ports on every address
        ("    ports: [\"8080:80\"]\n", "8080:80"),
        ("    ports: [\"0.0.0.0:8080:80/tcp\"]\n", "0.0.0.0:8080:80"),
        ("    ports: [\"80\"]\n", "every address"),
        ("    ports: [80]\n", "every address"),
        (
            "    ports:\n    - {target: 80, published: 8080}\n",
            "every address",
        ),
        (
            "    ports:\n    - {target: 80, published: 8080, host_ip: 0.0.0.0}\n",
            "0.0.0.0",
        ),
        // builds outside the release
        (
            "    build: {context: /var/lib/ferry}\n",
            "context /var/lib/ferry",
        ),
        (
            &format!(
                "    build: {{context: {RELEASE}, dockerfile: ../../production/Dockerfile}}\n"
            ),
            "dockerfile",
        ),
        (
            &format!("    build: {{context: {RELEASE}, dockerfile: /etc/shadow}}\n"),
            "dockerfile /etc/shadow",
        ),
        (
            "    build: {context: \"https://example.com/x.git\"}\n",
            "context",
        ),
        (
            &format!("    build: {{context: {RELEASE}, ssh: [default]}}\n"),
            "`ssh`",
        ),
    ] {
        refused(body, needle);
    }
}

#[test]
fn vet_lists_every_problem_in_its_message() {
    let problems = vet_service("    privileged: true\n    pid: host\n    ports: [\"8080:80\"]\n");
    assert_eq!(problems.len(), 3, "{problems:?}");
    let e = ComposeError::Refused {
        file: "/rel/docker-compose.yml".into(),
        problems,
    };
    let message = e.to_string();
    assert!(
        message.contains("/rel/docker-compose.yml is refused"),
        "{message}"
    );
    for needle in ["privileged", "pid: host", "8080:80"] {
        assert!(message.contains(needle), "{message}");
    }
}

#[test]
fn vet_refuses_volumes_networks_and_secrets_of_the_host_or_other_projects() {
    for (top, needle) in [
        (
            "volumes:\n  data:\n    driver_opts: {type: none, o: bind, device: /var/lib/ferry}\n",
            "driver_opts",
        ),
        ("volumes:\n  data:\n    external: true\n", "external"),
        (
            "volumes:\n  data:\n    name: ferry-shop-production_data\n",
            "named",
        ),
        (
            "networks:\n  back:\n    external: true\n",
            "networks `back`",
        ),
        (
            "secrets:\n  key:\n    file: /var/lib/ferry/secret\n",
            "secrets `key`",
        ),
        ("include: [/etc/other.yml]\n", "include"),
    ] {
        let yaml = format!("services:\n  db:\n    image: busybox\n{top}");
        let problems = vet::config_problems(&yaml, "ferry-shop-staging", &allowed());
        assert!(
            problems.iter().any(|p| p.contains(needle)),
            "{top:?} should be refused with `{needle}`: {problems:?}"
        );
    }
}

#[test]
fn vet_reads_the_source_for_what_config_resolves_away() {
    let dir = Path::new(SHARED);
    // `config` inlines env files into `environment`: the file as written is checked
    for (source, needle) in [
        (
            "services:\n  db:\n    image: x\n    env_file: /var/lib/ferry/production/env\n",
            "env_file",
        ),
        (
            "services:\n  db:\n    image: x\n    env_file: [ok.env, ../../production/shared/.env]\n",
            "..",
        ),
        (
            "services:\n  db:\n    image: x\n    env_file:\n    - path: /etc/shadow\n",
            "/etc/shadow",
        ),
        (
            "services:\n  db:\n    image: x\n    env_file: ${HOME}/x\n",
            "variables",
        ),
        // hidden behind an anchor and a merge key
        (
            "x-common: &common\n  env_file: /var/lib/ferry/env\nservices:\n  db:\n    <<: *common\n    image: x\n",
            "env_file",
        ),
        (
            "services:\n  db:\n    extends: {file: /var/lib/ferry/other.yml, service: db}\n",
            "extends",
        ),
        ("include: [../other.yml]\nservices: {}\n", "include"),
    ] {
        let problems = vet::source_problems(source, dir, &allowed());
        assert!(
            problems.iter().any(|p| p.contains(needle)),
            "{source:?} should be refused with `{needle}`: {problems:?}"
        );
    }
    let fine = "services:\n  db:\n    image: x\n    env_file: [db.env]\n    extends: {service: base}\n  base:\n    image: x\n";
    assert_eq!(
        vet::source_problems(fine, dir, &allowed()),
        Vec::<String>::new()
    );
}

#[test]
fn vet_follows_symlinks_out_of_an_allowed_dir() {
    let root = tempfile::tempdir().unwrap();
    let shared = root.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::os::unix::fs::symlink("/etc", shared.join("etc")).unwrap();
    let yaml = format!(
        "services:\n  db:\n    image: x\n    volumes:\n    - {0}/etc:/e:ro\n    - {0}/data:/d:rw\n",
        shared.display()
    );
    let problems = vet::config_problems(&yaml, "p", std::slice::from_ref(&shared));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("/etc:") || problems[0].contains("etc"),
        "{problems:?}"
    );
    assert!(problems[0].contains("outside"), "{problems:?}");
}

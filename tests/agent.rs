//! The agent on a host (`ferry agent --dir D`), driven through ferry's client as the
//! pipeline drives it, but without ssh: the command the client runs is this build's own
//! `ferry agent --dir <tmp>`. Real daemons, real instances of the sample app, real HTTP
//! through the agent's proxy on loopback.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry::agent::protocol::{HealthRequest, SecretVars, StartRequest};
use ferry::agent::{Agent, AgentError, ErrorKind};
use support::{FERRY, free_port, processes_in};
use tokio::process::Command;

const APP: &str = "shop";
const ENV: &str = "production";

/// A host: an agent dir in a temp dir; every process left in it is killed at the end.
struct Host {
    dir: tempfile::TempDir,
}

impl Host {
    fn new() -> Host {
        Host {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn agent_dir(&self) -> PathBuf {
        self.dir.path().join("agent")
    }

    /// What ssh would run on the host.
    fn agent_command(&self) -> Command {
        let mut cmd = Command::new(FERRY);
        cmd.arg("agent").arg("--dir").arg(self.agent_dir());
        cmd
    }

    fn receive(&self) -> impl Fn(Vec<String>) -> Command + use<> {
        let dir = self.agent_dir();
        move |args| {
            let mut cmd = Command::new(FERRY);
            cmd.arg("agent")
                .arg("--dir")
                .arg(&dir)
                .arg("receive")
                .args(args);
            cmd
        }
    }

    async fn connect(&self) -> Agent {
        Agent::connect(self.agent_command(), "app1.test")
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", self.agent_log()))
    }

    fn agent_log(&self) -> String {
        std::fs::read_to_string(self.agent_dir().join("agent.log")).unwrap_or_default()
    }

    /// The pids of the relays running for this host.
    fn relays(&self) -> Vec<u32> {
        let dir = self.agent_dir().display().to_string();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                    return false;
                };
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let cmdline = String::from_utf8_lossy(&cmdline);
                cmdline.contains(&dir)
                    && !cmdline.contains("--daemon")
                    && !cmdline.contains("receive")
                    && !stat.contains(") Z")
            })
            .collect()
    }

    /// The daemon's pid.
    fn daemon_pid(&self) -> Option<u32> {
        processes_in(self.dir.path())
            .into_iter()
            .map(|(pid, _)| pid)
            .find(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains("--daemon"))
            })
    }

    /// Makes a release dir of the sample app: `app.conf`, `release.txt`, and `extra` files.
    fn release(&self, name: &str, conf: &str, extra: &[(&str, &[u8])]) -> (PathBuf, String) {
        let dir = self.dir.path().join("build").join(name);
        std::fs::create_dir_all(dir.join("assets")).unwrap();
        std::fs::write(dir.join("app.conf"), conf).unwrap();
        std::fs::write(dir.join("release.txt"), name).unwrap();
        for (path, bytes) in extra {
            std::fs::write(dir.join(path), bytes).unwrap();
        }
        let digest = ferry::release::digest(&dir, &[]).unwrap();
        (dir, digest)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let own = nix::unistd::getpgrp().as_raw() as u32;
        for (pid, pgid) in processes_in(self.dir.path()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            if pgid != own {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pgid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

fn start_request(release: &str, secrets: SecretVars) -> StartRequest {
    StartRequest {
        app: APP.into(),
        env: ENV.into(),
        release: release.into(),
        start: format!("'{FERRY}' sample-app"),
        vars: vec![
            ("APP_VERSION".into(), release.into()),
            ("FERRY_ENVIRONMENT".into(), ENV.into()),
        ],
        secrets,
        stop_timeout_ms: 2000,
    }
}

fn health(instance: u64) -> HealthRequest {
    HealthRequest {
        app: APP.into(),
        env: ENV.into(),
        instance,
        paths: vec!["/health".into()],
        expect_status: 200,
        startup_delay_ms: 0,
        interval_ms: 100,
        timeout_ms: 1000,
        retries: 50,
    }
}

async fn get(url: &str) -> Option<(u16, String)> {
    let client = crate::support::async_http()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let resp = client.get(url).send().await.ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.text().await.unwrap_or_default()))
}

/// Ships, starts, health-checks and switches to `release`; its instance id.
async fn deploy(host: &Host, agent: &Agent, release: &str, listen: &str) -> u64 {
    let (dir, digest) = host.release(release, "health_status = 200\n", &[]);
    agent
        .ship(host.receive(), APP, release, &dir, &digest, &[])
        .await
        .unwrap();
    let started = agent
        .start(&start_request(release, SecretVars::default()))
        .await
        .unwrap();
    agent.health(&health(started.instance)).await.unwrap();
    agent
        .switch(APP, ENV, started.instance, listen)
        .await
        .unwrap();
    started.instance
}

/// Every entry under `dir`, relative.
fn entries(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(read) = std::fs::read_dir(dir) else {
        return found;
    };
    for e in read.flatten() {
        found.push(e.file_name().to_string_lossy().into_owned());
    }
    found.sort();
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_is_shipped_started_switched_to_and_the_old_one_drained() {
    let host = Host::new();
    let agent = host.connect().await;
    assert_eq!(agent.hello().protocol, 1);
    assert!(agent.hello().free_bytes > 0);

    let (v1_dir, v1_digest) = host.release("v1", "health_status = 200\n", &[]);
    let shipped = agent
        .ship(host.receive(), APP, "v1", &v1_dir, &v1_digest, &[])
        .await
        .unwrap();
    assert!(!shipped.present);
    assert_eq!(shipped.files_sent, 2, "{shipped:?}");
    assert!(shipped.bytes_sent > 0);
    // on the host: the same bytes, digest and all
    let on_host = host.agent_dir().join("apps/shop/releases/v1");
    assert_eq!(ferry::release::digest(&on_host, &[]).unwrap(), v1_digest);
    let again = agent
        .ship(host.receive(), APP, "v1", &v1_dir, &v1_digest, &[])
        .await
        .unwrap();
    assert!(again.present);
    assert_eq!((again.files_sent, again.bytes_sent), (0, 0));

    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let url = format!("http://{listen}/");
    let v1 = agent
        .start(&start_request("v1", SecretVars::default()))
        .await
        .unwrap();
    let log = agent.health(&health(v1.instance)).await.unwrap();
    assert!(log.contains("healthy"), "{log}");
    assert_eq!(
        agent.switch(APP, ENV, v1.instance, &listen).await.unwrap(),
        None
    );
    let (status, body) = get(&url).await.expect("the agent's proxy answers");
    assert_eq!(status, 200);
    assert!(body.contains("v1"), "{body}");

    let v2 = deploy(&host, &agent, "v2", &listen).await;
    let (_, body) = get(&url).await.unwrap();
    assert!(body.contains("v2"), "{body}");
    let status = agent.status(APP, ENV).await.unwrap();
    assert_eq!(status.serving.as_ref().map(|s| s.id), Some(v2));
    assert_eq!(status.instances.len(), 2, "the old one keeps running, warm");
    assert_eq!(status.listen.as_deref(), Some(listen.as_str()));
    let names: Vec<&str> = status.releases.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["v1", "v2"]);

    // the serving one cannot be stopped; the old one is drained and stopped
    let refused = agent
        .stop(APP, ENV, v2, Duration::from_secs(5), Duration::from_secs(2))
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), Some(ErrorKind::BadRequest), "{refused}");
    let report = agent
        .stop(
            APP,
            ENV,
            v1.instance,
            Duration::from_secs(5),
            Duration::from_secs(2),
        )
        .await
        .unwrap();
    assert!(report.contains("stopped v1"), "{report}");
    assert!(
        support::eventually(Duration::from_secs(5), || !support::alive(v1.pid)),
        "v1's process is gone"
    );
    let status = agent.status(APP, ENV).await.unwrap();
    assert_eq!(status.instances.len(), 1);
    let (_, body) = get(&url).await.unwrap();
    assert!(body.contains("v2"), "{body}");
    // what the state file says, read by a person
    let state =
        std::fs::read_to_string(host.agent_dir().join("state/shop/production.json")).unwrap();
    assert!(state.contains(&format!("\"serving\": {v2}")), "{state}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_and_the_proxy_outlive_the_connection() {
    let host = Host::new();
    let listen = format!("127.0.0.1:{}", free_port());
    let url = format!("http://{listen}/");
    let agent = host.connect().await;
    let id = deploy(&host, &agent, "v1", &listen).await;
    let pid = agent.status(APP, ENV).await.unwrap().serving.unwrap().pid;
    // the ssh connection goes: the relay is killed with the client
    drop(agent);
    assert!(
        support::eventually(Duration::from_secs(5), || host.relays().is_empty()),
        "the relay is gone"
    );
    let (status, body) = get(&url).await.expect("still served");
    assert_eq!(status, 200);
    assert!(body.contains("v1"), "{body}");
    let again = host.connect().await;
    let status = again.status(APP, ENV).await.unwrap();
    let serving = status.serving.expect("still serving");
    assert_eq!((serving.id, serving.pid, serving.alive), (id, pid, true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_of_another_digest_is_refused_and_nothing_is_left() {
    let host = Host::new();
    let agent = host.connect().await;
    let (dir, _) = host.release("v1", "health_status = 200\n", &[]);
    let wrong = format!("sha256:{}", "0".repeat(64));
    let err = agent
        .ship(host.receive(), APP, "v1", &dir, &wrong, &[])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), Some(ErrorKind::Digest), "{err}");
    assert!(err.to_string().starts_with("app1.test: "), "{err}");
    assert_eq!(
        entries(&host.agent_dir().join("apps/shop/releases")),
        Vec::<String>::new()
    );
    assert!(!agent.has_release(APP, "v1", &wrong).await.unwrap());
    let refused = agent
        .start(&start_request("v1", SecretVars::default()))
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), Some(ErrorKind::NotFound), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_health_check_answers_unhealthy_with_the_apps_last_lines() {
    let host = Host::new();
    let agent = host.connect().await;
    let (dir, digest) = host.release("v1", "health_status = 500\n", &[]);
    agent
        .ship(host.receive(), APP, "v1", &dir, &digest, &[])
        .await
        .unwrap();
    let mut request = start_request("v1", SecretVars::default());
    request.start = "echo 'cannot open the database: no such table users'; exit 3".into();
    let started = agent.start(&request).await.unwrap();
    let err = agent.health(&health(started.instance)).await.unwrap_err();
    let AgentError::Remote { kind, lines, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(*kind, ErrorKind::Unhealthy, "{err}");
    assert!(
        lines.iter().any(|l| l.contains("no such table users")),
        "{lines:?}"
    );
    // a release answering 500 is unhealthy too, after its retries
    let started = agent
        .start(&start_request("v1", SecretVars::default()))
        .await
        .unwrap();
    let mut quick = health(started.instance);
    quick.retries = 3;
    let err = agent.health(&quick).await.unwrap_err();
    assert_eq!(err.kind(), Some(ErrorKind::Unhealthy), "{err}");
    assert!(err.to_string().contains("answered 500"), "{err}");
}

/// One entry of a hostile archive: its path (written raw, so `..` gets through), type and
/// link target.
fn entry(path: &str, kind: tar::EntryType, link: &str) -> (String, tar::EntryType, String) {
    (path.to_string(), kind, link.to_string())
}

fn hostile_tar(entries: &[(String, tar::EntryType, String)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, kind, link) in entries {
        let mut header = tar::Header::new_gnu();
        let name = &mut header.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_entry_type(*kind);
        if matches!(kind, tar::EntryType::Symlink | tar::EntryType::Link) {
            header.set_link_name(link).unwrap();
        }
        header.set_mode(0o644);
        let body: &[u8] = if *kind == tar::EntryType::Regular {
            b"pwned\n"
        } else {
            b""
        };
        header.set_size(body.len() as u64);
        header.set_cksum();
        builder.append(&header, body).unwrap();
    }
    builder.into_inner().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_archive_writes_nothing_outside_the_release() {
    use tar::EntryType::{Char, Directory, Fifo, Link, Regular, Symlink};
    let host = Host::new();
    let outside = host.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let out = outside.display().to_string();
    let cases = [
        (
            "dot-dot",
            // from releases/.incoming-…/ up to the test's dir
            vec![entry("../../../../../outside/pwned", Regular, "")],
        ),
        (
            "absolute",
            vec![entry(&format!("{out}/pwned"), Regular, "")],
        ),
        (
            "through a link",
            vec![
                entry("link", Symlink, &out),
                entry("link/pwned", Regular, ""),
            ],
        ),
        ("a link out", vec![entry("passwd", Symlink, "/etc/passwd")]),
        ("a device", vec![entry("dev", Char, "")]),
        ("a fifo", vec![entry("fifo", Fifo, "")]),
        ("a hard link", vec![entry("hard", Link, "/etc/passwd")]),
        (
            "a dir over a link",
            vec![entry("d", Symlink, &out), entry("d", Directory, "")],
        ),
        ("a manifest naming ../x", Vec::new()),
    ];
    for (case, archive) in cases {
        let archive = hostile_tar(&archive);
        let mut cmd = (host.receive())(ferry::agent::receive_args(
            APP,
            "v1",
            &format!("sha256:{}", "0".repeat(64)),
            &[],
            6,
        ));
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let mut input = if case.contains("manifest") {
            br#"[{"path":"../x","mode":420,"size":1,"sha256":"00"}]"#.to_vec()
        } else {
            b"[]".to_vec()
        };
        input.push(b'\n');
        input.extend_from_slice(&archive);
        tokio::io::AsyncWriteExt::write_all(&mut stdin, &input)
            .await
            .ok();
        drop(stdin);
        let out = child.wait_with_output().await.unwrap();
        let answer: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{case}: {e}: {}", String::from_utf8_lossy(&out.stdout)));
        assert_eq!(out.status.code(), Some(1), "{case}: {answer}");
        assert_eq!(answer["error"]["kind"], "bad_request", "{case}: {answer}");
        assert_eq!(entries(&outside), Vec::<String>::new(), "{case}");
        assert_eq!(
            entries(&host.agent_dir().join("apps/shop/releases")),
            Vec::<String>::new(),
            "{case}: nothing left behind"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_daemon_is_replaced_by_one_that_adopts_what_runs() {
    let host = Host::new();
    let listen = format!("127.0.0.1:{}", free_port());
    let url = format!("http://{listen}/");
    let agent = host.connect().await;
    let id = deploy(&host, &agent, "v1", &listen).await;
    let pid = agent.status(APP, ENV).await.unwrap().serving.unwrap().pid;
    let daemon = host.daemon_pid().expect("a daemon runs");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // the connection through it ends: calls fail as lost, the channel closed (no timeout)
    let err = agent.status(APP, ENV).await.unwrap_err();
    assert!(err.is_lost(), "{err}");
    assert!(!err.to_string().contains("no answer"), "{err}");
    drop(agent);
    assert!(support::eventually(
        Duration::from_secs(5),
        || !support::alive(daemon)
            || std::fs::read_to_string(format!("/proc/{daemon}/stat"))
                .is_ok_and(|s| s.contains(") Z"))
    ));
    assert!(support::alive(pid), "the instance outlives its daemon");
    // the next connection starts a daemon, which adopts the instance and serves it again
    let agent = host.connect().await;
    let serving = agent
        .status(APP, ENV)
        .await
        .unwrap()
        .serving
        .expect("serving");
    assert_eq!((serving.id, serving.pid, serving.alive), (id, pid, true));
    assert_ne!(host.daemon_pid(), Some(daemon));
    let (status, body) = get(&url).await.expect("the proxy listens again");
    assert_eq!(status, 200);
    assert!(body.contains("v1"), "{body}");
    // and it is a real adoption: the next release replaces it as usual
    let v2 = deploy(&host, &agent, "v2", &listen).await;
    let report = agent
        .stop(APP, ENV, id, Duration::from_secs(5), Duration::from_secs(2))
        .await
        .unwrap();
    assert!(report.contains("stopped v1"), "{report}");
    assert!(support::eventually(Duration::from_secs(5), || {
        !support::alive(pid)
    }));
    let status = agent.status(APP, ENV).await.unwrap();
    assert_eq!(status.serving.map(|s| s.id), Some(v2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_of_another_build_retires_and_the_new_one_adopts() {
    let host = Host::new();
    // another build of ferry: the same bytes under another path are another identity
    let other = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let old_ferry = other.path().join("ferry-old");
    if std::fs::hard_link(FERRY, &old_ferry).is_err() {
        std::fs::copy(FERRY, &old_ferry).unwrap();
    }
    let listen = format!("127.0.0.1:{}", free_port());
    let mut old_cmd = Command::new(&old_ferry);
    old_cmd.arg("agent").arg("--dir").arg(host.agent_dir());
    let old = Agent::connect(old_cmd, "app1.test").await.unwrap();
    let id = deploy(&host, &old, "v1", &listen).await;
    let old_version = old.hello().version.clone();
    let old_daemon = host.daemon_pid().unwrap();
    let pid = old.status(APP, ENV).await.unwrap().serving.unwrap().pid;
    drop(old);
    let agent = host.connect().await;
    assert_ne!(agent.hello().version, old_version);
    assert!(support::eventually(
        Duration::from_secs(5),
        || !support::alive(old_daemon)
            || std::fs::read_to_string(format!("/proc/{old_daemon}/stat"))
                .is_ok_and(|s| s.contains(") Z"))
    ));
    let serving = agent
        .status(APP, ENV)
        .await
        .unwrap()
        .serving
        .expect("serving");
    assert_eq!((serving.id, serving.pid), (id, pid));
    let (_, body) = get(&format!("http://{listen}/")).await.expect("served");
    assert!(body.contains("v1"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_differing_by_one_file_sends_only_that_file() {
    let host = Host::new();
    let agent = host.connect().await;
    let big: Vec<u8> = (0..512 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
    let (v1, d1) = host.release("v1", "health_status = 200\n", &[("assets/big.bin", &big)]);
    let first = agent
        .ship(host.receive(), APP, "v1", &v1, &d1, &[])
        .await
        .unwrap();
    assert_eq!(first.files_sent, 3);
    assert!(first.bytes_sent > big.len() as u64);
    // v2: the same big file, another app.conf and release.txt ("v2" both ways)
    let (v2, d2) = host.release(
        "v2",
        "health_status = 200\nmessage = hi\n",
        &[("assets/big.bin", &big)],
    );
    let second = agent
        .ship(host.receive(), APP, "v2", &v2, &d2, &[])
        .await
        .unwrap();
    assert_eq!(second.files_sent, 2, "{second:?}");
    assert!(second.bytes_sent < 16 * 1024, "{second:?}");
    let on_host = host.agent_dir().join("apps/shop/releases/v2");
    assert_eq!(ferry::release::digest(&on_host, &[]).unwrap(), d2);
    // only the changed file, when only one changed
    let (v3, _) = host.release(
        "v3",
        "health_status = 200\nmessage = hi\n",
        &[("assets/big.bin", &big)],
    );
    std::fs::write(v3.join("release.txt"), "v2").unwrap();
    let d3 = ferry::release::digest(&v3, &[]).unwrap();
    let third = agent
        .ship(host.receive(), APP, "v3", &v3, &d3, &[])
        .await
        .unwrap();
    assert_eq!(
        third.files_sent, 0,
        "{third:?}: every content is on the host"
    );
    std::fs::write(v3.join("assets/big.bin"), [&big[..], b"!"].concat()).unwrap();
    let (v4, d4) = (v3.clone(), ferry::release::digest(&v3, &[]).unwrap());
    let fourth = agent
        .ship(host.receive(), APP, "v4", &v4, &d4, &[])
        .await
        .unwrap();
    assert_eq!(fourth.files_sent, 1, "{fourth:?}");
    assert!(
        fourth.bytes_sent > big.len() as u64 && fourth.bytes_sent < big.len() as u64 + 16 * 1024,
        "{fourth:?}"
    );
    println!(
        "shipped: full {first:?}, two small files {second:?}, none {third:?}, one 512 KiB file {fourth:?}"
    );
    // the release runs: its instance starts from the host's copy
    let started = agent
        .start(&start_request("v4", SecretVars::default()))
        .await
        .unwrap();
    agent.health(&health(started.instance)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_reach_the_app_and_no_file_log_or_command_line() {
    let host = Host::new();
    let agent = host.connect().await;
    let secret = "s3cr3t-value-7f2a9c";
    let (dir, digest) = host.release("v1", "health_status = 200\nprint_env = API_TOKEN\n", &[]);
    agent
        .ship(host.receive(), APP, "v1", &dir, &digest, &[])
        .await
        .unwrap();
    let mut secrets = SecretVars::default();
    secrets.0.insert("API_TOKEN".into(), secret.into());
    let started = agent.start(&start_request("v1", secrets)).await.unwrap();
    agent.health(&health(started.instance)).await.unwrap();
    let lines = agent.logs(APP, ENV, 50).await.unwrap();
    assert!(
        lines.iter().any(|l| l.contains("API_TOKEN=***")),
        "the app got it, and its log masks it: {lines:?}"
    );
    // a new daemon (the old one killed) knows no secret, yet masks the adopted instance's
    let daemon = host.daemon_pid().unwrap();
    drop(agent);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let agent = host.connect().await;
    let status = agent.status(APP, ENV).await.unwrap();
    assert_eq!(status.instances.len(), 1, "adopted");
    let port = status.instances[0].port;
    let (code, _) = get(&format!(
        "http://127.0.0.1:{port}/log?line=again%20{secret}"
    ))
    .await
    .unwrap();
    assert_eq!(code, 200);
    let mut lines = Vec::new();
    for _ in 0..100 {
        lines = agent.logs(APP, ENV, 50).await.unwrap();
        if lines.iter().any(|l| l.contains("again")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        lines.iter().any(|l| l.contains("again ***")),
        "masked after the adoption: {lines:?}"
    );
    let mut files = vec![host.agent_dir()];
    while let Some(path) = files.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if meta.is_file() {
            let bytes = std::fs::read(&path).unwrap_or_default();
            assert!(
                !String::from_utf8_lossy(&bytes).contains(secret),
                "{} holds the secret",
                path.display()
            );
        }
    }
    for (pid, _) in processes_in(host.dir.path()) {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&cmdline).contains(secret),
            "pid {pid}'s command line"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_release_command_runs_once_as_an_instance_would() {
    let host = Host::new();
    let agent = host.connect().await;
    let (dir, digest) = host.release("v1", "health_status = 200\n", &[]);
    agent
        .ship(host.receive(), APP, "v1", &dir, &digest, &[])
        .await
        .unwrap();
    let mut secrets = SecretVars::default();
    secrets
        .0
        .insert("DATABASE_PASSWORD".into(), "pw-9f8e7d6c5b".into());
    let task = |command: &str, timeout_ms: u64| ferry::agent::TaskRequest {
        app: APP.into(),
        env: ENV.into(),
        release: "v1".into(),
        command: command.into(),
        vars: vec![("APP_VERSION".into(), "v1".into())],
        secrets: secrets.clone(),
        stop_timeout_ms: 500,
        timeout_ms,
    };
    let ran = agent
        .task(&task(
            "echo \"migrating $APP_VERSION with $DATABASE_PASSWORD in $(cat release.txt)\"",
            30_000,
        ))
        .await
        .unwrap();
    assert!(ran.success, "{ran:?}");
    assert_eq!(ran.status, Some(0));
    assert!(
        ran.output
            .iter()
            .any(|l| l.contains("migrating v1 with *** in v1")),
        "{ran:?}"
    );
    let failed = agent.task(&task("echo no; exit 4", 30_000)).await.unwrap();
    assert_eq!(
        (failed.success, failed.status),
        (false, Some(4)),
        "{failed:?}"
    );
    assert_eq!(failed.outcome, "exited with status 4");
    let slow = agent.task(&task("sleep 30", 300)).await.unwrap();
    assert_eq!((slow.success, slow.status), (false, None), "{slow:?}");
    assert!(slow.outcome.starts_with("timed out"), "{slow:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_answer_what_the_instance_answered() {
    let host = Host::new();
    let agent = host.connect().await;
    let listen = format!("127.0.0.1:{}", free_port());
    let id = deploy(&host, &agent, "v1", &listen).await;
    let ok = agent
        .probe(APP, ENV, id, "/health", Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!((ok.ok, ok.status), (true, Some(200)), "{ok:?}");
    let bad = agent
        .probe(APP, ENV, id, "/status/503", Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!((bad.ok, bad.status), (false, Some(503)), "{bad:?}");
    let missing = agent
        .probe(APP, ENV, id + 100, "/health", Duration::from_secs(2))
        .await
        .unwrap_err();
    assert_eq!(missing.kind(), Some(ErrorKind::NotFound), "{missing}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_keeps_the_named_releases_and_those_that_run() {
    let host = Host::new();
    let agent = host.connect().await;
    let listen = format!("127.0.0.1:{}", free_port());
    let v1 = deploy(&host, &agent, "v1", &listen).await;
    let _v2 = deploy(&host, &agent, "v2", &listen).await;
    agent
        .stop(APP, ENV, v1, Duration::from_secs(2), Duration::from_secs(2))
        .await
        .unwrap();
    let v3 = deploy(&host, &agent, "v3", &listen).await;
    let (v4_dir, v4_digest) = host.release("v4", "health_status = 200\n", &[]);
    agent
        .ship(host.receive(), APP, "v4", &v4_dir, &v4_digest, &[])
        .await
        .unwrap();
    // v2 still runs (warm, out of traffic), v3 serves, v4 is named: only v1 goes
    let removed = agent.prune(APP, &["v4".into()]).await.unwrap();
    assert_eq!(removed, ["v1"]);
    let names: Vec<String> = agent
        .status(APP, ENV)
        .await
        .unwrap()
        .releases
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["v2", "v3", "v4"]);
    assert!(!host.agent_dir().join("apps/shop/releases/v1").exists());
    assert!(
        !host
            .agent_dir()
            .join("apps/shop/production/releases/v1")
            .exists(),
        "the environment's copy goes too"
    );
    let (_, body) = get(&format!("http://{listen}/")).await.unwrap();
    assert!(body.contains("v3"), "{body}");
    assert!(!agent.has_release(APP, "v1", "x").await.unwrap());
    let _ = v3;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_paths_lead_to_each_environments_own_dir() {
    let host = Host::new();
    let agent = host.connect().await;
    // as the ferry machine has it: the shared path linked to its environment's shared dir
    let (dir, _) = host.release("v1", "health_status = 200\n", &[]);
    std::os::unix::fs::symlink(
        "/srv/ferry/environments/production/shared/data",
        dir.join("data"),
    )
    .unwrap();
    let shared = vec!["data/".to_string()];
    let digest = ferry::release::digest(&dir, &shared).unwrap();
    let shipped = agent
        .ship(host.receive(), APP, "v1", &dir, &digest, &shared)
        .await
        .unwrap();
    assert_eq!(shipped.files_sent, 2);
    let run = |env: &str, command: String| ferry::agent::TaskRequest {
        app: APP.into(),
        env: env.into(),
        release: "v1".into(),
        command,
        vars: Vec::new(),
        secrets: SecretVars::default(),
        stop_timeout_ms: 500,
        timeout_ms: 30_000,
    };
    let wrote = agent
        .task(&run(
            ENV,
            "echo production-data > data/x && cat data/x".into(),
        ))
        .await
        .unwrap();
    assert!(wrote.success, "{wrote:?}");
    let kept = host.agent_dir().join("apps/shop/production/shared/data/x");
    assert_eq!(std::fs::read_to_string(&kept).unwrap(), "production-data\n");
    // staging on the same host: the same release, its own shared dir
    let read = agent
        .task(&run("staging", "cat data/x".into()))
        .await
        .unwrap();
    assert!(!read.success, "{read:?}");
    let reach = agent
        .task(&run("staging", format!("cat {} || true", kept.display())))
        .await
        .unwrap();
    if reach
        .output
        .iter()
        .any(|l| l.contains("does not enforce Landlock"))
    {
        println!(
            "SKIPPED the Landlock part of shared_paths_lead_to_each_environments_own_dir: this kernel has no Landlock"
        );
        return;
    }
    assert!(
        !reach.output.iter().any(|l| l.contains("production-data")),
        "staging read production's data: {reach:?}"
    );
    let state = agent
        .task(&run(
            "staging",
            format!("ls {}", host.agent_dir().join("state").display()),
        ))
        .await
        .unwrap();
    assert!(
        !state.success,
        "the agent's own files are out of reach: {state:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_started_together_share_one_daemon() {
    let host = Host::new();
    let (a, b, c) = tokio::join!(host.connect(), host.connect(), host.connect());
    let daemons: Vec<u32> = processes_in(host.dir.path())
        .into_iter()
        .map(|(pid, _)| pid)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("--daemon"))
        })
        .collect();
    assert_eq!(daemons.len(), 1, "{daemons:?}");
    // and one connection serves several tasks at once
    let (x, y) = tokio::join!(a.status(APP, ENV), b.status(APP, ENV));
    assert!(x.is_ok() && y.is_ok());
    let c = std::sync::Arc::new(c);
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.status(APP, ENV).await })
        })
        .collect();
    for call in calls {
        assert!(call.await.unwrap().is_ok());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_disk_full_with_the_bytes() {
    let host = Host::new();
    let small = host.dir.path().join("small");
    std::fs::create_dir_all(&small).unwrap();
    // a 256 KiB filesystem of the receive's own, in a mount namespace of its own
    let probe = std::process::Command::new("unshare")
        .args(["-m", "sh", "-c"])
        .arg(format!(
            "mount -t tmpfs -o size=256k tmpfs '{}'",
            small.display()
        ))
        .output();
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        println!(
            "SKIPPED a_full_disk_answers_disk_full_with_the_bytes: cannot mount a tmpfs in a mount namespace here"
        );
        return;
    }
    let big: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    let (dir, digest) = host.release("v1", "health_status = 200\n", &[("assets/big.bin", &big)]);
    let agent = host.connect().await;
    let small_dir = small.clone();
    let receive = move |args: Vec<String>| {
        let mut cmd = Command::new("unshare");
        cmd.args(["-m", "sh", "-c"])
            .arg("mount -t tmpfs -o size=256k tmpfs \"$0\" && ferry=\"$1\" && shift && exec \"$ferry\" agent --dir \"$0/agent\" receive \"$@\"")
            .arg(&small_dir)
            .arg(FERRY)
            .args(args);
        cmd
    };
    let err = agent
        .ship(receive, APP, "v1", &dir, &digest, &[])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), Some(ErrorKind::DiskFull), "{err}");
    let text = err.to_string();
    let size = big.len() + "health_status = 200\n".len() + "v1".len();
    assert!(text.contains(&format!("needs {size} bytes")), "{text}");
    assert!(text.contains("262144 bytes were free"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_come_as_they_are_ready_and_bad_names_are_refused() {
    let host = Host::new();
    let agent = std::sync::Arc::new(host.connect().await);
    let (dir, digest) = host.release("v1", "health_status = 500\n", &[]);
    agent
        .ship(host.receive(), APP, "v1", &dir, &digest, &[])
        .await
        .unwrap();
    let started = agent
        .start(&start_request("v1", SecretVars::default()))
        .await
        .unwrap();
    // a health check that will fail after its 50 rounds, and a status meanwhile
    let slow = {
        let agent = agent.clone();
        tokio::spawn(async move { agent.health(&health(started.instance)).await })
    };
    let status = agent.status(APP, ENV).await.unwrap();
    assert_eq!(status.instances.len(), 1);
    assert!(
        !slow.is_finished(),
        "the status was answered before the health check"
    );
    for bad in ["../../../../tmp", "/etc", ".hidden"] {
        let err = agent
            .start(&start_request(bad, SecretVars::default()))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), Some(ErrorKind::BadRequest), "{bad}: {err}");
    }
    let err = agent
        .stop(
            APP,
            ENV,
            started.instance,
            Duration::from_secs(u64::MAX / 2000),
            Duration::ZERO,
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), Some(ErrorKind::BadRequest), "{err}");
    slow.abort();
}

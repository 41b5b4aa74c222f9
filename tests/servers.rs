//! Deploying to several servers (docs/servers.md), against real hosts: network namespaces,
//! each with a real sshd and a user of its own (tests/support/hosts.rs), reached by
//! `ferry serve` through OpenSSH. A release rolls out host by host and serves on each host's
//! own address; one host's failed health switches every switched host back; a host dropping
//! off mid-rollout leaves the others rolled back and is put back once it returns; an unknown
//! host key and a full disk refuse the deploy before anything serves differently. Skipped,
//! saying why, where namespaces cannot be made.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::hosts::{self, HostOptions, TestHost};
use support::{Options, Rel, Sandbox, eventually, get};

/// Where each host's proxy listens (every host has its own address).
const PORT: u16 = 8080;

/// A sandbox deploying `production` to `hosts`.
struct Fleet {
    sb: Sandbox,
    hosts: Vec<TestHost>,
}

/// A sandbox with `releases`, `n` hosts (host `i` made with `options(i)`) and `production` on
/// them, `max_parallel` at a time, its `[app]` with `extra_app`; `None` (after printing why)
/// where hosts cannot be made.
fn fleet(
    releases: &[Rel],
    n: u32,
    max_parallel: u32,
    extra_app: &'static str,
    options: impl Fn(u32) -> HostOptions,
) -> Option<Fleet> {
    if hosts::skip() {
        return None;
    }
    let sb = Sandbox::with(
        releases,
        Options {
            envs: &["production"],
            extra_app,
            ..Options::default()
        },
    );
    let hosts: Vec<TestHost> = (1..=n)
        .map(|i| TestHost::with(sb.dir.path(), i, options(i)))
        .collect();
    let servers: Vec<String> = hosts.iter().map(|h| format!("{:?}", h.server())).collect();
    let text = std::fs::read_to_string(&sb.config).unwrap();
    let local = format!(
        "listen = \"127.0.0.1:{}\"",
        sb.url("production").rsplit(':').next().unwrap()
    );
    assert!(text.contains(&local), "{text}");
    let text = text.replace(
        &local,
        &format!(
            "listen = \"0.0.0.0:{PORT}\"\nservers = [{}]\nmax_parallel = {max_parallel}",
            servers.join(", ")
        ),
    );
    let text = format!("{text}\n{}", hosts::ssh_table(sb.dir.path()));
    std::fs::write(&sb.config, text).unwrap();
    Some(Fleet { sb, hosts })
}

impl Fleet {
    /// The version host `i` serves through its proxy, or why not.
    fn serving(&self, i: usize) -> Result<String, String> {
        let url = format!("http://{}:{PORT}/version", self.hosts[i].addr());
        match get(&url) {
            Some((200, body)) => {
                let v: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
                Ok(v["version"].as_str().unwrap_or_default().to_string())
            }
            Some((status, body)) => Err(format!("{status} {body}")),
            None => Err("nothing answers".into()),
        }
    }

    fn server(&self, i: usize) -> String {
        self.hosts[i].server()
    }

    /// Starts a deploy through the API; its id.
    fn start_deploy(&self, git_ref: &str) -> i64 {
        let (status, body) = self.sb.post(
            "/api/deployments",
            &serde_json::json!({"environment": "production", "ref": git_ref}),
        );
        assert!(status < 300, "{status} {body}");
        body["id"].as_i64().unwrap()
    }

    /// The deployment, once it has ended (within `limit`).
    fn finished(&self, id: i64, limit: Duration) -> Value {
        let mut last = Value::Null;
        let done = eventually(limit, || {
            last = self.sb.api(&format!("/api/deployments/{id}"));
            !matches!(
                last["deployment"]["state"].as_str(),
                Some("queued" | "running" | "monitoring" | "awaiting_approval")
            )
        });
        assert!(
            done,
            "deployment {id} did not end: {last:#}\n{}",
            self.sb.serve_log()
        );
        last
    }

    /// Each step as (name, state).
    fn steps(detail: &Value) -> Vec<(String, String)> {
        detail["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["name"].as_str().unwrap().to_string(),
                    s["state"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    fn output(detail: &Value, step: &str) -> String {
        detail["steps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["name"] == step)
            .map(|s| s["output"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// `ferry status production --json`'s hosts, as (host, release, state).
    fn hosts_status(&self) -> Vec<(String, Option<String>, String)> {
        let run = self.sb.ferry(&["status", "production", "--json"]);
        assert_eq!(run.code(), 0, "{run}");
        run.json()["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                (
                    h["host"].as_str().unwrap().to_string(),
                    h["release"].as_str().map(str::to_string),
                    h["state"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }
}

fn release_of(version: &str) -> impl Fn(&Option<String>) -> bool + '_ {
    move |r| r.as_deref().is_some_and(|r| r.starts_with(version))
}

#[test]
fn a_release_rolls_out_host_by_host_and_serves_on_every_host() {
    let releases = [Rel("v1.0.0", support::GOOD), Rel("v1.1.0", support::GOOD)];
    let Some(mut f) = fleet(&releases, 3, 1, "", |_| HostOptions::default()) else {
        return;
    };
    f.sb.serve();
    let run = f.sb.deploy_ok("production", "v1.0.0");
    assert!(run.stdout().contains("switch"), "{run}");
    for i in 0..3 {
        assert_eq!(f.serving(i).as_deref(), Ok("v1.0.0"), "host {i}");
    }
    let id = f.start_deploy("v1.1.0");
    let detail = f.finished(id, Duration::from_secs(120));
    assert_eq!(detail["deployment"]["state"], "succeeded", "{detail:#}");
    // host by host: every step of a host before the next host's start
    let names: Vec<String> = Fleet::steps(&detail).into_iter().map(|(n, _)| n).collect();
    let (a, b, c) = (f.server(0), f.server(1), f.server(2));
    let expected: Vec<String> = [
        "hosts".to_string(),
        format!("ship {a}"),
        format!("ship {b}"),
        format!("ship {c}"),
        format!("start {a}"),
        format!("health {a}"),
        format!("switch {a}"),
        format!("start {b}"),
        format!("health {b}"),
        format!("switch {b}"),
        format!("start {c}"),
        format!("health {c}"),
        format!("switch {c}"),
        "finish".to_string(),
    ]
    .into();
    let host_steps: Vec<String> = names
        .iter()
        .filter(|n| expected.contains(n))
        .cloned()
        .collect();
    assert_eq!(host_steps, expected, "{names:?}");
    for i in 0..3 {
        assert_eq!(f.serving(i).as_deref(), Ok("v1.1.0"), "host {i}");
    }
    // a release that changed one file sends a little of itself: not the whole tree
    let ship = Fleet::output(&detail, &format!("ship {a}"));
    assert!(ship.contains("bytes_sent="), "{ship}");
    let finish = Fleet::output(&detail, "finish");
    assert!(
        finish.contains("v1.0.0"),
        "the old instance drained: {finish}"
    );
    let status = f.hosts_status();
    assert_eq!(status.len(), 3, "{status:?}");
    for (host, release, state) in &status {
        assert_eq!(state, "ok", "{host}");
        assert!(release_of("v1.1.0")(release), "{host}: {release:?}");
    }
    // the CLI's table has a line per host
    let table = f.sb.ferry(&["status", "production"]);
    assert_eq!(table.stdout().matches("host ").count(), 3, "{table}");

    // a rollback goes host by host too, with bytes every host has already
    let run =
        f.sb.ferry(&["rollback", "production", "--reason", "test", "--yes"]);
    assert_eq!(run.code(), 0, "{run}\n{}", f.sb.serve_log());
    for i in 0..3 {
        assert_eq!(f.serving(i).as_deref(), Ok("v1.0.0"), "host {i}");
    }
    let last: Value = f.sb.api("/api/deployments?limit=1");
    let rollback = f.sb.api(&format!("/api/deployments/{}", last[0]["id"]));
    let ship = Fleet::output(&rollback, &format!("ship {c}"));
    assert!(ship.contains("bytes_sent=0"), "{ship}");
    // serve's SSH master connections end with it
    let control_dir = f.sb.state_dir().join("ssh");
    let masters = || -> usize {
        std::fs::read_dir(&control_dir)
            .map(|d| {
                use std::os::unix::fs::FileTypeExt;
                d.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_socket()))
                    .count()
            })
            .unwrap_or(0)
    };
    assert_eq!(masters(), 3, "one master per host while serve runs");
    f.sb.stop(nix::sys::signal::Signal::SIGTERM);
    let gone = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        masters() == 0
    });
    assert!(gone, "{} masters left after serve stopped", masters());
}

/// Three hosts, one at a time, with v1.0.0 and v1.1.0, which are unhealthy while their
/// host's shared `health.marker` is not empty (each host's made empty).
fn marked_fleet() -> Option<Fleet> {
    let releases = [
        Rel("v1.0.0", "unhealthy_if_file = health.marker\n"),
        Rel("v1.1.0", "unhealthy_if_file = health.marker\n"),
    ];
    let f = fleet(&releases, 3, 1, "shared = [\"health.marker\"]", |_| {
        HostOptions::default()
    })?;
    // each host keeps its own data: its shared file is made there (and here, where the
    // release is built), as an operator would
    let local = f.sb.state_dir().join("environments/production/shared");
    std::fs::create_dir_all(&local).unwrap();
    std::fs::write(local.join("health.marker"), "").unwrap();
    for h in &f.hosts {
        let user = nix::unistd::User::from_name(&h.user).unwrap().unwrap();
        let mut dir = h.home.clone();
        for part in [
            ".ferry",
            "apps",
            "sample",
            "production",
            "shared",
            "health.marker",
        ] {
            dir.push(part);
            if part.contains('.') && part != ".ferry" {
                std::fs::write(&dir, "").unwrap();
            } else {
                std::fs::create_dir_all(&dir).unwrap();
            }
            nix::unistd::chown(&dir, Some(user.uid), Some(user.gid)).unwrap();
        }
    }
    Some(f)
}

#[test]
fn one_hosts_failed_health_switches_every_switched_host_back() {
    let Some(mut f) = marked_fleet() else {
        return;
    };
    f.sb.serve();
    f.sb.deploy_ok("production", "v1.0.0");
    // the third host's data says it is unhealthy: every instance there fails health now
    // (v1.0.0's instance, healthy at its start, keeps serving)
    let marker = f.hosts[2]
        .home
        .join(".ferry/apps/sample/production/shared/health.marker");
    std::fs::write(marker, "unhealthy\n").unwrap();
    let id = f.start_deploy("v1.1.0");
    let detail = f.finished(id, Duration::from_secs(120));
    assert_eq!(detail["deployment"]["state"], "failed", "{detail:#}");
    let steps = Fleet::steps(&detail);
    let (a, b, c) = (f.server(0), f.server(1), f.server(2));
    let state_of = |name: String| {
        steps
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| s.clone())
            .unwrap_or_else(|| panic!("no step {name}: {steps:?}"))
    };
    assert_eq!(state_of(format!("switch {a}")), "ok");
    assert_eq!(state_of(format!("switch {b}")), "ok");
    assert_eq!(state_of(format!("health {c}")), "failed");
    assert_eq!(state_of(format!("switch back {a}")), "ok");
    assert_eq!(state_of(format!("switch back {b}")), "ok");
    assert!(
        !steps
            .iter()
            .any(|(n, _)| *n == format!("switch {c}") || n == "finish"),
        "{steps:?}"
    );
    let reason = detail["deployment"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&c) && reason.contains("switched back"),
        "{reason}"
    );
    // every switched host serves the previous release again, warm
    for i in 0..2 {
        assert_eq!(f.serving(i).as_deref(), Ok("v1.0.0"), "host {i}");
    }
    let status = f.hosts_status();
    assert!(
        status.iter().all(|(_, r, _)| release_of("v1.0.0")(r)),
        "{status:?}"
    );
    assert_eq!(status[2].2, "failed", "{status:?}");
    f.sb.stop(nix::sys::signal::Signal::SIGTERM);
}

#[test]
fn a_failed_first_deploy_leaves_no_host_serving_it() {
    let Some(mut f) = marked_fleet() else {
        return;
    };
    // no release served anywhere before; the third host's data says it is unhealthy
    let marker = f.hosts[2]
        .home
        .join(".ferry/apps/sample/production/shared/health.marker");
    std::fs::write(marker, "unhealthy\n").unwrap();
    f.sb.serve();
    let id = f.start_deploy("v1.0.0");
    let detail = f.finished(id, Duration::from_secs(120));
    assert_eq!(detail["deployment"]["state"], "failed", "{detail:#}");
    let steps = Fleet::steps(&detail);
    let (a, b) = (f.server(0), f.server(1));
    for name in [
        format!("switch {a}"),
        format!("switch back {a}"),
        format!("switch back {b}"),
    ] {
        assert!(
            steps.iter().any(|(n, s)| *n == name && s == "ok"),
            "{name}: {steps:?}"
        );
    }
    let reason = detail["deployment"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&a) && reason.contains("serves nothing"),
        "{reason}"
    );
    // the switched hosts no longer serve the failed release: their proxies answer 503
    for i in 0..2 {
        let served = f.serving(i);
        assert!(
            served.as_ref().is_err_and(|e| e.starts_with("503")),
            "host {i}: {served:?}"
        );
    }
    assert!(f.serving(2).is_err());
    let status = f.hosts_status();
    assert!(status.iter().all(|(_, r, _)| r.is_none()), "{status:?}");
    f.sb.stop(nix::sys::signal::Signal::SIGTERM);
}

#[test]
fn a_host_lost_mid_rollout_is_put_back_once_it_returns() {
    let releases = [Rel("v1.0.0", support::GOOD), Rel("v1.1.0", support::GOOD)];
    let Some(mut f) = fleet(&releases, 2, 1, "", |_| HostOptions::default()) else {
        return;
    };
    let second = f.server(1);
    // the second host's health step is held a few seconds: its link goes down meanwhile
    f.sb.serve_env = vec![
        ("FERRY_FAULT_PAUSE_AT".into(), format!("health {second}")),
        ("FERRY_FAULT_PAUSE_SECS".into(), "4".into()),
    ];
    f.sb.serve();
    f.sb.deploy_ok("production", "v1.0.0");
    let id = f.start_deploy("v1.1.0");
    let held = eventually(Duration::from_secs(60), || {
        let d = f.sb.api(&format!("/api/deployments/{id}"));
        d["deployment"]["step"] == format!("health {second}").as_str()
    });
    assert!(held, "{}", f.sb.serve_log());
    f.hosts[1].link_down();
    let detail = f.finished(id, Duration::from_secs(90));
    assert_eq!(detail["deployment"]["state"], "failed", "{detail:#}");
    let steps = Fleet::steps(&detail);
    let first = f.server(0);
    assert!(
        steps.contains(&(format!("switch back {first}"), "ok".into())),
        "{steps:?}"
    );
    assert_eq!(f.serving(0).as_deref(), Ok("v1.0.0"));
    let status = f.hosts_status();
    assert_eq!(status[1].2, "unknown", "{status:?}");
    let row = &f.sb.api("/api/environments/production")["hosts"][1];
    assert!(
        row["wanted"]
            .as_str()
            .is_some_and(|w| w.starts_with("v1.0.0")),
        "{row}"
    );
    // back on the network: the reconciler puts it on the release it must serve
    f.hosts[1].link_up();
    let back = eventually(Duration::from_secs(120), || f.hosts_status()[1].2 == "ok");
    assert!(back, "{:?}\n{}", f.hosts_status(), f.sb.serve_log());
    assert_eq!(f.serving(1).as_deref(), Ok("v1.0.0"));
    let audit = f.sb.api("/api/audit");
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["method"] == "RECONCILE" && e["path"].as_str().unwrap().contains(&second)),
        "{audit:#}"
    );
    f.sb.stop(nix::sys::signal::Signal::SIGTERM);
}

#[test]
fn an_unknown_host_key_refuses_the_deploy_before_anything_changes() {
    let releases = [Rel("v1.0.0", support::GOOD)];
    let Some(mut f) = fleet(&releases, 2, 1, "", |_| HostOptions::default()) else {
        return;
    };
    // only the first host's key is known
    let known = hosts::known_hosts(f.sb.dir.path());
    std::fs::write(&known, format!("{}\n", f.hosts[0].known_hosts_line())).unwrap();
    f.sb.serve();
    let run = f.sb.ferry(&["deploy", "production", "v1.0.0"]);
    assert_ne!(run.code(), 0, "{run}");
    let last: Value = f.sb.api("/api/deployments?limit=1");
    let detail = f.sb.api(&format!("/api/deployments/{}", last[0]["id"]));
    assert_eq!(detail["deployment"]["state"], "refused", "{detail:#}");
    let reason = detail["deployment"]["reason"].as_str().unwrap_or_default();
    let second = f.hosts[1].addr().to_string();
    assert!(
        reason.contains(&second) && reason.contains("host key"),
        "{reason}"
    );
    assert!(
        !Fleet::steps(&detail)
            .iter()
            .any(|(n, _)| n.starts_with("ship ")),
        "{detail:#}"
    );
    // nothing reached either host: no release there, nothing serving
    for h in &f.hosts {
        let releases = h.home.join(".ferry/apps/sample/releases");
        let there: Vec<_> = std::fs::read_dir(&releases)
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(there.is_empty(), "{there:?}");
    }
    assert!(f.serving(0).is_err());
    // the key was not learned
    let lines = std::fs::read_to_string(&known).unwrap();
    assert!(!lines.contains(&second), "{lines}");
    f.sb.stop(nix::sys::signal::Signal::SIGTERM);
}

#[test]
fn a_full_disk_on_a_host_fails_the_deploy_at_ship() {
    let releases = [Rel("v1.0.0", support::GOOD)];
    // room for ferry's agent and little else
    let binary = std::fs::metadata(support::FERRY).unwrap().len() / 1024;
    let small = HostOptions {
        small_disk_kib: Some((binary + 4096) as u32),
    };
    let Some(mut f) = fleet(&releases, 2, 1, "", |i| match i {
        2 => small,
        _ => HostOptions::default(),
    }) else {
        return;
    };
    // a release of 16 MiB that does not compress
    support::sh(
        &f.sb.repo,
        "head -c 16777216 /dev/urandom > blob && git add blob && git commit -qm big && git tag v2.0.0",
    );
    f.sb.serve();
    let run = f.sb.ferry(&["deploy", "production", "v2.0.0"]);
    assert_ne!(run.code(), 0, "{run}");
    let last: Value = f.sb.api("/api/deployments?limit=1");
    let detail = f.sb.api(&format!("/api/deployments/{}", last[0]["id"]));
    assert_eq!(detail["deployment"]["state"], "failed", "{detail:#}");
    let (a, b) = (f.server(0), f.server(1));
    let steps = Fleet::steps(&detail);
    assert!(
        steps.contains(&(format!("ship {a}"), "ok".into())),
        "{steps:?}"
    );
    assert!(
        steps.contains(&(format!("ship {b}"), "failed".into())),
        "{steps:?}"
    );
    assert!(
        !steps.iter().any(|(n, _)| n.starts_with("start ")),
        "{steps:?}"
    );
    let output = Fleet::output(&detail, &format!("ship {b}"));
    assert!(output.to_lowercase().contains("disk"), "{output}");
    assert!(f.serving(0).is_err() && f.serving(1).is_err());
    f.sb.stop(nix::sys::signal::Signal::SIGTERM);
}

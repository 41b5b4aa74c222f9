//! Process types (`[processes]`): workers run per release beside the web instance, never
//! routed; stopped gracefully (SIGTERM, then SIGKILL after their `stop_timeout`) before the
//! next release's start; restarted when they crash; adopted after `kill -9` of serve; shown
//! in status and in a log of their own.

mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;
use support::*;

/// A worker: every 100 ms a line `<version> <pid>` in the shared `data/worker.txt` and a
/// line on its output.
const WORKER: &str = r#"while true; do echo "$APP_VERSION $$ $FERRY_PROCESS" >> data/worker.txt; echo "worker tick $APP_VERSION"; sleep 0.1; done"#;

fn sandbox(processes: &str) -> Sandbox {
    let tables: &'static str = Box::leak(format!("[processes]\n{processes}\n").into_boxed_str());
    Sandbox::with(
        &[Rel("v1.0.0", GOOD), Rel("v1.1.0", GOOD)],
        Options {
            extra_app: "shared = [\"data/\"]",
            tables,
            ..Options::default()
        },
    )
}

fn worker_file(s: &Sandbox) -> PathBuf {
    s.state_dir()
        .join("environments/staging/shared/data/worker.txt")
}

/// The lines of the worker file: (version, pid).
fn lines(s: &Sandbox) -> Vec<(String, u32)> {
    std::fs::read_to_string(worker_file(s))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut parts = l.split(' ');
            Some((parts.next()?.to_string(), parts.next()?.parse().ok()?))
        })
        .collect()
}

/// `ferry status --json`'s process type `name` of staging.
fn process(s: &Sandbox, name: &str) -> serde_json::Value {
    let run = s.ferry(&["status", "--json"]);
    assert_eq!(run.code(), 0, "{run}");
    let status = run.json();
    let env = status
        .as_array()
        .and_then(|a| a.iter().find(|e| e["environment"] == "staging"))
        .cloned()
        .unwrap_or_else(|| status["environments"][0].clone());
    env["processes"]
        .as_array()
        .unwrap_or_else(|| panic!("no processes in {env}"))
        .iter()
        .find(|p| p["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no process {name} in {env}"))
}

fn pids(p: &serde_json::Value) -> BTreeSet<u32> {
    p["pids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

/// The pids of `name` once `count` of them run.
fn running(s: &Sandbox, name: &str, count: usize) -> BTreeSet<u32> {
    let mut seen = BTreeSet::new();
    let ok = eventually(Duration::from_secs(20), || {
        let p = process(s, name);
        seen = pids(&p);
        p["running"] == count && seen.len() == count
    });
    assert!(ok, "{name} never ran {count}: {seen:?}\n{}", s.serve_log());
    seen
}

/// A dashboard page, signed in with the local token.
fn dashboard(s: &Sandbox, path: &str) -> String {
    let client = crate::support::blocking_http()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let signed = client
        .post(format!("{}/signin", s.api))
        .form(&[("token", s.token())])
        .send()
        .unwrap();
    let cookie = signed.headers()["set-cookie"].to_str().unwrap();
    let session = cookie.split(';').next().unwrap().to_string();
    let page = client
        .get(format!("{}{path}", s.api))
        .header("cookie", session)
        .send()
        .unwrap();
    assert_eq!(page.status(), 200);
    page.text().unwrap()
}

#[test]
fn workers_run_with_their_count_and_the_next_release_replaces_them() {
    let mut s = sandbox(&format!("worker = {{ command = '{WORKER}', count = 2 }}"));
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    let first = running(&s, "worker", 2);
    let p = process(&s, "worker");
    assert_eq!(p["count"], 2, "{p}");
    let web = process(&s, "web");
    assert_eq!(
        (web["count"].as_u64(), web["running"].as_u64()),
        (Some(1), Some(1)),
        "{web}"
    );
    // both write, with the release's variables and their process type
    assert!(eventually(Duration::from_secs(10), || {
        let by: BTreeSet<u32> = lines(&s)
            .into_iter()
            .filter(|(v, _)| v == "v1.0.0")
            .map(|(_, p)| p)
            .collect();
        by == first
    }));
    let text = std::fs::read_to_string(worker_file(&s)).unwrap();
    assert!(text.lines().all(|l| l.ends_with(" worker")), "{text}");
    // never routed: the proxy still answers from the web instance
    assert_eq!(s.serving("staging").0, "v1.0.0");
    let page = dashboard(&s, "/environments/staging");
    assert!(page.contains("Processes"), "{page}");
    for pid in &first {
        assert!(page.contains(&format!("pid {pid}")), "{page}");
    }
    assert!(page.contains("2 of 2"), "{page}");
    let table = s.ferry(&["status"]);
    assert!(
        table.stdout().contains("processes: web 1/1, worker 2/2"),
        "{table}"
    );

    let run = s.deploy_ok("staging", "v1.1.0");
    let second = running(&s, "worker", 2);
    assert!(second.is_disjoint(&first), "{first:?} {second:?}");
    for pid in &first {
        assert!(!alive(*pid), "worker {pid} of v1.0.0 still runs\n{run}");
    }
    // the old release's workers were gone before the new one's began: never both at once
    let all = lines(&s);
    let first_new = all.iter().position(|(v, _)| v == "v1.1.0").unwrap();
    assert!(
        all[first_new..].iter().all(|(v, _)| v == "v1.1.0"),
        "v1.0.0 wrote after v1.1.0's workers started"
    );
    let switch = s.api("/api/deployments/2").to_string();
    assert!(switch.contains("stopped worker.0 of v1.0.0-"), "{switch}");
    assert!(switch.contains("started worker.1 of v1.1.0-"), "{switch}");
}

#[test]
fn a_worker_ignoring_sigterm_is_killed_after_its_grace_and_the_next_releases_runs() {
    let stubborn = format!("trap \"\" TERM; {WORKER}");
    let mut s = sandbox(&format!(
        "worker = {{ command = '{stubborn}', stop_timeout = \"1s\" }}"
    ));
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    let old = running(&s, "worker", 1);
    let run = s.deploy_ok("staging", "v1.1.0");
    let old_pid = *old.first().unwrap();
    assert!(
        !alive(old_pid),
        "the stubborn worker {old_pid} survived\n{run}"
    );
    let switch = s.api("/api/deployments/2").to_string();
    assert!(
        switch.contains("killed after its stop_timeout of 1s"),
        "{switch}"
    );
    let new = running(&s, "worker", 1);
    assert!(new.is_disjoint(&old));
    assert!(eventually(Duration::from_secs(10), || lines(&s)
        .iter()
        .any(|(v, _)| v == "v1.1.0")));
    let all = lines(&s);
    let first_new = all.iter().position(|(v, _)| v == "v1.1.0").unwrap();
    assert!(all[first_new..].iter().all(|(v, _)| v == "v1.1.0"));
}

#[test]
fn a_crashed_worker_is_started_again() {
    let mut s = sandbox(&format!("worker = '{WORKER}'"));
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    let before = running(&s, "worker", 1);
    let pid = *before.first().unwrap();
    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    let mut after = BTreeSet::new();
    assert!(
        eventually(Duration::from_secs(20), || {
            let p = process(&s, "worker");
            after = pids(&p);
            p["running"] == 1 && !after.contains(&pid) && p["restarts"] == 1
        }),
        "{after:?}\n{}",
        s.serve_log()
    );
    let new = *after.first().unwrap();
    assert!(eventually(Duration::from_secs(10), || lines(&s)
        .iter()
        .any(|(_, p)| *p == new)));
}

#[test]
fn workers_are_adopted_after_serve_is_killed_and_not_duplicated() {
    let mut s = sandbox(&format!("worker = {{ command = '{WORKER}', count = 2 }}"));
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    let before = running(&s, "worker", 2);
    s.stop(Signal::SIGKILL);
    for pid in &before {
        assert!(alive(*pid), "worker {pid} died with serve");
    }
    s.serve();
    let after = running(&s, "worker", 2);
    assert_eq!(before, after, "the same workers are adopted");
    // what they write from now on comes from those two alone
    let seen = lines(&s).len();
    assert!(eventually(Duration::from_secs(10), || lines(&s).len() > seen + 20));
    let since: BTreeSet<u32> = lines(&s)[seen..].iter().map(|(_, p)| *p).collect();
    assert_eq!(since, before, "a worker was started twice");
    // and they are still tended: their output is read again
    let out = s.ferry(&["logs", "staging", "--process", "worker", "-n", "5"]);
    assert!(out.stdout().contains("worker tick v1.0.0"), "{out}");
}

#[test]
fn logs_of_a_process_type_show_only_its_lines() {
    let mut s = sandbox(&format!("worker = '{WORKER}'"));
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    running(&s, "worker", 1);
    assert!(eventually(Duration::from_secs(10), || {
        s.ferry(&["logs", "staging", "--process", "worker"])
            .stdout()
            .contains("worker tick")
    }));
    let worker = s.ferry(&["logs", "staging", "--process", "worker", "-n", "1000"]);
    assert_eq!(worker.code(), 0, "{worker}");
    assert!(
        worker.stdout().lines().all(|l| l == "worker tick v1.0.0"),
        "{worker}"
    );
    let web = s.ferry(&["logs", "staging", "-n", "1000"]);
    assert!(web.stdout().contains("sample app v1.0.0 starting"), "{web}");
    assert!(!web.stdout().contains("worker tick"), "{web}");
    let same = s.ferry(&["logs", "staging", "--process", "web", "-n", "1000"]);
    assert!(
        same.stdout().contains("sample app v1.0.0 starting"),
        "{same}"
    );
    let unknown = s.ferry(&["logs", "staging", "--process", "mailer"]);
    assert_ne!(unknown.code(), 0, "{unknown}");
    assert!(
        unknown.stderr().contains("no process type mailer"),
        "{unknown}"
    );
}

#[test]
fn start_and_a_web_process_together_are_refused_with_their_place() {
    // the sandbox's [app] has `start`; a [processes] web on top is one too many
    let s = sandbox("web = \"./other\"");
    let run = s.ferry(&["check"]);
    assert_ne!(run.code(), 0, "{run}");
    let text = std::fs::read_to_string(&s.config).unwrap();
    let line = text.lines().position(|l| l.starts_with("web = ")).unwrap() + 1;
    assert!(run.stderr().contains("given twice"), "{run}");
    assert!(
        run.stderr().contains(&format!("ferry.toml:{line}:1")),
        "{run}"
    );
}

/// The running containers of the docker test's app running `process`: their ids.
fn process_containers(kit: &support::docker::DockerKit, process: &str) -> Vec<String> {
    let app = format!("label=ferry.app={}", kit.prefix());
    let process = format!("label=ferry.process={process}");
    support::docker::docker(&[
        "ps",
        "--no-trunc",
        "-q",
        "--filter",
        &app,
        "--filter",
        &process,
    ])
    .lines()
    .map(str::to_string)
    .collect()
}

#[test]
fn a_docker_apps_worker_is_a_container_of_the_release_image() {
    let Some(kit) =
        support::docker::docker_or_skip("a_docker_apps_worker_is_a_container_of_the_release_image")
    else {
        return;
    };
    let base = kit.base_image();
    let mut s = Sandbox::with(
        &[],
        Options {
            tables: "[processes]\nworker = 'while true; do echo \"worker $APP_VERSION $FERRY_PROCESS\"; sleep 0.2; done'\n",
            ..Options::default()
        },
    );
    for tag in ["v1.0.0", "v1.1.0"] {
        let dockerfile = format!(
            "FROM {base}\nRUN mkdir -p /srv && echo {tag} > /srv/health\n\
             CMD exec httpd -f -p \"$HOST:$PORT\" -h /srv\n"
        );
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
        .replace("name = \"sample\"", &format!("name = \"{}\"", kit.prefix()));
    std::fs::write(&s.config, text).unwrap();
    s.serve();

    s.deploy_ok("staging", "v1.0.0");
    let web = process_containers(&kit, "web");
    let first = process_containers(&kit, "worker");
    assert_eq!((web.len(), first.len()), (1, 1), "{web:?} {first:?}");
    let image = |id: &str| support::docker::docker(&["inspect", "--format", "{{.Image}}", id]);
    assert_eq!(image(&first[0]), image(&web[0]), "the release's image");
    let p = process(&s, "worker");
    assert_eq!(p["running"], 1, "{p}");
    assert!(
        first[0].starts_with(p["containers"][0].as_str().unwrap()),
        "{p}"
    );
    assert!(
        eventually(Duration::from_secs(10), || {
            s.ferry(&["logs", "staging", "--process", "worker"])
                .stdout()
                .contains("worker v1.0.0 worker")
        }),
        "{}",
        s.serve_log()
    );

    s.deploy_ok("staging", "v1.1.0");
    let second = process_containers(&kit, "worker");
    assert_eq!(second.len(), 1, "{second:?}");
    assert_ne!(second, first, "the next release's worker replaced it");
    assert_eq!(
        image(&second[0]),
        image(&process_containers(&kit, "web")[0])
    );

    s.stop(Signal::SIGKILL);
    s.serve();
    let p = process(&s, "worker");
    assert!(
        eventually(Duration::from_secs(10), || process(&s, "worker")["running"]
            == 1),
        "{p}"
    );
    assert_eq!(
        process_containers(&kit, "worker"),
        second,
        "adopted, not started again"
    );
}

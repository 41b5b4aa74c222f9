//! Operating a running app: `ferry restart` (the serving release started again through the
//! zero-downtime path) and `ferry exec` (a command in the serving release's environment).

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::*;

#[test]
fn restart_under_load_fails_no_request_and_serves_the_same_release_from_a_new_instance() {
    let mut s = Sandbox::new(&[Rel("v1.0.0", GOOD)]);
    s.serve();
    let refused = s.ferry(&["restart", "staging"]);
    assert_eq!(refused.code(), 1, "{refused}");
    assert!(
        refused.stderr().contains("nothing is serving staging"),
        "{refused}"
    );

    s.deploy_ok("staging", "v1.0.0");
    let (version, pid) = s.serving("staging");
    assert_eq!(version, "v1.0.0");
    let load = Load::expecting(&format!("{}/version", s.url("staging")), 1, "v1.0.0");
    std::thread::sleep(Duration::from_millis(200));
    let run = s.ferry(&["restart", "staging", "--reason", "rotated the API key"]);
    assert_eq!(run.code(), 0, "{run}\n{}", s.serve_log());
    assert!(run.stdout().contains("restart v1.0.0-"), "{run}");
    assert!(run.stdout().contains("restarted staging: v1.0.0-"), "{run}");
    std::thread::sleep(Duration::from_millis(200));
    let Tally {
        ok,
        failed,
        failures,
    } = load.stop();
    assert!(ok > 0, "the client made requests");
    assert_eq!(
        failed, 0,
        "failed requests during the restart ({ok} ok): {failures:?}"
    );

    let (version, new_pid) = s.serving("staging");
    assert_eq!(version, "v1.0.0");
    assert_ne!(new_pid, pid, "a new instance serves");
    assert!(
        eventually(Duration::from_secs(10), || !alive(pid)),
        "the old instance was stopped"
    );

    let history = s.ferry(&["history", "staging", "--json"]).json();
    let restart = &history[0];
    assert_eq!(restart["kind"], "restart", "{history}");
    assert_eq!(restart["state"], "succeeded", "{history}");
    assert_eq!(restart["release"], history[1]["release"], "{history}");
    let id = restart["id"].as_i64().unwrap();
    let detail = s.api(&format!("/api/deployments/{id}"));
    let steps: Vec<&str> = detail["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            "resolve", "lock", "prepare", "start", "health", "switch", "finish"
        ]
    );
    assert!(
        detail["steps"][2]["output"]
            .as_str()
            .unwrap()
            .contains("digest unchanged"),
        "{detail}"
    );
}

const SECRET: &str = "s3cr3t-exec-value";

/// A sandbox whose staging has a variable (`GREETING`) and a secret (`API_KEY`, from an
/// env_file), serving v1.0.0.
fn serving_with_secrets() -> Sandbox {
    let mut s = Sandbox::with(
        &[Rel("v1.0.0", GOOD)],
        Options {
            extra_env: "env = { GREETING = \"hello\" }",
            ..Options::default()
        },
    );
    let env_file = s.dir.path().join("staging.env");
    std::fs::write(&env_file, format!("API_KEY={SECRET}\n")).unwrap();
    let config = std::fs::read_to_string(&s.config).unwrap().replace(
        "[environments.staging]\n",
        &format!(
            "[environments.staging]\nenv_file = \"{}\"\n",
            env_file.display()
        ),
    );
    std::fs::write(&s.config, config).unwrap();
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    s
}

/// `ferry exec` with `input` on its stdin (a pipe), and `token` as FERRY_TOKEN if given.
fn exec(s: &Sandbox, args: &[&str], input: &str, token: Option<&str>) -> Run {
    use std::io::Write;
    let mut cmd = std::process::Command::new(FERRY);
    cmd.arg("-c")
        .arg(&s.config)
        .arg("exec")
        .args(args)
        .env("USER", "tester")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    if let Some(t) = token {
        cmd.env("FERRY_TOKEN", t);
    }
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).unwrap();
    drop(stdin);
    Run(child.wait_with_output().unwrap())
}

/// Who the environment's commands run as: its own user under root, else this one.
fn app_user() -> String {
    if nix::unistd::Uid::effective().is_root() {
        "ferry-sample-staging".into()
    } else {
        nix::unistd::User::from_uid(nix::unistd::Uid::effective())
            .unwrap()
            .unwrap()
            .name
    }
}

#[test]
fn exec_runs_in_the_serving_release_with_its_env_and_user_and_is_audited() {
    let s = serving_with_secrets();
    let release = s.api("/api/environments/staging")["release"]
        .as_str()
        .unwrap()
        .to_string();
    let script = format!(
        "echo \"$GREETING|$APP_VERSION|$(pwd)|$(id -un)\"; test \"$API_KEY\" = {SECRET} && echo secret-ok; read line; echo \"got $line\"; echo to-stderr >&2; exit 3"
    );
    let run = exec(
        &s,
        &["staging", "--", "sh", "-c", &script],
        "typed input\n",
        None,
    );
    assert_eq!(run.code(), 3, "the command's exit status is ferry's: {run}");
    let dir = s
        .state_dir()
        .join("environments/staging/releases")
        .join(&release);
    let dir = dir.canonicalize().unwrap();
    let stdout = run.stdout();
    assert!(
        stdout.contains(&format!("hello|v1.0.0|{}|{}", dir.display(), app_user())),
        "{run}"
    );
    assert!(stdout.contains("secret-ok"), "the env_file secret: {run}");
    assert!(
        stdout.contains("got typed input"),
        "stdin reached it: {run}"
    );
    assert!(run.stderr().contains("to-stderr"), "{run}");
    assert!(!stdout.contains("to-stderr"), "stderr apart: {run}");

    let audit = s.api("/api/audit");
    let entry = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == "/api/environments/staging/exec")
        .unwrap_or_else(|| panic!("no exec entry: {audit}"));
    assert_eq!(entry["environment"], "staging", "{entry}");
    assert_eq!(entry["user"], "tester", "{entry}");
    assert_eq!(entry["token"], "local", "{entry}");
    assert_eq!(entry["status"], 101, "{entry}");
    assert_eq!(entry["exit_status"], 3, "{entry}");
    assert!(entry["finished_at"].is_string(), "{entry}");
    let command = entry["command"].as_str().unwrap();
    assert!(command.starts_with("sh -c 'echo"), "{entry}");
    assert!(
        command.contains("= *** &&"),
        "the secret is masked: {entry}"
    );
    assert!(!audit.to_string().contains(SECRET), "{audit}");
    let entries = audit.as_array().unwrap();
    assert_eq!(
        entries
            .iter()
            .filter(|e| e["path"] == "/api/environments/staging/exec")
            .count(),
        1,
        "one entry per session: {audit}"
    );

    // a plain success, and a command that does not exist
    let run = exec(&s, &["staging", "--", "true"], "", None);
    assert_eq!(run.code(), 0, "{run}");
    let run = exec(&s, &["staging", "--", "no-such-command-here"], "", None);
    // not found (127), or 126 when a dir of PATH is closed to the environment's user
    assert!([126, 127].contains(&run.code()), "{run}");
    assert!(run.stderr().contains("no-such-command-here"), "{run}");
}

#[test]
fn exec_is_refused_without_its_scope_a_serving_release_or_a_known_process() {
    let mut s = Sandbox::new(&[Rel("v1.0.0", GOOD)]);
    s.serve();
    let run = exec(&s, &["staging", "--", "true"], "", None);
    assert_eq!(run.code(), 1, "{run}");
    assert!(run.stderr().contains("nothing is serving staging"), "{run}");
    s.deploy_ok("staging", "v1.0.0");
    let run = exec(
        &s,
        &["staging", "--process", "worker", "--", "true"],
        "",
        None,
    );
    assert_eq!(run.code(), 2, "{run}");
    assert!(
        run.stderr().contains("unknown process type \"worker\""),
        "{run}"
    );
    let run = s.ferry(&["exec", "staging"]);
    assert_eq!(run.code(), 2, "a command is required: {run}");

    // `deploy` does not include exec: a shell with the environment's secrets needs its own
    let created = s.ferry(&["token", "create", "ops", "--scope", "deploy", "--json"]);
    assert_eq!(created.code(), 0, "{created}");
    let deployer = created.json()["token"].as_str().unwrap().to_string();
    let run = exec(&s, &["staging", "--", "true"], "", Some(&deployer));
    assert_eq!(run.code(), 1, "{run}");
    assert!(run.stderr().contains("lacks the exec scope"), "{run}");
    let created = s.ferry(&["token", "create", "console", "--scope", "exec", "--json"]);
    let console = created.json()["token"].as_str().unwrap().to_string();
    let run = exec(
        &s,
        &["staging", "--", "sh", "-c", "exit 4"],
        "",
        Some(&console),
    );
    assert_eq!(run.code(), 4, "{run}");
}

#[test]
fn exec_on_a_terminal_is_an_interactive_console() {
    use std::io::{Read, Write};
    let s = serving_with_secrets();
    // `script` gives ferry a terminal: stdin and stdout are a pty
    let command = format!("'{FERRY}' -c '{}' exec staging -- sh", s.config.display());
    let mut child = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env("USER", "tester")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(b"tty -s && echo tty-$((1 + 1)); echo $((6 * 7))-$GREETING\n")
        .unwrap();
    stdin.flush().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn({
        let seen = seen.clone();
        move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        }
    });
    let text = || String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
    // the answer comes back through the pty (the typed line is echoed too: look for the result)
    let answered = eventually(Duration::from_secs(20), || text().contains("42-hello"));
    assert!(answered, "no answer: {}\n{}", text(), s.serve_log());
    stdin.write_all(b"exit 5\n").unwrap();
    stdin.flush().unwrap();
    let status = child.wait().unwrap();
    drop(stdin);
    reader.join().unwrap();
    let seen = text();
    assert!(seen.contains("tty-2"), "the command has a terminal: {seen}");
    assert!(seen.contains("42-hello"), "{seen}");
    assert_eq!(status.code(), Some(5), "{seen}");
}

#[test]
fn exec_whose_connection_drops_has_its_command_killed() {
    use std::io::BufRead;
    let s = serving_with_secrets();
    let mut child = std::process::Command::new(FERRY)
        .arg("-c")
        .arg(&s.config)
        .args([
            "exec",
            "staging",
            "--",
            "sh",
            "-c",
            "echo $$; sleep 300 & wait",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let pid: u32 = line.trim().parse().unwrap_or_else(|_| panic!("{line:?}"));
    assert!(alive(pid));
    // the CLI dies (a lost network would do the same): ferry ends the command and its group
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        eventually(Duration::from_secs(10), || !alive(pid)),
        "the command outlived its connection"
    );
    let gone = eventually(Duration::from_secs(10), || {
        s.api("/api/audit")[0]["exit_status"].is_i64()
    });
    assert!(gone, "{}", s.api("/api/audit"));
    assert_eq!(
        s.api("/api/audit")[0]["exit_status"],
        128 + 1,
        "SIGHUP ended it"
    );
}

#[test]
fn the_dashboard_restarts_the_serving_release() {
    let mut s = Sandbox::new(&[Rel("v1.0.0", GOOD)]);
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    let (_, pid) = s.serving("staging");
    let created = s.ferry(&["token", "create", "ops", "--scope", "deploy", "--json"]);
    let token = created.json()["token"].as_str().unwrap().to_string();
    let http = crate::support::blocking_http()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let signed_in = http
        .post(format!("{}/signin", s.api))
        .form(&[("token", token.as_str())])
        .send()
        .unwrap();
    let cookie = signed_in.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let page = http
        .get(format!("{}/environments/staging", s.api))
        .header("cookie", &cookie)
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        page.contains("/actions/environments/staging/restart"),
        "{page}"
    );
    let csrf = regex_csrf(&page);
    let answer = http
        .post(format!("{}/actions/environments/staging/restart", s.api))
        .header("cookie", &cookie)
        .form(&[("reason", "rotated a key"), ("csrf", csrf.as_str())])
        .send()
        .unwrap();
    assert_eq!(answer.status(), 303);
    let location = answer.headers()["location"].to_str().unwrap().to_string();
    assert!(location.contains("notice=restart-started"), "{location}");
    let restarted = eventually(Duration::from_secs(30), || {
        let d = &s.api("/api/deployments?limit=1")[0];
        d["kind"] == "restart" && d["state"] == "succeeded"
    });
    assert!(restarted, "{}", s.api("/api/deployments?limit=1"));
    assert_ne!(s.serving("staging").1, pid, "a new instance serves");
}

/// The CSRF token a dashboard page's forms carry.
fn regex_csrf(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF token")
        + 19;
    page[at..at + 32].to_string()
}

#[test]
fn exec_in_a_docker_app_runs_in_the_serving_container_as_its_user() {
    let Some(kit) = support::docker::docker_or_skip(
        "exec_in_a_docker_app_runs_in_the_serving_container_as_its_user",
    ) else {
        return;
    };
    let base = kit.base_image();
    let mut s = Sandbox::new(&[]);
    std::fs::write(
        s.repo.join("Dockerfile"),
        format!(
            "FROM {base}\n\
             RUN mkdir -p /srv && echo v1.0.0 > /srv/health && echo v1.0.0 > /srv/version\n\
             CMD exec httpd -f -p \"$HOST:$PORT\" -h /srv\n"
        ),
    )
    .unwrap();
    sh(&s.repo, "git add . && git commit -qm v1 && git tag v1.0.0");
    let env_file = s.dir.path().join("staging.env");
    std::fs::write(&env_file, format!("API_KEY={SECRET}\n")).unwrap();
    let text = std::fs::read_to_string(&s.config).unwrap();
    let start = text.lines().find(|l| l.starts_with("start = ")).unwrap();
    let text = text
        .replace(start, "runtime = \"docker\"")
        .replace("name = \"sample\"", &format!("name = \"{}\"", kit.prefix()))
        .replace(
            "[environments.staging]\n",
            &format!(
                "[environments.staging]\nenv_file = \"{}\"\n",
                env_file.display()
            ),
        );
    std::fs::write(&s.config, text).unwrap();
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    let script = "echo \"$APP_VERSION|$(cat /srv/version)|$(id -u)\"; grep -c API_KEY \"$FERRY_ENV_FILE\"; read l; echo \"got $l\"; exit 6";
    let run = exec(
        &s,
        &["staging", "--", "sh", "-c", script],
        "piped in\n",
        None,
    );
    assert_eq!(run.code(), 6, "{run}\n{}", s.serve_log());
    let uid = if nix::unistd::Uid::effective().is_root() {
        let name = format!("ferry-{}-staging", kit.prefix())
            .to_ascii_lowercase()
            .replace('_', "-");
        nix::unistd::User::from_name(&name)
            .ok()
            .flatten()
            .map(|u| u.uid.as_raw())
    } else {
        None
    };
    let stdout = run.stdout();
    assert!(stdout.contains("v1.0.0|v1.0.0|"), "{run}");
    if let Some(uid) = uid {
        assert!(stdout.contains(&format!("v1.0.0|v1.0.0|{uid}")), "{run}");
    }
    assert!(stdout.contains("\n1\n"), "the secrets file: {run}");
    assert!(stdout.contains("got piped in"), "{run}");
}

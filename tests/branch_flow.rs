//! Teams whose staging tracks a branch (issue 21): a `main` commit verified on staging and
//! tagged afterwards is promoted with its very built bytes; releases are rolled back by their
//! name (`main-<sha7>`) from the CLI and the dashboard; a manual rollback on a terminal asks
//! for a typed word, and without a terminal needs `--yes`.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use regex::Regex;
use support::{FERRY, GOOD, Options, Rel, Run, Sandbox, eventually, get, sh};

/// Commits `app.conf` with `message` on main (untagged); returns the commit's sha.
fn commit(s: &Sandbox, message: &str) -> String {
    std::fs::write(
        s.repo.join("app.conf"),
        format!("{GOOD}message = {message}\n"),
    )
    .unwrap();
    sh(
        &s.repo,
        &format!("git add . && git commit -qm 'feat: {message}'"),
    );
    head(s)
}

fn head(s: &Sandbox) -> String {
    let out = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(&s.repo)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The commit the environment's public URL serves (the sample app's `/version`).
fn serving_commit(s: &Sandbox, env: &str) -> String {
    let (status, body) = get(&format!("{}/version", s.url(env))).expect("proxy answers");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["commit"].as_str().unwrap().to_string()
}

fn step(show: &serde_json::Value, name: &str) -> serde_json::Value {
    show["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|st| st["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no step {name} in {show}"))
}

#[test]
fn a_main_commit_verified_on_staging_then_tagged_goes_to_production_with_its_digest_unbuilt() {
    // every build leaves a stamp of its own: a rebuild could never have the same digest
    let mut s = Sandbox::with(
        &[],
        Options {
            extra_app: "build = [\"date +%s%N > built-at.txt\"]",
            envs: &["staging", "production"],
            env_extra: &[
                ("staging", "track = { branch = \"main\" }"),
                (
                    "production",
                    "track = { tags = true }\nrequires = \"staging\"",
                ),
            ],
            ..Options::default()
        },
    );
    s.serve();
    let sha = commit(&s, "first");
    let short = &sha[..7];
    s.deploy_ok("staging", "main");
    let run = s.ferry(&["verify", "staging"]);
    assert_eq!(run.code(), 0, "{run}");
    // QA signed off the main commit; the team tags it
    sh(&s.repo, "git tag v1.2.0");

    let run = s.ferry(&["plan", "production", "v1.2.0"]);
    assert_eq!(run.code(), 0, "{run}");
    assert!(
        run.stdout()
            .contains(&format!("verified on staging as main-{short}")),
        "{run}"
    );
    assert!(
        run.stdout().contains(&format!(
            "copy release v1.2.0-{short} from staging (as main-{short})"
        )),
        "{run}"
    );

    let run = s.ferry(&["promote", "v1.2.0"]);
    assert_eq!(run.code(), 0, "{run}\n{}", s.serve_log());
    assert_eq!(s.serving("production").0, "v1.2.0");
    assert_eq!(serving_commit(&s, "production"), sha);

    let staging = &s.ferry(&["history", "staging", "--json"]).json()[0];
    let production = &s.ferry(&["history", "production", "--json"]).json()[0];
    assert_eq!(production["state"], "succeeded");
    assert_eq!(production["release"], format!("v1.2.0-{short}"));
    assert_eq!(staging["release"], format!("main-{short}"));
    assert_eq!(production["digest"], staging["digest"]);
    let id = production["id"].as_i64().unwrap().to_string();
    let show = s.ferry(&["show", &id, "--json"]).json();
    assert_eq!(step(&show, "build")["state"], "skipped");
    assert_eq!(step(&show, "test")["state"], "skipped");
    assert!(
        step(&show, "prepare")["output"]
            .as_str()
            .unwrap()
            .contains(&format!(
                "copied release v1.2.0-{short} from staging (as main-{short})"
            )),
        "{show}"
    );
    let stamp = |env: &str, release: &str| {
        std::fs::read_to_string(
            s.state_dir()
                .join("environments")
                .join(env)
                .join("releases")
                .join(release)
                .join("built-at.txt"),
        )
        .unwrap()
    };
    assert_eq!(
        stamp("production", &format!("v1.2.0-{short}")),
        stamp("staging", &format!("main-{short}")),
        "the very bytes built on staging"
    );

    // a commit deployed to staging but not signed off: refused, saying what to run
    let second = commit(&s, "second");
    s.deploy_ok("staging", "main");
    sh(&s.repo, "git tag v1.3.0");
    let run = s.ferry(&["deploy", "production", "v1.3.0"]);
    assert_eq!(run.code(), 1, "{run}");
    assert!(
        run.stdout().contains(&format!(
            "deployed to staging as main-{} but not verified: run `ferry verify staging`",
            &second[..7]
        )),
        "{run}"
    );

    // a tag at a commit never deployed: refused, naming the commit verified and the tagged one
    let third = commit(&s, "third");
    sh(&s.repo, "git tag v1.4.0");
    for run in [
        s.ferry(&["deploy", "production", "v1.4.0"]),
        s.ferry(&["plan", "production", "v1.4.0"]),
    ] {
        assert_eq!(run.code(), 1, "{run}");
        assert!(
            run.stdout().contains(&format!(
                "v1.4.0 was never deployed to staging: v1.4.0 is commit {}, and the newest commit verified on staging is {short} (main-{short} on staging)",
                &third[..7]
            )),
            "{run}"
        );
    }
    assert_eq!(s.serving("production").0, "v1.2.0");
}

/// A session signed in with a new admin token: (cookie, CSRF token of the page `path`).
fn sign_in(s: &Sandbox, client: &reqwest::blocking::Client, path: &str) -> (String, String) {
    let run = s.ferry(&["token", "create", "--name", "alice", "--json"]);
    assert_eq!(run.code(), 0, "{run}");
    let token = run.json()["token"].as_str().unwrap().to_string();
    let resp = client
        .post(format!("{}/signin", s.api))
        .form(&[("token", token.as_str())])
        .send()
        .unwrap();
    let cookie = resp.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let page = page(s, client, &cookie, path);
    let re = Regex::new(r#"name="csrf" value="([0-9a-f]{32})""#).unwrap();
    let csrf = re.captures(&page).expect("a form with a CSRF token")[1].to_string();
    (cookie, csrf)
}

fn page(s: &Sandbox, client: &reqwest::blocking::Client, cookie: &str, path: &str) -> String {
    client
        .get(format!("{}{path}", s.api))
        .header("cookie", cookie)
        .send()
        .unwrap()
        .text()
        .unwrap()
}

#[test]
fn two_deploys_of_a_branch_roll_back_by_release_name_from_cli_and_dashboard() {
    let mut s = Sandbox::with(
        &[],
        Options {
            env_extra: &[("staging", "track = { branch = \"main\" }")],
            ..Options::default()
        },
    );
    s.serve();
    let first = commit(&s, "first");
    s.deploy_ok("staging", "main");
    let second = commit(&s, "second");
    s.deploy_ok("staging", "main");
    let (one, two) = (
        format!("main-{}", &first[..7]),
        format!("main-{}", &second[..7]),
    );
    assert_eq!(serving_commit(&s, "staging"), second);

    // the previous good release, though both are versions of `main`
    let run = s.ferry(&["rollback", "staging", "--yes", "--reason", "second broke"]);
    assert_eq!(run.code(), 0, "{run}\n{}", s.serve_log());
    assert!(
        run.stdout()
            .contains(&format!("rolled back staging to {one}")),
        "{run}"
    );
    assert_eq!(serving_commit(&s, "staging"), first);
    let d = &s.ferry(&["history", "staging", "--json"]).json()[0];
    assert_eq!(
        (d["kind"].as_str(), d["ref"].as_str(), d["release"].as_str()),
        (Some("rollback"), Some(one.as_str()), Some(one.as_str()))
    );
    let history = s.ferry(&["history", "staging"]);
    assert!(history.stdout().contains(&one), "{history}");
    assert!(history.stdout().contains(&two), "{history}");

    // by name, back to the release that was undone (marked bad, so asked for by name)
    let run = s.ferry(&[
        "rollback",
        "staging",
        "--yes",
        "--to",
        &two,
        "--reason",
        "it was fine",
    ]);
    assert_eq!(run.code(), 0, "{run}\n{}", s.serve_log());
    assert_eq!(serving_commit(&s, "staging"), second);
    let run = s.ferry(&[
        "rollback", "staging", "--yes", "--to", &two, "--reason", "again",
    ]);
    assert_eq!(run.code(), 1, "{run}");
    assert!(
        run.stderr()
            .contains(&format!("{two} is already serving staging")),
        "{run}"
    );
    // the version alone names the one release of main that is not serving
    let preview = s.api("/api/environments/staging/rollback?to=main");
    assert_eq!(preview["to"]["release"], one.as_str());
    assert_eq!(preview["from"]["release"], two.as_str());
    assert_eq!(preview["confirm"], "staging");

    // a third deploy; the dashboard offers the earlier good release by name (not the one
    // serving, nor the one the last rollback undid, marked bad) and rolls back to it
    let third = commit(&s, "third");
    s.deploy_ok("staging", "main");
    let three = format!("main-{}", &third[..7]);
    let client = crate::support::blocking_http()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let (cookie, csrf) = sign_in(&s, &client, "/environments/staging");
    let env_page = page(&s, &client, &cookie, "/environments/staging");
    let offered: Vec<String> = Regex::new(r#"<option value="([^"]+)""#)
        .unwrap()
        .captures_iter(&env_page)
        .map(|c| c[1].to_string())
        .collect();
    assert_eq!(offered, vec![two.as_str()], "{env_page}");
    let resp = client
        .post(format!("{}/actions/environments/staging/rollback", s.api))
        .header("cookie", &cookie)
        .form(&[
            ("to", two.as_str()),
            ("reason", "from the dashboard"),
            ("confirm", "staging"),
            ("csrf", csrf.as_str()),
        ])
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 303, "{}", resp.text().unwrap());
    assert!(
        eventually(Duration::from_secs(30), || serving_commit(&s, "staging")
            == second),
        "{}",
        s.serve_log()
    );
    assert!(eventually(Duration::from_secs(30), || {
        s.api("/api/environments/staging/deployments")[0]["state"] == "succeeded"
    }));
    let d = &s.api("/api/environments/staging/deployments")[0];
    assert_eq!(d["ref"], two.as_str());
    assert!(s.ferry(&["history", "staging"]).stdout().contains(&three));
    assert_eq!(d["note"], "from the dashboard");
}

/// Runs the CLI with a pseudo-terminal as its stdin, `typed` already typed on it.
fn on_terminal(s: &Sandbox, args: &[&str], typed: &str) -> Run {
    let pty = nix::pty::openpty(
        None::<&nix::pty::Winsize>,
        None::<&nix::sys::termios::Termios>,
    )
    .unwrap();
    let mut terminal = std::fs::File::from(pty.master);
    let child = Command::new(FERRY)
        .arg("-c")
        .arg(&s.config)
        .args(args)
        .env("USER", "tester")
        .stdin(Stdio::from(pty.slave))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // typed ahead: the terminal holds the line until ferry reads it
    terminal.write_all(typed.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    drop(terminal);
    Run(out)
}

#[test]
fn rollback_on_a_terminal_asks_for_the_typed_word_and_without_one_needs_yes() {
    let mut s = Sandbox::with(
        &[Rel("v1.0.0", GOOD), Rel("v1.1.0", GOOD)],
        Options {
            env_extra: &[("staging", "confirm = \"ROLLBACK\"")],
            ..Options::default()
        },
    );
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    s.deploy_ok("staging", "v1.1.0");
    let rollbacks = || {
        s.api("/api/environments/staging/deployments")
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["kind"] == "rollback")
            .count()
    };

    // no terminal to ask on: --yes is needed, and nothing is asked of the daemon
    let run = s.ferry(&["rollback", "staging", "--reason", "broken"]);
    assert_eq!(run.code(), 2, "{run}");
    assert!(
        run.stderr().contains("no terminal") && run.stderr().contains("--yes"),
        "{run}"
    );

    // on a terminal: what will happen, then the configured word; another word cancels
    let run = on_terminal(
        &s,
        &["rollback", "staging", "--reason", "broken"],
        "staging\n",
    );
    assert_eq!(run.code(), 1, "{run}");
    let told = run.stderr();
    for says in [
        "Rolling back staging:",
        "from  v1.1.0-",
        "to    v1.0.0-",
        "data  left as it is (no --restore-data)",
        "Type ROLLBACK to roll back",
        "rollback cancelled",
    ] {
        assert!(told.contains(says), "{says}: {run}");
    }
    assert_eq!(rollbacks(), 0);
    assert_eq!(s.serving("staging").0, "v1.1.0");

    let run = on_terminal(
        &s,
        &["rollback", "staging", "--reason", "broken"],
        "ROLLBACK\n",
    );
    assert_eq!(run.code(), 0, "{run}\n{}", s.serve_log());
    assert!(
        run.stdout().contains("rolled back staging to v1.0.0-"),
        "{run}"
    );
    assert_eq!(rollbacks(), 1);
    assert_eq!(s.serving("staging").0, "v1.0.0");

    // --yes needs no terminal and asks nothing
    let run = s.ferry(&[
        "rollback", "staging", "--yes", "--to", "v1.1.0", "--reason", "fixed",
    ]);
    assert_eq!(run.code(), 0, "{run}");
    assert!(!run.stderr().contains("Type ROLLBACK"), "{run}");
    assert_eq!(s.serving("staging").0, "v1.1.0");
}

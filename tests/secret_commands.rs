//! Secrets from a command (`secrets = { NAME = { command = "…" } }`): the value a secret
//! manager's CLI prints reaches the app, and nowhere else — not the store, not step output,
//! not the app log, not the API, not a command line.

mod support;

use std::path::Path;
use std::time::Duration;

use sha2::Digest;
use support::*;

/// What the "secret manager" holds.
const DB_URL: &str = "postgres://app:cmd-secret-5b0e91c7d2@db/prod";
/// The operator's credential for it, in `serve`'s environment only.
const VAULT_TOKEN: &str = "vault-cred-0a9f3e61";

fn files_under(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            files_under(&path, out);
        } else if kind.is_file() {
            out.push(path);
        }
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Every process's command line that holds `needle`.
fn command_lines_holding(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline"))
            && contains(&cmdline, needle)
        {
            found.push(String::from_utf8_lossy(&cmdline).replace('\0', " "));
        }
    }
    found
}

/// A sandbox whose staging gets `DB_URL` from `vault/get` (a script standing for a secret
/// manager's CLI, which needs `VAULT_TOKEN` from `serve`'s environment), and whose app
/// writes the SHA-256 of the `DB_URL` it got into its shared dir before it starts.
fn sandbox(releases: &[Rel]) -> Sandbox {
    let mut s = Sandbox::with(
        releases,
        Options {
            extra_app: "shared = [\"data/\"]",
            env_extra: &[(
                "staging",
                "secrets = { DB_URL = { command = \"sh vault/get\", timeout = \"10s\" } }",
            )],
            ..Options::default()
        },
    );
    let vault = s.dir.path().join("vault");
    std::fs::create_dir(&vault).unwrap();
    std::fs::write(vault.join("db_url"), format!("{DB_URL}\n")).unwrap();
    std::fs::write(
        vault.join("get"),
        format!(
            "test \"$VAULT_TOKEN\" = {VAULT_TOKEN} || {{ echo 'vault: no token' >&2; exit 3; }}\n\
             test \"$FERRY_ENVIRONMENT\" = staging || exit 4\n\
             cat \"$(dirname \"$0\")/db_url\"\n"
        ),
    )
    .unwrap();
    let config = std::fs::read_to_string(&s.config).unwrap();
    let start = format!("start = \"'{FERRY}' sample-app\"");
    assert!(config.contains(&start));
    let config = config.replace(
        &start,
        &format!(
            "start = \"printf %s \\\"$DB_URL\\\" | sha256sum | cut -d' ' -f1 > data/db_url.sha256; exec '{FERRY}' sample-app\""
        ),
    );
    std::fs::write(&s.config, config).unwrap();
    s.serve_env.push(("VAULT_TOKEN".into(), VAULT_TOKEN.into()));
    s
}

fn app_hash(s: &Sandbox) -> String {
    let path = s
        .state_dir()
        .join("environments/staging/shared/data/db_url.sha256");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[test]
fn a_secret_from_a_command_reaches_the_app_and_nowhere_else() {
    let mut s = sandbox(&[Rel("v1.0.0", "health_status = 200\nprint_env = DB_URL\n")]);
    s.serve();
    let run = s.deploy_ok("staging", "v1.0.0");
    assert!(!run.stdout().contains(DB_URL) && !run.stderr().contains(DB_URL));

    // the app got the value the command printed, less its trailing newline
    assert_eq!(app_hash(&s), hex::encode(sha2::Sha256::digest(DB_URL)));
    assert_eq!(s.serving("staging").0, "v1.0.0");

    // it printed it, and the log has it masked
    let log = s.state_dir().join("environments/staging/logs/app.log");
    assert!(eventually(Duration::from_secs(5), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("DB_URL=***"))
    }));
    let logs = s.ferry(&["logs", "staging", "-n", "100"]);
    assert!(logs.stdout().contains("DB_URL=***"), "{logs}");

    // not on any command line while the app runs
    assert_eq!(command_lines_holding(DB_URL), Vec::<String>::new());

    // not in any answer
    for args in [
        &["show", "1"][..],
        &["show", "1", "--json"],
        &["status"],
        &["status", "--json"],
        &["history", "staging", "--json"],
        &["logs", "staging"],
    ] {
        let run = s.ferry(args);
        assert_eq!(run.code(), 0, "{args:?}: {run}");
        assert!(!run.stdout().contains(DB_URL), "{args:?}: {run}");
        assert!(!run.stdout().contains(VAULT_TOKEN), "{args:?}: {run}");
    }
    for path in [
        "/api/environments",
        "/api/deployments/1",
        "/api/environments/staging/logs?n=100",
        "/api/audit",
    ] {
        let (_, body) = s.get(path).unwrap();
        assert!(!body.contains(DB_URL), "{path}: {body}");
    }
    assert!(!s.serve_log().contains(DB_URL));

    // not in the store nor anywhere else in the state dir (the db file's bytes, WAL too)
    let mut files = Vec::new();
    files_under(&s.state_dir(), &mut files);
    assert!(files.iter().any(|f| f.ends_with("ferry.db")));
    for file in files {
        let bytes = std::fs::read(&file).unwrap_or_default();
        assert!(
            !contains(&bytes, DB_URL),
            "{} holds the secret",
            file.display()
        );
    }
}

#[test]
fn a_failing_secret_command_fails_the_deploy_and_the_old_release_keeps_serving() {
    let mut s = sandbox(&[
        Rel("v1.0.0", GOOD),
        Rel("v1.1.0", GOOD),
        Rel("v1.2.0", GOOD),
    ]);
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    let good = app_hash(&s);

    // the secret manager now prints part of a value and fails
    let vault = s.dir.path().join("vault/get");
    std::fs::write(
        &vault,
        "echo half-printed-value-77c1\necho 'vault: sealed' >&2\nexit 2\n",
    )
    .unwrap();
    let run = s.ferry(&["deploy", "staging", "v1.1.0"]);
    assert_eq!(run.code(), 1, "{run}");
    let said = format!("{}{}", run.stdout(), run.stderr());
    assert!(said.contains("secret DB_URL"), "{run}");
    assert!(
        said.contains("exited with status 2: vault: sealed"),
        "{run}"
    );
    assert!(!said.contains("half-printed-value-77c1"), "{run}");
    let shown = s.ferry(&["show", "2", "--json"]).stdout();
    assert!(shown.contains("vault: sealed"), "{shown}");
    assert!(!shown.contains("half-printed-value-77c1"), "{shown}");
    assert_eq!(s.serving("staging").0, "v1.0.0");
    assert_eq!(app_hash(&s), good);

    // a command that never ends is stopped at its timeout, with the same outcome
    std::fs::write(&vault, "sleep 600\n").unwrap();
    let run = s.ferry(&["deploy", "staging", "v1.2.0"]);
    assert_eq!(run.code(), 1, "{run}");
    let said = format!("{}{}", run.stdout(), run.stderr());
    assert!(said.contains("did not finish within 10s"), "{run}");
    assert_eq!(s.serving("staging").0, "v1.0.0");
    // its process group is gone
    assert!(eventually(Duration::from_secs(5), || {
        command_lines_holding("sleep 600").is_empty()
    }));
}

/// `ferry secrets ENV set NAME` with `value` on its stdin; fails the test if the value shows
/// on any command line while the command waits for it.
fn secrets_set(s: &Sandbox, env: &str, name: &str, value: &str) -> Run {
    use std::io::Write;
    let mut child = std::process::Command::new(FERRY)
        .arg("-c")
        .arg(&s.config)
        .args(["secrets", env, "set", name])
        .env("USER", "tester")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // once it runs ferry (not the test's fork before its exec)
    let proc = format!("/proc/{}/cmdline", child.id());
    assert!(eventually(Duration::from_secs(5), || {
        std::fs::read(&proc).is_ok_and(|c| contains(&c, "secrets"))
    }));
    let cmdline = std::fs::read(&proc).unwrap();
    assert!(contains(&cmdline, name) && !contains(&cmdline, value));
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(format!("{value}\n").as_bytes()).unwrap();
    // the value is on its way in: still on no command line
    assert_eq!(command_lines_holding(value), Vec::<String>::new());
    drop(stdin);
    Run(child.wait_with_output().unwrap())
}

#[test]
fn ferry_secrets_set_unset_and_list_edit_the_env_file_in_place() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    const API_KEY: &str = "set-by-cli-4c2d9e7a11";
    let mut s = sandbox(&[Rel("v1.0.0", "health_status = 200\nprint_env = API_KEY\n")]);
    let config = std::fs::read_to_string(&s.config).unwrap().replace(
        "[environments.staging]\n",
        "[environments.staging]\nenv_file = \"config/.env\"\n",
    );
    std::fs::write(&s.config, config).unwrap();
    s.serve();
    let shared = s.state_dir().join("environments/staging/shared");
    let file = shared.join("config/.env");

    // a first secret makes the file (and its dir), 0600
    let run = secrets_set(&s, "staging", "API_KEY", "first-value-0001");
    assert_eq!(run.code(), 0, "{run}");
    assert!(run.stdout().contains("next start"), "{run}");
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // the operator's own lines and comments stay, in order
    std::fs::write(
        &file,
        "# rotated quarterly\nexport API_KEY=old\nOTHER=keep-me\n\n# end\n",
    )
    .unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let inode = std::fs::metadata(&file).unwrap().ino();
    let run = secrets_set(&s, "staging", "API_KEY", API_KEY);
    assert_eq!(run.code(), 0, "{run}");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        format!("# rotated quarterly\nexport API_KEY={API_KEY}\nOTHER=keep-me\n\n# end\n")
    );
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // replaced by a rename, not rewritten in place; no temp file left behind
    assert_ne!(meta.ino(), inode);
    let names: Vec<String> = std::fs::read_dir(file.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, [".env"]);

    // names and where each comes from, never a value
    for args in [
        &["secrets", "staging", "list"][..],
        &["secrets", "staging", "list", "--json"],
    ] {
        let run = s.ferry(args);
        assert_eq!(run.code(), 0, "{run}");
        let out = run.stdout();
        assert!(
            out.contains("API_KEY") && out.contains("OTHER") && out.contains("DB_URL"),
            "{out}"
        );
        assert!(out.contains("env_file") && out.contains("command"), "{out}");
        assert!(
            !out.contains(API_KEY) && !out.contains("keep-me") && !out.contains(DB_URL),
            "{out}"
        );
    }

    // the next start has it, masked in the log as any env_file value
    s.deploy_ok("staging", "v1.0.0");
    let log = s.state_dir().join("environments/staging/logs/app.log");
    assert!(eventually(Duration::from_secs(5), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("API_KEY=***"))
    }));
    assert!(!std::fs::read_to_string(&log).unwrap().contains(API_KEY));
    let audit = s.get("/api/audit").unwrap().1;
    assert!(audit.contains("secrets staging set API_KEY"), "{audit}");
    assert!(!audit.contains(API_KEY));

    // unset keeps the rest; without serve running too
    s.stop(nix::sys::signal::Signal::SIGTERM);
    let run = s.ferry(&["secrets", "staging", "unset", "API_KEY"]);
    assert_eq!(run.code(), 0, "{run}");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "# rotated quarterly\nOTHER=keep-me\n\n# end\n"
    );
    let run = s.ferry(&["secrets", "staging", "unset", "API_KEY"]);
    assert_eq!(run.code(), 1, "{run}");
    assert!(run.stderr().contains("API_KEY is not set"), "{run}");

    // mistakes: no value, a bad name, an unknown environment
    let run = s.ferry(&["secrets", "staging", "set", "EMPTY"]);
    assert_eq!(run.code(), 2, "{run}");
    assert!(run.stderr().contains("no value given"), "{run}");
    for (args, want) in [
        (
            &["secrets", "staging", "set", "A-B"][..],
            "not a variable name",
        ),
        (&["secrets", "nowhere", "list"], "unknown environment"),
    ] {
        let run = s.ferry(args);
        assert_eq!(run.code(), 2, "{run}");
        assert!(run.stderr().contains(want), "{run}");
    }
}

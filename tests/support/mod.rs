//! A sandbox per test: a git repository of sample-app releases, a config with free ports,
//! and a real `ferry serve` child process; the CLI run as the real binary.

#![allow(dead_code)]

pub mod docker;
pub mod hosts;
mod load;

#[allow(unused_imports)]
pub use load::{Load, Tally};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

/// `reqwest::blocking::Client::builder()` with rustls' crypto provider (ring) installed:
/// reqwest is built without one and panics when none is.
#[allow(clippy::disallowed_methods)] // the one place tests make blocking clients
pub fn blocking_http() -> reqwest::blocking::ClientBuilder {
    ferry::install_crypto_provider();
    reqwest::blocking::Client::builder()
}

/// `reqwest::Client::builder()` with rustls' crypto provider installed.
pub fn async_http() -> reqwest::ClientBuilder {
    ferry::http_builder()
}

/// `cmd` with a git author and committer set, so commits work on a bare machine.
pub fn git_identity(cmd: &mut Command) -> &mut Command {
    cmd.env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@t")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@t")
}

pub fn sh(dir: &Path, script: &str) {
    let out = git_identity(Command::new("sh").arg("-c").arg(script).current_dir(dir))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A port nothing listens on. Taken below Linux's ephemeral range (32768+) and handed out
/// once per test process, so neither a client connection nor another test of this binary can
/// take it between this call and `ferry serve` binding it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = 20_000 + (std::process::id() % 60) * 200;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (base + n % 12_000) as u16;
        if port < 32_000 && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
        if n > 12_000 {
            // every candidate is taken; let the OS choose
            return std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
        }
    }
}

/// A release of the sample app: its tag and its `app.conf`.
pub struct Rel(pub &'static str, pub &'static str);

pub const GOOD: &str = "health_status = 200\n";
pub const BROKEN: &str = "health_status = 500\n";
pub const EXITS: &str = "exit_at_start = true\n";

pub struct Sandbox {
    pub dir: tempfile::TempDir,
    pub repo: PathBuf,
    pub config: PathBuf,
    pub api: String,
    /// Environment name → its public URL.
    pub envs: Vec<(String, String)>,
    /// Extra environment variables for `ferry serve` (webhook secrets).
    pub serve_env: Vec<(String, String)>,
    /// A limit of open files (soft and hard) for `ferry serve`, set with the shell's `ulimit`.
    pub serve_open_files: Option<u64>,
    /// Extra arguments for `ferry serve`, such as `--stop-apps`.
    pub serve_args: Vec<String>,
    serve: Option<Child>,
}

pub struct Options {
    pub extra_app: &'static str,
    /// Added to every environment's table.
    pub extra_env: &'static str,
    pub envs: &'static [&'static str],
    /// Added to one environment's table: (name, text).
    pub env_extra: &'static [(&'static str, &'static str)],
    /// Top-level tables, such as `[monitor]`.
    pub tables: &'static str,
    /// Added to the `[server]` table, such as `open_reads = true`.
    pub server: &'static str,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            extra_app: "",
            extra_env: "",
            envs: &["staging"],
            env_extra: &[],
            tables: "",
            server: "",
        }
    }
}

impl Sandbox {
    /// A repo with `releases` tagged in order, a config, and no daemon yet.
    pub fn new(releases: &[Rel]) -> Sandbox {
        Sandbox::with(releases, Options::default())
    }

    pub fn with(releases: &[Rel], opts: Options) -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        // as root, ferry runs the app as another user: it must be able to pass through to
        // its release under the state dir (as under /srv or /var/lib on a real machine)
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o711),
        )
        .unwrap();
        let repo = dir.path().join("repo");
        std::fs::create_dir(&repo).unwrap();
        sh(&repo, "git init -q -b main");
        for Rel(tag, conf) in releases {
            std::fs::write(repo.join("app.conf"), conf).unwrap();
            std::fs::write(repo.join("release.txt"), tag).unwrap();
            sh(
                &repo,
                &format!("git add . && git commit -qm {tag} && git tag {tag}"),
            );
        }
        let api_port = free_port();
        let mut envs = Vec::new();
        let mut env_text = String::new();
        for name in opts.envs {
            let port = free_port();
            envs.push((name.to_string(), format!("http://127.0.0.1:{port}")));
            let own: String = opts
                .env_extra
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, t)| format!("{t}\n"))
                .collect();
            env_text.push_str(&format!(
                "[environments.{name}]\nlisten = \"127.0.0.1:{port}\"\n{}\n{own}\n",
                opts.extra_env
            ));
        }
        let text = format!(
            r#"[app]
name = "sample"
repo = "repo"
start = "'{FERRY}' sample-app"
stop_timeout = "2s"
drain_timeout = "5s"
{extra_app}

[health]
paths = ["/health"]
interval = "100ms"
timeout = "1s"
retries = 15

{env_text}
[server]
listen = "127.0.0.1:{api_port}"
{server}

{tables}
"#,
            extra_app = opts.extra_app,
            tables = opts.tables,
            server = opts.server
        );
        let config = dir.path().join("ferry.toml");
        std::fs::write(&config, text).unwrap();
        Sandbox {
            dir,
            repo,
            config,
            api: format!("http://127.0.0.1:{api_port}"),
            envs,
            serve_env: Vec::new(),
            serve_open_files: None,
            serve_args: Vec::new(),
            serve: None,
        }
    }

    pub fn url(&self, env: &str) -> String {
        self.envs
            .iter()
            .find(|(n, _)| n == env)
            .map(|(_, u)| u.clone())
            .expect("environment in sandbox")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join(".ferry")
    }

    /// Starts `ferry serve` and waits until its API answers.
    pub fn serve(&mut self) -> &mut Sandbox {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("serve.log"))
            .unwrap();
        let mut command = match self.serve_open_files {
            None => Command::new(FERRY),
            Some(n) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(FERRY);
                sh
            }
        };
        let child = command
            .arg("serve")
            .arg("-c")
            .arg(&self.config)
            .args(&self.serve_args)
            .envs(self.serve_env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.serve = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while get(&format!("{}/health", self.api)).is_none() {
            assert!(
                Instant::now() < deadline,
                "ferry serve did not come up:\n{}",
                self.serve_log()
            );
            if let Some(status) = self.serve.as_mut().unwrap().try_wait().unwrap() {
                panic!("ferry serve exited with {status}:\n{}", self.serve_log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self
    }

    /// The process id of the running `ferry serve`, if one runs.
    pub fn serve_pid(&self) -> Option<u32> {
        self.serve.as_ref().map(Child::id)
    }

    pub fn serve_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    /// Stops the daemon with `signal` (SIGTERM: graceful; SIGKILL: a crash).
    pub fn stop(&mut self, signal: nix::sys::signal::Signal) {
        if let Some(mut child) = self.serve.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, signal);
            let _ = child.wait();
        }
    }

    /// Runs the ferry CLI against this sandbox's config.
    pub fn ferry(&self, args: &[&str]) -> Run {
        let out = Command::new(FERRY)
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .env("USER", "tester")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        Run(out)
    }

    /// The JSON of `GET <api><path>`, read with the local token.
    pub fn api(&self, path: &str) -> serde_json::Value {
        let (status, body) = self.get(path).expect("the API answers");
        assert!(status < 400, "GET {path}: {status} {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// The version the environment's public URL serves, from the sample app's `/version`.
    pub fn serving(&self, env: &str) -> (String, u32) {
        let (status, body) = get(&format!("{}/version", self.url(env))).expect("proxy answers");
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        (
            v["version"].as_str().unwrap().to_string(),
            v["pid"].as_u64().unwrap() as u32,
        )
    }

    /// `GET <api><path>` with the local token: status and body, or `None` when nothing answers.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        get_with(&format!("{}{path}", self.api), Some(&self.token()))
    }

    /// The secret `serve` wrote for local use.
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.state_dir().join("local-token")).expect("serve wrote a token")
    }

    /// `POST <api><path>` with the local token: status and body.
    pub fn post(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        post(&format!("{}{path}", self.api), Some(&self.token()), body)
    }

    /// A deploy that must succeed.
    pub fn deploy_ok(&self, env: &str, git_ref: &str) -> Run {
        let run = self.ferry(&["deploy", env, git_ref]);
        assert_eq!(
            run.code(),
            0,
            "deploy {env} {git_ref} failed:\n{run}\n{}",
            self.serve_log()
        );
        run
    }
}

impl Sandbox {
    /// The pid of the `ferry serve` holding the state dir (it writes it into `serve.lock`),
    /// while that process runs with this sandbox's config: also one that took over from the
    /// one [`Sandbox::serve`] started.
    pub fn locked_serve_pid(&self) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(self.state_dir().join("serve.lock"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let config = self.config.to_string_lossy();
        String::from_utf8_lossy(&cmdline)
            .contains(config.as_ref())
            .then_some(pid)
    }

    /// Stops whatever is left: a serve not started by [`Sandbox::serve`] (one that took
    /// over), and the apps, which outlive a stopped serve.
    fn stop_leftovers(&mut self) {
        if let Some(pid) = self.locked_serve_pid() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            eventually(Duration::from_secs(10), || !alive(pid));
        }
        for (pid, pgid) in processes_in(self.dir.path()) {
            let group = nix::unistd::Pid::from_raw(pgid as i32);
            if pid == pgid
                && nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL).is_ok()
            {
                continue;
            }
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Every live process whose working directory is inside `dir`: (pid, process group).
pub fn processes_in(dir: &Path) -> Vec<(u32, u32)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cwd) = std::fs::read_link(entry.path().join("cwd")) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        if fields[0] == "Z" || !cwd.starts_with(dir) {
            continue;
        }
        if let Ok(pgid) = fields[2].parse() {
            found.push((pid, pgid));
        }
    }
    found
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop(nix::sys::signal::Signal::SIGTERM);
        self.stop_leftovers();
    }
}

/// A finished CLI run.
pub struct Run(pub Output);

impl Run {
    pub fn code(&self) -> i32 {
        self.0.status.code().unwrap_or(-1)
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.0.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{self}"))
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code(),
            self.stdout(),
            self.stderr()
        )
    }
}

/// A blocking POST of JSON with an optional bearer token: status and body.
pub fn post(url: &str, token: Option<&str>, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let client = crate::support::blocking_http()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut req = client.post(url).json(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or_default())
}

/// True while a process with `pid` exists.
pub fn alive(pid: u32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
}

/// A blocking GET without a token: status and body, or `None` when nothing answers.
pub fn get(url: &str) -> Option<(u16, String)> {
    get_with(url, None)
}

/// A blocking GET with an optional bearer token: status and body, or `None` when nothing
/// answers.
pub fn get_with(url: &str, token: Option<&str>) -> Option<(u16, String)> {
    let client = crate::support::blocking_http()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut req = client.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.text().unwrap_or_default()))
}

/// Waits up to `limit` for `check` to hold.
pub fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    check()
}

//! `ferry demo`: a sample app repository, a config and a daemon in a temp folder; deploys
//! v1.0.0 and v1.1.0 to staging under a request loop, shows a broken v1.2.0 refused by its
//! health check while v1.1.0 keeps serving, then the promotion gate: v1.1.0 verified on
//! staging and promoted to production (the same bytes), v1.2.0's promotion refused. It keeps
//! running until Ctrl-C.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::{ApiClient, CmdResult, Failure, deploy};
use crate::config::Config;
use crate::daemon::Daemon;

#[derive(Debug, clap::Args)]
pub struct Demo {
    /// Exit after the walkthrough instead of serving until Ctrl-C.
    #[arg(long)]
    pub no_wait: bool,
}

fn fail(context: &str) -> impl Fn(std::io::Error) -> Failure + '_ {
    move |e| Failure::Failed(format!("demo: {context}: {e}"))
}

/// Runs git in `dir`, failing with its stderr.
fn git(dir: &Path, args: &[&str]) -> Result<(), Failure> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "ferry demo")
        .env("GIT_AUTHOR_EMAIL", "demo@ferry.invalid")
        .env("GIT_COMMITTER_NAME", "ferry demo")
        .env("GIT_COMMITTER_EMAIL", "demo@ferry.invalid")
        .output()
        .map_err(fail("running git (is git installed?)"))?;
    if !out.status.success() {
        return Err(Failure::Failed(format!(
            "demo: git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// A repository whose tags are three releases of the sample app; v1.2.0 fails its health check.
pub fn sample_repo(dir: &Path) -> Result<PathBuf, Failure> {
    let repo = dir.join("app");
    std::fs::create_dir_all(&repo).map_err(fail("creating the repo"))?;
    git(&repo, &["init", "-q", "-b", "main"])?;
    let releases = [
        (
            "v1.0.0",
            "message = hello\nhealth_status = 200\n",
            "feat: first release",
        ),
        (
            "v1.1.0",
            "message = hello again\nhealth_status = 200\n",
            "feat: friendlier greeting",
        ),
        (
            "v1.2.0",
            "message = broken\nhealth_status = 500\n",
            "fix: a change that breaks /health",
        ),
    ];
    for (tag, conf, subject) in releases {
        std::fs::write(repo.join("app.conf"), conf).map_err(fail("writing app.conf"))?;
        std::fs::write(
            repo.join("README.md"),
            format!("# sample app\n\nrelease {tag}\n"),
        )
        .map_err(fail("writing README.md"))?;
        git(&repo, &["add", "."])?;
        git(&repo, &["commit", "-q", "-m", subject])?;
        git(&repo, &["tag", "-a", tag, "-m", tag])?;
    }
    Ok(repo)
}

/// `preferred` if it is free on 127.0.0.1, otherwise any free port.
fn port(preferred: u16) -> u16 {
    match std::net::TcpListener::bind(("127.0.0.1", preferred)) {
        Ok(_) => preferred,
        Err(_) => crate::runtime::free_port().unwrap_or(preferred),
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn write_config(dir: &Path, repo: &Path) -> Result<PathBuf, Failure> {
    let exe = std::env::current_exe().map_err(fail("finding ferry's own binary"))?;
    let toml_str = |s: String| toml::Value::String(s).to_string();
    let start = toml_str(format!(
        "{} sample-app",
        shell_quote(&exe.to_string_lossy())
    ));
    let text = format!(
        r#"# written by `ferry demo`
[app]
name = "sample"
repo = {repo}
build = ["test -f app.conf"]
test = ["grep -q health_status app.conf"]
start = {start}
shared = ["data/"]
stop_timeout = "5s"
drain_timeout = "5s"

[health]
paths = ["/health", "/version"]
interval = "200ms"
timeout = "1s"
retries = 10

[environments.staging]
listen = "127.0.0.1:{staging}"
track = {{ branch = "main" }}
env = {{ LOG_LEVEL = "debug" }}

[environments.production]
listen = "127.0.0.1:{production}"
track = {{ tags = true }}
requires = "staging"

[server]
listen = "127.0.0.1:{api}"
"#,
        repo = toml_str(repo.display().to_string()),
        staging = port(8081),
        production = port(8080),
        api = port(7070),
    );
    let path = dir.join("ferry.toml");
    std::fs::write(&path, text).map_err(fail("writing ferry.toml"))?;
    Ok(path)
}

/// Sends requests through `url` until `stop`, counting them and the failed ones.
fn request_loop(url: String, stop: Arc<AtomicBool>, total: Arc<AtomicU64>, failed: Arc<AtomicU64>) {
    tokio::spawn(async move {
        let http = crate::http_builder().no_proxy().build().expect("client");
        while !stop.load(Ordering::Relaxed) {
            total.fetch_add(1, Ordering::Relaxed);
            let ok = matches!(http.get(&url).send().await, Ok(r) if r.status().is_success());
            if !ok {
                failed.fetch_add(1, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
}

async fn answer(url: &str) -> String {
    match crate::http_builder()
        .no_proxy()
        .build()
        .expect("client")
        .get(url)
        .send()
        .await
    {
        Ok(r) => format!(
            "{} {}",
            r.status().as_u16(),
            r.text().await.unwrap_or_default().trim()
        ),
        Err(e) => format!("no answer: {e}"),
    }
}

pub async fn run(args: &Demo) -> CmdResult {
    let dir = tempfile::Builder::new()
        .prefix("ferry-demo-")
        .tempdir()
        .map_err(fail("creating a temp folder"))?;
    // as root, the demo app runs as its own user, which must pass through to its release
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .map_err(fail("opening the temp folder to the demo's app user"))?;
    outln!("ferry demo in {}", dir.path().display());
    let repo = sample_repo(dir.path())?;
    let config_path = write_config(dir.path(), &repo)?;
    let config = Config::load(&config_path)?;
    let url = |env: &str| {
        format!(
            "http://{}",
            config
                .environment(env)
                .and_then(|e| e.listen)
                .expect("the demo's environments listen on ports")
        )
    };
    let (staging, production) = (url("staging"), url("production"));
    let daemon = Daemon::start(
        crate::config::ServerConfig::single(config),
        Default::default(),
    )
    .await
    .map_err(|e| Failure::Failed(format!("demo: {e}")))?;
    let api = format!("http://{}", daemon.api_addr);
    let token = crate::auth::cli_token(Some(&daemon.engines()[0].config.server_dir));
    let client = ApiClient::new(&api, &config_path, token);
    outln!("daemon: API on {api}, staging on {staging}");
    outln!("dashboard: open {api}/ in a browser\n");

    let mut result = walkthrough(&client, &staging).await;
    if result.is_ok() {
        result = promotion(&client, &production).await;
    }
    if result.is_ok() {
        let c = config_path.display();
        outln!("\nTry next (the daemon keeps running):");
        outln!("  open {api}/ (the dashboard; sign in with: ferry token create you -c {c})");
        outln!("  curl {staging}/");
        outln!("  curl {production}/");
        outln!("  ferry status -c {c}");
        outln!("  ferry history staging -c {c}");
        outln!("  ferry show 3 -c {c}     # the refused v1.2.0, with the app's last lines");
        outln!("  ferry logs staging -n 20 -c {c}");
        outln!("  ferry deploy staging v1.0.0 -c {c}     # back to v1.0.0, already built");
        outln!("  ferry rollback staging --reason 'try it' -c {c}");
        if !args.no_wait {
            outln!("\nPress Ctrl-C to stop.");
            super::wait_for_stop().await;
        }
    }
    outln!("stopping the demo");
    // the demo's apps live in its temp dir: they go with it
    daemon.stop(true).await;
    result
}

async fn walkthrough(client: &ApiClient, staging: &str) -> CmdResult {
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    for (tag, should_succeed) in [("v1.0.0", true), ("v1.1.0", true), ("v1.2.0", false)] {
        outln!("$ ferry deploy staging {tag}");
        let d = deploy::deploy(client, "staging", tag, true).await?;
        let ok = d.state == crate::store::DeploymentState::Succeeded;
        if ok != should_succeed {
            stop.store(true, Ordering::Relaxed);
            return Err(Failure::Failed(format!(
                "demo: deploying {tag} was expected to {} but it {}",
                if should_succeed { "succeed" } else { "fail" },
                d.state.as_str()
            )));
        }
        outln!("staging answers: {}\n", answer(staging).await);
        if tag == "v1.0.0" {
            // from here on, a client keeps calling staging through every switch
            request_loop(
                format!("{staging}/"),
                stop.clone(),
                total.clone(),
                failed.clone(),
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(50)).await;
    outln!(
        "v1.2.0 was refused by its health check; v1.1.0 kept serving.\n\
         A client sent {} requests to staging during the last two deploys: {} failed.",
        total.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    Ok(())
}

/// The promotion gate: production `requires = "staging"`, so a tag reaches it only once it
/// was verified there, and it gets the very release staging ran.
async fn promotion(client: &ApiClient, production: &str) -> CmdResult {
    outln!("\nProduction takes only what was verified on staging.");
    outln!("$ ferry verify staging");
    let v: crate::store::Verification = client
        .post(
            "/api/environments/staging/verify",
            &serde_json::json!({ "version": null }),
        )
        .await
        .map_err(|e| Failure::Failed(format!("demo: verify: {e}")))?;
    outln!(
        "verified {} ({}) on staging\n",
        v.version,
        &v.commit_sha[..7.min(v.commit_sha.len())]
    );
    outln!("$ ferry promote {}", v.version);
    let created = deploy::create(
        client,
        "/api/promote",
        &serde_json::json!({ "tag": v.version }),
    )
    .await?;
    let d = deploy::follow(client, created.id, true).await?;
    if d.state != crate::store::DeploymentState::Succeeded {
        return Err(Failure::Failed(format!(
            "demo: promoting {} was expected to succeed but it {}",
            v.version,
            d.state.as_str()
        )));
    }
    outln!("production answers: {}\n", answer(production).await);

    outln!("$ ferry promote v1.2.0");
    let refused = match deploy::create(
        client,
        "/api/promote",
        &serde_json::json!({ "tag": "v1.2.0" }),
    )
    .await
    {
        Err(Failure::Failed(message)) => message,
        Err(e) => return Err(e),
        Ok(created) => {
            let d = deploy::follow(client, created.id, true).await?;
            if d.state != crate::store::DeploymentState::Refused {
                return Err(Failure::Failed(format!(
                    "demo: promoting v1.2.0 was expected to be refused but it {}",
                    d.state.as_str()
                )));
            }
            d.reason.unwrap_or_default()
        }
    };
    outln!("{refused}");
    outln!(
        "v1.2.0 never passed staging, so production keeps {}: {}",
        v.version,
        answer(production).await
    );
    Ok(())
}

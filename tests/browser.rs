//! The dashboard in a real browser: headless Chromium driven over WebDriver (Debian's
//! `chromium` and `chromium-driver`, which `.ci/run` installs). Screenshots land in
//! `target/screenshots/`.

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use support::{GOOD, Options, Rel, Sandbox, eventually, free_port, get, sh};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// A chromedriver with one headless Chromium session; blocking calls over a private runtime
/// (the sandbox helpers are blocking too).
struct Chrome {
    rt: tokio::runtime::Runtime,
    client: Option<Client>,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Chrome {
    fn start() -> Chrome {
        assert!(
            std::path::Path::new(CHROMEDRIVER).exists() && std::path::Path::new(CHROMIUM).exists(),
            "browser tests need Chromium: apt-get install chromium chromium-driver"
        );
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let url = format!("http://127.0.0.1:{port}");
        assert!(
            eventually(Duration::from_secs(20), || get(&format!("{url}/status"))
                .is_some()),
            "chromedriver did not come up"
        );
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--window-size=1280,1000",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = rt
            .block_on(async {
                let mut builder =
                    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
                builder.capabilities(caps.as_object().unwrap().clone());
                builder.connect(&url).await
            })
            .expect("a Chromium session");
        Chrome {
            rt,
            client: Some(client),
            driver,
            _profile: profile,
        }
    }

    fn client(&self) -> &Client {
        self.client.as_ref().unwrap()
    }

    fn goto(&self, url: &str) {
        self.rt.block_on(self.client().goto(url)).unwrap();
    }

    /// The text of the first element matching `css`, waiting up to 10 s for it. The live
    /// page replaces elements as events arrive: one replaced between finding and reading it
    /// is found again.
    fn text(&self, css: &str) -> String {
        self.rt
            .block_on(async {
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                loop {
                    let el = self
                        .client()
                        .wait()
                        .at_most(Duration::from_secs(10))
                        .for_element(Locator::Css(css))
                        .await?;
                    match el.text().await {
                        Err(e)
                            if e.to_string().contains("stale")
                                && std::time::Instant::now() < deadline =>
                        {
                            continue;
                        }
                        read => return read,
                    }
                }
            })
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
    }

    /// True when an element matches `css` now.
    fn has(&self, css: &str) -> bool {
        self.rt
            .block_on(self.client().find_all(Locator::Css(css)))
            .is_ok_and(|found| !found.is_empty())
    }

    /// Signs in on the sign-in page with `token` and waits for the overview.
    fn sign_in(&self, s: &Sandbox, token: &str) {
        self.goto(&format!("{}/signin", s.api));
        self.type_into("#token", token);
        self.click("form[action='/signin'] button");
        self.until(Duration::from_secs(10), "the overview", |c| c.path() == "/");
    }

    fn click(&self, css: &str) {
        self.rt
            .block_on(async { self.client().find(Locator::Css(css)).await?.click().await })
            .unwrap_or_else(|e| panic!("cannot click {css}: {e}"));
    }

    fn type_into(&self, css: &str, text: &str) {
        self.rt
            .block_on(async {
                self.client()
                    .find(Locator::Css(css))
                    .await?
                    .send_keys(text)
                    .await
            })
            .unwrap_or_else(|e| panic!("cannot type into {css}: {e}"));
    }

    fn select(&self, css: &str, value: &str) {
        self.rt
            .block_on(async {
                self.client()
                    .find(Locator::Css(css))
                    .await?
                    .select_by_value(value)
                    .await
            })
            .unwrap_or_else(|e| panic!("cannot select {value} in {css}: {e}"));
    }

    fn script(&self, js: &str) -> serde_json::Value {
        self.rt.block_on(self.client().execute(js, vec![])).unwrap()
    }

    fn path(&self) -> String {
        self.rt
            .block_on(self.client().current_url())
            .unwrap()
            .path()
            .to_string()
    }

    /// Saves a screenshot as `target/screenshots/<name>.png`; returns its path.
    fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.rt.block_on(self.client().screenshot()).unwrap();
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .unwrap()
            .join("screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, &png).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        path
    }

    /// Waits until `check` holds, polling the page.
    fn until(&self, limit: Duration, what: &str, mut check: impl FnMut(&Chrome) -> bool) {
        let deadline = Instant::now() + limit;
        while !check(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Chrome {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let _ = self.rt.block_on(client.close());
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn sandbox() -> Sandbox {
    Sandbox::with(
        &[Rel("v1.0.0", GOOD), Rel("v1.1.0", GOOD)],
        Options {
            // slow enough to watch: each deploy spends a few seconds in build and test
            extra_app: "build = [\"sleep 2\"]\ntest = [\"sleep 1\"]",
            envs: &["staging", "production"],
            env_extra: &[("production", "requires = \"staging\"")],
            ..Options::default()
        },
    )
}

#[test]
fn the_overview_shows_both_versions_and_a_deployment_advances_without_reload() {
    let mut s = sandbox();
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    assert_eq!(s.ferry(&["verify", "staging"]).code(), 0);
    assert_eq!(s.ferry(&["promote", "v1.0.0"]).code(), 0);
    s.deploy_ok("staging", "v1.1.0");

    let run = s.ferry(&[
        "token",
        "create",
        "--name",
        "viewer",
        "--read-only",
        "--json",
    ]);
    let viewer = run.json()["token"].as_str().unwrap().to_string();
    let chrome = Chrome::start();
    chrome.sign_in(&s, &viewer);
    assert_eq!(chrome.text("#env-staging .version"), "v1.1.0");
    assert_eq!(chrome.text("#env-production .version"), "v1.0.0");
    let compare = chrome.text(".compare");
    assert!(
        compare.contains("would bring 1 commit(s) to production"),
        "{compare}"
    );
    assert!(compare.contains("v1.1.0"), "{compare}");
    chrome.screenshot("dashboard-overview");

    // a new commit on main, deployed through the API; its page follows along live
    std::fs::write(s.repo.join("release.txt"), "main").unwrap();
    sh(&s.repo, "git commit -qam 'feat: live timeline'");
    let (status, d) = s.post(
        "/api/deployments",
        &json!({"environment": "staging", "ref": "main"}),
    );
    assert_eq!(status, 201, "{d}");
    let id = d["id"].as_i64().unwrap();
    chrome.goto(&format!("{}/deployments/{id}", s.api));
    chrome.script("window.__sameDocument = 42; return null;");
    let mut seen_running = Vec::new();
    chrome.until(Duration::from_secs(60), "the deployment to succeed", |c| {
        let running: Vec<String> = c
            .script("return Array.from(document.querySelectorAll('li.running .name')).map(e => e.textContent);")
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        for step in running {
            if !seen_running.contains(&step) {
                if step == "build" {
                    c.screenshot("dashboard-deployment-running");
                }
                seen_running.push(step);
            }
        }
        c.has("[data-state=succeeded]")
    });
    assert!(
        seen_running.iter().any(|s| s == "build") && seen_running.iter().any(|s| s == "test"),
        "the timeline showed build and test running: {seen_running:?}"
    );
    assert_eq!(
        chrome.script("return window.__sameDocument;"),
        json!(42),
        "the page was updated in place, not reloaded"
    );
    let done = chrome.script("return document.querySelectorAll('ol.timeline li.ok').length;");
    assert!(done.as_u64().unwrap() >= 9, "steps done: {done}");
    assert!(chrome.text("ol.timeline").contains("finish"));
    chrome.screenshot("dashboard-deployment");
}

#[test]
fn signing_in_and_rolling_back_changes_the_overview() {
    let mut s = sandbox();
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    s.deploy_ok("staging", "v1.1.0");
    let run = s.ferry(&["token", "create", "--name", "alice", "--json"]);
    let token = run.json()["token"].as_str().unwrap().to_string();

    let chrome = Chrome::start();
    chrome.goto(&s.api);
    assert_eq!(
        chrome.path(),
        "/signin",
        "signed out, the dashboard asks to sign in"
    );
    assert!(!chrome.has("details.actions"), "no actions signed out");
    chrome.sign_in(&s, &token);
    assert!(chrome.text(".who").contains("Signed in as alice"));
    assert!(chrome.has("details.actions"));
    let cookies = chrome.script("return document.cookie;");
    assert_eq!(cookies, json!(""), "the session cookie is HttpOnly");

    chrome.goto(&format!("{}/environments/staging#rollback", s.api));
    // releases are offered by name, `<version>-<sha7>`
    let first = s
        .api("/api/environments/staging/deployments")
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["version"] == "v1.0.0")
        .map(|d| d["release"].as_str().unwrap().to_string())
        .unwrap();
    chrome.select("#rollback-to", &first);
    chrome.type_into("#rollback-reason", "checkout is broken");
    chrome.type_into("#rollback-confirm", "staging");
    chrome.click("#rollback button.danger");
    chrome.until(Duration::from_secs(10), "the rollback's page", |c| {
        c.path().starts_with("/deployments/")
    });
    chrome.until(Duration::from_secs(60), "the rollback to succeed", |c| {
        c.has("[data-state=succeeded]")
    });
    assert!(chrome.text(".summary").contains("checkout is broken"));

    chrome.goto(&s.api);
    assert_eq!(chrome.text("#env-staging .version"), "v1.0.0");
    assert_eq!(s.serving("staging").0, "v1.0.0");
    let history = s.api("/api/environments/staging/deployments");
    assert_eq!(
        (
            history[0]["kind"].as_str(),
            history[0]["triggered_by"].as_str()
        ),
        (Some("rollback"), Some("alice"))
    );
}

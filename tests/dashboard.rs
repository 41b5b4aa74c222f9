//! The dashboard's routes against a real `ferry serve`: every page renders, every action
//! needs a signed-in session and its CSRF token, and each action changes what it says.

mod support;

use std::time::Duration;

use regex::Regex;
use support::{GOOD, Options, Rel, Sandbox, eventually, get};

/// A browser-like client: no redirects followed, a cookie sent by hand.
struct Browser {
    base: String,
    cookie: Option<String>,
    client: reqwest::blocking::Client,
}

struct Answer {
    status: u16,
    location: Option<String>,
    set_cookie: Option<String>,
    body: String,
}

impl Browser {
    fn new(s: &Sandbox) -> Browser {
        Browser {
            base: s.api.clone(),
            cookie: None,
            client: crate::support::blocking_http()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        }
    }

    fn answer(&self, req: reqwest::blocking::RequestBuilder) -> Answer {
        let req = match &self.cookie {
            Some(c) => req.header("cookie", format!("ferry_session={c}")),
            None => req,
        };
        let resp = req.send().unwrap();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_string())
        };
        Answer {
            status: resp.status().as_u16(),
            location: header("location"),
            set_cookie: header("set-cookie"),
            body: resp.text().unwrap(),
        }
    }

    fn get(&self, path: &str) -> Answer {
        self.answer(self.client.get(format!("{}{path}", self.base)))
    }

    fn post(&self, path: &str, fields: &[(&str, &str)]) -> Answer {
        self.answer(
            self.client
                .post(format!("{}{path}", self.base))
                .form(fields),
        )
    }

    /// Signs in with `token`; the session cookie is kept.
    fn sign_in(&mut self, token: &str) -> Answer {
        let a = self.post("/signin", &[("token", token)]);
        if let Some(c) = &a.set_cookie {
            let value = c.split(';').next().unwrap().split_once('=').unwrap().1;
            self.cookie = Some(value.to_string());
        }
        a
    }

    /// The CSRF token the overview's forms carry.
    fn csrf(&self) -> String {
        let page = self.get("/").body;
        let re = Regex::new(r#"name="csrf" value="([0-9a-f]{32})""#).unwrap();
        re.captures(&page).expect("a form with a CSRF token")[1].to_string()
    }
}

fn token(s: &Sandbox, name: &str, read_only: bool) -> String {
    let mut args = vec!["token", "create", "--name", name, "--json"];
    if read_only {
        args.push("--read-only");
    }
    let run = s.ferry(&args);
    assert_eq!(run.code(), 0, "{run}");
    run.json()["token"].as_str().unwrap().to_string()
}

fn two_envs() -> Sandbox {
    Sandbox::with(
        &[Rel("v1.0.0", GOOD), Rel("v1.1.0", GOOD)],
        Options {
            envs: &["staging", "production"],
            env_extra: &[("production", "requires = \"staging\"\napproval = true")],
            ..Options::default()
        },
    )
}

#[test]
fn pages_render_the_environments_history_and_deployments() {
    let mut s = two_envs();
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    s.deploy_ok("staging", "v1.1.0");
    let mut b = Browser::new(&s);

    // reads need a session: signed out, every page sends the browser to sign in
    for page in [
        "/",
        "/environments/staging",
        "/deployments/2",
        "/fragments/overview",
    ] {
        let a = b.get(page);
        assert_eq!(a.status, 303, "{page}");
        assert_eq!(a.location.as_deref(), Some("/signin"), "{page}");
        assert!(!a.body.contains("v1.1.0"));
    }
    let viewer = token(&s, "viewer", true);
    assert_eq!(b.sign_in(&viewer).status, 303);

    let home = b.get("/");
    assert_eq!(home.status, 200);
    for want in [
        "v1.1.0",
        "staging → production",
        "would bring",
        "Signed in as",
        "/static/ferry.js",
    ] {
        assert!(home.body.contains(want), "overview lacks {want:?}");
    }
    // staging comes first (production requires it), and no action is offered to a reader
    assert!(home.body.find("env-staging").unwrap() < home.body.find("env-production").unwrap());
    assert!(!home.body.contains("Lock staging"));
    assert!(!home.body.contains("Approve"));

    let env = b.get("/environments/staging");
    assert_eq!(env.status, 200);
    assert!(env.body.contains("href=\"/deployments/1\""));
    assert!(env.body.contains("href=\"/deployments/2\""));
    assert!(env.body.contains("page 1 of 1 · 2 deployment(s)"));
    assert!(env.body.contains("Health, last 6 h"));
    assert!(
        !env.body.contains("Roll back staging"),
        "no rollback form for a reader"
    );

    let d = b.get("/deployments/2");
    assert_eq!(d.status, 200);
    for step in ["resolve", "build", "health", "switch", "finish"] {
        assert!(
            d.body
                .contains(&format!("<span class=\"name\">{step}</span>"))
        );
    }
    assert!(d.body.contains("data-final"));
    assert!(d.body.contains("✓"));
    let live = b.get("/deployments/2/live");
    assert_eq!(live.status, 200);
    assert!(!live.body.contains("<html"), "a fragment, not a page");
    assert_eq!(b.get("/fragments/overview").status, 200);

    assert_eq!(b.get("/environments/nowhere").status, 404);
    assert_eq!(b.get("/deployments/999").status, 404);
    assert_eq!(b.get("/deployments/abc").status, 400);
    let css = b.get("/static/ferry.css");
    assert_eq!(css.status, 200);
    assert!(css.body.contains(".timeline"));
    assert!(b.get("/static/ferry.js").body.contains("EventSource"));
    // nothing is fetched from elsewhere (an environment's own URLs are shown as text)
    for page in [&home.body, &env.body, &d.body] {
        for fetch in ["src=\"http", "href=\"http", "url(http", "action=\"http"] {
            assert!(!page.contains(fetch), "{fetch}");
        }
    }
    assert!(
        env.body
            .contains(&format!("<code>{}</code>", s.url("staging")))
    );
}

#[test]
fn actions_need_a_session_and_its_csrf_token() {
    let mut s = two_envs();
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    s.deploy_ok("staging", "v1.1.0");
    let alice = token(&s, "alice", false);
    let mut b = Browser::new(&s);

    // signed out: 403 and nothing changes
    let lock = "/actions/environments/staging/lock";
    let a = b.post(lock, &[("reason", "x"), ("csrf", "0".repeat(32).as_str())]);
    assert_eq!(a.status, 403);
    assert!(s.api("/api/environments/staging")["deploying"].is_null());

    // a bad token does not sign in
    let a = b.sign_in("ferry_0000000000000000000000000000000000000000");
    assert_eq!(a.status, 401);
    assert!(a.body.contains("unknown or revoked"));
    assert!(b.cookie.is_none());

    let a = b.sign_in(&alice);
    assert_eq!(a.status, 303);
    let cookie = a.set_cookie.unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(!cookie.contains(&alice), "the cookie is not the token");
    let home = b.get("/").body;
    assert!(home.contains("Signed in as <strong>alice</strong>"));
    assert!(home.contains("Lock staging") && home.contains("Turn maintenance on"));
    assert!(home.contains("Verify v1.1.0"));
    let csrf = b.csrf();

    // a session without the form's CSRF token, or with another one: 403, nothing changes
    assert_eq!(b.post(lock, &[("reason", "x")]).status, 403);
    let stale = "f".repeat(32);
    assert_eq!(
        b.post(lock, &[("reason", "x"), ("csrf", &stale)]).status,
        403
    );
    assert!(s.api("/api/environments/staging")["deploying"].is_null());

    let a = b.post(lock, &[("reason", "db migration"), ("csrf", &csrf)]);
    assert_eq!(a.status, 303, "{}", a.body);
    let held = s.api("/api/environments/staging")["deploying"].clone();
    assert_eq!(held["holder"], "alice");
    assert_eq!(held["reason"], "db migration");
    let a = b.post("/actions/environments/staging/unlock", &[("csrf", &csrf)]);
    assert_eq!(a.status, 303);
    assert!(s.api("/api/environments/staging")["deploying"].is_null());
    let a = b.post("/actions/environments/staging/unlock", &[("csrf", &csrf)]);
    assert_eq!(a.status, 409, "unlocking what is not locked is refused");

    let maint = "/actions/environments/staging/maintenance";
    let a = b.post(
        maint,
        &[("on", "true"), ("message", "back at 5"), ("csrf", &csrf)],
    );
    assert_eq!(a.status, 303);
    assert_eq!(
        s.api("/api/environments/staging")["maintenance"],
        "back at 5"
    );
    let (status, body) = get(&format!("{}/", s.url("staging"))).unwrap();
    assert_eq!((status, body.contains("back at 5")), (503, true));
    b.post(maint, &[("on", "false"), ("csrf", &csrf)]);
    assert!(s.api("/api/environments/staging")["maintenance"].is_null());

    // verify staging, promote to production (which waits for approval), approve it
    let a = b.post("/actions/environments/staging/verify", &[("csrf", &csrf)]);
    assert_eq!(a.status, 303, "{}", a.body);
    let v = s.api("/api/verifications");
    assert_eq!(
        (v[0]["version"].as_str(), v[0]["verified_by"].as_str()),
        (Some("v1.1.0"), Some("alice"))
    );
    let a = b.post(
        "/actions/promote",
        &[("tag", "v1.1.0"), ("to", "production"), ("csrf", &csrf)],
    );
    assert_eq!(a.status, 303, "{}", a.body);
    let page = a.location.unwrap();
    let id: i64 = page
        .trim_start_matches("/deployments/")
        .split('?')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(eventually(Duration::from_secs(20), || {
        s.api(&format!("/api/deployments/{id}"))["deployment"]["state"] == "awaiting_approval"
    }));
    assert!(
        b.get(&format!("/deployments/{id}"))
            .body
            .contains("Approve this deployment")
    );
    let a = b.post(
        &format!("/actions/deployments/{id}/approve"),
        &[("csrf", &csrf)],
    );
    assert_eq!(a.status, 303, "{}", a.body);
    assert!(
        eventually(Duration::from_secs(30), || {
            s.api(&format!("/api/deployments/{id}"))["deployment"]["state"] == "succeeded"
        }),
        "{}",
        s.serve_log()
    );
    assert_eq!(s.serving("production").0, "v1.1.0");
    assert_eq!(
        s.api(&format!("/api/deployments/{id}"))["deployment"]["approved_by"],
        "alice"
    );

    // roll back: the environment's name must be typed, and a reason given
    let rb = "/actions/environments/staging/rollback";
    let a = b.post(
        rb,
        &[
            ("to", "v1.0.0"),
            ("reason", "bad"),
            ("confirm", "ROLLBACK"),
            ("csrf", &csrf),
        ],
    );
    assert_eq!(a.status, 400);
    assert!(a.body.contains("type the environment"));
    let a = b.post(
        rb,
        &[
            ("to", "v1.0.0"),
            ("reason", " "),
            ("confirm", "staging"),
            ("csrf", &csrf),
        ],
    );
    assert_eq!(a.status, 400);
    assert_eq!(s.serving("staging").0, "v1.1.0");
    let env_page = b.get("/environments/staging").body;
    assert!(env_page.contains("Roll back staging") && env_page.contains("<option value=\"v1.0.0-"));
    let a = b.post(
        rb,
        &[
            ("to", "v1.0.0"),
            ("reason", "checkout broke"),
            ("confirm", "staging"),
            ("csrf", &csrf),
        ],
    );
    assert_eq!(a.status, 303, "{}", a.body);
    assert!(eventually(Duration::from_secs(30), || s
        .serving("staging")
        .0
        == "v1.0.0"));
    let history = s.api("/api/environments/staging/deployments");
    assert_eq!(history[0]["kind"], "rollback");
    assert_eq!(history[0]["note"], "checkout broke");
    assert_eq!(history[0]["triggered_by"], "alice");

    // every change is in the audit trail under the token's name
    let audit = s.api("/api/audit?limit=100");
    let rows: Vec<_> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["token"] == "alice")
        .map(|r| {
            (
                r["path"].as_str().unwrap().to_string(),
                r["status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(rows.contains(&(lock.to_string(), 303)), "{rows:?}");
    assert!(rows.contains(&(rb.to_string(), 400)), "{rows:?}");
    assert!(
        rows.contains(&("/actions/promote".to_string(), 303)),
        "{rows:?}"
    );

    // signing out ends the session; the old cookie cannot act
    let a = b.post("/signout", &[("csrf", &csrf)]);
    assert_eq!(a.status, 303);
    assert!(a.set_cookie.unwrap().contains("Max-Age=0"));
    assert_eq!(
        b.post(lock, &[("reason", "x"), ("csrf", &csrf)]).status,
        403
    );
}

#[test]
fn a_read_only_or_revoked_token_cannot_act() {
    let mut s = two_envs();
    s.serve();
    let viewer = token(&s, "viewer", true);
    let alice = token(&s, "alice", false);
    let mut b = Browser::new(&s);
    assert_eq!(b.sign_in(&viewer).status, 303);
    let home = b.get("/").body;
    assert!(home.contains("(read-only)"));
    assert!(
        !home.contains("Lock staging"),
        "no buttons for a read-only token"
    );
    // its session's CSRF token is on the sign-out form; it still cannot act
    let re = Regex::new(r#"name="csrf" value="([0-9a-f]{32})""#).unwrap();
    let csrf = re.captures(&home).unwrap()[1].to_string();
    let lock = "/actions/environments/staging/lock";
    let a = b.post(lock, &[("reason", "x"), ("csrf", &csrf)]);
    assert_eq!(a.status, 403);
    assert!(a.body.contains("may only read"));

    let mut b = Browser::new(&s);
    b.sign_in(&alice);
    let csrf = b.csrf();
    assert_eq!(s.ferry(&["token", "revoke", "alice"]).code(), 0);
    assert_eq!(
        b.post(lock, &[("reason", "x"), ("csrf", &csrf)]).status,
        403
    );
    assert!(!b.get("/").body.contains("Signed in as"));
    assert!(s.api("/api/environments/staging")["deploying"].is_null());
}

#[test]
fn a_sign_in_or_action_posted_from_another_site_is_refused() {
    let mut s = two_envs();
    s.serve();
    let alice = token(&s, "alice", false);
    let mut b = Browser::new(&s);
    let host = s.api.trim_start_matches("http://").to_string();
    // a login CSRF: evil.example's page posts the attacker's token to ferry's sign-in
    for (name, value) in [
        ("origin", "http://evil.example"),
        ("origin", "null"),
        ("origin", &format!("http://{host}.evil.example")),
        ("referer", "http://evil.example/page"),
        ("referer", &format!("http://user@{host}/")),
    ] {
        let a = b.answer(
            b.client
                .post(format!("{}/signin", b.base))
                .header(name, value)
                .form(&[("token", alice.as_str())]),
        );
        assert_eq!(a.status, 403, "{name}: {value}");
        assert!(a.set_cookie.is_none(), "{name}: {value} opened a session");
        assert!(a.body.contains("another site"), "{}", a.body);
    }
    // from ferry's own page it works, by Origin or by Referer
    let a = b.answer(
        b.client
            .post(format!("{}/signin", b.base))
            .header("origin", format!("http://{host}"))
            .form(&[("token", alice.as_str())]),
    );
    assert_eq!(a.status, 303, "{}", a.body);
    assert_eq!(b.sign_in(&alice).status, 303, "no Origin: not a browser");
    let csrf = b.csrf();
    // an action posted cross-site with a valid session and CSRF token is refused too
    let lock = "/actions/environments/staging/lock";
    let a = b.answer(
        b.client
            .post(format!("{}{lock}", b.base))
            .header("origin", "http://evil.example")
            .form(&[("reason", "x"), ("csrf", csrf.as_str())]),
    );
    assert_eq!(a.status, 403);
    assert!(s.api("/api/environments/staging")["deploying"].is_null());
    let a = b.answer(
        b.client
            .post(format!("{}{lock}", b.base))
            .header("referer", format!("http://{host}/environments/staging"))
            .form(&[("reason", "x"), ("csrf", csrf.as_str())]),
    );
    assert_eq!(a.status, 303, "{}", a.body);
}

#[test]
fn every_dashboard_page_sends_the_security_headers() {
    let mut s = two_envs();
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    let client = crate::support::blocking_http()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let handler = Regex::new(r" on[a-z]+=").unwrap();
    for path in [
        "/",
        "/environments/staging",
        "/deployments/1",
        "/deployments/1/live",
        "/fragments/overview",
        "/signin",
        "/deployments/999",
    ] {
        let resp = client.get(format!("{}{path}", s.api)).send().unwrap();
        let h = |name: &str| {
            resp.headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_else(|| panic!("{path}: no {name}"))
        };
        assert_eq!(h("x-frame-options"), "DENY", "{path}");
        assert_eq!(h("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(h("referrer-policy"), "same-origin", "{path}");
        assert_eq!(h("cache-control"), "no-store", "{path}");
        let csp = h("content-security-policy");
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "frame-ancestors 'none'",
            "form-action 'self'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        // what the CSP allows is all the pages need: no inline script, style or handler
        let body = resp.text().unwrap();
        assert!(
            !body.contains("<script>") && !body.contains(" style="),
            "{path}"
        );
        assert!(!handler.is_match(&body), "{path}");
    }
    // a cross-site sign-in POST answers with the headers as well
    let resp = client
        .post(format!("{}/signin", s.api))
        .header("origin", "http://evil.example")
        .form(&[("token", "x")])
        .send()
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.headers()["x-frame-options"], "DENY");
    // the embedded assets keep their own cache header, and nosniff
    let css = client
        .get(format!("{}/static/ferry.css", s.api))
        .send()
        .unwrap();
    assert!(
        css.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("max-age")
    );
    assert_eq!(css.headers()["x-content-type-options"], "nosniff");
}

#[test]
fn a_notice_in_the_query_shows_only_known_codes_never_text() {
    let mut s = two_envs();
    s.serve();
    let mut b = Browser::new(&s);
    // pages need a session; a reader's will do
    let viewer = token(&s, "viewer", true);
    assert_eq!(b.sign_in(&viewer).status, 303);
    for path in ["/", "/environments/staging"] {
        for hostile in [
            "%3Cscript%3Ealert(1)%3C%2Fscript%3E",
            "Your%20session%20expired%2C%20sign%20in%20at%20evil.example",
            "Signed%20in.",
        ] {
            let page = b.get(&format!("{path}?notice={hostile}"));
            assert_eq!(page.status, 200, "{path}?notice={hostile}");
            assert!(
                !page.body.contains("class=\"notice\""),
                "{path}?notice={hostile}"
            );
            for text in ["alert(1)", "&lt;script", "evil.example", "session expired"] {
                assert!(!page.body.contains(text), "{path}: {text}");
            }
        }
        let page = b.get(&format!("{path}?notice=locked"));
        assert!(
            page.body
                .contains("<p class=\"notice\" role=\"status\">Locked.</p>"),
            "{path}: {}",
            page.body
        );
    }
}

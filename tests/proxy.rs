//! What an environment's proxy lets through, against a real `ferry serve` and the sample app:
//! the dashboard's session cookie never reaches an app.

mod support;

use std::time::Duration;

use support::{GOOD, Rel, Sandbox};

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Signs in to the dashboard with the local token: the session cookie's `name=value`.
fn sign_in(s: &Sandbox) -> String {
    let resp = client()
        .post(format!("{}/signin", s.api))
        .header("origin", &s.api)
        .form(&[("token", s.token())])
        .send()
        .unwrap();
    let set = resp
        .headers()
        .get("set-cookie")
        .unwrap_or_else(|| panic!("no session cookie: {}", resp.status()))
        .to_str()
        .unwrap()
        .to_string();
    set.split(';').next().unwrap().to_string()
}

#[test]
fn an_app_never_sees_the_dashboard_session_but_sees_its_own_cookies() {
    let mut s = Sandbox::new(&[Rel("v1.0.0", GOOD)]);
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    let session = sign_in(&s);
    let secret = session.split_once('=').unwrap().1.to_string();
    assert!(
        session.starts_with("ferry_session=ferrysession_"),
        "{session}"
    );
    // the same browser visits the app: cookies ignore ports, so it sends the session too
    let echo = |cookie: &str, query: &str| {
        let resp = client()
            .get(format!("{}/headers{query}", s.url("staging")))
            .header("cookie", cookie)
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200);
        let set: Vec<String> = resp
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        (resp.text().unwrap(), set)
    };
    let (seen, _) = echo(&format!("cart=3; {session}; theme=dark"), "");
    assert!(!seen.contains(&secret), "the app saw the session:\n{seen}");
    assert!(seen.contains("cookie: cart=3; theme=dark\n"), "{seen}");
    let (seen, _) = echo(&session, "");
    assert!(
        !seen.contains("cookie:") && !seen.contains(&secret),
        "only ferry's cookie: no Cookie header left\n{seen}"
    );
    // and the app cannot plant a session of its choosing in the browser
    let (_, set) = echo(
        "cart=3",
        "?set_cookie=ferry_session%3Dplanted&set_cookie=cart%3D4",
    );
    assert_eq!(set, ["cart=4"]);
    // the session still works on the dashboard
    let page = client()
        .get(format!("{}/signin", s.api))
        .header("cookie", &session)
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(page.contains("You are signed in as"), "{page}");
}

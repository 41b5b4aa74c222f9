use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};

use super::*;

fn asking() -> Asking<'static> {
    Asking {
        service: "GitHub",
        target: "acme/shop",
        token_env: "FERRY_GITHUB_TOKEN",
        token: "ghp_secret_token",
        needs: "it needs Issues: Read and write",
    }
}

fn refusal(status: u16, headers: &[(&'static str, &str)], body: &str) -> Refusal {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.insert(*k, HeaderValue::from_str(v).unwrap());
    }
    Refusal::read(
        status,
        &map,
        body,
        &["ghp_secret_token", "/repos/acme/shop/issues"],
    )
}

fn fatal(f: Failure) -> String {
    match f {
        Failure::Fatal(m) => m,
        other => panic!("not fatal: {other:?}"),
    }
}

fn retry(f: Failure) -> String {
    match f {
        Failure::Retry(m) => m,
        other => panic!("not a plain retry: {other:?}"),
    }
}

#[test]
fn refusals_say_what_to_fix_and_what_is_worth_another_try() {
    let what = "open issues in acme/shop";
    let m = fatal(classify(
        &asking(),
        what,
        &refusal(
            403,
            &[],
            r#"{"message":"Resource not accessible by personal access token"}"#,
        ),
    ));
    assert_eq!(
        m,
        "the token in FERRY_GITHUB_TOKEN cannot open issues in acme/shop (403: Resource not \
         accessible by personal access token): it needs Issues: Read and write"
    );
    let m = fatal(classify(
        &asking(),
        what,
        &refusal(401, &[], r#"{"message":"Bad credentials"}"#),
    ));
    assert!(
        m.starts_with("GitHub refused the token in FERRY_GITHUB_TOKEN (401: Bad credentials)"),
        "{m}"
    );
    let m = fatal(classify(
        &asking(),
        what,
        &refusal(404, &[], r#"{"message":"Not Found"}"#),
    ));
    assert!(
        m.contains("GitHub has no acme/shop that the token in FERRY_GITHUB_TOKEN can see (404"),
        "{m}"
    );
    let m = fatal(classify(
        &asking(),
        what,
        &refusal(
            422,
            &[],
            r#"{"message":"Validation Failed","errors":[{"resource":"Issue","field":"title","code":"missing_field"}]}"#,
        ),
    ));
    assert_eq!(
        m,
        "GitHub refused to open issues in acme/shop (422: Validation Failed; title missing_field)"
    );
    // GitLab's shapes
    let m = fatal(classify(
        &asking(),
        what,
        &refusal(
            400,
            &[],
            r#"{"message":{"title":["is too long","is missing"]}}"#,
        ),
    ));
    assert!(m.ends_with("(400: title is too long, is missing)"), "{m}");

    for status in [500, 502, 503, 408] {
        let m = retry(classify(
            &asking(),
            what,
            &refusal(status, &[], "<html>oops</html>"),
        ));
        assert_eq!(
            m,
            format!("GitHub answered {status} to open issues in acme/shop")
        );
    }
    assert_eq!(
        classify(
            &asking(),
            what,
            &refusal(429, &[("retry-after", "30")], r#"{"message":"slow down"}"#),
        ),
        Failure::RetryAfter(
            Duration::from_secs(30),
            "GitHub rate limit reached (429: slow down)".into()
        )
    );
    assert!(matches!(
        classify(&asking(), what, &refusal(429, &[], "")),
        Failure::Retry(_)
    ));
    // GitHub's rate limits answer 403 with headers that say so: wait for the reset (capped)
    let reset = (chrono::Utc::now().timestamp() + 30).to_string();
    let after = |f: Failure| match f {
        Failure::RetryAfter(d, m) => (d, m),
        other => panic!("not a retry after a wait: {other:?}"),
    };
    let (wait, m) = after(classify(
        &asking(),
        what,
        &refusal(
            403,
            &[
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", &reset),
            ],
            r#"{"message":"API rate limit exceeded for user ID 1."}"#,
        ),
    ));
    assert!((28..=30).contains(&wait.as_secs()), "{wait:?}");
    assert!(m.starts_with("GitHub rate limit reached (403"), "{m}");
    assert_eq!(
        after(classify(
            &asking(),
            what,
            &refusal(403, &[("retry-after", "5")], "")
        ))
        .0,
        Duration::from_secs(5)
    );
    // a secondary limit says so only in its message; an hour's Retry-After is cut to 60 s
    let (wait, _) = after(classify(
        &asking(),
        what,
        &refusal(
            403,
            &[],
            r#"{"message":"You have exceeded a secondary rate limit. Please wait a few minutes."}"#,
        ),
    ));
    assert_eq!(wait, Duration::from_secs(60));
    let (wait, _) = after(classify(
        &asking(),
        what,
        &refusal(429, &[("retry-after", "3600")], ""),
    ));
    assert_eq!(wait, Duration::from_secs(60));

    // a redirect to elsewhere is named, not followed with the token
    let m = fatal(classify(
        &asking(),
        what,
        &refusal(
            302,
            &[("location", "https://sso.example.com/login?next=/x")],
            "",
        ),
    ));
    assert_eq!(
        m,
        "GitHub's API answered 302 to open issues in acme/shop: it redirects elsewhere (to \
         sso.example.com); set `api` to where it lives"
    );
}

#[test]
fn what_a_service_says_is_kept_on_one_line_short_and_without_the_token() {
    let r = refusal(
        401,
        &[],
        r#"{"message":"token ghp_secret_token\nis\tbad","documentation_url":"https://docs"}"#,
    );
    assert_eq!(r.message, "token … is bad");
    let echo = refusal(
        404,
        &[],
        r#"{"message":"no route for POST /repos/acme/shop/issues"}"#,
    );
    assert_eq!(echo.message, "no route for POST …");
    let long = format!(r#"{{"message":"{}"}}"#, "x".repeat(1000));
    assert_eq!(
        refusal(500, &[], &long).message.chars().count(),
        MESSAGE_MAX
    );
    assert_eq!(refusal(500, &[], "not json").message, "");
    assert_eq!(cut("héllo", 3), "hé…");
    assert_eq!(cut("hé", 3), "hé");
}

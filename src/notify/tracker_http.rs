//! How the trackers' HTTP calls go and what their answers mean: the token from the
//! environment, a client that never follows a redirect to another origin (the token would go
//! with it), [`Failure::Retry`] for what another try can fix and [`Failure::Fatal`] with what
//! to fix for the rest. Errors never carry a URL or the token.

use std::sync::OnceLock;
use std::time::Duration;

use reqwest::header::HeaderMap;
use serde_json::Value;

use super::super::{Failure, MAX_RETRY_AFTER, TIMEOUT};
use super::{Issue, cut};
use crate::config::Tracker;

/// How much of a service's own error message an error keeps.
pub(crate) const MESSAGE_MAX: usize = 300;

/// Who is asking what, for errors: "the token in FERRY_GITHUB_TOKEN cannot open issues in
/// acme/shop (403)".
pub(crate) struct Asking<'a> {
    /// "GitHub" or "GitLab".
    pub service: &'static str,
    /// The repository or project as configured.
    pub target: &'a str,
    pub token_env: &'a str,
    /// Scrubbed from anything the service or the network says.
    pub token: &'a str,
    /// What a 403 means the token lacks.
    pub needs: &'static str,
}

/// The token named by `cfg.token_env`, from ferry's environment.
pub(crate) fn token(cfg: &Tracker, service: &str) -> Result<String, Failure> {
    match std::env::var(&cfg.token_env) {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_string()),
        _ => Err(Failure::Fatal(format!(
            "{} is not set in ferry's environment: set it to a {service} token that can edit \
             issues in {}",
            cfg.token_env, cfg.repository
        ))),
    }
}

/// The client tracker calls go out with: core's settings (rustls on ring, 10 s, no proxy
/// from the environment), and redirects followed only within one origin. reqwest drops
/// `Authorization` on a redirect to another host but not GitLab's `PRIVATE-TOKEN`, and would
/// follow https to http; a tracker API that redirects elsewhere is named instead.
pub(crate) fn client() -> Result<reqwest::Client, Failure> {
    static CLIENT: OnceLock<Result<reqwest::Client, String>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            crate::http_builder()
                .no_proxy()
                .timeout(TIMEOUT)
                .redirect(reqwest::redirect::Policy::custom(|attempt| {
                    let to = attempt.url();
                    let same = attempt.previous().last().is_some_and(|from| {
                        from.scheme() == to.scheme()
                            && from.host_str() == to.host_str()
                            && from.port_or_known_default() == to.port_or_known_default()
                    });
                    if same && attempt.previous().len() < 5 {
                        attempt.follow()
                    } else {
                        attempt.stop()
                    }
                }))
                .build()
                .map_err(|e| format!("cannot make an HTTP client: {e}"))
        })
        .clone()
        .map_err(Failure::Fatal)
}

/// A service's answer that was not a success, as `classify` needs it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Refusal {
    pub status: u16,
    /// `Retry-After`, in seconds.
    pub retry_after: Option<u64>,
    /// GitHub's primary rate limit: `x-ratelimit-remaining: 0`.
    pub limit_spent: bool,
    /// Seconds until `x-ratelimit-reset`, when the limit is spent.
    pub reset_in: Option<u64>,
    /// The host a redirect points to (`Location`).
    pub redirect_host: Option<String>,
    /// The service's own words, scrubbed and cut.
    pub message: String,
}

impl Refusal {
    /// `hidden`: the token, and the URL asked (an error body may echo its path).
    pub(crate) fn read(status: u16, headers: &HeaderMap, body: &str, hidden: &[&str]) -> Refusal {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let limit_spent = header("x-ratelimit-remaining").is_some_and(|v| v.trim() == "0");
        let reset_in = header("x-ratelimit-reset")
            .and_then(|v| v.trim().parse::<i64>().ok())
            .filter(|_| limit_spent)
            .map(|at| (at - chrono::Utc::now().timestamp()).max(1) as u64);
        Refusal {
            status,
            retry_after: header("retry-after").and_then(|v| v.trim().parse().ok()),
            limit_spent,
            reset_in,
            redirect_host: header("location")
                .and_then(|l| reqwest::Url::parse(l).ok())
                .and_then(|u| u.host_str().map(String::from)),
            message: scrub(&service_message(body), hidden),
        }
    }
}

/// The service's own explanation in an error body: GitHub's `message` and `errors`, GitLab's
/// `message` (a string, or field → problems) or `error`.
pub(crate) fn service_message(body: &str) -> String {
    let Ok(v) = serde_json::from_str::<Value>(body) else {
        return String::new();
    };
    let mut parts = Vec::new();
    match &v["message"] {
        Value::String(s) => parts.push(s.clone()),
        Value::Object(fields) => {
            for (field, problems) in fields {
                let problems = match problems {
                    Value::Array(a) => a
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(", "),
                    other => other.as_str().unwrap_or_default().to_string(),
                };
                parts.push(format!("{field} {problems}"));
            }
        }
        Value::Array(a) => parts.extend(a.iter().filter_map(Value::as_str).map(String::from)),
        _ => {}
    }
    if let Some(e) = v["error"].as_str() {
        parts.push(e.to_string());
    }
    if let Some(errors) = v["errors"].as_array() {
        for e in errors {
            let text = match (
                e["message"].as_str(),
                e["field"].as_str(),
                e["code"].as_str(),
            ) {
                (Some(m), _, _) => m.to_string(),
                (None, Some(f), Some(c)) => format!("{f} {c}"),
                _ => e.as_str().unwrap_or_default().to_string(),
            };
            if !text.is_empty() {
                parts.push(text);
            }
        }
    }
    parts.join("; ")
}

/// `text` on one line, without `token`, cut to [`MESSAGE_MAX`].
pub(crate) fn scrub(text: &str, hidden: &[&str]) -> String {
    let mut text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut hidden: Vec<&str> = hidden.iter().copied().filter(|h| h.len() >= 4).collect();
    // the longest first: a URL before the path inside it
    hidden.sort_by_key(|h| std::cmp::Reverse(h.len()));
    for h in hidden {
        text = text.replace(h, "…");
    }
    cut(&text, MESSAGE_MAX)
}

/// What an error about `url` must not show: the URL, its path, and the path decoded (a
/// service may echo either).
fn url_forms(url: &reqwest::Url) -> [String; 3] {
    let path = url.path().to_string();
    let decoded = percent_decode(&path);
    [url.to_string(), path, decoded]
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What to do about a refusal of `what` ("open issues in acme/shop").
pub(crate) fn classify(asking: &Asking<'_>, what: &str, r: &Refusal) -> Failure {
    let service = asking.service;
    let said = if r.message.is_empty() {
        String::new()
    } else {
        format!(": {}", r.message)
    };
    let status = r.status;
    // GitHub answers its secondary limits with a 403 (or 429) whose message says so
    let says_limit = r.message.to_ascii_lowercase().contains("rate limit");
    let rate_limited = status == 429
        || (status == 403 && (r.limit_spent || r.retry_after.is_some() || says_limit));
    if rate_limited {
        let why = format!("{service} rate limit reached ({status}{said})");
        let wait = r
            .retry_after
            .or(r.reset_in)
            .or(says_limit.then_some(MAX_RETRY_AFTER.as_secs()));
        return match wait {
            Some(secs) => Failure::RetryAfter(Duration::from_secs(secs).min(MAX_RETRY_AFTER), why),
            None => Failure::Retry(why),
        };
    }
    if (300..400).contains(&status) {
        let to = r
            .redirect_host
            .as_deref()
            .map(|h| format!(" (to {h})"))
            .unwrap_or_default();
        return Failure::Fatal(format!(
            "{service}'s API answered {status} to {what}: it redirects elsewhere{to}; set `api` \
             to where it lives"
        ));
    }
    match status {
        408 | 500..=599 => Failure::Retry(format!("{service} answered {status} to {what}{said}")),
        401 => Failure::Fatal(format!(
            "{service} refused the token in {} (401{said}): check that it is valid and not \
             expired",
            asking.token_env
        )),
        403 => Failure::Fatal(format!(
            "the token in {} cannot {what} (403{said}): {}",
            asking.token_env, asking.needs
        )),
        404 => Failure::Fatal(format!(
            "{service} has no {} that the token in {} can see (404{said}): check the name in \
             the config and the token's access",
            asking.target, asking.token_env
        )),
        410 => Failure::Fatal(format!(
            "{service} says issues are turned off in {} (410{said})",
            asking.target
        )),
        422 | 400 => Failure::Fatal(format!("{service} refused to {what} ({status}{said})")),
        _ => Failure::Fatal(format!("{service} answered {status} to {what}{said}")),
    }
}

/// Sends `req` and reads a JSON answer; any refusal goes through [`classify`].
pub(crate) async fn call(
    req: reqwest::RequestBuilder,
    asking: &Asking<'_>,
    what: &str,
) -> Result<Value, Failure> {
    send(req, asking, what)
        .await?
        .map_err(|r| classify(asking, what, &r))
}

/// Sends `req`: its JSON answer, or the service's refusal; `Err` when it is not worth
/// looking at (no answer, not JSON).
pub(crate) async fn send(
    req: reqwest::RequestBuilder,
    asking: &Asking<'_>,
    what: &str,
) -> Result<Result<Value, Refusal>, Failure> {
    let (client, req) = req.build_split();
    let req = req.map_err(|e| {
        Failure::Fatal(format!(
            "cannot make the request to {what}: {}",
            e.without_url()
        ))
    })?;
    let [url, path, decoded] = url_forms(req.url());
    let hidden = [asking.token, &url, &path, &decoded];
    let resp = client
        .execute(req)
        .await
        .map_err(|e| network(asking, what, e, &hidden))?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .text()
        .await
        .map_err(|e| network(asking, what, e, &hidden))?;
    if !(200..300).contains(&status) {
        return Ok(Err(Refusal::read(status, &headers, &body, &hidden)));
    }
    if body.trim().is_empty() {
        return Ok(Ok(Value::Null));
    }
    serde_json::from_str(&body).map(Ok).map_err(|_| {
        Failure::Fatal(format!(
            "{} answered {what} with something that is not JSON ({status})",
            asking.service
        ))
    })
}

/// A request that got no answer: worth another try.
fn network(asking: &Asking<'_>, what: &str, e: reqwest::Error, hidden: &[&str]) -> Failure {
    let context = |m: String| {
        format!(
            "cannot reach {} to {what}: {}",
            asking.service,
            scrub(&m, hidden)
        )
    };
    match super::super::network(e) {
        Failure::Retry(m) => Failure::Retry(context(m)),
        Failure::Fatal(m) => Failure::Fatal(context(m)),
        Failure::RetryAfter(d, m) => Failure::RetryAfter(d, context(m)),
    }
}

/// The issue in a service's answer: `number_key` (`number`, `iid`) and `url_key` (`html_url`,
/// `web_url`); open unless `state` says `closed`.
pub(crate) fn issue_from(v: &Value, number_key: &str, url_key: &str) -> Option<Issue> {
    Some(Issue {
        number: v[number_key].as_i64()?,
        url: v[url_key].as_str()?.to_string(),
        open: v["state"].as_str() != Some("closed"),
    })
}

/// A call on one issue (comment, close): `false` when the issue is gone (404, 410).
pub(crate) async fn act(
    req: reqwest::RequestBuilder,
    asking: &Asking<'_>,
    what: &str,
) -> Result<bool, Failure> {
    match send(req, asking, what).await? {
        Ok(_) => Ok(true),
        Err(r) if r.status == 404 || r.status == 410 => Ok(false),
        Err(r) => Err(classify(asking, what, &r)),
    }
}

/// Whether a listing of comments holds one whose `body` has `marker`.
pub(crate) fn holds(list: &Value, marker: &str) -> bool {
    list.as_array().is_some_and(|a| {
        a.iter()
            .any(|c| c["body"].as_str().is_some_and(|b| b.contains(marker)))
    })
}

/// The newest issue of a listing (newest first) whose `body_key` holds `marker`.
pub(crate) fn find_marked(
    list: &Value,
    marker: &str,
    keys: (&str, &str),
    body_key: &str,
) -> Option<Issue> {
    list.as_array()?
        .iter()
        .filter(|v| v["pull_request"].is_null())
        .find(|v| v[body_key].as_str().is_some_and(|b| b.contains(marker)))
        .and_then(|v| issue_from(v, keys.0, keys.1))
}

#[cfg(test)]
#[path = "tracker_http_tests.rs"]
mod tests;

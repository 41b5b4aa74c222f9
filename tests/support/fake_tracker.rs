//! A fake GitHub or GitLab REST API on 127.0.0.1 for the issue-tracker notifiers: it checks the
//! token and the headers each service requires, keeps issues and comments in memory for the
//! test to read, lets the test close or delete an issue as a person would, and can be told to
//! answer the next requests with an error (a 500 once, a 401, a 429), make an issue and lose
//! the answer, or redirect elsewhere. Its own test checks it refuses what the services refuse.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    GitHub,
    GitLab,
}

/// An issue as the fake keeps it.
#[derive(Debug, Clone)]
pub struct FakeIssue {
    pub number: i64,
    pub title: String,
    pub body: String,
    pub labels: Vec<String>,
    pub open: bool,
    /// GitHub's `state_reason` when closed.
    pub state_reason: Option<String>,
    pub comments: Vec<String>,
    pub deleted: bool,
}

/// A request the fake answered.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// The raw path, as sent (percent-encoding kept).
    pub path: String,
    pub status: u16,
    /// Every header, its value with the expected token shown as `<token>` (a failing test
    /// prints these).
    pub headers: Vec<(String, String)>,
    /// The headers that carried the expected token.
    pub token_in: Vec<String>,
}

struct Inner {
    service: Service,
    /// The repository (GitHub) or project path (GitLab) it serves.
    repository: String,
    token: String,
    issues: Vec<FakeIssue>,
    seen: Vec<Seen>,
    /// Statuses the next requests are answered with, before anything else is looked at.
    fail: VecDeque<u16>,
    /// The next issue is made, and then answered with this status (the answer is lost).
    fail_after_create: Option<u16>,
    /// Every request is answered with a redirect to this base URL.
    redirect: Option<String>,
}

type Shared = Arc<Mutex<Inner>>;

pub struct FakeTracker {
    /// What the config's `api` is set to.
    pub api: String,
    inner: Shared,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl FakeTracker {
    /// A fake GitHub serving `repository` to `token`.
    pub fn github(repository: &str, token: &str) -> FakeTracker {
        FakeTracker::start(Service::GitHub, repository, token)
    }

    /// A fake GitLab serving the project `path` to `token`.
    pub fn gitlab(path: &str, token: &str) -> FakeTracker {
        FakeTracker::start(Service::GitLab, path, token)
    }

    fn start(service: Service, repository: &str, token: &str) -> FakeTracker {
        let inner = Arc::new(Mutex::new(Inner {
            service,
            repository: repository.to_string(),
            token: token.to_string(),
            issues: Vec::new(),
            seen: Vec::new(),
            fail: VecDeque::new(),
            fail_after_create: None,
            redirect: None,
        }));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(inner.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        let api = match service {
            Service::GitHub => format!("http://{addr}"),
            Service::GitLab => format!("http://{addr}/api/v4"),
        };
        FakeTracker {
            api,
            inner,
            stop: Some(stop),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The issues, deleted ones included, oldest first.
    pub fn issues(&self) -> Vec<FakeIssue> {
        self.lock().issues.clone()
    }

    /// The requests answered so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.lock().seen.clone()
    }

    /// The next `times` requests are answered `status`.
    pub fn fail_next(&self, status: u16, times: usize) {
        let mut inner = self.lock();
        for _ in 0..times {
            inner.fail.push_back(status);
        }
    }

    /// The next issue is made, and then `status` answered instead of it.
    pub fn fail_after_create(&self, status: u16) {
        self.lock().fail_after_create = Some(status);
    }

    /// Every request is answered `302` to the same path under `base` (another server).
    pub fn redirect_to(&self, base: &str) {
        self.lock().redirect = Some(base.to_string());
    }

    /// Someone closes issue `number` in the tracker's UI.
    pub fn close_by_hand(&self, number: i64) {
        let mut inner = self.lock();
        let issue = inner
            .issues
            .iter_mut()
            .find(|i| i.number == number)
            .unwrap();
        issue.open = false;
        issue.state_reason = Some("not_planned".into());
    }

    /// Someone deletes issue `number`.
    pub fn delete(&self, number: i64) {
        let mut inner = self.lock();
        inner
            .issues
            .iter_mut()
            .find(|i| i.number == number)
            .unwrap()
            .deleted = true;
    }
}

impl Drop for FakeTracker {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn answer(status: u16, body: Value) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Percent-decoding of one path segment.
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
            if let Ok(b) = u8::from_str_radix(hex, 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn handle(
    State(inner): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut inner = inner.lock().unwrap_or_else(|e| e.into_inner());
    let response = respond(&mut inner, &method, uri.path(), &headers, &body);
    let token = inner.token.clone();
    let mut token_in = Vec::new();
    let mut shown = Vec::new();
    for (k, v) in &headers {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        if v.contains(&token) {
            token_in.push(k.to_string());
        }
        shown.push((k.to_string(), v.replace(&token, "<token>")));
    }
    inner.seen.push(Seen {
        method: method.to_string(),
        path: uri.path().to_string(),
        status: response.status().as_u16(),
        headers: shown,
        token_in,
    });
    response
}

fn respond(
    inner: &mut Inner,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    if let Some(base) = &inner.redirect {
        let mut r = answer(302, json!({}));
        r.headers_mut()
            .insert("location", format!("{base}{path}").parse().unwrap());
        return r;
    }
    if let Some(status) = inner.fail.pop_front() {
        let mut r = answer(status, json!({"message": format!("fake failure {status}")}));
        if status == 429 {
            r.headers_mut().insert("retry-after", "1".parse().unwrap());
        }
        return r;
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let fields: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    match inner.service {
        Service::GitHub => {
            if header("authorization") != Some(&format!("Bearer {}", inner.token)) {
                return answer(
                    401,
                    json!({"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"}),
                );
            }
            if header("user-agent").is_none() {
                return answer(
                    403,
                    json!({"message": "Request forbidden by administrative rules. Please make sure your request has a User-Agent header"}),
                );
            }
            if header("accept") != Some("application/vnd.github+json")
                || header("x-github-api-version").is_none()
            {
                return answer(
                    400,
                    json!({"message": "missing Accept or X-GitHub-Api-Version"}),
                );
            }
            let rest = format!("/repos/{}/issues", inner.repository);
            let Some(tail) = path.strip_prefix(&rest) else {
                return answer(404, json!({"message": "Not Found"}));
            };
            github(inner, method, tail, &fields)
        }
        Service::GitLab => {
            if header("private-token") != Some(inner.token.as_str()) {
                return answer(401, json!({"message": "401 Unauthorized"}));
            }
            let Some(rest) = path.strip_prefix("/api/v4/projects/") else {
                return answer(404, json!({"error": "404 Not Found"}));
            };
            // the project is one segment: its path URL-encoded
            let (project, tail) = rest.split_once('/').unwrap_or((rest, ""));
            if decode(project) != inner.repository {
                return answer(404, json!({"message": "404 Project Not Found"}));
            }
            let Some(tail) = format!("/{tail}").strip_prefix("/issues").map(String::from) else {
                return answer(404, json!({"error": "404 Not Found"}));
            };
            gitlab(inner, method, &tail, &fields)
        }
    }
}

fn create(inner: &mut Inner, title: &Value, body: &Value, labels: Vec<String>) -> FakeIssue {
    let issue = FakeIssue {
        number: inner.issues.len() as i64 + 1,
        title: title.as_str().unwrap_or_default().to_string(),
        body: body.as_str().unwrap_or_default().to_string(),
        labels,
        open: true,
        state_reason: None,
        comments: Vec::new(),
        deleted: false,
    };
    inner.issues.push(issue.clone());
    issue
}

/// The issue `n` of the path's tail (`/12`, `/12/comments`), when it exists.
fn find<'a>(inner: &'a mut Inner, n: &str) -> Option<&'a mut FakeIssue> {
    let n: i64 = n.parse().ok()?;
    inner.issues.iter_mut().find(|i| i.number == n)
}

/// An issue's comments, oldest first (GitHub) or newest first (GitLab's `sort=desc`).
fn comments(issue: &FakeIssue, newest_first: bool) -> Value {
    let mut all: Vec<Value> = issue
        .comments
        .iter()
        .enumerate()
        .map(|(i, body)| json!({"id": i + 1, "body": body}))
        .collect();
    if newest_first {
        all.reverse();
    }
    Value::Array(all)
}

/// The newest 30 issues not deleted, newest first, as the service shows them.
fn list(inner: &Inner, json_of: impl Fn(&FakeIssue) -> Value) -> Value {
    Value::Array(
        inner
            .issues
            .iter()
            .rev()
            .filter(|i| !i.deleted)
            .take(30)
            .map(json_of)
            .collect(),
    )
}

fn github(inner: &mut Inner, method: &Method, tail: &str, fields: &Value) -> Response {
    let repo = inner.repository.clone();
    let json_of = |i: &FakeIssue| {
        json!({
            "number": i.number,
            "html_url": format!("https://github.test/{repo}/issues/{}", i.number),
            "repository_url": format!("https://api.github.test/repos/{repo}"),
            "state": if i.open { "open" } else { "closed" },
            "state_reason": i.state_reason,
            "title": i.title,
            "body": i.body,
        })
    };
    let parts: Vec<&str> = tail.split('/').filter(|s| !s.is_empty()).collect();
    match (method.as_str(), parts.as_slice()) {
        ("GET", []) => answer(200, list(inner, json_of)),
        ("POST", []) => {
            for (field, max) in [("title", 256), ("body", 65_536)] {
                if fields[field]
                    .as_str()
                    .is_some_and(|t| t.chars().count() > max)
                {
                    return answer(
                        422,
                        json!({"message": "Validation Failed", "errors": [{"resource": "Issue", "code": "custom", "field": field, "message": format!("{field} is too long (maximum is {max} characters)")}]}),
                    );
                }
            }
            if fields["title"].as_str().is_none_or(str::is_empty) {
                return answer(
                    422,
                    json!({"message": "Validation Failed", "errors": [{"resource": "Issue", "field": "title", "code": "missing_field"}]}),
                );
            }
            let labels = fields["labels"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|l| l.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            let issue = create(inner, &fields["title"], &fields["body"], labels);
            if let Some(status) = inner.fail_after_create.take() {
                return answer(status, json!({"message": "Server Error"}));
            }
            answer(201, json_of(&issue))
        }
        (m, [n, rest @ ..]) => {
            let Some(issue) = find(inner, n) else {
                return answer(404, json!({"message": "Not Found"}));
            };
            if issue.deleted {
                return answer(410, json!({"message": "This issue was deleted"}));
            }
            match (m, rest) {
                ("GET", []) => answer(200, json_of(issue)),
                ("GET", ["comments"]) => answer(200, comments(issue, false)),
                ("POST", ["comments"]) => {
                    issue
                        .comments
                        .push(fields["body"].as_str().unwrap_or_default().to_string());
                    answer(
                        201,
                        json!({"id": issue.comments.len(), "body": fields["body"]}),
                    )
                }
                ("PATCH", []) => {
                    if fields["state"] == "closed" {
                        issue.open = false;
                        issue.state_reason = fields["state_reason"].as_str().map(String::from);
                    }
                    answer(200, json_of(issue))
                }
                _ => answer(404, json!({"message": "Not Found"})),
            }
        }
        _ => answer(404, json!({"message": "Not Found"})),
    }
}

fn gitlab(inner: &mut Inner, method: &Method, tail: &str, fields: &Value) -> Response {
    let project = inner.repository.clone();
    let json_of = |i: &FakeIssue| {
        json!({
            "iid": i.number,
            "id": 1000 + i.number,
            "web_url": format!("https://gitlab.test/{project}/-/issues/{}", i.number),
            "state": if i.open { "opened" } else { "closed" },
            "title": i.title,
            "description": i.body,
        })
    };
    let parts: Vec<&str> = tail.split('/').filter(|s| !s.is_empty()).collect();
    match (method.as_str(), parts.as_slice()) {
        ("GET", []) => answer(200, list(inner, json_of)),
        ("POST", []) => {
            if fields["title"]
                .as_str()
                .is_some_and(|t| t.chars().count() > 255)
            {
                return answer(
                    400,
                    json!({"message": {"title": ["is too long (maximum is 255 characters)"]}}),
                );
            }
            if fields["title"].as_str().is_none_or(str::is_empty) {
                return answer(400, json!({"error": "title is missing"}));
            }
            if fields["labels"].is_array() {
                return answer(400, json!({"error": "labels is invalid"}));
            }
            let labels = fields["labels"]
                .as_str()
                .map(|l| l.split(',').map(String::from).collect())
                .unwrap_or_default();
            let issue = create(inner, &fields["title"], &fields["description"], labels);
            if let Some(status) = inner.fail_after_create.take() {
                return answer(status, json!({"message": "500 Internal Server Error"}));
            }
            answer(201, json_of(&issue))
        }
        (m, [n, rest @ ..]) => {
            let Some(issue) = find(inner, n).filter(|i| !i.deleted) else {
                return answer(404, json!({"message": "404 Not found"}));
            };
            match (m, rest) {
                ("GET", []) => answer(200, json_of(issue)),
                ("GET", ["notes"]) => answer(200, comments(issue, true)),
                ("POST", ["notes"]) => {
                    issue
                        .comments
                        .push(fields["body"].as_str().unwrap_or_default().to_string());
                    answer(
                        201,
                        json!({"id": issue.comments.len(), "body": fields["body"]}),
                    )
                }
                ("PUT", []) => {
                    if fields["state_event"] == "close" {
                        issue.open = false;
                    }
                    answer(200, json_of(issue))
                }
                _ => answer(404, json!({"error": "404 Not Found"})),
            }
        }
        _ => answer(405, json!({"error": "405 Method Not Allowed"})),
    }
}

/// The fakes refuse what the real services refuse, so the tests above cannot pass with a
/// request the services would not take.
#[test]
fn the_fakes_check_the_token_headers_and_paths_as_the_services_do() {
    let client = super::support::blocking_http().no_proxy().build().unwrap();
    let gh = FakeTracker::github("acme/shop", "ghp_fake");
    let issues = format!("{}/repos/acme/shop/issues", gh.api);
    let status = |r: reqwest::blocking::RequestBuilder| r.send().unwrap().status().as_u16();
    let body = serde_json::json!({"title": "t", "body": "b"});
    assert_eq!(status(client.post(&issues).json(&body)), 401);
    let authed = |r: reqwest::blocking::RequestBuilder| r.bearer_auth("ghp_fake");
    assert_eq!(
        status(authed(client.post(&issues).json(&body))),
        403,
        "no User-Agent"
    );
    let full = |r: reqwest::blocking::RequestBuilder| {
        authed(r)
            .header("user-agent", "t")
            .header("accept", "application/vnd.github+json")
            .header("x-github-api-version", "2022-11-28")
    };
    assert_eq!(
        status(full(client.post(&issues).json(&serde_json::json!({})))),
        422
    );
    assert_eq!(status(full(client.post(&issues).json(&body))), 201);
    assert_eq!(
        status(full(
            client
                .post(format!("{}/repos/acme/other/issues", gh.api))
                .json(&body)
        )),
        404
    );
    gh.delete(1);
    assert_eq!(status(full(client.get(format!("{issues}/1")))), 410);
    gh.fail_next(500, 1);
    assert_eq!(status(full(client.get(format!("{issues}/1")))), 500);

    let gl = FakeTracker::gitlab("acme/shop", "glpat-fake");
    let body = serde_json::json!({"title": "t", "description": "b", "labels": "a,b"});
    let encoded = format!("{}/projects/acme%2Fshop/issues", gl.api);
    assert_eq!(status(client.post(&encoded).json(&body)), 401);
    let token = |r: reqwest::blocking::RequestBuilder| r.header("private-token", "glpat-fake");
    assert_eq!(
        status(token(
            client
                .post(format!("{}/projects/acme/shop/issues", gl.api))
                .json(&body)
        )),
        404,
        "the path must be one encoded segment"
    );
    assert_eq!(status(token(client.post(&encoded).json(&body))), 201);
    assert_eq!(gl.issues()[0].labels, ["a", "b"]);
}

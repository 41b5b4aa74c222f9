//! `kind = "github-issue"`: failures filed as GitHub issues through the REST API
//! (`POST /repos/{owner}/{repo}/issues`, `…/issues/{n}/comments`, `PATCH …/issues/{n}` to
//! close, `GET …/issues/{n}` to see whether people closed or deleted it). What to do when is
//! `tracker`'s.

use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderValue, USER_AGENT};
use reqwest::{Method, RequestBuilder, Url};
use serde_json::json;

use super::tracker::{self, Api, Asking, Issue, Limits};
use super::{Ctx, Delivered, Failure, Message};
use crate::config::{Notify, Tracker};

/// The REST API version ferry was written against.
const API_VERSION: &str = "2022-11-28";

/// Sends `msg` to the GitHub repository of `cfg`.
pub async fn deliver(
    ctx: &Ctx,
    notifier: &Notify,
    cfg: &Tracker,
    msg: &Message,
) -> Result<Delivered, Failure> {
    let token = tracker::token(cfg, "GitHub")?;
    let http = tracker::client()?;
    let api = GitHub::new(&http, cfg, token)?;
    tracker::deliver(ctx, notifier, cfg, &api, msg).await
}

/// Calls to one repository's issues.
pub(crate) struct GitHub<'a> {
    http: &'a reqwest::Client,
    cfg: &'a Tracker,
    /// `Authorization: Bearer …`, marked sensitive (never in `Debug`).
    auth: HeaderValue,
    token: String,
    /// `{api}/repos/{owner}/{repo}/issues`.
    issues: Url,
}

impl<'a> GitHub<'a> {
    pub(crate) fn new(
        http: &'a reqwest::Client,
        cfg: &'a Tracker,
        token: String,
    ) -> Result<GitHub<'a>, Failure> {
        let Some((owner, repo)) = cfg
            .repository
            .split_once('/')
            .filter(|(o, r)| !o.is_empty() && !r.is_empty() && !r.contains('/'))
        else {
            return Err(Failure::Fatal(format!(
                "repository {:?} is not owner/name",
                cfg.repository
            )));
        };
        let mut issues = Url::parse(&cfg.api)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
            .ok_or_else(|| Failure::Fatal("`api` is not an http(s) URL".to_string()))?;
        issues
            .path_segments_mut()
            .map_err(|()| Failure::Fatal("`api` is not an http(s) URL".to_string()))?
            .pop_if_empty()
            .extend(["repos", owner, repo, "issues"]);
        let mut auth = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            Failure::Fatal(format!(
                "{} holds characters an HTTP header cannot carry",
                cfg.token_env
            ))
        })?;
        auth.set_sensitive(true);
        Ok(GitHub {
            http,
            cfg,
            auth,
            token,
            issues,
        })
    }

    fn asking(&self) -> Asking<'_> {
        Asking {
            service: "GitHub",
            target: &self.cfg.repository,
            token_env: &self.cfg.token_env,
            token: &self.token,
            needs: "a fine-grained token needs Issues: Read and write on the repository, a \
                    classic one the repo scope (public_repo for a public repository)",
        }
    }

    fn request(&self, method: Method, tail: &[&str]) -> RequestBuilder {
        self.request_with(method, tail, &[])
    }

    fn request_with(
        &self,
        method: Method,
        tail: &[&str],
        query: &[(&str, &str)],
    ) -> RequestBuilder {
        let mut url = self.issues.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.extend(tail);
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        self.http
            .request(method, url)
            .header(AUTHORIZATION, self.auth.clone())
            .header(ACCEPT, "application/vnd.github+json")
            .header("X-GitHub-Api-Version", API_VERSION)
            .header(USER_AGENT, concat!("ferry/", env!("CARGO_PKG_VERSION")))
    }

    pub(crate) fn open_request(&self, title: &str, body: &str) -> RequestBuilder {
        self.request(Method::POST, &[]).json(&json!({
            "title": title,
            "body": body,
            "labels": self.cfg.labels,
        }))
    }

    /// The newest issues, open or closed (a retry looks for the one it opened).
    pub(crate) fn list_request(&self) -> RequestBuilder {
        self.request_with(
            Method::GET,
            &[],
            &[
                ("state", "all"),
                ("sort", "created"),
                ("direction", "desc"),
                ("per_page", "30"),
            ],
        )
    }

    pub(crate) fn get_request(&self, number: i64) -> RequestBuilder {
        self.request(Method::GET, &[&number.to_string()])
    }

    pub(crate) fn comment_request(&self, number: i64, body: &str) -> RequestBuilder {
        self.request(Method::POST, &[&number.to_string(), "comments"])
            .json(&json!({ "body": body }))
    }

    /// The comments on issue `number` made since `since` (RFC 3339).
    pub(crate) fn comments_request(&self, number: i64, since: &str) -> RequestBuilder {
        // GitHub takes YYYY-MM-DDTHH:MM:SSZ
        let since = chrono::DateTime::parse_from_rfc3339(since)
            .map(|t| {
                t.with_timezone(&chrono::Utc)
                    .format("%Y-%m-%dT%H:%M:%SZ")
                    .to_string()
            })
            .unwrap_or_default();
        let mut query = vec![("per_page", "100")];
        if !since.is_empty() {
            query.push(("since", &since));
        }
        self.request_with(Method::GET, &[&number.to_string(), "comments"], &query)
    }

    pub(crate) fn close_request(&self, number: i64) -> RequestBuilder {
        self.request(Method::PATCH, &[&number.to_string()])
            .json(&json!({ "state": "closed", "state_reason": "completed" }))
    }

    /// Whether `v` is issue `number` of the configured repository.
    fn here(&self, v: &serde_json::Value, number: i64) -> bool {
        let repo = format!("/repos/{}", self.cfg.repository.to_ascii_lowercase());
        v["number"].as_i64() == Some(number)
            && v["repository_url"]
                .as_str()
                .is_none_or(|u| u.to_ascii_lowercase().ends_with(&repo))
    }

    fn issue(&self, v: &serde_json::Value, what: &str) -> Result<Issue, Failure> {
        tracker::issue_from(v, "number", "html_url").ok_or_else(|| {
            Failure::Fatal(format!(
                "GitHub's answer to {what} names no issue (number, html_url)"
            ))
        })
    }
}

impl Api for GitHub<'_> {
    fn target(&self) -> String {
        format!("{} {}", self.cfg.api, self.cfg.repository)
    }

    fn limits(&self) -> Limits {
        Limits {
            title: 256,
            body: 65_536,
        }
    }

    async fn find(&self, marker: &str) -> Result<Option<Issue>, Failure> {
        let what = format!("list the issues of {}", self.cfg.repository);
        let v = tracker::call(self.list_request(), &self.asking(), &what).await?;
        Ok(tracker::find_marked(
            &v,
            marker,
            ("number", "html_url"),
            "body",
        ))
    }

    async fn open(&self, title: &str, body: &str) -> Result<Issue, Failure> {
        let what = format!("open issues in {}", self.cfg.repository);
        let v = tracker::call(self.open_request(title, body), &self.asking(), &what).await?;
        self.issue(&v, &what)
    }

    async fn get(&self, number: i64) -> Result<Option<Issue>, Failure> {
        let what = format!("read issue #{number} of {}", self.cfg.repository);
        match tracker::send(self.get_request(number), &self.asking(), &what).await? {
            // a transferred issue answers from its new repository: not this one's any more
            Ok(v) if !self.here(&v, number) => Ok(None),
            Ok(v) => self.issue(&v, &what).map(Some),
            // 410: deleted; 404: deleted, or moved where the token cannot see it
            Err(r) if r.status == 404 || r.status == 410 => Ok(None),
            Err(r) => Err(tracker::classify(&self.asking(), &what, &r)),
        }
    }

    async fn comment(&self, number: i64, body: &str) -> Result<bool, Failure> {
        let what = format!("comment on issue #{number} of {}", self.cfg.repository);
        tracker::act(self.comment_request(number, body), &self.asking(), &what).await
    }

    async fn commented(&self, number: i64, marker: &str, since: &str) -> Result<bool, Failure> {
        let what = format!(
            "read the comments on issue #{number} of {}",
            self.cfg.repository
        );
        match tracker::send(self.comments_request(number, since), &self.asking(), &what).await? {
            Ok(v) => Ok(tracker::holds(&v, marker)),
            Err(r) if r.status == 404 || r.status == 410 => Ok(false),
            Err(r) => Err(tracker::classify(&self.asking(), &what, &r)),
        }
    }

    async fn close(&self, number: i64) -> Result<bool, Failure> {
        let what = format!("close issue #{number} of {}", self.cfg.repository);
        tracker::act(self.close_request(number), &self.asking(), &what).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(api: &str) -> Tracker {
        Tracker {
            api: api.into(),
            repository: "acme/shop".into(),
            token_env: "FERRY_GITHUB_TOKEN".into(),
            labels: vec!["deploy-failure".into(), "ferry".into()],
            close_on_success: true,
        }
    }

    fn body(r: &reqwest::Request) -> serde_json::Value {
        serde_json::from_slice(r.body().unwrap().as_bytes().unwrap()).unwrap()
    }

    #[test]
    fn requests_follow_the_rest_api() {
        let http = crate::notify::client().unwrap();
        let cfg = cfg("https://api.github.com");
        let gh = GitHub::new(&http, &cfg, "ghp_secret".into()).unwrap();

        let open = gh
            .open_request("Deploy failed", "## What happened")
            .build()
            .unwrap();
        assert_eq!(open.method(), Method::POST);
        assert_eq!(
            open.url().as_str(),
            "https://api.github.com/repos/acme/shop/issues"
        );
        let h = open.headers();
        assert_eq!(h["authorization"], "Bearer ghp_secret");
        assert!(h["authorization"].is_sensitive());
        assert_eq!(h["accept"], "application/vnd.github+json");
        assert_eq!(h["x-github-api-version"], "2022-11-28");
        assert!(h["user-agent"].to_str().unwrap().starts_with("ferry/"));
        assert_eq!(
            body(&open),
            json!({"title": "Deploy failed", "body": "## What happened", "labels": ["deploy-failure", "ferry"]})
        );
        assert!(!format!("{open:?}").contains("ghp_secret"));

        let get = gh.get_request(12).build().unwrap();
        assert_eq!(get.method(), Method::GET);
        assert_eq!(
            get.url().as_str(),
            "https://api.github.com/repos/acme/shop/issues/12"
        );

        let comment = gh.comment_request(12, "again").build().unwrap();
        assert_eq!(comment.method(), Method::POST);
        assert_eq!(
            comment.url().as_str(),
            "https://api.github.com/repos/acme/shop/issues/12/comments"
        );
        assert_eq!(body(&comment), json!({"body": "again"}));

        let since = gh
            .comments_request(12, "2026-12-02T12:00:00.250Z")
            .build()
            .unwrap();
        assert_eq!(
            since.url().as_str(),
            "https://api.github.com/repos/acme/shop/issues/12/comments?per_page=100&since=2026-12-02T12%3A00%3A00Z"
        );

        let close = gh.close_request(12).build().unwrap();
        assert_eq!(close.method(), Method::PATCH);
        assert_eq!(
            close.url().as_str(),
            "https://api.github.com/repos/acme/shop/issues/12"
        );
        assert_eq!(
            body(&close),
            json!({"state": "closed", "state_reason": "completed"})
        );
    }

    #[test]
    fn a_github_enterprise_api_keeps_its_path_and_bad_settings_are_named() {
        let http = crate::notify::client().unwrap();
        let cfg = cfg("https://ghe.example.com/api/v3/");
        let gh = GitHub::new(&http, &cfg, "t".into()).unwrap();
        let r = gh.get_request(1).build().unwrap();
        assert_eq!(
            r.url().as_str(),
            "https://ghe.example.com/api/v3/repos/acme/shop/issues/1"
        );

        let mut bad = cfg.clone();
        bad.repository = "acme".into();
        assert!(
            matches!(GitHub::new(&http, &bad, "t".into()), Err(Failure::Fatal(m)) if m.contains("owner/name"))
        );
        let bad = Tracker {
            api: "not a url".into(),
            ..cfg.clone()
        };
        assert!(GitHub::new(&http, &bad, "t".into()).is_err());
        let Err(Failure::Fatal(m)) = GitHub::new(&http, &cfg, "a\nb".into()) else {
            panic!("a token with a newline is refused");
        };
        assert!(
            m.contains("FERRY_GITHUB_TOKEN") && !m.contains("a\nb"),
            "{m}"
        );
    }

    #[test]
    fn a_transferred_issue_is_not_this_repositorys_and_pull_requests_are_not_issues() {
        let http = crate::notify::client().unwrap();
        let cfg = cfg("https://api.github.com");
        let gh = GitHub::new(&http, &cfg, "t".into()).unwrap();
        let issue = |n: i64, repo: &str| {
            json!({"number": n, "html_url": format!("https://github.com/{repo}/issues/{n}"),
                   "repository_url": format!("https://api.github.com/repos/{repo}"), "state": "open"})
        };
        assert!(gh.here(&issue(12, "acme/shop"), 12));
        assert!(
            gh.here(&issue(12, "Acme/Shop"), 12),
            "names are case-insensitive"
        );
        assert!(!gh.here(&issue(3, "acme/platform"), 12), "moved elsewhere");
        assert!(!gh.here(&issue(12, "acme/platform"), 12));

        let list = json!([
            {"number": 9, "html_url": "u9", "state": "open", "body": "<!-- m -->", "pull_request": {}},
            {"number": 8, "html_url": "u8", "state": "closed", "body": "x <!-- m -->"},
            {"number": 7, "html_url": "u7", "state": "open", "body": "<!-- m -->"},
        ]);
        let found = tracker::find_marked(&list, "<!-- m -->", ("number", "html_url"), "body");
        assert_eq!(
            found,
            Some(Issue {
                number: 8,
                url: "u8".into(),
                open: false
            })
        );
        assert_eq!(
            tracker::find_marked(&list, "<!-- other -->", ("number", "html_url"), "body"),
            None
        );
        let list = gh.list_request().build().unwrap();
        assert_eq!(
            list.url().as_str(),
            "https://api.github.com/repos/acme/shop/issues?state=all&sort=created&direction=desc&per_page=30"
        );
    }
}

//! `kind = "gitlab-issue"`: failures filed as GitLab issues through the v4 REST API
//! (`POST /projects/{id}/issues`, `…/issues/{iid}/notes`, `PUT …/issues/{iid}` with
//! `state_event=close`, `GET …/issues/{iid}` to see whether people closed or deleted it), the
//! project named by its numeric id or its URL-encoded path. What to do when is `tracker`'s.

use reqwest::header::{HeaderValue, USER_AGENT};
use reqwest::{Method, RequestBuilder, Url};
use serde_json::json;

use super::tracker::{self, Api, Asking, Issue, Limits};
use super::{Ctx, Delivered, Failure, Message};
use crate::config::{Notify, Tracker};

/// Sends `msg` to the GitLab project of `cfg`.
pub async fn deliver(
    ctx: &Ctx,
    notifier: &Notify,
    cfg: &Tracker,
    msg: &Message,
) -> Result<Delivered, Failure> {
    let token = tracker::token(cfg, "GitLab")?;
    let http = tracker::client()?;
    let api = GitLab::new(&http, cfg, token)?;
    tracker::deliver(ctx, notifier, cfg, &api, msg).await
}

/// Calls to one repository's issues.
pub(crate) struct GitLab<'a> {
    http: &'a reqwest::Client,
    cfg: &'a Tracker,
    /// `PRIVATE-TOKEN`, marked sensitive (never in `Debug`).
    auth: HeaderValue,
    token: String,
    /// `{api}/projects/{id or url-encoded path}/issues`.
    issues: Url,
}

impl<'a> GitLab<'a> {
    pub(crate) fn new(
        http: &'a reqwest::Client,
        cfg: &'a Tracker,
        token: String,
    ) -> Result<GitLab<'a>, Failure> {
        let project = cfg.repository.trim_matches('/');
        if project.is_empty() {
            return Err(Failure::Fatal("project is empty".to_string()));
        }
        let mut issues = Url::parse(&cfg.api)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
            .ok_or_else(|| Failure::Fatal("`api` is not an http(s) URL".to_string()))?;
        issues
            .path_segments_mut()
            .map_err(|()| Failure::Fatal("`api` is not an http(s) URL".to_string()))?
            .pop_if_empty()
            .extend(["projects", project, "issues"]);
        let mut auth = HeaderValue::from_str(&token).map_err(|_| {
            Failure::Fatal(format!(
                "{} holds characters an HTTP header cannot carry",
                cfg.token_env
            ))
        })?;
        auth.set_sensitive(true);
        Ok(GitLab {
            http,
            cfg,
            auth,
            token,
            issues,
        })
    }

    fn asking(&self) -> Asking<'_> {
        Asking {
            service: "GitLab",
            target: &self.cfg.repository,
            token_env: &self.cfg.token_env,
            token: &self.token,
            needs: "it needs the api scope, and a role in the project that may edit issues \
                    (Planner or Reporter and above)",
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
            .header("PRIVATE-TOKEN", self.auth.clone())
            .header(USER_AGENT, concat!("ferry/", env!("CARGO_PKG_VERSION")))
    }

    pub(crate) fn open_request(&self, title: &str, body: &str) -> RequestBuilder {
        let mut fields = json!({ "title": title, "description": body });
        if !self.cfg.labels.is_empty() {
            fields["labels"] = self.cfg.labels.join(",").into();
        }
        self.request(Method::POST, &[]).json(&fields)
    }

    /// The newest issues, open or closed (a retry looks for the one it opened).
    pub(crate) fn list_request(&self) -> RequestBuilder {
        self.request_with(
            Method::GET,
            &[],
            &[
                ("scope", "all"),
                ("order_by", "created_at"),
                ("sort", "desc"),
                ("per_page", "30"),
            ],
        )
    }

    pub(crate) fn get_request(&self, number: i64) -> RequestBuilder {
        self.request(Method::GET, &[&number.to_string()])
    }

    pub(crate) fn comment_request(&self, number: i64, body: &str) -> RequestBuilder {
        self.request(Method::POST, &[&number.to_string(), "notes"])
            .json(&json!({ "body": body }))
    }

    /// The newest notes on issue `iid` `number`.
    pub(crate) fn notes_request(&self, number: i64) -> RequestBuilder {
        self.request_with(
            Method::GET,
            &[&number.to_string(), "notes"],
            &[
                ("sort", "desc"),
                ("order_by", "created_at"),
                ("per_page", "30"),
            ],
        )
    }

    pub(crate) fn close_request(&self, number: i64) -> RequestBuilder {
        self.request(Method::PUT, &[&number.to_string()])
            .json(&json!({ "state_event": "close" }))
    }

    fn issue(&self, v: &serde_json::Value, what: &str) -> Result<Issue, Failure> {
        tracker::issue_from(v, "iid", "web_url").ok_or_else(|| {
            Failure::Fatal(format!(
                "GitLab's answer to {what} names no issue (iid, web_url)"
            ))
        })
    }
}

impl Api for GitLab<'_> {
    fn target(&self) -> String {
        format!("{} {}", self.cfg.api, self.cfg.repository)
    }

    fn limits(&self) -> Limits {
        // a note takes 1,000,000 characters, a description 1,048,576
        Limits {
            title: 255,
            body: 1_000_000,
        }
    }

    async fn find(&self, marker: &str) -> Result<Option<Issue>, Failure> {
        let what = format!("list the issues of {}", self.cfg.repository);
        let v = tracker::call(self.list_request(), &self.asking(), &what).await?;
        Ok(tracker::find_marked(
            &v,
            marker,
            ("iid", "web_url"),
            "description",
        ))
    }

    async fn open(&self, title: &str, body: &str) -> Result<Issue, Failure> {
        let what = format!("open issues in {}", self.cfg.repository);
        let v = tracker::call(self.open_request(title, body), &self.asking(), &what).await?;
        self.issue(&v, &what)
    }

    async fn get(&self, number: i64) -> Result<Option<Issue>, Failure> {
        let what = format!("read issue #{number} in {}", self.cfg.repository);
        match tracker::send(self.get_request(number), &self.asking(), &what).await? {
            Ok(v) if v["iid"].as_i64() != Some(number) => Ok(None),
            Ok(v) => self.issue(&v, &what).map(Some),
            // deleted, or moved where the token cannot see it
            Err(r) if r.status == 404 => Ok(None),
            Err(r) => Err(tracker::classify(&self.asking(), &what, &r)),
        }
    }

    async fn comment(&self, number: i64, body: &str) -> Result<bool, Failure> {
        let what = format!("comment on issue #{number} in {}", self.cfg.repository);
        tracker::act(self.comment_request(number, body), &self.asking(), &what).await
    }

    async fn commented(&self, number: i64, marker: &str, _since: &str) -> Result<bool, Failure> {
        let what = format!(
            "read the notes on issue #{number} in {}",
            self.cfg.repository
        );
        match tracker::send(self.notes_request(number), &self.asking(), &what).await? {
            Ok(v) => Ok(tracker::holds(&v, marker)),
            Err(r) if r.status == 404 => Ok(false),
            Err(r) => Err(tracker::classify(&self.asking(), &what, &r)),
        }
    }

    async fn close(&self, number: i64) -> Result<bool, Failure> {
        let what = format!("close issue #{number} in {}", self.cfg.repository);
        tracker::act(self.close_request(number), &self.asking(), &what).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(project: &str) -> Tracker {
        Tracker {
            api: "https://gitlab.com/api/v4".into(),
            repository: project.into(),
            token_env: "FERRY_GITLAB_TOKEN".into(),
            labels: vec!["deploy-failure".into(), "ferry".into()],
            close_on_success: true,
        }
    }

    fn body(r: &reqwest::Request) -> serde_json::Value {
        serde_json::from_slice(r.body().unwrap().as_bytes().unwrap()).unwrap()
    }

    #[test]
    fn requests_follow_the_v4_api_with_the_path_url_encoded() {
        let http = crate::notify::client().unwrap();
        let cfg = cfg("acme/web/shop");
        let gl = GitLab::new(&http, &cfg, "glpat-secret".into()).unwrap();

        let open = gl
            .open_request("Deploy failed", "## What happened")
            .build()
            .unwrap();
        assert_eq!(open.method(), Method::POST);
        assert_eq!(
            open.url().as_str(),
            "https://gitlab.com/api/v4/projects/acme%2Fweb%2Fshop/issues"
        );
        assert_eq!(open.headers()["private-token"], "glpat-secret");
        assert!(open.headers()["private-token"].is_sensitive());
        assert!(open.headers().get("authorization").is_none());
        assert_eq!(
            body(&open),
            json!({"title": "Deploy failed", "description": "## What happened", "labels": "deploy-failure,ferry"})
        );
        assert!(!format!("{open:?}").contains("glpat-secret"));

        let get = gl.get_request(3).build().unwrap();
        assert_eq!(get.method(), Method::GET);
        assert_eq!(
            get.url().as_str(),
            "https://gitlab.com/api/v4/projects/acme%2Fweb%2Fshop/issues/3"
        );
        let note = gl.comment_request(3, "again").build().unwrap();
        assert_eq!(
            note.url().as_str(),
            "https://gitlab.com/api/v4/projects/acme%2Fweb%2Fshop/issues/3/notes"
        );
        assert_eq!(body(&note), json!({"body": "again"}));
        let close = gl.close_request(3).build().unwrap();
        assert_eq!(close.method(), Method::PUT);
        assert_eq!(body(&close), json!({"state_event": "close"}));
    }

    #[test]
    fn a_numeric_project_id_is_used_as_is_and_no_labels_sends_none() {
        let http = crate::notify::client().unwrap();
        let mut cfg = cfg("4242");
        cfg.labels.clear();
        let gl = GitLab::new(&http, &cfg, "t".into()).unwrap();
        let open = gl.open_request("t", "b").build().unwrap();
        assert_eq!(
            open.url().as_str(),
            "https://gitlab.com/api/v4/projects/4242/issues"
        );
        assert_eq!(body(&open), json!({"title": "t", "description": "b"}));
    }
}

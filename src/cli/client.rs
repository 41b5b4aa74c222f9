//! The CLI's side of the API.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "ferry is not running at {url}: start it with `ferry serve{}`",
        config_flag(config)
    )]
    NotRunning { url: String, config: PathBuf },
    #[error("{message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("talking to ferry at {url}: {detail}")]
    Other { url: String, detail: String },
}

/// ` -c <file>` for a printed command, unless `config` is the default one.
fn config_flag(config: &Path) -> String {
    if config == Path::new(super::DEFAULT_CONFIG) {
        String::new()
    } else {
        format!(" -c {}", config.display())
    }
}

/// A client for the daemon's API.
#[derive(Clone)]
pub struct ApiClient {
    base: String,
    config: PathBuf,
    /// Sent as `Authorization: Bearer`; never printed.
    token: Option<String>,
    /// What a printed `ferry …` hint needs to reach this daemon (empty with the defaults).
    flags: String,
    /// The app addressed: `/api/…` paths become `/api/apps/{app}/…`.
    app: Option<String>,
    http: reqwest::Client,
}

impl ApiClient {
    pub fn new(base: &str, config: &Path, token: Option<String>) -> ApiClient {
        ApiClient {
            base: base.trim_end_matches('/').to_string(),
            config: config.to_path_buf(),
            flags: config_flag(config),
            app: None,
            token,
            http: crate::http_builder()
                .no_proxy()
                .connect_timeout(Duration::from_secs(3))
                .build()
                .expect("a plain HTTP client builds"),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// The flags printed hints add (` -c FILE`, ` --server URL`), none with the defaults.
    pub fn flags(&self) -> &str {
        &self.flags
    }

    /// The flags printed hints add, as the command line gave them (` -c A -c B -a app`).
    pub fn set_flags(&mut self, flags: &str) {
        self.flags = flags.to_string();
    }

    /// Addresses `app` of a serve hosting several: every `/api/…` path goes to
    /// `/api/apps/{app}/…`.
    pub fn for_app(mut self, app: &str) -> ApiClient {
        self.app = Some(app.to_string());
        self
    }

    /// Hints name `--server` too: it was given and differs from the config's.
    pub fn with_server_flag(mut self) -> ApiClient {
        self.flags.push_str(&format!(" --server {}", self.base));
        self
    }

    /// A request carrying the token and the user's name.
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let path = match (&self.app, path.strip_prefix("/api/")) {
            (Some(app), Some(rest)) => format!("/api/apps/{app}/{rest}"),
            _ => path.to_string(),
        };
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("x-ferry-user", super::current_user());
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        req
    }

    fn error(&self, e: reqwest::Error) -> ClientError {
        if e.is_connect() {
            ClientError::NotRunning {
                url: self.base.clone(),
                config: self.config.clone(),
            }
        } else {
            ClientError::Other {
                url: self.base.clone(),
                detail: e.to_string(),
            }
        }
    }

    async fn decode<T: DeserializeOwned>(&self, resp: reqwest::Response) -> Result<T, ClientError> {
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| self.error(e))?;
        // every string the server sends is printed by some command: none may steer the
        // terminal (escape sequences, carriage returns; see `terminal`)
        let value = serde_json::from_slice::<serde_json::Value>(&bytes).map(|mut v| {
            super::terminal::clean_json(&mut v);
            v
        });
        if status >= 400 {
            let value = value.unwrap_or_default();
            let err = &value["error"];
            return Err(ClientError::Api {
                status,
                code: err["code"].as_str().unwrap_or("error").to_string(),
                message: err["message"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("ferry answered {status}"))
                    + if status == 401 {
                        "\nhelp: set FERRY_TOKEN, or run this where `ferry serve` keeps its local-token file"
                    } else {
                        ""
                    },
            });
        }
        value
            .and_then(serde_json::from_value)
            .map_err(|e| ClientError::Other {
                url: self.base.clone(),
                detail: format!("unexpected answer: {e}"),
            })
    }

    async fn send_get(&self, path: &str) -> Result<reqwest::Response, ClientError> {
        self.request(reqwest::Method::GET, path)
            .send()
            .await
            .map_err(|e| self.error(e))
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let resp = self.send_get(path).await?;
        self.decode(resp).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let resp = self
            .request(reqwest::Method::POST, path)
            .json(body)
            .send()
            .await
            .map_err(|e| self.error(e))?;
        self.decode(resp).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let resp = self
            .request(reqwest::Method::DELETE, path)
            .send()
            .await
            .map_err(|e| self.error(e))?;
        self.decode(resp).await
    }

    /// POSTs `body` asking to switch the connection to `protocol` (`ferry exec`): the
    /// upgraded connection once ferry answers 101, else its error.
    pub async fn upgrade<B: Serialize>(
        &self,
        path: &str,
        protocol: &str,
        body: &B,
    ) -> Result<reqwest::Upgraded, ClientError> {
        let resp = self
            .request(reqwest::Method::POST, path)
            .header(reqwest::header::CONNECTION, "upgrade")
            .header(reqwest::header::UPGRADE, protocol)
            .json(body)
            .send()
            .await
            .map_err(|e| self.error(e))?;
        let status = resp.status().as_u16();
        if status == 101 {
            return resp.upgrade().await.map_err(|e| self.error(e));
        }
        Err(self
            .decode::<serde_json::Value>(resp)
            .await
            .err()
            .unwrap_or_else(|| ClientError::Other {
                url: self.base.clone(),
                detail: format!("ferry answered {status} instead of switching protocols"),
            }))
    }

    /// A streaming GET, for logs.
    pub async fn stream(&self, path: &str) -> Result<reqwest::Response, ClientError> {
        let resp = self.send_get(path).await?;
        if resp.status().is_success() {
            Ok(resp)
        } else {
            let status = resp.status().as_u16();
            Err(self
                .decode::<serde_json::Value>(resp)
                .await
                .err()
                .unwrap_or_else(|| ClientError::Other {
                    url: self.base.clone(),
                    detail: format!("ferry answered {status}"),
                }))
        }
    }
}

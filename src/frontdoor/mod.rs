//! The front door: one pair of public ports (`[server] http`, `https`) for every environment
//! that claims `hosts`, routing each request by its Host to that environment's proxy (its
//! stats, maintenance page, access log, pool and drain are the same as on its own port),
//! terminating TLS with the certificates of a [`CertStore`] (found by SNI), redirecting
//! plain HTTP to https, answering ACME HTTP-01 challenges, and speaking HTTP/2 where the
//! client offers it (ALPN).
//!
//! It is fed a list of [`Entry`] (an environment's proxy, hosts, prefix, TLS), so a daemon
//! hosting several apps feeds it every app's environments in one loop; a host claimed by two
//! of them is refused ([`FrontDoor::new`]).

pub mod certs;
mod router;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{ProxySettings, Tls};
use crate::hosts::{HostPattern, HostTable};
use crate::listener::ConnStats;
use crate::proxy::{Listening, Proxy};
use crate::tls::{CertSource, CertStore, Challenges};

pub use router::{HttpRouter, HttpsRouter, NOT_FOUND_PAGE};

/// The name of an environment's certificate in the [`CertStore`]: `app/env`.
pub fn cert_name(app: &str, env: &str) -> String {
    format!("{app}/{env}")
}

/// One environment as the front door serves it.
#[derive(Clone)]
pub struct Entry {
    pub app: String,
    pub env: String,
    pub proxy: Proxy,
    pub hosts: Vec<HostPattern>,
    pub prefix: Option<String>,
    pub tls: Option<Tls>,
    pub redirect_https: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum FrontDoorError {
    #[error(
        "host {host} is claimed by app {app_a} environment {env_a} and by app {app_b} environment {env_b}: a host name (and path_prefix) routes to one environment"
    )]
    Claimed {
        host: String,
        app_a: String,
        env_a: String,
        app_b: String,
        env_b: String,
    },
}

/// Where a request on a host goes: the environment with the longest matching path prefix.
#[derive(Clone)]
pub(crate) struct Site {
    pub proxy: Proxy,
    pub prefix: Option<String>,
    pub redirect_https: bool,
}

/// Sites by host, each host's sites longest prefix first.
pub(crate) type Table = HostTable<Vec<Site>>;

/// The front door's routing table and certificates.
pub struct FrontDoor {
    table: Arc<Table>,
    pub certs: Arc<CertStore>,
    pub challenges: Arc<Challenges>,
    /// The https port, for redirects (`None`: no https listener, no redirects).
    https_port: Option<u16>,
    /// Connections of the http and https listeners (each with its own budget).
    pub http_stats: Arc<ConnStats>,
    pub https_stats: Arc<ConnStats>,
}

impl FrontDoor {
    /// Builds the table from `entries`, refusing a host (with the same prefix) claimed
    /// twice, and declares each TLS environment's certificate in `certs` (files are loaded by
    /// [`certs::load`]).
    pub fn new(
        entries: &[Entry],
        certs: Arc<CertStore>,
        challenges: Arc<Challenges>,
        https: Option<SocketAddr>,
    ) -> Result<FrontDoor, FrontDoorError> {
        let mut table: Table = HostTable::new();
        let mut owners: std::collections::HashMap<(HostPattern, String), (String, String)> =
            Default::default();
        for e in entries {
            let prefix = e.prefix.clone().unwrap_or_default();
            for host in &e.hosts {
                let key = (host.clone(), prefix.clone());
                if let Some((app, env)) = owners.get(&key) {
                    return Err(FrontDoorError::Claimed {
                        host: format!("{host}{prefix}"),
                        app_a: app.clone(),
                        env_a: env.clone(),
                        app_b: e.app.clone(),
                        env_b: e.env.clone(),
                    });
                }
                owners.insert(key, (e.app.clone(), e.env.clone()));
                let site = Site {
                    proxy: e.proxy.clone(),
                    prefix: e.prefix.clone(),
                    redirect_https: e.redirect_https && https.is_some(),
                };
                let mut sites = table.remove(host).unwrap_or_default();
                sites.push(site);
                sites.sort_by_key(|s| std::cmp::Reverse(s.prefix.as_ref().map_or(0, String::len)));
                table.insert(host, sites);
            }
            if let Some(tls) = &e.tls {
                let source = match tls {
                    Tls::Files { cert, key } => CertSource::Files {
                        cert: cert.display().to_string(),
                        key: key.display().to_string(),
                    },
                    Tls::Acme => CertSource::Acme,
                };
                certs.declare(&cert_name(&e.app, &e.env), &e.hosts, source);
            }
        }
        Ok(FrontDoor {
            table: Arc::new(table),
            certs,
            challenges,
            https_port: https.map(|a| a.port()),
            http_stats: Arc::default(),
            https_stats: Arc::default(),
        })
    }

    /// Serves plain HTTP on `listener` until `shutdown`.
    pub async fn serve_http(
        &self,
        listener: TcpListener,
        settings: ProxySettings,
        shutdown: watch::Receiver<bool>,
    ) {
        let router = HttpRouter {
            table: self.table.clone(),
            challenges: self.challenges.clone(),
            https_port: self.https_port,
        };
        let listening = Listening {
            name: "front door http".into(),
            router,
            settings,
            stats: self.http_stats.clone(),
            tls: None,
        };
        crate::proxy::serve(listening, listener, shutdown).await;
    }

    /// Serves HTTPS on `listener` until `shutdown`: certificates by SNI from the store (an
    /// unknown name is refused in the handshake), ALPN `h2` and `http/1.1`.
    pub async fn serve_https(
        &self,
        listener: TcpListener,
        settings: ProxySettings,
        shutdown: watch::Receiver<bool>,
    ) {
        let router = HttpsRouter {
            table: self.table.clone(),
            certs: self.certs.clone(),
        };
        let listening = Listening {
            name: "front door https".into(),
            router,
            settings,
            stats: self.https_stats.clone(),
            tls: Some(tokio_rustls::TlsAcceptor::from(tls_config(
                self.certs.clone(),
            ))),
        };
        crate::proxy::serve(listening, listener, shutdown).await;
    }
}

/// rustls (ring) serving from `certs`, HTTP/2 preferred.
pub fn tls_config(certs: Arc<CertStore>) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

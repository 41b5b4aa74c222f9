//! ferry: release promotion and deployment for one app and its environments, in one binary.
//!
//! # Layout
//! - [`config`]: `ferry.toml` into a validated [`config::Config`].
//! - [`lifecycle`]: the states of a deployment and of its steps, which the store records and
//!   events announce.
//! - [`store`]: SQLite (WAL) with numbered migrations; deployments, steps, releases, locks and
//!   instances. The source of truth: every transition is written before it is acted on.
//! - [`release`]: git mirror, ref resolution, tree export, shared links, build and test
//!   commands, content digest, pruning.
//! - [`sandbox`]: who untrusted build, test and app commands run as (an unprivileged user
//!   per environment when ferry is root), the environment they see, the owners and modes of
//!   the state dir, and the redaction of known secrets from everything ferry records.
//! - [`runtime`]: one interface for the app's instances (start on a port, stop with a grace,
//!   alive, output into the rotated app log, adopt after a crash) with a backend per
//!   `[app] runtime`: processes in their own groups, or containers (docker, compose).
//! - [`docker`]: the `docker` command line as typed async calls (build, run, logs, wait,
//!   inspect, stop, list), with timeouts and one-line errors; [`docker::compose`]: `docker
//!   compose` / `docker-compose` (builds, one-off instances, accessories).
//! - [`listener`]: serving HTTP/1.1 on a listener under its own connection budget (header
//!   timeout, per-client and overall limits), for the API and each proxy.
//! - [`hosts`]: host names as environments claim them (exact and wildcard) and the table
//!   that finds a request's among them.
//! - [`tls`]: the certificates the front door serves by SNI, with their status, and the
//!   ACME HTTP-01 answers.
//! - [`acme`]: certificates for `tls = "acme"` environments ordered from an ACME CA
//!   (instant-acme, HTTP-01), stored under the state dir, installed into the [`tls`] store and
//!   renewed ahead of expiry.
//! - [`frontdoor`]: `[server] http`/`https`: routes requests by Host/SNI to environments'
//!   proxies, terminates TLS from the certificate store, redirects to https, HTTP/2 by ALPN.
//! - [`proxy`]: one HTTP/1.1 listener per environment; atomic upstream switch; drain; ferry's
//!   cookies stripped.
//! - [`health`]: startup probes of a new instance.
//! - [`backup`]: SQLite online backups and file snapshots of shared data; restoring one.
//! - [`changelog`]: release notes from conventional commits, in Keep a Changelog form.
//! - [`policy`]: the gates (release tags, promotion, checks, freeze windows, locks, approval)
//!   the pipeline asks before it acts, and `ferry plan` shows.
//! - [`pipeline`]: one task per deployment running the steps in order under the
//!   environment's lock; owns the environments' proxies and running instances.
//! - [`events`]: the broadcast of every committed transition and monitor probe (SSE,
//!   notifications and metrics listen to it).
//! - [`auth`]: API tokens (hashed, constant-time checked, revocable) and the local token file.
//! - [`notify`]: outgoing notifications (`[[notify]]`) of deployment events, retried.
//! - [`server`]: the HTTP API the CLI talks to, webhooks, metrics, and the dashboard at `/`
//!   (`server/dashboard`: server-rendered pages, sessions, CSRF-checked actions).
//! - [`remote`]: the transport to an environment's `servers`: the system's OpenSSH client
//!   with one ControlMaster per host and typed failures naming the host, ferry installing
//!   itself on each host (checksum, atomic rename), and the commands that reach its agent.
//! - [`daemon`]: the engine, proxies and API started and stopped together (`ferry serve`);
//!   its listening sockets passed by systemd or handed over by the serve it replaces.
//! - [`agent`]: the agent on each host of an environment with `servers` (`ferry agent`):
//!   the protocol, the relay ssh runs, the daemon that runs the host's instances and proxies
//!   and adopts them after a restart, the receiving end of a release, and ferry's client.
//! - [`cli`]: the `ferry` subcommands; each talks to the daemon over the API.
//! - [`sample_app`]: the small app `ferry demo` and the tests deploy.
//! - [`shutdown`]: Ctrl-C or SIGTERM, for every long-running ferry process.
//!
//! Data flows CLI → server → pipeline → (release, runtime, health, proxy), with the pipeline
//! recording each step in the store. The proxy, runtime and health modules know nothing of
//! deployments; the pipeline knows nothing of HTTP.

pub mod acme;
pub mod agent;
pub mod auth;
pub mod backup;
pub mod changelog;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod docker;
pub mod events;
pub mod frontdoor;
pub mod health;
pub mod hosts;
pub mod lifecycle;
pub mod listener;
pub mod notify;
pub mod pipeline;
pub mod policy;
pub mod proxy;
pub mod release;
pub mod remote;
pub mod runtime;
pub mod sample_app;
pub mod sandbox;
pub mod server;
pub mod shutdown;
pub mod store;
pub mod tls;

/// Makes rustls on ring the process's crypto provider, once: reqwest (built with
/// `rustls-no-provider`, so no aws-lc) looks it up for every client it builds, and panics
/// without one. Call before building a `reqwest` client; calling again does nothing.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // an error only says a provider is installed already
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A client builder for plain HTTP (the API on loopback, health probes, checks): the crypto
/// provider installed, and no trust store loaded (none is needed, and a machine without one
/// must still probe and deploy). An https URL fails with it.
#[allow(clippy::disallowed_methods)] // the one place clients are made
pub fn http_builder() -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder().tls_certs_only(Vec::new())
}

/// A client builder for anywhere, https included: the crypto provider installed, the
/// system's trust store (rustls-platform-verifier; `SSL_CERT_FILE` is honoured) checked at
/// `build`, which fails when the system has no CA certificates.
#[allow(clippy::disallowed_methods)] // the one place clients are made
pub fn https_builder() -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder()
}

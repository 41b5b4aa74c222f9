//! The daemon: the engine, every environment's proxy and the API, started together and
//! stopped together. `ferry serve` runs one; `ferry demo` runs one in-process.
//!
//! Its listening sockets come from systemd, from the serve it takes over from, or are bound
//! ([`sockets`]); it hands them to a successor on request ([`handover`]). Stopping leaves the
//! apps running for the next serve to adopt, unless asked to stop them.

pub mod handover;
mod preview;
pub mod sockets;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{Config, ServerConfig};
use crate::pipeline::{Engine, EngineError};
use crate::server::{AppState, Apps, Metrics};
use crate::store::Store;
use handover::{Channel, Message};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot create the state dir {path}: {source}")]
    StateDir {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Webhooks(String),
    #[error("{0}")]
    FrontDoor(#[from] crate::frontdoor::FrontDoorError),
    #[error("cannot make the local API token: {0}")]
    Token(#[from] crate::auth::AuthError),
    #[error(
        "another ferry serve is running on the state dir {path} (it holds {path}/serve.lock); stop it first, or replace it with `ferry serve --takeover` or `ferry upgrade`"
    )]
    Running { path: String },
    #[error("cannot lock the state dir {path}: {source}")]
    Lock {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot open the store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Engine(#[from] EngineError),
    #[error("{0}")]
    Socket(#[from] sockets::SocketError),
    #[error(
        "no ferry serve is running on the state dir {path} to take over (nothing answers on {socket}); start one with `ferry serve`"
    )]
    NothingToTakeOver { path: String, socket: String },
    #[error("the running ferry serve refused the takeover: {0}")]
    Refused(String),
    #[error("the takeover failed: {0}")]
    Handover(std::io::Error),
    #[error("cannot listen for a takeover on {path}: {source}")]
    HandoverSocket {
        path: String,
        source: std::io::Error,
    },
}

/// How a daemon starts.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// Take the sockets (and the state dir) over from the serve running on the state dir.
    pub takeover: bool,
    /// The arguments `ferry upgrade` starts the new binary with (plus `--takeover`): this
    /// serve's own. Empty: no upgrades (the demo).
    pub serve_args: Vec<OsString>,
}

/// A running daemon.
pub struct Daemon {
    /// Every app's engine, in the config's order.
    engines: Vec<Arc<Engine>>,
    /// Where the API answers.
    pub api_addr: SocketAddr,
    control: Arc<Control>,
    /// Stops the API and the proxies (they finish the requests they have).
    listeners_stop: watch::Sender<bool>,
    listener_tasks: Vec<JoinHandle<()>>,
    handover: Option<JoinHandle<()>>,
}

/// The engine's work besides deployments: the supervisor, the health watcher, metrics from
/// events and notifications. Stopped for a handover (and started again if it fails).
struct Background {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Background {
    /// `early`: the notifications' receiver, when it was subscribed before the store's
    /// recovery (at `serve` start), so what recovery records is announced too.
    fn start(
        engine: &Arc<Engine>,
        metrics: &Arc<Metrics>,
        early: Option<tokio::sync::broadcast::Receiver<crate::events::Event>>,
    ) -> Background {
        let (stop, rx) = watch::channel(false);
        let mut tasks = vec![
            tokio::spawn(engine.clone().supervise(rx.clone())),
            tokio::spawn(engine.clone().watch_health(rx.clone())),
            tokio::spawn(engine.clone().reconcile_hosts(rx.clone())),
        ];
        tasks.push(tokio::spawn({
            let (metrics, bus, rx) = (metrics.clone(), engine.store.events().clone(), rx.clone());
            async move { metrics.follow(&bus, rx).await }
        }));
        let m = metrics.clone();
        tasks.push(tokio::spawn(crate::notify::run(
            engine.config.clone(),
            engine.store.clone(),
            Arc::new(move |outcome| m.notification(outcome)),
            rx,
            early,
        )));
        Background { stop, tasks }
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// What a handover needs of the running daemon.
struct Control {
    /// Every app's engine, with the metrics its background work feeds.
    engines: Vec<(Arc<Engine>, Arc<Metrics>)>,
    /// The serve's state dir (`serve.lock`, `serve.sock`).
    state_dir: PathBuf,
    /// Copies of the listening sockets, by name, to pass on.
    sockets: Vec<(String, OwnedFd)>,
    /// `serve.lock`, held while this daemon's engine is at work.
    lock: Mutex<Option<nix::fcntl::Flock<std::fs::File>>>,
    background: tokio::sync::Mutex<Option<Vec<Background>>>,
    /// Bringing environments back after the start.
    restore: Mutex<Option<JoinHandle<()>>>,
    /// One handover at a time.
    one: tokio::sync::Mutex<()>,
    /// True once a new serve has taken over: this one stops accepting and exits.
    handed_over: watch::Sender<bool>,
    serve_args: Vec<OsString>,
}

impl Daemon {
    /// Locks the state dir, takes its listening sockets (from systemd, from the serve it takes
    /// over from, or bound now), opens the store, recovers from an earlier stop (adopting
    /// instances still running), and starts serving. Nothing is recovered before every
    /// socket is in hand, so a ferry that cannot start changes nothing. Environments without
    /// an adopted instance are brought back to their last good release in the background
    /// ([`Daemon::restored`] waits for that).
    pub async fn start(servers: ServerConfig, opts: StartOptions) -> Result<Daemon, DaemonError> {
        let dir = servers.state_dir.clone();
        let state_dir = dir.display().to_string();
        std::fs::create_dir_all(&dir).map_err(|source| DaemonError::StateDir {
            path: state_dir.clone(),
            source,
        })?;
        let (passed, source, handover, lock) = if opts.takeover {
            let (passed, chan) = take_over(&dir).await?;
            // the old serve has just let go of it
            let lock = lock_state_dir_within(&dir, Duration::from_secs(10)).await?;
            (passed, sockets::Source::Takeover, Some(chan), lock)
        } else {
            let lock = lock_state_dir(&dir)?;
            (sockets::systemd(), sockets::Source::Systemd, None, lock)
        };
        let mut listeners = sockets::assign(&servers, passed, source)?;
        raise_open_files_limit(&servers);
        if servers.shared {
            crate::sandbox::secure_server_dir(&dir).map_err(|e| DaemonError::StateDir {
                path: state_dir.clone(),
                source: std::io::Error::other(e.to_string()),
            })?;
        }
        // the front door's certificates and ACME answers, the same for every app
        let (certs, challenges) = (crate::tls::CertStore::new(), crate::tls::Challenges::new());
        let mut engines = Vec::new();
        for config in &servers.apps {
            std::fs::create_dir_all(&config.state_dir).map_err(|source| DaemonError::StateDir {
                path: config.state_dir.display().to_string(),
                source,
            })?;
            let store = Store::open(&config.state_dir.join("ferry.db"))?;
            let engine = Engine::sharing_tls(
                Arc::new(config.clone()),
                store,
                (certs.clone(), challenges.clone()),
            )?;
            tighten_logs(&engine.config);
            engines.push(engine);
        }
        let mut kept = Vec::new();
        for (name, listener) in &listeners {
            // std duplicates with close-on-exec
            let copy = listener
                .try_clone()
                .map_err(|source| DaemonError::HandoverSocket {
                    path: name.clone(),
                    source,
                })?;
            kept.push((name.clone(), OwnedFd::from(copy)));
        }
        let mut tokio_listener = |name: &str| -> Result<TcpListener, DaemonError> {
            let std = listeners.remove(name).expect("assign gives every listener");
            std.set_nonblocking(true)
                .and_then(|()| TcpListener::from_std(std))
                .map_err(|source| DaemonError::HandoverSocket {
                    path: name.to_string(),
                    source,
                })
        };
        let api = tokio_listener(sockets::API)?;
        let mut proxies = Vec::new();
        for engine in &engines {
            // an environment with servers listens on its hosts (their agents' proxies)
            let local = engine.environments().filter(|s| s.env.servers.is_empty());
            for state in local.filter(|s| s.env.listen.is_some()) {
                let name = servers.listener_name(&engine.config.app.name, &state.env.name);
                proxies.push((
                    state.proxy.clone(),
                    engine.config.proxy,
                    tokio_listener(&name)?,
                ));
            }
        }
        for engine in &engines {
            proxies.extend(preview::proxies(engine, &servers, &mut tokio_listener)?);
        }
        let mut front_listeners = Vec::new();
        for (name, wanted) in [
            (sockets::HTTP, servers.server.http),
            (sockets::HTTPS, servers.server.https),
        ] {
            if wanted.is_some() {
                front_listeners.push((name, tokio_listener(name)?));
            }
        }
        // one front door for every app's environments, with the certificates they share
        let entries: Vec<_> = engines.iter().flat_map(|e| front_door_entries(e)).collect();
        let front = Arc::new(crate::frontdoor::FrontDoor::new(
            &entries,
            certs.clone(),
            challenges.clone(),
            servers.server.https,
        )?);
        let cert_files = crate::frontdoor::certs::load(
            crate::frontdoor::certs::Files::of(&entries),
            certs.clone(),
        );
        let api_addr = api.local_addr().unwrap_or(servers.server.listen);
        let (listeners_stop, rx) = watch::channel(false);
        // one set of API connection counters for the one API listener
        let connections = Arc::new(crate::listener::ConnStats::default());
        let mut states = Vec::new();
        for engine in &engines {
            let mut app =
                AppState::new(engine.clone(), rx.clone()).map_err(DaemonError::Webhooks)?;
            app.metrics = Arc::new(Metrics::with_connections(connections.clone()));
            states.push(app);
        }
        if states.len() > 1 {
            let stores: Vec<Store> = engines.iter().map(|e| e.store.clone()).collect();
            for state in &mut states {
                state.peer_stores = stores.clone();
            }
        }
        // notifications hear what recovery records (a deploy cut off by a crash is failed)
        let mut early: Vec<_> = engines
            .iter()
            .map(|e| Some(e.store.events().subscribe()))
            .collect();
        for engine in &engines {
            engine.recover_store().await?;
            engine.apply_maintenance()?;
        }
        // only now: a second ferry that cannot bind must not replace the first one's token
        let stores: Vec<&Store> = engines.iter().map(|e| &e.store).collect();
        let token_file = crate::auth::write_local_for(&stores, &dir)?;
        tracing::info!(path = %token_file.display(), "wrote the local API token");
        let mut listener_tasks = Vec::new();
        // stored ACME certificates are installed before the https listener accepts; [acme],
        // the certificates and the ACME answers are the server's, the same in every engine
        listener_tasks.extend(acme_renewals(&engines[0], &entries, rx.clone()));
        for (proxy, settings, listener) in proxies {
            listener_tasks.push(tokio::spawn(proxy.serve(listener, settings, rx.clone())));
        }
        for (name, listener) in front_listeners {
            let (front, settings, rx) = (front.clone(), servers.proxy, rx.clone());
            listener_tasks.push(tokio::spawn(async move {
                if name == sockets::HTTPS {
                    front.serve_https(listener, settings, rx).await;
                } else {
                    front.serve_http(listener, settings, rx).await;
                }
            }));
        }
        listener_tasks.push(tokio::spawn(cert_files.run(rx.clone())));
        let apps = Apps::new(states.clone());
        let server = crate::server::serve(apps, api);
        listener_tasks.push(tokio::spawn(async move {
            if let Err(e) = server.await {
                tracing::error!(error = %e, "API server stopped");
            }
        }));
        let with_metrics: Vec<(Arc<Engine>, Arc<Metrics>)> = states
            .iter()
            .map(|s| (s.engine.clone(), s.metrics.clone()))
            .collect();
        let background = with_metrics
            .iter()
            .zip(early.iter_mut())
            .map(|((engine, metrics), rx)| Background::start(engine, metrics, rx.take()))
            .collect();
        let restore = tokio::spawn({
            let engines = engines.clone();
            async move {
                futures_util::future::join_all(engines.iter().map(|e| e.restore_all())).await;
            }
        });
        let control = Arc::new(Control {
            engines: with_metrics,
            state_dir: dir,
            sockets: kept,
            lock: Mutex::new(Some(lock)),
            background: tokio::sync::Mutex::new(Some(background)),
            restore: Mutex::new(Some(restore)),
            one: tokio::sync::Mutex::new(()),
            handed_over: watch::channel(false).0,
            serve_args: opts.serve_args,
        });
        if let Some(mut chan) = handover {
            let pid = std::process::id();
            if let Err(e) = chan.send(&Message::Ready { pid }).await {
                tracing::warn!(error = %e, "the serve taken over from went away before it heard this one is ready");
            }
            tracing::info!("took over the listening sockets and the state dir");
        }
        let handover = match control.listen().await {
            Ok(task) => Some(task),
            Err(e) => {
                tracing::warn!(error = %e, "no takeover possible: cannot listen on the handover socket");
                None
            }
        };
        Ok(Daemon {
            engines,
            api_addr,
            control,
            listeners_stop,
            listener_tasks,
            handover,
        })
    }

    /// Every app's engine, in the config's order (one for a single `ferry.toml`).
    pub fn engines(&self) -> &[Arc<Engine>] {
        &self.engines
    }

    /// Waits until the environments are back on their last good releases.
    pub async fn restored(&mut self) {
        let restore = self
            .control
            .restore
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(restore) = restore {
            let _ = restore.await;
        }
    }

    /// Resolves once a new serve has taken over from this one.
    pub async fn handed_over(&self) {
        let mut rx = self.control.handed_over.subscribe();
        let _ = rx.wait_for(|h| *h).await;
    }

    /// Stops: no new connections, open requests finish, background work ends. The apps keep
    /// running for the next serve to adopt, or with `stop_apps` are stopped. After a handover
    /// only the first part remains (the new serve has the rest).
    pub async fn stop(self, stop_apps: bool) {
        let handed_over = *self.control.handed_over.borrow();
        let _ = self.listeners_stop.send(true);
        if let Some(task) = self.handover {
            task.abort();
        }
        if let Some(task) = self
            .control
            .restore
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            task.abort();
        }
        let background = self.control.background.lock().await.take();
        for background in background.into_iter().flatten() {
            background.stop().await;
        }
        for task in self.listener_tasks {
            let _ = task.await;
        }
        if handed_over {
            return;
        }
        let _ = std::fs::remove_file(handover::socket_path(&self.control.state_dir));
        for engine in &self.engines {
            // the SSH master connections to the environments' hosts (a handed-over serve
            // keeps them: the new one goes on using them)
            if engine
                .config
                .environments
                .iter()
                .any(|e| !e.servers.is_empty())
            {
                crate::remote::Ssh::new(&engine.config.ssh, &engine.config.state_dir)
                    .close_all()
                    .await;
            }
            if stop_apps {
                engine.shutdown().await;
            } else {
                engine.leave_running().await;
            }
        }
    }
}

/// The environments the front door routes to (those with `hosts`). A daemon of several apps
/// gives it every app's.
fn front_door_entries(engine: &Engine) -> Vec<crate::frontdoor::Entry> {
    engine
        .environments()
        .filter(|s| !s.env.hosts.is_empty())
        .map(|s| crate::frontdoor::Entry {
            app: engine.config.app.name.clone(),
            env: s.env.name.clone(),
            proxy: s.proxy.clone(),
            hosts: s.env.hosts.clone(),
            prefix: s.env.path_prefix.clone(),
            tls: s.env.tls.clone(),
            redirect_https: s.env.redirect_https,
        })
        .chain(preview::entries(engine))
        .collect()
}

/// Certificates from ACME for the front door's `tls = "acme"` environments: the stored ones
/// installed now, orders and renewals in the background until `stop` ([`crate::acme`]).
/// `None` without such environments.
fn acme_renewals(
    engine: &Engine,
    entries: &[crate::frontdoor::Entry],
    stop: watch::Receiver<bool>,
) -> Option<JoinHandle<()>> {
    let settings = engine.config.acme.clone()?;
    let wanted: Vec<crate::acme::Wanted> = entries
        .iter()
        .filter(|e| e.tls == Some(crate::config::Tls::Acme))
        .map(|e| crate::acme::Wanted {
            name: crate::frontdoor::cert_name(&e.app, &e.env),
            app: e.app.clone(),
            env: e.env.clone(),
            hosts: e.hosts.clone(),
        })
        .collect();
    if wanted.is_empty() {
        return None;
    }
    let acme = crate::acme::Acme::new(
        settings,
        &engine.config.server_dir,
        engine.certs.clone(),
        engine.challenges.clone(),
    );
    Some(acme.start(wanted, stop))
}

/// Asks the serve running on `state_dir` for its sockets; returns them once it has let go
/// of the state dir, with the connection to say `ready` on.
async fn take_over(state_dir: &Path) -> Result<(Vec<sockets::Passed>, Channel), DaemonError> {
    let path = handover::socket_path(state_dir);
    let mut chan = Channel::connect(&path)
        .await
        .map_err(|_| DaemonError::NothingToTakeOver {
            path: state_dir.display().to_string(),
            socket: path.display().to_string(),
        })?;
    chan.send(&Message::Takeover {
        pid: std::process::id(),
    })
    .await
    .map_err(DaemonError::Handover)?;
    let passed = match chan.recv_fds().await.map_err(DaemonError::Handover)? {
        (Message::Refused { message }, _) => return Err(DaemonError::Refused(message)),
        (Message::Sockets { names }, fds) => {
            handover::named_sockets(names, fds).map_err(DaemonError::Handover)?
        }
        (other, _) => {
            return Err(DaemonError::Handover(std::io::Error::other(format!(
                "unexpected answer {other:?}"
            ))));
        }
    };
    match chan.recv().await.map_err(DaemonError::Handover)? {
        Message::LockReleased => Ok((passed, chan)),
        other => Err(DaemonError::Handover(std::io::Error::other(format!(
            "unexpected answer {other:?}"
        )))),
    }
}

impl Control {
    /// Listens on `serve.sock` (0600) for takeovers and upgrades.
    async fn listen(self: &Arc<Self>) -> Result<JoinHandle<()>, DaemonError> {
        use std::os::unix::fs::PermissionsExt;
        let path = handover::socket_path(&self.state_dir);
        let fail = |source| DaemonError::HandoverSocket {
            path: path.display().to_string(),
            source,
        };
        // a leftover of a stopped serve, or of the one taken over from: this serve holds the lock
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(fail(e)),
        }
        let listener = tokio::net::UnixListener::bind(&path).map_err(fail)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(fail)?;
        let control = self.clone();
        Ok(tokio::spawn(async move {
            let me = nix::unistd::geteuid().as_raw();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                // the socket's mode already keeps others out; root aside, only ferry's own user
                if !stream
                    .peer_cred()
                    .is_ok_and(|c| c.uid() == me || c.uid() == 0)
                {
                    continue;
                }
                let control = control.clone();
                tokio::spawn(async move { control.answer(Channel::new(stream)).await });
            }
        }))
    }

    async fn answer(self: Arc<Self>, mut chan: Channel) {
        match chan.recv().await {
            Ok(Message::Takeover { pid }) => self.hand_over(&mut chan, pid).await,
            Ok(Message::Upgrade { binary }) => self.upgrade(&mut chan, binary).await,
            Ok(other) => {
                tracing::warn!(message = ?other, "unexpected message on the handover socket")
            }
            Err(e) => tracing::debug!(error = %e, "handover connection ended"),
        }
    }

    /// Why a handover cannot happen now, if it cannot.
    fn blocker(&self) -> Option<String> {
        if *self.handed_over.borrow() {
            return Some("this serve has already handed over to another one".into());
        }
        let restoring = self
            .restore
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|t| !t.is_finished());
        if restoring {
            return Some(
                "ferry is still bringing environments back to their last good releases; try again once `ferry status` shows them healthy".into(),
            );
        }
        for (engine, _) in &self.engines {
            match engine.handover_blocker() {
                Ok(None) => {}
                Ok(Some(reason)) if self.engines.len() > 1 => {
                    return Some(format!("app {}: {reason}", engine.config.app.name));
                }
                Ok(Some(reason)) => return Some(reason),
                Err(e) => return Some(format!("cannot read the store: {e}")),
            }
        }
        None
    }

    /// The old serve's side of a takeover (see [`handover`]).
    async fn hand_over(&self, chan: &mut Channel, pid: u32) {
        let _one = self.one.lock().await;
        let refuse = |message: String| Message::Refused { message };
        if let Some(reason) = self.blocker() {
            tracing::info!(pid, "refused a takeover: {reason}");
            let _ = chan.send(&refuse(reason)).await;
            return;
        }
        for (i, (engine, _)) in self.engines.iter().enumerate() {
            if let Err(reason) = engine.begin_handover() {
                for (begun, _) in &self.engines[..i] {
                    begun.end_handover();
                }
                tracing::info!(pid, "refused a takeover: {reason}");
                let _ = chan.send(&refuse(reason)).await;
                return;
            }
        }
        tracing::info!(pid, "handing over to a new serve");
        let background = self.background.lock().await.take();
        for background in background.into_iter().flatten() {
            background.stop().await;
        }
        for (engine, _) in &self.engines {
            engine.leave_running().await;
        }
        let names: Vec<String> = self.sockets.iter().map(|(n, _)| n.clone()).collect();
        let fds: Vec<_> = self.sockets.iter().map(|(_, fd)| fd.as_fd()).collect();
        let sent = chan.send_fds(&Message::Sockets { names }, &fds).await;
        if let Err(e) = sent {
            tracing::error!(pid, error = %e, "could not pass the sockets; this serve goes on");
            return self.resume().await;
        }
        drop(self.lock.lock().unwrap_or_else(|e| e.into_inner()).take());
        if let Err(e) = chan.send(&Message::LockReleased).await {
            tracing::error!(pid, error = %e, "the new serve went away; this serve goes on");
            return self.resume().await;
        }
        match tokio::time::timeout(Duration::from_secs(180), chan.recv()).await {
            Ok(Ok(Message::Ready { pid })) => {
                tracing::info!(
                    pid,
                    "the new serve accepts; this one finishes its requests and exits, leaving the apps running"
                );
                self.handed_over.send_replace(true);
            }
            other => {
                tracing::error!(pid, outcome = ?other.map(|r| r.map_err(|e| e.to_string())), "the new serve did not come up; this serve goes on");
                self.resume().await;
            }
        }
    }

    /// Carries on after a takeover that did not happen.
    async fn resume(&self) {
        let dir = &self.state_dir;
        if self
            .lock
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
        {
            match lock_state_dir_within(dir, Duration::from_secs(10)).await {
                Ok(lock) => *self.lock.lock().unwrap_or_else(|e| e.into_inner()) = Some(lock),
                Err(e) => {
                    // someone else runs the engine now: only stopping is safe
                    tracing::error!(error = %e, "cannot take the state dir back; stopping");
                    self.handed_over.send_replace(true);
                    return;
                }
            }
        }
        let mut background = Vec::new();
        for (engine, metrics) in &self.engines {
            engine.end_handover();
            background.push(Background::start(engine, metrics, None));
        }
        *self.background.lock().await = Some(background);
    }

    /// `ferry upgrade`: starts `binary serve --takeover` with this serve's arguments and
    /// reports until it has taken over, or why not.
    async fn upgrade(&self, chan: &mut Channel, binary: PathBuf) {
        if let Some(reason) = self.blocker() {
            let _ = chan.send(&Message::Refused { message: reason }).await;
            return;
        }
        if self.serve_args.is_empty() {
            let message = "this ferry cannot be upgraded in place (it is not `ferry serve`)".into();
            let _ = chan.send(&Message::Refused { message }).await;
            return;
        }
        if !binary.is_file() {
            let message = format!("{} is not a file", binary.display());
            let _ = chan.send(&Message::Refused { message }).await;
            return;
        }
        let mut args = self.serve_args.clone();
        if !args.iter().any(|a| a == "--takeover") {
            args.push("--takeover".into());
        }
        let spawned = tokio::process::Command::new(&binary)
            .args(&args)
            .env_remove("LISTEN_FDNAMES")
            .stdin(std::process::Stdio::null())
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                let message = format!("cannot start {}: {e}", binary.display());
                let _ = chan.send(&Message::Refused { message }).await;
                return;
            }
        };
        let pid = child.id().unwrap_or_default();
        tracing::info!(pid, binary = %binary.display(), "started a new serve to take over");
        let _ = chan
            .send(&Message::Progress {
                message: format!("started {} serve --takeover (pid {pid})", binary.display()),
            })
            .await;
        let mut handed = self.handed_over.subscribe();
        let answer = tokio::select! {
            status = child.wait() => Message::Refused {
                message: format!(
                    "the new serve (pid {pid}) exited ({}) before taking over; this serve goes on (its log says why)",
                    status.map_or_else(|e| e.to_string(), |s| s.to_string())
                ),
            },
            _ = handed.wait_for(|h| *h) => Message::Done {
                message: format!(
                    "pid {pid} serves now; the old serve (pid {}) finishes its requests and exits, the apps kept running",
                    std::process::id()
                ),
            },
        };
        let _ = chan.send(&answer).await;
    }
}

/// Tells systemd (`NOTIFY_SOCKET`, `Type=notify`) about this serve, e.g. `READY=1` with
/// `MAINPID=` after a takeover; nothing without systemd.
pub fn notify_systemd(state: &str) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = std::os::unix::net::UnixDatagram::unbound().and_then(|socket| {
        let bytes = path.as_bytes();
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => std::os::unix::net::SocketAddr::from_abstract_name(name)?,
            None => std::os::unix::net::SocketAddr::from_pathname(Path::new(&path))?,
        };
        socket.send_to_addr(state.as_bytes(), &addr)
    });
    if let Err(e) = sent {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// App logs become 0600 (made before ferry kept tight modes, or, as root, under the usual
/// umask in a logs dir only root may enter); logs that cannot be changed are logged.
fn tighten_logs(config: &Config) {
    use std::os::unix::fs::PermissionsExt;
    for env in &config.environments {
        let dir = config.env_dir(&env.name).join("logs");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let loose = entry
                .metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o077 != 0);
            if loose
                && let Err(e) =
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            {
                tracing::warn!(file = %path.display(), error = %e, "cannot make the log private");
            }
        }
    }
}

/// Descriptors kept free of every listener's budget: the store, logs, pipes, git, health checks.
const SPARE_DESCRIPTORS: u64 = 256;

/// Raises the soft limit of open files to the hard limit, so connections run into ferry's own
/// limits (`[server]`, `[proxy]`) long before the kernel's; warns when those budgets together
/// could still exceed it. (Instances and commands inherit the raised limit.)
fn raise_open_files_limit(config: &ServerConfig) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open files limit");
            return;
        }
    };
    let soft = if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => {
                tracing::info!(from = soft, to = hard, "raised the open files limit");
                hard
            }
            Err(e) => {
                tracing::warn!(soft, hard, error = %e, "cannot raise the open files limit");
                soft
            }
        }
    } else {
        soft
    };
    // a proxied connection holds two descriptors: the client's and the app's
    let environments: usize = config.apps.iter().map(|a| a.environments.len()).sum();
    let budget = config.server.connections.max_connections as u64
        + 2 * config.proxy.connections.max_connections as u64 * environments as u64
        + SPARE_DESCRIPTORS;
    if budget > soft {
        tracing::warn!(
            open_files_limit = soft,
            needed = budget,
            "the connection limits ([server] and [proxy] max_connections) add up to more descriptors than ferry may open; lower them or raise the hard limit (LimitNOFILE= in a systemd unit)"
        );
    }
}

/// Takes `serve.lock`, waiting up to `limit` for the serve handing over to let go of it.
async fn lock_state_dir_within(
    dir: &Path,
    limit: Duration,
) -> Result<nix::fcntl::Flock<std::fs::File>, DaemonError> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match lock_state_dir(dir) {
            Err(DaemonError::Running { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return other,
        }
    }
}

/// Takes `serve.lock` in the state dir, or says which ferry already holds it. The file says
/// which process holds it.
fn lock_state_dir(dir: &std::path::Path) -> Result<nix::fcntl::Flock<std::fs::File>, DaemonError> {
    let path = dir.join("serve.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| DaemonError::Lock {
            path: dir.display().to_string(),
            source,
        })?;
    let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(
        |(_, errno)| match errno {
            nix::errno::Errno::EWOULDBLOCK => DaemonError::Running {
                path: dir.display().to_string(),
            },
            e => DaemonError::Lock {
                path: dir.display().to_string(),
                source: e.into(),
            },
        },
    )?;
    let mut file: &std::fs::File = &lock;
    let _ = file.set_len(0);
    let _ = std::io::Write::write_all(&mut file, format!("{}\n", std::process::id()).as_bytes());
    Ok(lock)
}

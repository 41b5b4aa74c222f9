//! The daemon: the engine, every environment's proxy and the API, started together and
//! stopped together. `ferry serve` runs one; `ferry demo` runs one in-process.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::pipeline::{Engine, EngineError};
use crate::server::AppState;
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot create the state dir {path}: {source}")]
    StateDir {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Webhooks(String),
    #[error("cannot make the local API token: {0}")]
    Token(#[from] crate::auth::AuthError),
    #[error(
        "another ferry serve is running on the state dir {path} (it holds {path}/serve.lock); stop it first"
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
    #[error(
        "cannot listen on {addr} for ferry's API ([server] listen): {source} (is another ferry running?)"
    )]
    Api {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running daemon.
pub struct Daemon {
    pub engine: Arc<Engine>,
    /// Where the API answers.
    pub api_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    restore: JoinHandle<()>,
    /// Held while this daemon runs: one `serve` per state dir.
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl Daemon {
    /// Locks the state dir, binds every address, opens the store, recovers from an earlier
    /// stop (adopting instances still running), and starts serving. Nothing is recovered
    /// before every port is bound, so a ferry that cannot start changes nothing.
    /// Environments without an adopted instance are brought back to their last good release
    /// in the background ([`Daemon::restored`] waits for that).
    pub async fn start(config: Config) -> Result<Daemon, DaemonError> {
        let state_dir = config.state_dir.display().to_string();
        std::fs::create_dir_all(&config.state_dir).map_err(|source| DaemonError::StateDir {
            path: state_dir.clone(),
            source,
        })?;
        let lock = lock_state_dir(&config.state_dir)?;
        raise_open_files_limit(&config);
        let store = Store::open(&config.state_dir.join("ferry.db"))?;
        let engine = Engine::new(Arc::new(config), store)?;
        tighten_logs(&engine.config);
        let proxies = engine.bind_proxies().await?;
        let api_addr = engine.config.server.listen;
        let api = TcpListener::bind(api_addr)
            .await
            .map_err(|source| DaemonError::Api {
                addr: api_addr,
                source,
            })?;
        let api_addr = api.local_addr().unwrap_or(api_addr);
        let (shutdown, rx) = watch::channel(false);
        let app = AppState::new(engine.clone(), rx.clone()).map_err(DaemonError::Webhooks)?;
        engine.recover_store().await?;
        engine.apply_maintenance()?;
        // only now: a second ferry that cannot bind must not replace the first one's token
        let token_file = crate::auth::write_local(&engine.store, &engine.config.state_dir)?;
        tracing::info!(path = %token_file.display(), "wrote the local API token");
        let mut tasks = Vec::new();
        for (proxy, listener) in proxies {
            tasks.push(tokio::spawn(proxy.serve(
                listener,
                engine.config.proxy,
                rx.clone(),
            )));
        }
        tasks.push(tokio::spawn(engine.clone().supervise(rx.clone())));
        tasks.push(tokio::spawn(engine.clone().watch_health(rx.clone())));
        tasks.push(tokio::spawn({
            let (metrics, bus, rx) = (
                app.metrics.clone(),
                engine.store.events().clone(),
                rx.clone(),
            );
            async move { metrics.follow(&bus, rx).await }
        }));
        let metrics = app.metrics.clone();
        tasks.push(tokio::spawn(crate::notify::run(
            engine.config.clone(),
            engine.store.clone(),
            Arc::new(move |outcome| metrics.notification(outcome)),
            rx.clone(),
        )));
        let server = crate::server::serve(app, api);
        tasks.push(tokio::spawn(async move {
            if let Err(e) = server.await {
                tracing::error!(error = %e, "API server stopped");
            }
        }));
        let restore = tokio::spawn({
            let engine = engine.clone();
            async move { engine.restore_all().await }
        });
        Ok(Daemon {
            engine,
            api_addr,
            shutdown,
            tasks,
            restore,
            _lock: lock,
        })
    }

    /// Waits until the environments are back on their last good releases.
    pub async fn restored(&mut self) {
        let _ = (&mut self.restore).await;
    }

    /// Stops listening, lets open requests finish, and stops every instance.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        self.restore.abort();
        for task in self.tasks {
            let _ = task.await;
        }
        self.engine.shutdown().await;
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
fn raise_open_files_limit(config: &Config) {
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
    let budget = config.server.connections.max_connections as u64
        + 2 * config.proxy.connections.max_connections as u64 * config.environments.len() as u64
        + SPARE_DESCRIPTORS;
    if budget > soft {
        tracing::warn!(
            open_files_limit = soft,
            needed = budget,
            "the connection limits ([server] and [proxy] max_connections) add up to more descriptors than ferry may open; lower them or raise the hard limit (LimitNOFILE= in a systemd unit)"
        );
    }
}

/// Takes `serve.lock` in the state dir, or says which ferry already holds it.
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
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(
        |(_, errno)| match errno {
            nix::errno::Errno::EWOULDBLOCK => DaemonError::Running {
                path: dir.display().to_string(),
            },
            e => DaemonError::Lock {
                path: dir.display().to_string(),
                source: e.into(),
            },
        },
    )
}

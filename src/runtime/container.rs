//! The container runtimes (`docker`, `compose`): an instance is a container of the release's
//! image, named `ferry-<app>-<env>-<port>` and labelled with its app, environment, release,
//! version, commit and port, so a new ferry finds it again after a crash.
//!
//! - Variables (ferry's and the environment's `env`) reach it through `--env-file`; the
//!   environment's `env_file` and command secrets are written to a file only ferry and the instance's user
//!   read and mounted read-only at `secrets_at` (`FERRY_ENV_FILE` names it): no secret is ever
//!   on a command line or in `docker inspect`.
//! - The shared dir is mounted read-write at `shared_at`; `stop_timeout` is the container's
//!   stop grace; docker's init is PID 1, so an app without signal handlers still stops.
//! - Output: `docker logs --follow` through a pipe into the environment's app log. The pipe
//!   ends with ferry, so a `docker logs` ferry leaves behind exits on its next write.

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use super::output::{LineTap, pump};
use super::{Handle, Identity, Instance, InstanceSpec, LogSink, RuntimeError};
use crate::config::{ContainerUser, Network};
use crate::docker::{self, Docker, Mount, RunSpec};

/// Label keys ferry puts on its containers and images.
pub const LABEL_APP: &str = "ferry.app";
pub const LABEL_ENV: &str = "ferry.env";
pub const LABEL_RELEASE: &str = "ferry.release";
pub const LABEL_VERSION: &str = "ferry.version";
pub const LABEL_COMMIT: &str = "ferry.commit";
pub const LABEL_PORT: &str = "ferry.port";
/// Its process type (`web`, `worker`...).
pub const LABEL_PROCESS: &str = "ferry.process";
/// Which ferry it is (a digest of its state dir): ferrys sharing a docker daemon never take
/// each other's containers for their own.
pub const LABEL_HOME: &str = "ferry.home";

/// A container instance.
pub(super) struct Container {
    docker: Docker,
    pub id: String,
    pub name: String,
    /// Files made for it (variables, secrets), removed once it is stopped.
    files: Vec<PathBuf>,
    /// The `docker logs --follow` feeding the log, while one runs.
    follower: Mutex<Option<tokio::process::Child>>,
    /// When its output stopped being read (a detach): a reattach reads on from there.
    detached_at: Mutex<Option<SystemTime>>,
}

impl std::fmt::Debug for Container {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Container")
            .field("id", &short(&self.id))
            .field("name", &self.name)
            .finish()
    }
}

/// `s` in the characters docker allows in names and tags (others become `-`).
pub fn docker_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// `ferry-<app>-<env>-<port>`, in the characters docker allows in a name.
pub fn container_name(identity: &Identity, port: u16) -> String {
    format!(
        "ferry-{}-{}-{port}",
        docker_safe(&identity.app),
        docker_safe(&identity.env)
    )
}

/// The files made for the container instance on `port` in the run dir: its variables
/// (`--env-file`) and its secrets (mounted).
pub(super) fn instance_files(run_dir: &std::path::Path, port: u16) -> [PathBuf; 2] {
    [
        run_dir.join(format!("{port}.vars")),
        run_dir.join(format!("{port}.env")),
    ]
}

/// The labels of an instance of `identity` on `port`.
pub fn labels(identity: &Identity, port: u16) -> Vec<(String, String)> {
    vec![
        (LABEL_APP.into(), identity.app.clone()),
        (LABEL_ENV.into(), identity.env.clone()),
        (LABEL_RELEASE.into(), identity.release.clone()),
        (LABEL_VERSION.into(), identity.version.clone()),
        (LABEL_COMMIT.into(), identity.commit.clone()),
        (LABEL_PORT.into(), port.to_string()),
        (LABEL_HOME.into(), identity.home.clone()),
        (
            LABEL_PROCESS.into(),
            if identity.process.is_empty() {
                "web".into()
            } else {
                identity.process.clone()
            },
        ),
    ]
}

/// The first 12 characters of a container or image id, as docker shows them.
pub fn short(id: &str) -> &str {
    let id = id.strip_prefix("sha256:").unwrap_or(id);
    &id[..id.len().min(12)]
}

/// What a container instance of `spec` is made of, before docker or compose creates it.
pub(super) struct Prepared {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub network: docker::Network,
    /// The variables file (`--env-file`).
    pub env_file: PathBuf,
    /// The variables it holds (compose takes them from its own environment instead).
    pub vars: Vec<(String, String)>,
    pub mounts: Vec<Mount>,
    pub user: Option<String>,
    pub command: Option<Vec<String>>,
    pub files: Vec<PathBuf>,
}

/// Writes the files an instance of `spec` needs and says how to run it.
pub(super) fn prepare(
    settings: &crate::config::Container,
    spec: &InstanceSpec,
) -> Result<Prepared, RuntimeError> {
    let run_dir = spec
        .output
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let io = |path: &PathBuf| {
        let path = path.clone();
        move |source| RuntimeError::File { path, source }
    };
    std::fs::create_dir_all(&run_dir).map_err(io(&run_dir))?;
    // ferry's alone: it holds the instances' variables and secrets files
    std::fs::set_permissions(&run_dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io(&run_dir))?;
    let port = spec.port;
    let mut vars = spec.app_vars.clone();
    let network = match settings.network {
        Network::Host => {
            vars.push(("HOST".into(), "127.0.0.1".into()));
            docker::Network::Host
        }
        Network::Publish => {
            // its own network namespace: only the published loopback port reaches it
            vars.push(("HOST".into(), "0.0.0.0".into()));
            docker::Network::Publish {
                host_port: port,
                container_port: port,
            }
        }
    };
    let user = match (settings.user, &spec.confinement.run_as) {
        (ContainerUser::Environment, Some(u)) => Some(format!("{}:{}", u.uid, u.gid)),
        _ => None,
    };
    let mut files = Vec::new();
    let mut mounts = Vec::new();
    if spec.shared_dir.is_dir() {
        mounts.push(Mount {
            source: spec.shared_dir.clone(),
            target: settings.shared_at.clone(),
            readonly: false,
        });
    }
    let [env_file, secrets_file] = instance_files(&run_dir, port);
    if !spec.secrets.is_empty() {
        let path = secrets_file;
        let bytes = spec.secrets.file_bytes(spec.env_file.as_deref())?;
        write_secrets(&path, &bytes, spec, user.is_some()).map_err(io(&path))?;
        files.push(path.clone());
        mounts.push(Mount {
            source: path,
            target: settings.secrets_at.clone(),
            readonly: true,
        });
        vars.push(("FERRY_ENV_FILE".into(), settings.secrets_at.clone()));
    }
    docker::write_env_file(&env_file, &vars).map_err(RuntimeError::Docker)?;
    files.push(env_file.clone());
    let command = (!spec.start.trim().is_empty())
        .then(|| vec!["/bin/sh".into(), "-c".into(), spec.start.clone()]);
    Ok(Prepared {
        name: container_name(&spec.identity, port),
        labels: labels(&spec.identity, port),
        network,
        env_file,
        vars,
        mounts,
        user,
        command,
        files,
    })
}

/// The secrets for the container (`bytes`: see [`super::Secrets::file_bytes`]), readable by the instance's user only when ferry runs it
/// as the environment's user, else by whoever the image's user is (the run dir is ferry's
/// alone on the host).
fn write_secrets(
    path: &std::path::Path,
    bytes: &[u8],
    spec: &InstanceSpec,
    as_environment_user: bool,
) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    match (&spec.confinement.run_as, as_environment_user) {
        (Some(user), true) => nix::unistd::chown(
            path,
            Some(nix::unistd::Uid::from_raw(user.uid)),
            Some(nix::unistd::Gid::from_raw(user.gid)),
        )
        .map_err(std::io::Error::from)?,
        _ => std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o444))?,
    }
    Ok(())
}

/// The release's image an instance of `spec` runs.
fn image_of(spec: &InstanceSpec) -> Result<String, RuntimeError> {
    spec.image.clone().ok_or_else(|| RuntimeError::NoImage {
        release: spec.identity.release.clone(),
    })
}

/// Starts a container of `spec`'s image with `docker run`.
pub(super) async fn run(
    docker: &Docker,
    settings: &crate::config::Container,
    spec: &InstanceSpec,
    log: &LogSink,
) -> Result<Instance, RuntimeError> {
    let image = image_of(spec)?;
    let prepared = prepare(settings, spec)?;
    // a container of that name is a leftover of an instance on the same port: never ours now
    let _ = docker.remove(&prepared.name).await;
    let run = RunSpec {
        name: prepared.name.clone(),
        image,
        labels: prepared.labels.clone(),
        network: prepared.network.clone(),
        env_file: Some(prepared.env_file.clone()),
        mounts: prepared.mounts.clone(),
        user: prepared.user.clone(),
        stop_timeout: spec.stop_timeout,
        init: true,
        workdir: None,
        command: prepared.command.clone(),
        log_max_size: Some("10m".into()),
    };
    let id = match docker.run(&run).await {
        Ok(id) => id,
        Err(e) => {
            remove_files(&prepared.files);
            let _ = docker.remove(&prepared.name).await;
            return Err(RuntimeError::Docker(e));
        }
    };
    attach(
        docker,
        id,
        prepared.name,
        spec.port,
        prepared.files,
        None,
        log,
    )
}

/// Starts the routed service of a compose app as a one-off container of the environment's
/// long-lived project `project` (so it reaches the accessories by name), after starting the
/// accessories that do not run yet (never recreating one: deploys do not touch them).
pub(super) async fn compose_run(
    docker: &Docker,
    compose: &crate::docker::compose::Compose,
    project: &crate::docker::compose::Project,
    service: &str,
    settings: &crate::config::Container,
    spec: &InstanceSpec,
    log: &LogSink,
) -> Result<Instance, RuntimeError> {
    let image = image_of(spec)?;
    let accessories = compose.accessories(project, service).await?;
    compose
        .vet(
            project,
            &[spec.shared_dir.clone(), spec.release_dir.clone()],
        )
        .await?;
    compose
        .accessories_up(project, &accessories, false, ACCESSORIES_TIMEOUT)
        .await?;
    // compose runs a service's image by name: the release's tag, pointed at its verified id
    let tag = super::image_tag(&spec.identity);
    docker.tag(&image, &tag).await?;
    let prepared = prepare(settings, spec)?;
    let _ = docker.remove(&prepared.name).await;
    let run = crate::docker::compose::RunSpec {
        service: service.to_string(),
        name: prepared.name.clone(),
        labels: prepared.labels.clone(),
        env: prepared.vars.clone(),
        mounts: prepared
            .mounts
            .iter()
            .map(|m| (m.source.clone(), m.target.clone(), m.readonly))
            .collect(),
        publish: match prepared.network {
            docker::Network::Publish {
                host_port,
                container_port,
            } => Some((host_port, container_port)),
            docker::Network::Host => None,
        },
        image: tag,
        command: prepared.command.clone(),
        timeout: ACCESSORIES_TIMEOUT,
    };
    let id = match compose.run(project, &run).await {
        Ok(id) => id,
        Err(e) => {
            remove_files(&prepared.files);
            return Err(e.into());
        }
    };
    attach(
        docker,
        id,
        prepared.name,
        spec.port,
        prepared.files,
        None,
        log,
    )
}

/// How long compose may take to start accessories or an instance.
pub const ACCESSORIES_TIMEOUT: Duration = Duration::from_secs(300);

/// Watches the container `id` (started or adopted): its output into `log` from `since`
/// (everything when `None`), its exit.
pub(super) fn attach(
    docker: &Docker,
    id: String,
    name: String,
    port: u16,
    files: Vec<PathBuf>,
    since: Option<SystemTime>,
    log: &LogSink,
) -> Result<Instance, RuntimeError> {
    let lines = Arc::new(LineTap::new(log));
    let container = Arc::new(Container {
        docker: docker.clone(),
        id: id.clone(),
        name,
        files,
        follower: Mutex::new(None),
        detached_at: Mutex::new(None),
    });
    container.follow(&lines, since)?;
    let (tx, exit) = watch::channel(None);
    let (docker2, id2) = (docker.clone(), id);
    tokio::spawn(async move {
        let status = exit_of(&docker2, &id2).await;
        let _ = tx.send(Some(status));
    });
    Ok(Instance {
        port,
        handle: Handle::Container(container),
        exit,
        lines,
    })
}

/// Resolves when the container has stopped (or is gone), with its exit code.
async fn exit_of(docker: &Docker, id: &str) -> ExitStatus {
    let code = |code: i32| ExitStatus::from_raw((code & 0xff) << 8);
    if let Ok(c) = docker.wait(id).await {
        return code(c);
    }
    // `docker wait` failed (the daemon restarting, the container removed): ask until it
    // says the container is not running
    loop {
        match docker.inspect(id).await {
            Ok(None) => return code(137),
            Ok(Some(info)) if !info.running => return code(info.exit_code.unwrap_or(137)),
            _ => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

fn remove_files(files: &[PathBuf]) {
    for f in files {
        let _ = std::fs::remove_file(f);
    }
}

/// `--since` for `docker logs`: seconds since the epoch, with nanoseconds.
fn since_arg(at: SystemTime) -> String {
    let d = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
}

impl Container {
    /// Starts a `docker logs --follow` into a fresh pipe the pump reads.
    fn follow(&self, lines: &Arc<LineTap>, since: Option<SystemTime>) -> Result<(), RuntimeError> {
        let pipe_err = |e: nix::Error| RuntimeError::Spawn {
            command: "docker logs".into(),
            source: std::io::Error::from(e),
        };
        // close-on-exec: no other process ferry starts (a build, another instance) may hold
        // either end, so the follower gets EPIPE once ferry is gone and the pump sees its end
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(pipe_err)?;
        let child = self
            .docker
            .follow_logs(&self.id, since.map(since_arg).as_deref(), File::from(write))
            .map_err(RuntimeError::Docker)?;
        let reader =
            tokio::net::unix::pipe::Receiver::from_file(File::from(read)).map_err(|source| {
                RuntimeError::Spawn {
                    command: "docker logs".into(),
                    source,
                }
            })?;
        tokio::spawn(pump(reader, lines.log.clone(), lines.clone()));
        *self.follower.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);
        Ok(())
    }

    fn stop_following(&self) {
        if let Some(mut child) = self
            .follower
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = child.start_kill();
        }
    }

    /// Stops the container (`docker stop` with the grace, then removed), once its exit and
    /// the rest of its output are in.
    pub(super) async fn stop(&self, instance: &Instance, grace: Duration) {
        if let Err(e) = self.docker.stop(&self.id, grace).await {
            tracing::warn!(container = %self.name, error = %e, "cannot stop the container; removing it");
            let _ = self.docker.remove(&self.id).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), instance.wait_exit()).await;
        self.stop_following();
        remove_files(&self.files);
    }

    /// Stops reading its output (it keeps running); a reattach reads on from now.
    pub(super) fn detached(&self) {
        self.stop_following();
        *self.detached_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(SystemTime::now());
    }

    /// Reads its output again after a detach, from where the detach left it.
    pub(super) fn reattach(&self, lines: &Arc<LineTap>) {
        let since = *self.detached_at.lock().unwrap_or_else(|e| e.into_inner());
        lines.detach.send_replace(false);
        lines.ended.send_replace(false);
        if let Err(e) = self.follow(lines, since) {
            tracing::warn!(container = %self.name, error = %e, "cannot read the container's output again; it is not logged");
        }
    }
}

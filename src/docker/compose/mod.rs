//! `docker compose` (v2 plugin, preferred) or `docker-compose` (v1, 1.28 or later): a typed
//! async wrapper over the compose command line, which the compose runtime drives.
//!
//! An app's compose file has one *routed* service, built at each release commit and run once per
//! instance as a one-off container ([`Compose::run`]), and *accessories* (databases, caches: every
//! other service), which run once per environment in a long-lived project that deploys never stop
//! ([`Compose::accessories_up`] and its siblings). The routed instances run in the accessories'
//! project, so they share its network and reach the accessories by service name.
//!
//! # Networking
//! Instances must listen on loopback only. Two layouts work, including on a `dockerd` started with
//! `--bridge=none --iptables=false` (how the tests and CI run it):
//! - **Host networking** (`network_mode: host` on every service): the app binds `127.0.0.1:$PORT`
//!   itself and accessories are reached on `127.0.0.1:<their port>`. Nothing may be published: v1
//!   refuses `--publish` on a host-networked service (`"host" network_mode is incompatible with
//!   port_bindings`), so [`RunSpec::publish`] must stay `None` ([`ServiceInfo::network_mode`] says
//!   which layout a file uses).
//! - **The project's own bridge network** (compose's default, `<project>_default`): user-defined
//!   bridge networks can still be created without the default `docker0` bridge; service names
//!   resolve through docker's embedded DNS; the app listens on `0.0.0.0:<container port>` inside
//!   its container and is published on `127.0.0.1:<host port>` only ([`RunSpec::publish`]; with
//!   `--iptables=false` docker's userland proxy carries it). The containers get no route to the
//!   outside world from such a daemon.
//!
//! # What compose sees
//! Compose runs with a cleared environment plus [`PASSED_ENV`] (the variables that locate the
//! daemon and the tools), so a compose file, which is release content, cannot interpolate ferry's
//! own variables (`${...}`) into a container or a build. Environment values given to
//! [`Compose::run`] are set in compose's environment only and named on its command line as `-e
//! NAME` (compose copies the value), so `ps` and `/proc/*/cmdline` show names only.
//!
//! # Flavours
//! Both flavours get the same arguments (`--ansi never -p NAME --project-directory DIR -f FILE
//! [-f OVERRIDE...]` then the subcommand); v1 prints a container's name on `run -d` and v2 its id,
//! so [`Compose::run`] resolves the name it chose to an id with `docker container inspect`. The
//! image of a service is set by an override file the wrapper writes (`services: {S: {image:
//! TAG}}`, without `version:`, which both flavours merge with a file of any version).

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

/// The variables of ferry's environment that compose (and the docker CLI it may start) sees;
/// everything else is cleared.
pub const PASSED_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "TMPDIR",
    "LANG",
    "LC_ALL",
    "XDG_RUNTIME_DIR",
    "DOCKER_HOST",
    "DOCKER_CONTEXT",
    "DOCKER_CONFIG",
    "DOCKER_CERT_PATH",
    "DOCKER_TLS_VERIFY",
    "DOCKER_API_VERSION",
    "DOCKER_BUILDKIT",
    "BUILDKIT_PROGRESS",
    "COMPOSE_DOCKER_CLI_BUILD",
];

/// How long a query (`version`, `config`, `inspect`, `ps`) may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(60);
/// Lines of output an error or a build log keeps.
const TAIL_LINES: usize = 40;
/// Bytes of a command's log output kept (its tail).
const LOG_CAP: usize = 64 * 1024;
/// Bytes of a command's standard output kept when it is data (`config`, `ps`).
const STDOUT_CAP: usize = 4 * 1024 * 1024;
/// How long the output of a finished or killed command is still read.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Which compose command line is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// `docker compose` (the v2 plugin of the docker CLI).
    V2,
    /// `docker-compose` (the v1 Python program, 1.28 or later).
    V1,
}

/// A detected compose installation.
#[derive(Debug, Clone)]
pub struct Compose {
    flavor: Flavor,
    /// The docker CLI: `docker compose` for v2, and the image and container inspections.
    docker: PathBuf,
    /// `docker-compose` (used for v1 only).
    v1: PathBuf,
    version: String,
}

/// A compose project: what `-p`, `--project-directory` and `-f` say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    /// `-p`; sanitized with [`project_name`] wherever it is used. The compose runtime uses
    /// `ferry-<app>-<env>` for an environment's project.
    pub name: String,
    /// `-f`: the compose file (absolute).
    pub file: PathBuf,
    /// `--project-directory` (absolute): relative paths of the file resolve here, and compose
    /// reads its `.env` here.
    pub directory: PathBuf,
    /// Further `-f` files, merged over `file` in order.
    pub overrides: Vec<PathBuf>,
}

impl Project {
    /// A project of one file; `name` is sanitized with [`project_name`].
    pub fn new(name: &str, file: impl Into<PathBuf>, directory: impl Into<PathBuf>) -> Project {
        Project {
            name: project_name(name),
            file: file.into(),
            directory: directory.into(),
            overrides: Vec::new(),
        }
    }
}

/// `raw` made a valid compose project name: lowercase `[a-z0-9_-]`, starting with a letter or a
/// digit (other characters become `-`; an empty result is `ferry`).
pub fn project_name(raw: &str) -> String {
    let mapped: String = raw
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '_' | '-') => c,
            _ => '-',
        })
        .collect();
    let trimmed = mapped.trim_start_matches(['-', '_']);
    if trimmed.is_empty() {
        "ferry".to_string()
    } else {
        trimmed.to_string()
    }
}

/// One instance of the routed service, for [`Compose::run`].
#[derive(Clone)]
pub struct RunSpec {
    /// The routed service of the file.
    pub service: String,
    /// The container's name (`--name`); must not be taken.
    pub name: String,
    /// Labels (`-l k=v`), e.g. ferry's app, environment, version and port.
    pub labels: Vec<(String, String)>,
    /// Environment of the container. The names go on compose's command line (`-e NAME`), the
    /// values only into compose's own environment.
    pub env: Vec<(String, String)>,
    /// Bind mounts: host path, container path, read-only.
    pub mounts: Vec<(PathBuf, String, bool)>,
    /// `(host port, container port)` published on 127.0.0.1 only; `None` for host networking.
    pub publish: Option<(u16, u16)>,
    /// The image to run (a tag the caller made point at the verified image id).
    pub image: String,
    /// Replaces the service's command.
    pub command: Option<Vec<String>>,
    /// How long compose may take to create and start the container.
    pub timeout: Duration,
}

impl fmt::Debug for RunSpec {
    /// Environment values are secrets: only their names are shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunSpec")
            .field("service", &self.service)
            .field("name", &self.name)
            .field("labels", &self.labels)
            .field(
                "env",
                &self.env.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            )
            .field("mounts", &self.mounts)
            .field("publish", &self.publish)
            .field("image", &self.image)
            .field("command", &self.command)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A finished build.
#[derive(Debug, Clone)]
pub struct BuildOutput {
    /// `sha256:...`, the id the tag points at.
    pub image_id: String,
    /// The last lines of the build's output.
    pub log: String,
}

/// A service of the (merged) file, as compose's `config` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    pub name: String,
    /// It has a `build:` section.
    pub build: bool,
    /// Its `image:`, if any.
    pub image: Option<String>,
    /// Its `network_mode:` (`host`, ...), if any.
    pub network_mode: Option<String>,
}

/// A container of a project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceState {
    /// The full container id.
    pub id: String,
    /// The container's name.
    pub name: String,
    /// The compose service it belongs to.
    pub service: String,
    /// docker's state: `running`, `exited`, `created`, `restarting`, `paused`, `dead`...
    pub state: String,
    /// docker's human status (`Up 3 minutes`, `Exited (1) 2 seconds ago`).
    pub status: String,
    /// A one-off container (`run`), as the routed instances are.
    pub one_off: bool,
}

impl ServiceState {
    /// The container is running.
    pub fn running(&self) -> bool {
        self.state == "running"
    }
}

impl Compose {
    /// Prefers `docker compose version` (the v2 plugin), else `docker-compose version` (v1), else
    /// [`ComposeError::NotInstalled`] naming both commands tried and why each failed.
    /// `FERRY_DOCKER` and `FERRY_DOCKER_COMPOSE` may name other programs than `docker` and
    /// `docker-compose` (tests).
    pub async fn detect() -> Result<Compose, ComposeError> {
        Compose::detect_programs(
            program_from_env("FERRY_DOCKER", "docker"),
            program_from_env("FERRY_DOCKER_COMPOSE", "docker-compose"),
        )
        .await
    }

    /// [`Compose::detect`] with the docker CLI `docker` and `docker-compose` at `v1`.
    pub async fn detect_programs(docker: PathBuf, v1: PathBuf) -> Result<Compose, ComposeError> {
        let mut compose = Compose::new(Flavor::V2, docker, v1);
        let v2_args = [OsString::from("compose"), OsString::from("version")];
        let v2_why = match compose
            .exec(Flavor::V2, &v2_args, &[], Capture::Split, QUERY_TIMEOUT)
            .await
        {
            Ok(ran) => {
                compose.version = first_line(&ran.stdout);
                return Ok(compose);
            }
            Err(e) => short_reason(&e),
        };
        compose.flavor = Flavor::V1;
        let v1_why = match compose
            .exec(
                Flavor::V1,
                &[OsString::from("version")],
                &[],
                Capture::Split,
                QUERY_TIMEOUT,
            )
            .await
        {
            Ok(ran) => {
                compose.version = first_line(&ran.stdout);
                return Ok(compose);
            }
            Err(e) => short_reason(&e),
        };
        Err(ComposeError::NotInstalled {
            tried: format!(
                "`{} compose version` ({v2_why}) and `{} version` ({v1_why})",
                compose.docker.display(),
                compose.v1.display()
            ),
        })
    }

    /// A wrapper of the given flavour and programs, without asking them anything.
    pub fn new(flavor: Flavor, docker: impl Into<PathBuf>, v1: impl Into<PathBuf>) -> Compose {
        Compose {
            flavor,
            docker: docker.into(),
            v1: v1.into(),
            version: String::new(),
        }
    }

    /// Which command line is used.
    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    /// The first line of the `version` answer at detection (empty for [`Compose::new`]).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// `config --services` of the project: the names of the file's services. A broken file gives
    /// [`ComposeError::File`] with compose's message.
    pub async fn services(&self, p: &Project) -> Result<Vec<String>, ComposeError> {
        let ran = self
            .query(&self.services_args(p)?)
            .await
            .map_err(|e| file_error(p, e))?;
        Ok(ran
            .stdout
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect())
    }

    /// The services of the merged file (`config`), with what the runtime needs to know of each.
    pub async fn describe(&self, p: &Project) -> Result<Vec<ServiceInfo>, ComposeError> {
        let ran = self
            .query(&self.config_args(p)?)
            .await
            .map_err(|e| file_error(p, e))?;
        parse_config(&ran.stdout).map_err(|message| ComposeError::File {
            file: p.file.clone(),
            message,
        })
    }

    /// Refuses a file that asks the daemon for more than a release may have
    /// ([`ComposeError::Refused`] lists every problem): a bind mount outside `allowed` (or of a
    /// socket), a build context or Dockerfile outside `allowed`, privileges, host namespaces or
    /// devices, another container's volumes or network, a port on a public address, a named or
    /// external volume or network of another project, a key not on the allowlist. The file as
    /// written is checked first (`env_file`, `extends`, `include`, which `config` resolves by
    /// reading host files), then compose's resolved `config`.
    pub async fn vet(&self, p: &Project, allowed: &[PathBuf]) -> Result<(), ComposeError> {
        let refused = |problems: Vec<String>| ComposeError::Refused {
            file: p.file.clone(),
            problems,
        };
        let source = std::fs::read_to_string(&p.file).map_err(|e| ComposeError::File {
            file: p.file.clone(),
            message: e.to_string(),
        })?;
        let problems = vet::source_problems(&source, &p.directory, allowed);
        if !problems.is_empty() {
            return Err(refused(problems));
        }
        let ran = self
            .query(&self.config_args(p)?)
            .await
            .map_err(|e| file_error(p, e))?;
        let problems = vet::config_problems(&ran.stdout, &project_name(&p.name), allowed);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(refused(problems))
        }
    }

    /// The accessories of the file: every service but `routed`, which must be in it
    /// ([`ComposeError::NoService`] otherwise).
    pub async fn accessories(
        &self,
        p: &Project,
        routed: &str,
    ) -> Result<Vec<String>, ComposeError> {
        let services = self.services(p).await?;
        if !services.iter().any(|s| s == routed) {
            return Err(no_service(p, routed, &services));
        }
        Ok(services.into_iter().filter(|s| s != routed).collect())
    }

    /// Builds `service` of the file (`p.directory` is the release dir holding it), with an
    /// override file setting its `image:` to `tag` so the result is tagged `tag`, and returns the
    /// image id. A service without `build:` gives [`ComposeError::NoBuild`]. The build's output
    /// is kept bounded; on failure the error holds its last lines. It is killed, with every
    /// process it started, after `timeout`.
    pub async fn build(
        &self,
        p: &Project,
        service: &str,
        tag: &str,
        timeout: Duration,
    ) -> Result<BuildOutput, ComposeError> {
        check_service(service)?;
        check_image(tag)?;
        let services = self.describe(p).await?;
        match services.iter().find(|s| s.name == service) {
            None => {
                let names: Vec<String> = services.into_iter().map(|s| s.name).collect();
                return Err(no_service(p, service, &names));
            }
            Some(s) if !s.build => return Err(ComposeError::NoBuild(service.to_string())),
            Some(_) => {}
        }
        let image = ImageOverride::write(service, tag)?;
        let args = self.build_args(p, image.path(), service)?;
        let ran = self
            .exec(self.flavor, &args, &[], Capture::Merged, timeout)
            .await?;
        let image_id = self.image_id(tag).await?;
        Ok(BuildOutput {
            image_id,
            log: ran.log,
        })
    }

    /// Starts one instance of the routed service as a one-off container of project `p` (so it
    /// shares the accessories' network and reaches them by name): `run -d --no-deps --name N -l
    /// k=v... [--publish 127.0.0.1:H:C] [-v src:dst[:ro]...] -e NAME... -- SERVICE [COMMAND...]`
    /// with an override file setting the service's image to `spec.image`. Returns the container
    /// id. A container left behind by a failed start is removed.
    pub async fn run(&self, p: &Project, spec: &RunSpec) -> Result<String, ComposeError> {
        let image = ImageOverride::write(&spec.service, &spec.image)?;
        let args = self.run_args(p, image.path(), spec)?;
        if self.container_id(&spec.name).await.is_ok() {
            return Err(ComposeError::NameInUse(spec.name.clone()));
        }
        match self
            .exec(self.flavor, &args, &spec.env, Capture::Split, spec.timeout)
            .await
        {
            Ok(_) => self.container_id(&spec.name).await,
            Err(e) => {
                // the name was free before: whatever holds it now is this failed start's
                let rm = [
                    OsString::from("rm"),
                    OsString::from("-f"),
                    OsString::from("--"),
                    OsString::from(&spec.name),
                ];
                let _ = self.docker(&rm).await;
                Err(e)
            }
        }
    }

    /// `up -d --no-deps [--no-recreate] -- SERVICES...` in the environment's long-lived project.
    /// `recreate = false` leaves existing containers as they are; `true` lets compose recreate
    /// those whose configuration or image changed. `--no-deps` keeps the routed service from
    /// being started as an accessory's dependency. Nothing to do for no services. Returns the
    /// command's last output lines.
    pub async fn accessories_up(
        &self,
        p: &Project,
        services: &[String],
        recreate: bool,
        timeout: Duration,
    ) -> Result<String, ComposeError> {
        if services.is_empty() {
            return Ok(String::new());
        }
        let args = self.up_args(p, services, recreate)?;
        let ran = self
            .exec(self.flavor, &args, &[], Capture::Merged, timeout)
            .await?;
        Ok(ran.log)
    }

    /// `stop` then `rm -f` of the accessories. Never `down -v`: named volumes and their data
    /// stay, and the project's network too.
    pub async fn accessories_down(
        &self,
        p: &Project,
        services: &[String],
        timeout: Duration,
    ) -> Result<String, ComposeError> {
        if services.is_empty() {
            return Ok(String::new());
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let stop = self
            .exec(
                self.flavor,
                &self.stop_args(p, services)?,
                &[],
                Capture::Merged,
                timeout,
            )
            .await?;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let rm = self
            .exec(
                self.flavor,
                &self.rm_args(p, services)?,
                &[],
                Capture::Merged,
                left.max(Duration::from_secs(1)),
            )
            .await?;
        Ok(format!("{}{}", stop.log, rm.log))
    }

    /// `restart -- SERVICES...` of the accessories.
    pub async fn accessories_restart(
        &self,
        p: &Project,
        services: &[String],
        timeout: Duration,
    ) -> Result<String, ComposeError> {
        if services.is_empty() {
            return Ok(String::new());
        }
        let args = self.restart_args(p, services)?;
        let ran = self
            .exec(self.flavor, &args, &[], Capture::Merged, timeout)
            .await?;
        Ok(ran.log)
    }

    /// Starts `logs --no-color --tail N [-f] -- SERVICES...`, its output and errors written into
    /// `out`. The child is killed when dropped; wait for it (or kill it) to end it. Must be called
    /// within a tokio runtime.
    pub fn accessories_logs(
        &self,
        p: &Project,
        services: &[String],
        tail: usize,
        follow: bool,
        out: std::fs::File,
    ) -> Result<Child, ComposeError> {
        if services.is_empty() {
            return Err(ComposeError::NoAccessories);
        }
        let args = self.logs_args(p, services, tail, follow)?;
        let mut cmd = self.command(self.flavor, &args, &[]);
        cmd.stdout(out.try_clone()?).stderr(out);
        cmd.spawn().map_err(|source| ComposeError::Spawn {
            command: self.show(self.flavor, &args),
            source,
        })
    }

    /// The containers of the project, the one-off ones included, with their service and state
    /// (`docker ps -a --filter label=com.docker.compose.project=NAME`, which both flavours label).
    pub async fn ps(&self, p: &Project) -> Result<Vec<ServiceState>, ComposeError> {
        let ran = self.docker(&ps_args(p)).await?;
        Ok(parse_ps(&ran.stdout))
    }

    /// The id of the image `reference` names (`docker image inspect`).
    pub async fn image_id(&self, reference: &str) -> Result<String, ComposeError> {
        let args = ["image", "inspect", "--format", "{{.Id}}", "--", reference];
        let ran = self.docker(&args.map(OsString::from)).await?;
        Ok(first_line(&ran.stdout))
    }

    /// The id of the container `name` names (`docker container inspect`).
    pub async fn container_id(&self, name: &str) -> Result<String, ComposeError> {
        let args = ["container", "inspect", "--format", "{{.Id}}", "--", name];
        let ran = self.docker(&args.map(OsString::from)).await?;
        Ok(first_line(&ran.stdout))
    }
}

/// The override file setting one service's image, removed when dropped.
struct ImageOverride {
    _dir: tempfile::TempDir,
    file: PathBuf,
}

impl ImageOverride {
    fn write(service: &str, image: &str) -> Result<ImageOverride, ComposeError> {
        check_service(service)?;
        check_image(image)?;
        let dir = tempfile::Builder::new()
            .prefix("ferry-compose-")
            .tempdir()?;
        let file = dir.path().join("image.yml");
        // JSON is YAML; no `version:`, so it merges with a file of any version in both flavours
        std::fs::write(&file, image_override(service, image))?;
        Ok(ImageOverride { _dir: dir, file })
    }

    fn path(&self) -> &Path {
        &self.file
    }
}

/// The body of the override file setting `service`'s image to `image`.
fn image_override(service: &str, image: &str) -> String {
    serde_json::json!({ "services": { service: { "image": image } } }).to_string()
}

// ---- validation of what goes on the command line ----

mod args;
mod error;
mod exec;
mod parse;
mod vet;

use args::*;
pub use error::ComposeError;
use error::*;
use exec::*;
use parse::*;

#[cfg(test)]
mod tests;

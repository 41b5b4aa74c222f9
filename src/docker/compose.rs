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

/// What went wrong with compose. Messages name the command and end with compose's own output,
/// which never holds an environment value (those are not on any command line).
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    /// Neither flavour answered its `version` command.
    #[error(
        "docker compose is not installed: tried {tried}; install the compose plugin (`docker compose`) or docker-compose"
    )]
    NotInstalled { tried: String },
    /// Compose rejected the file (syntax, unknown keys, missing file...).
    #[error("the compose file {file} is invalid: {message}")]
    File { file: PathBuf, message: String },
    /// The service named in ferry's config is not in the compose file.
    #[error(
        "the compose file {file} has no service `{service}` (its services: {services}); set `compose.service` to one of them"
    )]
    NoService {
        service: String,
        file: PathBuf,
        services: String,
    },
    /// The routed service has no `build:` section.
    #[error(
        "service `{0}` has no `build:` section: ferry builds the routed service from its Dockerfile at the release commit (give it `build:`; accessories may use `image:`)"
    )]
    NoBuild(String),
    /// `ferry accessories ... logs` of a file whose only service is the routed one.
    #[error("the compose file has no accessories (services besides the routed one)")]
    NoAccessories,
    /// A value the wrapper will not put on compose's command line.
    #[error("invalid {what} `{value}`: {why}")]
    Invalid {
        what: &'static str,
        value: String,
        why: &'static str,
    },
    /// [`Compose::run`] was asked for a container name that is taken.
    #[error("a container named `{0}` already exists")]
    NameInUse(String),
    /// The command could not be started.
    #[error("could not run `{command}`: {source}")]
    Spawn { command: String, source: io::Error },
    /// The command exited unsuccessfully.
    #[error("`{command}` failed ({status}); its last output:\n{tail}")]
    Failed {
        command: String,
        status: String,
        tail: String,
    },
    /// The command outran its timeout and was killed with its process group.
    #[error("`{command}` did not finish within {secs} s and was killed; its last output:\n{tail}")]
    Timeout {
        command: String,
        secs: u64,
        tail: String,
    },
    /// The file asks for what a release may not have ([`Compose::vet`]): every problem found.
    #[error("the compose file {file} is refused: {}", list_problems(.problems))]
    Refused {
        file: PathBuf,
        problems: Vec<String>,
    },
    /// Writing the override file, or reading a command's output.
    #[error("compose: {0}")]
    Io(#[from] io::Error),
}

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

    // ---- argument lists (pure, unit-tested for both flavours) ----

    /// The program and the arguments that select the project, before the subcommand.
    fn base_args(&self, p: &Project, image: Option<&Path>) -> Result<Vec<OsString>, ComposeError> {
        for path in [&p.file, &p.directory].into_iter().chain(&p.overrides) {
            check_absolute("compose path", path)?;
        }
        let mut args: Vec<OsString> = Vec::new();
        if self.flavor == Flavor::V2 {
            args.push("compose".into());
        }
        args.extend(["--ansi", "never", "-p"].map(OsString::from));
        args.push(project_name(&p.name).into());
        args.push("--project-directory".into());
        args.push(p.directory.clone().into());
        for file in std::iter::once(&p.file)
            .chain(&p.overrides)
            .map(PathBuf::as_path)
            .chain(image)
        {
            args.push("-f".into());
            args.push(file.into());
        }
        Ok(args)
    }

    fn services_args(&self, p: &Project) -> Result<Vec<OsString>, ComposeError> {
        let mut args = self.base_args(p, None)?;
        args.extend(["config", "--services"].map(OsString::from));
        Ok(args)
    }

    fn config_args(&self, p: &Project) -> Result<Vec<OsString>, ComposeError> {
        let mut args = self.base_args(p, None)?;
        args.push("config".into());
        Ok(args)
    }

    fn build_args(
        &self,
        p: &Project,
        image: &Path,
        service: &str,
    ) -> Result<Vec<OsString>, ComposeError> {
        check_service(service)?;
        let mut args = self.base_args(p, Some(image))?;
        args.push("build".into());
        if self.flavor == Flavor::V1 {
            // the legacy builder leaves a failed step's container behind without it
            args.push("--force-rm".into());
        }
        args.extend(["--", service].map(OsString::from));
        Ok(args)
    }

    fn run_args(
        &self,
        p: &Project,
        image: &Path,
        spec: &RunSpec,
    ) -> Result<Vec<OsString>, ComposeError> {
        check_service(&spec.service)?;
        check_image(&spec.image)?;
        check_container_name(&spec.name)?;
        let mut args = self.base_args(p, Some(image))?;
        args.extend(["run", "-d", "--no-deps", "--name", &spec.name].map(OsString::from));
        for (key, value) in &spec.labels {
            check_label(key, value)?;
            args.push("-l".into());
            args.push(format!("{key}={value}").into());
        }
        if let Some((host, container)) = spec.publish {
            args.push("--publish".into());
            args.push(format!("127.0.0.1:{host}:{container}").into());
        }
        for (source, target, read_only) in &spec.mounts {
            check_mount(source, target)?;
            let mut volume = source.clone().into_os_string();
            volume.push(":");
            volume.push(target);
            if *read_only {
                volume.push(":ro");
            }
            args.push("-v".into());
            args.push(volume);
        }
        for (name, _) in &spec.env {
            check_env_name(name)?;
            args.push("-e".into());
            args.push(name.into());
        }
        args.push("--".into());
        args.push((&spec.service).into());
        args.extend(spec.command.iter().flatten().map(OsString::from));
        Ok(args)
    }

    fn up_args(
        &self,
        p: &Project,
        services: &[String],
        recreate: bool,
    ) -> Result<Vec<OsString>, ComposeError> {
        let mut args = self.base_args(p, None)?;
        args.extend(["up", "-d", "--no-deps"].map(OsString::from));
        if !recreate {
            args.push("--no-recreate".into());
        }
        push_services(&mut args, services)?;
        Ok(args)
    }

    fn stop_args(&self, p: &Project, services: &[String]) -> Result<Vec<OsString>, ComposeError> {
        let mut args = self.base_args(p, None)?;
        args.push("stop".into());
        push_services(&mut args, services)?;
        Ok(args)
    }

    fn rm_args(&self, p: &Project, services: &[String]) -> Result<Vec<OsString>, ComposeError> {
        let mut args = self.base_args(p, None)?;
        args.extend(["rm", "-f"].map(OsString::from));
        push_services(&mut args, services)?;
        Ok(args)
    }

    fn restart_args(
        &self,
        p: &Project,
        services: &[String],
    ) -> Result<Vec<OsString>, ComposeError> {
        let mut args = self.base_args(p, None)?;
        args.push("restart".into());
        push_services(&mut args, services)?;
        Ok(args)
    }

    fn logs_args(
        &self,
        p: &Project,
        services: &[String],
        tail: usize,
        follow: bool,
    ) -> Result<Vec<OsString>, ComposeError> {
        let mut args = self.base_args(p, None)?;
        args.extend(["logs", "--no-color", "--tail"].map(OsString::from));
        args.push(tail.to_string().into());
        if follow {
            args.push("-f".into());
        }
        push_services(&mut args, services)?;
        Ok(args)
    }

    // ---- running commands ----

    /// The program of a flavour's compose command line.
    fn program(&self, flavor: Flavor) -> &Path {
        match flavor {
            Flavor::V2 => &self.docker,
            Flavor::V1 => &self.v1,
        }
    }

    /// The command as a person would type it (for messages; it holds no secret).
    fn show(&self, flavor: Flavor, args: &[OsString]) -> String {
        show_command(self.program(flavor), args)
    }

    /// A command with compose's environment: [`PASSED_ENV`] from ferry's, plus `env`.
    fn command(&self, flavor: Flavor, args: &[OsString], env: &[(String, String)]) -> Command {
        command(self.program(flavor), args, env)
    }

    async fn query(&self, args: &[OsString]) -> Result<Ran, ComposeError> {
        self.exec(self.flavor, args, &[], Capture::Split, QUERY_TIMEOUT)
            .await
    }

    async fn docker(&self, args: &[OsString]) -> Result<Ran, ComposeError> {
        run_bounded(
            &self.docker,
            args,
            &[],
            Capture::Split,
            QUERY_TIMEOUT,
            STDOUT_CAP,
        )
        .await
    }

    async fn exec(
        &self,
        flavor: Flavor,
        args: &[OsString],
        env: &[(String, String)],
        capture: Capture,
        timeout: Duration,
    ) -> Result<Ran, ComposeError> {
        run_bounded(
            self.program(flavor),
            args,
            env,
            capture,
            timeout,
            STDOUT_CAP,
        )
        .await
    }
}

/// `-- SERVICES...` after checking each name.
fn push_services(args: &mut Vec<OsString>, services: &[String]) -> Result<(), ComposeError> {
    args.push("--".into());
    for service in services {
        check_service(service)?;
        args.push(service.into());
    }
    Ok(())
}

fn ps_args(p: &Project) -> Vec<OsString> {
    let mut args: Vec<OsString> = ["ps", "-a", "--no-trunc", "--filter"]
        .map(OsString::from)
        .to_vec();
    args.push(format!("label=com.docker.compose.project={}", project_name(&p.name)).into());
    args.push("--format".into());
    args.push(
        "{{.ID}}\t{{.Names}}\t{{.State}}\t{{.Label \"com.docker.compose.service\"}}\t{{.Label \"com.docker.compose.oneoff\"}}\t{{.Status}}"
            .into(),
    );
    args
}

/// The lines of `docker ps --format` as [`ps_args`] asks for them.
fn parse_ps(stdout: &str) -> Vec<ServiceState> {
    stdout
        .lines()
        .filter_map(|line| {
            let mut f = line.split('\t');
            let id = f.next()?.trim();
            if id.is_empty() {
                return None;
            }
            Some(ServiceState {
                id: id.to_string(),
                name: f.next()?.to_string(),
                state: f.next()?.to_string(),
                service: f.next()?.to_string(),
                one_off: f.next()?.eq_ignore_ascii_case("true"),
                status: f.next().unwrap_or_default().to_string(),
            })
        })
        .collect()
}

/// The services of `config`'s output (normalized YAML, both flavours).
fn parse_config(stdout: &str) -> Result<Vec<ServiceInfo>, String> {
    use yaml_rust2::{Yaml, YamlLoader};
    let docs = YamlLoader::load_from_str(stdout)
        .map_err(|e| format!("compose's `config` output is not YAML: {e}"))?;
    let Some(services) = docs.first().and_then(|d| d["services"].as_hash()) else {
        return Ok(Vec::new());
    };
    let text = |y: &Yaml| match y {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Real(r) => Some(r.clone()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    };
    Ok(services
        .iter()
        .filter_map(|(name, body)| {
            Some(ServiceInfo {
                name: text(name)?,
                build: !body["build"].is_badvalue() && !body["build"].is_null(),
                image: text(&body["image"]),
                network_mode: text(&body["network_mode"]),
            })
        })
        .collect())
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

fn invalid(what: &'static str, value: &str, why: &'static str) -> ComposeError {
    ComposeError::Invalid {
        what,
        value: value.to_string(),
        why,
    }
}

fn name_like(value: &str, extra: &[char]) -> bool {
    let mut chars = value.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || extra.contains(&c))
}

fn check_service(service: &str) -> Result<(), ComposeError> {
    if name_like(service, &['_', '.', '-']) {
        Ok(())
    } else {
        Err(invalid(
            "service name",
            service,
            "a service name is letters, digits, `_`, `.` and `-`, starting with a letter or digit",
        ))
    }
}

fn check_container_name(name: &str) -> Result<(), ComposeError> {
    if name_like(name, &['_', '.', '-']) && name.len() > 1 {
        Ok(())
    } else {
        Err(invalid(
            "container name",
            name,
            "a container name is letters, digits, `_`, `.` and `-`, starting with a letter or digit",
        ))
    }
}

fn check_image(image: &str) -> Result<(), ComposeError> {
    if name_like(image, &['_', '.', '-', '/', ':', '@']) {
        Ok(())
    } else {
        Err(invalid(
            "image reference",
            image,
            "an image reference is letters, digits and `_.-/:@`, starting with a letter or digit",
        ))
    }
}

fn check_env_name(name: &str) -> Result<(), ComposeError> {
    let mut chars = name.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "environment variable name",
            name,
            "a name is letters, digits and `_`, not starting with a digit",
        ))
    }
}

fn check_label(key: &str, value: &str) -> Result<(), ComposeError> {
    if !name_like(key, &['_', '.', '-', '/']) {
        return Err(invalid(
            "label key",
            key,
            "a label key is letters, digits and `_.-/`, starting with a letter or digit",
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(
            "label value",
            value,
            "a label value has no control characters",
        ));
    }
    Ok(())
}

fn check_absolute(what: &'static str, path: &Path) -> Result<(), ComposeError> {
    if path.is_absolute() {
        Ok(())
    } else {
        Err(invalid(
            what,
            &path.display().to_string(),
            "the path must be absolute",
        ))
    }
}

fn check_mount(source: &Path, target: &str) -> Result<(), ComposeError> {
    check_absolute("mount source", source)?;
    let bad = |s: &str| s.contains([':', ',']) || s.chars().any(char::is_control);
    if bad(&source.to_string_lossy()) {
        return Err(invalid(
            "mount source",
            &source.display().to_string(),
            "a mount path has no `:`, `,` or control characters",
        ));
    }
    if !target.starts_with('/') || bad(target) {
        return Err(invalid(
            "mount target",
            target,
            "a mount target is an absolute path without `:`, `,` or control characters",
        ));
    }
    Ok(())
}

// ---- errors ----

fn no_service(p: &Project, service: &str, services: &[String]) -> ComposeError {
    ComposeError::NoService {
        service: service.to_string(),
        file: p.file.clone(),
        services: if services.is_empty() {
            "none".to_string()
        } else {
            services.join(", ")
        },
    }
}

fn list_problems(problems: &[String]) -> String {
    problems
        .iter()
        .map(|p| format!("\n- {p}"))
        .collect::<String>()
}

/// A failed `config` is the file's fault: its message is compose's.
fn file_error(p: &Project, e: ComposeError) -> ComposeError {
    match e {
        ComposeError::Failed { tail, .. } => ComposeError::File {
            file: p.file.clone(),
            message: tail.trim().to_string(),
        },
        other => other,
    }
}

/// Why a detection probe failed, in a few words.
fn short_reason(e: &ComposeError) -> String {
    match e {
        ComposeError::Spawn { source, .. } if source.kind() == io::ErrorKind::NotFound => {
            "not found".to_string()
        }
        ComposeError::Spawn { source, .. } => source.to_string(),
        ComposeError::Failed { status, tail, .. } => {
            let last = tail.lines().rev().find(|l| !l.trim().is_empty());
            format!("{status}: {}", last.unwrap_or("no output").trim())
        }
        ComposeError::Timeout { secs, .. } => format!("no answer within {secs} s"),
        other => other.to_string(),
    }
}

// ---- child processes with bounded output and a timeout ----

/// How a command's output is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Capture {
    /// Standard output is data (kept up to a cap); standard error is the log.
    Split,
    /// Both go into one pipe, in order: the log.
    Merged,
}

/// A command that succeeded.
#[derive(Debug)]
struct Ran {
    stdout: String,
    /// The last [`TAIL_LINES`] lines of the log.
    log: String,
}

fn program_from_env(var: &str, default: &str) -> PathBuf {
    let name = std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.into());
    let name = PathBuf::from(name);
    if name.components().count() > 1 || name.is_absolute() {
        return name;
    }
    // resolved now, so an instance's own PATH (set in compose's environment) cannot change it
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(&name))
        .find(|candidate| candidate.is_file())
        .unwrap_or(name)
}

fn command(program: &Path, args: &[OsString], env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args).env_clear();
    for key in PASSED_ENV {
        if let Some(value) = std::env::var_os(key) {
            cmd.env(key, value);
        }
    }
    if std::env::var_os("PATH").is_none() {
        cmd.env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
    }
    for (key, value) in env {
        cmd.env(key, value);
    }
    cmd.stdin(Stdio::null()).kill_on_drop(true).process_group(0);
    cmd
}

fn show_command(program: &Path, args: &[OsString]) -> String {
    let mut shown = program.display().to_string();
    for arg in args {
        shown.push(' ');
        shown.push_str(&arg.to_string_lossy());
    }
    shown
}

/// Runs `program args` with compose's environment plus `env`, reads its output bounded, and kills
/// its process group when `timeout` passes.
async fn run_bounded(
    program: &Path,
    args: &[OsString],
    env: &[(String, String)],
    capture: Capture,
    timeout: Duration,
    stdout_cap: usize,
) -> Result<Ran, ComposeError> {
    let shown = show_command(program, args);
    let spawn_error = |source| ComposeError::Spawn {
        command: shown.clone(),
        source,
    };
    let mut cmd = command(program, args, env);
    let (mut child, out, log): (Child, Option<Reader>, Reader) = match capture {
        Capture::Split => {
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            let mut child = cmd.spawn().map_err(spawn_error)?;
            let out = child.stdout.take().map(|o| spawn_tail(o, stdout_cap));
            let err = child.stderr.take().map(|e| spawn_tail(e, LOG_CAP));
            (
                child,
                out,
                err.ok_or_else(|| io::Error::other("no stderr"))?,
            )
        }
        Capture::Merged => {
            let (reader, writer) = io::pipe()?;
            cmd.stdout(writer.try_clone()?).stderr(writer);
            let child = cmd.spawn().map_err(spawn_error)?;
            // the command holds the pipe's write ends: dropped, the read end sees the end
            drop(cmd);
            let reader = tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(reader))?;
            (child, None, spawn_tail(reader, LOG_CAP))
        }
    };
    let pid = child.id();
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => Some(status?),
        Err(_) => {
            if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = child.kill().await;
            None
        }
    };
    let stdout = match out {
        Some(out) => finish_tail(out).await,
        None => Vec::new(),
    };
    let log = tail_lines(&finish_tail(log).await, TAIL_LINES);
    match status {
        None => Err(ComposeError::Timeout {
            command: shown,
            secs: timeout.as_secs(),
            tail: log,
        }),
        Some(status) if !status.success() => Err(ComposeError::Failed {
            command: shown,
            status: status.to_string(),
            tail: if log.trim().is_empty() {
                tail_lines(&stdout, TAIL_LINES)
            } else {
                log
            },
        }),
        Some(_) => Ok(Ran {
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            log,
        }),
    }
}

type Reader = JoinHandle<io::Result<Vec<u8>>>;

/// Reads `stream` to its end in a task, keeping its last `cap` bytes.
fn spawn_tail<R: AsyncRead + Unpin + Send + 'static>(mut stream: R, cap: usize) -> Reader {
    tokio::spawn(async move {
        let mut kept = Vec::new();
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            kept.extend_from_slice(&chunk[..n]);
            if kept.len() > 2 * cap {
                kept.drain(..kept.len() - cap);
            }
        }
        if kept.len() > cap {
            kept.drain(..kept.len() - cap);
        }
        Ok(kept)
    })
}

/// What a reader kept; a stream still open [`DRAIN_TIMEOUT`] after its command ended (held by a
/// process that escaped the group) is given up.
async fn finish_tail(mut reader: Reader) -> Vec<u8> {
    match tokio::time::timeout(DRAIN_TIMEOUT, &mut reader).await {
        Ok(Ok(Ok(kept))) => kept,
        Ok(_) => Vec::new(),
        Err(_) => {
            reader.abort();
            Vec::new()
        }
    }
}

/// The last `n` lines of `bytes`, as text.
fn tail_lines(bytes: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn first_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or_default()
        .to_string()
}

#[path = "compose_vet.rs"]
mod vet;

#[cfg(test)]
#[path = "compose_tests.rs"]
mod tests;

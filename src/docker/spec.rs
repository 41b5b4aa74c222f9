//! What ferry asks of docker, as plain data, and the command lines it becomes: [`RunSpec`]
//! for `docker run`, the `docker build` arguments, the `--env-file` ferry writes, and
//! [`ContainerInfo`] parsed from `docker inspect`.
//!
//! Every option is passed in its `--flag=value` form and every positional argument after
//! `--`, so no name, path or reference can be taken for an option. Nothing here carries a
//! secret: variables reach a container through a file ([`write_env_file`]), never through
//! an argument.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::DockerError;

/// How an instance's container is networked. Either way it is only reachable on loopback:
/// the proxy is the only way in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Network {
    /// `--network=host`: the app binds the loopback address and port ferry gives it.
    Host,
    /// `--publish=127.0.0.1:<host_port>:<container_port>`: the port is published on
    /// loopback only, never on a public address. Needs a network the container can join
    /// (the daemon's default bridge, which dockerd started with `--bridge=none` lacks).
    Publish { host_port: u16, container_port: u16 },
}

/// A bind mount: `--mount=type=bind,source=<source>,target=<target>[,readonly]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// The host path (must exist: docker does not create bind sources given with `--mount`).
    pub source: PathBuf,
    /// The path inside the container.
    pub target: String,
    pub readonly: bool,
}

/// A container to start with `docker run --detach` (never `--rm`: ferry removes its
/// containers itself, after reading their exit code). Holds no secret by design, so its
/// `Debug` is safe to log: variables come through [`RunSpec::env_file`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunSpec {
    /// `--name`: unique on the daemon.
    pub name: String,
    /// An image id (`sha256:…`) or reference; never pulled (`--pull=never`).
    pub image: String,
    /// `--label=k=v`, how ferry finds its containers again (adoption, listing).
    pub labels: Vec<(String, String)>,
    pub network: Network,
    /// `--env-file`: the non-secret variables, written by the caller (see [`write_env_file`]).
    pub env_file: Option<PathBuf>,
    pub mounts: Vec<Mount>,
    /// `--user=uid:gid`.
    pub user: Option<String>,
    /// `--stop-timeout` (seconds, rounded up): what `docker stop` without `-t` waits.
    pub stop_timeout: Duration,
    /// `--init`: docker's init as PID 1, so an app without signal handlers still stops on
    /// SIGTERM.
    pub init: bool,
    /// `--workdir`.
    pub workdir: Option<String>,
    /// Arguments after the image; `None` runs the image's CMD.
    pub command: Option<Vec<String>>,
    /// `--log-opt=max-size=…` and `max-file=3` with the json-file driver, so docker's own
    /// copy of the output is bounded (ferry keeps its rotated app log from `docker logs`).
    pub log_max_size: Option<String>,
}

/// What a successful `docker build` gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildOutput {
    /// The image id, `sha256:<64 hex>`: the release digest of a docker app.
    pub image_id: String,
    /// The build's combined stdout and stderr, its last 64 KiB at most.
    pub output: String,
}

/// A container as `docker inspect` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerInfo {
    /// The full container id.
    pub id: String,
    /// Its name, without docker's leading `/`.
    pub name: String,
    /// The id (`sha256:…`) of the image it runs.
    pub image: String,
    /// docker's state: `created`, `running`, `paused`, `restarting`, `exited`, `dead`…
    pub status: String,
    pub running: bool,
    /// The exit code once it has run and stopped; `None` while it runs or before it started.
    pub exit_code: Option<i32>,
    /// RFC 3339, as docker gives it (`0001-01-01T00:00:00Z` when never started).
    pub started_at: String,
    pub finished_at: String,
    pub labels: BTreeMap<String, String>,
}

/// Whole seconds, rounded up: a grace of 1.2 s is 2 s, never 1.
pub fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn invalid(what: &str, reason: impl Into<String>) -> DockerError {
    DockerError::Invalid {
        what: what.to_string(),
        reason: reason.into(),
    }
}

/// A name, reference or tag as docker takes it: not empty, one line.
fn check_word(what: &str, value: &str) -> Result<(), DockerError> {
    if value.is_empty() {
        return Err(invalid(what, "it is empty"));
    }
    if value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(invalid(
            what,
            format!("{value:?} has a space or control character"),
        ));
    }
    Ok(())
}

/// A label as `--label` and `--filter=label=` take it: a key without `=`.
fn check_label(what: &str, (key, value): &(String, String)) -> Result<(), DockerError> {
    check_word(what, key)?;
    if key.contains('=') {
        return Err(invalid(what, format!("label key {key:?} contains '='")));
    }
    if value.contains(['\n', '\r', '\0']) {
        return Err(invalid(what, format!("label {key} has a line break")));
    }
    Ok(())
}

/// One field of docker's `--mount` value, which is CSV: quoted when it holds a comma or a
/// quote, inner quotes doubled.
fn csv_field(field: String) -> String {
    if field.contains([',', '"']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field
    }
}

/// The `--mount` value of `m`.
pub fn mount_arg(m: &Mount) -> Result<String, DockerError> {
    let source = m
        .source
        .to_str()
        .ok_or_else(|| invalid("mount", format!("{} is not UTF-8", m.source.display())))?;
    if !m.source.is_absolute() {
        return Err(invalid(
            "mount",
            format!("{source} is not an absolute path"),
        ));
    }
    if !m.target.starts_with('/') {
        return Err(invalid(
            "mount",
            format!("target {:?} is not absolute", m.target),
        ));
    }
    for p in [source, m.target.as_str()] {
        if p.contains(['\n', '\r', '\0']) {
            return Err(invalid("mount", format!("{p:?} has a line break")));
        }
    }
    let mut fields = vec![
        "type=bind".to_string(),
        csv_field(format!("source={source}")),
        csv_field(format!("target={}", m.target)),
    ];
    if m.readonly {
        fields.push("readonly".to_string());
    }
    Ok(fields.join(","))
}

/// The arguments of `docker run` for `spec` (after the program name).
pub fn run_args(spec: &RunSpec) -> Result<Vec<OsString>, DockerError> {
    check_word("container name", &spec.name)?;
    check_word("image", &spec.image)?;
    let mut a: Vec<OsString> = vec![
        "run".into(),
        "--detach".into(),
        "--pull=never".into(),
        format!("--name={}", spec.name).into(),
    ];
    for l in &spec.labels {
        check_label("label", l)?;
        a.push(format!("--label={}={}", l.0, l.1).into());
    }
    match spec.network {
        Network::Host => a.push("--network=host".into()),
        Network::Publish {
            host_port,
            container_port,
        } => a.push(format!("--publish=127.0.0.1:{host_port}:{container_port}").into()),
    }
    if let Some(f) = &spec.env_file {
        let mut arg = OsString::from("--env-file=");
        arg.push(f);
        a.push(arg);
    }
    for m in &spec.mounts {
        a.push(format!("--mount={}", mount_arg(m)?).into());
    }
    if let Some(u) = &spec.user {
        check_word("user", u)?;
        a.push(format!("--user={u}").into());
    }
    a.push(format!("--stop-timeout={}", ceil_secs(spec.stop_timeout)).into());
    // what staging's code runs gains nothing: no setuid or file-capability escalation, and
    // no raw sockets to read the loopback traffic of other instances on the host's network
    a.push("--security-opt=no-new-privileges".into());
    a.push("--cap-drop=NET_RAW".into());
    if spec.init {
        a.push("--init".into());
    }
    if let Some(w) = &spec.workdir {
        if !w.starts_with('/') {
            return Err(invalid("workdir", format!("{w:?} is not absolute")));
        }
        a.push(format!("--workdir={w}").into());
    }
    if let Some(size) = &spec.log_max_size {
        check_word("log max size", size)?;
        a.push("--log-driver=json-file".into());
        a.push(format!("--log-opt=max-size={size}").into());
        a.push("--log-opt=max-file=3".into());
    }
    a.push("--".into());
    a.push(spec.image.clone().into());
    if let Some(cmd) = &spec.command {
        a.extend(cmd.iter().map(OsString::from));
    }
    Ok(a)
}

/// The arguments of `docker build` (after the program name).
pub fn build_args(
    context: &Path,
    dockerfile: &Path,
    tag: &str,
    labels: &[(String, String)],
    iidfile: &Path,
) -> Result<Vec<OsString>, DockerError> {
    check_word("tag", tag)?;
    // --force-rm: the legacy builder keeps a failed step's container otherwise
    let mut a: Vec<OsString> = vec!["build".into(), "--force-rm".into()];
    let mut file = OsString::from("--file=");
    file.push(dockerfile);
    a.push(file);
    a.push(format!("--tag={tag}").into());
    for l in labels {
        check_label("label", l)?;
        a.push(format!("--label={}={}", l.0, l.1).into());
    }
    let mut iid = OsString::from("--iidfile=");
    iid.push(iidfile);
    a.push(iid);
    a.push("--".into());
    a.push(context.into());
    Ok(a)
}

/// The `--filter` arguments selecting containers that carry every label of `labels`.
pub fn label_filters(labels: &[(String, String)]) -> Result<Vec<OsString>, DockerError> {
    labels
        .iter()
        .map(|l| {
            check_label("label filter", l)?;
            Ok(format!("--filter=label={}={}", l.0, l.1).into())
        })
        .collect()
}

/// Writes `vars` as a docker `--env-file` at `path` (mode 0600, replacing any file there).
///
/// docker reads such a file literally: `NAME=value` per line, no quoting, no escapes, and a
/// line without `=` would take the variable from the *docker CLI's own* environment. So
/// names must be plain (letters, digits, `_`, not starting with a digit) and values one
/// line; anything else is refused rather than mangled.
pub fn write_env_file(path: &Path, vars: &[(String, String)]) -> Result<(), DockerError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut text = String::new();
    for (name, value) in vars {
        let plain = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !plain {
            return Err(invalid(
                "env file",
                format!("{name:?} is not a variable name"),
            ));
        }
        if value.contains(['\n', '\r', '\0']) {
            // the name only: the value may be a secret
            return Err(invalid(
                "env file",
                format!("the value of {name} has a line break, which an env file cannot carry"),
            ));
        }
        text.push_str(name);
        text.push('=');
        text.push_str(value);
        text.push('\n');
    }
    let io = |source| DockerError::Io {
        what: format!("writing {}", path.display()),
        source,
    };
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawContainer {
    id: String,
    name: String,
    image: String,
    state: RawState,
    config: RawConfig,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawState {
    status: String,
    running: bool,
    exit_code: i32,
    #[serde(default)]
    started_at: String,
    #[serde(default)]
    finished_at: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawConfig {
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
}

/// The containers of `docker container inspect`'s JSON array.
pub fn parse_inspect(json: &str) -> Result<Vec<ContainerInfo>, DockerError> {
    let raw: Vec<RawContainer> = serde_json::from_str(json).map_err(|e| DockerError::Parse {
        what: "inspect".to_string(),
        message: e.to_string(),
    })?;
    Ok(raw
        .into_iter()
        .map(|r| {
            let running = r.state.running;
            let exit_code = (!running && r.state.status != "created").then_some(r.state.exit_code);
            ContainerInfo {
                id: r.id,
                name: r.name.trim_start_matches('/').to_string(),
                image: r.image,
                status: r.state.status,
                running,
                exit_code,
                started_at: r.state.started_at,
                finished_at: r.state.finished_at,
                labels: r.config.labels.unwrap_or_default(),
            }
        })
        .collect())
}

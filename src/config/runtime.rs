//! `[app] runtime` and its tables: how the app's instances run.
//!
//! - `runtime = "process"` (the default): `start` through `sh -c` in the release dir.
//! - `runtime = "docker"`: the release is an image built from the Dockerfile at the release
//!   commit (`[app.docker] dockerfile`, `context`); an instance is a container of it.
//! - `runtime = "compose"`: `[app.compose] file` and `service`: the routed service is built at
//!   the release commit and started per release; the file's other services (accessories) run
//!   once per environment.
//!
//! `[app.docker]`'s container keys (`shared_at`, `secrets_at`, `network`, `user`) apply to
//! both container runtimes. A `[app.compose]` or `[app.docker]` table implies its runtime; an
//! explicit `runtime` must agree with the tables given.

use serde::Deserialize;
use toml::Spanned;

use super::Diagnostic;
use super::raw::Fail;

/// How the app's instances run.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Runtime {
    #[default]
    Process,
    Docker {
        image: ImageBuild,
        container: Container,
    },
    Compose {
        compose: ComposeFile,
        container: Container,
    },
}

impl Runtime {
    /// `process`, `docker` or `compose`.
    pub fn name(&self) -> &'static str {
        match self {
            Runtime::Process => "process",
            Runtime::Docker { .. } => "docker",
            Runtime::Compose { .. } => "compose",
        }
    }

    /// The container settings of a container runtime.
    pub fn container(&self) -> Option<&Container> {
        match self {
            Runtime::Process => None,
            Runtime::Docker { container, .. } | Runtime::Compose { container, .. } => {
                Some(container)
            }
        }
    }
}

/// Where the image of a `docker` app is built from, relative to the release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageBuild {
    pub dockerfile: String,
    pub context: String,
}

/// The compose file of a `compose` app and its routed service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComposeFile {
    /// Relative to the release.
    pub file: String,
    pub service: String,
}

/// How a container instance is run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    /// Where the environment's shared dir is mounted (read-write).
    pub shared_at: String,
    /// Where the environment's `env_file` is mounted, read-only (`FERRY_ENV_FILE` names it).
    pub secrets_at: String,
    pub network: Network,
    pub user: ContainerUser,
}

/// How a container instance is reached on 127.0.0.1:PORT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// The host's network: the app binds 127.0.0.1:$PORT itself (`$HOST` says 127.0.0.1).
    Host,
    /// Its own network, with `$PORT` published on 127.0.0.1 only.
    Publish,
}

/// Who a container instance runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerUser {
    /// The environment's user (as process instances), when ferry has one; else the image's.
    Environment,
    /// The image's `USER`.
    Image,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDocker {
    dockerfile: Option<Spanned<String>>,
    context: Option<Spanned<String>>,
    shared_at: Option<Spanned<String>>,
    secrets_at: Option<Spanned<String>>,
    network: Option<Spanned<String>>,
    user: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCompose {
    file: Option<Spanned<String>>,
    service: Spanned<String>,
}

/// The app's runtime keys as written.
pub(super) struct RawRuntime<'a> {
    pub runtime: Option<&'a Spanned<String>>,
    pub docker: Option<&'a Spanned<RawDocker>>,
    pub compose: Option<&'a Spanned<RawCompose>>,
    /// `start`, if given, and the span to point at when it is missing.
    pub start: Option<&'a Spanned<String>>,
    pub app_span: std::ops::Range<usize>,
}

pub(super) fn validate(raw: RawRuntime<'_>, fail: &Fail) -> Result<Runtime, Diagnostic> {
    let kind = match raw.runtime {
        Some(r) => match r.get_ref().as_str() {
            k @ ("process" | "docker" | "compose") => k,
            other => {
                return Err(fail(
                    r.span(),
                    format!("runtime \"{other}\" is not known"),
                    "use \"process\" (the default), \"docker\" or \"compose\"",
                ));
            }
        },
        None if raw.compose.is_some() => "compose",
        None if raw.docker.is_some() => "docker",
        None => "process",
    };
    if let Some(r) = raw.runtime {
        if kind != "compose" && raw.compose.is_some() {
            return Err(fail(
                r.span(),
                format!("runtime = \"{kind}\" but [app.compose] is set"),
                "use runtime = \"compose\", or remove [app.compose]",
            ));
        }
        if kind == "process" && raw.docker.is_some() {
            return Err(fail(
                r.span(),
                "runtime = \"process\" but [app.docker] is set".into(),
                "use runtime = \"docker\", or remove [app.docker]",
            ));
        }
    }
    if kind == "process" {
        match raw.start {
            Some(start) if start.get_ref().trim().is_empty() => {
                return Err(fail(
                    start.span(),
                    "`start` is empty".into(),
                    "write the command that runs one instance, like \"./server --port $PORT\"",
                ));
            }
            Some(_) => {}
            None => {
                return Err(fail(
                    raw.app_span,
                    "[app] has no `start`".into(),
                    "add `start = \"./server --port $PORT\"` to [app], or choose a container runtime",
                ));
            }
        }
        return Ok(Runtime::Process);
    }
    if let Some(start) = raw.start
        && start.get_ref().trim().is_empty()
    {
        return Err(fail(
            start.span(),
            "`start` is empty".into(),
            "leave `start` out to run the image's own command",
        ));
    }
    let docker = raw.docker.map(Spanned::get_ref);
    let container = container(docker, fail)?;
    if kind == "docker" {
        let image = ImageBuild {
            dockerfile: relative(
                docker.and_then(|d| d.dockerfile.as_ref()),
                "Dockerfile",
                fail,
            )?,
            context: match docker.and_then(|d| d.context.as_ref()) {
                Some(c) if c.get_ref() == "." => ".".into(),
                c => relative(c, ".", fail)?,
            },
        };
        return Ok(Runtime::Docker { image, container });
    }
    if let Some(d) = docker
        && let Some(key) = d.dockerfile.as_ref().or(d.context.as_ref())
    {
        return Err(fail(
            key.span(),
            "`dockerfile` and `context` do not apply to runtime = \"compose\"".into(),
            "the compose file's `build:` of the routed service says how its image is built",
        ));
    }
    let Some(compose) = raw.compose.map(Spanned::get_ref) else {
        return Err(fail(
            raw.runtime.map_or(raw.app_span, Spanned::span),
            "runtime = \"compose\" needs [app.compose]".into(),
            "add `compose = { file = \"docker-compose.yml\", service = \"web\" }` to [app]",
        ));
    };
    let service = compose.service.get_ref().trim();
    if service.is_empty() {
        return Err(fail(
            compose.service.span(),
            "compose `service` is empty".into(),
            "name the service the proxy routes to, like \"web\"",
        ));
    }
    Ok(Runtime::Compose {
        compose: ComposeFile {
            file: relative(compose.file.as_ref(), "docker-compose.yml", fail)?,
            service: service.to_string(),
        },
        container,
    })
}

/// A path relative to the release and inside it (`default` when not given).
fn relative(
    value: Option<&Spanned<String>>,
    default: &str,
    fail: &Fail,
) -> Result<String, Diagnostic> {
    let Some(value) = value else {
        return Ok(default.to_string());
    };
    if !super::raw::relative_inside(value.get_ref()) {
        return Err(fail(
            value.span(),
            format!(
                "\"{}\" must be relative and stay inside the release",
                value.get_ref()
            ),
            "write a path relative to the app's root, like \"Dockerfile\" or \"deploy/compose.yml\"",
        ));
    }
    Ok(value.get_ref().clone())
}

fn container(raw: Option<&RawDocker>, fail: &Fail) -> Result<Container, Diagnostic> {
    let target = |value: Option<&Spanned<String>>, default: &str| {
        let Some(value) = value else {
            return Ok(default.to_string());
        };
        let v = value.get_ref();
        if !v.starts_with('/')
            || v == "/"
            || v.contains([',', ':'])
            || v.contains(char::is_whitespace)
        {
            return Err(fail(
                value.span(),
                format!("\"{v}\" is not a path for a mount in the container"),
                "write an absolute path without ',' ':' or spaces, like \"/app/shared\"",
            ));
        }
        Ok(v.clone())
    };
    let shared_at = target(raw.and_then(|d| d.shared_at.as_ref()), "/shared")?;
    let secrets_at = target(
        raw.and_then(|d| d.secrets_at.as_ref()),
        "/run/secrets/ferry.env",
    )?;
    let network = match raw.and_then(|d| d.network.as_ref()) {
        None => Network::Host,
        Some(n) => match n.get_ref().as_str() {
            "host" => Network::Host,
            "publish" => Network::Publish,
            other => {
                return Err(fail(
                    n.span(),
                    format!("network \"{other}\" is not known"),
                    "use \"host\" (the default: the app binds 127.0.0.1:$PORT) or \"publish\" ($PORT published on 127.0.0.1)",
                ));
            }
        },
    };
    let user = match raw.and_then(|d| d.user.as_ref()) {
        None => ContainerUser::Environment,
        Some(u) => match u.get_ref().as_str() {
            "environment" => ContainerUser::Environment,
            "image" => ContainerUser::Image,
            other => {
                return Err(fail(
                    u.span(),
                    format!("user \"{other}\" is not known"),
                    "use \"environment\" (the default: the environment's user) or \"image\" (the image's USER)",
                ));
            }
        },
    };
    Ok(Container {
        shared_at,
        secrets_at,
        network,
        user,
    })
}

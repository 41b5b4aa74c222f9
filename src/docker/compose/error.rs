//! What can go wrong running compose, and how it is told.

use std::io;
use std::path::PathBuf;

use super::*;

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

pub(super) fn no_service(p: &Project, service: &str, services: &[String]) -> ComposeError {
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

pub(super) fn list_problems(problems: &[String]) -> String {
    problems
        .iter()
        .map(|p| format!("\n- {p}"))
        .collect::<String>()
}

/// A failed `config` is the file's fault: its message is compose's.
pub(super) fn file_error(p: &Project, e: ComposeError) -> ComposeError {
    match e {
        ComposeError::Failed { tail, .. } => ComposeError::File {
            file: p.file.clone(),
            message: tail.trim().to_string(),
        },
        other => other,
    }
}

/// Why a detection probe failed, in a few words.
pub(super) fn short_reason(e: &ComposeError) -> String {
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

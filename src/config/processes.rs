//! `[processes]`: the app's process types.
//!
//! `web` is what the proxy routes to (what `[app] start` says when there is no
//! `[processes]`); every other name is a process type run beside it, never routed:
//!
//! ```toml
//! [processes]
//! web = "./server --port $PORT"
//! worker = "./worker"
//! scheduler = { command = "./cron", count = 1, stop_timeout = "30s" }
//! ```
//!
//! Names are `[a-z][a-z0-9_-]*` (`app` and `access` name the environment's other logs);
//! `count` is 0..=64 (0: defined, not run; default 1); `web`'s is 1 (the proxy routes one
//! instance); `stop_timeout` defaults to `[app] stop_timeout`.

use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use toml::Spanned;

use super::Diagnostic;
use super::duration::HumanDuration;
use super::raw::Fail;

/// One process type besides `web`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessType {
    pub name: String,
    /// Run through `sh -c` in the release dir (a container's command with a container
    /// runtime).
    pub command: String,
    /// Instances per release.
    pub count: u32,
    /// Between SIGTERM to its group and SIGKILL when its release is replaced.
    pub stop_timeout: Duration,
}

/// The most instances of one process type.
pub const MAX_COUNT: i64 = 64;

/// The routed process type.
pub const WEB: &str = "web";

/// `[processes]` as written.
pub(super) type RawProcesses = std::collections::BTreeMap<Spanned<String>, Spanned<RawProcess>>;

/// A process type as written: a command, or a table.
pub(super) enum RawProcess {
    Command(String),
    Table(RawProcessTable),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProcessTable {
    command: Option<Spanned<String>>,
    count: Option<Spanned<i64>>,
    stop_timeout: Option<Spanned<HumanDuration>>,
}

impl<'de> Deserialize<'de> for RawProcess {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<RawProcess, D::Error> {
        struct Either;
        impl<'de> Visitor<'de> for Either {
            type Value = RawProcess;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a command, or a table with command, count and stop_timeout")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawProcess, E> {
                Ok(RawProcess::Command(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawProcess, A::Error> {
                RawProcessTable::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawProcess::Table)
            }
        }
        d.deserialize_any(Either)
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 40
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// `[processes] web`'s command, if given, for `[app] start` to take; both given is refused,
/// pointing at `web`.
pub(super) fn web_start(
    raw: &RawProcesses,
    start: Option<&Spanned<String>>,
    fail: &Fail,
) -> Result<Option<Spanned<String>>, Diagnostic> {
    let Some((key, value)) = raw.iter().find(|(k, _)| k.get_ref() == WEB) else {
        return Ok(None);
    };
    if let Some(start) = start {
        return Err(fail(
            key.span(),
            format!(
                "the web process is given twice: [processes] web and [app] start (\"{}\")",
                start.get_ref()
            ),
            "keep one: remove `start` from [app], or `web` from [processes]",
        ));
    }
    let command = match value.get_ref() {
        RawProcess::Command(c) => Spanned::new(value.span(), c.clone()),
        RawProcess::Table(t) => {
            if let Some(count) = t.count.as_ref().filter(|c| *c.get_ref() != 1) {
                return Err(fail(
                    count.span(),
                    format!("web: count = {} is not allowed", count.get_ref()),
                    "the proxy routes one web instance: leave `count` out (or write 1)",
                ));
            }
            if let Some(stop) = &t.stop_timeout {
                return Err(fail(
                    stop.span(),
                    "web: `stop_timeout` belongs to [app]".into(),
                    "write `stop_timeout` in [app]: it applies to the web instance",
                ));
            }
            match &t.command {
                Some(c) => c.clone(),
                None => {
                    return Err(fail(
                        value.span(),
                        "web: `command` is missing".into(),
                        "write web = \"./server --port $PORT\"",
                    ));
                }
            }
        }
    };
    Ok(Some(command))
}

/// Every process type but `web`, in name order; `stop_timeout` defaults to `default_stop`.
pub(super) fn validate(
    raw: RawProcesses,
    default_stop: Duration,
    fail: &Fail,
) -> Result<Vec<ProcessType>, Diagnostic> {
    let mut out = Vec::new();
    for (key, value) in raw {
        let name = key.get_ref();
        if !valid_name(name) || ["app", "access"].contains(&name.as_str()) {
            return Err(fail(
                key.span(),
                format!("process name \"{name}\" is not allowed"),
                "use lowercase letters, digits, '_' and '-', starting with a letter, like \"worker\" (not \"app\" or \"access\": they name other logs)",
            ));
        }
        if name == WEB {
            continue;
        }
        let span = value.span();
        let (command, count, stop) = match value.into_inner() {
            RawProcess::Command(c) => (Spanned::new(span.clone(), c), None, None),
            RawProcess::Table(t) => {
                let Some(command) = t.command else {
                    return Err(fail(
                        span,
                        format!("{name}: `command` is missing"),
                        "write the command that runs one instance, like { command = \"./worker\", count = 2 }",
                    ));
                };
                (command, t.count, t.stop_timeout)
            }
        };
        if command.get_ref().trim().is_empty() {
            return Err(fail(
                command.span(),
                format!("{name}: the command is empty"),
                "write the command that runs one instance, like \"./worker\"",
            ));
        }
        let count = match count {
            None => 1,
            Some(c) if (0..=MAX_COUNT).contains(c.get_ref()) => *c.get_ref() as u32,
            Some(c) => {
                return Err(fail(
                    c.span(),
                    format!("{name}: count = {} is out of range", c.get_ref()),
                    "write a count from 0 (defined, not run) to 64",
                ));
            }
        };
        out.push(ProcessType {
            name: key.into_inner(),
            command: command.into_inner(),
            count,
            stop_timeout: stop.map_or(default_stop, |s| s.into_inner().0),
        });
    }
    Ok(out)
}

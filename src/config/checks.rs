//! `[[check]]`: checks run against a new instance after its health checks pass and before
//! it takes traffic (the deploy's `check` step, see `pipeline/checks.rs`), and each
//! environment's preview address (`preview_listen`, `preview_hosts`).
//!
//! ```toml
//! [[check]]
//! name = "status API"              # default: the method and path, or the command
//! path = "/api/status"             # an HTTP request to the new instance
//! method = "GET"                   # default GET
//! expect_status = 200              # default 200
//! json_pointer = "/db/ok"          # with `expect`: the body's JSON value there must equal it
//! expect = true
//! timeout = "10s"                  # default 10s (a command: [app] command_timeout)
//! environments = ["staging"]       # default: every environment
//!
//! [[check]]
//! command = "./smoke.sh"           # run like a hook, given URL of the new instance
//! ```
//!
//! The checks are one top-level list, each one for every environment unless its
//! `environments` names the ones it is for (config table names): one smoke test usually
//! serves staging and production alike.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::Diagnostic;
use super::duration::HumanDuration;
use super::raw::Fail;

/// How long an HTTP check waits for its answer unless it says otherwise.
pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// The methods an HTTP check may use.
const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// One `[[check]]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCheck {
    name: Option<Spanned<String>>,
    path: Option<Spanned<String>>,
    method: Option<Spanned<String>>,
    expect_status: Option<Spanned<i64>>,
    json_pointer: Option<Spanned<String>>,
    expect: Option<Spanned<toml::Value>>,
    command: Option<Spanned<String>>,
    timeout: Option<HumanDuration>,
    environments: Option<Vec<Spanned<String>>>,
}

/// One check run against a new instance before it takes traffic.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub name: String,
    pub kind: CheckKind,
    pub timeout: Duration,
    /// The environments (config table names) it is for; empty: every one.
    pub environments: Vec<String>,
}

/// What a check does.
#[derive(Debug, Clone, PartialEq)]
pub enum CheckKind {
    /// A request to the new instance, answered with `expect_status` (and, with `json`, a
    /// JSON body holding the value at the pointer).
    Http {
        method: String,
        path: String,
        expect_status: u16,
        /// (JSON pointer, expected value).
        json: Option<(String, serde_json::Value)>,
    },
    /// A command run like a hook (confined, in the release dir), given `URL`.
    Command(String),
}

impl Check {
    /// Whether it runs for environment `group` (a config table name).
    pub fn applies_to(&self, group: &str) -> bool {
        self.environments.is_empty() || self.environments.iter().any(|e| e == group)
    }
}

/// Validates every `[[check]]`; `groups` are the environments' table names and
/// `command_timeout` the default of command checks.
pub(super) fn validate(
    raw: Vec<Spanned<RawCheck>>,
    groups: &[String],
    command_timeout: Duration,
    fail: &Fail,
) -> Result<Vec<Check>, Diagnostic> {
    let mut out: Vec<Check> = Vec::new();
    for raw in raw {
        let span = raw.span();
        let check = one(
            raw.into_inner(),
            span.clone(),
            groups,
            command_timeout,
            fail,
        )?;
        if out.iter().any(|c| c.name == check.name) {
            return Err(fail(
                span,
                format!("two checks are named \"{}\"", check.name),
                "give each [[check]] its own `name`",
            ));
        }
        out.push(check);
    }
    Ok(out)
}

fn one(
    raw: RawCheck,
    span: std::ops::Range<usize>,
    groups: &[String],
    command_timeout: Duration,
    fail: &Fail,
) -> Result<Check, Diagnostic> {
    let http_keys = [
        raw.method.as_ref().map(|m| ("method", m.span())),
        raw.expect_status
            .as_ref()
            .map(|s| ("expect_status", s.span())),
        raw.json_pointer
            .as_ref()
            .map(|p| ("json_pointer", p.span())),
        raw.expect.as_ref().map(|e| ("expect", e.span())),
    ];
    let (kind, default_name, default_timeout) = match (raw.path, raw.command) {
        (Some(_), Some(command)) => {
            return Err(fail(
                command.span(),
                "a [[check]] has both `path` and `command`".into(),
                "a check is either an HTTP request (path = \"/health/deep\") or a command (command = \"./smoke.sh\"): write two checks",
            ));
        }
        (None, None) => {
            return Err(fail(
                span,
                "a [[check]] has neither `path` nor `command`".into(),
                "add path = \"/api/status\" (an HTTP request to the new instance) or command = \"./smoke.sh\" (given URL)",
            ));
        }
        (None, Some(command)) => {
            if let Some((key, span)) = http_keys.into_iter().flatten().next() {
                return Err(fail(
                    span,
                    format!("`{key}` is for HTTP checks, and this one runs a command"),
                    "remove it, or make the check an HTTP request with path = \"/...\"",
                ));
            }
            if command.get_ref().trim().is_empty() {
                return Err(fail(
                    command.span(),
                    "a [[check]] has an empty command".into(),
                    "write a command, like \"./smoke.sh\"",
                ));
            }
            let command = command.into_inner();
            (
                CheckKind::Command(command.clone()),
                command,
                command_timeout,
            )
        }
        (Some(path), None) => {
            let name = format!(
                "{} {}",
                raw.method.as_ref().map_or("GET", |m| m.get_ref().as_str()),
                path.get_ref()
            );
            let kind = http(
                path,
                raw.method,
                raw.expect_status,
                (raw.json_pointer, raw.expect),
                fail,
            )?;
            (kind, name, DEFAULT_HTTP_TIMEOUT)
        }
    };
    let name = match raw.name {
        None => default_name,
        Some(n) if !n.get_ref().trim().is_empty() && !n.get_ref().chars().any(char::is_control) => {
            n.into_inner()
        }
        Some(n) => {
            return Err(fail(
                n.span(),
                "a check's name must be one line of text".into(),
                "write a short name, like \"smoke tests\"",
            ));
        }
    };
    let timeout = raw.timeout.map_or(default_timeout, |t| t.0);
    if timeout.is_zero() {
        return Err(fail(
            span,
            format!("check \"{name}\" has a timeout of 0"),
            "write a timeout like \"30s\", or leave it out",
        ));
    }
    let mut environments = Vec::new();
    for e in raw.environments.unwrap_or_default() {
        if !groups.contains(e.get_ref()) {
            return Err(fail(
                e.span(),
                format!(
                    "check \"{name}\" names environment \"{}\", which is not defined",
                    e.get_ref()
                ),
                &format!(
                    "name environments of this file ({}), or leave `environments` out to run it everywhere",
                    groups.join(", ")
                ),
            ));
        }
        environments.push(e.into_inner());
    }
    Ok(Check {
        name,
        kind,
        timeout,
        environments,
    })
}

fn http(
    path: Spanned<String>,
    method: Option<Spanned<String>>,
    status: Option<Spanned<i64>>,
    (pointer, expect): (Option<Spanned<String>>, Option<Spanned<toml::Value>>),
    fail: &Fail,
) -> Result<CheckKind, Diagnostic> {
    let p = path.get_ref();
    if !p.starts_with('/') || p.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(fail(
            path.span(),
            format!("check path \"{p}\" is not a path"),
            "write a path on the new instance starting with '/', like \"/api/status?deep=1\"",
        ));
    }
    let method = match method {
        None => "GET".to_string(),
        Some(m) if METHODS.contains(&m.get_ref().as_str()) => m.into_inner(),
        Some(m) => {
            return Err(fail(
                m.span(),
                format!("check method \"{}\" is not one ferry sends", m.get_ref()),
                &format!("write one of {} (upper case)", METHODS.join(", ")),
            ));
        }
    };
    let expect_status = match status {
        None => 200,
        // 1xx are interim answers, never the final one a check reads; a 3xx is the
        // answer itself (a check never follows redirects)
        Some(s) if (200..=599).contains(s.get_ref()) => *s.get_ref() as u16,
        Some(s) if (100..200).contains(s.get_ref()) => {
            return Err(fail(
                s.span(),
                format!(
                    "expect_status = {} is an interim answer, never a final one",
                    s.get_ref()
                ),
                "write the final status the check must get, from 200 to 599, like 200",
            ));
        }
        Some(s) => {
            return Err(fail(
                s.span(),
                format!("expect_status = {} is not an HTTP status", s.get_ref()),
                "write a status from 200 to 599, like 200",
            ));
        }
    };
    let json = match (pointer, expect) {
        (None, None) => None,
        (Some(p), Some(e)) => {
            let pointer = p.get_ref();
            if !pointer.is_empty() && !pointer.starts_with('/') {
                return Err(fail(
                    p.span(),
                    format!("json_pointer \"{pointer}\" is not a JSON pointer"),
                    "write a pointer like \"/status\" or \"/checks/0/ok\" (RFC 6901), or \"\" for the whole body",
                ));
            }
            if pointer
                .split('~')
                .skip(1)
                .any(|rest| !rest.starts_with(['0', '1']))
            {
                return Err(fail(
                    p.span(),
                    format!("json_pointer \"{pointer}\" has a '~' that is not ~0 or ~1"),
                    "in a JSON pointer write '~' as ~0 and '/' inside a key as ~1 (RFC 6901)",
                ));
            }
            if method == "HEAD" {
                return Err(fail(
                    p.span(),
                    "a HEAD check has no body to look into with `json_pointer`".into(),
                    "use method = \"GET\" (the default), or remove json_pointer and expect",
                ));
            }
            let span = e.span();
            let value = json_value(e.into_inner()).ok_or_else(|| {
                fail(
                    span,
                    "`expect` cannot be a date, a time, nan or inf (JSON has none of them)".into(),
                    "write the value as JSON has it: a string, number, boolean, array or table",
                )
            })?;
            Some((p.into_inner(), value))
        }
        (Some(p), None) => {
            return Err(fail(
                p.span(),
                "a check has `json_pointer` but no `expect`".into(),
                "add the value the body must hold there, like expect = \"ok\"",
            ));
        }
        (None, Some(e)) => {
            return Err(fail(
                e.span(),
                "a check has `expect` but no `json_pointer`".into(),
                "add where in the JSON body to look, like json_pointer = \"/status\"",
            ));
        }
    };
    Ok(CheckKind::Http {
        method,
        path: path.into_inner(),
        expect_status,
        json,
    })
}

/// An environment's `preview_listen` (an address of its own, checked against every other
/// listener) and `preview_hosts` (claimed on the front door); neither with several slots.
pub(super) fn preview(
    name: &str,
    (listen, hosts): (Option<&Spanned<String>>, &[Spanned<String>]),
    slots: Option<(std::ops::Range<usize>, u32)>,
    fail: &Fail,
    (taken, claims): (
        &mut std::collections::HashMap<std::net::SocketAddr, String>,
        &mut super::frontdoor::Claims,
    ),
) -> Result<(Option<std::net::SocketAddr>, Vec<crate::hosts::HostPattern>), Diagnostic> {
    if let Some((span, n)) = slots
        && n > 1
        && (listen.is_some() || !hosts.is_empty())
    {
        return Err(fail(
            span,
            format!("environment {name} has {n} slots and a preview address"),
            "a preview address reaches one environment's new instance: give each slot its own [environments.NAME] table, or remove preview_listen and preview_hosts",
        ));
    }
    let addr = match listen {
        None => None,
        Some(l) => {
            let addr = super::raw::parse_addr(l, fail)?;
            if let Some(other) = taken.get(&addr) {
                return Err(fail(
                    l.span(),
                    format!(
                        "preview_listen address {addr} of environment {name} is already used by {other}"
                    ),
                    "give the preview address a port of its own",
                ));
            }
            taken.insert(addr, format!("the preview of environment {name}"));
            Some(addr)
        }
    };
    Ok((addr, claims.preview_hosts(name, hosts, fail)?))
}

/// `value` as JSON (`None` for TOML's dates and times, which JSON has not).
fn json_value(value: toml::Value) -> Option<serde_json::Value> {
    Some(match value {
        toml::Value::String(s) => serde_json::Value::String(s),
        toml::Value::Integer(i) => serde_json::Value::from(i),
        toml::Value::Float(f) => serde_json::Number::from_f64(f).map(serde_json::Value::Number)?,
        toml::Value::Boolean(b) => serde_json::Value::Bool(b),
        toml::Value::Datetime(_) => return None,
        toml::Value::Array(list) => serde_json::Value::Array(
            list.into_iter()
                .map(json_value)
                .collect::<Option<Vec<_>>>()?,
        ),
        toml::Value::Table(table) => serde_json::Value::Object(
            table
                .into_iter()
                .map(|(k, v)| Some((k, json_value(v)?)))
                .collect::<Option<serde_json::Map<_, _>>>()?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::{Check, CheckKind, DEFAULT_HTTP_TIMEOUT};
    use crate::config::Config;
    use std::time::Duration;

    const HEAD: &str = "[app]\nname = \"a\"\nrepo = \"https://example.com/r.git\"\nstart = \"true\"\ncommand_timeout = \"3m\"\n\
         [environments.staging]\nlisten = \"127.0.0.1:18081\"\n[environments.production]\nlisten = \"127.0.0.1:18082\"\n";

    fn parse(checks: &str) -> Result<Config, String> {
        Config::parse(
            std::path::Path::new("/tmp/ferry.toml"),
            &format!("{HEAD}{checks}"),
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn checks_parse_with_their_defaults() {
        let c = parse(
            "[[check]]\npath = \"/api/status\"\n\
             [[check]]\nname = \"db\"\npath = \"/deep\"\nmethod = \"POST\"\nexpect_status = 204\njson_pointer = \"/db/ok\"\nexpect = { up = true, n = [1, 2.5] }\ntimeout = \"2s\"\nenvironments = [\"staging\"]\n\
             [[check]]\ncommand = \"./smoke.sh\"\n",
        )
        .unwrap();
        assert_eq!(
            c.checks[0],
            Check {
                name: "GET /api/status".into(),
                kind: CheckKind::Http {
                    method: "GET".into(),
                    path: "/api/status".into(),
                    expect_status: 200,
                    json: None,
                },
                timeout: DEFAULT_HTTP_TIMEOUT,
                environments: vec![],
            }
        );
        let CheckKind::Http { json, .. } = &c.checks[1].kind else {
            panic!("an HTTP check")
        };
        assert_eq!(
            json,
            &Some((
                "/db/ok".into(),
                serde_json::json!({"up": true, "n": [1, 2.5]})
            ))
        );
        assert_eq!(c.checks[1].timeout, Duration::from_secs(2));
        assert!(c.checks[1].applies_to("staging") && !c.checks[1].applies_to("production"));
        assert_eq!(c.checks[2].kind, CheckKind::Command("./smoke.sh".into()));
        assert_eq!(c.checks[2].name, "./smoke.sh");
        assert_eq!(c.checks[2].timeout, Duration::from_secs(180));
        assert!(c.checks[2].applies_to("production"));
        // none at all is the default
        assert!(parse("").unwrap().checks.is_empty());
    }

    #[test]
    fn preview_addresses_parse_and_clashes_are_refused() {
        let front = "[server]\nlisten = \"127.0.0.1:17070\"\nhttp = \"127.0.0.1:17080\"\n";
        let text = HEAD.replace(
            "listen = \"127.0.0.1:18081\"\n",
            "listen = \"127.0.0.1:18081\"\npreview_listen = \"127.0.0.1:18181\"\npreview_hosts = [\"preview.staging.test\"]\n",
        ) + front;
        let c = Config::parse(std::path::Path::new("/tmp/ferry.toml"), &text).unwrap();
        let staging = c.environment("staging").unwrap();
        assert_eq!(staging.preview_listen, "127.0.0.1:18181".parse().ok());
        assert_eq!(
            staging.preview_urls(&c.server),
            [
                "http://127.0.0.1:18181",
                "http://preview.staging.test:17080"
            ]
        );
        let servers = crate::config::ServerConfig::single(c);
        assert!(servers.listeners().contains(&(
            "staging.preview".to_string(),
            "127.0.0.1:18181".parse().unwrap()
        )));
        for (from, to, says) in [
            (
                "preview_listen = \"127.0.0.1:18181\"",
                "preview_listen = \"127.0.0.1:18082\"",
                "already used by",
            ),
            (
                "preview_hosts = [\"preview.staging.test\"]",
                "preview_hosts = [\"preview.staging.test\"]\nhosts = [\"preview.staging.test\"]",
                "preview host preview.staging.test of environment staging is already claimed",
            ),
            (
                "preview_listen = \"127.0.0.1:18181\"",
                "preview_listen = \"127.0.0.1:18181\"\nslots = 2",
                "2 slots and a preview address",
            ),
            (
                "http = \"127.0.0.1:17080\"",
                "",
                "`preview_hosts` but ferry's front door has no plain HTTP",
            ),
            // no certificate covers a preview host: an https-only front door cannot serve it
            (
                "http = \"127.0.0.1:17080\"",
                "https = \"127.0.0.1:17443\"",
                "`preview_hosts` but ferry's front door has no plain HTTP",
            ),
            // a preview host takes every path: a route on it with a prefix clashes, whichever
            // comes first
            (
                "preview_hosts = [\"preview.staging.test\"]",
                "preview_hosts = [\"preview.staging.test\"]\nhosts = [\"preview.staging.test\"]\npath_prefix = \"/api\"",
                "preview host preview.staging.test of environment staging is already claimed by environment staging (path_prefix /api)",
            ),
            (
                "[environments.production]\nlisten = \"127.0.0.1:18082\"\n",
                "[environments.production]\nlisten = \"127.0.0.1:18082\"\nhosts = [\"preview.staging.test\"]\npath_prefix = \"/api\"\n",
                "preview host preview.staging.test of environment staging is already claimed by environment production (path_prefix /api)",
            ),
        ] {
            let err = Config::parse(
                std::path::Path::new("/tmp/ferry.toml"),
                &text.replace(from, to),
            )
            .expect_err(to)
            .to_string();
            assert!(err.contains(says), "{to}: {err}");
        }
    }

    #[test]
    fn bad_checks_are_refused_where_they_are_written() {
        for (text, says, line) in [
            (
                "[[check]]\nname = \"x\"\n",
                "neither `path` nor `command`",
                1,
            ),
            (
                "[[check]]\npath = \"/a\"\ncommand = \"./b\"\n",
                "both `path` and `command`",
                3,
            ),
            ("[[check]]\npath = \"api\"\n", "is not a path", 2),
            (
                "[[check]]\npath = \"/a\"\nmethod = \"get\"\n",
                "method \"get\"",
                3,
            ),
            (
                "[[check]]\npath = \"/a\"\nexpect_status = 42\n",
                "not an HTTP status",
                3,
            ),
            (
                "[[check]]\npath = \"/a\"\njson_pointer = \"/x\"\n",
                "no `expect`",
                3,
            ),
            (
                "[[check]]\npath = \"/a\"\nexpect = 1\n",
                "no `json_pointer`",
                3,
            ),
            (
                "[[check]]\npath = \"/a\"\njson_pointer = \"x\"\nexpect = 1\n",
                "not a JSON pointer",
                3,
            ),
            (
                "[[check]]\npath = \"/a\"\nexpect_status = 101\n",
                "interim answer",
                3,
            ),
            (
                "[[check]]\npath = \"/a\"\njson_pointer = \"/a~2b\"\nexpect = 1\n",
                "not ~0 or ~1",
                3,
            ),
            (
                "[[check]]\npath = \"/a\"\njson_pointer = \"/a~\"\nexpect = 1\n",
                "not ~0 or ~1",
                3,
            ),
            (
                "[[check]]\npath = \"/a\"\nmethod = \"HEAD\"\njson_pointer = \"/a\"\nexpect = 1\n",
                "HEAD check has no body",
                4,
            ),
            (
                "[[check]]\ncommand = \"./a\"\nexpect_status = 200\n",
                "`expect_status` is for HTTP checks",
                3,
            ),
            ("[[check]]\ncommand = \" \"\n", "empty command", 2),
            (
                "[[check]]\nname = \"a\\u001b[2Jb\"\ncommand = \"./a\"\n",
                "one line of text",
                2,
            ),
            (
                "[[check]]\npath = \"/a\"\njson_pointer = \"/x\"\nexpect = nan\n",
                "nan or inf",
                4,
            ),
            (
                "[[check]]\npath = \"/a\"\nenvironments = [\"prod\"]\n",
                "environment \"prod\", which is not defined",
                3,
            ),
            (
                "[[check]]\npath = \"/a\"\n[[check]]\npath = \"/a\"\n",
                "two checks are named \"GET /a\"",
                3,
            ),
            (
                "[[check]]\npath = \"/a\"\nretries = 3\n",
                "unknown field",
                3,
            ),
        ] {
            let err = parse(text).expect_err(text);
            assert!(err.contains(says), "{text}: {err}");
            assert!(
                err.contains(&format!("ferry.toml:{}:", line + 9)),
                "{text}: not located at line {line}: {err}"
            );
        }
    }
}

//! `[ssh]` and each environment's `servers`: the hosts an environment runs on and how ferry
//! reaches them over OpenSSH (the design is docs/servers.md).
//!
//! ```toml
//! [ssh]
//! user = "deploy"                 # for servers written without `user@`
//! port = 22                       # for servers written without `:port`
//! identity_file = "/etc/ferry/id_ed25519"
//! known_hosts = "/etc/ferry/known_hosts"   # default: ~/.ssh/known_hosts of ferry's user
//! proxy_jump = "bastion.example.com"
//! connect_timeout = "10s"
//! agent_dir = ".ferry"            # on each host, relative to the user's home
//! command = "ssh"
//!
//! [environments.production]
//! servers = ["deploy@app1.example.com", "app2.example.com:2222", "[2001:db8::7]:22"]
//! max_parallel = 1
//! listen = "0.0.0.0:8080"         # on each host
//! ```
//!
//! A server string ends up as arguments of `ssh`, and its user and host in remote commands:
//! anything that `ssh` could read as an option, or a shell as syntax, is refused here.

use std::collections::HashMap;
use std::fmt;
use std::net::Ipv6Addr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::duration::HumanDuration;
use super::raw::Fail;
use super::{App, Check, Diagnostic, Runtime};

/// `connect_timeout` unless set.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// `agent_dir` unless set: relative to the remote user's home.
pub const DEFAULT_AGENT_DIR: &str = ".ferry";
/// The most hosts switched at once (`max_parallel`).
const MAX_PARALLEL: i64 = 1000;

/// `[ssh]` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSsh {
    user: Option<Spanned<String>>,
    port: Option<Spanned<i64>>,
    identity_file: Option<Spanned<String>>,
    known_hosts: Option<Spanned<String>>,
    proxy_jump: Option<Spanned<String>>,
    connect_timeout: Option<Spanned<HumanDuration>>,
    agent_dir: Option<Spanned<String>>,
    command: Option<Spanned<String>>,
}

/// How ferry reaches servers: `[ssh]`, validated. Every key has a default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshOptions {
    /// For servers written without `user@`; `None`: OpenSSH's choice (ferry's user, or
    /// `~/.ssh/config`).
    pub user: Option<String>,
    /// For servers written without `:port`; `None`: OpenSSH's choice (22, or `~/.ssh/config`).
    pub port: Option<u16>,
    /// `ssh -i` (with `IdentitiesOnly`); `None`: OpenSSH's keys and agent.
    pub identity_file: Option<PathBuf>,
    /// `None`: `~/.ssh/known_hosts` of ferry's user, see [`SshOptions::known_hosts_file`].
    pub known_hosts: Option<PathBuf>,
    /// One jump host, `[user@]host[:port]`, reached with the same options (see
    /// `remote::ssh`).
    pub proxy_jump: Option<String>,
    /// `ConnectTimeout` (whole seconds, at least 1).
    pub connect_timeout: Duration,
    /// Where the agent keeps its binary, releases and state on each host: relative to the
    /// remote user's home, or absolute.
    pub agent_dir: String,
    /// The OpenSSH client run for everything.
    pub command: String,
}

impl Default for SshOptions {
    fn default() -> SshOptions {
        SshOptions {
            user: None,
            port: None,
            identity_file: None,
            known_hosts: None,
            proxy_jump: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            agent_dir: DEFAULT_AGENT_DIR.to_string(),
            command: "ssh".to_string(),
        }
    }
}

impl SshOptions {
    /// The known_hosts file host keys are checked against: `known_hosts`, else
    /// `~/.ssh/known_hosts` in the home of the user ferry runs as (resolved now, from the
    /// password database as OpenSSH does, `$HOME` if it has no entry).
    pub fn known_hosts_file(&self) -> PathBuf {
        if let Some(k) = &self.known_hosts {
            return k.clone();
        }
        let home = nix::unistd::User::from_uid(nix::unistd::getuid())
            .ok()
            .flatten()
            .map(|u| u.dir)
            .or_else(|| std::env::var_os("HOME").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("/"));
        home.join(".ssh").join("known_hosts")
    }

    /// The user ferry logs into `server` as, when one is set (`user@` or `[ssh] user`).
    pub fn user_for<'a>(&'a self, server: &'a SshServer) -> Option<&'a str> {
        server.user.as_deref().or(self.user.as_deref())
    }

    /// The port ferry connects to `server` on, when one is set (`:port` or `[ssh] port`).
    pub fn port_for(&self, server: &SshServer) -> Option<u16> {
        server.port.or(self.port)
    }
}

/// One of an environment's `servers`: `[user@]host[:port]`, `[v6::addr]:port` for IPv6.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SshServer {
    /// As written in the config: how steps, messages and the dashboard name it.
    pub name: String,
    pub user: Option<String>,
    /// A host name or an address, without brackets.
    pub host: String,
    pub port: Option<u16>,
}

impl fmt::Display for SshServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl std::str::FromStr for SshServer {
    type Err = String;
    fn from_str(s: &str) -> Result<SshServer, String> {
        SshServer::parse(s)
    }
}

impl SshServer {
    /// Parses `[user@]host[:port]`; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<SshServer, String> {
        if text.trim().is_empty() {
            return Err("a server is empty".into());
        }
        let (user, rest) = match text.split_once('@') {
            Some((user, rest)) => {
                check_user(user).map_err(|e| format!("server \"{text}\": {e}"))?;
                (Some(user.to_string()), rest)
            }
            None => (None, text),
        };
        let (host, port) = split_host_port(rest).map_err(|e| format!("server \"{text}\": {e}"))?;
        Ok(SshServer {
            name: text.to_string(),
            user,
            host,
            port,
        })
    }

    /// The name OpenSSH files this host under in known_hosts: `host`, or `[host]:port` when
    /// it is reached on another port than 22.
    pub fn known_hosts_name(&self, port: Option<u16>) -> String {
        match port {
            Some(p) if p != 22 => format!("[{}]:{p}", self.host),
            _ => self.host.clone(),
        }
    }
}

/// The login name ferry runs as: what ssh logs in as when no user is given.
fn local_user() -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name)
}

/// A login name: letters, digits, `.`, `_` and `-`, not starting with `-`.
fn check_user(user: &str) -> Result<(), String> {
    if user.is_empty() {
        return Err("the user before '@' is empty".into());
    }
    if user.starts_with('-') {
        return Err(format!("the user \"{user}\" starts with '-'"));
    }
    if user.len() > 64
        || !user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(format!(
            "the user \"{user}\" may hold only letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
fn split_host_port(text: &str) -> Result<(String, Option<u16>), String> {
    let (host, port) = if let Some(inner) = text.strip_prefix('[') {
        let Some((addr, after)) = inner.split_once(']') else {
            return Err("'[' without ']' (an IPv6 address is written \"[2001:db8::1]:22\")".into());
        };
        if addr.parse::<Ipv6Addr>().is_err() {
            return Err(format!("\"{addr}\" in brackets is not an IPv6 address"));
        }
        let port = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(p) => Some(p),
                None => return Err(format!("\"{after}\" after ']' is not \":port\"")),
            },
        };
        (addr.to_string(), port)
    } else {
        let (host, port) = match text.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (text, None),
        };
        if port.is_some_and(|p| p.contains(':')) {
            return Err("an IPv6 address goes in brackets, like \"[2001:db8::1]:22\"".into());
        }
        check_host(host)?;
        (host.to_string(), port)
    };
    let port = match port {
        None => None,
        Some(p) => Some(parse_port(p).ok_or_else(|| format!("\"{p}\" is not a port (1-65535)"))?),
    };
    Ok((host, port))
}

/// A host name or IPv4 address: letters, digits, `.`, `-` and `_`, not starting with `-`
/// or `.`.
fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("the host is empty".into());
    }
    if host.starts_with('-') {
        return Err(format!("the host \"{host}\" starts with '-'"));
    }
    if host.starts_with('.')
        || host.len() > 253
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(format!(
            "the host \"{host}\" may hold only letters, digits, '.', '-' and '_' (an IPv6 address goes in brackets)"
        ));
    }
    Ok(())
}

fn parse_port(p: &str) -> Option<u16> {
    if p.is_empty() || !p.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    p.parse::<u16>().ok().filter(|p| *p != 0)
}

/// Validates `[ssh]`; relative paths are read from the config file's dir.
pub(super) fn validate(
    raw: RawSsh,
    fail: &Fail,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> Result<SshOptions, Diagnostic> {
    let mut out = SshOptions::default();
    if let Some(user) = raw.user {
        check_user(user.get_ref()).map_err(|e| {
            fail(
                user.span(),
                format!("[ssh] user: {e}"),
                "write a login name, like \"deploy\"",
            )
        })?;
        out.user = Some(user.into_inner());
    }
    if let Some(port) = raw.port {
        let p = *port.get_ref();
        if !(1..=65535).contains(&p) {
            return Err(fail(
                port.span(),
                format!("[ssh] port = {p} is not a port"),
                "write a port from 1 to 65535 (default: 22)",
            ));
        }
        out.port = Some(p as u16);
    }
    let path = |v: Spanned<String>, key: &str| -> Result<PathBuf, Diagnostic> {
        let text = v.get_ref();
        if text.trim().is_empty() || text.starts_with('-') || text.starts_with('~') {
            return Err(fail(
                v.span(),
                format!("[ssh] {key} \"{text}\" is not a file path"),
                "write a path, absolute or relative to this file (`~` is not expanded)",
            ));
        }
        let resolved = resolve(text);
        // ssh reads these through its config parser: whitespace splits a list, `%` and
        // `${…}` are expanded, quotes and backslashes are syntax
        let shown = resolved.display().to_string();
        if let Some(c) = shown.chars().find(|c| {
            c.is_whitespace() || c.is_control() || matches!(c, '%' | '$' | '"' | '\'' | '\\')
        }) {
            return Err(fail(
                v.span(),
                format!(
                    "[ssh] {key}: the path {shown} holds {c:?}, which ssh would read as syntax"
                ),
                "move the file to a path without whitespace, %, $, quotes or backslashes",
            ));
        }
        Ok(resolved)
    };
    if let Some(v) = raw.identity_file {
        out.identity_file = Some(path(v, "identity_file")?);
    }
    if let Some(v) = raw.known_hosts {
        out.known_hosts = Some(path(v, "known_hosts")?);
    }
    if let Some(jump) = raw.proxy_jump {
        let hops: Vec<&str> = jump.get_ref().split(',').collect();
        if hops.len() > 1 {
            return Err(fail(
                jump.span(),
                "[ssh] proxy_jump names several jump hosts: one is supported".into(),
                "write one jump host, [user@]host[:port]; reach further hops from ~/.ssh/config on the jump host's side",
            ));
        }
        SshServer::parse(hops[0]).map_err(|e| {
            fail(
                jump.span(),
                format!(
                    "[ssh] proxy_jump: {}",
                    e.strip_prefix("server ")
                        .map_or(e.clone(), |r| format!("jump host {r}"))
                ),
                "write the jump host as [user@]host[:port]",
            )
        })?;
        out.proxy_jump = Some(jump.into_inner());
    }
    if let Some(t) = raw.connect_timeout {
        let d = t.get_ref().0;
        if d < Duration::from_secs(1) || d > Duration::from_secs(3600) {
            return Err(fail(
                t.span(),
                "[ssh] connect_timeout must be from 1s to 1h".into(),
                "write a duration from 1s to 1h, like \"10s\" (the default); ssh takes whole seconds, so a fraction is rounded up",
            ));
        }
        // ssh takes whole seconds: round up
        out.connect_timeout = Duration::from_secs(d.as_secs() + u64::from(d.subsec_nanos() > 0));
    }
    if let Some(dir) = raw.agent_dir {
        let d = dir.get_ref();
        let components: Vec<_> = Path::new(d).components().collect();
        let safe = !d.is_empty()
            && d.len() <= 64
            && !d.starts_with('-')
            && d.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
            && components
                .iter()
                .all(|c| !matches!(c, std::path::Component::ParentDir))
            && components
                .iter()
                .any(|c| matches!(c, std::path::Component::Normal(_)));
        if !safe {
            return Err(fail(
                dir.span(),
                format!("[ssh] agent_dir \"{d}\" is not allowed"),
                "write a dir of its own (up to 64 of letters, digits, '.', '_', '-' and '/', without '..'), relative to the remote user's home (default \".ferry\") or absolute",
            ));
        }
        out.agent_dir = dir.into_inner();
    }
    if let Some(cmd) = raw.command {
        let c = cmd.get_ref();
        if c.trim().is_empty() || c.starts_with('-') || c.chars().any(char::is_whitespace) {
            return Err(fail(
                cmd.span(),
                format!("[ssh] command \"{c}\" is not a program"),
                "name the OpenSSH client: \"ssh\" (found on PATH) or a path like \"/usr/bin/ssh\"",
            ));
        }
        out.command = if c.contains('/') {
            resolve(c).to_string_lossy().into_owned()
        } else {
            c.clone()
        };
    }
    Ok(out)
}

/// The keys of an environment that `servers` and `max_parallel` are judged with.
pub(super) struct RawRemote<'a> {
    pub servers: Option<&'a Spanned<Vec<Spanned<String>>>>,
    pub max_parallel: Option<&'a Spanned<i64>>,
    pub listen: Option<&'a Spanned<String>>,
    pub hosts: &'a [Spanned<String>],
    pub preview_listen: Option<&'a Spanned<String>>,
    pub preview_hosts: &'a [Spanned<String>],
    /// Where `rollout` is written, if it is.
    pub rollout: Option<Range<usize>>,
    pub backup: &'a [Spanned<String>],
    /// `slots`, where written and how many.
    pub slots: Option<(Range<usize>, i64)>,
}

/// An environment's servers, validated.
pub(super) struct Remote {
    pub servers: Vec<SshServer>,
    pub max_parallel: usize,
}

/// Validates environment `name`'s `servers` and `max_parallel`, and refuses the keys
/// servers do not work with yet.
pub(super) fn environment(
    name: &str,
    raw: RawRemote,
    ssh: &SshOptions,
    fail: &Fail,
) -> Result<Remote, Diagnostic> {
    let Some(list) = raw.servers else {
        if let Some(m) = raw.max_parallel {
            return Err(fail(
                m.span(),
                format!("environment {name} has max_parallel but no servers"),
                "max_parallel is how many of the environment's `servers` are switched at a time: remove it, or add servers = [\"host\", …]",
            ));
        }
        return Ok(Remote {
            servers: Vec::new(),
            max_parallel: 1,
        });
    };
    if list.get_ref().is_empty() {
        return Err(fail(
            list.span(),
            format!("environment {name} has an empty list of servers"),
            "name its hosts, like servers = [\"deploy@app1.example.com\"], or remove `servers` to run it on this machine",
        ));
    }
    let mut servers: Vec<SshServer> = Vec::new();
    let mut seen: HashMap<(Option<String>, String, u16), String> = HashMap::new();
    for s in list.get_ref() {
        let server = SshServer::parse(s.get_ref()).map_err(|e| {
            fail(
                s.span(),
                e,
                "write [user@]host[:port], like \"deploy@app1.example.com\" or \"[2001:db8::1]:2222\": letters, digits, '.', '-' and '_' only",
            )
        })?;
        let host = match server.host.parse::<Ipv6Addr>() {
            Ok(a) => a.to_string(),
            Err(_) => server.host.to_ascii_lowercase(),
        };
        let key = (
            ssh.user_for(&server)
                .map(str::to_string)
                .or_else(local_user),
            host,
            ssh.port_for(&server).unwrap_or(22),
        );
        if let Some(first) = seen.get(&key) {
            return Err(fail(
                s.span(),
                format!(
                    "server \"{}\" of environment {name} is the same as \"{first}\"",
                    server.name
                ),
                "list each host once",
            ));
        }
        seen.insert(key, server.name.clone());
        servers.push(server);
    }
    let max_parallel = match raw.max_parallel {
        None => 1,
        Some(m) if (1..=MAX_PARALLEL).contains(m.get_ref()) => *m.get_ref() as usize,
        Some(m) => {
            return Err(fail(
                m.span(),
                format!("max_parallel = {} is out of range", m.get_ref()),
                "write how many hosts are switched at a time, from 1 (the default) to 1000",
            ));
        }
    };
    let unsupported = [
        ("rollout", raw.rollout.clone()),
        ("preview_listen", raw.preview_listen.map(Spanned::span)),
        (
            "preview_hosts",
            raw.preview_hosts.first().map(Spanned::span),
        ),
        ("hosts", raw.hosts.first().map(Spanned::span)),
        ("backup", raw.backup.first().map(Spanned::span)),
        (
            "slots",
            raw.slots.clone().filter(|(_, n)| *n > 1).map(|(s, _)| s),
        ),
    ];
    if let Some((key, span)) = unsupported
        .into_iter()
        .find_map(|(key, span)| span.map(|s| (key, s)))
    {
        return Err(not_yet(fail, span, name, &format!("`{key}`")));
    }
    if raw.listen.is_none() {
        return Err(fail(
            list.span(),
            format!("environment {name} has servers but no listen"),
            "add listen = \"0.0.0.0:8080\": where the proxy on each server listens",
        ));
    }
    Ok(Remote {
        servers,
        max_parallel,
    })
}

/// Refuses what the app has that environments with servers cannot run yet: worker
/// processes, a container runtime, checks. `servers` holds each such environment's
/// config table name and where its `servers` is written.
pub(super) fn refuse_app(
    servers: &[(String, Range<usize>)],
    app: &App,
    checks: &[Check],
    fail: &Fail,
) -> Result<(), Diagnostic> {
    for (group, span) in servers {
        if let Some(p) = app.processes.first() {
            return Err(not_yet(
                fail,
                span.clone(),
                group,
                &format!("[processes] {} (a worker process)", p.name),
            ));
        }
        let runtime = match app.runtime {
            Runtime::Process => None,
            Runtime::Docker { .. } => Some("runtime = \"docker\""),
            Runtime::Compose { .. } => Some("runtime = \"compose\""),
        };
        if let Some(runtime) = runtime {
            return Err(not_yet(fail, span.clone(), group, runtime));
        }
        if let Some(check) = checks.iter().find(|c| c.applies_to(group)) {
            return Err(not_yet(
                fail,
                span.clone(),
                group,
                &format!("[[check]] \"{}\"", check.name),
            ));
        }
    }
    Ok(())
}

/// Two environments with servers may listen on one address only on different hosts.
/// `servers` holds each such environment's config table name and where its `servers` is
/// written.
pub(super) fn check_listens(
    servers: &[(String, Range<usize>)],
    environments: &[super::Environment],
    fail: &Fail,
) -> Result<(), Diagnostic> {
    // a host is its name and ssh port (another port may be another machine behind a NAT)
    let mut seen: HashMap<(String, u16, u16), (std::net::IpAddr, String, String)> = HashMap::new();
    for env in environments.iter().filter(|e| !e.servers.is_empty()) {
        let Some(listen) = env.listen else { continue };
        let span = servers
            .iter()
            .find(|(g, _)| *g == env.group)
            .map_or(0..0, |(_, s)| s.clone());
        for server in &env.servers {
            let host = match server.host.parse::<Ipv6Addr>() {
                Ok(a) => a.to_string(),
                Err(_) => server.host.to_ascii_lowercase(),
            };
            let ssh_port = server.port.unwrap_or(0);
            let key = (host, ssh_port, listen.port());
            if let Some((ip, other, other_server)) = seen.get(&key)
                && (*ip == listen.ip() || ip.is_unspecified() || listen.ip().is_unspecified())
            {
                let message = if *other == env.name {
                    format!(
                        "{} is the same host as {other_server}: environment {other} would listen on {listen} twice",
                        server.name
                    )
                } else {
                    format!(
                        "environment {} listens on {listen} on {}, as environment {other} does",
                        env.name, server.name
                    )
                };
                return Err(fail(
                    span,
                    message,
                    "give each environment on a host its own port, and list a host once",
                ));
            }
            seen.insert(key, (listen.ip(), env.name.clone(), server.name.clone()));
        }
    }
    Ok(())
}

fn not_yet(fail: &Fail, span: Range<usize>, env: &str, what: &str) -> Diagnostic {
    fail(
        span,
        format!("{what} is not supported with servers yet (environment {env})"),
        &format!(
            "remove {what} for environment {env}, or its `servers` to run it on this machine; see docs/servers.md"
        ),
    )
}

#[cfg(test)]
#[path = "ssh_tests.rs"]
mod tests;

//! Several apps under one `ferry serve`.
//!
//! `serve` is given one of:
//! - one `ferry.toml` (`[app]`, its environments, maybe `[server]`): one app, its state where
//!   it always was (`state_dir`);
//! - a **server config**: `[server]`, `[proxy]`, `[acme]`, `state_dir` and `apps = ["apps/*.toml"]`
//!   (paths or globs relative to it), each listed file an app config without those;
//! - several app configs (`-c api.toml -c admin.toml`), at most one of them with `[server]`,
//!   `[proxy]`, `[acme]` or `state_dir`.
//!
//! In the last two, each app keeps its state in `<state_dir>/apps/<app>/` (its own database,
//! mirror, environments); `serve.lock`, `serve.sock` and the local token stay in `state_dir`.
//! Every app is validated on its own ([`Config::parse`]), then against the others: names are
//! unique and no two environments listen on one address.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::server::{RawProxy, RawServer};
use super::{Config, ConfigError, Diagnostic, ProxySettings, Server};

/// The apps one `serve` hosts, and what they share.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The file `[server]` comes from: the server config, the app file carrying it, or the
    /// first file given.
    pub path: PathBuf,
    /// The serve's own state dir: `serve.lock`, `serve.sock`, `local-token`, and with
    /// `shared` every app's state under `apps/<app>/`.
    pub state_dir: PathBuf,
    pub server: Server,
    pub proxy: ProxySettings,
    /// `[acme]`, for every app's `tls = "acme"` environments.
    pub acme: Option<super::Acme>,
    /// Every app in the order given, each with `server`, `proxy`, `state_dir` and
    /// `server_dir` filled in from here.
    pub apps: Vec<Config>,
    /// Apps keep their state under `<state_dir>/apps/<app>/` and listeners are named
    /// `app.env` (a server config, or several files); false for one `ferry.toml`.
    pub shared: bool,
}

/// A server config as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServerConfig {
    state_dir: Option<String>,
    apps: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    proxy: RawProxy,
    acme: Option<Spanned<super::acme::RawAcme>>,
}

/// The top-level keys that tell an app config from a server config, with where they are.
#[derive(Deserialize, Default)]
struct Probe {
    app: Option<Spanned<toml::Value>>,
    apps: Option<Spanned<toml::Value>>,
    server: Option<Spanned<toml::Value>>,
    state_dir: Option<Spanned<toml::Value>>,
    proxy: Option<Spanned<toml::Value>>,
    acme: Option<Spanned<toml::Value>>,
}

impl Probe {
    /// A file that does not parse probes empty: [`Config::parse`] then says what is wrong.
    fn read(text: &str) -> Probe {
        toml::from_str(text).unwrap_or_default()
    }

    /// The part of the file only the server's config may have, if it has one.
    fn server_part(&self) -> Option<(&'static str, Range<usize>)> {
        [
            ("[server]", &self.server),
            ("state_dir", &self.state_dir),
            ("[proxy]", &self.proxy),
            ("[acme]", &self.acme),
        ]
        .into_iter()
        .find_map(|(what, v)| v.as_ref().map(|v| (what, v.span())))
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The dir relative paths in the file at `path` are read from.
fn base_dir(path: &Path) -> PathBuf {
    path.canonicalize()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| {
            path.parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("."))
        })
}

fn invalid(
    path: &Path,
    text: &str,
    span: Range<usize>,
    message: String,
    help: &str,
) -> ConfigError {
    ConfigError::Invalid(Box::new(Diagnostic::new(
        path,
        text,
        Some(span),
        message,
        Some(help.to_string()),
    )))
}

impl ServerConfig {
    /// Reads the config files given to `serve` (or any command): see the module doc.
    pub fn load(paths: &[PathBuf]) -> Result<ServerConfig, ConfigError> {
        match paths {
            [] => Err(ConfigError::Apps("no config file given".into())),
            [one] => {
                let text = read(one)?;
                let probe = Probe::read(&text);
                match (&probe.app, &probe.apps) {
                    (None, Some(_)) => ServerConfig::from_server_file(one, &text),
                    (Some(_), Some(apps)) => Err(invalid(
                        one,
                        &text,
                        apps.span(),
                        "a file is an app config ([app]) or a server config (apps = [...]), not both".into(),
                        "move [app] and its environments into a file of their own and list it in apps",
                    )),
                    _ => Ok(ServerConfig::single(Config::parse(one, &text)?)),
                }
            }
            several => ServerConfig::from_app_files(several),
        }
    }

    /// One app from one `ferry.toml`, its state where it always was.
    pub fn single(config: Config) -> ServerConfig {
        ServerConfig {
            path: config.path.clone(),
            state_dir: config.state_dir.clone(),
            server: config.server.clone(),
            proxy: config.proxy,
            acme: config.acme.clone(),
            apps: vec![config],
            shared: false,
        }
    }

    fn from_server_file(path: &Path, text: &str) -> Result<ServerConfig, ConfigError> {
        let raw: RawServerConfig = toml::from_str(text).map_err(|e| {
            invalid(
                path,
                text,
                e.span().unwrap_or(0..0),
                e.message().trim().to_string(),
                "a server config holds state_dir, apps = [\"apps/*.toml\"], [server] and [proxy]; [app] and its environments go in each app's own file",
            )
        })?;
        let (owned_path, owned_text) = (path.to_path_buf(), text.to_string());
        let fail: super::raw::Fail = Box::new(move |span, message, help| {
            Diagnostic::new(
                &owned_path,
                &owned_text,
                Some(span),
                message,
                Some(help.to_string()),
            )
        });
        let boxed = |d: Diagnostic| ConfigError::Invalid(Box::new(d));
        let server = raw.server.validate(&fail).map_err(boxed)?;
        let proxy = raw.proxy.validate(&fail).map_err(boxed)?;
        let base = base_dir(path);
        let resolve = |p: &str| base.join(p);
        let acme = raw
            .acme
            .map(|a| super::acme::validate(a, &fail, &resolve))
            .transpose()
            .map_err(boxed)?;
        let state_dir = base.join(raw.state_dir.as_deref().unwrap_or(".ferry"));
        let own = path.canonicalize().ok();
        let mut files: Vec<PathBuf> = Vec::new();
        for pattern in raw.apps.get_ref() {
            let full = base.join(pattern.get_ref());
            let bad = |message: String| {
                invalid(
                    path,
                    text,
                    pattern.span(),
                    message,
                    "list app configs relative to this file, like \"apps/*.toml\" or \"api.toml\"",
                )
            };
            let found = glob::glob(&full.to_string_lossy()).map_err(|e| {
                bad(format!(
                    "\"{}\" is not a path pattern: {e}",
                    pattern.get_ref()
                ))
            })?;
            let mut matched = 0;
            for file in found.flatten() {
                if !file.is_file() || file.canonicalize().ok() == own {
                    continue;
                }
                matched += 1;
                if !files.contains(&file) {
                    files.push(file);
                }
            }
            if matched == 0 {
                return Err(bad(format!(
                    "\"{}\" matches no file ({})",
                    pattern.get_ref(),
                    full.display()
                )));
            }
        }
        if files.is_empty() {
            return Err(invalid(
                path,
                text,
                raw.apps.span(),
                "the server config lists no app".into(),
                "list each app's config, like apps = [\"apps/*.toml\"]",
            ));
        }
        let mut apps = Vec::new();
        for file in files {
            let text = read(&file)?;
            let probe = Probe::read(&text);
            if let Some(apps) = &probe.apps {
                return Err(invalid(
                    &file,
                    &text,
                    apps.span(),
                    format!(
                        "{} is listed as an app by {}, but lists apps itself",
                        file.display(),
                        path.display()
                    ),
                    "an app config has [app] and its environments; only the server config lists apps",
                ));
            }
            if let Some((what, span)) = probe.server_part() {
                return Err(invalid(
                    &file,
                    &text,
                    span,
                    format!(
                        "{what} belongs in the server config {}, not in an app's",
                        path.display()
                    ),
                    "remove it here: with a server config, [server], [proxy], [acme] and state_dir are set once, for every app",
                ));
            }
            apps.push(parse_app(&file, &text, Some((&server, acme.as_ref())))?);
        }
        ServerConfig::assemble(path.to_path_buf(), state_dir, (server, proxy, acme), apps)
    }

    fn from_app_files(paths: &[PathBuf]) -> Result<ServerConfig, ConfigError> {
        // first the one file with the server's part (if any): the others are read under it
        let mut carrier: Option<(usize, &'static str)> = None;
        let mut texts = Vec::new();
        for (i, path) in paths.iter().enumerate() {
            let text = read(path)?;
            let probe = Probe::read(&text);
            if probe.apps.is_some() {
                return Err(ConfigError::Apps(format!(
                    "{} is a server config (apps = [...]): give it alone with -c, or give only app configs",
                    path.display()
                )));
            }
            if let Some((what, _)) = probe.server_part() {
                if let Some((first, first_what)) = carrier {
                    return Err(ConfigError::Apps(format!(
                        "{} has {first_what} and {} has {what}: of the files given with -c, at most one may have [server], [proxy], [acme] or state_dir (or put them in a server config)",
                        paths[first].display(),
                        path.display()
                    )));
                }
                carrier = Some((i, what));
            }
            texts.push(text);
        }
        let from = carrier.map_or(0, |(i, _)| i);
        let first = Config::parse(&paths[from], &texts[from])?;
        let mut apps = Vec::new();
        for (i, path) in paths.iter().enumerate() {
            apps.push(if i == from {
                first.clone()
            } else {
                parse_app(path, &texts[i], Some((&first.server, first.acme.as_ref())))?
            });
        }
        let shared = (first.server.clone(), first.proxy, first.acme.clone());
        ServerConfig::assemble(first.path.clone(), first.state_dir.clone(), shared, apps)
    }

    /// Checks the apps against each other and gives each the server's part. Whatever else
    /// must hold across apps (a host name claimed by two apps' environments, for the front
    /// door) is checked here too, where every app is at hand.
    fn assemble(
        path: PathBuf,
        state_dir: PathBuf,
        (server, proxy, acme): (Server, ProxySettings, Option<super::Acme>),
        mut apps: Vec<Config>,
    ) -> Result<ServerConfig, ConfigError> {
        let mut names: HashMap<String, PathBuf> = HashMap::new();
        let mut taken: Vec<(SocketAddr, String)> = vec![(
            server.listen,
            format!("[server] listen of {}", path.display()),
        )];
        // host names the front door routes: (app, who) by name; within an app the app's own
        // validation has judged them
        let mut hosts: crate::hosts::HostTable<(String, String)> = crate::hosts::HostTable::new();
        for app in &mut apps {
            let name = app.app.name.clone();
            if let Some(first) = names.insert(name.clone(), app.path.clone()) {
                return Err(ConfigError::Apps(format!(
                    "two apps are named \"{name}\": in {} and in {}; give each its own [app] name",
                    first.display(),
                    app.path.display()
                )));
            }
            for env in &app.environments {
                let who = format!(
                    "environment {} of app {name} ({})",
                    env.name,
                    app.path.display()
                );
                let preview = format!("the preview of {who}");
                // a preview host takes every path of it: claimed like a host
                let claims = (env.hosts.iter().map(|h| (h, &who)))
                    .chain(env.preview_hosts.iter().map(|h| (h, &preview)));
                for (host, who) in claims {
                    match hosts.claimed(host) {
                        Some((other_app, other)) if *other_app != name => {
                            return Err(ConfigError::Apps(format!(
                                "the host name {} is claimed by {other} and by {who}; a name routes to one environment",
                                host.as_str()
                            )));
                        }
                        Some(_) => {}
                        None => {
                            hosts.insert(host, (name.clone(), who.clone()));
                        }
                    }
                }
                // an environment reached only through the front door's hosts listens nowhere
                let listens = (env.listen.map(|l| (l, &who)))
                    .into_iter()
                    .chain(env.preview_listen.map(|l| (l, &preview)));
                for (listen, who) in listens {
                    if let Some((_, other)) = taken.iter().find(|(a, _)| collide(*a, listen)) {
                        return Err(ConfigError::Apps(format!(
                            "{other} and {who} both listen on {listen}; give each an address of its own"
                        )));
                    }
                    taken.push((listen, who.clone()));
                }
            }
            app.server = server.clone();
            app.proxy = proxy;
            app.acme = acme.clone();
            app.server_dir = state_dir.clone();
            app.state_dir = state_dir.join("apps").join(&name);
        }
        Ok(ServerConfig {
            path,
            state_dir,
            server,
            proxy,
            acme,
            apps,
            shared: true,
        })
    }

    /// The apps' names, in order.
    pub fn names(&self) -> Vec<&str> {
        self.apps.iter().map(|a| a.app.name.as_str()).collect()
    }

    /// The app called `name`, or the only one when `name` is `None`; otherwise a message
    /// listing the apps and saying how to pick one.
    pub fn app(&self, name: Option<&str>) -> Result<&Config, String> {
        let names = self.names().join(", ");
        match name {
            Some(name) => self
                .apps
                .iter()
                .find(|a| a.app.name == name)
                .ok_or_else(|| format!("no app is called \"{name}\" (the apps: {names})")),
            None if self.apps.len() == 1 => Ok(&self.apps[0]),
            None => Err(format!(
                "ferry serves several apps ({names}): say which with -a APP (or FERRY_APP)"
            )),
        }
    }

    /// The name of `env`'s listener (and systemd socket): the environment's name, or
    /// `app.env` when apps share the serve.
    pub fn listener_name(&self, app: &str, env: &str) -> String {
        if self.shared {
            format!("{app}.{env}")
        } else {
            env.to_string()
        }
    }

    /// The name of environment `env`'s preview listener (`preview_listen`).
    pub fn preview_listener_name(&self, app: &str, env: &str) -> String {
        format!("{}.preview", self.listener_name(app, env))
    }

    /// Every listener by name, the API's (`api`) first, then the front door's (`http`,
    /// `https`), with its configured address.
    pub fn listeners(&self) -> Vec<(String, SocketAddr)> {
        let mut out = vec![("api".to_string(), self.server.listen)];
        // the front door's ports
        for (name, addr) in [("http", self.server.http), ("https", self.server.https)] {
            if let Some(addr) = addr {
                out.push((name.to_string(), addr));
            }
        }
        for app in &self.apps {
            // an environment with servers listens on its hosts, not here
            for env in app.environments.iter().filter(|e| e.servers.is_empty()) {
                if let Some(listen) = env.listen {
                    out.push((self.listener_name(&app.app.name, &env.name), listen));
                }
                if let Some(listen) = env.preview_listen {
                    out.push((self.preview_listener_name(&app.app.name, &env.name), listen));
                }
            }
        }
        out
    }
}

/// Reads an app config that has no `[server]` of its own as if it had `server`'s addresses
/// (the API's, the front door's) and the server's `[acme]`, so its environments are checked
/// against them: tables with them are appended to the text, after everything the file says,
/// so every position an error names is still the file's own.
fn parse_app(
    path: &Path,
    text: &str,
    server: Option<(&Server, Option<&super::Acme>)>,
) -> Result<Config, ConfigError> {
    let Some((server, acme)) = server else {
        return Config::parse(path, text);
    };
    let mut table = format!("\n\n[server]\nlisten = \"{}\"\n", server.listen);
    for (key, addr) in [("http", server.http), ("https", server.https)] {
        if let Some(addr) = addr {
            table.push_str(&format!("{key} = \"{addr}\"\n"));
        }
    }
    if let Some(acme) = acme {
        let email = toml::Value::String(acme.email.clone());
        table.push_str(&format!("\n[acme]\nemail = {email}\n"));
    }
    Config::parse(path, &format!("{text}{table}"))
}

/// True when two listen addresses cannot both be bound (port 0 picks a free one).
fn collide(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(name: &str, port: u16, extra: &str) -> String {
        format!(
            "{extra}\n[app]\nname = \"{name}\"\nrepo = \"https://example.com/{name}.git\"\nstart = \"true\"\n\
             [health]\npaths = [\"/\"]\n[environments.staging]\nlisten = \"127.0.0.1:{port}\"\n"
        )
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }

    fn error(paths: &[PathBuf]) -> String {
        ServerConfig::load(paths).unwrap_err().to_string()
    }

    #[test]
    fn a_server_config_hosts_every_app_it_lists_each_in_its_own_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // hosts need the front door's ports, which only the server config has
        let api = app("api", 9101, "").replace(
            "listen = \"127.0.0.1:9101\"",
            "listen = \"127.0.0.1:9101\"\nhosts = [\"api.example.com\"]\ntls = \"acme\"",
        );
        write(d, "apps/api.toml", &api);
        write(d, "apps/admin.toml", &app("admin", 9102, ""));
        let server = write(
            d,
            "ferry.toml",
            "state_dir = \"state\"\napps = [\"apps/*.toml\"]\n[server]\nlisten = \"127.0.0.1:9100\"\nhttp = \"127.0.0.1:9180\"\nhttps = \"127.0.0.1:9443\"\n[proxy]\nmax_connections = 100\n[acme]\nemail = \"ops@example.com\"\n",
        );
        let s = ServerConfig::load(&[server]).unwrap();
        assert!(s.shared);
        assert_eq!(s.names(), ["admin", "api"], "in the glob's order");
        let state = d.canonicalize().unwrap().join("state");
        assert_eq!(s.state_dir, state);
        for a in &s.apps {
            assert_eq!(a.state_dir, state.join("apps").join(&a.app.name));
            assert_eq!(a.server_dir, state);
            assert_eq!(a.server.listen.port(), 9100);
            assert_eq!(a.proxy.connections.max_connections, 100);
            assert_eq!(a.acme.as_ref().unwrap().email, "ops@example.com");
        }
        assert_eq!(
            s.listeners()
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>(),
            ["api", "http", "https", "admin.staging", "api.staging"]
        );
        assert_eq!(s.app(Some("api")).unwrap().app.name, "api");
        assert_eq!(s.app(Some("api")).unwrap().environments[0].hosts.len(), 1);
        assert!(
            s.app(None)
                .unwrap_err()
                .contains("several apps (admin, api)")
        );
        assert!(
            s.app(Some("shop"))
                .unwrap_err()
                .contains("no app is called \"shop\"")
        );
    }

    #[test]
    fn one_ferry_toml_is_one_app_with_its_state_where_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "ferry.toml",
            &app("shop", 9201, "state_dir = \"st\""),
        );
        let s = ServerConfig::load(&[path]).unwrap();
        assert!(!s.shared);
        let a = s.app(None).unwrap();
        assert_eq!(a.state_dir, dir.path().canonicalize().unwrap().join("st"));
        assert_eq!(a.server_dir, a.state_dir);
        assert_eq!(s.listeners()[1].0, "staging");
    }

    #[test]
    fn several_files_share_the_server_part_of_the_one_that_has_it() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(dir.path(), "a.toml", &app("a", 9301, ""));
        let b = write(
            dir.path(),
            "b.toml",
            &format!(
                "{}[server]\nlisten = \"127.0.0.1:9300\"\n",
                app("b", 9302, "")
            ),
        );
        let s = ServerConfig::load(&[a.clone(), b.clone()]).unwrap();
        assert!(s.shared && s.path == b && s.server.listen.port() == 9300);
        let c = write(dir.path(), "c.toml", &app("c", 9303, "state_dir = \"x\""));
        let e = error(&[a, b.clone(), c.clone()]);
        assert!(
            e.contains(&b.display().to_string()) && e.contains(&c.display().to_string()),
            "{e}"
        );
        assert!(e.contains("at most one"), "{e}");
    }

    #[test]
    fn conflicts_between_apps_name_both() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let one = write(d, "one.toml", &app("api", 9401, ""));
        let two = write(d, "two.toml", &app("api", 9402, ""));
        let e = error(&[one.clone(), two.clone()]);
        assert!(e.contains("two apps are named \"api\""), "{e}");
        assert!(e.contains("one.toml") && e.contains("two.toml"), "{e}");
        // the front door's ports come from the one file with [server]
        let shop = app("shop", 9403, "").replace(
            "listen = \"127.0.0.1:9403\"",
            "listen = \"127.0.0.1:9403\"\nhosts = [\"*.example.com\"]",
        ) + "[server]\nhttp = \"127.0.0.1:9480\"\n";
        let blog = app("blog", 9404, "").replace(
            "listen = \"127.0.0.1:9404\"",
            "listen = \"127.0.0.1:9404\"\nhosts = [\"www.example.com\", \"*.example.com\"]",
        );
        let e = error(&[write(d, "shop.toml", &shop), write(d, "blog.toml", &blog)]);
        assert!(
            e.contains("*.example.com is claimed by environment staging of app shop")
                && e.contains("of app blog"),
            "{e}"
        );
        // a preview host or address of one app that another app routes or listens on
        let shop = app("shop", 9405, "").replace(
            "listen = \"127.0.0.1:9405\"",
            "listen = \"127.0.0.1:9405\"\nhosts = [\"example.com\"]\npath_prefix = \"/shop\"",
        ) + "[server]\nhttp = \"127.0.0.1:9480\"\n";
        let blog = app("blog", 9406, "").replace(
            "listen = \"127.0.0.1:9406\"",
            "listen = \"127.0.0.1:9406\"\npreview_hosts = [\"example.com\"]",
        );
        let e = error(&[write(d, "shop.toml", &shop), write(d, "blog.toml", &blog)]);
        assert!(
            e.contains("example.com is claimed by environment staging of app shop")
                && e.contains("by the preview of environment staging of app blog"),
            "{e}"
        );
        let blog = app("blog", 9406, "").replace(
            "listen = \"127.0.0.1:9406\"",
            "listen = \"127.0.0.1:9406\"\npreview_listen = \"127.0.0.1:9405\"",
        );
        let e = error(&[write(d, "shop.toml", &shop), write(d, "blog.toml", &blog)]);
        assert!(
            e.contains("environment staging of app shop")
                && e.contains("the preview of environment staging of app blog")
                && e.contains("127.0.0.1:9405"),
            "{e}"
        );
        let three = write(d, "three.toml", &app("admin", 9401, ""));
        let e = error(&[one, three]);
        assert!(
            e.contains("environment staging of app api")
                && e.contains("environment staging of app admin")
                && e.contains("127.0.0.1:9401"),
            "{e}"
        );
    }

    #[test]
    fn an_app_file_under_a_server_config_may_not_set_the_servers_part() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(
            d,
            "apps/api.toml",
            &format!(
                "{}[server]\nlisten = \"127.0.0.1:9501\"\n",
                app("api", 9502, "")
            ),
        );
        let server = write(d, "ferry.toml", "apps = [\"apps/*.toml\"]\n");
        let e = error(&[server]);
        assert!(e.contains("[server] belongs in the server config"), "{e}");
        assert!(e.contains("api.toml:"), "names the app file: {e}");
        let server = write(d, "empty.toml", "apps = [\"none/*.toml\"]\n");
        assert!(error(&[server]).contains("matches no file"));
        let both = write(d, "both.toml", &app("x", 9503, "apps = [\"apps/*.toml\"]"));
        assert!(error(&[both]).contains("not both"));
        let unknown = write(
            d,
            "unknown.toml",
            "apps = [\"apps/*.toml\"]\n[environments.x]\n",
        );
        assert!(error(&[unknown]).contains("unknown field"));
    }
}

//! `ferry install systemd`: a service unit and one socket unit per listener, so systemd holds
//! ferry's listening sockets across restarts (socket activation) and the apps outlive them.

use std::path::{Path, PathBuf};

use super::{Cli, CmdResult, Failure};
use crate::config::ServerConfig;
use crate::daemon::sockets::API;

#[derive(Debug, clap::Args)]
pub struct Install {
    #[command(subcommand)]
    pub what: What,
}

#[derive(Debug, clap::Subcommand)]
pub enum What {
    /// Write ferry.service and a socket unit per listener (ferry-api.socket,
    /// ferry-<environment>.socket) for the config given with -c.
    Systemd(Systemd),
}

#[derive(Debug, clap::Args)]
pub struct Systemd {
    /// Where the units go.
    #[arg(long, default_value = "/etc/systemd/system")]
    pub dir: PathBuf,
    /// Overwrite unit files that differ from what would be written.
    #[arg(long)]
    pub force: bool,
}

/// The socket unit of listener `name`.
pub fn socket_unit_name(name: &str) -> String {
    format!("ferry-{name}.socket")
}

/// The units for `config` read from `config_paths`, run by `binary`: (file name, text).
pub fn units(
    config: &ServerConfig,
    binary: &Path,
    config_paths: &[PathBuf],
) -> Vec<(String, String)> {
    let listeners: Vec<(String, String)> = config
        .listeners()
        .into_iter()
        .map(|(name, addr)| (name, addr.to_string()))
        .collect();
    let sockets: Vec<String> = listeners.iter().map(|(n, _)| socket_unit_name(n)).collect();
    let sockets = sockets.join(" ");
    let bin = quote(binary);
    let conf: Vec<String> = config_paths.iter().map(|p| quote(p)).collect();
    let conf = conf.join(" -c ");
    let app = config.names().join(", ");
    let service = format!(
        "# Written by `ferry install systemd`.\n\
         [Unit]\n\
         Description=ferry: deployments and proxies of {app}\n\
         Requires={sockets}\n\
         After=network.target {sockets}\n\
         \n\
         [Service]\n\
         # ready once every listener accepts and the apps are adopted; an upgrade's new serve\n\
         # says it is the main process now (MAINPID=)\n\
         Type=notify\n\
         NotifyAccess=all\n\
         ExecStart={bin} serve -c {conf}\n\
         # `systemctl reload ferry`: the running serve hands its sockets and apps to the\n\
         # binary installed now, without a refused connection\n\
         ExecReload={bin} upgrade -c {conf}\n\
         Sockets={sockets}\n\
         # the apps run in process groups of their own and outlive a stop or restart of\n\
         # ferry: the next serve adopts them (add --stop-apps to ExecStart to stop them)\n\
         KillMode=process\n\
         Restart=on-failure\n\
         RestartSec=1s\n\
         # requests in flight finish first\n\
         TimeoutStopSec=60s\n\
         # each proxied connection holds two descriptors (see [proxy] max_connections)\n\
         LimitNOFILE=65536\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n"
    );
    let mut out = vec![("ferry.service".to_string(), service)];
    for (name, addr) in &listeners {
        let what = if name == API {
            "ferry's API".to_string()
        } else {
            format!("the proxy of environment {name}")
        };
        out.push((
            socket_unit_name(name),
            format!(
                "# Written by `ferry install systemd`.\n\
                 [Unit]\n\
                 Description=ferry: {what}, held across restarts of ferry\n\
                 \n\
                 [Socket]\n\
                 ListenStream={addr}\n\
                 FileDescriptorName={name}\n\
                 Service=ferry.service\n\
                 Backlog=1024\n\
                 NoDelay=true\n\
                 \n\
                 [Install]\n\
                 WantedBy=sockets.target\n"
            ),
        ));
    }
    out
}

/// `path` for a unit's command line, quoted when it has to be.
fn quote(path: &Path) -> String {
    let text = path.display().to_string();
    if text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+".contains(c))
    {
        text
    } else {
        format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

pub fn run(cli: &Cli, args: &Install) -> CmdResult {
    let What::Systemd(args) = &args.what;
    let config = cli.load_servers()?;
    let config_paths = cli
        .config
        .iter()
        .map(|c| {
            std::path::absolute(c)
                .map_err(|e| Failure::Usage(format!("error: {}: {e}", c.display())))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let binary = std::env::current_exe()
        .map_err(|e| Failure::Failed(format!("error: cannot find this binary: {e}")))?;
    let units = units(&config, &binary, &config_paths);
    let mut differing = Vec::new();
    for (name, text) in &units {
        let path = args.dir.join(name);
        if let Ok(old) = std::fs::read_to_string(&path)
            && old != *text
        {
            differing.push(path.display().to_string());
        }
    }
    if !differing.is_empty() && !args.force {
        return Err(Failure::Failed(format!(
            "error: {} already exist{} with other contents; nothing was written (--force overwrites)",
            differing.join(", "),
            if differing.len() == 1 { "s" } else { "" }
        )));
    }
    std::fs::create_dir_all(&args.dir)
        .map_err(|e| Failure::Failed(format!("error: {}: {e}", args.dir.display())))?;
    for (name, text) in &units {
        let path = args.dir.join(name);
        if std::fs::read_to_string(&path).is_ok_and(|old| old == *text) {
            outln!("unchanged {}", path.display());
            continue;
        }
        std::fs::write(&path, text)
            .map_err(|e| Failure::Failed(format!("error: cannot write {}: {e}", path.display())))?;
        outln!("wrote {}", path.display());
    }
    let sockets: Vec<&str> = units
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| n.ends_with(".socket"))
        .collect();
    outln!(
        "\nthen: systemctl daemon-reload && systemctl enable --now {} ferry.service",
        sockets.join(" ")
    );
    outln!(
        "upgrade in place: install the new ferry over {}, then systemctl reload ferry",
        binary.display()
    );
    Ok(())
}

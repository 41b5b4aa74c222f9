//! `ferry serve`: the daemon, until Ctrl-C or SIGTERM (or a new serve takes over).

use super::{Cli, CmdResult, Failure};
use crate::daemon::{Daemon, StartOptions};

#[derive(Debug, clap::Args)]
pub struct Serve {
    /// Stop the apps when serve stops (default: they keep running and the next serve adopts
    /// them); also `[server] stop_apps_on_exit = true`.
    #[arg(long)]
    pub stop_apps: bool,
    /// Take over from the serve running on the state dir: its listening sockets (no
    /// connection is refused meanwhile), its state dir and its apps; it then finishes its
    /// requests and exits. `ferry upgrade` does this with a new binary.
    #[arg(long)]
    pub takeover: bool,
}

pub async fn run(cli: &Cli, args: &Serve) -> CmdResult {
    let config = cli.load_servers()?;
    // ferry's own files (its database, logs, backups, mirror) are for ferry alone. As root,
    // release dirs that app users must pass through are made under the usual umask, and
    // ferry's own files get their modes explicitly (see `sandbox`, `store`, `backup`).
    if !nix::unistd::geteuid().is_root() {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    }
    let stop_apps = args.stop_apps || config.server.stop_apps_on_exit;
    let several = config.apps.len() > 1;
    let envs: Vec<String> = config
        .apps
        .iter()
        .flat_map(|a| {
            a.environments.iter().map(move |e| {
                let app = if several {
                    format!("{}/", a.app.name)
                } else {
                    String::new()
                };
                format!("{app}{} on {}", e.name, e.urls(&a.server).join(" "))
            })
        })
        .collect();
    let names = config.names().join(", ");
    let opts = StartOptions {
        takeover: args.takeover,
        serve_args: std::env::args_os().skip(1).collect(),
    };
    let daemon = Daemon::start(config, opts)
        .await
        .map_err(|e| Failure::Failed(format!("error: {e}")))?;
    outln!("ferry serving {names}: API on http://{}", daemon.api_addr);
    for env in envs {
        outln!("  {env}");
    }
    // under systemd (Type=notify): this process is the service's main one from now on
    crate::daemon::notify_systemd(&format!("READY=1\nMAINPID={}", std::process::id()));
    tokio::select! {
        () = wait_for_stop() => {
            crate::daemon::notify_systemd("STOPPING=1");
            if stop_apps {
                outln!("stopping: draining requests and stopping instances");
            } else {
                outln!("stopping: draining requests; the apps keep running for the next serve");
            }
        }
        () = daemon.handed_over() => {
            outln!("a new serve took over: draining requests; the apps keep running");
        }
    }
    daemon.stop(stop_apps).await;
    Ok(())
}

pub use crate::shutdown::wait_for_stop;

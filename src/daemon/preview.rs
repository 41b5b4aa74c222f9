//! Each environment's preview address: `preview_listen`, a listener of its own (bound,
//! passed by systemd or handed over like every other, named `<env>.preview`), and
//! `preview_hosts` on the front door. Both serve the environment's preview proxy, which
//! reaches a new instance before the switch (see `pipeline/checks.rs`).

use tokio::net::TcpListener;

use super::DaemonError;
use crate::config::{ProxySettings, ServerConfig};
use crate::pipeline::Engine;
use crate::proxy::Proxy;

/// The preview proxies of `engine` with a `preview_listen`, each with its listener.
pub(super) fn proxies(
    engine: &Engine,
    servers: &ServerConfig,
    listener: &mut dyn FnMut(&str) -> Result<TcpListener, DaemonError>,
) -> Result<Vec<(Proxy, ProxySettings, TcpListener)>, DaemonError> {
    let mut out = Vec::new();
    for state in engine
        .environments()
        .filter(|s| s.env.preview_listen.is_some())
    {
        let name = servers.preview_listener_name(&engine.config.app.name, &state.env.name);
        out.push((state.preview.clone(), engine.config.proxy, listener(&name)?));
    }
    Ok(out)
}

/// The front door's routes to `engine`'s preview proxies (every path of each preview host).
pub(super) fn entries(engine: &Engine) -> Vec<crate::frontdoor::Entry> {
    engine
        .environments()
        .filter(|s| !s.env.preview_hosts.is_empty())
        .map(|s| crate::frontdoor::Entry {
            app: engine.config.app.name.clone(),
            env: format!("{} (preview)", s.env.name),
            proxy: s.preview.clone(),
            hosts: s.env.preview_hosts.clone(),
            prefix: None,
            tls: None,
            redirect_https: false,
        })
        .collect()
}

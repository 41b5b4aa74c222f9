//! What `ferry status`, the API and the dashboard show of an environment with `servers`:
//! a line per host (the release it serves, its state, when it last answered), from the
//! store's `hosts` rows, and the environment's health as its hosts make it.

use serde::{Deserialize, Serialize};

use super::Engine;
use super::environment::EnvStatus;
use crate::config::Environment;
use crate::store::{HostRow, HostState};

/// One host of an environment with `servers`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HostStatus {
    /// The server as written in `servers`.
    pub host: String,
    /// The release it was last seen serving.
    pub release: Option<String>,
    /// The release it must serve (differs from `release` while it is `unknown`).
    pub wanted: Option<String>,
    /// `ok`, `unknown` (lost: not answered since), `failed`, or `none` (nothing deployed to it
    /// yet).
    pub state: String,
    /// When it last answered.
    pub last_seen: Option<String>,
    pub detail: Option<String>,
}

impl HostStatus {
    fn of(row: HostRow) -> HostStatus {
        HostStatus {
            host: row.host,
            release: row.serving,
            wanted: row.wanted,
            state: row.state.as_str().to_string(),
            last_seen: row.last_seen,
            detail: row.detail,
        }
    }

    /// The line `ferry status` prints for it, its times written by `at`.
    pub fn line(&self, at: impl Fn(&str) -> String) -> String {
        let release = self.release.as_deref().unwrap_or("nothing");
        let mut line = format!("host {}: {release}, {}", self.host, self.state);
        if let Some(wanted) = self
            .wanted
            .as_deref()
            .filter(|w| Some(*w) != self.release.as_deref())
        {
            line.push_str(&format!(" (must serve {wanted})"));
        }
        match &self.last_seen {
            Some(seen) => line.push_str(&format!(", last seen {}", at(seen))),
            None => line.push_str(", never seen"),
        }
        if let Some(detail) = self.detail.as_deref().filter(|_| self.state != "ok") {
            line.push_str(&format!(": {detail}"));
        }
        line
    }
}

/// The hosts of `env`, in the order of `servers`, from `rows` (a host without a row has had
/// nothing deployed to it yet); rows of hosts no longer configured are left out.
pub(super) fn host_statuses(env: &Environment, rows: Vec<HostRow>) -> Vec<HostStatus> {
    env.servers
        .iter()
        .map(|server| {
            rows.iter()
                .find(|r| r.host == server.name)
                .cloned()
                .map_or_else(
                    || HostStatus {
                        host: server.name.clone(),
                        release: None,
                        wanted: None,
                        state: "none".into(),
                        last_seen: None,
                        detail: None,
                    },
                    HostStatus::of,
                )
        })
        .collect()
}

/// The environment's health as its hosts make it: `none` before any deploy, `healthy` when
/// every host answered last and serves the release it must (one whose last step failed
/// included), `unhealthy` (naming the hosts) otherwise.
fn hosts_health(hosts: &[HostStatus], deployed: bool) -> (String, Option<String>) {
    if !deployed {
        return ("none".into(), None);
    }
    let bad: Vec<String> = hosts
        .iter()
        .filter(|h| {
            h.state == HostState::Unknown.as_str() || h.release.is_none() || h.release != h.wanted
        })
        .map(|h| match (h.state.as_str(), &h.release) {
            ("none", _) | (_, None) => format!("{}: nothing deployed", h.host),
            (state, _) => format!("{}: {state}", h.host),
        })
        .collect();
    if bad.is_empty() {
        (
            "healthy".into(),
            Some(format!("{} host(s) serving", hosts.len())),
        )
    } else {
        ("unhealthy".into(), Some(bad.join("; ")))
    }
}

impl Engine {
    /// For an environment with `servers`: its hosts, the health they make, where each is
    /// reached; nothing for one on this machine.
    pub(super) fn fill_hosts(
        &self,
        env: &Environment,
        status: &mut EnvStatus,
    ) -> Result<(), super::EngineError> {
        if env.servers.is_empty() {
            return Ok(());
        }
        status.hosts = host_statuses(env, self.store.hosts(&env.name)?);
        let (health, detail) = hosts_health(&status.hosts, status.release.is_some());
        status.health = health;
        status.health_detail = detail;
        status.response_ms = None;
        status.probed_at = None;
        if let Some(listen) = env.listen {
            status.urls = env
                .servers
                .iter()
                .map(|s| match s.host.contains(':') {
                    true => format!("http://[{}]:{}", s.host, listen.port()),
                    false => format!("http://{}:{}", s.host, listen.port()),
                })
                .collect();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, release: Option<&str>, state: &str) -> HostStatus {
        HostStatus {
            host: name.into(),
            release: release.map(str::to_string),
            wanted: release.map(str::to_string),
            state: state.into(),
            last_seen: Some("2026-12-02T08:00:00.000Z".into()),
            detail: Some("lost during health".into()),
        }
    }

    #[test]
    fn the_hosts_make_the_environments_health() {
        let ok = [
            host("app1", Some("v1"), "ok"),
            host("app2", Some("v1"), "ok"),
        ];
        assert_eq!(hosts_health(&ok, true).0, "healthy");
        assert_eq!(hosts_health(&ok, false).0, "none");
        let lost = [
            host("app1", Some("v1"), "ok"),
            host("app2", Some("v1"), "unknown"),
        ];
        let (health, detail) = hosts_health(&lost, true);
        assert_eq!(health, "unhealthy");
        assert_eq!(detail.as_deref(), Some("app2: unknown"));
        let mut line = lost[1].clone();
        line.wanted = Some("v0".into());
        assert_eq!(
            line.line(|t| t.to_string()),
            "host app2: v1, unknown (must serve v0), last seen 2026-12-02T08:00:00.000Z: lost during health"
        );
        assert_eq!(
            ok[0].line(|t| t.to_string()),
            "host app1: v1, ok, last seen 2026-12-02T08:00:00.000Z"
        );
    }
}

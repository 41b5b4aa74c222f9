//! One environment's live state: its proxy, its log and the instance serving it.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::Engine;
use crate::config::Environment;
use crate::proxy::{Proxy, Upstream};
use crate::runtime::{self, InstanceSpec, LogSink};
use crate::store::LockHolder;

/// The instance serving an environment.
pub(super) struct Active {
    /// Its row in the store's `instances` table.
    pub record: i64,
    pub instance: runtime::Instance,
    pub release: String,
    /// What the proxy sends to; counts the requests in flight on this instance.
    pub upstream: Arc<Upstream>,
    /// The `DEPLOYED_AT` the instance was given (its row's `started_at`).
    pub deployed_at: String,
}

/// The `DEPLOYED_AT` `spec` gives its instance.
pub(super) fn deployed_at(spec: &InstanceSpec) -> String {
    spec.vars
        .iter()
        .rev()
        .find(|(k, _)| k == "DEPLOYED_AT")
        .map_or_else(crate::store::now, |(_, v)| v.clone())
}

pub struct EnvState {
    pub env: Environment,
    pub proxy: Proxy,
    /// Its preview address's proxy: a deploy's new instance from the end of its health
    /// checks until the switch.
    pub preview: Proxy,
    pub log: LogSink,
    /// Who its build, test and app commands run as (`None`: ferry's own user).
    pub run_as: Option<crate::sandbox::RunAs>,
    pub(super) active: Mutex<Option<Active>>,
    /// Its process types besides `web` (see `processes.rs`).
    pub(super) workers: super::processes::Workers,
    /// The canary rollout under way, if one is (see `rollout.rs`).
    pub(super) rollout: super::rollout::Control,
}

/// What `ferry status` shows for one environment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnvStatus {
    pub environment: String,
    pub slot: u32,
    /// Its own port, if it has one.
    pub listen: Option<String>,
    /// Where it is reached: its own port and its front door hosts (see
    /// [`crate::config::Environment::urls`]).
    #[serde(default)]
    pub urls: Vec<String>,
    /// Its certificate on the front door (`tls`): issuer, expiry, the last error.
    #[serde(default)]
    pub certificate: Option<crate::tls::CertStatus>,
    pub version: Option<String>,
    #[serde(rename = "ref")]
    pub git_ref: Option<String>,
    pub commit_sha: Option<String>,
    pub release: Option<String>,
    pub deployed_at: Option<String>,
    pub deployed_by: Option<String>,
    /// The `DEPLOYED_AT` of the instance serving now (a restart gives a new one).
    pub live_since: Option<String>,
    pub deployment_id: Option<i64>,
    /// `healthy`, `unhealthy`, `down` (no instance running), `none` (never deployed) or,
    /// without a fresh probe, `unknown` (not probed yet).
    pub health: String,
    pub health_detail: Option<String>,
    pub response_ms: Option<u64>,
    /// When the health above was probed.
    pub probed_at: Option<String>,
    pub pid: Option<u32>,
    /// The instance's own port on 127.0.0.1 (behind the proxy).
    pub port: Option<u16>,
    /// Who holds the environment's lock: a deployment, ferry itself, or a person (`ferry lock`).
    pub deploying: Option<LockHolder>,
    /// The maintenance page's message while maintenance is on.
    pub maintenance: Option<String>,
    /// Each process type (`web` first, then `[processes]`): asked for, running, restarts.
    #[serde(default)]
    pub processes: Vec<super::ProcessStatus>,
    /// Deployments waiting for it (`--wait-lock`, pushes), first first.
    #[serde(default)]
    pub queue: Vec<super::Queued>,
    /// Where the new instance a deployment started is reached before the switch (its
    /// preview address), while there is one; empty otherwise.
    #[serde(default)]
    pub preview: Vec<String>,
    /// A canary rollout under way: the new release's share of clients, the step, the analysis.
    #[serde(default)]
    pub rollout: Option<super::RolloutStatus>,
    /// Each serving instance's traffic over the monitor's `window` (1m without one).
    #[serde(default)]
    pub traffic: Vec<crate::proxy::metrics::InstanceTraffic>,
    /// Each host of an environment with `servers` (see docs/servers.md): the release it
    /// serves, its state and when it last answered; empty for one on this machine.
    #[serde(default)]
    pub hosts: Vec<super::HostStatus>,
}

impl EnvState {
    pub(super) fn new(
        env: Environment,
        proxy: Proxy,
        log: LogSink,
        run_as: Option<crate::sandbox::RunAs>,
    ) -> EnvState {
        let preview = Proxy::preview(&env.name);
        EnvState {
            env,
            proxy,
            preview,
            log,
            run_as,
            active: Mutex::new(None),
            workers: Default::default(),
            rollout: Default::default(),
        }
    }

    /// Makes `next` the serving instance: the proxy switches atomically; the previous one is
    /// returned, still running, for the caller to drain and stop.
    pub(super) async fn activate(&self, next: Active) -> Option<Active> {
        let mut active = self.active.lock().await;
        self.proxy.switch(Some(next.upstream.clone()));
        active.replace(next)
    }

    /// What the monitor judges after a switch to the serving instance: its traffic, against
    /// `previous`'s before `switched_at`; `None` when the environment keeps no traffic
    /// figures (`traffic_metrics = false`).
    pub(super) fn traffic_at_switch(
        &self,
        cfg: &crate::config::Monitor,
        switched_at: std::time::Instant,
        previous: Option<&Active>,
    ) -> Option<super::monitor::Traffic> {
        if !self.env.traffic_metrics {
            return None;
        }
        let new = self.proxy.upstream()?;
        let previous = previous.map(|p| &*p.upstream);
        Some(super::monitor::Traffic::at_switch(
            cfg,
            switched_at,
            new,
            previous,
        ))
    }

    /// Takes the serving instance out of traffic (the proxy answers 503 until the next
    /// `activate`) and returns it, still running.
    pub(super) async fn deactivate(&self) -> Option<Active> {
        let mut active = self.active.lock().await;
        self.proxy.switch(None);
        active.take()
    }

    /// Where the serving instance listens, while it runs.
    pub async fn serving_addr(&self) -> Option<std::net::SocketAddr> {
        let active = self.active.lock().await;
        let a = active.as_ref().filter(|a| a.instance.exited().is_none())?;
        Some(std::net::SocketAddr::from((
            [127, 0, 0, 1],
            a.instance.port,
        )))
    }

    /// The instances taking traffic now, with their release: during a canary rollout the
    /// new one too.
    pub async fn serving(&self) -> Vec<(String, Arc<Upstream>)> {
        let mut all: Vec<(String, Arc<Upstream>)> = self
            .active
            .lock()
            .await
            .iter()
            .map(|a| (a.release.clone(), a.upstream.clone()))
            .collect();
        if let (Some(rollout), Some(canary)) = (self.rollout.status(), self.proxy.split_upstream())
        {
            all.push((rollout.release, canary));
        }
        all
    }

    /// Each serving instance's traffic figures over `window` (none with `traffic_metrics =
    /// false`).
    pub async fn traffic(
        &self,
        window: std::time::Duration,
    ) -> Vec<crate::proxy::metrics::InstanceTraffic> {
        if !self.env.traffic_metrics {
            return Vec::new();
        }
        self.serving()
            .await
            .iter()
            .map(|(release, up)| {
                crate::proxy::metrics::InstanceTraffic::new(release, up.addr, &up.window(window))
            })
            .collect()
    }

    /// The release currently serving, if any.
    pub async fn active_release(&self) -> Option<String> {
        self.active.lock().await.as_ref().map(|a| a.release.clone())
    }
}

impl Engine {
    /// The window traffic figures are shown over: the monitor's `window`, or a minute.
    pub fn traffic_window(&self) -> std::time::Duration {
        self.config
            .monitor
            .as_ref()
            .map_or(crate::config::DEFAULT_WINDOW, |m| m.traffic.window)
    }

    /// Status of one environment, probing its instance once.
    pub async fn status(&self, name: &str) -> Result<EnvStatus, super::EngineError> {
        self.status_with(name, true).await
    }

    /// Status of one environment without probing: health is the last recorded probe's
    /// (the health watcher's or the monitor's). Cheap enough for every dashboard page.
    pub async fn snapshot(&self, name: &str) -> Result<EnvStatus, super::EngineError> {
        self.status_with(name, false).await
    }

    async fn status_with(&self, name: &str, probe: bool) -> Result<EnvStatus, super::EngineError> {
        let state = self.env(name)?;
        let env = &state.env;
        let last = self.store.last_succeeded(name)?;
        let deploying = self.store.lock_holder(name)?;
        let (pid, port, release, live_since, container) = match state.active.lock().await.as_ref() {
            Some(a) if a.instance.exited().is_none() => (
                a.instance.pid(),
                Some(a.instance.port),
                Some(a.release.clone()),
                Some(a.deployed_at.clone()),
                a.instance
                    .container_id()
                    .map(|c| runtime::container::short(c).to_string()),
            ),
            _ => (None, None, None, None, None),
        };
        let processes = self.process_status(
            state,
            super::ProcessStatus {
                name: crate::config::WEB.to_string(),
                count: 1,
                running: u32::from(port.is_some()),
                pids: pid.into_iter().collect(),
                containers: container.into_iter().collect(),
                restarts: 0,
            },
        );
        let mut probed_at = None;
        let (health, detail, response_ms) = match port {
            None if last.is_none() => ("none".to_string(), None, None),
            None => (
                "down".to_string(),
                Some("no instance is running".into()),
                None,
            ),
            Some(_) if !probe => match self.store.last_probe(name)? {
                None => ("unknown".to_string(), Some("not probed yet".into()), None),
                Some(p) => {
                    probed_at = Some(p.at);
                    (
                        if p.ok { "healthy" } else { "unhealthy" }.to_string(),
                        p.detail,
                        Some(p.response_ms.round() as u64),
                    )
                }
            },
            Some(port) => {
                let path = &self.config.health.paths[0];
                let timeout = self
                    .config
                    .health
                    .timeout
                    .min(std::time::Duration::from_secs(2));
                let probe =
                    crate::health::probe(&crate::health::client(), port, path, timeout).await;
                let ms = Some(probe.elapsed.as_millis() as u64);
                probed_at = Some(crate::store::now());
                match probe.outcome {
                    Ok(code) if code == self.config.health.expect_status => {
                        ("healthy".to_string(), None, ms)
                    }
                    Ok(code) => (
                        "unhealthy".into(),
                        Some(format!("{path} answered {code}")),
                        ms,
                    ),
                    Err(e) => ("unhealthy".into(), Some(format!("{path}: {e}")), ms),
                }
            }
        };
        // what serves is the active release; the last success says who put it there, or
        // the deployment still monitoring it
        let last = last
            .filter(|d| release.is_none() || d.release == release)
            .or_else(|| {
                let id = deploying.as_ref()?.deployment_id?;
                self.store
                    .deployment(id)
                    .ok()
                    .filter(|d| d.release.is_some() && d.release == release)
            });
        let mut status = EnvStatus {
            environment: env.name.clone(),
            slot: env.slot,
            listen: env.listen.map(|a| a.to_string()),
            urls: env.urls(&self.config.server),
            certificate: self.certs.status(&crate::frontdoor::cert_name(
                &self.config.app.name,
                &env.name,
            )),
            version: last.as_ref().and_then(|d| d.version.clone()),
            git_ref: last.as_ref().map(|d| d.git_ref.clone()),
            commit_sha: last.as_ref().and_then(|d| d.commit_sha.clone()),
            release: release.or_else(|| last.as_ref().and_then(|d| d.release.clone())),
            deployed_at: last.as_ref().and_then(|d| d.finished_at.clone()),
            deployed_by: last.as_ref().map(|d| d.triggered_by.clone()),
            live_since,
            deployment_id: last.as_ref().map(|d| d.id),
            health,
            health_detail: detail,
            response_ms,
            probed_at,
            pid,
            port,
            deploying,
            maintenance: state.proxy.maintenance(),
            processes,
            queue: self.queue_of(name)?,
            preview: if state.preview.upstream().is_some() {
                env.preview_urls(&self.config.server)
            } else {
                Vec::new()
            },
            rollout: state.rollout.status(),
            traffic: state.traffic(self.traffic_window()).await,
            hosts: Vec::new(),
        };
        self.fill_hosts(env, &mut status)?;
        Ok(status)
    }

    /// Records a spawned instance in the store and in the engine's registry.
    pub(super) async fn record_instance(
        &self,
        state: &EnvState,
        release: &str,
        deployment: Option<i64>,
        instance: runtime::Instance,
        deployed_at: String,
    ) -> Result<Active, String> {
        let row = crate::store::Instance {
            id: 0,
            environment: state.env.name.clone(),
            deployment_id: deployment,
            release: release.to_string(),
            pid: instance.pid().unwrap_or(0),
            port: instance.port,
            proc_start: instance.pid().and_then(runtime::process_start_time),
            started_at: deployed_at.clone(),
            container: instance.container_id().map(str::to_string),
            process: crate::config::WEB.to_string(),
            replica: 0,
        };
        let record = match self.store.insert_instance(&row) {
            Ok(id) => id,
            Err(e) => {
                instance.stop(self.config.app.stop_timeout).await;
                return Err(format!("cannot record the instance: {e}"));
            }
        };
        self.track_instance(record, instance.clone());
        let upstream = Upstream::new(std::net::SocketAddr::from(([127, 0, 0, 1], instance.port)));
        Ok(Active {
            record,
            instance,
            release: release.to_string(),
            upstream,
            deployed_at,
        })
    }

    /// Starts an instance of `release` outside a deployment (restore, restart) and waits
    /// until it is healthy; on failure it is stopped again.
    pub(super) async fn start_healthy(
        &self,
        state: &EnvState,
        release: &str,
        spec: InstanceSpec,
    ) -> Result<Active, String> {
        let instance = self
            .runtime
            .start(&spec, &state.log)
            .await
            .map_err(|e| e.to_string())?;
        let active = self
            .record_instance(state, release, None, instance, deployed_at(&spec))
            .await?;
        match crate::health::wait_healthy(&active.instance, &self.config.health).await {
            Ok(_) => Ok(active),
            Err(e) => {
                self.stop_instance(active.record, &active.instance).await;
                Err(e.to_string())
            }
        }
    }

    /// Retires a replaced instance: waits for its requests and its long-lived connections
    /// (WebSockets, event streams: they were not cut at the switch) to finish, up to
    /// `drain_timeout`, then stops it, closing whatever was still open.
    pub(super) async fn retire(&self, old: Active) -> String {
        let timeout = self.config.app.drain_timeout;
        let open = Open::of(&old.upstream);
        let left = old.upstream.drain(timeout).await;
        let still = Open::of(&old.upstream);
        self.stop_instance(old.record, &old.instance).await;
        drain_report(&old.release, timeout, open, (left > 0).then_some(still))
    }
}

/// What was open on an instance: plain requests, and long-lived connections (upgraded ones
/// and event streams, each also counted in flight until it closes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Open {
    requests: usize,
    long_lived: usize,
}

impl Open {
    pub(crate) fn of(upstream: &Upstream) -> Open {
        let in_flight = upstream.in_flight();
        let long_lived = upstream.connections().2.min(in_flight);
        Open {
            requests: in_flight - long_lived,
            long_lived,
        }
    }

    fn describe(self) -> String {
        format!(
            "{} request(s) and {} long-lived connection(s) (WebSocket, event stream)",
            self.requests, self.long_lived
        )
    }
}

/// The finish step's words about draining `release`: what was open when the drain began,
/// and, when `drain_timeout` ended it, what was still open (and closed with the instance).
pub(crate) fn drain_report(
    release: &str,
    timeout: std::time::Duration,
    open: Open,
    timed_out: Option<Open>,
) -> String {
    let timeout = crate::config::format_duration(timeout);
    match timed_out {
        Some(still) => format!(
            "drained {release} for the drain timeout ({timeout}): {} were still open when it ended, and were closed as {release} stopped\n",
            still.describe()
        ),
        None if open.requests + open.long_lived > 0 => format!(
            "drained {release}: the {} open when its drain began finished within the drain timeout ({timeout}); stopped {release}\n",
            open.describe()
        ),
        None => format!("drained and stopped {release}\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::{Open, drain_report};
    use std::time::Duration;

    #[test]
    fn the_drain_reports_requests_and_long_lived_connections() {
        let t = Duration::from_secs(30);
        let none = Open {
            requests: 0,
            long_lived: 0,
        };
        let some = Open {
            requests: 2,
            long_lived: 1,
        };
        assert_eq!(
            drain_report("v1", t, none, None),
            "drained and stopped v1\n"
        );
        assert_eq!(
            drain_report("v1", t, some, None),
            "drained v1: the 2 request(s) and 1 long-lived connection(s) (WebSocket, event stream) open when its drain began finished within the drain timeout (30s); stopped v1\n"
        );
        let still = Open {
            requests: 0,
            long_lived: 3,
        };
        assert_eq!(
            drain_report("v1", t, some, Some(still)),
            "drained v1 for the drain timeout (30s): 0 request(s) and 3 long-lived connection(s) (WebSocket, event stream) were still open when it ended, and were closed as v1 stopped\n"
        );
    }
}

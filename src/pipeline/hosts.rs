//! The host path of a deployment to an environment with `servers` (docs/servers.md,
//! "Deploying to servers"): after the release is built here, `hosts` connects to every host
//! (nothing changes anywhere if one cannot be reached), `ship <host>` sends the release's bytes
//! (checked against the recorded digest on arrival), the release command runs once on the
//! first host, then `max_parallel` hosts at a time go `start <host>` → `health <host>` →
//! `switch <host>`. Any failure stops the rollout: the failing host's new instance is stopped
//! and every switched host is switched back to its previous instance, still warm, each a step
//! `switch back <host>`. A host lost mid-call is recorded `unknown` with the release it must
//! serve, for the reconciler (`reconcile.rs`). `monitor` (`host_monitor.rs`) probes every
//! host; `finish` stops the old instances and prunes each host's releases (`host_finish.rs`,
//! with the switch back).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use super::host_conn::{HostConn, HostError, Running, StartSpec};
use super::steps::{Stop, instance_vars};
use super::{Engine, EnvState};
use crate::agent::InstanceId;
use crate::store::{Deployment, DeploymentState};

/// The release the host steps ship and start.
#[derive(Clone, Copy)]
pub(super) struct HostRelease<'a> {
    pub name: &'a str,
    pub dir: &'a Path,
    pub digest: &'a str,
    pub version: &'a str,
    pub commit: &'a str,
}

/// What a deployment of each kind does on its hosts besides start, health and switch.
pub(super) struct HostRun<'a> {
    pub release: HostRelease<'a>,
    /// Runs `[app] release` on the first host (`task`); else the reason its step is skipped
    /// (`None`: a restart, which has no release step).
    pub release_command: Result<(), Option<&'static str>>,
    /// Watches the hosts after the switch (a deploy with `[monitor]`).
    pub monitor: Option<&'a crate::config::Monitor>,
}

/// A host connected by the `hosts` step, with what served on it then.
pub(super) struct Connected {
    pub conn: HostConn,
    /// Its serving instance when the deployment began.
    pub serving: Option<Running>,
}

impl Connected {
    /// The release it served when the deployment began.
    pub fn before(&self) -> Option<&str> {
        self.serving.as_ref().map(|r| r.release.as_str())
    }
}

/// What happened on one host in the rollout.
pub(super) struct Up {
    /// Its index among the connected hosts.
    pub host: usize,
    /// The new instance, once started.
    pub instance: Option<InstanceId>,
    /// The instance serving before the switch.
    pub previous: Option<InstanceId>,
    pub switched: bool,
    /// The step that failed on it, and whether the host was lost then.
    pub failed: Option<(Stop, bool)>,
}

impl Up {
    pub fn lost(&self) -> bool {
        self.failed.as_ref().is_some_and(|(_, lost)| *lost)
    }
}

/// A failed call on `host` as a step's stop; `lost` is set when the call lost the host.
pub(super) fn stop_of(e: HostError, lost: &AtomicBool) -> Stop {
    if e.is_lost() {
        lost.store(true, Ordering::Relaxed);
    }
    match e {
        HostError::Lost(m) => Stop::failed(format!("{m} (recorded unknown)")),
        HostError::Failed { message, output } => {
            let mut stop = Stop::failed(message);
            stop.app_output = output;
            stop
        }
    }
}

impl Engine {
    /// The host path of a deployment, after `prepare` (and, for a rollback, `restore`).
    pub(super) async fn on_hosts(
        &self,
        d: &Deployment,
        state: &EnvState,
        run: HostRun<'_>,
    ) -> Result<(), Stop> {
        let id = d.id;
        let env = &state.env.name;
        let rel = run.release;
        let hosts = self.step(id, "hosts", self.connect_hosts(state)).await?;
        for h in &hosts {
            let lost = AtomicBool::new(false);
            self.step(
                id,
                &format!("ship {}", h.conn.name),
                self.ship_to(h, rel, &lost),
            )
            .await
            .inspect_err(|stop| {
                self.record_host_failure(env, h, stop, lost.load(Ordering::Relaxed));
            })?;
        }
        match run.release_command {
            Ok(()) => {
                let first = &hosts[0];
                self.step(id, "release", self.release_on(state, first, rel))
                    .await
                    .inspect_err(|_| {
                        if d.kind == "deploy" {
                            self.mark_release(env, rel.name, "bad");
                        }
                    })?;
            }
            Err(Some(why)) => self.skip(id, "release", why),
            Err(None) => {}
        }
        let spec = self.host_start_spec(state, rel).await?;
        let mut ups: Vec<Up> = Vec::new();
        let batch = state.env.max_parallel.max(1);
        for first in (0..hosts.len()).step_by(batch) {
            let last = (first + batch).min(hosts.len());
            let round = (first..last).map(|i| self.host_up(id, state, &hosts, i, &spec));
            ups.extend(futures_util::future::join_all(round).await);
            if let Some((stop, lost)) = ups.iter().find_map(|u| u.failed.as_ref()) {
                if d.kind == "deploy" && !lost {
                    self.mark_release(env, rel.name, "bad");
                }
                let message = stop.message.clone();
                let undone = self.switch_back(id, state, &hosts, &ups, rel.name).await;
                return Err(Stop::failed(format!("{message}; {undone}")));
            }
        }
        // from the first switch on, every way out but success goes through the switch back
        // (a store error included): no host is left on a release the deployment gave up
        let rest: Result<(), Stop> = async {
            if let Some(cfg) = run.monitor {
                self.store
                    .set_state(id, DeploymentState::Monitoring, None)?;
                let watched = self
                    .step(
                        id,
                        "monitor",
                        self.watch_hosts(id, state, &hosts, &mut ups, rel, cfg),
                    )
                    .await;
                if let Err(mut stop) = watched {
                    self.mark_release(env, rel.name, "bad");
                    stop.state = DeploymentState::RolledBack;
                    return Err(stop);
                }
            } else if d.kind == "deploy" {
                self.skip(id, "monitor", "no [monitor] configured");
            } else if d.kind == "rollback" {
                self.skip(
                    id,
                    "monitor",
                    "rollbacks go back to a release that ran well before",
                );
            }
            // `finish` fails only when its step cannot be recorded: before it stops anything
            self.step(id, "finish", self.finish_hosts(d, state, &hosts, &ups, rel))
                .await
        }
        .await;
        if let Err(mut stop) = rest {
            let undone = self.switch_back(id, state, &hosts, &ups, rel.name).await;
            stop.message = format!("{}; {undone}", stop.message);
            return Err(stop);
        }
        Ok(())
    }

    /// The `hosts` step: every host connected (its agent installed if needed) and asked what
    /// it serves. One that cannot be refuses the deploy, naming it: nothing changed anywhere.
    async fn connect_hosts(&self, state: &EnvState) -> Result<(Vec<Connected>, String), Stop> {
        let env = &state.env;
        let app = &self.config.app.name;
        let tries = env.servers.iter().map(|server| async move {
            let conn = HostConn::connect(&self.config, server).await?;
            let seen = conn.status(app, &env.name).await?;
            Ok::<_, HostError>((conn, seen))
        });
        let mut hosts = Vec::new();
        let mut out = String::new();
        let mut refused = Vec::new();
        for (server, result) in env
            .servers
            .iter()
            .zip(futures_util::future::join_all(tries).await)
        {
            match result {
                Ok((conn, seen)) => {
                    out.push_str(&format!(
                        "{}: {}; {}\n",
                        server.name,
                        conn.describe(),
                        match &seen.serving {
                            Some(r) => format!("serving {} (instance {})", r.release, r.id),
                            None => "serving nothing yet".to_string(),
                        }
                    ));
                    hosts.push(Connected {
                        conn,
                        serving: seen.serving,
                    });
                }
                Err(e) => {
                    let line = format!("{}: {}", server.name, e.message());
                    out.push_str(&format!("{line}\n"));
                    if e.is_lost() {
                        let wanted = self.host_wanted(&env.name, &server.name);
                        let _ = self.store.host_unknown(
                            &env.name,
                            &server.name,
                            wanted.as_deref(),
                            &e.message(),
                        );
                    }
                    refused.push(line);
                }
            }
        }
        if !refused.is_empty() {
            let message = format!(
                "cannot reach every host, so nothing was changed on any: {}",
                refused.join("; ")
            );
            out.push_str(&format!("refused: {message}\n"));
            return Err(Stop::refused(message).with_output(&out));
        }
        Ok((hosts, out))
    }

    /// The release `host` must serve as recorded: its row's `wanted`, else the last good one.
    pub(super) fn host_wanted(&self, env: &str, host: &str) -> Option<String> {
        match self.store.host(env, host) {
            Ok(Some(row)) => row.wanted,
            _ => self
                .store
                .last_succeeded(env)
                .ok()
                .flatten()
                .and_then(|d| d.release),
        }
    }

    /// `ship <host>`: the release's bytes, unless the host has them with the same digest.
    async fn ship_to(
        &self,
        h: &Connected,
        rel: HostRelease<'_>,
        lost: &AtomicBool,
    ) -> Result<((), String), Stop> {
        let report = h
            .conn
            .ship(
                &self.config.app.name,
                rel.name,
                rel.digest,
                rel.dir,
                &self.config.app.shared,
            )
            .await
            .map_err(|e| stop_of(e, lost))?;
        let out = if report.present {
            format!(
                "{} already on {} with digest {}: nothing sent (bytes_sent=0)\n",
                rel.name, h.conn.name, rel.digest
            )
        } else {
            format!(
                "sent {} to {}: {} file(s), {} byte(s) (bytes_sent={}); digest {} checked there\n",
                rel.name,
                h.conn.name,
                report.files_sent,
                report.bytes_sent,
                report.bytes_sent,
                rel.digest
            )
        };
        Ok(((), out))
    }

    /// Records a host whose step failed before anything changed: `unknown` when the call
    /// lost it, else `failed`, serving (and wanting) what it served before.
    fn record_host_failure(&self, env: &str, h: &Connected, stop: &Stop, lost: bool) {
        let before = h.before();
        let result = if lost {
            self.store
                .host_unknown(env, &h.conn.name, before, &stop.message)
        } else {
            self.store
                .host_failed(env, &h.conn.name, before, before, &stop.message)
        };
        if let Err(e) = result {
            tracing::error!(env, host = %h.conn.name, error = %e, "cannot record the host");
        }
    }

    /// The release step on the first host: `[app] release` run once, in the new release.
    async fn release_on(
        &self,
        state: &EnvState,
        h: &Connected,
        rel: HostRelease<'_>,
    ) -> Result<((), String), Stop> {
        let command = self.config.app.release.clone().unwrap_or_default();
        let spec = self.host_start_spec(state, rel).await?;
        let mut out = format!("$ {command}   (on {})\n", h.conn.name);
        let (ok, output) = h
            .conn
            .task(
                &self.config.app.name,
                &state.env.name,
                &spec,
                &command,
                self.config.app.release_timeout,
            )
            .await
            .map_err(|e| stop_of(e, &AtomicBool::new(false)).with_output(&out))?;
        out.push_str(&output);
        if !out.ends_with('\n') {
            out.push('\n');
        }
        if ok {
            out.push_str(&format!("`{command}` done\n"));
            return Ok(((), out));
        }
        let message = match h.before() {
            Some(s) => format!("`{command}` failed on {}; {s} keeps serving", h.conn.name),
            None => format!("`{command}` failed on {}; nothing was started", h.conn.name),
        };
        out.push_str(&format!("{message}\n"));
        Err(Stop::failed(message).with_output(&out))
    }

    /// What an instance of `rel` starts with on a host: the variables ferry gives every
    /// instance, the environment's `env`, its secrets (read now).
    pub(super) async fn host_start_spec(
        &self,
        state: &EnvState,
        rel: HostRelease<'_>,
    ) -> Result<StartSpec, Stop> {
        let env = &state.env;
        let mut vars = instance_vars(state, rel.version, rel.commit);
        vars.push(("DEPLOYED_AT".into(), crate::store::now()));
        vars.push(("FERRY_PROCESS".into(), crate::config::WEB.into()));
        vars.extend(env.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        let secrets = self
            .secrets(env)
            .await
            .map_err(|e| Stop::failed(e.to_string()))?;
        Ok(StartSpec {
            release: rel.name.to_string(),
            start: self.config.app.start.clone(),
            vars,
            secrets: crate::agent::SecretVars(
                secrets
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ),
            stop_timeout: self.config.app.stop_timeout,
        })
    }

    /// One host's `start`, `health` and `switch`.
    async fn host_up(
        &self,
        id: i64,
        state: &EnvState,
        hosts: &[Connected],
        i: usize,
        spec: &StartSpec,
    ) -> Up {
        let h = &hosts[i];
        let (app, env) = (&self.config.app.name, &state.env.name);
        let name = &h.conn.name;
        let lost = AtomicBool::new(false);
        let mut up = Up {
            host: i,
            instance: None,
            previous: h.serving.as_ref().map(|r| r.id),
            switched: false,
            failed: None,
        };
        let started = self
            .step(id, &format!("start {name}"), async {
                let (instance, port) = h
                    .conn
                    .start(app, env, spec)
                    .await
                    .map_err(|e| stop_of(e, &lost))?;
                let out = format!(
                    "started {} on {name}: instance {instance} on port {port}\n",
                    spec.release
                );
                Ok((instance, out))
            })
            .await;
        let instance = match started {
            Ok(instance) => instance,
            Err(stop) => {
                up.failed = Some((stop, lost.load(Ordering::Relaxed)));
                return up;
            }
        };
        up.instance = Some(instance);
        let healthy = self
            .step(id, &format!("health {name}"), async {
                let log = h
                    .conn
                    .health(app, env, instance, &self.config.health)
                    .await
                    .map_err(|e| stop_of(e, &lost))?;
                Ok(((), log))
            })
            .await;
        if let Err(stop) = healthy {
            up.failed = Some((stop, lost.load(Ordering::Relaxed)));
            return up;
        }
        let listen = state.env.listen.map(|a| a.to_string()).unwrap_or_default();
        let switched = self
            .step(id, &format!("switch {name}"), async {
                let previous = h
                    .conn
                    .switch(app, env, instance, &listen)
                    .await
                    .map_err(|e| stop_of(e, &lost))?;
                let out = match h.before() {
                    Some(old) => format!(
                        "traffic on {name} moved from {old} to {} ({listen}); {old} keeps running out of traffic\n",
                        spec.release
                    ),
                    None => format!("traffic on {name} now goes to {} ({listen})\n", spec.release),
                };
                Ok((previous, out))
            })
            .await;
        match switched {
            Ok(previous) => {
                up.switched = true;
                if previous.is_some() {
                    up.previous = previous;
                }
            }
            Err(stop) => up.failed = Some((stop, lost.load(Ordering::Relaxed))),
        }
        up
    }

    /// The release serving `state`'s environment: its active instance's on this machine; on
    /// servers, what the last deployment that succeeded put on every host.
    pub(super) async fn serving_name(&self, state: &EnvState) -> Option<String> {
        if state.env.servers.is_empty() {
            return state.active_release().await;
        }
        self.store
            .last_succeeded(&state.env.name)
            .ok()
            .flatten()
            .and_then(|d| d.release)
    }
}

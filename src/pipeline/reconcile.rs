//! The reconciler (docs/servers.md, "A host lost mid-rollout"): a task of `serve` that brings
//! hosts back to the release they must serve. At start it visits every host of every
//! environment with `servers` that has had a release; then, every second, each host recorded
//! `unknown` whose backoff has passed (1 s, doubling up to a minute). A host that answers is
//! asked what it runs: the wanted release's instance is switched to (started again, its bytes
//! shipped if the host lacks them, and health-checked, when none runs), every other instance
//! of the environment there is stopped, and the host is recorded `ok`, with an audit entry and
//! an event. It works under the environment's lock, so never beside a deployment, on the row
//! and the host's answer read again once it holds the lock; a locked environment's hosts, and
//! any host whose visit failed, are tried again with the same backoff.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::host_conn::{HostConn, HostError, Seen};
use super::hosts::HostRelease;
use super::{Engine, EnvState};
use crate::config::SshServer;
use crate::store::{HostRow, HostState};

/// Holder name of the lock taken while hosts are put back on the release they must serve.
pub const RECONCILE_HOLDER: &str = "ferry (putting hosts back on their release)";

/// The longest wait between two tries of an unknown host.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

impl Engine {
    /// The reconciler's loop, until `shutdown`.
    pub async fn reconcile_hosts(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut next: HashMap<(String, String), (tokio::time::Instant, u32)> = HashMap::new();
        let mut first = true;
        loop {
            for state in self.environments().filter(|s| !s.env.servers.is_empty()) {
                if *shutdown.borrow() {
                    return;
                }
                self.reconcile_env(state, first, &mut next).await;
            }
            first = false;
            tokio::select! {
                () = crate::proxy::stopped(&mut shutdown) => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// One pass over `state`'s hosts that are due: every one with a row at the first pass,
    /// else the unknown ones whose backoff has passed. Hosts are asked what they run without
    /// the lock; only a change takes it.
    async fn reconcile_env(
        &self,
        state: &EnvState,
        first: bool,
        next: &mut HashMap<(String, String), (tokio::time::Instant, u32)>,
    ) {
        let env = &state.env.name;
        let now = tokio::time::Instant::now();
        let due: Vec<(&SshServer, HostRow)> = state
            .env
            .servers
            .iter()
            .filter_map(|s| {
                let row = self.store.host(env, &s.name).ok().flatten()?;
                let retry = next.get(&(env.clone(), s.name.clone()));
                // a host left to try again (a failure, a locked environment) is due too
                let wanted = first || row.state == HostState::Unknown || retry.is_some();
                let waited = retry.is_none_or(|(at, _)| now >= *at);
                (wanted && waited).then_some((s, row))
            })
            .collect();
        if due.is_empty() {
            return;
        }
        let app = &self.config.app.name;
        let visits = due.iter().map(|(server, _)| async move {
            let conn = HostConn::connect(&self.config, server).await?;
            let seen = conn.status(app, env).await?;
            Ok::<_, HostError>((conn, seen))
        });
        let visits = futures_util::future::join_all(visits).await;
        let mut changes = Vec::new();
        let mut outcomes = Vec::new();
        for ((server, row), visit) in due.iter().zip(visits) {
            match visit {
                Err(e) => outcomes.push((*server, row, Err(e))),
                Ok((conn, seen)) => match settled(&seen, row.wanted.as_deref()) {
                    Some(serving) => {
                        let result = self.settle(env, &server.name, row, serving);
                        outcomes.push((*server, row, result));
                    }
                    None => changes.push((*server, row, conn, seen)),
                },
            }
        }
        // a change is made under the environment's lock: never beside a deployment (which
        // decides what the hosts serve); a locked environment is tried again later (backoff)
        let locked = !changes.is_empty()
            && matches!(
                self.store
                    .acquire_lock(env, None, "restore", RECONCILE_HOLDER),
                Ok(Ok(()))
            );
        if locked {
            // what was read before the lock may be stale (a deployment ended meanwhile): the
            // row and the host are read again, and the host is left alone if it is settled
            let tries = changes
                .iter()
                .map(|(server, row, conn, _)| self.recheck_host(state, server, row, conn));
            let results = futures_util::future::join_all(tries).await;
            let _ = self.store.release_lock(env, None, "restore");
            for ((server, row, _, _), result) in changes.iter().zip(results) {
                outcomes.push((*server, row, result));
            }
        } else {
            // its row is left as it is (what holds the lock may be writing it)
            for (server, _, _, _) in &changes {
                let key = (env.clone(), server.name.clone());
                let failures = next.get(&key).map_or(0, |(_, n)| *n);
                let pause = backoff(failures);
                tracing::info!(env = %env, host = %server.name, "{env} is locked: host put back later; next try in {}s", pause.as_secs());
                next.insert(key, (tokio::time::Instant::now() + pause, failures + 1));
            }
        }
        for (server, row, result) in outcomes {
            let key = (env.clone(), server.name.clone());
            match result {
                Ok(done) => {
                    next.remove(&key);
                    if let Some(done) = done {
                        tracing::info!(env = %env, host = %server.name, "{done}");
                    }
                }
                Err(e) => {
                    let failures = next.get(&key).map_or(0, |(_, n)| *n);
                    let pause = backoff(failures);
                    if row.state == HostState::Unknown || e.is_lost() {
                        let _ = self.store.host_unknown(
                            env,
                            &server.name,
                            row.wanted.as_deref(),
                            &e.message(),
                        );
                    }
                    tracing::warn!(env = %env, host = %server.name, error = %e.message(), "host not reconciled; next try in {}s", pause.as_secs());
                    next.insert(key, (tokio::time::Instant::now() + pause, failures + 1));
                }
            }
        }
    }

    /// Records a host found serving what it must (or, wanting nothing, whatever it serves):
    /// `ok`, and an audit entry when it was not.
    fn settle(
        &self,
        env: &str,
        host: &str,
        row: &HostRow,
        serving: Option<&str>,
    ) -> Result<Option<String>, HostError> {
        let detail = format!(
            "{host} answers again, serving {}",
            serving.unwrap_or("nothing")
        );
        self.store
            .host_ok(env, host, serving, None)
            .map_err(store_failed)?;
        if row.state == HostState::Ok {
            return Ok(None);
        }
        self.store
            .audit_host(env, host, &detail)
            .map_err(store_failed)?;
        Ok(Some(detail))
    }

    /// Under the lock: the host's row and what it runs read again, then [`Self::settle`]d
    /// or [`Self::reconcile_host`]ed on those fresh reads.
    async fn recheck_host(
        &self,
        state: &EnvState,
        server: &SshServer,
        old: &HostRow,
        conn: &HostConn,
    ) -> Result<Option<String>, HostError> {
        let env = &state.env.name;
        let row = self
            .store
            .host(env, &server.name)
            .map_err(store_failed)?
            .unwrap_or_else(|| old.clone());
        let seen = conn.status(&self.config.app.name, env).await?;
        match settled(&seen, row.wanted.as_deref()) {
            Some(serving) => self.settle(env, &server.name, &row, serving),
            None => self.reconcile_host(state, server, &row, conn, &seen).await,
        }
    }

    /// Brings a host to the release its row wants (it runs something else, or more); says
    /// what it did.
    async fn reconcile_host(
        &self,
        state: &EnvState,
        server: &SshServer,
        row: &HostRow,
        conn: &HostConn,
        seen: &Seen,
    ) -> Result<Option<String>, HostError> {
        let (app, env) = (&self.config.app.name, &state.env.name);
        let host = &server.name;
        let (drain, stop_timeout) = (self.config.app.drain_timeout, self.config.app.stop_timeout);
        let Some(wanted) = row.wanted.clone() else {
            // it must serve nothing: whatever runs there is taken out of traffic and stopped
            let mut did = Vec::new();
            for stray in &seen.instances {
                conn.unserve_and_stop(app, env, stray.id, drain, stop_timeout)
                    .await?;
                did.push(format!(
                    "stopped instance {} ({}) on {host}: it must serve nothing",
                    stray.id, stray.release
                ));
            }
            let detail = did.join("; ");
            self.store
                .host_ok(env, host, None, Some(&detail))
                .map_err(store_failed)?;
            self.store
                .audit_host(env, host, &detail)
                .map_err(store_failed)?;
            return Ok(Some(detail));
        };
        let serving = seen.serving.as_ref().filter(|r| r.alive);
        let mut did = Vec::new();
        let instance = match serving.filter(|r| r.release == wanted) {
            Some(r) => r.id,
            None => {
                let warm = seen
                    .instances
                    .iter()
                    .find(|r| r.release == wanted && r.alive);
                let (instance, how) = match warm {
                    Some(r) => (r.id, "its instance still running"),
                    None => (
                        self.start_wanted(state, conn, &wanted).await?,
                        "started again",
                    ),
                };
                let listen = state.env.listen.map(|a| a.to_string()).unwrap_or_default();
                conn.switch(app, env, instance, &listen).await?;
                did.push(format!(
                    "{host} switched to {wanted} ({how}); it served {}",
                    serving.map_or("nothing", |r| r.release.as_str())
                ));
                instance
            }
        };
        // what a cut rollout left there: stopped
        for stray in seen.instances.iter().filter(|r| r.id != instance) {
            conn.stop(app, env, stray.id, drain, stop_timeout).await?;
            did.push(format!(
                "stopped instance {} ({}) on {host}",
                stray.id, stray.release
            ));
        }
        let detail = did.join("; ");
        self.store
            .host_ok(env, host, Some(&wanted), Some(&detail))
            .map_err(store_failed)?;
        self.store
            .audit_host(env, host, &detail)
            .map_err(store_failed)?;
        Ok(Some(detail))
    }

    /// Starts `release` on a host that runs no instance of it (its bytes shipped first if it
    /// lacks them) and waits until it is healthy; returns the instance.
    async fn start_wanted(
        &self,
        state: &EnvState,
        conn: &HostConn,
        release: &str,
    ) -> Result<crate::agent::InstanceId, HostError> {
        let (app, env) = (&self.config.app.name, &state.env.name);
        let failed = |message: String| HostError::Failed {
            message,
            output: None,
        };
        let row = self
            .store
            .release(env, release)
            .map_err(store_failed)?
            .filter(|r| r.digest.is_some())
            .ok_or_else(|| failed(format!("release {release} has no recorded build here")))?;
        let digest = row.digest.clone().unwrap_or_default();
        let dir = self.config.env_dir(env).join("releases").join(release);
        conn.ship(app, release, &digest, &dir, &self.config.app.shared)
            .await?;
        let rel = HostRelease {
            name: release,
            dir: &dir,
            digest: &digest,
            version: &row.version,
            commit: &row.commit_sha,
        };
        let spec = self
            .host_start_spec(state, rel)
            .await
            .map_err(|s| failed(s.message))?;
        let (instance, _) = conn.start(app, env, &spec).await?;
        if let Err(e) = conn.health(app, env, instance, &self.config.health).await {
            let app_cfg = &self.config.app;
            let _ = conn
                .stop(
                    app,
                    env,
                    instance,
                    app_cfg.drain_timeout,
                    app_cfg.stop_timeout,
                )
                .await;
            return Err(e);
        }
        Ok(instance)
    }
}

/// What a host serves, when it is what it must and nothing else of the environment runs
/// there (`None`: a change is needed). A host that must serve nothing is settled only when
/// nothing of the environment runs there (never adopting, say, a failed first deploy).
fn settled<'a>(seen: &'a Seen, wanted: Option<&str>) -> Option<Option<&'a str>> {
    let serving = seen.serving.as_ref().filter(|r| r.alive);
    let Some(wanted) = wanted else {
        return (seen.serving.is_none() && seen.instances.is_empty()).then_some(None);
    };
    let serving = serving.filter(|r| r.release == wanted)?;
    seen.instances
        .iter()
        .all(|r| r.id == serving.id)
        .then_some(Some(serving.release.as_str()))
}

/// The wait before the next try of a host after `failures` tries: 1 s, doubling up to
/// [`MAX_BACKOFF`].
fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1 << failures.min(6)).min(MAX_BACKOFF)
}

fn store_failed(e: crate::store::StoreError) -> HostError {
    HostError::Failed {
        message: e.to_string(),
        output: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::host_conn::Running;

    fn running(id: u64, release: &str) -> Running {
        Running {
            id,
            release: release.into(),
            alive: true,
        }
    }

    #[test]
    fn a_host_that_must_serve_nothing_is_settled_only_when_nothing_runs() {
        // a failed first deploy's host found serving it: never adopted
        let v1 = running(1, "v1");
        let serving = Seen {
            serving: Some(v1.clone()),
            instances: vec![v1.clone()],
        };
        assert_eq!(settled(&serving, None), None);
        let stray = Seen {
            serving: None,
            instances: vec![v1],
        };
        assert_eq!(settled(&stray, None), None);
        let empty = Seen {
            serving: None,
            instances: vec![],
        };
        assert_eq!(settled(&empty, None), Some(None));
        // wanting v1 and serving it alone: settled
        assert_eq!(settled(&serving, Some("v1")), Some(Some("v1")));
    }
}

//! The end of a rollout over hosts: the switch back when it stopped (every switched host on
//! its previous instance again, still warm, each a step `switch back <host>`; every new
//! instance stopped; every host's row recorded), and the `finish` step when it went through
//! (the old instances drained and stopped, each host's releases pruned).

use std::sync::atomic::{AtomicBool, Ordering};

use super::host_conn::HostError;
use super::hosts::{Connected, HostRelease, Up, stop_of};
use super::steps::Stop;
use super::{Engine, EnvState};
use crate::store::Deployment;

impl Engine {
    /// Undoes a stopped rollout: every switched host back on its previous instance (a step
    /// `switch back <host>` each), every new instance stopped, every host's row recorded.
    /// Returns what was done, for the deployment's reason.
    pub(super) async fn switch_back(
        &self,
        id: i64,
        state: &EnvState,
        hosts: &[Connected],
        ups: &[Up],
        release: &str,
    ) -> String {
        let (app, env) = (&self.config.app.name, &state.env.name);
        let listen = state.env.listen.map(|a| a.to_string()).unwrap_or_default();
        let drain = self.config.app.drain_timeout;
        let mut back = Vec::new();
        let mut lost = Vec::new();
        let mut not_back = Vec::new();
        for (i, h) in hosts.iter().enumerate() {
            let name = &h.conn.name;
            let before = h.before();
            let Some(up) = ups.iter().find(|u| u.host == i) else {
                // not reached: it serves what it did
                let _ = self.store.host_ok(env, name, before, None);
                continue;
            };
            if up.lost() {
                let why = up.failed.as_ref().map(|(s, _)| s.message.clone());
                let _ = self.store.host_unknown(
                    env,
                    name,
                    before,
                    &why.unwrap_or_else(|| format!("{name} was lost")),
                );
                lost.push(name.clone());
                continue;
            }
            let mut outcome: Result<(), HostError> = Ok(());
            let stop_timeout = self.config.app.stop_timeout;
            if let (true, Some(new)) = (up.switched, up.instance) {
                let cut = AtomicBool::new(false);
                let result = self
                    .step(id, &format!("switch back {name}"), async {
                        let mut out = String::new();
                        let report = match up.previous {
                            Some(prev) => {
                                h.conn
                                    .switch(app, env, prev, &listen)
                                    .await
                                    .map_err(|e| stop_of(e, &cut))?;
                                out.push_str(&format!(
                                    "traffic on {name} back on {} (kept warm)\n",
                                    before.unwrap_or("the previous release")
                                ));
                                h.conn.stop(app, env, new, drain, stop_timeout).await
                            }
                            None => {
                                // nothing to go back to: the proxy serves nothing (503)
                                let report = h
                                    .conn
                                    .unserve_and_stop(app, env, new, drain, stop_timeout)
                                    .await;
                                if report.is_ok() {
                                    out.push_str(&format!(
                                        "{name} served nothing before {release}: its proxy serves nothing again (503)\n"
                                    ));
                                }
                                report
                            }
                        };
                        out.push_str(&report.map_err(|e| stop_of(e, &cut))?);
                        Ok(((), out))
                    })
                    .await;
                match result {
                    Ok(()) if up.previous.is_none() => back.push(format!(
                        "{name} (it serves nothing: no release served there before)"
                    )),
                    Ok(()) => back.push(name.clone()),
                    Err(stop) if cut.load(Ordering::Relaxed) => {
                        outcome = Err(HostError::Lost(stop.message))
                    }
                    Err(stop) => {
                        outcome = Err(HostError::Failed {
                            message: stop.message,
                            output: None,
                        })
                    }
                }
            } else if let Some(new) = up.instance {
                // started, never switched to: stopped at once
                if let Err(e) = h.conn.stop(app, env, new, drain, stop_timeout).await {
                    outcome = Err(e);
                }
            }
            let failed_here = up.failed.as_ref().map(|(s, _)| s.message.clone());
            let result = match (&outcome, failed_here) {
                (Err(e), _) if e.is_lost() => {
                    lost.push(name.clone());
                    self.store.host_unknown(env, name, before, &e.message())
                }
                (Err(e), _) => {
                    // not put back: `unknown` with what it must serve, so the reconciler
                    // tries again
                    let serves = if up.switched {
                        release
                    } else {
                        before.unwrap_or("nothing")
                    };
                    not_back.push(format!("{name} (still serving {serves}: {})", e.message()));
                    self.store.host_unknown(
                        env,
                        name,
                        before,
                        &format!("not switched back, still serving {serves}: {}", e.message()),
                    )
                }
                (Ok(()), Some(why)) => self.store.host_failed(env, name, before, before, &why),
                (Ok(()), None) => self.store.host_ok(env, name, before, None),
            };
            if let Err(e) = result {
                tracing::error!(env, host = %name, error = %e, "cannot record the host");
            }
        }
        let mut said = match back.len() {
            0 => "no host had been switched".to_string(),
            _ => format!("switched back: {}", back.join(", ")),
        };
        if !not_back.is_empty() {
            said.push_str(&format!(
                "; NOT switched back: {} (recorded unknown; ferry tries again)",
                not_back.join("; ")
            ));
        }
        if !lost.is_empty() {
            said.push_str(&format!(
                "; lost: {} (recorded unknown; ferry puts it back on the release it must serve once it answers)",
                lost.join(", ")
            ));
        }
        said
    }

    /// `finish`: the old instance stopped on every host (its drain report each), each host's
    /// releases pruned to what the environments keep, the release's status recorded.
    pub(super) async fn finish_hosts(
        &self,
        d: &Deployment,
        state: &EnvState,
        hosts: &[Connected],
        ups: &[Up],
        rel: HostRelease<'_>,
    ) -> Result<((), String), Stop> {
        let (app, env) = (&self.config.app.name, &state.env.name);
        let drain = self.config.app.drain_timeout;
        let mut out = String::new();
        if d.kind == "deploy" {
            self.mark_release(env, rel.name, "good");
            let mut images = Vec::new();
            out.push_str(&self.prune(env, rel.name, &mut images));
            out.push_str(&self.prune_backups(env));
        }
        let keep = self.kept_releases(rel.name);
        for up in ups {
            let h = &hosts[up.host];
            let name = &h.conn.name;
            if let Some(old) = up.previous.filter(|_| up.switched) {
                let stop_timeout = self.config.app.stop_timeout;
                match h.conn.stop(app, env, old, drain, stop_timeout).await {
                    Ok(report) => out.push_str(&format!("{name}: {report}")),
                    Err(e) => {
                        out.push_str(&format!("{name}: could not stop {old}: {}\n", e.message()))
                    }
                }
            }
            match h.conn.prune(app, &keep).await {
                Ok(removed) if removed.is_empty() => {}
                Ok(removed) => out.push_str(&format!("{name}: pruned {}\n", removed.join(", "))),
                Err(e) => out.push_str(&format!("{name}: could not prune: {}\n", e.message())),
            }
            let _ = self.store.host_ok(env, name, Some(rel.name), None);
        }
        if !out.ends_with('\n') && !out.is_empty() {
            out.push('\n');
        }
        if d.kind == "rollback" {
            let undone = hosts
                .iter()
                .find_map(|h| h.before())
                .filter(|u| *u != rel.name);
            if let Some(undone) = undone {
                self.mark_release(env, undone, "bad");
                out.push_str(&format!("{undone} marked bad: rollbacks skip it\n"));
            }
            self.mark_release(env, rel.name, "good");
        }
        out.push_str(&format!("{} serves on {} host(s)\n", rel.name, hosts.len()));
        Ok(((), out))
    }

    /// The releases every host keeps: those this app keeps in any environment (a host's
    /// releases are the app's, shared by its environments), and `serving`.
    fn kept_releases(&self, serving: &str) -> Vec<String> {
        let mut keep = vec![serving.to_string()];
        for env in &self.config.environments {
            for r in self.store.releases(&env.name).unwrap_or_default() {
                if !keep.contains(&r.name) {
                    keep.push(r.name);
                }
            }
        }
        keep
    }
}

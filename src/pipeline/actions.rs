//! What people do besides deploying: approve, verify, lock, maintenance, report checks,
//! plan, and find where a promotion goes.

use serde::{Deserialize, Serialize};

use super::{Engine, EngineError};
use crate::config::{Track, format_duration, valid_check_name};
use crate::policy::{self, Ask, Gate};
use crate::release;
use crate::store::{Actor, Check, Deployment, LockHolder, Verification};

/// A commit check as CI reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckReport {
    pub name: String,
    /// `success`, `failure`, `error` or `pending`.
    pub status: String,
    pub url: Option<String>,
}

/// ferry's git mirror: when it was last fetched, and whether a fetch just happened.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Mirror {
    /// False when the fetch was skipped: the API asked for one less than
    /// [`FETCH_INTERVAL`] ago.
    pub fetched: bool,
    /// When the mirror was last cloned or fetched (by a deploy, a webhook or this route).
    pub fetched_at: Option<String>,
}

/// At most one fetch asked through the API per this long.
pub const FETCH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// What `ferry plan` shows: every gate and the steps a deploy would run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub environment: String,
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub commit_sha: String,
    pub version: String,
    pub release: String,
    pub gates: Vec<Gate>,
    pub steps: Vec<PlannedStep>,
    /// False when a gate would refuse the deploy.
    pub allowed: bool,
    /// The ref was resolved in ferry's mirror as fetched then (a plan never fetches).
    #[serde(default)]
    pub mirror_fetched_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlannedStep {
    pub name: String,
    pub detail: String,
}

const CHECK_STATUSES: &[&str] = &["success", "failure", "error", "pending"];

impl Engine {
    /// Approves deployment `id`, waiting in `awaiting_approval`. Where the environment says
    /// `approval = { not_by_deployer = true }`, the approver's token and name must both differ
    /// from the deployer's.
    pub fn approve(&self, id: i64, who: &Actor) -> Result<Deployment, EngineError> {
        let (d, _) = self.deployment(id)?;
        let not_by_deployer = self
            .env(&d.environment)
            .is_ok_and(|s| s.env.approval_not_by_deployer);
        if not_by_deployer && is_deployer(&d, who) {
            return Err(EngineError::Forbidden(format!(
                "deployment {id} was started by {}; {} needs someone else to approve it \
                 (approval = {{ not_by_deployer = true }}): ask a person with their own token \
                 and the approve scope",
                d.by(),
                d.environment
            )));
        }
        self.approvals.approve(&self.store, id, who)?;
        Ok(self.store.deployment(id)?)
    }

    /// The QA sign-off of the version running on `env` (`version`, when given, must be it).
    pub async fn verify(
        &self,
        env: &str,
        version: Option<&str>,
        who: &Actor,
    ) -> Result<Verification, EngineError> {
        let state = self.env(env)?;
        let Some(serving) = state.active_release().await else {
            return Err(EngineError::Conflict(format!(
                "nothing is running on {env} to verify"
            )));
        };
        let Some(d) = self
            .store
            .succeeded(env)?
            .into_iter()
            .find(|d| d.release.as_deref() == Some(serving.as_str()))
        else {
            return Err(EngineError::Conflict(format!(
                "no finished deployment put {serving} on {env}; wait for the running one to end"
            )));
        };
        let running = d.version.clone().unwrap_or_default();
        if let Some(v) = version
            && v != running
        {
            return Err(EngineError::Conflict(format!(
                "{env} runs {running}, not {v}: deploy {v} there first, then verify it"
            )));
        }
        let v = Verification {
            id: 0,
            environment: env.to_string(),
            version: running,
            commit_sha: d.commit_sha.clone().unwrap_or_default(),
            release: serving,
            digest: d.digest.clone().unwrap_or_default(),
            deployment_id: Some(d.id),
            verified_by: who.name.clone(),
            verified_at: crate::store::now(),
            verified_token: who.token.clone(),
        };
        let id = self.store.add_verification(&v)?;
        tracing::info!(env, version = %v.version, by = %who.shown(), "verified");
        Ok(Verification { id, ..v })
    }

    /// Locks `env` by hand; deploys are refused until it is unlocked.
    pub fn lock_env(&self, env: &str, who: &str, reason: &str) -> Result<LockHolder, EngineError> {
        self.env(env)?;
        if reason.trim().is_empty() {
            return Err(EngineError::Invalid(
                "a lock needs a reason: ferry lock <env> --reason \"…\"".into(),
            ));
        }
        match self.store.lock_manually(env, who, reason.trim())? {
            Ok(()) => Ok(self
                .store
                .lock_holder(env)?
                .ok_or_else(|| EngineError::Conflict("the lock vanished".into()))?),
            Err(h) => Err(EngineError::Conflict(h.refusal(env))),
        }
    }

    pub fn unlock_env(&self, env: &str) -> Result<(), EngineError> {
        self.env(env)?;
        if self.store.unlock_manually(env)? {
            Ok(())
        } else {
            Err(EngineError::Conflict(format!(
                "{env} is not locked by hand"
            )))
        }
    }

    /// Turns maintenance on or off; returns the message shown while on.
    pub fn set_maintenance(
        &self,
        env: &str,
        on: bool,
        message: Option<&str>,
        who: &str,
    ) -> Result<Option<String>, EngineError> {
        let state = self.env(env)?;
        let message = on.then(|| {
            message
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .unwrap_or("We are doing some maintenance and will be back shortly.")
                .chars()
                .take(2000)
                .collect::<String>()
        });
        let before = self
            .store
            .maintenance()?
            .into_iter()
            .find(|m| m.environment == env)
            .map(|m| m.message);
        self.store
            .set_maintenance(env, message.as_deref().map(|m| (m, who)))?;
        state.proxy.set_maintenance(message.clone());
        tracing::info!(env, on, by = who, "maintenance");
        // announced when it changed: on, off, or a new message (not `off` when it was off)
        if before != message {
            self.store
                .events()
                .publish(crate::events::Event::Maintenance {
                    environment: env.to_string(),
                    on,
                    message: message.clone(),
                    by: who.to_string(),
                    at: crate::store::now(),
                });
        }
        Ok(message)
    }

    /// Puts the stored maintenance state on every proxy (at `serve` start).
    pub fn apply_maintenance(&self) -> Result<(), EngineError> {
        for m in self.store.maintenance()? {
            if let Ok(state) = self.env(&m.environment) {
                state.proxy.set_maintenance(Some(m.message));
            }
        }
        Ok(())
    }

    /// Records a check CI reports for `sha` (a full 40-character commit id).
    pub fn report_check(
        &self,
        sha: &str,
        report: &CheckReport,
        who: &str,
    ) -> Result<Check, EngineError> {
        check_sha(sha)?;
        if !valid_check_name(&report.name) {
            return Err(EngineError::Invalid(format!(
                "check name \"{}\" is not allowed: use letters, digits, spaces and . _ - / :",
                report.name
            )));
        }
        if !CHECK_STATUSES.contains(&report.status.as_str()) {
            return Err(EngineError::Invalid(format!(
                "check status \"{}\" is not one of {}",
                report.status,
                CHECK_STATUSES.join(", ")
            )));
        }
        if let Some(url) = &report.url
            && (url.len() > 2000 || !(url.starts_with("http://") || url.starts_with("https://")))
        {
            return Err(EngineError::Invalid(
                "a check url must be an http(s) URL of at most 2000 characters".into(),
            ));
        }
        let check = Check {
            commit_sha: sha.to_ascii_lowercase(),
            name: report.name.clone(),
            status: report.status.clone(),
            url: report.url.clone(),
            reported_by: who.to_string(),
            reported_at: crate::store::now(),
        };
        self.store.add_check(&check)?;
        Ok(check)
    }

    /// Fetches the repository into the mirror, unless the API asked for a fetch less than
    /// [`FETCH_INTERVAL`] ago: a token holder cannot make ferry hammer the repository.
    pub async fn fetch_mirror(&self) -> Result<Mirror, EngineError> {
        let mirror = self.mirror_dir();
        let mut last = self.git.lock().await;
        let fetched = match *last {
            Some(at) if at.elapsed() < FETCH_INTERVAL => false,
            _ => {
                *last = Some(std::time::Instant::now());
                sync_private_mirror(&self.config.app.repo, &mirror).await?;
                true
            }
        };
        Ok(Mirror {
            fetched,
            fetched_at: mirror_fetched_at(&mirror),
        })
    }

    fn mirror_dir(&self) -> std::path::PathBuf {
        self.config.state_dir.join("mirror.git")
    }

    /// Every gate and the steps a deploy of `git_ref` to `env` would run; changes nothing.
    /// The ref is resolved in the mirror as last fetched: a read never reaches out to the
    /// repository (`ferry plan` asks for a fetch first, with its token).
    pub async fn plan(
        &self,
        env: &str,
        git_ref: &str,
        force: Option<&str>,
    ) -> Result<Plan, EngineError> {
        let state = self.env(env)?;
        check_ref_for(git_ref)?;
        let mirror = self.mirror_dir();
        let (resolved, fetched_at) = {
            let _git = self.git.lock().await;
            let Some(fetched_at) = mirror_fetched_at(&mirror) else {
                return Err(EngineError::Conflict(
                    "ferry has not fetched the repository yet: `ferry plan` fetches it first (POST /api/mirror/fetch), and so does a deploy".into(),
                ));
            };
            let resolved = match release::resolve(&mirror, git_ref).await {
                Ok(r) => r,
                Err(release::ReleaseError::UnknownRef { name, known }) => {
                    return Err(EngineError::Invalid(format!(
                        "ref \"{name}\" is not in ferry's mirror of the repository as fetched at {fetched_at} ({known}): check the name, or fetch first (`ferry plan` does, POST /api/mirror/fetch)"
                    )));
                }
                Err(e) => return Err(e.into()),
            };
            (resolved, fetched_at)
        };
        let env_cfg = &state.env;
        let ask = Ask {
            env: env_cfg,
            resolved: &resolved,
            force,
            now: chrono::Utc::now(),
        };
        let eval = policy::evaluate(&self.config, &self.store, &ask)?;
        let name = resolved.release_name();
        let built = self
            .store
            .release(env, &name)?
            .is_some_and(|r| r.digest.is_some() && r.status != "failed" && r.status != "pruned");
        let app = &self.config.app;
        let mut steps = Vec::new();
        let mut step = |name: &str, detail: String| {
            steps.push(PlannedStep {
                name: name.to_string(),
                detail,
            })
        };
        step(
            "resolve",
            format!("{git_ref} -> {} ({:?})", resolved.commit, resolved.kind),
        );
        step("policy", "the gates above".into());
        step("lock", format!("one deployment at a time on {env}"));
        let from = eval.verified.as_ref().map(|v| {
            if v.release == name {
                v.environment.clone()
            } else {
                format!("{} (as {})", v.environment, v.release)
            }
        });
        match (&from, built) {
            (_, true) => {
                step("prepare", format!("reuse release {name}, built before"));
                step("build", "skipped: built before".into());
                step("test", "skipped: tested before".into());
            }
            (Some(from), false) => {
                step(
                    "prepare",
                    format!("copy release {name} from {from} (the verified bytes)"),
                );
                step("build", format!("skipped: built on {from}"));
                step("test", format!("skipped: tested on {from}"));
            }
            (None, false) => {
                step(
                    "prepare",
                    format!("export {} into releases/{name}", &resolved.commit[..7]),
                );
                step("build", commands(&app.build));
                step("test", commands(&app.test));
            }
        }
        let hook = |hook: crate::config::Hook| {
            let commands = self.config.hooks.commands(hook);
            if commands.is_empty() {
                format!("skipped: no {} hook configured", hook.name())
            } else {
                crate::pipeline::hooks::describe(hook, commands)
            }
        };
        step("pre_deploy", hook(crate::config::Hook::PreDeploy));
        step(
            "backup",
            if env_cfg.backup.is_empty() {
                "skipped: no backup configured".into()
            } else {
                format!("snapshot {}", env_cfg.backup.join(", "))
            },
        );
        step(
            "release",
            match &app.release {
                Some(command) => format!("run `{command}` once in the new release, as an instance"),
                None => "skipped: no release command configured".into(),
            },
        );
        step("start", format!("run `{}` on a free port", app.start));
        step(
            "health",
            format!("probe {}", self.config.health.paths.join(", ")),
        );
        step("check", super::checks::describe(&self.config, env_cfg));
        step(
            "rollout",
            match &env_cfg.rollout {
                Some(r) => format!(
                    "{}: the new instance takes that share of clients, judged at each step",
                    r.describe()
                ),
                None => "skipped: no rollout configured".into(),
            },
        );
        step(
            "switch",
            format!(
                "move {env}'s traffic ({}) to the new instance",
                env_cfg.urls(&self.config.server).join(", ")
            ),
        );
        step(
            "monitor",
            match self.config.monitor.as_ref().filter(|_| env_cfg.monitor) {
                Some(m) => format!(
                    "probe every {} for {}, the previous instance kept warm",
                    format_duration(m.interval),
                    format_duration(m.duration)
                ),
                None => "skipped: no [monitor] configured".into(),
            },
        );
        step(
            "finish",
            format!(
                "stop the old instance, keep {} releases and the backups of the last {} deploys",
                app.keep_releases, app.keep_backups
            ),
        );
        step("post_deploy", hook(crate::config::Hook::PostDeploy));
        Ok(Plan {
            environment: env.to_string(),
            git_ref: git_ref.to_string(),
            commit_sha: resolved.commit.clone(),
            version: resolved.version.clone(),
            release: name,
            allowed: eval.refusal().is_none(),
            gates: eval.gates,
            steps,
            mirror_fetched_at: Some(fetched_at),
        })
    }

    /// Where `ferry promote <tag>` sends a tag: `to`, or the one environment that requires
    /// an environment the tag — or its commit, deployed under another ref — is verified on.
    pub async fn promotion_target(
        &self,
        tag: &str,
        to: Option<&str>,
    ) -> Result<String, EngineError> {
        check_ref_for(tag)?;
        if let Some(to) = to {
            let env = &self.env(to)?.env;
            if env.requires.is_none() {
                return Err(EngineError::Conflict(format!(
                    "{to} requires no other environment, so there is nothing to promote from; use `ferry deploy {to} {tag}`"
                )));
            }
            return Ok(to.to_string());
        }
        let mut sign_offs = self.store.verifications(Some(tag))?;
        if sign_offs.is_empty() {
            // verified as the branch or sha it was deployed under, then tagged: the tag's
            // commit, fetched (at most once per FETCH_INTERVAL) in case it was just pushed
            let _ = self.fetch_mirror().await;
            let mirror = self.mirror_dir();
            let _git = self.git.lock().await;
            if let Ok(resolved) = release::resolve(&mirror, tag).await {
                sign_offs = self.store.verifications_of_commit(&resolved.commit)?;
            }
        }
        let verified: Vec<String> = sign_offs
            .into_iter()
            .filter_map(|v| {
                self.config
                    .environment(&v.environment)
                    .map(|e| e.group.clone())
            })
            .collect();
        if verified.is_empty() {
            return Err(EngineError::Conflict(format!(
                "{tag} is not verified on any environment: deploy it to staging, check it, then run `ferry verify <env> {tag}`"
            )));
        }
        let targets: Vec<&str> = self
            .config
            .environments
            .iter()
            .filter(|e| e.requires.as_ref().is_some_and(|r| verified.contains(r)))
            .map(|e| e.name.as_str())
            .collect();
        match targets.as_slice() {
            [one] => Ok(one.to_string()),
            [] => Err(EngineError::Conflict(format!(
                "{tag} is verified on {}, but no environment requires it; name one with --to",
                verified.join(", ")
            ))),
            many => Err(EngineError::Conflict(format!(
                "{tag} can be promoted to {}: choose one with --to",
                many.join(", ")
            ))),
        }
    }

    /// Whether `env` deploys release tags only (for messages).
    pub fn takes_tags(&self, env: &str) -> bool {
        self.config
            .environment(env)
            .is_some_and(|e| e.track == Track::Tags)
    }
}

/// Clones or fetches `repo` into `mirror`, which only ferry may enter: its config can carry
/// the repository's credentials, and as root the state dir lets app users pass through.
pub(super) async fn sync_private_mirror(
    repo: &str,
    mirror: &std::path::Path,
) -> Result<(), release::ReleaseError> {
    use std::os::unix::fs::PermissionsExt;
    release::sync_mirror(repo, mirror).await?;
    std::fs::set_permissions(mirror, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| release::ReleaseError::Io(format!("making {} private", mirror.display()), e))
}

/// When the mirror was last fetched (`FETCH_HEAD`) or else cloned (`HEAD`); `None` when
/// there is no mirror yet.
fn mirror_fetched_at(mirror: &std::path::Path) -> Option<String> {
    let modified = |name: &str| std::fs::metadata(mirror.join(name)).and_then(|m| m.modified());
    let at = modified("FETCH_HEAD").or_else(|_| modified("HEAD")).ok()?;
    Some(
        chrono::DateTime::<chrono::Utc>::from(at)
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    )
}

fn check_ref_for(git_ref: &str) -> Result<(), EngineError> {
    release::check_ref(git_ref).map_err(EngineError::BadRef)
}

fn commands(list: &[String]) -> String {
    if list.is_empty() {
        "nothing to run".into()
    } else {
        list.iter()
            .map(|c| format!("`{c}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Checks are kept per full commit id: 40 hex digits, nothing else.
pub fn check_sha(sha: &str) -> Result<(), EngineError> {
    if sha.len() != 40 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(EngineError::Invalid(format!(
            "\"{}\" is not a full commit sha: checks are kept for the 40-character id",
            sha.chars().take(60).collect::<String>()
        )));
    }
    Ok(())
}

/// True when `who` is the one who started `d`: the same token, or the same claimed name.
fn is_deployer(d: &Deployment, who: &Actor) -> bool {
    let same_token = who.token.is_some() && who.token == d.triggered_token;
    let same_name = who.name.trim().eq_ignore_ascii_case(d.triggered_by.trim());
    same_token || same_name
}

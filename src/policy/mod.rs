//! Policy: the gates a deployment must pass before it acts — release tags, promotion,
//! commit checks, freeze windows, locks, approval — and the backups it will take.
//!
//! The pipeline's `policy` step and `ferry plan` both ask [`evaluate`], so what plan says is
//! what a deploy does. Nothing here changes state.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use crate::config::FreezeWindow;

use crate::config::{Config, Environment, Track};
use crate::release::{RefKind, Resolved};
use crate::store::{Store, StoreError, Verification};

/// How a gate came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    Fail,
    /// Passes once a person acts (approval).
    Wait,
    /// Not a gate: something the deploy will do (backups).
    Note,
}

/// One gate's outcome and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Gate {
    pub name: String,
    pub verdict: Verdict,
    pub detail: String,
}

/// Every gate for one deploy, and the sign-off that lets a promotion through.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub gates: Vec<Gate>,
    /// The verification a promotion relies on; its digest must match what is deployed.
    pub verified: Option<Verification>,
}

impl Evaluation {
    /// The failed gates' reasons, joined; `None` when nothing refuses the deploy.
    pub fn refusal(&self) -> Option<String> {
        let failed: Vec<&str> = self
            .gates
            .iter()
            .filter(|g| g.verdict == Verdict::Fail)
            .map(|g| g.detail.as_str())
            .collect();
        (!failed.is_empty()).then(|| failed.join("; "))
    }
}

/// What is asked: a ref resolved for an environment, maybe forced through freeze windows.
pub struct Ask<'a> {
    pub env: &'a Environment,
    pub resolved: &'a Resolved,
    /// `--force --reason`: the reason, which lets a deploy through freeze windows.
    pub force: Option<&'a str>,
    pub now: DateTime<Utc>,
}

/// Checks `tag` is a release tag (`vMAJOR.MINOR.PATCH`, a pre-release only when allowed).
pub fn release_tag(tag: &str, prerelease: bool) -> Result<semver::Version, String> {
    let not_release =
        || format!("\"{tag}\" is not a release tag: write vMAJOR.MINOR.PATCH, like v1.2.3");
    let version = tag
        .strip_prefix('v')
        .and_then(|v| semver::Version::parse(v).ok())
        .ok_or_else(not_release)?;
    if !version.build.is_empty() {
        return Err(not_release());
    }
    if !version.pre.is_empty() && !prerelease {
        return Err(format!(
            "{tag} is a pre-release; this environment takes release tags only (set `prerelease = true` to allow them)"
        ));
    }
    Ok(version)
}

/// Evaluates every gate for `ask`.
pub fn evaluate(config: &Config, store: &Store, ask: &Ask<'_>) -> Result<Evaluation, StoreError> {
    let env = ask.env;
    let mut gates = Vec::new();
    let mut gate = |name: &str, verdict: Verdict, detail: String| {
        gates.push(Gate {
            name: name.to_string(),
            verdict,
            detail,
        });
    };

    let version = &ask.resolved.version;
    match (&env.track, ask.resolved.kind) {
        (Track::Tags, RefKind::Tag) => match release_tag(version, env.prerelease) {
            Ok(_) => gate("tag", Verdict::Pass, format!("{version} is a release tag")),
            Err(e) => gate("tag", Verdict::Fail, e),
        },
        (Track::Tags, kind) => gate(
            "tag",
            Verdict::Fail,
            format!(
                "{} takes release tags only, and \"{version}\" is a {}",
                env.name,
                match kind {
                    RefKind::Branch => "branch",
                    _ => "commit",
                }
            ),
        ),
        _ => gate(
            "tag",
            Verdict::Pass,
            format!("{} does not require release tags", env.name),
        ),
    }

    let mut verified = None;
    if let Some(required) = &env.requires {
        let (verdict, detail, v) = promotion(config, store, required, ask.resolved)?;
        verified = v;
        gate("promotion", verdict, detail);
    } else {
        gate(
            "promotion",
            Verdict::Pass,
            format!("{} requires no other environment first", env.name),
        );
    }

    if env.require_checks.is_empty() {
        gate("checks", Verdict::Pass, "no commit checks required".into());
    } else {
        let reported = store.checks(&ask.resolved.commit)?;
        let short = &ask.resolved.commit[..7];
        let mut missing = Vec::new();
        for name in &env.require_checks {
            match reported.iter().find(|c| &c.name == name) {
                Some(c) if c.status == "success" => {}
                Some(c) => missing.push(format!("check \"{name}\" is {} on {short}", c.status)),
                None => missing.push(format!("check \"{name}\" was never reported for {short}")),
            }
        }
        if missing.is_empty() {
            gate(
                "checks",
                Verdict::Pass,
                format!("{} passed on {short}", env.require_checks.join(", ")),
            );
        } else {
            gate("checks", Verdict::Fail, missing.join("; "));
        }
    }

    let local = match env.timezone {
        Some(tz) => ask.now.with_timezone(&tz).naive_local(),
        None => ask.now.with_timezone(&chrono::Local).naive_local(),
    };
    match env.freeze.iter().find(|w| w.contains(local)) {
        None => gate(
            "freeze",
            Verdict::Pass,
            "outside every freeze window".into(),
        ),
        Some(w) => match ask.force {
            Some(reason) => gate(
                "freeze",
                Verdict::Pass,
                format!("inside freeze window \"{w}\", forced: {reason}"),
            ),
            None => gate(
                "freeze",
                Verdict::Fail,
                format!(
                    "{} is frozen (\"{w}\"); deploy anyway with --force --reason \"…\"",
                    env.name
                ),
            ),
        },
    }

    match store.lock_holder(&env.name)? {
        None => gate("lock", Verdict::Pass, format!("{} is not locked", env.name)),
        Some(h) => gate("lock", Verdict::Fail, h.refusal(&env.name)),
    }

    if env.approval {
        gate(
            "approval",
            Verdict::Wait,
            format!(
                "waits for `ferry approve` (refused after {})",
                crate::config::format_duration(env.approval_timeout)
            ),
        );
    } else {
        gate("approval", Verdict::Pass, "no approval needed".into());
    }

    if !env.backup.is_empty() {
        gate(
            "backup",
            Verdict::Note,
            format!("snapshots {} before start", env.backup.join(", ")),
        );
    }
    Ok(Evaluation { gates, verified })
}

/// The promotion gate: the commit of `resolved` must have been deployed to an environment of
/// group `required` — under this tag, or under a branch, another tag or its sha — and
/// verified there. A sign-off of this very tag is preferred; any sign-off of the commit counts.
fn promotion(
    config: &Config,
    store: &Store,
    required: &str,
    resolved: &Resolved,
) -> Result<(Verdict, String, Option<Verification>), StoreError> {
    let version = &resolved.version;
    let short = &resolved.commit[..7];
    let group: Vec<String> = config
        .group(required)
        .iter()
        .map(|e| e.name.clone())
        .collect();
    let in_group = |v: &Verification| group.contains(&v.environment);
    let of_commit: Vec<Verification> = store
        .verifications_of_commit(&resolved.commit)?
        .into_iter()
        .filter(in_group)
        .collect();
    if let Some(v) = of_commit
        .iter()
        .find(|v| &v.version == version)
        .or_else(|| of_commit.first())
        .cloned()
    {
        let under = if &v.version == version {
            String::new()
        } else {
            format!(" as {}", v.release)
        };
        let detail = format!(
            "{version} ({short}) verified on {}{under} by {} at {}",
            v.environment,
            v.by(),
            v.verified_at
        );
        return Ok((Verdict::Pass, detail, Some(v)));
    }
    // why not: the tag moved, the commit runs there unverified, another commit was verified
    let tag_sign_offs: Vec<Verification> = store
        .verifications(Some(version))?
        .into_iter()
        .filter(in_group)
        .collect();
    let detail = if let Some(v) = tag_sign_offs.first() {
        format!(
            "{version} was verified on {} at commit {}, but it is now commit {short}",
            v.environment,
            &v.commit_sha[..7.min(v.commit_sha.len())],
        )
    } else if let Some(d) = store.deployed_commit(&group, &resolved.commit)?.first() {
        let env = &d.environment;
        if d.version.as_deref() == Some(version.as_str()) {
            format!("{version} on {env} is not verified: run `ferry verify {env} {version}`")
        } else {
            format!(
                "{version} is commit {short}, deployed to {env} as {} but not verified: run `ferry verify {env}` while it runs there",
                d.release.as_deref().unwrap_or("?")
            )
        }
    } else if !store.deployed_versions(&group, version)?.is_empty() {
        format!("{version} was deployed to {required} at another commit than {short}")
    } else {
        let mut detail = format!("{version} was never deployed to {required}");
        if let Some(v) = store.verifications(None)?.into_iter().find(in_group) {
            detail.push_str(&format!(
                ": {version} is commit {short}, and the newest commit verified on {required} is {} ({} on {}); tag that commit, or deploy {version} to {required} and verify it",
                &v.commit_sha[..7.min(v.commit_sha.len())],
                v.release,
                v.environment
            ));
        }
        detail
    };
    Ok((Verdict::Fail, detail, None))
}

#[cfg(test)]
mod tests;

//! The git side of a release: refs checked before git sees them, the mirror, resolution,
//! commit ranges and the exported tree.

use std::path::Path;
use std::process::Stdio;

use tokio::process::Command;

use super::tree::partial_path;
use super::{GIT_TIMEOUT, ReleaseError, io};

/// Refuses refs that could be read as options, escape a directory or confuse git.
pub fn check_ref(r: &str) -> Result<(), ReleaseError> {
    let bad = |why| Err(ReleaseError::BadRef(r.to_string(), why));
    if r.is_empty() || r.len() > 200 {
        return bad("it must be 1 to 200 characters");
    }
    if r.starts_with('-') {
        return bad("it must not start with '-'");
    }
    if r.contains("..") || r.contains("//") || r.starts_with('/') || r.ends_with('/') {
        return bad("it must not contain '..' or empty path parts");
    }
    if r.ends_with(".lock") || r.ends_with('.') || r.contains("@{") {
        return bad("git does not allow that form");
    }
    if !r
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | '+'))
    {
        return bad("use letters, digits and . _ - / + only");
    }
    Ok(())
}

/// What a ref resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub commit: String,
    /// The tag or branch name, or the short sha for a bare commit.
    pub version: String,
    pub kind: RefKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefKind {
    Tag,
    Branch,
    Commit,
}

impl Resolved {
    /// The release directory's name: `<version>-<sha7>`, made safe for a path.
    pub fn release_name(&self) -> String {
        let version: String = self
            .version
            .chars()
            .map(|c| if c == '/' { '-' } else { c })
            .collect();
        format!("{version}-{}", &self.commit[..7])
    }
}

async fn git(dir: Option<&Path>, args: &[&str], action: &str) -> Result<String, ReleaseError> {
    let mut cmd = Command::new("git");
    if let Some(dir) = dir {
        cmd.arg("-C").arg(dir);
    }
    cmd.args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(GIT_TIMEOUT, cmd.output())
        .await
        .map_err(|_| ReleaseError::Git {
            action: action.into(),
            output: format!("timed out after {}s", GIT_TIMEOUT.as_secs()),
        })?
        .map_err(io("running git"))?;
    if !out.status.success() {
        return Err(ReleaseError::Git {
            action: action.into(),
            output: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// One commit, as the dashboard lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    pub sha: String,
    pub subject: String,
    pub author: String,
}

fn range_text(from: Option<&str>, to: &str) -> String {
    format!("{}..{to}", from.unwrap_or(""))
}

/// The commits reachable from `to` but not from `from` (all of `to`'s history when `from`
/// is `None`), newest first, at most `max`; and whether there were more.
pub async fn commits_between(
    mirror: &Path,
    from: Option<&str>,
    to: &str,
    max: usize,
) -> Result<(Vec<Commit>, bool), ReleaseError> {
    let is_sha = |s: &str| (4..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !is_sha(to) || from.is_some_and(|f| !is_sha(f)) {
        return Err(ReleaseError::BadRef(
            range_text(from, to),
            "commits are compared by sha",
        ));
    }
    let range = match from {
        Some(from) => format!("{from}..{to}"),
        None => to.to_string(),
    };
    let limit = format!("--max-count={}", max + 1);
    let out = git(
        Some(mirror),
        &[
            "log",
            "--no-decorate",
            "--format=%H%x1f%s%x1f%an",
            &limit,
            &range,
            "--",
        ],
        "listing commits",
    )
    .await?;
    let mut commits: Vec<Commit> = out
        .lines()
        .filter_map(|line| {
            let mut parts = line.split('\x1f');
            Some(Commit {
                sha: parts.next()?.to_string(),
                subject: parts.next()?.to_string(),
                author: parts.next()?.to_string(),
            })
        })
        .collect();
    let more = commits.len() > max;
    commits.truncate(max);
    Ok((commits, more))
}

/// Clones `repo` into `mirror` (a bare mirror) the first time, then fetches.
pub async fn sync_mirror(repo: &str, mirror: &Path) -> Result<(), ReleaseError> {
    if mirror.join("HEAD").exists() {
        git(
            Some(mirror),
            &["fetch", "--prune", "--prune-tags", "--force", "origin"],
            "fetch",
        )
        .await?;
        return Ok(());
    }
    if let Some(parent) = mirror.parent() {
        std::fs::create_dir_all(parent).map_err(io("creating the mirror dir"))?;
    }
    let tmp = mirror.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    let tmp_str = tmp.to_string_lossy();
    git(
        None,
        &["clone", "--mirror", "--quiet", "--", repo, &tmp_str],
        "clone",
    )
    .await?;
    std::fs::rename(&tmp, mirror).map_err(io("placing the mirror"))?;
    Ok(())
}

/// Resolves a tag, branch or commit sha in the mirror; tags win over branches of the same name.
pub async fn resolve(mirror: &Path, r: &str) -> Result<Resolved, ReleaseError> {
    check_ref(r)?;
    let lookup = |full: String| async move {
        git(
            Some(mirror),
            &[
                "rev-parse",
                "--verify",
                "--quiet",
                "--end-of-options",
                &format!("{full}^{{commit}}"),
            ],
            "rev-parse",
        )
        .await
        .ok()
    };
    if let Some(commit) = lookup(format!("refs/tags/{r}")).await {
        return Ok(Resolved {
            commit,
            version: r.to_string(),
            kind: RefKind::Tag,
        });
    }
    if let Some(commit) = lookup(format!("refs/heads/{r}")).await {
        return Ok(Resolved {
            commit,
            version: r.to_string(),
            kind: RefKind::Branch,
        });
    }
    if (7..=40).contains(&r.len())
        && r.chars().all(|c| c.is_ascii_hexdigit())
        && let Some(commit) = lookup(r.to_string()).await
    {
        let version = commit[..7].to_string();
        return Ok(Resolved {
            commit,
            version,
            kind: RefKind::Commit,
        });
    }
    Err(ReleaseError::UnknownRef {
        name: r.to_string(),
        known: known_refs(mirror).await,
    })
}

/// The branches and tags of `mirror` (newest tags first, a few of each), or that it has no
/// commits: what to say when a ref is not found.
async fn known_refs(mirror: &Path) -> String {
    const SHOWN: usize = 10;
    let list = |pattern: &'static str, sort: &'static str| async move {
        let out = git(
            Some(mirror),
            &["for-each-ref", sort, "--format=%(refname:short)", pattern],
            "for-each-ref",
        )
        .await
        .unwrap_or_default();
        out.lines().map(str::to_string).collect::<Vec<_>>()
    };
    let branches = list("refs/heads", "--sort=refname").await;
    let tags = list("refs/tags", "--sort=-creatordate").await;
    if branches.is_empty() && tags.is_empty() {
        return "the repository has no commits yet: commit and push your app first".into();
    }
    let named = |what: &str, all: &[String]| {
        if all.is_empty() {
            return format!("no {what}");
        }
        let more = all.len().saturating_sub(SHOWN);
        let mut text = format!("{what}: {}", all[..all.len().min(SHOWN)].join(", "));
        if more > 0 {
            text.push_str(&format!(" and {more} more"));
        }
        text
    };
    format!("{}; {}", named("branches", &branches), named("tags", &tags))
}

/// Writes the tree of `commit` into `dest` (which must not exist), without `.git`.
pub async fn export(mirror: &Path, commit: &str, dest: &Path) -> Result<(), ReleaseError> {
    let tmp = partial_path(dest);
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io(format!("creating {}", tmp.display())))?;
    // nothing exported is writable by group or other, whatever git's default umask says
    let script = "git -c tar.umask=0022 -C \"$1\" archive --format=tar \"$2\" | tar -x --no-same-owner -C \"$3\"";
    let out = Command::new("sh")
        .args(["-c", script, "export"])
        .arg(mirror)
        .arg(commit)
        .arg(&tmp)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(io("exporting the tree"))?;
    if !out.status.success() {
        return Err(ReleaseError::Git {
            action: "archive".into(),
            output: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    std::fs::rename(&tmp, dest).map_err(io(format!("placing {}", dest.display())))?;
    Ok(())
}

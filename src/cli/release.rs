//! `ferry release <major|minor|patch|X.Y.Z> [--push]`: in the app's working copy, from the
//! last release tag, the commits since grouped into a Keep a Changelog section at the top of
//! `CHANGELOG.md`, committed, and an annotated tag whose message is that section.
//!
//! Refuses on a dirty tree (`--allow-dirty`: only CHANGELOG.md is committed) and on a branch
//! other than main, master or release/* (`--allow-branch`).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{CmdResult, Failure};
use crate::changelog::{self, Commit};

#[derive(Debug, clap::Args)]
pub struct Release {
    /// `major`, `minor`, `patch`, or an exact version such as 1.4.0.
    pub bump: String,
    /// The app's working copy.
    #[arg(long, default_value = ".")]
    pub repo: PathBuf,
    /// Push the commit and the tag to this remote afterwards.
    #[arg(long)]
    pub push: bool,
    /// The remote `--push` pushes to.
    #[arg(long, default_value = "origin")]
    pub remote: String,
    /// Release even with uncommitted changes (they stay uncommitted).
    #[arg(long)]
    pub allow_dirty: bool,
    /// Release from a branch other than main, master or release/*.
    #[arg(long)]
    pub allow_branch: bool,
    /// Print the section and the version; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

fn git(repo: &Path, args: &[&str]) -> Result<String, Failure> {
    let out = Command::new("git")
        .args(args)
        .current_dir(repo)
        .output()
        .map_err(|e| Failure::Failed(format!("error: cannot run git: {e}")))?;
    if !out.status.success() {
        return Err(Failure::Failed(format!(
            "error: git {} failed: {}",
            args.first().copied().unwrap_or(""),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The newest `vX.Y.Z` tag reachable from HEAD (pre-releases are not releases here).
fn last_release(repo: &Path) -> Result<Option<(String, semver::Version)>, Failure> {
    let tags = git(repo, &["tag", "--merged", "HEAD", "--list", "v*"])?;
    Ok(tags
        .lines()
        .filter_map(|t| {
            let v = semver::Version::parse(t.strip_prefix('v')?).ok()?;
            (v.pre.is_empty() && v.build.is_empty()).then(|| (t.to_string(), v))
        })
        .max_by(|a, b| a.1.cmp(&b.1)))
}

fn next_version(bump: &str, last: Option<&semver::Version>) -> Result<semver::Version, Failure> {
    let zero = semver::Version::new(0, 0, 0);
    let last = last.unwrap_or(&zero);
    let next = match bump {
        "major" => semver::Version::new(last.major + 1, 0, 0),
        "minor" => semver::Version::new(last.major, last.minor + 1, 0),
        "patch" => semver::Version::new(last.major, last.minor, last.patch + 1),
        exact => {
            semver::Version::parse(exact.strip_prefix('v').unwrap_or(exact)).map_err(|_| {
                Failure::Usage(format!(
                    "error: \"{exact}\" is not major, minor, patch or a version like 1.4.0"
                ))
            })?
        }
    };
    if !next.build.is_empty() {
        return Err(Failure::Usage(
            "error: build metadata (+...) is not part of a release version".into(),
        ));
    }
    if next <= *last {
        return Err(Failure::Failed(format!(
            "error: {next} is not newer than the last release v{last}"
        )));
    }
    Ok(next)
}

fn commits_since(repo: &Path, last: Option<&str>) -> Result<Vec<Commit>, Failure> {
    let range = last.map_or("HEAD".to_string(), |t| format!("{t}..HEAD"));
    let log = git(
        repo,
        &[
            "log",
            "--reverse",
            "--no-merges",
            "--format=%H%x1f%aN%x1f%s%x1f%b%x1e",
            &range,
        ],
    )?;
    Ok(log
        .split('\x1e')
        .filter_map(|rec| {
            let mut f = rec.trim_start_matches('\n').splitn(4, '\x1f');
            let sha = f.next()?.trim();
            let author = f.next().unwrap_or("").to_string();
            (!sha.is_empty()).then(|| Commit {
                sha: sha.to_string(),
                author,
                subject: f.next().unwrap_or("").to_string(),
                body: f.next().unwrap_or("").trim().to_string(),
            })
        })
        .collect())
}

pub fn run(args: &Release) -> CmdResult {
    let repo = &args.repo;
    let top = git(repo, &["rev-parse", "--show-toplevel"])
        .map_err(|_| {
            Failure::Usage(format!(
                "error: {} is not a git working copy; run ferry release in the app's repo or pass --repo",
                repo.display()
            ))
        })?;
    let repo = PathBuf::from(top.trim());
    let branch = git(&repo, &["rev-parse", "--abbrev-ref", "HEAD"])?
        .trim()
        .to_string();
    let release_branch = branch == "main" || branch == "master" || branch.starts_with("release/");
    if !release_branch && !args.allow_branch {
        return Err(Failure::Failed(format!(
            "error: releases are cut from main, master or release/*, and this is {branch}\n\
             help: switch branches, or pass --allow-branch"
        )));
    }
    let dirty = git(&repo, &["status", "--porcelain"])?;
    if !dirty.trim().is_empty() && !args.allow_dirty {
        return Err(Failure::Failed(format!(
            "error: the working tree has uncommitted changes:\n{}help: commit or stash them, or pass --allow-dirty",
            dirty
        )));
    }
    let last = last_release(&repo)?;
    let version = next_version(&args.bump, last.as_ref().map(|(_, v)| v))?;
    let tag = format!("v{version}");
    if !git(&repo, &["tag", "--list", &tag])?.trim().is_empty() {
        return Err(Failure::Failed(format!("error: tag {tag} exists already")));
    }
    let commits = commits_since(&repo, last.as_ref().map(|(t, _)| t.as_str()))?;
    if commits.is_empty() {
        return Err(Failure::Failed(format!(
            "error: nothing to release: no commits since {}",
            last.map_or("the start".to_string(), |(t, _)| t)
        )));
    }
    let date = chrono::Local::now().format("%Y-%m-%d").to_string();
    let section = changelog::section(&version.to_string(), &date, &commits);
    if args.dry_run {
        out!("{section}");
        outln!("\n(dry run: would commit CHANGELOG.md and tag {tag})");
        return Ok(());
    }

    let path = repo.join("CHANGELOG.md");
    let existing = match std::fs::read_to_string(&path) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(Failure::Failed(format!(
                "error: cannot read {}: {e}",
                path.display()
            )));
        }
    };
    let updated = changelog::insert(existing.as_deref(), &section);
    std::fs::write(&path, updated)
        .map_err(|e| Failure::Failed(format!("error: cannot write {}: {e}", path.display())))?;
    git(&repo, &["add", "CHANGELOG.md"])?;
    let message = format!("chore(release): {tag}");
    git(
        &repo,
        &["commit", "-q", "-m", &message, "--", "CHANGELOG.md"],
    )?;
    // verbatim: the section's markdown headings start with '#', which git would strip
    git(
        &repo,
        &[
            "tag",
            "-a",
            &tag,
            "--cleanup=verbatim",
            "-m",
            section.trim_end(),
        ],
    )?;
    out!("{section}");
    outln!(
        "\ncommitted CHANGELOG.md and tagged {tag} ({} commit(s) since {})",
        commits.len(),
        last.map_or("the start".to_string(), |(t, _)| t)
    );
    if args.push {
        git(
            &repo,
            &[
                "push",
                "-q",
                &args.remote,
                "HEAD",
                &format!("refs/tags/{tag}"),
            ],
        )?;
        outln!("pushed {branch} and {tag} to {}", args.remote);
    } else {
        outln!("push with: git push {} HEAD {tag}", args.remote);
    }
    Ok(())
}

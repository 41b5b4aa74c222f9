//! Releases: the git mirror, ref resolution, tree export, shared links, build and test
//! commands and the content digest of a built release.
//!
//! Refs never reach a shell: they are checked by [`check_ref`] and passed to git as single
//! arguments after `--end-of-options`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio::process::Command;

/// How much of a command's output is kept for the record.
pub const OUTPUT_TAIL_BYTES: usize = 8 * 1024;
/// Limit for git operations (clone, fetch, archive).
const GIT_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("\"{0}\" is not a valid ref: {1}")]
    BadRef(String, &'static str),
    #[error(
        "ref \"{name}\" was not found in the repository (no such tag, branch or commit); {known}"
    )]
    UnknownRef {
        name: String,
        /// What the repository has instead: its branches and tags, or no commits at all.
        known: String,
    },
    #[error("git {action} failed: {output}")]
    Git { action: String, output: String },
    #[error(
        "shared path \"{0}\" does not exist in {1}: create it there (ferry never makes empty shared files)"
    )]
    MissingShared(String, PathBuf),
    #[error("`{command}` {outcome}")]
    Command {
        command: String,
        outcome: String,
        output: String,
    },
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// The tree would make ferry write, or the app reach, outside the release.
    #[error("{0}")]
    Unsafe(String),
}

impl ReleaseError {
    /// What the failing command printed, if anything.
    pub fn output(&self) -> &str {
        match self {
            ReleaseError::Command { output, .. } | ReleaseError::Git { output, .. } => output,
            _ => "",
        }
    }
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ReleaseError {
    let context = context.into();
    move |e| ReleaseError::Io(context, e)
}

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

/// Refuses a tree holding a symlink that points out of it (an absolute target, or one that
/// resolves above the release), or a symlink at or above a shared path: either would make
/// ferry write, or the app read, outside the release. Dangling links that stay inside are
/// fine. Run on an exported tree before anything of it runs.
pub fn check_tree(release: &Path, shared: &[String]) -> Result<(), ReleaseError> {
    let root = open_beneath(release)?;
    check_shared_paths(&root, shared, true)?;
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let read = if rel.as_os_str().is_empty() {
            root.entries()
        } else {
            root.read_dir(&rel)
        }
        .map_err(io(format!("reading {}", release.join(&rel).display())))?;
        for entry in read {
            let entry = entry.map_err(io("reading a release entry"))?;
            let path = rel.join(entry.file_name());
            let kind = entry.file_type().map_err(io("reading a file type"))?;
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_symlink() {
                let target = root
                    .read_link_contents(&path)
                    .map_err(io(format!("reading the link {}", path.display())))?;
                let escapes = target.is_absolute()
                    || !stays_inside(path.parent().unwrap_or(Path::new("")), &target)
                    || match root.canonicalize(&path) {
                        Ok(_) => false,
                        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
                    };
                if escapes {
                    return Err(ReleaseError::Unsafe(format!(
                        "the release has a symlink {} -> {} pointing out of it: ferry refuses such trees (make the link relative and inside the repository)",
                        path.display(),
                        target.display()
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Refuses a symlink above each shared path (and at it, with `at_too`): ferry would create,
/// remove or link through it.
fn check_shared_paths(
    root: &cap_std::fs::Dir,
    shared: &[String],
    at_too: bool,
) -> Result<(), ReleaseError> {
    for entry in shared {
        let rel = Path::new(entry.trim_end_matches('/'));
        let parts: Vec<_> = rel.components().collect();
        let checked = if at_too { parts.len() } else { parts.len() - 1 };
        let mut prefix = PathBuf::new();
        for part in &parts[..checked] {
            prefix.push(part);
            match root.symlink_metadata(&prefix) {
                Ok(m) if m.is_symlink() => {
                    let target = root.read_link_contents(&prefix).unwrap_or_default();
                    return Err(ReleaseError::Unsafe(format!(
                        "the release has a symlink {} -> {} at or above the shared path \"{entry}\": ferry will not write through it (remove it from the repository)",
                        prefix.display(),
                        target.display()
                    )));
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) => {
                    return Err(ReleaseError::Unsafe(format!(
                        "the shared path \"{entry}\" cannot be reached inside the release: {e}"
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Whether `target`, read from the directory `from` (both relative to the release), stays
/// inside the release, by its components alone.
fn stays_inside(from: &Path, target: &Path) -> bool {
    let mut depth = from.components().count() as i64;
    for part in target.components() {
        match part {
            std::path::Component::ParentDir => depth -= 1,
            std::path::Component::Normal(_) => depth += 1,
            std::path::Component::CurDir => {}
            _ => return false,
        }
        if depth < 0 {
            return false;
        }
    }
    true
}

/// The release dir as a capability: every path resolved through it stays beneath it.
fn open_beneath(release: &Path) -> Result<cap_std::fs::Dir, ReleaseError> {
    cap_std::fs::Dir::open_ambient_dir(release, cap_std::ambient_authority())
        .map_err(io(format!("opening {}", release.display())))
}

/// Links each shared path of `release` to the same path under `shared_dir`.
///
/// Directories (written with a trailing `/`) are created in `shared_dir` when missing; a
/// missing file is an error. Whatever the tree had at that path is removed from the release,
/// never copied over the shared one. Every path is resolved beneath the release: a link in
/// the tree cannot make ferry create, remove or link anything outside it.
pub fn link_shared(
    release: &Path,
    shared_dir: &Path,
    shared: &[String],
) -> Result<(), ReleaseError> {
    let root = open_beneath(release)?;
    check_shared_paths(&root, shared, false)?;
    for entry in shared {
        let is_dir = entry.ends_with('/');
        let rel = Path::new(entry.trim_end_matches('/'));
        let source = shared_dir.join(rel);
        if is_dir {
            std::fs::create_dir_all(&source)
                .map_err(io(format!("creating {}", source.display())))?;
        } else if !source.is_file() {
            return Err(ReleaseError::MissingShared(
                entry.clone(),
                shared_dir.to_path_buf(),
            ));
        }
        let shown = release.join(rel);
        if let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) {
            root.create_dir_all(parent)
                .map_err(io(format!("creating {}", release.join(parent).display())))?;
        }
        match root.symlink_metadata(rel) {
            Ok(m) if m.is_dir() => root.remove_dir_all(rel),
            Ok(_) => root.remove_file(rel),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
        .map_err(io(format!("replacing {}", shown.display())))?;
        root.symlink_contents(&source, rel)
            .map_err(io(format!("linking {}", shown.display())))?;
    }
    Ok(())
}

/// Runs `command` through `sh -c` in `dir`, in its own process group, killed at `timeout`,
/// confined as `confinement` says, with exactly the environment `vars`. Returns the tail of
/// its combined output.
pub async fn run_command(
    dir: &Path,
    command: &str,
    vars: &[(String, String)],
    confinement: &crate::sandbox::Confinement,
    timeout: Duration,
    started: impl FnOnce(u32),
) -> Result<String, ReleaseError> {
    let mut child = confinement
        .command(&format!("exec 2>&1; {command}"), vars)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(io(format!("starting `{command}`")))?;
    let pid = child.id();
    if let Some(pid) = pid {
        started(pid);
    }
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let reader = tokio::spawn(async move {
        let mut tail = Vec::new();
        let mut buf = [0u8; 8192];
        while let Ok(n) = stdout.read(&mut buf).await {
            if n == 0 {
                break;
            }
            tail.extend_from_slice(&buf[..n]);
            if tail.len() > 2 * OUTPUT_TAIL_BYTES {
                tail.drain(..tail.len() - OUTPUT_TAIL_BYTES);
            }
        }
        tail
    });
    let waited = tokio::time::timeout(timeout, child.wait()).await;
    if let Some(pid) = pid {
        // the command is done (or out of time): nothing in its group may outlive it
        crate::runtime::kill_group(pid, nix::sys::signal::Signal::SIGKILL);
    }
    let status = match waited {
        Ok(status) => Some(status.map_err(io(format!("waiting for `{command}`")))?),
        Err(_) => None,
    };
    let output = tail_text(&reader.await.unwrap_or_default());
    match status {
        Some(s) if s.success() => Ok(output),
        Some(s) => Err(ReleaseError::Command {
            command: command.to_string(),
            outcome: match s.code() {
                Some(code) => format!("exited with status {code}"),
                None => "was killed by a signal".to_string(),
            },
            output,
        }),
        None => Err(ReleaseError::Command {
            command: command.to_string(),
            outcome: format!(
                "timed out after {}",
                crate::config::format_duration(timeout)
            ),
            output,
        }),
    }
}

/// The last [`OUTPUT_TAIL_BYTES`] of `bytes` as text, starting at a line boundary.
pub fn tail_text(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(OUTPUT_TAIL_BYTES);
    let mut slice = &bytes[start..];
    if start > 0
        && let Some(nl) = slice.iter().position(|&b| b == b'\n')
    {
        slice = &slice[nl + 1..];
    }
    String::from_utf8_lossy(slice).into_owned()
}

/// SHA-256 over every path, file type, mode bit and content of `dir`, in sorted order,
/// not following the shared links (their content is data, not the release).
pub fn digest(dir: &Path, shared: &[String]) -> Result<String, ReleaseError> {
    let shared: Vec<PathBuf> = shared
        .iter()
        .map(|s| PathBuf::from(s.trim_end_matches('/')))
        .collect();
    let mut hasher = Sha256::new();
    let mut stack = vec![PathBuf::new()];
    let mut entries = Vec::new();
    while let Some(rel) = stack.pop() {
        let read =
            std::fs::read_dir(dir.join(&rel)).map_err(io(format!("reading {}", rel.display())))?;
        for entry in read {
            let entry = entry.map_err(io("reading a release entry"))?;
            let path = rel.join(entry.file_name());
            let kind = entry.file_type().map_err(io("reading a file type"))?;
            if kind.is_dir() {
                stack.push(path.clone());
            }
            entries.push((path, kind));
        }
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    for (path, kind) in entries {
        hasher.update(path.to_string_lossy().as_bytes());
        hasher.update([0]);
        let full = dir.join(&path);
        if kind.is_symlink() && shared.contains(&path) {
            // linked to this environment's shared dir: the same release in every environment
            hasher.update(b"S");
        } else if kind.is_symlink() {
            let target = std::fs::read_link(&full).map_err(io("reading a link"))?;
            hasher.update(b"L");
            hasher.update(target.to_string_lossy().as_bytes());
        } else if kind.is_file() {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(&full).map_err(io("reading file metadata"))?;
            hasher.update(if meta.permissions().mode() & 0o111 != 0 {
                b"X"
            } else {
                b"F"
            });
            let mut file =
                std::fs::File::open(&full).map_err(io(format!("reading {}", path.display())))?;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = std::io::Read::read(&mut file, &mut buf)
                    .map_err(io(format!("reading {}", path.display())))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
        } else {
            hasher.update(b"D");
        }
        hasher.update([0]);
    }
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

#[cfg(test)]
mod tests;

/// Copies the release tree `from` into `to` (made through a `.partial` dir, then renamed),
/// keeping modes and links; shared paths are left out for [`link_shared`] to link anew.
pub fn copy_release(from: &Path, to: &Path, shared: &[String]) -> Result<(), ReleaseError> {
    let shared: Vec<PathBuf> = shared
        .iter()
        .map(|s| PathBuf::from(s.trim_end_matches('/')))
        .collect();
    let partial = partial_path(to);
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(io(format!("clearing {}", partial.display())))?;
    }
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dest = partial.join(&rel);
        std::fs::create_dir_all(&dest).map_err(io(format!("creating {}", dest.display())))?;
        let read = std::fs::read_dir(from.join(&rel))
            .map_err(io(format!("reading {}", from.join(&rel).display())))?;
        for entry in read {
            let entry = entry.map_err(io("reading a release entry"))?;
            let path = rel.join(entry.file_name());
            if shared.contains(&path) {
                continue;
            }
            let kind = entry.file_type().map_err(io("reading a file type"))?;
            let (src, dst) = (from.join(&path), partial.join(&path));
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_symlink() {
                let target = std::fs::read_link(&src).map_err(io("reading a link"))?;
                std::os::unix::fs::symlink(&target, &dst)
                    .map_err(io(format!("linking {}", dst.display())))?;
            } else {
                // std::fs::copy keeps the permission bits
                std::fs::copy(&src, &dst).map_err(io(format!("copying {}", path.display())))?;
            }
        }
    }
    std::fs::rename(&partial, to).map_err(io(format!("moving the copy to {}", to.display())))
}

/// `<dest>.partial`: where a release is assembled before it is renamed into place.
fn partial_path(dest: &Path) -> PathBuf {
    let mut name = dest.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

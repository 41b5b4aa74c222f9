//! The agent dir on a host and the release trees in it.
//!
//! ```text
//! D/agent.sock, agent.log, agent.lock
//! D/apps/<app>/releases/<release>/        a release as received (read-only files)
//! D/apps/<app>/releases/.<release>.json   its digest, shared paths and file list
//! D/apps/<app>/<env>/releases/<release>/  what the environment's instances run: the
//!                                         release's files hard-linked, the shared paths
//!                                         linked to the environment's shared dir
//! D/apps/<app>/<env>/{shared,home,run,app.log}
//! D/state/<app>/<env>.json
//! ```
//!
//! A received release is the same for every environment of the app on the host (its digest
//! is the one recorded on the ferry machine); the environment's copy makes its shared paths
//! lead to that environment's own shared dir, never another's.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::protocol::ManifestEntry;

/// Where the shared paths of a received release point until an environment's copy links
/// them to its own shared dir (never followed).
const SHARED_PLACEHOLDER: &str = "/nonexistent/ferry-shared-path";

/// Paths in the agent dir.
#[derive(Debug, Clone)]
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn new(dir: &Path) -> Layout {
        Layout {
            dir: std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf()),
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("agent.sock")
    }

    pub fn log(&self) -> PathBuf {
        self.dir.join("agent.log")
    }

    /// Taken by a relay while it starts a daemon.
    pub fn start_lock(&self) -> PathBuf {
        self.dir.join("agent.lock")
    }

    /// Held by the daemon for its whole life.
    pub fn daemon_lock(&self) -> PathBuf {
        self.dir.join("daemon.lock")
    }

    pub fn releases(&self, app: &str) -> PathBuf {
        self.dir.join("apps").join(app).join("releases")
    }

    pub fn release(&self, app: &str, release: &str) -> PathBuf {
        self.releases(app).join(release)
    }

    pub fn release_meta(&self, app: &str, release: &str) -> PathBuf {
        self.releases(app).join(format!(".{release}.json"))
    }

    pub fn env_dir(&self, app: &str, env: &str) -> PathBuf {
        self.dir.join("apps").join(app).join(env)
    }

    /// The environment's copy of a release, which its instances run.
    pub fn env_release(&self, app: &str, env: &str, release: &str) -> PathBuf {
        self.env_dir(app, env).join("releases").join(release)
    }

    pub fn state_file(&self, app: &str, env: &str) -> PathBuf {
        self.dir.join("state").join(app).join(format!("{env}.json"))
    }

    /// The app's releases on the host with their metadata, by name.
    pub fn releases_present(&self, app: &str) -> Vec<(String, ReleaseMeta)> {
        let Ok(entries) = std::fs::read_dir(self.releases(app)) else {
            return Vec::new();
        };
        let mut found: Vec<(String, ReleaseMeta)> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_str()?.to_string();
                if name.starts_with('.') || !e.file_type().ok()?.is_dir() {
                    return None;
                }
                let meta = ReleaseMeta::read(&self.release_meta(app, &name))?;
                Some((name, meta))
            })
            .collect();
        found.sort_by(|a, b| a.0.cmp(&b.0));
        found
    }
}

/// What the agent knows of a release it received, beside its tree.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReleaseMeta {
    pub digest: String,
    pub shared: Vec<String>,
    pub files: Vec<ManifestEntry>,
    pub received_at: String,
}

impl ReleaseMeta {
    pub fn read(path: &Path) -> Option<ReleaseMeta> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }
}

/// Writes `bytes` to `path` through a temp file beside it, renamed into place.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// A tree read for shipping or indexing: every entry and the manifest of its files.
pub struct Tree {
    /// Relative paths, sorted (a dir before what it holds).
    pub entries: Vec<(PathBuf, EntryKind)>,
    pub manifest: Vec<ManifestEntry>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File,
    Link,
}

impl Tree {
    /// Walks `root` without following links, leaving out the `shared` paths; hashes every file.
    pub fn read(root: &Path, shared: &[String]) -> std::io::Result<Tree> {
        use sha2::Digest;
        let shared = shared_paths(shared);
        let mut entries = Vec::new();
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            for entry in std::fs::read_dir(root.join(&rel))? {
                let entry = entry?;
                let path = rel.join(entry.file_name());
                if shared.contains(&path) {
                    continue;
                }
                let kind = entry.file_type()?;
                let kind = if kind.is_dir() {
                    stack.push(path.clone());
                    EntryKind::Dir
                } else if kind.is_symlink() {
                    EntryKind::Link
                } else if kind.is_file() {
                    EntryKind::File
                } else {
                    return Err(std::io::Error::other(format!(
                        "{} is neither a file, a directory nor a link",
                        path.display()
                    )));
                };
                entries.push((path, kind));
            }
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut manifest = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        for (path, kind) in &entries {
            if *kind != EntryKind::File {
                continue;
            }
            let mut file = std::fs::File::open(root.join(path))?;
            let meta = file.metadata()?;
            let mut hasher = sha2::Sha256::new();
            loop {
                let n = std::io::Read::read(&mut file, &mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
            manifest.push(ManifestEntry {
                path: path_text(path)?,
                mode: meta.permissions().mode() & 0o7777,
                size: meta.len(),
                sha256: hex::encode(hasher.finalize()),
            });
        }
        Ok(Tree { entries, manifest })
    }

    /// Bytes of every file's content.
    pub fn size(&self) -> u64 {
        self.manifest.iter().map(|m| m.size).sum()
    }
}

/// The shared entries as relative paths (`data/` → `data`).
pub fn shared_paths(shared: &[String]) -> Vec<PathBuf> {
    shared
        .iter()
        .map(|s| PathBuf::from(s.trim_end_matches('/')))
        .collect()
}

pub fn path_text(path: &Path) -> std::io::Result<String> {
    path.to_str()
        .map(str::to_string)
        .ok_or_else(|| std::io::Error::other(format!("{} is not valid UTF-8", path.display())))
}

/// True when `path` is relative and made of plain names only (no `..`, no root).
pub fn plain_relative(path: &Path) -> bool {
    !path.as_os_str().is_empty()
        && path
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
}

/// Makes the shared paths of a received release placeholder links (the digest counts a
/// link there, whatever it points to).
pub fn link_placeholders(root: &cap_std::fs::Dir, shared: &[String]) -> std::io::Result<()> {
    for rel in shared_paths(shared) {
        if let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) {
            root.create_dir_all(parent)?;
        }
        match root.symlink_metadata(&rel) {
            Ok(m) if m.is_dir() => root.remove_dir_all(&rel)?,
            Ok(_) => root.remove_file(&rel)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        root.symlink_contents(SHARED_PLACEHOLDER, &rel)?;
    }
    Ok(())
}

/// Seals a received tree: files read-only (their execute bits kept), no set-id bits,
/// dirs 0755. Links are left as they are.
pub fn seal(root: &Path) -> std::io::Result<()> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = meta.permissions().mode() & 0o7777;
        let sealed = if meta.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                stack.push(entry?.path());
            }
            0o755
        } else {
            (mode & 0o555) | 0o444
        };
        if sealed != mode {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(sealed))?;
        }
    }
    Ok(())
}

/// Gives the owner every right on each dir of `root` (never following a link), so that a
/// tree a hostile archive left with a 0000 dir can be removed.
pub fn open_up(root: &Path) {
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if !meta.is_dir() {
            continue;
        }
        let mode = meta.permissions().mode();
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode | 0o700));
        if let Ok(entries) = std::fs::read_dir(&path) {
            stack.extend(entries.flatten().map(|e| e.path()));
        }
    }
}

/// Makes `to` (which must not exist) the environment's copy of the received release
/// `from`: its dirs made, its files hard-linked, its links copied, and its shared paths
/// linked to `shared_dir` ([`crate::release::link_shared`]: a missing shared file is an
/// error naming it).
pub fn make_env_release(
    from: &Path,
    to: &Path,
    shared_dir: &Path,
    shared: &[String],
) -> Result<(), String> {
    let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
    let parent = to.parent().ok_or("no parent dir")?;
    std::fs::create_dir_all(parent).map_err(|e| io("creating the environment's releases", e))?;
    let partial = tempfile::Builder::new()
        .prefix(".partial-")
        .tempdir_in(parent)
        .map_err(|e| io("making a temp dir", e))?;
    let skip = shared_paths(shared);
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let entries =
            std::fs::read_dir(from.join(&rel)).map_err(|e| io("reading the release", e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io("reading the release", e))?;
            let path = rel.join(entry.file_name());
            if skip.contains(&path) {
                continue;
            }
            let kind = entry
                .file_type()
                .map_err(|e| io("reading the release", e))?;
            let (src, dst) = (from.join(&path), partial.path().join(&path));
            if kind.is_dir() {
                std::fs::create_dir(&dst).map_err(|e| io("making a dir", e))?;
                stack.push(path);
            } else if kind.is_symlink() {
                let target = std::fs::read_link(&src).map_err(|e| io("reading a link", e))?;
                std::os::unix::fs::symlink(target, &dst).map_err(|e| io("copying a link", e))?;
            } else {
                std::fs::hard_link(&src, &dst).map_err(|e| io("linking a file", e))?;
            }
        }
    }
    std::fs::set_permissions(partial.path(), std::fs::Permissions::from_mode(0o755))
        .map_err(|e| io("setting a mode", e))?;
    crate::release::link_shared(partial.path(), shared_dir, shared).map_err(|e| e.to_string())?;
    let made = partial.keep();
    std::fs::rename(&made, to).map_err(|e| {
        let _ = std::fs::remove_dir_all(&made);
        io("moving the copy into place", e)
    })
}

/// Every file content (hex SHA-256) of the app's releases on the host, with one path to it.
pub fn contents(layout: &Layout, app: &str) -> HashMap<String, PathBuf> {
    let mut found = HashMap::new();
    for (name, meta) in layout.releases_present(app) {
        for file in meta.files {
            found
                .entry(file.sha256)
                .or_insert_with(|| PathBuf::from(&name).join(&file.path));
        }
    }
    found
}

/// True when `e`, or an error it wraps, is ENOSPC or EDQUOT.
pub fn no_space(e: &(dyn std::error::Error + 'static)) -> bool {
    let full = [
        nix::errno::Errno::ENOSPC as i32,
        nix::errno::Errno::EDQUOT as i32,
    ];
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.raw_os_error().is_some_and(|code| full.contains(&code)) {
                return true;
            }
            if let Some(inner) = io.get_ref()
                && no_space(inner)
            {
                return true;
            }
        }
        next = e.source();
    }
    text_says_full(&e.to_string())
}

/// True when a message says the disk is full (errors that kept only their text).
pub fn text_says_full(text: &str) -> bool {
    text.contains("No space left on device") || text.contains("Disk quota exceeded")
}

/// `disk_full` for a full disk, else `internal`, saying what was being done.
pub fn io_error(what: &str, e: &std::io::Error) -> super::protocol::RemoteError {
    use super::protocol::{ErrorKind, RemoteError};
    let kind = if no_space(e) {
        ErrorKind::DiskFull
    } else {
        ErrorKind::Internal
    };
    RemoteError::new(kind, format!("{what}: {e}"))
}

/// Free bytes for an unprivileged user on the filesystem of `dir`.
pub fn free_bytes(dir: &Path) -> u64 {
    nix::sys::statvfs::statvfs(dir)
        .map(|s| s.blocks_available().saturating_mul(s.fragment_size()))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_relative_paths_only() {
        assert!(plain_relative(Path::new("a/b.txt")));
        assert!(!plain_relative(Path::new("/etc/passwd")));
        assert!(!plain_relative(Path::new("a/../../b")));
        assert!(!plain_relative(Path::new("")));
    }

    #[test]
    fn sealing_takes_every_write_bit_and_keeps_execute() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let data = dir.path().join("data");
        std::fs::write(&run, "#!/bin/sh\n").unwrap();
        std::fs::write(&data, "x").unwrap();
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o4777)).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o666)).unwrap();
        seal(dir.path()).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&run), 0o555);
        assert_eq!(mode(&data), 0o444);
    }
}

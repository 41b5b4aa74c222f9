//! `ferry agent --dir D receive`: a release arriving on a host.
//!
//! Its stdin is one line of manifest (every file of the release: path, mode, size, SHA-256)
//! then a tar stream of the release's dirs and links and of the files whose content the
//! host lacked (every file, when it had none). It is unpacked into
//! `releases/.incoming-<release>-<random>`: only files, dirs and links, each path plain and
//! relative, nothing written through a link (the `tar` crate's checked unpack), no link
//! pointing out of the tree ([`crate::release::check_tree`]). The files left out of the
//! archive are hard-linked (or copied, where the execute bit differs) from the app's other
//! releases. The shared paths become links, files are made read-only, and the tree's
//! [`crate::release::digest`] must be the one given, else it is removed. Then it is renamed
//! into place and synced. One JSON answer line goes to stdout.

use std::collections::HashMap;
use std::io::{BufRead, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::files::{self, Layout, ReleaseMeta, Tree};
use super::protocol::{ErrorKind, ManifestEntry, Received, RemoteError, valid_name};

/// The longest manifest line taken.
const MAX_MANIFEST_BYTES: u64 = 256 << 20;

/// What to receive.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub app: String,
    pub release: String,
    pub digest: String,
    pub shared: Vec<String>,
    /// The release's bytes, for a full disk's message.
    pub size: Option<u64>,
}

fn bad(message: impl Into<String>) -> RemoteError {
    RemoteError::new(ErrorKind::BadRequest, message)
}

/// Receives a release from `input` into the agent dir `dir`.
pub fn receive(dir: &Path, want: &Incoming, input: impl Read) -> Result<Received, RemoteError> {
    for (what, name) in [("app", &want.app), ("release", &want.release)] {
        if !valid_name(name) {
            return Err(bad(format!("{what} {name:?} is not a plain name")));
        }
    }
    for path in &want.shared {
        if !files::plain_relative(Path::new(path.trim_end_matches('/'))) {
            return Err(bad(format!(
                "shared path {path:?} is not a plain relative path"
            )));
        }
    }
    let layout = Layout::new(dir);
    let releases = layout.releases(&want.app);
    if let Err(e) = std::fs::create_dir_all(&releases) {
        let free = Free {
            bytes: 0,
            dir: &layout.dir,
        };
        return Err(disk(want, free, "creating the releases dir", &e));
    }
    let free = Free {
        bytes: files::free_bytes(&releases),
        dir: &layout.dir,
    };
    let target = layout.release(&want.app, &want.release);
    let meta_path = layout.release_meta(&want.app, &want.release);
    if target.exists() && ReleaseMeta::read(&meta_path).is_some_and(|m| m.digest == want.digest) {
        return Ok(Received {
            files: 0,
            bytes: 0,
            reused: 0,
        });
    }
    remove_stale(&releases);
    let incoming = tempfile::Builder::new()
        .prefix(&format!(".incoming-{}-", want.release))
        .tempdir_in(&releases)
        .map_err(|e| disk(want, free, "making the incoming dir", &e))?;
    // removed with `incoming` on any failure
    let received = unpack(&layout, want, free, incoming.path(), input)?;
    let tree = incoming.path();
    let digest = crate::release::digest(tree, &want.shared)
        .map_err(|e| RemoteError::new(ErrorKind::Internal, e.to_string()))?;
    if digest != want.digest {
        return Err(RemoteError::new(
            ErrorKind::Digest,
            format!(
                "release {} arrived with digest {digest}, not {}: it was not kept",
                want.release, want.digest
            ),
        ));
    }
    let listed =
        Tree::read(tree, &want.shared).map_err(|e| internal("indexing the release", &e))?;
    // everything on disk before the release is in place
    if let Ok(f) = std::fs::File::open(tree) {
        let _ = nix::unistd::syncfs(&f);
    }
    // one receive at a time swaps a release into place
    let _swapping = lock_releases(&releases).map_err(|e| internal("locking the releases", &e))?;
    if target.exists() && ReleaseMeta::read(&meta_path).is_some_and(|m| m.digest == want.digest) {
        // another receive of the same release finished first; `incoming` goes
        return Ok(received);
    }
    let kept = incoming.keep();
    // the record first: a tree without one is not present, whatever it holds
    match std::fs::remove_file(&meta_path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            let _ = std::fs::remove_dir_all(&kept);
            return Err(internal("removing the old record", &e));
        }
    }
    if target.exists() {
        // a release of the same name and other bytes (rebuilt): environments run copies
        // of their own, so the old tree may go
        let old = releases.join(format!(".old-{}-{}", want.release, std::process::id()));
        let _ = std::fs::rename(&target, &old);
        let _ = std::fs::remove_dir_all(&old);
    }
    if let Err(e) = std::fs::rename(&kept, &target) {
        let _ = std::fs::remove_dir_all(&kept);
        return Err(internal("moving the release into place", &e));
    }
    let meta = ReleaseMeta {
        digest,
        shared: want.shared.clone(),
        files: listed.manifest,
        received_at: crate::store::now(),
    };
    let bytes = serde_json::to_vec(&meta).map_err(|e| {
        RemoteError::new(
            ErrorKind::Internal,
            format!("encoding the release's record: {e}"),
        )
    })?;
    files::write_atomic(&meta_path, &bytes)
        .map_err(|e| disk(want, free, "recording the release", &e))?;
    if let Ok(d) = std::fs::File::open(&releases) {
        let _ = d.sync_all();
    }
    Ok(received)
}

/// An exclusive lock on the app's releases dir (`.lock`), held while a release is swapped in.
fn lock_releases(releases: &Path) -> std::io::Result<nix::fcntl::Flock<std::fs::File>> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(releases.join(".lock"))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| std::io::Error::from(e))
}

/// Removes what receives cut off (the connection lost mid-way) left over an hour ago.
fn remove_stale(releases: &Path) {
    let Ok(entries) = std::fs::read_dir(releases) else {
        return;
    };
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t < hour_ago);
        if (name.starts_with(".incoming-") || name.starts_with(".old-")) && old {
            files::open_up(&entry.path());
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn internal(what: &str, e: &std::io::Error) -> RemoteError {
    RemoteError::new(ErrorKind::Internal, format!("{what}: {e}"))
}

/// The free bytes in the agent dir when the receive began.
#[derive(Clone, Copy)]
struct Free<'a> {
    bytes: u64,
    dir: &'a Path,
}

/// `disk_full` (with the bytes needed and free) for a full disk, else `internal`.
fn disk(want: &Incoming, free: Free<'_>, what: &str, e: &std::io::Error) -> RemoteError {
    if files::no_space(e) {
        let needed = want
            .size
            .map(|s| format!("the release needs {s} bytes, "))
            .unwrap_or_default();
        return RemoteError::new(
            ErrorKind::DiskFull,
            format!(
                "no space left on the host's disk receiving release {}: {needed}{} bytes were free in {} when it began",
                want.release,
                free.bytes,
                free.dir.display()
            ),
        );
    }
    internal(what, e)
}

/// Reads the manifest and the archive into `tree`, fills in the files the archive left out,
/// checks the tree and seals it.
fn unpack(
    layout: &Layout,
    want: &Incoming,
    free: Free<'_>,
    tree: &Path,
    input: impl Read,
) -> Result<Received, RemoteError> {
    let mut input = std::io::BufReader::with_capacity(64 * 1024, input);
    let mut line = Vec::new();
    (&mut input)
        .take(MAX_MANIFEST_BYTES)
        .read_until(b'\n', &mut line)
        .map_err(|e| bad(format!("reading the manifest: {e}")))?;
    let manifest: Vec<ManifestEntry> = serde_json::from_slice(&line)
        .map_err(|e| bad(format!("the manifest is not valid: {e}")))?;
    let shared = files::shared_paths(&want.shared);
    let under_shared = |p: &Path| shared.iter().any(|s| p.starts_with(s));
    for entry in &manifest {
        let path = Path::new(&entry.path);
        if !files::plain_relative(path) || under_shared(path) {
            return Err(bad(format!(
                "the manifest names {:?}: not a path of the release",
                entry.path
            )));
        }
    }
    let root = cap_std::fs::Dir::open_ambient_dir(tree, cap_std::ambient_authority())
        .map_err(|e| internal("opening the release", &e))?;
    let mut archive = tar::Archive::new(input);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(false);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(false);
    let (mut files, mut bytes) = (0u64, 0u64);
    let entries = archive
        .entries()
        .map_err(|e| bad(format!("reading the archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("reading the archive: {e}")))?;
        let path = entry
            .path()
            .map_err(|e| bad(format!("an archive entry's path: {e}")))?
            .into_owned();
        let kind = entry.header().entry_type();
        let shown = path.display().to_string();
        if !files::plain_relative(&path) {
            return Err(bad(format!(
                "the archive holds {shown:?}: not a plain relative path"
            )));
        }
        if under_shared(&path) {
            return Err(bad(format!(
                "the archive holds {shown:?}, at or under a shared path"
            )));
        }
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                files += 1;
                bytes = bytes.saturating_add(entry.size());
            }
            tar::EntryType::Directory | tar::EntryType::Symlink => {}
            other => {
                return Err(bad(format!(
                    "the archive holds {shown:?} of type {other:?}: only files, dirs and links are taken"
                )));
            }
        }
        if let Ok(there) = std::fs::symlink_metadata(tree.join(&path)) {
            if there.is_dir() && kind == tar::EntryType::Directory {
                continue;
            }
            return Err(bad(format!(
                "the archive holds {shown:?} twice, or over a link: refused"
            )));
        }
        if let Some(link) = link_on_the_way(tree, &path) {
            return Err(bad(format!(
                "the archive writes {shown:?} through the link {}: refused",
                link.display()
            )));
        }
        if kind == tar::EntryType::Directory {
            // made here, 0700 until sealed: the archive's modes for dirs are not taken (a
            // 0000 or 0555 dir would stop what goes in it, and its own removal)
            root.create_dir_all(&path)
                .map_err(|e| disk(want, free, &format!("making {shown}"), &e))?;
            continue;
        }
        match entry.unpack_in(tree) {
            Ok(true) => {}
            Ok(false) => {
                return Err(bad(format!(
                    "the archive entry {shown:?} leads out of the release"
                )));
            }
            Err(e) => return Err(disk(want, free, &format!("unpacking {shown}"), &e)),
        }
    }
    let reused = fill(layout, want, free, tree, &manifest)?;
    crate::release::check_tree(tree, &want.shared).map_err(|e| bad(e.to_string()))?;
    files::link_placeholders(&root, &want.shared)
        .map_err(|e| disk(want, free, "linking the shared paths", &e))?;
    files::seal(tree).map_err(|e| internal("setting the release's modes", &e))?;
    Ok(Received {
        files,
        bytes,
        reused,
    })
}

/// The first dir on the way to `path` in `tree` that is a link, if any.
fn link_on_the_way(tree: &Path, path: &Path) -> Option<PathBuf> {
    let mut prefix = PathBuf::new();
    let parent = path.parent()?;
    for part in parent.components() {
        prefix.push(part);
        if std::fs::symlink_metadata(tree.join(&prefix)).is_ok_and(|m| m.file_type().is_symlink()) {
            return Some(prefix);
        }
    }
    None
}

/// Puts each file of the manifest the archive did not hold in place from a file of the
/// same content: one of the archive's, or one of the app's other releases. How many.
fn fill(
    layout: &Layout,
    want: &Incoming,
    free: Free<'_>,
    tree: &Path,
    manifest: &[ManifestEntry],
) -> Result<u64, RemoteError> {
    let root = cap_std::fs::Dir::open_ambient_dir(tree, cap_std::ambient_authority())
        .map_err(|e| internal("opening the release", &e))?;
    let missing: Vec<&ManifestEntry> = manifest
        .iter()
        .filter(|m| root.symlink_metadata(&m.path).is_err())
        .collect();
    if missing.is_empty() {
        return Ok(0);
    }
    // contents that came in the archive, then those of the releases already here
    let mut here: HashMap<&str, &str> = HashMap::new();
    for m in manifest {
        if root.symlink_metadata(&m.path).is_ok_and(|md| md.is_file()) {
            here.entry(m.sha256.as_str()).or_insert(m.path.as_str());
        }
    }
    let others = files::contents(layout, &want.app);
    let releases = cap_std::fs::Dir::open_ambient_dir(
        layout.releases(&want.app),
        cap_std::ambient_authority(),
    )
    .map_err(|e| internal("opening the releases dir", &e))?;
    let mut reused = 0;
    for m in missing {
        let (from, source): (&cap_std::fs::Dir, PathBuf) = match here.get(m.sha256.as_str()) {
            Some(path) => (&root, PathBuf::from(path)),
            None => match others.get(&m.sha256) {
                Some(path) => (&releases, path.clone()),
                None => {
                    return Err(RemoteError::new(
                        ErrorKind::NotFound,
                        format!(
                            "{} was not in the archive and no release on the host has its content: send the release again",
                            m.path
                        ),
                    ));
                }
            },
        };
        let src_meta = from
            .symlink_metadata(&source)
            .map_err(|e| internal(&format!("reading {}", source.display()), &e))?;
        if !src_meta.is_file() || src_meta.len() != m.size {
            return Err(RemoteError::new(
                ErrorKind::NotFound,
                format!(
                    "the host's copy of {}'s content changed: send the release again",
                    m.path
                ),
            ));
        }
        let dst = Path::new(&m.path);
        if let Some(parent) = dst.parent().filter(|p| !p.as_os_str().is_empty()) {
            root.create_dir_all(parent)
                .map_err(|e| disk(want, free, "making a dir", &e))?;
        }
        let exec = |mode: u32| mode & 0o111 != 0;
        if exec(cap_std::fs::MetadataExt::mode(&src_meta)) == exec(m.mode) {
            from.hard_link(&source, &root, dst)
                .map_err(|e| disk(want, free, &format!("linking {}", m.path), &e))?;
        } else {
            from.copy(&source, &root, dst)
                .map_err(|e| disk(want, free, &format!("copying {}", m.path), &e))?;
            root.set_permissions(
                dst,
                cap_std::fs::Permissions::from_std(std::fs::Permissions::from_mode(m.mode & 0o777)),
            )
            .map_err(|e| internal(&format!("setting the mode of {}", m.path), &e))?;
        }
        reused += 1;
    }
    Ok(reused)
}

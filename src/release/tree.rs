//! The release tree on disk: checked for escapes, shared paths linked in, its content
//! digest, and copies of it for a promotion.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{ReleaseError, io};

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
pub(super) fn partial_path(dest: &Path) -> PathBuf {
    let mut name = dest.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

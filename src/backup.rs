//! Backups: snapshots of an environment's data files before a deploy, and putting one back.
//!
//! SQLite files are copied through SQLite's online backup API, so the app can keep writing
//! while the snapshot is taken, and the copy is checked with `PRAGMA integrity_check`. Other
//! files are copied. Either way the snapshot is written to a temp name, fsynced, then renamed.
//! A snapshot has its source's mode (a 0600 database gives 0600 backups, readable by nobody
//! else at any moment), and a restored file has the mode and owner of the file it replaces.
//! Blocking: call from `spawn_blocking`.

use std::fs::{File, Metadata, OpenOptions, Permissions};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("SQLite backup of {}: {source}", path.display())]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("the snapshot of {} failed its integrity check: {detail}", path.display())]
    Corrupt { path: PathBuf, detail: String },
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BackupError {
    let path = path.to_path_buf();
    move |source| BackupError::Io {
        action,
        path,
        source,
    }
}

/// How a snapshot was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Sqlite,
    Copy,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Sqlite => "sqlite",
            Method::Copy => "copy",
        }
    }
}

/// True when `path` starts with SQLite's file header.
pub fn is_sqlite(path: &Path) -> bool {
    let mut header = [0u8; 16];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut header))
        .is_ok()
        && &header == b"SQLite format 3\0"
}

/// Snapshots `source` into `dest`; returns how, and the snapshot's size.
pub fn snapshot(source: &Path, dest: &Path) -> Result<(Method, u64), BackupError> {
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
    }
    let tmp = with_suffix(dest, ".partial");
    let _ = std::fs::remove_file(&tmp);
    let method = if is_sqlite(source) {
        // made empty and private first, so SQLite (which would make it 0644) writes into
        // a file nobody else can read; it gets the source's mode once written
        let mode = std::fs::metadata(source)
            .map_err(io("reading", source))?
            .permissions()
            .mode();
        create_private(&tmp)?;
        sqlite_snapshot(source, &tmp)?;
        std::fs::set_permissions(&tmp, Permissions::from_mode(mode & 0o7777))
            .map_err(io("setting the mode of", &tmp))?;
        Method::Sqlite
    } else {
        std::fs::copy(source, &tmp).map_err(io("copying", source))?;
        Method::Copy
    };
    let result = place(&tmp, dest);
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    let bytes = std::fs::metadata(dest).map_err(io("reading", dest))?.len();
    Ok((method, bytes))
}

/// Creates `path` empty, readable and writable by its owner only (whatever the umask).
fn create_private(path: &Path) -> Result<File, BackupError> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io("creating", path))?;
    file.set_permissions(Permissions::from_mode(0o600))
        .map_err(io("setting the mode of", path))?;
    Ok(file)
}

fn sqlite_snapshot(source: &Path, tmp: &Path) -> Result<(), BackupError> {
    let sqlite = |e: rusqlite::Error| BackupError::Sqlite {
        path: source.to_path_buf(),
        source: e,
    };
    let src = Connection::open_with_flags(
        source,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sqlite)?;
    src.busy_timeout(Duration::from_secs(10)).map_err(sqlite)?;
    let mut dst = Connection::open(tmp).map_err(sqlite)?;
    {
        let backup = rusqlite::backup::Backup::new(&src, &mut dst).map_err(sqlite)?;
        // large steps: a small database is copied in one read transaction, so writers in
        // WAL mode go on and the copy is one consistent state
        backup
            .run_to_completion(4096, Duration::from_millis(10), None)
            .map_err(sqlite)?;
    }
    let verdict: String = dst
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(sqlite)?;
    drop(dst);
    if verdict != "ok" {
        return Err(BackupError::Corrupt {
            path: source.to_path_buf(),
            detail: verdict,
        });
    }
    Ok(())
}

/// fsyncs `tmp`, renames it to `dest` and fsyncs the directory.
fn place(tmp: &Path, dest: &Path) -> Result<(), BackupError> {
    File::open(tmp)
        .and_then(|f| f.sync_all())
        .map_err(io("syncing", tmp))?;
    std::fs::rename(tmp, dest).map_err(io("renaming to", dest))?;
    if let Some(parent) = dest.parent() {
        File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(io("syncing", parent))?;
    }
    Ok(())
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Puts `backup` in place of `live` (whose app must be stopped). The current file, and
/// its SQLite `-wal`/`-shm` companions, are moved to `<aside><suffix>` (plus `-wal`, ...),
/// never deleted. Returns the paths set aside, the main file first.
pub fn restore(
    backup: &Path,
    live: &Path,
    aside: &Path,
    suffix: &str,
) -> Result<Vec<PathBuf>, BackupError> {
    let mut moved = Vec::new();
    // the live file's mode and owner are the restored one's
    let original = std::fs::metadata(live).ok();
    if let Some(parent) = aside.parent() {
        std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
    }
    for companion in ["", "-wal", "-shm", "-journal"] {
        let from = with_suffix(live, companion);
        if from.exists() {
            // named so SQLite still pairs the set-aside file with its WAL
            let to = with_suffix(&with_suffix(aside, suffix), companion);
            std::fs::rename(&from, &to).map_err(io("setting aside", &from))?;
            moved.push(to);
        }
    }
    if let Some(parent) = live.parent() {
        std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
    }
    let tmp = with_suffix(live, ".restoring");
    copy_like(backup, &tmp, original.as_ref())?;
    place(&tmp, live)?;
    Ok(moved)
}

/// Puts the data set aside by a restore back at `live`, with its own mode and owner.
pub fn put_back(aside: &Path, live: &Path) -> Result<(), BackupError> {
    let original = std::fs::metadata(aside).map_err(io("reading", aside))?;
    let tmp = with_suffix(live, ".restoring");
    copy_like(aside, &tmp, Some(&original))?;
    place(&tmp, live)
}

/// Copies `from` to `to`, then gives `to` the mode of `like` and, when ferry runs as root,
/// its owner and group (an app running as its own user keeps owning its data). Without
/// `like`, `to` keeps `from`'s mode.
fn copy_like(from: &Path, to: &Path, like: Option<&Metadata>) -> Result<(), BackupError> {
    let _ = std::fs::remove_file(to);
    let mode = match like {
        Some(m) => m.permissions().mode(),
        None => std::fs::metadata(from)
            .map_err(io("reading", from))?
            .permissions()
            .mode(),
    } & 0o7777;
    let mut dst = create_private(to)?;
    let mut src = File::open(from).map_err(io("reading", from))?;
    std::io::copy(&mut src, &mut dst).map_err(io("copying", from))?;
    if let Some(m) = like
        && nix::unistd::geteuid().is_root()
    {
        nix::unistd::fchown(
            &dst,
            Some(nix::unistd::Uid::from_raw(m.uid())),
            Some(nix::unistd::Gid::from_raw(m.gid())),
        )
        .map_err(|e| BackupError::Io {
            action: "setting the owner of",
            path: to.to_path_buf(),
            source: e.into(),
        })?;
    }
    // after the owner: chown clears set-id bits
    dst.set_permissions(Permissions::from_mode(mode))
        .map_err(io("setting the mode of", to))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_files_are_copied_and_restored_with_the_current_one_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("shared/config.json");
        std::fs::create_dir_all(live.parent().unwrap()).unwrap();
        std::fs::write(&live, "v1").unwrap();
        let snap = dir.path().join("backups/config.json.v1.0.0.1");
        assert_eq!(snapshot(&live, &snap).unwrap(), (Method::Copy, 2));
        std::fs::write(&live, "v2").unwrap();
        let aside = dir.path().join("backups/config.json");
        let moved = restore(&snap, &live, &aside, ".before-restore.2").unwrap();
        assert_eq!(std::fs::read_to_string(&live).unwrap(), "v1");
        assert_eq!(moved.len(), 1);
        assert_eq!(std::fs::read_to_string(&moved[0]).unwrap(), "v2");
        assert!(
            !dir.path()
                .join("backups/config.json.v1.0.0.1.partial")
                .exists()
        );
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn snapshots_keep_the_source_mode_and_restores_the_live_file_mode_and_owner() {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        std::fs::create_dir_all(&shared).unwrap();
        let db = shared.join("app.db");
        Connection::open(&db)
            .unwrap()
            .execute_batch("CREATE TABLE t (x TEXT); INSERT INTO t VALUES ('a');")
            .unwrap();
        let env = shared.join(".env");
        std::fs::write(&env, "SECRET=1").unwrap();
        for f in [&db, &env] {
            std::fs::set_permissions(f, Permissions::from_mode(0o600)).unwrap();
        }
        let db_snap = dir.path().join("backups/app.db.v1");
        let env_snap = dir.path().join("backups/.env.v1");
        assert_eq!(snapshot(&db, &db_snap).unwrap().0, Method::Sqlite);
        assert_eq!(snapshot(&env, &env_snap).unwrap().0, Method::Copy);
        assert_eq!(mode(&db_snap), 0o600, "the SQLite online backup path");
        assert_eq!(mode(&env_snap), 0o600, "the copy path");

        // the live database is 0640 and, where we may, owned by another user
        std::fs::set_permissions(&db, Permissions::from_mode(0o640)).unwrap();
        let root = nix::unistd::geteuid().is_root();
        if root {
            std::os::unix::fs::chown(&db, Some(65534), Some(65534)).unwrap();
        }
        let aside = dir.path().join("backups/app.db");
        restore(&db_snap, &db, &aside, ".before-restore.1").unwrap();
        assert_eq!(
            mode(&db),
            0o640,
            "the restored file has the live file's mode"
        );
        let meta = std::fs::metadata(&db).unwrap();
        if root {
            assert_eq!((meta.uid(), meta.gid()), (65534, 65534), "and its owner");
        } else {
            eprintln!("not root: the owner part of this test is skipped");
        }
        // a restore whose rollback fails puts the set-aside data back as it was
        let set_aside = dir.path().join("backups/app.db.before-restore.1");
        put_back(&set_aside, &db).unwrap();
        assert_eq!(mode(&db), 0o640);
        if root {
            let meta = std::fs::metadata(&db).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
        }
        // with no live file, the restored one has the backup's mode
        std::fs::remove_file(&env).unwrap();
        restore(&env_snap, &env, &dir.path().join("backups/.env"), ".x").unwrap();
        assert_eq!(mode(&env), 0o600);
        assert_eq!(std::fs::read_to_string(&env).unwrap(), "SECRET=1");
    }

    #[test]
    fn a_sqlite_snapshot_is_consistent_while_another_connection_writes() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        let conn = Connection::open(&db).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.execute_batch("CREATE TABLE a (n INTEGER); CREATE TABLE b (n INTEGER);")
            .unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let stop = stop.clone();
            let db = db.clone();
            std::thread::spawn(move || {
                let mut conn = Connection::open(&db).unwrap();
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // each transaction writes both tables: a consistent copy has equal counts
                    let tx = conn.transaction().unwrap();
                    tx.execute("INSERT INTO a VALUES (?1)", [n]).unwrap();
                    tx.execute("INSERT INTO b VALUES (?1)", [n]).unwrap();
                    tx.commit().unwrap();
                    n += 1;
                }
                n
            })
        };
        std::thread::sleep(Duration::from_millis(100));
        let mut counts = Vec::new();
        for i in 0..5 {
            let snap = dir.path().join(format!("snap{i}.db"));
            let (method, bytes) = snapshot(&db, &snap).unwrap();
            assert_eq!(method, Method::Sqlite);
            assert!(bytes > 0);
            let copy = Connection::open(&snap).unwrap();
            let a: i64 = copy
                .query_row("SELECT COUNT(*) FROM a", [], |r| r.get(0))
                .unwrap();
            let b: i64 = copy
                .query_row("SELECT COUNT(*) FROM b", [], |r| r.get(0))
                .unwrap();
            assert_eq!(a, b, "snapshot {i} caught a transaction half-way");
            counts.push(a);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let written = writer.join().unwrap();
        assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
        assert!(
            counts[4] > 0 && counts[4] <= written,
            "{counts:?} of {written}"
        );
    }

    #[test]
    fn a_damaged_database_fails_the_backup() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        let conn = Connection::open(&db).unwrap();
        conn.execute_batch("CREATE TABLE t (x TEXT); INSERT INTO t VALUES ('a');")
            .unwrap();
        drop(conn);
        // keep the header, wreck the rest of the first page and the schema after it
        let mut bytes = std::fs::read(&db).unwrap();
        for b in bytes.iter_mut().skip(100) {
            *b = 0xAB;
        }
        std::fs::write(&db, bytes).unwrap();
        let err = snapshot(&db, &dir.path().join("snap.db")).unwrap_err();
        assert!(
            matches!(
                err,
                BackupError::Sqlite { .. } | BackupError::Corrupt { .. }
            ),
            "{err}"
        );
        assert!(!dir.path().join("snap.db").exists());
    }
}

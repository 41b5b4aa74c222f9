//! ferry's own files keep tight modes (checked with `stat`), and data backups are kept for
//! the last deploys whatever happens to the releases.

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use support::{Options, Rel, Sandbox, eventually, get};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn with_db(releases: &[Rel], extra_app: &'static str) -> Sandbox {
    Sandbox::with(
        releases,
        Options {
            extra_app,
            env_extra: &[("staging", "backup = [\"data/app.db\"]")],
            ..Options::default()
        },
    )
}

#[test]
fn the_database_logs_backups_and_restores_are_not_readable_by_others() {
    let mut s = with_db(
        &[
            Rel("v1.0.0", "db = data/app.db\n"),
            Rel("v1.1.0", "db = data/app.db\nmessage = new\n"),
        ],
        "shared = [\"data/\"]",
    );
    // a state dir and database left world-readable by an older ferry are tightened
    let state = s.state_dir();
    std::fs::create_dir_all(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    rusqlite::Connection::open(state.join("ferry.db")).unwrap();
    std::fs::set_permissions(
        state.join("ferry.db"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();

    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    let live = state.join("environments/staging/shared/data/app.db");
    assert!(eventually(Duration::from_secs(10), || live.exists()));
    // the app's database: 0600, as a careful app would make it
    std::fs::set_permissions(&live, std::fs::Permissions::from_mode(0o600)).unwrap();
    let run = s.deploy_ok("staging", "v1.1.0");
    assert!(run.stdout().contains("sqlite online backup"), "{run}");

    let state_mode = mode(&state);
    assert_eq!(
        state_mode & 0o066,
        0,
        "state dir is {state_mode:o}: others can read or write it"
    );
    if !nix::unistd::geteuid().is_root() {
        assert_eq!(state_mode, 0o700);
    }
    for f in ["ferry.db", "ferry.db-wal", "ferry.db-shm", "local-token"] {
        assert_eq!(mode(&state.join(f)), 0o600, "{f}");
    }
    // the mirror's config can hold the repository's credentials
    assert_eq!(mode(&state.join("mirror.git")) & 0o077, 0, "mirror.git");
    let logs = state.join("environments/staging/logs");
    assert_eq!(mode(&logs) & 0o077, 0, "the logs dir");
    assert_eq!(mode(&logs.join("app.log")), 0o600, "app.log");

    let backups = s.api("/api/environments/staging/backups");
    let backup = backups.as_array().unwrap().last().unwrap().clone();
    assert_eq!(backup["method"], "sqlite");
    let snap = Path::new(backup["path"].as_str().unwrap());
    assert_eq!(mode(snap), 0o600, "a backup of a 0600 database");
    let owner = std::fs::metadata(&live).unwrap();

    let run = s.ferry(&[
        "rollback",
        "staging",
        "--yes",
        "--restore-data",
        "--reason",
        "modes",
    ]);
    assert_eq!(run.code(), 0, "{run}\n{}", s.serve_log());
    let restored = std::fs::metadata(&live).unwrap();
    assert_eq!(restored.permissions().mode() & 0o7777, 0o600, "restored");
    assert_eq!(
        (restored.uid(), restored.gid()),
        (owner.uid(), owner.gid()),
        "the restored database keeps its owner"
    );
    // the app is back on its data
    assert!(eventually(Duration::from_secs(10), || {
        get(&format!("{}/count", s.url("staging"))).is_some_and(|(c, _)| c == 200)
    }));
}

#[test]
fn backups_are_kept_for_the_last_deploys_however_many_releases_are_kept() {
    let mut s = with_db(
        &[
            Rel("v1.0.0", "db = data/app.db\n"),
            Rel("v1.1.0", "db = data/app.db\nmessage = 1\n"),
            Rel("v1.2.0", "db = data/app.db\nmessage = 2\n"),
            Rel("v1.3.0", "db = data/app.db\nmessage = 3\n"),
            Rel("v1.4.0", "db = data/app.db\nmessage = 4\n"),
        ],
        "shared = [\"data/\"]\nkeep_releases = 2\nkeep_backups = 3",
    );
    s.serve();
    let live = s
        .state_dir()
        .join("environments/staging/shared/data/app.db");
    for v in ["v1.0.0", "v1.1.0", "v1.2.0", "v1.3.0", "v1.4.0"] {
        s.deploy_ok("staging", v);
        assert!(eventually(Duration::from_secs(10), || live.exists()));
    }
    // deploys 2 to 5 took a backup (the first found no database yet)
    let kept = s.api("/api/environments/staging/backups");
    let kept: Vec<(i64, String)> = kept
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["deployment_id"].as_i64().unwrap(),
                b["path"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let ids: Vec<i64> = kept.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, vec![3, 4, 5], "the backups of the last 3 deploys");
    for (_, path) in &kept {
        assert!(Path::new(path).exists(), "{path}");
    }
    let dir = s.state_dir().join("environments/staging/backups/data");
    let on_disk = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            let name = name.to_string_lossy();
            name.starts_with("app.db.v") && !name.ends_with("-wal") && !name.ends_with("-shm")
        })
        .count();
    assert_eq!(on_disk, 3, "deploy 2's backup is gone from disk");
    // while only 2 releases are kept: the backups of deploys 3 and 4 outlive their releases
    let releases: Vec<String> =
        std::fs::read_dir(s.state_dir().join("environments/staging/releases"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('v'))
            .collect();
    assert_eq!(releases.len(), 2, "{releases:?}");
    let finish = s.ferry(&["show", "5"]).stdout();
    assert!(finish.contains("pruned backup"), "{finish}");
}

//! Sandbox: how ferry runs code it does not trust.
//!
//! Build, test and app commands come from the repository: whoever can get a branch onto
//! staging wrote them. When ferry runs as root they run as an unprivileged user of their
//! environment ([`RunAs`]; `user = "…"` in the config, else a dedicated `ferry-<app>-<env>`
//! made on first use), with a cleared environment plus an allowlist ([`command_env`]), and
//! the state dir laid out so that user reaches only its own environment's release and shared
//! paths ([`prepare_env_dir`]). When ferry does not run as root every command runs as
//! ferry's own user: the environment is still cleared, but nothing separates the command
//! from ferry's files (the README says so, and `serve` warns).
//!
//! Layout and modes in root mode (`gid` is the environment user's group):
//!
//! | path | owner | mode |
//! |---|---|---|
//! | `<state_dir>`, `environments/` | root | 0711: passable, never listable |
//! | `ferry.db`, `local-token`, `mirror.git`, logs | root | 0600 / 0700 |
//! | `environments/<env>/`, `releases/` | root:gid | 0710 |
//! | `releases/<release>/` (built) | root:gid | group may read, nobody but root writes |
//! | `shared/` | root:gid | 0710; each configured shared path belongs to the user |
//! | `home/` (the commands' `HOME`) | user | 0700 |
//! | `backups/`, `logs/`, `run/` | root | 0700 |

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Uid};

mod confine;
mod redact;

pub use confine::{Confinement, restrict_self};
pub use redact::Redactor;

/// The PATH commands get when ferry itself has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Variables of ferry's own environment a command inherits (when set); everything else is
/// dropped unless `[app] pass_env` names it.
const INHERITED: &[&str] = &["PATH", "LANG", "LC_ALL", "LC_CTYPE", "LC_MESSAGES", "TZ"];

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(
        "environment {env}: user = \"{user}\" needs ferry to run as root (it runs as uid {uid}); remove `user` or run `ferry serve` as root"
    )]
    NotRoot { env: String, user: String, uid: u32 },
    #[error(
        "environment {env}: user \"{user}\" does not exist\nhelp: create it with `useradd --system --user-group --no-create-home --shell /usr/sbin/nologin {user}`"
    )]
    NoSuchUser { env: String, user: String },
    #[error(
        "environment {env}: user \"{user}\" is uid {uid}, which is {what}: code deployed there would act as ferry\nhelp: give the environment an unprivileged user of its own"
    )]
    Privileged {
        env: String,
        user: String,
        uid: u32,
        what: &'static str,
    },
    #[error(
        "environment {env}: the user name ferry would make for it, \"{user}\", is too long\nhelp: set user = \"…\" (at most 32 characters) in [environments.{group}]"
    )]
    NameTooLong {
        env: String,
        group: String,
        user: String,
    },
    #[error(
        "environment {env}: cannot create user \"{user}\": {output}\nhelp: create it yourself, or set user = \"…\" to an existing unprivileged user"
    )]
    Create {
        env: String,
        user: String,
        output: String,
    },
    #[error(
        "the environments' users cannot reach the state dir {}: {} is mode {mode:04o}\nhelp: `chmod o+x {}`, or put state_dir under a passable dir such as /var/lib/ferry", state_dir.display(), blocked.display(), blocked.display()
    )]
    Unreachable {
        state_dir: PathBuf,
        blocked: PathBuf,
        mode: u32,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> SandboxError {
    let context = context.into();
    move |source| SandboxError::Io { context, source }
}

/// Whether ferry runs as root, and so can run commands as other users.
pub fn is_root() -> bool {
    Uid::effective().is_root()
}

/// The unprivileged user an environment's commands run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// The user ferry makes for `env` of `app` when the config names none.
pub fn default_user(app: &str, env: &str) -> String {
    format!("ferry-{app}-{env}")
        .to_ascii_lowercase()
        .replace('_', "-")
}

/// Who runs `env`'s commands: `None` when ferry is not root (they run as ferry's user).
/// As root: the configured user (which must exist), else the default one, created when
/// missing. Root and ferry's own uid are refused.
pub fn resolve_user(
    app: &str,
    env: &crate::config::Environment,
) -> Result<Option<RunAs>, SandboxError> {
    let me = Uid::effective();
    if !me.is_root() {
        return match &env.user {
            Some(user) => Err(SandboxError::NotRoot {
                env: env.name.clone(),
                user: user.clone(),
                uid: me.as_raw(),
            }),
            None => Ok(None),
        };
    }
    let (name, configured) = match &env.user {
        Some(user) => (user.clone(), true),
        None => (default_user(app, &env.name), false),
    };
    if name.len() > 32 {
        return Err(SandboxError::NameTooLong {
            env: env.name.clone(),
            group: env.group.clone(),
            user: name,
        });
    }
    let lookup = || {
        nix::unistd::User::from_name(&name).map_err(|e| SandboxError::Io {
            context: format!("looking up user {name}"),
            source: e.into(),
        })
    };
    let user = match lookup()? {
        Some(user) => user,
        None if configured => {
            return Err(SandboxError::NoSuchUser {
                env: env.name.clone(),
                user: name,
            });
        }
        None => {
            create_user(&env.name, &name)?;
            lookup()?.ok_or_else(|| SandboxError::Create {
                env: env.name.clone(),
                user: name.clone(),
                output: "useradd succeeded but the user is not there".into(),
            })?
        }
    };
    let uid = user.uid.as_raw();
    let refuse = |what| SandboxError::Privileged {
        env: env.name.clone(),
        user: name.clone(),
        uid,
        what,
    };
    if uid == 0 {
        return Err(refuse("root"));
    }
    if uid == me.as_raw() {
        return Err(refuse("ferry's own"));
    }
    Ok(Some(RunAs {
        name,
        uid,
        gid: user.gid.as_raw(),
    }))
}

/// `useradd` a system user with its own group, no home and no login shell.
fn create_user(env: &str, name: &str) -> Result<(), SandboxError> {
    let out = std::process::Command::new("useradd")
        .args([
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            "--comment",
            "ferry app user",
            "--",
            name,
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| SandboxError::Create {
            env: env.to_string(),
            user: name.to_string(),
            output: format!("cannot run useradd: {e}"),
        })?;
    // two environments starting at once may race to make the same user: it exists now
    if out.status.success() || out.status.code() == Some(9) {
        tracing::info!(
            user = name,
            env,
            "created a user for the environment's commands"
        );
        return Ok(());
    }
    Err(SandboxError::Create {
        env: env.to_string(),
        user: name.to_string(),
        output: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

/// The environment a command starts with: PATH and the locale from ferry's own, `HOME`
/// (the environment's `home/`), `USER`/`LOGNAME` when it runs as another user, and the
/// variables `pass` names. Nothing else of ferry's environment (tokens, webhook secrets,
/// cloud keys) reaches it; the caller adds ferry's variables and the app's own after.
pub fn command_env(home: &Path, run_as: Option<&RunAs>, pass: &[String]) -> Vec<(String, String)> {
    let mut vars = Vec::new();
    for key in INHERITED
        .iter()
        .copied()
        .chain(pass.iter().map(String::as_str))
    {
        if let Some(value) = std::env::var_os(key) {
            vars.push((key.to_string(), value.to_string_lossy().into_owned()));
        }
    }
    if !vars.iter().any(|(k, _)| k == "PATH") {
        vars.push(("PATH".into(), DEFAULT_PATH.into()));
    }
    vars.push(("HOME".into(), home.display().to_string()));
    if let Some(user) = run_as {
        vars.push(("USER".into(), user.name.clone()));
        vars.push(("LOGNAME".into(), user.name.clone()));
    }
    vars
}

/// Becomes `uid:gid` for good, without root's supplementary groups (`ferry confine`, which
/// root starts). Refuses to stay root.
pub fn drop_to(uid: u32, gid: u32) -> nix::Result<()> {
    if uid == 0 {
        return Err(nix::errno::Errno::EPERM);
    }
    let gid = Gid::from_raw(gid);
    nix::unistd::setgroups(&[gid])?;
    nix::unistd::setgid(gid)?;
    nix::unistd::setuid(Uid::from_raw(uid))?;
    // setuid from root drops every id; make sure there is no way back
    if nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
        return Err(nix::errno::Errno::EPERM);
    }
    Ok(())
}

/// Sets who `cmd` runs as and the whole of its environment: `vars` and nothing inherited.
pub fn confine(
    cmd: &mut tokio::process::Command,
    run_as: Option<&RunAs>,
    vars: &[(String, String)],
) {
    cmd.env_clear();
    cmd.envs(vars.iter().map(|(k, v)| (k, v)));
    if let Some(user) = run_as {
        // std drops root's supplementary groups when it sets the uid
        cmd.uid(user.uid).gid(user.gid);
    }
}

/// The shell script that runs `command` with a umask of 022, whatever ferry's own is: what
/// a build writes must stay readable to the app once the release is sealed.
pub fn shell_script(command: &str) -> String {
    format!("umask 022\n{command}")
}

fn chmod(path: &Path, mode: u32) -> Result<(), SandboxError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io(format!("setting the mode of {}", path.display())))
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), SandboxError> {
    nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        path,
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(gid)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|e| SandboxError::Io {
        context: format!("changing the owner of {}", path.display()),
        source: e.into(),
    })
}

fn mkdir(path: &Path) -> Result<(), SandboxError> {
    std::fs::create_dir_all(path).map_err(io(format!("creating {}", path.display())))
}

/// Makes the state dir private: 0700, or 0711 in root mode so environment users can pass
/// through to their own environment's dir (and list nothing on the way).
pub fn secure_state_dir(state_dir: &Path) -> Result<(), SandboxError> {
    secure_dir(state_dir, "environments")
}

/// The state dir of a serve of several apps, as [`secure_state_dir`] makes an app's, with
/// `apps/` (each app's state dir inside) passable where an app's has `environments/`.
pub fn secure_server_dir(dir: &Path) -> Result<(), SandboxError> {
    secure_dir(dir, "apps")?;
    if !is_root() {
        mkdir(&dir.join("apps"))?;
        chmod(&dir.join("apps"), 0o700)?;
    }
    Ok(())
}

fn secure_dir(state_dir: &Path, passable: &str) -> Result<(), SandboxError> {
    mkdir(state_dir)?;
    if is_root() {
        // every dir above must be passable, or no app user gets to its release
        let absolute = std::path::absolute(state_dir)
            .map_err(io(format!("reading {}", state_dir.display())))?;
        for dir in absolute.ancestors().skip(1) {
            let meta = std::fs::metadata(dir).map_err(io(format!("reading {}", dir.display())))?;
            if meta.mode() & 0o001 == 0 {
                return Err(SandboxError::Unreachable {
                    state_dir: state_dir.to_path_buf(),
                    blocked: dir.to_path_buf(),
                    mode: meta.mode() & 0o7777,
                });
            }
        }
        chmod(state_dir, 0o711)?;
        let envs = state_dir.join(passable);
        mkdir(&envs)?;
        chmod(&envs, 0o711)?;
        // ferry's own files (the store, tokens, the mirror, logs), whatever made them and
        // under whatever umask: nobody else's to read; what lies in a dir follows it
        let entries =
            std::fs::read_dir(state_dir).map_err(io(format!("reading {}", state_dir.display())))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if path == envs || meta.file_type().is_symlink() || meta.mode() & 0o077 == 0 {
                continue;
            }
            chmod(&path, meta.mode() & 0o7700)?;
        }
    } else {
        chmod(state_dir, 0o700)?;
    }
    Ok(())
}

/// Creates `env_dir`'s parts with the owners and modes of the table above (root mode), or
/// private to ferry otherwise; gives each configured shared path to the environment's user.
pub fn prepare_env_dir(
    env_dir: &Path,
    run_as: Option<&RunAs>,
    shared: &[String],
) -> Result<(), SandboxError> {
    for part in ["", "releases", "shared", "home", "backups", "logs", "run"] {
        mkdir(&env_dir.join(part))?;
    }
    let Some(user) = run_as else {
        chmod(env_dir, 0o700)?;
        return Ok(());
    };
    for part in ["", "releases", "shared"] {
        let dir = env_dir.join(part);
        chown(&dir, 0, user.gid)?;
        chmod(&dir, 0o710)?;
    }
    for part in ["backups", "logs", "run"] {
        let dir = env_dir.join(part);
        chown(&dir, 0, 0)?;
        chmod(&dir, 0o700)?;
    }
    let home = env_dir.join("home");
    chown(&home, user.uid, user.gid)?;
    chmod(&home, 0o700)?;
    own_shared(&env_dir.join("shared"), user, shared)
}

/// Gives each configured shared path (as it exists now) to the environment's user; the
/// dirs leading to one stay root's, passable by its group. Run at start and at each deploy,
/// since a deploy creates missing shared dirs and people add files meanwhile.
pub fn own_shared(shared_dir: &Path, user: &RunAs, shared: &[String]) -> Result<(), SandboxError> {
    for entry in shared {
        let rel = entry.trim_end_matches('/');
        let path = shared_dir.join(rel);
        let mut parent = Path::new(rel).parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            let dir = shared_dir.join(p);
            if dir.is_dir() && !is_link(&dir) {
                chown(&dir, 0, user.gid)?;
                chmod(&dir, 0o710)?;
            }
            parent = p.parent();
        }
        if std::fs::symlink_metadata(&path).is_ok() {
            own_tree(&path, user.uid, user.gid)?;
        }
    }
    Ok(())
}

fn is_link(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

/// Gives `root` and everything beneath it to `uid:gid`, never following a link.
pub fn own_tree(root: &Path, uid: u32, gid: u32) -> Result<(), SandboxError> {
    walk(root, &mut |path, meta| {
        if meta.uid() != uid || meta.gid() != gid {
            chown(path, uid, gid)?;
        }
        Ok(())
    })
}

/// Seals a built release: root owns every entry, the environment's group may read (and
/// pass through) what its owner could, and nobody but root may write. Without a user, only
/// group and other write bits are taken away.
pub fn seal_release(root: &Path, run_as: Option<&RunAs>) -> Result<(), SandboxError> {
    walk(root, &mut |path, meta| {
        if meta.file_type().is_symlink() {
            if run_as.is_some() {
                chown(path, 0, 0)?;
            }
            return Ok(());
        }
        let mode = meta.mode() & 0o7777;
        let mut sealed = mode & !0o022 & !0o6000;
        if let Some(user) = run_as {
            if meta.uid() != 0 || meta.gid() != user.gid {
                chown(path, 0, user.gid)?;
            }
            // the group gets the owner's read and execute bits
            sealed |= (mode & 0o500) >> 3;
            // the release's root is passable by the group only
            if path == root {
                sealed = 0o750;
            }
        }
        if sealed != mode {
            chmod(path, sealed)?;
        }
        Ok(())
    })
}

/// Visits `root` and every entry beneath it, depth first, never following links.
fn walk(
    root: &Path,
    visit: &mut dyn FnMut(&Path, &std::fs::Metadata) -> Result<(), SandboxError>,
) -> Result<(), SandboxError> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta =
            std::fs::symlink_metadata(&path).map_err(io(format!("reading {}", path.display())))?;
        visit(&path, &meta)?;
        if meta.is_dir() {
            let entries =
                std::fs::read_dir(&path).map_err(io(format!("reading {}", path.display())))?;
            for entry in entries {
                let entry = entry.map_err(io(format!("reading {}", path.display())))?;
                stack.push(entry.path());
            }
        }
    }
    Ok(())
}

/// Where `env`'s commands keep their `HOME`.
pub fn home_dir(env_dir: &Path) -> PathBuf {
    env_dir.join("home")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_env_keeps_only_the_allowlist() {
        let home = Path::new("/srv/home");
        let vars = command_env(home, None, &[]);
        let keys: Vec<&str> = vars.iter().map(|(k, _)| k.as_str()).collect();
        assert!(keys.contains(&"PATH") && keys.contains(&"HOME"));
        assert!(keys.iter().all(|k| INHERITED.contains(k) || *k == "HOME"));
    }

    #[test]
    fn seal_takes_write_away_from_group_and_other() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        seal_release(dir.path(), None).unwrap();
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
    }
}

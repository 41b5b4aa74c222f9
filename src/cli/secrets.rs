//! `ferry secrets <env> set NAME | unset NAME | list`: the environment's env file, edited in
//! place on this machine.
//!
//! It works on the file directly, like `ferry token` on the store, with or without `serve`
//! running: who may change the secrets is who may write that file (root, for a state dir
//! under /var/lib/ferry), no API route ever carries a secret value (nor a token with the
//! `deploy` scope gains a way to set one), and nothing new listens. A change takes effect at
//! the environment's next start (a deploy, a rollback, `ferry restart <env>`).
//!
//! `set` reads the value from stdin — without echo on a terminal — never from the command
//! line, where `ps` would show it. The file is rewritten atomically (a temp file in its dir,
//! fsynced, renamed over it, the dir fsynced), mode 0600, its owner kept, its other lines
//! and comments kept. Paths are resolved beneath the dir holding the file with `cap-std`,
//! so a symlink the app put in its shared dir cannot send the write elsewhere.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use super::{Cli, CmdResult, Failure};
use crate::config::{Config, Environment};

#[derive(Debug, clap::Args)]
pub struct SecretsArgs {
    /// The environment (or slot, like staging-2) whose secrets to change or list.
    pub environment: String,
    #[command(subcommand)]
    pub command: SecretsCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum SecretsCommand {
    /// Set NAME in the environment's env file; the value is read from stdin (not echoed on
    /// a terminal). Takes effect at the next start.
    Set {
        /// The variable, like DATABASE_URL.
        name: String,
    },
    /// Remove NAME from the environment's env file. Takes effect at the next start.
    Unset {
        /// The variable, like DATABASE_URL.
        name: String,
    },
    /// The names of the environment's secrets and where each comes from (never a value).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cli: &Cli, args: &SecretsArgs) -> CmdResult {
    let config = cli.load_config()?;
    let env = environment(&config, &args.environment)?;
    match &args.command {
        SecretsCommand::List { json } => list(&config, env, *json),
        SecretsCommand::Set { name } => {
            check_name(name)?;
            let (path, root) = env_file(&config, env)?;
            let value = read_value(name)?;
            edit(&root, &path, |text| set_line(text, name, &value))?;
            audit(&config, &format!("secrets {} set {name}", env.name));
            outln!(
                "{name} set in {}; it takes effect at the next start of {} (a deploy, or `ferry restart {}`)",
                path.display(),
                env.name,
                env.name
            );
            Ok(())
        }
        SecretsCommand::Unset { name } => {
            check_name(name)?;
            let (path, root) = env_file(&config, env)?;
            let mut found = false;
            edit(&root, &path, |text| {
                let (out, removed) = unset_line(text, name);
                found = removed;
                out
            })?;
            if !found {
                return Err(Failure::Failed(format!(
                    "{name} is not set in {}",
                    path.display()
                )));
            }
            audit(&config, &format!("secrets {} unset {name}", env.name));
            outln!(
                "{name} removed from {}; it takes effect at the next start of {}",
                path.display(),
                env.name
            );
            Ok(())
        }
    }
}

fn environment<'a>(config: &'a Config, name: &str) -> Result<&'a Environment, Failure> {
    if let Some(env) = config.environment(name) {
        return Ok(env);
    }
    let slots: Vec<&str> = config.group(name).iter().map(|e| e.name.as_str()).collect();
    Err(Failure::Usage(if slots.is_empty() {
        format!(
            "error: unknown environment \"{name}\"; environments: {}",
            config.environment_names().join(", ")
        )
    } else {
        format!(
            "error: {name} has slots, each with its own env file: name one of {}",
            slots.join(", ")
        )
    }))
}

fn check_name(name: &str) -> Result<(), Failure> {
    if !crate::config::valid_secret_name(name) {
        return Err(Failure::Usage(format!(
            "error: `{name}` is not a variable name: use letters, digits and '_', starting with a letter"
        )));
    }
    if crate::config::RESERVED_VARS.contains(&name) {
        return Err(Failure::Usage(format!(
            "error: `{name}` is set by ferry for every instance; give the secret another name"
        )));
    }
    Ok(())
}

/// The environment's env file, which `set` and `unset` need configured, and the dir nothing
/// is resolved outside of: its shared dir for a relative `env_file` (what is in it is the
/// app's to change, links and all), else the file's own dir (the operator's).
fn env_file(config: &Config, env: &Environment) -> Result<(PathBuf, PathBuf), Failure> {
    let path = crate::pipeline::env_file_path(config, env).ok_or_else(|| {
        Failure::Usage(format!(
            "error: environment {} has no env_file\nhelp: add env_file = \"config/.env\" to [environments.{}] in {} (a relative path is in environments/{}/shared/)",
            env.name,
            env.group,
            config.path.display(),
            env.name
        ))
    })?;
    let shared = config.env_dir(&env.name).join("shared");
    let root = if path.starts_with(&shared) {
        shared
    } else {
        path.parent().map(Path::to_path_buf).unwrap_or_default()
    };
    Ok((path, root))
}

/// The value for `name`: a line typed without echo on a terminal, else all of stdin less
/// one trailing newline.
fn read_value(name: &str) -> Result<String, Failure> {
    let stdin = std::io::stdin();
    let mut value = if stdin.is_terminal() {
        eprint!("value for {name} (not shown): ");
        let _ = std::io::stderr().flush();
        let line = read_hidden_line(&stdin)
            .map_err(|e| Failure::Failed(format!("cannot read the value: {e}")))?;
        eprintln!();
        line
    } else {
        let mut all = String::new();
        stdin
            .lock()
            .read_to_string(&mut all)
            .map_err(|e| Failure::Failed(format!("cannot read the value from stdin: {e}")))?;
        all
    };
    if value.ends_with('\n') {
        value.pop();
        if value.ends_with('\r') {
            value.pop();
        }
    }
    if value.is_empty() {
        return Err(Failure::Usage(format!(
            "error: no value given for {name}: pipe it in (`… | ferry secrets ENV set {name}`) or type it; `unset` removes a secret"
        )));
    }
    if value.contains(['\n', '\r', '\0']) {
        return Err(Failure::Usage(format!(
            "error: the value for {name} holds a line break or NUL, which an env file cannot: use a `secrets` command for it"
        )));
    }
    Ok(value)
}

/// One line from the terminal on stdin, with echo off meanwhile (restored whatever happens).
fn read_hidden_line(stdin: &std::io::Stdin) -> std::io::Result<String> {
    use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
    let saved = tcgetattr(stdin).map_err(std::io::Error::from)?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    quiet.local_flags.insert(LocalFlags::ECHONL);
    tcsetattr(stdin, SetArg::TCSANOW, &quiet).map_err(std::io::Error::from)?;
    let mut line = String::new();
    let read = stdin.read_line(&mut line);
    let restored = tcsetattr(stdin, SetArg::TCSANOW, &saved).map_err(std::io::Error::from);
    read?;
    restored?;
    Ok(line)
}

/// The key a line sets, if it sets one (the env file syntax of [`crate::runtime::Secrets`]).
fn key_of(line: &str) -> Option<&str> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let line = line.strip_prefix("export ").unwrap_or(line);
    Some(line.split_once('=')?.0.trim())
}

/// `value` as the env file reader gives it back: bare when plain, else in quotes (the
/// reader strips one pair of matching quotes and nothing else).
fn quoted(value: &str) -> String {
    let plain = value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_-.,:/@%+=".contains(c));
    if plain {
        value.to_string()
    } else if value.contains('\'') && !value.contains('"') {
        format!("\"{value}\"")
    } else {
        format!("'{value}'")
    }
}

/// `text` with `name` set to `value`: its first line replaced in place (an `export ` kept),
/// any later ones dropped, or a line appended.
fn set_line(text: &str, name: &str, value: &str) -> String {
    let mut out = String::new();
    let mut done = false;
    for line in text.lines() {
        if key_of(line) == Some(name) {
            if !done {
                let export = if line.trim_start().starts_with("export ") {
                    "export "
                } else {
                    ""
                };
                out.push_str(&format!("{export}{name}={}\n", quoted(value)));
                done = true;
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    if !done {
        out.push_str(&format!("{name}={}\n", quoted(value)));
    }
    out
}

/// `text` without the lines setting `name`, and whether there were any.
fn unset_line(text: &str, name: &str) -> (String, bool) {
    let mut out = String::new();
    let mut removed = false;
    for line in text.lines() {
        if key_of(line) == Some(name) {
            removed = true;
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    (out, removed)
}

/// Rewrites the file at `path` with `change(old text)`, atomically, mode 0600, its owner kept
/// (a new file is this user's). `root` is an existing dir `path` is beneath: the dirs below
/// it are made when missing, and nothing is resolved outside it.
fn edit(root: &Path, path: &Path, change: impl FnOnce(&str) -> String) -> Result<(), Failure> {
    use cap_std::fs::{Dir, OpenOptions, OpenOptionsExt};
    let fail = |what: &str, e: std::io::Error| {
        Failure::Failed(format!("cannot {what} {}: {e}", path.display()))
    };
    let (Some(parent), Some(file_name)) = (path.parent(), path.file_name()) else {
        return Err(Failure::Usage(format!(
            "error: env_file {} names no file",
            path.display()
        )));
    };
    let below = parent.strip_prefix(root).unwrap_or(Path::new(""));
    let root = Dir::open_ambient_dir(root, cap_std::ambient_authority()).map_err(|e| {
        Failure::Failed(format!(
            "cannot open {}: {e} (does the environment exist? `ferry serve` makes its dirs)",
            root.display()
        ))
    })?;
    let dir = if below.as_os_str().is_empty() {
        root
    } else {
        root.create_dir_all(below)
            .map_err(|e| fail("make the dir of", e))?;
        root.open_dir(below)
            .map_err(|e| fail("open the dir of", e))?
    };
    let (old, owner) = match dir.symlink_metadata(file_name) {
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(Failure::Failed(format!(
                "{} is a symbolic link; ferry writes env files only where they are (point env_file at the file itself)",
                path.display()
            )));
        }
        Ok(_) => {
            let file = dir.open(file_name).map_err(|e| fail("read", e))?.into_std();
            let owner = {
                use std::os::unix::fs::MetadataExt;
                let meta = file.metadata().map_err(|e| fail("read", e))?;
                (meta.uid(), meta.gid())
            };
            let mut text = String::new();
            (&file)
                .read_to_string(&mut text)
                .map_err(|e| fail("read", e))?;
            (text, Some(owner))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (String::new(), None),
        Err(e) => return Err(fail("read", e)),
    };
    let new = change(&old);
    let tmp = format!(
        ".{}.ferry-{}.tmp",
        file_name.to_string_lossy(),
        std::process::id()
    );
    let _ = dir.remove_file(&tmp);
    let mut options = OpenOptions::new();
    options.write(true).create_new(true).mode(0o600);
    let write = || -> std::io::Result<()> {
        let file = dir.open_with(&tmp, &options)?.into_std();
        if let Some((uid, gid)) = owner {
            // the umask may have narrowed nothing here, but an owner is only root's to give
            if nix::unistd::geteuid().is_root() {
                std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
            }
        }
        {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
        (&file).write_all(new.as_bytes())?;
        file.sync_all()?;
        dir.rename(&tmp, &dir, file_name)?;
        // the rename itself is on disk only once the dir is
        dir.open(".")?.into_std().sync_all()
    };
    write().map_err(|e| {
        let _ = dir.remove_file(&tmp);
        fail("write", e)
    })
}

/// Records the change in the app's audit trail (`GET /api/audit`), as the user who ran it.
fn audit(config: &Config, what: &str) {
    let db = config.state_dir.join("ferry.db");
    if !db.exists() {
        return;
    }
    let who = format!("{} (on the host)", super::current_user());
    if let Err(e) = crate::store::Store::open(&db).and_then(|s| s.add_audit(&who, "CLI", what, 0)) {
        eprintln!("warning: the change is made, but it could not be audited: {e}");
    }
}

/// Where each of the environment's secrets comes from.
fn list(config: &Config, env: &Environment, json: bool) -> CmdResult {
    let path = crate::pipeline::env_file_path(config, env);
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut note = None;
    if let Some(path) = &path {
        match crate::runtime::Secrets::read(path) {
            Ok(s) => rows.extend(s.iter().map(|(k, _)| (k.clone(), "env_file".into()))),
            Err(crate::runtime::RuntimeError::EnvFile { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                note = Some(format!("{} does not exist yet", path.display()));
            }
            Err(e) => return Err(Failure::Failed(e.to_string())),
        }
    }
    for secret in &env.secrets {
        match rows.iter_mut().find(|(k, _)| *k == secret.name) {
            Some(row) => row.1 = "command (over env_file)".into(),
            None => rows.push((secret.name.clone(), "command".into())),
        }
    }
    rows.sort();
    if json {
        let v = serde_json::json!({
            "environment": env.name,
            "env_file": path,
            "secrets": rows.iter().map(|(name, from)| serde_json::json!({"name": name, "from": from})).collect::<Vec<_>>(),
        });
        outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(());
    }
    match &path {
        Some(p) => outln!("env_file: {}", p.display()),
        None => outln!("env_file: none (add env_file = \"…\" to set secrets with ferry secrets)"),
    }
    if let Some(note) = note {
        outln!("({note})");
    }
    if rows.is_empty() {
        outln!("no secrets");
        return Ok(());
    }
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0).max(4);
    outln!("{:<width$}  FROM", "NAME");
    for (name, from) in rows {
        outln!("{name:<width$}  {from}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_and_unset_keep_every_other_line() {
        let text = "# db\nexport DB=old\nOTHER=1\n\nDB=dup\n";
        assert_eq!(
            set_line(text, "DB", "new value"),
            "# db\nexport DB='new value'\nOTHER=1\n\n"
        );
        assert_eq!(set_line("A=1", "B", "x"), "A=1\nB=x\n");
        assert_eq!(
            unset_line(text, "DB"),
            ("# db\nOTHER=1\n\n".to_string(), true)
        );
        assert!(!unset_line(text, "NOPE").1);
    }

    #[test]
    fn a_value_reads_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".env");
        for value in ["plain", " spaced ", "it's", "say \"hi\"", "a#b $c"] {
            std::fs::write(&path, set_line("", "K", value)).unwrap();
            let back = crate::runtime::Secrets::read(&path).unwrap();
            let got: Vec<_> = back.iter().collect();
            assert_eq!(got, [(&"K".to_string(), &value.to_string())], "{value}");
        }
    }
}

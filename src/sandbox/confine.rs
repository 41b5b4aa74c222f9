//! Confinement: untrusted commands start through `ferry confine`, which shuts the state dir
//! with Landlock before it execs the command.
//!
//! Landlock rules allow, they never deny; so the command gets full access (within its user's
//! own permissions) to everything *beside* the path to the state dir — every sibling of each
//! dir above it — and, inside the state dir, only its environment's paths: the release
//! (read and execute, or read-write while it builds), the shared dir and its `home/`. The
//! store, the local token, the mirror and every other environment stay out of reach even
//! for a command running as ferry's own user, and even through a path ferry did not think
//! of. On a kernel without Landlock the command runs unconfined but for its user, and says
//! so on its first line of output.

use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetError, RulesetStatus,
    path_beneath_rules,
};

use super::RunAs;

/// The Landlock ABI whose rights ferry asks for; older kernels get what they have.
const ABI_WANTED: ABI = ABI::V5;

/// Who a command runs as and what of the state dir it may reach.
#[derive(Debug, Clone, Default)]
pub struct Confinement {
    /// The unprivileged user (ferry's own user when `None`).
    pub run_as: Option<RunAs>,
    /// The state dir, shut to the command but for `read` and `write`. `None`: no Landlock
    /// (unit tests that start commands outside any state dir).
    pub state_dir: Option<PathBuf>,
    /// Paths inside the state dir the command may read and execute.
    pub read: Vec<PathBuf>,
    /// Paths inside the state dir the command may read and write.
    pub write: Vec<PathBuf>,
}

impl Confinement {
    /// `sh -c script` as this confinement's user, with exactly the environment `vars`,
    /// started through `ferry confine` when there is a state dir to shut.
    pub fn command(&self, script: &str, vars: &[(String, String)]) -> tokio::process::Command {
        let script = super::shell_script(script);
        let exe = std::env::current_exe()
            .ok()
            .filter(|_| self.state_dir.is_some());
        match (&exe, &self.state_dir) {
            (Some(exe), Some(state_dir)) => {
                let mut cmd = tokio::process::Command::new(exe);
                cmd.arg("confine").arg("--state-dir").arg(state_dir);
                for path in &self.read {
                    cmd.arg("--read").arg(path);
                }
                for path in &self.write {
                    cmd.arg("--write").arg(path);
                }
                if let Some(user) = &self.run_as {
                    // it lists the dirs around the state dir as root, then becomes the user
                    cmd.arg("--uid").arg(user.uid.to_string());
                    cmd.arg("--gid").arg(user.gid.to_string());
                }
                cmd.arg("--").arg("sh").arg("-c").arg(script);
                super::confine(&mut cmd, None, vars);
                cmd
            }
            _ => {
                let mut cmd = tokio::process::Command::new("sh");
                cmd.arg("-c").arg(script);
                super::confine(&mut cmd, self.run_as.as_ref(), vars);
                cmd
            }
        }
    }
}

/// Shuts `state_dir` to this process and whatever it execs, but for `read` (read and
/// execute) and `write` (read and write) beneath it. Returns whether the kernel enforced it.
pub fn restrict_self(
    state_dir: &Path,
    read: &[PathBuf],
    write: &[PathBuf],
) -> Result<bool, RulesetError> {
    let state_dir = std::path::absolute(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
    let all = AccessFs::from_all(ABI_WANTED);
    let status = Ruleset::default()
        .handle_access(all)?
        .create()?
        .add_rules(path_beneath_rules(beside(&state_dir), all))?
        .add_rules(path_beneath_rules(write, all))?
        .add_rules(path_beneath_rules(read, AccessFs::from_read(ABI_WANTED)))?
        .restrict_self()?;
    Ok(status.ruleset != RulesetStatus::NotEnforced)
}

/// Every entry beside the path from `/` down to `dir`: the siblings of `dir` and of each
/// dir above it. A dir this process cannot list gives nothing (its other entries stay shut).
fn beside(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut child = dir;
    while let Some(parent) = child.parent() {
        if let Ok(entries) = std::fs::read_dir(parent) {
            out.extend(
                entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.as_path() != child),
            );
        }
        child = parent;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beside_lists_every_sibling_on_the_way_down_but_not_the_way() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("srv/app/.ferry");
        std::fs::create_dir_all(&state).unwrap();
        std::fs::write(dir.path().join("srv/app/ferry.toml"), "").unwrap();
        std::fs::create_dir_all(dir.path().join("srv/other")).unwrap();
        let found = beside(&state);
        assert!(found.contains(&dir.path().join("srv/app/ferry.toml")));
        assert!(found.contains(&dir.path().join("srv/other")));
        assert!(!found.iter().any(|p| state.starts_with(p)), "{found:?}");
    }
}

//! `ferry init`: write a commented config to start from, tracking the repo's current branch.

use std::path::Path;

use super::{Cli, CmdResult, Failure};
use crate::config::TEMPLATE;

#[derive(Debug, clap::Args)]
pub struct Init {
    /// Overwrite an existing file.
    #[arg(long)]
    pub force: bool,
}

/// The branch checked out in the git repository at `dir` (an empty repo's too), if any.
fn current_branch(dir: &Path) -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["symbolic-ref", "--quiet", "--short", "HEAD"])
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let branch = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && crate::release::check_ref(&branch).is_ok()).then_some(branch)
}

/// The template with staging tracking `branch` (the template's own is `main`).
pub fn template(branch: &str) -> String {
    TEMPLATE.replacen(
        "track = { branch = \"main\" }     # webhook pushes to main deploy here",
        &format!(
            "track = {{ branch = \"{branch}\" }}     # webhook pushes to {branch} deploy here"
        ),
        1,
    )
}

pub fn run(cli: &Cli, args: &Init) -> CmdResult {
    let path = cli.config_path();
    if path.exists() && !args.force {
        return Err(Failure::Usage(format!(
            "{} already exists; pass --force to overwrite it",
            path.display()
        )));
    }
    // `repo = "."`: the repository the config is written in
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let branch = current_branch(dir);
    let text = template(branch.as_deref().unwrap_or("main"));
    std::fs::write(path, text)
        .map_err(|e| Failure::Failed(format!("cannot write {}: {e}", path.display())))?;
    let tracked = match &branch {
        Some(b) => format!("staging tracks {b}, the current branch"),
        None => "staging tracks main (no git branch found here; change track if needed)".into(),
    };
    outln!(
        "wrote {}: {tracked}; edit [app] name, repo and start, then run `ferry check{}`",
        path.display(),
        cli.config_flag()
    );
    Ok(())
}

//! `ferry completions <shell>` and `ferry man`: generated from the command line itself
//! (clap_complete, clap_mangen), so they never drift from what `ferry` accepts.

use std::path::PathBuf;

use super::{CmdResult, Failure};

#[derive(Debug, clap::Args)]
pub struct Completions {
    /// The shell: bash, zsh, fish, elvish or powershell.
    pub shell: clap_complete::Shell,
}

#[derive(Debug, clap::Args)]
pub struct Man {
    /// Write `ferry.1` and a page per subcommand (`ferry-deploy.1`, ...) into this directory
    /// (created if missing) instead of printing `ferry.1`.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// Prints the completion script for `args.shell`, e.g.
/// `ferry completions bash > /etc/bash_completion.d/ferry`.
pub fn completions(args: &Completions) -> CmdResult {
    let mut script = Vec::new();
    clap_complete::generate(
        args.shell,
        &mut visible(super::command()),
        "ferry",
        &mut script,
    );
    out!("{}", String::from_utf8_lossy(&script));
    Ok(())
}

/// Prints the man page (`ferry man | man -l -`), or writes every page into `--dir`.
pub fn man(args: &Man) -> CmdResult {
    // hidden subcommands (ferry's own plumbing) get no page and no SUBCOMMANDS entry
    let cmd = super::command();
    match &args.dir {
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(cmd)
                .render(&mut page)
                .map_err(|e| Failure::Failed(format!("cannot render the man page: {e}")))?;
            out!("{}", String::from_utf8_lossy(&page));
        }
        Some(dir) => {
            let failed = |e: std::io::Error| {
                Failure::Failed(format!(
                    "cannot write man pages into {}: {e}",
                    dir.display()
                ))
            };
            std::fs::create_dir_all(dir).map_err(failed)?;
            clap_mangen::generate_to(cmd, dir).map_err(failed)?;
            outln!("man pages written to {}", dir.display());
        }
    }
    Ok(())
}

/// `cmd` without its hidden subcommands (ferry's own plumbing, `confine` and `sample-app`),
/// which clap_complete would offer: clap can add subcommands but not remove one, so the
/// top level is built again from the visible parts.
fn visible(cmd: clap::Command) -> clap::Command {
    let mut out = clap::Command::new("ferry")
        .disable_help_subcommand(true)
        .args(cmd.get_arguments().cloned())
        .subcommands(cmd.get_subcommands().filter(|c| !c.is_hide_set()).cloned());
    if let Some(about) = cmd.get_about() {
        out = out.about(about.clone());
    }
    if cmd.get_version().is_some() {
        out = out.version(env!("CARGO_PKG_VERSION"));
    }
    out
}

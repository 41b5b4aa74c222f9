//! `ferry init`: write a commented config to start from.

use super::{Cli, CmdResult, Failure};
use crate::config::TEMPLATE;

#[derive(Debug, clap::Args)]
pub struct Init {
    /// Overwrite an existing file.
    #[arg(long)]
    pub force: bool,
}

pub fn run(cli: &Cli, args: &Init) -> CmdResult {
    let path = &cli.config;
    if path.exists() && !args.force {
        return Err(Failure::Usage(format!(
            "{} already exists; pass --force to overwrite it",
            path.display()
        )));
    }
    std::fs::write(path, TEMPLATE)
        .map_err(|e| Failure::Failed(format!("cannot write {}: {e}", path.display())))?;
    println!(
        "wrote {}: edit [app] name, repo and start, then run `ferry check -c {}`",
        path.display(),
        path.display()
    );
    Ok(())
}

//! `ferry check`: validate the config and summarise it.

use super::{Cli, CmdResult};
use crate::config::{Track, format_duration};

#[derive(Debug, clap::Args)]
pub struct Check {}

pub fn run(cli: &Cli, _args: &Check) -> CmdResult {
    let config = cli.load_config()?;
    let app = &config.app;
    println!("{}: ok", config.path.display());
    println!("  app        {} from {}", app.name, app.repo);
    println!("  start      {}", app.start);
    println!(
        "  build      {} command(s), test {} command(s), timeout {}",
        app.build.len(),
        app.test.len(),
        format_duration(app.command_timeout)
    );
    println!(
        "  shared     {}",
        if app.shared.is_empty() {
            "-".to_string()
        } else {
            app.shared.join(", ")
        }
    );
    println!("  releases   keep {}", app.keep_releases);
    let h = &config.health;
    println!(
        "  health     {} -> {} every {} (timeout {}, {} tries, first after {})",
        h.paths.join(", "),
        h.expect_status,
        format_duration(h.interval),
        format_duration(h.timeout),
        h.retries,
        format_duration(h.startup_delay)
    );
    println!("  state dir  {}", config.state_dir.display());
    println!("  api        http://{}", config.server.listen);
    for env in &config.environments {
        let track = match &env.track {
            Track::Manual => "manual deploys".to_string(),
            Track::Branch(b) => format!("branch {b}"),
            Track::Tags => "release tags".to_string(),
        };
        println!(
            "  env        {:<14} http://{:<21} {track}",
            env.name, env.listen
        );
    }
    Ok(())
}

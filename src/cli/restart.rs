//! `ferry restart <env>`: the serving release started again through the zero-downtime path
//! (a new instance, health, switch, the old one drained), followed live like a deploy.

use super::deploy::{create, finish};
use super::{Cli, CmdResult};
use crate::server::actions::RestartRequest;

#[derive(Debug, clap::Args)]
pub struct Restart {
    pub environment: String,
    /// Why (a rotated secret, say); recorded with the restart.
    #[arg(long)]
    pub reason: Option<String>,
    #[arg(long)]
    pub no_wait: bool,
    #[arg(long)]
    pub json: bool,
}

pub async fn run(cli: &Cli, args: &Restart) -> CmdResult {
    let client = cli.client()?;
    let env = super::safety::segment(&args.environment)?;
    let body = RestartRequest {
        reason: args.reason.clone(),
    };
    let created = create(&client, &format!("/api/environments/{env}/restart"), &body).await?;
    finish(&client, created, args.no_wait, args.json).await
}

//! `ferry rollout <env> promote|pause|abort`: a person's say in a canary rollout under way.

use super::{Cli, CmdResult};
use crate::pipeline::{RolloutAction, RolloutAnswer};
use crate::server::actions::RolloutRequest;

#[derive(Debug, clap::Args)]
pub struct RolloutArgs {
    pub environment: String,
    /// promote: the next step now (a paused rollout goes on); pause: hold the current share
    /// until promoted; abort: every client back on the previous release, the new one stopped.
    #[arg(value_enum)]
    pub action: Verb,
    /// With promote: straight to 100% (the switch and monitor follow).
    #[arg(long)]
    pub full: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Verb {
    Promote,
    Pause,
    Abort,
}

pub async fn run(cli: &Cli, args: &RolloutArgs) -> CmdResult {
    let action = match args.action {
        Verb::Promote => RolloutAction::Promote,
        Verb::Pause => RolloutAction::Pause,
        Verb::Abort => RolloutAction::Abort,
    };
    if args.full && action != RolloutAction::Promote {
        return Err(super::Failure::Usage(
            "--full goes with promote only".into(),
        ));
    }
    let client = cli.client()?;
    let env = super::safety::segment(&args.environment)?;
    let answer: RolloutAnswer = client
        .post(
            &format!("/api/environments/{env}/rollout"),
            &RolloutRequest {
                action,
                full: args.full,
            },
        )
        .await?;
    if args.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&answer).unwrap_or_default()
        );
        return Ok(());
    }
    outln!("{}: {}", answer.environment, answer.message);
    if let Some(status) = &answer.rollout {
        outln!("{}", status.line());
    }
    Ok(())
}

//! `ferry token create|list|revoke`: API tokens, managed on the state dir's database directly
//! (whoever can read the state dir is already trusted), so they work whether or not `serve`
//! runs; a running `serve` sees changes at the next request.

use super::{Cli, CmdResult, Failure};
use crate::auth::{self, Scope};
use crate::store::Store;

#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Make a token; its secret is printed once and not kept.
    Create {
        /// What the token is for, like "ci", "qa-lead" or "github-actions".
        #[arg(
            value_name = "NAME",
            required_unless_present = "name",
            conflicts_with = "name"
        )]
        given: Option<String>,
        /// The same as NAME.
        #[arg(long, hide = true)]
        name: Option<String>,
        /// What it may do, comma-separated: read, deploy (deploy, promote, roll back, restart,
        /// lock, maintenance, check reports), verify, approve, exec (`ferry exec`: commands
        /// with an environment's secrets), admin (everything). Every token may read.
        /// Default: admin.
        #[arg(long, value_delimiter = ',', value_parser = parse_scope)]
        scope: Vec<Scope>,
        /// The same as --scope read.
        #[arg(long, conflicts_with = "scope")]
        read_only: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Every token, revoked ones too (never their secrets).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop a token from working.
    Revoke {
        /// The token's name, as `ferry token list` shows it.
        name: String,
    },
}

fn open(cli: &Cli) -> Result<Store, Failure> {
    let servers = cli.load_servers()?;
    let config = servers
        .app(cli.app.as_deref())
        .map_err(|e| Failure::Usage(format!("error: {e}")))?;
    if servers.shared {
        crate::sandbox::secure_server_dir(&servers.state_dir).map_err(|e| {
            Failure::Failed(format!(
                "cannot create the state dir {}: {e}",
                servers.state_dir.display()
            ))
        })?;
    }
    crate::sandbox::secure_state_dir(&config.state_dir).map_err(|e| {
        Failure::Failed(format!(
            "cannot create the state dir {}: {e}",
            config.state_dir.display()
        ))
    })?;
    Store::open(&config.state_dir.join("ferry.db"))
        .map_err(|e| Failure::Failed(format!("cannot open the store: {e}")))
}

fn parse_scope(s: &str) -> Result<Scope, String> {
    Scope::parse(s).ok_or_else(|| {
        format!("\"{s}\" is not a scope: use read, deploy, verify, approve, exec or admin")
    })
}

fn failed(e: auth::AuthError) -> Failure {
    match e {
        auth::AuthError::BadName(_) | auth::AuthError::Reserved => {
            Failure::Usage(format!("error: {e}"))
        }
        e => Failure::Failed(format!("error: {e}")),
    }
}

pub fn run(cli: &Cli, args: &TokenArgs) -> CmdResult {
    let store = open(cli)?;
    match &args.command {
        TokenCommand::Create {
            given,
            name,
            scope,
            read_only,
            json,
        } => {
            let name = given.as_deref().or(name.as_deref()).unwrap_or_default();
            let scopes = match (read_only, scope.is_empty()) {
                (true, _) => vec![Scope::Read],
                (false, true) => vec![Scope::Admin],
                (false, false) => scope.clone(),
            };
            let (token, secret) = auth::create(&store, name, &scopes).map_err(failed)?;
            if *json {
                let mut v = serde_json::to_value(&token).unwrap_or_default();
                v["token"] = secret.into();
                outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                outln!(
                    "token \"{}\" (scope {}); shown this once, keep it safe:\n",
                    token.name,
                    token.scope_list()
                );
                outln!("{secret}\n");
                outln!(
                    "the CLI takes it from FERRY_TOKEN; HTTP clients send Authorization: Bearer <token>"
                );
            }
        }
        TokenCommand::List { json } => {
            let tokens = store
                .tokens()
                .map_err(|e| Failure::Failed(format!("error: {e}")))?;
            if *json {
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&tokens).unwrap_or_default()
                );
                return Ok(());
            }
            outln!(
                "{:<20} {:<22} {:<25} {:<25} STATE",
                "NAME",
                "SCOPE",
                "CREATED",
                "LAST USED"
            );
            for t in tokens {
                outln!(
                    "{:<20} {:<22} {:<25} {:<25} {}",
                    t.name,
                    t.scope_list(),
                    t.created_at,
                    t.last_used_at.as_deref().unwrap_or("never"),
                    t.revoked_at
                        .as_deref()
                        .map_or("live".to_string(), |at| format!("revoked {at}")),
                );
            }
        }
        TokenCommand::Revoke { name } => {
            auth::revoke(&store, name).map_err(failed)?;
            outln!("token \"{name}\" revoked");
        }
    }
    Ok(())
}

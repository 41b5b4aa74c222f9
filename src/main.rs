//! The `ferry` binary: parse arguments, set up logging, run the command.

use std::process::ExitCode;

use clap::FromArgMatches;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    ferry::install_crypto_provider();
    let cli = match ferry::cli::Cli::from_arg_matches(&ferry::cli::command().get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    if let ferry::cli::Command::Confine(args) = &cli.command {
        // before any thread or logging: Landlock and the uid change hold for what it execs
        return ferry::cli::confine::run(args);
    }
    let default_level = match cli.command {
        ferry::cli::Command::Serve(_) => "info",
        ferry::cli::Command::Demo(_) => "error",
        ferry::cli::Command::Agent(ref a) if a.daemon => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("FERRY_LOG").unwrap_or_else(|_| EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        // colour codes only for a person at a terminal, never into serve.log or a pipe
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let ferry::cli::Command::Serve(_) = &cli.command
        && let Err(e) = ferry::daemon::sockets::take_systemd()
    {
        // before any thread: listenfd takes LISTEN_FDS out of the environment
        eprintln!("error: {e}");
        return ExitCode::from(1);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(ferry::cli::run(cli))
}

//! `ferry confine`: the first step of every build, test and app command (hidden). It shuts
//! the state dir with Landlock (see [`crate::sandbox::Confinement`]), drops to the
//! environment's user, and execs the command. It runs before any thread is started.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

#[derive(Debug, Args)]
pub struct Confine {
    /// The state dir to shut.
    #[arg(long)]
    pub state_dir: PathBuf,
    /// A path inside it the command may read and execute.
    #[arg(long)]
    pub read: Vec<PathBuf>,
    /// A path inside it the command may read and write.
    #[arg(long)]
    pub write: Vec<PathBuf>,
    /// The user id to run as (root starts the command; it never runs as root).
    #[arg(long, requires = "gid")]
    pub uid: Option<u32>,
    /// The group id to run as.
    #[arg(long, requires = "uid")]
    pub gid: Option<u32>,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<OsString>,
}

/// Confines this process and execs the command; returns only when that fails (exit 126,
/// as a shell does for a command it cannot run).
pub fn run(args: &Confine) -> ExitCode {
    let fail = |what: String| {
        eprintln!("ferry confine: {what}");
        ExitCode::from(126)
    };
    match crate::sandbox::restrict_self(&args.state_dir, &args.read, &args.write) {
        Ok(true) => {}
        Ok(false) => eprintln!(
            "ferry confine: this kernel does not enforce Landlock; the command is kept from ferry's state dir by its user alone"
        ),
        Err(e) => return fail(format!("cannot shut the state dir: {e}")),
    }
    if let (Some(uid), Some(gid)) = (args.uid, args.gid)
        && let Err(e) = crate::sandbox::drop_to(uid, gid)
    {
        return fail(format!("cannot become uid {uid}: {e}"));
    }
    let Some((program, rest)) = args.command.split_first() else {
        return fail("no command".into());
    };
    let err =
        std::os::unix::process::CommandExt::exec(std::process::Command::new(program).args(rest));
    fail(format!("cannot run {}: {err}", program.to_string_lossy()))
}

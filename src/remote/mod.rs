//! The transport to an environment's servers (docs/servers.md): the system's OpenSSH client
//! with one ControlMaster per host ([`ssh`]), ferry installing itself on each host
//! ([`install`]), and [`Host`], which gives the agent client the two commands it runs there.
//! Nothing here knows the agent's protocol: `crate::agent` speaks it over these commands.

pub mod install;
pub mod ssh;

use std::sync::Arc;

use tokio::process::Command;

pub use install::{InstallError, Installed, LocalBinary, ensure_agent, ensure_binary};
pub use ssh::{Ssh, SshError};

use crate::config::SshServer;

/// One server, prepared: ferry's agent is installed there and these are the commands that
/// reach it.
#[derive(Debug, Clone)]
pub struct Host {
    pub ssh: Arc<Ssh>,
    pub server: SshServer,
    /// The agent binary on the host (relative to the user's home unless `agent_dir` is
    /// absolute).
    pub agent_path: String,
    /// Whether [`Host::prepare`] copied the binary (false: it was there).
    pub copied: bool,
}

impl Host {
    /// Installs the running ferry on `server` if it is missing there (see
    /// [`install::ensure_agent`]): refused for another architecture, a full disk, an
    /// unreachable host or an unknown or changed host key, each naming the host.
    pub async fn prepare(ssh: Arc<Ssh>, server: SshServer) -> Result<Host, InstallError> {
        let installed = ensure_agent(&ssh, &server).await?;
        Ok(Host::installed(ssh, server, installed))
    }

    /// [`Host::prepare`] with another binary than the running one (tests install the
    /// built `ferry`).
    pub async fn prepare_with(
        ssh: Arc<Ssh>,
        server: SshServer,
        binary: &LocalBinary,
    ) -> Result<Host, InstallError> {
        let installed = ensure_binary(&ssh, &server, binary).await?;
        Ok(Host::installed(ssh, server, installed))
    }

    fn installed(ssh: Arc<Ssh>, server: SshServer, installed: Installed) -> Host {
        Host {
            ssh,
            server,
            agent_path: installed.path,
            copied: installed.copied,
        }
    }

    /// The host's name as written in `servers`.
    pub fn name(&self) -> &str {
        &self.server.name
    }

    /// The agent dir on the host, as given to `ferry agent --dir`.
    pub fn agent_dir(&self) -> &str {
        &self.ssh.options().agent_dir
    }

    /// `<agent_path> agent --dir <agent_dir>` over ssh: the relay to the host's agent
    /// daemon, JSON lines on its stdin and stdout. Stdio is the caller's to set.
    pub fn agent_command(&self) -> Command {
        self.ssh.command(
            &self.server,
            &[&self.agent_path, "agent", "--dir", self.agent_dir()],
        )
    }

    /// `<agent_path> agent --dir <agent_dir> receive <args>` over ssh: a release archive on
    /// its stdin, one JSON answer line on its stdout.
    pub fn receive_command(&self, args: &[&str]) -> Command {
        let mut argv = vec![
            self.agent_path.as_str(),
            "agent",
            "--dir",
            self.agent_dir(),
            "receive",
        ];
        argv.extend_from_slice(args);
        self.ssh.command(&self.server, &argv)
    }

    /// What a failed agent or receive command means, from its exit status and stderr (ssh's
    /// own failures typed, naming the host).
    pub fn classify(&self, status: std::process::ExitStatus, stderr: &[u8]) -> SshError {
        self.ssh.classify(&self.server, status, stderr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SshOptions;

    #[test]
    fn agent_commands_run_the_installed_binary_with_the_agent_dir() {
        let state = tempfile::tempdir().unwrap();
        let ssh = Arc::new(Ssh::new(&SshOptions::default(), state.path()));
        let host = Host {
            ssh,
            server: SshServer::parse("deploy@app1").unwrap(),
            agent_path: ".ferry/bin/ferry-0123456789abcdef".into(),
            copied: false,
        };
        let cmd = host.agent_command();
        let args: Vec<_> = cmd.as_std().get_args().collect();
        assert_eq!(
            args.last().unwrap().to_str().unwrap(),
            ".ferry/bin/ferry-0123456789abcdef agent --dir .ferry"
        );
        let cmd = host.receive_command(&["--app", "a b", "--release", "v1"]);
        let args: Vec<_> = cmd.as_std().get_args().collect();
        assert_eq!(
            args.last().unwrap().to_str().unwrap(),
            ".ferry/bin/ferry-0123456789abcdef agent --dir .ferry receive --app 'a b' --release v1"
        );
        let envs: Vec<_> = cmd.as_std().get_envs().map(|(k, _)| k.to_owned()).collect();
        assert!(
            envs.iter()
                .all(|k| ["PATH", "HOME", "SSH_AUTH_SOCK"].contains(&k.to_str().unwrap())),
            "{envs:?}"
        );
    }
}

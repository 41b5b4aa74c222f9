//! The system's OpenSSH client as ferry runs it: one ControlMaster per host, never a prompt,
//! host keys checked against one known_hosts file and never learned, nothing of ferry's own
//! environment passed on; and its failures read into [`SshError`], each naming the host.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};

use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::process::Command;

use crate::config::{SshOptions, SshServer};

/// How long an idle master connection stays up after its last command.
pub const CONTROL_PERSIST: &str = "5m";

/// The longest path a unix socket may have, less the suffix OpenSSH adds to the control
/// path while it sets a master up (`.` and 16 random characters) and the 40 characters of
/// `%C`.
const MAX_CONTROL_DIR: usize = 107 - 17 - 41;

/// Why a command on a host failed; every message names the host.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("{host} is unreachable: {reason}")]
    Unreachable { host: String, reason: String },
    #[error(
        "{host}: its host key is not in {known_hosts}, and ferry never learns one\nhelp: check the key with the host's administrator, then add it, e.g. `ssh-keyscan {keyscan} >> {known_hosts}` on a trusted network"
    )]
    HostKeyUnknown {
        host: String,
        known_hosts: String,
        keyscan: String,
    },
    #[error(
        "{host}: its host key has CHANGED from the one in {known_hosts}: refused (someone may be intercepting the connection)\nhelp: if the host was rebuilt, remove the old key with `{remove}` and add the new one"
    )]
    HostKeyChanged {
        host: String,
        known_hosts: String,
        /// The `ssh-keygen -R` line that removes the recorded key.
        remove: String,
    },
    #[error(
        "{host}: authentication failed: {reason}\nhelp: check [ssh] user and identity_file, and the key in the user's authorized_keys on the host"
    )]
    Auth { host: String, reason: String },
    #[error("{host}: the connection was lost: {reason}")]
    Lost { host: String, reason: String },
    #[error("{host}: the remote command failed ({}): {stderr}", exit_text(.status))]
    Remote {
        host: String,
        /// The remote command's exit code; `None` when it was killed by a signal.
        status: Option<i32>,
        /// The last lines of its stderr.
        stderr: String,
    },
    #[error(
        "{host}: ssh refused its settings: {reason}\nhelp: check [ssh] and ~/.ssh/config of ferry's user"
    )]
    Config { host: String, reason: String },
    #[error("{host}: cannot run {command}: {source}")]
    Spawn {
        host: String,
        command: String,
        source: std::io::Error,
    },
    #[error("cannot prepare the control socket dir {}: {reason}", dir.display())]
    ControlDir { dir: PathBuf, reason: String },
}

impl SshError {
    /// The host the error is about (empty for [`SshError::ControlDir`]).
    pub fn host(&self) -> &str {
        match self {
            SshError::Unreachable { host, .. }
            | SshError::HostKeyUnknown { host, .. }
            | SshError::HostKeyChanged { host, .. }
            | SshError::Auth { host, .. }
            | SshError::Lost { host, .. }
            | SshError::Remote { host, .. }
            | SshError::Config { host, .. }
            | SshError::Spawn { host, .. } => host,
            SshError::ControlDir { .. } => "",
        }
    }

    /// True for an error of the connection rather than of the remote command: the host may
    /// answer again later (`unreachable`, `lost`).
    pub fn is_transport(&self) -> bool {
        matches!(self, SshError::Unreachable { .. } | SshError::Lost { .. })
    }
}

/// Runs `ssh` to servers with [`SshOptions`]; cheap to share (`Arc`) between hosts.
#[derive(Debug, Clone)]
pub struct Ssh {
    options: SshOptions,
    known_hosts: PathBuf,
    control_dir: PathBuf,
}

impl Ssh {
    /// ssh as `options` say, with its control sockets in `<state_dir>/ssh/` (or, when that
    /// path is too long for a unix socket, a private dir under the temp dir named after it).
    pub fn new(options: &SshOptions, state_dir: &Path) -> Ssh {
        let mut control_dir = state_dir.join("ssh");
        // ssh expands `%` and `~` in ControlPath and splits it at whitespace
        let plain = control_dir.to_str().is_some_and(|p| {
            p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-'))
        });
        if !plain || control_dir.as_os_str().len() > MAX_CONTROL_DIR {
            use sha2::Digest;
            let digest = sha2::Sha256::digest(control_dir.as_os_str().as_encoded_bytes());
            control_dir = std::env::temp_dir().join(format!(
                "ferry-ssh-{}-{}",
                nix::unistd::getuid(),
                &hex::encode(digest)[..12]
            ));
        }
        Ssh {
            options: options.clone(),
            known_hosts: options.known_hosts_file(),
            control_dir,
        }
    }

    /// The options it runs with.
    pub fn options(&self) -> &SshOptions {
        &self.options
    }

    /// The known_hosts file host keys are checked against.
    pub fn known_hosts(&self) -> &Path {
        &self.known_hosts
    }

    /// Where the control sockets are (`<state>/ssh`).
    pub fn control_dir(&self) -> &Path {
        &self.control_dir
    }

    /// The arguments of `ssh` running `remote` (words, quoted here for the remote shell) on
    /// `server`.
    pub fn args(&self, server: &SshServer, remote: &[&str]) -> Vec<OsString> {
        let o = &self.options;
        let mut args: Vec<OsString> = self.checked_options().into_iter().map(Into::into).collect();
        // no tty (it would mangle the binary and the JSON lines), no escape character, no
        // forwardings from ssh_config
        args.extend(["-T".into(), "-e".into(), "none".into()]);
        let mut more = vec![
            "ClearAllForwardings=yes".to_string(),
            "ControlMaster=auto".to_string(),
            format!("ControlPath={}/%C", self.control_dir.display()),
            format!("ControlPersist={CONTROL_PERSIST}"),
        ];
        more.extend(self.proxy_command().map(|c| format!("ProxyCommand={c}")));
        for v in more {
            args.push("-o".into());
            args.push(v.into());
        }
        if let Some(port) = o.port_for(server) {
            args.push("-p".into());
            args.push(port.to_string().into());
        }
        if let Some(user) = o.user_for(server) {
            args.push("-l".into());
            args.push(user.into());
        }
        args.push("--".into());
        args.push(server.host.clone().into());
        if !remote.is_empty() {
            args.push(remote_command(remote).into());
        }
        args
    }

    /// `ssh … -- host '<remote argv, quoted>'`, its environment cleared to `PATH`, `HOME`
    /// and `SSH_AUTH_SOCK`, killed when dropped. Stdio is the caller's to set. Makes the
    /// control socket dir (0700) if it is missing.
    pub fn command(&self, server: &SshServer, remote: &[&str]) -> Command {
        let mut cmd = Command::new(&self.options.command);
        cmd.args(self.args(server, remote));
        cmd.env_clear();
        for var in ["PATH", "HOME", "SSH_AUTH_SOCK"] {
            if let Some(v) = std::env::var_os(var) {
                cmd.env(var, v);
            }
        }
        cmd.stdin(Stdio::null()).kill_on_drop(true);
        // a failure shows when ssh runs (it says the control path is unusable); `run`
        // reports it first
        let _ = self.prepare_control_dir();
        cmd
    }

    /// The options of every connection, the jump host's too: never a prompt, host keys
    /// checked against `known_hosts` only and never written, the timeouts, the key.
    fn checked_options(&self) -> Vec<String> {
        let o = &self.options;
        let mut out = Vec::new();
        for v in [
            "BatchMode=yes".to_string(),
            "StrictHostKeyChecking=yes".to_string(),
            format!("UserKnownHostsFile={}", self.known_hosts.display()),
            // not the machine's /etc/ssh/ssh_known_hosts
            "GlobalKnownHostsFile=/dev/null".to_string(),
            "UpdateHostKeys=no".to_string(),
            format!("ConnectTimeout={}", o.connect_timeout.as_secs().max(1)),
            "ServerAliveInterval=2".to_string(),
            "ServerAliveCountMax=3".to_string(),
            // nothing from ssh_config may add trust, forward ferry's agent or keys, or turn
            // messages off (the errors are read from them)
            "KnownHostsCommand=none".to_string(),
            "ForwardAgent=no".to_string(),
            "ForwardX11=no".to_string(),
            "PermitLocalCommand=no".to_string(),
            "LogLevel=ERROR".to_string(),
        ] {
            out.push("-o".to_string());
            out.push(v);
        }
        if let Some(identity) = &o.identity_file {
            out.push("-i".to_string());
            out.push(identity.display().to_string());
            out.push("-o".to_string());
            out.push("IdentitiesOnly=yes".to_string());
        }
        out
    }

    /// The jump host's ssh (`proxy_jump`), as a ProxyCommand: `ssh -J` would run the jump's
    /// ssh without these options (no BatchMode, the default known_hosts), so ferry writes
    /// the command itself with the same checks, and `-W` to the server.
    fn proxy_command(&self) -> Option<String> {
        let o = &self.options;
        let hop = SshServer::parse(o.proxy_jump.as_deref()?).ok()?;
        let mut words: Vec<String> = vec![o.command.clone()];
        words.extend(self.checked_options());
        if let Some(port) = hop.port {
            words.push("-p".into());
            words.push(port.to_string());
        }
        if let Some(user) = &hop.user {
            words.push("-l".into());
            words.push(user.clone());
        }
        words.extend(["-W".into(), "[%h]:%p".into(), "--".into(), hop.host]);
        let line: Vec<String> = words
            .iter()
            .map(|w| {
                // ssh expands `%` tokens in the line: only %h and %p are meant
                let w = if w == "[%h]:%p" {
                    w.clone()
                } else {
                    w.replace('%', "%%")
                };
                shell_quote(&w)
            })
            .collect();
        // ssh sends a proxy command's stderr to /dev/null with ControlPersist: the jump's
        // own failure (its host key) is kept for `classify`
        let log = format!("{}/jump-%h-%p.log", self.control_dir.display());
        Some(format!("{} 2>{}", line.join(" "), shell_quote(&log)))
    }

    /// Makes the control socket dir: 0700, ours.
    pub fn prepare_control_dir(&self) -> Result<(), SshError> {
        let dir = &self.control_dir;
        let fail = |reason: String| SshError::ControlDir {
            dir: dir.clone(),
            reason,
        };
        use std::os::unix::fs::DirBuilderExt;
        // made 0700 at once: no moment with a looser mode
        match std::fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new()
                    .mode(0o700)
                    .recursive(true)
                    .create(dir)
                    .map_err(|e| fail(e.to_string()))?;
            }
            Err(e) => return Err(fail(e.to_string())),
        }
        let meta = std::fs::symlink_metadata(dir).map_err(|e| fail(e.to_string()))?;
        use std::os::unix::fs::MetadataExt;
        if !meta.is_dir() || meta.uid() != nix::unistd::getuid().as_raw() {
            return Err(fail("it is not a directory of ferry's user".into()));
        }
        if meta.mode() & 0o777 != 0o700 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| fail(e.to_string()))?;
        }
        Ok(())
    }

    /// Runs `remote` on `server` with `stdin` as its input and returns its output when it
    /// exits 0; its failure, or ssh's, as an [`SshError`].
    pub async fn run(
        &self,
        server: &SshServer,
        remote: &[&str],
        stdin: &[u8],
    ) -> Result<Output, SshError> {
        self.run_reader(server, remote, std::io::Cursor::new(stdin.to_vec()))
            .await
    }

    /// [`Ssh::run`] with its input streamed from `stdin` (a file being uploaded).
    pub async fn run_reader<R>(
        &self,
        server: &SshServer,
        remote: &[&str],
        mut stdin: R,
    ) -> Result<Output, SshError>
    where
        R: AsyncRead + Unpin + Send + 'static,
    {
        self.prepare_control_dir()?;
        let mut cmd = self.command(server, remote);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| SshError::Spawn {
            host: server.name.clone(),
            command: self.options.command.clone(),
            source,
        })?;
        let mut input = child.stdin.take().expect("stdin is piped");
        // written beside the wait: a remote command that stops reading (a full disk) ends
        // the write with a broken pipe, and its exit status and stderr say why
        let writer = tokio::spawn(async move {
            let _ = tokio::io::copy(&mut stdin, &mut input).await;
            let _ = input.shutdown().await;
        });
        let output = child.wait_with_output().await.map_err(|e| SshError::Lost {
            host: server.name.clone(),
            reason: e.to_string(),
        })?;
        writer.abort();
        if output.status.success() {
            return Ok(output);
        }
        let err = self.classify(server, output.status, &output.stderr);
        // a remote command killed by a signal is also a silent 255: the connection is
        // lost only if the master is gone
        if matches!(err, SshError::Lost { .. })
            && output.stderr.iter().all(u8::is_ascii_whitespace)
            && self.master_alive(server).await
        {
            return Err(SshError::Remote {
                host: server.name.clone(),
                status: None,
                stderr: "it ended without an exit status (killed by a signal?)".into(),
            });
        }
        Err(err)
    }

    /// What a failed ssh run means, from its exit status and stderr: exit 255 is ssh's own
    /// failure (read from its message), any other the remote command's.
    pub fn classify(&self, server: &SshServer, status: ExitStatus, stderr: &[u8]) -> SshError {
        let mut text = String::from_utf8_lossy(stderr).into_owned();
        let mut host = server.name.clone();
        let known_hosts = self.known_hosts.display().to_string();
        let port = self.options.port_for(server);
        if status.code() == Some(255)
            && let Some(jump) = &self.options.proxy_jump
        {
            let log =
                self.control_dir
                    .join(format!("jump-{}-{}.log", server.host, port.unwrap_or(22)));
            if let Ok(said) = std::fs::read_to_string(&log) {
                let _ = std::fs::remove_file(&log);
                if !said.trim().is_empty() {
                    host = format!("{host} (through the jump host {jump})");
                    text = format!("{said}\n{text}");
                }
            }
        }
        match status.code() {
            Some(255) => {}
            None => {
                return SshError::Lost {
                    host,
                    reason: format!("ssh ended by {status}"),
                };
            }
            Some(code) => {
                return SshError::Remote {
                    host,
                    status: Some(code),
                    stderr: tail(&text),
                };
            }
        }
        // ssh's own words come last: remote output before them must not decide
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let last = lines[lines.len().saturating_sub(4)..].join("\n");
        let has = |needle: &str| last.contains(needle);
        let reason = last_line(&text);
        let config = [
            "command-line line",
            "Bad configuration option",
            "Bad owner or permissions",
            "Unable to negotiate",
            "garbage at end of line",
            "no argument after keyword",
        ];
        if config.iter().any(|n| has(n)) {
            return SshError::Config { host, reason };
        }
        if has("REMOTE HOST IDENTIFICATION HAS CHANGED")
            || has("Host key for") && has("has changed")
        {
            let name = server.known_hosts_name(port);
            return SshError::HostKeyChanged {
                host,
                remove: format!(
                    "ssh-keygen -R {} -f {}",
                    shell_quote(&name),
                    shell_quote(&known_hosts)
                ),
                known_hosts,
            };
        }
        if has("Host key verification failed")
            || has("host key is known for")
            || has("No matching host key")
        {
            let keyscan = match port {
                Some(p) if p != 22 => format!("-p {p} {}", shell_quote(&server.host)),
                _ => shell_quote(&server.host),
            };
            return SshError::HostKeyUnknown {
                host,
                known_hosts,
                keyscan,
            };
        }
        if has("Permission denied") || has("Too many authentication failures") {
            return SshError::Auth { host, reason };
        }
        let lost = [
            "Timeout, server",
            "client_loop:",
            "closed by remote host",
            "Connection reset by",
            "Broken pipe",
            "packet_write",
        ];
        let unreachable = [
            "connect to host",
            "Connection refused",
            "Connection timed out",
            "No route to host",
            "Network is unreachable",
            "Could not resolve hostname",
            "Name or service not known",
            "Temporary failure in name resolution",
            "Connection closed by",
        ];
        // a connection attempt's failure names it; a lost session says how it ended
        if has("connect to host")
            || has("Could not resolve hostname")
            || has("kex_exchange_identification")
            || has("during banner exchange")
        {
            return SshError::Unreachable { host, reason };
        }
        if lost.iter().any(|n| has(n)) {
            return SshError::Lost { host, reason };
        }
        if unreachable.iter().any(|n| has(n)) {
            return SshError::Unreachable { host, reason };
        }
        if text.trim().is_empty() {
            // a session through the master ends so when the master's connection drops
            return SshError::Lost {
                host,
                reason: "ssh ended (255) without a word: the connection dropped".into(),
            };
        }
        // ssh said nothing it is known to say: the remote command itself exited 255
        SshError::Remote {
            host,
            status: Some(255),
            stderr: tail(&text),
        }
    }

    /// Whether `server`'s master connection is up (`ssh -O check`).
    pub async fn master_alive(&self, server: &SshServer) -> bool {
        let mut args = self.args(server, &[]);
        let at = args.len() - 2;
        args.splice(at..at, ["-O".into(), "check".into()]);
        self.control(args).await.is_ok_and(|s| s.success())
    }

    /// Closes `server`'s master connection (`ssh -O exit`), if one is up.
    pub async fn close(&self, server: &SshServer) {
        let mut args = self.args(server, &[]);
        // `-O exit` goes before the `--` that ends the options
        let at = args.len() - 2;
        args.splice(at..at, ["-O".into(), "exit".into()]);
        let _ = self.control(args).await;
    }

    /// Runs ssh for a control request only: no input, no output, PATH only.
    async fn control(&self, args: Vec<OsString>) -> std::io::Result<ExitStatus> {
        let mut cmd = Command::new(&self.options.command);
        cmd.args(args).env_clear();
        if let Some(path) = std::env::var_os("PATH") {
            cmd.env("PATH", path);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .status()
            .await
    }

    /// Closes every master connection with a socket in the control dir (when serve stops).
    pub async fn close_all(&self) {
        let Ok(entries) = std::fs::read_dir(&self.control_dir) else {
            return;
        };
        for entry in entries.flatten() {
            let args = vec![
                "-o".into(),
                format!("ControlPath={}", entry.path().display()).into(),
                "-O".into(),
                "exit".into(),
                "--".into(),
                "ferry-control".into(),
            ];
            let _ = self.control(args).await;
        }
    }
}

fn exit_text(status: &Option<i32>) -> String {
    match status {
        Some(code) => format!("exit {code}"),
        None => "killed by a signal".into(),
    }
}

/// The remote command line: each word quoted for a POSIX shell (the remote user's login
/// shell reads it).
pub fn remote_command(words: &[&str]) -> String {
    words
        .iter()
        .map(|w| shell_quote(w))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `word` as one word for a POSIX shell: as is when it holds only characters no shell
/// treats specially, else in single quotes.
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./:=@%+,".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The last lines of stderr, at most ~1000 characters.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(5);
    let joined = lines[start..].join("\n");
    let mut cut = joined.len().saturating_sub(1000);
    while !joined.is_char_boundary(cut) {
        cut += 1;
    }
    joined[cut..].to_string()
}

fn last_line(text: &str) -> String {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("ssh failed without a message")
        .trim()
        .to_string()
}

#[cfg(test)]
#[path = "ssh_tests.rs"]
mod tests;

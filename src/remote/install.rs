//! ferry installs itself on a host: the very binary running here, at
//! `<agent_dir>/bin/ferry-<first 16 hex of its sha256>`, copied over ssh when missing, checked
//! with `sha256sum` on arrival and renamed into place atomically.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::ssh::{Ssh, SshError};
use crate::config::SshServer;

/// Why ferry could not be installed on a host; each names the host.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error("cannot read ferry's own binary {}: {reason}", path.display())]
    Local { path: PathBuf, reason: String },
    #[error(
        "{host} is a {remote} machine and this ferry is built for {local}\nhelp: run ferry from a machine of the hosts' architecture"
    )]
    Arch {
        host: String,
        remote: String,
        local: String,
    },
    #[error(
        "disk full on {host}: there is no room for ferry's agent under {dir}\nhelp: free space on the host (`df -h {dir}`), then deploy again"
    )]
    DiskFull { host: String, dir: String },
    #[error("{host}: the agent copied there has sha256 {got}, not {expected}: removed")]
    Digest {
        host: String,
        expected: String,
        got: String,
    },
    #[error("{host}: unexpected answer while installing the agent: {answer}")]
    Answer { host: String, answer: String },
}

/// A ferry binary to install: where it is here and its sha256 (hex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalBinary {
    /// Its name, for messages.
    pub path: PathBuf,
    pub sha256: String,
    /// The file hashed and streamed: `/proc/self/exe` for the running binary, whatever
    /// replaced the file at `path` since.
    pub source: PathBuf,
}

impl LocalBinary {
    /// The binary running now, hashed once per process.
    pub fn current() -> Result<&'static LocalBinary, InstallError> {
        static CURRENT: OnceLock<Result<LocalBinary, (PathBuf, String)>> = OnceLock::new();
        let current = CURRENT.get_or_init(|| {
            let path = std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into());
            // /proc/self/exe is this process's binary even when the file was replaced
            // since (an upgrade in progress)
            let source = if Path::new("/proc/self/exe").exists() {
                PathBuf::from("/proc/self/exe")
            } else {
                path.clone()
            };
            hash_file(&source)
                .map(|sha256| LocalBinary {
                    path: path.clone(),
                    sha256,
                    source: source.clone(),
                })
                .map_err(|e| (path, e.to_string()))
        });
        current
            .as_ref()
            .map_err(|(path, reason)| InstallError::Local {
                path: path.clone(),
                reason: reason.clone(),
            })
    }

    /// The binary at `path` (tests install the built `ferry`, not themselves).
    pub fn at(path: &Path) -> Result<LocalBinary, InstallError> {
        let sha256 = hash_file(path).map_err(|e| InstallError::Local {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Ok(LocalBinary {
            path: path.to_path_buf(),
            sha256,
            source: path.to_path_buf(),
        })
    }

    /// Its file name on a host: `ferry-<first 16 hex of its sha256>`.
    pub fn remote_name(&self) -> String {
        format!("ferry-{}", &self.sha256[..16])
    }
}

fn hash_file(path: &Path) -> std::io::Result<String> {
    use sha2::Digest;
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// `uname -m`'s name for the architecture this ferry is built for.
pub fn local_machine() -> &'static str {
    match std::env::consts::ARCH {
        "x86" => "i686",
        "arm" => "armv7l",
        "powerpc64" => "ppc64",
        "loongarch64" => "loongarch64",
        other => other, // x86_64, aarch64, riscv64, s390x, mips64 are spelled the same
    }
}

/// Whether `uname -m` of a host (`remote`) runs what is built for `local`.
fn same_machine(local: &str, remote: &str) -> bool {
    local == remote
        || matches!(
            (local, remote),
            ("aarch64", "arm64") | ("i686", "i386" | "i586" | "x86_64") | ("armv7l", "armv8l")
        )
}

/// What [`ensure_agent`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// The agent's path on the host, as the remote shell reads it (relative to the user's
    /// home unless `agent_dir` is absolute).
    pub path: String,
    /// The binary was copied now; false when it was there already.
    pub copied: bool,
}

/// The checks and the install, as one `sh -c` script each. `$1` is the agent's path, `$2`
/// its sha256. A binary there counts only when it is executable, the user's own, writable by
/// no one else, and has the digest: anything else is installed over.
const PROBE: &str = r#"export LC_ALL=C
m=$(uname -m) || exit 3
if [ -x "$1" ] && [ -O "$1" ]; then
    case $(stat -c %a "$1") in
    *[2367][0-7] | *[2367]) ;;
    *) sum=$(sha256sum "$1") && [ "${sum%% *}" = "$2" ] && { echo "$m present"; exit 0; } ;;
    esac
fi
echo "$m missing""#;

/// `$1` the path, `$2` the expected sha256; the binary on stdin. A temp file beside the
/// target (private until checked), removed on any failure; temp files of earlier attempts
/// more than an hour old are removed too.
const INSTALL: &str = r#"export LC_ALL=C
umask 077
dir=$(dirname "$1")
mkdir -p "$dir" || exit 10
find "$dir" -maxdepth 1 -name '*.tmp.*' -type f -mmin +60 -exec rm -f {} + 2>/dev/null
tmp="$1.tmp.$$"
trap 'rm -f "$tmp"' EXIT
trap 'exit 1' HUP PIPE TERM
cat > "$tmp" || exit 11
sum=$(sha256sum "$tmp") || exit 12
sum=${sum%% *}
if [ "$sum" != "$2" ]; then echo "digest $sum" >&2; exit 13; fi
chmod 755 "$tmp" || exit 14
sync "$tmp" 2>/dev/null || sync
mv -f "$tmp" "$1" || exit 15
trap - EXIT
echo installed"#;

/// Makes sure the running ferry is installed on `server` under `[ssh] agent_dir`.
pub async fn ensure_agent(ssh: &Ssh, server: &SshServer) -> Result<Installed, InstallError> {
    ensure_binary(ssh, server, LocalBinary::current()?).await
}

/// Makes sure `binary` is installed on `server` under `[ssh] agent_dir`: refused when the
/// host is of another architecture; copied (streamed over ssh, checked, renamed) when it is
/// not there yet.
pub async fn ensure_binary(
    ssh: &Ssh,
    server: &SshServer,
    binary: &LocalBinary,
) -> Result<Installed, InstallError> {
    let dir = ssh.options().agent_dir.trim_end_matches('/');
    let path = format!("{dir}/bin/{}", binary.remote_name());
    let host = server.name.clone();
    let out = ssh
        .run(
            server,
            &["sh", "-c", PROBE, "sh", &path, &binary.sha256],
            b"",
        )
        .await?;
    // the last line: a login shell's rc file may print before it
    let answer = String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string();
    let (machine, state) = answer.split_once(' ').ok_or_else(|| InstallError::Answer {
        host: host.clone(),
        answer: answer.clone(),
    })?;
    let local = local_machine();
    if !same_machine(local, machine) {
        return Err(InstallError::Arch {
            host,
            remote: machine.to_string(),
            local: local.to_string(),
        });
    }
    match state {
        "present" => {
            return Ok(Installed {
                path,
                copied: false,
            });
        }
        "missing" => {}
        _ => return Err(InstallError::Answer { host, answer }),
    }
    let file = tokio::fs::File::open(&binary.source)
        .await
        .map_err(|e| InstallError::Local {
            path: binary.path.clone(),
            reason: e.to_string(),
        })?;
    let result = ssh
        .run_reader(
            server,
            &["sh", "-c", INSTALL, "sh", &path, &binary.sha256],
            file,
        )
        .await;
    match result {
        Ok(_) => Ok(Installed { path, copied: true }),
        Err(SshError::Remote { stderr, .. })
            if stderr.contains("No space left on device") || stderr.contains("Disk quota") =>
        {
            Err(InstallError::DiskFull {
                host,
                dir: format!("{dir}/bin"),
            })
        }
        Err(SshError::Remote {
            status: Some(13),
            stderr,
            ..
        }) => Err(InstallError::Digest {
            host,
            expected: binary.sha256.clone(),
            got: stderr
                .lines()
                .find_map(|l| l.strip_prefix("digest "))
                .unwrap_or("another digest")
                .to_string(),
        }),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machines_are_named_as_uname_names_them() {
        assert!(same_machine("x86_64", "x86_64"));
        assert!(same_machine("aarch64", "arm64"));
        assert!(!same_machine("x86_64", "aarch64"));
        assert!(!same_machine("aarch64", "x86_64"));
        assert!(!local_machine().is_empty());
    }

    #[test]
    fn the_running_binary_is_hashed_once_and_named_by_its_digest() {
        let a = LocalBinary::current().unwrap();
        let b = LocalBinary::current().unwrap();
        assert!(std::ptr::eq(a, b));
        assert_eq!(a.sha256.len(), 64);
        assert_eq!(a.remote_name(), format!("ferry-{}", &a.sha256[..16]));
        assert_eq!(LocalBinary::at(&a.path).unwrap().sha256, a.sha256);
    }
}

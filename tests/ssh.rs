//! The transport to servers against real sshd hosts in network namespaces
//! (tests/support/hosts.rs): commands through one ControlMaster, host keys never learned,
//! unreachable hosts named, ferry installing itself once (checked, atomic, a full disk
//! reported clearly), and hostile server strings refused by the config.

mod support;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ferry::config::{SshOptions, SshServer};
use ferry::remote::{InstallError, LocalBinary, Ssh, SshError, ensure_binary};
use support::hosts::{self, HostOptions, TestHost};

/// `[ssh]` reaching the hosts of sandbox `dir`.
fn options(dir: &Path) -> SshOptions {
    SshOptions {
        identity_file: Some(hosts::identity_file(dir)),
        known_hosts: Some(hosts::known_hosts(dir)),
        connect_timeout: Duration::from_secs(3),
        ..SshOptions::default()
    }
}

fn server(host: &TestHost) -> SshServer {
    SshServer::parse(&host.server()).unwrap()
}

fn sandbox() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn sockets(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_socket()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test]
async fn commands_run_as_the_hosts_user_through_one_master_connection() {
    if hosts::skip() {
        return;
    }
    let dir = sandbox();
    let host = TestHost::new(dir.path(), 1);
    let ssh = Ssh::new(&options(dir.path()), &dir.path().join("state"));
    let srv = server(&host);

    let out = ssh
        .run(
            &srv,
            &["sh", "-c", "id -un; pwd; echo \"$1\"", "sh", "a 'b' $c"],
            b"",
        )
        .await
        .unwrap();
    assert_eq!(
        stdout(&out),
        format!("{}\n{}\na 'b' $c", host.user, host.home.display()),
        "runs as the host's user, in its home, its words intact"
    );
    let mode = std::fs::metadata(ssh.control_dir()).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o700, "the control socket dir is private");
    let first = sockets(ssh.control_dir());
    assert_eq!(first.len(), 1, "one control socket for the host");
    let inode = std::fs::metadata(&first[0]).unwrap().ino();

    let out = ssh.run(&srv, &["cat"], b"through stdin").await.unwrap();
    assert_eq!(stdout(&out), "through stdin");
    assert_eq!(sockets(ssh.control_dir()), first);
    assert_eq!(std::fs::metadata(&first[0]).unwrap().ino(), inode);
    let logins = host.sshd_log().matches("Accepted publickey").count();
    assert_eq!(
        logins,
        1,
        "the second command reused the master connection:\n{}",
        host.sshd_log()
    );

    let failed = ssh
        .run(&srv, &["sh", "-c", "echo oops >&2; exit 3"], b"")
        .await
        .unwrap_err();
    match &failed {
        SshError::Remote { status, stderr, .. } => {
            assert_eq!((*status, stderr.as_str()), (Some(3), "oops"));
        }
        other => panic!("expected the remote command's failure, got {other:?}"),
    }
    assert!(failed.to_string().contains(&host.server()), "{failed}");

    // the remote session killed by a signal: ssh says 255 and nothing, the master is up
    let killed = ssh
        .run(&srv, &["sh", "-c", "kill -KILL $PPID; sleep 5"], b"")
        .await
        .unwrap_err();
    assert!(
        matches!(killed, SshError::Remote { status: None, .. }),
        "a killed command is the command's failure, not a lost host: {killed:?}"
    );
    assert!(ssh.master_alive(&srv).await);

    ssh.close(&srv).await;
    assert!(!ssh.master_alive(&srv).await);
    assert!(
        sockets(ssh.control_dir()).is_empty(),
        "close ends the master"
    );
}

#[tokio::test]
async fn an_unknown_host_key_is_refused_and_never_learned() {
    if hosts::skip() {
        return;
    }
    let dir = sandbox();
    let host = TestHost::new(dir.path(), 1);
    let known = dir.path().join("empty_known_hosts");
    std::fs::write(&known, "").unwrap();
    let opts = SshOptions {
        known_hosts: Some(known.clone()),
        ..options(dir.path())
    };
    let ssh = Ssh::new(&opts, &dir.path().join("state"));
    for _ in 0..2 {
        let err = ssh.run(&server(&host), &["true"], b"").await.unwrap_err();
        assert!(
            matches!(err, SshError::HostKeyUnknown { .. }),
            "expected an unknown host key, got {err:?}"
        );
        let message = err.to_string();
        assert!(message.contains(&host.server()), "{message}");
        assert!(message.contains(&known.display().to_string()), "{message}");
        assert_eq!(
            std::fs::read_to_string(&known).unwrap(),
            "",
            "nothing learned"
        );
    }
    assert_eq!(host.sshd_log().matches("Accepted publickey").count(), 0);
}

#[tokio::test]
async fn a_changed_host_key_is_refused_with_the_line_that_removes_it() {
    if hosts::skip() {
        return;
    }
    let dir = sandbox();
    let host = TestHost::new(dir.path(), 1);
    let known = dir.path().join("stale_known_hosts");
    let stale = format!("{} {}\n", host.addr(), hosts::other_host_key(dir.path()));
    std::fs::write(&known, &stale).unwrap();
    let opts = SshOptions {
        known_hosts: Some(known.clone()),
        ..options(dir.path())
    };
    let ssh = Ssh::new(&opts, &dir.path().join("state"));
    let err = ssh.run(&server(&host), &["true"], b"").await.unwrap_err();
    assert!(
        matches!(err, SshError::HostKeyChanged { .. }),
        "expected a changed host key, got {err:?}"
    );
    let message = err.to_string();
    assert!(message.contains(&host.server()), "{message}");
    assert!(
        message.contains(&format!(
            "ssh-keygen -R {} -f {}",
            host.addr(),
            known.display()
        )),
        "{message}"
    );
    assert_eq!(std::fs::read_to_string(&known).unwrap(), stale);
    assert_eq!(host.sshd_log().matches("Accepted publickey").count(), 0);
}

#[tokio::test]
async fn a_key_the_host_does_not_accept_is_an_authentication_error() {
    if hosts::skip() {
        return;
    }
    let dir = sandbox();
    let host = TestHost::new(dir.path(), 1);
    let key = dir.path().join("stranger");
    let made = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(made.success());
    let opts = SshOptions {
        identity_file: Some(key),
        ..options(dir.path())
    };
    let ssh = Ssh::new(&opts, &dir.path().join("state"));
    let err = ssh.run(&server(&host), &["true"], b"").await.unwrap_err();
    assert!(
        matches!(err, SshError::Auth { .. }) && !err.is_transport(),
        "expected an authentication failure, got {err:?}"
    );
    assert!(err.to_string().contains(&host.server()), "{err}");
}

#[tokio::test]
async fn a_jump_host_is_reached_with_the_same_checks() {
    if hosts::skip() {
        return;
    }
    let dir = sandbox();
    let host = TestHost::new(dir.path(), 1);
    // the jump host is the host itself: ferry reaches it, and through it (-W) its own sshd
    let opts = SshOptions {
        proxy_jump: Some(host.server()),
        ..options(dir.path())
    };
    let ssh = Ssh::new(&opts, &dir.path().join("state"));
    let out = ssh.run(&server(&host), &["id", "-un"], b"").await.unwrap();
    assert_eq!(stdout(&out), host.user);
    assert_eq!(
        host.sshd_log().matches("Accepted publickey").count(),
        2,
        "a login on the jump host, then one through it:\n{}",
        host.sshd_log()
    );

    // the jump host's key is checked against the same known_hosts: unknown there, refused
    let known = dir.path().join("empty_known_hosts");
    std::fs::write(&known, "").unwrap();
    let opts = SshOptions {
        known_hosts: Some(known.clone()),
        ..opts
    };
    let ssh = Ssh::new(&opts, &dir.path().join("state-b"));
    let err = ssh.run(&server(&host), &["true"], b"").await.unwrap_err();
    assert!(
        matches!(err, SshError::HostKeyUnknown { .. }),
        "expected the jump host's key refused, got {err:?}"
    );
    assert!(
        err.to_string().contains(&format!(
            "{} (through the jump host {})",
            host.server(),
            host.server()
        )),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&known).unwrap(), "");
    assert_eq!(host.sshd_log().matches("Accepted publickey").count(), 2);
}

#[tokio::test]
async fn an_unreachable_host_is_named() {
    if hosts::skip() {
        return;
    }
    let dir = sandbox();
    let mut host = TestHost::new(dir.path(), 1);
    let srv = server(&host);

    host.stop_sshd();
    let ssh = Ssh::new(&options(dir.path()), &dir.path().join("state-a"));
    let err = ssh.run(&srv, &["true"], b"").await.unwrap_err();
    assert!(
        matches!(err, SshError::Unreachable { .. }) && err.is_transport(),
        "sshd stopped: {err:?}"
    );
    assert!(err.to_string().contains(&host.server()), "{err}");

    host.start_sshd();
    host.link_down();
    let ssh = Ssh::new(&options(dir.path()), &dir.path().join("state-b"));
    let err = ssh.run(&srv, &["true"], b"").await.unwrap_err();
    assert!(
        matches!(err, SshError::Unreachable { .. }),
        "link down: {err:?}"
    );
    assert!(err.to_string().contains(&host.server()), "{err}");

    host.link_up();
    let out = ssh.run(&srv, &["echo", "back"], b"").await.unwrap();
    assert_eq!(
        stdout(&out),
        "back",
        "the host answers again once its link is up"
    );
}

#[tokio::test]
async fn a_host_dropping_off_mid_command_is_lost() {
    if hosts::skip() {
        return;
    }
    let dir = sandbox();
    let host = TestHost::new(dir.path(), 1);
    let ssh = Ssh::new(&options(dir.path()), &dir.path().join("state"));
    let srv = server(&host);
    ssh.run(&srv, &["true"], b"").await.unwrap();
    let call = ssh.run(&srv, &["sleep", "60"], b"");
    let down = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        host.link_down();
    };
    let (result, ()) = tokio::join!(call, down);
    let err = result.unwrap_err();
    assert!(
        matches!(err, SshError::Lost { .. }),
        "the link went down mid-command: {err:?}"
    );
    assert!(err.to_string().contains(&host.server()), "{err}");
}

fn ferry_binary() -> LocalBinary {
    LocalBinary::at(Path::new(support::FERRY)).unwrap()
}

fn sha256_of(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn the_agent_is_copied_once_checked_and_renamed_into_place() {
    if hosts::skip() {
        return;
    }
    let dir = sandbox();
    let host = TestHost::new(dir.path(), 1);
    let ssh = Ssh::new(&options(dir.path()), &dir.path().join("state"));
    let srv = server(&host);
    let binary = ferry_binary();
    let user = nix::unistd::User::from_name(&host.user).unwrap().unwrap();

    // an earlier attempt cut short: a partial temp file, and a partial file where the
    // binary goes (never executable: only a checked copy is made so)
    let bin = host.home.join(".ferry/bin");
    std::fs::create_dir_all(&bin).unwrap();
    let target = bin.join(binary.remote_name());
    let leftover = bin.join(format!("{}.tmp.4242", binary.remote_name()));
    std::fs::write(&leftover, b"partial").unwrap();
    std::fs::write(&target, b"partial").unwrap();
    for p in [
        host.home.join(".ferry"),
        bin.clone(),
        leftover.clone(),
        target.clone(),
    ] {
        nix::unistd::chown(&p, Some(user.uid), Some(user.gid)).unwrap();
    }

    let first = ensure_binary(&ssh, &srv, &binary).await.unwrap();
    assert!(first.copied, "the binary was missing");
    assert_eq!(
        first.path,
        format!(".ferry/bin/ferry-{}", &binary.sha256[..16])
    );
    assert_eq!(sha256_of(&target), binary.sha256);
    let meta = std::fs::metadata(&target).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o755);
    assert_eq!(meta.uid(), user.uid.as_raw(), "owned by the host's user");
    let temps: Vec<_> = std::fs::read_dir(&bin)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp.") && !n.ends_with(".tmp.4242"))
        .collect();
    assert!(
        temps.is_empty(),
        "no temp file of this install left: {temps:?}"
    );

    // it runs there
    let out = ssh
        .run(&srv, &[&first.path, "--version"], b"")
        .await
        .unwrap();
    assert!(stdout(&out).starts_with("ferry "), "{}", stdout(&out));

    let second = ensure_binary(&ssh, &srv, &binary).await.unwrap();
    assert!(!second.copied, "the second call copies nothing");
    assert_eq!(second.path, first.path);

    // a binary changed in place (same name, other bytes) is installed over
    std::fs::write(&target, b"#!/bin/sh\necho planted\n").unwrap();
    nix::unistd::chown(&target, Some(user.uid), Some(user.gid)).unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755)).unwrap();
    let third = ensure_binary(&ssh, &srv, &binary).await.unwrap();
    assert!(third.copied, "a binary of other bytes is replaced");
    assert_eq!(sha256_of(&target), binary.sha256);
}

#[tokio::test]
async fn a_full_disk_is_named_and_leaves_no_temp_file() {
    if hosts::skip() {
        return;
    }
    let dir = sandbox();
    let host = TestHost::with(
        dir.path(),
        1,
        HostOptions {
            small_disk_kib: Some(1024),
        },
    );
    let ssh = Ssh::new(&options(dir.path()), &dir.path().join("state"));
    let binary = ferry_binary();
    let err = ensure_binary(&ssh, &server(&host), &binary)
        .await
        .unwrap_err();
    assert!(
        matches!(err, InstallError::DiskFull { .. }),
        "expected a full disk, got {err:?}"
    );
    assert!(
        err.to_string()
            .starts_with(&format!("disk full on {}", host.server())),
        "{err}"
    );
    let bin = host.home.join(".ferry/bin");
    let left: Vec<_> = std::fs::read_dir(&bin)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "nothing left in {}: {left:?}",
        bin.display()
    );
}

#[test]
fn hostile_server_strings_are_refused_by_the_config() {
    let dir = sandbox();
    let pwned = dir.path().join("pwned");
    for hostile in [
        format!("-oProxyCommand=touch {}", pwned.display()),
        format!("deploy@app1;touch {}", pwned.display()),
        "-l@app1".to_string(),
        "$(reboot)".to_string(),
    ] {
        let config = dir.path().join("ferry.toml");
        std::fs::write(
            &config,
            format!(
                "[app]\nname = \"a\"\nrepo = \"https://example.com/r.git\"\nstart = \"./run\"\n\
                 [environments.production]\nlisten = \"0.0.0.0:8080\"\nservers = [\"app1\", {hostile:?}]\n"
            ),
        )
        .unwrap();
        let out = Command::new(support::FERRY)
            .arg("check")
            .arg("-c")
            .arg(&config)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{hostile}: {stderr}");
        assert!(stderr.contains("ferry.toml:7:"), "{hostile}: {stderr}");
        assert!(stderr.contains(&format!("server {hostile:?}")), "{stderr}");
    }
    assert!(!pwned.exists());
}

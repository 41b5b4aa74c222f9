//! The ssh command line and the reading of its failures.

use super::*;
use std::os::unix::process::ExitStatusExt;

fn server(s: &str) -> SshServer {
    SshServer::parse(s).unwrap()
}

fn ssh() -> Ssh {
    let options = SshOptions {
        identity_file: Some("/k/id".into()),
        known_hosts: Some("/k/known_hosts".into()),
        proxy_jump: Some("bastion".into()),
        user: Some("deploy".into()),
        ..SshOptions::default()
    };
    Ssh::new(&options, Path::new("/state"))
}

fn strings(args: Vec<OsString>) -> Vec<String> {
    args.into_iter().map(|a| a.into_string().unwrap()).collect()
}

#[test]
fn the_command_line_is_the_designed_one() {
    let args = strings(ssh().args(&server("app1.example.com:2222"), &["ls", "-la"]));
    assert_eq!(
        args,
        [
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "UserKnownHostsFile=/k/known_hosts",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "UpdateHostKeys=no",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "ServerAliveInterval=2",
            "-o",
            "ServerAliveCountMax=3",
            "-o",
            "KnownHostsCommand=none",
            "-o",
            "ForwardAgent=no",
            "-o",
            "ForwardX11=no",
            "-o",
            "PermitLocalCommand=no",
            "-o",
            "LogLevel=ERROR",
            "-i",
            "/k/id",
            "-o",
            "IdentitiesOnly=yes",
            "-T",
            "-e",
            "none",
            "-o",
            "ClearAllForwardings=yes",
            "-o",
            "ControlMaster=auto",
            "-o",
            "ControlPath=/state/ssh/%C",
            "-o",
            "ControlPersist=5m",
            "-o",
            "ProxyCommand=ssh -o BatchMode=yes -o StrictHostKeyChecking=yes \
             -o UserKnownHostsFile=/k/known_hosts -o GlobalKnownHostsFile=/dev/null \
             -o UpdateHostKeys=no -o ConnectTimeout=10 -o ServerAliveInterval=2 \
             -o ServerAliveCountMax=3 -o KnownHostsCommand=none -o ForwardAgent=no \
             -o ForwardX11=no -o PermitLocalCommand=no -o LogLevel=ERROR \
             -i /k/id -o IdentitiesOnly=yes -W '[%h]:%p' -- bastion \
             2>/state/ssh/jump-%h-%p.log",
            "-p",
            "2222",
            "-l",
            "deploy",
            "--",
            "app1.example.com",
            "ls -la",
        ]
    );
    let args = strings(
        Ssh::new(&SshOptions::default(), Path::new("/s")).args(&server("me@[::1]"), &["x"]),
    );
    assert_eq!(&args[args.len() - 5..], ["-l", "me", "--", "::1", "x"]);
    assert!(!args.contains(&"-p".to_string()) && !args.contains(&"-i".to_string()));
}

#[test]
fn remote_words_are_quoted_for_the_shell() {
    assert_eq!(
        remote_command(&[".ferry/bin/ferry-0a", "agent", "--dir", ".ferry"]),
        ".ferry/bin/ferry-0a agent --dir .ferry"
    );
    assert_eq!(
        remote_command(&["echo", "a b", "", "it's", "$(id)", "`id`;x"]),
        r"echo 'a b' '' 'it'\''s' '$(id)' '`id`;x'"
    );
}

#[test]
fn a_long_state_dir_gets_a_short_control_dir() {
    let long = PathBuf::from("/").join("d".repeat(120));
    let ssh = Ssh::new(&SshOptions::default(), &long);
    assert!(ssh.control_dir().as_os_str().len() <= MAX_CONTROL_DIR);
    assert!(ssh.control_dir().starts_with(std::env::temp_dir()));
    let odd = Ssh::new(&SshOptions::default(), Path::new("/srv/a b%h"));
    assert!(odd.control_dir().starts_with(std::env::temp_dir()));
    let fine = Ssh::new(&SshOptions::default(), Path::new("/srv/ferry"));
    assert_eq!(fine.control_dir(), Path::new("/srv/ferry/ssh"));
}

fn classify(code: i32, stderr: &str) -> SshError {
    ssh().classify(
        &server("deploy@app1:2222"),
        ExitStatus::from_raw(code << 8),
        stderr.as_bytes(),
    )
}

#[test]
fn ssh_failures_are_read_into_typed_errors_naming_the_host() {
    let e = classify(
        255,
        "ssh: connect to host app1 port 2222: Connection refused\r\n",
    );
    assert!(matches!(e, SshError::Unreachable { .. }), "{e:?}");
    assert!(e.to_string().starts_with("deploy@app1:2222 is unreachable"));
    let e = classify(
        255,
        "ssh: Could not resolve hostname app1: Name or service not known\n",
    );
    assert!(matches!(e, SshError::Unreachable { .. }), "{e:?}");
    let e = classify(
        255,
        "No ED25519 host key is known for [app1]:2222 and you have requested strict checking.\nHost key verification failed.\n",
    );
    assert!(matches!(e, SshError::HostKeyUnknown { .. }), "{e:?}");
    assert!(e.to_string().contains("deploy@app1:2222"));
    let e = classify(
        255,
        "@@@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n@@@@@@\nHost key verification failed.\n",
    );
    assert!(matches!(e, SshError::HostKeyChanged { .. }), "{e:?}");
    assert!(
        e.to_string()
            .contains("ssh-keygen -R '[app1]:2222' -f /k/known_hosts"),
        "{e}"
    );
    let e = classify(255, "deploy@app1: Permission denied (publickey).\n");
    assert!(matches!(e, SshError::Auth { .. }), "{e:?}");
    let e = classify(
        255,
        "kex_exchange_identification: Connection closed by remote host\r\nConnection closed by 10.0.0.1 port 22\r\n",
    );
    assert!(matches!(e, SshError::Unreachable { .. }), "{e:?}");
    let e = classify(255, "Timeout, server app1 not responding.\n");
    assert!(
        matches!(e, SshError::Lost { .. }) && e.is_transport(),
        "{e:?}"
    );
    let e = classify(
        255,
        "client_loop: send disconnect: Network is unreachable\n",
    );
    assert!(matches!(e, SshError::Lost { .. }), "{e:?}");
    let e = classify(255, "");
    assert!(matches!(e, SshError::Lost { .. }), "{e:?}");
    let e = classify(255, "command-line line 0: Bad configuration option: nope\n");
    assert!(
        matches!(e, SshError::Config { .. }) && !e.is_transport(),
        "{e:?}"
    );
    // the remote command's own words, before ssh's, do not decide
    let e = classify(
        255,
        "Permission denied\nConnection refused\nx\ny\nz\nthe agent failed\n",
    );
    assert!(matches!(e, SshError::Remote { .. }), "{e:?}");
    let e = classify(255, "the agent's own message\n");
    assert!(
        matches!(
            e,
            SshError::Remote {
                status: Some(255),
                ..
            }
        ),
        "{e:?}"
    );
    let e = classify(3, "a\nb\nmkdir: cannot create directory\n");
    match &e {
        SshError::Remote { status, stderr, .. } => {
            assert_eq!(*status, Some(3));
            assert_eq!(stderr, "a\nb\nmkdir: cannot create directory");
        }
        other => panic!("{other:?}"),
    }
    assert!(!e.is_transport());
    assert_eq!(e.host(), "deploy@app1:2222");
}

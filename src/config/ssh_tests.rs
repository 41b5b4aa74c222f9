//! `[ssh]`, `servers` and `max_parallel`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{Config, SshOptions, SshServer};

const HEAD: &str = "[app]\nname = \"a\"\nrepo = \"https://example.com/r.git\"\nstart = \"./run\"\n";

const PRODUCTION: &str = "[environments.production]\nlisten = \"0.0.0.0:8080\"\n";

fn parse(text: &str) -> Result<Config, String> {
    Config::parse(Path::new("/etc/ferry/ferry.toml"), text).map_err(|e| e.to_string())
}

/// The config with `servers = [...]` (written as given) in production.
fn with_servers(servers: &str, more: &str) -> Result<Config, String> {
    parse(&format!("{HEAD}{PRODUCTION}servers = [{servers}]\n{more}"))
}

/// Asserts `text` is refused with a message holding `needle`, located at `line`.
fn refused(result: Result<Config, String>, needle: &str, line: usize) {
    let message = match result {
        Ok(_) => panic!("accepted; expected an error with {needle:?}"),
        Err(m) => m,
    };
    assert!(message.contains(needle), "{needle:?} not in:\n{message}");
    assert!(
        message.contains(&format!("/etc/ferry/ferry.toml:{line}:")),
        "not located at line {line}:\n{message}"
    );
}

#[test]
fn servers_parse_as_written_with_user_host_and_port() {
    let c = with_servers(
        "\"deploy@app1.example.com\", \"app2.example.com:2222\", \"[::1]:22\", \"[2001:db8::7]\", \"10.0.0.5\"",
        "max_parallel = 2\n",
    )
    .unwrap();
    let env = c.environment("production").unwrap();
    assert_eq!(env.max_parallel, 2);
    let server = |name: &str, user: Option<&str>, host: &str, port: Option<u16>| SshServer {
        name: name.into(),
        user: user.map(str::to_string),
        host: host.into(),
        port,
    };
    assert_eq!(
        env.servers,
        vec![
            server(
                "deploy@app1.example.com",
                Some("deploy"),
                "app1.example.com",
                None
            ),
            server(
                "app2.example.com:2222",
                None,
                "app2.example.com",
                Some(2222)
            ),
            server("[::1]:22", None, "::1", Some(22)),
            server("[2001:db8::7]", None, "2001:db8::7", None),
            server("10.0.0.5", None, "10.0.0.5", None),
        ]
    );
    assert_eq!(env.servers[0].to_string(), "deploy@app1.example.com");
    assert_eq!(
        env.servers[1].known_hosts_name(Some(2222)),
        "[app2.example.com]:2222"
    );
    assert_eq!(env.servers[2].known_hosts_name(Some(22)), "::1");
}

#[test]
fn without_servers_an_environment_runs_here_and_ssh_has_its_defaults() {
    let c = parse(&format!("{HEAD}{PRODUCTION}")).unwrap();
    let env = c.environment("production").unwrap();
    assert!(env.servers.is_empty());
    assert_eq!(env.max_parallel, 1);
    assert_eq!(c.ssh, SshOptions::default());
    assert_eq!(c.ssh.connect_timeout, Duration::from_secs(10));
    assert_eq!(c.ssh.agent_dir, ".ferry");
    assert_eq!(c.ssh.command, "ssh");
    assert_eq!(c.ssh.port, None);
    assert!(c.ssh.known_hosts_file().ends_with(".ssh/known_hosts"));
    let c = with_servers("\"app1\"", "").unwrap();
    assert_eq!(c.environment("production").unwrap().max_parallel, 1);
}

#[test]
fn ssh_table_is_read_with_paths_relative_to_the_file() {
    let c = parse(&format!(
        "{HEAD}{PRODUCTION}servers = [\"app1\"]\n[ssh]\nuser = \"deploy\"\nport = 2200\nidentity_file = \"keys/id_ed25519\"\nknown_hosts = \"/var/lib/ferry/known_hosts\"\nproxy_jump = \"jump@bastion.example.com:2222\"\nconnect_timeout = \"1500ms\"\nagent_dir = \"/srv/ferry-agent\"\ncommand = \"/usr/local/bin/ssh\"\n"
    ))
    .unwrap();
    assert_eq!(
        c.ssh,
        SshOptions {
            user: Some("deploy".into()),
            port: Some(2200),
            identity_file: Some(PathBuf::from("/etc/ferry/keys/id_ed25519")),
            known_hosts: Some(PathBuf::from("/var/lib/ferry/known_hosts")),
            proxy_jump: Some("jump@bastion.example.com:2222".into()),
            connect_timeout: Duration::from_secs(2),
            agent_dir: "/srv/ferry-agent".into(),
            command: "/usr/local/bin/ssh".into(),
        }
    );
    assert_eq!(
        c.ssh.known_hosts_file(),
        PathBuf::from("/var/lib/ferry/known_hosts")
    );
    let server = &c.environment("production").unwrap().servers[0];
    assert_eq!(c.ssh.user_for(server), Some("deploy"));
    assert_eq!(c.ssh.port_for(server), Some(2200));
}

#[test]
fn unknown_ssh_keys_are_refused_where_written() {
    refused(
        parse(&format!(
            "{HEAD}{PRODUCTION}[ssh]\nuser = \"d\"\npassword = \"x\"\n"
        )),
        "unknown field `password`",
        9,
    );
}

#[test]
fn bad_ssh_values_are_refused_where_written() {
    let ssh = |line: &str| parse(&format!("{HEAD}{PRODUCTION}[ssh]\n{line}\n"));
    refused(ssh("user = \"-oProxyCommand=x\""), "starts with '-'", 8);
    refused(ssh("user = \"de ploy\""), "may hold only", 8);
    refused(ssh("port = 0"), "port = 0 is not a port", 8);
    refused(ssh("port = 70000"), "is not a port", 8);
    refused(ssh("connect_timeout = \"0s\""), "connect_timeout", 8);
    refused(ssh("connect_timeout = \"ten\""), "invalid duration", 8);
    refused(ssh("proxy_jump = \"-oProxyCommand=sh\""), "proxy_jump", 8);
    refused(ssh("proxy_jump = \"a,b;c\""), "proxy_jump", 8);
    refused(ssh("agent_dir = \"../x\""), "agent_dir", 8);
    refused(ssh("agent_dir = \"$(reboot)\""), "agent_dir", 8);
    refused(ssh("command = \"ssh -v\""), "[ssh] command", 8);
    refused(ssh("identity_file = \"-i\""), "identity_file", 8);
}

#[test]
fn hostile_or_malformed_servers_are_refused_where_written() {
    let cases = [
        ("\"\"", "a server is empty"),
        ("\" \"", "a server is empty"),
        ("\"-oProxyCommand=touch /tmp/x\"", "starts with '-'"),
        ("\"-p2222\"", "starts with '-'"),
        ("\"-l@host\"", "the user \"-l\" starts with '-'"),
        ("\"app1 -oX=y\"", "may hold only"),
        ("\"app1;reboot\"", "may hold only"),
        ("\"app1$(id)\"", "may hold only"),
        ("\"app1`id`\"", "may hold only"),
        ("\"a'b\"", "may hold only"),
        ("\"a\\\"b\"", "may hold only"),
        ("\"app1/x\"", "may hold only"),
        ("\"de ploy@app1\"", "the user \"de ploy\" may hold only"),
        ("\"u;x@app1\"", "may hold only"),
        ("\"@app1\"", "the user before '@' is empty"),
        ("\"deploy@\"", "the host is empty"),
        ("\"a@b@c\"", "may hold only"),
        ("\"app1:\"", "is not a port"),
        ("\"app1:0\"", "is not a port"),
        ("\"app1:65536\"", "is not a port"),
        ("\"app1:+22\"", "is not a port"),
        ("\"app1:22x\"", "is not a port"),
        ("\"::1\"", "IPv6 address goes in brackets"),
        ("\"[::1\"", "'[' without ']'"),
        ("\"[app1]:22\"", "is not an IPv6 address"),
        ("\"[::1]x\"", "is not \":port\""),
        ("\".hidden\"", "may hold only"),
    ];
    for (server, needle) in cases {
        refused(with_servers(server, ""), needle, 7);
    }
}

#[test]
fn the_same_server_twice_is_refused() {
    refused(
        with_servers("\"app1\", \"app2\", \"APP1\"", ""),
        "server \"APP1\" of environment production is the same as \"app1\"",
        7,
    );
    refused(
        with_servers("\"app1:22\", \"app1\"", ""),
        "is the same as \"app1:22\"",
        7,
    );
    refused(
        with_servers("\"[::1]\", \"[0:0::1]\"", ""),
        "is the same as \"[::1]\"",
        7,
    );
    // [ssh] user and port fill in what a server leaves out
    refused(
        parse(&format!(
            "{HEAD}{PRODUCTION}servers = [\"deploy@app1:2200\", \"app1\"]\n[ssh]\nuser = \"deploy\"\nport = 2200\n"
        )),
        "is the same as \"deploy@app1:2200\"",
        7,
    );
    // other users or ports are other servers (two users of one host would share its ports:
    // two proxies on one listen address)
    with_servers("\"a@app1\", \"app1:2200\", \"app2\"", "").unwrap();
    refused(
        with_servers("\"a@app1\", \"b@app1\"", ""),
        "b@app1 is the same host as a@app1: environment production would listen on 0.0.0.0:8080 twice",
        7,
    );
}

#[test]
fn empty_servers_and_bad_max_parallel_are_refused() {
    refused(with_servers("", ""), "empty list of servers", 7);
    refused(
        with_servers("\"app1\"", "max_parallel = 0\n"),
        "max_parallel = 0 is out of range",
        8,
    );
    refused(
        with_servers("\"app1\"", "max_parallel = -3\n"),
        "out of range",
        8,
    );
    // more than the number of servers is fine
    let c = with_servers("\"app1\"", "max_parallel = 5\n").unwrap();
    assert_eq!(c.environment("production").unwrap().max_parallel, 5);
    refused(
        parse(&format!("{HEAD}{PRODUCTION}max_parallel = 2\n")),
        "max_parallel but no servers",
        7,
    );
}

#[test]
fn servers_need_listen() {
    refused(
        parse(&format!(
            "{HEAD}[environments.production]\nservers = [\"app1\"]\n"
        )),
        "environment production has servers but no listen",
        6,
    );
}

#[test]
fn keys_servers_do_not_support_yet_are_refused_naming_the_key() {
    let env_key = |line: &str, key: &str| {
        refused(
            with_servers("\"app1\"", &format!("{line}\n")),
            &format!("`{key}` is not supported with servers yet (environment production)"),
            8,
        );
    };
    env_key("rollout = [\"10%\", \"wait 1m\", \"100%\"]", "rollout");
    env_key("preview_listen = \"127.0.0.1:9090\"", "preview_listen");
    env_key("preview_hosts = [\"p.example.com\"]", "preview_hosts");
    env_key("hosts = [\"www.example.com\"]", "hosts");

    // app-wide keys: located at the environment's `servers`
    refused(
        parse(&format!(
            "[app]\nname = \"a\"\nrepo = \"https://example.com/r.git\"\n{PRODUCTION}servers = [\"app1\"]\n[processes]\nweb = \"./run\"\nworker = \"./work\"\n"
        )),
        "[processes] worker (a worker process) is not supported with servers yet",
        6,
    );
    refused(
        parse(&format!(
            "{HEAD}runtime = \"docker\"\n{PRODUCTION}servers = [\"app1\"]\n"
        )),
        "runtime = \"docker\" is not supported with servers yet",
        8,
    );
    refused(
        with_servers("\"app1\"", "[[check]]\nname = \"smoke\"\npath = \"/api\"\n"),
        "[[check]] \"smoke\" is not supported with servers yet (environment production)",
        7,
    );
}

#[test]
fn what_servers_refuse_stays_fine_elsewhere() {
    // a web process only, and a check for another environment, are fine with servers
    let c = parse(&format!(
        "[app]\nname = \"a\"\nrepo = \"https://example.com/r.git\"\n{PRODUCTION}servers = [\"app1\"]\n\
         [environments.staging]\nlisten = \"127.0.0.1:8081\"\nrollout = [\"50%\", \"wait 1m\", \"100%\"]\n\
         [processes]\nweb = \"./run\"\n\
         [[check]]\nname = \"smoke\"\npath = \"/api\"\nenvironments = [\"staging\"]\n"
    ))
    .unwrap();
    assert_eq!(c.environment("production").unwrap().servers.len(), 1);
    assert!(c.environment("staging").unwrap().servers.is_empty());
    assert_eq!(c.checks.len(), 1);
}

#[test]
fn server_strings_parse_on_their_own() {
    let s: SshServer = "deploy@[fe80::1]:2222".parse().unwrap();
    assert_eq!(s.user.as_deref(), Some("deploy"));
    assert_eq!(s.host, "fe80::1");
    assert_eq!(s.port, Some(2222));
    assert_eq!(s.known_hosts_name(s.port), "[fe80::1]:2222");
    assert!(SshServer::parse("-oProxyCommand=x").is_err());
    assert!(SshServer::parse("app_1.internal-net").is_ok());
}

#[test]
fn ssh_paths_that_ssh_would_misread_are_refused() {
    let ssh = |line: &str| parse(&format!("{HEAD}{PRODUCTION}[ssh]\n{line}\n"));
    refused(
        ssh("known_hosts = \"/etc/ferry/known hosts\""),
        "which ssh would read as syntax",
        8,
    );
    refused(ssh("known_hosts = \"/etc/%h\""), "'%'", 8);
    refused(ssh("identity_file = \"/etc/${HOME}/id\""), "'$'", 8);
    refused(
        ssh("identity_file = \"~/.ssh/id_ed25519\""),
        "is not a file path",
        8,
    );
    // relative paths are checked as resolved: the config's dir counts too
    let at = |dir: &str| {
        Config::parse(
            Path::new(&format!("{dir}/ferry.toml")),
            &format!("{HEAD}{PRODUCTION}[ssh]\nknown_hosts = \"kh\"\n"),
        )
        .map_err(|e| e.to_string())
    };
    assert!(at("/etc/ferry").is_ok());
    let e = at("/etc/my ferry").unwrap_err();
    assert!(e.contains("/etc/my ferry/kh"), "{e}");
}

#[test]
fn agent_dirs_and_jump_hosts_are_checked() {
    let ssh = |line: &str| parse(&format!("{HEAD}{PRODUCTION}[ssh]\n{line}\n"));
    for dir in ["/", ".", "./.", "//", "a/../b", &"d".repeat(65)] {
        refused(ssh(&format!("agent_dir = \"{dir}\"")), "agent_dir", 8);
    }
    for dir in ["ferry", ".ferry/agent", "/srv/ferry"] {
        assert_eq!(
            ssh(&format!("agent_dir = \"{dir}\""))
                .unwrap()
                .ssh
                .agent_dir,
            dir
        );
    }
    refused(ssh("proxy_jump = \"a,\""), "several jump hosts", 8);
    refused(ssh("proxy_jump = \"a,b\""), "several jump hosts", 8);
    refused(ssh("proxy_jump = \"\""), "a server is empty", 8);
    refused(
        ssh("proxy_jump = \"-oProxyCommand=x\""),
        "[ssh] proxy_jump: jump host \"-oProxyCommand=x\"",
        8,
    );
    let c = ssh("proxy_jump = \"jump@[2001:db8::1]:2222\"").unwrap();
    assert_eq!(c.ssh.proxy_jump.as_deref(), Some("jump@[2001:db8::1]:2222"));
}

#[test]
fn max_parallel_stops_at_a_thousand() {
    refused(
        with_servers("\"app1\"", "max_parallel = 1001\n"),
        "max_parallel = 1001 is out of range",
        8,
    );
    with_servers("\"app1\"", "max_parallel = 1000\n").unwrap();
}

#[test]
fn a_server_without_a_user_is_logged_into_as_ferrys_user() {
    let me = nix::unistd::User::from_uid(nix::unistd::getuid())
        .unwrap()
        .unwrap()
        .name;
    refused(
        with_servers(&format!("\"{me}@app1\", \"app1\""), ""),
        &format!("is the same as \"{me}@app1\""),
        7,
    );
}

#[test]
fn compose_backup_and_slots_are_not_supported_with_servers_yet() {
    refused(
        parse(&format!(
            "{HEAD}runtime = \"compose\"\n[app.compose]\nservice = \"web\"\n{PRODUCTION}servers = [\"app1\"]\n"
        )),
        "runtime = \"compose\" is not supported with servers yet",
        10,
    );
    refused(
        with_servers("\"app1\"", "backup = [\"data/app.db\"]\n"),
        "`backup` is not supported with servers yet",
        8,
    );
    refused(
        with_servers("\"app1\"", "slots = 2\n"),
        "`slots` is not supported with servers yet",
        8,
    );
    with_servers("\"app1\"", "slots = 1\n").unwrap();
}

#[test]
fn listen_addresses_clash_only_on_one_host() {
    let two = |a: &str, b: &str, listen_b: &str| {
        parse(&format!(
            "{HEAD}{PRODUCTION}servers = [{a}]\n\
             [environments.staging]\nlisten = \"{listen_b}\"\nservers = [{b}]\n\
             [server]\nlisten = \"0.0.0.0:8080\"\n"
        ))
    };
    // the same address on other hosts, and the address of ferry's own API: fine
    two("\"app1\"", "\"app2\"", "0.0.0.0:8080").unwrap();
    // on one host: refused (another user on it shares its ports)
    refused(
        two(
            "\"app1\"",
            "\"other@app2\", \"deploy@APP1\"",
            "10.0.0.1:8080",
        ),
        "environment staging listens on 10.0.0.1:8080 on deploy@APP1, as environment production does",
        10,
    );
    two("\"app1\"", "\"app1\"", "0.0.0.0:8081").unwrap();
}

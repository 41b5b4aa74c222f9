//! Test hosts for several servers: each a network namespace of its own, joined to this one by
//! a veth pair on a /30 of 10.201.0.0/16, running a real `sshd` (Debian's openssh-server) as
//! root in the namespace, which logs in a unix user of its own whose home is under the test's
//! sandbox. Everything started through that sshd (ferry's agent, the app, its proxy) stays in
//! the namespace: the test reaches it over the veth at [`TestHost::addr`].
//!
//! The hosts of one sandbox share one client key and one known_hosts file
//! ([`ssh_table`]), as the `[ssh]` of one `ferry.toml` does. Tests call
//! [`TestHost::available`] first and print "skipped: <reason>" when it fails (not root, no
//! `ip netns`, no sshd): never a silent pass.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const SSHD: &str = "/usr/sbin/sshd";

/// How a test host is made.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostOptions {
    /// The user's home is a tmpfs of this many KiB (an upload that does not fit fails with
    /// ENOSPC); `None`: the sandbox's disk.
    pub small_disk_kib: Option<u32>,
}

/// One host: a namespace, a veth pair, a user and a running sshd. Dropped, all of it goes.
pub struct TestHost {
    /// The network namespace's name.
    pub ns: String,
    /// The root side of the veth pair.
    pub veth: String,
    addr: Ipv4Addr,
    /// The login user on the host.
    pub user: String,
    /// Its home (the agent dir `.ferry` is under it).
    pub home: PathBuf,
    /// Where this host's files are: sshd config, host key, sshd.log.
    pub dir: PathBuf,
    /// The host key's public line (`ssh-ed25519 AAAA… host`).
    pub host_key: String,
    sshd: Option<Child>,
    /// The /30, with its `unreachable` route for when the link is down.
    route: Option<String>,
    made_ns: bool,
    made_user: bool,
    mounted: bool,
}

/// Whether test hosts can be made here: root, `ip netns`, sshd and ssh tools.
fn probe() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("test hosts need root (network namespaces, users, sshd)".into());
    }
    for tool in [SSHD, "/usr/bin/ssh", "/usr/bin/ssh-keygen"] {
        if !Path::new(tool).exists() {
            return Err(format!(
                "{tool} is missing (Debian packages openssh-server and openssh-client)"
            ));
        }
    }
    for tool in ["ip", "useradd", "userdel"] {
        if !Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            return Err(format!("`{tool}` is missing (iproute2, passwd)"));
        }
    }
    clean_stale();
    let name = format!("ferry-probe-{}", std::process::id());
    let out = Command::new("ip")
        .args(["netns", "add", &name])
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cannot make a network namespace: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let _ = Command::new("ip").args(["netns", "del", &name]).status();
    Ok(())
}

/// Removes the namespaces and users test processes that no longer run left behind (killed
/// before their hosts were dropped).
fn clean_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix("ferry-t") else {
            continue;
        };
        let Some((pid, id)) = rest.split_once('-') else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        kill_in(name);
        let _ = Command::new("ip").args(["netns", "del", name]).status();
        let _ = Command::new("userdel")
            .args(["-f", "-r", &format!("fyt{pid:x}x{id}")])
            .stderr(Stdio::null())
            .status();
    }
    // an `unreachable` route whose /30 no veth has an address on any more was left by a
    // test that was killed
    let Ok(out) = Command::new("ip")
        .args(["-4", "route", "show", "type", "unreachable"])
        .output()
    else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut words = line.split_whitespace();
        let (Some("unreachable"), Some(net)) = (words.next(), words.next()) else {
            continue;
        };
        if !net.starts_with("10.201.") || !line.contains("metric 9999") {
            continue;
        }
        let used = Command::new("ip")
            .args(["-4", "-o", "addr", "show", "to", net])
            .output()
            .is_ok_and(|o| !o.stdout.is_empty());
        if !used {
            let _ = Command::new("ip")
                .args(["route", "del", "unreachable", net, "metric", "9999"])
                .status();
        }
    }
}

/// Kills every process in namespace `ns`, by pid.
fn kill_in(ns: &str) {
    for _ in 0..20 {
        let pids = netns_pids(ns);
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn netns_pids(ns: &str) -> Vec<i32> {
    Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Runs `program args`, panicking with its stderr when it fails.
fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `useradd`/`userdel` take a lock on /etc/passwd: tests running at once retry.
fn run_locked(program: &str, args: &[&str]) -> std::process::Output {
    let mut out = Command::new(program).args(args).output().unwrap();
    for _ in 0..50 {
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.success() || !(err.contains("lock") || err.contains("try again")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        out = Command::new(program).args(args).output().unwrap();
    }
    out
}

/// The client key and known_hosts shared by the hosts of the sandbox `dir`, made once.
fn client_files(dir: &Path) -> (PathBuf, PathBuf) {
    let ssh = dir.join("ssh-client");
    let key = ssh.join("id_ed25519");
    let known = ssh.join("known_hosts");
    if !key.exists() {
        std::fs::create_dir_all(&ssh).unwrap();
        keygen(&key, "ferry-test-client");
        std::fs::write(&known, "").unwrap();
    }
    (key, known)
}

fn keygen(path: &Path, comment: &str) {
    run(
        "ssh-keygen",
        &[
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            comment,
            "-f",
            path.to_str().unwrap(),
        ],
    );
}

/// The client key of the hosts of sandbox `dir` (`[ssh] identity_file`).
pub fn identity_file(dir: &Path) -> PathBuf {
    client_files(dir).0
}

/// The known_hosts holding the keys of every host of sandbox `dir` (`[ssh] known_hosts`).
pub fn known_hosts(dir: &Path) -> PathBuf {
    client_files(dir).1
}

/// An `[ssh]` table reaching the hosts of sandbox `dir` (a short connect timeout).
pub fn ssh_table(dir: &Path) -> String {
    let (key, known) = client_files(dir);
    format!(
        "[ssh]\nidentity_file = \"{}\"\nknown_hosts = \"{}\"\nconnect_timeout = \"3s\"\n",
        key.display(),
        known.display()
    )
}

/// A new ed25519 public key line, for a known_hosts entry that does not match a host.
pub fn other_host_key(dir: &Path) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let path = dir.join(format!("other-key-{}", N.fetch_add(1, Ordering::Relaxed)));
    keygen(&path, "other");
    std::fs::read_to_string(path.with_extension("pub"))
        .unwrap()
        .trim()
        .to_string()
}

impl TestHost {
    /// `Ok` when hosts can be made here; else why not, for the test's "skipped: …" line.
    pub fn available() -> Result<(), String> {
        static AVAILABLE: OnceLock<Result<(), String>> = OnceLock::new();
        AVAILABLE.get_or_init(probe).clone()
    }

    /// Host number `n` of the sandbox `dir` (its files under `dir/host<n>`).
    pub fn new(dir: &Path, n: u32) -> TestHost {
        TestHost::with(dir, n, HostOptions::default())
    }

    pub fn with(dir: &Path, n: u32, options: HostOptions) -> TestHost {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // the user reaches its home through the sandbox
        set_mode(dir, 0o711);
        let host_dir = dir.join(format!("host{n}"));
        std::fs::create_dir_all(&host_dir).unwrap();
        set_mode(&host_dir, 0o755);
        let mut host = TestHost {
            ns: format!("ferry-t{pid}-{id}"),
            veth: format!("fr{pid:x}x{id}"),
            addr: Ipv4Addr::UNSPECIFIED,
            user: format!("fyt{pid:x}x{id}"),
            home: host_dir.join("home"),
            dir: host_dir,
            host_key: String::new(),
            sshd: None,
            route: None,
            made_ns: false,
            made_user: false,
            mounted: false,
        };
        host.make_network(pid, id);
        host.make_user(options);
        host.make_keys(dir);
        host.start_sshd();
        host
    }

    fn make_network(&mut self, pid: u32, id: u32) {
        let peer = format!("fr{pid:x}y{id}");
        run("ip", &["netns", "add", &self.ns]);
        self.made_ns = true;
        // a /30 no other test host here has taken
        let mut index = ((pid % 256) * 64 + id) % 16384;
        let base = loop {
            let base = Ipv4Addr::new(10, 201, (index / 64) as u8, ((index % 64) * 4) as u8);
            let out = Command::new("ip")
                .args(["-4", "-o", "addr", "show", "to", &format!("{base}/30")])
                .output()
                .unwrap();
            if out.stdout.is_empty() {
                break base;
            }
            index = (index + 1) % 16384;
        };
        let [a, b, c, d] = base.octets();
        let root_side = Ipv4Addr::new(a, b, c, d + 1);
        self.addr = Ipv4Addr::new(a, b, c, d + 2);
        run(
            "ip",
            &[
                "link", "add", &self.veth, "type", "veth", "peer", "name", &peer,
            ],
        );
        run("ip", &["link", "set", &peer, "netns", &self.ns]);
        run(
            "ip",
            &["addr", "add", &format!("{root_side}/30"), "dev", &self.veth],
        );
        run("ip", &["link", "set", &self.veth, "up"]);
        // with the link down, the /30 is unreachable rather than routed out by the
        // default route: traffic stays on this machine
        run(
            "ip",
            &[
                "route",
                "replace",
                "unreachable",
                &format!("{base}/30"),
                "metric",
                "9999",
            ],
        );
        self.route = Some(format!("{base}/30"));
        let exec = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &self.ns];
            all.extend_from_slice(args);
            run("ip", &all);
        };
        exec(&[
            "ip",
            "addr",
            "add",
            &format!("{}/30", self.addr),
            "dev",
            &peer,
        ]);
        exec(&["ip", "link", "set", &peer, "up"]);
        exec(&["ip", "link", "set", "lo", "up"]);
    }

    fn make_user(&mut self, options: HostOptions) {
        std::fs::create_dir_all(&self.home).unwrap();
        let home = self.home.to_str().unwrap().to_string();
        // password `*`: no password login, but not locked (`!`), which sshd refuses
        // without PAM
        let out = run_locked(
            "useradd",
            &[
                "-M", "-U", "-d", &home, "-s", "/bin/sh", "-p", "*", &self.user,
            ],
        );
        assert!(
            out.status.success(),
            "useradd {}: {}",
            self.user,
            String::from_utf8_lossy(&out.stderr)
        );
        self.made_user = true;
        let user = nix::unistd::User::from_name(&self.user).unwrap().unwrap();
        if let Some(kib) = options.small_disk_kib {
            run(
                "mount",
                &[
                    "-t",
                    "tmpfs",
                    "-o",
                    &format!("size={kib}k,mode=0755,uid={},gid={}", user.uid, user.gid),
                    "ferry-test",
                    &home,
                ],
            );
            self.mounted = true;
        }
        nix::unistd::chown(&self.home, Some(user.uid), Some(user.gid)).unwrap();
    }

    fn make_keys(&mut self, sandbox: &Path) {
        let (client_key, known) = client_files(sandbox);
        let host_key = self.dir.join("host_ed25519");
        keygen(&host_key, &format!("host-{}", self.ns));
        self.host_key = std::fs::read_to_string(host_key.with_extension("pub"))
            .unwrap()
            .trim()
            .to_string();
        let authorized = self.dir.join("authorized_keys");
        std::fs::copy(client_key.with_extension("pub"), &authorized).unwrap();
        set_mode(&authorized, 0o644);
        let mut lines = std::fs::read_to_string(&known).unwrap();
        lines.push_str(&self.known_hosts_line());
        lines.push('\n');
        std::fs::write(&known, lines).unwrap();
        let config = format!(
            "ListenAddress {addr}:22\n\
             HostKey {key}\n\
             AuthorizedKeysFile {authorized}\n\
             AllowUsers {user}\n\
             StrictModes no\n\
             UsePAM no\n\
             PidFile none\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             PubkeyAuthentication yes\n\
             PermitRootLogin no\n\
             MaxSessions 64\n\
             MaxStartups 64\n",
            addr = self.addr,
            key = host_key.display(),
            authorized = authorized.display(),
            user = self.user,
        );
        std::fs::write(self.dir.join("sshd_config"), config).unwrap();
    }

    /// Starts sshd (again, after [`TestHost::stop_sshd`]) and waits until it accepts
    /// connections.
    pub fn start_sshd(&mut self) {
        assert!(self.sshd.is_none(), "sshd is running already");
        std::fs::create_dir_all("/run/sshd").unwrap();
        set_mode(Path::new("/run/sshd"), 0o755);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("sshd.log"))
            .unwrap();
        let config = self.dir.join("sshd_config");
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns, SSHD, "-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let at = SocketAddr::from((self.addr, 22));
        loop {
            if TcpStream::connect_timeout(&at, Duration::from_millis(500)).is_ok() {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "sshd of {} exited ({status}):\n{}",
                    self.ns,
                    self.sshd_log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "sshd of {} does not listen on {at}:\n{}",
                self.ns,
                self.sshd_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.sshd = Some(child);
    }

    /// Stops the listening sshd: new connections are refused (sessions already open stay).
    pub fn stop_sshd(&mut self) {
        if let Some(mut child) = self.sshd.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills everything running in the host (sessions, ferry's agent, the app), sshd too.
    pub fn kill_all(&mut self) {
        self.stop_sshd();
        kill_in(&self.ns);
    }

    /// The pids of every process running in the host.
    pub fn pids(&self) -> Vec<i32> {
        netns_pids(&self.ns)
    }

    /// `user@addr`, as an entry of `servers`.
    pub fn server(&self) -> String {
        format!("{}@{}", self.user, self.addr)
    }

    /// The host's address (on the veth, reachable from the test).
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// Its line for a known_hosts file.
    pub fn known_hosts_line(&self) -> String {
        format!("{} {}", self.addr, self.host_key)
    }

    /// Takes the link down: the host drops off the network (connections open stay open
    /// and hang; new ones fail).
    pub fn link_down(&self) {
        run("ip", &["link", "set", &self.veth, "down"]);
    }

    pub fn link_up(&self) {
        run("ip", &["link", "set", &self.veth, "up"]);
    }

    /// What sshd logged.
    pub fn sshd_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

impl Drop for TestHost {
    fn drop(&mut self) {
        self.stop_sshd();
        if self.made_ns {
            kill_in(&self.ns);
        }
        if self.mounted {
            let home = self.home.to_str().unwrap_or("");
            let ok = Command::new("umount")
                .arg(home)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("umount").args(["-l", home]).status();
            }
        }
        if self.made_ns {
            let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
            let _ = Command::new("ip")
                .args(["link", "del", &self.veth])
                .stderr(Stdio::null())
                .status();
        }
        if let Some(route) = &self.route {
            let _ = Command::new("ip")
                .args(["route", "del", "unreachable", route, "metric", "9999"])
                .status();
        }
        if self.made_user {
            let _ = run_locked("userdel", &["-f", "-r", &self.user]);
        }
    }
}

/// Prints "skipped: <reason>" and returns true when test hosts cannot be made here; with
/// `FERRY_TESTS_REQUIRE_HOSTS=1` (CI) that is a failure instead.
pub fn skip() -> bool {
    match TestHost::available() {
        Ok(()) => false,
        Err(why) => {
            assert!(
                std::env::var_os("FERRY_TESTS_REQUIRE_HOSTS").is_none(),
                "FERRY_TESTS_REQUIRE_HOSTS is set, but test hosts cannot be made: {why}"
            );
            println!("skipped: {why}");
            eprintln!("skipped: {why}");
            true
        }
    }
}

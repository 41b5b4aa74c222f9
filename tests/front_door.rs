//! The front door: `[server] http`/`https`, environments routed by host, TLS from certificate
//! files, the redirect to https, HTTP/2 by ALPN.

mod support;

use std::path::{Path, PathBuf};

use std::io::{Read, Write};
use std::time::Duration;

use support::{GOOD, Options, Rel, Sandbox, eventually};

/// A test CA and certificates it signs, as PEM files in `dir`.
struct Ca {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: PathBuf,
}

impl Ca {
    fn new(dir: &Path) -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ferry test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let pem = dir.join("ca.pem");
        std::fs::write(&pem, cert.pem()).unwrap();
        Ca {
            issuer: rcgen::Issuer::new(params, key),
            pem,
        }
    }

    /// A certificate for `names`, written to `<stem>.crt` and `<stem>.key`.
    fn issue(&self, dir: &Path, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let params = rcgen::CertificateParams::new(names).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (c, k) = (
            dir.join(format!("{stem}.crt")),
            dir.join(format!("{stem}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }
}

fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{from:?} not in {text}");
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

fn two_envs() -> Sandbox {
    Sandbox::with(
        &[Rel("v1.0.0", GOOD)],
        Options {
            envs: &["staging", "production"],
            ..Options::default()
        },
    )
}

#[test]
fn check_names_a_mismatched_key_and_a_host_claimed_twice() {
    let s = two_envs();
    let ca = Ca::new(s.dir.path());
    let (cert, _) = ca.issue(s.dir.path(), "staging", &["staging.example.com"]);
    let (_, other_key) = ca.issue(s.dir.path(), "other", &["other.example.com"]);
    let port = support::free_port();
    edit(
        &s.config,
        "[server]\n",
        &format!("[server]\nhttps = \"127.0.0.1:{port}\"\n"),
    );
    edit(
        &s.config,
        "[environments.staging]\n",
        &format!(
            "[environments.staging]\nhosts = [\"staging.example.com\"]\ntls = {{ cert = \"{}\", key = \"{}\" }}\n",
            cert.display(),
            other_key.display()
        ),
    );
    let run = s.ferry(&["check"]);
    assert_eq!(run.code(), 1, "{run}");
    assert!(
        run.stderr().contains("environment staging")
            && run.stderr().contains("does not belong to the certificate")
            && run.stderr().contains("other.key")
            && run.stderr().contains("staging.crt"),
        "{run}"
    );

    edit(&s.config, "other.key", "staging.key");
    let run = s.ferry(&["check"]);
    assert_eq!(run.code(), 0, "{run}");
    assert!(
        run.stdout().contains("https://staging.example.com:")
            && run.stdout().contains("CN=ferry test CA"),
        "{run}"
    );

    edit(
        &s.config,
        "[environments.production]\n",
        "[environments.production]\nhosts = [\"staging.example.com\"]\n",
    );
    let run = s.ferry(&["check"]);
    assert_eq!(run.code(), 2, "{run}");
    assert!(
        run.stderr()
            .contains("host staging.example.com is claimed by environments production and staging"),
        "{run}"
    );
}

/// What curl got: status, HTTP version, body (or why it failed: status 0).
struct Got {
    status: u16,
    version: String,
    body: String,
    stderr: String,
}

/// `curl` with `args`, the `--resolve` entries making every host name reach 127.0.0.1.
fn curl(args: &[&str]) -> Got {
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code} %{http_version}",
        ])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, last) = text.rsplit_once('\n').unwrap_or(("", &text));
    let mut last = last.split(' ');
    Got {
        status: last.next().and_then(|c| c.parse().ok()).unwrap_or(0),
        version: last.next().unwrap_or("").to_string(),
        body: body.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The sandbox's front door: its ports and the CA its certificates come from.
struct Front {
    http: u16,
    https: u16,
    ca: Ca,
}

impl Front {
    fn resolve(&self, host: &str) -> [String; 2] {
        [
            format!("{host}:{}:127.0.0.1", self.http),
            format!("{host}:{}:127.0.0.1", self.https),
        ]
    }

    /// curl over https to `host` (verified against the test CA).
    fn https(&self, host: &str, path: &str, extra: &[&str]) -> Got {
        self.https_with(&self.ca.pem, host, path, extra)
    }

    fn https_with(&self, ca: &Path, host: &str, path: &str, extra: &[&str]) -> Got {
        let [r1, r2] = self.resolve(host);
        let url = format!("https://{host}:{}{path}", self.https);
        let ca = ca.display().to_string();
        let mut args: Vec<&str> = vec!["--cacert", &ca, "--resolve", &r1, "--resolve", &r2];
        args.extend_from_slice(extra);
        args.push(&url);
        curl(&args)
    }

    fn http(&self, host: &str, path: &str, extra: &[&str]) -> Got {
        let [r1, _] = self.resolve(host);
        let url = format!("http://{host}:{}{path}", self.http);
        let mut args: Vec<&str> = vec!["--resolve", &r1];
        args.extend_from_slice(extra);
        args.push(&url);
        curl(&args)
    }
}

/// Adds `[server] http/https` and per environment `text` to the sandbox's config.
fn front_door(s: &Sandbox, envs: &[(&str, String)]) -> Front {
    let (http, https) = (support::free_port(), support::free_port());
    edit(
        &s.config,
        "[server]\n",
        &format!("[server]\nhttp = \"127.0.0.1:{http}\"\nhttps = \"127.0.0.1:{https}\"\n"),
    );
    for (env, text) in envs {
        edit(
            &s.config,
            &format!("[environments.{env}]\n"),
            &format!("[environments.{env}]\n{text}\n"),
        );
    }
    Front {
        http,
        https,
        ca: Ca::new(s.dir.path()),
    }
}

fn tls_files(cert: &Path, key: &Path) -> String {
    format!(
        "tls = {{ cert = \"{}\", key = \"{}\" }}",
        cert.display(),
        key.display()
    )
}

#[test]
fn hosts_route_over_http_and_https_with_redirect_http2_and_reloaded_certificates() {
    let mut s = Sandbox::with(
        &[Rel("v1.0.0", GOOD)],
        Options {
            envs: &["staging", "production", "backend"],
            ..Options::default()
        },
    );
    let front = front_door(&s, &[]);
    let dir = s.dir.path().to_path_buf();
    let (sc, sk) = front.ca.issue(
        &dir,
        "staging",
        &["staging.example.com", "*.preview.example.com"],
    );
    let (pc, pk) = front.ca.issue(&dir, "production", &["www.example.com"]);
    let staging = format!(
        "hosts = [\"staging.example.com\", \"*.preview.example.com\"]\n{}\nredirect_https = false",
        tls_files(&sc, &sk)
    );
    let production = format!("hosts = [\"www.example.com\"]\n{}", tls_files(&pc, &pk));
    for (env, text) in [
        ("staging", staging),
        ("production", production),
        (
            "backend",
            "hosts = [\"www.example.com\"]\npath_prefix = \"/api\"".to_string(),
        ),
    ] {
        edit(
            &s.config,
            &format!("[environments.{env}]\n"),
            &format!("[environments.{env}]\n{text}\n"),
        );
    }
    s.serve();
    for env in ["staging", "production", "backend"] {
        s.deploy_ok(env, "v1.0.0");
    }

    // by host over https, HTTP/2 chosen by ALPN (and HTTP/1.1 when the client asks for it)
    let got = front.https("staging.example.com", "/version", &["--http2"]);
    assert_eq!(
        (got.status, got.version.as_str()),
        (200, "2"),
        "{}",
        got.stderr
    );
    assert!(
        got.body.contains("\"environment\":\"staging\""),
        "{}",
        got.body
    );
    let got = front.https("www.example.com", "/version", &["--http1.1"]);
    assert_eq!(
        (got.status, got.version.as_str()),
        (200, "1.1"),
        "{}",
        got.stderr
    );
    assert!(
        got.body.contains("\"environment\":\"production\""),
        "{}",
        got.body
    );
    // a wildcard takes one label
    let got = front.https("pr-7.preview.example.com", "/version", &[]);
    assert_eq!(got.status, 200, "{}", got.stderr);
    assert!(
        got.body.contains("\"environment\":\"staging\""),
        "{}",
        got.body
    );
    // a path prefix goes to its environment, stripped, with the forwarding headers
    for flag in ["--http2", "--http1.1"] {
        let got = front.https("www.example.com", "/api/request?x=1", &[flag]);
        assert_eq!(got.status, 200, "{}", got.stderr);
        let echo: serde_json::Value = serde_json::from_str(&got.body).unwrap();
        assert_eq!(echo["uri"], "/request?x=1", "{flag}");
        let headers = echo["headers"].to_string();
        for h in [
            "[\"x-forwarded-prefix\",\"/api\"]",
            "[\"x-forwarded-proto\",\"https\"]",
            "[\"host\",\"www.example.com",
        ] {
            assert!(headers.contains(h), "{flag}: {h} not in {headers}");
        }
    }
    // HTTP/2 bodies stream both ways: with a length, without one (chunked to the app), and
    // a download
    let upload = dir.join("upload.bin");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&upload, &data).unwrap();
    let want = {
        use sha2::Digest;
        format!(
            "{} {}",
            hex::encode(sha2::Sha256::digest(&data)),
            data.len()
        )
    };
    let file = format!("@{}", upload.display());
    let got = front.https(
        "staging.example.com",
        "/upload",
        &["--http2", "--data-binary", &file],
    );
    assert_eq!(
        (got.status, got.version.as_str()),
        (200, "2"),
        "{}",
        got.stderr
    );
    assert_eq!(got.body.trim(), want);
    let piped = format!(
        "cat '{}' | curl -sS --http2 -X POST --cacert '{}' --resolve staging.example.com:{}:127.0.0.1 -T - https://staging.example.com:{}/upload",
        upload.display(),
        front.ca.pem.display(),
        front.https,
        front.https
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &piped])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        want,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let saved = dir.join("download.bin");
    let saved_arg = saved.display().to_string();
    let got = front.https(
        "staging.example.com",
        "/download?mb=5",
        &["--http2", "-o", &saved_arg],
    );
    assert_eq!(
        (got.status, got.version.as_str()),
        (200, "2"),
        "{}",
        got.stderr
    );
    assert_eq!(std::fs::metadata(&saved).unwrap().len(), 5 << 20);
    let got = front.https("www.example.com", "/apix/version", &[]);
    assert_eq!(
        got.status, 404,
        "/apix is not under /api: production's app answers"
    );

    // plain http: proxied where redirect_https is off, else 308 keeping path and query
    let got = front.http("staging.example.com", "/version", &[]);
    assert_eq!(got.status, 200);
    assert!(
        got.body.contains("\"environment\":\"staging\""),
        "{}",
        got.body
    );
    let got = front.http("www.example.com", "/a/b?c=d", &["-D", "-"]);
    assert_eq!(got.status, 308, "{}", got.body);
    assert!(
        got.body.to_ascii_lowercase().contains(&format!(
            "location: https://www.example.com:{}/a/b?c=d",
            front.https
        )),
        "{}",
        got.body
    );
    // ACME challenges are never redirected (this one is no pending order's: the app answers)
    let got = front.http("www.example.com", "/.well-known/acme-challenge/abc", &[]);
    assert_eq!(got.status, 404, "passed to the app, not redirected");

    // an unknown host: a small 404 page naming nothing of ferry's; an unknown SNI: no handshake
    let got = front.http("nobody.example.com", "/", &[]);
    assert_eq!(got.status, 404);
    assert!(got.body.contains("Not found"), "{}", got.body);
    for word in ["ferry", "staging", "production", "sample", "version"] {
        assert!(
            !got.body.to_lowercase().contains(word),
            "{word} in {}",
            got.body
        );
    }
    let got = front.https("nobody.example.com", "/", &[]);
    assert_eq!(got.status, 0, "the handshake is refused: {}", got.body);
    // a request for a host another certificate serves than the connection's: 421
    let got = front.https(
        "staging.example.com",
        "/version",
        &["-H", "Host: www.example.com"],
    );
    assert_eq!(got.status, 421, "{}", got.body);

    // status and the API show the URLs and the certificate
    let env = s.api("/api/environments/staging");
    let urls = env["urls"].to_string();
    assert!(
        urls.contains(&format!("https://staging.example.com:{}", front.https)),
        "{urls}"
    );
    assert!(
        env["certificate"]["issuer"]
            .as_str()
            .unwrap_or("")
            .contains("ferry test CA"),
        "{env}"
    );
    let run = s.ferry(&["status"]);
    assert!(
        run.stdout().contains("certificate: CN=ferry test CA"),
        "{run}"
    );

    // a certificate replaced on disk is served without a restart
    std::fs::create_dir(dir.join("ca2")).unwrap();
    let other = Ca::new(&dir.join("ca2"));
    let (c2, k2) = other.issue(&dir, "staging-new", &["staging.example.com"]);
    let fails = front.https_with(&other.pem, "staging.example.com", "/version", &[]);
    assert_eq!(fails.status, 0, "not trusted before the swap");
    std::fs::copy(&k2, &sk).unwrap();
    std::fs::copy(&c2, &sc).unwrap();
    assert!(
        eventually(Duration::from_secs(15), || front
            .https_with(&other.pem, "staging.example.com", "/version", &[])
            .status
            == 200),
        "the new certificate was not served:\n{}",
        s.serve_log()
    );
}

/// One request through the front door's http listener, as raw HTTP/1.1: the status.
fn raw_get(port: u16, host: &str, path: &str) -> Option<u16> {
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer).ok()?;
    answer.split(' ').nth(1)?.parse().ok()
}

#[test]
fn a_deploy_through_the_front_door_fails_no_request_while_another_host_serves() {
    let mut s = Sandbox::with(
        &[Rel("v1.0.0", GOOD), Rel("v1.1.0", GOOD)],
        Options {
            envs: &["staging", "production"],
            ..Options::default()
        },
    );
    let front = front_door(
        &s,
        &[
            ("staging", "hosts = [\"staging.example.com\"]".into()),
            ("production", "hosts = [\"www.example.com\"]".into()),
        ],
    );
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    s.deploy_ok("production", "v1.0.0");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = |host: &'static str| {
        let stop = stop.clone();
        let port = front.http;
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match raw_get(port, host, "/version") {
                    Some(200) => ok += 1,
                    other => failed.push(other),
                }
            }
            (ok, failed)
        })
    };
    let (staging, production) = (load("staging.example.com"), load("www.example.com"));
    s.deploy_ok("staging", "v1.1.0");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for (name, t) in [("staging", staging), ("production", production)] {
        let (ok, failed) = t.join().unwrap();
        assert!(ok > 0, "{name}: no request got through");
        assert!(
            failed.is_empty(),
            "{name}: {} failed: {failed:?}",
            failed.len()
        );
    }
    let got = front.http("staging.example.com", "/version", &[]);
    assert!(got.body.contains("v1.1.0"), "{}", got.body);
}

#[test]
fn a_mismatched_key_is_shown_in_status_and_other_hosts_are_served() {
    let mut s = two_envs();
    let front = front_door(&s, &[]);
    let dir = s.dir.path().to_path_buf();
    let (sc, _) = front.ca.issue(&dir, "staging", &["staging.example.com"]);
    let (pc, pk) = front.ca.issue(&dir, "production", &["www.example.com"]);
    for (env, text) in [
        (
            "staging",
            format!("hosts = [\"staging.example.com\"]\n{}", tls_files(&sc, &pk)),
        ),
        (
            "production",
            format!("hosts = [\"www.example.com\"]\n{}", tls_files(&pc, &pk)),
        ),
    ] {
        edit(
            &s.config,
            &format!("[environments.{env}]\n"),
            &format!("[environments.{env}]\n{text}\n"),
        );
    }
    s.serve();
    s.deploy_ok("production", "v1.0.0");
    let got = front.https("www.example.com", "/version", &[]);
    assert_eq!(got.status, 200, "{}", got.stderr);
    let got = front.https("staging.example.com", "/", &[]);
    assert_eq!(got.status, 0, "no certificate to serve staging with");
    let env = s.api("/api/environments/staging");
    let error = env["certificate"]["error"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        error.contains("environment staging")
            && error.contains("does not belong to the certificate"),
        "{env}"
    );
    let run = s.ferry(&["status"]);
    assert!(
        run.stdout()
            .contains("certificate error: app sample, environment staging"),
        "{run}"
    );
}

#[test]
fn a_taken_front_door_port_is_named() {
    let s = two_envs();
    let front = front_door(
        &s,
        &[("staging", "hosts = [\"staging.example.com\"]".into())],
    );
    let _taken = std::net::TcpListener::bind(("127.0.0.1", front.http)).unwrap();
    let run = support::Run(
        std::process::Command::new(support::FERRY)
            .args(["serve", "-c"])
            .arg(&s.config)
            .output()
            .unwrap(),
    );
    assert_ne!(run.code(), 0, "{run}");
    assert!(
        run.stderr().contains("for the front door ([server] http)"),
        "{run}"
    );
}

#[test]
fn ferry_upgrade_hands_the_front_door_sockets_over_and_fails_no_request() {
    let mut s = two_envs();
    let front = front_door(&s, &[]);
    let dir = s.dir.path().to_path_buf();
    let (c, k) = front.ca.issue(&dir, "staging", &["staging.example.com"]);
    edit(
        &s.config,
        "[environments.staging]\n",
        &format!(
            "[environments.staging]\nhosts = [\"staging.example.com\"]\n{}\nredirect_https = false\n",
            tls_files(&c, &k)
        ),
    );
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, port) = (stop.clone(), front.http);
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match raw_get(port, "staging.example.com", "/version") {
                    Some(200) => ok += 1,
                    other => failed.push(other),
                }
            }
            (ok, failed)
        })
    };
    let old = s.locked_serve_pid().expect("serve holds the lock");
    let run = s.ferry(&["upgrade", "--binary", support::FERRY]);
    assert_eq!(run.code(), 0, "{run}\n{}", s.serve_log());
    assert_ne!(s.locked_serve_pid(), Some(old));
    // the new serve answers on the handed-over https socket, with the certificate loaded
    let got = front.https("staging.example.com", "/version", &[]);
    assert_eq!(got.status, 200, "{}\n{}", got.stderr, s.serve_log());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = load.join().unwrap();
    assert!(ok > 0);
    assert!(failed.is_empty(), "{} failed: {failed:?}", failed.len());
    s.stop(nix::sys::signal::Signal::SIGTERM);
}

/// Adds `lines` to the sandbox config's `[proxy]` table (made when missing).
fn proxy_settings(s: &Sandbox, lines: &str) {
    let text = std::fs::read_to_string(&s.config).unwrap();
    if text.contains("[proxy]\n") {
        edit(&s.config, "[proxy]\n", &format!("[proxy]\n{lines}\n"));
    } else {
        std::fs::write(&s.config, format!("{text}\n[proxy]\n{lines}\n")).unwrap();
    }
}

#[test]
fn head_answers_carry_no_body_and_http2_streams_end_honestly_and_time_out() {
    let mut s = two_envs();
    let front = front_door(&s, &[]);
    let dir = s.dir.path().to_path_buf();
    let (c, k) = front.ca.issue(&dir, "www", &["www.example.com"]);
    edit(
        &s.config,
        "[environments.production]\n",
        &format!(
            "[environments.production]\nhosts = [\"www.example.com\"]\n{}\n",
            tls_files(&c, &k)
        ),
    );
    proxy_settings(&s, "upstream_max_connections = 2\nheader_timeout = \"1s\"");
    s.serve();
    s.deploy_ok("production", "v1.0.0");

    // HEAD to a host nobody claimed, pipelined before a GET on the same connection: the
    // 404's head alone, so the next bytes are the GET's answer
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", front.http)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(
        b"HEAD /x HTTP/1.1\r\nHost: nobody.test\r\n\r\nGET /y HTTP/1.1\r\nHost: nobody.test\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    let (first, rest) = answer.split_once("\r\n\r\n").unwrap();
    assert!(first.starts_with("HTTP/1.1 404"), "{answer}");
    assert!(
        rest.starts_with("HTTP/1.1 404"),
        "HEAD got a body: {answer}"
    );
    assert!(
        rest.contains("Nothing is served at this address"),
        "{answer}"
    );

    // event streams over HTTP/2 leave the pool's count: with a pool of 2, three open streams
    // still let a plain request through
    let url = format!(
        "https://www.example.com:{}/sse?n=100&gap_ms=100",
        front.https
    );
    let [r1, r2] = front.resolve("www.example.com");
    let ca = front.ca.pem.display().to_string();
    let mut streams: Vec<std::process::Child> = (0..3)
        .map(|_| {
            std::process::Command::new("curl")
                .args(["-sSN", "--http2", "--max-time", "20", "--cacert", &ca])
                .args(["--resolve", &r1, "--resolve", &r2, &url])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let got = front.https("www.example.com", "/version", &["--http2"]);
    assert_eq!(
        (got.status, got.version.as_str()),
        (200, "2"),
        "{}",
        got.stderr
    );
    for stream in &mut streams {
        let _ = stream.kill();
        let _ = stream.wait();
    }

    // a response the app breaks off half-way never ends as if complete over HTTP/2
    for _ in 0..5 {
        let got = front.https(
            "www.example.com",
            "/download?mb=4&cut",
            &["--http2", "-o", "/dev/null"],
        );
        assert!(
            !got.stderr.is_empty(),
            "a cut-off body passed as complete: {} {}",
            got.status,
            got.version
        );
    }
    let got = front.https(
        "www.example.com",
        "/download?mb=4",
        &["--http2", "-o", "/dev/null"],
    );
    assert_eq!(got.status, 200, "{}", got.stderr);

    // an HTTP/2 connection that sends no request is closed after header_timeout (1 s)
    let script = format!(
        r#"
import socket, ssl, sys, time
ctx = ssl.create_default_context(cafile="{ca}")
ctx.set_alpn_protocols(["h2"])
raw = socket.create_connection(("127.0.0.1", {port}))
tls = ctx.wrap_socket(raw, server_hostname="www.example.com")
assert tls.selected_alpn_protocol() == "h2", tls.selected_alpn_protocol()
tls.settimeout(10)
start = time.time()
try:
    while tls.recv(65536):
        pass
except (ssl.SSLError, ConnectionResetError):
    pass
except socket.timeout:
    print("still open after 10 s"); sys.exit(1)
print("closed after %.1f s" % (time.time() - start))
"#,
        port = front.https
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

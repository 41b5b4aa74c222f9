//! Certificates from ACME, end to end against Pebble (Let's Encrypt's test CA, the Debian
//! package `pebble`): a real account and orders, HTTP-01 challenges fetched from ferry over
//! loopback, the issued chain verified against Pebble's root, renewal, and a CA that is down.
//! Skipped, saying why, where Pebble is not installed.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use support::*;

/// Pebble and its DNS (pebble-challtestsrv answering every name with 127.0.0.1), on free
/// loopback ports; HTTP-01 challenges are fetched from `http_port`.
struct Pebble {
    dir: tempfile::TempDir,
    dns: Child,
    pebble: Option<Child>,
    config: PathBuf,
    dns_port: u16,
    acme_port: u16,
    management_port: u16,
}

impl Pebble {
    /// `None` (with the reason printed) when Pebble is not installed.
    fn available() -> bool {
        let found = ["pebble", "pebble-challtestsrv"].iter().all(|bin| {
            Command::new(bin)
                .arg("-h")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok()
        });
        if !found {
            eprintln!(
                "skipped: pebble and pebble-challtestsrv are not installed (Debian package `pebble`)"
            );
        }
        found
    }

    /// Writes Pebble's config and its API certificate, and starts the DNS server; Pebble
    /// itself starts with [`Pebble::start`].
    fn new(http_port: u16) -> Pebble {
        let dir = tempfile::tempdir().unwrap();
        let api = rcgen::generate_simple_self_signed(vec![
            "127.0.0.1".to_string(),
            "localhost".to_string(),
        ])
        .unwrap();
        std::fs::write(dir.path().join("api.pem"), api.cert.pem()).unwrap();
        std::fs::write(dir.path().join("api.key"), api.signing_key.serialize_pem()).unwrap();
        let (acme_port, management_port, dns_port, dns_management) =
            (free_port(), free_port(), free_port(), free_port());
        let config = dir.path().join("pebble.json");
        let json = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{acme_port}"),
                "managementListenAddress": format!("127.0.0.1:{management_port}"),
                "certificate": dir.path().join("api.pem"),
                "privateKey": dir.path().join("api.key"),
                "httpPort": http_port,
                // TLS-ALPN-01 is not used: nothing listens there
                "tlsPort": free_port(),
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false
            }
        });
        std::fs::write(&config, json.to_string()).unwrap();
        let log = std::fs::File::create(dir.path().join("dns.log")).unwrap();
        let dns = Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{dns_management}")])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        assert!(
            eventually(Duration::from_secs(10), || listening(dns_port)),
            "pebble-challtestsrv did not start"
        );
        Pebble {
            dir,
            dns,
            pebble: None,
            config,
            dns_port,
            acme_port,
            management_port,
        }
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("pebble.log"))
            .unwrap();
        let child = Command::new("pebble")
            .arg("-config")
            .arg(&self.config)
            .args(["-dnsserver", &format!("127.0.0.1:{}", self.dns_port)])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.pebble = Some(child);
        assert!(
            eventually(Duration::from_secs(20), || listening(self.acme_port)
                && listening(self.management_port)),
            "pebble did not start:\n{}",
            self.log()
        );
    }

    /// Stops Pebble (its DNS and files stay).
    fn stop(&mut self) {
        if let Some(mut child) = self.pebble.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }

    fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.acme_port)
    }

    /// The PEM file of the certificate Pebble's API serves (what `[acme] ca` trusts).
    fn api_cert(&self) -> PathBuf {
        self.dir.path().join("api.pem")
    }

    /// Pebble's issuing root (made anew at each start), saved as a PEM file.
    fn root(&self) -> PathBuf {
        let path = self.dir.path().join("root.pem");
        let out = Command::new("curl")
            .args(["-sSf", "--cacert"])
            .arg(self.api_cert())
            .arg(format!(
                "https://127.0.0.1:{}/roots/0",
                self.management_port
            ))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(&path, &out.stdout).unwrap();
        path
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in self.pebble.iter_mut().chain(std::iter::once(&mut self.dns)) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn listening(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// Checks `chain` (leaf first) against `root` for `host`, as a browser would.
fn verify(chain: &[rustls_pki_types::CertificateDer<'static>], root: &Path, host: &str) {
    use rustls::client::danger::ServerCertVerifier;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_file(root).unwrap())
        .unwrap();
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap();
    verifier
        .verify_server_cert(
            &chain[0],
            &chain[1..],
            &rustls_pki_types::ServerName::try_from(host.to_string()).unwrap(),
            &[],
            rustls_pki_types::UnixTime::now(),
        )
        .unwrap_or_else(|e| panic!("the chain for {host} does not verify: {e}"));
}

/// A plain HTTP server answering HTTP-01 challenges from `challenges`, as the front door's
/// http listener does.
async fn challenge_responder(
    listener: tokio::net::TcpListener,
    challenges: Arc<ferry::tls::Challenges>,
) {
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let challenges = challenges.clone();
        async move {
            match challenges.answer(uri.path()) {
                Some(body) => (axum::http::StatusCode::OK, body),
                None => (axum::http::StatusCode::NOT_FOUND, String::new()),
            }
        }
    });
    axum::serve(listener, app).await.unwrap();
}

fn host(name: &str) -> ferry::hosts::HostPattern {
    ferry::hosts::HostPattern::parse(name).unwrap()
}

#[test]
fn the_acme_module_obtains_stores_renews_and_survives_a_ca_that_is_down() {
    if !Pebble::available() {
        return;
    }
    let http_port = free_port();
    let mut pebble = Pebble::new(http_port);
    let state = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let certs = ferry::tls::CertStore::new();
    let challenges = ferry::tls::Challenges::new();
    rt.spawn(challenge_responder(
        rt.block_on(tokio::net::TcpListener::bind(("127.0.0.1", http_port)))
            .unwrap(),
        challenges.clone(),
    ));
    let settings = ferry::config::Acme {
        email: "ops@example.com".into(),
        directory: pebble.directory(),
        ca: Some(pebble.api_cert()),
        renew_before: Duration::from_secs(30 * 86_400),
        check_interval: Duration::from_secs(2),
    };
    let wanted = vec![ferry::acme::Wanted {
        name: "shop/staging".into(),
        app: "shop".into(),
        env: "staging".into(),
        hosts: vec![host("staging.example.test"), host("www.example.test")],
    }];

    // the CA is down at the start: the error is shown, and retried
    let acme = ferry::acme::Acme::new(
        settings.clone(),
        state.path(),
        certs.clone(),
        challenges.clone(),
    );
    let (stop, rx) = tokio::sync::watch::channel(false);
    let renewals = {
        let _in = rt.enter();
        acme.start(wanted.clone(), rx)
    };
    assert!(
        eventually(Duration::from_secs(20), || certs
            .status("shop/staging")
            .is_some_and(|s| s.error.is_some())),
        "no error while the CA is down"
    );
    let status = certs.status("shop/staging").unwrap();
    let error = status.error.unwrap();
    assert!(
        error.contains("app shop environment staging")
            && error.contains("staging.example.test, www.example.test")
            && error.contains("cannot reach the ACME directory"),
        "{error}"
    );
    assert!(status.next_attempt.is_some());
    assert!(certs.for_host("staging.example.test").is_none());

    // it comes up: the next attempt obtains the certificate
    pebble.start();
    assert!(
        eventually(Duration::from_secs(60), || certs
            .status("shop/staging")
            .is_some_and(|s| s.serial.is_some())),
        "no certificate once the CA is up: {:?}\n{}",
        certs.status("shop/staging"),
        pebble.log()
    );
    let status = certs.status("shop/staging").unwrap();
    assert_eq!(status.error, None);
    assert!(status.issuer.as_deref().unwrap_or("").contains("Pebble"));
    let served = certs.for_host("www.example.test").unwrap();
    let root = pebble.root();
    verify(&served.cert, &root, "www.example.test");
    verify(&served.cert, &root, "staging.example.test");

    // stored, private, and the account too
    use std::os::unix::fs::PermissionsExt;
    let acme_dir = state.path().join("acme");
    for file in [
        "account.json",
        "certs/shop/staging/cert.pem",
        "certs/shop/staging/key.pem",
    ] {
        let mode = std::fs::metadata(acme_dir.join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    let first = status.serial.unwrap();
    assert!(
        format!("{challenges:?}").contains("pending: 0"),
        "answered challenges are taken out: {challenges:?}"
    );
    stop.send_replace(true);
    rt.block_on(renewals).unwrap();

    // a challenge the http listener does not answer (its token is not among those served):
    // the CA's reason is shown, naming the host
    let unanswered = ferry::tls::Challenges::new();
    let elsewhere = tempfile::tempdir().unwrap();
    let other = ferry::tls::CertStore::new();
    let acme = ferry::acme::Acme::new(
        settings.clone(),
        elsewhere.path(),
        other.clone(),
        unanswered,
    );
    let (stop, rx) = tokio::sync::watch::channel(false);
    let renewals = {
        let _in = rt.enter();
        acme.start(
            vec![ferry::acme::Wanted {
                name: "shop/preview".into(),
                app: "shop".into(),
                env: "preview".into(),
                hosts: vec![host("preview.example.test")],
            }],
            rx,
        )
    };
    assert!(
        eventually(Duration::from_secs(30), || other
            .status("shop/preview")
            .is_some_and(|s| s.error.is_some())),
        "no error for an unanswered challenge"
    );
    let error = other.status("shop/preview").unwrap().error.unwrap();
    assert!(
        error.contains("app shop environment preview (preview.example.test)")
            && error.contains("HTTP-01 validation failed")
            && error.contains("http://preview.example.test:"),
        "{error}"
    );
    assert!(other.for_host("preview.example.test").is_none());
    stop.send_replace(true);
    rt.block_on(renewals).unwrap();

    // a restart serves the stored certificate at once and orders nothing
    let certs = ferry::tls::CertStore::new();
    let acme = ferry::acme::Acme::new(
        settings.clone(),
        state.path(),
        certs.clone(),
        challenges.clone(),
    );
    let (stop, rx) = tokio::sync::watch::channel(false);
    let renewals = {
        let _in = rt.enter();
        acme.start(wanted.clone(), rx)
    };
    assert_eq!(
        certs.status("shop/staging").unwrap().serial.as_deref(),
        Some(first.as_str())
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        certs.status("shop/staging").unwrap().serial.as_deref(),
        Some(first.as_str()),
        "renewed although not due"
    );
    stop.send_replace(true);
    rt.block_on(renewals).unwrap();

    // another directory (a test CA before production): its own account, and a certificate
    // of its own at once although the stored one is not due
    let settings = ferry::config::Acme {
        directory: pebble.directory().replace("127.0.0.1", "localhost"),
        ..settings
    };
    let acme = ferry::acme::Acme::new(
        settings.clone(),
        state.path(),
        certs.clone(),
        challenges.clone(),
    );
    let (stop, rx) = tokio::sync::watch::channel(false);
    let renewals = {
        let _in = rt.enter();
        acme.start(wanted.clone(), rx)
    };
    assert!(
        eventually(Duration::from_secs(60), || certs
            .status("shop/staging")
            .and_then(|s| s.serial)
            .is_some_and(|s| s != first)),
        "not replaced: {:?}\n{}",
        certs.status("shop/staging"),
        pebble.log()
    );
    let first = certs.status("shop/staging").unwrap().serial.unwrap();
    let account = std::fs::read_to_string(acme_dir.join("account.json")).unwrap();
    assert!(
        account.contains("https://localhost:"),
        "the account was not made anew"
    );
    stop.send_replace(true);
    rt.block_on(renewals).unwrap();

    // renew_before longer than Pebble's validity (5 years): due at once, renewed in place
    let settings = ferry::config::Acme {
        renew_before: Duration::from_secs(3650 * 86_400),
        ..settings
    };
    let acme = ferry::acme::Acme::new(settings, state.path(), certs.clone(), challenges.clone());
    let (stop, rx) = tokio::sync::watch::channel(false);
    let renewals = {
        let _in = rt.enter();
        acme.start(wanted.clone(), rx)
    };
    assert!(
        eventually(Duration::from_secs(60), || certs
            .status("shop/staging")
            .and_then(|s| s.serial)
            .is_some_and(|s| s != first)),
        "not renewed: {:?}\n{}",
        certs.status("shop/staging"),
        pebble.log()
    );
    let served = certs.for_host("staging.example.test").unwrap();
    verify(&served.cert, &root, "staging.example.test");
    stop.send_replace(true);
    rt.block_on(renewals).unwrap();
}

/// `curl` over HTTPS to `host` on 127.0.0.1:`port`, verifying against `ca` only: the HTTP
/// status and the served leaf's serial number, or curl's error.
fn https_get(port: u16, host: &str, ca: &Path, path: &str) -> Result<(u16, String), String> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-o", "/dev/null"])
        .args(["-w", "%{http_code}\\n%{certs}"])
        .arg("--cacert")
        .arg(ca)
        .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
        .arg(format!("https://{host}:{port}{path}"))
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .parse()
        .unwrap_or(0);
    let serial = text
        .lines()
        .find_map(|l| l.strip_prefix("Serial Number:"))
        .map(|s| s.trim().replace(':', "").to_ascii_lowercase())
        .ok_or_else(|| format!("no serial in curl's output: {text}"))?;
    Ok((status, serial))
}

fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{from:?} not in {text}");
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

#[test]
fn serve_obtains_renews_and_retries_certificates_while_other_hosts_serve() {
    if !Pebble::available() {
        return;
    }
    let mut s = Sandbox::with(
        &[Rel("v1.0.0", GOOD)],
        Options {
            envs: &["staging", "production"],
            ..Options::default()
        },
    );
    let (http, https) = (free_port(), free_port());
    let mut pebble = Pebble::new(http);
    // production's certificate comes from files, and serves while the CA is down
    let files = rcgen::generate_simple_self_signed(vec!["www.example.test".to_string()]).unwrap();
    let (cert, key) = (s.dir.path().join("www.crt"), s.dir.path().join("www.key"));
    std::fs::write(&cert, files.cert.pem()).unwrap();
    std::fs::write(&key, files.signing_key.serialize_pem()).unwrap();
    edit(
        &s.config,
        "[server]\n",
        &format!("[server]\nhttp = \"127.0.0.1:{http}\"\nhttps = \"127.0.0.1:{https}\"\n"),
    );
    edit(
        &s.config,
        "[environments.staging]\n",
        "[environments.staging]\nhosts = [\"staging.example.test\", \"app.example.test\"]\ntls = \"acme\"\n",
    );
    edit(
        &s.config,
        "[environments.production]\n",
        &format!(
            "[environments.production]\nhosts = [\"www.example.test\"]\ntls = {{ cert = \"{}\", key = \"{}\" }}\n",
            cert.display(),
            key.display()
        ),
    );
    // renew_before longer than Pebble's validity (5 years): each certificate is due for
    // renewal as soon as it is issued, and renewed every check_interval
    let mut text = std::fs::read_to_string(&s.config).unwrap();
    text.push_str(&format!(
        "\n[acme]\nemail = \"ops@example.com\"\ndirectory = \"{}\"\nca = \"{}\"\nrenew_before = \"3650d\"\ncheck_interval = \"3s\"\n",
        pebble.directory(),
        pebble.api_cert().display()
    ));
    std::fs::write(&s.config, text).unwrap();
    let check = s.ferry(&["check"]);
    assert_eq!(check.code(), 0, "{check}");
    assert!(
        check
            .stdout()
            .contains("acme       ops@example.com at https://127.0.0.1:"),
        "{check}"
    );

    // the CA is down: serve starts all the same, the other host serves, the error is shown
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    let (status, _) = https_get(https, "www.example.test", &cert, "/").unwrap();
    assert_eq!(status, 503, "production serves (nothing deployed there)");
    assert!(
        eventually(Duration::from_secs(20), || s
            .ferry(&["status"])
            .stdout()
            .contains("cannot reach the ACME directory")),
        "{}",
        s.ferry(&["status"])
    );
    let status = s.ferry(&["status"]).stdout();
    assert!(
        status.contains("staging.example.test, app.example.test"),
        "{status}"
    );

    // it comes up: the certificate is issued at the next attempt and verifies against
    // Pebble's root, for each host
    pebble.start();
    // kept beyond Pebble's own dir, which goes when it is stopped
    let root = s.dir.path().join("pebble-root.pem");
    std::fs::copy(pebble.root(), &root).unwrap();
    let mut first = String::new();
    assert!(
        eventually(Duration::from_secs(60), || {
            match https_get(https, "staging.example.test", &root, "/version") {
                Ok((200, serial)) => {
                    first = serial;
                    true
                }
                _ => false,
            }
        }),
        "no verified HTTPS on staging: {:?}\n{}\n{}",
        https_get(https, "staging.example.test", &root, "/version"),
        s.ferry(&["status"]),
        pebble.log()
    );
    assert_eq!(
        https_get(https, "app.example.test", &root, "/version").map(|r| r.0),
        Ok(200)
    );
    // renewed without a restart: a new serial on the same listener
    assert!(
        eventually(Duration::from_secs(60), || matches!(
            https_get(https, "staging.example.test", &root, "/version"),
            Ok((200, serial)) if serial != first
        )),
        "not renewed\n{}",
        s.ferry(&["status"])
    );

    // a restart with the CA down serves the stored certificate at once
    pebble.stop();
    std::thread::sleep(Duration::from_secs(4));
    let (_, last) = https_get(https, "staging.example.test", &root, "/version").unwrap();
    s.stop(nix::sys::signal::Signal::SIGTERM);
    s.serve();
    let (status, serial) = https_get(https, "staging.example.test", &root, "/version").unwrap();
    assert_eq!((status, serial), (200, last));
}

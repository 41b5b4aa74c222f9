//! The front door: `[server] http`/`https`, environments routed by host, TLS from certificate
//! files, the redirect to https, HTTP/2 by ALPN.

mod support;

use std::path::{Path, PathBuf};

use support::{GOOD, Options, Rel, Sandbox};

/// A test CA and certificates it signs, as PEM files in `dir`.
struct Ca {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    #[allow(dead_code)] // read by the TLS tests
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

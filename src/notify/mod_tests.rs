//! The dispatch's HTTP side: classification, redaction, TLS, transitions.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::queue::event_name;

use super::*;
use crate::store::DeploymentState;

#[test]
fn transitions_map_to_events_once() {
    let mut started = HashSet::new();
    let ev = |k, s, started: &mut HashSet<i64>| event_name(k, s, 1, started);
    assert_eq!(ev("deploy", DeploymentState::Queued, &mut started), None);
    assert_eq!(
        ev("deploy", DeploymentState::Running, &mut started),
        Some("deploy.started")
    );
    assert_eq!(
        ev("deploy", DeploymentState::AwaitingApproval, &mut started),
        Some("approval.waiting")
    );
    // running again after approval is not a second start
    assert_eq!(ev("deploy", DeploymentState::Running, &mut started), None);
    assert_eq!(
        ev("deploy", DeploymentState::Failed, &mut started),
        Some("deploy.failed")
    );
    assert!(started.is_empty());
    assert_eq!(
        ev("rollback", DeploymentState::Succeeded, &mut started),
        Some("rolled_back")
    );
    assert_eq!(
        ev("deploy", DeploymentState::RolledBack, &mut started),
        Some("rolled_back")
    );
    assert_eq!(
        ev("deploy", DeploymentState::Superseded, &mut started),
        None
    );
}

#[test]
fn urls_are_logged_without_their_path() {
    assert_eq!(
        crate::config::host_of("https://hooks.slack.com/services/T0/B0/secret"),
        "https://hooks.slack.com/…"
    );
    let t = Target::Url("https://hooks.slack.com/services/T0/B0/secret".into());
    assert!(!format!("{t:?} {t}").contains("secret"));
}

#[test]
fn answers_are_summed_up_on_one_short_line() {
    let long = "x ".repeat(600);
    let s = summary(reqwest::StatusCode::OK, &long);
    assert!(s.starts_with("answered 200 OK: x x"), "{s}");
    assert!(s.len() < ANSWER_MAX + 40 && s.ends_with('…'), "{s}");
    assert_eq!(
        summary(reqwest::StatusCode::NO_CONTENT, ""),
        "answered 204 No Content"
    );
}

/// https targets work: the client speaks TLS (rustls on ring) and checks the certificate,
/// so a self-signed one is refused as such, not as an unsupported scheme.
#[tokio::test]
async fn https_targets_are_reached_over_tls_and_their_certificate_is_checked() {
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![CertificateDer::from(cert.der().to_vec())],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(signing_key.serialize_der())),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let handshake = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        acceptor
            .accept(tcp)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    let http = client().unwrap();
    let err = http
        .post(format!("https://localhost:{port}/hook"))
        .send()
        .await
        .unwrap_err();
    let Failure::Fatal(why) = network(err) else {
        panic!("an untrusted certificate is not retried")
    };
    assert!(why.to_lowercase().contains("certificate"), "{why}");
    // the server saw a TLS client hello, and the client refused what it was shown
    let server = handshake.await.unwrap().unwrap_err();
    assert!(!server.is_empty());
}

/// A loopback server answering every request with `head` (status line and headers) and
/// `body`.
async fn answering(head: &'static str, body: String) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = vec![0; 65536];
                let _ = c.read(&mut buf).await;
                let reply = format!(
                    "{head}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = c.write_all(reply.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}")
}

async fn post(head: &'static str, body: &str, path: &str) -> Result<Delivered, Failure> {
    let base = answering(head, body.to_string()).await;
    let ctx = Ctx {
        http: client().unwrap(),
        store: Store::open(&tempfile::tempdir().unwrap().keep().join("db")).unwrap(),
    };
    post_json(
        &ctx,
        &Target::Url(format!("{base}{path}")),
        &serde_json::json!({}),
    )
    .await
}

#[tokio::test]
async fn answers_are_sorted_into_taken_retried_and_refused() {
    let ok = post("HTTP/1.1 200 OK", "fine", "/h").await.unwrap();
    assert_eq!(ok.answer, "answered 200 OK: fine");
    let cases: [(&'static str, Failure); 6] = [
        (
            "HTTP/1.1 404 Not Found",
            Failure::Fatal("answered 404 Not Found: x".into()),
        ),
        (
            "HTTP/1.1 503 Busy",
            Failure::Retry("answered 503 Service Unavailable: x".into()),
        ),
        (
            "HTTP/1.1 408 Slow",
            Failure::Retry("answered 408 Request Timeout: x".into()),
        ),
        (
            "HTTP/1.1 429 Slow down",
            Failure::Retry("answered 429 Too Many Requests: x".into()),
        ),
        (
            "HTTP/1.1 429 Slow down\r\nretry-after: 120",
            Failure::RetryAfter(MAX_RETRY_AFTER, "answered 429 Too Many Requests: x".into()),
        ),
        (
            "HTTP/1.1 429 Slow down\r\nretry-after: 1.5",
            Failure::RetryAfter(
                Duration::from_millis(1500),
                "answered 429 Too Many Requests: x".into(),
            ),
        ),
    ];
    for (head, want) in cases {
        assert_eq!(post(head, "x", "/h").await.unwrap_err(), want, "{head}");
    }
}

#[tokio::test]
async fn an_answer_echoing_the_secret_path_is_kept_without_it() {
    let path = "/services/T0/B0/XXXX%53ECRETXXXX?token=abc123";
    let said = format!("Cannot POST {path} (that is /services/T0/B0/XXXXSECRETXXXX)");
    let f = post("HTTP/1.1 404 Not Found", &said, path)
        .await
        .unwrap_err();
    let why = f.reason();
    assert!(
        why.starts_with("answered 404 Not Found: Cannot POST"),
        "{why}"
    );
    for secret in ["SECRET", "services/T0", "abc123", "%53"] {
        assert!(!why.contains(secret), "{secret} in {why}");
    }
    let taken = post("HTTP/1.1 200 OK", &said, path).await.unwrap();
    assert!(!taken.answer.contains("SECRET"), "{}", taken.answer);
}

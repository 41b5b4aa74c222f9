//! A fake SMTP relay on 127.0.0.1 that speaks real SMTP: `EHLO` advertising `STARTTLS` and
//! `AUTH PLAIN LOGIN`, the `STARTTLS` upgrade on its submission port and implicit TLS on a
//! second port (tokio-rustls, a certificate from a test CA made by rcgen), `AUTH` checked
//! against one user, `MAIL`/`RCPT`/`DATA` (dot-unstuffed) and `QUIT`. It keeps every message
//! it accepted, and what it answered, for the test to read.
//!
//! Modes: [`Mode::drop_first`] hangs up at that many `MAIL FROM`s, [`Mode::fail_first`]
//! then answers `451` to that many before accepting;
//! [`Mode::refuse_auth`] answers `535` to every `AUTH`; [`Mode::no_starttls`] offers no
//! `STARTTLS` and takes `AUTH` in clear text, to see that a client does not use it.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

pub const USER: &str = "ferry@relay.test";
pub const PASSWORD: &str = "relay-pass-5b1f0c9e";

/// How the fake misbehaves.
#[derive(Clone, Default)]
pub struct Mode {
    /// Close the connection without an answer at this many `MAIL FROM` commands first (a
    /// relay restarting, an idle connection cut).
    pub drop_first: u32,
    /// Then answer `451 4.3.0` to this many `MAIL FROM` commands (a busy relay).
    pub fail_first: u32,
    /// Answer `535 5.7.8` to every `AUTH` (wrong credentials, as far as ferry can tell).
    pub refuse_auth: bool,
    /// Offer no `STARTTLS` and take `AUTH` in clear text (a relay a client must not trust).
    pub no_starttls: bool,
    /// Offer `AUTH LOGIN` only (as some relays do).
    pub login_only: bool,
}

/// One message the fake accepted.
#[derive(Clone, Debug)]
pub struct Received {
    pub from: String,
    pub to: Vec<String>,
    /// The message as sent after `DATA`, dot-unstuffed, CRLF line ends.
    pub data: String,
    /// The user that authenticated, if any, and the mechanism it used.
    pub user: Option<String>,
    pub mechanism: Option<String>,
    /// Whether the session was encrypted when `DATA` came (STARTTLS or implicit TLS).
    pub tls: bool,
}

#[derive(Default)]
struct State {
    mode: Mode,
    received: Vec<Received>,
    /// Every reply line sent that is not 2xx/3xx, in order (`"451 …"`, `"535 …"`).
    refusals: Vec<String>,
    /// Sessions opened, per port kind.
    sessions: u32,
    /// `AUTH` commands seen, and how many of them came in clear text.
    auths: u32,
    clear_auths: u32,
}

/// A running fake relay; it stops when the test process ends.
pub struct Smtp {
    /// The port that starts in clear text and offers `STARTTLS`.
    pub starttls_port: u16,
    /// The port that speaks TLS from the first byte (as 465 does).
    pub tls_port: u16,
    /// The test CA's certificate (PEM), to give ferry as `ca_file`.
    pub ca_file: PathBuf,
    state: Arc<Mutex<State>>,
    _dir: Arc<tempfile::TempDir>,
}

impl Smtp {
    pub fn start(mode: Mode) -> Smtp {
        let dir = tempfile::tempdir().unwrap();
        let (ca_pem, acceptor) = tls_acceptor();
        let ca_file = dir.path().join("relay-ca.pem");
        std::fs::write(&ca_file, ca_pem).unwrap();
        let state = Arc::new(Mutex::new(State {
            mode,
            ..State::default()
        }));
        let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let tls = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (starttls_port, tls_port) = (
            plain.local_addr().unwrap().port(),
            tls.local_addr().unwrap().port(),
        );
        plain.set_nonblocking(true).unwrap();
        tls.set_nonblocking(true).unwrap();
        let shared = state.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let plain = TcpListener::from_std(plain).unwrap();
                let tls = TcpListener::from_std(tls).unwrap();
                serve(plain, tls, acceptor, shared).await
            });
        });
        Smtp {
            starttls_port,
            tls_port,
            ca_file,
            state,
            _dir: Arc::new(dir),
        }
    }

    /// The messages accepted so far.
    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// The refusals (4xx/5xx reply lines) sent so far.
    pub fn refusals(&self) -> Vec<String> {
        self.state.lock().unwrap().refusals.clone()
    }

    /// `AUTH` commands seen so far: (all, those sent in clear text).
    pub fn auths(&self) -> (u32, u32) {
        let s = self.state.lock().unwrap();
        (s.auths, s.clear_auths)
    }

    /// Sessions opened so far (each connection counts once, STARTTLS or not).
    pub fn sessions(&self) -> u32 {
        self.state.lock().unwrap().sessions
    }

    /// Waits up to `limit` for `n` messages; all received then.
    pub fn wait_for(&self, n: usize, limit: Duration) -> Vec<Received> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let got = self.received();
            if got.len() >= n || std::time::Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A test CA (its PEM) and an acceptor with a certificate it signed for `localhost` and
/// `127.0.0.1`.
fn tls_acceptor() -> (String, tokio_rustls::TlsAcceptor) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ferry test relay CA");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca_cert = params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        )
        .unwrap();
    (
        ca_cert.pem(),
        tokio_rustls::TlsAcceptor::from(Arc::new(config)),
    )
}

async fn serve(
    plain: TcpListener,
    tls: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    state: Arc<Mutex<State>>,
) {
    loop {
        let (conn, implicit) = tokio::select! {
            c = plain.accept() => (c, false),
            c = tls.accept() => (c, true),
        };
        let Ok((conn, _)) = conn else { continue };
        state.lock().unwrap().sessions += 1;
        let (acceptor, state) = (acceptor.clone(), state.clone());
        tokio::spawn(async move {
            if implicit {
                if let Ok(tls) = acceptor.accept(conn).await {
                    let _ = session(tls, true, true, &state).await;
                }
                return;
            }
            // clear text until STARTTLS, then the same conversation over TLS
            if let Ok(Some(raw)) = session(conn, false, true, &state).await
                && let Ok(tls) = acceptor.accept(raw).await
            {
                let _ = session(tls, true, false, &state).await;
            }
        });
    }
}

/// One SMTP conversation over `stream` (`greet`: send the 220 greeting first; not after
/// STARTTLS). `Ok(Some(stream))` when the client asked for
/// STARTTLS and was told to go ahead: the caller upgrades it.
async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    tls: bool,
    greet: bool,
    state: &Mutex<State>,
) -> std::io::Result<Option<S>> {
    let mut io = BufReader::new(stream);
    let mode = state.lock().unwrap().mode.clone();
    let mut greeted = false;
    let mut user: Option<String> = None;
    let mut mechanism: Option<String> = None;
    let mut from: Option<String> = None;
    let mut to: Vec<String> = Vec::new();
    // after STARTTLS the server says nothing until the client's new EHLO
    if greet {
        reply(&mut io, state, "220 relay.test ESMTP fake").await?;
    }
    loop {
        let mut line = String::new();
        if io.read_line(&mut line).await? == 0 {
            return Ok(None);
        }
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        let (verb, arg) = match line.split_once(' ') {
            Some((v, a)) => (v.to_ascii_uppercase(), a.to_string()),
            None => (line.to_ascii_uppercase(), String::new()),
        };
        match verb.as_str() {
            "EHLO" => {
                greeted = true;
                let mut lines = vec!["250-relay.test".to_string()];
                if !tls && !mode.no_starttls {
                    lines.push("250-STARTTLS".into());
                }
                lines.push(if mode.login_only {
                    "250-AUTH LOGIN".into()
                } else {
                    "250-AUTH PLAIN LOGIN".into()
                });
                lines.push("250-8BITMIME".into());
                lines.push("250 SIZE 10485760".into());
                reply(&mut io, state, &lines.join("\r\n")).await?;
            }
            "HELO" => {
                greeted = true;
                reply(&mut io, state, "250 relay.test").await?;
            }
            "STARTTLS" if !tls && greeted => {
                reply(&mut io, state, "220 2.0.0 Ready to start TLS").await?;
                return Ok(Some(io.into_inner()));
            }
            "STARTTLS" => reply(&mut io, state, "503 5.5.1 TLS already active").await?,
            "AUTH" if !tls && !mode.no_starttls => {
                {
                    let mut s = state.lock().unwrap();
                    s.auths += 1;
                    s.clear_auths += 1;
                }
                reply(&mut io, state, "538 5.7.11 Encryption required").await?;
            }
            "AUTH" => {
                {
                    let mut s = state.lock().unwrap();
                    s.auths += 1;
                    s.clear_auths += u32::from(!tls);
                }
                let mut words = arg.split_whitespace();
                let mech = words.next().unwrap_or("").to_ascii_uppercase();
                let initial = words.next().map(str::to_string);
                let creds = match mech.as_str() {
                    "PLAIN" if mode.login_only => None,
                    "PLAIN" => {
                        let answer = match initial {
                            Some(a) => a,
                            None => {
                                reply(&mut io, state, "334 ").await?;
                                read_line(&mut io).await?
                            }
                        };
                        decode(&answer).and_then(|s| {
                            let mut parts = s.split('\0');
                            let _authzid = parts.next()?;
                            Some((parts.next()?.to_string(), parts.next()?.to_string()))
                        })
                    }
                    "LOGIN" => {
                        let name = match initial {
                            Some(a) => a,
                            None => {
                                reply(&mut io, state, "334 VXNlcm5hbWU6").await?;
                                read_line(&mut io).await?
                            }
                        };
                        reply(&mut io, state, "334 UGFzc3dvcmQ6").await?;
                        let pass = read_line(&mut io).await?;
                        decode(&name).zip(decode(&pass))
                    }
                    _ => {
                        reply(&mut io, state, "504 5.5.4 Unrecognized authentication type").await?;
                        continue;
                    }
                };
                match creds {
                    Some((u, p)) if u == USER && p == PASSWORD && !mode.refuse_auth => {
                        user = Some(u);
                        mechanism = Some(mech.clone());
                        reply(&mut io, state, "235 2.7.0 Authentication successful").await?;
                    }
                    _ => {
                        reply(
                            &mut io,
                            state,
                            "535 5.7.8 Authentication credentials invalid",
                        )
                        .await?
                    }
                }
            }
            "MAIL" if user.is_none() => {
                reply(&mut io, state, "530 5.7.0 Authentication required").await?;
            }
            "MAIL" => {
                let drop = {
                    let mut s = state.lock().unwrap();
                    let drop = s.mode.drop_first > 0;
                    s.mode.drop_first = s.mode.drop_first.saturating_sub(1);
                    drop
                };
                if drop {
                    state.lock().unwrap().refusals.push("(hung up)".into());
                    return Ok(None);
                }
                let busy = {
                    let mut s = state.lock().unwrap();
                    if s.mode.fail_first > 0 {
                        s.mode.fail_first -= 1;
                        true
                    } else {
                        false
                    }
                };
                if busy {
                    reply(&mut io, state, "451 4.3.0 Try again later").await?;
                } else {
                    from = Some(address(&arg));
                    to.clear();
                    reply(&mut io, state, "250 2.1.0 Ok").await?;
                }
            }
            "RCPT" if from.is_some() => {
                to.push(address(&arg));
                reply(&mut io, state, "250 2.1.5 Ok").await?;
            }
            "DATA" if from.is_some() && !to.is_empty() => {
                reply(&mut io, state, "354 End data with <CR><LF>.<CR><LF>").await?;
                let mut data = String::new();
                loop {
                    let mut l = String::new();
                    if io.read_line(&mut l).await? == 0 {
                        return Ok(None);
                    }
                    if l == ".\r\n" || l == ".\n" {
                        break;
                    }
                    data.push_str(l.strip_prefix('.').unwrap_or(&l));
                }
                state.lock().unwrap().received.push(Received {
                    from: from.take().unwrap_or_default(),
                    to: std::mem::take(&mut to),
                    data,
                    user: user.clone(),
                    mechanism: mechanism.clone(),
                    tls,
                });
                reply(&mut io, state, "250 2.0.0 Ok: queued").await?;
            }
            "RCPT" | "DATA" => reply(&mut io, state, "503 5.5.1 Bad sequence of commands").await?,
            "RSET" => {
                from = None;
                to.clear();
                reply(&mut io, state, "250 2.0.0 Ok").await?;
            }
            "NOOP" => reply(&mut io, state, "250 2.0.0 Ok").await?,
            "QUIT" => {
                reply(&mut io, state, "221 2.0.0 Bye").await?;
                let _ = io.get_mut().shutdown().await;
                return Ok(None);
            }
            _ => reply(&mut io, state, "502 5.5.2 Command not recognized").await?,
        }
    }
}

/// Sends one reply (its lines already joined by CRLF), noting refusals.
async fn reply<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut BufReader<S>,
    state: &Mutex<State>,
    text: &str,
) -> std::io::Result<()> {
    if !(text.starts_with('2') || text.starts_with('3')) {
        state.lock().unwrap().refusals.push(text.to_string());
    }
    io.get_mut()
        .write_all(format!("{text}\r\n").as_bytes())
        .await
}

async fn read_line<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut BufReader<S>,
) -> std::io::Result<String> {
    let mut l = String::new();
    io.read_line(&mut l).await?;
    Ok(l.trim_end().to_string())
}

fn decode(b64: &str) -> Option<String> {
    String::from_utf8(B64.decode(b64.trim()).ok()?).ok()
}

/// `FROM:<a@b> SIZE=…` → `a@b`.
fn address(arg: &str) -> String {
    arg.split_once('<')
        .and_then(|(_, rest)| rest.split_once('>'))
        .map(|(a, _)| a.to_string())
        .unwrap_or_default()
}

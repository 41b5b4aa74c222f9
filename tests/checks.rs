//! Checks before traffic (`[[check]]`, the `check` step), the preview address, and
//! long-lived connections at the switch: real apps through the real proxy.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use support::*;

fn leak(text: String) -> &'static str {
    Box::leak(text.into_boxed_str())
}

fn deployment(s: &Sandbox, id: i64) -> serde_json::Value {
    s.api(&format!("/api/deployments/{id}"))
}

fn step(s: &Sandbox, id: i64, name: &str) -> (String, String) {
    let d = deployment(s, id);
    let st = d["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|st| st["name"] == name)
        .unwrap_or_else(|| panic!("no step {name}: {d}"))
        .clone();
    (
        st["state"].as_str().unwrap_or("").to_string(),
        st["output"].as_str().unwrap_or("").to_string(),
    )
}

/// What `url`'s `/version` answers, if anything answers there.
fn version_at(url: &str) -> Option<(u16, String)> {
    get(&format!("{url}/version"))
}

#[test]
fn failing_checks_stop_the_deploy_before_the_switch_with_every_output() {
    let preview_port = free_port();
    let mut s = Sandbox::with(
        &[Rel("v1.0.0", GOOD), Rel("v1.1.0", GOOD)],
        Options {
            env_extra: Box::leak(Box::new([(
                "staging",
                leak(format!("preview_listen = \"127.0.0.1:{preview_port}\"")),
            )])),
            tables: r#"
[[check]]
name = "status"
path = "/status/200"
environments = ["staging"]

[[check]]
name = "version"
path = "/version"
json_pointer = "/version"
expect = "v1.0.0"

[[check]]
name = "smoke"
command = "echo smoke tests against $URL for $FERRY_VERSION; [ $FERRY_VERSION = v1.0.0 ] || { echo 'cart is empty' >&2; exit 3; }"

[[check]]
name = "url given"
command = "echo given URL=$URL"
"#,
            ..Options::default()
        },
    );
    s.serve();
    let run = s.deploy_ok("staging", "v1.0.0");
    assert!(run.stdout().contains("check"), "{run}");
    let (state, out) = step(&s, 1, "check");
    assert_eq!(state, "ok", "{out}");
    // a command check is given URL, the new instance's own address
    assert!(out.contains("given URL=http://127.0.0.1:"), "{out}");
    assert!(out.contains("every check passed (4)"), "{out}");
    let (old, old_pid) = s.serving("staging");
    assert_eq!(old, "v1.0.0");

    // now the status check answers 503, the version is another and the smoke test fails
    let text = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(
        &s.config,
        text.replace("path = \"/status/200\"", "path = \"/status/503\""),
    )
    .unwrap();
    s.stop(nix::sys::signal::Signal::SIGTERM);
    s.serve();
    let run = s.ferry(&["deploy", "staging", "v1.1.0"]);
    assert_eq!(run.code(), 1, "{run}\n{}", s.serve_log());
    let d = deployment(&s, 2);
    assert_eq!(d["deployment"]["state"], "failed", "{d}");
    let message = d["deployment"]["reason"].as_str().unwrap();
    assert!(
        message.starts_with("check: 3 of 4 check(s) failed: status, version, smoke"),
        "{message}"
    );
    let (state, out) = step(&s, 2, "check");
    assert_eq!(state, "failed");
    assert!(
        out.contains("FAILED  status: answered 503, expected 200"),
        "{out}"
    );
    assert!(
        out.contains(
            "FAILED  version: answered 200 but /version is \"v1.1.0\", expected \"v1.0.0\""
        ),
        "{out}"
    );
    assert!(out.contains("FAILED  smoke:"), "{out}");
    assert!(out.contains("cart is empty"), "{out}");
    assert!(out.contains("     ok url given"), "{out}");
    // never switched: the old instance served all along, the new one is gone
    let states: Vec<&str> = d["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|st| st["name"].as_str().unwrap())
        .collect();
    assert!(!states.contains(&"switch"), "{states:?}");
    assert_eq!(s.serving("staging"), ("v1.0.0".to_string(), old_pid));
    // the candidate is gone (its port closed) and the preview reaches nothing any more
    let port: u16 = out
        .split("given URL=http://127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no candidate URL in {out}"));
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the failed candidate on port {port} still answers"
    );
    let (code, body) = version_at(&format!("http://127.0.0.1:{preview_port}"))
        .expect("the preview listener answers");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("no new release"), "{body}");
    let status = s.ferry(&["status", "--json"]).json();
    assert_eq!(status[0]["preview"], serde_json::json!([]), "{status}");
}

#[test]
fn a_restart_previews_nothing() {
    // a restart starts the serving release again: the preview address must not offer it
    // as a new release between its health checks and the switch
    let preview_port = free_port();
    let mut s = Sandbox::with(
        &[Rel("v1.0.0", GOOD)],
        Options {
            env_extra: Box::leak(Box::new([(
                "staging",
                leak(format!("preview_listen = \"127.0.0.1:{preview_port}\"")),
            )])),
            ..Options::default()
        },
    );
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    s.stop(nix::sys::signal::Signal::SIGTERM);
    s.serve_env = vec![("FERRY_FAULT_PAUSE_AT".into(), "switch".into())];
    s.serve();
    let (status, d) = s.post("/api/environments/staging/restart", &serde_json::json!({}));
    assert_eq!(status, 201, "{d}");
    let id = d["id"].as_i64().unwrap();
    assert!(
        eventually(Duration::from_secs(60), || {
            let d = deployment(&s, id)["deployment"].clone();
            d["step"] == "switch" && d["state"] == "running"
        }),
        "the restart never reached its switch: {}\n{}",
        deployment(&s, id),
        s.serve_log()
    );
    let (code, body) = version_at(&format!("http://127.0.0.1:{preview_port}"))
        .expect("the preview listener answers");
    assert_eq!(code, 503, "the restart's instance is previewed: {body}");
    let status = s.ferry(&["status", "--json"]).json();
    assert_eq!(status[0]["preview"], serde_json::json!([]), "{status}");
    s.stop(nix::sys::signal::Signal::SIGKILL);
}

#[test]
fn the_preview_address_reaches_the_new_instance_until_the_switch() {
    let preview_port = free_port();
    let http_port = free_port();
    let mut s = Sandbox::with(
        &[Rel("v1.0.0", GOOD), Rel("v1.1.0", GOOD)],
        Options {
            env_extra: Box::leak(Box::new([(
                "staging",
                leak(format!(
                    "preview_listen = \"127.0.0.1:{preview_port}\"\npreview_hosts = [\"preview.staging.test\"]"
                )),
            )])),
            server: leak(format!("http = \"127.0.0.1:{http_port}\"")),
            // the check reaches the new release through the preview address, then waits for
            // the test to say go
            tables: leak(format!(
                r#"
[[check]]
name = "preview"
command = "curl -fsS http://127.0.0.1:{preview_port}/version && until [ -e ../../shared/go ]; do sleep 0.05; done"
timeout = "2m"
"#
            )),
            ..Options::default()
        },
    );
    s.serve();
    let preview = format!("http://127.0.0.1:{preview_port}");
    let go = s.state_dir().join("environments/staging/shared/go");
    // nothing waits for traffic: 503, saying so
    let (status, body) = version_at(&preview).expect("the preview listener answers");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("no new release of environment staging is waiting for traffic"),
        "{body}"
    );

    std::fs::write(&go, "").unwrap();
    let run = s.deploy_ok("staging", "v1.0.0");
    let (_, out) = step(&s, 1, "check");
    assert!(
        out.contains("\"version\":\"v1.0.0\""),
        "the check saw the preview: {out}"
    );
    assert!(
        out.contains(&format!(
            "preview (until the switch): {preview} http://preview.staging.test:{http_port}"
        )),
        "{out}\n{run}"
    );
    std::fs::remove_file(&go).unwrap();
    assert_eq!(version_at(&preview).unwrap().0, 503);

    std::thread::scope(|scope| {
        let deploy = scope.spawn(|| s.ferry(&["deploy", "staging", "v1.1.0"]));
        // while the check runs: the preview reaches v1.1.0, the public address v1.0.0
        assert!(
            eventually(Duration::from_secs(60), || {
                version_at(&preview).is_some_and(|(c, b)| c == 200 && b.contains("v1.1.0"))
            }),
            "the preview never reached the new release:\n{}",
            s.serve_log()
        );
        assert_eq!(s.serving("staging").0, "v1.0.0");
        // and the front door's preview host does too
        let front = crate::support::blocking_http()
            .no_proxy()
            .build()
            .unwrap()
            .get(format!("http://127.0.0.1:{http_port}/version"))
            .header("host", "preview.staging.test")
            .send()
            .unwrap();
        assert_eq!(front.status(), 200);
        assert!(front.text().unwrap().contains("v1.1.0"));
        let status = s.ferry(&["status"]);
        assert!(
            status.stdout().contains(&format!(
                "preview of the new release (until the switch): {preview}"
            )),
            "{status}"
        );
        std::fs::write(&go, "").unwrap();
        let run = deploy.join().unwrap();
        assert_eq!(run.code(), 0, "{run}\n{}", s.serve_log());
    });
    // switched: the public address has v1.1.0, the preview nothing again
    assert_eq!(s.serving("staging").0, "v1.1.0");
    assert_eq!(version_at(&preview).unwrap().0, 503);
    let status = s.ferry(&["status", "--json"]).json();
    assert_eq!(status[0]["preview"], serde_json::json!([]), "{status}");
}

/// A WebSocket to the sample app's `/ws` through the proxy, and the version it greets with.
fn websocket(s: &Sandbox) -> (tungstenite::WebSocket<TcpStream>, String) {
    let url = s.url("staging").replace("http://", "ws://") + "/ws";
    let addr = url.trim_start_matches("ws://").trim_end_matches("/ws");
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let (mut ws, resp) = tungstenite::client(url.as_str(), stream).expect("the handshake");
    assert_eq!(resp.status(), 101);
    let greeting = ws.read().expect("the greeting");
    (ws, greeting.into_text().unwrap().to_string())
}

fn echo(ws: &mut tungstenite::WebSocket<TcpStream>, text: &str) {
    ws.send(tungstenite::Message::text(text))
        .unwrap_or_else(|e| panic!("sending {text:?}: {e}"));
    let back = ws
        .read()
        .unwrap_or_else(|e| panic!("reading the echo of {text:?}: {e}"));
    assert_eq!(back.into_text().unwrap().as_str(), text);
}

fn with_drain(drain: &str) -> Sandbox {
    let s = Sandbox::new(&[Rel("v1.0.0", GOOD), Rel("v1.1.0", GOOD)]);
    let text = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(
        &s.config,
        text.replace(
            "drain_timeout = \"5s\"",
            &format!("drain_timeout = \"{drain}\""),
        ),
    )
    .unwrap();
    s
}

#[test]
fn a_websocket_opened_before_a_deploy_keeps_echoing_after_the_switch_until_it_closes() {
    let mut s = with_drain("5m");
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    let (mut old, version) = websocket(&s);
    assert_eq!(version, "v1.0.0");
    std::thread::scope(|scope| {
        let deploy = scope.spawn(|| s.ferry(&["deploy", "staging", "v1.1.0"]));
        assert!(
            eventually(Duration::from_secs(60), || s.serving("staging").0
                == "v1.1.0"),
            "the deploy never switched:\n{}",
            s.serve_log()
        );
        // new requests go to v1.1.0; the socket opened before still reaches v1.0.0
        for n in 0..20 {
            echo(&mut old, &format!("after the switch {n}"));
        }
        let (mut new, version) = websocket(&s);
        assert_eq!(version, "v1.1.0");
        echo(&mut new, "on the new release");
        // the finish step waits for it: the deploy is not done while the socket is open
        echo(&mut old, "still open");
        assert!(!deploy.is_finished());
        old.close(None).unwrap();
        let _ = old.flush();
        drop(old);
        let run = deploy.join().unwrap();
        assert_eq!(run.code(), 0, "{run}\n{}", s.serve_log());
    });
    let (_, out) = step(&s, 2, "finish");
    assert!(
        out.contains("the 0 request(s) and 1 long-lived connection(s) (WebSocket, event stream) open when its drain began finished within the drain timeout (5m)"),
        "{out}"
    );
}

#[test]
fn long_lived_connections_still_open_at_the_drain_timeout_are_reported_and_closed() {
    let mut s = with_drain("1s");
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    let (mut old, version) = websocket(&s);
    assert_eq!(version, "v1.0.0");
    // and an event stream: an event every 50 ms for much longer than the test
    let mut events = TcpStream::connect(s.url("staging").trim_start_matches("http://")).unwrap();
    events
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    events
        .write_all(b"GET /sse?n=1000000&gap_ms=50 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0; 4096];
    while !String::from_utf8_lossy(&got).contains("data: 1\n\n") {
        let n = events.read(&mut buf).unwrap();
        assert!(n > 0, "the event stream ended early");
        got.extend_from_slice(&buf[..n]);
    }
    s.deploy_ok("staging", "v1.1.0");
    let (_, out) = step(&s, 2, "finish");
    assert!(
        out.contains("drained v1.0.0-") && out.contains("for the drain timeout (1s): 0 request(s) and 2 long-lived connection(s) (WebSocket, event stream) were still open when it ended, and were closed as"),
        "{out}"
    );
    // the event stream ends with its instance
    let mut rest = Vec::new();
    let ended = loop {
        match events.read(&mut buf) {
            Ok(0) | Err(_) => break true,
            Ok(n) if rest.len() < 10_000_000 => rest.extend_from_slice(&buf[..n]),
            Ok(_) => break false,
        }
    };
    assert!(ended, "the event stream outlived its instance");
    // closed with the old instance: the socket ends
    let ended = (0..10).any(|n| {
        old.send(tungstenite::Message::text(format!("after the drain {n}")))
            .and_then(|()| old.read())
            .is_err()
    });
    assert!(ended, "the old socket outlived its instance");
}

#[test]
fn the_preview_listener_is_handed_over_by_ferry_upgrade() {
    let preview_port = free_port();
    let mut s = Sandbox::with(
        &[Rel("v1.0.0", GOOD), Rel("v1.1.0", GOOD)],
        Options {
            env_extra: Box::leak(Box::new([(
                "staging",
                leak(format!("preview_listen = \"127.0.0.1:{preview_port}\"")),
            )])),
            tables: leak(format!(
                "[[check]]\nname = \"preview\"\ncommand = \"curl -fsS http://127.0.0.1:{preview_port}/version\"\n"
            )),
            ..Options::default()
        },
    );
    s.serve();
    let preview = format!("http://127.0.0.1:{preview_port}");
    let old = s.locked_serve_pid().expect("serve holds the lock");
    let run = s.ferry(&["upgrade", "--binary", FERRY]);
    assert_eq!(run.code(), 0, "{run}\n{}", s.serve_log());
    let new = s.locked_serve_pid().expect("the new serve holds the lock");
    assert_ne!(new, old);
    // the new serve answers on the listener it was handed (it could not bind it anew while
    // the old one held it), and its deploys reach the preview
    assert_eq!(version_at(&preview).map(|(c, _)| c), Some(503));
    s.deploy_ok("staging", "v1.0.0");
    let (_, out) = step(&s, 1, "check");
    assert!(out.contains("\"version\":\"v1.0.0\""), "{out}");
    s.stop(nix::sys::signal::Signal::SIGTERM);
}

#[test]
fn an_http2_event_stream_keeps_going_after_the_switch_until_its_client_goes() {
    let mut s = with_drain("5m");
    let (http, https) = (free_port(), free_port());
    let dir = s.dir.path().to_path_buf();
    // a test CA and a certificate for the host
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ferry test CA");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca_cert = params.self_signed(&ca_key).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, ca_cert.pem()).unwrap();
    let issuer = rcgen::Issuer::new(params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["www.example.test".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    std::fs::write(dir.join("www.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("www.key"), key.serialize_pem()).unwrap();
    let text = std::fs::read_to_string(&s.config).unwrap();
    let text = text
        .replacen(
            "[server]\n",
            &format!("[server]\nhttp = \"127.0.0.1:{http}\"\nhttps = \"127.0.0.1:{https}\"\n"),
            1,
        )
        .replacen(
            "[environments.staging]\n",
            &format!(
                "[environments.staging]\nhosts = [\"www.example.test\"]\ntls = {{ cert = \"{}\", key = \"{}\" }}\n",
                dir.join("www.crt").display(),
                dir.join("www.key").display()
            ),
            1,
        );
    std::fs::write(&s.config, text).unwrap();
    s.serve();
    s.deploy_ok("staging", "v1.0.0");

    // an event every 50 ms over HTTP/2, counted as it arrives
    let mut curl = std::process::Command::new("curl")
        .args(["-sSN", "--http2", "--cacert"])
        .arg(&ca)
        .args(["--resolve", &format!("www.example.test:{https}:127.0.0.1")])
        .arg(format!(
            "https://www.example.test:{https}/sse?n=1000000&gap_ms=50"
        ))
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(dir.join("curl.err")).unwrap())
        .spawn()
        .unwrap();
    let events = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = events.clone();
    let out = curl.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if line.starts_with("data: ") {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    let seen = || events.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(20), || seen() >= 2),
        "no events: {}\n{}",
        std::fs::read_to_string(dir.join("curl.err")).unwrap_or_default(),
        s.serve_log()
    );

    std::thread::scope(|scope| {
        let deploy = scope.spawn(|| s.ferry(&["deploy", "staging", "v1.1.0"]));
        assert!(
            eventually(Duration::from_secs(60), || s.serving("staging").0
                == "v1.1.0"),
            "the deploy never switched:\n{}",
            s.serve_log()
        );
        // switched: the stream on the old instance goes on
        let at_switch = seen();
        assert!(
            eventually(Duration::from_secs(20), || seen() >= at_switch + 5),
            "the event stream stopped at the switch"
        );
        assert!(
            !deploy.is_finished(),
            "the drain did not wait for the stream"
        );
        // the client goes: the drain ends
        let _ = curl.kill();
        let _ = curl.wait();
        let run = deploy.join().unwrap();
        assert_eq!(run.code(), 0, "{run}\n{}", s.serve_log());
    });
    reader.join().unwrap();
    let (_, out) = step(&s, 2, "finish");
    assert!(
        out.contains("the 0 request(s) and 1 long-lived connection(s) (WebSocket, event stream) open when its drain began finished within the drain timeout (5m)"),
        "{out}"
    );
}

#[test]
fn a_running_check_step_shows_its_output_redacted() {
    // with [hooks] secrets = true a check command sees the env file's secrets: what it
    // prints must be masked already while the step runs, not only once it ends
    const SECRET: &str = "check-secret-8d1f3a62e0";
    let mut s = Sandbox::with(
        &[Rel("v1.0.0", GOOD)],
        Options {
            tables: r#"
[hooks]
secrets = true

[[check]]
name = "leaky"
command = "echo key=$API_KEY"

[[check]]
name = "waits"
command = "until [ -e ../../shared/go ]; do sleep 0.05; done"
timeout = "2m"
"#,
            ..Options::default()
        },
    );
    let env_file = s.dir.path().join("staging.env");
    std::fs::write(&env_file, format!("API_KEY={SECRET}\n")).unwrap();
    let config = std::fs::read_to_string(&s.config).unwrap().replace(
        "[environments.staging]\n",
        &format!(
            "[environments.staging]\nenv_file = \"{}\"\n",
            env_file.display()
        ),
    );
    std::fs::write(&s.config, config).unwrap();
    s.serve();
    let go = s.state_dir().join("environments/staging/shared/go");
    let (status, d) = s.post(
        "/api/deployments",
        &serde_json::json!({"environment": "staging", "ref": "v1.0.0"}),
    );
    assert_eq!(status, 201, "{d}");
    let id = d["id"].as_i64().unwrap();
    let mut seen = String::new();
    assert!(
        eventually(Duration::from_secs(60), || {
            seen = deployment(&s, id)["steps"]
                .as_array()
                .and_then(|steps| steps.iter().find(|st| st["name"] == "check"))
                .and_then(|st| st["output"].as_str())
                .unwrap_or("")
                .to_string();
            seen.contains("ok leaky")
        }),
        "the running check step never showed the first check: {}\n{}",
        deployment(&s, id),
        s.serve_log()
    );
    assert!(!seen.contains(SECRET), "the running output leaks: {seen}");
    assert!(seen.contains("key=***"), "{seen}");
    std::fs::write(&go, "").unwrap();
    assert!(
        eventually(Duration::from_secs(60), || deployment(&s, id)["deployment"]
            ["state"]
            == "succeeded"),
        "{}",
        deployment(&s, id)
    );
    let (_, out) = step(&s, id, "check");
    assert!(!out.contains(SECRET) && out.contains("key=***"), "{out}");
}

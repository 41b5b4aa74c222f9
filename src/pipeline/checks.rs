//! The check step and the preview address.
//!
//! `check` runs after start and health, before the switch (deploys only: a rollback goes
//! back to a release that served, a restart starts the serving one again). Every
//! `[[check]]` that applies to the environment runs, in file order, against the new
//! instance: an HTTP request straight to its port (status, then the JSON value at a
//! pointer), or a command run like a hook (confined as the environment's user, in the
//! release dir, with the hooks' variables) given `URL`, the instance's base URL. All of them
//! run even after one failed, so the step's output has every failure; any failure fails the
//! deploy before the switch: the new instance is stopped and the old one never stopped
//! serving.
//!
//! The environment's preview proxy (`preview_listen`, `preview_hosts`) reaches the new
//! instance from the end of its health checks until the switch (or until the deploy fails),
//! through its own connection pool: preview and check traffic never counts as the release's
//! traffic. Otherwise it answers 503 saying nothing waits for traffic.

use std::path::Path;

use serde_json::Value;

use super::hooks::Before;
use super::steps::Stop;
use super::{Engine, EnvState};
use crate::config::{Check, CheckKind, Environment, Hook, Server};
use crate::proxy::Upstream;
use crate::runtime::Instance;
use crate::store::Deployment;

/// The most of an HTTP check's body read (a JSON document to look into).
const MAX_BODY: usize = 1024 * 1024;

/// The most of one failing check's output shown while the step runs.
const MAX_CHECK_OUTPUT: usize = 2048;

/// The most of one passing check's output kept in the step's.
const MAX_PASSED_OUTPUT: usize = 512;

/// The most the failures take of the step's output at its end, shared between them: with
/// the summary line it stays within the tail the step records (8 KiB).
const FAILURES_OUTPUT: usize = 6 * 1024;

impl Environment {
    /// Where its preview is reached: `http://` its `preview_listen`, then each preview host
    /// on the front door's plain HTTP (the only one that serves them: no certificate covers
    /// a preview host, see `config::frontdoor`).
    pub fn preview_urls(&self, server: &Server) -> Vec<String> {
        let mut urls: Vec<String> = self
            .preview_listen
            .iter()
            .map(|a| format!("http://{a}"))
            .collect();
        let Some(addr) = server.http else {
            return urls;
        };
        let port = if addr.port() == 80 {
            String::new()
        } else {
            format!(":{}", addr.port())
        };
        for host in &self.preview_hosts {
            urls.push(format!("http://{host}{port}"));
        }
        urls
    }
}

impl EnvState {
    /// The preview address reaches `instance` (a new one, healthy, not yet serving).
    pub(super) fn preview_on(&self, instance: &Instance) {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], instance.port));
        self.preview.switch(Some(Upstream::new(addr)));
    }

    /// Nothing waits for traffic: the preview address answers 503.
    pub(super) fn preview_off(&self) {
        self.preview.switch(None);
    }
}

impl Engine {
    /// The check step: every `[[check]]` of the environment against the new `instance`.
    pub(super) async fn check(
        &self,
        d: &Deployment,
        state: &EnvState,
        instance: &Instance,
        dir: &Path,
        before: Option<&Before>,
    ) -> Result<(), Stop> {
        let checks: Vec<&Check> = self
            .config
            .checks
            .iter()
            .filter(|c| c.applies_to(&state.env.group))
            .collect();
        if checks.is_empty() {
            self.skip(
                d.id,
                "check",
                &format!("no [[check]] applies to {}", state.env.name),
            );
            return Ok(());
        }
        let taken;
        let before = match before {
            Some(before) => before,
            None => {
                taken = self.before(state).await;
                &taken
            }
        };
        self.step(d.id, "check", async {
            let url = format!("http://127.0.0.1:{}", instance.port);
            let mut out = format!("checking the new instance at {url}\n");
            let previews = state.env.preview_urls(&self.config.server);
            if !previews.is_empty() {
                out.push_str(&format!(
                    "preview (until the switch): {}\n",
                    previews.join(" ")
                ));
            }
            self.publish(d.id, &out)?;
            let d = self.store.deployment(d.id)?;
            let redact = |text: &str| self.redactor.redact(&self.shorten_paths(text));
            // passing checks as they come, failures after them (each its first line and the
            // tail of its output, within a share of the step's output), the summary last
            let mut failures: Vec<(&str, String)> = Vec::new();
            for check in &checks {
                let result = match &check.kind {
                    CheckKind::Http { .. } => http_check(check, &url, &redact).await,
                    CheckKind::Command(command) => {
                        self.command_check(&d, state, dir, before, (command, check), &url)
                            .await?
                    }
                };
                match result {
                    Ok(text) => out.push_str(&format!(
                        "     ok {}: {}\n",
                        check.name,
                        bounded(&redact(&text), MAX_PASSED_OUTPUT)
                    )),
                    Err(text) => failures.push((check.name.as_str(), redact(&text))),
                }
                let mut running = out.clone();
                for (name, text) in &failures {
                    running.push_str(&format!(
                        "FAILED  {name}: {}\n",
                        bounded(text, MAX_CHECK_OUTPUT)
                    ));
                }
                self.publish(d.id, &running)?;
            }
            if failures.is_empty() {
                out.push_str(&format!("every check passed ({})\n", checks.len()));
                return Ok(((), out));
            }
            // the failures and the summary fit in the tail the step keeps
            let share = (FAILURES_OUTPUT / failures.len()).max(256);
            for (name, text) in &failures {
                out.push_str(&format!("FAILED  {name}: {}\n", bounded(text, share)));
            }
            let failed: Vec<&str> = failures.iter().map(|(name, _)| *name).collect();
            let message = format!(
                "{} of {} check(s) failed: {}; the new instance never took traffic",
                failed.len(),
                checks.len(),
                failed.join(", ")
            );
            // the last line is what the CLI shows for the step
            out.push_str(&format!("{message}\n"));
            Err(Stop::failed(message).with_output(&out))
        })
        .await
    }

    /// The step's output so far, redacted as the step's end records it, for whoever watches.
    fn publish(&self, id: i64, out: &str) -> Result<(), Stop> {
        let out = self.redactor.redact(&self.shorten_paths(out));
        self.store.set_running_output(id, "check", &out)?;
        Ok(())
    }

    /// Runs a command check like a hook: its output, or why it failed with its output.
    async fn command_check(
        &self,
        d: &Deployment,
        state: &EnvState,
        dir: &Path,
        before: &Before,
        (command, check): (&str, &Check),
        url: &str,
    ) -> Result<Result<String, String>, Stop> {
        let mut vars = self
            .hook_vars(d, state, dir, before, Hook::PreDeploy, None)
            .await?;
        vars.retain(|(k, _)| k != "FERRY_HOOK" && k != "URL");
        vars.push(("FERRY_HOOK".into(), "check".into()));
        vars.push(("URL".into(), url.to_string()));
        let record = |pid| {
            if let Some(at) = crate::runtime::process_start_time(pid)
                && let Err(e) = self.store.command_started(d.id, pid, at)
            {
                tracing::warn!(id = d.id, pid, error = %e, "cannot record a running check");
            }
        };
        let result = crate::release::run_command(
            dir,
            command,
            &vars,
            &self.confinement(state, dir, false),
            check.timeout,
            record,
        )
        .await;
        let _ = self.store.commands_ended(d.id);
        Ok(match result {
            Ok(text) => Ok(format!("`{command}` passed\n{}", indent(&text))),
            Err(e) => Err(format!("{e}\n{}", indent(e.output()))),
        })
    }
}

/// What `ferry plan` says the check step does for `env`.
pub(super) fn describe(config: &crate::config::Config, env: &Environment) -> String {
    let names: Vec<&str> = config
        .checks
        .iter()
        .filter(|c| c.applies_to(&env.group))
        .map(|c| c.name.as_str())
        .collect();
    if names.is_empty() {
        return format!("skipped: no [[check]] applies to {}", env.name);
    }
    format!(
        "run {} against the new instance before it takes traffic; a failure fails the deploy",
        names.join(", ")
    )
}

/// Runs an HTTP check against the instance at `base`: what it got, or what was wrong.
/// `redact` is applied to a body before it is cut for a message.
async fn http_check(
    check: &Check,
    base: &str,
    redact: &(dyn Fn(&str) -> String + Sync),
) -> Result<String, String> {
    let CheckKind::Http {
        method,
        path,
        expect_status,
        json,
    } = &check.kind
    else {
        return Err("not an HTTP check".into());
    };
    let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
    let timeout = crate::config::format_duration(check.timeout);
    let ask = async {
        let mut resp = client()
            .request(method, format!("{base}{path}"))
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() {
                    "connection refused".to_string()
                } else {
                    e.to_string()
                }
            })?;
        let status = resp.status().as_u16();
        let mut body = Vec::new();
        let mut whole = true;
        while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_BODY {
                body.truncate(MAX_BODY);
                whole = false;
                break;
            }
        }
        Ok::<_, String>((status, body, whole))
    };
    let (status, body, whole) = tokio::time::timeout(check.timeout, ask)
        .await
        .map_err(|_| format!("no answer within {timeout}"))??;
    let excerpt = || excerpt(&redact(&String::from_utf8_lossy(&body)));
    if status != *expect_status {
        return Err(format!(
            "answered {status}, expected {expect_status}{}",
            excerpt()
        ));
    }
    match json {
        None => Ok(format!("answered {status}")),
        Some(_) if !whole => Err(format!(
            "answered {status} but the body is over {} MiB, more than a check reads{}",
            MAX_BODY / (1024 * 1024),
            excerpt()
        )),
        Some((pointer, expect)) => json_matches(&body, pointer, expect)
            .map(|()| format!("answered {status}, {} is {expect}", shown(pointer)))
            .map_err(|e| format!("answered {status} but {e}{}", excerpt())),
    }
}

/// Whether the JSON `body` holds `expect` at `pointer` (RFC 6901; numbers compare by value,
/// so `1` and `1.0` are the same): what differs when it does not.
pub(super) fn json_matches(body: &[u8], pointer: &str, expect: &Value) -> Result<(), String> {
    let doc: Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON ({e})"))?;
    match doc.pointer(pointer) {
        None => Err(format!("the body has nothing at {}", shown(pointer))),
        Some(got) if same(got, expect) => Ok(()),
        Some(got) => Err(format!("{} is {got}, expected {expect}", shown(pointer))),
    }
}

fn shown(pointer: &str) -> &str {
    if pointer.is_empty() {
        "the body"
    } else {
        pointer
    }
}

/// JSON equality with numbers compared by value.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => x.as_f64() == y.as_f64(),
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// The client of HTTP checks: it never follows a redirect (a redirect is the answer, and
/// ferry fetches nothing a release points it to).
fn client() -> reqwest::Client {
    crate::http_builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0)
        .build()
        .expect("a plain HTTP client builds")
}

/// The start of a body (already redacted), for a failure's message.
fn excerpt(body: &str) -> String {
    let body = body.trim_end();
    if body.is_empty() {
        return String::new();
    }
    let mut end = body.len().min(300);
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    let more = if body.len() > end { " …" } else { "" };
    format!("; body: {}{more}", &body[..end])
}

/// A check's output indented under its line.
fn indent(text: &str) -> String {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| format!("    {l}\n"))
        .collect()
}

/// `text` within about `max` bytes: its first line (what happened, like a command's exit
/// status) and the end of the rest (at character boundaries).
fn bounded(text: &str, max: usize) -> String {
    let text = text.trim_end();
    if text.len() <= max {
        return text.to_string();
    }
    let (first, rest) = text.split_once('\n').unwrap_or((text, ""));
    let mut end = first.len().min(max);
    while !first.is_char_boundary(end) {
        end -= 1;
    }
    let first = if end < first.len() {
        format!("{} …", &first[..end])
    } else {
        first.to_string()
    };
    let room = max.saturating_sub(first.len());
    if rest.is_empty() || room == 0 {
        return first;
    }
    let mut at = rest.len().saturating_sub(room);
    while !rest.is_char_boundary(at) {
        at += 1;
    }
    let cut = if at > 0 { "    …\n" } else { "" };
    format!("{first}\n{cut}{}", &rest[at..])
}

#[cfg(test)]
mod tests {
    use super::{bounded, http_check, json_matches};
    use crate::config::{Check, CheckKind};
    use serde_json::json;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A loopback server answering every request with `answer` (a whole HTTP/1.1 response).
    async fn answering(answer: String) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let answer = answer.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = conn.read(&mut buf).await;
                    let _ = conn.write_all(answer.as_bytes()).await;
                });
            }
        });
        format!("http://{addr}")
    }

    fn response(status: &str, headers: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    fn check(expect_status: u16) -> Check {
        Check {
            name: "c".into(),
            kind: CheckKind::Http {
                method: "GET".into(),
                path: "/".into(),
                expect_status,
                json: None,
            },
            timeout: Duration::from_secs(10),
            environments: Vec::new(),
        }
    }

    #[tokio::test]
    async fn http_checks_never_follow_redirects() {
        let elsewhere = answering(response("200 OK", "", "fetched from elsewhere")).await;
        let redirecting = answering(response(
            "302 Found",
            &format!("location: {elsewhere}/secret\r\n"),
            "",
        ))
        .await;
        let keep = |t: &str| t.to_string();
        assert_eq!(
            http_check(&check(302), &redirecting, &keep).await,
            Ok("answered 302".into())
        );
        let err = http_check(&check(200), &redirecting, &keep)
            .await
            .unwrap_err();
        assert!(err.starts_with("answered 302, expected 200"), "{err}");
        assert!(!err.contains("elsewhere"), "{err}");
    }

    #[tokio::test]
    async fn a_body_is_redacted_before_it_is_cut() {
        // the secret straddles the 300 bytes a failure shows of the body
        let secret = "s3cr3t-t0ken-value";
        let body = format!("{}{secret} and more", "x".repeat(290));
        let base = answering(response("500 Internal Server Error", "", &body)).await;
        let redact = |t: &str| t.replace(secret, "[redacted]");
        let err = http_check(&check(200), &base, &redact).await.unwrap_err();
        assert!(err.contains("[redac"), "{err}");
        assert!(!err.contains("s3cr3t"), "{err}");
    }

    #[test]
    fn a_bounded_failure_keeps_its_first_line_and_its_end() {
        let text = format!(
            "`./smoke.sh` exited with status 3\n{}    last words\n",
            "    noise\n".repeat(2000)
        );
        let cut = bounded(&text, 1024);
        assert!(cut.len() <= 1024 + 16, "{}", cut.len());
        assert!(
            cut.starts_with("`./smoke.sh` exited with status 3\n"),
            "{cut}"
        );
        assert!(cut.ends_with("    last words"), "{cut}");
        assert_eq!(bounded("short\ntext\n", 1024), "short\ntext");
    }

    #[test]
    fn json_pointers_match_values_and_say_what_differs() {
        let body = br#"{"status":"ok","db":{"ok":true,"latency":1.0},"checks":[{"n":1}],"a/b":2}"#;
        assert_eq!(json_matches(body, "/status", &json!("ok")), Ok(()));
        assert_eq!(json_matches(body, "/db/ok", &json!(true)), Ok(()));
        // numbers by value, escaped keys and array indices as RFC 6901 has them
        assert_eq!(json_matches(body, "/db/latency", &json!(1)), Ok(()));
        assert_eq!(json_matches(body, "/checks/0/n", &json!(1.0)), Ok(()));
        assert_eq!(json_matches(body, "/a~1b", &json!(2)), Ok(()));
        assert_eq!(
            json_matches(body, "/db", &json!({"latency": 1, "ok": true})),
            Ok(())
        );
        assert_eq!(
            json_matches(body, "/db/ok", &json!("true")),
            Err("/db/ok is true, expected \"true\"".into())
        );
        assert_eq!(
            json_matches(body, "/status", &json!("degraded")),
            Err("/status is \"ok\", expected \"degraded\"".into())
        );
        assert_eq!(
            json_matches(body, "/db/missing", &json!(1)),
            Err("the body has nothing at /db/missing".into())
        );
        assert_eq!(
            json_matches(body, "/db", &json!({"ok": true})),
            Err(r#"/db is {"latency":1.0,"ok":true}, expected {"ok":true}"#.into())
        );
        assert_eq!(json_matches(b"[1,2]", "", &json!([1, 2])), Ok(()));
        assert!(
            json_matches(b"<html>", "/status", &json!("ok"))
                .unwrap_err()
                .starts_with("the body is not JSON")
        );
    }
}

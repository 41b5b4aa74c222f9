//! `kind = "slack" | "discord" | "teams"`: a real `ferry serve` posts each service's own
//! format to a loopback receiver, for a success and for a failure whose output is huge and
//! hostile; each body is checked against the service's documented shape and limits.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use support::*;

/// Each POST's path and JSON body, in the order they came.
type Seen = Arc<Mutex<Vec<(String, Value)>>>;

/// A local HTTP receiver recording what it is sent, answering as the service would.
fn receiver() -> (String, Seen) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let keep = seen.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut request = String::new();
            if reader.read_line(&mut request).unwrap_or(0) == 0 {
                continue;
            }
            let path = request.split(' ').nth(1).unwrap_or("").to_string();
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
            keep.lock().unwrap().push((path.clone(), json));
            // Slack answers "ok", Discord 204, Teams "1"
            let answer = match path.as_str() {
                "/discord" => "HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n".to_string(),
                "/teams" => {
                    "HTTP/1.1 200 OK\r\ncontent-length: 1\r\nconnection: close\r\n\r\n1".into()
                }
                _ => "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok".into(),
            };
            let _ = conn.write_all(answer.as_bytes());
        }
    });
    (base, seen)
}

/// A release whose release command prints 20,000 hostile lines and fails.
const HUGE: &str = "huge = true\n";
const RELEASE: &str = r#"release = '''if grep -q '^huge' app.conf; then i=0; while [ $i -lt 20000 ]; do echo "line $i <script>alert(1)</script> & \`\`\` @everyone **bold** [x](javascript:1)"; i=$((i+1)); done; echo THE LAST LINE; exit 1; fi'''"#;

fn chars(v: &Value) -> usize {
    v.as_str()
        .unwrap_or_else(|| panic!("{v} is not a string"))
        .chars()
        .count()
}

/// Slack's Block Kit, as documented: a header (plain_text ≤ 150), sections (mrkdwn ≤ 3000,
/// ≤ 10 fields of ≤ 2000), an actions block whose button opens `link`, and `text`.
fn check_slack(body: &Value, link_prefix: &str) -> String {
    let text = body["text"].as_str().expect("text fallback");
    assert!(!text.is_empty() && text.chars().count() <= 3000);
    let blocks = body["blocks"].as_array().expect("blocks");
    assert!(!blocks.is_empty() && blocks.len() <= 50);
    assert_eq!(blocks[0]["type"], "header");
    assert_eq!(blocks[0]["text"]["type"], "plain_text");
    assert!(chars(&blocks[0]["text"]["text"]) <= 150);
    let mut all = String::new();
    for b in blocks {
        match b["type"].as_str().unwrap() {
            "header" => all.push_str(b["text"]["text"].as_str().unwrap()),
            "section" => {
                if let Some(fields) = b["fields"].as_array() {
                    assert!(!fields.is_empty() && fields.len() <= 10, "{b}");
                    for f in fields {
                        assert_eq!(f["type"], "mrkdwn");
                        assert!(chars(&f["text"]) <= 2000);
                        all.push_str(f["text"].as_str().unwrap());
                    }
                } else {
                    assert_eq!(b["text"]["type"], "mrkdwn", "{b}");
                    assert!(
                        chars(&b["text"]["text"]) <= 3000,
                        "{}",
                        chars(&b["text"]["text"])
                    );
                    all.push_str(b["text"]["text"].as_str().unwrap());
                }
            }
            "actions" => {
                let button = &b["elements"][0];
                assert_eq!(button["type"], "button");
                assert_eq!(button["text"]["type"], "plain_text");
                assert!(chars(&button["text"]["text"]) <= 75);
                assert!(
                    button["url"].as_str().unwrap().starts_with(link_prefix),
                    "{b}"
                );
            }
            other => panic!("unexpected block {other}"),
        }
    }
    assert_eq!(blocks.last().unwrap()["type"], "actions");
    all
}

/// Discord's embed, as documented: title ≤ 256, description ≤ 4096, ≤ 25 fields (name ≤ 256,
/// value ≤ 1024), footer ≤ 2048, 6000 in all; an integer color, an ISO 8601 timestamp.
fn check_discord(body: &Value, link_prefix: &str) -> String {
    assert_eq!(body["allowed_mentions"]["parse"], serde_json::json!([]));
    let embeds = body["embeds"].as_array().expect("embeds");
    assert_eq!(embeds.len(), 1);
    let e = &embeds[0];
    let mut total = chars(&e["title"]) + chars(&e["footer"]["text"]);
    assert!(chars(&e["title"]) <= 256);
    assert!(chars(&e["footer"]["text"]) <= 2048);
    assert!(e["color"].is_u64());
    assert!(e["url"].as_str().unwrap().starts_with(link_prefix));
    chrono::DateTime::parse_from_rfc3339(e["timestamp"].as_str().unwrap()).unwrap();
    let mut all = e["title"].as_str().unwrap().to_string();
    if !e["description"].is_null() {
        assert!(chars(&e["description"]) <= 4096);
        total += chars(&e["description"]);
        all.push_str(e["description"].as_str().unwrap());
    }
    let fields = e["fields"].as_array().unwrap();
    assert!(fields.len() <= 25);
    for f in fields {
        assert!(chars(&f["name"]) <= 256 && chars(&f["value"]) <= 1024);
        assert!(f["inline"].is_boolean());
        total += chars(&f["name"]) + chars(&f["value"]);
        all.push_str(f["value"].as_str().unwrap());
    }
    assert!(total <= 6000, "{total}");
    all
}

/// Teams' Adaptive Card message, as documented: type message, one attachment of content type
/// application/vnd.microsoft.card.adaptive, an AdaptiveCard 1.4 with TextBlocks, a FactSet,
/// RichTextBlocks of TextRuns and an Action.OpenUrl; under 28 KB.
fn check_teams(body: &Value, link_prefix: &str) -> String {
    assert_eq!(body["type"], "message");
    let attachments = body["attachments"].as_array().unwrap();
    assert_eq!(attachments.len(), 1);
    let a = &attachments[0];
    assert_eq!(a["contentType"], "application/vnd.microsoft.card.adaptive");
    let card = &a["content"];
    assert_eq!(card["type"], "AdaptiveCard");
    assert_eq!(card["version"], "1.4");
    let items = card["body"].as_array().unwrap();
    // the title is a TextRun: Teams never reads it as markdown
    assert_eq!(items[0]["type"], "RichTextBlock");
    assert_eq!(items[0]["inlines"][0]["weight"], "Bolder");
    let mut all = String::new();
    let mut facts = 0;
    for i in items {
        match i["type"].as_str().unwrap() {
            "TextBlock" => all.push_str(i["text"].as_str().unwrap()),
            "FactSet" => {
                for f in i["facts"].as_array().unwrap() {
                    assert!(f["title"].is_string() && f["value"].is_string());
                    all.push_str(f["value"].as_str().unwrap());
                    facts += 1;
                }
            }
            "RichTextBlock" => {
                for r in i["inlines"].as_array().unwrap() {
                    assert_eq!(r["type"], "TextRun");
                    all.push_str(r["text"].as_str().unwrap());
                }
            }
            other => panic!("unexpected element {other}"),
        }
    }
    assert!(facts >= 2, "outcome and environment at least");
    let action = &card["actions"][0];
    assert_eq!(action["type"], "Action.OpenUrl");
    assert!(action["url"].as_str().unwrap().starts_with(link_prefix));
    assert!(serde_json::to_string(body).unwrap().len() < 28 * 1024);
    all
}

#[test]
fn each_chat_service_gets_its_own_format_within_its_limits() {
    let (base, seen) = receiver();
    let tables = format!(
        r#"[[notify]]
kind = "slack"
url_env = "FERRY_TEST_SLACK_URL"
events = ["deploy.succeeded", "deploy.failed"]

[[notify]]
kind = "discord"
url = "{base}/discord"
events = ["deploy.succeeded", "deploy.failed"]

[[notify]]
kind = "teams"
url = "{base}/teams"
events = ["deploy.succeeded", "deploy.failed"]
"#
    );
    let mut s = Sandbox::with(
        &[Rel("v1.0.0", GOOD), Rel("v1.1.0", HUGE)],
        Options {
            extra_app: RELEASE,
            tables: Box::leak(tables.into_boxed_str()),
            ..Options::default()
        },
    );
    s.serve_env
        .push(("FERRY_TEST_SLACK_URL".into(), format!("{base}/slack")));
    s.serve();
    s.deploy_ok("staging", "v1.0.0");
    let run = s.ferry(&["deploy", "staging", "v1.1.0"]);
    assert_eq!(run.code(), 1, "{run}");

    let all_six = eventually(Duration::from_secs(30), || seen.lock().unwrap().len() >= 6);
    let got = seen.lock().unwrap().clone();
    assert!(all_six, "{got:?}\n{}", s.serve_log());
    assert_eq!(got.len(), 6, "{got:?}");
    let link = format!("{}/", s.api);
    for (path, check) in [
        ("/slack", check_slack as fn(&Value, &str) -> String),
        ("/discord", check_discord),
        ("/teams", check_teams),
    ] {
        let bodies: Vec<&Value> = got
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, b)| b)
            .collect();
        assert_eq!(bodies.len(), 2, "{path}: {bodies:?}");
        // in order: the success, then the failure
        let ok = check(bodies[0], &link);
        assert!(
            ok.contains("sample v1.0.0") && ok.contains("is live on staging"),
            "{path}: {ok}"
        );
        assert!(
            ok.contains("succeeded") && ok.contains("tester"),
            "{path}: {ok}"
        );
        let failed = check(bodies[1], &link);
        assert!(
            failed.contains("sample v1.1.0 failed on staging"),
            "{path}: {failed}"
        );
        assert!(failed.contains("release"), "{path}");
        assert!(
            failed.contains("THE LAST LINE"),
            "{path}: the output's end is kept"
        );
        assert!(
            !failed.contains("line 0 "),
            "{path}: the output's start is cut"
        );
        if path == "/slack" {
            assert!(
                !failed.contains("<script>") && failed.contains("&lt;script&gt;"),
                "{failed}"
            );
        }
    }
}

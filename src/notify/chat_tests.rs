use serde_json::Value;

use super::*;
use crate::lifecycle::StepState;
use crate::notify::Message;
use crate::store::{Deployment, DeploymentState, Step};

/// A deployment message for `event`; `failed`: the `release` step failed with `output`.
pub(crate) fn message(event: &'static str, output: Option<&str>) -> Message {
    let state = match event {
        "deploy.failed" => DeploymentState::Failed,
        "rolled_back" => DeploymentState::RolledBack,
        "deploy.started" => DeploymentState::Running,
        _ => DeploymentState::Succeeded,
    };
    let d = Deployment {
        id: 12,
        environment: "staging".into(),
        kind: "deploy".into(),
        git_ref: "v1.1.0".into(),
        commit_sha: Some("0123456789abcdef0123456789abcdef01234567".into()),
        version: Some("v1.1.0".into()),
        release: Some("v1.1.0-0123456".into()),
        digest: None,
        state,
        step: None,
        reason: output.map(|_| "release command failed: exit status 1 <b>&</b>".into()),
        triggered_by: "qa_lead".into(),
        created_at: "2026-12-02T12:00:00Z".into(),
        finished_at: Some("2026-12-02T12:00:42.5Z".into()),
        note: None,
        forced: false,
        restore_data: false,
        approved_by: None,
        approved_at: None,
        triggered_token: None,
        approved_token: None,
    };
    let step = |name: &str, state, out: &str| Step {
        name: name.into(),
        state,
        started_at: "2026-12-02T12:00:01Z".into(),
        finished_at: Some("2026-12-02T12:00:03Z".into()),
        output: out.into(),
        app_output: None,
    };
    let mut steps = vec![step("build", StepState::Ok, "built")];
    if let Some(out) = output {
        steps.push(step("release", StepState::Failed, out));
    } else {
        steps.push(step("health", StepState::Ok, "healthy"));
    }
    Message {
        event,
        app: "shop".into(),
        environment: "staging".into(),
        deployment: Some(d),
        steps,
        probes: Vec::new(),
        detail: None,
        who: Some("qa_lead".into()),
        link: Some("https://ferry.example.com/deployments/12".into()),
        at: "2026-12-02T12:00:42Z".into(),
    }
}

/// Output far past every limit, hostile to each format, ending with a line to find.
pub(crate) fn huge_output() -> String {
    let mut out = String::new();
    for i in 0..3000 {
        out.push_str(&format!(
            "line {i} <script>alert(1)</script> & ``` @everyone **bold** [x](javascript:1) é\n"
        ));
    }
    out.push_str("THE LAST LINE");
    out
}

fn chars(v: &Value) -> usize {
    v.as_str().expect("a string").chars().count()
}

#[test]
fn slack_blocks_have_the_documented_shape_and_limits() {
    let body = slack_body(&message("deploy.failed", Some(&huge_output())));
    assert!(body["text"].as_str().unwrap().contains("failed on staging"));
    let blocks = body["blocks"].as_array().unwrap();
    assert!(blocks.len() <= 50);
    assert_eq!(blocks[0]["type"], "header");
    assert_eq!(blocks[0]["text"]["type"], "plain_text");
    assert!(chars(&blocks[0]["text"]["text"]) <= 150);
    let fields = blocks[1]["fields"].as_array().unwrap();
    assert!(!fields.is_empty() && fields.len() <= 10);
    let names: Vec<&str> = fields.iter().map(|f| f["text"].as_str().unwrap()).collect();
    for want in [
        "*Outcome*\nfailed",
        "*Version*\nv1.1.0 (0123456)",
        "*Environment*\nstaging",
        "*Who*\nqa_lead",
        "*Duration*\n42.5s",
    ] {
        assert!(names.contains(&want), "{want} in {names:?}");
    }
    for f in fields {
        assert_eq!(f["verbatim"], true, "no auto-links from outside text");
    }
    for b in blocks {
        assert!(b["type"].is_string(), "{b}");
        if b["type"] == "section"
            && let Some(t) = b["text"]["text"].as_str()
        {
            assert!(t.chars().count() <= 3000, "{}", t.chars().count());
            assert_eq!(b["text"]["type"], "mrkdwn");
            assert_eq!(b["text"]["verbatim"], true);
        }
    }
    let all = serde_json::to_string(&body).unwrap();
    // Slack's control characters never reach it raw from the app or the reason
    assert!(!all.contains("<script>") && !all.contains("<b>"), "{all}");
    assert!(all.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp;"));
    assert!(all.contains("THE LAST LINE"), "the output keeps its end");
    let reason = blocks
        .iter()
        .find(|b| {
            b["text"]["text"]
                .as_str()
                .is_some_and(|t| t.starts_with("*Reason:*"))
        })
        .unwrap();
    assert!(
        reason["text"]["text"]
            .as_str()
            .unwrap()
            .contains("*Failing step:* `release`")
    );
    let actions = blocks.last().unwrap();
    assert_eq!(actions["type"], "actions");
    assert_eq!(actions["elements"][0]["type"], "button");
    assert_eq!(
        actions["elements"][0]["url"],
        "https://ferry.example.com/deployments/12"
    );
    assert!(chars(&actions["elements"][0]["text"]["text"]) <= 75);
}

#[test]
fn the_output_cannot_close_its_code_block() {
    let body = slack_body(&message("deploy.failed", Some("a\n```\n*not bold*\n```")));
    let blocks = body["blocks"].as_array().unwrap();
    let out = blocks
        .iter()
        .filter_map(|b| b["text"]["text"].as_str())
        .find(|t| t.contains("Output of release"))
        .unwrap();
    assert_eq!(out.matches("```").count(), 2, "{out}");
    assert!(out.ends_with("```"));
}

#[test]
fn a_success_has_no_reason_and_no_output() {
    let body = slack_body(&message("deploy.succeeded", None));
    let all = serde_json::to_string(&body).unwrap();
    assert!(all.contains("is live on staging"), "{all}");
    assert!(!all.contains("Reason") && !all.contains("```"), "{all}");
    let d = discord_body(&message("deploy.succeeded", None));
    assert_eq!(d["embeds"][0]["color"], 0x2E_A0_43);
    assert!(d["embeds"][0].get("description").is_none());
}

#[test]
fn discord_embed_has_the_documented_shape_and_limits() {
    let body = discord_body(&message("deploy.failed", Some(&huge_output())));
    assert_eq!(body["allowed_mentions"]["parse"], serde_json::json!([]));
    let embeds = body["embeds"].as_array().unwrap();
    assert_eq!(embeds.len(), 1);
    let e = &embeds[0];
    assert!(chars(&e["title"]) <= 256);
    assert!(chars(&e["description"]) <= 4096);
    assert_eq!(e["url"], "https://ferry.example.com/deployments/12");
    assert_eq!(e["color"], 0xD1_24_2F);
    assert_eq!(e["timestamp"], "2026-12-02T12:00:42Z");
    assert!(
        e["footer"]["text"]
            .as_str()
            .unwrap()
            .contains("deployment 12")
    );
    let fields = e["fields"].as_array().unwrap();
    assert!(fields.len() <= 25);
    let mut total = chars(&e["title"]) + chars(&e["description"]) + chars(&e["footer"]["text"]);
    for f in fields {
        assert!(chars(&f["name"]) <= 256 && chars(&f["value"]) <= 1024);
        assert!(f["inline"].is_boolean());
        total += chars(&f["name"]) + chars(&f["value"]);
    }
    assert!(total <= 6000, "{total}");
    let d = e["description"].as_str().unwrap();
    assert!(d.contains("THE LAST LINE"), "{d}");
    assert!(d.contains("**Failing step:** `release`"));
    // the reason is text, not markdown
    assert!(d.contains("**Reason:** release command failed"));
    assert!(
        fields.iter().any(|f| f["value"] == "qa\\_lead"),
        "{fields:?}"
    );
}

#[test]
fn teams_card_has_the_documented_shape_and_stays_small() {
    let body = teams_body(&message("deploy.failed", Some(&huge_output())));
    assert_eq!(body["type"], "message");
    let a = &body["attachments"][0];
    assert_eq!(a["contentType"], "application/vnd.microsoft.card.adaptive");
    assert!(a["contentUrl"].is_null());
    let card = &a["content"];
    assert_eq!(card["type"], "AdaptiveCard");
    assert_eq!(card["version"], "1.4");
    assert_eq!(
        card["$schema"],
        "http://adaptivecards.io/schemas/adaptive-card.json"
    );
    let items = card["body"].as_array().unwrap();
    assert_eq!(items[0]["type"], "RichTextBlock");
    assert_eq!(items[0]["inlines"][0]["color"], "Attention");
    let facts = items.iter().find(|i| i["type"] == "FactSet").unwrap()["facts"]
        .as_array()
        .unwrap()
        .clone();
    assert!(
        facts
            .iter()
            .any(|f| f["title"] == "Environment" && f["value"] == "staging")
    );
    for i in items {
        if i["type"] == "RichTextBlock" {
            for run in i["inlines"].as_array().unwrap() {
                assert_eq!(run["type"], "TextRun");
                assert!(run["text"].is_string());
            }
        }
    }
    let action = &card["actions"][0];
    assert_eq!(action["type"], "Action.OpenUrl");
    assert_eq!(action["url"], "https://ferry.example.com/deployments/12");
    let text = serde_json::to_string(&body).unwrap();
    assert!(text.len() < 20_000, "{}", text.len());
    assert!(text.contains("THE LAST LINE"));
}

#[test]
fn maintenance_and_test_messages_have_every_format() {
    let mut m = message("maintenance.on", None);
    m.deployment = None;
    m.steps.clear();
    m.detail = Some("Back at <10:00> & soon".into());
    let s = slack_body(&m);
    let all = serde_json::to_string(&s).unwrap();
    assert!(all.contains("is in maintenance"), "{all}");
    assert!(all.contains("Back at &lt;10:00&gt; &amp; soon"), "{all}");
    assert!(
        discord_body(&m)["embeds"][0]["title"]
            .as_str()
            .unwrap()
            .contains("maintenance")
    );
    assert_eq!(
        teams_body(&m)["attachments"][0]["content"]["body"][0]["inlines"][0]["color"],
        "Warning"
    );
}

#[test]
fn discord_markdown_is_escaped_outside_code() {
    assert_eq!(
        discord_escape("> *hi* [x](y) - a_b ~~s~~ `c` |sp|"),
        "\\> \\*hi\\* \\[x\\](y) - a\\_b \\~\\~s\\~\\~ \\`c\\` \\|sp\\|"
    );
    assert_eq!(discord_escape("# title\n- item"), "\\# title\n\\- item");
}

#[test]
fn a_link_that_is_not_http_is_left_out() {
    let mut m = message("deploy.succeeded", None);
    m.link = Some("javascript:alert(1)".into());
    assert!(
        !serde_json::to_string(&slack_body(&m))
            .unwrap()
            .contains("javascript")
    );
    assert!(discord_body(&m)["embeds"][0].get("url").is_none());
    assert!(
        teams_body(&m)["attachments"][0]["content"]
            .get("actions")
            .is_none()
    );
}

#[test]
fn names_from_outside_stay_text_in_every_format() {
    let hostile = "<!channel> @everyone [x](http://e) *b*";
    let mut m = message("deploy.succeeded", None);
    let d = m.deployment.as_mut().unwrap();
    d.version = Some(hostile.into());
    d.triggered_by = hostile.into();
    m.who = Some(hostile.into());

    let slack = serde_json::to_string(&slack_body(&m)).unwrap();
    // Slack reads a mention or a link only between < and >
    assert!(!slack.contains('<') && !slack.contains('>'), "{slack}");
    assert!(slack.contains("&lt;!channel&gt; @everyone"), "{slack}");

    let discord = discord_body(&m);
    assert_eq!(discord["allowed_mentions"]["parse"], serde_json::json!([]));
    let e = &discord["embeds"][0];
    for text in [
        e["title"].as_str().unwrap().to_string(),
        e["fields"].to_string(),
    ] {
        assert!(!text.contains("[x]") && !text.contains(" *b*"), "{text}");
    }
    assert!(
        e["title"]
            .as_str()
            .unwrap()
            .contains("\\[x\\](http://e) \\*b\\*")
    );

    // Teams renders markdown in TextBlocks and FactSets: outside text is only in TextRuns
    let teams = teams_body(&m);
    let card = &teams["attachments"][0]["content"];
    let mut runs = String::new();
    for item in card["body"].as_array().unwrap() {
        match item["type"].as_str().unwrap() {
            "RichTextBlock" => {
                for r in item["inlines"].as_array().unwrap() {
                    runs.push_str(r["text"].as_str().unwrap());
                }
            }
            _ => assert!(!item.to_string().contains("channel"), "{item}"),
        }
    }
    assert!(
        runs.contains(&format!("Version: {hostile} (0123456)")),
        "{runs}"
    );
    assert!(runs.contains(&format!("Who: {hostile}")), "{runs}");
}

#[test]
fn a_manual_rollback_is_not_a_failure() {
    let mut m = message("rolled_back", None);
    let d = m.deployment.as_mut().unwrap();
    d.kind = "rollback".into();
    d.state = DeploymentState::Succeeded;
    let c = card(&m);
    assert_eq!(c.outcome, Outcome::Warning);
    assert!(
        c.title.contains("staging rolled back to v1.1.0"),
        "{}",
        c.title
    );
    assert!(c.output.is_empty() && c.step.is_none());
}

#[test]
fn terminal_junk_is_dropped_and_teams_stays_under_its_size() {
    let junk =
        "\x1b[31mred\x1b[0m \0\x07 \x1b]8;;http://e\x07link\x1b]8;;\x1b\\ 😀\n".repeat(20_000);
    let m = message("deploy.failed", Some(&junk));
    for body in [slack_body(&m), discord_body(&m), teams_body(&m)] {
        let text = serde_json::to_string(&body).unwrap();
        assert!(
            !text.contains("\\u001b") && !text.contains("\\u0000"),
            "{}",
            &text[..500]
        );
        assert!(
            text.contains("red \u{fffd}\u{fffd} link 😀"),
            "{}",
            &text[..2000]
        );
    }
    let teams = serde_json::to_string(&teams_body(&m)).unwrap();
    assert!(teams.len() <= 20_000, "{}", teams.len());
    // a reason full of control characters too
    let mut m = message("deploy.failed", Some("x"));
    m.deployment.as_mut().unwrap().reason = Some("\0".repeat(5000));
    assert!(serde_json::to_string(&teams_body(&m)).unwrap().len() <= 20_000);
}

#[test]
fn cutting_never_splits_an_escape() {
    let s = head_escaped(&"&".repeat(100), 22, slack_escape);
    assert!(s.chars().count() <= 22, "{s}");
    assert!(s.ends_with("&amp;…") || s.ends_with("&amp;"), "{s}");
    let d = head_escaped(&"_".repeat(100), 9, discord_escape);
    assert!(
        !d.trim_end_matches('…').ends_with('\\') || d.trim_end_matches('…').ends_with("\\_"),
        "{d}"
    );
}

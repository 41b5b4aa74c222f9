//! Chat messages: the generic JSON webhook and each chat service's own format, from one
//! [`Card`] of facts.
//!
//! - Slack: Block Kit (`header`, a `section` of mrkdwn fields, the reason and the failing
//!   output, an `actions` button to the dashboard) with `text` as the notification fallback.
//!   `&`, `<` and `>` are escaped in all mrkdwn; header ≤ 150 characters, section text ≤ 3000,
//!   ≤ 10 fields of ≤ 2000, button text ≤ 75.
//! - Discord: one embed (title, description, url, color by outcome, inline fields, timestamp,
//!   footer) and `allowed_mentions` empty, so an `@everyone` in the app's output pings nobody.
//!   Title ≤ 256, description ≤ 4096, ≤ 25 fields (name ≤ 256, value ≤ 1024), footer ≤ 2048,
//!   6000 in all.
//! - Teams: a `message` whose attachment is an Adaptive Card 1.4 (a TextBlock title, a FactSet,
//!   the reason and the output as RichTextBlocks, which Teams never reads as markdown, and an
//!   Action.OpenUrl). The whole body stays under 20 KB (Teams refuses more than 28 KB).
//!
//! The app's output goes in a code block that it cannot close (a run of three backticks in it
//! is broken by a zero-width space) and is cut from its start, so its last lines stay.

use serde_json::{Value, json};

use super::Message;
use super::report::{duration, version};
use crate::events::tail;
use crate::store::DeploymentState;

/// ferry's own JSON (see [`Message::payload`]), for the generic webhook.
pub fn webhook_body(msg: &Message) -> Value {
    msg.payload()
}

/// What every chat format shows, before each service's escaping and limits.
#[derive(Debug, Clone, PartialEq)]
pub struct Card {
    /// One line: an emoji, the app, the version and what happened where (no reason).
    pub title: String,
    pub outcome: Outcome,
    /// (name, value), in order: outcome, version, environment, who, duration…
    pub facts: Vec<(&'static str, String)>,
    /// Why it failed, was refused or rolled back; the maintenance message.
    pub reason: Option<String>,
    /// The step whose failure decided the outcome.
    pub step: Option<String>,
    /// The failing step's output, then the new instance's own last lines, if any.
    pub output: Vec<(String, String)>,
    pub link: Option<String>,
    /// RFC 3339.
    pub at: String,
    /// `ferry · app · deployment 12`.
    pub footer: String,
}

/// How it went, for the color and the first fact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Good,
    Bad,
    Warning,
    Info,
}

impl Outcome {
    /// Discord's embed color (0xRRGGBB).
    fn rgb(self) -> u32 {
        match self {
            Outcome::Good => 0x2E_A0_43,
            Outcome::Bad => 0xD1_24_2F,
            Outcome::Warning => 0xD2_99_22,
            Outcome::Info => 0x3B_82_F6,
        }
    }

    /// An Adaptive Card TextBlock color.
    fn card_color(self) -> &'static str {
        match self {
            Outcome::Good => "Good",
            Outcome::Bad => "Attention",
            Outcome::Warning => "Warning",
            Outcome::Info => "Accent",
        }
    }
}

/// The facts of `msg`.
pub fn card(msg: &Message) -> Card {
    let app = &msg.app;
    let env = &msg.environment;
    let (said, outcome) = match msg.event {
        "deploy.started" => ("deploying", Outcome::Info),
        "deploy.succeeded" => ("succeeded", Outcome::Good),
        "deploy.failed" => ("failed", Outcome::Bad),
        "deploy.refused" => ("refused", Outcome::Warning),
        // a manual rollback is someone's choice, not a failure
        "rolled_back"
            if msg
                .deployment
                .as_ref()
                .is_some_and(|d| d.kind == "rollback") =>
        {
            ("rolled back", Outcome::Warning)
        }
        "rolled_back" => ("rolled back", Outcome::Bad),
        "approval.waiting" => ("waiting for approval", Outcome::Warning),
        "maintenance.on" => ("maintenance on", Outcome::Warning),
        "maintenance.off" => ("maintenance off", Outcome::Good),
        "test" => ("test", Outcome::Info),
        other => (other, Outcome::Info),
    };
    let mut facts = vec![("Outcome", said.to_string())];
    let mut footer = format!("ferry · {app}");
    let Some(d) = &msg.deployment else {
        facts.push(("Environment", env.clone()));
        if let Some(w) = &msg.who {
            facts.push(("Who", w.clone()));
        }
        let title = match msg.event {
            "maintenance.on" => format!("🚧 {app} on {env} is in maintenance"),
            "maintenance.off" => format!("🟢 {app} on {env} is out of maintenance"),
            "test" => format!("🧪 A test message from ferry for {app}"),
            other => format!("{other}: {app} on {env}"),
        };
        return Card {
            title,
            outcome,
            facts,
            reason: msg.detail.clone(),
            step: None,
            output: Vec::new(),
            link: msg.link.clone(),
            at: msg.at.clone(),
            footer,
        };
    };
    let v = version(d);
    let restart = d.kind == "restart";
    let title = match msg.event {
        "deploy.started" if restart => format!("🔄 {app} {v} is restarting on {env}"),
        "deploy.succeeded" if restart => format!("🔄 {app} {v} restarted on {env}"),
        "deploy.started" => format!("🚀 {app} {v} is deploying to {env}"),
        "deploy.succeeded" => format!("✅ {app} {v} is live on {env}"),
        "deploy.failed" => format!("❌ {app} {v} failed on {env}"),
        "deploy.refused" => format!("⛔ {app} {v} was refused for {env}"),
        "rolled_back" if d.kind == "rollback" => format!("↩️ {env} rolled back to {v}"),
        "rolled_back" => format!("↩️ {app} {v} was rolled back on {env}"),
        "approval.waiting" => format!("✋ {app} {v} to {env} waits for approval"),
        other => format!("{other}: {app} {v} on {env}"),
    };
    let commit = d
        .commit_sha
        .as_deref()
        .map(|c| format!(" ({})", &c[..7.min(c.len())]))
        .unwrap_or_default();
    facts.push(("Version", format!("{v}{commit}")));
    facts.push(("Environment", env.clone()));
    facts.push(("Who", d.by()));
    if let Some(s) = duration(d) {
        facts.push(("Duration", format!("{s:.1}s")));
    }
    if msg.event == "approval.waiting" {
        facts.push(("Approve", format!("ferry approve {}", d.id)));
    }
    footer.push_str(&format!(" · deployment {}", d.id));
    let failed = matches!(msg.event, "deploy.failed" | "deploy.refused")
        || d.state == DeploymentState::RolledBack;
    let failing = msg.failing_step().filter(|_| failed);
    let mut output = Vec::new();
    if let Some(s) = failing {
        if !s.output.trim().is_empty() {
            output.push((format!("Output of {}", s.name), s.output.clone()));
        }
        if let Some(lines) = s.app_output.as_deref().filter(|l| !l.trim().is_empty()) {
            output.push(("The app's last lines".to_string(), lines.to_string()));
        }
    }
    Card {
        title,
        outcome,
        facts,
        reason: d
            .reason
            .clone()
            .filter(|_| failed || msg.event == "rolled_back"),
        step: failing.map(|s| s.name.clone()),
        output,
        link: msg.link.clone(),
        at: msg.at.clone(),
        footer,
    }
}

/// `text` cut to `max` characters from its start, ending with "…" when cut.
fn head(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let cut: String = text.chars().take(max.saturating_sub(1)).collect();
    format!("{cut}…")
}

/// The app's output as a code block of at most `max` characters after `escape`: its last
/// lines, with any run of three backticks broken so it cannot close the block.
fn code(text: &str, max: usize, escape: fn(&str) -> String) -> String {
    let safe = text.trim_end().replace("```", "``\u{200b}`");
    // "```\n" + "…\n" + body + "\n```"
    let room = max.saturating_sub(12);
    let mut budget = room;
    let body = loop {
        let cut = tail(&safe, budget);
        let mut body = escape(&cut);
        if cut.len() < safe.len() {
            body = format!("…\n{body}");
        }
        let n = body.chars().count();
        if n <= room || budget == 0 {
            break body;
        }
        budget = budget.saturating_sub(n - room);
    };
    format!("```\n{body}\n```")
}

/// No escaping (Discord shows a code block's text as it is).
fn verbatim(text: &str) -> String {
    text.to_string()
}

/// Slack's mrkdwn escaping: only `&`, `<` and `>` are control characters.
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Only http(s) links become buttons and URLs.
fn http_link(link: &Option<String>) -> Option<&str> {
    link.as_deref()
        .filter(|l| l.starts_with("https://") || l.starts_with("http://"))
}

/// A Slack incoming webhook's body: Block Kit blocks and the `text` fallback.
pub fn slack_body(msg: &Message) -> Value {
    let c = card(msg);
    let mut blocks = vec![json!({
        "type": "header",
        "text": {"type": "plain_text", "text": head(&slack_escape(&c.title), 150), "emoji": true},
    })];
    let fields: Vec<Value> = c
        .facts
        .iter()
        .take(10)
        .map(|(name, value)| {
            json!({"type": "mrkdwn", "text": head(&format!("*{name}*\n{}", slack_escape(value)), 2000)})
        })
        .collect();
    blocks.push(json!({"type": "section", "fields": fields}));
    let mut why = Vec::new();
    if let Some(r) = &c.reason {
        why.push(format!("*Reason:* {}", slack_escape(r)));
    }
    if let Some(s) = &c.step {
        why.push(format!("*Failing step:* `{}`", slack_escape(s)));
    }
    if !why.is_empty() {
        blocks.push(json!({
            "type": "section",
            "text": {"type": "mrkdwn", "text": head(&why.join("\n"), 3000)},
        }));
    }
    for (name, text) in &c.output {
        let label = format!("*{}*\n", slack_escape(name));
        let room = 3000 - label.chars().count();
        blocks.push(json!({
            "type": "section",
            "text": {"type": "mrkdwn", "text": format!("{label}{}", code(text, room, slack_escape))},
        }));
    }
    if let Some(url) = http_link(&c.link).filter(|u| u.len() <= 3000) {
        blocks.push(json!({
            "type": "actions",
            "elements": [{
                "type": "button",
                "text": {"type": "plain_text", "text": "Open in ferry"},
                "url": url,
                "action_id": "ferry-open",
            }],
        }));
    }
    json!({
        "text": head(&slack_escape(&msg.text()), 3000),
        "blocks": blocks,
    })
}

/// Discord's markdown escaping for text outside a code block: the inline markers anywhere,
/// the block markers (quote, heading, list) at a line's start.
fn discord_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut line_start = true;
    for ch in text.chars() {
        let marker = matches!(ch, '\\' | '*' | '_' | '~' | '`' | '|' | '[' | ']')
            || (line_start && matches!(ch, '>' | '#' | '-'));
        if marker {
            out.push('\\');
        }
        out.push(ch);
        line_start = ch == '\n' || (line_start && ch == ' ');
    }
    out
}

/// A Discord webhook's body: one embed, and no mentions parsed.
pub fn discord_body(msg: &Message) -> Value {
    let c = card(msg);
    let title = head(&discord_escape(&c.title), 256);
    let footer = head(&c.footer, 2048);
    let fields: Vec<Value> = c
        .facts
        .iter()
        .take(25)
        .map(|(name, value)| {
            json!({"name": head(name, 256), "value": head(&discord_escape(value), 1024), "inline": true})
        })
        .collect();
    let used: usize = title.chars().count()
        + footer.chars().count()
        + c.facts
            .iter()
            .take(25)
            .map(|(n, v)| n.chars().count() + head(&discord_escape(v), 1024).chars().count())
            .sum::<usize>();
    // the description gets what the 6000 in all leaves, at most 4096
    let mut room = 4096.min(6000usize.saturating_sub(used + 16));
    let mut description = String::new();
    if let Some(r) = &c.reason {
        description.push_str(&head(&format!("**Reason:** {}", discord_escape(r)), room));
    }
    if let Some(s) = &c.step {
        description.push_str(&format!("\n**Failing step:** `{}`", s.replace('`', "'")));
    }
    room = room.saturating_sub(description.chars().count());
    for (name, text) in &c.output {
        let label = format!("\n**{}**\n", discord_escape(name));
        let need = label.chars().count() + 20;
        if room <= need {
            break;
        }
        let part = format!(
            "{label}{}",
            code(text, room - label.chars().count(), verbatim)
        );
        room = room.saturating_sub(part.chars().count());
        description.push_str(&part);
    }
    let mut embed = json!({
        "title": title,
        "color": c.outcome.rgb(),
        "fields": fields,
        "footer": {"text": footer},
    });
    let description = head(description.trim_start(), 4096);
    if !description.is_empty() {
        embed["description"] = json!(description);
    }
    if let Some(url) = http_link(&c.link) {
        embed["url"] = json!(url);
    }
    if chrono::DateTime::parse_from_rfc3339(&c.at).is_ok() {
        embed["timestamp"] = json!(c.at);
    }
    json!({
        "allowed_mentions": {"parse": []},
        "embeds": [embed],
    })
}

/// Teams renders a subset of markdown in TextBlocks and facts (bold, italic, lists, links):
/// its markers are escaped with a backslash so a branch or a name stays text.
fn teams_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut line_start = true;
    for ch in text.chars() {
        let marker = matches!(ch, '\\' | '*' | '_' | '~' | '`' | '[' | ']' | '<' | '>')
            || (line_start && matches!(ch, '-' | '+' | '#'));
        if marker {
            out.push('\\');
        }
        out.push(ch);
        line_start = ch == '\n' || (line_start && ch == ' ');
    }
    out
}

/// The most of the app's output a Teams card carries (the body must stay under 28 KB).
const TEAMS_OUTPUT: usize = 6000;

/// A Teams incoming webhook's body: a message with one Adaptive Card 1.4.
pub fn teams_body(msg: &Message) -> Value {
    let c = card(msg);
    let mut body = vec![
        json!({
            "type": "TextBlock",
            "text": head(&teams_escape(&c.title), 300),
            "size": "Large",
            "weight": "Bolder",
            "color": c.outcome.card_color(),
            "wrap": true,
        }),
        json!({
            "type": "FactSet",
            "facts": c.facts.iter().map(|(t, v)| json!({"title": t, "value": head(&teams_escape(v), 500)})).collect::<Vec<_>>(),
        }),
    ];
    // RichTextBlock: Teams shows its TextRuns as they are, never as markdown
    let run = |text: String, mono: bool| {
        let mut r = json!({"type": "TextRun", "text": text});
        if mono {
            r["fontType"] = json!("Monospace");
        }
        r
    };
    if let Some(r) = &c.reason {
        body.push(json!({
            "type": "RichTextBlock",
            "inlines": [run("Reason: ".into(), false), run(head(r, 2000), false)],
        }));
    }
    if let Some(s) = &c.step {
        body.push(json!({
            "type": "RichTextBlock",
            "inlines": [run("Failing step: ".into(), false), run(head(s, 200), true)],
        }));
    }
    for (name, text) in &c.output {
        body.push(
            json!({"type": "TextBlock", "text": head(name, 200), "weight": "Bolder", "wrap": true}),
        );
        let mut cut = tail(text.trim_end(), TEAMS_OUTPUT / c.output.len());
        if cut.len() < text.trim_end().len() {
            cut = format!("…\n{cut}");
        }
        body.push(json!({"type": "RichTextBlock", "inlines": [run(cut, true)]}));
    }
    body.push(json!({"type": "TextBlock", "text": head(&teams_escape(&c.footer), 300), "isSubtle": true, "size": "Small", "wrap": true}));
    let mut content = json!({
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": body,
        "msteams": {"width": "Full"},
    });
    if let Some(url) = http_link(&c.link) {
        content["actions"] =
            json!([{"type": "Action.OpenUrl", "title": "Open in ferry", "url": url}]);
    }
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": content,
        }],
    })
}

#[cfg(test)]
#[path = "chat_tests.rs"]
pub(crate) mod tests;

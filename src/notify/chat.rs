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
//! - Teams: a `message` whose attachment is an Adaptive Card 1.4. Teams renders markdown in
//!   TextBlocks and facts, so whatever comes from outside ferry (a branch, a name, a reason,
//!   the output) goes in RichTextBlocks of TextRuns, which it shows as they are: the title, the
//!   version and who, the reason, the output. The FactSet holds ferry's own facts (outcome,
//!   environment, duration); an Action.OpenUrl opens the dashboard. The JSON stays under 20 KB
//!   (Teams refuses more than 28 KB): the output is cut until it does.
//!
//! Terminal escape sequences are dropped and other control characters shown as U+FFFD
//! everywhere (JSON spells each in six bytes; no chat shows them); text is cut before it is
//! escaped, so no entity or escape is split.
//!
//! The app's output goes in a code block that it cannot close (a run of three backticks in it
//! is broken by a zero-width space) and is cut from its start, so its last lines stay.

use serde_json::{Value, json};

use super::Message;
use super::report::{duration, version};
use crate::events::tail;

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
    // a failure (core's definition: a manual rollback is none), or a refusal: both say why
    let failed = msg.is_failure() || msg.event == "deploy.refused";
    let failing = msg.failing_step().filter(|_| failed);
    let mut output = Vec::new();
    if let Some(s) = failing {
        if !s.output.trim().is_empty() {
            output.push((format!("Output of {}", s.name), clean(&s.output)));
        }
        if let Some(lines) = s.app_output.as_deref().filter(|l| !l.trim().is_empty()) {
            output.push(("The app's last lines".to_string(), clean(lines)));
        }
    }
    Card {
        title,
        outcome,
        facts,
        reason: d
            .reason
            .as_deref()
            .filter(|_| failed || msg.event == "rolled_back")
            .map(clean),
        step: failing.map(|s| s.name.clone()),
        output,
        link: msg.link.clone(),
        at: msg.at.clone(),
        footer,
    }
}

/// `text` without terminal escape sequences (colors, cursor moves) and with every other control
/// character but newline and tab shown as U+FFFD: JSON would spell each as six bytes, and no
/// chat shows them.
fn clean(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(ch) = chars.next() {
        match ch {
            '\u{1b}' => match chars.next() {
                // CSI: parameters and intermediates up to a final byte in @..~
                Some('[') => {
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                // OSC (a title, a hyperlink): up to BEL or ESC \
                Some(']') => {
                    while let Some(c) = chars.next() {
                        if c == '\u{7}' {
                            break;
                        }
                        if c == '\u{1b}' {
                            chars.next_if_eq(&'\\');
                            break;
                        }
                    }
                }
                _ => {}
            },
            '\n' | '\t' => out.push(ch),
            c if c.is_control() => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// `raw` escaped by `escape` and at most `max` characters: cut before escaping (so no entity
/// or escape is split), then cut more while the escaped text is too long.
fn head_escaped(raw: &str, max: usize, escape: fn(&str) -> String) -> String {
    let mut budget = max;
    loop {
        let cut = head(raw, budget);
        let out = escape(&cut);
        let n = out.chars().count();
        if n <= max || budget == 0 {
            return out;
        }
        // escaping grows the text: shrink in proportion, by one at least
        budget = (budget * max / n).min(budget - 1);
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
        "text": {"type": "plain_text", "text": head_escaped(&c.title, 150, slack_escape), "emoji": true},
    })];
    let fields: Vec<Value> = c
        .facts
        .iter()
        .take(10)
        .map(|(name, value)| {
            let label = format!("*{name}*\n");
            let value = head_escaped(value, 2000 - label.chars().count(), slack_escape);
            json!({"type": "mrkdwn", "text": format!("{label}{value}"), "verbatim": true})
        })
        .collect();
    blocks.push(json!({"type": "section", "fields": fields}));
    let mut why = Vec::new();
    if let Some(r) = &c.reason {
        why.push(format!("*Reason:* {}", head_escaped(r, 2800, slack_escape)));
    }
    if let Some(s) = &c.step {
        why.push(format!("*Failing step:* `{}`", slack_escape(s)));
    }
    if !why.is_empty() {
        blocks.push(json!({
            "type": "section",
            "text": {"type": "mrkdwn", "text": why.join("\n"), "verbatim": true},
        }));
    }
    for (name, text) in &c.output {
        let label = format!("*{}*\n", slack_escape(name));
        let room = 3000 - label.chars().count();
        blocks.push(json!({
            "type": "section",
            "text": {
                "type": "mrkdwn",
                "text": format!("{label}{}", code(text, room, slack_escape)),
                "verbatim": true,
            },
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
        "text": head_escaped(&clean(&msg.text()), 3000, slack_escape),
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
    let title = head_escaped(&c.title, 256, discord_escape);
    let footer = head(&c.footer, 2048);
    let fields: Vec<Value> = c
        .facts
        .iter()
        .take(25)
        .map(|(name, value)| {
            json!({"name": head(name, 256), "value": head_escaped(value, 1024, discord_escape), "inline": true})
        })
        .collect();
    let used: usize = title.chars().count()
        + footer.chars().count()
        + c.facts
            .iter()
            .take(25)
            .map(|(n, v)| n.chars().count() + head_escaped(v, 1024, discord_escape).chars().count())
            .sum::<usize>();
    // the description gets what the 6000 in all leaves, at most 4096
    let mut room = 4096.min(6000usize.saturating_sub(used + 16));
    let mut description = String::new();
    if let Some(r) = &c.reason {
        let label = "**Reason:** ";
        let reason = head_escaped(r, room.saturating_sub(label.len()), discord_escape);
        description.push_str(&format!("{label}{reason}"));
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

/// The JSON size a Teams body stays under (Teams refuses more than 28 KB).
const TEAMS_MAX: usize = 20_000;

/// Facts whose values come from outside ferry (a branch, a name given to the API): Teams
/// renders markdown in a FactSet, so these go in a RichTextBlock instead.
const OUTSIDE_FACTS: &[&str] = &["Version", "Who"];

/// A Teams incoming webhook's body: a message with one Adaptive Card 1.4, its output cut until
/// the whole stays under [`TEAMS_MAX`] bytes.
pub fn teams_body(msg: &Message) -> Value {
    let c = card(msg);
    let mut budget = 8000;
    loop {
        let body = teams_card(&c, budget);
        let size = serde_json::to_string(&body).map_or(0, |t| t.len());
        if size <= TEAMS_MAX || budget == 0 {
            return body;
        }
        budget = budget.saturating_sub((size - TEAMS_MAX).max(budget / 4));
    }
}

/// A TextRun: Teams shows its text as it is, never as markdown.
fn run(text: &str) -> Value {
    json!({"type": "TextRun", "text": text})
}

/// The card with at most `budget` bytes of output.
fn teams_card(c: &Card, budget: usize) -> Value {
    let mut title = run(&head(&c.title, 300));
    title["size"] = json!("Large");
    title["weight"] = json!("Bolder");
    title["color"] = json!(c.outcome.card_color());
    let (outside, ours): (Vec<_>, Vec<_>) = c
        .facts
        .iter()
        .partition(|(name, _)| OUTSIDE_FACTS.contains(name));
    let mut body = vec![
        json!({"type": "RichTextBlock", "inlines": [title]}),
        json!({
            "type": "FactSet",
            "facts": ours.iter().map(|(t, v)| json!({"title": t, "value": head(v, 500)})).collect::<Vec<_>>(),
        }),
    ];
    if !outside.is_empty() {
        let mut inlines = Vec::new();
        for (i, (name, value)) in outside.iter().enumerate() {
            let sep = if i == 0 { "" } else { "   " };
            let mut label = run(&format!("{sep}{name}: "));
            label["weight"] = json!("Bolder");
            inlines.push(label);
            inlines.push(run(&head(value, 500)));
        }
        body.push(json!({"type": "RichTextBlock", "inlines": inlines}));
    }
    let labelled = |label: &str, text: &str, mono: bool| {
        let mut label = run(label);
        label["weight"] = json!("Bolder");
        let mut value = run(text);
        if mono {
            value["fontType"] = json!("Monospace");
        }
        json!({"type": "RichTextBlock", "inlines": [label, value]})
    };
    if let Some(r) = &c.reason {
        body.push(labelled("Reason: ", &head(r, 2000), false));
    }
    if let Some(s) = &c.step {
        body.push(labelled("Failing step: ", &head(s, 200), true));
    }
    for (name, text) in &c.output {
        body.push(
            json!({"type": "TextBlock", "text": head(name, 200), "weight": "Bolder", "wrap": true}),
        );
        let mut cut = tail(text.trim_end(), budget / c.output.len());
        if cut.len() < text.trim_end().len() {
            cut = format!("…\n{cut}");
        }
        let mut out = run(&cut);
        out["fontType"] = json!("Monospace");
        body.push(json!({"type": "RichTextBlock", "inlines": [out]}));
    }
    body.push(json!({"type": "TextBlock", "text": head(&c.footer, 300), "isSubtle": true, "size": "Small", "wrap": true}));
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

//! What a [`Message`] says: its one-line text, ferry's JSON payload, and the failure report
//! (a title and a markdown body, ready to file as an issue).

use serde_json::{Value, json};

use super::Message;
use crate::events::tail;
use crate::store::{Deployment, DeploymentState, Probe, Step, StepState};

/// How much of the failing step's output a message carries.
pub(super) const OUTPUT_TAIL: usize = 2000;
/// The newest monitor probes a report lists (the figures count them all).
const REPORT_PROBES: usize = 30;

/// A failed or rolled back deploy, written up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub title: String,
    pub markdown: String,
}

impl Message {
    /// One line with an emoji: what happened, to what, where, by whom.
    pub fn text(&self) -> String {
        let app = &self.app;
        let env = &self.environment;
        let who = self.who.as_deref().unwrap_or("someone");
        let Some(d) = &self.deployment else {
            let detail = self
                .detail
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default();
            return match self.event {
                "maintenance.on" => format!("🚧 {app} on {env} is in maintenance ({who}){detail}"),
                "maintenance.off" => format!("🟢 {app} on {env} is out of maintenance ({who})"),
                "test" => format!("🧪 a test message from ferry for {app}{detail}"),
                other => format!("{other}: {app} on {env}{detail}"),
            };
        };
        let version = version(d);
        let at = short_commit(d)
            .map(|s| format!(" ({s})"))
            .unwrap_or_default();
        let why = d.reason.as_deref().unwrap_or("no reason recorded");
        let took = duration(d)
            .map(|s| format!(" in {s:.1}s"))
            .unwrap_or_default();
        match self.event {
            "deploy.started" if d.kind == "restart" => {
                format!("🔄 {app} {version}{at} is restarting on {env} ({})", d.by())
            }
            "deploy.succeeded" if d.kind == "restart" => {
                format!(
                    "🔄 {app} {version}{at} restarted on {env}{took} ({})",
                    d.by()
                )
            }
            "deploy.started" => {
                format!("🚀 {app} {version}{at} is deploying to {env} ({})", d.by())
            }
            "deploy.succeeded" => {
                format!("✅ {app} {version}{at} is live on {env}{took} ({})", d.by())
            }
            "deploy.failed" => format!("❌ {app} {version}{at} failed on {env}: {why}"),
            "deploy.refused" => format!("⛔ {app} {version} refused for {env}: {why}"),
            "rolled_back" if d.kind == "rollback" => {
                format!("↩️ {env} rolled back to {version}{at} ({})", d.by())
            }
            "rolled_back" => format!("↩️ {app} {version}{at} was rolled back on {env}: {why}"),
            "approval.waiting" => format!(
                "✋ {app} {version}{at} to {env} waits for approval: ferry approve {}",
                d.id
            ),
            other => format!("{other}: {app} {version} on {env}"),
        }
    }

    /// The step whose failure decided the outcome (never a hook run after it).
    pub fn failing_step(&self) -> Option<&Step> {
        self.steps.iter().rev().find(|s| {
            s.state == StepState::Failed
                && !crate::pipeline::OUTCOME_HOOKS.contains(&s.name.as_str())
        })
    }

    /// A failure: a failed deploy, or a deploy the monitor rolled back. A manual rollback
    /// (`rolled_back` too) is not one: it has no report, issue trackers skip it.
    pub fn is_failure(&self) -> bool {
        self.deployment.as_ref().is_some_and(|d| {
            self.event == "deploy.failed"
                || (self.event == "rolled_back" && d.state == DeploymentState::RolledBack)
        })
    }

    /// The failure report of a failure ([`Message::is_failure`]); `None` otherwise.
    pub fn report(&self) -> Option<Report> {
        if !self.is_failure() {
            return None;
        }
        let d = self.deployment.as_ref()?;
        // when the serve hosts several apps (its links say /apps/<app>/), commands name it
        let several = self
            .link
            .as_deref()
            .is_some_and(|l| l.contains(&format!("/apps/{}/", self.app)));
        let mut r = report(&self.app, d, self.failing_step(), &self.steps, &self.probes);
        if several {
            r.markdown = r
                .markdown
                .replace("`ferry show ", &format!("`ferry -a {} show ", self.app));
            r.markdown = r.markdown.replace(
                "`ferry rollback ",
                &format!("`ferry -a {} rollback ", self.app),
            );
        }
        Some(r)
    }

    /// ferry's own JSON object (the generic webhook's body); `text` is Slack-compatible.
    pub fn payload(&self) -> Value {
        let Some(d) = &self.deployment else {
            return json!({
                "event": self.event,
                "text": self.text(),
                "app": self.app,
                "environment": self.environment,
                "who": self.who,
                "detail": self.detail,
                "link": self.link,
                "at": self.at,
            });
        };
        let failing = self.failing_step();
        let mut body = json!({
            "event": self.event,
            "text": self.text(),
            "app": self.app,
            "environment": d.environment,
            "deployment": d.id,
            "kind": d.kind,
            "state": d.state,
            "version": version(d),
            "ref": d.git_ref,
            "commit": d.commit_sha,
            "who": d.triggered_by,
            "token": d.triggered_token,
            "reason": d.reason,
            "duration_seconds": duration(d),
            "failing_step": failing.map(|s| json!({"name": s.name, "output_tail": tail(&s.output, OUTPUT_TAIL)})),
            "link": self.link,
            "at": self.at,
        });
        if let Some(r) = self.report() {
            body["report"] = json!({"title": r.title, "body": r.markdown});
        }
        body
    }
}

/// The version people know a deployment by: its tag, else its ref.
pub fn version(d: &Deployment) -> String {
    d.version.clone().unwrap_or_else(|| d.git_ref.clone())
}

fn short_commit(d: &Deployment) -> Option<&str> {
    d.commit_sha.as_deref().map(|s| &s[..7.min(s.len())])
}

/// Seconds from the deployment's creation to its end, once it ended.
pub fn duration(d: &Deployment) -> Option<f64> {
    seconds_between(&d.created_at, d.finished_at.as_deref())
}

fn seconds_between(start: &str, end: Option<&str>) -> Option<f64> {
    let a = chrono::DateTime::parse_from_rfc3339(start).ok()?;
    let b = chrono::DateTime::parse_from_rfc3339(end?).ok()?;
    Some((b - a).num_milliseconds() as f64 / 1000.0)
}

/// `text` in a markdown code fence longer than any run of backticks inside it, so the app's
/// output can never close the fence and be read as markdown.
pub fn code_block(text: &str) -> String {
    let longest = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat((longest + 1).max(3));
    format!("{fence}\n{}\n{fence}\n", text.trim_end())
}

/// Text safe inside a markdown table cell: no pipe or newline can break the table.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace(['\n', '\r'], " ")
}

/// `text` as an inline code span on one line, its delimiter longer than any backtick run in
/// it: what people or branches wrote (a reason, a name, a ref) is shown, never read as
/// markdown (no `@team` mention, link or HTML).
pub fn code(text: &str) -> String {
    let text = text.replace(['\n', '\r'], " ");
    let longest = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let tick = "`".repeat(longest + 1);
    let pad = if text.starts_with('`') || text.ends_with('`') || text.is_empty() {
        " "
    } else {
        ""
    };
    format!("{tick}{pad}{text}{pad}{tick}")
}

fn report(
    app: &str,
    d: &Deployment,
    failing: Option<&Step>,
    steps: &[Step],
    probes: &[Probe],
) -> Report {
    let version = version(d);
    let step = failing.map_or("(no step failed; see the reason)", |s| s.name.as_str());
    let rolled_back = d.state == DeploymentState::RolledBack;
    let title = if rolled_back {
        // the rule, as the monitor named it: "max_consecutive_failures breached: …"
        let rule = d
            .reason
            .as_deref()
            .and_then(|r| r.split(" breached").next())
            .map(|r| r.trim_start_matches("monitor: "))
            .unwrap_or("a monitoring rule");
        format!(
            "Deploy of {app} {version} to {} rolled back by the monitor ({rule})",
            d.environment
        )
    } else {
        format!(
            "Deploy of {app} {version} to {} failed at {step}",
            d.environment
        )
    };
    let mut md = format!(
        "## What happened\n\nDeployment {} of {} to **{}** ended `{}`.\n\n\
         - Reason: {}\n- Commit: {}\n- Triggered by: {}\n- Started: {}\n- Finished: {}\n\n\
         ## Steps\n\n| step | state | took |\n|---|---|---|\n",
        d.id,
        cell(&code(&d.git_ref)),
        d.environment,
        d.state.as_str(),
        d.reason.as_deref().map_or("-".into(), code),
        d.commit_sha.as_deref().map_or("-".into(), code),
        code(&d.by()),
        d.created_at,
        d.finished_at.as_deref().unwrap_or("-"),
    );
    for s in steps {
        let took = seconds_between(&s.started_at, s.finished_at.as_deref())
            .map_or("-".to_string(), |t| format!("{t:.1}s"));
        md.push_str(&format!("| {} | {} | {took} |\n", s.name, s.state.as_str()));
    }
    if let Some(s) = failing {
        md.push_str(&format!(
            "\n## Output of `{}` (last lines)\n\n{}",
            s.name,
            code_block(&tail(&s.output, OUTPUT_TAIL))
        ));
    }
    if !probes.is_empty() {
        md.push_str(&probe_table(probes));
    }
    if let Some(lines) = failing.and_then(|s| s.app_output.as_deref()) {
        md.push_str(&format!(
            "\n## The app's last lines ({})\n\n{}",
            code(d.release.as_deref().unwrap_or(&version)),
            code_block(lines)
        ));
    }
    md.push_str(&format!(
        "\n{}\n\n- Inspect: `ferry show {}`\n- Roll back: `ferry rollback {} --reason \"…\"`\n",
        if rolled_back {
            "Traffic went back to the previous release."
        } else {
            "The previous release kept serving."
        },
        d.id,
        d.environment,
    ));
    Report {
        title,
        markdown: md,
    }
}

/// The monitor's figures and its newest probes, as a markdown section.
fn probe_table(probes: &[Probe]) -> String {
    let passed = probes.iter().filter(|p| p.ok).count();
    let in_a_row = probes.iter().rev().take_while(|p| !p.ok).count();
    let slowest = probes.iter().map(|p| p.response_ms).fold(0.0, f64::max);
    let mut md = format!(
        "\n## Monitoring\n\n{} probes, {passed} passed ({:.1}%), {in_a_row} failed in a row at the end, slowest {slowest:.1} ms.\n\n\
         | at | result | ms | detail |\n|---|---|---|---|\n",
        probes.len(),
        100.0 * passed as f64 / probes.len() as f64,
    );
    let skipped = probes.len().saturating_sub(REPORT_PROBES);
    if skipped > 0 {
        md.push_str(&format!("| … | {skipped} earlier probes | | |\n"));
    }
    for p in &probes[skipped..] {
        md.push_str(&format!(
            "| {} | {} | {:.1} | {} |\n",
            p.at,
            if p.ok { "ok" } else { "failed" },
            p.response_ms,
            p.detail
                .as_deref()
                .map_or(String::new(), |t| cell(&code(t)))
        ));
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_block_outlasts_every_backtick_run_inside() {
        assert_eq!(code_block("plain"), "```\nplain\n```\n");
        let hostile = "before\n```\n# not a heading\n`````\nafter\n";
        let block = code_block(hostile);
        assert!(block.starts_with("``````\n"), "{block}");
        assert!(block.ends_with("\n``````\n"), "{block}");
        // the fence closes only at the very end
        let inner = &block[7..block.len() - 7];
        assert!(!inner.lines().any(|l| l.starts_with("``````")), "{block}");
    }

    #[test]
    fn table_cells_cannot_break_the_table() {
        assert_eq!(cell("a|b\nc"), "a\\|b c");
    }

    #[test]
    fn what_people_wrote_is_a_code_span() {
        assert_eq!(code("@acme/ops"), "`@acme/ops`");
        assert_eq!(code("a`b"), "``a`b``");
        assert_eq!(code("`x"), "`` `x ``");
    }

    fn hostile() -> Message {
        let d: Deployment = serde_json::from_value(serde_json::json!({
            "id": 7, "environment": "staging", "kind": "deploy",
            "ref": "<!channel> @everyone [x](http://e.example)", "commit_sha": null,
            "version": null, "release": null, "digest": null, "state": "failed",
            "step": "health", "reason": "@acme/ops <b>bold</b> `tick`\n# heading",
            "triggered_by": "@mallory", "created_at": "2026-01-01T00:00:00Z",
            "finished_at": "2026-01-01T00:00:05Z", "note": null, "forced": false,
            "restore_data": false, "approved_by": null, "approved_at": null,
            "triggered_token": null, "approved_token": null
        }))
        .unwrap();
        let step: Step = serde_json::from_value(serde_json::json!({
            "name": "health", "state": "failed", "started_at": "2026-01-01T00:00:01Z",
            "finished_at": "2026-01-01T00:00:05Z",
            "output": "ok\n```\n# escaped?\n@everyone\n",
        }))
        .unwrap();
        Message {
            event: "deploy.failed",
            app: "shop".into(),
            environment: "staging".into(),
            deployment: Some(d),
            steps: vec![step],
            probes: Vec::new(),
            detail: None,
            who: None,
            link: None,
            at: "2026-01-01T00:00:05Z".into(),
        }
    }

    #[test]
    fn a_report_shows_hostile_text_as_text() {
        let r = hostile().report().unwrap();
        let md = &r.markdown;
        // every line that holds what people or the app wrote keeps it inside code
        let mut fence: Option<usize> = None;
        for line in md.lines() {
            let ticks = line.bytes().take_while(|c| *c == b'`').count();
            match fence {
                Some(n) if ticks == n && line.len() == n => fence = None,
                Some(_) => continue,
                None if ticks >= 3 => fence = Some(ticks),
                None => {}
            }
            let outside = outside_code(line);
            for bad in [
                "@everyone",
                "@acme",
                "@mallory",
                "<b>",
                "](http",
                "<!channel>",
            ] {
                assert!(
                    !outside.contains(bad),
                    "{bad} outside code on line {line:?}:\n{md}"
                );
            }
        }
        assert!(fence.is_none(), "every fence is closed:\n{md}");
        // the app's output stays inside its fence: the fence is longer than its ``` line
        assert!(
            md.contains("````\nok\n```\n# escaped?\n@everyone\n````"),
            "{md}"
        );
        assert!(md.contains("- Inspect: `ferry show 7`"), "{md}");
        // with several apps on the serve, the commands name the app
        let mut several = hostile();
        several.link = Some("http://ferry.example.com/apps/shop/deployments/7".into());
        let md = several.report().unwrap().markdown;
        assert!(
            md.contains("- Inspect: `ferry -a shop show 7`")
                && md.contains("- Roll back: `ferry -a shop rollback staging"),
            "{md}"
        );
        // a manual rollback is not a failure
        let mut manual = hostile();
        manual.event = "rolled_back";
        let d = manual.deployment.as_mut().unwrap();
        d.kind = "rollback".into();
        d.state = DeploymentState::Succeeded;
        assert!(!manual.is_failure() && manual.report().is_none());
    }

    /// `line` without its code spans (a run of n backticks up to the next run of exactly n).
    fn outside_code(line: &str) -> String {
        let b = line.as_bytes();
        let (mut out, mut i) = (String::new(), 0);
        while i < b.len() {
            if b[i] != b'`' {
                out.push(b[i] as char);
                i += 1;
                continue;
            }
            let n = b[i..].iter().take_while(|c| **c == b'`').count();
            let mut j = i + n;
            let close = loop {
                if j >= b.len() {
                    break None;
                }
                let m = b[j..].iter().take_while(|c| **c == b'`').count();
                if m == n {
                    break Some(j);
                }
                j += m.max(1);
            };
            match close {
                Some(j) => i = j + n,
                None => {
                    out.push_str(&line[i..]);
                    break;
                }
            }
        }
        out
    }
}

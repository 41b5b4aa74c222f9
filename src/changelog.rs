//! Release notes: commits grouped by their conventional-commit prefix into a Keep a Changelog
//! section naming who contributed, and that section put at the top of `CHANGELOG.md`. Pure text; `ferry release`
//! (`cli/release.rs`) runs git around it.

use std::sync::LazyLock;

use regex::Regex;

/// One commit since the last release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    pub sha: String,
    pub subject: String,
    pub body: String,
    /// The author's name (as git's mailmap gives it).
    pub author: String,
}

/// The groups, in the order they are written.
const GROUPS: &[&str] = &["Breaking", "Added", "Fixed", "Changed"];

static CONVENTIONAL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?P<type>[A-Za-z]+)(\((?P<scope>[^)]*)\))?(?P<bang>!)?:\s*(?P<desc>.+)$")
        .expect("the pattern is valid")
});

/// The group a commit goes to and the line written for it.
fn classify(c: &Commit) -> (&'static str, String) {
    let short = &c.sha[..7.min(c.sha.len())];
    let breaking_body = c
        .body
        .lines()
        .any(|l| l.starts_with("BREAKING CHANGE:") || l.starts_with("BREAKING-CHANGE:"));
    let Some(m) = CONVENTIONAL.captures(c.subject.trim()) else {
        let group = if breaking_body { "Breaking" } else { "Changed" };
        return (group, format!("- {} ({short})", c.subject.trim()));
    };
    let desc = &m["desc"];
    let line = match m
        .name("scope")
        .map(|s| s.as_str())
        .filter(|s| !s.is_empty())
    {
        Some(scope) => format!("- **{scope}:** {desc} ({short})"),
        None => format!("- {desc} ({short})"),
    };
    let group = if m.name("bang").is_some() || breaking_body {
        "Breaking"
    } else {
        match m["type"].to_ascii_lowercase().as_str() {
            "feat" => "Added",
            "fix" => "Fixed",
            _ => "Changed",
        }
    };
    (group, line)
}

/// True for the commits `ferry release` itself makes; they are not listed.
fn is_release_commit(c: &Commit) -> bool {
    c.subject.starts_with("chore(release):")
}

/// The `## [version] - date` section for `commits`, listed in the order given (oldest first).
pub fn section(version: &str, date: &str, commits: &[Commit]) -> String {
    let mut out = format!("## [{version}] - {date}\n");
    for group in GROUPS {
        let lines: Vec<String> = commits
            .iter()
            .filter(|c| !is_release_commit(c))
            .map(classify)
            .filter(|(g, _)| g == group)
            .map(|(_, l)| l)
            .collect();
        if lines.is_empty() {
            continue;
        }
        out.push_str(&format!("\n### {group}\n\n"));
        for l in lines {
            out.push_str(&l);
            out.push('\n');
        }
    }
    let names = contributors(commits);
    if !names.is_empty() {
        out.push_str("\n### Contributors\n\n");
        for name in names {
            out.push_str(&format!("- {name}\n"));
        }
    }
    out
}

/// Everyone who wrote or co-wrote the listed commits (`Co-authored-by:` trailers count),
/// each once, in the order they first appear.
fn contributors(commits: &[Commit]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for c in commits.iter().filter(|c| !is_release_commit(c)) {
        let co = c.body.lines().filter_map(|l| {
            let (key, value) = l.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case("co-authored-by")
                .then(|| value.split('<').next().unwrap_or("").trim().to_string())
        });
        for name in std::iter::once(c.author.trim().to_string()).chain(co) {
            if !name.is_empty() && !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names
}

/// The header a new `CHANGELOG.md` starts with.
pub const HEADER: &str = "# Changelog\n\n\
All notable changes to this project are documented in this file.\n\n\
The format is based on [Keep a Changelog](https://keepachangelog.com/en/1.1.0/),\n\
and this project adheres to [Semantic Versioning](https://semver.org/spec/v2.0.0.html).\n";

/// `existing` (or a new changelog) with `section` above the newest release, below the header
/// and any `## [Unreleased]` section.
pub fn insert(existing: Option<&str>, section: &str) -> String {
    let text = existing.unwrap_or(HEADER);
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if line.starts_with("## ") && !line.to_ascii_lowercase().starts_with("## [unreleased]") {
            return format!("{}{section}\n{}", &text[..offset], &text[offset..]);
        }
        offset += line.len();
    }
    let sep = if text.ends_with("\n\n") {
        ""
    } else if text.ends_with('\n') {
        "\n"
    } else {
        "\n\n"
    };
    format!("{text}{sep}{section}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(sha: &str, subject: &str, body: &str) -> Commit {
        Commit {
            sha: sha.repeat(40)[..40].to_string(),
            subject: subject.into(),
            body: body.into(),
            author: "Alice".into(),
        }
    }

    #[test]
    fn commits_are_grouped_by_prefix() {
        let commits = [
            c("a", "feat(search): filter by city", ""),
            c("b", "fix: crash on empty query", ""),
            c("c", "feat!: drop the v1 API", ""),
            c(
                "d",
                "refactor: split the handler",
                "BREAKING CHANGE: config key renamed",
            ),
            c("e", "docs: readme", ""),
            c("f", "Plain subject without a prefix", ""),
            c("9", "chore(release): v1.0.0", ""),
        ];
        let s = section("1.1.0", "2026-11-23", &commits);
        assert_eq!(
            s,
            "## [1.1.0] - 2026-11-23\n\
             \n### Breaking\n\n- drop the v1 API (ccccccc)\n- split the handler (ddddddd)\n\
             \n### Added\n\n- **search:** filter by city (aaaaaaa)\n\
             \n### Fixed\n\n- crash on empty query (bbbbbbb)\n\
             \n### Changed\n\n- readme (eeeeeee)\n- Plain subject without a prefix (fffffff)\n\
             \n### Contributors\n\n- Alice\n"
        );
    }

    #[test]
    fn contributors_are_each_author_and_co_author_once() {
        let mut commits = vec![
            c("a", "feat: one", ""),
            c("b", "fix: two", "Co-authored-by: Carol <carol@example.com>"),
            c("c", "chore(release): v1.0.0", ""),
        ];
        commits[1].author = "Bob".into();
        commits[2].author = "Release Bot".into();
        let s = section("1.1.0", "2026-11-23", &commits);
        assert!(
            s.ends_with("\n### Contributors\n\n- Alice\n- Bob\n- Carol\n"),
            "{s}"
        );
    }

    #[test]
    fn sections_go_above_the_newest_release_and_below_unreleased() {
        let new = insert(None, "## [0.1.0] - 2026-01-01\n");
        assert!(new.starts_with("# Changelog\n") && new.ends_with("\n\n## [0.1.0] - 2026-01-01\n"));
        let next = insert(Some(&new), "## [0.2.0] - 2026-02-01\n");
        let a = next.find("[0.2.0]").unwrap();
        let b = next.find("[0.1.0]").unwrap();
        assert!(a < b, "{next}");
        let with_unreleased = "# Changelog\n\n## [Unreleased]\n\n- wip\n\n## [0.1.0] - x\n";
        let out = insert(Some(with_unreleased), "## [0.2.0] - y\n");
        assert_eq!(
            out,
            "# Changelog\n\n## [Unreleased]\n\n- wip\n\n## [0.2.0] - y\n\n## [0.1.0] - x\n"
        );
    }
}

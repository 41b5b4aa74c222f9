//! Host names as environments claim them (`staging.example.com`, `*.preview.example.com`) and
//! the table that finds a request's or a TLS handshake's name among them: exact names before
//! wildcards; a wildcard stands for exactly one leftmost label (`*.preview.example.com` takes
//! `a.preview.example.com`, not `preview.example.com` nor `a.b.preview.example.com`), as in
//! certificates (RFC 6125).

use std::collections::HashMap;

/// Why a claimed host name is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error(
        "\"{0}\" is not a host name: use letters, digits and '-' in dot-separated labels (e.g. staging.example.com), optionally starting with \"*.\""
    )]
    Invalid(String),
    #[error(
        "\"{0}\": a wildcard stands for one whole leftmost label only (e.g. *.preview.example.com)"
    )]
    Wildcard(String),
}

/// A claimed host name, lowercased: an exact name or `*.` and a suffix.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPattern(String);

impl HostPattern {
    /// Checks and normalises a name as written in a config (lowercase, no trailing dot).
    pub fn parse(written: &str) -> Result<HostPattern, HostError> {
        let name = written.trim_end_matches('.').to_ascii_lowercase();
        let (wild, rest) = match name.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, name.as_str()),
        };
        if rest.contains('*') {
            return Err(HostError::Wildcard(written.to_string()));
        }
        let labels: Vec<&str> = rest.split('.').collect();
        let label_ok = |l: &&str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        };
        // a wildcard needs at least two labels after it (no `*.com`)
        if rest.len() > 253 || !labels.iter().all(label_ok) || (wild && labels.len() < 2) {
            return Err(HostError::Invalid(written.to_string()));
        }
        Ok(HostPattern(name))
    }

    pub fn is_wildcard(&self) -> bool {
        self.0.starts_with("*.")
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True when `host` (already normalised with [`normalize`]) is this name or, for a
    /// wildcard, one label under its suffix.
    pub fn matches(&self, host: &str) -> bool {
        match self.0.strip_prefix("*.") {
            Some(suffix) => host
                .split_once('.')
                .is_some_and(|(first, rest)| !first.is_empty() && rest == suffix),
            None => self.0 == host,
        }
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Splits a `Host` value into its name and port: `example.com:7070`, `[::1]:7070`,
/// `example.com`. `None` when it is not of that shape.
pub fn host_parts(host: &str) -> Option<(&str, Option<u16>)> {
    let (name, port) = if host.starts_with('[') {
        let end = host.find(']')?;
        let (name, rest) = host.split_at(end + 1);
        match rest {
            "" => (name, None),
            _ => (name, Some(rest.strip_prefix(':')?)),
        }
    } else {
        match host.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        }
    };
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok()?),
        None => None,
    };
    let bracketed = name.starts_with('[');
    (bracketed || (!name.is_empty() && !name.contains(':'))).then_some((name, port))
}

/// A request's host as the table looks it up: the `Host` header or SNI without a port or a
/// trailing dot, lowercased. `None` for anything that is not a host name (letters, digits,
/// `-` and `_` in non-empty dot-separated labels) or an IP literal: such a value never
/// reaches a routing table, a redirect's `Location` or an app.
pub fn normalize(host: &str) -> Option<String> {
    let (name, _) = host_parts(host.trim())?;
    if let Some(literal) = name.strip_prefix('[') {
        let ip: std::net::Ipv6Addr = literal.strip_suffix(']')?.parse().ok()?;
        return Some(ip.to_string());
    }
    let name = name.trim_end_matches('.');
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    (!name.is_empty() && name.len() <= 253 && name.split('.').all(label_ok))
        .then(|| name.to_ascii_lowercase())
}

/// Values by claimed host name; [`HostTable::get`] tries the exact name, then the wildcard
/// one label up.
#[derive(Debug, Clone)]
pub struct HostTable<T> {
    exact: HashMap<String, T>,
    /// By the suffix after `*.`.
    wildcard: HashMap<String, T>,
}

impl<T> Default for HostTable<T> {
    fn default() -> Self {
        HostTable {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
        }
    }
}

impl<T> HostTable<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Claims `pattern` for `value`; gives back the value that claimed it before, if any
    /// (callers that must refuse a name claimed twice check [`HostTable::claimed`] first).
    pub fn insert(&mut self, pattern: &HostPattern, value: T) -> Option<T> {
        match pattern.0.strip_prefix("*.") {
            Some(suffix) => self.wildcard.insert(suffix.to_string(), value),
            None => self.exact.insert(pattern.0.clone(), value),
        }
    }

    pub fn remove(&mut self, pattern: &HostPattern) -> Option<T> {
        match pattern.0.strip_prefix("*.") {
            Some(suffix) => self.wildcard.remove(suffix),
            None => self.exact.remove(&pattern.0),
        }
    }

    /// What claimed exactly `pattern` (not what a lookup of it would find).
    pub fn claimed(&self, pattern: &HostPattern) -> Option<&T> {
        match pattern.0.strip_prefix("*.") {
            Some(suffix) => self.wildcard.get(suffix),
            None => self.exact.get(&pattern.0),
        }
    }

    /// The value for `host` (normalised with [`normalize`]): its exact claim, else the
    /// wildcard claim of its parent.
    pub fn get(&self, host: &str) -> Option<&T> {
        if let Some(v) = self.exact.get(host) {
            return Some(v);
        }
        let (first, parent) = host.split_once('.')?;
        if first.is_empty() {
            return None;
        }
        self.wildcard.get(parent)
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty()
    }

    pub fn len(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_normalised() {
        assert_eq!(
            HostPattern::parse("Staging.Example.COM.").unwrap().as_str(),
            "staging.example.com"
        );
        assert!(
            HostPattern::parse("*.preview.example.com")
                .unwrap()
                .is_wildcard()
        );
        for bad in [
            "",
            "a..b",
            "-a.com",
            "a_b.com",
            "exa mple.com",
            "*.com",
            "http://x.com",
        ] {
            assert!(
                matches!(HostPattern::parse(bad), Err(HostError::Invalid(_))),
                "{bad}"
            );
        }
        for bad in ["a.*.example.com", "*a.example.com", "*.*.example.com"] {
            assert!(HostPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn exact_names_win_over_wildcards_which_take_one_label() {
        let mut t = HostTable::new();
        t.insert(
            &HostPattern::parse("*.preview.example.com").unwrap(),
            "wild",
        );
        t.insert(
            &HostPattern::parse("pr-1.preview.example.com").unwrap(),
            "exact",
        );
        assert_eq!(t.get("pr-1.preview.example.com"), Some(&"exact"));
        assert_eq!(t.get("pr-2.preview.example.com"), Some(&"wild"));
        assert_eq!(t.get("preview.example.com"), None);
        assert_eq!(t.get("a.pr-2.preview.example.com"), None);
        assert_eq!(t.get(".preview.example.com"), None);
        assert!(
            HostPattern::parse("*.preview.example.com")
                .unwrap()
                .matches("x.preview.example.com")
        );
        assert!(
            !HostPattern::parse("*.preview.example.com")
                .unwrap()
                .matches("x.y.preview.example.com")
        );
    }

    #[test]
    fn request_hosts_lose_ports_dots_and_case() {
        assert_eq!(
            normalize("Staging.Example.com:8443").as_deref(),
            Some("staging.example.com")
        );
        assert_eq!(normalize("example.com.").as_deref(), Some("example.com"));
        assert_eq!(normalize("[::1]:80").as_deref(), Some("::1"));
        assert_eq!(normalize("127.0.0.1:80").as_deref(), Some("127.0.0.1"));
        assert_eq!(normalize(""), None);
        assert_eq!(normalize("[::1"), None);
        assert_eq!(normalize("[nope]"), None);
        // nothing but a name goes on to a table, a redirect or an app
        for hostile in [
            "evil%2ecom/x.preview.example.com",
            "evil.com\\x.preview.example.com",
            "a b.example.com",
            "a..example.com",
            "evil.com?.preview.example.com",
            "evil.com#.preview.example.com",
            "user@evil.com",
        ] {
            assert_eq!(normalize(hostile), None, "{hostile}");
        }
    }
}

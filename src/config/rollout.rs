//! An environment's canary rollout: the new release gets a growing share of requests, each
//! step judged by the traffic it served, before it takes them all.
//!
//! ```toml
//! [environments.production]
//! rollout = ["10%", "wait 2m", "50%", "wait 2m", "100%"]
//! inconclusive_timeout = "10m"   # too little traffic this long: the rollout pauses
//! sticky_header = "X-User-Id"    # optional: split by this header's value, not a cookie
//! ```
//!
//! Steps: `N%` (1 to 100, increasing) sends that share of clients to the new release; `wait
//! D` holds it there while the analysis runs; `pause` waits for a person (`ferry rollout
//! <env> promote`). A list that does not end at `100%` implies it. See
//! `crate::pipeline` (`rollout.rs`) for how it runs and `crate::proxy` for the split.

use std::fmt;
use std::ops::Range;
use std::time::Duration;

use toml::Spanned;

use super::Diagnostic;
use super::duration::{HumanDuration, format_duration, parse_duration};
use super::raw::Fail;

/// How long a step may stay inconclusive (too little traffic) before the rollout pauses.
pub const DEFAULT_INCONCLUSIVE_TIMEOUT: Duration = Duration::from_secs(600);
/// The longest `wait` step accepted.
const MAX_WAIT: Duration = Duration::from_secs(7 * 24 * 3600);

/// One step of a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutStep {
    /// This percentage of clients (1..=100) goes to the new release.
    Weight(u8),
    /// Hold the weight this long while the analysis runs.
    Wait(Duration),
    /// Hold the weight until a person promotes (or aborts).
    Pause,
}

impl fmt::Display for RolloutStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RolloutStep::Weight(w) => write!(f, "{w}%"),
            RolloutStep::Wait(d) => write!(f, "wait {}", format_duration(*d)),
            RolloutStep::Pause => f.write_str("pause"),
        }
    }
}

impl RolloutStep {
    /// Parses `"10%"`, `"wait 2m"` or `"pause"`: the error is (what is wrong, what to write).
    pub fn parse(text: &str) -> Result<RolloutStep, (String, &'static str)> {
        const HELP: &str = "write a percentage like \"10%\", a wait like \"wait 2m\", or \"pause\"";
        let t = text.trim();
        if t == "pause" {
            return Ok(RolloutStep::Pause);
        }
        if let Some(n) = t.strip_suffix('%') {
            let n = n.trim();
            return match n.parse::<u8>() {
                Ok(w) if (1..=100).contains(&w) && n.bytes().all(|b| b.is_ascii_digit()) => {
                    Ok(RolloutStep::Weight(w))
                }
                _ => Err((
                    format!("rollout step \"{text}\" is not a percentage from 1% to 100%"),
                    "write a whole percentage from 1 to 100, like \"10%\"",
                )),
            };
        }
        if let Some(d) = t.strip_prefix("wait") {
            let d =
                parse_duration(d).map_err(|e| (format!("rollout step \"{text}\": {e}"), HELP))?;
            if d.is_zero() || d > MAX_WAIT {
                return Err((
                    format!(
                        "rollout step \"{text}\" waits {}: out of range",
                        format_duration(d)
                    ),
                    "write a wait from \"1s\" to \"7d\", like \"wait 2m\"",
                ));
            }
            return Ok(RolloutStep::Wait(d));
        }
        Err((format!("rollout step \"{text}\" is not understood"), HELP))
    }
}

/// What keeps a client on one side of the split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sticky {
    /// A cookie ferry sets (`ferry_canary_<env>`) holding the client's bucket.
    Cookie,
    /// The value of this request header (lowercase), hashed into a bucket; requests
    /// without it fall back to the cookie.
    Header(String),
}

/// An environment's canary rollout (`rollout = [...]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollout {
    /// The steps in order; the last is always `Weight(100)`.
    pub steps: Vec<RolloutStep>,
    /// Too little traffic to judge for this long: the rollout pauses for a person.
    pub inconclusive_timeout: Duration,
    pub sticky: Sticky,
}

impl Rollout {
    /// The steps as the config writes them (`10%, wait 2m, 100%`).
    pub fn describe(&self) -> String {
        self.steps
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// True for an HTTP header name (an RFC 9110 token).
fn header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// `rollout`, `inconclusive_timeout` and `sticky_header` of an environment, checked: each
/// step understood, percentages increasing, nothing after `100%` (which is implied when the
/// list stops short of it), no wait or pause before the first percentage, and every share
/// below 100% held by a wait or a pause after it (else it would last a moment, unjudged).
pub(super) fn validate(
    rollout: Option<Spanned<Vec<Spanned<String>>>>,
    inconclusive_timeout: Option<Spanned<HumanDuration>>,
    sticky_header: Option<Spanned<String>>,
    fail: &Fail,
) -> Result<Option<Rollout>, Diagnostic> {
    let Some(rollout) = rollout else {
        let stray: Option<(Range<usize>, &str)> = inconclusive_timeout
            .as_ref()
            .map(|t| (t.span(), "inconclusive_timeout"))
            .or_else(|| sticky_header.as_ref().map(|h| (h.span(), "sticky_header")));
        if let Some((span, key)) = stray {
            return Err(fail(
                span,
                format!("`{key}` is set but the environment has no `rollout`"),
                "add rollout = [\"10%\", \"wait 2m\", \"100%\"] or remove the key",
            ));
        }
        return Ok(None);
    };
    let span = rollout.span();
    let written = rollout.into_inner();
    if written.is_empty() {
        return Err(fail(
            span,
            "`rollout` has no steps".into(),
            "write steps like [\"10%\", \"wait 2m\", \"100%\"], or remove `rollout` to switch at once",
        ));
    }
    let mut steps = Vec::new();
    let mut last_weight = 0u8;
    // a share below 100% is only worth something if it is held (judged, or acted on)
    let mut held = true;
    let mut unheld: Option<Range<usize>> = None;
    for step in &written {
        let parsed = RolloutStep::parse(step.get_ref())
            .map_err(|(msg, help)| fail(step.span(), msg, help))?;
        if last_weight == 100 {
            return Err(fail(
                step.span(),
                format!("rollout step \"{}\" comes after 100%", step.get_ref()),
                "end the list at \"100%\": every client is on the new release then",
            ));
        }
        match parsed {
            RolloutStep::Weight(w) if w <= last_weight => {
                return Err(fail(
                    step.span(),
                    format!("rollout step {w}% does not raise the share (it was {last_weight}%)"),
                    "write percentages in increasing order, like \"10%\", \"50%\", \"100%\"",
                ));
            }
            RolloutStep::Weight(w) => {
                if !held && unheld.is_none() {
                    unheld = Some(step.span());
                }
                last_weight = w;
                held = w == 100;
            }
            RolloutStep::Wait(_) | RolloutStep::Pause if last_weight == 0 => {
                return Err(fail(
                    step.span(),
                    format!(
                        "rollout step \"{}\" comes before any traffic goes to the new release",
                        step.get_ref()
                    ),
                    "start the list with a percentage, like \"10%\"",
                ));
            }
            RolloutStep::Wait(_) | RolloutStep::Pause => held = true,
        }
        steps.push(parsed);
    }
    if last_weight != 100 {
        steps.push(RolloutStep::Weight(100));
    }
    let inconclusive_timeout = match &inconclusive_timeout {
        None => DEFAULT_INCONCLUSIVE_TIMEOUT,
        Some(t) if t.get_ref().0 >= Duration::from_secs(1) && t.get_ref().0 <= MAX_WAIT => {
            t.get_ref().0
        }
        Some(t) => {
            return Err(fail(
                t.span(),
                format!(
                    "inconclusive_timeout {} is out of range",
                    format_duration(t.get_ref().0)
                ),
                "write a duration from \"1s\" to \"7d\" (default \"10m\")",
            ));
        }
    };
    let sticky = match &sticky_header {
        None => Sticky::Cookie,
        Some(h) if header_name(h.get_ref().trim()) => {
            Sticky::Header(h.get_ref().trim().to_ascii_lowercase())
        }
        Some(h) => {
            return Err(fail(
                h.span(),
                format!("sticky_header \"{}\" is not a header name", h.get_ref()),
                "write the name of a request header, like \"X-User-Id\"",
            ));
        }
    };
    if let Some(span) = unheld.or_else(|| (!held).then_some(span)) {
        return Err(fail(
            span,
            format!(
                "a share of the rollout is not held: every percentage below 100% needs a wait or a pause after it ({})",
                written
                    .iter()
                    .map(|s| format!("\"{}\"", s.get_ref()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "hold each share while it is judged, like [\"10%\", \"wait 2m\", \"50%\", \"wait 2m\", \"100%\"]",
        ));
    }
    Ok(Some(Rollout {
        steps,
        inconclusive_timeout,
        sticky,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(env_keys: &str) -> Result<super::super::Config, String> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("repo/.git")).unwrap();
        let text = format!(
            "[app]\nname = \"demo\"\nrepo = \"repo\"\nstart = \"./run\"\n\n\
             [environments.staging]\nlisten = \"127.0.0.1:8081\"\n{env_keys}\n"
        );
        let path = dir.path().join("ferry.toml");
        super::super::Config::parse(&path, &text).map_err(|e| e.to_string())
    }

    #[test]
    fn steps_parse_and_print_as_written() {
        for (text, step) in [
            ("10%", RolloutStep::Weight(10)),
            (" 100% ", RolloutStep::Weight(100)),
            ("wait 2m", RolloutStep::Wait(Duration::from_secs(120))),
            ("wait 90s", RolloutStep::Wait(Duration::from_secs(90))),
            ("pause", RolloutStep::Pause),
        ] {
            assert_eq!(RolloutStep::parse(text), Ok(step), "{text}");
        }
        assert_eq!(
            RolloutStep::Wait(Duration::from_secs(120)).to_string(),
            "wait 2m"
        );
        for bad in [
            "0%", "101%", "-5%", "+5%", "5.5%", "%", "wait", "wait 0s", "wait 5", "hold", "10",
        ] {
            assert!(RolloutStep::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_rollout_gets_its_defaults_and_implies_100_percent() {
        let config = parse("rollout = [\"10%\", \"wait 2m\", \"50%\", \"pause\"]").unwrap();
        let r = config.environments[0].rollout.clone().unwrap();
        assert_eq!(
            r.steps,
            vec![
                RolloutStep::Weight(10),
                RolloutStep::Wait(Duration::from_secs(120)),
                RolloutStep::Weight(50),
                RolloutStep::Pause,
                RolloutStep::Weight(100),
            ]
        );
        assert_eq!(r.inconclusive_timeout, DEFAULT_INCONCLUSIVE_TIMEOUT);
        assert_eq!(r.sticky, Sticky::Cookie);
        assert_eq!(r.describe(), "10%, wait 2m, 50%, pause, 100%");
        let r = parse(
            "rollout = [\"5%\", \"wait 1m\", \"100%\"]\ninconclusive_timeout = \"30s\"\nsticky_header = \"X-User-Id\"",
        )
        .unwrap()
        .environments[0]
            .rollout
            .clone()
            .unwrap();
        assert_eq!(r.inconclusive_timeout, Duration::from_secs(30));
        assert_eq!(r.sticky, Sticky::Header("x-user-id".into()));
        assert!(parse("").unwrap().environments[0].rollout.is_none());
    }

    #[test]
    fn rollout_mistakes_are_located() {
        for (keys, want) in [
            ("rollout = []", "has no steps"),
            ("rollout = [\"10%\", \"5%\"]", "does not raise the share"),
            ("rollout = [\"10%\", \"10%\"]", "does not raise the share"),
            ("rollout = [\"100%\", \"wait 1m\"]", "comes after 100%"),
            ("rollout = [\"wait 1m\", \"10%\"]", "before any traffic"),
            ("rollout = [\"pause\"]", "before any traffic"),
            ("rollout = [\"10%\", \"wait 1x\"]", "invalid duration"),
            ("rollout = [\"150%\"]", "from 1% to 100%"),
            ("rollout = [\"10%\", \"50%\", \"wait 1m\"]", "is not held"),
            ("rollout = [\"10%\", \"wait 1m\", \"50%\"]", "is not held"),
            ("rollout = [\"10%\"]", "is not held"),
            ("rollout = [\"ten percent\"]", "not understood"),
            ("rollout = \"10%\"", "invalid type"),
            ("inconclusive_timeout = \"5m\"", "has no `rollout`"),
            ("sticky_header = \"X-User\"", "has no `rollout`"),
            (
                "rollout = [\"10%\"]\ninconclusive_timeout = \"0s\"",
                "out of range",
            ),
            (
                "rollout = [\"10%\"]\nsticky_header = \"X User\"",
                "not a header name",
            ),
        ] {
            let err = parse(keys).unwrap_err();
            assert!(err.contains(want), "{keys}: {err}");
            assert!(err.contains("ferry.toml:"), "{keys}: {err}");
        }
        // located at the step itself
        let err = parse("rollout = [\"10%\", \"5%\"]").unwrap_err();
        assert!(err.contains("ferry.toml:8:19"), "{err}");
        // an unheld share: at the share that follows it
        let err = parse("rollout = [\"10%\", \"50%\", \"wait 1m\"]").unwrap_err();
        assert!(err.contains("ferry.toml:8:19"), "{err}");
        // 100% straight after a held share, or a share then pause, are fine
        parse("rollout = [\"10%\", \"pause\", \"100%\"]").unwrap();
    }
}

//! `[monitor]`: post-deploy monitoring, its probe rules and its traffic rules.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::Diagnostic;
use super::duration::HumanDuration;
use super::raw::Fail;

/// Post-deploy monitoring (`[monitor]`): how long, how often, and the rules that roll back.
#[derive(Debug, Clone)]
pub struct Monitor {
    pub duration: Duration,
    pub interval: Duration,
    pub max_consecutive_failures: u32,
    pub min_success_rate: f64,
    pub max_response_time: Duration,
    pub max_error_lines: u32,
    pub error_window: Duration,
    pub error_pattern: regex::Regex,
    /// The rules judged from the traffic the proxy passed to the new instance.
    pub traffic: TrafficRules,
}

/// The traffic rules of `[monitor]`: all optional, none set means none judged.
#[derive(Debug, Clone, PartialEq)]
pub struct TrafficRules {
    /// Most errors (the app's 5xx and the proxy's 502/503/504) over requests.
    pub max_error_rate: Option<f64>,
    /// Slowest 99th percentile of the time to the app's response head.
    pub max_p99: Option<Duration>,
    /// Most the error rate may rise over the previous release's, in the same window before
    /// the switch (0.01: one point).
    pub max_error_rate_increase: Option<f64>,
    /// Below this many requests in the window the traffic rules are inconclusive.
    pub min_requests: u64,
    /// The sliding window the figures are taken over.
    pub window: Duration,
}

/// `min_requests` when not written.
pub const DEFAULT_MIN_REQUESTS: u64 = 50;
/// `window` when not written.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);

impl Default for TrafficRules {
    fn default() -> Self {
        TrafficRules {
            max_error_rate: None,
            max_p99: None,
            max_error_rate_increase: None,
            min_requests: DEFAULT_MIN_REQUESTS,
            window: DEFAULT_WINDOW,
        }
    }
}

impl TrafficRules {
    /// Whether any traffic rule is set.
    pub fn any(&self) -> bool {
        self.max_error_rate.is_some()
            || self.max_p99.is_some()
            || self.max_error_rate_increase.is_some()
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMonitor {
    duration: Option<HumanDuration>,
    interval: Option<HumanDuration>,
    max_consecutive_failures: Option<Spanned<i64>>,
    min_success_rate: Option<Spanned<f64>>,
    max_response_time: Option<HumanDuration>,
    max_error_lines: Option<Spanned<i64>>,
    error_window: Option<HumanDuration>,
    error_pattern: Option<Spanned<String>>,
    max_error_rate: Option<Spanned<f64>>,
    max_p99: Option<Spanned<HumanDuration>>,
    max_error_rate_increase: Option<Spanned<f64>>,
    min_requests: Option<Spanned<i64>>,
    window: Option<Spanned<HumanDuration>>,
}

/// A fraction from 0 to 1, or a located error naming `key`.
fn fraction(
    v: Option<Spanned<f64>>,
    key: &str,
    example: &str,
    fail: &Fail,
) -> Result<Option<f64>, Diagnostic> {
    match v {
        None => Ok(None),
        Some(r) if (0.0..=1.0).contains(r.get_ref()) => Ok(Some(*r.get_ref())),
        Some(r) => Err(fail(
            r.span(),
            format!("{key} = {} is not a fraction", r.get_ref()),
            &format!("write a number from 0.0 to 1.0, like {example}"),
        )),
    }
}

pub(super) fn validate(raw: RawMonitor, fail: &Fail) -> Result<Monitor, Diagnostic> {
    let d = |v: Option<HumanDuration>, default_ms: u64| {
        v.map_or(Duration::from_millis(default_ms), |d| d.0)
    };
    let count = |v: Option<Spanned<i64>>, default: u32, min: i64, key: &str| match v {
        None => Ok(default),
        Some(n) if (min..=1_000_000).contains(n.get_ref()) => Ok(*n.get_ref() as u32),
        Some(n) => Err(fail(
            n.span(),
            format!("{key} = {} is out of range", n.get_ref()),
            &format!("write a whole number from {min} up"),
        )),
    };
    let min_success_rate =
        fraction(raw.min_success_rate, "min_success_rate", "0.95", fail)?.unwrap_or(0.95);
    let pattern = raw
        .error_pattern
        .as_ref()
        .map_or("ERROR|CRITICAL|Traceback", |p| p.get_ref().as_str());
    let error_pattern = regex::Regex::new(pattern).map_err(|e| {
        let span = raw.error_pattern.as_ref().map(|p| p.span()).unwrap_or(0..0);
        fail(
            span,
            format!("error_pattern is not a valid regular expression: {e}"),
            "write a regular expression, like \"ERROR|CRITICAL|Traceback\"",
        )
    })?;
    let traffic = traffic_rules(
        TrafficRaw {
            max_error_rate: raw.max_error_rate,
            max_p99: raw.max_p99,
            max_error_rate_increase: raw.max_error_rate_increase,
            min_requests: raw.min_requests,
            window: raw.window,
        },
        fail,
    )?;
    let monitor = Monitor {
        duration: d(raw.duration, 5 * 60 * 1000),
        interval: d(raw.interval, 30 * 1000),
        max_consecutive_failures: count(
            raw.max_consecutive_failures,
            3,
            1,
            "max_consecutive_failures",
        )?,
        min_success_rate,
        max_response_time: d(raw.max_response_time, 10 * 1000),
        max_error_lines: count(raw.max_error_lines, 5, 0, "max_error_lines")?,
        error_window: d(raw.error_window, 60 * 1000),
        error_pattern,
        traffic,
    };
    if monitor.interval.is_zero() || monitor.interval > monitor.duration {
        return Err(fail(
            0..0,
            "[monitor] interval must be above zero and no longer than duration".into(),
            "for example duration = \"5m\" and interval = \"30s\"",
        ));
    }
    Ok(monitor)
}

struct TrafficRaw {
    max_error_rate: Option<Spanned<f64>>,
    max_p99: Option<Spanned<HumanDuration>>,
    max_error_rate_increase: Option<Spanned<f64>>,
    min_requests: Option<Spanned<i64>>,
    window: Option<Spanned<HumanDuration>>,
}

fn traffic_rules(raw: TrafficRaw, fail: &Fail) -> Result<TrafficRules, Diagnostic> {
    let max_p99 = match raw.max_p99 {
        None => None,
        Some(p) if !p.get_ref().0.is_zero() => Some(p.get_ref().0),
        Some(p) => {
            return Err(fail(
                p.span(),
                "max_p99 must be above zero".into(),
                "write a duration like \"800ms\"",
            ));
        }
    };
    let min_requests = match raw.min_requests {
        None => DEFAULT_MIN_REQUESTS,
        Some(n) if (1..=100_000_000).contains(n.get_ref()) => *n.get_ref() as u64,
        Some(n) => {
            return Err(fail(
                n.span(),
                format!("min_requests = {} is out of range", n.get_ref()),
                "write a whole number from 1 up, like 100",
            ));
        }
    };
    let max = crate::proxy::metrics::MAX_WINDOW;
    let window = match raw.window {
        None => DEFAULT_WINDOW,
        Some(w) if (Duration::from_secs(1)..=max).contains(&w.get_ref().0) => w.get_ref().0,
        Some(w) => {
            return Err(fail(
                w.span(),
                format!(
                    "window = \"{}\" is out of range",
                    super::format_duration(w.get_ref().0)
                ),
                &format!(
                    "write a duration from 1s to {}, like \"1m\"",
                    super::format_duration(max)
                ),
            ));
        }
    };
    Ok(TrafficRules {
        max_error_rate: fraction(raw.max_error_rate, "max_error_rate", "0.01", fail)?,
        max_p99,
        max_error_rate_increase: fraction(
            raw.max_error_rate_increase,
            "max_error_rate_increase",
            "0.01",
            fail,
        )?,
        min_requests,
        window,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ConfigError};

    const APP: &str = "[app]\nname = \"demo\"\nrepo = \"repo\"\nstart = \"./run\"\n\n\
                       [environments.staging]\nlisten = \"127.0.0.1:8081\"\n";

    fn load(extra: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("repo/.git")).unwrap();
        let path = dir.path().join("ferry.toml");
        Config::parse(&path, &format!("{APP}{extra}"))
    }

    #[test]
    fn traffic_rules_parse_with_defaults_and_located_mistakes() {
        let c = load("traffic_metrics = false\n[monitor]\n").unwrap();
        assert!(!c.environment("staging").unwrap().traffic_metrics);
        let m = c.monitor.unwrap();
        assert_eq!(m.traffic, TrafficRules::default());
        assert!(!m.traffic.any(), "without them monitoring works as before");
        assert!(
            load("")
                .unwrap()
                .environment("staging")
                .unwrap()
                .traffic_metrics
        );

        let c = load(
            "[monitor]\nmax_error_rate = 0.01\nmax_p99 = \"800ms\"\nmin_requests = 200\n\
             window = \"30s\"\nmax_error_rate_increase = 0.005\n",
        )
        .unwrap();
        let t = c.monitor.unwrap().traffic;
        assert_eq!(
            t,
            TrafficRules {
                max_error_rate: Some(0.01),
                max_p99: Some(Duration::from_millis(800)),
                max_error_rate_increase: Some(0.005),
                min_requests: 200,
                window: Duration::from_secs(30),
            }
        );
        assert!(t.any());

        for (extra, says, at) in [
            (
                "max_error_rate = 1.5",
                "max_error_rate = 1.5 is not a fraction",
                "1.5",
            ),
            ("max_error_rate_increase = -0.1", "not a fraction", "-0.1"),
            ("max_p99 = \"0s\"", "max_p99 must be above zero", "\"0s\""),
            ("max_p99 = \"fast\"", "", "\"fast\""),
            ("min_requests = 0", "min_requests = 0 is out of range", "0"),
            (
                "window = \"1h\"",
                "window = \"1h\" is out of range",
                "\"1h\"",
            ),
            ("window = \"500ms\"", "out of range", "\"500ms\""),
        ] {
            let Err(ConfigError::Invalid(d)) = load(&format!("[monitor]\n{extra}\n")) else {
                panic!("accepted: {extra}")
            };
            assert!(d.message.contains(says), "{extra}: {}", d.message);
            assert_eq!(d.line, 9, "{extra}");
            assert_eq!(d.column, extra.find(at).unwrap() + 1, "{extra}");
        }
    }
}

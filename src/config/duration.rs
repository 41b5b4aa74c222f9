//! Human durations in config files: `"500ms"`, `"2s"`, `"5m"`, `"1h"`, `"30d"`.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};

/// A duration written as a number and a unit, as config files spell it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

/// The hint shown with every duration error.
pub const DURATION_HELP: &str =
    "write a whole number followed by ms, s, m, h or d, like \"500ms\", \"30s\" or \"5m\"";

/// Parses `"500ms"`, `"2s"`, `"5m"`, `"1h"`, `"30d"` (days of 24 hours); whitespace around the text is allowed.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("duration \"{text}\" has no unit: {DURATION_HELP}"))?;
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err(format!("invalid duration \"{text}\": {DURATION_HELP}"));
    }
    let n: u64 = number
        .parse()
        .map_err(|_| format!("duration \"{text}\" is too large"))?;
    let millis_per_unit: u64 = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("invalid duration \"{text}\": {DURATION_HELP}")),
    };
    n.checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("duration \"{text}\" is too large"))
}

/// Formats a duration the way config files write it (`1500ms`, `2s`, `5m`, `30d`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        "0s".to_string()
    } else if ms >= 2 * 86_400_000 && ms.is_multiple_of(86_400_000) {
        // a day or less stays in hours ("24h")
        format!("{}d", ms / 86_400_000)
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1_000) {
        format!("{}s", ms / 1_000)
    } else {
        format!("{ms}ms")
    }
}

impl fmt::Debug for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

impl<'de> serde::Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;
        impl Visitor<'_> for DurationVisitor {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string like \"30s\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HumanDuration, E> {
                parse_duration(v).map(HumanDuration).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<HumanDuration, E> {
                Err(E::custom(format!(
                    "duration {v} has no unit: write it as a string, like \"{v}s\""
                )))
            }
        }
        deserializer.deserialize_any(DurationVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_unit() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration(" 5m "), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_bad_text_with_a_hint() {
        for bad in [
            "",
            "5",
            "s",
            "5 minutes",
            "-1s",
            "1.5s",
            "5x",
            "99999999999999999999s",
        ] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains("duration"), "{bad}: {err}");
        }
        assert!(parse_duration("5x").unwrap_err().contains("like \"500ms\""));
    }

    #[test]
    fn formats_round_trip() {
        for text in [
            "0s", "500ms", "2s", "5m", "1h", "1500ms", "30d", "36h", "24h",
        ] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
    }

    proptest::proptest! {
        #[test]
        fn any_text_parses_or_is_refused_without_panic(text in "\\PC{0,24}") {
            if let Ok(d) = parse_duration(&text) {
                // what parses formats back to text that parses to the same
                proptest::prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
            }
        }

        #[test]
        fn numbers_with_a_unit_parse_exactly(n in 0u64..1_000_000, unit in 0usize..5) {
            let (suffix, d) = [
                ("ms", Duration::from_millis(n)),
                ("s", Duration::from_secs(n)),
                ("m", Duration::from_secs(n * 60)),
                ("h", Duration::from_secs(n * 3600)),
                ("d", Duration::from_secs(n * 86_400)),
            ][unit];
            proptest::prop_assert_eq!(parse_duration(&format!("{n}{suffix}")), Ok(d));
        }
    }
}

//! Freeze windows: times when deploys are refused unless forced with a reason.
//!
//! Three forms, all in the environment's time zone:
//! - weekly, `"Fri 17:00 - Mon 09:00"` (wraps around the week end);
//! - daily, `"18:00 - 08:00"` (wraps around midnight);
//! - dates, `"2026-12-24 - 2026-12-27"` (the end day included) or with times,
//!   `"2026-12-24 18:00 - 2026-12-27 09:00"` (the end excluded).
//!
//! Parsed here, with the config that states them; the policy's freeze gate asks them.

use std::fmt;

use chrono::{Datelike, Duration, NaiveDate, NaiveDateTime, NaiveTime, Timelike, Weekday};

const MINUTES_PER_DAY: u32 = 24 * 60;
const MINUTES_PER_WEEK: u32 = 7 * MINUTES_PER_DAY;

/// One freeze window, as written in the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreezeWindow {
    text: String,
    span: Span,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Span {
    /// Minutes since Monday 00:00, start and end.
    Weekly(u32, u32),
    /// Minutes since midnight, start and end.
    Daily(u32, u32),
    /// From start (included) to end (excluded).
    Dates(NaiveDateTime, NaiveDateTime),
}

impl FreezeWindow {
    /// Parses one window; the error says which forms are understood.
    pub fn parse(text: &str) -> Result<FreezeWindow, String> {
        let help =
            "write \"Fri 17:00 - Mon 09:00\", \"18:00 - 08:00\" or \"2026-12-24 - 2026-12-27\"";
        let Some((from, to)) = text.split_once(" - ") else {
            return Err(format!(
                "freeze window \"{text}\" has no \" - \" between its start and end; {help}"
            ));
        };
        let (from, to) = (from.trim(), to.trim());
        let bad =
            |part: &str| format!("cannot read \"{part}\" in freeze window \"{text}\"; {help}");
        let span = if let (Some(a), Some(b)) = (weekly(from), weekly(to)) {
            Span::Weekly(a, b)
        } else if let (Some(a), Some(b)) = (time(from), time(to)) {
            Span::Daily(minutes(a), minutes(b))
        } else {
            let start = date_time(from, false).ok_or_else(|| bad(from))?;
            let end = date_time(to, true).ok_or_else(|| bad(to))?;
            if end <= start {
                return Err(format!("freeze window \"{text}\" ends before it starts"));
            }
            Span::Dates(start, end)
        };
        if matches!(span, Span::Weekly(a, b) | Span::Daily(a, b) if a == b) {
            return Err(format!(
                "freeze window \"{text}\" starts and ends at the same time"
            ));
        }
        Ok(FreezeWindow {
            text: text.to_string(),
            span,
        })
    }

    /// True when local time `at` falls inside the window.
    pub fn contains(&self, at: NaiveDateTime) -> bool {
        let cyclic = |now: u32, start: u32, end: u32| {
            if start < end {
                start <= now && now < end
            } else {
                now >= start || now < end
            }
        };
        match self.span {
            Span::Weekly(start, end) => {
                let now =
                    at.weekday().num_days_from_monday() * MINUTES_PER_DAY + minutes(at.time());
                cyclic(now, start, end)
            }
            Span::Daily(start, end) => cyclic(minutes(at.time()), start, end),
            Span::Dates(start, end) => start <= at && at < end,
        }
    }
}

impl fmt::Display for FreezeWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn minutes(t: NaiveTime) -> u32 {
    t.hour() * 60 + t.minute()
}

fn time(s: &str) -> Option<NaiveTime> {
    NaiveTime::parse_from_str(s, "%H:%M").ok()
}

/// `"Fri 17:00"` as minutes since Monday 00:00.
fn weekly(s: &str) -> Option<u32> {
    let (day, at) = s.split_once(' ')?;
    let day: Weekday = day.parse().ok()?;
    let at = time(at.trim())?;
    Some((day.num_days_from_monday() * MINUTES_PER_DAY + minutes(at)) % MINUTES_PER_WEEK)
}

/// `"2026-12-24"` or `"2026-12-24 18:00"`; a bare date at the end of a window means the
/// end of that day.
fn date_time(s: &str, end: bool) -> Option<NaiveDateTime> {
    if let Ok(at) = NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M") {
        return Some(at);
    }
    let day = NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
    let midnight = day.and_time(NaiveTime::MIN);
    Some(if end {
        midnight + Duration::days(1)
    } else {
        midnight
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").unwrap()
    }

    #[test]
    fn weekly_window_wraps_over_the_weekend() {
        let w = FreezeWindow::parse("Fri 17:00 - Mon 09:00").unwrap();
        // 2026-11-20 is a Friday
        assert!(!w.contains(at("2026-11-20 16:59")));
        assert!(w.contains(at("2026-11-20 17:00")));
        assert!(w.contains(at("2026-11-22 12:00")));
        assert!(w.contains(at("2026-11-23 08:59")));
        assert!(!w.contains(at("2026-11-23 09:00")));
        assert!(!w.contains(at("2026-11-25 12:00")));
        let midweek = FreezeWindow::parse("wednesday 10:00 - wed 11:30").unwrap();
        assert!(midweek.contains(at("2026-11-25 11:00")));
        assert!(!midweek.contains(at("2026-11-26 11:00")));
    }

    #[test]
    fn daily_window_wraps_over_midnight() {
        let w = FreezeWindow::parse("18:00 - 08:00").unwrap();
        assert!(w.contains(at("2026-11-23 23:00")));
        assert!(w.contains(at("2026-11-24 07:59")));
        assert!(!w.contains(at("2026-11-24 12:00")));
    }

    #[test]
    fn date_window_includes_its_last_day() {
        let w = FreezeWindow::parse("2026-12-24 - 2026-12-27").unwrap();
        assert!(!w.contains(at("2026-12-23 23:59")));
        assert!(w.contains(at("2026-12-24 00:00")));
        assert!(w.contains(at("2026-12-27 23:59")));
        assert!(!w.contains(at("2026-12-28 00:00")));
        let timed = FreezeWindow::parse("2026-12-24 18:00 - 2026-12-27 09:00").unwrap();
        assert!(!timed.contains(at("2026-12-24 17:59")));
        assert!(!timed.contains(at("2026-12-27 09:00")));
    }

    #[test]
    fn bad_windows_say_what_is_wrong() {
        for (text, says) in [
            ("Fri 17:00 to Mon 09:00", "no \" - \""),
            ("Fri 25:00 - Mon 09:00", "cannot read \"Fri 25:00\""),
            ("2026-12-27 - 2026-12-24", "ends before it starts"),
            ("10:00 - 10:00", "same time"),
            ("Funday 10:00 - Mon 09:00", "cannot read"),
        ] {
            let err = FreezeWindow::parse(text).unwrap_err();
            assert!(err.contains(says), "{text}: {err}");
        }
    }
}

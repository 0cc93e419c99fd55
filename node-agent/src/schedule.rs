//! `scrubSchedule`: 5-field cron expressions (minute hour day-of-month month day-of-week, node-local
//! time) and the question the controller asks each pass: did a scheduled time pass since the last
//! look? Fields take `*`, numbers, ranges `a-b`, steps `*/n` and `a-b/n`, lists `a,b`, and month
//! and weekday names (`jan`, `mon`). As in cron, when both day-of-month and day-of-week are
//! restricted a day matching either fires.

use k8s_openapi::jiff::civil::DateTime;
use k8s_openapi::jiff::{Span, ToSpan};

use crate::error::{Error, Result};

/// A parsed cron schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    minutes: Vec<bool>,
    hours: Vec<bool>,
    days: Vec<bool>,
    months: Vec<bool>,
    weekdays: Vec<bool>,
    days_star: bool,
    weekdays_star: bool,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

fn bad(expr: &str, why: &str) -> Error {
    Error::InvalidPool(format!("scrubSchedule `{expr}`: {why}"))
}

fn field(
    expr: &str,
    f: &str,
    min: u32,
    max: u32,
    names: &[&str],
    name_base: u32,
) -> Result<Vec<bool>> {
    let mut set = vec![false; max as usize + 1];
    let value = |s: &str| -> Result<u32> {
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
            return Ok(i as u32 + name_base);
        }
        s.parse::<u32>()
            .map_err(|_| bad(expr, &format!("`{s}` is not a number")))
    };
    for part in f.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<u32>()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| bad(expr, &format!("bad step in `{part}`")))?,
            ),
            None => (part, 1),
        };
        let (lo, hi) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a)?, value(b)?)
        } else {
            let v = value(range)?;
            (v, if part.contains('/') { max } else { v })
        };
        if lo < min || hi > max || lo > hi {
            return Err(bad(expr, &format!("`{part}` is outside {min}-{max}")));
        }
        let mut v = lo;
        while v <= hi {
            set[v as usize] = true;
            v += step;
        }
    }
    Ok(set)
}

impl Cron {
    /// Parse a 5-field expression.
    pub fn parse(expr: &str) -> Result<Cron> {
        let f: Vec<&str> = expr.split_whitespace().collect();
        if f.len() != 5 {
            return Err(bad(expr, "expected 5 fields"));
        }
        let mut weekdays = field(expr, f[4], 0, 7, &DAYS, 0)?;
        if weekdays[7] {
            weekdays[0] = true; // 7 is Sunday too
        }
        Ok(Cron {
            minutes: field(expr, f[0], 0, 59, &[], 0)?,
            hours: field(expr, f[1], 0, 23, &[], 0)?,
            days: field(expr, f[2], 1, 31, &[], 0)?,
            months: field(expr, f[3], 1, 12, &MONTHS, 1)?,
            weekdays,
            days_star: f[2] == "*",
            weekdays_star: f[4] == "*",
        })
    }

    /// Whether the schedule fires at minute `t` (seconds ignored).
    pub fn matches(&self, t: DateTime) -> bool {
        let dom = self.days[t.day() as usize];
        let dow = self.weekdays[t.weekday().to_sunday_zero_offset() as usize];
        let day = match (self.days_star, self.weekdays_star) {
            (true, true) => true,
            (false, true) => dom,
            (true, false) => dow,
            (false, false) => dom || dow,
        };
        self.minutes[t.minute() as usize]
            && self.hours[t.hour() as usize]
            && self.months[t.month() as usize]
            && day
    }

    /// Whether the schedule fired in `(after, until]` (whole minutes). Looks back at most 400
    /// days: a longer gap counts as fired when any minute of those days matches.
    pub fn fired_between(&self, after: DateTime, until: DateTime) -> bool {
        let Ok(start) = after.with().second(0).subsec_nanosecond(0).build() else {
            return false;
        };
        let limit = until
            .checked_sub(Span::new().days(400))
            .unwrap_or(start)
            .max(start);
        let mut t = limit;
        loop {
            t = match t.checked_add(1.minute()) {
                Ok(t) => t,
                Err(_) => return false,
            };
            if t > until {
                return false;
            }
            if self.matches(t) {
                return true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::civil::date;

    fn at(y: i16, mo: i8, d: i8, h: i8, mi: i8) -> DateTime {
        date(y, mo, d).at(h, mi, 0, 0)
    }

    #[test]
    fn monthly_at_three_fires_once_across_the_first() {
        let c = Cron::parse("0 3 1 * *").unwrap();
        assert!(c.matches(at(2026, 12, 1, 3, 0)));
        assert!(!c.matches(at(2026, 12, 2, 3, 0)));
        assert!(c.fired_between(at(2026, 11, 30, 23, 0), at(2026, 12, 1, 3, 0)));
        assert!(!c.fired_between(at(2026, 12, 1, 3, 0), at(2026, 12, 1, 4, 0)));
        assert!(!c.fired_between(at(2026, 12, 1, 2, 0), at(2026, 12, 1, 2, 59)));
    }

    #[test]
    fn weekly_steps_ranges_lists_and_names() {
        let c = Cron::parse("0 4 * * 0").unwrap();
        // 2026-11-22 is a Sunday
        assert!(c.matches(at(2026, 11, 22, 4, 0)));
        assert!(!c.matches(at(2026, 11, 23, 4, 0)));
        assert_eq!(c, Cron::parse("0 4 * * sun").unwrap());
        assert!(Cron::parse("0 4 * * 7").unwrap().weekdays[0]);
        let c = Cron::parse("*/15 1-3,22 * jan-mar mon-fri").unwrap();
        assert!(c.matches(at(2026, 1, 5, 22, 45)));
        assert!(!c.matches(at(2026, 1, 5, 22, 50)));
        assert!(!c.matches(at(2026, 4, 6, 1, 0)));
        assert!(!c.matches(at(2026, 1, 4, 1, 0)), "a Sunday");
    }

    #[test]
    fn day_of_month_or_day_of_week_when_both_are_set() {
        let c = Cron::parse("0 0 13 * 5").unwrap();
        assert!(c.matches(at(2026, 11, 13, 0, 0)), "the 13th");
        assert!(c.matches(at(2026, 11, 20, 0, 0)), "a Friday");
        assert!(!c.matches(at(2026, 11, 19, 0, 0)));
    }

    #[test]
    fn bad_expressions_are_errors() {
        for e in [
            "",
            "* * * *",
            "60 * * * *",
            "* 24 * * *",
            "*/0 * * * *",
            "x * * * *",
            "5-1 * * * *",
        ] {
            assert!(Cron::parse(e).is_err(), "{e}");
        }
    }
}

//! Cron schedules: parsing and next-fire computation over croner.
//!
//! PURE: time is an argument, never read here. Only 5-field expressions and
//! `@hourly`-style macros are accepted (no seconds, no year field), matching
//! classic cron so operators' existing expressions mean what they expect.

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// Parse a 5-field expression or macro; the error is an operator-facing message.
pub fn parse(expr: &str) -> Result<Cron, String> {
    let fields = expr.split_whitespace().count();
    if !expr.trim_start().starts_with('@') && fields != 5 {
        return Err(format!("expected 5 fields, found {fields}"));
    }
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(expr)
        .map_err(|e| {
            let m = e.to_string();
            m.trim_end_matches('.').to_lowercase()
        })
}

/// The first fire strictly after `after`, in `after`'s time zone.
pub fn next_fire(cron: &Cron, after: &jiff::Zoned) -> Option<jiff::Zoned> {
    cron.find_next_occurrence(after, false).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_five_fields_and_macros() {
        for ok in [
            "* * * * *",
            "*/5 9-17 * * MON-FRI",
            "@hourly",
            "@daily",
            "@weekly",
            "0 0 1 1 *",
        ] {
            assert!(parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "* * * *",
            "0 * * * * *",
            "61 * * * *",
            "@sometimes",
            "* * * * * 2030",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn next_fire_is_strictly_after() {
        let c = parse("0 * * * *").expect("valid");
        let t: jiff::Zoned = "2026-03-01T10:00:00[UTC]".parse().expect("time");
        let n = next_fire(&c, &t).expect("fires");
        assert_eq!(n.to_string(), "2026-03-01T11:00:00+00:00[UTC]");
    }
}

//! Cron expressions and the names of their fires: parsing, next and
//! previous fire over croner, and the request id of a fire. A leaf: both
//! validation (`desired`) and the scheduler (`schedule`) use it, and it
//! uses neither.
//!
//! PURE: time is an argument, never read here. Only 5-field expressions and
//! `@hourly`-style macros are accepted (no seconds, no year field), matching
//! classic cron so operators' expressions mean what they expect. Times are
//! `jiff::Zoned` in the daemon's local zone; DST follows croner: a local time
//! skipped by spring-forward fires at the first valid time after it, and a
//! time that occurs twice (fall-back) fires once.

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
        .map_err(|e| e.to_string().trim_end_matches('.').to_lowercase())
}

/// The first fire strictly after `after`, in `after`'s time zone.
pub fn next_fire(cron: &Cron, after: &jiff::Zoned) -> Option<jiff::Zoned> {
    cron.find_next_occurrence(after, false).ok()
}

/// The latest fire at or before `at`.
pub fn previous_fire(cron: &Cron, at: &jiff::Zoned) -> Option<jiff::Zoned> {
    cron.find_previous_occurrence(at, true).ok()
}

/// The request id of a fire: `<profile>-<YYYYMMDDTHHMM>` in local time.
pub fn request_id(profile: &str, fire: &jiff::Zoned) -> String {
    format!("{profile}-{}", fire.strftime("%Y%m%dT%H%M"))
}

/// Whether `id` is a name the scheduler gives to `profile`'s fires (only
/// those are ever pruned: an operator's own files never are).
pub fn is_fire_id(profile: &str, id: &str) -> bool {
    id.strip_prefix(profile)
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|stamp| {
            let b = stamp.as_bytes();
            b.len() == 13
                && b[8] == b'T'
                && b.iter()
                    .enumerate()
                    .all(|(i, c)| i == 8 || c.is_ascii_digit())
        })
}

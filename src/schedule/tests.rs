//! next_fire in a named zone across DST, macros, invalid expressions, and
//! the scheduler's pure decisions.

use super::*;
use crate::observed::Status;

fn ny(s: &str) -> jiff::Zoned {
    format!("{s}[America/New_York]")
        .parse()
        .expect("valid zoned time")
}

fn fire_after(expr: &str, after: &str) -> String {
    next_fire(&parse(expr).expect("valid"), &ny(after))
        .expect("fires")
        .to_string()
}

#[test]
fn accepts_five_fields_and_macros_only() {
    for ok in [
        "* * * * *",
        "*/5 9-17 * * MON-FRI",
        "@hourly",
        "@daily",
        "@weekly",
        "@monthly",
        "@yearly",
        "0 0 1 1 *",
    ] {
        assert!(parse(ok).is_ok(), "{ok}");
    }
    for bad in [
        "",
        "* * * *",
        "0 * * * * *",
        "61 * * * *",
        "* 25 * * *",
        "@sometimes",
        "* * * * * 2030",
        "a b c d e",
    ] {
        assert!(parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn next_fire_is_strictly_after_and_keeps_the_zone() {
    assert_eq!(
        fire_after("0 * * * *", "2026-03-01T10:00:00"),
        "2026-03-01T11:00:00-05:00[America/New_York]"
    );
    assert_eq!(
        fire_after("@hourly", "2026-03-01T10:59:59"),
        "2026-03-01T11:00:00-05:00[America/New_York]"
    );
    assert_eq!(
        fire_after("@daily", "2026-03-01T10:00:00"),
        "2026-03-02T00:00:00-05:00[America/New_York]"
    );
    assert_eq!(
        fire_after("*/15 * * * *", "2026-03-01T10:07:00"),
        "2026-03-01T10:15:00-05:00[America/New_York]"
    );
}

#[test]
fn spring_forward_skipped_time_fires_after_the_gap() {
    // 2026-03-08 02:00 EST jumps to 03:00 EDT: 02:30 does not exist that day.
    let f = fire_after("30 2 * * *", "2026-03-08T00:00:00");
    assert!(
        f.starts_with("2026-03-08T03:"),
        "fires once right after the gap, that day: {f}"
    );
    assert!(f.ends_with("-04:00[America/New_York]"), "{f}");
    // And the day after, at 02:30 again.
    assert_eq!(
        fire_after("30 2 * * *", "2026-03-08T12:00:00"),
        "2026-03-09T02:30:00-04:00[America/New_York]"
    );
}

#[test]
fn fall_back_repeated_time_fires_once() {
    // 2026-11-01 02:00 EDT falls back to 01:00 EST: 01:30 happens twice.
    let first = ny("2026-11-01T00:00:00");
    let cron = parse("30 1 * * *").expect("valid");
    let a = next_fire(&cron, &first).expect("fires");
    assert_eq!(a.to_string(), "2026-11-01T01:30:00-04:00[America/New_York]");
    let b = next_fire(&cron, &a).expect("fires");
    assert_eq!(
        b.to_string(),
        "2026-11-02T01:30:00-05:00[America/New_York]",
        "the repeated 01:30 EST does not fire again"
    );
    // An hourly schedule still fires every real hour through the fold.
    let hourly = parse("0 * * * *").expect("valid");
    let t1 = next_fire(&hourly, &ny("2026-11-01T00:30:00")).expect("fires");
    let t2 = next_fire(&hourly, &t1).expect("fires");
    assert_eq!(
        t1.to_string(),
        "2026-11-01T01:00:00-04:00[America/New_York]"
    );
    assert!(t2.timestamp() > t1.timestamp());
}

#[test]
fn fire_ids_are_deterministic_local_minutes() {
    let t = ny("2026-11-01T01:30:00");
    assert_eq!(request_id("nightly", &t), "nightly-20261101T0130");
    assert!(is_fire_id("nightly", "nightly-20261101T0130"));
    for not in [
        "nightly-20261101T013",
        "nightly-2026110110130",
        "other-20261101T0130",
        "nightly-x0261101T0130",
        "nightly-20261101T0130.5",
    ] {
        assert!(!is_fire_id("nightly", not), "{not}");
    }
}

fn ts(s: &str) -> jiff::Timestamp {
    ny(s).timestamp()
}

#[test]
fn due_fires_the_current_minute_once() {
    let c = parse("* * * * *").expect("valid");
    // Fresh profile: the minute it is first seen is not a backlog.
    let d = due(
        &c,
        ts("2026-05-01T10:00:30"),
        &ny("2026-05-01T10:00:30"),
        None,
    );
    assert_eq!(d.fire, None);
    assert_eq!(d.missed, None);
    assert_eq!(
        d.next.map(|n| n.to_string()).as_deref(),
        Some("2026-05-01T10:01:00-04:00[America/New_York]")
    );
    // On time.
    let d = due(
        &c,
        ts("2026-05-01T10:00:30"),
        &ny("2026-05-01T10:01:00.2"),
        None,
    );
    assert_eq!(
        d.fire.map(|f| f.to_string()).as_deref(),
        Some("2026-05-01T10:01:00-04:00[America/New_York]")
    );
    // A restart inside the same minute: already fired.
    let d = due(
        &c,
        ts("2026-05-01T10:01:00"),
        &ny("2026-05-01T10:01:40"),
        None,
    );
    assert_eq!(d.fire, None);
}

#[test]
fn fires_missed_while_down_are_not_backfilled_unless_within_the_starting_deadline() {
    let c = parse("0 * * * *").expect("valid");
    let last = ts("2026-05-01T09:00:00");
    let now = ny("2026-05-01T10:10:30");
    let d = due(&c, last, &now, None);
    assert_eq!(d.fire, None);
    assert_eq!(
        d.missed.map(|m| m.to_string()).as_deref(),
        Some("2026-05-01T10:00:00-04:00[America/New_York]")
    );
    let d = due(&c, last, &now, Some(Duration::from_secs(15 * 60)));
    assert_eq!(
        d.fire.map(|m| m.to_string()).as_deref(),
        Some("2026-05-01T10:00:00-04:00[America/New_York]")
    );
    let d = due(&c, last, &now, Some(Duration::from_secs(5 * 60)));
    assert_eq!(d.fire, None);
}

fn st(id: &str, profile: &str, phase: Phase, origin: Origin) -> Status {
    let mut s = Status::new(id, profile);
    s.phase = phase;
    s.origin = origin;
    s
}

#[test]
fn history_prunes_only_finished_scheduled_fires_oldest_first() {
    let statuses = [
        st("p-20260501T1000", "p", Phase::Done, Origin::Schedule),
        st("p-20260501T1001", "p", Phase::Done, Origin::Schedule),
        st("p-20260501T1002", "p", Phase::Done, Origin::Schedule),
        st("p-20260501T1003", "p", Phase::Running, Origin::Schedule),
        st("p-manual", "p", Phase::Done, Origin::File),
        st("p-20260501T0959", "p", Phase::Done, Origin::File),
        st("q-20260501T0900", "q", Phase::Done, Origin::Schedule),
    ];
    assert_eq!(
        history_to_prune("p", 1, &statuses),
        ["p-20260501T1000", "p-20260501T1001"]
    );
    assert!(history_to_prune("p", 10, &statuses).is_empty());
    let active: Vec<&str> = active_fires("p", &statuses)
        .iter()
        .map(|s| s.request.as_str())
        .collect();
    assert_eq!(active, ["p-20260501T1003"]);
}

#[test]
fn the_fire_range_holds_every_fire_of_the_profile_and_no_other_issue_12() {
    let ids = [
        "o-20260501T1000",
        "p",
        "p-",
        "p-20260501T1000",
        "p-20260501T1001",
        "p-manual",
        "p.x",
        "pa-20260501T1000",
        "q-20260501T1000",
    ];
    let map: std::collections::BTreeMap<String, Status> = ids
        .iter()
        .map(|id| (id.to_string(), st(id, "p", Phase::Done, Origin::Schedule)))
        .collect();
    let got: Vec<&str> = fire_range(&map, "p").map(|s| s.request.as_str()).collect();
    assert_eq!(
        got,
        ["p-", "p-20260501T1000", "p-20260501T1001", "p-manual"]
    );
    assert_eq!(
        history_to_prune("p", 0, fire_range(&map, "p")),
        history_to_prune("p", 0, map.values())
    );
}

#[test]
fn a_file_squatting_a_fire_name_does_not_stop_the_fire_issue_13() {
    use crate::desired::{Desired, Profile, Rejected, Repo, Request, RequestEntry, Schedule};
    let mut desired = Desired::default();
    desired.profiles.insert(
        "tick".into(),
        Profile {
            repo: Some(Repo::Url("https://example.com/r.git".into())),
            schedule: Some(Schedule {
                expr: "* * * * *".into(),
            }),
            ..Profile::minimal("tick", "img", &["true"])
        },
    );
    let squat = |id: &str| {
        RequestEntry::Invalid(Box::new(Rejected {
            path: format!("d/requests/{id}.toml").into(),
            diagnostics: Vec::new(),
            sha256: None,
        }))
    };
    // 10:01 is squatted by a planted link (invalid, with an invalid
    // status); 10:02 by a real earlier fire, which is never written twice.
    desired
        .requests
        .insert("tick-20260501T1001".into(), squat("tick-20260501T1001"));
    let mut statuses = std::collections::BTreeMap::new();
    statuses.insert(
        "tick-20260501T1001".to_string(),
        st("tick-20260501T1001", "", Phase::Invalid, Origin::File),
    );
    let mut s = Scheduler::default();
    let fired = |s: &mut Scheduler,
                 d: &Desired,
                 st: &std::collections::BTreeMap<String, Status>,
                 at: &str| {
        s.tick(d, st, &ny(at))
            .into_iter()
            .filter_map(|a| match a {
                SchedAction::Materialize { id, .. } => Some(id),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    assert!(fired(&mut s, &desired, &statuses, "2026-05-01T10:00:30").is_empty());
    assert_eq!(
        fired(&mut s, &desired, &statuses, "2026-05-01T10:01:00.2"),
        ["tick-20260501T1001"]
    );
    let mut earlier = Request {
        id: "tick-20260501T1002".into(),
        path: "d/requests/tick-20260501T1002.toml".into(),
        profile: "tick".into(),
        repo: None,
        input: crate::desired::Input::None,
        timeout: None,
        scheduled_for: Some(ts("2026-05-01T10:02:00")),
        spec_sha256: "s".into(),
    };
    desired.requests.insert(
        earlier.id.clone(),
        RequestEntry::Valid(earlier.clone().into()),
    );
    assert!(fired(&mut s, &desired, &statuses, "2026-05-01T10:02:00.2").is_empty());
    // A plain request squatting the next name is replaced too.
    earlier.id = "tick-20260501T1003".into();
    earlier.scheduled_for = None;
    desired
        .requests
        .insert(earlier.id.clone(), RequestEntry::Valid(earlier.into()));
    assert_eq!(
        fired(&mut s, &desired, &statuses, "2026-05-01T10:03:00.2"),
        ["tick-20260501T1003"]
    );
}

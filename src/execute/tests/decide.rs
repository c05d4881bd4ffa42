//! The pure decisions of start and finish, as tables (issue 18).

use crate::execute::finish::{Step, Verdict, decide, step};
use crate::execute::start::{Next, StartError};
use crate::observed::{ContainerState, Outcome, StopReason};
use crate::runtime::{ContainerInfo, ErrorKind, ImageIdentity, RuntimeError};

fn ts(ms: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_millisecond(ms).expect("timestamp")
}

/// A container that ran and ended with `code` at `finished` ms.
fn exited(code: i32, finished: i64, deadline: i64, oom: bool) -> ContainerInfo {
    ContainerInfo {
        id: "c".into(),
        state: ContainerState::Exited(code),
        exit_code: code,
        image: ImageIdentity::default(),
        started_at: Some(ts(1_000)),
        finished_at: Some(ts(finished)),
        oom_killed: oom,
        deadline: Some(deadline),
        namespaces: None,
        removes_itself: false,
    }
}

fn never_started() -> ContainerInfo {
    ContainerInfo {
        state: ContainerState::Created,
        started_at: None,
        finished_at: None,
        ..exited(0, 0, 100_000, false)
    }
}

#[test]
fn the_outcome_is_decided_from_what_is_known_issue_18() {
    let now = ts(50_000);
    let ok = exited(0, 2_000, 100_000, false);
    let failed = exited(5, 2_000, 100_000, false);
    let oom = exited(137, 2_000, 100_000, true);
    let signal = exited(143, 2_000, 100_000, false);
    let late = exited(0, 100_001, 100_000, false);
    let created = never_started();
    let reset = ContainerInfo {
        state: ContainerState::Created,
        ..ok.clone()
    };
    type Row<'a> = (
        &'a str,
        Option<StopReason>,
        bool,
        Option<&'a ContainerInfo>,
        bool,
        (Outcome, Option<i32>, Option<&'a str>),
    );
    let rows: [Row; 12] = [
        (
            "exit 0",
            None,
            true,
            Some(&ok),
            false,
            (Outcome::Success, Some(0), None),
        ),
        (
            "exit 5",
            None,
            true,
            Some(&failed),
            false,
            (Outcome::WorkFailed, Some(5), None),
        ),
        (
            "out of memory",
            None,
            true,
            Some(&oom),
            false,
            (
                Outcome::TerminatedBySignal,
                Some(137),
                Some("killed: out of memory"),
            ),
        ),
        (
            "a signal",
            None,
            true,
            Some(&signal),
            false,
            (Outcome::TerminatedBySignal, Some(143), None),
        ),
        (
            "ended past its deadline",
            None,
            true,
            Some(&late),
            false,
            (
                Outcome::TimedOut,
                Some(0),
                Some("timed out: stopped at the deadline"),
            ),
        ),
        (
            "stopped at the deadline",
            Some(StopReason::TimedOut),
            true,
            Some(&signal),
            false,
            (
                Outcome::TimedOut,
                Some(143),
                Some("timed out: stopped at the deadline"),
            ),
        ),
        (
            "cancelled while running",
            Some(StopReason::Cancelled),
            true,
            Some(&signal),
            true,
            (
                Outcome::Cancelled,
                Some(143),
                Some("cancelled: the request file was removed"),
            ),
        ),
        (
            "cancelled before it started",
            None,
            true,
            Some(&created),
            true,
            (
                Outcome::Cancelled,
                None,
                Some("cancelled before it started"),
            ),
        ),
        (
            "no session, no container",
            None,
            false,
            None,
            false,
            (
                Outcome::Cancelled,
                None,
                Some("cancelled before it started"),
            ),
        ),
        (
            "reset by a host restart",
            None,
            true,
            Some(&reset),
            false,
            (
                Outcome::GenericFailure,
                None,
                Some("the container was reset before it exited (host restart?); no exit code"),
            ),
        ),
        (
            "vanished",
            None,
            true,
            None,
            false,
            (
                Outcome::GenericFailure,
                None,
                Some("the container disappeared before its exit code was collected"),
            ),
        ),
        (
            "never started, not cancelled",
            None,
            true,
            Some(&created),
            false,
            (
                Outcome::GenericFailure,
                None,
                Some("the container disappeared before its exit code was collected"),
            ),
        ),
    ];
    for (what, stop, had_session, container, cancelled, (outcome, code, message)) in rows {
        let got = decide(stop, had_session, container, cancelled, now);
        let want = Verdict {
            outcome,
            exit_code: code,
            message: message.map(str::to_string),
        };
        assert_eq!(got, want, "{what}");
    }
}

#[test]
fn finishing_resumes_stops_restarts_or_records_issue_18() {
    // (running, stopping, unprepared) -> step
    let rows = [
        ((true, false, false), Step::Resume),
        ((true, false, true), Step::Resume),
        ((true, true, false), Step::StopAgain),
        ((false, false, true), Step::StartAgain),
        ((false, true, true), Step::StartAgain),
        ((false, false, false), Step::Record),
        ((false, true, false), Step::Record),
    ];
    for ((running, stopping, unprepared), want) in rows {
        assert_eq!(
            step(running, stopping, unprepared),
            want,
            "{running} {stopping} {unprepared}"
        );
    }
}

#[test]
fn the_kind_of_a_failed_run_decides_retry_or_start_failed_issue_18() {
    let profile = crate::desired::Profile::minimal("p", "localhost/img:1", &["true"]);
    let err = |kind| RuntimeError::new(kind, "boom");
    // Fatal at once, naming the cause.
    let fatal = [
        (
            ErrorKind::ImageMissing,
            "image `localhost/img:1` is not available locally (agentd never pulls): boom",
        ),
        (
            ErrorKind::HostNetwork("its helper failed"),
            "network: the default network of rootless Podman could not start: its helper failed; hint: set `network = \"none\"` in profile p",
        ),
        (ErrorKind::Failed, "podman run failed: boom"),
    ];
    for (kind, message) in fatal {
        let e = StartError::of_run(err(kind), &profile).expect("fatal");
        assert_eq!(e.next(), Next::Fail, "{kind:?}");
        assert!(e.to_string().starts_with(message), "{kind:?}: {e}");
    }
    // The run may have gone through: the caller looks, then retries.
    for kind in [ErrorKind::Transient, ErrorKind::NameInUse] {
        let e = StartError::of_run(err(kind), &profile).expect_err("look first");
        assert_eq!(StartError::RunTransient(e).next(), Next::RetryAtMost(5));
    }
    assert_eq!(
        StartError::Probe(err(ErrorKind::Transient)).next(),
        Next::Retry
    );
    let gate = StartError::Gate(std::io::Error::other("x"));
    assert_eq!(gate.next(), Next::Fail);
    assert_eq!(gate.to_string(), "cannot open the start gate: x");
}

//! PURE: how a session ended, from what is known ([`decide`]), and what
//! finishing does with the container it found ([`step`]). Table-tested in
//! `execute/tests/decide.rs`.

use crate::observed::{ContainerState, Outcome, StopReason};
use crate::runtime::ContainerInfo;

/// The outcome of a session, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub outcome: Outcome,
    pub exit_code: Option<i32>,
    pub message: Option<String>,
}

/// What finishing does with the container it found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// It runs and nobody asked it to stop: the table was stale; supervise
    /// it again.
    Resume,
    /// It runs though it was stopped or cancelled: stop it (again).
    StopAgain,
    /// The start never finished preparing, so its command never ran: start
    /// again with the same session.
    StartAgain,
    /// Record the end.
    Record,
}

/// PURE: what finishing does. `running`: the container runs; `stopping`:
/// agentd stopped or cancelled it; `unprepared`: no record was finalized,
/// nobody stopped it, and its work folder was never marked prepared.
pub fn step(running: bool, stopping: bool, unprepared: bool) -> Step {
    match (running, stopping) {
        (true, false) => Step::Resume,
        (true, true) => Step::StopAgain,
        (false, _) if unprepared => Step::StartAgain,
        (false, _) => Step::Record,
    }
}

/// PURE: the outcome of a session from what is known: why agentd stopped
/// it (if it did), the container's exit and deadline, or its absence.
/// `had_session`: a session (and its record) was allocated.
pub fn decide(
    stop_reason: Option<StopReason>,
    had_session: bool,
    inspected: Option<&ContainerInfo>,
    cancelled: bool,
    now: jiff::Timestamp,
) -> Verdict {
    let ran = inspected.is_some_and(|i| i.started_at.is_some());
    let exit_code = inspected
        .filter(|i| ran && matches!(i.state, ContainerState::Exited(_)))
        .map(|i| i.exit_code);
    let finished_ms = inspected
        .and_then(|i| i.finished_at)
        .unwrap_or(now)
        .as_millisecond();
    let past_deadline = inspected
        .and_then(|i| i.deadline)
        .is_some_and(|d| ran && finished_ms >= d);
    let verdict = |outcome, exit_code, message: &str| Verdict {
        outcome,
        exit_code,
        message: Some(message.to_string()),
    };
    match (stop_reason, exit_code) {
        (Some(StopReason::Cancelled), _) => verdict(
            Outcome::Cancelled,
            exit_code,
            "cancelled: the request file was removed",
        ),
        (Some(StopReason::TimedOut), _) => verdict(
            Outcome::TimedOut,
            exit_code,
            "timed out: stopped at the deadline",
        ),
        (None, _) if past_deadline => verdict(
            Outcome::TimedOut,
            exit_code,
            "timed out: stopped at the deadline",
        ),
        (None, Some(code)) => {
            let oom = inspected.is_some_and(|i| i.oom_killed);
            Verdict {
                outcome: Outcome::from_exit_code(code),
                exit_code: Some(code),
                message: oom.then(|| "killed: out of memory".to_string()),
            }
        }
        (None, None) if !ran && cancelled => {
            verdict(Outcome::Cancelled, None, "cancelled before it started")
        }
        (None, None) if ran => verdict(
            Outcome::GenericFailure,
            None,
            "the container was reset before it exited (host restart?); no exit code",
        ),
        (None, None) if !had_session => {
            verdict(Outcome::Cancelled, None, "cancelled before it started")
        }
        (None, None) => verdict(
            Outcome::GenericFailure,
            None,
            "the container disappeared before its exit code was collected",
        ),
    }
}

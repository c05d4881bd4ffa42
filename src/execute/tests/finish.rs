//! The end of a session through each failure kind (issue 18).

use super::{Harness, harness, until_past_gate};
use crate::execute::{finish, lock};
use crate::observed::{ContainerState, Outcome, Phase, StopReason};
use crate::runtime::{Change, ErrorKind, What};

/// A running session of `r1` whose command printed `hello`.
async fn running() -> Harness {
    let h = harness();
    h.admit("r1");
    h.start("r1").await;
    until_past_gate(&h, "r1").await;
    lock(&h.fake.script).console = b"hello\n".to_vec();
    h
}

/// The container exits with `code` and the table learns it, as the
/// runtime's changes report it.
fn exits(h: &Harness, code: i32) {
    let name = h.container_name("r1");
    h.fake.exit(&name, code);
    let id = h.fake.container(&name).expect("container").id;
    lock(&h.sh.containers).apply(&Change::Exited {
        id,
        code: Some(code),
    });
}

#[tokio::test]
async fn an_exit_is_recorded_sealed_and_its_container_removed_issue_18() {
    let h = running().await;
    exits(&h, 3);
    finish::finish(&h.sh, "r1", false).await;
    let s = h.status("r1");
    assert_eq!(
        (s.phase, s.outcome, s.exit_code),
        (Phase::Done, Some(Outcome::Blocked), Some(3))
    );
    let rec = h.record("r1");
    assert_eq!(
        (rec.outcome, rec.exit_code),
        (Some(Outcome::Blocked), Some(3))
    );
    assert_eq!(rec.image_id.as_deref(), Some("id-of-localhost/img:1"));
    let dir = s.audit_dir.expect("record");
    assert_eq!(
        std::fs::read(dir.join("agentd/console.log")).expect("console"),
        b"hello\n"
    );
    assert!(dir.join("agentd/MANIFEST.sha256").is_file(), "sealed");
    assert!(
        h.fake.container(&h.container_name("r1")).is_none(),
        "removed"
    );
    assert!(!lock(&h.sh.containers).by_request.contains_key("r1"));
    assert!(!h.work_dir("r1").exists());
}

#[tokio::test]
async fn an_exit_seen_twice_is_recorded_once_issue_18() {
    let h = running().await;
    exits(&h, 3);
    // The runtime's own report of the same exit, after the early one.
    let name = h.container_name("r1");
    let id = h.fake.container(&name).expect("container").id;
    lock(&h.sh.containers).apply(&Change::Container {
        id: id.clone(),
        name: name.clone(),
        request: Some("r1".into()),
        session_id: h.status("r1").session_id,
        deadline: None,
        what: What::Exited(Some(3)),
    });
    assert!(!lock(&h.sh.containers).apply(&Change::Exited { id, code: Some(3) }));
    assert_eq!(
        lock(&h.sh.containers).by_request["r1"].state,
        ContainerState::Exited(3)
    );
    finish::finish(&h.sh, "r1", false).await;
    let s = h.status("r1");
    assert_eq!((s.outcome, s.exit_code), (Some(Outcome::Blocked), Some(3)));
    assert_eq!(h.fake.calls_of("inspect"), 1);
}

#[tokio::test]
async fn an_exit_never_reported_is_collected_by_the_stop_issue_18() {
    // Nothing told the table; the deadline (or a cancel) makes agentd stop
    // the session, and the stop looks at what ended.
    let h = running().await;
    finish::stop(&h.sh, "r1", StopReason::Cancelled).await;
    assert_eq!(
        lock(&h.sh.containers).by_request["r1"].state,
        ContainerState::Exited(143)
    );
    assert_eq!(h.message("r1"), "cancelling: the request file was removed");
    finish::finish(&h.sh, "r1", true).await;
    let s = h.status("r1");
    assert_eq!(
        (s.phase, s.outcome, s.exit_code),
        (Phase::Done, Some(Outcome::Cancelled), Some(143))
    );
}

#[tokio::test]
async fn a_stop_that_fails_is_retried_issue_18() {
    let h = running().await;
    h.fake.fail_next("stop", ErrorKind::Transient);
    finish::stop(&h.sh, "r1", StopReason::TimedOut).await;
    assert_eq!(h.attempts("r1"), 1);
    assert!(
        h.message("r1").starts_with("stopping failed: "),
        "{}",
        h.message("r1")
    );
    assert_eq!(h.status("r1").stop_reason, Some(StopReason::TimedOut));
}

#[tokio::test]
async fn a_vanished_container_ends_the_session_without_an_exit_code_issue_18() {
    let h = running().await;
    lock(&h.fake.script).containers.clear();
    finish::finish(&h.sh, "r1", false).await;
    let s = h.status("r1");
    assert_eq!(
        (s.phase, s.outcome, s.exit_code),
        (Phase::Done, Some(Outcome::GenericFailure), None)
    );
    assert_eq!(
        h.message("r1"),
        "the container disappeared before its exit code was collected"
    );
    assert_eq!(h.record("r1").outcome, Some(Outcome::GenericFailure));
}

#[tokio::test]
async fn a_container_still_running_at_finish_is_supervised_again_issue_18() {
    let h = running().await;
    // A stale table said it exited.
    lock(&h.sh.containers)
        .by_request
        .get_mut("r1")
        .expect("entry")
        .state = ContainerState::Exited(-1);
    finish::finish(&h.sh, "r1", false).await;
    assert_eq!(h.status("r1").phase, Phase::Running);
    assert_eq!(
        lock(&h.sh.containers).by_request["r1"].state,
        ContainerState::Running
    );
    assert_eq!(h.fake.calls_of("stop"), 0, "healthy work is never stopped");
}

#[tokio::test]
async fn a_finish_that_cannot_look_is_retried_then_done_issue_18() {
    let h = running().await;
    exits(&h, 0);
    h.fake.fail_next("inspect", ErrorKind::Transient);
    finish::finish(&h.sh, "r1", false).await;
    assert_eq!(h.status("r1").phase, Phase::Finishing);
    assert!(
        h.message("r1").starts_with("finishing: fake inspect"),
        "{}",
        h.message("r1")
    );
    assert_eq!(h.attempts("r1"), 1);
    finish::finish(&h.sh, "r1", false).await;
    let s = h.status("r1");
    assert_eq!((s.phase, s.outcome), (Phase::Done, Some(Outcome::Success)));
    assert_eq!(h.attempts("r1"), 0);
}

#[tokio::test]
async fn a_crash_after_the_record_was_sealed_keeps_its_outcome_issue_18() {
    // The first finish sealed the record and died before `done`; the
    // container then disappeared. The record is the truth.
    let h = running().await;
    exits(&h, 3);
    h.fake.fail_next("remove", ErrorKind::Transient);
    // An exited container is removed after `done`; make the removal the
    // step that fails by having the table not know it exited.
    lock(&h.sh.containers).by_request.clear();
    finish::finish(&h.sh, "r1", false).await;
    assert_eq!(h.status("r1").phase, Phase::Done);
    let sealed = h.record("r1");
    // Rewind to just before `done`, with the container gone.
    lock(&h.sh.store)
        .update("r1", |s| {
            s.phase = Phase::Finishing;
            s.outcome = None;
            s.exit_code = None;
        })
        .expect("rewind");
    lock(&h.fake.script).containers.clear();
    finish::finish(&h.sh, "r1", false).await;
    let s = h.status("r1");
    assert_eq!((s.outcome, s.exit_code), (sealed.outcome, sealed.exit_code));
    assert_eq!(s.exit_code, Some(3));
}

#[tokio::test]
async fn a_failed_start_whose_container_cannot_be_removed_is_retried_issue_18() {
    let h = harness();
    h.admit("r1");
    h.fake.fail_next("run", ErrorKind::Failed);
    h.fake.fail_next("remove", ErrorKind::Transient);
    h.start("r1").await;
    assert_eq!(h.status("r1").phase, Phase::Starting);
    assert!(
        h.message("r1")
            .starts_with("cannot remove half-created container: "),
        "{}",
        h.message("r1")
    );
    assert_eq!(h.attempts("r1"), 1);
}

//! The end of a session whose container removes itself (issue 18 item 6):
//! no removal of the daemon's own, the exit from what the runtime recorded
//! when the container is gone, never a second run of a command that ran.

use super::{Harness, harness, until_past_gate};
use crate::execute::{finish, lock};
use crate::observed::{ContainerState, Outcome, Phase};
use crate::runtime::{Change, What};

/// A running session of `r1` whose container removes itself once it
/// exits; its id.
async fn running() -> (Harness, String) {
    let h = harness();
    lock(&h.fake.script).removes_itself = true;
    h.admit("r1");
    h.start("r1").await;
    until_past_gate(&h, "r1").await;
    let id = h
        .fake
        .container(&h.container_name("r1"))
        .expect("container")
        .id;
    (h, id)
}

/// What the runtime reports late of container `id` of `r1`.
fn report(h: &Harness, id: &str, what: What) -> Change {
    Change::Container {
        id: id.to_string(),
        name: h.container_name("r1"),
        request: Some("r1".into()),
        session_id: h.status("r1").session_id,
        deadline: None,
        what,
    }
}

#[tokio::test]
async fn the_end_runs_no_removal_of_a_container_that_removes_itself_issue_18() {
    let (h, id) = running().await;
    // It exited; the runtime's clean-up has not removed it yet.
    let name = h.container_name("r1");
    lock(&h.fake.script)
        .containers
        .get_mut(&name)
        .expect("container")
        .state = ContainerState::Exited(3);
    lock(&h.sh.containers).apply(&Change::Exited {
        id: id.clone(),
        code: Some(3),
    });
    finish::finish(&h.sh, "r1", false).await;
    let s = h.status("r1");
    assert_eq!(
        (s.phase, s.outcome, s.exit_code),
        (Phase::Done, Some(Outcome::Blocked), Some(3))
    );
    assert_eq!(
        h.fake.calls_of("remove"),
        0,
        "{:?}",
        lock(&h.fake.script).calls
    );
    assert!(!lock(&h.sh.containers).by_request.contains_key("r1"));
    // Its reports arriving late (the runtime's log lags) do not put it back
    // in the table, where the planner would remove it a second time.
    for what in [What::Created, What::Started, What::Exited(Some(3))] {
        assert!(!lock(&h.sh.containers).apply(&report(&h, &id, what)));
    }
    assert!(!lock(&h.sh.containers).apply(&Change::Exited { id, code: Some(3) }));
    assert!(lock(&h.sh.containers).by_request.is_empty());
}

#[tokio::test]
async fn a_container_gone_before_the_end_is_judged_from_the_runtimes_record_issue_18() {
    // The daemon was not there when it exited (a restart): the container
    // removed itself, and only the runtime's record tells the exit.
    let (h, _) = running().await;
    h.fake.exit(&h.container_name("r1"), 5);
    assert!(h.fake.container(&h.container_name("r1")).is_none(), "gone");
    finish::finish(&h.sh, "r1", false).await;
    let s = h.status("r1");
    assert_eq!(
        (s.phase, s.outcome, s.exit_code),
        (Phase::Done, Some(Outcome::WorkFailed), Some(5))
    );
    assert_eq!(h.record("r1").exit_code, Some(5));
    assert_eq!(h.fake.calls_of("ended"), 1);
    assert_eq!(h.fake.calls_of("remove"), 0);
    assert!(!h.work_dir("r1").exists());
}

#[tokio::test]
async fn a_start_tried_again_after_its_command_ran_finishes_it_issue_18() {
    // The daemon died after the gate opened and before `running` was
    // written; the command ran and its container removed itself.
    let (h, _) = running().await;
    h.fake.exit(&h.container_name("r1"), 0);
    lock(&h.sh.store)
        .update("r1", |s| s.phase = Phase::Starting)
        .expect("rewind");
    lock(&h.sh.gates).clear();
    lock(&h.sh.containers).by_request.clear();
    h.start("r1").await;
    assert_eq!(h.status("r1").phase, Phase::Finishing);
    assert_eq!(h.fake.calls_of("run"), 1, "the command runs once");
    finish::finish(&h.sh, "r1", false).await;
    let s = h.status("r1");
    assert_eq!(
        (s.phase, s.outcome, s.exit_code),
        (Phase::Done, Some(Outcome::Success), Some(0))
    );
}

#[tokio::test]
async fn a_start_whose_gate_never_opened_runs_again_issue_18() {
    // A retried start whose earlier attempt never opened the gate (its run
    // failed, or the daemon died first) starts the command: it never ran.
    let h = harness();
    lock(&h.fake.script).removes_itself = true;
    h.admit("r1");
    h.fake
        .fail_next("run", crate::runtime::ErrorKind::Transient);
    h.start("r1").await;
    assert_eq!(h.status("r1").phase, Phase::Starting);
    h.retry_now("r1");
    h.start("r1").await;
    assert_eq!(h.status("r1").phase, Phase::Running);
    assert_eq!(h.fake.calls_of("run"), 2);
}

//! Adoption after a restart (issue 18).

use super::{harness, until_past_gate};
use crate::execute::adopt::{Adopted, adopt};
use crate::execute::lock;
use crate::observed::Phase;
use crate::runtime::ErrorKind;

#[tokio::test]
async fn a_prepared_start_is_adopted_and_its_gate_opened_issue_18() {
    let h = harness();
    h.admit("r1");
    h.start("r1").await;
    until_past_gate(&h, "r1").await;
    // The daemon died before `running` was written.
    lock(&h.sh.store)
        .update("r1", |s| s.phase = Phase::Starting)
        .expect("update");
    lock(&h.sh.gates).clear();
    assert_eq!(adopt(&h.sh, "r1").await, Some(Adopted::Running));
    assert_eq!(h.status("r1").phase, Phase::Running);
    assert_eq!(h.fake.calls_of("remove"), 0);
}

#[tokio::test]
async fn an_unprepared_start_is_removed_and_started_again_issue_18() {
    let h = harness();
    h.admit("r1");
    h.start("r1").await;
    // The daemon died during the clone: the folder was never prepared.
    std::fs::remove_file(h.work_dir("r1").join("prepared")).expect("unprepare");
    lock(&h.sh.store)
        .update("r1", |s| s.phase = Phase::Starting)
        .expect("update");
    assert_eq!(adopt(&h.sh, "r1").await, Some(Adopted::Restarted));
    assert!(h.fake.container(&h.container_name("r1")).is_none());
    assert!(!lock(&h.sh.containers).by_request.contains_key("r1"));
    // The start runs again with the same session.
    let sid = h.status("r1").session_id;
    h.start("r1").await;
    assert_eq!(h.status("r1").session_id, sid);
    assert_eq!(h.status("r1").phase, Phase::Running);
}

#[tokio::test]
async fn an_adoption_that_cannot_remove_is_retried_issue_18() {
    let h = harness();
    h.admit("r1");
    h.start("r1").await;
    std::fs::remove_file(h.work_dir("r1").join("prepared")).expect("unprepare");
    h.fake.fail_next("remove", ErrorKind::Transient);
    assert_eq!(adopt(&h.sh, "r1").await, None);
    assert_eq!(h.attempts("r1"), 1);
    assert!(
        h.message("r1")
            .starts_with("cannot remove the unprepared container: "),
        "{}",
        h.message("r1")
    );
    assert!(h.fake.container(&h.container_name("r1")).is_some());
}

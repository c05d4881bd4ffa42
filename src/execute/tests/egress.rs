//! A session with `egress` on a runtime that cannot reach into its
//! namespaces (issue 19): the start fails closed, before the gate opens.

use super::harness;
use crate::desired::{EgressPolicy, Network, Profile};
use crate::observed::{Outcome, Phase};

#[tokio::test]
async fn egress_on_a_runtime_that_cannot_reach_the_session_fails_the_start_closed_issue_19() {
    let h = harness();
    h.admit("r1");
    let profile = Profile {
        egress: Some(EgressPolicy::default()),
        network: Network::None,
        ..h.profile()
    };
    crate::execute::start::start(&h.sh, "r1", profile).await;
    let s = h.status("r1");
    assert_eq!(
        (s.phase, s.outcome),
        (Phase::Done, Some(Outcome::StartFailed)),
        "{s:?}"
    );
    assert_eq!(
        h.message("r1"),
        "egress: cannot start the session's proxy: the runtime cannot reach into this session's namespaces"
    );
    assert_eq!(h.record("r1").outcome, Some(Outcome::StartFailed));
    assert!(!h.work_dir("r1").exists(), "work folder removed");
    assert!(
        h.fake.container(&h.container_name("r1")).is_none(),
        "its container removed: the command never passed its gate"
    );
}

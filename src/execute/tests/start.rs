//! A start through each failure kind of the runtime (issue 18).

use super::{harness, until_past_gate};
use crate::execute::lock;
use crate::observed::{ContainerState, Outcome, Phase};
use crate::runtime::ErrorKind;

#[tokio::test]
async fn a_start_runs_the_session_once_its_command_passed_the_gate_issue_18() {
    let h = harness();
    h.admit("r1");
    h.start("r1").await;
    let s = h.status("r1");
    assert_eq!(s.phase, Phase::Running, "{s:?}");
    assert_eq!(
        s.container.as_deref(),
        Some(h.container_name("r1").as_str())
    );
    until_past_gate(&h, "r1").await;
    assert!(h.work_dir("r1").join("prepared").exists());
    assert!(h.work_dir("r1").join("home/repo/.git").is_dir());
    let c = h
        .fake
        .container(&h.container_name("r1"))
        .expect("container");
    assert_eq!(c.spec.identity.request, "r1");
    assert_eq!(
        c.spec.identity.session_id,
        s.session_id.clone().expect("sid")
    );
    let table = lock(&h.sh.containers);
    assert_eq!(table.by_request["r1"].state, ContainerState::Running);
    assert_eq!(h.attempts("r1"), 0);
}

#[tokio::test]
async fn a_missing_image_ends_the_start_failed_and_sealed_at_once_issue_18() {
    let h = harness();
    h.admit("r1");
    h.fake.fail_next("run", ErrorKind::ImageMissing);
    h.start("r1").await;
    let s = h.status("r1");
    assert_eq!(
        (s.phase, s.outcome),
        (Phase::Done, Some(Outcome::StartFailed))
    );
    assert!(
        h.message("r1")
            .starts_with("image `localhost/img:1` is not available locally"),
        "{}",
        h.message("r1")
    );
    assert_eq!(h.attempts("r1"), 0, "no retry");
    assert_eq!(h.record("r1").outcome, Some(Outcome::StartFailed));
    assert!(!h.work_dir("r1").exists(), "work folder removed");
    assert_eq!(h.fake.calls_of("run"), 1);
}

#[tokio::test]
async fn a_network_the_host_cannot_start_fails_naming_the_field_issue_18() {
    let h = harness();
    h.admit("r1");
    h.fake
        .fail_next("run", ErrorKind::HostNetwork("cannot open /dev/net/tun"));
    h.start("r1").await;
    assert_eq!(h.status("r1").outcome, Some(Outcome::StartFailed));
    assert!(h.message("r1").starts_with(
        "network: the default network of rootless Podman could not start: cannot open /dev/net/tun; hint: set `network = \"none\"` in profile p"
    ));
}

#[tokio::test]
async fn a_transient_run_failure_is_retried_with_the_same_session_issue_18() {
    let h = harness();
    h.admit("r1");
    h.fake.fail_next("run", ErrorKind::Transient);
    h.start("r1").await;
    let first = h.status("r1");
    assert_eq!(first.phase, Phase::Starting);
    assert_eq!(h.attempts("r1"), 1);
    assert!(
        h.message("r1").starts_with("podman run: fake run of")
            && h.message("r1").ends_with("(attempt 1; retrying in 1s)"),
        "{}",
        h.message("r1")
    );
    // The retry looks for an earlier attempt's container first, then runs.
    h.retry_now("r1");
    h.start("r1").await;
    let s = h.status("r1");
    assert_eq!(s.phase, Phase::Running);
    assert_eq!(s.session_id, first.session_id, "one session, one record");
    assert_eq!(h.attempts("r1"), 0, "success forgets the failures");
    assert_eq!(
        h.fake.calls_of("inspect"),
        2,
        "the look after the failure, the probe"
    );
}

#[tokio::test]
async fn transient_failures_end_start_failed_after_five_attempts_issue_18() {
    let h = harness();
    h.admit("r1");
    for attempt in 1..=5 {
        h.fake.fail_next("run", ErrorKind::Transient);
        h.retry_now("r1");
        h.start("r1").await;
        let done = h.status("r1").phase == Phase::Done;
        assert_eq!(done, attempt == 5, "attempt {attempt}");
    }
    assert_eq!(h.status("r1").outcome, Some(Outcome::StartFailed));
    assert!(
        h.message("r1")
            .starts_with("podman run failed 5 times: fake run of"),
        "{}",
        h.message("r1")
    );
}

#[tokio::test]
async fn a_run_that_went_through_though_it_failed_is_handed_over_issue_18() {
    let h = harness();
    h.admit("r1");
    lock(&h.fake.script).run_goes_through = true;
    h.fake.fail_next("run", ErrorKind::Transient);
    h.start("r1").await;
    assert_eq!(h.status("r1").phase, Phase::Running);
    assert_eq!(h.attempts("r1"), 0);
    assert!(lock(&h.sh.containers).by_request.contains_key("r1"));
}

#[tokio::test]
async fn a_name_in_use_is_looked_at_and_handed_over_issue_18() {
    let h = harness();
    h.admit("r1");
    // An earlier attempt's container that this daemon does not know of.
    h.start("r1").await;
    lock(&h.sh.containers).by_request.clear();
    lock(&h.sh.store).update_unpersisted("r1", |s| {
        s.phase = Phase::Starting;
        s.session_id = None;
    });
    h.start("r1").await;
    assert_eq!(h.fake.calls_of("run"), 2);
    assert_eq!(h.status("r1").phase, Phase::Running);
    assert!(lock(&h.sh.containers).by_request.contains_key("r1"));
}

#[tokio::test]
async fn a_probe_that_fails_is_retried_without_a_limit_issue_18() {
    let h = harness();
    h.admit("r1");
    h.fake.fail_next("run", ErrorKind::Transient);
    h.start("r1").await;
    for _ in 0..6 {
        h.fake.fail_next("inspect", ErrorKind::Transient);
        h.retry_now("r1");
        h.start("r1").await;
    }
    assert_eq!(h.status("r1").phase, Phase::Starting);
    assert_eq!(h.attempts("r1"), 7);
    assert!(
        h.message("r1")
            .starts_with("checking for an earlier attempt's container:"),
        "{}",
        h.message("r1")
    );
    assert_eq!(
        h.fake.calls_of("run"),
        1,
        "never run over an unknown container"
    );
}

#[tokio::test]
async fn a_crash_after_the_run_leaves_the_container_to_the_planner_issue_18() {
    // The daemon died after `podman run` returned, before `running`: the
    // restarted daemon's start finds the container and touches nothing.
    let h = harness();
    h.admit("r1");
    h.start("r1").await;
    let sid = h.status("r1").session_id;
    lock(&h.sh.containers).by_request.clear();
    lock(&h.sh.store)
        .update("r1", |s| s.phase = Phase::Starting)
        .expect("update");
    h.start("r1").await;
    assert_eq!(h.fake.calls_of("run"), 1);
    let s = h.status("r1");
    assert_eq!((s.phase, s.session_id), (Phase::Starting, sid));
    assert!(lock(&h.sh.containers).by_request.contains_key("r1"));
    assert!(
        h.work_dir("r1").join("prepared").exists(),
        "folder untouched"
    );
}

#[tokio::test]
async fn a_crash_before_the_run_starts_again_with_the_same_session_issue_18() {
    // The daemon died with the record made and no container yet.
    let h = harness();
    h.admit("r1");
    h.fake.fail_next("run", ErrorKind::Transient);
    h.start("r1").await;
    let sid = h.status("r1").session_id;
    h.retry_now("r1");
    h.start("r1").await;
    assert_eq!(h.status("r1").session_id, sid);
    assert_eq!(h.status("r1").phase, Phase::Running);
}

#[tokio::test]
async fn a_missing_runtime_secret_fails_the_start_before_any_container_issue_18() {
    let h = harness();
    h.admit("r1");
    let mut p = h.profile();
    p.credentials.push(crate::desired::Credential {
        name: "GH_TOKEN".into(),
        source: crate::desired::SecretSource::PodmanSecret("gh".into()),
        inject: None,
    });
    lock(&h.sh.store).update_unpersisted("r1", |s| s.phase = Phase::Starting);
    crate::execute::start::start(&h.sh, "r1", p).await;
    assert_eq!(h.status("r1").outcome, Some(Outcome::StartFailed));
    assert!(
        h.message("r1")
            .starts_with("credential `GH_TOKEN`: podman secret `gh` does not exist"),
        "{}",
        h.message("r1")
    );
    assert_eq!(h.fake.calls_of("run"), 0);
}

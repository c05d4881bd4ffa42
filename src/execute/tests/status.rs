//! Status writes and the metrics they count (issue 17).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::execute::*;
use crate::observed::Outcome;

/// A `Shared` over a temp state dir, for the executor's pure-ish paths
/// (status writes and their metrics); never runs Podman.
fn shared(state: &std::path::Path) -> Arc<Shared> {
    let (mut store, problems) = StatusStore::open(state).expect("status store");
    assert!(problems.is_empty());
    let metrics = Arc::new(crate::metrics::Metrics::new());
    store.observe(Arc::clone(&metrics) as _);
    let (wake, _rx) = mpsc::channel(8);
    Arc::new(Shared {
        settings: Settings {
            desired: state.join("desired"),
            state: state.to_path_buf(),
            audit_root: state.join("audit"),
            instance: "test".into(),
            max_sessions: 1,
            max_pending: 1,
            status_retention: Duration::from_secs(60),
            session_uid: 10_001,
            stop_grace: Duration::from_secs(1),
            audit_max_bytes: 1 << 20,
            clone_timeout: Duration::from_secs(60),
            allow_host_network: false,
            egress_ca_file: None,
            session_files_owner: nix::unistd::geteuid().as_raw(),
        },
        runtime: Arc::new(crate::runtime::fake::Fake::default()),
        metrics,
        store: Mutex::new(store),
        containers: Mutex::default(),
        busy: Mutex::new(BTreeSet::new()),
        wake,
        tasks: TaskTracker::new(),
        clone_cache: Default::default(),
        listings: Default::default(),
        clone_sandbox: super::no_sandbox(state),
        backoff: Mutex::default(),
        gates: Mutex::default(),
        leftovers: Mutex::default(),
        seal_failures: Mutex::default(),
        egress: Default::default(),
    })
}

/// `agentd_sessions_finished_total` of one profile and outcome, from the
/// daemon's registry.
fn finished(sh: &Shared, profile: &str, outcome: &str) -> u64 {
    let want =
        format!("agentd_sessions_finished_total{{profile=\"{profile}\",outcome=\"{outcome}\"}} ");
    sh.metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(want.as_str()))
        .map_or(0, |n| n.trim().parse().expect("a count"))
}

#[test]
fn a_failed_status_write_and_its_retry_count_the_transition_once_issue_17() {
    let d = tempfile::tempdir().expect("tempdir");
    let sh = shared(d.path());
    let profile = "put-status-counts-once-issue-17";
    let mut s = Status::new("r1", profile);
    s.phase = Phase::Done;
    s.outcome = Some(Outcome::Success);
    // The status folder is gone: the write fails, nothing is recorded.
    std::fs::remove_dir_all(d.path().join("status")).expect("rm status");
    sh.put_status(s.clone());
    assert!(lock(&sh.store).get("r1").is_none());
    assert_eq!(
        finished(&sh, profile, "success"),
        0,
        "a failed write was counted"
    );
    // The retry (the next pass decides the same) succeeds: counted once.
    std::fs::create_dir(d.path().join("status")).expect("mkdir status");
    sh.put_status(s.clone());
    assert_eq!(
        lock(&sh.store).get("r1").map(|s| s.phase),
        Some(Phase::Done)
    );
    assert_eq!(finished(&sh, profile, "success"), 1);
    // Writing the same record again changes nothing and counts nothing.
    sh.put_status(s);
    assert_eq!(finished(&sh, profile, "success"), 1);
}

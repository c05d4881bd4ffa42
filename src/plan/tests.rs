//! Planner cases as data: a fixture in a tiny line language, and the actions
//! it must produce (their Display form, one per line).
//!
//! ```text
//! config max=N pending=N now=SECS retention=SECS unavailable draining unknown-containers
//! profile NAME [max=N] [suspend]      bad-profile NAME
//! file ID PROFILE [sha=S]             bad-file ID       cross-invalid ID sha=S
//! status ID PHASE [profile=P] [sha=S|sha=none] [created=SECS] [finished=SECS] [msg=TEXT_WITHOUT_SPACES] [stopping=cancelled|timed_out]
//! container ID running|created|exited:CODE [deadline=SECS] [started]
//! orphan NAME                         busy ID
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use super::*;
use crate::desired::{Diagnostic, Input, Profile, Rejected, Request};
use crate::observed::{Container, Outcome};

fn ts(secs: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_second(secs).expect("valid time")
}

fn profile(name: &str) -> Profile {
    Profile::minimal(name, "img", &["true"])
}

fn rejected(path: &str) -> Rejected {
    Rejected {
        sha256: None,
        path: path.into(),
        diagnostics: vec![Diagnostic::new(std::path::Path::new(path), None, "broken")],
    }
}

fn run(fixture: &str) -> String {
    let mut desired = Desired::default();
    let mut statuses = BTreeMap::new();
    let mut containers = BTreeMap::new();
    let mut orphans = Vec::new();
    let mut busy = BTreeSet::new();
    let mut containers_known = true;
    let mut cfg = PlanConfig {
        now: ts(1000),
        max_sessions: 4,
        status_retention: Duration::from_secs(100),
        source_available: true,
        admitting: true,
        max_pending: 1000,
    };
    for line in fixture.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let mut words = line.split_whitespace();
        let kind = words.next().unwrap_or_default();
        let args: Vec<&str> = words.collect();
        let opt = |key: &str| args.iter().find_map(|a| a.strip_prefix(&format!("{key}=")));
        let num = |key: &str| opt(key).and_then(|v| v.parse::<i64>().ok());
        match kind {
            "config" => {
                if let Some(m) = num("max") {
                    cfg.max_sessions = m as u32;
                }
                if let Some(n) = num("pending") {
                    cfg.max_pending = n as usize;
                }
                if let Some(n) = num("now") {
                    cfg.now = ts(n);
                }
                if let Some(r) = num("retention") {
                    cfg.status_retention = Duration::from_secs(r as u64);
                }
                cfg.source_available = !args.contains(&"unavailable");
                cfg.admitting = !args.contains(&"draining");
                containers_known = !args.contains(&"unknown-containers");
            }
            "profile" => {
                let mut p = profile(args[0]);
                p.max_concurrent = num("max").map(|m| m as u32);
                p.suspend = args.contains(&"suspend");
                desired.profiles.insert(args[0].into(), p);
            }
            "bad-profile" => {
                desired.invalid_profiles.insert(
                    args[0].into(),
                    rejected(&format!("d/profiles/{}.toml", args[0])),
                );
            }
            "file" => {
                let r = Request {
                    id: args[0].into(),
                    path: PathBuf::from(format!("d/requests/{}.toml", args[0])),
                    profile: args[1].into(),
                    repo: None,
                    input: Input::None,
                    timeout: None,
                    scheduled_for: None,
                    spec_sha256: opt("sha").unwrap_or("s").into(),
                };
                desired
                    .requests
                    .insert(args[0].into(), RequestEntry::Valid(r.into()));
            }
            "cross-invalid" => {
                let r = Rejected {
                    sha256: opt("sha").map(str::to_string),
                    ..rejected(&format!("d/requests/{}.toml", args[0]))
                };
                desired
                    .requests
                    .insert(args[0].into(), RequestEntry::Invalid(Box::new(r)));
            }
            "bad-file" => {
                desired.requests.insert(
                    args[0].into(),
                    RequestEntry::Invalid(Box::new(rejected(&format!(
                        "d/requests/{}.toml",
                        args[0]
                    )))),
                );
            }
            "status" => {
                let mut s = Status::new(args[0], opt("profile").unwrap_or("p"));
                s.phase = serde_json::from_str(&format!("\"{}\"", args[1])).expect("phase");
                s.spec_sha256 = match opt("sha") {
                    Some("none") => None,
                    other => Some(other.unwrap_or("s").into()),
                };
                s.created_at = num("created").map(ts);
                s.finished_at = num("finished").map(ts);
                s.message = opt("msg").map(|m| {
                    if m == "EDITED" {
                        EDITED_MESSAGE.to_string()
                    } else {
                        m.replace('_', " ")
                    }
                });
                s.stop_reason = opt("stopping")
                    .map(|r| serde_json::from_str(&format!("\"{r}\"")).expect("stop reason"));
                if s.phase == Phase::Done {
                    s.outcome = Some(Outcome::Success);
                }
                statuses.insert(args[0].into(), s);
            }
            "container" | "orphan" => {
                let state = match args.get(1).copied().unwrap_or("running") {
                    "running" => ContainerState::Running,
                    "created" => ContainerState::Created,
                    s => ContainerState::Exited(
                        s.trim_start_matches("exited:").parse().expect("exit code"),
                    ),
                };
                let c = Container {
                    id: format!("id-{}", args[0]),
                    name: format!("agentd-x-{}", args[0]),
                    request: Some(args[0].into()),
                    session_id: Some("0123456789abcdef".into()),
                    state,
                    deadline: num("deadline").map(|d| d * 1000),
                    started: args.contains(&"started"),
                };
                if kind == "orphan" {
                    orphans.push(c);
                } else {
                    containers.insert(args[0].into(), c);
                }
            }
            "busy" => {
                busy.insert(args[0].into());
            }
            other => panic!("unknown fixture line kind `{other}`"),
        }
    }
    let observed = Observed {
        statuses: &statuses,
        containers: &containers,
        orphans: &orphans,
        busy: &busy,
        containers_known,
    };
    let actions = plan(&desired, &observed, &cfg);
    // Every case also holds for the daemon's scoped planning (issue 12).
    let scope = Scope::rebuild(&desired, &statuses);
    assert_eq!(
        plan_in(&desired, &observed, &cfg, &scope.ids(&observed)),
        actions,
        "planning the scope differs from planning everything"
    );
    actions.iter().map(|a| format!("{a}\n")).collect()
}

fn check(fixture: &str, expect: &str) {
    let got = run(fixture);
    let want: String = expect
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(
        got, want,
        "\n--- fixture ---\n{fixture}\n--- got ---\n{got}--- want ---\n{want}"
    );
}

// --- admission ---

#[test]
fn new_valid_file_is_admitted_and_started_in_the_same_pass() {
    check("profile p\nfile r1 p", "admit r1\nstart r1");
}

#[test]
fn newly_admitted_requests_wait_behind_older_ones_for_slots() {
    check(
        "config max=1\nprofile p\nfile old p\nfile new p\nstatus old pending created=5",
        "admit new\nstart old\nwait new: waiting for a slot (1/1 running)",
    );
}

#[test]
fn invalid_file_is_rejected_with_its_message() {
    check(
        "profile p\nbad-file r1",
        "invalid r1: d/requests/r1.toml: broken",
    );
}

#[test]
fn rejection_is_not_rewritten_when_unchanged() {
    check(
        "profile p\nbad-file r1\nstatus r1 invalid msg=d/requests/r1.toml:_broken",
        "",
    );
}

#[test]
fn request_for_invalid_profile_is_rejected_naming_the_profile_file() {
    check(
        "bad-profile q\nfile r1 q",
        "invalid r1: profile `q` is invalid: d/profiles/q.toml: broken",
    );
}

#[test]
fn fixed_file_is_admitted_after_being_invalid() {
    check(
        "profile p\nfile r1 p\nstatus r1 invalid msg=old",
        "admit r1\nstart r1",
    );
}

#[test]
fn nothing_is_admitted_while_draining() {
    check("config draining\nprofile p\nfile r1 p", "");
}

#[test]
fn busy_requests_get_no_actions() {
    check("profile p\nfile r1 p\nbusy r1", "");
}

// --- starting and slots ---

#[test]
fn pending_request_starts_when_a_slot_is_free() {
    check(
        "profile p\nfile r1 p\nstatus r1 pending created=5",
        "start r1",
    );
}

#[test]
fn pending_requests_start_oldest_first_within_max_sessions() {
    check(
        "config max=2\nprofile p\nfile a p\nfile b p\nfile c p\nstatus a pending created=30\nstatus b pending created=10\nstatus c pending created=20",
        "start b\nstart c\nwait a: waiting for a slot (2/2 running)",
    );
}

#[test]
fn running_sessions_hold_slots() {
    check(
        "config max=1\nprofile p\nfile a p\nfile b p\nstatus a running\ncontainer a running\nstatus b pending created=1",
        "wait b: waiting for a slot (1/1 running)",
    );
}

#[test]
fn profile_max_concurrent_limits_its_sessions_only() {
    check(
        "profile p max=1\nprofile q\nfile a p\nfile b p\nfile c q\nstatus a running\ncontainer a running\nstatus b pending created=1\nstatus c pending profile=q created=2",
        "wait b: waiting for a slot of profile `p` (1/1 running)\nstart c",
    );
}

#[test]
fn suspended_profile_admits_but_starts_nothing() {
    check(
        "profile p suspend\nfile a p\nstatus a pending created=1",
        "wait a: profile `p` is suspended",
    );
}

#[test]
fn pending_request_waits_while_its_profile_is_invalid() {
    check(
        "bad-profile p\nfile a p\nstatus a pending created=1",
        "wait a: profile `p` is invalid: d/profiles/p.toml: broken",
    );
}

#[test]
fn pending_request_waits_while_draining() {
    check(
        "config draining\nprofile p\nfile a p\nstatus a pending created=1",
        "wait a: daemon is shutting down; not starting new sessions",
    );
}

#[test]
fn interrupted_start_without_container_is_retried() {
    check(
        "profile p\nfile a p\nstatus a starting created=1",
        "start a",
    );
}

#[test]
fn interrupted_start_is_left_alone_while_containers_are_unknown() {
    check(
        "config unknown-containers\nprofile p\nfile a p\nstatus a starting created=1",
        "",
    );
}

#[test]
fn interrupted_start_with_running_container_is_adopted() {
    check(
        "profile p\nfile a p\nstatus a starting\ncontainer a running",
        "adopt a",
    );
}

#[test]
fn interrupted_start_with_half_created_container_cleans_it_up() {
    check(
        "profile p\nfile a p\nstatus a starting\ncontainer a created",
        "clean-up container agentd-x-a: half-created by an interrupted start of a",
    );
}

#[test]
fn interrupted_start_whose_container_exited_is_finished() {
    check(
        "profile p\nfile a p\nstatus a starting\ncontainer a exited:0",
        "finish a",
    );
}

// --- running, finishing, cancelling, timeouts ---

#[test]
fn exited_container_is_finished() {
    check(
        "profile p\nfile a p\nstatus a running\ncontainer a exited:3",
        "finish a",
    );
}

#[test]
fn vanished_container_is_finished() {
    check("profile p\nfile a p\nstatus a running", "finish a");
}

#[test]
fn vanished_container_is_not_concluded_while_podman_is_unreachable() {
    check(
        "config unknown-containers\nprofile p\nfile a p\nstatus a running",
        "",
    );
}

#[test]
fn deleting_a_running_request_stops_it() {
    check(
        "profile p\nstatus a running\ncontainer a running",
        "stop a (cancelled)",
    );
}

#[test]
fn deleting_a_pending_request_cancels_it() {
    check(
        "profile p\nstatus a pending created=1",
        "finish a (cancelled)",
    );
}

#[test]
fn deleted_request_that_exited_finishes_as_cancelled() {
    check(
        "profile p\nstatus a running\ncontainer a exited:0",
        "finish a (cancelled)",
    );
}

#[test]
fn source_unavailable_cancels_nothing() {
    check(
        "config unavailable\nstatus a running\ncontainer a running\nstatus b pending created=1",
        "wait b: desired dir unavailable; waiting for it to return",
    );
}

#[test]
fn session_past_its_deadline_is_stopped() {
    check(
        "config now=1000\nprofile p\nfile a p\nstatus a running\ncontainer a running deadline=999",
        "stop a (timed out)",
    );
}

#[test]
fn session_before_its_deadline_runs_on() {
    check(
        "config now=1000\nprofile p\nfile a p\nstatus a running\ncontainer a running deadline=1001",
        "",
    );
}

#[test]
fn running_session_survives_its_profile_turning_invalid() {
    check(
        "bad-profile p\nfile a p\nstatus a running\ncontainer a running",
        "",
    );
}

#[test]
fn interrupted_finish_is_resumed() {
    check("profile p\nfile a p\nstatus a finishing", "finish a");
}

#[test]
fn edit_after_admission_is_noted_once() {
    check(
        "profile p\nfile a p sha=new\nstatus a running sha=old\ncontainer a running",
        "note-edited a",
    );
    check(
        "profile p\nfile a p sha=new\nstatus a running sha=old msg=EDITED\ncontainer a running",
        "",
    );
}

#[test]
fn file_turning_invalid_after_admission_is_noted_not_rejected() {
    check(
        "profile p\nbad-file a\nstatus a running\ncontainer a running",
        "note-edited a",
    );
}

// --- done, retention, clean-up ---

#[test]
fn done_request_with_file_present_is_left_alone() {
    check("profile p\nfile a p\nstatus a done finished=10", "");
}

#[test]
fn done_request_status_is_pruned_after_retention() {
    check(
        "config now=1000 retention=100\nstatus a done finished=899",
        "prune a",
    );
    check(
        "config now=1000 retention=100\nstatus a done finished=950",
        "",
    );
}

#[test]
fn invalid_status_is_pruned_when_its_file_goes() {
    check("status a invalid", "prune a");
}

#[test]
fn leftover_container_of_a_done_request_is_removed() {
    check(
        "profile p\nfile a p\nstatus a done finished=999\ncontainer a exited:0",
        "clean-up container agentd-x-a: request a is done",
    );
}

#[test]
fn orphan_containers_are_removed() {
    check(
        "orphan zz",
        "clean-up container agentd-x-zz: it belongs to no request this instance knows",
    );
}

#[test]
fn planning_is_idempotent_for_a_converged_state() {
    check(
        "profile p\nfile a p\nfile b p\nstatus a done finished=999\nstatus b running\ncontainer b running",
        "",
    );
}

// --- review follow-ups: recorded stop reasons, reset containers, races ---

#[test]
fn a_stop_that_did_not_take_effect_is_retried_with_its_reason() {
    check(
        "profile p\nfile a p\nstatus a running stopping=timed_out\ncontainer a running",
        "stop a (timed out)",
    );
}

#[test]
fn a_started_container_reset_by_podman_is_finished_not_left_holding_a_slot() {
    check(
        "profile p\nfile a p\nstatus a running\ncontainer a created started",
        "finish a",
    );
    check(
        "profile p\nfile a p\nstatus a starting\ncontainer a created started",
        "finish a",
    );
}

#[test]
fn a_container_being_removed_is_not_removed_twice() {
    check("orphan zz\nbusy container:agentd-x-zz", "");
    check(
        "profile p\nfile a p\nstatus a done finished=999\ncontainer a exited:0\nbusy container:agentd-x-a",
        "",
    );
}

#[test]
fn an_edit_of_a_waiting_request_is_reported_with_what_it_waits_for() {
    check(
        "profile p suspend\nfile a p sha=new\nstatus a pending sha=old created=1",
        &format!("wait a: profile `p` is suspended; {EDITED_MESSAGE}"),
    );
}

#[test]
fn a_request_whose_profile_vanished_is_not_reported_as_edited() {
    // The file is unchanged (same sha); only a cross-file check rejects it.
    check(
        "cross-invalid a sha=s\nstatus a running sha=s\ncontainer a running",
        "",
    );
    check(
        "cross-invalid a sha=t\nstatus a running sha=s\ncontainer a running",
        "note-edited a",
    );
}

// --max-pending (issue 13): requests past the cap are not admitted, their
// status says why, and they are admitted oldest first as room frees up.

#[test]
fn requests_past_max_pending_are_deferred_with_a_message_issue_13() {
    check(
        "config pending=2 max=1\nprofile p\nfile a p\nfile b p\nfile c p\nfile d p",
        "admit a\nadmit b\n\
         defer c: not admitted: 2 requests already pending (--max-pending); it is admitted, oldest first, as room frees up\n\
         defer d: not admitted: 2 requests already pending (--max-pending); it is admitted, oldest first, as room frees up\n\
         start a\nwait b: waiting for a slot (1/1 running)",
    );
}

#[test]
fn pending_requests_count_against_max_pending_issue_13() {
    check(
        "config pending=2 max=1\nprofile p\nfile a p\nfile b p\nfile c p\nfile x p\n\
         status a running\ncontainer a running\nstatus b pending created=1\nstatus x pending created=2",
        "defer c: not admitted: 2 requests already pending (--max-pending); it is admitted, oldest first, as room frees up\n\
         wait b: waiting for a slot (1/1 running)\nwait x: waiting for a slot (1/1 running)",
    );
}

#[test]
fn deferred_requests_are_admitted_oldest_first_as_room_frees_up_issue_13() {
    // z waited longest (seen first), then y; a new file n comes last.
    check(
        "config pending=2 max=0\nprofile p\nfile n p\nfile y p\nfile z p\n\
         status y pending sha=none created=20 msg=M\nstatus z pending sha=none created=10 msg=M",
        "admit z\nadmit y\n\
         defer n: not admitted: 2 requests already pending (--max-pending); it is admitted, oldest first, as room frees up\n\
         wait z: waiting for a slot (0/0 running)\nwait y: waiting for a slot (0/0 running)",
    );
}

#[test]
fn a_deferred_request_with_its_message_is_left_alone_and_never_started_issue_13() {
    check(
        "config pending=1\nprofile p\nfile a p\nfile b p\nstatus a pending created=1\n\
         status b pending sha=none created=2 \
         msg=not_admitted:_1_requests_already_pending_(--max-pending);_it_is_admitted,_oldest_first,_as_room_frees_up",
        "start a",
    );
}

#[test]
fn a_deferred_request_whose_file_is_gone_is_forgotten_not_cancelled_issue_13() {
    check("profile p\nstatus b pending sha=none created=2", "prune b");
}

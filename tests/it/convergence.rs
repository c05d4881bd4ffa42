//! Convergence under change and failure (issue 4): cancel, timeouts, slots,
//! spec freezing, crash adoption, fault injection, bad edits, an unavailable
//! source, symlink swaps, Podman failures, signals, `agentd plan`.

use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::util::{World, require_podman, test_image, write};

const MIN: Duration = Duration::from_secs(60);

/// A timestamp field of a status object.
fn time_of(s: &serde_json::Value, field: &str) -> jiff::Timestamp {
    s[field]
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("{field} is not a time: {s}"))
}

fn running(s: &serde_json::Value) -> bool {
    s["phase"] == "running"
}

#[test]
fn deleting_running_request_cancels_it_issue_4() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    w.sh_profile("sleeper", "echo started; sleep 300", "");
    w.request("by-rm", "profile = \"sleeper\"\n");
    w.request("by-cli", "profile = \"sleeper\"\n");
    w.start_daemon_with(&[], &["--stop-grace", "2s"]);
    w.wait_for("by-rm", MIN, running);
    w.wait_for("by-cli", MIN, running);
    std::fs::remove_file(w.desired.join("requests/by-rm.toml")).expect("rm");
    let out = w
        .agentd()
        .args(["cancel", "by-cli"])
        .output()
        .expect("cancel");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for id in ["by-rm", "by-cli"] {
        let s = w.wait_done(id);
        assert_eq!(s["outcome"], "cancelled", "{s}");
        let rec: serde_json::Value = w.session_record(id);
        assert_eq!(rec["outcome"], "cancelled");
        assert!(w.console(id).contains("started"));
    }
    assert!(w.containers_after_removal().is_empty());
    let out = w
        .agentd()
        .args(["cancel", "no-such"])
        .output()
        .expect("cancel");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn deleting_pending_request_cancels_it_and_status_is_pruned_after_retention() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    w.gate_profile("g", "true", "");
    w.request("first", "profile = \"g\"\n");
    w.start_daemon_with(&[], &["--max-sessions", "1", "--status-retention", "2s"]);
    w.wait_for("first", MIN, running);
    w.request("second", "profile = \"g\"\n");
    let s = w.wait_for("second", MIN, |s| s["phase"] == "pending");
    w.eventually("a slot message", MIN, || {
        w.status("second").is_some_and(|s| {
            s["message"]
                .as_str()
                .unwrap_or("")
                .contains("waiting for a slot (1/1 running)")
        })
    });
    assert!(s["session_id"].is_null());
    std::fs::remove_file(w.desired.join("requests/second.toml")).expect("rm");
    let s = w.wait_done("second");
    assert_eq!(s["outcome"], "cancelled");
    assert!(s["audit_dir"].is_null(), "never started, no record: {s}");
    // Gone past retention: pruned.
    w.eventually("status of `second` pruned", Duration::from_secs(20), || {
        w.status("second").is_none()
    });
    w.open_gate();
    assert_eq!(w.wait_done("first")["outcome"], "success");
}

#[test]
fn timeout_ends_session_as_timed_out() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    w.sh_profile("slow", "sleep 300", "timeout = \"2s\"");
    w.request("r", "profile = \"slow\"\n");
    w.request("quick", "profile = \"slow\"\ntimeout = \"1s\"\n");
    w.start_daemon_with(&[], &["--stop-grace", "1s"]);
    for id in ["r", "quick"] {
        let s = w.wait_done(id);
        assert_eq!(s["outcome"], "timed_out", "{s}");
        let started = time_of(&s, "started_at");
        let finished = time_of(&s, "finished_at");
        let ran = finished.duration_since(started).as_secs_f64();
        assert!((0.5..15.0).contains(&ran), "{id} ran {ran}s");
    }
    assert!(w.containers_after_removal().is_empty());
}

#[test]
fn timeout_counts_from_the_real_start_across_restarts() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    w.sh_profile("slow", "sleep 300", "timeout = \"4s\"");
    w.request("r", "profile = \"slow\"\n");
    w.start_daemon_with(&[], &["--stop-grace", "1s"]);
    let s = w.wait_for("r", MIN, running);
    let started = time_of(&s, "started_at");
    w.kill9();
    std::thread::sleep(Duration::from_secs(1));
    w.start_daemon_with(&[], &["--stop-grace", "1s"]);
    let s = w.wait_done("r");
    assert_eq!(s["outcome"], "timed_out", "{s}");
    let finished = time_of(&s, "finished_at");
    let ran = finished.duration_since(started).as_secs_f64();
    assert!((3.5..12.0).contains(&ran), "the deadline moved: ran {ran}s");
    assert_eq!(w.containers_created_for("r"), 1);
}

#[test]
fn slots_are_shared_oldest_first_and_profiles_respect_max_concurrent() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    w.sh_profile("p", "sleep 0.5", "max_concurrent = 1");
    w.sh_profile("q", "sleep 0.5", "");
    w.start_daemon_with(&[], &["--max-sessions", "2"]);
    for id in ["a1", "a2", "a3"] {
        w.request(id, "profile = \"p\"\n");
        w.wait_for(id, MIN, |s| s["created_at"].is_string());
    }
    w.request("b1", "profile = \"q\"\n");
    let mut spans = Vec::new();
    for id in ["a1", "a2", "a3", "b1"] {
        let s = w.wait_done(id);
        assert_eq!(s["outcome"], "success", "{s}");
        spans.push((id, time_of(&s, "started_at"), time_of(&s, "finished_at")));
    }
    // Profile p never ran two at once, and ran oldest first.
    for pair in spans[..3].windows(2) {
        assert!(
            pair[1].1 >= pair[0].2,
            "{} started before {} finished",
            pair[1].0,
            pair[0].0
        );
    }
    // q was not held back by p's limit: it overlapped some p session.
    let b = spans[3];
    assert!(
        spans[..3].iter().any(|a| b.1 < a.2 && a.1 < b.2),
        "b1 did not run alongside p: {spans:?}"
    );
}

#[test]
fn suspended_profile_admits_nothing_new_until_resumed() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    w.sh_profile("p", "true", "suspend = true");
    w.request("r", "profile = \"p\"\n");
    w.start_daemon();
    w.eventually("a suspended message", MIN, || {
        w.status("r")
            .is_some_and(|s| s["phase"] == "pending" && s["message"] == "profile `p` is suspended")
    });
    w.sh_profile("p", "true", "suspend = false");
    assert_eq!(w.wait_done("r")["outcome"], "success");
}

#[test]
fn edit_after_admission_is_noted_and_the_admitted_spec_runs() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    w.gate_profile("g", "echo unit=$AGENTD_WORK_UNIT", "");
    w.request("r", "profile = \"g\"\nwork_unit = \"original\"\n");
    w.start_daemon();
    let s = w.wait_for("r", MIN, running);
    let sha = s["spec_sha256"].clone();
    w.request("r", "profile = \"g\"\nwork_unit = \"edited\"\n");
    w.eventually("the edit noted", MIN, || {
        w.status("r").is_some_and(|s| {
            s["message"]
                .as_str()
                .unwrap_or("")
                .contains("file changed after admission")
        })
    });
    w.open_gate();
    let s = w.wait_done("r");
    assert_eq!(s["outcome"], "success");
    assert_eq!(s["spec_sha256"], sha);
    assert_eq!(s["work_unit"], "original");
    let console = w.console("r");
    assert_eq!(console, "unit=original\n");
    assert_eq!(
        w.containers_created_for("r"),
        1,
        "an edit never starts a second session"
    );
}

#[test]
fn kill_9_mid_session_adopts_it_without_duplicates() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    w.gate_profile("g", "echo done-after-gate", "");
    w.request("r", "profile = \"g\"\n");
    w.start_daemon();
    w.wait_for("r", MIN, running);
    w.kill9();
    assert_eq!(w.containers().len(), 1, "the session survives the daemon");
    w.start_daemon();
    std::thread::sleep(Duration::from_millis(500));
    w.open_gate();
    let s = w.wait_done("r");
    assert_eq!(s["outcome"], "success", "{s}\n{}", w.log());
    assert_eq!(w.containers_created_for("r"), 1);
    assert_eq!(w.audit_records("g").len(), 1);
    assert!(w.containers_after_removal().is_empty());
    assert_eq!(w.work_dirs_after_removal(), 0);
    let console = w.console("r");
    assert_eq!(console, "done-after-gate\n");
}

#[test]
fn exit_while_the_daemon_was_down_is_collected() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    w.gate_profile("g", "exit 5", "");
    w.request("r", "profile = \"g\"\n");
    w.start_daemon();
    w.wait_for("r", MIN, running);
    w.kill9();
    w.open_gate();
    let name = format!("agentd-{}-r", w.instance());
    // Exited, or already gone: a session container removes itself once it
    // exits (issue 18 item 6).
    w.eventually("the container to exit", MIN, || {
        let out = Command::new("podman")
            .args(["inspect", "--format", "{{.State.Status}}", &name])
            .output()
            .expect("inspect");
        !out.status.success() || String::from_utf8_lossy(&out.stdout).trim() == "exited"
    });
    w.start_daemon();
    let s = w.wait_done("r");
    assert_eq!(s["outcome"], "work_failed", "{s}");
    assert_eq!(s["exit_code"], 5);
    assert!(w.containers_after_removal().is_empty());
}

/// The container exited and removed itself while the daemon was down: no
/// container, no exit file left. The restarted daemon reads the exit from
/// Podman's own record of it (its event log), for the container id the
/// daemon recorded at its start; the command never runs a second time.
#[test]
fn an_exit_while_the_daemon_was_down_is_read_from_podmans_record_issue_18() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    w.gate_profile("g", "echo ran; exit 4", "");
    w.request("r", "profile = \"g\"\n");
    w.start_daemon();
    w.wait_for("r", MIN, running);
    w.kill9();
    w.open_gate();
    let name = format!("agentd-{}-r", w.instance());
    w.eventually("the container to remove itself", MIN, || {
        !Command::new("podman")
            .args(["container", "exists", &name])
            .status()
            .expect("podman container exists")
            .success()
    });
    w.start_daemon();
    let s = w.wait_done("r");
    assert_eq!(s["outcome"], "nothing_ready", "{s}\n{}", w.log());
    assert_eq!(s["exit_code"], 4, "{s}");
    let rec = w.session_record("r");
    assert_eq!(rec["exit_code"], 4, "{rec}");
    assert!(
        rec["image_id"].as_str().is_some_and(|i| !i.is_empty()),
        "{rec}"
    );
    assert_eq!(w.console("r"), "ran\n");
    assert_eq!(w.containers_created_for("r"), 1, "the command ran once");
    assert_eq!(w.audit_records("g").len(), 1);
    assert!(
        w.log().contains("its exit read from podman's event log"),
        "{}",
        w.log()
    );
    assert!(w.containers_after_removal().is_empty());
    assert_eq!(w.work_dirs_after_removal(), 0);
}

#[test]
fn a_crash_at_every_lifecycle_step_converges_after_restart() {
    if !require_podman() {
        return;
    }
    for point in [
        "start-before-credentials",
        "start-after-credentials",
        "start-after-run",
        "finish-before-audit",
        "finish-after-audit",
        "finish-after-done",
        "finish-after-rm",
    ] {
        let mut w = World::new();
        w.sh_profile(
            "f",
            "echo hello; sleep 0.3",
            "credentials = [{ name = \"C\", source = \"FAULT_TEST_CRED\" }]",
        );
        w.request("r", "profile = \"f\"\n");
        w.start_daemon_with(&[("AGENTD_FAULT", point), ("FAULT_TEST_CRED", "v")], &[]);
        let died = w.wait_daemon(MIN);
        assert!(
            died.is_some_and(|s| !s.success()),
            "{point}: daemon did not die: {died:?}\n{}",
            w.log()
        );
        w.start_daemon_with(&[("FAULT_TEST_CRED", "v")], &[]);
        let s = w.wait_done("r");
        assert_eq!(s["outcome"], "success", "{point}: {s}\n{}", w.log());
        assert_eq!(
            w.containers_created_for("r"),
            1,
            "{point}: container created more than once"
        );
        assert_eq!(w.audit_records("f").len(), 1, "{point}: one audit record");
        let rec: serde_json::Value = w.session_record("r");
        assert_eq!(rec["outcome"], "success", "{point}: {rec}");
        let console = w.console("r");
        assert_eq!(console, "hello\n", "{point}: console capture lost");
        assert!(
            w.containers_after_removal().is_empty(),
            "{point}: containers left"
        );
        assert_eq!(
            w.work_dirs_after_removal(),
            0,
            "{point}: work folder (credentials) left"
        );
    }
}

/// Found by `scripts/chaos`: a kill -9 that interrupted an adoption's
/// removal of an unprepared container (its command still at the gate) left
/// a status `starting` and an ended container; the next daemon judged that
/// exit and recorded `generic_failure` for a command that never ran.
#[test]
fn ended_container_of_an_unprepared_start_is_started_again_issue_12() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    w.sh_profile("f", "echo hello", "");
    w.request("r", "profile = \"f\"\n");
    w.start_daemon_with(&[("AGENTD_FAULT", "start-before-prepared")], &[]);
    let died = w.wait_daemon(MIN);
    assert!(
        died.is_some_and(|s| !s.success()),
        "daemon did not die\n{}",
        w.log()
    );
    // `podman run` outlives the daemon: its container waits at the gate.
    // Ending it is what an interrupted clean-up leaves behind.
    w.eventually("the container to exist", MIN, || !w.containers().is_empty());
    let name = w.containers()[0].clone();
    let stopped = std::process::Command::new("podman")
        .args(["stop", "-t", "0", &name])
        .output()
        .expect("podman stop");
    assert!(stopped.status.success(), "{stopped:?}");
    w.start_daemon();
    let s = w.wait_done("r");
    assert_eq!(s["outcome"], "success", "{s}\n{}", w.log());
    assert_eq!(w.console("r"), "hello\n", "the command ran once");
    assert_eq!(w.audit_records("f").len(), 1, "one audit record");
    assert!(w.containers_after_removal().is_empty(), "containers left");
    assert_eq!(w.work_dirs_after_removal(), 0, "work folder left");
}

#[test]
fn half_created_container_is_cleaned_up_and_the_request_retried() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    w.sh_profile("p", "echo ran", "");
    w.request("r", "profile = \"p\"\n");
    // What a crash between create and start leaves: a status in `starting`
    // and a created, never-started container with this instance's labels.
    let inst = w.instance();
    let sha = agentd::sha256_hex(&std::fs::read(w.desired.join("requests/r.toml")).expect("read"));
    let spec = format!(
        r#"{{"id":"r","path":"{}","profile":"p","repo":null,"input":"None","timeout":null,"scheduled_for":null,"spec_sha256":"{sha}"}}"#,
        w.desired.join("requests/r.toml").display()
    );
    write(&w.state, "specs/r.json", spec);
    write(
        &w.state,
        "status/r.json",
        format!(
            r#"{{"request":"r","profile":"p","phase":"starting","outcome":null,"exit_code":null,"session_id":"00112233aabbccdd","container":null,"repo":null,"work_unit":null,"origin":"file","spec_sha256":"{sha}","created_at":"2026-01-01T00:00:00Z","started_at":null,"finished_at":null,"audit_dir":null,"message":null}}"#
        ),
    );
    let name = format!("agentd-{inst}-r");
    let out = Command::new("podman")
        .args([
            "create",
            "--name",
            &name,
            "--label",
            &format!("io.agentd.instance={inst}"),
            "--label",
            "io.agentd.managed=true",
            "--label",
            "io.agentd.request=r",
            &test_image(),
            "true",
        ])
        .output()
        .expect("podman create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    w.start_daemon();
    let s = w.wait_done("r");
    assert_eq!(s["outcome"], "success", "{s}\n{}", w.log());
    assert_eq!(
        s["session_id"], "00112233aabbccdd",
        "the retried start keeps its session"
    );
    assert!(w.containers_after_removal().is_empty());
}

#[test]
fn orphans_are_removed_and_other_instances_untouched() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    let inst = w.instance();
    let mk = |name: &str, labels: &[String]| {
        let mut c = Command::new("podman");
        c.args(["create", "--name", name]);
        for l in labels {
            c.args(["--label", l]);
        }
        let out = c.args([&test_image(), "true"]).output().expect("create");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let suffix = &inst[..8];
    let orphan = format!("agentd-orphan-{suffix}");
    let foreign = format!("agentd-foreign-{suffix}");
    let unlabelled = format!("plain-{suffix}");
    mk(
        &orphan,
        &[
            format!("io.agentd.instance={inst}"),
            "io.agentd.request=ghost".into(),
        ],
    );
    mk(
        &foreign,
        &[
            "io.agentd.instance=someone-else".into(),
            "io.agentd.request=ghost".into(),
        ],
    );
    mk(&unlabelled, &[]);
    w.start_daemon();
    w.eventually("the orphan removed", MIN, || w.containers().is_empty());
    std::thread::sleep(Duration::from_millis(500));
    for keep in [&foreign, &unlabelled] {
        let out = Command::new("podman")
            .args(["container", "exists", keep])
            .status()
            .expect("exists");
        assert!(out.success(), "{keep} was touched");
        let _ = Command::new("podman").args(["rm", "-f", keep]).output();
    }
}

#[test]
fn invalid_profile_keeps_running_work_and_holds_new_requests() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    w.gate_profile("g", "echo ok", "");
    w.request("running", "profile = \"g\"\n");
    w.start_daemon();
    w.wait_for("running", MIN, running);
    let good = std::fs::read_to_string(w.desired.join("profiles/g.toml")).expect("read");
    w.profile("g", "base_image = \"x\"\ncommand = []\n");
    w.request("new", "profile = \"g\"\n");
    let s = w.wait_for("new", MIN, |s| s["phase"] == "invalid");
    let msg = s["message"].as_str().unwrap_or("");
    assert!(
        msg.contains("profile `g` is invalid")
            && msg.contains("profiles/g.toml:2:1: command is empty"),
        "{msg}"
    );
    assert_eq!(w.status("running").expect("status")["phase"], "running");
    w.open_gate();
    assert_eq!(w.wait_done("running")["outcome"], "success");
    w.profile("g", &good);
    assert_eq!(w.wait_done("new")["outcome"], "success");
}

#[test]
fn unavailable_desired_dir_cancels_nothing() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    w.gate_profile("g", "echo ok", "");
    w.request("r", "profile = \"g\"\n");
    w.start_daemon();
    w.wait_for("r", MIN, running);
    let moved = w.path().join("requests-away");
    std::fs::rename(w.desired.join("requests"), &moved).expect("move requests away");
    w.eventually("the condition reported", MIN, || {
        let out = w.agentd().arg("status").output().expect("status");
        String::from_utf8_lossy(&out.stderr).contains("cannot read the desired dir")
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        w.status("r").expect("status")["phase"],
        "running",
        "{}",
        w.log()
    );
    std::fs::rename(&moved, w.desired.join("requests")).expect("move back");
    w.open_gate();
    assert_eq!(w.wait_done("r")["outcome"], "success");
    w.eventually("the warning cleared", MIN, || {
        let out = w.agentd().arg("status").output().expect("status");
        !String::from_utf8_lossy(&out.stderr).contains("cannot read the desired dir")
    });
}

#[test]
fn atomic_symlink_swap_of_requests_is_one_change() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    w.gate_profile("g", "echo ok", "");
    std::fs::remove_dir(w.desired.join("requests")).expect("rmdir");
    let v1 = w.path().join("data/v1");
    let v2 = w.path().join("data/v2");
    let v3 = w.path().join("data/v3");
    write(&v1, "a.toml", "profile = \"g\"\n");
    write(&v2, "a.toml", "profile = \"g\"\n");
    write(&v2, "b.toml", "profile = \"g\"\n");
    write(&v3, "b.toml", "profile = \"g\"\n");
    let desired = w.desired.clone();
    let swap = |to: &std::path::Path| {
        let tmp = desired.join(".requests.tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(to, &tmp).expect("symlink");
        std::fs::rename(&tmp, desired.join("requests")).expect("swap");
    };
    swap(&v1);
    w.start_daemon();
    w.wait_for("a", MIN, running);
    swap(&v2);
    w.wait_for("b", MIN, running);
    assert_eq!(
        w.status("a").expect("status")["phase"],
        "running",
        "a is in v2 too: not cancelled"
    );
    swap(&v3);
    assert_eq!(w.wait_done("a")["outcome"], "cancelled");
    w.open_gate();
    assert_eq!(w.wait_done("b")["outcome"], "success");
}

#[test]
fn failing_and_hanging_podman_calls_are_retried_with_backoff() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    // A podman wrapper: the first two `container inspect` calls fail, the
    // third hangs past the call timeout; then it behaves. Its `image
    // inspect` always fails: the image a session ran is then unknown at its
    // end, which is asked with `container inspect` (issue 12: with the image
    // known and the exit file read, the end asks Podman nothing).
    let count = w.path().join("inspect-count");
    let wrapper = w.path().join("podman-flaky");
    write(
        w.path(),
        "podman-flaky",
        format!(
            "#!/bin/sh\nif [ \"$1\" = image ] && [ \"$2\" = inspect ]; then echo 'Error: injected image failure' >&2; exit 125; fi\nif [ \"$1\" = container ] && [ \"$2\" = inspect ]; then\n  n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}\n  [ $n -le 2 ] && {{ echo 'Error: injected failure' >&2; exit 125; }}\n  [ $n -eq 3 ] && sleep 30\nfi\nexec podman \"$@\"\n",
            c = count.display()
        ),
    );
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    w.sh_profile("p", "echo ok", "");
    w.request("r", "profile = \"p\"\n");
    w.start_daemon_with(
        &[
            ("AGENTD_PODMAN", wrapper.to_str().expect("utf8")),
            ("AGENTD_PODMAN_TIMEOUT", "5s"),
        ],
        &[],
    );
    let s = w.wait_done("r");
    assert_eq!(s["outcome"], "success", "{s}");
    let attempts: u32 = std::fs::read_to_string(&count)
        .expect("count")
        .trim()
        .parse()
        .expect("number");
    assert!(attempts >= 4, "inspect was called {attempts} times");
    let log = w.log();
    assert!(
        log.contains("injected failure") && log.contains("did not finish within 5s"),
        "{log}"
    );
    assert!(w.containers_after_removal().is_empty());
}

#[test]
fn second_signal_exits_at_once_and_the_next_start_adopts() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    w.gate_profile("g", "echo ok", "");
    w.request("r", "profile = \"g\"\n");
    w.start_daemon();
    w.wait_for("r", MIN, running);
    w.signal(Signal::SIGINT);
    std::thread::sleep(Duration::from_millis(200));
    w.signal(Signal::SIGINT);
    let exited = w.wait_daemon(Duration::from_secs(10));
    assert!(exited.is_some(), "second signal did not exit the daemon");
    assert_eq!(
        w.containers().len(),
        1,
        "the running container is left for adoption"
    );
    w.start_daemon();
    w.open_gate();
    assert_eq!(w.wait_done("r")["outcome"], "success");
    assert_eq!(w.containers_created_for("r"), 1);
}

#[test]
fn sighup_triggers_a_full_rescan() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    w.start_daemon();
    w.eventually("the daemon up", MIN, || w.log().contains("agentd starting"));
    w.signal(Signal::SIGHUP);
    w.eventually("a rescan", MIN, || {
        w.log().contains("full rescan") && w.log().contains("Hangup")
    });
}

#[test]
fn plan_prints_what_would_happen_without_doing_it() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    w.sh_profile("p", "true", "");
    w.request("r", "profile = \"p\"\n");
    w.request("bad", "profile = \"nope\"\n");
    let out = w.agentd().arg("plan").output().expect("plan");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("admit r"), "{text}");
    assert!(
        text.contains("invalid bad:") && text.contains("profile `nope` not found"),
        "{text}"
    );
    assert!(w.status("r").is_none(), "plan changed nothing");
    w.start_daemon();
    assert_eq!(w.wait_done("r")["outcome"], "success");
    // The container goes right after `done` (issue 12): let it go first.
    assert!(
        w.containers_after_removal().is_empty(),
        "{:?}",
        w.containers()
    );
    w.kill9();
    let out = w.agentd().arg("plan").output().expect("plan");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_half_written_request_is_never_acted_on() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    w.sh_profile("p", "echo unit=$AGENTD_WORK_UNIT", "");
    w.start_daemon();
    w.eventually("the daemon up", MIN, || w.log().contains("agentd starting"));
    std::thread::sleep(Duration::from_millis(300));
    // A slow, non-atomic writer: the first half alone is a valid request.
    {
        use std::io::Write;
        let mut f = std::fs::File::create(w.desired.join("requests/slow.toml")).expect("create");
        f.write_all(b"profile = \"p\"\n").expect("write");
        f.flush().expect("flush");
        std::thread::sleep(Duration::from_millis(700));
        assert!(
            w.status("slow").is_none(),
            "admitted while still being written"
        );
        f.write_all(b"work_unit = \"complete\"\n").expect("write");
    }
    assert_eq!(w.wait_done("slow")["outcome"], "success");
    let console = w.console("slow");
    assert_eq!(console, "unit=complete\n");
}

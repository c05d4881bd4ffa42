//! The path from a container's exit to `done` holds only what the status
//! and the audit record need (issue 12 item 3): the exit code from conmon's
//! exit file, the image learned at the start. The container removes itself
//! (`run --rm`, issue 18 item 6); one with a memory limit is removed after
//! `done` is written.

use std::time::Duration;

use crate::util::{World, image_without_git, require_podman, test_image, toml_string, write};

/// A `podman` that appends each call's verb (`run`, `rm`, `container
/// inspect`, ...) to `calls.log`, and for `rm` also whether the request's
/// status said `done` at that moment, then runs the real one.
fn logging_podman(w: &World, request: &str) -> String {
    let real = std::process::Command::new("sh")
        .args(["-c", "command -v podman"])
        .output()
        .expect("sh runs");
    let real = String::from_utf8_lossy(&real.stdout).trim().to_string();
    assert!(!real.is_empty(), "podman is on PATH");
    let log = w.path().join("calls.log");
    let status = w.state.join(format!("status/{request}.json"));
    let script = format!(
        "#!/bin/sh\n\
         case \"$1\" in\n\
           events|ps|info) ;;\n\
           container|image|secret) echo \"$1 $2\" >> {log} ;;\n\
           rm) if grep -Eq '\"phase\": ?\"done\"' {status} 2>/dev/null; then echo 'rm after done' >> {log}; else echo 'rm before done' >> {log}; fi ;;\n\
           *) echo \"$1\" >> {log} ;;\n\
         esac\n\
         exec {real} \"$@\"\n",
        log = log.display(),
        status = status.display(),
    );
    let path = write(w.path(), "podman-logging", script);
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    path.display().to_string()
}

fn calls(w: &World) -> Vec<String> {
    std::fs::read_to_string(w.path().join("calls.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn the_end_of_a_session_inspects_nothing_and_the_container_removes_itself_issue_18() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    w.sh_profile("quick", "echo hi; exit 3", "");
    // The first session of an image learns its id (`image inspect`, beside
    // `podman run`); the second finds it cached.
    w.request("first", "profile = \"quick\"\n");
    let podman = logging_podman(&w, "second");
    w.start_daemon_with(&[("AGENTD_PODMAN", podman.as_str())], &[]);
    let s = w.wait_done("first");
    assert_eq!(s["exit_code"], 3, "{s}");
    assert!(
        w.containers_after_removal().is_empty(),
        "{:?}",
        w.containers()
    );
    let before = calls(&w).len();
    w.request("second", "profile = \"quick\"\n");
    let s = w.wait_done("second");
    assert_eq!(s["exit_code"], 3, "{s}");
    assert_eq!(s["outcome"], "blocked", "{s}");
    assert_eq!(w.console("second"), "hi\n");
    assert!(
        w.containers_after_removal().is_empty(),
        "{:?}",
        w.containers()
    );
    // `image inspect` may run again when something else on the host changed
    // the image store meanwhile (a build, a tag): that is the cache doing
    // its job. What never runs is `container inspect`, nor any `rm`: the
    // container removes itself (`run --rm`, issue 18 item 6), so no second
    // removal can run either.
    let second: Vec<String> = calls(&w)[before..]
        .iter()
        .filter(|c| *c != "image inspect")
        .cloned()
        .collect();
    assert_eq!(second, ["run"], "{second:?}\n{}", w.log());
    // The record still names the image the session ran.
    let rec = w.session_record("second");
    let out = std::process::Command::new("podman")
        .args(["image", "inspect", "--format", "{{.Id}}", &test_image()])
        .output()
        .expect("podman image inspect");
    assert_eq!(
        rec["image_id"],
        String::from_utf8_lossy(&out.stdout).trim(),
        "{rec}"
    );
    assert!(rec["end_timestamp"].is_string(), "{rec}");
}

/// A tag moved to another image between two sessions: each record names
/// the image its own container ran, never a cached answer gone stale.
#[test]
fn a_moved_tag_is_recorded_as_the_image_that_ran_issue_12() {
    if !require_podman() {
        return;
    }
    let other = image_without_git();
    let mut w = World::new();
    let tag = format!("localhost/agentd-retag-{}:t", std::process::id());
    let podman = |args: &[&str]| {
        let out = std::process::Command::new("podman")
            .args(args)
            .output()
            .expect("podman runs");
        assert!(out.status.success(), "podman {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let id_of = |image: &str| podman(&["image", "inspect", "--format", "{{.Id}}", image]);
    podman(&["tag", &test_image(), &tag]);
    let body = format!(
        "base_image = \"{tag}\"\ncommand = [\"/bin/sh\", \"-c\", {}]\nrepo = \"{}\"\nnetwork = \"none\"\n",
        toml_string("exit 0"),
        w.repo_url
    );
    w.profile("moved", &body);
    w.request("a", "profile = \"moved\"\n");
    w.start_daemon();
    assert_eq!(w.wait_done("a")["outcome"], "success");
    podman(&["tag", &other, &tag]);
    w.request("b", "profile = \"moved\"\n");
    let b = w.wait_done("b");
    assert_eq!(b["outcome"], "success", "{b}");
    // `untag IMAGE NAME` removes that one name (without NAME, every name
    // of the image would go, a shared test image's too).
    let _ = std::process::Command::new("podman")
        .args(["untag", &tag, &tag])
        .output();
    assert_eq!(w.session_record("a")["image_id"], id_of(&test_image()));
    assert_eq!(w.session_record("b")["image_id"], id_of(&other));
    assert!(
        w.containers_after_removal().is_empty(),
        "{:?}",
        w.containers()
    );
}

/// The container's pid must be gone before its exit file is believed; a
/// session killed by signal 9 (out of memory or not: only Podman knows)
/// is judged from `container inspect`.
#[test]
fn a_killed_session_is_still_judged_by_podman_issue_12() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    w.sh_profile("killed", "kill -9 $$", "");
    w.request("k", "profile = \"killed\"\n");
    let podman = logging_podman(&w, "k");
    w.start_daemon_with(&[("AGENTD_PODMAN", podman.as_str())], &[]);
    let s = w.wait_for("k", Duration::from_secs(60), |s| s["phase"] == "done");
    assert_eq!(s["exit_code"], 137, "{s}");
    assert_eq!(s["outcome"], "terminated_by_signal", "{s}");
    assert!(
        calls(&w).iter().any(|c| c == "container inspect"),
        "{:?}",
        calls(&w)
    );
    assert!(
        w.containers_after_removal().is_empty(),
        "{:?}",
        w.containers()
    );
}

/// With a memory limit, whether the kernel killed one of the session's
/// processes for memory is Podman's to say ("killed: out of memory"): the
/// end asks `container inspect` even when the exit code is known.
#[test]
fn a_session_with_a_memory_limit_is_judged_by_podman_issue_12() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    w.sh_profile("limited", "exit 0", "memory = \"256m\"");
    w.request("m", "profile = \"limited\"\n");
    let podman = logging_podman(&w, "m");
    w.start_daemon_with(&[("AGENTD_PODMAN", podman.as_str())], &[]);
    let s = w.wait_done("m");
    assert_eq!(s["outcome"], "success", "{s}");
    assert!(
        calls(&w).iter().any(|c| c == "container inspect"),
        "{:?}",
        calls(&w)
    );
    assert!(
        w.containers_after_removal().is_empty(),
        "{:?}",
        w.containers()
    );
}

/// A session with a memory limit keeps its container until its end has
/// asked Podman (no `run --rm`): it is removed once, after `done`.
#[test]
fn a_session_with_a_memory_limit_is_removed_once_after_done_issue_18() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    w.sh_profile("limited", "exit 0", "memory = \"256m\"");
    w.request("m", "profile = \"limited\"\n");
    let podman = logging_podman(&w, "m");
    w.start_daemon_with(&[("AGENTD_PODMAN", podman.as_str())], &[]);
    assert_eq!(w.wait_done("m")["outcome"], "success");
    assert!(
        w.containers_after_removal().is_empty(),
        "{:?}",
        w.containers()
    );
    // Late reports of the removed container never bring it back for a
    // second removal: wait past the resync that could.
    std::thread::sleep(Duration::from_secs(2));
    let rms: Vec<String> = calls(&w)
        .into_iter()
        .filter(|c| c.starts_with("rm"))
        .collect();
    assert_eq!(rms, ["rm after done"], "{}", w.log());
}

/// Sessions that start together (a burst) ask about their image once: the
/// others wait for that answer instead of each running `image inspect`.
#[test]
fn sessions_starting_together_ask_about_their_image_once_issue_18() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    w.sh_profile("quick", "true", "");
    for i in 0..4 {
        w.request(&format!("b{i}"), "profile = \"quick\"\n");
    }
    let podman = logging_podman(&w, "b0");
    w.start_daemon_with(
        &[("AGENTD_PODMAN", podman.as_str())],
        &["--max-sessions", "4"],
    );
    for i in 0..4 {
        let s = w.wait_done(&format!("b{i}"));
        assert_eq!(s["outcome"], "success", "{s}");
    }
    let calls = calls(&w);
    let runs = calls.iter().filter(|c| *c == "run").count();
    let inspects = calls.iter().filter(|c| *c == "image inspect").count();
    assert_eq!(runs, 4, "{calls:?}");
    // One, or two when another test changed the image store meanwhile
    // (the first answer no longer holds); four without the single flight.
    assert!(inspects <= 2, "{inspects} image inspects: {calls:?}");
}

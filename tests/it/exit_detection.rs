//! Learning that a session ended without waiting for Podman's event log
//! (issue 12 item 2): the daemon watches conmon's exit files, and the
//! events stream is only the fallback.

use std::time::{Duration, Instant};

use crate::util::{World, require_podman, write};

/// A `podman` that runs the real one for everything but `events`, whose
/// stream stays silent: only the exit files (or the 30 s resync) can tell
/// the daemon that a container exited.
fn podman_with_silent_events(w: &World) -> String {
    let real = std::process::Command::new("sh")
        .args(["-c", "command -v podman"])
        .output()
        .expect("sh runs");
    let real = String::from_utf8_lossy(&real.stdout).trim().to_string();
    assert!(!real.is_empty(), "podman is on PATH");
    let script = format!(
        "#!/bin/sh\nif [ \"$1\" = events ]; then exec sleep 3600; fi\nexec {real} \"$@\"\n"
    );
    let path = write(w.path(), "podman-silent-events", script);
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    path.display().to_string()
}

#[test]
fn an_exit_is_seen_without_the_events_stream_issue_12() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    let podman = podman_with_silent_events(&w);
    // Long enough that the start has finished (and its pass has run) when
    // the command exits: nothing but the exit itself can wake the daemon.
    w.sh_profile("exiter", "sleep 2; exit 3", "");
    w.request("quiet", "profile = \"exiter\"\n");
    w.start_daemon_with(&[("AGENTD_PODMAN", podman.as_str())], &[]);
    let running = w.wait_for("quiet", Duration::from_secs(60), |s| {
        s["phase"] == "running" || s["phase"] == "done"
    });
    let since = Instant::now();
    // Without the exit files the exit waits for the resync (30 s).
    let s = w.wait_for("quiet", Duration::from_secs(15), |s| s["phase"] == "done");
    assert_eq!(s["exit_code"], 3, "{s} (was {running})");
    assert_eq!(s["outcome"], "blocked", "{s}");
    assert!(
        since.elapsed() < Duration::from_secs(15),
        "done {:?} after running",
        since.elapsed()
    );
    assert!(
        w.containers_after_removal().is_empty(),
        "{:?}",
        w.containers()
    );
}

/// An exit file is only a hint: one naming a container that still runs
/// (a stray file, a misread) must not end its session. The daemon looks
/// (`container inspect`), finds it running and keeps supervising it.
#[test]
fn a_false_exit_file_never_ends_a_running_session_issue_12() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    let exits = w.path().join("exits");
    std::fs::create_dir_all(&exits).expect("mkdir");
    w.sh_profile("sleeper", "sleep 5; exit 4", "");
    w.request("busy", "profile = \"sleeper\"\n");
    w.start_daemon_with(
        &[(
            "AGENTD_PODMAN_EXIT_DIR",
            exits.to_str().expect("utf-8 path"),
        )],
        &[],
    );
    let s = w.wait_for("busy", Duration::from_secs(60), |s| s["phase"] == "running");
    let name = s["container"].as_str().expect("container name").to_string();
    let out = std::process::Command::new("podman")
        .args(["container", "inspect", "--format", "{{.Id}}", &name])
        .output()
        .expect("podman runs");
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(id.len(), 64, "container id of {name}: {id:?}");
    let tmp = exits.join(format!("{id}.tmp"));
    std::fs::write(&tmp, "0").expect("write");
    std::fs::rename(&tmp, exits.join(&id)).expect("rename");
    w.eventually(
        "the false exit to be checked",
        Duration::from_secs(20),
        || {
            w.log()
                .contains("container still running; resuming supervision")
        },
    );
    // The log line comes just before the status goes back to `running`.
    let s = w.wait_for("busy", Duration::from_secs(10), |s| {
        s["phase"] == "running" || s["phase"] == "done"
    });
    assert_eq!(s["phase"], "running", "{s}");
    // The real exit (learned from podman events here) ends it as usual.
    let s = w.wait_done("busy");
    assert_eq!(s["exit_code"], 4, "{s}");
    assert_eq!(s["outcome"], "nothing_ready", "{s}");
}

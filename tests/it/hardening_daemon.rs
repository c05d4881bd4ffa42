//! Issue 13, the daemon's side of "the agent is hostile": a session cannot
//! write into its start gate, a gate filled by an older version's session
//! cannot wedge a restarted daemon, the daemon's own folders are private and
//! checked at start, and untrusted text reaches the terminal escaped.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::util::{World, require_podman};

/// Fill a FIFO until the kernel refuses more, as an old-version session
/// could (`exec 3<>/agentd/.gate; dd if=/dev/zero ... >&3`); the returned
/// handle keeps the bytes in the pipe, as the session's open descriptor did.
fn fill_fifo(path: &Path) -> std::fs::File {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let block = [0u8; 4096];
    loop {
        match f.write(&block) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return f,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
}

#[test]
fn session_cannot_write_into_its_start_gate_issue_13() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    // `exec 3<>` opens read-write, which never waits for a peer: it either
    // fails on the permission check or succeeds at once.
    w.sh_profile(
        "gatew",
        "if (exec 3<>/agentd/.gate) 2>/dev/null; then echo gate-writable; exit 0; \
         else echo gate-denied; exit 5; fi",
        "",
    );
    w.request("r", "profile = \"gatew\"\n");
    w.start_daemon();
    let s = w.wait_done("r");
    assert_eq!(w.console("r"), "gate-denied\n", "{s}\n{}", w.log());
    assert_eq!(s["outcome"], "work_failed", "{s}");
    assert_eq!(s["exit_code"], 5, "{s}");
}

#[test]
fn filled_gate_does_not_wedge_a_restarted_daemon_issue_13() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    w.sh_profile("filled", "sleep 100000", "timeout = \"40s\"");
    w.sh_profile("quick", "echo quick-done", "");
    w.request("filled", "profile = \"filled\"\n");
    w.start_daemon_with(&[], &["--stop-grace", "2s"]);
    let s = w.wait_for("filled", Duration::from_secs(60), |s| {
        s["phase"] == "running"
    });
    let sid = s["session_id"].as_str().expect("session id").to_string();
    // An old-version session filled its gate and holds it open; then the
    // daemon restarts.
    w.kill9();
    let gate = w.state.join("work").join(&sid).join("gate");
    let _held = fill_fifo(&gate);
    let restarted = Instant::now();
    w.start_daemon_with(&[], &["--stop-grace", "2s"]);
    // The restarted daemon reaches its loop and serves another request.
    w.request("other", "profile = \"quick\"\n");
    let o = w.wait_for("other", Duration::from_secs(60), |s| s["phase"] == "done");
    assert_eq!(o["outcome"], "success", "{o}\n{}", w.log());
    assert!(
        restarted.elapsed() < Duration::from_secs(60),
        "another request took {:?} after the restart",
        restarted.elapsed()
    );
    // And the filled session still gets its timeout.
    let f = w.wait_for("filled", Duration::from_secs(90), |s| s["phase"] == "done");
    assert_eq!(f["outcome"], "timed_out", "{f}\n{}", w.log());
}

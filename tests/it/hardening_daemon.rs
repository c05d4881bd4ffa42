//! Issue 13, the daemon's side of "the agent is hostile": a session cannot
//! write into its start gate, a gate filled by an older version's session
//! cannot wedge a restarted daemon, the daemon's own folders are private and
//! checked at start, and untrusted text reaches the terminal escaped.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
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

/// Run `agentd daemon` that is expected to refuse to start: its exit status
/// (None when it was still running after `within`, then killed) and stderr.
fn daemon_refusal(mut cmd: std::process::Command, within: Duration) -> (Option<i32>, String) {
    let err_path = tempfile::NamedTempFile::new().expect("temp file");
    let mut child = cmd
        .arg("daemon")
        .stdout(std::process::Stdio::null())
        .stderr(err_path.reopen().expect("reopen"))
        .spawn()
        .expect("agentd runs");
    let deadline = Instant::now() + within;
    let code = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break Some(s.code().unwrap_or(-1));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let err = std::fs::read_to_string(err_path.path()).unwrap_or_default();
    (code, err)
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .mode()
        & 0o7777
}

#[test]
fn group_or_world_writable_state_dir_is_refused_with_the_fix_issue_13() {
    for bad in [0o770, 0o777, 0o1777] {
        let w = World::new();
        std::fs::create_dir(&w.state).expect("mkdir");
        std::fs::set_permissions(&w.state, std::fs::Permissions::from_mode(bad)).expect("chmod");
        let (code, err) = daemon_refusal(w.agentd(), Duration::from_secs(20));
        assert!(
            code.is_some_and(|c| c != 0),
            "mode {bad:o}: the daemon must exit non-zero, got {code:?}\n{err}"
        );
        let fix = format!("chmod 700 {}", w.state.display());
        assert!(err.contains(&fix), "mode {bad:o}: no `{fix}` in:\n{err}");
    }
}

#[test]
fn state_dir_and_audit_root_of_another_user_are_refused_issue_13() {
    let w = World::new();
    std::fs::create_dir(&w.state).expect("mkdir");
    std::os::unix::fs::chown(&w.state, Some(65534), Some(65534)).expect("chown");
    let (code, err) = daemon_refusal(w.agentd(), Duration::from_secs(20));
    assert!(code.is_some_and(|c| c != 0), "{code:?}\n{err}");
    assert!(
        err.contains(&w.state.display().to_string()) && err.contains("owned by uid 65534"),
        "{err}"
    );
    assert!(err.contains("chown"), "{err}");

    let w = World::new();
    let audit = w.path().join("audit");
    std::fs::create_dir(&audit).expect("mkdir");
    std::fs::set_permissions(&audit, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let mut cmd = w.agentd();
    cmd.arg("--audit-root").arg(&audit);
    let (code, err) = daemon_refusal(cmd, Duration::from_secs(20));
    assert!(code.is_some_and(|c| c != 0), "{code:?}\n{err}");
    assert!(
        err.contains(&format!("chmod 700 {}", audit.display())),
        "{err}"
    );
}

#[test]
fn symlinked_lock_file_is_refused_and_its_target_untouched_issue_13() {
    let w = World::new();
    std::fs::create_dir(&w.state).expect("mkdir");
    std::fs::set_permissions(&w.state, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let victim = w.path().join("victim.txt");
    std::fs::write(&victim, "precious\n").expect("write");
    std::os::unix::fs::symlink(&victim, w.state.join("agentd.lock")).expect("symlink");
    let (code, err) = daemon_refusal(w.agentd(), Duration::from_secs(20));
    assert_eq!(
        std::fs::read_to_string(&victim).expect("read"),
        "precious\n",
        "the lock's symlink was followed"
    );
    assert!(code.is_some_and(|c| c != 0), "{code:?}\n{err}");
    assert!(
        err.contains("symlink") && err.contains(&w.state.join("agentd.lock").display().to_string()),
        "{err}"
    );
}

#[test]
fn session_uid_of_a_host_account_is_refused_issue_13() {
    let nobody = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(65534))
        .expect("passwd lookup")
        .expect("this test needs the host account with uid 65534 (nobody)");
    let w = World::new();
    let mut cmd = w.agentd();
    cmd.env("AGENTD_SESSION_UID", "65534");
    let (code, err) = daemon_refusal(cmd, Duration::from_secs(20));
    assert!(code.is_some_and(|c| c != 0), "{code:?}\n{err}");
    assert!(
        err.contains(&format!(
            "session uid 65534 belongs to the host account `{}`",
            nobody.name
        )),
        "{err}"
    );
    assert!(err.contains("--session-uid"), "{err}");
}

#[test]
fn daemon_files_and_folders_are_private_issue_13() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    w.sh_profile("p", "echo ok", "");
    w.request("r", "profile = \"p\"\n");
    w.start_daemon();
    let s = w.wait_done("r");
    assert_eq!(s["outcome"], "success", "{s}\n{}", w.log());
    for dir in [
        "",
        "audit",
        "status",
        "work",
        "cache",
        "cache/git",
        "specs",
        "schedules",
    ] {
        assert_eq!(mode(&w.state.join(dir)), 0o700, "{dir}/ must be 0700");
    }
    for file in ["agentd.lock", "daemon.json", "status/r.json"] {
        assert_eq!(mode(&w.state.join(file)), 0o600, "{file} must be 0600");
    }
}

/// No raw ESC (or other C0 control but newline/tab) reaches the output.
fn assert_no_raw_controls(what: &str, out: &[u8]) {
    let bad: Vec<u8> = out
        .iter()
        .copied()
        .filter(|b| (*b < 0x20 && *b != b'\n' && *b != b'\t') || *b == 0x7f)
        .collect();
    assert!(
        bad.is_empty(),
        "{what} printed raw control bytes {bad:?}:\n{}",
        String::from_utf8_lossy(out)
    );
}

#[test]
fn status_table_escapes_untrusted_text_issue_13() {
    let w = World::new();
    let status = serde_json::json!({
        "request": "r",
        "profile": "p",
        "phase": "invalid",
        "outcome": null,
        "exit_code": null,
        "session_id": null,
        "container": null,
        "repo": "https://example.com/\u{1b}]0;pwned\u{7}",
        "work_unit": "\u{1b}[2J",
        "origin": "file",
        "spec_sha256": null,
        "created_at": null,
        "started_at": null,
        "finished_at": null,
        "audit_dir": null,
        "message": "bad \u{1b}[2J\u{1b}[31mred\u{9b}1m"
    });
    std::fs::create_dir_all(w.state.join("status")).expect("mkdir");
    std::fs::write(
        w.state.join("status/r.json"),
        serde_json::to_vec(&status).expect("json"),
    )
    .expect("write");
    let out = w.agentd().arg("status").output().expect("status");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_no_raw_controls("agentd status", &out.stdout);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("bad \\e[2J\\e[31mred\\x9b1m"), "{text}");
}

#[test]
fn validate_escapes_quoted_file_content_and_paths_issue_13() {
    let w = World::new();
    // An unknown field whose key carries an escape sequence: the error
    // quotes it.
    crate::util::write(
        &w.desired,
        "profiles/p.toml",
        "base_image = \"x\"\ncommand = [\"true\"]\n\"evil\\u001b[2J\" = 1\n",
    );
    // A file name with a control character: the error names the path.
    crate::util::write(
        &w.desired,
        "requests/bad\u{1b}]0;title\u{7}.toml",
        "profile = \"p\"\n",
    );
    let out = w.agentd().arg("validate").output().expect("validate");
    assert_eq!(out.status.code(), Some(1));
    assert_no_raw_controls("agentd validate", &out.stdout);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("evil\\e[2J"), "{text}");
    assert!(text.contains("bad\\e]0;title\\x07.toml"), "{text}");
}

#[test]
fn logs_escape_the_agents_terminal_sequences_unless_raw_issue_13() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    w.sh_profile(
        "esc",
        "printf 'before\\033[2J\\033]0;pwned\\007\\tafter\\n'",
        "",
    );
    w.request("r", "profile = \"esc\"\n");
    w.start_daemon();
    let s = w.wait_done("r");
    assert_eq!(s["outcome"], "success", "{s}\n{}", w.log());
    let out = w.agentd().args(["logs", "r"]).output().expect("logs");
    assert!(out.status.success());
    assert_no_raw_controls("agentd logs", &out.stdout);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "before\\e[2J\\e]0;pwned\\x07\tafter\n"
    );
    let raw = w
        .agentd()
        .args(["logs", "--raw", "r"])
        .output()
        .expect("logs --raw");
    assert_eq!(raw.stdout, b"before\x1b[2J\x1b]0;pwned\x07\tafter\n");
}

#[test]
fn audit_verify_escapes_file_names_issue_13() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    w.sh_profile("writer", "echo one > \"$AGENTD_AUDIT_DIR/a.txt\"", "");
    w.request("r", "profile = \"writer\"\n");
    w.start_daemon();
    let s = w.wait_done("r");
    assert_eq!(s["outcome"], "success", "{s}\n{}", w.log());
    let sid = s["session_id"].as_str().expect("sid").to_string();
    // A file planted after sealing (as root), named to drive a terminal.
    std::fs::write(
        w.audit_dir("r")
            .join("session/x\u{1b}[2J\u{1b}]0;pwned\u{7}y"),
        "x",
    )
    .expect("plant");
    let out = w
        .agentd()
        .args(["audit", "verify", &sid])
        .output()
        .expect("verify");
    assert_eq!(out.status.code(), Some(1));
    assert_no_raw_controls("agentd audit verify", &out.stdout);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("extra session/x\\e[2J\\e]0;pwned\\x07y"),
        "{text}"
    );
}

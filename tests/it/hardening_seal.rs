//! Finishing a session against a hostile agent (issue 13, items 2, 3 and
//! the manifest part of 8): huge sparse files, folders thousands of levels
//! deep (in the record and in the home), odd modes, hard links, names with
//! newlines, a work folder that cannot be removed.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::{World, read_json, require_podman};

/// What a slow Podman start plus finishing may take; the point is only
/// that finishing is bounded (hashing 15 TiB would take hours).
const BOUND: Duration = Duration::from_secs(90);

/// Make the daemons this test starts run with a nofile limit of 1024, as a
/// daemon started by systemd does: a walk that holds one descriptor per
/// level cannot remove a 2,000-level tree then.
fn nofile_1024() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft > 1024 {
        setrlimit(Resource::RLIMIT_NOFILE, 1024, hard).expect("setrlimit");
    }
}

fn daemon_nofile(w: &World) -> u64 {
    let pid = w.daemon_pid().expect("daemon runs");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("nofile line");
    line.split_whitespace()
        .nth(3)
        .and_then(|n| n.parse().ok())
        .expect("soft limit")
}

/// Every entry below `dir` is root's, and nothing is setuid, setgid or
/// writable by others (symlinks aside: their modes mean nothing).
fn assert_taken_back(dir: &Path) {
    for e in walkdir::WalkDir::new(dir) {
        let e = e.expect("walk");
        let m = e.path().symlink_metadata().expect("stat");
        assert_eq!(
            m.uid(),
            crate::util::daemon_uid(),
            "{} is not the daemon user's",
            e.path().display()
        );
        if !m.file_type().is_symlink() {
            assert_eq!(
                m.mode() & 0o6022,
                0,
                "{} has mode {:o}",
                e.path().display(),
                m.mode() & 0o7777
            );
        }
    }
}

fn verify(w: &World, sid: &str) -> (bool, String) {
    let out = w
        .agentd()
        .args(["audit", "verify", sid])
        .output()
        .expect("verify");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Build a folder `levels` deep in the current folder (perl: `mkdir -p`
/// would pass PATH_MAX).
fn deep(levels: u32) -> String {
    format!(
        "perl -e 'for (1..{levels}) {{ mkdir \"d\" or die \"$!\"; chdir \"d\" or die \"$!\" }}'"
    )
}

#[test]
fn huge_sparse_and_deep_content_cannot_stall_finishing_or_hold_the_slot_issue_13() {
    if !require_podman() {
        return;
    }
    nofile_1024();
    let mut w = World::new();
    // ext4 stops at 16 TiB - 4 KiB: 15 TiB there, the same point.
    let script = format!(
        "cd \"$AGENTD_AUDIT_DIR\" && (truncate -s 16T huge 2>/dev/null || truncate -s 15T huge) && echo kept > small && {d} && cd \"$HOME\" && {d} && echo done",
        d = deep(2000)
    );
    w.sh_profile("hog", &script, "");
    w.request("r1", "profile = \"hog\"\n");
    w.request("r2", "profile = \"hog\"\n");
    w.start_daemon_with(&[], &["--max-sessions", "1"]);
    assert!(daemon_nofile(&w) <= 1024);
    let started = Instant::now();
    let first = w.wait_for("r1", BOUND, |s| s["phase"] == "done");
    let second = w.wait_for("r2", BOUND, |s| s["phase"] == "done");
    eprintln!("both done in {:?}", started.elapsed());
    for (id, s) in [("r1", &first), ("r2", &second)] {
        assert_eq!(s["outcome"], "success", "{id}: {s}");
        let msg = s["message"].as_str().unwrap_or("");
        assert!(
            msg.contains("audit record sealed without") && msg.contains("deeper than 256"),
            "{id}: {msg}"
        );
        let dir = w.audit_dir(id);
        let rec = read_json(&dir.join("agentd/session.json"));
        assert!(rec["outcome"].is_string(), "sealed: {rec}");
        let cut = &rec["cut"];
        assert_eq!(cut["entries"], 2, "{rec}");
        assert!(cut["bytes"].as_u64().unwrap_or(0) >= 15 << 40, "{rec}");
        assert!(
            cut["reason"]
                .as_str()
                .unwrap_or("")
                .contains("files past the byte budget"),
            "{rec}"
        );
        assert!(!dir.join("session/huge").exists());
        assert_eq!(
            std::fs::read_to_string(dir.join("session/small")).expect("kept"),
            "kept\n"
        );
        assert_taken_back(&dir);
        let sid = s["session_id"].as_str().expect("sid");
        let (ok, out) = verify(&w, sid);
        assert!(ok, "{out}");
    }
    assert_eq!(
        w.work_dirs_after_removal(),
        0,
        "work folders (with the deep homes) removed"
    );
    assert!(w.containers_after_removal().is_empty());
}

/// Agent-made odd modes in the record and in the home: a folder with no
/// bits, setuid and setgid files, world-writable files and folders, a
/// FIFO; in the home a read-only folder, a folder without its x bit, a
/// read-only file. `AGENTD_WORK_UNIT=link` adds a hard link.
const ODD: &str = r#"cd "$AGENTD_AUDIT_DIR" && mkdir -p closed/inner wwd && echo f > closed/inner/f && chmod 000 closed/inner && echo s > suid && chmod 4777 suid && echo g > sgid && chmod 2777 sgid && echo w > ww && chmod 666 ww && chmod 777 wwd && ln -s /etc/shadow link && mkfifo fifo && chmod 666 fifo && if [ "$AGENTD_WORK_UNIT" = link ]; then ln suid alias; fi && cd "$HOME" && mkdir -p locked/in && echo x > locked/in/f && chmod 000 locked/in && chmod 500 locked && echo r > ro && chmod 444 ro && mkdir nox && echo n > nox/f && chmod 600 nox"#;

#[test]
fn odd_modes_are_taken_back_in_sealed_and_refused_records_issue_13() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    w.sh_profile("odd", ODD, "");
    w.request("sealed", "profile = \"odd\"\nwork_unit = \"plain\"\n");
    w.request("refused", "profile = \"odd\"\nwork_unit = \"link\"\n");
    w.start_daemon();
    let sealed = w.wait_done("sealed");
    let refused = w.wait_done("refused");
    assert_eq!(sealed["outcome"], "success", "{sealed}");
    assert_eq!(refused["outcome"], "success", "{refused}");

    let dir = w.audit_dir("sealed");
    assert_taken_back(&dir);
    for (f, mode) in [
        ("session/closed/inner", 0o555),
        ("session/closed/inner/f", 0o444),
        ("session/suid", 0o444),
        ("session/sgid", 0o444),
        ("session/ww", 0o444),
        ("session/wwd", 0o555),
        ("session/fifo", 0o444),
    ] {
        let m = std::fs::symlink_metadata(dir.join(f)).expect("stat");
        assert_eq!(m.mode() & 0o7777, mode, "{f}");
    }
    let (ok, out) = verify(&w, sealed["session_id"].as_str().expect("sid"));
    assert!(ok, "{out}");

    let msg = refused["message"].as_str().unwrap_or("");
    assert!(
        msg.contains("audit record left incomplete") && msg.contains("2 hard links"),
        "{msg}"
    );
    let dir = w.audit_dir("refused");
    let rec = read_json(&dir.join("agentd/session.json"));
    assert!(
        rec.get("outcome").is_none(),
        "never claims completion: {rec}"
    );
    assert_taken_back(&dir.join("session"));
    let alias = std::fs::metadata(dir.join("session/alias")).expect("stat");
    assert_eq!(alias.mode() & 0o7777, 0o444, "only permissions dropped");

    assert_eq!(
        w.work_dirs_after_removal(),
        0,
        "homes with odd modes removed"
    );
    assert!(w.containers_after_removal().is_empty());
}

#[test]
fn a_newline_in_a_file_name_cannot_inject_a_manifest_line_issue_13() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    // The name carries a newline, then what would be a manifest line of its own.
    let fake = "0".repeat(64);
    let script = format!(
        "cd \"$AGENTD_AUDIT_DIR\" && printf data > \"$(printf 'x\\n{fake}  injected')\" && printf bs > 'back\\slash'"
    );
    w.sh_profile("namer", &script, "");
    w.request("r", "profile = \"namer\"\n");
    w.start_daemon();
    let s = w.wait_done("r");
    assert_eq!(s["outcome"], "success", "{s}");
    let dir = w.audit_dir("r");
    let manifest = std::fs::read(dir.join("agentd/MANIFEST.sha256")).expect("manifest");
    let text = String::from_utf8_lossy(&manifest);
    assert_eq!(text.lines().count(), 4, "one line per file:\n{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with('\\') && l.ends_with(&format!("session/x\\n{fake}  injected"))),
        "{text}"
    );
    assert!(
        !text.lines().any(|l| l.starts_with(&fake)),
        "no injected line:\n{text}"
    );
    let check = Command::new("sha256sum")
        .args(["-c", "--quiet", "agentd/MANIFEST.sha256"])
        .current_dir(&dir)
        .output()
        .expect("sha256sum");
    assert!(
        check.status.success(),
        "GNU sha256sum reads it back: {}",
        String::from_utf8_lossy(&check.stdout)
    );
    let sid = s["session_id"].as_str().expect("sid");
    let (ok, out) = verify(&w, sid);
    assert!(ok, "{out}");
    // Tamper with the oddly named file (as its owner: root ignores the
    // mode, a rootless owner changes it first).
    let odd = dir.join(format!("session/x\n{fake}  injected"));
    std::fs::set_permissions(&odd, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    std::fs::write(&odd, "forged").expect("write");
    let (ok, out) = verify(&w, sid);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("changed session/x\\n{fake}  injected")),
        "{out}"
    );
}

/// Undoes `chattr +i` even when the test fails, so the temp dir goes.
struct Immutable(PathBuf);

impl Immutable {
    fn set(p: PathBuf) -> Immutable {
        let ok = Command::new("chattr")
            .arg("+i")
            .arg(&p)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "chattr +i {} (needs ext4/xfs and root)", p.display());
        Immutable(p)
    }
    fn clear(&self) {
        let _ = Command::new("chattr")
            .arg("-i")
            .arg(&self.0)
            .stderr(std::process::Stdio::null())
            .status();
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        self.clear();
    }
}

#[test]
fn a_work_folder_that_cannot_be_removed_is_reported_and_retried_issue_13() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    w.gate_profile("g", "echo ran", "");
    w.request("r", "profile = \"g\"\n");
    w.start_daemon();
    let s = w.wait_for("r", Duration::from_secs(60), |s| s["phase"] == "running");
    let sid = s["session_id"].as_str().expect("sid").to_string();
    let work = w.state.join("work").join(&sid);
    let pinned = work.join("home/pinned");
    std::fs::write(&pinned, "x").expect("write");
    std::fs::set_permissions(&pinned, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let guard = Immutable::set(pinned);
    w.open_gate();
    let s = w.wait_done("r");
    assert_eq!(s["outcome"], "success", "the slot is freed: {s}");
    // The folder is removed right after `done` is written (issue 12): the
    // failure's note follows in the same status a moment later.
    let s = w.wait_for("r", Duration::from_secs(30), |s| {
        s["message"]
            .as_str()
            .is_some_and(|m| m.contains("not removed yet"))
    });
    let msg = s["message"].as_str().unwrap_or("");
    assert!(
        msg.contains("work folder") && msg.contains("not removed yet") && msg.contains(&sid),
        "{msg}"
    );
    assert!(work.exists());
    assert!(w.containers_after_removal().is_empty());
    guard.clear();
    // The sweep (every resync, 30 s) retries it.
    w.eventually(
        "the leftover work folder removed",
        Duration::from_secs(75),
        || !work.exists(),
    );
    // The sweep logs right after the removal: wait for the line too.
    w.eventually("the sweep's log line", Duration::from_secs(10), || {
        w.log().contains("removed stale work folder")
    });
    w.wait_for("r", Duration::from_secs(10), |s| {
        s["message"]
            .as_str()
            .is_some_and(|m| m.contains("removed on a later try") && !m.contains("not removed"))
    });
}

#[test]
fn a_record_that_cannot_be_sealed_still_frees_the_slot_and_the_container_issue_13() {
    if !require_podman() {
        return;
    }
    let mut w = World::new();
    w.gate_profile("g", "echo ran", "");
    w.request("first", "profile = \"g\"\n");
    w.request("second", "profile = \"g\"\n");
    w.start_daemon_with(&[], &["--max-sessions", "1"]);
    w.wait_for("first", Duration::from_secs(60), |s| {
        s["phase"] == "running"
    });
    // A file no chown can change (what the agent cannot do, a stuck or
    // broken filesystem can): sealing fails on every attempt.
    let stuck = w.audit_dir("first").join("session/stuck");
    std::fs::write(&stuck, "x").expect("write");
    let guard = Immutable::set(stuck);
    w.open_gate();
    let s = w.wait_for("first", BOUND, |s| s["phase"] == "done");
    let msg = s["message"].as_str().unwrap_or("");
    assert!(
        msg.contains("audit record left incomplete: sealing failed"),
        "{msg}"
    );
    let rec = read_json(&w.audit_dir("first").join("agentd/session.json"));
    assert!(
        rec.get("outcome").is_none(),
        "never claims completion: {rec}"
    );
    // The slot was freed: the next request ran (its gate is open already).
    assert_eq!(w.wait_done("second")["outcome"], "success");
    assert_eq!(w.work_dirs_after_removal(), 0);
    assert!(w.containers_after_removal().is_empty());
    drop(guard);
}
